use super::*;
use event::{Record, CALL, EXCEPTION, NO_DETAIL, RETURN};
use proptest::prelude::*;

/// Every chunk of `bytes` (sealed chunks, then optionally index and trailer), decoded.
fn decode_all(bytes: &[u8]) -> (Vec<Record>, Vec<ChunkHeader>) {
    let mut out = Vec::new();
    let mut headers = Vec::new();
    let mut dec = Decoder::default();
    let mut at = 0;
    while at + CHUNK_HEADER_SIZE <= bytes.len() && bytes[at..at + 4] == CHUNK_MAGIC {
        let raw: [u8; CHUNK_HEADER_SIZE] = bytes[at..at + CHUNK_HEADER_SIZE].try_into().unwrap();
        let len = ChunkHeader::decode(&raw).unwrap().payload_len as usize;
        let payload = &bytes[at + CHUNK_HEADER_SIZE..at + CHUNK_HEADER_SIZE + len];
        headers.push(dec.decode(&raw, payload, &mut out).unwrap());
        at += CHUNK_HEADER_SIZE + len;
    }
    (out, headers)
}

fn encode_all(records: &[Record]) -> Vec<u8> {
    let mut enc = Encoder::new(7, 0);
    let mut out = Vec::new();
    for r in records {
        enc.push(&r.to_bytes(), &mut out);
    }
    enc.seal(&mut out);
    out
}

/// What the agent writes for `calls` call/return pairs of a tree of `levels` nested functions,
/// `step` ns apart.
pub(crate) fn tree(calls: u64, levels: u32, step: u64, tid: u32) -> Vec<Record> {
    let mut v = Vec::new();
    let mut ts = 1_000_000;
    let mut push = |v: &mut Vec<Record>, kind, depth: u32| {
        ts += step;
        v.push(Record {
            timestamp_ns: ts,
            function_id: 0x40_1000 + u64::from(depth) * 0x40,
            thread_id: tid,
            kind,
            call_depth: depth,
            detail_seq: NO_DETAIL,
        });
    };
    for _ in 0..calls {
        for d in 0..levels {
            push(&mut v, CALL, d);
        }
        for d in (0..levels).rev() {
            push(&mut v, RETURN, d);
        }
    }
    v
}

#[test]
fn encoder__one_function_called_a_million_times__then_under_3_bytes_an_event_and_lossless() {
    let records = tree(500_000, 1, 23, 7);
    let bytes = encode_all(&records);
    let per_event = bytes.len() as f64 / records.len() as f64;
    assert!(per_event <= 3.0, "{per_event} bytes per event");
    assert_eq!(decode_all(&bytes).0, records);
}

#[test]
fn encoder__three_level_tree__then_under_8_bytes_an_event_and_lossless() {
    let records = tree(200_000, 3, 37, 7);
    let bytes = encode_all(&records);
    let per_event = bytes.len() as f64 / records.len() as f64;
    assert!(per_event <= 8.0, "{per_event} bytes per event");
    assert_eq!(decode_all(&bytes).0, records);
}

