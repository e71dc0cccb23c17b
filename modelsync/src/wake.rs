//! Wake-ups a waiter blocks on: the trait, an eventfd, and the model's counter.

use crate::monitor::Monitor;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// The wake-up a waiter blocks on: readable after every request, signal and escalation.
pub trait Wake: fmt::Debug + Send + Sync + Sized + 'static {
    /// A new wake, not readable.
    fn new() -> io::Result<Self>;
    /// Makes it readable. Must be async-signal-safe on the backend whose signal handler calls it.
    fn notify(&self);
    /// Consumes every pending notification; returns how many there were.
    fn drain(&self) -> io::Result<u64>;
    /// Blocks until readable (`true`) or `timeout` passes (`false`); `None` waits for ever.
    fn wait(&self, timeout: Option<Duration>) -> io::Result<bool>;
    /// The file descriptor to `poll`, or -1 when there is none (a model).
    fn raw_fd(&self) -> RawFd;
}

/// A non-blocking, close-on-exec eventfd: `notify` makes it readable, `drain` consumes every
/// pending notification, `wait` blocks in `poll` until it is readable.
#[derive(Debug)]
pub struct EventFd {
    fd: std::os::fd::OwnedFd,
}

impl Wake for EventFd {
    fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Async-signal-safe: one `write(2)` of 8 bytes, no allocation, no lock. A full counter
    /// (`EAGAIN`) means the fd is already readable, which is all a waiter needs.
    #[inline]
    fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an fd this struct owns; the result is
        // ignored on purpose (EAGAIN = already readable; nothing else can fail here).
        unsafe {
            libc::write(self.raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    fn drain(&self) -> io::Result<u64> {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local owned by this frame.
        let n = unsafe { libc::read(self.raw_fd(), (&mut count as *mut u64).cast(), 8) };
        if n == 8 {
            return Ok(count);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(err),
        }
    }

    fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
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
                fd: self.raw_fd(),
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

    fn raw_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }
}

/// The eventfd's counter as a model sees it: a count behind a [`Monitor`] (the lock stands for the
/// kernel's own atomicity of `read`/`write` on the fd). Every model backend uses it.
pub struct ModelWake<M> {
    count: M,
}

impl<M> fmt::Debug for ModelWake<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ModelWake")
    }
}

impl<M: Monitor<u64> + 'static> Wake for ModelWake<M> {
    fn new() -> io::Result<Self> {
        Ok(Self {
            count: Monitor::new(0),
        })
    }

    fn notify(&self) {
        *self.count.lock() += 1;
        self.count.notify_all();
    }

    fn drain(&self) -> io::Result<u64> {
        Ok(std::mem::take(&mut *self.count.lock()))
    }

    /// With a timeout, one timed wait of the backend's monitor (in a model, the virtual clock
    /// lets the timeout pass while other threads run).
    fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let mut count = self.count.lock();
        match timeout {
            None => {
                while *count == 0 {
                    count = self.count.wait(count);
                }
            }
            Some(t) => {
                if *count == 0 {
                    count = self.count.wait_timeout(count, t);
                }
            }
        }
        Ok(*count > 0)
    }

    fn raw_fd(&self) -> RawFd {
        -1
    }
}
