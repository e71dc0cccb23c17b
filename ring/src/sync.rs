//! The atomics backend: the only place in this crate that names atomic types.
//!
//! The protocol code (`Ring`, `RingPool`) is generic over a [`Backend`], so the very same code runs
//! on std atomics in a shared mapping ([`StdBackend`], the default) and on a model checker's atomics
//! on heap memory (loom in this crate's models, shuttle in the `sim` crate). A model backend is made
//! with [`model_backend!`](crate::model_backend), in the crate that runs the models, so no crate has
//! to enable a sibling's model feature.

use core::sync::atomic::{self, Ordering};

/// An atomic integer with the subset of the std API the protocols use.
pub trait Atomic<T>: Send + Sync + 'static {
    /// A new atomic holding `v`.
    fn new(v: T) -> Self;
    /// Like `AtomicU64::load`.
    fn load(&self, order: Ordering) -> T;
    /// Like `AtomicU64::store`.
    fn store(&self, v: T, order: Ordering);
    /// Like `AtomicU64::swap`.
    fn swap(&self, v: T, order: Ordering) -> T;
    /// Like `AtomicU64::compare_exchange`.
    fn compare_exchange(
        &self,
        current: T,
        new: T,
        success: Ordering,
        failure: Ordering,
    ) -> Result<T, T>;
    /// Like `AtomicU64::fetch_add` (wrapping).
    fn fetch_add(&self, v: T, order: Ordering) -> T;
    /// Like `AtomicU64::fetch_sub` (wrapping).
    fn fetch_sub(&self, v: T, order: Ordering) -> T;
    /// Like `AtomicU64::fetch_or`.
    fn fetch_or(&self, v: T, order: Ordering) -> T;
    /// Like `AtomicU64::fetch_and`.
    fn fetch_and(&self, v: T, order: Ordering) -> T;
}

/// Access tracking for the plain (non-atomic) bytes of a ring's data area.
///
/// In production this is `()` and costs nothing (zero-sized, calls compile away). Under loom it is
/// a `loom::cell::UnsafeCell<()>` per 8-byte word, so a missing happens-before between the producer
/// writing a record and the consumer reading it is reported as a causality violation.
pub trait Track: Send + Sync + 'static {
    /// Whether this backend tracks anything (lets the hot path skip the bookkeeping loop).
    const ENABLED: bool;
    /// A new tracking cell.
    fn new() -> Self;
    /// Records a write of the tracked word.
    fn write(&self);
    /// Records a read of the tracked word.
    fn read(&self);
}

impl Track for () {
    const ENABLED: bool = false;
    #[inline(always)]
    fn new() -> Self {}
    #[inline(always)]
    fn write(&self) {}
    #[inline(always)]
    fn read(&self) {}
}

/// A family of atomics, a fence, tracking cells and a backoff, for the protocol code to run on.
pub trait Backend: Send + Sync + 'static {
    /// 32-bit atomic.
    type AtomicU32: Atomic<u32>;
    /// 64-bit atomic.
    type AtomicU64: Atomic<u64>;
    /// Data-area access tracking (see [`Track`]).
    type Track: Track;
    /// A point in time after which a bounded wait gives up.
    type Deadline;
    /// A memory fence.
    fn fence(order: Ordering);
    /// The deadline `micros` microseconds from now.
    fn deadline_after(micros: u64) -> Self::Deadline;
    /// One step of a bounded wait (spin, then yield, then short sleeps). Returns `false` once the
    /// deadline has passed: the caller stops waiting.
    fn backoff(step: u32, deadline: &Self::Deadline) -> bool;
}

/// The longest single sleep of [`StdBackend`]'s backoff.
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_millis(1);

/// The production backend: `core::sync::atomic`, no tracking, a time-based backoff.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdBackend;

