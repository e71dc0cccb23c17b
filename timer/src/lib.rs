//! A cancellable duration timer: one thread blocked on a condition variable until the deadline,
//! then it runs the owner's callback once.
//!
//! Contract: cancel and expiry race to exactly one [`Outcome`]. Once [`Timer::cancel`] returns
//! [`Outcome::Cancelled`] the callback never runs; if it returns [`Outcome::Fired`] the callback has
//! finished. The callback never runs before the deadline. There is no polling: the thread sleeps
//! until the deadline or a cancel wakes it. The timer knows nothing of what expiry means: the owner
//! passes a callback (the tracer's requests a shutdown with reason "timer", which the shutdown
//! ignores if one is already under way).
//!
//! The timer is generic over a [`modelsync::Backend`] (lock, thread, clock): [`StdBackend`] is the
//! default; a model checker runs the same code on `modelsync::Loom` (the models here) or
//! `modelsync::Shuttle` (the `sim` crate), whose virtual clock lets a timed wait end.
//!
//! ```
//! use std::sync::mpsc;
//! use timer::{duration_from_secs, Outcome, Timer};
//!
//! assert_eq!(duration_from_secs(0.0)?, None); // 0 = no timer
//! let d = duration_from_secs(0.01)?.expect("10 ms");
//! let (tx, rx) = mpsc::channel();
//! let timer = Timer::start(d, move || tx.send(()).unwrap())?;
//! rx.recv().unwrap(); // the callback ran, no earlier than 10 ms after start
//! assert_eq!(timer.cancel(), Outcome::Fired);
//! assert!(duration_from_secs(-1.0).is_err());
//! # Ok::<(), timer::TimerError>(())
//! ```

#![deny(missing_docs)]

pub use modelsync::{Backend, StdBackend};
use modelsync::{Clock, Monitor};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    /// A negative duration.
    #[error("duration {0} s is negative; give a number of seconds >= 0 (0 = no limit)")]
    Negative(f64),
    /// NaN or infinite.
    #[error("duration {0} is not a finite number; give a number of seconds >= 0 (0 = no limit)")]
    NotFinite(f64),
    /// Too large to represent.
    #[error("duration {0} s is too long; give at most {max} seconds (0 = no limit)", max = u64::MAX)]
    TooLong(f64),
    /// Text that is not a number.
    #[error("duration `{0}` is not a number; give seconds such as 10 or 2.5 (0 = no limit)")]
    NotANumber(String),
    /// The timer thread could not be started.
    #[error("cannot start the duration timer thread")]
    Spawn(#[source] std::io::Error),
}

/// Seconds (fractions allowed) to a timer duration: `Ok(None)` for 0 (no timer), an error for
/// negative, NaN, infinite or overlong values.
pub fn duration_from_secs(secs: f64) -> Result<Option<Duration>, TimerError> {
    if !secs.is_finite() {
        return Err(TimerError::NotFinite(secs));
    }
    if secs < 0.0 {
        return Err(TimerError::Negative(secs));
    }
    if secs == 0.0 {
        return Ok(None);
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d.is_zero() => Ok(Some(Duration::from_nanos(1))), // below 1 ns: as soon as possible
        Ok(d) => Ok(Some(d)),
        Err(_) => Err(TimerError::TooLong(secs)),
    }
}

/// [`duration_from_secs`] on text, as a command line gives it (`"2.5"`).
pub fn parse_duration(text: &str) -> Result<Option<Duration>, TimerError> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| TimerError::NotANumber(text.to_string()))?;
    duration_from_secs(secs)
}

/// How a timer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Cancelled before its deadline: the callback never ran and never will.
    Cancelled,
    /// The deadline passed and the callback ran to completion.
    Fired,
}

/// The timer's state machine; every transition happens under the mutex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Armed,
    Cancelled,
    /// Expiry won; the callback is running (outside the lock).
    Firing,
    Fired,
}

/// State shared by the handle and the timer thread: the phase, behind the backend's monitor,
/// whose condition variable is signalled on cancel (wakes the timer thread) and when the callback
/// finished (wakes cancel).
struct Shared<B: Backend> {
    phase: B::Monitor<Phase>,
}

impl<B: Backend> Shared<B> {
    fn new() -> Self {
        Self {
            phase: Monitor::new(Phase::Armed),
        }
    }

