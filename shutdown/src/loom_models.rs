//! loom models of the request/wake/escalation protocol (contract 5 of the design).
//! Run: `LOOM_MAX_PREEMPTIONS=2 cargo test -p shutdown --features loom --release --lib`.

#![allow(non_snake_case)]

use crate::request::{Outcome, Reason, Shared, Shutdown};
use crate::sync::Arc;
use loom::thread;

fn shutdown() -> Shutdown {
    Shutdown::new().expect("the loom wake cannot fail")
}

fn shared(s: &Shutdown) -> Arc<Shared> {
    s.shared.clone()
}

/// Two signals racing: exactly one is accepted, the other is coalesced (phases not begun yet).
#[test]
fn signal_races_signal__then_single_shutdown() {
    loom::model(|| {
        let s = shutdown();
        let a = shared(&s);
        let t = thread::spawn(move || a.on_signal(libc::SIGINT));
        let mine = s.notify_signal(libc::SIGTERM);
        let theirs = t.join().unwrap();
        let mut outcomes = [mine, theirs];
        outcomes.sort_by_key(|o| *o as u8);
        assert_eq!(outcomes, [Outcome::Accepted, Outcome::Ignored]);
        let expected = if mine == Outcome::Accepted {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        assert_eq!(s.requested(), Some(Reason::Signal(expected)));
        assert!(!s.force_requested());
        assert_eq!((s.signals_received(), s.ignored_requests()), (2, 1));
    });
}

/// The waiter drains the wake first and reads the flag second: a concurrent signal always wakes it
/// (a lost wake-up would leave `wait(None)` blocked for ever, which loom reports as a deadlock).
#[test]
fn flag_and_eventfd_wake__then_no_lost_wakeup() {
    loom::model(|| {
        let s = shutdown();
        let a = shared(&s);
        let t = thread::spawn(move || a.on_signal(libc::SIGINT));
        assert_eq!(s.wait(None).unwrap(), Some(Reason::Signal(libc::SIGINT)));
        assert_eq!(t.join().unwrap(), Outcome::Accepted);
    });
}

/// The duration timer expiring while a signal arrives: one shutdown, one reason, one ignored, and
/// the waiter wakes with the winner.
#[test]
fn timer_fires_while_signal_arrives__then_single_shutdown() {
    loom::model(|| {
        let s = shutdown();
        let timer = s.clone();
        let signal = shared(&s);
        let t1 = thread::spawn(move || timer.request(Reason::Timer));
        let t2 = thread::spawn(move || signal.on_signal(libc::SIGINT));
        let woke_with = s.wait(None).unwrap().expect("woken without a request");
        let (by_timer, by_signal) = (t1.join().unwrap(), t2.join().unwrap());
        match woke_with {
            Reason::Timer => {
                assert_eq!((by_timer, by_signal), (Outcome::Accepted, Outcome::Ignored))
            }
            Reason::Signal(_) => {
                assert_eq!((by_timer, by_signal), (Outcome::Ignored, Outcome::Accepted))
            }
            other => panic!("unexpected reason {other:?}"),
        }
        assert_eq!(s.requested(), Some(woke_with));
        assert_eq!(s.ignored_requests(), 1);
        assert!(!s.force_requested());
    });
}

/// A second signal once the manager has begun the phases escalates, and the manager, waiting on the
/// wake, sees the force flag (no lost escalation).
#[test]
fn second_signal_during_shutdown__then_force_seen() {
    loom::model(|| {
        let s = shutdown();
        let user = shared(&s);
        let t = thread::spawn(move || {
            let first = user.on_signal(libc::SIGINT);
            // Press Ctrl-C again once the shutdown is visibly under way.
            while !user.started_for_model() {
                thread::yield_now();
            }
            (first, user.on_signal(libc::SIGINT))
        });
        assert_eq!(s.wait(None).unwrap(), Some(Reason::Signal(libc::SIGINT)));
        assert!(s.shared.begin());
        // The manager between two phases: drain the wake, then check the force flag.
        loop {
            s.drain_wake().unwrap();
            if s.force_requested() {
                break;
            }
            s.shared.wait_wake_for_model();
        }
        assert_eq!(t.join().unwrap(), (Outcome::Accepted, Outcome::Escalated));
        assert_eq!(s.requested(), Some(Reason::Signal(libc::SIGINT)));
        assert_eq!(s.ignored_requests(), 0);
    });
}

/// A signal racing the manager's start: it is either coalesced into the first request or forces the
/// shutdown, never both and never lost.
#[test]
fn signal_races_phase_start__then_coalesced_or_forced() {
    loom::model(|| {
        let s = shutdown();
        s.request(Reason::TargetExited(0));
        let user = shared(&s);
        let t = thread::spawn(move || user.on_signal(libc::SIGTERM));
        assert!(s.shared.begin());
        let outcome = t.join().unwrap();
        match outcome {
            Outcome::Ignored => assert!(!s.force_requested() && s.ignored_requests() == 1),
            Outcome::Escalated => assert!(s.force_requested() && s.ignored_requests() == 0),
            Outcome::Accepted => panic!("a second request was accepted"),
        }
        assert_eq!(s.requested(), Some(Reason::TargetExited(0)));
    });
}
