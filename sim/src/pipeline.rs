//! One simulated recording: producers, the drain and the stopper on one region, and the checks
//! run on every schedule.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use core::sync::atomic::Ordering::SeqCst;
use ring::HeapRegion;
use shuttle::rand::Rng;
use shuttle::sync::atomic::AtomicBool;
use shuttle::thread;

use registry::{Clock, Handshake, LaneConfig, OrphanReason, RegionConfig, Registry, RegistryError};

use crate::Shuttle;

/// The shape of one simulated recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// Producer threads running at once (each a target thread, re-created after it exits).
    pub producers: u32,
    /// Successive threads per producer: each registers, writes, exits; the next one has a new tid.
    pub lives: u32,
    /// Events each thread attempts.
    pub events: u32,
    /// Registry slots (fewer than `producers` exercises `registry_full` and slot reuse).
    pub capacity: u32,
    /// Every n-th event also writes a detail record (0: never).
    pub detail_every: u32,
    /// Every n-th detail record marks its window for persistence (0: never).
    pub mark_every: u32,
    /// Whether the stop may come before every thread is done (else it comes after the last event,
    /// as when the target exits).
    pub stop_early: bool,
    /// The drain thread yields up to this many times between passes (a slow drain: ring-full
    /// waits and drops).
    pub drain_pause: u32,
    /// Whether the file system may fail the drain's writes (see `check_after_fault`).
    pub faults: bool,
    /// Whether the drain writes through a faulty file system whose plan each schedule draws (see
    /// [`crate::faults`]), in this process.
    pub fs_faults: bool,
    /// Whether the real shutdown manager stops the recording (requested by a timer, injected
    /// signals or the target's exit; see [`crate::managed`]) instead of the stopper.
    pub managed: bool,
    /// Managed only: also check, after a forced shutdown whose stop handshake did not complete,
    /// that every drop the manifest counts is one its thread saw (see [`crate::managed`]; the
    /// default leaves it out).
    pub strict_forced_drops: bool,
    /// Managed only: the target dies of a signal while one of its threads is inside a write
    /// section (it published its event, or not, and never leaves the section); the others stop
    /// before their next event. The stop must not wait for the dead thread, and every event
    /// published before the death must be persisted.
    pub dies_mid_write: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            producers: 3,
            lives: 2,
            events: 6,
            capacity: 2,
            detail_every: 2,
            mark_every: 2,
            stop_early: true,
            drain_pause: 0,
            faults: false,
            fs_faults: false,
            managed: false,
            strict_forced_drops: false,
            dies_mid_write: false,
        }
    }
}

impl Scenario {
    /// More threads than slots: orphan drops, slot recycling and reuse by new threads.
    pub fn contended() -> Self {
        Scenario::default()
    }

    /// Two long-lived threads writing more than their rings hold: swaps, waits for the drain,
    /// ring-full drops, a stop while a producer waits for space.
    pub fn backpressure() -> Self {
        Scenario {
            producers: 2,
            lives: 1,
            events: 24,
            capacity: 2,
            detail_every: 1,
            mark_every: 3,
            stop_early: true,
            drain_pause: 600,
            faults: false,
            fs_faults: false,
            managed: false,
            strict_forced_drops: false,
            dies_mid_write: false,
        }
    }

    /// Long-lived threads writing more than the file system takes: run with a file-size limit
    /// (see the `faults` tests), the drain's writes fail part-way (a short write, then `EFBIG`).
    pub fn faulty() -> Self {
        Scenario {
            producers: 2,
            lives: 1,
            events: 160,
            capacity: 2,
            detail_every: 4,
            mark_every: 2,
            stop_early: true,
            drain_pause: 0,
            faults: true,
            fs_faults: false,
            managed: false,
            strict_forced_drops: false,
            dies_mid_write: false,
        }
    }

    /// Long-lived threads whose drain writes through a faulty file system: `EINTR` storms, short
    /// writes, slow syncs, a full disk, `EIO` on a write or a sync (see [`crate::faults`]).
    pub fn faulty_fs() -> Self {
        Scenario {
            producers: 2,
            lives: 1,
            events: 40,
            capacity: 2,
            detail_every: 2,
            mark_every: 2,
            stop_early: true,
            drain_pause: 0,
            faults: false,
            fs_faults: true,
            managed: false,
            strict_forced_drops: false,
            dies_mid_write: false,
        }
    }

