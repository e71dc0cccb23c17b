//! Library calls of an uninstrumented program, end to end (custom harness): a program that calls
//! `getpid()` in a tight loop ([`GETPID_C`]) run untraced, under `tracer spawn` (its GOT entries
//! redirected to the agent's stubs, `--library-calls main`), under `uftrace record --force` (its
//! PLT hook) and under `ltrace` (breakpoints through ptrace), side by side in one run. Each figure
//! is the loop's own time per call (thread CPU ns, and wall ns: ltrace's cost is mostly the
//! target waiting for its tracer, which thread CPU time does not see), and the overhead is the
//! figure minus the untraced one, best of 5 rounds, each round running every row once in turn
//! (so a busy spell on the machine hits every row alike).
//!
//! `cargo bench -p benches --bench library_calls` runs 2 M calls (200 k under ltrace, which is
//! ~1000× slower); `cargo test --benches` one short pass (50 k, 2 k under ltrace). Tools that
//! are not installed get a dash. `LIBRARY_CALLS_BASE=<another tracer binary>` adds its row
//! ("base"), to compare two builds of the tracer in one run.

use std::process::{Command, Stdio};

use benches::{build_c, build_tracer, full_run};

/// `getpid_loop <calls>`: calls `getpid()` `calls` times and prints
/// "<thread CPU ns per call> <wall ns per call>".
const GETPID_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(clockid_t c) { struct timespec ts; clock_gettime(c, &ts); return ts.tv_sec * 1e9 + ts.tv_nsec; }
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    double c0 = now(CLOCK_THREAD_CPUTIME_ID), w0 = now(CLOCK_MONOTONIC);
    long s = 0;
    for (long i = 0; i < n; i++) s += getpid();
    double c1 = now(CLOCK_THREAD_CPUTIME_ID), w1 = now(CLOCK_MONOTONIC);
    printf("%ld\n%.3f %.3f\n", s & 1, (c1 - c0) / n, (w1 - w0) / n);
    return 0;
}
"#;

/// (CPU ns, wall ns) per call, from the workload's last line of two numbers.
fn run(mut cmd: Command) -> Option<(f64, f64)> {
    let out = cmd
        .current_dir(std::env::temp_dir())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.split_whitespace().count() == 2)?;
    let mut f = line.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some((f.next()??, f.next()??))
}

fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How a row's workload is started, given the calls to make.
type Launcher = Box<dyn Fn(&str) -> Command>;

fn main() {
    let full = full_run();
    let dir = tempfile::tempdir().expect("temp dir");
    let tracer = build_tracer();
    let exe = build_c(dir.path(), "getpid_loop", GETPID_C, false);
    let (calls, ltrace_calls) = if full {
        (2_000_000u64, 200_000u64)
    } else {
        (50_000, 2_000)
    };
    let rounds = if full { 5 } else { 1 };
    // Another build of the tracer to compare with, side by side (its own row).
    let base = std::env::var_os("LIBRARY_CALLS_BASE").map(std::path::PathBuf::from);
    println!(
        "getpid() loop, {calls} calls ({ltrace_calls} under ltrace), best of {rounds} rounds (each \
         round runs every row once, in turn): ns per call, thread CPU | wall"
    );
    let under_tracer = |tracer: std::path::PathBuf, out: std::path::PathBuf| -> Launcher {
        let exe = exe.clone();
        Box::new(move |arg: &str| {
            let _ = std::fs::remove_dir_all(&out);
            let mut c = Command::new(&tracer);
            c.args(["spawn", "--library-calls", "main", "--output"])
                .arg(&out)
                .arg(&exe)
                .arg("--")
                .arg(arg);
            c
        })
    };
    let mut rows: Vec<(&str, u64, Launcher)> = Vec::new();
    rows.push((
        "untraced",
        calls,
        Box::new({
            let exe = exe.clone();
            move |arg: &str| {
                let mut c = Command::new(&exe);
                c.arg(arg);
                c
            }
        }),
    ));
    rows.push((
        "tracer",
        calls,
        under_tracer(tracer.clone(), dir.path().join("traces")),
    ));
    if let Some(base) = base {
        rows.push((
            "base",
            calls,
            under_tracer(base, dir.path().join("base-traces")),
        ));
    }
    if installed("uftrace") {
        let (exe, data) = (exe.clone(), dir.path().join("uftrace.data"));
        rows.push((
            "uftrace",
            calls,
            Box::new(move |arg: &str| {
                let _ = std::fs::remove_dir_all(&data);
                let mut c = Command::new("uftrace");
                c.args(["record", "--force", "-d"])
                    .arg(&data)
                    .arg(&exe)
                    .arg(arg);
                c
            }),
        ));
    }
    if installed("ltrace") {
        let exe = exe.clone();
        rows.push((
            "ltrace",
            ltrace_calls,
            Box::new(move |arg: &str| {
                let mut c = Command::new("ltrace");
                c.args(["-o", "/dev/null"]).arg(&exe).arg(arg);
                c
            }),
        ));
    }
    let mut best: Vec<Option<(f64, f64)>> = vec![None; rows.len()];
    for _ in 0..rounds {
        for ((_, n, launch), best) in rows.iter().zip(best.iter_mut()) {
            if let Some(v) = run(launch(&n.to_string())) {
                *best = Some(best.map_or(v, |b: (f64, f64)| (b.0.min(v.0), b.1.min(v.1))));
            }
        }
    }
    let figure = |name: &str| rows.iter().position(|r| r.0 == name).and_then(|i| best[i]);
    let untraced = figure("untraced").expect("the workload runs");
    let show = |name: &str, v: Option<(f64, f64)>| match v {
        Some((cpu, wall)) => println!(
            "{name:>10} {cpu:>10.1} | {wall:>10.1}   overhead {:>9.1} | {:>9.1}",
            cpu - untraced.0,
            wall - untraced.1
        ),
        None => println!("{name:>10} {:>10} | {:>10}", "-", "-"),
    };
    for name in ["untraced", "tracer", "base", "uftrace", "ltrace"] {
        if name != "base" || rows.iter().any(|r| r.0 == "base") {
            show(name, figure(name));
        }
    }
    let overhead = |v: (f64, f64)| (v.0 - untraced.0, v.1 - untraced.1);
    for ours in ["tracer", "base"] {
        if let (Some(o), Some(u)) = (figure(ours), figure("uftrace")) {
            let (o, u) = (overhead(o), overhead(u));
            println!(
                "{ours} / uftrace overhead: {:.2}x (CPU) | {:.2}x (wall)",
                o.0 / u.0,
                o.1 / u.1
            );
        }
    }
    if let (Some(o), Some(l)) = (figure("tracer"), figure("ltrace")) {
        let (o, l) = (overhead(o), overhead(l));
        println!(
            "ltrace / tracer overhead: {:.0}x (CPU) | {:.0}x (wall)",
            l.0 / o.0,
            l.1 / o.1
        );
    }
}