macro_rules! std_atomic {
    ($atomic:ty, $int:ty) => {
        impl Atomic<$int> for $atomic {
            #[inline(always)]
            fn new(v: $int) -> Self {
                <$atomic>::new(v)
            }
            #[inline(always)]
            fn load(&self, order: Ordering) -> $int {
                <$atomic>::load(self, order)
            }
            #[inline(always)]
            fn store(&self, v: $int, order: Ordering) {
                <$atomic>::store(self, v, order)
            }
            #[inline(always)]
            fn swap(&self, v: $int, order: Ordering) -> $int {
                <$atomic>::swap(self, v, order)
            }
            #[inline(always)]
            fn compare_exchange(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                <$atomic>::compare_exchange(self, current, new, success, failure)
            }
            #[inline(always)]
            fn fetch_add(&self, v: $int, order: Ordering) -> $int {
                <$atomic>::fetch_add(self, v, order)
            }
            #[inline(always)]
            fn fetch_sub(&self, v: $int, order: Ordering) -> $int {
                <$atomic>::fetch_sub(self, v, order)
            }
            #[inline(always)]
            fn fetch_or(&self, v: $int, order: Ordering) -> $int {
                <$atomic>::fetch_or(self, v, order)
            }
            #[inline(always)]
            fn fetch_and(&self, v: $int, order: Ordering) -> $int {
                <$atomic>::fetch_and(self, v, order)
            }
        }
    };
}
std_atomic!(atomic::AtomicU32, u32);
std_atomic!(atomic::AtomicU64, u64);

impl Backend for StdBackend {
    type AtomicU32 = atomic::AtomicU32;
    type AtomicU64 = atomic::AtomicU64;
    type Track = ();
    type Deadline = std::time::Instant;

    #[inline(always)]
    fn fence(order: Ordering) {
        atomic::fence(order)
    }

    fn deadline_after(micros: u64) -> std::time::Instant {
        std::time::Instant::now() + std::time::Duration::from_micros(micros)
    }

    fn backoff(step: u32, deadline: &std::time::Instant) -> bool {
        // Spin briefly (the other side is usually mid-operation), then sleep, 20 µs at first and
        // twice as long every 16 steps up to 1 ms. No `sched_yield`: with many runnable threads
        // per CPU a yield can cost a whole scheduler period, while a sleep wakes with the CFS
        // sleeper credit and costs no CPU. The growing sleep matters when hundreds of threads
        // wait at once (every ring full, the drain behind): waking each every 20 µs would take
        // the CPUs from the drain they wait for.
        if step < 64 {
            core::hint::spin_loop();
            return true;
        }
        let doublings = ((step - 64) / 16).min(6);
        std::thread::sleep(std::time::Duration::from_micros(20 << doublings).min(MAX_SLEEP));
        std::time::Instant::now() < *deadline
    }
}

