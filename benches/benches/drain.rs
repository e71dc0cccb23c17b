//! Drain throughput to the page cache: `cargo bench -p benches --bench drain`.
//!
//! Sixteen threads' index lanes are filled (untimed), then one drain pass moves them to their
//! `index.atf` files (timed): records/s and bytes/s of the drain alone, the figure the final flush
//! depends on (seed: at least 100 MB/s; our target: 1 GB/s).

// criterion's macros generate undocumented public items.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use registry::{RegionConfig, SharedRegion};

const THREADS: u32 = 16;

fn drain_pass(c: &mut Criterion) {
    let mut config = RegionConfig::default();
    config.capacity = 64;
    let region = SharedRegion::create(&config).unwrap();
    let registry = region.leak().unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = atf::SessionLayout::create(out.path(), 1).unwrap();
    let mut drain =
        drain::Drain::new(registry, layout, atf::Manifest::new(atf::ClockType::Boottime)).unwrap();
    let per_lane = config.index.rings as usize * config.index.ring_capacity / atf::EVENT_SIZE;
    let mut producers: Vec<_> = (0..THREADS)
        .map(|t| {
            let me = registry.register(1, 100 + t).unwrap();
            // SAFETY: each registration's lanes get exactly one producer, kept here.
            (unsafe { me.lanes.index.producer() }, me.writer)
        })
        .collect();
    let event = atf::IndexEvent {
        timestamp_ns: 1,
        function_id: 0x401000,
        thread_id: 100,
        kind: atf::EventKind::Call,
        call_depth: 3,
        detail_seq: atf::NO_DETAIL,
    }
    .encode();

    let mut group = c.benchmark_group("drain");
    group.sample_size(20);
    group.throughput(Throughput::Bytes((THREADS as usize * per_lane * atf::EVENT_SIZE) as u64));
    group.bench_function("pass_16_threads_full_lanes_bytes", |b| {
        b.iter_batched(
            || {
                for (producer, writer) in producers.iter_mut() {
                    for _ in 0..per_lane {
                        if writer.begin() {
                            let _ = producer.push(&event);
                            writer.end();
                        }
                    }
                }
            },
            |()| drain.pass().unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.finish();
    let mut group = c.benchmark_group("drain_records");
    group.sample_size(20);
    group.throughput(Throughput::Elements((THREADS as usize * per_lane) as u64));
    group.bench_function("pass_16_threads_full_lanes_records", |b| {
        b.iter_batched(
            || {
                for (producer, writer) in producers.iter_mut() {
                    for _ in 0..per_lane {
                        if writer.begin() {
                            let _ = producer.push(&event);
                            writer.end();
                        }
                    }
                }
            },
            |()| drain.pass().unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, drain_pass);
criterion_main!(benches);
