//! Benchmarks of the tracer's parts (criterion, under `benches/`) and end-to-end drivers.
//!
//! The library part holds only what several benchmarks share; the benchmarks themselves are the
//! `[[bench]]` targets of this package. Run them with `cargo bench -p benches`.
