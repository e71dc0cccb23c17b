//! The agent: the library loaded into the traced process. It exports the
//! `-finstrument-functions` hooks, registers each thread lazily in the tracer's shared region and
//! writes every call and return into that thread's lanes.
//!
//! Not built yet: this crate is a placeholder in the workspace layout and exports nothing.
