//! The drain: the tracer-side thread that empties every thread's rings into ATF trace files, the
//! final drain after the stop handshake, fsync of files and directories, and the statistics the
//! shutdown summary prints.
//!
//! Not built yet: this crate is a placeholder in the workspace layout and exports nothing.
