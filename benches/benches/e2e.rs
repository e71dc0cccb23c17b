//! End-to-end drivers around the real `tracer` binary (custom harness, not criterion):
//!
//! - **Overhead per call+return pair**, side by side in one run on the same binaries: untraced,
//!   built with `-finstrument-functions` on glibc's no-op hooks, under `tracer spawn`, and under
//!   `uftrace record` (if installed: `apt-get install uftrace`), 1 and 4 threads. The figure is the
//!   workload's own thread CPU time per pair (what tracing costs the target), with its ratio to
//!   uftrace's.
//! - **Overhead after attach**: the steady workload ([`STEADY_C`]) started untraced (glibc's no-op
//!   hooks), joined by `tracer attach`, and left again; and the same workload under `tracer spawn`.
//!   CPU ns per pair over a window of each phase (before, attached, after the tracer left, spawn),
//!   1 and 4 threads, and the ratio of the attached overhead to spawn's (both minus the no-op
//!   hooks): attach should cost what spawn costs.
//! - **Shutdown latency**: `tracer spawn` on 64 threads calling instrumented functions non-stop,
//!   SIGINT to the tracer alone once it records, time until the tracer has exited; p50 and p99
//!   over the runs, and the shutdown manager's own total from the summary.
//!
//! `cargo bench -p benches --bench e2e` runs 10 M calls per thread and 20 shutdowns (of 64
//! threads; `E2E_SHUTDOWN_THREADS=<n>` for another count); `cargo test --benches` runs one short
//! pass of each (2 shutdowns of 8 threads). A shutdown that was forced is listed, not counted.

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
    overhead(dir.path(), &tracer, full);
    attach_overhead(dir.path(), &tracer, full);
    shutdown_latency(dir.path(), &tracer, full);
}

/// Runs `cmd` (the workload, possibly wrapped) and parses the workload's "<cpu ns> <wall ns>".
fn run_workload(mut cmd: Command) -> f64 {
    let out = cmd
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
    let calls: u64 = if full { 10_000_000 } else { 200_000 };
    let uftrace = uftrace_available();
    println!("overhead per call+return pair (thread CPU ns), {calls} calls per thread");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "threads", "untraced", "no-op", "tracer", "uftrace", "tracer/uftrace"
    );
    for threads in [1u32, 4] {
        let args = [threads.to_string(), calls.to_string()];
        let mut untraced = Command::new(&plain);
        untraced.args(&args);
        let mut noop = Command::new(&instrumented);
        noop.args(&args);
        let out = dir.join("traces");
        let mut ours = Command::new(tracer);
        ours.arg("spawn")
            .arg("--output")
            .arg(&out)
            .arg(&instrumented)
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
                .arg(&instrumented)
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

fn shutdown_latency(dir: &Path, tracer: &Path, full: bool) {
    let spin = build_c(dir, "spin", SPIN_C, true);
    let runs = if full { 20 } else { 2 };
    // The one-pass check only proves the driver works: few threads, so a loaded CI machine does
    // not turn it into a scheduling test.
    let threads: u32 = std::env::var("E2E_SHUTDOWN_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 64 } else { 8 });
    let mut wall = Vec::new();
    let mut managed = Vec::new();
    let mut unclean = Vec::new();
    for run in 0..runs {
        let out = dir.join("spin-traces");
        // Stopped on drop too (SIGTERM: the tracer stops the workload it spawned).
        let mut child = Command::new(tracer)
            .arg("spawn")
            .arg("--output")
            .arg(&out)
            .arg(&spin)
            .arg("--")
            .arg(threads.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map(KillOnDrop)
            .expect("the tracer starts");
        wait_until_recording(&out);
        let started = Instant::now();
        // SAFETY: signalling the tracer we started, by pid (not its process group).
        unsafe { libc::kill(child.pid() as i32, libc::SIGINT) };
        let status = child.0.wait().expect("the tracer exits");
        let elapsed = started.elapsed().as_secs_f64() * 1e3;
        let mut stderr = String::new();
        use std::io::Read;
        let _ = child.0.stderr.take().unwrap().read_to_string(&mut stderr);
        let _ = std::fs::remove_dir_all(&out);
        // A forced shutdown (threads preempted past the stop's timeout on an overloaded
        // machine) is said, and kept out of the percentiles: they describe clean shutdowns.
        if !status.success() || !stderr.contains("shutdown complete") {
            let reason = stderr
                .lines()
                .find(|l| l.contains("failed") || l.contains("forced"))
                .unwrap_or("the tracer failed")
                .trim()
                .to_owned();
            unclean.push(format!("run {run}: {reason}"));
            continue;
        }
        wall.push(elapsed);
        if let Some(ms) = summary_total_ms(&stderr) {
            managed.push(ms);
        }
    }
    wall.sort_by(f64::total_cmp);
    managed.sort_by(f64::total_cmp);
    println!();
    println!(
        "shutdown latency, {threads} threads calling non-stop, SIGINT to the tracer, {runs} runs"
    );
    println!(
        "  signal to tracer exit:      p50 {:8.2} ms   p99 {:8.2} ms   max {:8.2} ms",
        percentile(&wall, 50.0),
        percentile(&wall, 99.0),
        wall.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  shutdown phases (summary):  p50 {:8.2} ms   p99 {:8.2} ms",
        percentile(&managed, 50.0),
        percentile(&managed, 99.0)
    );
    if !unclean.is_empty() {
        println!("  not clean, left out of the figures above:");
        for line in &unclean {
            println!("    {line}");
        }
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

/// The `total  <x> ms` line of the shutdown summary.
fn summary_total_ms(stderr: &str) -> Option<f64> {
    let line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("total"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
