//! Proof that readers written for the original ATF v2 format open our sessions: a minimal reader that
//! decodes only with the byte offsets of the ATF v2 specification in `docs/format.md` (no code
//! from this crate), applied to sessions written by this crate, finished and killed mid-run.

#![allow(non_snake_case)]

use std::path::Path;

use atf::{
    ClockType, DetailRecordHeader, EventFormat, EventKind, IndexEvent, Manifest, SessionLayout,
    Symbol, ThreadEntry, DETAIL_CALL, NO_DETAIL,
};

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// An index event as the original reader sees it: (timestamp, function_id, thread_id, kind, depth,
/// detail_seq).
type OrigEvent = (u64, u64, u32, u32, u32, u32);

struct OrigIndex {
    thread_id: u32,
    flags: u32,
    clock_type: u8,
    footer_checksum: Option<u32>,
    events: Vec<OrigEvent>,
}

/// The original index reader: header checks, the footer at `footer_offset` if its magic is there,
/// else the count from the file size.
fn original_read_index(path: &Path) -> OrigIndex {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[0..4], b"ATI2");
    assert_eq!(b[4], 1, "endian");
    assert_eq!(b[5], 1, "version");
    assert_eq!(b[7], 4, "os");
    assert_eq!(u32_at(&b, 24), 32, "event_size");
    let events_offset = u64_at(&b, 32) as usize;
    assert_eq!(events_offset, 64);
    let footer_offset = u64_at(&b, 40) as usize;
    let (count, footer_checksum) =
        if footer_offset + 64 <= b.len() && &b[footer_offset..footer_offset + 4] == b"2ITA" {
            (
                u64_at(&b, footer_offset + 8) as usize,
                Some(u32_at(&b, footer_offset + 4)),
            )
        } else {
            ((b.len() - events_offset) / 32, None)
        };
    let events = (0..count)
        .map(|i| {
            let o = events_offset + i * 32;
            (
                u64_at(&b, o),
                u64_at(&b, o + 8),
                u32_at(&b, o + 16),
                u32_at(&b, o + 20),
                u32_at(&b, o + 24),
                u32_at(&b, o + 28),
            )
        })
        .collect();
    OrigIndex {
        thread_id: u32_at(&b, 12),
        flags: u32_at(&b, 8),
        clock_type: b[16],
        footer_checksum,
        events,
    }
}

/// A detail record as the original reader sees it: (index_seq, event_type, timestamp, payload).
type OrigRecord = (u32, u16, u64, Vec<u8>);

/// The original detail reader: the last 64 bytes are the footer; records are walked from 64 while
/// the offset is below `len - 64`. Returns the records and the footer's count.
fn original_read_detail(path: &Path) -> (Vec<OrigRecord>, u64) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[0..4], b"ATD2");
    assert_eq!(u64_at(&b, 20), 64, "events_offset");
    let footer = b.len() - 64;
    assert_eq!(&b[footer..footer + 4], b"2DTA");
    let footer_count = u64_at(&b, footer + 8);
    assert_eq!(u64_at(&b, 28), footer_count, "header event_count");
    assert_eq!(
        u64_at(&b, 36),
        u64_at(&b, footer + 16),
        "header bytes_length"
    );
    let mut records = Vec::new();
    let mut off = 64;
    while off < footer {
        let total = u32_at(&b, off) as usize;
        records.push((
            u32_at(&b, off + 8),
            u16_at(&b, off + 4),
            u64_at(&b, off + 16),
            b[off + 24..off + total].to_vec(),
        ));
        off += total;
    }
    (records, footer_count)
}

fn event(tid: u32, i: u64, module: u32) -> IndexEvent {
    IndexEvent {
        timestamp_ns: 1_000_000 + i * 7,
        function_id: atf::function_id(module, (i % 4) as u32),
        thread_id: tid,
        kind: if i % 2 == 0 {
            EventKind::Call
        } else {
            EventKind::Return
        },
        call_depth: (i % 3) as u32,
        detail_seq: if tid == 1 && i < 3 {
            i as u32
        } else {
            NO_DETAIL
        },
    }
}

fn as_orig(e: &IndexEvent) -> OrigEvent {
    (
        e.timestamp_ns,
        e.function_id,
        e.thread_id,
        e.kind.to_raw(),
        e.call_depth,
        e.detail_seq,
    )
}

