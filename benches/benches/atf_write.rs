//! ATF writer throughput to the page cache: `cargo bench -p benches --bench atf_write`.
//!
//! - `atf_write_bytes/append_64KiB`: `IndexWriter::append` of 64 KiB batches (2048 events), as the
//!   drain appends a ring slice; bytes/s.
//! - `atf_write_bytes/append_tsc_64KiB`: the same with TSC-to-nanosecond conversion on the way in.
//! - `atf_write_records/append_64KiB`: the first workload in records/s.
//!
//! Files live in a temporary directory and are replaced every 256 MiB (never fsynced), so the figure
//! is the writer plus the kernel's page-cache copy, not the disk.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use atf::{ClockType, EventKind, IndexEvent, IndexWriter, TscCalibration, NO_DETAIL};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const BATCH_BYTES: usize = 64 * 1024;
const EVENTS_PER_BATCH: usize = BATCH_BYTES / atf::EVENT_SIZE;
/// Batches per file before it is replaced (256 MiB).
const BATCHES_PER_FILE: u64 = 4096;

fn batch() -> Vec<u8> {
    (0..EVENTS_PER_BATCH as u64)
        .flat_map(|i| {
            IndexEvent {
                timestamp_ns: 1_000 + i,
                function_id: atf::function_id(0x1234_5678, (i % 64) as u32),
                thread_id: 7,
                kind: if i % 2 == 0 {
                    EventKind::Call
                } else {
                    EventKind::Return
                },
                call_depth: (i % 16) as u32,
                detail_seq: NO_DETAIL,
            }
            .encode()
        })
        .collect()
}

/// Appends `iters` batches with `append`, replacing the file every 256 MiB; returns the time spent.
fn run(dir: &Path, iters: u64, append: &mut dyn FnMut(&mut IndexWriter)) -> Duration {
    let path = dir.join("index.atf");
    let _ = std::fs::remove_file(&path);
    let mut writer = IndexWriter::create(&path, 7, ClockType::Boottime).unwrap();
    let start = Instant::now();
    for i in 0..iters {
        if i > 0 && i % BATCHES_PER_FILE == 0 {
            writer.flush().unwrap();
            drop(writer);
            std::fs::remove_file(&path).unwrap();
            writer = IndexWriter::create(&path, 7, ClockType::Boottime).unwrap();
        }
        append(&mut writer);
    }
    writer.flush().unwrap();
    let elapsed = start.elapsed();
    black_box(writer.event_count());
    elapsed
}

fn atf_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let data = batch();
    let calibration = TscCalibration::new(3_000_000_000, 0, 0);

    let mut group = c.benchmark_group("atf_write_bytes");
    group.throughput(Throughput::Bytes(BATCH_BYTES as u64));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("append_64KiB", |b| {
        b.iter_custom(|iters| {
            run(dir.path(), iters, &mut |w| {
                w.append(black_box(&data)).unwrap()
            })
        })
    });
    group.bench_function("append_tsc_64KiB", |b| {
        b.iter_custom(|iters| {
            run(dir.path(), iters, &mut |w| {
                w.append_tsc(black_box(&data), &calibration).unwrap()
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("atf_write_records");
    group.throughput(Throughput::Elements(EVENTS_PER_BATCH as u64));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("append_64KiB", |b| {
        b.iter_custom(|iters| {
            run(dir.path(), iters, &mut |w| {
                w.append(black_box(&data)).unwrap()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, atf_write);
criterion_main!(benches);
