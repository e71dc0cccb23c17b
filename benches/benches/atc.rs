//! The compact encoding alone, in memory: `cargo bench -p benches --bench atc`.
//!
//! Workloads (what the agent writes, timestamps with a little jitter): `one_function` — one
//! function called over and over (the e2e workload); `tree3` — a 3-level call tree. For each it
//! prints the bytes per event of the encoding, then times:
//! - `atc_encode/<workload>`: `Encoder::push_bytes` of 64 KiB ring slices (events/s);
//! - `atc_decode/<workload>`: `Decoder::decode` of the sealed chunks (events/s).

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;

use atc::{ChunkHeader, Decoder, Encoder, CHUNK_HEADER_SIZE};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use event::{Record, CALL, NO_DETAIL, RETURN};

/// `pairs` call/return pairs of a `levels`-deep tree, ~`step` ns apart with a deterministic jitter.
fn workload(pairs: u64, levels: u32, step: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ts = 1_000_000_000u64;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut push = |out: &mut Vec<u8>, kind, depth: u32| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ts += step + x % step;
        let r = Record {
            timestamp_ns: ts,
            function_id: 0x55_5555_1000 + u64::from(depth) * 0x60,
            thread_id: 4242,
            kind,
            call_depth: depth,
            detail_seq: NO_DETAIL,
        };
        out.extend_from_slice(&r.to_bytes());
    };
    for _ in 0..pairs {
        for d in 0..levels {
            push(&mut out, CALL, d);
        }
        for d in (0..levels).rev() {
            push(&mut out, RETURN, d);
        }
    }
    out
}

fn encode(raw: &[u8]) -> Vec<u8> {
    let mut enc = Encoder::new(4242, 64);
    let mut out = Vec::new();
    for slice in raw.chunks(64 << 10) {
        enc.push_bytes(slice, &mut out);
    }
    enc.seal(&mut out);
    out
}

fn decode(bytes: &[u8], dec: &mut Decoder, out: &mut Vec<Record>) -> usize {
    let mut at = 0;
    let mut n = 0;
    while at < bytes.len() {
        let raw: [u8; CHUNK_HEADER_SIZE] = bytes[at..at + CHUNK_HEADER_SIZE].try_into().unwrap();
        let len = ChunkHeader::decode(&raw).unwrap().payload_len as usize;
        out.clear();
        dec.decode(&raw, &bytes[at + CHUNK_HEADER_SIZE..][..len], out)
            .unwrap();
        n += out.len();
        at += CHUNK_HEADER_SIZE + len;
    }
    n
}

fn bench(c: &mut Criterion) {
    for (name, levels) in [("one_function", 1u32), ("tree3", 3)] {
        let raw = workload(500_000 / u64::from(levels), levels, 12);
        let events = raw.len() / event::SIZE;
        let encoded = encode(&raw);
        println!(
            "atc {name}: {events} events, {} bytes encoded, {:.2} bytes/event (raw: 32)",
            encoded.len(),
            encoded.len() as f64 / events as f64
        );
        let mut group = c.benchmark_group("atc_encode");
        group.throughput(Throughput::Elements(events as u64));
        group.bench_function(name, |b| b.iter(|| black_box(encode(black_box(&raw)))));
        group.finish();
        let mut group = c.benchmark_group("atc_decode");
        group.throughput(Throughput::Elements(events as u64));
        let mut dec = Decoder::default();
        let mut out = Vec::new();
        group.bench_function(name, |b| {
            b.iter(|| black_box(decode(black_box(&encoded), &mut dec, &mut out)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
