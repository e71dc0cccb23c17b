//! Library calls of an uninstrumented program, end to end (custom harness): a program that calls
//! a library function in a tight loop ([`LOOP_C`]) run untraced, under `tracer spawn` (its GOT
//! entries redirected to the agent's stubs, `--library-calls main`), under `uftrace record
//! --force` (its PLT hook) and under `ltrace` (breakpoints through ptrace), side by side in one
//! run. Two workloads: `getpid()` (a system call) and `leaf()`, a function of a small shared
//! library that only returns (no system call between the call and its return).
//!
//! Each figure is the loop's own time per call: thread CPU ns over the whole loop; wall ns over
//! the whole loop (ltrace's cost is mostly the target waiting for its tracer, which thread CPU
//! time does not see); and the wall ns of the loop's fastest batch of 5000 calls, the steady cost
//! with nothing else in the way (no preemption, no other thread sharing the core or its caches);
//! and how many times the workload's process was preempted (`nonvoluntary_ctxt_switches`: a
//! tracer's own threads waking on the workload's CPU show there).
//! The overhead is the figure minus the untraced one; each row's figure is its best of 5 rounds,
//! each round running every row once in turn (so a busy spell on the machine hits every row
//! alike). The ratio to uftrace is given both ways: from those best figures, and paired by round
//! (each round's CPU overhead over uftrace's in that round; the median and the range), which
//! does not pair one row's quiet moment with another's busy one. On a shared machine the two can
//! differ by a few hundredths, and a round's ratio moves by more than that.
//!
//! `cargo bench -p benches --bench library_calls` runs 2 M calls (200 k under ltrace, which is
//! ~1000× slower; ltrace only on `getpid`); `cargo test --benches` one short pass (50 k, 2 k
//! under ltrace). Tools that are not installed get a dash. `LIBRARY_CALLS_BASE=<another tracer
//! binary>` adds its row ("base"), to compare two builds of the tracer in one run; several,
//! comma-separated and each optionally named (`LIBRARY_CALLS_BASE=before=<path>,packed=<path>`),
//! add a row each. Every such row also gets the tracer's overhead over its own, paired by round.
//! `LIBRARY_CALLS_ROUNDS=<n>` runs n rounds instead of 5.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use benches::{build_c_with, build_tracer, full_run};

/// `<name> <calls>`: makes `CALL` (a macro: `getpid()` unless defined) `calls` times (rounded
/// down to whole batches), in batches of 5000 (or one batch of fewer), and prints "<thread CPU
/// ns per call> <wall ns per call> <best batch's wall ns per call> <times the process was
/// preempted>".
const LOOP_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <unistd.h>
#ifndef CALL
#define CALL getpid()
#endif
int leaf(int);
static double now(clockid_t c) { struct timespec ts; clock_gettime(c, &ts); return ts.tv_sec * 1e9 + ts.tv_nsec; }
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000, batch = n < 5000 ? n : 5000, s = 0;
    n -= n % batch;
    double best = 1e300;
    double c0 = now(CLOCK_THREAD_CPUTIME_ID), w0 = now(CLOCK_MONOTONIC);
    for (long done = 0; done < n; done += batch) {
        double b0 = now(CLOCK_MONOTONIC);
        for (long i = 0; i < batch; i++) s += CALL;
        double b1 = now(CLOCK_MONOTONIC);
        if (b1 - b0 < best) best = b1 - b0;
    }
    double c1 = now(CLOCK_THREAD_CPUTIME_ID), w1 = now(CLOCK_MONOTONIC);
    long preempted = -1;
    char line[256];
    FILE *status = fopen("/proc/self/status", "r");
    while (status && fgets(line, sizeof line, status))
        if (strncmp(line, "nonvoluntary_ctxt_switches:", 27) == 0) preempted = atol(line + 27);
    if (status) fclose(status);
    printf("%ld\n%.3f %.3f %.3f %ld\n", s & 1, (c1 - c0) / n, (w1 - w0) / n, best / batch, preempted);
    return 0;
}
"#;

/// The shared library of the `leaf` workload: a function that only returns.
const LEAF_C: &str = r#"
int leaf(int x) { __asm__ volatile("" ::: "memory"); return x + 1; }
"#;

/// Ns per call: thread CPU, wall, best batch's wall; and the times the workload was preempted.
type Figure = [f64; 4];

/// A [`Figure`] from the workload's last line of four numbers.
fn run(mut cmd: Command) -> Option<Figure> {
    let out = cmd
        .current_dir(std::env::temp_dir())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.split_whitespace().count() == 4)?;
    let mut f = line.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([f.next()??, f.next()??, f.next()??, f.next()??])
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

