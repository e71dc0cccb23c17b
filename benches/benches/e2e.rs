//! End-to-end drivers around the real `tracer` binary (custom harness, not criterion):
//!
//! - **Overhead per call+return pair**, side by side in one run on the same binaries: untraced,
//!   built with `-finstrument-functions` on glibc's no-op hooks, under `tracer spawn`, and under
//!   `uftrace record` (if installed: `apt-get install uftrace`), 1 and 4 threads; then the same for
//!   a `-pg` build (mcount and the return trampoline, against uftrace's own `-pg` path). The figure
//!   is the workload's own thread CPU time per pair (what tracing costs the target), with its ratio
//!   to uftrace's.
//! - **Overhead after attach**: the steady workload ([`STEADY_C`]) started untraced (glibc's no-op
//!   hooks), joined by `tracer attach`, and left again; and the same workload under `tracer spawn`.
//!   CPU ns per pair over a window of each phase (before, attached, after the tracer left, spawn),
//!   1 and 4 threads, and the ratio of the attached overhead to spawn's (both minus the no-op
//!   hooks): attach should cost what spawn costs.
//! - **Shutdown latency** (the seeds' `shutdown__64_threads__then_under_100ms`): `tracer spawn` on
//!   64 threads calling instrumented functions non-stop, SIGINT once it records — to the tracer
//!   alone, then to the process group of the tracer and its target (a terminal's Ctrl-C) — and the
//!   time until the tracer has exited; p50 and p99 over the runs, with the summary's total, each
//!   of its phases, and the time outside them (the signal's delivery, the process's exit).
//!   `E2E_BASELINE_TRACER=<path to an earlier build's tracer>` stops it in turns with this build,
//!   run for run, for a before/after comparison on the same machine at the same time.
//! - **Oversubscribed**: 256 spinning threads (on a 2-CPU machine) recorded 2 s, then SIGINT:
//!   events persisted per second (over spawn to signal, and over the session's first to last
//!   event), ring-full drops, the stop's time and whether it was clean; the same with 4 threads,
//!   and the ratio of the two rates. `E2E_BASELINE_TRACER` alternates here too, run for run.
//!
//! - **Whole-process overhead and bytes per event**: the wall time of the whole traced process
//!   (start to exit, the tracer's drain, final flush and fsync included) of the same
//!   `-finstrument-functions` binary ([`OVERHEAD_C`], one function called 5 M times per thread),
//!   1 and 4 threads: untraced, under `tracer spawn` (ATC, and `--format atf2`) and under
//!   `uftrace record`, interleaved run by run, the output removed and `sync`ed between runs, the
//!   median of 7; overhead = traced − untraced, and its ratio to uftrace's. With it, the bytes per
//!   event of the trace files and how often a producer waited for ring space (the drain keeping
//!   up); then bytes per event of a 4-thread spinning 3-level call tree ([`SPIN_C`], 1 s).
//!
//! `cargo bench -p benches --bench e2e` runs 10 M calls per thread, 20 shutdowns of 64 threads per
//! gesture (`E2E_SHUTDOWN_THREADS=<n>` for another count) and 5 oversubscribed runs of 256
//! (`E2E_BUSY_THREADS=<n>`, `E2E_BUSY_RUNS=<n>`); `cargo test --benches` runs one short pass of each (2 shutdowns of
//! 8 threads, one run of 16). A shutdown that was not clean is listed, not counted.
//! `E2E_ONLY=shutdown` runs the shutdown and oversubscribed parts alone, `E2E_ONLY=whole` the
//! whole-process part alone, `E2E_ONLY=overhead` the per-call overhead against uftrace alone.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benches::{
    build_c, build_tracer, full_run, percentile, wait_for_threads, KillOnDrop, OVERHEAD_C, SPIN_C,
    STEADY_C,
};

