//! Behaviour of a single ring and a pool through the public API, on heap memory.
#![allow(non_snake_case)]

use ring::{
    frames, FullPolicy, HeapRegion, PoolConfig, RecordKind, Ring, RingError, RingPool, StdBackend,
};

fn fixed_ring(capacity: usize) -> (HeapRegion, Ring<'static>) {
    let region = HeapRegion::new(Ring::<StdBackend>::layout_size(capacity));
    // SAFETY: the region is fresh and aligned, and every test keeps it alive as long as the ring;
    // tests make one producer and one consumer.
    let ring =
        unsafe { Ring::<StdBackend>::init(region.as_non_null(), capacity, RecordKind::Fixed(32)) }
            .unwrap();
    (region, ring)
}

#[test]
fn ring__push_until_full__then_full_and_nothing_overwritten() {
    let (_region, ring) = fixed_ring(128);
    // SAFETY: one producer, one consumer.
    let (mut tx, mut rx) = unsafe { (ring.producer(), ring.consumer()) };
    for i in 0..4u8 {
        tx.push(&[i; 32]).unwrap();
    }
    assert!(
        tx.push(&[9; 32]).is_err(),
        "a fifth record fits in a 4-record ring"
    );
    let chunk = rx.read_chunk().unwrap();
    let (a, b) = chunk.as_slices();
    assert!(b.is_empty());
    let firsts: Vec<u8> = a.chunks(32).map(|r| r[0]).collect();
    assert_eq!(firsts, vec![0, 1, 2, 3]);
    chunk.release(64);
    tx.push(&[4; 32]).unwrap();
    tx.push(&[5; 32]).unwrap();
    let chunk = rx.read_chunk().unwrap();
    let (a, b) = chunk.as_slices();
    let firsts: Vec<u8> = a.chunks(32).chain(b.chunks(32)).map(|r| r[0]).collect();
    assert_eq!(firsts, vec![2, 3, 4, 5], "wrapped read lost order");
    assert_eq!(b.len(), 64, "the wrapped part is the second slice");
}

#[test]
fn ring__wrong_record_size__then_refused_not_written() {
    let (_region, ring) = fixed_ring(128);
    // SAFETY: one producer.
    let mut tx = unsafe { ring.producer() };
    assert!(tx.push(&[1; 16]).is_err());
    assert!(ring.is_empty());
}

