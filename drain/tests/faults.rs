//! The drain on a file system that injects faults (`atf::fault::FaultyFs`), with real producer
//! threads over a memfd region: interrupted and short writes lose nothing; a full disk, `EIO`, a
//! failed detail file, a failed manifest fsync or `syncfs` are reported with the file and the
//! cause, leave every file readable as a prefix of its events, and a final manifest that accounts
//! for every event; a slow fsync only makes the recording slower.
#![allow(non_snake_case)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Release};
use std::sync::Arc;
use std::time::Duration;

use atf::fault::{FaultPlan, FaultyFs};
use atf::{ClockType, Manifest, Session, SessionLayout};
use drain::{Drain, DrainError, DrainThread, Outcome, Report};
use proptest::prelude::*;
use registry::RegionConfig;

mod common;
use common::{produce, DETAIL_PER_THREAD};

fn config() -> RegionConfig {
    let mut config = RegionConfig {
        capacity: 64,
        // Lossless: producers wait for the drain rather than drop.
        wait_timeout_us: 30_000_000,
        ..RegionConfig::default()
    };
    config.index.ring_capacity = 16 << 10;
    config.detail.ring_capacity = 4 << 10;
    config
}

fn manifest() -> Manifest {
    let mut m = Manifest::new(ClockType::Boottime);
    m.target_pid = std::process::id();
    m.executable = "in-process producers".into();
    m
}

/// A recording whose drain ran on a faulty file system.
struct Run {
    _out: tempfile::TempDir,
    pid_dir: PathBuf,
    /// Errors of the passes and of the final drain, in order.
    errors: Vec<DrainError>,
    finished: Result<Report, DrainError>,
    /// The report `finish_counted` returned, failure or not.
    counted: Report,
}

/// Records `threads` × `events` with the drain passing on this thread, on `fs`. A pass that fails
/// does not stop the drain, as in the final drain: a failed file's events are consumed without
/// being written, so the producers never wait on a drain that gave up.
fn record_on(fs: Arc<FaultyFs>, threads: u32, events: u64) -> Run {
    let out = tempfile::tempdir().unwrap();
    let region = common::region(&config());
    let registry = region.registry().unwrap();
    let layout = SessionLayout::create(out.path(), std::process::id())
        .unwrap()
        .with_fs(fs);
    let pid_dir = layout.pid_dir().to_path_buf();
    let mut drain = Drain::new(registry, layout, manifest()).unwrap();
    let mut errors = Vec::new();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            produce(registry, threads, events);
            // Release: pairs with the Acquire below; the producers' slots are all exited.
            done.store(true, Release);
        });
        // Acquire: pairs with the Release above.
        while !done.load(Acquire) {
            if let Err(e) = drain.pass() {
                errors.push(e);
            }
            std::thread::yield_now();
        }
    });
    common::stop_producers(registry);
    if let Err(e) = drain.final_drain(false) {
        errors.push(e);
    }
    let (counted, error) = drain.finish_counted(&Outcome {
        stop_reason: "target exited".into(),
        target_fate: atf::TargetFate::Exited { code: 0 },
        ..Outcome::default()
    });
    Run {
        _out: out,
        pid_dir,
        errors,
        finished: error.map_or_else(|| Ok(counted.clone()), Err),
        counted,
    }
}

