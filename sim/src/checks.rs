//! The checks of a finished or failed recording, against the producers' own ledgers and the
//! files the drain wrote: shared by both runners.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use registry::OrphanReason;

use crate::scenario::Scenario;
use crate::world::{Fate, Ledger};

/// After drain errors, given `final_error`, what `Drain::finish` returned if it failed: if the
/// final manifest's own write failed, the previous manifest is left intact and readable (a
/// manifest write that failed during the passes is replaced by the final one); otherwise the
/// final one is finished, balanced and agrees with the files.
pub(crate) fn check_manifest_after_errors(
    final_error: Option<&drain::DrainError>,
    ledgers: &BTreeMap<u32, Ledger>,
    out: &Path,
) {
    let manifest_failed = final_error.is_some_and(|e| {
        matches!(e, drain::DrainError::Io(atf::Error::Io { path, .. })
            if path.to_string_lossy().contains("manifest.json"))
    });
    if manifest_failed {
        check_manifest_readable(out);
    } else {
        check_accounted_as_written(ledgers, out);
    }
}

/// The invariants of one finished recording, against the producers' own ledgers (of every
/// simulated thread when `all_ran`, else of those that ran before the target was stopped).
pub(crate) fn check(
    report: &drain::Report,
    ledgers: &BTreeMap<u32, Ledger>,
    scenario: &Scenario,
    all_ran: bool,
) {
    let threads = ledgers.len() as u32;
    let expected = scenario.producers * scenario.lives;
    assert!(
        threads == expected || (!all_ran && threads < expected),
        "{threads} of {expected} simulated threads ran"
    );
    let session = report
        .manifest
        .parent()
        .expect("the manifest lies in the pid directory")
        .to_owned();
    let layout_index =
        |tid: u32| atf::EventFormat::events_path(&session.join(format!("thread_{tid}")));
    let layout_detail = |tid: u32| session.join(format!("thread_{tid}")).join("detail.atf");
    let entries: BTreeMap<u32, &atf::ThreadEntry> =
        report.threads.iter().map(|t| (t.id, t)).collect();
    let mut orphans_registry_full = 0;
    let mut orphans_shutdown = 0;
    for (&tid, ledger) in ledgers {
        let count = |f: Fate| ledger.fates.iter().filter(|&&x| x == f).count() as u64;
        let accepted: Vec<u32> = (0..ledger.fates.len() as u32)
            .filter(|&s| ledger.fates[s as usize] == Fate::Accepted)
            .collect();
        orphans_registry_full += count(Fate::Orphan(OrphanReason::RegistryFull));
        orphans_shutdown += count(Fate::Orphan(OrphanReason::Shutdown));
        // Persisted: exactly the accepted events, each once, in the thread's order.
        let persisted: Vec<u32> = if layout_index(tid).exists() {
            let reader = atf::IndexReader::open(layout_index(tid))
                .unwrap_or_else(|e| panic!("thread {tid}: index file unreadable: {e}"));
            reader
                .events()
                .map(|e| {
                    let e = e.unwrap_or_else(|e| panic!("thread {tid}: bad event: {e}"));
                    assert_eq!(e.thread_id, tid, "an event in another thread's file");
                    e.function_id as u32
                })
                .collect()
        } else {
            Vec::new()
        };
        assert_eq!(
            persisted, accepted,
            "thread {tid}: the persisted events are not exactly the accepted ones, in order \
             (fates {:?})",
            ledger.fates
        );
        // Accounting: the manifest balances and agrees with what the thread saw.
        match entries.get(&tid) {
            Some(entry) => {
                let c = &entry.index;
                assert!(c.balanced(), "thread {tid}: manifest unbalanced: {c:?}");
                assert!(
                    c.dropped.other.is_empty(),
                    "thread {tid}: drops of unexpected kind: {c:?}"
                );
                assert_eq!(
                    c.persisted,
                    accepted.len() as u64,
                    "thread {tid}: persisted"
                );
                assert_eq!(c.dropped.ring_full, count(Fate::RingFull), "thread {tid}");
                // Events after the final snapshot are missing from the manifest, never extra.
                let slot_events = ledger
                    .fates
                    .iter()
                    .filter(|f| !matches!(f, Fate::Orphan(_)))
                    .count() as u64;
                let d = &entry.detail;
                assert!(d.balanced(), "thread {tid}: detail unbalanced: {d:?}");
                assert_eq!(
                    (d.attempted, d.dropped.ring_full),
                    (
                        ledger.details.len() as u64 + ledger.detail_full,
                        ledger.detail_full
                    ),
                    "thread {tid}: detail accounting"
                );
                assert!(
                    c.attempted <= slot_events && c.dropped.shutdown <= count(Fate::Shutdown),
                    "thread {tid}: manifest {c:?} counts more than the thread did {:?}",
                    ledger.fates
                );
            }
            None => assert!(
                accepted.is_empty(),
                "thread {tid} has accepted events but no manifest entry"
            ),
        }
        // Detail: persisted records were written, once, in order; marked ones are all there.
        let records: Vec<u32> = if layout_detail(tid).exists() {
            let reader = atf::DetailReader::open(layout_detail(tid))
                .unwrap_or_else(|e| panic!("thread {tid}: detail file unreadable: {e}"));
            reader
                .records()
                .map(|r| {
                    r.unwrap_or_else(|e| panic!("thread {tid}: bad record: {e}"))
                        .header
                        .index_seq
                })
                .collect()
        } else {
            Vec::new()
        };
        assert!(
            records.windows(2).all(|w| w[0] < w[1]),
            "thread {tid}: detail records duplicated or out of order: {records:?}"
        );
        assert!(
            records.iter().all(|s| ledger.details.contains(s)),
            "thread {tid}: a persisted detail record was never written: {records:?} vs {:?}",
            ledger.details
        );
        assert!(
            ledger.marked.iter().all(|s| records.contains(s)),
            "thread {tid}: a marked detail record was lost: marked {:?}, persisted {records:?}",
            ledger.marked
        );
    }
    let totals = &report.accounting.index;
    assert!(totals.balanced(), "totals unbalanced: {totals:?}");
    assert!(
        totals.dropped.registry_full <= orphans_registry_full
            && totals.dropped.shutdown
                <= orphans_shutdown + ledgers.values().map(|l| l.fates.len() as u64).sum::<u64>(),
        "orphan counts exceed what the threads did: {totals:?}"
    );
}

