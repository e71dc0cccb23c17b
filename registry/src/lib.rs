//! The control block the tracer shares with the traced process: a versioned header, session flags,
//! the thread registry and each thread's lanes (pools of `ring` rings), with the per-thread counters
//! of the accounting invariant and the stop handshake.
//!
//! Not built yet: this crate is a placeholder in the workspace layout and exports nothing.
