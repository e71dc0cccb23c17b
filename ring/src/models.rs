//! loom models of the ring and pool memory-ordering contracts (`cargo test -p ring --features loom`).
//!
//! Each model runs the production protocol code on loom's atomics, over heap memory, with two or
//! three threads. Data-area bytes are tracked with loom cells, so a missing happens-before between a
//! record's write and its read is a reported causality violation, not a silent pass.

#![allow(non_snake_case)]

use crate::{FullPolicy, HeapRegion, PoolConfig, RecordKind, Ring, RingPool};
use loom::sync::Arc;
use loom::thread;
use modelsync::{Backend, Loom};

/// A ring in heap memory shared by the model's threads.
struct Shared {
    region: HeapRegion,
}

impl Shared {
    fn ring(capacity: usize, kind: RecordKind) -> Arc<Self> {
        let region = HeapRegion::new(Ring::<Loom>::layout_size(capacity));
        // SAFETY: fresh, aligned, exclusive memory of the right size.
        unsafe { Ring::<Loom>::init(region.as_non_null(), capacity, kind) }.unwrap();
        Arc::new(Shared { region })
    }

    fn view(&self) -> Ring<'_, Loom> {
        // SAFETY: initialised above; each model makes one producer and one consumer.
        unsafe { Ring::attach(self.region.as_non_null()) }.unwrap()
    }

    fn pool(config: PoolConfig) -> Arc<Self> {
        let region = HeapRegion::new(RingPool::<Loom>::layout_size(&config));
        // SAFETY: fresh, aligned, exclusive memory of the right size.
        unsafe { RingPool::<Loom>::init(region.as_non_null(), &config) }.unwrap();
        Arc::new(Shared { region })
    }

    fn pool_view(&self) -> RingPool<'_, Loom> {
        // SAFETY: initialised above; each model makes one producer and one consumer.
        unsafe { RingPool::attach(self.region.as_non_null()) }.unwrap()
    }
}

fn record(i: u64) -> [u8; 8] {
    i.to_le_bytes()
}

/// The pool's only producer, on its own thread: pushes records 1..=`records`, whatever the
/// outcome of each.
fn spawn_pool_producer(shared: &Arc<Shared>, records: u64) -> thread::JoinHandle<()> {
    let shared = shared.clone();
    thread::spawn(move || {
        let pool = shared.pool_view();
        // SAFETY: the only producer.
        let mut tx = unsafe { pool.producer() };
        for i in 1..=records {
            let _ = tx.push(&record(i));
        }
    })
}

/// Producer pushes 3 fixed records through a 2-record ring (so it wraps and hits "full"); the
/// consumer reads them with batch reads. Every record arrives once, in order, with its bytes.
fn publish_consume(broken: bool) {
    loom::model(move || {
        let shared = Shared::ring(16, RecordKind::Fixed(8));
        let s2 = shared.clone();
        let producer = thread::spawn(move || {
            let ring = s2.view();
            // SAFETY: the only producer.
            let mut tx = unsafe { ring.producer() };
            tx.broken_publish = broken;
            for i in 1..=3 {
                while tx.push(&record(i)).is_err() {
                    thread::yield_now();
                }
            }
        });
        let ring = shared.view();
        // SAFETY: the only consumer.
        let mut rx = unsafe { ring.consumer() };
        let mut next = 1;
        while next <= 3 {
            let chunk = rx.read_chunk().unwrap();
            let (a, b) = chunk.as_slices();
            for rec in a.chunks(8).chain(b.chunks(8)) {
                assert_eq!(u64::from_le_bytes(rec.try_into().unwrap()), next);
                next += 1;
            }
            let empty = chunk.is_empty();
            chunk.release_all();
            if empty {
                thread::yield_now();
            }
        }
        producer.join().unwrap();
    });
}

#[test]
fn ring__publish_consume_across_wraparound__then_every_record_once_in_order() {
    publish_consume(false);
}

/// Negative control: with the publish weakened to Relaxed, loom must find the schedule where the
/// consumer reads a record's bytes without a happens-before from their write.
#[test]
#[should_panic(expected = "Causality violation")]
fn ring__relaxed_publish__then_model_catches_it() {
    publish_consume(true);
}

/// Full and empty edges: the producer fills the ring exactly, a push on full fails without writing,
/// and the consumer's release makes room visible to the producer (pop one record at a time).
#[test]
fn ring__full_and_empty_edges__then_no_overwrite_no_phantom() {
    loom::model(|| {
        let shared = Shared::ring(16, RecordKind::Fixed(8));
        let s2 = shared.clone();
        let consumer = thread::spawn(move || {
            let ring = s2.view();
            // SAFETY: the only consumer.
            let mut rx = unsafe { ring.consumer() };
            let mut out = [0u8; 8];
            let mut got = Vec::new();
            while got.len() < 3 {
                if rx.pop(&mut out).unwrap() {
                    got.push(u64::from_le_bytes(out));
                } else {
                    thread::yield_now();
                }
            }
            got
        });
        let ring = shared.view();
        // SAFETY: the only producer.
        let mut tx = unsafe { ring.producer() };
        let mut pushed = 0;
        let mut rejected = 0;
        let mut i = 1;
        while pushed < 3 {
            match tx.push(&record(i)) {
                Ok(()) => {
                    pushed += 1;
                    i += 1;
                }
                Err(_) => {
                    rejected += 1;
                    thread::yield_now();
                }
            }
        }
        assert_eq!(consumer.join().unwrap(), vec![1, 2, 3]);
        let _ = rejected;
    });
}

