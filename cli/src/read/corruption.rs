//! The readers on damaged sessions: every byte of a small session's files flipped, every
//! truncation, and files replaced by things that are not regular files. No reader may panic or
//! hang (each case runs under a watchdog), and every change to a trace file is reported.
#![allow(non_snake_case)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use atf::{
    ClockType, DetailRecordHeader, EventFormat, EventKind, IndexEvent, Manifest, SessionLayout,
    Symbol, ThreadEntry, DETAIL_CALL, NO_DETAIL,
};

use super::testing::{FOO, MAIN};
use crate::args::{ExportArgs, ExportFormat, ReplayArgs, ReportArgs, SessionArg, SortKey};

/// How long one case may take before it counts as a hang.
const WATCHDOG: Duration = Duration::from_secs(20);

/// A finished session of one thread, its events in `format`: main { foo } with a detail record
/// on each call.
fn small_session(out: &Path, format: EventFormat) -> SessionLayout {
    let layout = SessionLayout::create(out, 4242)
        .unwrap()
        .with_format(format);
    let mut m = Manifest::new(ClockType::Boottime);
    m.target_pid = 4242;
    m.executable = "/usr/bin/app".into();
    for (name, id) in [("main", MAIN), ("foo", FOO)] {
        m.symbols.push(Symbol {
            function_id: format!("{id:#018x}"),
            module_id: 0,
            symbol_index: 0,
            name: name.into(),
            size: 0,
        });
    }
    let tid = 7;
    let mut index = layout.create_index(tid, ClockType::Boottime).unwrap();
    let mut detail = layout.create_detail(tid).unwrap();
    let events = [
        (EventKind::Call, MAIN, 1_000, 0),
        (EventKind::Call, FOO, 2_000, 1),
        (EventKind::Return, FOO, 3_000, NO_DETAIL),
        (EventKind::Return, MAIN, 4_000, NO_DETAIL),
    ];
    for (seq, &(kind, function_id, ts, detail_seq)) in events.iter().enumerate() {
        if detail_seq != NO_DETAIL {
            let payload = [seq as u8 + 1; 16];
            let header =
                DetailRecordHeader::for_payload(DETAIL_CALL, seq as u32, tid, ts, payload.len());
            detail.append_record(&header, &payload).unwrap();
        }
        index
            .append_event(&IndexEvent {
                timestamp_ns: ts,
                function_id,
                thread_id: tid,
                kind,
                call_depth: 0,
                detail_seq,
            })
            .unwrap();
    }
    detail.finish().unwrap();
    index.set_has_detail(true).unwrap();
    index.finish().unwrap();
    let mut entry = ThreadEntry {
        id: tid,
        has_detail: true,
        index: Default::default(),
        detail: Default::default(),
    };
    entry.index.attempted = 4;
    entry.index.persisted = 4;
    entry.detail.attempted = 2;
    entry.detail.persisted = 2;
    m.threads.push(entry);
    m.accounting = m.thread_totals();
    m.finished = true;
    layout.write_manifest(&mut m).unwrap();
    layout
}

/// What the readers said about a session.
struct Outcome {
    /// `Session::open` failed with this message.
    error: Option<String>,
    /// The warnings of the opened session.
    warnings: Vec<String>,
}

