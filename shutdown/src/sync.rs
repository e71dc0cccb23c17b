//! The backend: the only place in this crate that names atomics, locks, the wake primitive and
//! the clock.
//!
//! The request/wake/phase code ([`Shutdown`](crate::Shutdown), [`Shutdown::execute`](
//! crate::Shutdown::execute)) is generic over a [`Backend`], so the very same code runs on std and a
//! real eventfd ([`StdBackend`], the default) and on a model checker's atomics, locks and a virtual
//! clock (loom in this crate's models, shuttle in the `sim` crate). A model backend is made with
//! [`model_backend!`](crate::model_backend) in the crate that runs the models, so no crate has to
//! enable a sibling's model feature. The signal handler itself stays on [`StdBackend`]: its statics
//! and `sigaction` are real, and a model calls the handler's body through
//! [`Shutdown::notify_signal`](crate::Shutdown::notify_signal).

use std::fmt;
use std::io;
use std::ops::DerefMut;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

pub use core::sync::atomic::Ordering;

/// Process-wide statics read by the signal handler: always std (a model's atomic cannot live in a
/// `static` nor be touched from a real signal handler).
pub(crate) use std::sync::atomic::{
    AtomicPtr as StaticAtomicPtr, AtomicUsize as StaticAtomicUsize,
};

/// A 64-bit atomic word: every flag and counter of a shutdown is one.
pub trait Atomic: fmt::Debug + Send + Sync + 'static {
    /// A new word holding `v`.
    fn new(v: u64) -> Self;
    /// Like `AtomicU64::load`.
    fn load(&self, order: Ordering) -> u64;
    /// Like `AtomicU64::store`.
    fn store(&self, v: u64, order: Ordering);
    /// Like `AtomicU64::swap`.
    fn swap(&self, v: u64, order: Ordering) -> u64;
    /// Like `AtomicU64::compare_exchange`.
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    /// Like `AtomicU64::fetch_add` (wrapping).
    fn fetch_add(&self, v: u64, order: Ordering) -> u64;
}

impl Atomic for core::sync::atomic::AtomicU64 {
    #[inline(always)]
    fn new(v: u64) -> Self {
        core::sync::atomic::AtomicU64::new(v)
    }
    #[inline(always)]
    fn load(&self, order: Ordering) -> u64 {
        core::sync::atomic::AtomicU64::load(self, order)
    }
    #[inline(always)]
    fn store(&self, v: u64, order: Ordering) {
        core::sync::atomic::AtomicU64::store(self, v, order)
    }
    #[inline(always)]
    fn swap(&self, v: u64, order: Ordering) -> u64 {
        core::sync::atomic::AtomicU64::swap(self, v, order)
    }
    #[inline(always)]
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        core::sync::atomic::AtomicU64::compare_exchange(self, current, new, success, failure)
    }
    #[inline(always)]
    fn fetch_add(&self, v: u64, order: Ordering) -> u64 {
        core::sync::atomic::AtomicU64::fetch_add(self, v, order)
    }
}

/// A mutex and its condition variable, around one value. A poisoned lock is taken over (the values
/// kept here are plain data, valid after any panic).
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

/// The time source of the phases and of timed waits.
pub trait Clock: 'static {
    /// The current instant (virtual in a model: a base instant plus the time the model let pass).
    fn now() -> Instant;
    /// One step of a timed wait for `deadline`: lets other threads run and may move the clock
    /// towards `deadline`. [`model_backend!`](crate::model_backend)'s `wait_timeout` repeats it
    /// until notified or [`Clock::now`] reaches `deadline`, so a model clock must get there in
    /// finitely many steps.
    fn wait_step(deadline: Instant);
}

/// The wake-up a waiter blocks on: readable after every request, signal and escalation.
pub trait Wake: fmt::Debug + Send + Sync + Sized + 'static {
    /// A new wake, not readable.
    fn new() -> io::Result<Self>;
    /// Makes it readable. Must be async-signal-safe on the backend whose signal handler calls it.
    fn notify(&self);
    /// Consumes every pending notification; returns how many there were.
    fn drain(&self) -> io::Result<u64>;
    /// Blocks until readable (`true`) or `timeout` passes (`false`); `None` waits for ever.
    fn wait(&self, timeout: Option<Duration>) -> io::Result<bool>;
    /// The file descriptor to `poll`, or -1 when there is none (a model).
    fn raw_fd(&self) -> RawFd;
}

/// A family of atomics, locks, wake primitive and clock for the shutdown code to run on.
pub trait Backend: fmt::Debug + Send + Sync + Sized + 'static {
    /// The flags' and counters' atomic word.
    type Atomic: Atomic;
    /// Mutex and condition variable (the error text's lock; a model wake's counter).
    type Monitor<T: Send + 'static>: Monitor<T>;
    /// The wake primitive.
    type Wake: Wake;
    /// The time source.
    type Clock: Clock;
}

/// The production backend: std atomics and locks, an eventfd, `Instant::now()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdBackend;

