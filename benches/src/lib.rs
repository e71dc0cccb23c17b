//! Benchmarks of the tracer's parts (criterion, under `benches/`) and end-to-end drivers.
//!
//! The library part holds only what several benchmarks share: the C workloads and how to build
//! them. The benchmarks themselves are the `[[bench]]` targets of this package; run one with
//! `cargo bench -p benches --bench <name>`. Under `cargo test --benches` each runs one short pass.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// The per-call overhead workload: `overhead <threads> <calls> [nested]`. Each thread calls an
/// instrumented leaf function `calls` times and measures its own CPU time around the loop; the
/// program prints `<CPU ns per call+return pair> <wall ns per pair>`. The loop itself is not
/// instrumented, so the figure is the cost of one call and one return. With `nested`, the loop
/// calls `mid` instead, an instrumented function that calls `leaf` twice: `calls` pairs in
/// threes, two of them made from inside a traced call (an entry-only hook's shadow stack is two
/// deep there, as in real programs).
pub const OVERHEAD_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static long calls;
static int nested;
__attribute__((noinline)) int leaf(int x) { __asm__ volatile("" ::: "memory"); return x + 1; }
__attribute__((noinline)) int mid(int x) { return leaf(x) + leaf(x + 1); }
__attribute__((no_instrument_function)) static double now(clockid_t c) {
    struct timespec ts; clock_gettime(c, &ts); return ts.tv_sec * 1e9 + ts.tv_nsec;
}
__attribute__((no_instrument_function)) void *worker(void *arg) {
    double t0 = now(CLOCK_THREAD_CPUTIME_ID);
    long s = 0;
    if (nested) for (long i = 0; i < calls / 3; i++) s += mid((int)i);
    else for (long i = 0; i < calls; i++) s += leaf((int)i);
    double t1 = now(CLOCK_THREAD_CPUTIME_ID);
    *(double *)arg = t1 - t0;
    return (void *)s;
}
__attribute__((no_instrument_function)) int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    calls = atol(argv[2]);
    nested = argc > 3;
    if (nested) calls = calls / 3 * 3;
    pthread_t t[64];
    double cpu[64];
    double w0 = now(CLOCK_MONOTONIC);
    for (int i = 0; i < threads; i++) pthread_create(&t[i], 0, worker, &cpu[i]);
    double total = 0;
    for (int i = 0; i < threads; i++) { pthread_join(t[i], 0); total += cpu[i]; }
    double w1 = now(CLOCK_MONOTONIC);
    printf("%.3f %.3f\n", total / ((double)calls * threads), (w1 - w0) / ((double)calls * threads));
    return 0;
}
"#;

/// The shutdown workload: `spin <threads>`: every thread calls instrumented functions non-stop
/// (`top` → `mid` → `leaf` twice) until the process is stopped.
pub const SPIN_C: &str = r#"
#include <pthread.h>
#include <stdlib.h>
static volatile long sink;
__attribute__((noinline)) void leaf(long i) { sink += i; }
__attribute__((noinline)) void mid(long i) { leaf(i); leaf(i + 1); }
__attribute__((noinline)) void top(long i) { mid(i); }
void *worker(void *arg) { (void)arg; for (long i = 0;; i++) top(i); return 0; }
int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 64;
    pthread_t t[1024];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], 0, worker, 0);
    for (int i = 0; i < threads; i++) pthread_join(t[i], 0);
    return 0;
}
"#;