#[test]
fn ring__attach_to_garbage__then_clear_error_not_ub() {
    let region = HeapRegion::new(4096);
    // SAFETY: valid memory; attach only validates.
    let err = unsafe { Ring::<StdBackend>::attach(region.as_non_null()) }.unwrap_err();
    assert!(matches!(err, RingError::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains("magic"));
}

#[test]
fn ring__attach_with_wrong_version_or_size__then_error() {
    let (region, _ring) = fixed_ring(1024);
    let base = region.as_non_null().cast::<u8>().as_ptr();
    // Corrupt the version field (offset 4).
    // SAFETY: inside the region; nobody else uses it.
    unsafe { base.add(4).write(99) };
    // SAFETY: valid memory.
    let err = unsafe { Ring::<StdBackend>::attach(region.as_non_null()) }.unwrap_err();
    assert!(
        matches!(err, RingError::BadVersion { found: 99, .. }),
        "{err}"
    );
    // SAFETY: as above; restore the version, then claim a capacity larger than the memory.
    unsafe {
        base.add(4).write(1);
        base.add(16).cast::<u64>().write_unaligned(1 << 20);
    }
    // SAFETY: valid memory.
    let err = unsafe { Ring::<StdBackend>::attach(region.as_non_null()) }.unwrap_err();
    assert!(matches!(err, RingError::BadLayout { .. }), "{err}");
}

#[test]
fn ring__too_small_or_misaligned_memory__then_error() {
    let region = HeapRegion::new(512);
    // SAFETY: valid memory; init refuses before writing.
    let err = unsafe { Ring::<StdBackend>::init(region.as_non_null(), 1024, RecordKind::Variable) }
        .unwrap_err();
    assert!(matches!(err, RingError::TooSmall { .. }), "{err}");
    let base = region.as_non_null().cast::<u8>();
    // SAFETY: a sub-range of valid memory, deliberately misaligned.
    let skewed = core::ptr::NonNull::slice_from_raw_parts(unsafe { base.add(8) }, 256);
    // SAFETY: as above.
    let err = unsafe { Ring::<StdBackend>::init(skewed, 16, RecordKind::Variable) }.unwrap_err();
    assert!(matches!(err, RingError::Misaligned { .. }), "{err}");
}

#[test]
fn ring__corrupt_producer_position__then_consumer_reports_corrupt() {
    let (region, ring) = fixed_ring(128);
    // SAFETY: one consumer.
    let mut rx = unsafe { ring.consumer() };
    // The head lives at offset 128; claim more than the capacity.
    // SAFETY: inside the region.
    unsafe {
        region
            .as_non_null()
            .cast::<u8>()
            .as_ptr()
            .add(128)
            .cast::<u64>()
            .write(4096);
    }
    assert!(matches!(rx.read_chunk(), Err(RingError::Corrupt { .. })));
}

#[test]
fn ring__variable_records_through_reservations__then_payloads_in_order() {
    let capacity = 256;
    let region = HeapRegion::new(Ring::<StdBackend>::layout_size(capacity));
    // SAFETY: fresh memory, one producer and one consumer.
    let ring =
        unsafe { Ring::<StdBackend>::init(region.as_non_null(), capacity, RecordKind::Variable) }
            .unwrap();
    // SAFETY: the memory outlives both handles; they are its only producer and consumer.
    let (mut tx, mut rx) = unsafe { (ring.producer(), ring.consumer()) };
    let mut expected = Vec::new();
    for round in 0..50u8 {
        let len = 1 + (round as usize * 37) % ring.max_record_len();
        match tx.reserve(len) {
            Some(mut slot) => {
                slot.as_mut_slice().fill(round);
                slot.commit();
                expected.push((round, len));
            }
            None => {
                let chunk = rx.read_chunk().unwrap();
                let got: Vec<(u8, usize)> = chunk
                    .records()
                    .map(|r| r.unwrap())
                    .map(|r| (r[0], r.len()))
                    .collect();
                let n = got.len();
                assert_eq!(got, expected[..n]);
                expected.drain(..n);
                chunk.release_all();
            }
        }
    }
    assert!(
        tx.reserve(ring.max_record_len() + 1).is_none(),
        "oversized record accepted"
    );
}

fn pool(config: PoolConfig) -> (HeapRegion, RingPool<'static>) {
    let region = HeapRegion::new(RingPool::<StdBackend>::layout_size(&config));
    // SAFETY: fresh memory; every test keeps the region alive as long as the pool.
    let pool = unsafe { RingPool::<StdBackend>::init(region.as_non_null(), &config) }.unwrap();
    (region, pool)
}

#[test]
fn pool__swap_on_full__then_submitted_in_order_and_counted() {
    let (_region, pool) = pool(PoolConfig {
        rings: 3,
        ring_capacity: 64,
        kind: RecordKind::Fixed(32),
        policy: FullPolicy::DropNewest,
    });
    // SAFETY: one producer, one consumer.
    let (mut tx, mut rx) = unsafe { (pool.producer(), pool.consumer()) };
    for i in 0..8u8 {
        let _ = tx.push(&[i; 32]);
    }
    // 3 rings of 2 records: 6 accepted, 2 dropped, 2 swaps.
    let c = pool.counters();
    assert_eq!((c.accepted, c.dropped_full, c.swaps), (6, 2, 2));
    let mut got = Vec::new();
    let stats = rx
        .drain(true, |chunk| {
            got.extend(chunk.bytes.chunks(32).map(|r| r[0]));
            Ok::<(), ()>(())
        })
        .unwrap();
    assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(stats.rings_returned, 2);
    assert!(rx.is_empty());
    // Returned rings are reused: more pushes succeed.
    for i in 8..12u8 {
        tx.push(&[i; 32]).unwrap();
    }
    // Still exact across a swap into a reused ring (the drained active ring took two more, then
    // ring 0 came back from the free queue; a pool of fixed-size records counts what
    // it accepted by the bytes its rings were written).
    let c = pool.counters();
    assert_eq!((c.accepted, c.dropped_full, c.swaps), (10, 2, 3));
    assert_eq!(c.attempted(), 12);
}

#[test]
fn pool__sink_fails__then_bytes_offered_again() {
    let (_region, pool) = pool(PoolConfig {
        rings: 2,
        ring_capacity: 64,
        kind: RecordKind::Fixed(32),
        policy: FullPolicy::DropNewest,
    });
    // SAFETY: one producer, one consumer.
    let (mut tx, mut rx) = unsafe { (pool.producer(), pool.consumer()) };
    for i in 0..3u8 {
        tx.push(&[i; 32]).unwrap();
    }
    let err = rx.drain(true, |_| Err("disk full")).unwrap_err();
    assert!(matches!(err, ring::DrainError::Sink("disk full")));
    let mut got = Vec::new();
    rx.drain(true, |chunk| {
        got.extend(chunk.bytes.chunks(32).map(|r| r[0]));
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(got, vec![0, 1, 2], "a failed sink lost or reordered bytes");
}

#[test]
fn pool__wait_policy_without_consumer__then_bounded_and_gives_up_fast() {
    let (_region, pool) = pool(PoolConfig {
        rings: 2,
        ring_capacity: 64,
        kind: RecordKind::Fixed(32),
        policy: FullPolicy::Wait { timeout_us: 1000 },
    });
    // SAFETY: one producer.
    let mut tx = unsafe { pool.producer() };
    for i in 0..4u8 {
        tx.push(&[i; 32]).unwrap();
    }
    // Nobody drains: the first overflow waits (bounded), later ones drop at once.
    for i in 4..100u8 {
        assert!(tx.push(&[i; 32]).is_err());
    }
    let c = pool.counters();
    assert_eq!(c.accepted, 4);
    assert_eq!(c.dropped_full, 96);
    assert_eq!(
        c.waits, 1,
        "a producer whose consumer is gone must not wait on every record"
    );
}

#[test]
fn pool__variable_records__then_frames_iterate_payloads() {
    let (_region, pool) = pool(PoolConfig {
        rings: 2,
        ring_capacity: 128,
        kind: RecordKind::Variable,
        policy: FullPolicy::DropNewest,
    });
    // SAFETY: one producer, one consumer.
    let (mut tx, mut rx) = unsafe { (pool.producer(), pool.consumer()) };
    tx.push(b"hello").unwrap();
    tx.mark_active();
    tx.push(b"world!").unwrap();
    let mut got = Vec::new();
    rx.drain(true, |chunk| {
        assert!(chunk.marked && chunk.active);
        got.extend(frames(chunk.bytes).map(|r| r.unwrap().to_vec()));
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(got, vec![b"hello".to_vec(), b"world!".to_vec()]);
}

#[test]
fn pool__attach_validates_every_part() {
    let config = PoolConfig {
        rings: 4,
        ring_capacity: 256,
        kind: RecordKind::Fixed(32),
        policy: FullPolicy::DEFAULT,
    };
    let (region, _pool) = pool(config);
    // SAFETY: valid memory, attach only validates.
    let again = unsafe { RingPool::<StdBackend>::attach(region.as_non_null()) }.unwrap();
    assert_eq!(again.rings(), 4);
    assert_eq!(again.policy(), FullPolicy::DEFAULT);
    // Break the magic of ring 2's header: the pool as a whole is refused.
    let ring2 = again.ring(2).unwrap();
    let _ = ring2;
    let base = region.as_non_null().cast::<u8>().as_ptr();
    let size = RingPool::<StdBackend>::layout_size(&config);
    let ring_stride = (Ring::<StdBackend>::layout_size(256)).next_multiple_of(128);
    // SAFETY: inside the region.
    unsafe { base.add(size - 2 * ring_stride).write(0) };
    // SAFETY: valid memory.
    let err = unsafe { RingPool::<StdBackend>::attach(region.as_non_null()) }.unwrap_err();
    assert!(
        matches!(err, RingError::BadMagic { what: "ring", .. }),
        "{err}"
    );
}

#[test]
fn pool__wait_abandoned_by_caller__then_not_written_and_not_counted_as_full() {
    let (_region, pool) = pool(PoolConfig {
        rings: 2,
        ring_capacity: 64,
        kind: RecordKind::Fixed(32),
        policy: FullPolicy::Wait {
            timeout_us: 10_000_000,
        },
    });
    // SAFETY: one producer.
    let mut tx = unsafe { pool.producer() };
    for i in 0..4u8 {
        tx.push(&[i; 32]).unwrap();
    }
    // Every ring is full and nobody drains: the wait would last 10 s; the caller abandons it.
    let started = std::time::Instant::now();
    assert_eq!(
        tx.push_unless(&[9; 32], || true),
        Err(ring::PushError::Abandoned)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let c = pool.counters();
    assert_eq!((c.accepted, c.dropped_full, c.waits), (4, 0, 1));
}

#[test]
fn channel__fixed_records_across_threads__then_all_arrive_in_order() {
    let (mut tx, mut rx) = ring::channel(256, RecordKind::Fixed(32)).unwrap();
    assert_eq!(tx.ring().capacity(), 256);
    let writer = std::thread::spawn(move || {
        for i in 0u64..10_000 {
            let mut record = [0u8; 32];
            record[..8].copy_from_slice(&i.to_le_bytes());
            while tx.push(&record).is_err() {
                std::thread::yield_now();
            }
        }
    });
    let mut record = [0u8; 32];
    let mut next = 0u64;
    while next < 10_000 {
        if rx.pop(&mut record).unwrap() {
            assert_eq!(u64::from_le_bytes(record[..8].try_into().unwrap()), next);
            next += 1;
        } else {
            std::thread::yield_now();
        }
    }
    writer.join().unwrap();
    assert!(rx.ring().is_empty());
}

#[test]
fn channel__consumer_dropped_first__then_producer_keeps_the_memory_and_fills_up() {
    let (mut tx, rx) = ring::channel(64, RecordKind::Variable).unwrap();
    drop(rx);
    let mut written = 0;
    while tx.push(&[1u8; 8]).is_ok() {
        written += 1;
    }
    assert_eq!(written, 4, "64 bytes hold four framed 8-byte records");
    assert!(tx.reserve(8).is_none(), "a full ring reserves nothing");
    tx.mark();
    assert!(tx.ring().is_marked());
}

#[test]
fn channel__bad_capacity__then_error_not_panic() {
    assert!(ring::channel(100, RecordKind::Variable).is_err());
    assert!(ring::channel(8, RecordKind::Variable).is_err());
    assert!(ring::channel(64, RecordKind::Fixed(128)).is_err());
}

#[test]
fn channel__reserve_in_place__then_consumer_reads_the_record() {
    let (mut tx, mut rx) = ring::channel(128, RecordKind::Variable).unwrap();
    let mut slot = tx.reserve(5).unwrap();
    slot.as_mut_slice().copy_from_slice(b"hello");
    slot.commit();
    let chunk = rx.read_chunk().unwrap();
    let records: Vec<&[u8]> = chunk.records().map(Result::unwrap).collect();
    assert_eq!(records, [&b"hello"[..]]);
    chunk.release_all();
    assert!(rx.ring().is_empty());
}

#[test]
fn ring__consumer_tail_ahead_or_too_far_behind__then_full_not_written() {
    let (region, ring) = fixed_ring(128);
    // The consumer's position, as another process could store it (offset 256, pinned).
    let tail = region
        .as_non_null()
        .cast::<u8>()
        .as_ptr()
        .wrapping_add(256)
        .cast::<u64>();
    // SAFETY: inside the region, aligned; no consumer exists to store it concurrently.
    let set_tail = |v: u64| unsafe { tail.write_volatile(v) };
    // SAFETY: one producer.
    let mut tx = unsafe { ring.producer() };
    for i in 0..4u8 {
        tx.push(&[i; 32]).unwrap();
    }
    for bad in [
        128 + 32,
        u64::MAX,
        128u64.wrapping_sub(160),
        128u64.wrapping_sub(1 << 40),
    ] {
        set_tail(bad);
        assert!(tx.push(&[9; 32]).is_err(), "tail {bad:#x} let a record in");
        assert!(!tx.room_for_words::<4>(), "tail {bad:#x}");
        assert_eq!(tx.cached_free_bytes(), 0, "tail {bad:#x}");
    }
    // The consumer released one record: one fits, a second does not.
    set_tail(32);
    tx.push(&[4; 32]).unwrap();
    assert!(tx.push(&[5; 32]).is_err());
    assert_eq!(ring.len_bytes(), 128);
    // A producer made while the tail is garbage sees no room either.
    set_tail(160 + 64);
    // SAFETY: the earlier producer is not used again.
    let mut again = unsafe { ring.producer() };
    assert_eq!(again.cached_free_bytes(), 0);
    assert!(again.push(&[9; 32]).is_err());
}