    /// [`Scenario::faulty_fs`] stopped by the real shutdown manager.
    pub fn managed_faulty_fs() -> Self {
        Scenario {
            managed: true,
            ..Scenario::faulty_fs()
        }
    }

    /// Short-lived threads: exit, recycle and re-registration racing the stop.
    pub fn churn() -> Self {
        Scenario {
            producers: 2,
            lives: 4,
            events: 3,
            capacity: 2,
            detail_every: 1,
            mark_every: 1,
            stop_early: true,
            drain_pause: 0,
            faults: false,
            fs_faults: false,
            managed: false,
            strict_forced_drops: false,
            dies_mid_write: false,
        }
    }

    /// The default shape, stopped by the real shutdown manager: a timer, signals (during the
    /// shutdown too) and the target's exit request it; random budgets force some shutdowns.
    pub fn managed() -> Self {
        Scenario {
            managed: true,
            ..Scenario::default()
        }
    }

    /// [`Scenario::managed`] with the target killed while a thread is inside a write section
    /// (a terminal's Ctrl-C reaching the target too).
    pub fn managed_dying() -> Self {
        Scenario {
            dies_mid_write: true,
            ..Scenario::managed()
        }
    }

    /// [`Scenario::backpressure`] stopped by the real shutdown manager: a slow drain, so phases
    /// wait for it and budgets run out.
    pub fn managed_backpressure() -> Self {
        Scenario {
            managed: true,
            drain_pause: 200,
            ..Scenario::backpressure()
        }
    }
}

/// What a producer saw happen to one of its events (from the return values of the real API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Written into the index lane.
    Accepted,
    /// Every ring full after the bounded wait.
    RingFull,
    /// Acceptance had stopped (at `begin`, or while waiting for ring space).
    Shutdown,
    /// The thread held no slot.
    Orphan(OrphanReason),
}

/// One thread's own record of its events, kept outside the system under test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// The fate of event `seq`, in order.
    pub fates: Vec<Fate>,
    /// Sequence numbers of the detail records written into the detail lane.
    pub details: Vec<u32>,
    /// Detail records dropped because every detail ring was full.
    pub detail_full: u64,
    /// Detail records followed at once by a mark of their window: they must be persisted.
    pub marked: Vec<u32>,
}

/// The region, on heap memory, shared by the simulated threads.
pub(crate) struct Shared {
    region: HeapRegion,
    /// Threads that died inside a write section (their tids), as the kernel would report them.
    pub(crate) dead: std::sync::Mutex<Vec<u32>>,
}

impl Shared {
    pub(crate) fn new(scenario: &Scenario) -> Self {
        let config = RegionConfig {
            capacity: scenario.capacity,
            index: LaneConfig {
                rings: 2,
                ring_capacity: 256,
            },
            detail: LaneConfig {
                rings: 2,
                ring_capacity: 256,
            },
            detail_enabled: true,
            handshake: Handshake::Fence,
            ..RegionConfig::default()
        };
        // The layout size under the model backend differs from production's: ask `init` for it.
        let probe = HeapRegion::new(1);
        // SAFETY: `init` checks the size before writing anything; this memory is too small.
        let len = match unsafe {
            Registry::<Shuttle>::init(probe.as_non_null(), &config, &Clock::boottime())
        } {
            Err(RegistryError::TooSmall { needed, .. }) => needed,
            other => panic!("sizing the region: {other:?}"),
        };
        let region = HeapRegion::new(len);
        // SAFETY: fresh, page-aligned memory of the size the layout needs, used by nobody else.
        unsafe { Registry::<Shuttle>::init(region.as_non_null(), &config, &Clock::boottime()) }
            .expect("initialising the simulated region");
        Shared {
            region,
            dead: Default::default(),
        }
    }

    pub(crate) fn view(&self) -> Registry<'_, Shuttle> {
        // SAFETY: initialised in `new` with this backend; the view borrows `self`.
        unsafe { Registry::attach(self.region.as_non_null()) }.expect("attaching to the region")
    }
}