/// Defines a model-checking [`Backend`] over a model checker's atomics, in the calling crate.
///
/// The generated type wraps the checker's `AtomicU32`/`AtomicU64` in local newtypes (so the orphan
/// rule is satisfied in any crate), uses its `fence`, and gives up a bounded wait after a few
/// yields (model checkers have no clock). With `track = ...`, data-area accesses are tracked with the
/// checker's `UnsafeCell<()>` (loom); without it they are not (shuttle).
///
/// ```text
/// // In a crate's loom tests:
/// ring::model_backend!(pub Loom, atomic = loom::sync::atomic, yield_now = loom::thread::yield_now,
///                      track = loom::cell::UnsafeCell);
/// // In the shuttle simulation:
/// ring::model_backend!(pub Shuttle, atomic = shuttle::sync::atomic,
///                      yield_now = shuttle::thread::yield_now);
/// ```
#[macro_export]
macro_rules! model_backend {
    ($vis:vis $name:ident, atomic = $($atomic:ident)::+, yield_now = $($yield:ident)::+,
     track = $($cell:ident)::+) => {
        $crate::model_backend!(@atomics $vis $name, $($atomic)::+);
        $crate::__paste_track!($vis $name, $($cell)::+);
        $crate::model_backend!(@backend $vis $name, $($atomic)::+, $($yield)::+,
                               ModelTrack);
    };
    ($vis:vis $name:ident, atomic = $($atomic:ident)::+, yield_now = $($yield:ident)::+) => {
        $crate::model_backend!(@atomics $vis $name, $($atomic)::+);
        $crate::model_backend!(@backend $vis $name, $($atomic)::+, $($yield)::+, ());
    };
    (@atomics $vis:vis $name:ident, $($atomic:ident)::+) => {
        /// A model checker's 32-bit atomic.
        #[derive(Debug)]
        $vis struct ModelU32($($atomic)::+::AtomicU32);
        /// A model checker's 64-bit atomic.
        #[derive(Debug)]
        $vis struct ModelU64($($atomic)::+::AtomicU64);
        $crate::model_backend!(@atomic ModelU32, u32);
        $crate::model_backend!(@atomic ModelU64, u64);
    };
    (@atomic $ty:ident, $int:ty) => {
        impl $crate::sync::Atomic<$int> for $ty {
            fn new(v: $int) -> Self { Self(<_>::from(v)) }
            fn load(&self, o: ::core::sync::atomic::Ordering) -> $int { self.0.load(o) }
            fn store(&self, v: $int, o: ::core::sync::atomic::Ordering) { self.0.store(v, o) }
            fn swap(&self, v: $int, o: ::core::sync::atomic::Ordering) -> $int { self.0.swap(v, o) }
            fn compare_exchange(&self, c: $int, n: $int, s: ::core::sync::atomic::Ordering,
                                f: ::core::sync::atomic::Ordering) -> Result<$int, $int> {
                self.0.compare_exchange(c, n, s, f)
            }
            fn fetch_add(&self, v: $int, o: ::core::sync::atomic::Ordering) -> $int {
                self.0.fetch_add(v, o)
            }
            fn fetch_sub(&self, v: $int, o: ::core::sync::atomic::Ordering) -> $int {
                self.0.fetch_sub(v, o)
            }
            fn fetch_or(&self, v: $int, o: ::core::sync::atomic::Ordering) -> $int {
                self.0.fetch_or(v, o)
            }
            fn fetch_and(&self, v: $int, o: ::core::sync::atomic::Ordering) -> $int {
                self.0.fetch_and(v, o)
            }
        }
    };
    (@backend $vis:vis $name:ident, $($atomic:ident)::+, $($yield:ident)::+, $track:ty) => {
        /// A model-checking backend (see `ring::model_backend!`).
        #[derive(Debug, Clone, Copy, Default)]
        $vis struct $name;
        impl $crate::sync::Backend for $name {
            type AtomicU32 = ModelU32;
            type AtomicU64 = ModelU64;
            type Track = $track;
            type Deadline = ();
            fn fence(order: ::core::sync::atomic::Ordering) { $($atomic)::+::fence(order) }
            fn deadline_after(_micros: u64) {}
            fn backoff(step: u32, _deadline: &()) -> bool {
                $($yield)::+();
                step < 2
            }
        }
    };
}

/// Implementation detail of [`model_backend!`](crate::model_backend): the tracking cell type.
#[doc(hidden)]
#[macro_export]
macro_rules! __paste_track {
    ($vis:vis $name:ident, $($cell:ident)::+) => {
        /// A model checker's tracking cell for data-area words.
        #[derive(Debug)]
        $vis struct ModelTrack($($cell)::+<()>);
        // SAFETY: the cell holds `()`: it carries no data, it only records accesses for the model
        // checker, which is the point of sharing it between the model's threads.
        unsafe impl Sync for ModelTrack {}
        // SAFETY: as above.
        unsafe impl Send for ModelTrack {}
        impl $crate::sync::Track for ModelTrack {
            const ENABLED: bool = true;
            fn new() -> Self { Self($($cell)::+::new(())) }
            fn write(&self) { self.0.with_mut(|_| ()) }
            fn read(&self) { self.0.with(|_| ()) }
        }
    };
}
