//! The shuttle backend ([`Shuttle`]): shuttle's atomics, locks and threads and the virtual clock,
//! for randomized simulations of whole pipelines (shuttle tracks no plain memory).

crate::model::checker_backend!(
    /// shuttle's primitives: for randomized schedules of larger systems.
    Shuttle,
    shuttle,
    track = ()
);