/// Variable records of different sizes force a padding frame at the end of the data area; the
/// consumer sees every payload whole and in order, never the padding.
#[test]
fn ring__variable_records_wrap_with_padding__then_payloads_whole() {
    loom::model(|| {
        let shared = Shared::ring(64, RecordKind::Variable);
        let s2 = shared.clone();
        let producer = thread::spawn(move || {
            let ring = s2.view();
            // SAFETY: the only producer.
            let mut tx = unsafe { ring.producer() };
            for (i, len) in [(1u8, 20usize), (2, 12), (3, 20)] {
                while tx.push_variable(&vec![i; len]).is_err() {
                    thread::yield_now();
                }
            }
        });
        let ring = shared.view();
        // SAFETY: the only consumer.
        let mut rx = unsafe { ring.consumer() };
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let chunk = rx.read_chunk().unwrap();
            for rec in chunk.records() {
                let rec = rec.unwrap();
                assert!(rec.iter().all(|&b| b == rec[0]), "torn record");
                seen.push((rec[0], rec.len()));
            }
            let empty = chunk.is_empty();
            chunk.release_all();
            if empty {
                thread::yield_now();
            }
        }
        assert_eq!(seen, vec![(1, 20), (2, 12), (3, 20)]);
        producer.join().unwrap();
    });
}

/// A drain callback's body: appends each 8-byte record (a sequence number) to `got`.
fn collect(got: &mut Vec<u64>, chunk: crate::Chunk<'_>) -> Result<(), ()> {
    got.extend(
        chunk
            .bytes
            .chunks(8)
            .map(|r| u64::from_le_bytes(r.try_into().unwrap())),
    );
    Ok(())
}

fn small_pool(policy: FullPolicy) -> PoolConfig {
    PoolConfig {
        rings: 2,
        ring_capacity: 16,
        kind: RecordKind::Fixed(8),
        policy,
    }
}

/// One pool model run: the only producer pushes records 1..=`records` into a [`small_pool`] on
/// its own thread, while this thread, the only consumer, runs `while_producing` with the pool and
/// a drain call (`true`: the active ring's committed prefix too); then the producer is joined and
/// the rest drained. Every accepted record has arrived, once and in order. Returns the counters.
fn pool_run(
    policy: FullPolicy,
    records: u64,
    while_producing: impl FnOnce(&RingPool<'_, Loom>, &mut dyn FnMut(bool)),
) -> crate::PoolCounters {
    let shared = Shared::pool(small_pool(policy));
    let producer = spawn_pool_producer(&shared, records);
    let pool = shared.pool_view();
    // SAFETY: the only consumer.
    let mut rx = unsafe { pool.consumer() };
    let mut got = Vec::new();
    while_producing(&pool, &mut |active| {
        rx.drain(active, |c| collect(&mut got, c)).unwrap();
    });
    producer.join().unwrap();
    rx.drain(true, |c| collect(&mut got, c)).unwrap();
    let counters = pool.counters();
    assert_eq!(got.len() as u64, counters.accepted);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    counters
}

/// Swap-on-full, submit and return: the producer writes 5 records into a pool of two 2-record rings
/// (so it must swap and reuse a returned ring); the consumer drains submitted rings only. Every
/// accepted record arrives once and in order; accepted + dropped = attempted.
#[test]
fn pool__swap_submit_return__then_submitted_rings_whole_and_returned_empty() {
    loom::model(|| {
        let counters = pool_run(FullPolicy::DropNewest, 5, |_, drain| drain(false));
        assert_eq!(counters.attempted(), 5);
    });
}

/// The consumer reads the active ring's committed prefix while the producer keeps writing and
/// swapping. Order is kept across the swap and nothing is delivered twice.
#[test]
fn pool__active_prefix_read_while_producing__then_order_kept() {
    loom::model(|| {
        pool_run(FullPolicy::DropNewest, 4, |_, drain| {
            drain(true);
            drain(true);
        });
    });
}

/// Two swaps, the second reusing the first ring, while the consumer reads the active ring: a
/// consumer that takes ring 0 off the submit queue before the producer publishes ring 1 as active
/// must not read ring 0 in place as the active ring (the producer may refill it before ring 1 is
/// taken). Order is kept and nothing is delivered twice.
#[test]
fn pool__active_read_during_half_done_swap__then_reused_ring_not_read_before_earlier_ring() {
    loom::model(|| {
        pool_run(FullPolicy::DropNewest, 5, |pool, drain| {
            // Start once ring 0 is full (a yield is not a preemption: the bound is left for the
            // swap).
            while pool.counters().accepted < 2 {
                thread::yield_now();
            }
            drain(true);
        });
    });
}

/// Under the waiting policy the producer waits for the consumer instead of dropping: with a
/// consumer that keeps draining, all records get through (loom's backoff gives up after a few
/// yields, so a drop is possible only when the consumer made no progress meanwhile; the invariant
/// accepted + dropped = attempted holds either way).
#[test]
fn pool__wait_policy_with_live_consumer__then_invariant_holds() {
    loom::model(|| {
        let counters = pool_run(FullPolicy::Wait { timeout_us: 1 }, 5, |_, drain| {
            drain(false)
        });
        assert_eq!(counters.attempted(), 5);
        <Loom as Backend>::deadline_after(0);
    });
}