/// Opens `dir` and runs info, replay, report and export on it, under the watchdog.
fn read_all(dir: &Path, case: &str) -> Outcome {
    let dir = dir.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = match atf::Session::open(&dir) {
            Err(e) => Outcome {
                error: Some(crate::error::chain(&e)),
                warnings: Vec::new(),
            },
            Ok(session) => Outcome {
                error: None,
                warnings: super::warnings(&session).collect(),
            },
        };
        let session = SessionArg {
            session: dir.clone(),
        };
        let mut sink = Vec::new();
        let _ = super::info(&session, &mut sink);
        let replay = ReplayArgs {
            session: session.clone(),
            tids: vec![],
            filter: None,
            depth: None,
            no_detail: false,
            names: Default::default(),
        };
        let mut replayed = Vec::new();
        let replay_ok = super::replay(&replay, &mut replayed).is_ok();
        let report = ReportArgs {
            session: session.clone(),
            sort: SortKey::Total,
            tids: vec![],
            names: Default::default(),
        };
        let mut reported = Vec::new();
        let report_ok = super::report(&report, &mut reported).is_ok();
        let export = ExportArgs {
            session,
            format: ExportFormat::Chrome,
            output: None,
            names: Default::default(),
        };
        let mut exported = Vec::new();
        let export_ok = super::export(&export, &mut exported).is_ok();
        // `replay`, `report` and `export` verify the events in their own pass over them: each
        // must find what opening the session finds, in the same order.
        if outcome.error.is_none() {
            let said = |ok: bool, text: &[u8]| {
                ok.then(|| {
                    String::from_utf8_lossy(text)
                        .lines()
                        .filter_map(|l| l.strip_prefix("# warning: "))
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
            };
            let in_metadata = export_ok
                .then(|| serde_json::from_slice::<serde_json::Value>(&exported).ok())
                .flatten()
                .map(|doc| {
                    let listed = doc["metadata"]["warnings"].as_array().cloned();
                    let listed = listed.unwrap_or_default().into_iter();
                    listed
                        .map(|w| w.as_str().unwrap_or_default().to_owned())
                        .collect::<Vec<_>>()
                });
            for (reader, said) in [
                ("replay", said(replay_ok, &replayed)),
                ("report", said(report_ok, &reported)),
                ("export", in_metadata),
            ] {
                if let Some(said) = said.filter(|said| *said != outcome.warnings) {
                    let _ = tx.send(Err(format!(
                        "{reader} warned {said:#?}, opening warned {:#?}",
                        outcome.warnings
                    )));
                    return;
                }
            }
        }
        let _ = tx.send(Ok((
            outcome,
            replay_ok,
            String::from_utf8_lossy(&replayed).into_owned(),
        )));
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(Err(differ)) => panic!("{case}: {differ}"),
        Ok(Ok((outcome, replayed, text))) => {
            if replayed && !outcome.warnings.is_empty() {
                assert!(
                    text.contains("# warning: "),
                    "{case}: replay showed no warning"
                );
            }
            outcome
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{case}: a reader hung"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{case}: a reader panicked"),
    }
}

fn files(layout: &SessionLayout) -> [PathBuf; 3] {
    [
        layout.index_path(7),
        layout.detail_path(7),
        layout.manifest_path(),
    ]
}

/// Whether `path` is a trace file (checksummed, every change to it must be reported) rather
/// than the manifest.
fn is_trace_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "atf" || e == "atc")
}

/// The messages about the ATC file `path` that name a structure of ATF v2 (a footer) instead of
/// ATC's own (file header, chunks, chunk index, trailer; docs/atc.md), each with its case.
fn foreign_words(path: &Path, outcome: &Outcome, case: &str) -> Vec<String> {
    if path.extension().is_none_or(|e| e != "atc") {
        return Vec::new();
    }
    let file = path.to_string_lossy();
    outcome
        .error
        .iter()
        .chain(&outcome.warnings)
        .filter(|m| m.contains(&*file) && m.contains("footer"))
        .map(|m| format!("{case}: ATC has no footer: {m}"))
        .collect()
}

#[test]
fn readers__every_byte_of_every_file_flipped__then_no_panic_no_hang_and_trace_file_flips_reported()
{
    for format in EventFormat::ALL {
        every_byte_flipped(format);
    }
}

