//! The simulation harness: the whole pipeline (producers, drain, timer, signal injector, shutdown
//! manager) under shuttle's randomized schedulers, with a file sink that injects faults, checking the
//! accounting invariant and "exactly one shutdown" on every schedule.
//!
//! Not built yet: this crate is a placeholder in the workspace layout and exports nothing.
