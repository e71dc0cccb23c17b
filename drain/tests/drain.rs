//! The drain over real producer threads and a real memfd region: exact counts, the accounting
//! invariant, files the reader opens; a drain killed with SIGKILL mid-run; an I/O error mid-run.
#![allow(non_snake_case)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use atf::{ClockType, Manifest, Session, SessionLayout};
use drain::{Drain, DrainThread, Outcome};
use registry::{Clock, RegionConfig, SharedRegion};

mod common;
use common::produce;

fn manifest_for(pid: u32) -> Manifest {
    let mut m = Manifest::new(ClockType::Boottime);
    m.target_pid = pid;
    m.executable = "in-process producers".into();
    m
}

fn small_config() -> RegionConfig {
    let mut config = RegionConfig {
        capacity: 64,
        // Lossless, as `tracer spawn` runs it: producers wait for the drain (even one starved for
        // a while by a loaded machine) instead of dropping after the library's 50 ms default.
        wait_timeout_us: 30_000_000,
        ..RegionConfig::default()
    };
    config.index.ring_capacity = 16 << 10;
    config.detail.ring_capacity = 4 << 10;
    config
}

#[test]
fn drain_thread__final_drain__then_all_data_written() {
    let out = tempfile::tempdir().unwrap();
    let region = common::region(&small_config());
    let registry = region.leak().unwrap();
    let layout = SessionLayout::create(out.path(), std::process::id()).unwrap();
    let pid_dir = layout.pid_dir().to_path_buf();
    let drain = Drain::new(registry, layout, manifest_for(std::process::id())).unwrap();
    let live = drain.live();
    let thread = DrainThread::spawn(drain, |e| panic!("drain failed: {e}")).unwrap();

    const THREADS: u32 = 6;
    const EVENTS: u64 = 50_000;
    produce(registry, THREADS, EVENTS);

    common::stop_producers(registry);
    let mut drain = thread.stop().expect("drain thread ended cleanly");
    drain.final_drain(false).unwrap();
    let report = drain
        .finish(&Outcome {
            stop_reason: "target exited".into(),
            target_fate: atf::TargetFate::Exited { code: 0 },
            ..Outcome::default()
        })
        .unwrap();

    // Accounting: exact per thread and in total.
    assert_eq!(report.threads.len(), THREADS as usize);
    for entry in &report.threads {
        assert_eq!(entry.index.attempted, EVENTS, "thread {}", entry.id);
        assert_eq!(entry.index.persisted, EVENTS, "thread {}", entry.id);
        assert!(
            entry.index.balanced(),
            "thread {}: {:?}",
            entry.id,
            entry.index
        );
        assert_eq!(
            entry.detail.persisted, 3,
            "the marked window was not persisted"
        );
        assert!(entry.detail.balanced());
    }
    assert_eq!(
        report.accounting.index.attempted,
        u64::from(THREADS) * EVENTS
    );
    assert!(report.accounting.index.balanced());
    assert_eq!(report.stats.events, u64::from(THREADS) * EVENTS);
    assert!(live.events.load(std::sync::atomic::Ordering::Relaxed) > 0);

    // The reader opens what was written: every event, in order, per thread.
    let session = Session::open(&pid_dir).unwrap();
    assert!(session.manifest.finished);
    // Every thread's timestamps run 1..=EVENTS: the manifest spans the first to the last event.
    assert_eq!(
        (session.manifest.time_start_ns, session.manifest.time_end_ns),
        (1, EVENTS)
    );
    assert!(session.warnings.is_empty(), "{:?}", session.warnings);
    assert_eq!(session.threads.len(), THREADS as usize);
    for thread in &session.threads {
        assert!(thread.index.finished());
        assert!(
            thread.index.verify_checksum().unwrap(),
            "checksum not recorded"
        );
        let mut next = 1;
        for event in thread.index.events() {
            let event = event.unwrap();
            assert_eq!(
                event.timestamp_ns, next,
                "gap or reorder in thread {}",
                thread.id
            );
            next += 1;
        }
        assert_eq!(next - 1, EVENTS);
        let detail = thread
            .detail
            .as_ref()
            .expect("detail file of the marked window");
        assert_eq!(detail.record_count(), 3);
    }
}