/// The error and its causes on one line, as the tracer prints them.
fn chain(error: &DrainError) -> String {
    std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// The file and the OS error of a write error; checks that the error with its causes, as the
/// tracer prints it, names the file and gives the cause once.
fn file_and_cause(error: &DrainError) -> (&Path, i32) {
    let DrainError::Io(atf::Error::Io { path, source, .. }) = error else {
        panic!("not a write error: {error}");
    };
    let message = chain(error);
    assert!(
        message.contains(&path.display().to_string())
            && message.matches(&source.to_string()).count() == 1,
        "the message does not name the file and the cause once: {message}"
    );
    let errno = source
        .raw_os_error()
        .unwrap_or_else(|| panic!("no OS error: {error}"));
    (path, errno)
}

/// What the session on disk holds, checked: a final manifest, balanced for every thread and in
/// total; every index file a prefix of its thread's events, in order, exactly as long as the
/// manifest's `persisted`; the same for the detail files. Returns the index and detail events
/// counted `not_written`.
fn check_session(pid_dir: &Path, threads: u32, events: u64) -> (u64, u64) {
    let session = Session::open(pid_dir).unwrap();
    let m = &session.manifest;
    assert!(m.finished, "the manifest is not final");
    assert!(m.accounting.index.balanced(), "{:?}", m.accounting.index);
    assert!(m.accounting.detail.balanced(), "{:?}", m.accounting.detail);
    assert_eq!(m.accounting.index.attempted, u64::from(threads) * events);
    assert_eq!(m.threads.len(), threads as usize, "{:?}", m.threads);
    let (mut not_written, mut detail_not_written) = (0, 0);
    for entry in &m.threads {
        let tid = entry.id;
        assert!(entry.index.balanced(), "thread {tid}: {:?}", entry.index);
        assert!(entry.detail.balanced(), "thread {tid}: {:?}", entry.detail);
        assert_eq!(entry.index.attempted, events, "thread {tid}");
        let thread = session.threads.iter().find(|t| t.id == tid);
        let readable: Vec<u64> = thread
            .map(|t| t.index.events().map(|e| e.unwrap().timestamp_ns).collect())
            .unwrap_or_default();
        assert_eq!(
            readable,
            (1..=readable.len() as u64).collect::<Vec<_>>(),
            "thread {tid}: not a prefix of its events"
        );
        assert_eq!(
            entry.index.persisted,
            readable.len() as u64,
            "thread {tid}: the manifest's persisted is not what the file holds"
        );
        let records = thread
            .and_then(|t| t.detail.as_ref())
            .map(|d| {
                d.records()
                    .map(|r| r.unwrap().header.timestamp_ns)
                    .collect()
            })
            .unwrap_or_else(Vec::new);
        assert_eq!(records, (1..=records.len() as u64).collect::<Vec<_>>());
        assert_eq!(entry.detail.persisted, records.len() as u64, "thread {tid}");
        let lost = |c: &atf::Counts| c.dropped.other.get("not_written").copied().unwrap_or(0);
        not_written += lost(&entry.index);
        detail_not_written += lost(&entry.detail);
    }
    (not_written, detail_not_written)
}

#[test]
fn drain__eintr_storm_and_short_writes__then_files_equal_the_accepted_events() {
    const THREADS: u32 = 4;
    const EVENTS: u64 = 40_000;
    let fs = Arc::new(FaultyFs::new(
        FaultPlan::new()
            .interrupt_writes_every(2)
            .short_writes_every(1, 64),
    ));
    let out = tempfile::tempdir().unwrap();
    let region = common::region(&config());
    let registry = region.leak().unwrap();
    let layout = SessionLayout::create(out.path(), std::process::id())
        .unwrap()
        .with_fs(fs.clone());
    let pid_dir = layout.pid_dir().to_path_buf();
    let drain = Drain::new(registry, layout, manifest()).unwrap();
    let thread = DrainThread::spawn(drain, |e| panic!("drain failed: {e}")).unwrap();
    produce(registry, THREADS, EVENTS);
    registry.stop_accepting(Duration::from_secs(5));
    registry
        .close_registrations(Duration::from_secs(5))
        .unwrap();
    let mut drain = thread.stop().expect("drain thread ended cleanly");
    drain.final_drain(false).unwrap();
    let report = drain.finish(&Outcome::default()).unwrap();

    assert_eq!(check_session(&pid_dir, THREADS, EVENTS), (0, 0));
    for entry in &report.threads {
        assert_eq!(entry.index.persisted, EVENTS, "thread {}", entry.id);
        assert_eq!(
            entry.detail.persisted, DETAIL_PER_THREAD,
            "thread {}",
            entry.id
        );
    }
    let session = Session::open(&pid_dir).unwrap();
    assert!(session.warnings.is_empty(), "{:?}", session.warnings);
    for thread in &session.threads {
        assert!(thread.index.finished() && thread.index.verify_checksum().unwrap());
    }
    let injected = fs.injected();
    assert!(
        injected.interrupts > 100 && injected.short_writes > 100,
        "{injected:?}"
    );
}

#[test]
fn drain__disk_full_mid_run__then_enospc_names_the_file_and_session_readable_and_balanced() {
    const THREADS: u32 = 4;
    const EVENTS: u64 = 50_000;
    let fs = Arc::new(FaultyFs::new(
        FaultPlan::new()
            .only_paths_containing("index.at")
            .full_after(60 << 10, libc::ENOSPC),
    ));
    let run = record_on(fs.clone(), THREADS, EVENTS);
    let first = run.errors.first().expect("the full disk was reported");
    let (path, errno) = file_and_cause(first);
    assert_eq!(errno, libc::ENOSPC);
    assert!(
        path.to_string_lossy().ends_with(".atc"),
        "{}",
        path.display()
    );
    for e in run.errors.iter().chain(run.finished.as_ref().err()) {
        file_and_cause(e);
    }
    let (not_written, _) = check_session(&run.pid_dir, THREADS, EVENTS);
    assert!(
        not_written > 0,
        "the events lost to the full disk are not named"
    );
    assert!(fs.injected().write_errors > 0);
}

#[test]
fn drain__eio_mid_run__then_error_names_the_file_and_cause_and_session_readable_and_balanced() {
    const THREADS: u32 = 4;
    const EVENTS: u64 = 50_000;
    let fs = Arc::new(FaultyFs::new(
        FaultPlan::new()
            .only_paths_containing("index.atc")
            .fail_writes_from(10, libc::EIO),
    ));
    let run = record_on(fs, THREADS, EVENTS);
    let (path, errno) = file_and_cause(run.errors.first().expect("EIO was reported"));
    assert_eq!(errno, libc::EIO);
    assert!(path.ends_with("index.atc"), "{}", path.display());
    let (not_written, _) = check_session(&run.pid_dir, THREADS, EVENTS);
    assert!(not_written > 0);
}

#[test]
fn drain__final_manifest_cannot_be_written__then_finish_counted_still_reports_the_true_accounting()
{
    const THREADS: u32 = 3;
    const EVENTS: u64 = 20_000;
    // The initial manifest's two writes pass; every later manifest write fails.
    let fs = Arc::new(FaultyFs::new(
        FaultPlan::new()
            .only_paths_containing("manifest")
            .fail_writes_from(3, libc::EIO),
    ));
    let run = record_on(fs, THREADS, EVENTS);
    let err = run
        .finished
        .as_ref()
        .expect_err("the final manifest failed");
    let (path, errno) = file_and_cause(err);
    assert_eq!(errno, libc::EIO);
    assert!(
        path.to_string_lossy().contains("manifest"),
        "{}",
        path.display()
    );
    let acc = &run.counted.accounting.index;
    assert!(acc.balanced(), "{acc:?}");
    // Every event reached its file: the accounting says so although the manifest could not.
    assert_eq!(acc.attempted, u64::from(THREADS) * EVENTS);
    assert_eq!(acc.persisted, acc.attempted);
    let on_disk = atf::Session::open(&run.pid_dir).unwrap().event_count();
    assert_eq!(on_disk, acc.persisted);
}

#[test]
fn drain__detail_file_fails__then_index_complete_and_marked_records_counted_not_written() {
    const THREADS: u32 = 3;
    const EVENTS: u64 = 10_000;
    let fs = Arc::new(FaultyFs::new(
        FaultPlan::new()
            .only_paths_containing("detail.atf")
            .fail_writes_from(1, libc::EIO),
    ));
    let run = record_on(fs, THREADS, EVENTS);
    let (path, errno) = file_and_cause(run.errors.first().expect("EIO was reported"));
    assert_eq!(errno, libc::EIO);
    assert!(path.ends_with("detail.atf"), "{}", path.display());
    let (not_written, detail_not_written) = check_session(&run.pid_dir, THREADS, EVENTS);
    assert_eq!(not_written, 0, "the index files are whole");
    assert_eq!(detail_not_written, u64::from(THREADS) * DETAIL_PER_THREAD);
}

#[test]
fn drain__manifest_fsync_fails_mid_run__then_reported_and_final_manifest_written() {
    const THREADS: u32 = 2;
    const EVENTS: u64 = 20_000;
    // Sync 1 is the initial manifest's (`Drain::new`), sync 2 the first rewrite's.
    let fs = Arc::new(FaultyFs::new(
        FaultPlan::new()
            .only_paths_containing("manifest")
            .fail_sync(2, libc::EIO),
    ));
    let run = record_on(fs, THREADS, EVENTS);
    let (path, errno) = file_and_cause(run.errors.first().expect("the fsync was reported"));
    assert_eq!(errno, libc::EIO);
    assert!(path.ends_with("manifest.json.tmp"), "{}", path.display());
    assert!(chain(&run.errors[0]).contains("unknown"));
    run.finished.as_ref().unwrap();
    assert_eq!(check_session(&run.pid_dir, THREADS, EVENTS), (0, 0));
}

#[test]
fn drain__session_sync_fails__then_finish_reports_the_file_and_manifest_is_final() {
    const THREADS: u32 = 2;
    const EVENTS: u64 = 20_000;
    let fs = Arc::new(FaultyFs::new(FaultPlan::new().fail_sync_fs(libc::EIO)));
    let run = record_on(fs, THREADS, EVENTS);
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    let err = run
        .finished
        .as_ref()
        .expect_err("the failed syncfs was reported");
    let (path, errno) = file_and_cause(err);
    assert_eq!(errno, libc::EIO);
    assert!(path.starts_with(&run.pid_dir), "{}", path.display());
    assert!(chain(err).contains("unknown"), "{err}");
    assert_eq!(check_session(&run.pid_dir, THREADS, EVENTS), (0, 0));
}

#[test]
fn drain__slow_fsync__then_recording_completes_with_every_event() {
    const THREADS: u32 = 2;
    const EVENTS: u64 = 20_000;
    let fs = Arc::new(FaultyFs::new(
        FaultPlan::new().slow_sync(Duration::from_millis(20)),
    ));
    let run = record_on(fs.clone(), THREADS, EVENTS);
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    let report = run.finished.unwrap();
    assert_eq!(
        report.accounting.index.persisted,
        u64::from(THREADS) * EVENTS
    );
    assert_eq!(check_session(&run.pid_dir, THREADS, EVENTS), (0, 0));
    assert!(fs.injected().stalls > 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn drain__random_fault_plan_on_trace_files__then_no_panic_readable_prefixes_and_balanced(
        seed in any::<u64>(),
    ) {
        const THREADS: u32 = 2;
        const EVENTS: u64 = 20_000;
        let plan = FaultPlan::random(seed).only_paths_containing(".at");
        let fs = Arc::new(FaultyFs::with_stall(plan.slow_sync(Duration::ZERO), |_| {}));
        let run = record_on(fs, THREADS, EVENTS);
        for e in run.errors.iter().chain(run.finished.as_ref().err()) {
            file_and_cause(e);
        }
        check_session(&run.pid_dir, THREADS, EVENTS);
    }
}