    fn lock(&self) -> <B::Monitor<Phase> as Monitor<Phase>>::Guard<'_> {
        self.phase.lock()
    }

    /// Expiry: runs `callback` if and only if the timer is still armed.
    fn expire(&self, callback: impl FnOnce()) -> Outcome {
        {
            let mut phase = self.lock();
            if *phase != Phase::Armed {
                return Outcome::Cancelled;
            }
            *phase = Phase::Firing;
        }
        // Even if the callback panics, Fired is recorded so `cancel` never waits for ever.
        struct Finish<'a, B: Backend>(&'a Shared<B>);
        impl<B: Backend> Drop for Finish<'_, B> {
            fn drop(&mut self) {
                *self.0.lock() = Phase::Fired;
                self.0.phase.notify_all();
            }
        }
        let _finish = Finish(self);
        callback();
        Outcome::Fired
    }

    /// Cancel: wins if still armed; otherwise waits for a running callback and reports Fired.
    fn cancel(&self) -> Outcome {
        let mut phase = self.lock();
        loop {
            match *phase {
                Phase::Armed => {
                    *phase = Phase::Cancelled;
                    self.phase.notify_all();
                    return Outcome::Cancelled;
                }
                Phase::Cancelled => return Outcome::Cancelled,
                Phase::Fired => return Outcome::Fired,
                Phase::Firing => {
                    phase = self.phase.wait(phase);
                }
            }
        }
    }

    fn outcome(&self) -> Option<Outcome> {
        match *self.lock() {
            Phase::Armed | Phase::Firing => None,
            Phase::Cancelled => Some(Outcome::Cancelled),
            Phase::Fired => Some(Outcome::Fired),
        }
    }

    /// The timer thread's body: sleep until the deadline (re-checking after every wake-up, spurious
    /// or not), then expire unless cancelled meanwhile.
    fn run(&self, deadline: Instant, callback: impl FnOnce()) {
        let mut phase = self.lock();
        loop {
            if *phase != Phase::Armed {
                return;
            }
            let now = B::Clock::now();
            if now >= deadline {
                break;
            }
            phase = self.phase.wait_timeout(phase, deadline - now);
        }
        drop(phase);
        self.expire(callback);
    }
}

/// A running duration timer. Dropping it cancels it and joins its thread.
///
/// Generic over the [`Backend`] its lock, thread and clock come from: production uses
/// [`StdBackend`] (the default, started by [`Timer::start`]); a model checker runs the same code on
/// a model backend such as `modelsync::Loom` ([`Timer::start_on`]).
pub struct Timer<B: Backend = StdBackend> {
    shared: Arc<Shared<B>>,
    deadline: Instant,
    thread: Option<B::Thread>,
}

impl<B: Backend> fmt::Debug for Timer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("deadline", &self.deadline)
            .field("outcome", &self.outcome())
            .finish_non_exhaustive()
    }
}

impl Timer {
    /// Starts a timer that calls `on_expiry` once, `duration` from now, unless cancelled first.
    pub fn start<F>(duration: Duration, on_expiry: F) -> Result<Timer, TimerError>
    where
        F: FnOnce() + Send + 'static,
    {
        Timer::start_on(duration, on_expiry)
    }

    /// [`Timer::start`] from seconds as the command line gives them: `Ok(None)` for 0 (no timer).
    pub fn from_secs<F>(secs: f64, on_expiry: F) -> Result<Option<Timer>, TimerError>
    where
        F: FnOnce() + Send + 'static,
    {
        duration_from_secs(secs)?
            .map(|d| Timer::start(d, on_expiry))
            .transpose()
    }
}

impl<B: Backend> Timer<B> {
    /// [`Timer::start`] on backend `B`: the deadline is `duration` from `B`'s clock's now, the
    /// timer thread is `B`'s.
    pub fn start_on<F>(duration: Duration, on_expiry: F) -> Result<Self, TimerError>
    where
        F: FnOnce() + Send + 'static,
    {
        let shared = Arc::new(Shared::new());
        let deadline = B::Clock::now()
            .checked_add(duration)
            .ok_or(TimerError::TooLong(duration.as_secs_f64()))?;
        let theirs = shared.clone();
        let thread = B::spawn("duration-timer", move || theirs.run(deadline, on_expiry))
            .map_err(TimerError::Spawn)?;
        Ok(Timer {
            shared,
            deadline,
            thread: Some(thread),
        })
    }

    /// Cancels the timer, effective at once: `Cancelled` means the callback never runs; `Fired`
    /// means it already ran (this waits for a callback in progress to finish). Idempotent.
    /// Do not call it from inside the callback.
    pub fn cancel(&self) -> Outcome {
        self.shared.cancel()
    }