#[test]
fn drain_thread__more_than_twice_the_dirty_budget__then_written_back_as_it_goes_and_every_event_kept(
) {
    // ATF v2 (32 bytes an event) so a few threads write well past the budget quickly.
    let out = tempfile::tempdir().unwrap();
    let region = common::region(&small_config());
    let registry = region.leak().unwrap();
    let layout = SessionLayout::create(out.path(), std::process::id())
        .unwrap()
        .with_format(atf::EventFormat::Atf2);
    let drain = Drain::new(registry, layout, manifest_for(std::process::id())).unwrap();
    let thread = DrainThread::spawn(drain, |e| panic!("drain failed: {e}")).unwrap();

    const THREADS: u32 = 3;
    const EVENTS: u64 = 450_000;
    let bytes = u64::from(THREADS) * EVENTS * atf::EVENT_SIZE as u64;
    assert!(bytes > 2 * drain::DIRTY_BUDGET + (4 << 20));
    produce(registry, THREADS, EVENTS);

    common::stop_producers(registry);
    let mut drain = thread.stop().expect("drain thread ended cleanly");
    drain.final_drain(false).unwrap();
    let report = drain.finish(&Outcome::default()).unwrap();
    assert!(
        report.stats.writeback_bytes >= 2 * drain::DIRTY_BUDGET,
        "{} bytes written back while recording",
        report.stats.writeback_bytes
    );
    for entry in &report.threads {
        assert_eq!(entry.index.persisted, EVENTS, "thread {}", entry.id);
        assert!(entry.index.balanced(), "thread {}", entry.id);
    }
    let session = Session::open(report.manifest.parent().unwrap()).unwrap();
    assert_eq!(session.event_count(), u64::from(THREADS) * EVENTS);
}

#[test]
fn drain__exited_slots__then_recycled_and_reused_by_new_threads() {
    let out = tempfile::tempdir().unwrap();
    let region = common::region(&small_config());
    let registry = region.leak().unwrap();
    let layout = SessionLayout::create(out.path(), 1).unwrap();
    let mut drain = Drain::new(registry, layout, manifest_for(1)).unwrap();
    // Three waves of 64 threads through 64 slots: only recycling makes room for waves 2 and 3.
    for _wave in 0..3 {
        produce(registry, 64, 10);
        drain.pass().unwrap();
    }
    registry.stop_accepting(Duration::from_secs(1));
    drain.final_drain(false).unwrap();
    let report = drain.finish(&Outcome::default()).unwrap();
    // 64 distinct tids, each used by three successive threads: counts accumulate per tid.
    assert_eq!(report.threads.len(), 64);
    assert!(
        report.accounting.index.balanced(),
        "{:?}",
        report.accounting.index
    );
    assert_eq!(report.accounting.index.attempted, 3 * 64 * 10);
}

const CHILD_ENV: &str = "DRAIN_TEST_CHILD";

