//! The stopper's runner: one simulated recording stopped by a stopper thread (the stop handshake,
//! closing registrations, the drain's final drain and manifest, at a random point), checked on
//! every schedule.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use core::sync::atomic::Ordering::SeqCst;
use shuttle::rand::Rng;
use shuttle::sync::atomic::AtomicBool;
use shuttle::thread;

use registry::RegistryError;

use crate::checks::{
    check, check_accounted_as_written, check_after_fault, check_manifest_after_errors,
};
use crate::faults;
use crate::scenario::Scenario;
use crate::world::{producer, tid_of, Ledger, Shared};

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

/// Runs one recording stopped by the stopper under the current shuttle schedule and checks every
/// invariant; panics (failing the schedule, which shuttle then prints in replay form) on a
/// violation.
pub fn run(scenario: &Scenario, out: &Path) {
    let shared = Arc::new(Shared::new(scenario));
    let final_now = Arc::new(AtomicBool::new(false));
    let ledgers = Arc::new(Mutex::new(BTreeMap::new()));
    let progress = Arc::new(AtomicU64::new(0));
    let drawn = scenario.fs_faults.then(|| faults::draw_for(scenario));

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
        faults::count(drawn);
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
    drawn: &faults::Drawn,
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
        faults::check_errno(drawn, e);
        check_after_fault(e, ledgers, out);
    }
    let final_error = errors.last().filter(|_| finish_failed);
    check_manifest_after_errors(final_error, ledgers, out);
}