/// An index event carrying the thread and its per-thread sequence number.
fn event(tid: u32, seq: u32) -> [u8; 32] {
    let mut ev = [0u8; 32];
    ev[0..8].copy_from_slice(&u64::from(seq).to_le_bytes()); // timestamp: monotonic per thread
    ev[8..16].copy_from_slice(&u64::from(seq).to_le_bytes());
    ev[16..20].copy_from_slice(&tid.to_le_bytes());
    ev[20..24].copy_from_slice(&1u32.to_le_bytes());
    ev[28..32].copy_from_slice(&atf::NO_DETAIL.to_le_bytes());
    ev
}

/// A detail record (24-byte header, 8-byte payload) linked to index event `seq`.
fn detail(tid: u32, seq: u32) -> [u8; 32] {
    let mut rec = [0u8; 32];
    rec[0..4].copy_from_slice(&32u32.to_le_bytes());
    rec[4..6].copy_from_slice(&atf::DETAIL_CALL.to_le_bytes());
    rec[8..12].copy_from_slice(&seq.to_le_bytes());
    rec[12..16].copy_from_slice(&tid.to_le_bytes());
    rec[16..24].copy_from_slice(&u64::from(seq).to_le_bytes());
    rec
}

/// The tid of life `life` of producer `p`.
pub(crate) fn tid_of(p: u32, life: u32) -> u32 {
    1000 + p * 100 + life
}

/// One target thread, doing what the agent's hook does per event, until it is done or `killed`
/// (checked before each event, as the tracer's stop signal ends the target between two).
pub(crate) fn producer(
    shared: &Shared,
    scenario: &Scenario,
    tid: u32,
    progress: &AtomicU64,
    killed: &std::sync::atomic::AtomicBool,
    die_at: Option<u32>,
) -> Ledger {
    let reg = shared.view();
    let mut ledger = Ledger::default();
    let mut me = None;
    for seq in 0..scenario.events {
        // Not shuttle atomics: bookkeeping for the stopper's and the injector's choices and the
        // kill, not scheduling points.
        if killed.load(Relaxed) {
            return ledger;
        }
        progress.fetch_add(1, Relaxed);
        crate::clock::advance(crate::clock::EVENT_TIME);
        if me.is_none() {
            // No slot yet: try to claim one; on failure this event is an orphan drop and the
            // next event tries again (the agent's behaviour).
            match reg.register(1, tid) {
                Ok(r) => me = Some(r),
                Err(RegistryError::RegistryFull { .. }) => {
                    reg.count_orphan(OrphanReason::RegistryFull);
                    ledger.fates.push(Fate::Orphan(OrphanReason::RegistryFull));
                    continue;
                }
                Err(RegistryError::RegistrationsClosed) => {
                    reg.count_orphan(OrphanReason::Shutdown);
                    ledger.fates.push(Fate::Orphan(OrphanReason::Shutdown));
                    continue;
                }
                Err(e) => panic!("thread {tid}: registration failed: {e}"),
            }
        }
        let Some(r) = me.as_ref() else { continue };
        // SAFETY: this thread is the only producer of its slot's lanes while it holds the slot.
        let (mut index, mut details) =
            unsafe { (r.lanes.index.producer(), r.lanes.detail.producer()) };
        let writer = &r.writer;
        if !writer.begin() {
            ledger.fates.push(Fate::Shutdown);
            continue;
        }
        if scenario.detail_every > 0 && seq % scenario.detail_every == 0 {
            if details.push(&detail(tid, seq)).is_ok() {
                ledger.details.push(seq);
                let nth = ledger.details.len() as u32;
                if scenario.mark_every > 0 && nth % scenario.mark_every == 0 {
                    details.mark_active();
                    ledger.marked.push(seq);
                }
            } else {
                ledger.detail_full += 1;
            }
        }
        let fate = match index.push_unless(&event(tid, seq), || !writer.still_accepting()) {
            Ok(()) => Fate::Accepted,
            Err(ring::PushError::Abandoned) => {
                writer.drop_for_shutdown();
                Fate::Shutdown
            }
            Err(ring::PushError::Full) => Fate::RingFull,
        };
        if die_at == Some(seq) {
            // Killed here, inside the section: no `end`, no `exit`. The kernel reports the death
            // only after the thread's last store.
            ledger.fates.push(fate);
            shared.dead.lock().expect("dead lock").push(tid);
            return ledger;
        }
        writer.end();
        ledger.fates.push(fate);
    }
    if let Some(r) = me {
        reg.exit(r.slot);
    }
    ledger
}

