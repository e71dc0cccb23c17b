//! The only place naming locks and shared pointers: `std` normally, loom under
//! `cfg(all(test, feature = "loom"))`.

#[cfg(all(test, feature = "loom"))]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(all(test, feature = "loom")))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