/// The checks after the drain failed on a write: the error names the file and the cause (the
/// operating system's), and each thread's index file, opened by the reader, holds a prefix of
/// that thread's accepted events, in order and without duplicates (what was written before the
/// fault stays readable).
pub(crate) fn check_after_fault(
    error: &drain::DrainError,
    ledgers: &BTreeMap<u32, Ledger>,
    out: &Path,
) {
    FAULTS_SEEN.fetch_add(1, Relaxed);
    let drain::DrainError::Io(atf::Error::Io { path, source, .. }) = error else {
        panic!("the drain failed, but not on a write: {error}");
    };
    assert!(
        source.raw_os_error().is_some(),
        "the write error carries no OS cause: {error}"
    );
    // What the tracer prints: the error and its causes, each once.
    let message = shutdown::error_chain(error);
    let cause = source.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.matches(&cause).count() == 1,
        "the message does not name the file and the cause once: {message}"
    );
    check_written_prefixes(ledgers, out);
}

/// Each thread's index file, opened by the reader, holds a prefix of that thread's accepted
/// events, in order and without duplicates.
pub(crate) fn check_written_prefixes(ledgers: &BTreeMap<u32, Ledger>, out: &Path) {
    for (&tid, ledger) in ledgers {
        let accepted: Vec<u32> = (0..ledger.fates.len() as u32)
            .filter(|&s| ledger.fates[s as usize] == Fate::Accepted)
            .collect();
        for file in index_files(out, tid) {
            let reader = atf::IndexReader::open(&file)
                .unwrap_or_else(|e| panic!("{}: unreadable: {e}", file.display()));
            let events: Vec<u32> = reader
                .events()
                .map_while(Result::ok)
                .map(|e| e.function_id as u32)
                .collect();
            assert!(
                accepted.starts_with(&events),
                "thread {tid}: the file is not a prefix of the accepted events: \
                 {events:?} vs {accepted:?}"
            );
        }
    }
}