/// Runs in a re-executed copy of this test binary (see the two tests below): producers and a
/// drain thread in one process, until killed or until the drain fails.
#[test]
fn child_drain_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // not the child: nothing to do
    };
    let (out, mode) = spec.split_once(';').unwrap();
    let region = common::region(&small_config());
    let registry = region.leak().unwrap();
    if mode.starts_with("fsize") {
        // A small file size limit makes writes fail (EFBIG) as a full disk would.
        // SAFETY: plain syscalls on this process's own limits and dispositions.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 256 << 10,
                rlim_max: 256 << 10,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
        }
    }
    let layout = SessionLayout::create(out, std::process::id()).unwrap();
    let drain = Drain::new(registry, layout, manifest_for(std::process::id())).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = DrainThread::spawn(drain, move |e| {
        // The error and its causes, as the tracer prints them.
        let chain: Vec<String> =
            std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect();
        let _ = tx.send(chain.join(": "));
    })
    .unwrap();
    std::thread::spawn(move || produce(registry, 4, u64::MAX / 2));
    eprintln!("CHILD READY");
    if let Ok(message) = rx.recv_timeout(Duration::from_secs(60)) {
        eprintln!("DRAIN ERROR: {message}");
        // What was written stays readable: stop cleanly and exit.
        let drain = thread.stop();
        let code = if drain.is_some() { 3 } else { 4 };
        if let (Some(mut drain), "fsize-finish") = (drain, mode) {
            // The shutdown as `tracer record` runs it after a drain error: the stop, the final
            // drain (which may fail again), and the final manifest.
            registry.stop_accepting(Duration::from_secs(5));
            let _ = registry.close_registrations(Duration::from_secs(5));
            if let Err(e) = drain.final_drain(false) {
                eprintln!("FINAL DRAIN ERROR: {e}");
            }
            if let Err(e) = drain.finish(&Outcome::default()) {
                eprintln!("FINISH ERROR: {e}");
            }
        }
        std::process::exit(code);
    }
}

