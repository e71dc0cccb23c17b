//! The backend trait, which names one family of primitives, and the production backend.

use crate::atomic::{Atomic, Ordering, Track};
use crate::clock::{Clock, StdClock};
use crate::monitor::{Monitor, StdMonitor};
use crate::wake::{EventFd, Wake};
use core::fmt;
use std::io;
use std::time::{Duration, Instant};

/// A family of atomics, tracking cells, locks, a wake primitive, a clock, threads and a bounded
/// backoff, for protocol code to run on. Protocol types are generic over it, with
/// [`StdBackend`] as the default; the model backends (`Loom`,
/// [`Shuttle`](crate::Shuttle)) run the very same code on a model checker.
pub trait Backend: fmt::Debug + Send + Sync + Sized + 'static {
    /// 32-bit atomic.
    type AtomicU32: Atomic<u32>;
    /// 64-bit atomic.
    type AtomicU64: Atomic<u64>;
    /// Access tracking for plain shared memory (see [`Track`]).
    type Track: Track;
    /// Mutex and condition variable around a value.
    type Monitor<T: Send + 'static>: Monitor<T>;
    /// The wake primitive.
    type Wake: Wake;
    /// The time source of deadlines and timed waits.
    type Clock: Clock;
    /// A started thread, to join.
    type Thread: Send + 'static;
    /// A point in time after which a bounded wait ([`Backend::backoff`]) gives up.
    type Deadline;
    /// A memory fence.
    fn fence(order: Ordering);
    /// Lets another thread run.
    fn yield_now();
    /// The deadline `micros` microseconds from now.
    fn deadline_after(micros: u64) -> Self::Deadline;
    /// One step of a bounded wait (spin, then short sleeps on std; a yield in a model). Returns
    /// `false` once the deadline has passed: the caller stops waiting.
    fn backoff(step: u32, deadline: &Self::Deadline) -> bool;
    /// Starts a thread named `name` running `body`.
    fn spawn<F: FnOnce() + Send + 'static>(name: &str, body: F) -> io::Result<Self::Thread>;
    /// Waits for the thread to end (a panic in it is ignored: callers record their own end).
    fn join(thread: Self::Thread);
}

/// The longest single sleep of [`StdBackend`]'s backoff.
const MAX_SLEEP: Duration = Duration::from_millis(1);

/// The production backend: `core::sync::atomic`, no tracking, std locks and threads, an eventfd,
/// `Instant::now()`, a time-based backoff.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdBackend;

impl Backend for StdBackend {
    type AtomicU32 = core::sync::atomic::AtomicU32;
    type AtomicU64 = core::sync::atomic::AtomicU64;
    type Track = ();
    type Monitor<T: Send + 'static> = StdMonitor<T>;
    type Wake = EventFd;
    type Clock = StdClock;
    type Thread = std::thread::JoinHandle<()>;
    type Deadline = Instant;

    #[inline(always)]
    fn fence(order: Ordering) {
        core::sync::atomic::fence(order)
    }

    fn yield_now() {
        std::thread::yield_now()
    }

    fn deadline_after(micros: u64) -> Instant {
        Instant::now() + Duration::from_micros(micros)
    }

    fn backoff(step: u32, deadline: &Instant) -> bool {
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
        std::thread::sleep(Duration::from_micros(20 << doublings).min(MAX_SLEEP));
        Instant::now() < *deadline
    }

    fn spawn<F: FnOnce() + Send + 'static>(name: &str, body: F) -> io::Result<Self::Thread> {
        std::thread::Builder::new().name(name.into()).spawn(body)
    }

    fn join(thread: Self::Thread) {
        let _ = thread.join();
    }
}
