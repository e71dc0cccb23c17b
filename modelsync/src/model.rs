//! The model backends: one definition, instantiated for each model checker that is enabled.

/// Defines, in the calling module, a model checker's backend `$name` over the checker crate
/// `$checker` (which has std's `sync`, `sync::atomic` and `thread` API): its atomics wrapped in
/// local newtypes, its mutex and condvar as a [`ModelMonitor`](crate::ModelMonitor) on the
/// [`Virtual`](crate::Virtual) clock, the [`ModelWake`](crate::ModelWake), its threads, and a
/// bounded wait that gives up after a few yields (a model explores the give-up path without
/// spinning). `$track` tracks plain memory accesses (`()` when the checker cannot).
macro_rules! checker_backend {
    ($(#[$doc:meta])* $name:ident, $checker:ident, track = $track:ty) => {
        /// The checker's 32-bit atomic.
        #[derive(Debug)]
        pub struct AtomicU32($checker::sync::atomic::AtomicU32);
        /// The checker's 64-bit atomic.
        #[derive(Debug)]
        pub struct AtomicU64($checker::sync::atomic::AtomicU64);
        $crate::atomic::impl_atomic!(AtomicU32, u32, |s| s.0, |v| AtomicU32(
            $checker::sync::atomic::AtomicU32::new(v)
        ));
        $crate::atomic::impl_atomic!(AtomicU64, u64, |s| s.0, |v| AtomicU64(
            $checker::sync::atomic::AtomicU64::new(v)
        ));

        $crate::monitor::plain_monitor!(
            /// The checker's mutex and condvar (its timed wait never times out in a model: use
            /// [`Monitor`], which has a virtual one).
            PlainMonitor,
            $checker::sync
        );

        /// The checker's monitor, with a timed wait on the virtual clock.
        pub type Monitor<T> = $crate::ModelMonitor<T, PlainMonitor<T>, AtomicU64, Clock>;

        /// The checker's `thread::yield_now`.
        #[derive(Debug, Clone, Copy, Default)]
        pub struct Yield;
        impl $crate::YieldNow for Yield {
            fn yield_now() {
                $checker::thread::yield_now()
            }
        }

        /// The virtual clock, yielding to the checker's scheduler.
        pub type Clock = $crate::Virtual<Yield>;

        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl $crate::Backend for $name {
            type AtomicU32 = AtomicU32;
            type AtomicU64 = AtomicU64;
            type Track = $track;
            type Monitor<T: Send + 'static> = Monitor<T>;
            type Wake = $crate::ModelWake<Monitor<u64>>;
            type Clock = Clock;
            type Thread = $checker::thread::JoinHandle<()>;
            type Deadline = ();

            fn fence(order: $crate::Ordering) {
                $checker::sync::atomic::fence(order)
            }

            fn yield_now() {
                $checker::thread::yield_now()
            }

            fn deadline_after(_micros: u64) {}

            fn backoff(step: u32, _deadline: &()) -> bool {
                $checker::thread::yield_now();
                step < 2
            }

            fn spawn<F: FnOnce() + Send + 'static>(
                name: &str,
                body: F,
            ) -> ::std::io::Result<Self::Thread> {
                $checker::thread::Builder::new().name(name.into()).spawn(body)
            }

            fn join(thread: Self::Thread) {
                let _ = thread.join();
            }
        }
    };
}
pub(crate) use checker_backend;
