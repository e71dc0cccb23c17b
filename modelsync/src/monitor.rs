//! Monitors (a mutex and its condition variable around one value): the trait, the plain monitor
//! every backend wraps around its mutex and condvar, and the one model monitor whose timed wait
//! runs on a virtual clock.

use crate::atomic::{Atomic, Ordering};
use crate::clock::Clock;
use core::fmt;
use core::marker::PhantomData;
use std::ops::DerefMut;
use std::time::Duration;

/// A mutex and its condition variable, around one value. A poisoned lock is taken over (the values
/// kept in monitors here are plain data, valid after any panic).
pub trait Monitor<T>: Send + Sync + Sized {
    /// The lock held.
    type Guard<'a>: DerefMut<Target = T>
    where
        Self: 'a;
    /// A new monitor holding `value`.
    fn new(value: T) -> Self;
    /// Takes the lock.
    fn lock(&self) -> Self::Guard<'_>;
    /// Releases the lock until notified (or spuriously woken), then takes it again.
    fn wait<'a>(&'a self, guard: Self::Guard<'a>) -> Self::Guard<'a>;
    /// [`Monitor::wait`], giving up once `timeout` has passed; callers re-check their condition
    /// and the clock, as after any wake-up.
    fn wait_timeout<'a>(&'a self, guard: Self::Guard<'a>, timeout: Duration) -> Self::Guard<'a>;
    /// Wakes every waiter.
    fn notify_all(&self);
}

/// Defines a monitor over a `sync` module with std's `Mutex`, `MutexGuard` and `Condvar` (std's,
/// loom's, shuttle's). Its `wait_timeout` is the condvar's own: real time on std; a model wraps the
/// monitor in [`ModelMonitor`], whose timed wait runs on a virtual clock instead.
macro_rules! plain_monitor {
    ($(#[$doc:meta])* $name:ident, $($sync:ident)::+) => {
        $(#[$doc])*
        pub struct $name<T> {
            value: $($sync)::+::Mutex<T>,
            changed: $($sync)::+::Condvar,
        }

        impl<T> ::core::fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(stringify!($name))
            }
        }

        impl<T: Send> $crate::monitor::Monitor<T> for $name<T> {
            type Guard<'a>
                = $($sync)::+::MutexGuard<'a, T>
            where
                Self: 'a;

            fn new(value: T) -> Self {
                Self {
                    value: $($sync)::+::Mutex::new(value),
                    changed: $($sync)::+::Condvar::new(),
                }
            }

            fn lock(&self) -> Self::Guard<'_> {
                self.value.lock().unwrap_or_else(|p| p.into_inner())
            }

            fn wait<'a>(&'a self, guard: Self::Guard<'a>) -> Self::Guard<'a> {
                self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
            }

            fn wait_timeout<'a>(
                &'a self,
                guard: Self::Guard<'a>,
                timeout: ::std::time::Duration,
            ) -> Self::Guard<'a> {
                self.changed
                    .wait_timeout(guard, timeout)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }

            fn notify_all(&self) {
                self.changed.notify_all()
            }
        }
    };
}
#[cfg(any(feature = "loom", feature = "shuttle"))]
pub(crate) use plain_monitor;

plain_monitor!(
    /// `std::sync::Mutex` + `Condvar`.
    StdMonitor,
    std::sync
);

/// A model checker's monitor `M`, whose timed wait runs on the virtual clock `C`.
///
/// The checkers have no time (shuttle's `Condvar::wait_timeout` never times out), so a timed wait
/// here releases the lock and repeats [`Clock::wait_step`] (other threads run meanwhile) until it
/// was notified or the clock reached its deadline, then takes the lock again: it always ends, and
/// callers re-check their condition as after any wake-up. `A` is the checker's atomic word that
/// counts notifications, by which a polling timed wait sees it was notified.
pub struct ModelMonitor<T, M, A, C> {
    inner: M,
    notified: A,
    _value: PhantomData<fn() -> (T, C)>,
}

impl<T, M, A, C> fmt::Debug for ModelMonitor<T, M, A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ModelMonitor")
    }
}

impl<T, M, A, C> Monitor<T> for ModelMonitor<T, M, A, C>
where
    M: Monitor<T>,
    A: Atomic<u64>,
    C: Clock,
{
    type Guard<'a>
        = M::Guard<'a>
    where
        Self: 'a;

    fn new(value: T) -> Self {
        Self {
            inner: M::new(value),
            notified: A::new(0),
            _value: PhantomData,
        }
    }

    fn lock(&self) -> Self::Guard<'_> {
        self.inner.lock()
    }

    fn wait<'a>(&'a self, guard: Self::Guard<'a>) -> Self::Guard<'a> {
        self.inner.wait(guard)
    }

    fn wait_timeout<'a>(&'a self, guard: Self::Guard<'a>, timeout: Duration) -> Self::Guard<'a> {
        // SeqCst (read under the lock, as the notifier's state change is made): pairs with the
        // increment in `notify_all`.
        let seen = self.notified.load(Ordering::SeqCst);
        let now = C::now();
        // An unrepresentable deadline is far enough: a century of virtual time.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(100 * 365 * 86_400));
        drop(guard);
        loop {
            C::wait_step(deadline);
            let guard = self.lock();
            // SeqCst: pairs with the increment in `notify_all`.
            if self.notified.load(Ordering::SeqCst) != seen || C::now() >= deadline {
                return guard;
            }
        }
    }

    fn notify_all(&self) {
        // SeqCst: pairs with the loads in `wait_timeout`.
        self.notified.fetch_add(1, Ordering::SeqCst);
        self.inner.notify_all()
    }
}