/// The rows of one workload: untraced, tracer, each other build (`bases`: name and binary),
/// uftrace, ltrace (if `ltrace`).
fn rows(
    exe: &Path,
    out: &Path,
    tracer: &Path,
    bases: &[(String, PathBuf)],
    ltrace: bool,
) -> Vec<(String, Launcher)> {
    let under_tracer = |tracer: &Path, out: PathBuf| -> Launcher {
        let (tracer, exe) = (tracer.to_owned(), exe.to_owned());
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
    let mut rows: Vec<(String, Launcher)> = Vec::new();
    let plain = exe.to_owned();
    rows.push((
        "untraced".into(),
        Box::new(move |arg: &str| {
            let mut c = Command::new(&plain);
            c.arg(arg);
            c
        }),
    ));
    rows.push(("tracer".into(), under_tracer(tracer, out.join("traces"))));
    for (i, (name, base)) in bases.iter().enumerate() {
        rows.push((
            name.clone(),
            under_tracer(base, out.join(format!("base-traces-{i}"))),
        ));
    }
    if installed("uftrace") {
        let (exe, data) = (exe.to_owned(), out.join("uftrace.data"));
        rows.push((
            "uftrace".into(),
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
    if ltrace && installed("ltrace") {
        let exe = exe.to_owned();
        rows.push((
            "ltrace".into(),
            Box::new(move |arg: &str| {
                let mut c = Command::new("ltrace");
                c.args(["-o", "/dev/null"]).arg(&exe).arg(arg);
                c
            }),
        ));
    }
    rows
}

fn main() {
    let full = full_run();
    let dir = tempfile::tempdir().expect("temp dir");
    let tracer = build_tracer();
    let (calls, ltrace_calls) = if full {
        (2_000_000u64, 200_000u64)
    } else {
        (50_000, 2_000)
    };
    // `LIBRARY_CALLS_ROUNDS=<n>`: more rounds, for a side-by-side comparison of two builds
    // (with `LIBRARY_CALLS_BASE`) whose difference is smaller than a 5-round best moves.
    let rounds = std::env::var("LIBRARY_CALLS_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(if full { 5 } else { 1 });
    // Other builds of the tracer to compare with, side by side (a row each).
    let bases = match std::env::var("LIBRARY_CALLS_BASE").map(|v| other_builds(&v)) {
        Ok(Ok(bases)) => bases,
        Ok(Err(e)) => {
            eprintln!("LIBRARY_CALLS_BASE: {e}");
            std::process::exit(2);
        }
        Err(_) => Vec::new(),
    };
    let getpid = build_c_with(dir.path(), "getpid_loop", LOOP_C, &[]);
    build_c_with(dir.path(), "libleaf.so", LEAF_C, &["-shared", "-fPIC"]);
    let leaf = build_c_with(
        dir.path(),
        "leaf_loop",
        LOOP_C,
        &[
            "-DCALL=leaf((int)i)",
            &format!("-L{}", dir.path().display()),
            "-lleaf",
            &format!("-Wl,-rpath,{}", dir.path().display()),
        ],
    );
    for (workload, exe, ltrace) in [
        ("getpid()", &getpid, true),
        ("leaf(), a shared library's function", &leaf, false),
    ] {
        let rows = rows(exe, dir.path(), &tracer, &bases, ltrace);
        let ours: Vec<&str> = std::iter::once("tracer")
            .chain(bases.iter().map(|(name, _)| name.as_str()))
            .collect();
        println!(
            "{workload} loop, {calls} calls ({ltrace_calls} under ltrace), best of {rounds} rounds \
             (each round runs every row once, in turn): ns per call, thread CPU | wall | best \
             5000-call batch's wall; and the fewest times the workload was preempted"
        );
        let mut best: Vec<Option<Figure>> = vec![None; rows.len()];
        // Each round's figures, for the paired ratios below.
        let mut by_round: Vec<Vec<Option<Figure>>> = Vec::new();
        for _ in 0..rounds {
            let mut this_round = Vec::new();
            for ((name, launch), best) in rows.iter().zip(best.iter_mut()) {
                let n = if name == "ltrace" {
                    ltrace_calls
                } else {
                    calls
                };
                let got = run(launch(&n.to_string()));
                this_round.push(got);
                if let Some(v) = got {
                    *best = Some(best.map_or(v, |b: Figure| {
                        [
                            b[0].min(v[0]),
                            b[1].min(v[1]),
                            b[2].min(v[2]),
                            b[3].min(v[3]),
                        ]
                    }));
                }
            }
            by_round.push(this_round);
        }
        let figure = |name: &str| rows.iter().position(|r| r.0 == name).and_then(|i| best[i]);
        let untraced = figure("untraced").expect("the workload runs");
        let overhead = |v: Figure| [0, 1, 2].map(|i| v[i] - untraced[i]);
        for (name, _) in &rows {
            match figure(name) {
                Some(v) => {
                    let o = overhead(v);
                    println!(
                        "{name:>10} {:>9.1} | {:>9.1} | {:>7.1}   overhead {:>8.1} | {:>8.1} | \
                         {:>6.1}   preempted {:>6}",
                        v[0], v[1], v[2], o[0], o[1], o[2], v[3]
                    )
                }
                None => println!("{name:>10} {:>9} | {:>9} | {:>7}", "-", "-", "-"),
            }
        }
        for &ours in &ours {
            if let (Some(o), Some(u)) = (figure(ours), figure("uftrace")) {
                let (o, u) = (overhead(o), overhead(u));
                println!(
                    "{ours} / uftrace overhead: {:.2}x (CPU) | {:.2}x (wall) | {:.2}x (best batch)",
                    o[0] / u[0],
                    o[1] / u[1],
                    o[2] / u[2]
                );
            }
        }
        // Paired: each round's CPU overhead over uftrace's in the same round, against the same
        // round's untraced run. A busy or quiet spell of the machine then moves both sides of a
        // ratio together; the best-of figures above can pair one row's quiet moment with
        // another's busy one.
        let column = |name: &str| rows.iter().position(|r| r.0 == name);
        // `over` of each round, the overhead of row `a` over that of row `b`: median and range.
        let paired = |a: usize, b: usize, untraced: usize| {
            let ratios: Vec<f64> = by_round
                .iter()
                .filter_map(|r| {
                    let (u, a, b) = (r[untraced]?, r[a]?, r[b]?);
                    Some((a[0] - u[0]) / (b[0] - u[0]))
                })
                .collect();
            let n = ratios.len();
            median_and_range(ratios).map(|(median, low, high)| {
                format!("median {median:.3}x (CPU), {low:.3}x to {high:.3}x over {n} rounds")
            })
        };
        if let Some(u) = column("untraced") {
            for &ours in &ours {
                let Some(o) = column(ours) else { continue };
                if let Some(line) = column("uftrace").and_then(|f| paired(o, f, u)) {
                    println!("{ours} / uftrace overhead, paired by round: {line}");
                }
            }
            let tracer = column("tracer");
            for (name, _) in &bases {
                if let Some(line) = tracer.zip(column(name)).and_then(|(t, b)| paired(t, b, u)) {
                    println!("tracer / {name} overhead, paired by round: {line}");
                }
            }
        }
        if let (Some(o), Some(l)) = (figure("tracer"), figure("ltrace")) {
            let (o, l) = (overhead(o), overhead(l));
            println!(
                "ltrace / tracer overhead: {:.0}x (CPU) | {:.0}x (wall)",
                l[0] / o[0],
                l[1] / o[1]
            );
        }
    }
}

/// The other builds `LIBRARY_CALLS_BASE` names: comma-separated binaries, each `name=path` or a
/// bare path (named `base`, then `base2`, `base3`...). A name must be new and not one of the
/// bench's own rows.
fn other_builds(value: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let mut builds: Vec<(String, PathBuf)> = Vec::new();
    let mut unnamed = 0;
    for entry in value.split(',').filter(|entry| !entry.is_empty()) {
        let (name, path) = match entry.split_once('=') {
            Some((name, path)) => (name.to_owned(), path),
            None => {
                unnamed += 1;
                let name = if unnamed == 1 {
                    "base".to_owned()
                } else {
                    format!("base{unnamed}")
                };
                (name, entry)
            }
        };
        if name.is_empty()
            || ["untraced", "tracer", "uftrace", "ltrace"].contains(&name.as_str())
            || builds.iter().any(|(n, _)| *n == name)
        {
            return Err(format!(
                "the row name `{name}` is empty, taken, or used twice; give each build its own \
                 name, as in `before=<path>,after=<path>`"
            ));
        }
        builds.push((name, PathBuf::from(path)));
    }
    Ok(builds)
}

/// The median of `values` (the lower middle one of an even count) and their range; `None` when
/// there are none.
fn median_and_range(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    values.sort_by(f64::total_cmp);
    let (first, last) = (*values.first()?, *values.last()?);
    Some((values[(values.len() - 1) / 2], first, last))
}