fn every_byte_flipped(format: EventFormat) {
    let out = tempfile::tempdir().unwrap();
    let layout = small_session(out.path(), format);
    let clean = read_all(layout.pid_dir(), "undamaged");
    assert!(
        clean.error.is_none() && clean.warnings.is_empty(),
        "{:?}",
        clean.warnings
    );
    let (mut unreported, mut misworded) = (Vec::new(), Vec::new());
    for path in files(&layout) {
        let original = std::fs::read(&path).unwrap();
        let checksummed = is_trace_file(&path);
        for at in 0..original.len() {
            let masks: &[u8] = if checksummed {
                &[0x01, 0x80, 0xff]
            } else {
                &[0xff]
            };
            for &mask in masks {
                let mut bytes = original.clone();
                bytes[at] ^= mask;
                std::fs::write(&path, &bytes).unwrap();
                let case = format!("{} byte {at} ^ {mask:#04x}", path.display());
                let outcome = read_all(layout.pid_dir(), &case);
                misworded.extend(foreign_words(&path, &outcome, &case));
                if checksummed && outcome.error.is_none() && outcome.warnings.is_empty() {
                    unreported.push(case);
                }
            }
        }
        std::fs::write(&path, &original).unwrap();
    }
    assert!(
        unreported.is_empty(),
        "flips nobody reported: {unreported:#?}"
    );
    assert!(misworded.is_empty(), "{misworded:#?}");
}

#[test]
fn readers__every_file_cut_at_every_length__then_no_panic_no_hang_and_trace_file_cuts_reported() {
    for format in EventFormat::ALL {
        every_cut(format);
    }
}

fn every_cut(format: EventFormat) {
    let out = tempfile::tempdir().unwrap();
    let layout = small_session(out.path(), format);
    let (mut unreported, mut misworded) = (Vec::new(), Vec::new());
    for path in files(&layout) {
        let original = std::fs::read(&path).unwrap();
        let is_trace = is_trace_file(&path);
        for len in 0..original.len() {
            std::fs::write(&path, &original[..len]).unwrap();
            let case = format!("{} cut to {len} bytes", path.display());
            let outcome = read_all(layout.pid_dir(), &case);
            misworded.extend(foreign_words(&path, &outcome, &case));
            if is_trace && outcome.error.is_none() && outcome.warnings.is_empty() {
                unreported.push(case);
            }
        }
        std::fs::write(&path, &original).unwrap();
    }
    assert!(
        unreported.is_empty(),
        "cuts nobody reported: {unreported:#?}"
    );
    assert!(misworded.is_empty(), "{misworded:#?}");
}

#[test]
fn readers__files_replaced_by_fifo_directory_symlink_or_device__then_refused_naming_them() {
    for format in EventFormat::ALL {
        replaced(format);
    }
}

fn replaced(format: EventFormat) {
    let out = tempfile::tempdir().unwrap();
    let layout = small_session(out.path(), format);
    let root = nix_is_root();
    for path in files(&layout) {
        let saved = path.with_extension("saved");
        std::fs::rename(&path, &saved).unwrap();
        let mut kinds = vec![
            "fifo",
            "directory",
            "symlink to /dev/zero",
            "dangling symlink",
        ];
        if root {
            kinds.push("character device");
        }
        for kind in kinds {
            make(&path, kind);
            let case = format!("{} as a {kind}", path.display());
            let outcome = read_all(layout.pid_dir(), &case);
            let said = outcome
                .error
                .iter()
                .chain(&outcome.warnings)
                .any(|m| m.contains(&*path.to_string_lossy()));
            assert!(
                said,
                "{case}: not reported: {:?} {:?}",
                outcome.error, outcome.warnings
            );
            remove(&path);
        }
        std::fs::rename(&saved, &path).unwrap();
    }
    if !root {
        eprintln!("skipped the character-device case: creating a device node needs root");
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn make(path: &Path, kind: &str) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    match kind {
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        "fifo" => assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0),
        "directory" => std::fs::create_dir(path).unwrap(),
        "symlink to /dev/zero" => std::os::unix::fs::symlink("/dev/zero", path).unwrap(),
        "dangling symlink" => std::os::unix::fs::symlink("/nonexistent/x", path).unwrap(),
        "character device" => {
            let dev = libc::makedev(1, 5);
            // SAFETY: as above; mknod creates a node and touches no memory of ours.
            let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, dev) };
            assert_eq!(r, 0, "mknod: {}", std::io::Error::last_os_error());
        }
        other => unreachable!("{other}"),
    }
}

fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir(path).unwrap();
    } else {
        std::fs::remove_file(path).unwrap();
    }
}
