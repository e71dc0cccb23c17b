//! The backend: the only place in this crate that names locks, threads and the clock.
//!
//! [`Timer`](crate::Timer) is generic over a [`Backend`], so the same code runs on std
//! ([`StdBackend`], the default) and on a model checker's locks, threads and a virtual clock (loom in
//! this crate's models, shuttle in the `sim` crate). A model backend is made with
//! [`model_backend!`](crate::model_backend) in the crate that runs the models, so no crate has to
//! enable a sibling's model feature.

use std::fmt;
use std::io;
use std::ops::DerefMut;
use std::time::{Duration, Instant};

/// A mutex and its condition variable, around one value. A poisoned lock is taken over (the
/// timer's state is plain data, valid after any panic).
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

/// The time source of deadlines and timed waits.
pub trait Clock: 'static {
    /// The current instant (virtual in a model: a base instant plus the time the model let pass).
    fn now() -> Instant;
    /// One step of a timed wait for `deadline`: lets other threads run and may move the clock
    /// towards `deadline`. [`model_backend!`](crate::model_backend)'s `wait_timeout` repeats it
    /// until notified or [`Clock::now`] reaches `deadline`, so a model clock must get there in
    /// finitely many steps.
    fn wait_step(deadline: Instant);
}

/// A family of locks, threads and clock for the timer to run on.
pub trait Backend: fmt::Debug + Send + Sync + Sized + 'static {
    /// Mutex and condition variable around the timer's state.
    type Monitor<T: Send + 'static>: Monitor<T>;
    /// The time source.
    type Clock: Clock;
    /// A started thread, to join.
    type Thread: Send + 'static;
    /// Starts a thread named `name` running `body`.
    fn spawn<F: FnOnce() + Send + 'static>(name: &str, body: F) -> io::Result<Self::Thread>;
    /// Waits for the thread to end (a panic in it is ignored: the timer's state records the end).
    fn join(thread: Self::Thread);
}

/// The production backend: std locks and threads, `Instant::now()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdBackend;

impl Backend for StdBackend {
    type Monitor<T: Send + 'static> = StdMonitor<T>;
    type Clock = StdClock;
    type Thread = std::thread::JoinHandle<()>;

    fn spawn<F: FnOnce() + Send + 'static>(name: &str, body: F) -> io::Result<Self::Thread> {
        std::thread::Builder::new().name(name.into()).spawn(body)
    }

    fn join(thread: Self::Thread) {
        let _ = thread.join();
    }
}

/// `std::sync::Mutex` + `Condvar`.
#[derive(Debug, Default)]
pub struct StdMonitor<T> {
    value: std::sync::Mutex<T>,
    changed: std::sync::Condvar,
}

impl<T: Send> Monitor<T> for StdMonitor<T> {
    type Guard<'a>
        = std::sync::MutexGuard<'a, T>
    where
        Self: 'a;

    fn new(value: T) -> Self {
        Self {
            value: std::sync::Mutex::new(value),
            changed: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> Self::Guard<'_> {
        self.value.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&'a self, guard: Self::Guard<'a>) -> Self::Guard<'a> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    fn wait_timeout<'a>(&'a self, guard: Self::Guard<'a>, timeout: Duration) -> Self::Guard<'a> {
        self.changed
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    fn notify_all(&self) {
        self.changed.notify_all()
    }
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

/// Defines a model-checking [`Backend`] over a model checker's locks and threads and a virtual
/// clock, in the calling crate.
///
/// The generated `ModelMonitor` wraps the checker's `Mutex` and `Condvar` in a local newtype (the
/// orphan rule is satisfied in any crate); threads are the checker's (`Builder::spawn`, `join`).
/// `clock` names a type implementing [`Clock`]. The checkers have no time, and shuttle's
/// `Condvar::wait_timeout` never times out, so the clock is virtual and a timed wait here releases
/// the lock and repeats [`Clock::wait_step`] (other threads run meanwhile) until it was notified
/// or the clock reached its deadline, then takes the lock again: the timer thread's wait always
/// ends, at its deadline in virtual time or on a cancel, and it re-checks its state either way.
/// Invoke it once per module.
///
/// ```text
/// // In this crate's loom models:
/// timer::model_backend!(pub Loom, sync = loom::sync, thread = loom::thread, clock = LoomClock);
/// // In the shuttle simulation:
/// timer::model_backend!(pub Sim, sync = shuttle::sync, thread = shuttle::thread,
///                       clock = crate::clock::Virtual);
/// ```
#[macro_export]
macro_rules! model_backend {
    ($vis:vis $name:ident, sync = $($sync:ident)::+, thread = $($thread:ident)::+,
     clock = $clock:ty) => {
        /// A model checker's mutex and condition variable.
        $vis struct ModelMonitor<T> {
            value: $($sync)::+::Mutex<T>,
            changed: $($sync)::+::Condvar,
            /// Bumped by every `notify_all`: a timed wait, which polls the clock instead of
            /// blocking, sees by it that it was notified.
            notified: $($sync)::+::atomic::AtomicU64,
        }

        impl<T> ::std::fmt::Debug for ModelMonitor<T> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str("ModelMonitor")
            }
        }

        impl<T: Send> $crate::sync::Monitor<T> for ModelMonitor<T> {
            type Guard<'a>
                = $($sync)::+::MutexGuard<'a, T>
            where
                Self: 'a;
            fn new(value: T) -> Self {
                Self {
                    value: $($sync)::+::Mutex::new(value),
                    changed: $($sync)::+::Condvar::new(),
                    notified: $($sync)::+::atomic::AtomicU64::new(0),
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
                use $crate::sync::Clock as _;
                // SeqCst (read under the lock, as the notifier's state change is made): pairs with
                // the increment in `notify_all`.
                let seen = self.notified.load(::std::sync::atomic::Ordering::SeqCst);
                let now = <$clock>::now();
                // An unrepresentable deadline is far enough: a century of virtual time.
                let deadline = now
                    .checked_add(timeout)
                    .unwrap_or(now + ::std::time::Duration::from_secs(100 * 365 * 86_400));
                ::std::mem::drop(guard);
                loop {
                    <$clock>::wait_step(deadline);
                    let guard = self.lock();
                    // SeqCst: pairs with the increment in `notify_all`.
                    if self.notified.load(::std::sync::atomic::Ordering::SeqCst) != seen
                        || <$clock>::now() >= deadline
                    {
                        return guard;
                    }
                }
            }
            fn notify_all(&self) {
                // SeqCst: pairs with the loads in `wait_timeout`.
                self.notified.fetch_add(1, ::std::sync::atomic::Ordering::SeqCst);
                self.changed.notify_all()
            }
        }

        /// A model-checking timer backend (see `timer::model_backend!`).
        #[derive(Debug, Clone, Copy, Default)]
        $vis struct $name;

        impl $crate::sync::Backend for $name {
            type Monitor<T: Send + 'static> = ModelMonitor<T>;
            type Clock = $clock;
            type Thread = $($thread)::+::JoinHandle<()>;
            fn spawn<F: FnOnce() + Send + 'static>(
                name: &str,
                body: F,
            ) -> ::std::io::Result<Self::Thread> {
                $($thread)::+::Builder::new().name(name.into()).spawn(body)
            }
            fn join(thread: Self::Thread) {
                let _ = thread.join();
            }
        }
    };
}