fn main() {
    let full = full_run();
    let dir = tempfile::tempdir().expect("temp dir");
    let tracer = build_tracer();
    let only = std::env::var("E2E_ONLY").unwrap_or_default();
    if only.is_empty() || only == "whole" {
        whole_process(dir.path(), &tracer, full);
        spinning_tree_bytes(dir.path(), &tracer, full);
    }
    if only.is_empty() || only == "overhead" {
        overhead(dir.path(), &tracer, full);
    }
    if only.is_empty() {
        attach_overhead(dir.path(), &tracer, full);
    }
    if only.is_empty() || only == "shutdown" {
        shutdown_latency(dir.path(), &tracer, full);
        oversubscribed(dir.path(), &tracer, full);
    }
}

/// One way of running the workload in [`whole_process`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    Untraced,
    Tracer(&'static str),
    Uftrace,
}

/// What one traced run left: its wall time, the trace's bytes per event, the producer waits.
struct Run {
    wall_ms: f64,
    bytes_per_event: Option<f64>,
    waits: Option<u64>,
}

/// Runs `binary args` as `runner` says, whole, and times it; the output is measured, then
/// removed and synced so the next run starts from the same state.
fn run_whole(dir: &Path, tracer: &Path, runner: Runner, binary: &Path, args: &[String]) -> Run {
    let out = dir.join("whole-out");
    let mut cmd = match runner {
        Runner::Untraced => Command::new(binary),
        Runner::Tracer(format) => {
            let mut c = Command::new(tracer);
            c.args(["spawn", "--format", format, "--output"])
                .arg(&out)
                .arg(binary)
                .arg("--");
            c
        }
        Runner::Uftrace => {
            let mut c = Command::new("uftrace");
            c.arg("record").arg("-d").arg(&out).arg(binary);
            c
        }
    };
    cmd.args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let result = cmd.output().expect("the workload runs");
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    assert!(result.status.success(), "{:?} failed", cmd.get_program());
    let stderr = String::from_utf8_lossy(&result.stderr);
    let (bytes_per_event, waits) = match runner {
        Runner::Tracer(_) => (
            trace_bytes_per_event(&out),
            summary_count(&stderr, "waits for ring space"),
        ),
        _ => (None, None),
    };
    let _ = std::fs::remove_dir_all(&out);
    // SAFETY: sync has no preconditions; it flushes the removal (and everything else) so the next
    // run does not pay for this one's writeback.
    unsafe { libc::sync() };
    Run {
        wall_ms,
        bytes_per_event,
        waits,
    }
}

/// Bytes of the event files (`index.*`) per event of the one session under `out`.
fn trace_bytes_per_event(out: &Path) -> Option<f64> {
    let session = std::fs::read_dir(out).ok()?.flatten().next()?.path();
    let pid_dir = std::fs::read_dir(session).ok()?.flatten().next()?.path();
    let s = atf::Session::open(pid_dir).ok()?;
    let bytes: u64 = s
        .threads
        .iter()
        .filter_map(|t| std::fs::metadata(t.index.path()).ok())
        .map(|m| m.len())
        .sum();
    Some(bytes as f64 / s.event_count().max(1) as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 50.0)
}