/// What the drain thread hands back: the first error of its passes, if any, and the outcome of
/// its final drain and manifest.
struct DrainOutcome {
    failed: Option<drain::DrainError>,
    finished: Result<drain::Report, drain::DrainError>,
}

/// The drain thread: passes until the stopper asks for the final drain, then the final drain and
/// the manifest, as `tracer record` does. A failed pass stops the passes (as the drain thread
/// does); the final drain and the manifest are still attempted.
fn drain_thread(
    shared: &Shared,
    scenario: &Scenario,
    out: &Path,
    final_now: &AtomicBool,
    fs: Option<Arc<atf::fault::FaultyFs>>,
) -> Result<DrainOutcome, drain::DrainError> {
    let reg = shared.view();
    let mut layout = atf::SessionLayout::create(out, 1)?;
    if let Some(fs) = fs {
        layout = layout.with_fs(fs);
    }
    let mut drain = drain::Drain::new(reg, layout, atf::Manifest::new(atf::ClockType::Boottime))?;
    let mut failed = None;
    // SeqCst (shuttle's only ordering): pairs with the stopper's store after its handshake.
    while !final_now.load(SeqCst) {
        if failed.is_none() {
            if let Err(e) = drain.pass() {
                failed = Some(e);
            }
            let pause = shuttle::rand::thread_rng().gen_range(0..=scenario.drain_pause);
            for _ in 0..pause {
                thread::yield_now();
            }
        }
        thread::yield_now();
    }
    // As `tracer record`: the manifest is written even when the final drain failed.
    let drained = drain.final_drain(false);
    let finished = drain.finish(&drain::Outcome::default());
    Ok(DrainOutcome {
        failed: failed.or(drained.err()),
        finished,
    })
}

/// The stopper: waits until a random number of events were attempted, stops acceptance
/// (repeating the bounded wait until no producer is inside a write section, as a generous timeout
/// would), closes registrations, and asks the drain thread for the final drain.
fn stopper(shared: &Shared, scenario: &Scenario, final_now: &AtomicBool, progress: &AtomicU64) {
    let total = u64::from(scenario.producers * scenario.lives * scenario.events);
    let target = if scenario.stop_early {
        shuttle::rand::thread_rng().gen_range(0..=total)
    } else {
        total
    };
    while progress.load(Relaxed) < target {
        thread::yield_now();
    }
    let reg = shared.view();
    while !reg
        .stop_accepting(Duration::from_millis(50))
        .stragglers
        .is_empty()
    {}
    while let Err(e) = reg.close_registrations(Duration::from_millis(50)) {
        assert!(
            matches!(e, RegistryError::ClaimInFlight { .. }),
            "closing registrations: {e}"
        );
    }
    // SeqCst: pairs with the drain thread's load.
    final_now.store(true, SeqCst);
}

