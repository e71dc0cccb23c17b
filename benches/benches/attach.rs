//! How long `tracer attach` stops its target: a 17-thread program ([`SPIN_C`], 16 workers calling
//! instrumented functions non-stop) is joined with `tracer attach --duration 0.05`, and the
//! tracer's own figures are read from its `TRACER_ATTACH_REPORT` file:
//!
//! - `attach_stop/first_attach`: each attach joins a fresh process (the agent's first load there);
//! - `attach_stop/later_attach`: every attach joins the same process, attached once before.
//!
//! Criterion's figure is the time the thread that loads the agent is held (the longest any thread
//! is stopped; goal: under 5 ms), summed by `iter_custom` over the attaches of a sample, not the
//! wall time of the attach. After each, every attach run's figures are printed as p50/p90/max:
//! the held time; how much of it the thread ran, waited for a CPU (17 CPU-bound threads on a few
//! CPUs wait most of the time, held or not), and neither (asleep in the kernel, as in a
//! membarrier registration, or stopped while the tracer takes its turn); and the detach round
//! (each other thread is stopped once, within it).
//!
//! `cargo bench -p benches --bench attach`: 10 samples of one attach each (criterion warns that it
//! cannot finish them in its 10 ms target: that target is what keeps it to one attach per
//! sample). `cargo test --benches` attaches once each.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use benches::{build_c, build_tracer, percentile, wait_for_threads, KillOnDrop, SPIN_C};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};

const WORKERS: usize = 16;

/// The tracer, the workload and a scratch directory for sessions and reports.
struct Setup {
    tracer: PathBuf,
    spin: PathBuf,
    dir: tempfile::TempDir,
}

/// The figures of every attach run, in ms, from the tracer's reports.
#[derive(Default)]
struct Stops {
    held: Vec<f64>,
    /// Of `held`: the thread waiting for a CPU (the target's own threads and other load compete).
    runnable: Vec<f64>,
    /// Of `held`: the thread on a CPU.
    running: Vec<f64>,
    /// Of `held`: neither (asleep in the kernel, or stopped while the tracer takes its turn).
    other: Vec<f64>,
    detach_round: Vec<f64>,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let spin = build_c(dir.path(), "spin", SPIN_C, true);
        Setup {
            tracer: build_tracer(),
            spin,
            dir,
        }
    }

    /// Starts the workload and waits until all its workers run.
    fn start_target(&self) -> KillOnDrop {
        let target = Command::new(&self.spin)
            .arg(WORKERS.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(KillOnDrop)
            .expect("the workload starts");
        assert!(
            wait_for_threads(target.pid(), WORKERS + 1),
            "the workload did not start its threads"
        );
        std::thread::sleep(Duration::from_millis(20));
        target
    }

    /// Attaches to `pid` for 50 ms; returns the time the loading thread was held, and records it
    /// and the detach round in `stops`. The session is deleted at once.
    fn attach(&self, pid: u32, stops: &RefCell<Stops>) -> Duration {
        let out = self.dir.path().join("sessions");
        let report = self.dir.path().join("report.json");
        let _ = std::fs::remove_file(&report);
        let result = Command::new(&self.tracer)
            .args(["attach", "--duration", "0.05", "--output"])
            .arg(&out)
            .arg(pid.to_string())
            .env("TRACER_ATTACH_REPORT", &report)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("the tracer runs");
        let _ = std::fs::remove_dir_all(&out);
        assert!(
            result.status.success(),
            "tracer attach failed: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let json = read_report(&report);
        let ms = |key: &str| json[key].as_u64().map(|ns| ns as f64 / 1e6);
        let held = ms("held_ns").expect("the report has held_ns");
        let mut stops = stops.borrow_mut();
        stops.held.push(held);
        let runnable = ms("held_runnable_ns");
        let running = ms("held_running_ns");
        stops.runnable.extend(runnable);
        stops.running.extend(running);
        if let (Some(runnable), Some(running)) = (runnable, running) {
            stops.other.push((held - runnable - running).max(0.0));
        }
        stops.detach_round.extend(ms("detach_round_ns"));
        Duration::from_secs_f64(held / 1e3)
    }
}

/// A `TRACER_ATTACH_REPORT` file.
fn read_report(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("the tracer wrote its attach report");
    serde_json::from_str(&text).expect("the report is JSON")
}

fn summary(name: &str, stops: &Stops) {
    let line = |what: &str, values: &[f64]| {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        println!(
            "{name}: {what} p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms over {} attaches",
            percentile(&v, 50.0),
            percentile(&v, 90.0),
            v.last().copied().unwrap_or(f64::NAN),
            v.len()
        );
    };
    line("loading thread held", &stops.held);
    line("  of it on a CPU", &stops.running);
    line("  of it waiting for a CPU", &stops.runnable);
    line("  of it asleep or stopped", &stops.other);
    line("detach round", &stops.detach_round);
}

fn attach_stop(c: &mut Criterion) {
    let setup = Setup::new();
    let mut group = c.benchmark_group("attach_stop");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_nanos(1))
        .measurement_time(Duration::from_millis(10));

    let first = RefCell::new(Stops::default());
    group.bench_function("first_attach", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let target = setup.start_target();
                    setup.attach(target.pid(), &first)
                })
                .sum()
        })
    });
    summary("first_attach", &first.borrow());

    let later = RefCell::new(Stops::default());
    let target = setup.start_target();
    // The agent's first load in this process, not measured.
    setup.attach(target.pid(), &RefCell::default());
    group.bench_function("later_attach", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| setup.attach(target.pid(), &later)).sum())
    });
    summary("later_attach", &later.borrow());
    group.finish();
}

criterion_group!(benches, attach_stop);
criterion_main!(benches);
