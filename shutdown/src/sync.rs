//! The only place that names atomics, locks and the wake primitive.
//!
//! A normal build uses `std` and a real eventfd. Under `cfg(all(test, feature = "loom"))` the atomics,
//! `Mutex` and `Arc` come from loom, and the eventfd is modelled by a counter behind a loom
//! `Mutex` + `Condvar` (the lock stands for the kernel's own atomicity of `read`/`write` on the fd).

#[cfg(all(test, feature = "loom"))]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8},
    Arc, Mutex,
};
#[cfg(not(all(test, feature = "loom")))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8},
    Arc, Mutex,
};

/// Process-wide statics read by the signal handler: always `std` (a loom atomic cannot live in a
/// `static` nor be touched from a real signal handler). The signal module is not built under loom.
#[cfg(not(all(test, feature = "loom")))]
pub(crate) use std::sync::atomic::{
    AtomicPtr as StaticAtomicPtr, AtomicUsize as StaticAtomicUsize,
};

pub(crate) use std::sync::atomic::Ordering;

#[cfg(not(all(test, feature = "loom")))]
pub(crate) use eventfd::Wake;
#[cfg(all(test, feature = "loom"))]
pub(crate) use model::Wake;

#[cfg(not(all(test, feature = "loom")))]
mod eventfd {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::time::{Duration, Instant};

    /// A non-blocking, close-on-exec eventfd: `notify` makes it readable, `drain` consumes every
    /// pending notification, `wait` blocks in `poll` until it is readable.
    #[derive(Debug)]
    pub(crate) struct Wake {
        fd: OwnedFd,
    }

    impl Wake {
        pub(crate) fn new() -> io::Result<Self> {
            // SAFETY: eventfd takes no pointers; the result is checked before use.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok(Self { fd })
        }

        /// Async-signal-safe: one `write(2)` of 8 bytes, no allocation, no lock. A full counter
        /// (`EAGAIN`) means the fd is already readable, which is all a waiter needs.
        #[inline]
        pub(crate) fn notify(&self) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live local to an fd this struct owns; the result is
            // ignored on purpose (EAGAIN = already readable; nothing else can fail here).
            unsafe {
                libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
            }
        }

        /// Consumes every pending notification; returns how many there were.
        pub(crate) fn drain(&self) -> io::Result<u64> {
            let mut count: u64 = 0;
            // SAFETY: reads at most 8 bytes into a live local owned by this frame.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
            if n == 8 {
                return Ok(count);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            }
        }

        /// Blocks until the fd is readable (`true`) or `timeout` passes (`false`).
        pub(crate) fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
            let deadline = timeout.map(|t| Instant::now() + t);
            loop {
                let ms: libc::c_int = match deadline {
                    None => -1,
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        // Round up so a sub-millisecond remainder still sleeps instead of spinning.
                        let ms = left.as_micros().div_ceil(1000);
                        ms.min(libc::c_int::MAX as u128) as libc::c_int
                    }
                };
                let mut pfd = libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd on the stack, count 1.
                let n = unsafe { libc::poll(&mut pfd, 1, ms) };
                if n > 0 {
                    return Ok(true);
                }
                if n == 0 {
                    if ms == 0 {
                        return Ok(false);
                    }
                    continue; // recompute: poll may wake a little early
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
                // poll is never restarted by SA_RESTART: retry with the time left.
            }
        }

        pub(crate) fn raw_fd(&self) -> RawFd {
            self.fd.as_raw_fd()
        }
    }
}

#[cfg(all(test, feature = "loom"))]
mod model {
    use loom::sync::{Condvar, Mutex};
    use std::io;
    use std::os::fd::RawFd;
    use std::time::Duration;

    /// The eventfd's counter, as loom sees it.
    #[derive(Debug)]
    pub(crate) struct Wake {
        count: Mutex<u64>,
        readable: Condvar,
    }

    impl Wake {
        pub(crate) fn new() -> io::Result<Self> {
            Ok(Self {
                count: Mutex::new(0),
                readable: Condvar::new(),
            })
        }

        pub(crate) fn notify(&self) {
            *self.count.lock().unwrap() += 1;
            self.readable.notify_all();
        }

        pub(crate) fn drain(&self) -> io::Result<u64> {
            Ok(std::mem::take(&mut *self.count.lock().unwrap()))
        }

        /// loom never times out a wait: models only call this with `None`.
        pub(crate) fn wait(&self, _timeout: Option<Duration>) -> io::Result<bool> {
            let mut count = self.count.lock().unwrap();
            while *count == 0 {
                count = self.readable.wait(count).unwrap();
            }
            Ok(true)
        }

        pub(crate) fn raw_fd(&self) -> RawFd {
            -1
        }
    }
}