/// The steady workload: `steady <threads> <chunk>`. Each thread calls an instrumented leaf function
/// forever in chunks of `chunk` calls and adds each chunk's count and thread CPU time to its totals;
/// the main thread prints every workers' sum as `<call+return pairs> <CPU ns>` every 10 ms. The CPU
/// time per pair over any window is the difference of two lines: the way to measure a process
/// that a tracer joins and leaves while it runs. Only `leaf` is instrumented (as in
/// [`OVERHEAD_C`]).
pub const STEADY_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static long chunk;
static struct total { pthread_mutex_t lock; long pairs; double cpu; } totals[64];
__attribute__((noinline)) int leaf(int x) { __asm__ volatile("" ::: "memory"); return x + 1; }
__attribute__((no_instrument_function)) static double now(clockid_t c) {
    struct timespec ts; clock_gettime(c, &ts); return ts.tv_sec * 1e9 + ts.tv_nsec;
}
__attribute__((no_instrument_function)) void *worker(void *arg) {
    struct total *t = arg;
    long s = 0;
    for (;;) {
        double t0 = now(CLOCK_THREAD_CPUTIME_ID);
        for (long i = 0; i < chunk; i++) s += leaf((int)i);
        double t1 = now(CLOCK_THREAD_CPUTIME_ID);
        pthread_mutex_lock(&t->lock);
        t->pairs += chunk;
        t->cpu += t1 - t0;
        pthread_mutex_unlock(&t->lock);
    }
    return (void *)s;
}
__attribute__((no_instrument_function)) int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    chunk = atol(argv[2]);
    if (threads < 1 || threads > 64 || chunk < 1) { fprintf(stderr, "usage: steady <1-64> <chunk>\n"); return 2; }
    pthread_t t[64];
    for (int i = 0; i < threads; i++) {
        pthread_mutex_init(&totals[i].lock, 0);
        pthread_create(&t[i], 0, worker, &totals[i]);
    }
    for (;;) {
        usleep(10000);
        long pairs = 0;
        double cpu = 0;
        for (int i = 0; i < threads; i++) {
            pthread_mutex_lock(&totals[i].lock);
            pairs += totals[i].pairs;
            cpu += totals[i].cpu;
            pthread_mutex_unlock(&totals[i].lock);
        }
        printf("%ld %.0f\n", pairs, cpu);
        fflush(stdout);
    }
}
"#;

/// Compiles `source` with `cc -O2 -pthread` (plus `-finstrument-functions` when `instrument`)
/// into `dir/name`. Panics with cc's output if it fails: a benchmark without its workload has
/// nothing to measure.
pub fn build_c(dir: &Path, name: &str, source: &str, instrument: bool) -> PathBuf {
    let flags: &[&str] = if instrument {
        &["-finstrument-functions"]
    } else {
        &[]
    };
    build_c_with(dir, name, source, flags)
}

/// [`build_c`] with other instrumentation flags (`-pg`, `-pg -mfentry`).
pub fn build_c_with(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).expect("write the C source");
    let out = dir.join(name);
    let mut cmd = Command::new("cc");
    cmd.args(["-O2", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .args(flags);
    let result = cmd.output().expect("cc on PATH");
    assert!(
        result.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// Whether this benchmark binary runs as a real benchmark (`cargo bench` passes `--bench`) rather
/// than the one-pass check of `cargo test --benches`.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Percentile `p` (0..=100) of `sorted` values, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Builds the tracer (and its agent) in the profile this benchmark binary was built in (release
/// for `cargo bench`, debug for `cargo test --benches`) and returns the tracer's path.
pub fn build_tracer() -> PathBuf {
    // This binary is target/<profile>/deps/<bench>-<hash>; the tracer is target/<profile>/tracer.
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a benchmark binary under target/<profile>/deps");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the benches crate");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace)
        .args(["build", "--quiet", "-p", "cli"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("cargo runs").success(),
        "building the tracer failed"
    );
    let tracer = profile_dir.join("tracer");
    assert!(tracer.exists(), "no tracer at {}", tracer.display());
    tracer
}

/// A process that is stopped (and reaped) when this guard drops, also when a benchmark panics: a
/// workload that calls non-stop must never outlive its benchmark. SIGTERM first, so a tracer ends
/// its recording and stops the program it spawned; SIGKILL if it is still there after 10 s.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        // SAFETY: a signal to our own child, by pid; it is not reaped yet, so the pid is its own.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until process `pid` runs `threads` threads (up to 10 s). `false`: it did not.
pub fn wait_for_threads(pid: u32, threads: usize) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let n = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(0);
        if n >= threads {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}