#[test]
fn encoder__full_chunks__then_each_decodes_alone_and_the_index_lists_them() {
    let records = tree(100_000, 3, 11, 7);
    let mut enc = Encoder::new(7, FILE_HEADER_SIZE as u64);
    let mut out = Vec::new();
    for r in &records {
        enc.push(&r.to_bytes(), &mut out);
    }
    enc.finish(&mut out);
    let index = enc.index().to_vec();
    assert!(index.len() > 3, "{} chunks", index.len());
    // Trailer and index read back.
    let trailer = Trailer::decode(out[out.len() - TRAILER_SIZE..].try_into().unwrap()).unwrap();
    assert_eq!(trailer.event_count, records.len() as u64);
    assert_eq!(trailer.chunk_count as usize, index.len());
    let block =
        &out[(trailer.index_offset - FILE_HEADER_SIZE as u64) as usize..out.len() - TRAILER_SIZE];
    assert_eq!(decode_index(block).unwrap(), index);
    // A chunk in the middle, alone, gives exactly its events.
    let entry = index[index.len() / 2];
    let at = (entry.offset - FILE_HEADER_SIZE as u64) as usize;
    let raw: [u8; CHUNK_HEADER_SIZE] = out[at..at + CHUNK_HEADER_SIZE].try_into().unwrap();
    let len = ChunkHeader::decode(&raw).unwrap().payload_len as usize;
    let mut alone = Vec::new();
    let h = Decoder::default()
        .decode(&raw, &out[at + CHUNK_HEADER_SIZE..][..len], &mut alone)
        .unwrap();
    let first = entry.first_seq as usize;
    assert_eq!(&alone[..], &records[first..first + h.event_count as usize]);
    // Seeking by time finds the chunk holding the first event at or after a time.
    let t = records[first + 5].timestamp_ns;
    assert_eq!(chunk_at_time(&index, t), index.len() / 2);
    assert_eq!(chunk_at_seq(&index, entry.first_seq + 1), index.len() / 2);
    assert_eq!(chunk_at_time(&index, u64::MAX), index.len());
}

#[test]
fn encoder__ring_sized_slices__then_the_same_bytes_as_one_record_at_a_time() {
    // Three-level tree with a detail-linked event and a foreign thread now and then, so runs of
    // predicted events end at chunk boundaries, at general events and at slice ends.
    let mut records = tree(60_000, 3, 13, 7);
    for (i, r) in records.iter_mut().enumerate() {
        if i % 977 == 0 {
            r.thread_id = 8;
        }
    }
    let one_by_one = encode_all(&records);
    let raw: Vec<u8> = records.iter().flat_map(|r| r.to_bytes()).collect();
    for slice in [32, 96, 4 << 10, 64 << 10, raw.len()] {
        let mut enc = Encoder::new(7, 0);
        let mut out = Vec::new();
        for piece in raw.chunks(slice) {
            enc.push_bytes(piece, &mut out);
        }
        enc.seal(&mut out);
        assert_eq!(enc.event_count(), records.len() as u64);
        assert!(
            out == one_by_one,
            "slices of {slice} bytes encode differently"
        );
    }
    let (decoded, headers) = decode_all(&one_by_one);
    assert_eq!(decoded, records);
    assert!(headers.len() > 2, "{} chunks", headers.len());
}

#[test]
fn encoder__events_that_break_predictions__then_stored_in_full_and_lossless() {
    let base = Record {
        timestamp_ns: 5_000,
        function_id: 0x1234,
        thread_id: 7,
        kind: CALL,
        call_depth: 0,
        detail_seq: NO_DETAIL,
    };
    let records = vec![
        // A return before any call (attached mid-call), at depth 0.
        Record {
            kind: RETURN,
            ..base
        },
        base,
        // Time going backwards, another thread id, an exception, an unknown kind.
        Record {
            timestamp_ns: 4_000,
            kind: RETURN,
            ..base
        },
        Record {
            thread_id: 8,
            ..base
        },
        Record {
            kind: EXCEPTION,
            call_depth: 3,
            ..base
        },
        Record { kind: 99, ..base },
        // Detail sequence numbers: predicted, then a gap.
        Record {
            detail_seq: 0,
            ..base
        },
        Record {
            detail_seq: 1,
            kind: RETURN,
            call_depth: 0,
            ..base
        },
        Record {
            detail_seq: 10,
            ..base
        },
        // A return of another function than the open call; a huge time jump.
        Record {
            function_id: 1,
            kind: RETURN,
            ..base
        },
        Record {
            timestamp_ns: u64::MAX,
            ..base
        },
        Record {
            timestamp_ns: 0,
            ..base
        },
    ];
    let bytes = encode_all(&records);
    assert_eq!(decode_all(&bytes).0, records);
}