/// See the module documentation: whole-process overhead against uftrace's, bytes per event, and
/// the producer's waits for ring space.
fn whole_process(dir: &Path, tracer: &Path, full: bool) {
    let binary = build_c(dir, "whole_instr", OVERHEAD_C, true);
    let calls: u64 = if full { 5_000_000 } else { 100_000 };
    let runs = if full { 7 } else { 1 };
    let uftrace = uftrace_available();
    let mut runners = vec![
        Runner::Untraced,
        Runner::Tracer("atc"),
        Runner::Tracer("atf2"),
    ];
    if uftrace {
        runners.push(Runner::Uftrace);
    }
    println!(
        "whole-process wall time, ms: the -finstrument-functions workload, {calls} calls per \
         thread, median of {runs} interleaved runs, output removed and synced between runs"
    );
    println!(
        "{:>7} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9} {:>9} | {:>7} {:>7} | {:>9} {:>9}",
        "threads",
        "untraced",
        "atc",
        "atf2",
        "uftrace",
        "ovh atc",
        "ovh atf2",
        "ovh uft",
        "atc/uft",
        "atf2/uft",
        "B/ev atc",
        "B/ev v2",
        "waits atc",
        "waits v2"
    );
    for threads in [1u32, 4] {
        let args = [threads.to_string(), calls.to_string()];
        let mut walls: Vec<Vec<f64>> = vec![Vec::new(); runners.len()];
        let (mut bpe, mut waits) = (vec![Vec::new(); runners.len()], vec![0u64; runners.len()]);
        for _ in 0..runs {
            for (i, &runner) in runners.iter().enumerate() {
                let run = run_whole(dir, tracer, runner, &binary, &args);
                walls[i].push(run.wall_ms);
                bpe[i].extend(run.bytes_per_event);
                waits[i] += run.waits.unwrap_or(0);
            }
        }
        let m: Vec<f64> = walls.into_iter().map(median).collect();
        let uft = m.get(3).copied();
        let ovh = |i: usize| m[i] - m[0];
        let ratio =
            |i: usize| uft.map_or("-".to_owned(), |u| format!("{:.2}x", ovh(i) / (u - m[0])));
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{threads:>7} {:>9.1} {:>9.1} {:>9.1} {:>9} | {:>9.1} {:>9.1} {:>9} | {:>9} {:>9} | {:>7.2} {:>7.2} | {:>9} {:>9}",
            m[0],
            m[1],
            m[2],
            show(uft),
            ovh(1),
            ovh(2),
            show(uft.map(|u| u - m[0])),
            ratio(1),
            ratio(2),
            median(bpe[1].clone()),
            median(bpe[2].clone()),
            waits[1],
            waits[2],
        );
    }
    if !uftrace {
        println!("(uftrace is not installed: `apt-get install uftrace` adds its columns)");
    }
    println!(
        "ovh = traced - untraced; x/uft = our overhead / uftrace's; waits = times a traced thread \
         found its rings full and waited for the drain, over all runs of that format"
    );
}

