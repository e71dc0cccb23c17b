//! The loom backend ([`Loom`]): loom's atomics, locks and threads, the virtual clock, and plain
//! memory tracked with loom cells, so a missing happens-before between a write and a read of it is
//! reported as a causality violation.

crate::model::checker_backend!(
    /// loom's primitives: for exhaustive models of a protocol's memory orderings.
    Loom,
    loom,
    track = Track
);

/// A loom cell standing for one tracked word of plain shared memory.
#[derive(Debug)]
pub struct Track(loom::cell::UnsafeCell<()>);

// SAFETY: the cell holds `()`: it carries no data, it only records accesses for the model checker,
// which is the point of sharing it between the model's threads.
unsafe impl Sync for Track {}
// SAFETY: as above.
unsafe impl Send for Track {}

impl crate::Track for Track {
    const ENABLED: bool = true;
    fn new() -> Self {
        Self(loom::cell::UnsafeCell::new(()))
    }
    fn write(&self) {
        self.0.with_mut(|_| ())
    }
    fn read(&self) {
        self.0.with(|_| ())
    }
}