#[test]
fn decoder__one_flipped_bit__then_checksum_error_and_nothing_appended() {
    let records = tree(1000, 2, 20, 7);
    let mut bytes = encode_all(&records);
    let n = bytes.len();
    bytes[n / 2] ^= 0x10;
    let raw: [u8; CHUNK_HEADER_SIZE] = bytes[..CHUNK_HEADER_SIZE].try_into().unwrap();
    let mut out = vec![Record::default()];
    let err = Decoder::default()
        .decode(&raw, &bytes[CHUNK_HEADER_SIZE..], &mut out)
        .unwrap_err();
    assert!(matches!(err, DecodeError::Checksum { .. }), "{err}");
    assert_eq!(out.len(), 1);
}

#[test]
fn dictionary__more_functions_than_it_holds__then_lossless() {
    let records: Vec<Record> = (0..3 * DICT_MAX as u64)
        .flat_map(|f| {
            let call = Record {
                timestamp_ns: 100 + f * 10,
                function_id: f * 16,
                thread_id: 7,
                kind: CALL,
                call_depth: 0,
                detail_seq: NO_DETAIL,
            };
            [
                call,
                Record {
                    kind: RETURN,
                    timestamp_ns: call.timestamp_ns + 5,
                    ..call
                },
            ]
        })
        .collect();
    assert_eq!(decode_all(&encode_all(&records)).0, records);
}

fn arb_record() -> impl Strategy<Value = Record> {
    (
        0u64..2_000,
        prop_oneof![Just(0x10u64), Just(0x20), Just(0x30), any::<u64>()],
        prop_oneof![Just(7u32), any::<u32>()],
        prop_oneof![Just(CALL), Just(RETURN), any::<u32>()],
        0u32..4,
        prop_oneof![Just(NO_DETAIL), 0u32..3, any::<u32>()],
        any::<bool>(),
    )
        .prop_map(
            |(dt, function_id, thread_id, kind, call_depth, detail_seq, back)| Record {
                timestamp_ns: if back { u64::MAX - dt } else { dt },
                function_id,
                thread_id,
                kind,
                call_depth,
                detail_seq,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn encoder__arbitrary_records__then_decoded_bit_for_bit(
        records in proptest::collection::vec(arb_record(), 0..300),
        seal_every in 1usize..50,
    ) {
        let mut enc = Encoder::new(7, 0);
        let mut out = Vec::new();
        for (i, r) in records.iter().enumerate() {
            enc.push(&r.to_bytes(), &mut out);
            if i % seal_every == 0 {
                enc.seal(&mut out);
            }
        }
        enc.seal(&mut out);
        prop_assert_eq!(enc.event_count(), records.len() as u64);
        prop_assert_eq!(decode_all(&out).0, records);
    }

    #[test]
    fn encoder__arbitrary_records_in_arbitrary_slices__then_decoded_bit_for_bit(
        records in proptest::collection::vec(arb_record(), 0..300),
        per_slice in 1usize..40,
    ) {
        let raw: Vec<u8> = records.iter().flat_map(|r| r.to_bytes()).collect();
        let mut enc = Encoder::new(7, 0);
        let mut out = Vec::new();
        for piece in raw.chunks(per_slice * event::SIZE) {
            enc.push_bytes(piece, &mut out);
        }
        enc.seal(&mut out);
        prop_assert_eq!(enc.event_count(), records.len() as u64);
        prop_assert_eq!(decode_all(&out).0, records);
    }

    #[test]
    fn decoder__arbitrary_bytes__then_no_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        events in 1u32..50,
    ) {
        let header = ChunkHeader {
            payload_len: payload.len() as u32,
            event_count: events,
            ..ChunkHeader::default()
        };
        let raw = header.encode();
        let crc = ChunkHeader::checksum(&raw, &payload);
        let raw = ChunkHeader { crc, ..header }.encode();
        let _ = Decoder::default().decode(&raw, &payload, &mut Vec::new());
    }
}
