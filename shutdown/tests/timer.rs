//! The duration timer wired to the shutdown as the tracer wires it: expiry requests reason "timer".
#![allow(non_snake_case)]

use shutdown::{Outcome as Request, Reason, Shutdown};
use std::sync::mpsc;
use std::time::Duration;
use timer::{Outcome, Timer};

const NEVER: Duration = Duration::from_secs(3600);
const PATIENCE: Option<Duration> = Some(Duration::from_secs(30));

fn wired(shutdown: &Shutdown, after: Duration) -> (Timer, mpsc::Receiver<Request>) {
    let (tx, rx) = mpsc::channel();
    let s = shutdown.clone();
    let timer = Timer::start(after, move || tx.send(s.request(Reason::Timer)).unwrap()).unwrap();
    (timer, rx)
}

#[test]
fn timer__expiry__then_shutdown_with_reason_timer() {
    let s = Shutdown::new().unwrap();
    let (timer, rx) = wired(&s, Duration::from_millis(5));
    assert_eq!(s.wait(PATIENCE).unwrap(), Some(Reason::Timer));
    assert_eq!(rx.recv().unwrap(), Request::Accepted);
    assert_eq!(timer.cancel(), Outcome::Fired);
}

#[test]
fn timer__shutdown__then_cancelled() {
    let s = Shutdown::new().unwrap();
    let (timer, rx) = wired(&s, NEVER);
    s.notify_signal(libc::SIGINT);
    assert_eq!(
        s.wait(PATIENCE).unwrap(),
        Some(Reason::Signal(libc::SIGINT))
    );
    assert_eq!(timer.cancel(), Outcome::Cancelled);
    drop(timer);
    assert!(rx.recv().is_err(), "the timer fired after it was cancelled");
}

#[test]
fn timer__expire_during_shutdown__then_ignored() {
    let s = Shutdown::new().unwrap();
    s.notify_signal(libc::SIGTERM);
    let (timer, rx) = wired(&s, Duration::from_nanos(1));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        Request::Ignored
    );
    assert_eq!(timer.cancel(), Outcome::Fired);
    assert_eq!(s.requested(), Some(Reason::Signal(libc::SIGTERM)));
    assert_eq!(s.ignored_requests(), 1);
    assert!(
        !s.force_requested(),
        "a timer must never force the shutdown"
    );
}
