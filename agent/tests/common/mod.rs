//! Test harness: builds C programs with `cc`, runs them under the agent with a fresh region, and
//! drains every thread's lanes from the test (a simple loop over `PoolConsumer`s).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use registry::{OrphanCounts, RegionConfig, Registry, SharedRegion, SlotState, ThreadCounts};
use ring::PoolConsumer;

/// One ATF index event, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub timestamp_ns: u64,
    pub function: u64,
    pub tid: u32,
    pub kind: u32,
    pub depth: u32,
    pub detail_seq: u32,
}

impl Event {
    /// A ring record, its timestamp (the clock's raw reading) converted to nanoseconds as the
    /// drain does.
    fn decode(b: &[u8], clock: &registry::Clock) -> Event {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        Event {
            timestamp_ns: clock.to_ns(u64_at(0)),
            function: u64_at(8),
            tid: u32_at(16),
            kind: u32_at(20),
            depth: u32_at(24),
            detail_seq: u32_at(28),
        }
    }
}

/// One thread's recording (one slot registration).
#[derive(Debug, Default, Clone)]
pub struct Thread {
    pub pid: u32,
    pub tid: u32,
    pub events: Vec<Event>,
    /// Detail records from marked windows, as the ring holds them (header timestamps are the
    /// clock's raw readings).
    pub marked_details: Vec<Vec<u8>>,
    pub counts: ThreadCounts,
}

/// What a run recorded.
#[derive(Debug)]
pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub threads: Vec<Thread>,
    pub orphans: OrphanCounts,
    /// The region's clock (what the rings' raw timestamps are readings of).
    pub clock: registry::Clock,
}

impl Run {
    /// Checks the accounting invariant for every thread and the orphans, and that every accepted
    /// event was drained.
    pub fn assert_accounting(&self) {
        for t in &self.threads {
            assert!(t.counts.balanced(), "unbalanced {:?}", t.counts);
            assert_eq!(
                t.events.len() as u64,
                t.counts.accepted,
                "drained != accepted"
            );
        }
        assert!(self.orphans.balanced(), "{:?}", self.orphans);
    }

    /// Events attempted in total (threads + orphans).
    pub fn attempted(&self) -> u64 {
        self.threads.iter().map(|t| t.counts.attempted).sum::<u64>() + self.orphans.attempted
    }

    /// Events per tid (all registrations of that tid).
    pub fn events_of(&self, tid: u32) -> Vec<Event> {
        self.threads
            .iter()
            .filter(|t| t.tid == tid)
            .flat_map(|t| t.events.iter().copied())
            .collect()
    }

    /// The stdout line starting with `key=`, parsed.
    pub fn value(&self, key: &str) -> u64 {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.stdout))
            .trim()
            .parse()
            .unwrap()
    }
}

/// The agent library of this source tree, built once per test binary for the test's profile
/// (target/<profile>/libagent.so). `cargo test` builds the agent's library for linking only, not
/// its shared object, so a shared object left from an earlier build could be older than the
/// source under test: `cargo build` brings it up to date (a no-op when it is).
pub fn agent_so() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let profile = exe.parent().unwrap().parent().unwrap();
            let mut build = Command::new(env!("CARGO"));
            build.args(["build", "--quiet", "-p", "agent"]);
            if profile.file_name().is_some_and(|name| name == "release") {
                build.arg("--release");
            }
            let status = build.status().unwrap();
            assert!(status.success(), "cargo build -p agent failed");
            profile.join("libagent.so")
        })
        .clone()
}

/// Compiles `source` with `-finstrument-functions` into `dir/name`.
pub fn cc(dir: &Path, name: &str, source: &str, extra: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-O1", "-g", "-finstrument-functions", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .args(extra)
        .status()
        .expect("a C compiler `cc` on PATH");
    assert!(status.success(), "cc failed for {name}");
    out
}

/// A small-ring region for tests. The full-ring wait is long (5 s): tests run in parallel on a
/// shared 2-core machine, where the test's drain can be starved for longer than the product's
/// default 50 ms, which would (correctly) count `ring_full` drops and break exact counts.
pub fn config() -> RegionConfig {
    RegionConfig {
        capacity: 64,
        wait_timeout_us: 5_000_000,
        index: registry::LaneConfig {
            rings: 4,
            ring_capacity: 16 << 10,
        },
        detail: registry::LaneConfig {
            rings: 4,
            ring_capacity: 16 << 10,
        },
        ..RegionConfig::default()
    }
}

