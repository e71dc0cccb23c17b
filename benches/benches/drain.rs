//! Drain throughput to the page cache: `cargo bench -p benches --bench drain`.
//!
//! Sixteen threads' index lanes are filled (untimed) with what a thread calling one function in a
//! loop produces (call, return, 20 ns apart, stamped in raw ticks of a 2.6 GHz TSC clock as the
//! agent stamps them), then one drain pass moves them to their event files, converting each
//! timestamp to nanoseconds (timed): records/s and bytes/s (of 32-byte ring records) of the drain alone, the figure the
//! final flush depends on (seed: at least 100 MB/s; our target: 1 GB/s), for each event format:
//! `drain/atc/...` (the default, encoding included) and `drain/atf2/...`. The session is replaced every 64 MiB
//! (16 passes), like the ATF writer benchmark: on a VM, page-cache pages that were never used before
//! cost a host fault on first touch, which would measure the VM's memory provisioning, not the drain.
//!
//! `DRAIN_BENCH_CLOCK=cpu` times the passes by the drain thread's CPU time (user and system:
//! encoding, and the writes into the page cache) instead of the wall clock: on a machine shared
//! with other work, the wall clock counts the time other processes held the CPU.

// criterion's macros generate undocumented public items.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use registry::{RegionConfig, SharedRegion};

const THREADS: u32 = 16;
const PASSES_PER_SESSION: u64 = 16;

fn config() -> RegionConfig {
    RegionConfig {
        capacity: 64,
        ..RegionConfig::default()
    }
}

fn per_lane() -> usize {
    let c = config();
    c.index.rings as usize * c.index.ring_capacity / atf::EVENT_SIZE
}

/// Runs `iters` timed passes over full lanes in `format`, in sessions of [`PASSES_PER_SESSION`]
/// passes.
fn timed_passes(iters: u64, format: atf::EventFormat) -> Duration {
    // Each thread's events carry its own thread id, as the agent writes them (the encoder stores
    // an event of another thread in full).
    let event = |i: u64, tid: u32| {
        atf::IndexEvent {
            timestamp_ns: 1_000 + 52 * i,
            function_id: 0x401000,
            thread_id: tid,
            kind: if i % 2 == 0 {
                atf::EventKind::Call
            } else {
                atf::EventKind::Return
            },
            call_depth: 0,
            detail_seq: atf::NO_DETAIL,
        }
        .encode()
    };
    let mut seq = 0u64;
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let region =
            SharedRegion::create_with_clock(&config(), &registry::Clock::tsc(2_600_000_000, 0, 0))
                .unwrap();
        let registry = region.registry().unwrap();
        let out = tempfile::tempdir().unwrap();
        let layout = atf::SessionLayout::create(out.path(), 1)
            .unwrap()
            .with_format(format);
        let manifest = atf::Manifest::new(atf::ClockType::Boottime);
        // The files are made in the first timed pass, as before the drain had a helper for them:
        // a pass over lanes whose files are still being made would move nothing.
        let mut drain = drain::Drain::new(registry, layout, manifest)
            .unwrap()
            .files_on_helper(false);
        let mut producers: Vec<_> = (0..THREADS)
            .map(|t| {
                let me = registry.register(1, 100 + t).unwrap();
                // SAFETY: each registration's lanes get exactly one producer, kept here.
                (unsafe { me.lanes.index.producer() }, me.writer)
            })
            .collect();
        for _ in 0..PASSES_PER_SESSION.min(iters - done) {
            for (tid, (producer, writer)) in (100..).zip(producers.iter_mut()) {
                for _ in 0..per_lane() {
                    if writer.begin() {
                        let _ = producer.push(&event(seq, tid));
                        seq += 1;
                        writer.end();
                    }
                }
            }
            let started = Clock::now();
            drain.pass().unwrap();
            total += started.elapsed();
            done += 1;
        }
    }
    total
}

/// The clock the passes are timed by (see the module documentation).
enum Clock {
    Wall(Instant),
    Cpu(Duration),
}

impl Clock {
    fn now() -> Self {
        if std::env::var_os("DRAIN_BENCH_CLOCK").is_some_and(|v| v == "cpu") {
            Clock::Cpu(thread_cpu_time())
        } else {
            Clock::Wall(Instant::now())
        }
    }

    fn elapsed(&self) -> Duration {
        match self {
            Clock::Wall(started) => started.elapsed(),
            Clock::Cpu(started) => thread_cpu_time().saturating_sub(*started),
        }
    }
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; the clock id is valid on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn drain_pass(c: &mut Criterion) {
    let bytes = (THREADS as usize * per_lane() * atf::EVENT_SIZE) as u64;
    for format in atf::EventFormat::ALL {
        let mut group = c.benchmark_group(format!("drain/{}", format.name()));
        group.sample_size(20);
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function("pass_16_threads_full_lanes", |b| {
            b.iter_custom(|iters| timed_passes(iters, format))
        });
        group.throughput(Throughput::Elements(bytes / atf::EVENT_SIZE as u64));
        group.bench_function("pass_16_threads_full_lanes_records", |b| {
            b.iter_custom(|iters| timed_passes(iters, format))
        });
        group.finish();
    }
}

criterion_group!(benches, drain_pass);
criterion_main!(benches);
