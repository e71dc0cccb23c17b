//! Virtual time, and the `shutdown` and `timer` backends that run on it.
//!
//! shuttle has no time (and its `Condvar::wait_timeout` never times out), so the simulation keeps
//! its own clock: a base instant plus the time that passed, per schedule. Time passes as the
//! target works: each event a producer attempts takes [`EVENT_TIME`] (so a timer of `n` ms expires
//! after about `n` events, at a random point of the recording), and the drain's fsync may take
//! long ([`advance`]). A timed wait step (`Clock::wait_step`, what the backends' `wait_timeout`
//! repeats) yields, so other threads run; once the target has ended ([`target_ended`]) nothing
//! else moves the clock, so the wait's deadline passes at once. Every timed wait therefore ends:
//! on a notification, as the target works, or when it is gone.
//!
//! shuttle runs a schedule's threads as continuations on the test's own thread, so a thread-local
//! is one schedule's clock; [`reset`] starts each schedule at the base instant.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// What one producer event costs in virtual time.
pub const EVENT_TIME: Duration = Duration::from_millis(1);

std::thread_local! {
    static BASE: Instant = Instant::now();
    /// Virtual time passed since `BASE`.
    static PASSED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// Whether the simulated target still runs (its threads move the clock).
    static TARGET_RUNNING: Cell<bool> = const { Cell::new(true) };
}

/// The simulation's clock (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct Virtual;

/// Starts a schedule: no time passed, the target running.
pub fn reset() {
    PASSED.with(|p| p.set(Duration::ZERO));
    TARGET_RUNNING.with(|r| r.set(true));
}

/// The current virtual instant.
pub fn now() -> Instant {
    BASE.with(|b| *b) + PASSED.with(Cell::get)
}

/// Lets `d` pass (the target's work, a slow fsync).
pub fn advance(d: Duration) {
    PASSED.with(|p| p.set(p.get() + d));
}

/// The target has ended: from now on a timed wait's deadline passes as soon as it yields.
pub fn target_ended() {
    TARGET_RUNNING.with(|r| r.set(false));
}

fn advance_to(deadline: Instant) {
    let at = deadline.saturating_duration_since(BASE.with(|b| *b));
    PASSED.with(|p| p.set(p.get().max(at)));
}

/// One step of a timed wait: yield; if the target has ended, the deadline has come.
fn wait_step(deadline: Instant) {
    shuttle::thread::yield_now();
    if !TARGET_RUNNING.with(Cell::get) {
        advance_to(deadline);
    }
}

impl shutdown::sync::Clock for Virtual {
    fn now() -> Instant {
        now()
    }

    fn wait_step(deadline: Instant) {
        wait_step(deadline)
    }
}

impl timer::sync::Clock for Virtual {
    fn now() -> Instant {
        now()
    }

    fn wait_step(deadline: Instant) {
        wait_step(deadline)
    }
}

/// Waits `d` of virtual time, as a phase's bounded wait polls (one `Clock::wait_step`).
pub fn pause(d: Duration) {
    wait_step(now() + d);
}

/// The shutdown manager's backend: shuttle's atomics and locks, this clock.
pub mod shutdown_backend {
    shutdown::model_backend!(pub SimShutdown, sync = shuttle::sync, clock = super::Virtual);
}

/// The duration timer's backend: shuttle's locks and threads, this clock.
pub mod timer_backend {
    timer::model_backend!(pub SimTimer, sync = shuttle::sync, thread = shuttle::thread,
                          clock = super::Virtual);
}

pub use shutdown_backend::SimShutdown;
pub use timer_backend::SimTimer;