struct Drainer<'a> {
    reg: Registry<'a>,
    /// slot → (serial, index consumer, detail consumer, recording)
    live: HashMap<u32, (u64, PoolConsumer<'a>, PoolConsumer<'a>, Thread)>,
    done: Vec<Thread>,
}

impl<'a> Drainer<'a> {
    fn pass(&mut self, final_pass: bool) {
        let reg = self.reg;
        let clock = reg.clock();
        for info in reg.slots() {
            let entry = self.live.entry(info.index).or_insert_with(|| {
                let lanes = reg.lanes(info.index).unwrap();
                // SAFETY: the test is the only consumer of the region's lanes.
                let (i, d) = unsafe { (lanes.index.consumer(), lanes.detail.consumer()) };
                let t = Thread {
                    pid: info.pid,
                    tid: info.tid,
                    ..Thread::default()
                };
                (info.serial, i, d, t)
            });
            assert_eq!(entry.0, info.serial, "slot reused behind the drain's back");
            let exited = info.state == SlotState::Exited;
            let (_, index, detail, t) = entry;
            index
                .drain(true, |c| -> Result<(), ()> {
                    t.events
                        .extend(c.bytes.chunks(32).map(|b| Event::decode(b, &clock)));
                    Ok(())
                })
                .unwrap();
            detail
                .drain(final_pass || exited, |c| -> Result<(), ()> {
                    if c.marked {
                        for f in ring::frames(c.bytes) {
                            t.marked_details.push(f.unwrap().to_vec());
                        }
                    }
                    Ok(())
                })
                .unwrap();
            if exited || final_pass {
                let (_, _, _, mut t) = self.live.remove(&info.index).unwrap();
                t.counts = reg.counts(info.index).unwrap();
                self.done.push(t);
                if exited {
                    reg.recycle(info.index).unwrap();
                }
            }
        }
    }
}

/// Runs `program args` under the agent with a region made from `config` (triggers set first),
/// draining until it exits, then stops the session and drains the rest.
pub fn run_with(config: &RegionConfig, triggers: &[u64], program: &Path, args: &[&str]) -> Run {
    run_preloading(config, triggers, &[], program, args)
}

/// [`run_with`], with more libraries preloaded after the agent (their constructors run first).
pub fn run_preloading(
    config: &RegionConfig,
    triggers: &[u64],
    after: &[&Path],
    program: &Path,
    args: &[&str],
) -> Run {
    let mut preload = agent_so().into_os_string();
    for lib in after {
        preload.push(" ");
        preload.push(lib);
    }
    let region = SharedRegion::create(config).unwrap();
    let reg = region.registry().unwrap();
    let ranges: Vec<(u64, u64)> = triggers.iter().map(|&a| (a, a + 1)).collect();
    reg.set_trigger_ranges(&ranges).unwrap();
    let fd = region.inheritable_fd().unwrap();
    let mut child = Command::new(program)
        .args(args)
        .env("LD_PRELOAD", &preload)
        .env(registry::ENV_REGION_FD, fd.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let readers = std::thread::spawn(move || {
        use std::io::Read;
        let (mut o, mut e) = (String::new(), String::new());
        out.read_to_string(&mut o).unwrap();
        err.read_to_string(&mut e).unwrap();
        (o, e)
    });
    let mut drainer = Drainer {
        reg,
        live: HashMap::new(),
        done: Vec::new(),
    };
    let status = loop {
        drainer.pass(false);
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let report = reg.stop_accepting(Duration::from_secs(2));
    assert!(report.stragglers.is_empty(), "{report:?}");
    reg.close_registrations(Duration::from_secs(2)).unwrap();
    drainer.pass(true);
    let (stdout, stderr) = readers.join().unwrap();
    Run {
        status,
        stdout,
        stderr,
        threads: drainer.done,
        orphans: reg.orphan_counts(),
        clock: reg.clock(),
    }
}

/// [`run_with`] with the test configuration and no triggers.
pub fn run(program: &Path, args: &[&str]) -> Run {
    run_with(&config(), &[], program, args)
}
