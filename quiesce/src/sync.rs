//! The atomics: std's, or loom's in the models. On loom the marking side's compiler barrier is a
//! `SeqCst` fence, standing for the full barrier the retirer's `membarrier` runs on every thread
//! (loom cannot express a barrier one thread runs on another's behalf).

#[cfg(not(feature = "loom"))]
pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicU64};
#[cfg(feature = "loom")]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64};

/// The marking side's barrier: keeps the compiler from moving the marker store past the load that
/// follows; the CPU's ordering comes from the retirer's barrier.
#[inline(always)]
pub(crate) fn light_barrier() {
    #[cfg(not(feature = "loom"))]
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    #[cfg(feature = "loom")]
    fence(core::sync::atomic::Ordering::SeqCst);
}