    /// `None` while armed (or while the callback runs), then the outcome.
    pub fn outcome(&self) -> Option<Outcome> {
        self.shared.outcome()
    }

    /// When the timer fires.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl<B: Backend> Drop for Timer<B> {
    fn drop(&mut self) {
        self.shared.cancel();
        if let Some(thread) = self.thread.take() {
            B::join(thread);
        }
    }
}

#[cfg(all(test, feature = "loom"))]
mod models;

#[cfg(all(test, not(feature = "loom")))]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Long enough that the timer cannot fire during the test on any machine.
    const NEVER: Duration = Duration::from_secs(3600);

    #[test]
    fn timer__cancel__then_stops_immediately() {
        let (tx, rx) = mpsc::channel::<()>();
        let timer = Timer::start(NEVER, move || tx.send(()).unwrap()).unwrap();
        assert_eq!(timer.outcome(), None);
        assert_eq!(timer.cancel(), Outcome::Cancelled);
        assert_eq!(timer.outcome(), Some(Outcome::Cancelled));
        drop(timer); // joins the thread: it woke on cancel instead of sleeping an hour
        assert_eq!(
            rx.recv(),
            Err(mpsc::RecvError),
            "the callback ran after cancel"
        );
    }

    #[test]
    fn timer__expiry__then_never_before_deadline() {
        let (tx, rx) = mpsc::channel();
        let timer = Timer::start(Duration::from_millis(20), move || {
            tx.send(Instant::now()).unwrap()
        })
        .unwrap();
        let fired_at = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the timer never fired");
        assert!(fired_at >= timer.deadline(), "fired before its deadline");
        assert_eq!(timer.cancel(), Outcome::Fired);
    }

    #[test]
    fn timer__cancel_after_fire__then_reports_fired() {
        let (tx, rx) = mpsc::channel();
        let timer = Timer::start(Duration::from_nanos(1), move || tx.send(()).unwrap()).unwrap();
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the timer never fired");
        assert_eq!(timer.cancel(), Outcome::Fired);
        assert_eq!(timer.cancel(), Outcome::Fired);
    }

    #[test]
    fn timer__drop__then_cancelled_and_joined() {
        let (tx, rx) = mpsc::channel::<()>();
        drop(Timer::start(NEVER, move || tx.send(()).unwrap()).unwrap());
        assert_eq!(rx.recv(), Err(mpsc::RecvError));
    }

    #[test]
    fn timer__zero_seconds__then_no_timer() {
        assert!(Timer::from_secs(0.0, || {}).unwrap().is_none());
    }

    #[test]
    fn timer__many_cancel_expiry_races__then_one_outcome_each() {
        for i in 0..200u64 {
            let (tx, rx) = mpsc::channel();
            let timer =
                Timer::start(Duration::from_micros(i % 50), move || tx.send(()).unwrap()).unwrap();
            let outcome = timer.cancel();
            drop(timer);
            let calls = rx.try_iter().count();
            assert_eq!(
                calls,
                usize::from(outcome == Outcome::Fired),
                "run {i}: {outcome:?} with {calls} calls"
            );
        }
    }

    #[test]
    fn duration__from_secs__then_validated() {
        assert_eq!(duration_from_secs(0.0).unwrap(), None);
        assert_eq!(
            duration_from_secs(2.5).unwrap(),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            duration_from_secs(0.001).unwrap(),
            Some(Duration::from_millis(1))
        );
        assert!(matches!(
            duration_from_secs(-0.5),
            Err(TimerError::Negative(_))
        ));
        assert!(matches!(
            duration_from_secs(f64::NAN),
            Err(TimerError::NotFinite(_))
        ));
        assert!(matches!(
            duration_from_secs(f64::INFINITY),
            Err(TimerError::NotFinite(_))
        ));
        assert!(matches!(
            duration_from_secs(1e300),
            Err(TimerError::TooLong(_))
        ));
        assert!(matches!(
            parse_duration("abc"),
            Err(TimerError::NotANumber(_))
        ));
        assert_eq!(
            parse_duration(" 1.5 ").unwrap(),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn duration__errors__then_name_value_and_fix() {
        let msg = duration_from_secs(-3.0).unwrap_err().to_string();
        assert!(msg.contains("-3") && msg.contains("seconds >= 0"), "{msg}");
        let msg = parse_duration("ten").unwrap_err().to_string();
        assert!(msg.contains("`ten`") && msg.contains("2.5"), "{msg}");
    }
}
