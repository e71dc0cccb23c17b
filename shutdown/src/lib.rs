//! Signal-driven shutdown: the SIGINT/SIGTERM handlers, the shutdown request and its wake-up, the
//! phase state machine that drives a [`Pipeline`], and the summary printed on stderr.
//!
//! Contract: any number of requests (signals, possibly concurrent, the duration timer, the target
//! exiting or crashing, the tracer itself) start exactly one shutdown, whose reason is the first
//! request; later requests are counted and ignored. A SIGINT/SIGTERM arriving once the phases have
//! begun forces the shutdown: the remaining graceful phases are skipped, syncing and cleanup still
//! run. The signal handler does only async-signal-safe work (atomics and one non-blocking eventfd
//! write, `errno` preserved) and the original handlers come back when the [`SignalGuard`] goes.
//! This crate knows nothing of rings or files: it drives them through [`Pipeline`].
//!
//! The request, wake-up and phase code is generic over a [`modelsync::Backend`] (atomics, locks,
//! the wake primitive, the clock): [`StdBackend`] is the default; a model checker runs the same
//! code on `modelsync::Loom` (the models here) or `modelsync::Shuttle` (the simulation in `sim`,
//! which calls [`Shutdown::notify_signal`], the handler's body, where a real signal would come).
//! The signal handler and [`Shutdown::install_signals`] exist on [`StdBackend`] only.
//!
//! ```
//! use shutdown::{Budgets, Error, PhaseContext, Pipeline, Reason, Shutdown, Statistics, Summary};
//! use std::time::Duration;
//!
//! struct Nothing;
//! impl Pipeline for Nothing {
//!     fn stop_acceptance(&mut self, _: &PhaseContext<'_>) -> Result<(), Error> { Ok(()) }
//!     fn close_registrations(&mut self, _: &PhaseContext<'_>) -> Result<(), Error> { Ok(()) }
//!     fn flush(&mut self, _: &PhaseContext<'_>) -> Result<(), Error> { Ok(()) }
//!     fn final_drain(&mut self, _: &PhaseContext<'_>) -> Result<(), Error> { Ok(()) }
//!     fn sync(&mut self, _: &PhaseContext<'_>) -> Result<(), Error> { Ok(()) }
//!     fn cleanup(&mut self, _: &PhaseContext<'_>) -> Result<(), Error> { Ok(()) }
//! }
//!
//! let shutdown = Shutdown::new()?;
//! let guard = shutdown.install_signals()?; // SIGINT/SIGTERM now request the shutdown
//! shutdown.request(Reason::Timer); // what the duration timer's callback does
//! assert_eq!(shutdown.wait(Some(Duration::from_secs(1)))?, Some(Reason::Timer));
//! let report = shutdown.execute(&mut Nothing, &Budgets::default())?;
//! guard.restore()?;
//! let text = Summary { report, stats: Statistics::default() }.render();
//! assert!(text.starts_with("tracer: shutdown complete: duration elapsed"));
//! # Ok::<(), shutdown::Error>(())
//! ```

#![deny(missing_docs)]

mod error;
mod phase;
mod request;
mod signal;
mod state;
mod summary;

#[cfg(all(test, feature = "loom"))]
mod models;

pub use error::{error_chain, Error};
pub use modelsync::{Backend, StdBackend};
pub use phase::{
    Budgets, ForceCause, Phase, PhaseContext, PhaseReport, PhaseStatus, Pipeline, Report, State,
};
pub use request::{signal_name, Outcome, Reason, Shutdown};
pub use signal::{handler_address, SignalGuard, SHUTDOWN_SIGNALS};
pub use summary::{Statistics, Summary, TargetFate};
