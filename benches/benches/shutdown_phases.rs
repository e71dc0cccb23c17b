//! Shutdown costs: the signal handler's body (target: under 1 µs) and a real `raise` round trip
//! through it, and the manager running its phases over fake pipelines.
//!
//! `cargo bench -p benches --bench shutdown_phases`

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use shutdown::{
    Budgets, Error, PhaseContext, Pipeline, Reason, Shutdown, Statistics, Summary, TargetFate,
};
use std::mem::MaybeUninit;

/// Fresh states per batch: each holds an eventfd, so keep batches well under the fd limit.
const BATCH: BatchSize = BatchSize::NumIterations(256);

extern "C" fn empty_handler(_: libc::c_int) {}

fn signal_handler(c: &mut Criterion) {
    let mut g = c.benchmark_group("signal_handler");
    // The handler's work without the kernel: the first request (exchange wins, eventfd write)...
    g.bench_function("body_first_request", |b| {
        b.iter_batched(
            || Shutdown::new().unwrap(),
            |s| {
                black_box(s.notify_signal(libc::SIGINT));
                s
            },
            BATCH,
        )
    });
    // ...and a repeated signal (exchange loses, counted, eventfd write).
    let s = Shutdown::new().unwrap();
    s.request(Reason::Timer);
    g.bench_function("body_repeat_signal", |b| {
        b.iter(|| black_box(s.notify_signal(libc::SIGINT)))
    });

    // The kernel's share: raise() into a handler that does nothing.
    // SAFETY: plain data; zero is a valid start.
    let mut sa: libc::sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
    sa.sa_sigaction = empty_handler as extern "C" fn(libc::c_int) as usize;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: installs a valid do-nothing handler for SIGUSR1, a signal nothing else here uses.
    unsafe { libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) };
    g.bench_function("raise_empty_handler", |b| {
        // SAFETY: raise has no memory-safety preconditions.
        b.iter(|| unsafe { libc::raise(libc::SIGUSR1) })
    });

    // The whole round trip through the installed shutdown handler.
    let shutdown = Shutdown::new().unwrap();
    let guard = shutdown.install_signals().unwrap();
    g.bench_function("raise_shutdown_handler", |b| {
        // SAFETY: raise has no memory-safety preconditions; our handler is installed.
        b.iter(|| unsafe { libc::raise(libc::SIGINT) })
    });
    guard.restore().unwrap();
    g.finish();
}

/// A pipeline whose phases do the bookkeeping a real one does, without I/O.
struct FakePipeline {
    buffers: Vec<u64>,
    persisted: u64,
}

impl Pipeline for FakePipeline {
    fn stop_acceptance(&mut self, ctx: &PhaseContext<'_>) -> Result<(), Error> {
        black_box(ctx.forced());
        Ok(())
    }
    fn close_registrations(&mut self, _: &PhaseContext<'_>) -> Result<(), Error> {
        Ok(())
    }
    fn flush(&mut self, ctx: &PhaseContext<'_>) -> Result<(), Error> {
        for b in &mut self.buffers {
            if ctx.forced() {
                break;
            }
            self.persisted += std::mem::take(b);
        }
        Ok(())
    }
    fn final_drain(&mut self, ctx: &PhaseContext<'_>) -> Result<(), Error> {
        black_box(ctx.remaining());
        Ok(())
    }
    fn sync(&mut self, _: &PhaseContext<'_>) -> Result<(), Error> {
        Ok(())
    }
    fn cleanup(&mut self, _: &PhaseContext<'_>) -> Result<(), Error> {
        Ok(())
    }
}

fn manager(c: &mut Criterion) {
    let mut g = c.benchmark_group("shutdown_manager");
    for threads in [1usize, 64] {
        g.bench_function(format!("execute_fake_pipeline_{threads}_threads"), |b| {
            b.iter_batched(
                || {
                    let s = Shutdown::new().unwrap();
                    s.request(Reason::Signal(libc::SIGINT));
                    (
                        s,
                        FakePipeline {
                            buffers: vec![1000; threads],
                            persisted: 0,
                        },
                    )
                },
                |(s, mut p)| {
                    let report = s
                        .execute_with_notices(&mut p, &Budgets::default(), &mut |_| {})
                        .unwrap();
                    (s, p, report)
                },
                BATCH,
            )
        });
    }
    let s = Shutdown::new().unwrap();
    s.request(Reason::Timer);
    let mut p = FakePipeline {
        buffers: vec![1000; 64],
        persisted: 0,
    };
    let report = s
        .execute_with_notices(&mut p, &Budgets::default(), &mut |_| {})
        .unwrap();
    let summary = Summary {
        report,
        stats: Statistics {
            events_attempted: 64_012,
            events_persisted: 64_000,
            after_stop: 12,
            dropped: Vec::new(),
            bytes_written: 64_000 * 32,
            ring_waits: 0,
            files_synced: 3,
            threads_flushed: 64,
            target: TargetFate::Exited { pid: 1, code: 0 },
            stop_signal_sent: Some(libc::SIGTERM),
            output: None,
        },
    };
    g.bench_function("render_summary", |b| b.iter(|| black_box(summary.render())));
    g.finish();
}

criterion_group!(benches, signal_handler, manager);
criterion_main!(benches);