/// Runs one recording under the current shuttle schedule and checks every invariant; panics
/// (failing the schedule, which shuttle then prints in replay form) on a violation.
pub fn run(scenario: &Scenario, out: &Path) {
    if scenario.managed {
        return crate::managed::run(scenario, out);
    }
    let shared = Arc::new(Shared::new(scenario));
    let final_now = Arc::new(AtomicBool::new(false));
    let ledgers = Arc::new(Mutex::new(BTreeMap::new()));
    let progress = Arc::new(AtomicU64::new(0));
    let drawn = scenario
        .fs_faults
        .then(|| crate::faults::draw_for(scenario));

    let producers: Vec<_> = (0..scenario.producers)
        .map(|p| {
            let (shared, ledgers, scenario) = (shared.clone(), ledgers.clone(), *scenario);
            let progress = progress.clone();
            thread::spawn(move || {
                let never = std::sync::atomic::AtomicBool::new(false);
                for life in 0..scenario.lives {
                    let tid = tid_of(p, life);
                    let ledger = producer(&shared, &scenario, tid, &progress, &never, None);
                    ledgers.lock().expect("ledger lock").insert(tid, ledger);
                }
            })
        })
        .collect();
    let drainer = {
        let (shared, final_now, out) = (shared.clone(), final_now.clone(), out.to_owned());
        let scenario = *scenario;
        let fs = drawn.as_ref().map(|d| d.fs.clone());
        thread::spawn(move || drain_thread(&shared, &scenario, &out, &final_now, fs))
    };
    let stop = {
        let (shared, final_now, scenario) = (shared.clone(), final_now.clone(), *scenario);
        let progress = progress.clone();
        thread::spawn(move || stopper(&shared, &scenario, &final_now, &progress))
    };
    stop.join().expect("the stopper panicked");
    let outcome = drainer.join().expect("the drain panicked");
    for p in producers {
        p.join().expect("a producer panicked");
    }
    let ledgers = std::mem::take(&mut *ledgers.lock().expect("ledger lock"));
    let outcome = outcome.unwrap_or_else(|e| panic!("the drain could not start: {e}"));
    if let Some(drawn) = &drawn {
        check_under_drawn_faults(drawn, outcome, &ledgers, scenario, out);
        crate::faults::count(drawn);
        return;
    }
    match (outcome.failed, outcome.finished) {
        (None, Ok(report)) => check(&report, &ledgers, scenario, true),
        (None, Err(e)) if scenario.faults => {
            check_after_fault(&e, &ledgers, out);
            check_accounted_as_written(&ledgers, out);
        }
        (Some(e), finished) if scenario.faults => {
            check_after_fault(&e, &ledgers, out);
            if let Err(e) = finished {
                check_after_fault(&e, &ledgers, out);
            }
            check_accounted_as_written(&ledgers, out);
        }
        (Some(e), _) | (None, Err(e)) => panic!("the drain failed without a fault: {e}"),
    }
}

/// The checks of a recording whose drain wrote through a drawn faulty file system: without an
/// error, the full invariants (a kind that loses nothing must not fail the drain); after one, the
/// error carries the injected errno and names the file, every index file is a prefix of the
/// accepted events, and the final manifest is finished and balanced, or, when its own write
/// failed, the previous one is left readable.
fn check_under_drawn_faults(
    drawn: &crate::faults::Drawn,
    outcome: DrainOutcome,
    ledgers: &BTreeMap<u32, Ledger>,
    scenario: &Scenario,
    out: &Path,
) {
    let finish_failed = outcome.finished.is_err();
    let (report, errors) = match (outcome.failed, outcome.finished) {
        (None, Ok(report)) => (Some(report), Vec::new()),
        (failed, finished) => (None, failed.into_iter().chain(finished.err()).collect()),
    };
    if let Some(report) = report {
        return check(&report, ledgers, scenario, true);
    }
    for e in &errors {
        crate::faults::check_errno(drawn, e);
        check_after_fault(e, ledgers, out);
    }
    let final_error = errors.last().filter(|_| finish_failed);
    check_manifest_after_errors(final_error, ledgers, out);
}

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
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains(&source.to_string()),
        "the message does not name the file and the cause: {message}"
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

/// After a write fault or a forced shutdown, the manifest is still written, finished and balanced
/// for every thread, and what it calls persisted is exactly what the reader finds in the file; no
/// thread is counted for more events than it attempted.
pub(crate) fn check_accounted_as_written(ledgers: &BTreeMap<u32, Ledger>, out: &Path) {
    let manifests: Vec<_> = pid_dirs(out)
        .into_iter()
        .map(|d| d.join("manifest.json"))
        .filter(|m| m.exists())
        .collect();
    assert_eq!(manifests.len(), 1, "one session manifest: {manifests:?}");
    let manifest = atf::Manifest::read(&manifests[0])
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
    let manifests: Vec<_> = pid_dirs(out)
        .into_iter()
        .map(|d| d.join("manifest.json"))
        .filter(|m| m.exists())
        .collect();
    assert_eq!(manifests.len(), 1, "one session manifest: {manifests:?}");
    let previous = atf::Manifest::read(&manifests[0])
        .unwrap_or_else(|e| panic!("the manifest left after a failed write is unreadable: {e}"));
    assert!(
        !previous.finished,
        "the final manifest's write failed, yet the manifest is the final one"
    );
    let tmp = manifests[0].with_file_name("manifest.json.tmp");
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