/// The session's one manifest (a session of one process).
fn the_manifest(out: &Path) -> std::path::PathBuf {
    let manifests: Vec<_> = pid_dirs(out)
        .into_iter()
        .map(|d| d.join("manifest.json"))
        .filter(|m| m.exists())
        .collect();
    assert_eq!(manifests.len(), 1, "one session manifest: {manifests:?}");
    manifests.into_iter().next().unwrap()
}

/// After a write fault or a forced shutdown, the manifest is still written, finished and balanced
/// for every thread, and what it calls persisted is exactly what the reader finds in the file; no
/// thread is counted for more events than it attempted.
pub(crate) fn check_accounted_as_written(ledgers: &BTreeMap<u32, Ledger>, out: &Path) {
    let manifest_path = the_manifest(out);
    let manifest = atf::Manifest::read(&manifest_path)
        .unwrap_or_else(|e| panic!("the final manifest is unreadable: {e}"));
    assert!(manifest.finished, "the manifest is not final");
    for entry in &manifest.threads {
        let tid = entry.id;
        let c = &entry.index;
        assert!(c.balanced(), "thread {tid}: unbalanced: {c:?}");
        let ledger = ledgers
            .get(&tid)
            .unwrap_or_else(|| panic!("the manifest names thread {tid}, which never ran"));
        assert!(
            c.attempted <= ledger.fates.len() as u64,
            "thread {tid}: {c:?}"
        );
        let on_disk: u64 = index_files(out, tid)
            .iter()
            .map(|f| {
                atf::IndexReader::open(f)
                    .map(|r| r.events().map_while(Result::ok).count() as u64)
                    .unwrap_or(0)
            })
            .sum();
        assert_eq!(
            c.persisted, on_disk,
            "thread {tid}: the manifest says {} persisted, the file holds {on_disk}: {c:?}",
            c.persisted
        );
    }
}

/// After the final manifest's write failed: the session's one manifest is the previous one (the
/// drain's first, not finished), intact and readable, and no temporary manifest is left behind.
pub(crate) fn check_manifest_readable(out: &Path) {
    let manifest_path = the_manifest(out);
    let previous = atf::Manifest::read(&manifest_path)
        .unwrap_or_else(|e| panic!("the manifest left after a failed write is unreadable: {e}"));
    assert!(
        !previous.finished,
        "the final manifest's write failed, yet the manifest is the final one"
    );
    let tmp = manifest_path.with_file_name("manifest.json.tmp");
    assert!(
        !tmp.exists(),
        "the failed temporary manifest was left behind: {}",
        tmp.display()
    );
}

/// Schedules (in this process) whose drain failed on a write and passed the fault checks.
pub static FAULTS_SEEN: AtomicU64 = AtomicU64::new(0);

/// `<out>/<session>/<pid dir>/thread_<tid>/index.atc` (or `index.atf`), wherever they exist.
fn index_files(out: &Path, tid: u32) -> Vec<std::path::PathBuf> {
    pid_dirs(out)
        .iter()
        .map(|pid| atf::EventFormat::events_path(&pid.join(format!("thread_{tid}"))))
        .filter(|f| f.exists())
        .collect()
}

/// `<out>/<session>/<pid dir>`.
fn pid_dirs(out: &Path) -> Vec<std::path::PathBuf> {
    let dirs = |p: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(p)
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    dirs(out)
        .iter()
        .flat_map(|session| dirs(session))
        .filter(|p| p.is_dir())
        .collect()
}