/// Writes a session of three threads (thread 1 with three detail records); `finish` decides whether
/// the writers finish or are abandoned mid-run as in a SIGKILL.
fn record_session(out: &Path, finish: bool) -> (SessionLayout, Vec<(u32, Vec<IndexEvent>)>) {
    let module = atf::module_id("/opt/App/bin/app");
    // Recorded with `--format atf2`, the format these readers know.
    let layout = SessionLayout::create(out, 555)
        .unwrap()
        .with_format(EventFormat::Atf2);
    let mut manifest = Manifest::new(ClockType::Boottime);
    manifest.threads = [1u32, 2, 3]
        .iter()
        .map(|&id| ThreadEntry {
            id,
            ..Default::default()
        })
        .collect();
    manifest.modules = vec![atf::Module {
        module_id: module,
        path: "/opt/App/bin/app".into(),
        base_address: 0x40_0000,
        size: 0x1000,
        uuid: String::new(),
    }];
    manifest.symbols = (0..4)
        .map(|i| Symbol::new(module, i, format!("fn_{i}")))
        .collect();
    layout.write_manifest(&mut manifest).unwrap();

    let mut written = Vec::new();
    for (tid, n) in [(1u32, 10u64), (2, 5000), (3, 0)] {
        let events: Vec<IndexEvent> = (0..n).map(|i| event(tid, i, module)).collect();
        let mut w = layout.create_index(tid, ClockType::Boottime).unwrap();
        for chunk in events.chunks(333) {
            let bytes: Vec<u8> = chunk.iter().flat_map(IndexEvent::encode).collect();
            w.append(&bytes).unwrap();
        }
        if tid == 1 {
            w.set_has_detail(true).unwrap();
            let mut d = layout.create_detail(tid).unwrap();
            for i in 0..3u32 {
                let payload = vec![i as u8; 16 + i as usize];
                let header = DetailRecordHeader::for_payload(
                    DETAIL_CALL,
                    i,
                    tid,
                    events[i as usize].timestamp_ns,
                    payload.len(),
                );
                d.append_record(&header, &payload).unwrap();
            }
            if finish {
                d.finish().unwrap();
            } else {
                d.flush().unwrap();
                std::mem::forget(d);
            }
            manifest.threads[0].has_detail = true;
        }
        if finish {
            w.finish().unwrap();
        } else {
            w.flush().unwrap();
            std::mem::forget(w);
        }
        written.push((tid, events));
    }
    if finish {
        manifest.finished = true;
        manifest.time_start_ns = 1_000_000;
        manifest.time_end_ns = 1_000_000 + 4999 * 7;
        layout.write_manifest(&mut manifest).unwrap();
    }
    (layout, written)
}

#[test]
fn original_reader__finished_session__then_reads_every_event_record_and_name() {
    let out = tempfile::tempdir().unwrap();
    let (layout, written) = record_session(out.path(), true);

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.manifest_path()).unwrap()).unwrap();
    assert_eq!(manifest["format_version"], "2.1");
    assert_eq!(manifest["clock_type"], 3);
    let names: std::collections::HashMap<String, String> = manifest["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["function_id"].as_str().unwrap().to_owned(),
                s["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    for (i, thread) in manifest["threads"].as_array().unwrap().iter().enumerate() {
        let id = thread["id"].as_u64().unwrap() as u32;
        let dir = layout.pid_dir().join(format!("thread_{id}"));
        let index = original_read_index(&dir.join("index.atf"));
        let (tid, events) = &written[i];
        assert_eq!((index.thread_id, id), (*tid, *tid));
        assert_eq!(index.clock_type, 3);
        assert_eq!(index.events, events.iter().map(as_orig).collect::<Vec<_>>());
        let bytes = std::fs::read(dir.join("index.atf")).unwrap();
        let expected_crc = crc32c::crc32c(&bytes[64..64 + events.len() * 32]);
        assert_eq!(index.footer_checksum, Some(expected_crc));
        for e in &index.events {
            let name = &names[&format!("0x{:016x}", e.1)];
            assert_eq!(name, &format!("fn_{}", e.1 & 0xffff_ffff));
        }
        let has_detail = thread["has_detail"].as_bool().unwrap();
        assert_eq!(has_detail, index.flags & 1 == 1);
        assert_eq!(has_detail, dir.join("detail.atf").exists());
        if has_detail {
            let (records, count) = original_read_detail(&dir.join("detail.atf"));
            assert_eq!(count, 3);
            for (seq, (index_seq, event_type, ts, payload)) in records.iter().enumerate() {
                // Bidirectional links: the index event points at the record and back.
                assert_eq!(index.events[*index_seq as usize].5 as usize, seq);
                assert_eq!(*event_type, 3);
                assert_eq!(*ts, index.events[*index_seq as usize].0);
                assert_eq!(payload, &vec![seq as u8; 16 + seq]);
            }
        }
    }
}

#[test]
fn original_reader__session_killed_mid_run__then_same_events_as_our_reader() {
    let out = tempfile::tempdir().unwrap();
    let (layout, written) = record_session(out.path(), false);
    let ours = atf::Session::open(layout.session_dir()).unwrap();
    assert!(matches!(ours.warnings[0], atf::Warning::Unfinished));
    for (tid, events) in &written {
        let index = original_read_index(&layout.index_path(*tid));
        assert_eq!(index.footer_checksum, None);
        assert_eq!(index.events, events.iter().map(as_orig).collect::<Vec<_>>());
        let thread = ours.threads.iter().find(|t| t.id == *tid).unwrap();
        let mine: Vec<OrigEvent> = thread
            .index
            .events()
            .map(|e| as_orig(&e.unwrap()))
            .collect();
        assert_eq!(mine, index.events);
    }
    let detail = ours.threads[0].detail.as_ref().unwrap();
    assert!(!detail.finished());
    assert_eq!(detail.record_count(), 3);
}
