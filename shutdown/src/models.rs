//! loom models of the request/wake/escalation protocol.
//! Run: `LOOM_MAX_PREEMPTIONS=2 cargo test -p shutdown --features loom --release --lib`.

#![allow(non_snake_case)]

use crate::request::{Outcome, Reason, Shared, Shutdown};
use loom::thread;
use modelsync::{Clock, Loom};
use std::sync::Arc;
use std::time::Duration;

fn shutdown() -> Shutdown<Loom> {
    Shutdown::on_backend().expect("the loom wake cannot fail")
}

fn shared(s: &Shutdown<Loom>) -> Arc<Shared<Loom>> {
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

/// A pipeline that only records which phases ran.
#[derive(Default)]
struct Recorded {
    ran: Vec<crate::Phase>,
}

impl crate::Pipeline<Loom> for Recorded {
    fn stop_acceptance(&mut self, c: &crate::PhaseContext<'_, Loom>) -> Result<(), crate::Error> {
        self.ran.push(c.phase());
        Ok(())
    }
    fn close_registrations(
        &mut self,
        c: &crate::PhaseContext<'_, Loom>,
    ) -> Result<(), crate::Error> {
        self.ran.push(c.phase());
        Ok(())
    }
    fn flush(&mut self, c: &crate::PhaseContext<'_, Loom>) -> Result<(), crate::Error> {
        self.ran.push(c.phase());
        Ok(())
    }
    fn final_drain(&mut self, c: &crate::PhaseContext<'_, Loom>) -> Result<(), crate::Error> {
        self.ran.push(c.phase());
        Ok(())
    }
    fn sync(&mut self, c: &crate::PhaseContext<'_, Loom>) -> Result<(), crate::Error> {
        self.ran.push(c.phase());
        Ok(())
    }
    fn cleanup(&mut self, c: &crate::PhaseContext<'_, Loom>) -> Result<(), crate::Error> {
        self.ran.push(c.phase());
        Ok(())
    }
}

/// A signal racing the whole manager: coalesced before the phases begin (a clean shutdown), or
/// escalated during them (seen by the manager: a forced report, or too late to skip anything);
/// skipped phases are graceful ones after the last phase run; syncing and cleanup always run, once.
#[test]
fn signal_races_execute__then_coalesced_or_forced_and_essentials_run() {
    use crate::{Budgets, ForceCause, Phase, PhaseStatus, State};
    loom::model(|| {
        let s = shutdown();
        s.request(Reason::TargetExited(0));
        let user = shared(&s);
        let t = thread::spawn(move || user.on_signal(libc::SIGTERM));
        let mut pipeline = Recorded::default();
        let report = s
            .execute_with_notices(&mut pipeline, &Budgets::default(), &mut |_| {})
            .unwrap();
        let outcome = t.join().unwrap();
        assert_eq!(report.reason, Reason::TargetExited(0));
        let ran = |p: Phase| pipeline.ran.iter().filter(|&&r| r == p).count();
        assert_eq!((ran(Phase::Sync), ran(Phase::Cleanup)), (1, 1));
        let skipped: Vec<Phase> = report.skipped().collect();
        let graceful = [
            Phase::StopAcceptance,
            Phase::CloseRegistrations,
            Phase::Flush,
            Phase::FinalDrain,
        ];
        assert!(
            graceful.ends_with(&skipped),
            "skipped phases are not the last graceful ones: {skipped:?}"
        );
        match outcome {
            Outcome::Ignored => {
                assert!(report.clean(), "a coalesced signal forced: {report:?}");
                assert_eq!(s.ignored_requests(), 1);
            }
            Outcome::Escalated => {
                assert!(s.force_requested());
                assert!(
                    report.forced == Some(ForceCause::SecondSignal)
                        || report
                            .phases
                            .iter()
                            .all(|p| p.status == PhaseStatus::Completed),
                    "escalated, neither forced nor clean: {report:?}"
                );
            }
            Outcome::Accepted => panic!("a second request was accepted"),
        }
        assert!(skipped.is_empty() || report.forced.is_some());
        assert_eq!(s.state(), State::Done);
    });
}

/// A timed wait racing a signal: it returns the signal or, once the (virtual) timeout passed,
/// nothing; the request is never lost.
#[test]
fn timed_wait_races_signal__then_reason_or_timeout() {
    loom::model(|| {
        let s = shutdown();
        let user = shared(&s);
        let t = thread::spawn(move || user.on_signal(libc::SIGINT));
        let start = modelsync::loom::Clock::now();
        let timeout = Duration::from_secs(1);
        match s.wait(Some(timeout)).unwrap() {
            Some(reason) => assert_eq!(reason, Reason::Signal(libc::SIGINT)),
            None => assert!(
                modelsync::loom::Clock::now() >= start + timeout,
                "gave up early"
            ),
        }
        assert_eq!(t.join().unwrap(), Outcome::Accepted);
        assert_eq!(s.wait(None).unwrap(), Some(Reason::Signal(libc::SIGINT)));
    });
}
