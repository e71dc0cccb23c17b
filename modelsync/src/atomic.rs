//! Atomic integers and access tracking: the traits, and their std implementations.

use core::fmt;
pub use core::sync::atomic::Ordering;
use core::sync::atomic::{AtomicU32, AtomicU64};

/// An atomic integer with the subset of the std API the protocols use.
pub trait Atomic<T>: fmt::Debug + Send + Sync + 'static {
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

/// Implements [`Atomic`] for an atomic type whose inner atomic (`$inner`, given the receiver `$s`)
/// has the std methods: the std atomics themselves, and a model checker's wrapped in a local
/// newtype (the orphan rule). `$make` builds one from an integer.
macro_rules! impl_atomic {
    ($atomic:ty, $int:ty, |$s:ident| $inner:expr, $make:expr) => {
        impl $crate::atomic::Atomic<$int> for $atomic {
            #[inline(always)]
            fn new(v: $int) -> Self {
                $make(v)
            }
            #[inline(always)]
            fn load(&self, order: $crate::Ordering) -> $int {
                let $s = self;
                $inner.load(order)
            }
            #[inline(always)]
            fn store(&self, v: $int, order: $crate::Ordering) {
                let $s = self;
                $inner.store(v, order)
            }
            #[inline(always)]
            fn swap(&self, v: $int, order: $crate::Ordering) -> $int {
                let $s = self;
                $inner.swap(v, order)
            }
            #[inline(always)]
            fn compare_exchange(
                &self,
                current: $int,
                new: $int,
                success: $crate::Ordering,
                failure: $crate::Ordering,
            ) -> Result<$int, $int> {
                let $s = self;
                $inner.compare_exchange(current, new, success, failure)
            }
            #[inline(always)]
            fn fetch_add(&self, v: $int, order: $crate::Ordering) -> $int {
                let $s = self;
                $inner.fetch_add(v, order)
            }
            #[inline(always)]
            fn fetch_sub(&self, v: $int, order: $crate::Ordering) -> $int {
                let $s = self;
                $inner.fetch_sub(v, order)
            }
            #[inline(always)]
            fn fetch_or(&self, v: $int, order: $crate::Ordering) -> $int {
                let $s = self;
                $inner.fetch_or(v, order)
            }
            #[inline(always)]
            fn fetch_and(&self, v: $int, order: $crate::Ordering) -> $int {
                let $s = self;
                $inner.fetch_and(v, order)
            }
        }
    };
}
#[cfg(any(feature = "loom", feature = "shuttle"))]
pub(crate) use impl_atomic;

// In these impls `s.load(..)` and `AtomicU32::new` name the inherent methods, which take precedence
// over the trait's: no recursion.
impl_atomic!(AtomicU32, u32, |s| s, AtomicU32::new);
impl_atomic!(AtomicU64, u64, |s| s, AtomicU64::new);

/// Access tracking for plain (non-atomic) shared memory, such as a ring's data area.
///
/// In production this is `()` and costs nothing (zero-sized, calls compile away). Under loom it is
/// a `loom::cell::UnsafeCell<()>` per tracked word, so a missing happens-before between a write
/// and a read of the memory it stands for is reported as a causality violation.
pub trait Track: Send + Sync + 'static {
    /// Whether this backend tracks anything (lets a hot path skip the bookkeeping loop).
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