/// Bytes per event of the spinning 3-level call tree (`top` → `mid` → `leaf` twice), 4 threads,
/// recorded for a second, in both formats.
fn spinning_tree_bytes(dir: &Path, tracer: &Path, full: bool) {
    let spin = build_c(dir, "spin", SPIN_C, true);
    let seconds = if full { "1" } else { "0.2" };
    println!();
    println!("bytes per event, 4 threads spinning in a 3-level call tree, {seconds} s recorded:");
    for format in ["atc", "atf2"] {
        let out = dir.join("spin-bytes");
        let result = Command::new(tracer)
            .args([
                "spawn",
                "--format",
                format,
                "--duration",
                seconds,
                "--output",
            ])
            .arg(&out)
            .arg(&spin)
            .args(["--", "4"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("the tracer runs");
        let stderr = String::from_utf8_lossy(&result.stderr);
        let events = summary_count(&stderr, "persisted").unwrap_or(0);
        let bpe = trace_bytes_per_event(&out).unwrap_or(f64::NAN);
        let waits = summary_count(&stderr, "waits for ring space").unwrap_or(0);
        println!(
            "  {format:>5}: {bpe:.2} B/event over {events} events, {waits} waits for ring space"
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// Runs `cmd` (the workload, possibly wrapped) and parses the workload's "<cpu ns> <wall ns>".
fn run_workload(mut cmd: Command) -> f64 {
    // A `-pg` program writes gmon.out into its working directory: keep it out of the tree.
    let out = cmd
        .current_dir(std::env::temp_dir())
        .stderr(Stdio::null())
        .output()
        .expect("the workload runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.split_whitespace().count() == 2)
        .unwrap_or_else(|| panic!("no figure in the workload's output: {text:?}"));
    line.split_whitespace()
        .next()
        .unwrap()
        .parse()
        .expect("a number")
}

fn uftrace_available() -> bool {
    Command::new("uftrace")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn overhead(dir: &Path, tracer: &Path, full: bool) {
    let plain = build_c(dir, "overhead_plain", OVERHEAD_C, false);
    let instrumented = build_c(dir, "overhead_instr", OVERHEAD_C, true);
    // The same workload built for gprof/uftrace: entry hook, return through a trampoline.
    let pg = benches::build_c_with(dir, "overhead_pg", OVERHEAD_C, &["-pg"]);
    let calls: u64 = if full { 10_000_000 } else { 200_000 };
    for (mode, instrumented) in [("-finstrument-functions", &instrumented), ("-pg", &pg)] {
        println!("{mode} build:");
        overhead_of(dir, tracer, &plain, instrumented, calls);
    }
}

/// [`overhead`] of one build of the workload, `instrumented`, against the `plain` one.
fn overhead_of(dir: &Path, tracer: &Path, plain: &Path, instrumented: &Path, calls: u64) {
    let uftrace = uftrace_available();
    println!("overhead per call+return pair (thread CPU ns), {calls} calls per thread");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "threads", "untraced", "no-op", "tracer", "uftrace", "tracer/uftrace"
    );
    for threads in [1u32, 4] {
        let args = [threads.to_string(), calls.to_string()];
        let mut untraced = Command::new(plain);
        untraced.args(&args);
        let mut noop = Command::new(instrumented);
        noop.args(&args);
        let out = dir.join("traces");
        let mut ours = Command::new(tracer);
        ours.arg("spawn")
            .arg("--output")
            .arg(&out)
            .arg(instrumented)
            .arg("--")
            .args(&args);
        let untraced = run_workload(untraced);
        let noop = run_workload(noop);
        let ours = run_workload(ours);
        let _ = std::fs::remove_dir_all(&out);
        let theirs = uftrace.then(|| {
            let data = dir.join("uftrace.data");
            let mut cmd = Command::new("uftrace");
            cmd.arg("record")
                .arg("-d")
                .arg(&data)
                .arg(instrumented)
                .args(&args);
            let ns = run_workload(cmd);
            let _ = std::fs::remove_dir_all(&data);
            ns
        });
        let (theirs_text, ratio) = match theirs {
            Some(t) => (
                format!("{t:.2}"),
                format!("{:.2}x", (ours - untraced) / (t - untraced)),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{threads:>8} {untraced:>10.2} {noop:>10.2} {ours:>10.2} {theirs_text:>10} {ratio:>14}"
        );
    }
    if !uftrace {
        println!("(uftrace is not installed: `apt-get install uftrace` adds its column)");
    }
    println!("ratio = (tracer - untraced) / (uftrace - untraced): the overhead, not the total");
}

/// Latest totals printed by a running [`STEADY_C`] workload: (call+return pairs, CPU ns).
type Totals = std::sync::Arc<std::sync::Mutex<Option<(u64, f64)>>>;

/// Starts `cmd` (the steady workload, possibly under `tracer spawn`) with its stdout read by a
/// thread that keeps the latest totals line.
fn start_steady(mut cmd: Command) -> (KillOnDrop, Totals) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the workload starts");
    let stdout = child.stdout.take().unwrap();
    let guard = KillOnDrop(child);
    let totals: Totals = Default::default();
    let latest = totals.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut f = line.split_whitespace();
            if let (Some(Ok(pairs)), Some(Ok(cpu)), None) = (
                f.next().map(str::parse::<u64>),
                f.next().map(str::parse::<f64>),
                f.next(),
            ) {
                *latest.lock().unwrap() = Some((pairs, cpu));
            }
        }
    });
    (guard, totals)
}

/// CPU ns per pair over the next `window`, extended until at least one chunk completed in it
/// (NaN if none did within 30 s).
fn per_pair(totals: &Totals, window: Duration) -> f64 {
    let latest = || *totals.lock().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(t) = latest() {
            break t;
        }
        assert!(Instant::now() < deadline, "the workload prints no totals");
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(window);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = latest().unwrap_or(first);
        if last.0 > first.0 {
            return (last.1 - first.1) / (last.0 - first.0) as f64;
        }
        if Instant::now() >= deadline {
            return f64::NAN;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn attach_overhead(dir: &Path, tracer: &Path, full: bool) {
    let steady = build_c(dir, "steady", STEADY_C, true);
    let (settle, window) = if full {
        (Duration::from_millis(300), Duration::from_secs(1))
    } else {
        (Duration::from_millis(50), Duration::from_millis(100))
    };
    let chunk: u32 = if full { 100_000 } else { 10_000 };
    println!();
    println!(
        "overhead after attach (thread CPU ns per call+return pair over {:.1} s windows)",
        window.as_secs_f64()
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "threads", "before", "attached", "after", "spawn", "attach/spawn"
    );
    let out = dir.join("attach-traces");
    for threads in [1u32, 4] {
        let args = [threads.to_string(), chunk.to_string()];
        // Untraced, then joined by the tracer, then left by it: one process throughout.
        let mut cmd = Command::new(&steady);
        cmd.args(&args);
        let (target, totals) = start_steady(cmd);
        assert!(wait_for_threads(target.pid(), threads as usize + 1));
        std::thread::sleep(settle);
        let before = per_pair(&totals, window);
        let report = dir.join("attach-report.json");
        let _ = std::fs::remove_file(&report);
        // Long enough for the settle and a window that waits for a late chunk.
        let recording = settle + 2 * window;
        let mut attach = Command::new(tracer)
            .arg("attach")
            .arg("--duration")
            .arg(format!("{:.3}", recording.as_secs_f64()))
            .arg("--output")
            .arg(&out)
            .arg(target.pid().to_string())
            .env("TRACER_ATTACH_REPORT", &report)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map(KillOnDrop)
            .expect("the tracer starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !report.exists() {
            let exited = attach.0.try_wait().expect("the tracer is ours").is_some();
            assert!(!exited && Instant::now() < deadline, "the attach failed");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(settle);
        let attached = per_pair(&totals, window);
        let status = attach.0.wait().expect("the tracer exits");
        let mut stderr = String::new();
        use std::io::Read;
        let _ = attach.0.stderr.take().unwrap().read_to_string(&mut stderr);
        let _ = std::fs::remove_dir_all(&out);
        assert!(status.success(), "tracer attach failed: {stderr}");
        std::thread::sleep(settle);
        let after = per_pair(&totals, window);
        drop(target);

        let mut cmd = Command::new(tracer);
        cmd.arg("spawn")
            .arg("--output")
            .arg(&out)
            .arg(&steady)
            .arg("--")
            .args(&args);
        let (spawned, totals) = start_steady(cmd);
        std::thread::sleep(settle);
        let spawn = per_pair(&totals, window);
        // SIGTERM to the tracer: it stops recording and stops the workload it spawned.
        drop(spawned);
        let _ = std::fs::remove_dir_all(&out);
        println!(
            "{threads:>8} {before:>10.2} {attached:>10.2} {after:>10.2} {spawn:>10.2} {:>13.2}x",
            (attached - before) / (spawn - before)
        );
    }
    println!("before/after: the same process untraced (glibc's no-op hooks) before and after the");
    println!("attach; ratio = (attached - before) / (spawn - before): the overhead, not the total");
}

/// Who gets the stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gesture {
    /// `kill -INT <tracer pid>`.
    Tracer,
    /// A terminal's Ctrl-C: SIGINT to the process group of the tracer and its target.
    Group,
}

/// The seeds' `shutdown__64_threads__then_under_100ms`, as figures: signal to exit, p50 and p99,
/// with the signal to the tracer alone and to the whole process group, and where the time went
/// (each phase of the summary, and the rest: signal delivery and the process's exit). With
/// `E2E_BASELINE_TRACER=<path>` another tracer binary (an earlier build) is stopped in turns with
/// this one, run for run, so a before/after comparison sees the same machine.
fn shutdown_latency(dir: &Path, tracer: &Path, full: bool) {
    let runs = if full { 20 } else { 2 };
    // The one-pass check only proves the driver works: few threads, so a loaded CI machine does
    // not turn it into a scheduling test.
    let threads: u32 = std::env::var("E2E_SHUTDOWN_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 64 } else { 8 });
    let tracers = tracers_to_compare(tracer);
    for gesture in [Gesture::Tracer, Gesture::Group] {
        shutdowns(dir, &tracers, threads, runs, gesture);
    }
}

/// This build's tracer, and the one `E2E_BASELINE_TRACER` names if set, each with its label.
fn tracers_to_compare(tracer: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut tracers = vec![("this build".to_owned(), tracer.to_path_buf())];
    if let Some(baseline) = std::env::var_os("E2E_BASELINE_TRACER") {
        let baseline = std::path::PathBuf::from(baseline);
        tracers.push((format!("baseline {}", baseline.display()), baseline));
    }
    tracers
}

/// One stop: the recording's summary, the time from signal to exit, whether it was clean.
struct Stop {
    wall_ms: f64,
    stderr: String,
    clean: bool,
    /// The session's first to last event, as its manifest says (seconds).
    events_span_s: Option<f64>,
}

/// Runs `tracer spawn spin <threads>` until it has recorded `after` (1 MiB of events, or a
/// time), signals it as `gesture` says, and times the exit.
fn stop_once(
    dir: &Path,
    tracer: &Path,
    threads: u32,
    gesture: Gesture,
    after: Option<Duration>,
) -> Stop {
    let spin = build_c(dir, "spin", SPIN_C, true);
    let out = dir.join("spin-traces");
    let mut cmd = Command::new(tracer);
    cmd.arg("spawn")
        .arg("--output")
        .arg(&out)
        .arg(&spin)
        .arg("--")
        .arg(threads.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if gesture == Gesture::Group {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    // Stopped on drop too (SIGTERM: the tracer stops the workload it spawned).
    let mut child = cmd.spawn().map(KillOnDrop).expect("the tracer starts");
    wait_until_recording(&out);
    if let Some(time) = after {
        std::thread::sleep(time);
    }
    let started = Instant::now();
    let pid = child.pid() as i32;
    let target = if gesture == Gesture::Group { -pid } else { pid };
    // SAFETY: signalling the tracer we started, or the process group it leads (itself and its
    // target).
    unsafe { libc::kill(target, libc::SIGINT) };
    let status = child.0.wait().expect("the tracer exits");
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child.0.stderr.take().unwrap().read_to_string(&mut stderr);
    let events_span_s = events_span(&out);
    let _ = std::fs::remove_dir_all(&out);
    let clean = status.success()
        && stderr.contains("shutdown complete")
        && !["failed", "forced", "skipped", "overran"]
            .iter()
            .any(|bad| stderr.contains(bad));
    Stop {
        wall_ms,
        stderr,
        clean,
        events_span_s,
    }
}

/// Seconds from the first to the last event of the one session under `out` (its manifest's time
/// range, over every thread).
fn events_span(out: &Path) -> Option<f64> {
    let session = std::fs::read_dir(out).ok()?.flatten().next()?.path();
    let pid_dir = std::fs::read_dir(session).ok()?.flatten().next()?.path();
    let m = atf::Session::open(pid_dir).ok()?.manifest;
    (m.time_end_ns > m.time_start_ns).then(|| (m.time_end_ns - m.time_start_ns) as f64 / 1e9)
}

/// The summary's phases, as its lines name them.
const PHASES: [&str; 6] = [
    "stopping acceptance",
    "closing registrations",
    "flushing",
    "final drain",
    "syncing",
    "cleanup",
];

/// `runs` stops of `threads` spinning threads by each of `tracers` in turn: p50/p99 of signal to
/// exit, of the summary's total and of each phase, and the time outside the phases (the signal's
/// delivery, the process's exit); unclean ones are listed and left out of the figures.
fn shutdowns(
    dir: &Path,
    tracers: &[(String, std::path::PathBuf)],
    threads: u32,
    runs: u32,
    gesture: Gesture,
) {
    // Per tracer: signal to exit, the summary's total, each phase, outside the phases.
    let mut figures = vec![vec![Vec::new(); PHASES.len() + 3]; tracers.len()];
    let mut unclean = vec![Vec::new(); tracers.len()];
    for run in 0..runs {
        for (at, (_, tracer)) in tracers.iter().enumerate() {
            let stop = stop_once(dir, tracer, threads, gesture, None);
            if !stop.clean {
                let reason = stop
                    .stderr
                    .lines()
                    .find(|l| {
                        ["failed", "forced", "overran"]
                            .iter()
                            .any(|b| l.contains(b))
                    })
                    .unwrap_or("the tracer failed")
                    .trim()
                    .to_owned();
                unclean[at].push(format!("run {run}: {reason}"));
                continue;
            }
            let total = summary_ms(&stop.stderr, "total");
            let f = &mut figures[at];
            f[0].push(stop.wall_ms);
            f[1].extend(total);
            for (i, phase) in PHASES.iter().enumerate() {
                f[2 + i].extend(summary_ms(&stop.stderr, phase));
            }
            f[PHASES.len() + 2].extend(total.map(|t| stop.wall_ms - t));
        }
    }
    let who = match gesture {
        Gesture::Tracer => "SIGINT to the tracer alone",
        Gesture::Group => "SIGINT to the process group (Ctrl-C)",
    };
    let labels = std::iter::once("signal to tracer exit")
        .chain(std::iter::once("shutdown phases (summary)"))
        .chain(PHASES.iter().copied())
        .chain(std::iter::once("outside them (signal, exit)"));
    let labels: Vec<&str> = labels.collect();
    for ((name, _), (mut f, unclean)) in tracers.iter().zip(figures.into_iter().zip(unclean)) {
        println!();
        println!(
            "shutdown latency, {threads} threads calling non-stop, {who}, {runs} runs, {name}"
        );
        for (label, v) in labels.iter().zip(f.iter_mut()) {
            v.sort_by(f64::total_cmp);
            println!(
                "  {label:<28} p50 {:8.2} ms   p99 {:8.2} ms   max {:8.2} ms",
                percentile(v, 50.0),
                percentile(v, 99.0),
                v.last().copied().unwrap_or(f64::NAN)
            );
        }
        if !unclean.is_empty() {
            println!("  not clean, left out of the figures above:");
            for line in &unclean {
                println!("    {line}");
            }
        }
    }
}

/// Many busy threads on few CPUs: `threads` spinning threads recorded for a while, then SIGINT to
/// the tracer. Events persisted per second of recording, ring-full drops, the stop's time and
/// whether it was clean; and the same for 4 threads, for the ratio. With `E2E_BASELINE_TRACER`
/// the baseline runs in turns with this build, run for run.
///
/// Two rates: persisted events over the time from spawn to the signal (start-up included: the
/// target's threads starting, their files being made), and over the session's first to last
/// event (the time the target was recording, as the manifest says). Start-up is a larger share
/// with 256 threads than with 4, so the second is the fairer ratio; both are printed.
fn oversubscribed(dir: &Path, tracer: &Path, full: bool) {
    let threads: u32 = std::env::var("E2E_BUSY_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 256 } else { 16 });
    let record = Duration::from_millis(if full { 2000 } else { 300 });
    let runs = if full { 5 } else { 1 };
    let runs: u32 = std::env::var("E2E_BUSY_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(runs);
    let tracers = tracers_to_compare(tracer);
    println!();
    println!(
        "oversubscribed: spinning threads recorded {} ms, then SIGINT to the tracer, {runs} runs",
        record.as_millis()
    );
    // Per tracer, per thread count: rates over spawn..signal and over the events' span, stop
    // times, ring-full drops, clean runs.
    #[derive(Default, Clone)]
    struct Figures {
        rate: Vec<f64>,
        span_rate: Vec<f64>,
        stop_ms: Vec<f64>,
        ring_full: u64,
        clean: u32,
    }
    let counts = [4, threads];
    let mut figures = vec![vec![Figures::default(); counts.len()]; tracers.len()];
    for (c, &n) in counts.iter().enumerate() {
        for _ in 0..runs {
            for (t, (_, tracer)) in tracers.iter().enumerate() {
                let f = &mut figures[t][c];
                let started = Instant::now();
                let stop = stop_once(dir, tracer, n, Gesture::Tracer, Some(record));
                let recorded = started.elapsed().as_secs_f64() - stop.wall_ms / 1e3;
                f.clean += u32::from(stop.clean);
                f.ring_full += summary_count(&stop.stderr, "ring full: ").unwrap_or(0);
                if let Some(persisted) = summary_count(&stop.stderr, "persisted") {
                    f.rate.push(persisted as f64 / recorded);
                    if let Some(span) = stop.events_span_s {
                        f.span_rate.push(persisted as f64 / span);
                    }
                }
                f.stop_ms.extend(summary_ms(&stop.stderr, "total"));
            }
        }
    }
    for ((name, _), per_count) in tracers.iter().zip(figures.iter_mut()) {
        println!("  {name}");
        println!(
            "{:>8} {:>16} {:>16} {:>10} {:>10} {:>10} {:>7}",
            "threads", "persisted/s", "over events", "ring full", "stop p50", "stop max", "clean"
        );
        for (f, n) in per_count.iter_mut().zip(counts) {
            for v in [&mut f.rate, &mut f.span_rate, &mut f.stop_ms] {
                v.sort_by(f64::total_cmp);
            }
            println!(
                "{n:>8} {:>14.2} M {:>14.2} M {:>10} {:>7.1} ms {:>7.1} ms {:>4}/{runs}",
                percentile(&f.rate, 50.0) / 1e6,
                percentile(&f.span_rate, 50.0) / 1e6,
                f.ring_full,
                percentile(&f.stop_ms, 50.0),
                f.stop_ms.last().copied().unwrap_or(f64::NAN),
                f.clean
            );
        }
        let ratio = |pick: fn(&Figures) -> &Vec<f64>| {
            100.0 * percentile(pick(&per_count[1]), 50.0) / percentile(pick(&per_count[0]), 50.0)
        };
        println!(
            "  {threads} threads persist {:.0} % of what 4 threads do over spawn..signal \
             (start-up included), {:.0} % over the first..last event (median rates)",
            ratio(|f| &f.rate),
            ratio(|f| &f.span_rate)
        );
    }
}

/// Waits until the session under `out` holds 1 MiB of events: the target is recording.
fn wait_until_recording(out: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if dir_size(out) > 1 << 20 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the target never recorded under {}", out.display());
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The milliseconds on the summary line starting with `label` (`total`, `syncing`...).
fn summary_ms(stderr: &str, label: &str) -> Option<f64> {
    let line = stderr.lines().find(|l| l.trim_start().starts_with(label))?;
    let at = line.split_whitespace().position(|w| w == "ms")?;
    line.split_whitespace().nth(at - 1)?.parse().ok()
}

/// The number after `label` in the summary (`persisted`, `ring full: `), commas removed.
fn summary_count(stderr: &str, label: &str) -> Option<u64> {
    let line = stderr.lines().find(|l| l.contains(label))?;
    let rest = &line[line.find(label)? + label.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(|c| *c != ',')
        .collect();
    digits.parse().ok()
}
