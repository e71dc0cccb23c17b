//! Ring and pool micro-benchmarks: `cargo bench -p benches --bench ring`.
//!
//! - `push_pop/single_thread`: one 32-byte record pushed and consumed in batches, one thread.
//! - `spsc/cross_thread`: a producer thread pushing 32-byte records, this thread draining in batches;
//!   throughput in records/s (criterion's "elements"). Like the drain, the consumer takes batches:
//!   when less than a quarter of the ring is committed it backs off briefly instead of polling the
//!   producer's cache line on every record.
//! - `pool/swap`: the cost of swap-on-full (submit, take a free ring, publish the new active id).

// criterion's macros generate undocumented public items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ring::{FullPolicy, HeapRegion, PoolConfig, RecordKind, Ring, RingPool, StdBackend};

const RECORD: usize = 32;
const CAPACITY: usize = 64 * 1024;

fn fixed_ring(region: &HeapRegion) -> Ring<'_> {
    // SAFETY: fresh, aligned region of the right size, alive for the ring's lifetime; each
    // benchmark makes one producer and one consumer.
    unsafe { Ring::<StdBackend>::init(region.as_non_null(), CAPACITY, RecordKind::Fixed(32)) }
        .unwrap()
}

fn push_pop(c: &mut Criterion) {
    let region = HeapRegion::new(Ring::<StdBackend>::layout_size(CAPACITY));
    let ring = fixed_ring(&region);
    // SAFETY: one producer and one consumer, both on this thread.
    let (mut tx, mut rx) = unsafe { (ring.producer(), ring.consumer()) };
    let per_batch = CAPACITY / RECORD;
    let mut group = c.benchmark_group("push_pop");
    group.throughput(Throughput::Elements(per_batch as u64));
    group.bench_function("single_thread_32B_batch_of_2048", |b| {
        let record = [0x5au8; RECORD];
        b.iter(|| {
            for _ in 0..per_batch {
                let _ = tx.push(black_box(&record));
            }
            let chunk = rx.read_chunk().unwrap();
            black_box(chunk.as_slices());
            chunk.release_all();
        })
    });
    group.finish();
}

fn cross_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc");
    const N: u64 = 1 << 20;
    group.throughput(Throughput::Elements(N));
    group.bench_function("cross_thread_32B_1M_records", |b| {
        b.iter_batched(
            || HeapRegion::new(Ring::<StdBackend>::layout_size(CAPACITY)),
            |region| {
                let ring = fixed_ring(&region);
                // SAFETY: one producer (moved to the spawned thread) and one consumer (here).
                let (mut tx, mut rx) = unsafe { (ring.producer(), ring.consumer()) };
                let done = Arc::new(AtomicBool::new(false));
                std::thread::scope(|s| {
                    let done2 = done.clone();
                    s.spawn(move || {
                        let mut record = [0u8; RECORD];
                        for i in 0..N {
                            record[..8].copy_from_slice(&i.to_le_bytes());
                            while tx.push(&record).is_err() {
                                std::hint::spin_loop();
                            }
                        }
                        // Release: pairs with the consumer's Acquire load of `done`.
                        done2.store(true, Ordering::Release);
                    });
                    let mut got = 0u64;
                    while got < N {
                        let chunk = rx.read_chunk().unwrap();
                        let n = chunk.len();
                        if n < CAPACITY / 4 && !done.load(Ordering::Acquire) {
                            // Acquire: pairs with the producer's Release of `done`.
                            // Not enough yet: leave the chunk unreleased and back off.
                            for _ in 0..256 {
                                std::hint::spin_loop();
                            }
                            continue;
                        }
                        black_box(chunk.as_slices());
                        chunk.release_all();
                        got += (n / RECORD) as u64;
                    }
                });
                region
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn pool_swap(c: &mut Criterion) {
    // Rings of exactly one record: every push after the first in a ring is a swap.
    let config = PoolConfig {
        rings: 4,
        ring_capacity: RECORD,
        kind: RecordKind::Fixed(32),
        policy: FullPolicy::DropNewest,
    };
    let region = HeapRegion::new(RingPool::<StdBackend>::layout_size(&config));
    // SAFETY: fresh region kept alive; one producer and one consumer on this thread.
    let pool = unsafe { RingPool::<StdBackend>::init(region.as_non_null(), &config) }.unwrap();
    // SAFETY: the memory outlives both handles; they are its only producer and consumer.
    let (mut tx, mut rx) = unsafe { (pool.producer(), pool.consumer()) };
    let record = [1u8; RECORD];
    let mut group = c.benchmark_group("pool");
    group.throughput(Throughput::Elements(1));
    group.bench_function("swap_then_return", |b| {
        b.iter(|| {
            // Fill the active ring (1 record), the next push swaps; then the consumer returns it.
            let _ = tx.push(black_box(&record));
            rx.drain(false, |chunk| {
                black_box(chunk.bytes);
                Ok::<(), ()>(())
            })
            .unwrap();
        })
    });
    group.finish();
    let c = pool.counters();
    assert_eq!(c.dropped_full, 0, "the swap benchmark dropped records");
}

criterion_group!(benches, push_pop, cross_thread, pool_swap);
criterion_main!(benches);