fn spawn_child(out: &Path, mode: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_drain_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{};{mode}", out.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn only_session(out: &Path) -> std::path::PathBuf {
    let session = std::fs::read_dir(out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::read_dir(&session)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

#[test]
fn drain__killed_with_sigkill_mid_run__then_session_readable_and_unfinished() {
    let out = tempfile::tempdir().unwrap();
    let mut child = spawn_child(out.path(), "kill");
    // Let it write for a while (events accumulate), then kill it without warning.
    let pid_dir = loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(mut entries) = std::fs::read_dir(out.path()) {
            if let Some(Ok(session)) = entries.next() {
                if let Ok(mut pids) = std::fs::read_dir(session.path()) {
                    if let Some(Ok(pid)) = pids.next() {
                        let bytes: u64 = walk_size(&pid.path());
                        if bytes > 2 << 20 {
                            break pid.path();
                        }
                    }
                }
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child drain died on its own"
        );
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let session = Session::open(&pid_dir).unwrap();
    assert!(!session.manifest.finished);
    assert!(session
        .warnings
        .iter()
        .any(|w| matches!(w, atf::Warning::Unfinished)));
    let mut total = 0;
    for thread in &session.threads {
        // Every complete record is recovered, in order, with no gap.
        let mut next = 1;
        for event in thread.index.events() {
            let event = event.unwrap();
            assert_eq!(event.timestamp_ns, next, "thread {}", thread.id);
            next += 1;
        }
        total += next - 1;
    }
    assert!(total > 0, "nothing recovered");
}

fn walk_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            walk_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[test]
fn drain__write_fails_mid_run__then_error_names_file_and_cause_and_session_readable() {
    let out = tempfile::tempdir().unwrap();
    let child = spawn_child(out.path(), "fsize");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "stderr: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("DRAIN ERROR"))
        .unwrap();
    assert!(
        line.contains("index.atc"),
        "the error does not name the file: {line}"
    );
    assert!(
        line.to_lowercase().contains("too large"),
        "the error does not give the cause: {line}"
    );
    let session = Session::open(only_session(out.path())).unwrap();
    let events: u64 = session.threads.iter().map(|t| t.index.event_count()).sum();
    assert!(events > 0);
    for thread in &session.threads {
        for event in thread.index.events() {
            event.unwrap();
        }
    }
}

#[test]
fn drain__write_fails_then_final_drain_and_finish__then_manifest_accounts_for_every_event() {
    let out = tempfile::tempdir().unwrap();
    let child = spawn_child(out.path(), "fsize-finish");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "stderr: {stderr}");
    let session = Session::open(only_session(out.path())).unwrap();
    assert!(
        session.manifest.finished,
        "no final manifest after the write error; stderr: {stderr}"
    );
    let mut not_written = 0;
    for thread in &session.threads {
        let entry = session
            .manifest
            .threads
            .iter()
            .find(|t| t.id == thread.id)
            .unwrap();
        assert!(
            entry.index.balanced(),
            "thread {}: {:?}",
            thread.id,
            entry.index
        );
        let readable = thread.index.events().map_while(Result::ok).count() as u64;
        assert_eq!(
            entry.index.persisted, readable,
            "thread {}: the manifest's persisted is not what the file holds",
            thread.id
        );
        not_written += entry
            .index
            .dropped
            .other
            .get("not_written")
            .copied()
            .unwrap_or(0);
    }
    assert!(
        not_written > 0,
        "the events lost to the write error are not named"
    );
}

/// Threads that registered and wrote, still running: `events` index events each, timestamps
/// 1..=events, written from this thread into `threads` slots (tids 20 000, 20 001, ...).
fn live_threads(registry: registry::Registry<'_>, threads: u32, events: u64) -> Vec<u32> {
    (0..threads)
        .map(|t| {
            let tid = 20_000 + t;
            let me = registry.register(std::process::id(), tid).expect("a slot");
            // SAFETY: this slot has no other producer.
            let mut index = unsafe { me.lanes.index.producer() };
            for seq in 0..events {
                let event = atf::IndexEvent {
                    timestamp_ns: seq + 1,
                    function_id: 1,
                    thread_id: tid,
                    kind: atf::EventKind::Call,
                    call_depth: 0,
                    detail_seq: atf::NO_DETAIL,
                };
                assert!(me.writer.begin());
                index.push(&event.encode()).unwrap();
                me.writer.end();
            }
            me.slot
        })
        .collect()
}

/// Both ways of making a new thread's files: on the helper, a running thread's lanes wait for
/// its file and are drained from a later pass (the first pass moves nothing, the drain does not
/// wait for the file system); on the drain's own thread, at once. Either way every event is in
/// its thread's file and the accounting is exact.
#[test]
fn drain__new_threads_files_made_on_the_helper__then_drained_from_a_later_pass_and_nothing_lost() {
    for on_helper in [true, false] {
        let out = tempfile::tempdir().unwrap();
        let region = common::region(&small_config());
        let registry = region.leak().unwrap();
        let layout = SessionLayout::create(out.path(), 1).unwrap();
        let pid_dir = layout.pid_dir().to_path_buf();
        let mut drain = Drain::new(registry, layout, manifest_for(1))
            .unwrap()
            .files_on_helper(on_helper);
        const THREADS: u32 = 8;
        const EVENTS: u64 = 100;
        let slots = live_threads(registry, THREADS, EVENTS);
        let first = drain.pass().unwrap().bytes;
        let expected = u64::from(THREADS) * EVENTS * atf::EVENT_SIZE as u64;
        if on_helper {
            assert_eq!(first, 0, "the lanes wait for their files");
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut moved = 0;
            while moved < expected && std::time::Instant::now() < deadline {
                moved += drain.pass().unwrap().bytes;
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(moved, expected, "every lane drained once its file was made");
        } else {
            assert_eq!(first, expected, "files made at once, every lane drained");
        }
        stop_live_threads(drain, registry, &slots, EVENTS);
        let session = Session::open(&pid_dir).unwrap();
        assert!(session.warnings.is_empty(), "{:?}", session.warnings);
        assert_eq!(session.event_count(), u64::from(THREADS) * EVENTS);
    }
}

/// Stopped before the helper made a new thread's file: the final drain waits for it, so the
/// thread's events are in the session and counted.
#[test]
fn drain__stopped_while_the_helper_makes_files__then_final_drain_waits_and_nothing_lost() {
    let out = tempfile::tempdir().unwrap();
    let region = common::region(&small_config());
    let registry = region.leak().unwrap();
    let layout = SessionLayout::create(out.path(), 1).unwrap();
    let mut drain = Drain::new(registry, layout, manifest_for(1)).unwrap();
    let slots = live_threads(registry, 16, 50);
    // Asks for the files, drains nothing yet.
    assert_eq!(drain.pass().unwrap().bytes, 0);
    stop_live_threads(drain, registry, &slots, 50);
}

/// The threads of [`live_threads`] exit, the recording stops, the final drain and the manifest
/// are written: every thread is accounted for, balanced, with all its `events` persisted.
fn stop_live_threads(
    mut drain: Drain<'_>,
    registry: registry::Registry<'_>,
    slots: &[u32],
    events: u64,
) {
    for &slot in slots {
        registry.exit(slot);
    }
    common::stop_producers(registry);
    drain.final_drain(false).unwrap();
    let report = drain.finish(&Outcome::default()).unwrap();
    assert_eq!(report.threads.len(), slots.len());
    assert!(report.accounting.index.balanced());
    assert_eq!(
        report.accounting.index.persisted,
        slots.len() as u64 * events
    );
}

/// A file system whose first thread event file is made only once another one is asked for, or
/// after 200 ms: the file-creation helper is still at the first file when the drain next looks.
#[derive(Debug, Default)]
struct SlowFirstFile {
    /// Event files asked for so far, and whether the first may be made.
    state: std::sync::Mutex<(u32, bool)>,
    opened: std::sync::Condvar,
}

impl atf::FileSystem for SlowFirstFile {
    fn create_new(&self, dir: &atf::Dir, name: &str) -> std::io::Result<Box<dyn atf::FileSink>> {
        if name.starts_with("index.") {
            let mut state = self.state.lock().unwrap();
            state.0 += 1;
            if state.0 == 1 {
                let wait = Duration::from_millis(200);
                state = self
                    .opened
                    .wait_timeout_while(state, wait, |s| !s.1)
                    .unwrap()
                    .0;
            } else {
                state.1 = true;
                self.opened.notify_all();
            }
            drop(state);
        }
        atf::RealFs.create_new(dir, name)
    }

    fn rename(&self, dir: &atf::Dir, from: &str, to: &str) -> std::io::Result<()> {
        atf::RealFs.rename(dir, from, to)
    }

    fn remove_file(&self, dir: &atf::Dir, name: &str) -> std::io::Result<()> {
        atf::RealFs.remove_file(dir, name)
    }

    fn sync_dir(&self, dir: &atf::Dir) -> std::io::Result<()> {
        atf::RealFs.sync_dir(dir)
    }

    fn sync_fs(&self, dir: &atf::Dir) -> std::io::Result<()> {
        atf::RealFs.sync_fs(dir)
    }

    fn sync_file(&self, dir: &atf::Dir, name: &str) -> std::io::Result<()> {
        atf::RealFs.sync_file(dir, name)
    }
}

/// Writes index events with timestamps `times` into a registration's lane.
fn write_events(
    registration: &registry::Registration<'_>,
    tid: u32,
    times: std::ops::RangeInclusive<u64>,
) {
    // SAFETY: the caller's thread is the slot's only producer.
    let mut index = unsafe { registration.lanes.index.producer() };
    for t in times {
        let event = atf::IndexEvent {
            timestamp_ns: t,
            function_id: 1,
            thread_id: tid,
            kind: atf::EventKind::Call,
            call_depth: 0,
            detail_seq: atf::NO_DETAIL,
        };
        assert!(registration.writer.begin());
        index.push(&event.encode()).unwrap();
        registration.writer.end();
    }
}

/// A program whose pid falls on the registry's last slot execs another one (1 process in
/// `capacity`): the new image's main thread, same pid and thread id, finds the old image's slot
/// still held and takes the first one, ahead of it in the drain's walk. The new image continues
/// the main thread's event file, whether the drain had met the old image before the exec (its
/// file still being made on the helper) or not: one file, made once, holding the old image's
/// events then the new one's, every event accounted for.
#[test]
fn drain__exec_whose_new_image_takes_a_lower_slot__then_the_main_threads_file_continues_in_order() {
    for seen_before_the_exec in [false, true] {
        let out = tempfile::tempdir().unwrap();
        let config = small_config();
        let region = common::region(&config);
        let registry = region.leak().unwrap();
        // The pid lands on the last slot.
        let pid = 1000 * config.capacity + config.capacity - 1;
        let layout = SessionLayout::create(out.path(), pid)
            .unwrap()
            .with_fs(std::sync::Arc::new(SlowFirstFile::default()));
        let pid_dir = layout.pid_dir().to_path_buf();
        let mut drain = Drain::new(registry, layout, manifest_for(pid))
            .unwrap()
            .follow_processes(true)
            .files_on_helper(true);
        let old = registry
            .register_in(pid, pid, registry.new_image())
            .expect("a slot");
        assert_eq!(old.slot, config.capacity - 1);
        write_events(&old, pid, 1..=10);
        if seen_before_the_exec {
            // Asks the helper for the main thread's file, drains nothing yet.
            assert_eq!(drain.pass().unwrap().bytes, 0);
        }
        // The exec: the new image retires the old one's slot and registers its main thread,
        // which runs and exits.
        assert_eq!(registry.retire_pid(pid), 1);
        let new = registry
            .register_in(pid, pid, registry.new_image())
            .expect("a slot");
        assert!(new.slot < old.slot, "the new image's slot comes first");
        write_events(&new, pid, 11..=20);
        registry.exit(new.slot);
        drain.pass().unwrap();
        common::stop_producers(registry);
        drain.final_drain(false).unwrap();
        let report = drain.finish(&Outcome::default()).unwrap();
        let a = &report.accounting.index;
        assert!(a.balanced(), "{a:?}");
        assert_eq!((a.attempted, a.persisted), (20, 20), "{a:?}");
        let session = Session::open(&pid_dir).unwrap();
        assert!(session.warnings.is_empty(), "{:?}", session.warnings);
        assert_eq!(session.threads.len(), 1);
        let times = common::event_times(&session.threads[0]);
        assert_eq!(
            times,
            (1..=20).collect::<Vec<_>>(),
            "seen before the exec: {seen_before_the_exec}"
        );
    }
}

/// Ring records carry the session clock's raw readings; the files hold nanoseconds. A TSC clock
/// of 2.593 GHz (a `mult` that is not a power of two) whose `tsc_base` falls inside the run:
/// readings below it saturate to `ns_base`, the others map to `ns_base + (t - tsc_base) / 2.593`
/// (within a nanosecond of the exact quotient), in the event file (both formats), the detail
/// records' headers and the manifest's time range. A `CLOCK_BOOTTIME` clock's readings are
/// nanoseconds: they reach the files as written. Every event is accounted for either way.
#[test]
fn drain__ring_records_in_clock_readings__then_files_hold_their_nanoseconds() {
    const HZ: u64 = 2_593_000_000;
    const TSC_BASE: u64 = 40_000_000_000;
    const NS_BASE: u64 = 1_700_000_000_000;
    const EVENTS: u64 = 5_000;
    const DETAILS: u64 = 3;
    let (pid, tid) = (std::process::id(), 4242);
    // 5 000 ticks below `tsc_base` first, then 997 ticks (about 384.5 ns) apart.
    let reading = |i: u64| TSC_BASE - 5_000 + 997 * i;
    for format in atf::EventFormat::ALL {
        for clock in [Clock::tsc(HZ, TSC_BASE, NS_BASE), Clock::boottime()] {
            let tsc = clock.source == registry::ClockSource::Tsc;
            let expected = |i: u64| {
                let t = reading(i);
                if !tsc {
                    t
                } else if t < TSC_BASE {
                    NS_BASE
                } else {
                    let exact = NS_BASE
                        + (u128::from(t - TSC_BASE) * 1_000_000_000 / u128::from(HZ)) as u64;
                    let ns = clock.to_ns(t);
                    assert!(
                        ns.abs_diff(exact) <= 1,
                        "{t} ticks: {ns} ns, exactly {exact}"
                    );
                    ns
                }
            };
            let what = format!("{} on {:?}", format.name(), clock.source);
            let out = tempfile::tempdir().unwrap();
            let region = SharedRegion::create_with_clock(&small_config(), &clock).unwrap();
            let registry = region.registry().unwrap();
            let layout = SessionLayout::create(out.path(), pid)
                .unwrap()
                .with_format(format);
            let pid_dir = layout.pid_dir().to_path_buf();
            let mut drain = Drain::new(registry, layout, manifest_for(pid))
                .unwrap()
                .files_on_helper(false);
            let me = registry.register(pid, tid).expect("a slot");
            // SAFETY: this thread is the slot's only producer.
            let mut index = unsafe { me.lanes.index.producer() };
            // SAFETY: as above.
            let mut detail = unsafe { me.lanes.detail.producer() };
            for i in 0..EVENTS {
                let event = atf::IndexEvent {
                    timestamp_ns: reading(i),
                    function_id: 0x40_1000 + i % 3,
                    thread_id: tid,
                    kind: if i % 2 == 0 {
                        atf::EventKind::Call
                    } else {
                        atf::EventKind::Return
                    },
                    call_depth: 0,
                    detail_seq: if i < DETAILS {
                        i as u32
                    } else {
                        atf::NO_DETAIL
                    },
                };
                assert!(me.writer.begin());
                index.push(&event.encode()).unwrap();
                if i < DETAILS {
                    let header = atf::DetailRecordHeader::for_payload(
                        atf::DETAIL_CALL,
                        i as u32,
                        tid,
                        reading(i),
                        8,
                    );
                    let mut record = header.to_bytes().to_vec();
                    record.extend_from_slice(&[0xcd; 8]);
                    detail.push(&record).unwrap();
                    detail.mark_active();
                }
                me.writer.end();
                if i % 256 == 255 {
                    // Room in the lane: the drain takes what the rings hold.
                    drain.pass().unwrap();
                }
            }
            registry.exit(me.slot);
            drain.pass().unwrap();
            common::stop_producers(registry);
            drain.final_drain(false).unwrap();
            let report = drain.finish(&Outcome::default()).unwrap();
            let a = &report.accounting;
            assert!(a.index.balanced() && a.detail.balanced(), "{what}: {a:?}");
            assert_eq!(
                (a.index.attempted, a.index.persisted),
                (EVENTS, EVENTS),
                "{what}"
            );
            assert_eq!(a.detail.persisted, DETAILS, "{what}");

            let session = Session::open(&pid_dir).unwrap();
            assert!(
                session.warnings.is_empty(),
                "{what}: {:?}",
                session.warnings
            );
            assert_eq!(
                (session.manifest.time_start_ns, session.manifest.time_end_ns),
                (expected(0), expected(EVENTS - 1)),
                "{what}"
            );
            let thread = &session.threads[0];
            assert!(thread.index.verify(tid).unwrap().is_empty(), "{what}");
            let times = common::event_times(thread);
            assert_eq!(
                times,
                (0..EVENTS).map(expected).collect::<Vec<_>>(),
                "{what}"
            );
            let details = thread.detail.as_ref().expect("the marked window");
            let times: Vec<u64> = details
                .records()
                .map(|r| r.unwrap().header.timestamp_ns)
                .collect();
            assert_eq!(
                times,
                (0..DETAILS).map(expected).collect::<Vec<_>>(),
                "{what}"
            );
        }
    }
}
