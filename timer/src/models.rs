//! loom models of cancel racing expiry.
//! Run: `LOOM_MAX_PREEMPTIONS=2 cargo test -p timer --features loom --release --lib`.

#![allow(non_snake_case)]

use crate::{Outcome, Shared, Timer};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use modelsync::{Clock, Loom};
use std::sync::Arc;
use std::time::Duration;

/// Cancel racing expiry: exactly one outcome, the callback ran iff it is `Fired`, and once
/// cancel returns the callback's effects are visible (or will never happen).
#[test]
fn cancel_races_expiry__then_exactly_one_outcome() {
    loom::model(|| {
        let shared = Arc::new(Shared::<Loom>::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let (s, c) = (shared.clone(), calls.clone());
        let expiry = thread::spawn(move || {
            // Relaxed: the mutex hand-off in `expire`/`cancel` orders it.
            s.expire(|| {
                c.fetch_add(1, Ordering::Relaxed);
            })
        });
        let by_cancel = shared.cancel();
        // Checked before joining: cancel alone must make the outcome final.
        let seen_at_cancel = calls.load(Ordering::Relaxed);
        let by_expiry = expiry.join().unwrap();
        assert_eq!(by_cancel, by_expiry, "cancel and expiry disagree");
        match by_cancel {
            Outcome::Cancelled => assert_eq!(calls.load(Ordering::Relaxed), 0),
            Outcome::Fired => {
                assert_eq!(seen_at_cancel, 1, "cancel returned before the callback")
            }
        }
        assert_eq!(shared.outcome(), Some(by_cancel));
        assert_eq!(shared.cancel(), by_cancel, "cancel is not idempotent");
    });
}

/// Two cancels racing one expiry (the owner and `Drop`): still one outcome for all three.
#[test]
fn double_cancel_races_expiry__then_one_outcome() {
    loom::model(|| {
        let shared = Arc::new(Shared::<Loom>::new());
        let (s1, s2) = (shared.clone(), shared.clone());
        let expiry = thread::spawn(move || s1.expire(|| {}));
        let other = thread::spawn(move || s2.cancel());
        let mine = shared.cancel();
        assert_eq!(other.join().unwrap(), mine);
        assert_eq!(expiry.join().unwrap(), mine);
    });
}

/// The whole timer, its thread's timed wait included, racing a cancel: one outcome, the
/// callback ran iff `Fired` and had finished when cancel returned, never before the deadline
/// (on the virtual clock, which passes only while the timer thread waits), and the thread ends.
#[test]
fn timer_thread_races_cancel__then_one_outcome_never_early() {
    loom::model(|| {
        let fired_at = Arc::new(loom::sync::Mutex::new(None));
        let theirs = fired_at.clone();
        let timer = Timer::<Loom>::start_on(Duration::from_secs(1), move || {
            *theirs.lock().unwrap() = Some(modelsync::loom::Clock::now());
        })
        .expect("a loom thread");
        let outcome = timer.cancel();
        let seen = *fired_at.lock().unwrap();
        match outcome {
            Outcome::Cancelled => assert_eq!(seen, None, "the callback ran after a cancel"),
            Outcome::Fired => {
                let at = seen.expect("Fired, but the callback had not finished");
                assert!(at >= timer.deadline(), "fired before its deadline");
            }
        }
        drop(timer); // joins the timer thread: its wait ended
        assert_eq!(
            fired_at.lock().unwrap().is_some(),
            outcome == Outcome::Fired
        );
    });
}
