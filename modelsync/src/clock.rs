//! Time sources: the trait, the real clock, and the one virtual clock the models share.

use core::marker::PhantomData;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// The time source of deadlines and timed waits.
pub trait Clock: 'static {
    /// The current instant (virtual in a model: a base instant plus the time the model let pass).
    fn now() -> Instant;
    /// One step of a timed wait for `deadline`: lets other threads run and may move the clock
    /// towards `deadline`. A [`ModelMonitor`](crate::ModelMonitor)'s `wait_timeout` repeats it
    /// until notified or [`Clock::now`] reaches `deadline`, so a model clock must get there in
    /// finitely many steps.
    fn wait_step(deadline: Instant);
}

/// `Instant::now()` and `std::thread::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdClock;

impl Clock for StdClock {
    #[inline]
    fn now() -> Instant {
        Instant::now()
    }

    fn wait_step(deadline: Instant) {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// A scheduler's "let another thread run" (std's, loom's, shuttle's `thread::yield_now`).
pub trait YieldNow: 'static {
    /// Lets another thread run.
    fn yield_now();
}

/// The models' clock: a base instant plus the virtual time that has passed.
///
/// loom and shuttle run a model's threads as continuations on the test's own thread, so the time
/// kept in a thread-local is one model's time, shared by all its threads. By default a timed wait
/// step yields (`Y`) and then lets its deadline come: a model explores timeouts without waiting
/// for them. A simulation that moves time itself (its simulated work costs time) calls
/// [`virtual_time::drive`]: while driven, time passes only through [`virtual_time::advance`] and a
/// wait step only yields, until [`virtual_time::release`] (for example when the work has ended and
/// nothing else would move the clock).
#[derive(Debug, Clone, Copy, Default)]
pub struct Virtual<Y>(PhantomData<Y>);

std::thread_local! {
    static BASE: Instant = Instant::now();
    /// Virtual time passed since `BASE`.
    static PASSED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// Whether time passes only through `advance` (see [`Virtual`]).
    static DRIVEN: Cell<bool> = const { Cell::new(false) };
}

impl<Y: YieldNow> Clock for Virtual<Y> {
    fn now() -> Instant {
        virtual_time::now()
    }

    fn wait_step(deadline: Instant) {
        Y::yield_now();
        if !DRIVEN.with(Cell::get) {
            virtual_time::advance_to(deadline);
        }
    }
}

/// The state of this thread's [`Virtual`] clock.
pub mod virtual_time {
    use super::{BASE, DRIVEN, PASSED};
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    /// Starts a model: no time passed, not driven.
    pub fn reset() {
        PASSED.with(|p| p.set(Duration::ZERO));
        DRIVEN.with(|d| d.set(false));
    }

    /// The current virtual instant.
    pub fn now() -> Instant {
        BASE.with(|b| *b) + PASSED.with(Cell::get)
    }

    /// Lets `d` pass.
    pub fn advance(d: Duration) {
        PASSED.with(|p| p.set(p.get() + d));
    }

    /// Lets time pass up to `deadline` (no change if it is already past).
    pub fn advance_to(deadline: Instant) {
        let at = deadline.saturating_duration_since(BASE.with(|b| *b));
        PASSED.with(|p| p.set(p.get().max(at)));
    }

    /// From now on time passes only through [`advance`]: a timed wait step only yields.
    pub fn drive() {
        DRIVEN.with(|d| d.set(true));
    }

    /// From now on a timed wait's deadline comes as soon as it yields.
    pub fn release() {
        DRIVEN.with(|d| d.set(false));
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    struct NoYield;
    impl YieldNow for NoYield {
        fn yield_now() {}
    }
    type V = Virtual<NoYield>;

    #[test]
    fn virtual_wait_step__undriven__then_reaches_the_deadline() {
        virtual_time::reset();
        let deadline = V::now() + Duration::from_secs(5);
        V::wait_step(deadline);
        assert_eq!(V::now(), deadline);
    }

    #[test]
    fn virtual_wait_step__driven__then_time_moves_only_by_advance() {
        virtual_time::reset();
        virtual_time::drive();
        let start = V::now();
        V::wait_step(start + Duration::from_secs(5));
        assert_eq!(V::now(), start);
        virtual_time::advance(Duration::from_millis(3));
        assert_eq!(V::now(), start + Duration::from_millis(3));
        virtual_time::release();
        V::wait_step(start + Duration::from_secs(5));
        assert_eq!(V::now(), start + Duration::from_secs(5));
    }
}
