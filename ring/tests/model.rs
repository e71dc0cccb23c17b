//! proptest: a ring and a pool against a `VecDeque` model — FIFO, no loss, no duplication, drop
//! counts exact — with fixed records and variable records that wrap.
#![allow(non_snake_case)]

use std::collections::VecDeque;

use proptest::prelude::*;
use ring::{frames, FullPolicy, HeapRegion, PoolConfig, RecordKind, Ring, RingPool, StdBackend};

#[derive(Debug, Clone)]
enum Op {
    /// Push a record of this length (variable) or with this tag (fixed).
    Push(usize),
    /// Consume everything committed (for a pool: submitted rings, optionally the active prefix).
    Drain { include_active: bool },
    /// Consume only this many records' worth (ring only).
    Partial(usize),
}

fn ops(max_len: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            6 => (1..=max_len).prop_map(Op::Push),
            1 => any::<bool>().prop_map(|include_active| Op::Drain { include_active }),
            1 => (0..4usize).prop_map(Op::Partial),
        ],
        1..200,
    )
}

/// A record whose bytes say who it is: a sequence number in the first 8 bytes (repeated).
fn make(seq: u64, len: usize) -> Vec<u8> {
    seq.to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

fn seq_of(rec: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = rec.len().min(8);
    b[..n].copy_from_slice(&rec[..n]);
    let seq = u64::from_le_bytes(b);
    assert_eq!(rec, make(seq, rec.len()).as_slice(), "torn record");
    seq
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ring__variable_records_against_vecdeque__then_fifo_exact(ops in ops(100), cap_pow in 8u32..11) {
        let capacity = 1usize << cap_pow;
        let region = HeapRegion::new(Ring::<StdBackend>::layout_size(capacity));
        // SAFETY: fresh memory kept alive for the test; one producer and one consumer.
        let ring = unsafe { Ring::<StdBackend>::init(region.as_non_null(), capacity, RecordKind::Variable) }.unwrap();
        // SAFETY: the memory outlives both handles; they are its only producer and consumer.
        let (mut tx, mut rx) = unsafe { (ring.producer(), ring.consumer()) };
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let mut seq = 0u64;
        let mut rejected = 0u64;
        for op in ops {
            match op {
                Op::Push(len) => {
                    seq += 1;
                    let rec = make(seq, len.max(8));
                    match tx.push_variable(&rec) {
                        Ok(()) => model.push_back(rec),
                        Err(_) => rejected += 1,
                    }
                }
                Op::Drain { .. } | Op::Partial(_) => {
                    let limit = match op { Op::Partial(n) => n, _ => usize::MAX };
                    let chunk = rx.read_chunk().unwrap();
                    // Release frame by frame, as far as `limit` records.
                    let (a, b) = chunk.as_slices();
                    let mut released = 0;
                    let mut taken = 0;
                    'outer: for part in [a, b] {
                        let mut off = 0;
                        while off < part.len() {
                            if taken == limit { break 'outer; }
                            let len = u32::from_le_bytes(part[off..off + 4].try_into().unwrap()) as usize;
                            let pad = u32::from_le_bytes(part[off + 4..off + 8].try_into().unwrap()) & 1 == 1;
                            let framed = (8 + len).next_multiple_of(8);
                            if !pad {
                                let got = &part[off + 8..off + 8 + len];
                                let want = model.pop_front().expect("ring returned a record the model lacks");
                                prop_assert_eq!(got, want.as_slice());
                                taken += 1;
                            }
                            off += framed;
                            released += framed;
                        }
                    }
                    chunk.release(released);
                }
            }
        }
        // Whatever is left comes out in order.
        let chunk = rx.read_chunk().unwrap();
        let rest: Vec<Vec<u8>> = chunk.records().map(|r| r.unwrap().to_vec()).collect();
        prop_assert_eq!(rest, model.into_iter().collect::<Vec<_>>());
        prop_assert!(rejected <= seq);
    }

    #[test]
    fn pool__fixed_records_against_vecdeque__then_no_loss_no_dup_drops_exact(
        ops in ops(1), rings in 2u32..5, wait in any::<bool>()
    ) {
        pool_model(RecordKind::Fixed(32), ops, rings, wait)?;
    }

    #[test]
    fn pool__variable_records_against_vecdeque__then_no_loss_no_dup_drops_exact(
        ops in ops(120), rings in 2u32..5, wait in any::<bool>()
    ) {
        pool_model(RecordKind::Variable, ops, rings, wait)?;
    }
}

fn pool_model(kind: RecordKind, ops: Vec<Op>, rings: u32, wait: bool) -> Result<(), TestCaseError> {
    let config = PoolConfig {
        rings,
        ring_capacity: 256,
        kind,
        // A zero timeout still exercises the wait path (bounded spins) without slowing the test.
        policy: if wait {
            FullPolicy::Wait { timeout_us: 0 }
        } else {
            FullPolicy::DropNewest
        },
    };
    let region = HeapRegion::new(RingPool::<StdBackend>::layout_size(&config));
    // SAFETY: fresh memory kept alive for the test; one producer and one consumer.
    let pool = unsafe { RingPool::<StdBackend>::init(region.as_non_null(), &config) }.unwrap();
    // SAFETY: the memory outlives both handles; they are its only producer and consumer.
    let (mut tx, mut rx) = unsafe { (pool.producer(), pool.consumer()) };
    let mut model: VecDeque<u64> = VecDeque::new();
    let mut delivered: Vec<u64> = Vec::new();
    let (mut seq, mut dropped) = (0u64, 0u64);
    let drain = |rx: &mut ring::PoolConsumer<'_>, include_active: bool, out: &mut Vec<u64>| {
        rx.drain(include_active, |chunk| {
            match kind {
                RecordKind::Fixed(n) => out.extend(chunk.bytes.chunks(n as usize).map(seq_of)),
                RecordKind::Variable => out.extend(frames(chunk.bytes).map(|r| seq_of(r.unwrap()))),
            }
            Ok::<(), ()>(())
        })
        .unwrap();
    };
    for op in ops {
        match op {
            Op::Push(len) => {
                seq += 1;
                let len = match kind {
                    RecordKind::Fixed(n) => n as usize,
                    RecordKind::Variable => len.max(8),
                };
                match tx.push(&make(seq, len)) {
                    Ok(()) => model.push_back(seq),
                    Err(_) => dropped += 1,
                }
            }
            Op::Drain { include_active } => drain(&mut rx, include_active, &mut delivered),
            Op::Partial(_) => drain(&mut rx, false, &mut delivered),
        }
    }
    drain(&mut rx, true, &mut delivered);
    prop_assert!(rx.is_empty());
    prop_assert_eq!(delivered, model.into_iter().collect::<Vec<_>>());
    let c = pool.counters();
    prop_assert_eq!(c.attempted(), seq);
    prop_assert_eq!(c.dropped_full, dropped);
    Ok(())
}