impl Backend for StdBackend {
    type Atomic = core::sync::atomic::AtomicU64;
    type Monitor<T: Send + 'static> = StdMonitor<T>;
    type Wake = EventFd;
    type Clock = StdClock;
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

/// A non-blocking, close-on-exec eventfd: `notify` makes it readable, `drain` consumes every
/// pending notification, `wait` blocks in `poll` until it is readable.
#[derive(Debug)]
pub struct EventFd {
    fd: std::os::fd::OwnedFd,
}

impl Wake for EventFd {
    fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Async-signal-safe: one `write(2)` of 8 bytes, no allocation, no lock. A full counter
    /// (`EAGAIN`) means the fd is already readable, which is all a waiter needs.
    #[inline]
    fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an fd this struct owns; the result is
        // ignored on purpose (EAGAIN = already readable; nothing else can fail here).
        unsafe {
            libc::write(self.raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    fn drain(&self) -> io::Result<u64> {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local owned by this frame.
        let n = unsafe { libc::read(self.raw_fd(), (&mut count as *mut u64).cast(), 8) };
        if n == 8 {
            return Ok(count);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(err),
        }
    }

    fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let ms: libc::c_int = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up so a sub-millisecond remainder still sleeps instead of spinning.
                    let ms = left.as_micros().div_ceil(1000);
                    ms.min(libc::c_int::MAX as u128) as libc::c_int
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on the stack, count 1.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n > 0 {
                return Ok(true);
            }
            if n == 0 {
                if ms == 0 {
                    return Ok(false);
                }
                continue; // recompute: poll may wake a little early
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
            // poll is never restarted by SA_RESTART: retry with the time left.
        }
    }

    fn raw_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }
}

/// The eventfd's counter as a model sees it: a count behind the backend's [`Monitor`] (the lock
/// stands for the kernel's own atomicity of `read`/`write` on the fd). Every model backend uses it.
pub struct ModelWake<B: Backend> {
    count: B::Monitor<u64>,
}

impl<B: Backend> fmt::Debug for ModelWake<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ModelWake")
    }
}

impl<B: Backend> Wake for ModelWake<B> {
    fn new() -> io::Result<Self> {
        Ok(Self {
            count: Monitor::new(0),
        })
    }

    fn notify(&self) {
        *self.count.lock() += 1;
        self.count.notify_all();
    }

    fn drain(&self) -> io::Result<u64> {
        Ok(std::mem::take(&mut *self.count.lock()))
    }

    /// With a timeout, one timed wait of the backend's monitor (in a model, the virtual clock
    /// lets the timeout pass while other threads run).
    fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let mut count = self.count.lock();
        match timeout {
            None => {
                while *count == 0 {
                    count = self.count.wait(count);
                }
            }
            Some(t) => {
                if *count == 0 {
                    count = self.count.wait_timeout(count, t);
                }
            }
        }
        Ok(*count > 0)
    }

    fn raw_fd(&self) -> RawFd {
        -1
    }
}

/// Defines a model-checking [`Backend`] over a model checker's atomics and locks and a virtual
/// clock, in the calling crate.
///
/// The generated types wrap the checker's `sync::atomic::AtomicU64`, `sync::Mutex` and
/// `sync::Condvar` in local newtypes (`ModelAtomic`, `ModelMonitor`), so the orphan rule is
/// satisfied in any crate; the wake is [`ModelWake`]. `clock` names a type implementing [`Clock`]:
/// the checkers have no time (shuttle's `Condvar::wait_timeout` never times out), so it is virtual,
/// and a timed wait (`wait_timeout`) releases the lock and repeats [`Clock::wait_step`] until it
/// was notified or the clock reached its deadline, then takes the lock again: it always ends, and
/// callers re-check their condition as after any wake-up. Invoke it once per module.
///
/// ```text
/// // In this crate's loom models:
/// shutdown::model_backend!(pub(crate) Loom, sync = loom::sync, clock = LoomClock);
/// // In the shuttle simulation:
/// shutdown::model_backend!(pub Sim, sync = shuttle::sync, clock = crate::clock::Virtual);
/// ```
#[macro_export]
macro_rules! model_backend {
    ($vis:vis $name:ident, sync = $($sync:ident)::+, clock = $clock:ty) => {
        /// A model checker's 64-bit atomic.
        #[derive(Debug)]
        $vis struct ModelAtomic($($sync)::+::atomic::AtomicU64);

        impl $crate::sync::Atomic for ModelAtomic {
            fn new(v: u64) -> Self {
                Self($($sync)::+::atomic::AtomicU64::new(v))
            }
            fn load(&self, o: $crate::sync::Ordering) -> u64 {
                self.0.load(o)
            }
            fn store(&self, v: u64, o: $crate::sync::Ordering) {
                self.0.store(v, o)
            }
            fn swap(&self, v: u64, o: $crate::sync::Ordering) -> u64 {
                self.0.swap(v, o)
            }
            fn compare_exchange(
                &self,
                c: u64,
                n: u64,
                s: $crate::sync::Ordering,
                f: $crate::sync::Ordering,
            ) -> Result<u64, u64> {
                self.0.compare_exchange(c, n, s, f)
            }
            fn fetch_add(&self, v: u64, o: $crate::sync::Ordering) -> u64 {
                self.0.fetch_add(v, o)
            }
        }

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

        /// A model-checking shutdown backend (see `shutdown::model_backend!`).
        #[derive(Debug, Clone, Copy, Default)]
        $vis struct $name;

        impl $crate::sync::Backend for $name {
            type Atomic = ModelAtomic;
            type Monitor<T: Send + 'static> = ModelMonitor<T>;
            type Wake = $crate::sync::ModelWake<$name>;
            type Clock = $clock;
        }
    };
}
