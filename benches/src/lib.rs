//! Benchmarks of the tracer's parts (criterion, under `benches/`) and end-to-end drivers.
//!
//! The library part holds only what several benchmarks share: the C workloads and how to build
//! them. The benchmarks themselves are the `[[bench]]` targets of this package; run one with
//! `cargo bench -p benches --bench <name>`. Under `cargo test --benches` each runs one short pass.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The per-call overhead workload: `overhead <threads> <calls>`. Each thread calls an instrumented
/// leaf function `calls` times and measures its own CPU time around the loop; the program prints
/// `<CPU ns per call+return pair> <wall ns per pair>`. Only `leaf` is instrumented, so the figure is
/// the cost of one call and one return.
pub const OVERHEAD_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static long calls;
__attribute__((noinline)) int leaf(int x) { __asm__ volatile("" ::: "memory"); return x + 1; }
__attribute__((no_instrument_function)) static double now(clockid_t c) {
    struct timespec ts; clock_gettime(c, &ts); return ts.tv_sec * 1e9 + ts.tv_nsec;
}
__attribute__((no_instrument_function)) void *worker(void *arg) {
    double t0 = now(CLOCK_THREAD_CPUTIME_ID);
    long s = 0;
    for (long i = 0; i < calls; i++) s += leaf((int)i);
    double t1 = now(CLOCK_THREAD_CPUTIME_ID);
    *(double *)arg = t1 - t0;
    return (void *)s;
}
__attribute__((no_instrument_function)) int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    calls = atol(argv[2]);
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

/// Compiles `source` with `cc -O2 -pthread` (plus `-finstrument-functions` when `instrument`)
/// into `dir/name`. Panics with cc's output if it fails: a benchmark without its workload has
/// nothing to measure.
pub fn build_c(dir: &Path, name: &str, source: &str, instrument: bool) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).expect("write the C source");
    let out = dir.join(name);
    let mut cmd = Command::new("cc");
    cmd.args(["-O2", "-pthread", "-o"]).arg(&out).arg(&src);
    if instrument {
        cmd.arg("-finstrument-functions");
    }
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
