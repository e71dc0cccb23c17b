//! One family of synchronization primitives, selected by a type: std in production, a model
//! checker's in tests.
//!
//! This crate owns the primitives the tracer's protocol crates (`ring`, `registry`, `shutdown`,
//! `timer`) are written against: [`Atomic`] integers, [`Track`] cells for plain shared memory,
//! [`Monitor`]s (a mutex and its condition variable), a [`Clock`], a [`Wake`] primitive, threads
//! and a bounded backoff, named together by a [`Backend`]. Protocol code is generic over
//! `B: Backend`, with [`StdBackend`] (std atomics and locks, an eventfd, `Instant::now()`) as the
//! default, so production code pays nothing. The same code runs unchanged on `Loom` (feature
//! `loom`: exhaustive models, with plain memory tracked) and [`Shuttle`] (feature `shuttle`:
//! randomized schedules). Model checkers have no time, so both model backends use one
//! [`Virtual`] clock and one [`ModelMonitor`] whose timed wait always ends, at its deadline in
//! virtual time or on a notification. Contract: a protocol that passes its models on `Loom`
//! runs the identical instructions on [`StdBackend`], only with real atomics.
//!
//! ```
//! use modelsync::{Atomic, Backend, Monitor, Ordering, StdBackend};
//!
//! /// A counter any backend can run.
//! struct Counter<B: Backend = StdBackend> {
//!     hits: B::AtomicU64,
//!     log: B::Monitor<Vec<u64>>,
//! }
//!
//! impl<B: Backend> Counter<B> {
//!     fn hit(&self) {
//!         // Relaxed: a statistic, read after the threads are joined.
//!         let n = self.hits.fetch_add(1, Ordering::Relaxed);
//!         self.log.lock().push(n);
//!         self.log.notify_all();
//!     }
//! }
//!
//! let c: Counter = Counter { hits: Atomic::new(0), log: Monitor::new(Vec::new()) };
//! c.hit();
//! c.hit();
//! assert_eq!(*c.log.lock(), [0, 1]);
//! ```

#![deny(missing_docs)]

mod atomic;
mod backend;
mod clock;
#[cfg(any(feature = "loom", feature = "shuttle"))]
mod model;
mod monitor;
mod wake;

pub use atomic::{Atomic, Ordering, Track};
pub use backend::{Backend, StdBackend};
pub use clock::{virtual_time, Clock, StdClock, Virtual, YieldNow};
pub use monitor::{ModelMonitor, Monitor, StdMonitor};
pub use wake::{EventFd, ModelWake, Wake};

#[cfg(feature = "loom")]
pub mod loom;
#[cfg(feature = "loom")]
pub use self::loom::Loom;

#[cfg(feature = "shuttle")]
pub mod shuttle;
#[cfg(feature = "shuttle")]
pub use self::shuttle::Shuttle;
