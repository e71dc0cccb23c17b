//! SIGINT/SIGTERM handlers: installed with `sigaction` and `SA_RESTART`, each blocking the other
//! while it runs, restored to the originals when the [`SignalGuard`] is restored or dropped.
//!
//! The handler saves `errno`, bumps an in-handler counter, loads the installed [`Shutdown`]'s state
//! and runs [`Shutdown::notify_signal`]'s body (atomics plus one non-blocking eventfd write), then
//! restores `errno`. It allocates nothing and takes no lock. Restoring waits until no handler is in
//! flight before releasing the state, so a handler never touches freed memory.

use crate::request::{Shared, Shutdown};
use crate::StdBackend;
// Process-wide statics read by the signal handler: always std (a model's atomic cannot live in a
// `static` nor be touched from a real signal handler).
use crate::Error;
use std::io;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicPtr as StaticAtomicPtr, AtomicUsize as StaticAtomicUsize, Ordering};
use std::sync::Arc;

/// The only state a real handler can reach: the production backend's.
type StdShared = Shared<StdBackend>;

/// The state the handler reports to: null when no guard is installed. Holds one `Arc` count.
static INSTALLED: StaticAtomicPtr<StdShared> = StaticAtomicPtr::new(ptr::null_mut());
/// Handlers currently running (any thread).
static IN_HANDLER: StaticAtomicUsize = StaticAtomicUsize::new(0);

/// The two signals that request a shutdown.
pub const SHUTDOWN_SIGNALS: [i32; 2] = [libc::SIGINT, libc::SIGTERM];

extern "C" fn handle_signal(
    signo: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's lifetime.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: `errno` is a valid pointer to this thread's errno (see above).
    let saved = unsafe { *errno };
    // SeqCst (this increment, the load below, the swap and the load in `restore`): a Dekker pair;
    // either `restore` sees this handler in flight, or this handler sees the pointer already null.
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    let shared = INSTALLED.load(Ordering::SeqCst);
    if !shared.is_null() {
        // SAFETY: non-null means a guard installed it from `Arc::into_raw`; `restore` nulls it and
        // then waits for IN_HANDLER to reach 0 before dropping that count, so it is alive here.
        unsafe { (*shared).on_signal_from(signo, sender(signo, info), monotonic_ns()) };
    }
    // Release: pairs with the SeqCst load in `restore`'s wait (our accesses end before it frees).
    IN_HANDLER.fetch_sub(1, Ordering::Release);
    // SAFETY: as above; restores the interrupted code's errno (the eventfd write may set it).
    unsafe { *errno = saved };
}

/// Who sent a signal, as one non-zero word: the signal, its `si_code` (a terminal's `SI_KERNEL`, a
/// `kill`'s `SI_USER`...) and the sending pid. Two deliveries with the same word close together
/// are one gesture (`timeout` signals its child, then the child's whole group).
fn sender(signo: libc::c_int, info: *const libc::siginfo_t) -> u64 {
    if info.is_null() {
        return 0;
    }
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; `si_pid` is meaningful
    // for the codes user space sends, and zero (or the kernel's) otherwise, which is still a key.
    let (code, pid) = unsafe { ((*info).si_code, (*info).si_pid()) };
    (u64::from(signo as u8) << 56)
        | (u64::from(code as u32 & 0xff_ffff) << 32)
        | u64::from(pid as u32)
}

/// `CLOCK_MONOTONIC` in nanoseconds (async-signal-safe).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; clock_gettime is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// The installed handlers. Dropping it restores the original ones (errors are then ignored; call
/// [`SignalGuard::restore`] to see them).
#[derive(Debug)]
pub struct SignalGuard {
    shared: *const StdShared,
    originals: [libc::sigaction; 2],
    restored: bool,
}

// SAFETY: the raw pointer is an `Arc` count on a `Sync` state; the guard may be dropped anywhere.
unsafe impl Send for SignalGuard {}

fn sigaction(signo: i32, new: Option<&libc::sigaction>) -> io::Result<libc::sigaction> {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    let new_ptr = new.map_or(ptr::null(), |n| n as *const libc::sigaction);
    // SAFETY: `new_ptr` is null or points to a live sigaction; `old` is writable and sized for one.
    if unsafe { libc::sigaction(signo, new_ptr, old.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sigaction succeeded and filled `old` (it was zeroed anyway).
    Ok(unsafe { old.assume_init() })
}

/// The action our handler is installed with (exposed for the tests that check it).
fn our_action() -> libc::sigaction {
    // SAFETY: sigaction is plain old data; all-zero is a valid starting value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler_address();
    sa.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
    // SAFETY: `sa.sa_mask` is a valid sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        for s in SHUTDOWN_SIGNALS {
            libc::sigaddset(&mut sa.sa_mask, s);
        }
    }
    sa
}

/// The handler's address as `sigaction` reports it, to recognise our installation.
pub fn handler_address() -> usize {
    handle_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize
}

fn name(signo: i32) -> &'static str {
    if signo == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}

impl Shutdown<StdBackend> {
    /// Installs the SIGINT and SIGTERM handlers for this shutdown (one installation per process at
    /// a time). Any number of these signals then start exactly one shutdown; one arriving during
    /// [`Shutdown::execute`] forces it.
    pub fn install_signals(&self) -> Result<SignalGuard, Error> {
        let raw = Arc::into_raw(self.shared.clone());
        // SeqCst: publishes the state to the handler's SeqCst load (its Release half pairs with
        // that load) and orders this installation with the swap in `release_state`.
        if INSTALLED
            .compare_exchange(
                ptr::null_mut(),
                raw.cast_mut(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_err()
        {
            // SAFETY: `raw` came from Arc::into_raw just above and was not published.
            drop(unsafe { Arc::from_raw(raw) });
            return Err(Error::AlreadyInstalled);
        }
        let mut guard = SignalGuard {
            shared: raw,
            originals: [our_action(); 2],
            restored: true,
        };
        let action = our_action();
        for (i, signo) in SHUTDOWN_SIGNALS.into_iter().enumerate() {
            match sigaction(signo, Some(&action)) {
                Ok(old) => guard.originals[i] = old,
                Err(source) => {
                    // Put back what was already replaced, then release the state.
                    for (j, s) in SHUTDOWN_SIGNALS.into_iter().enumerate().take(i) {
                        let _ = sigaction(s, Some(&guard.originals[j]));
                    }
                    guard.release_state();
                    return Err(Error::Install {
                        signal: name(signo),
                        source,
                    });
                }
            }
        }
        guard.restored = false;
        Ok(guard)
    }
}

impl SignalGuard {
    /// Puts the original handlers back, then waits for handlers in flight and releases the state.
    pub fn restore(mut self) -> Result<(), Error> {
        self.restore_inner()
    }

    fn restore_inner(&mut self) -> Result<(), Error> {
        if self.restored {
            return Ok(());
        }
        self.restored = true;
        let mut first_err = None;
        for (i, signo) in SHUTDOWN_SIGNALS.into_iter().enumerate() {
            if let Err(source) = sigaction(signo, Some(&self.originals[i])) {
                first_err.get_or_insert(Error::Restore {
                    signal: name(signo),
                    source,
                });
            }
        }
        self.release_state();
        first_err.map_or(Ok(()), Err)
    }

    fn release_state(&mut self) {
        // SeqCst: the other half of the Dekker pair with the handler (see `handle_signal`).
        INSTALLED.swap(ptr::null_mut(), Ordering::SeqCst);
        while IN_HANDLER.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        // SAFETY: `shared` came from Arc::into_raw in `install_signals`, is no longer reachable
        // by any handler (null published, none in flight) and is released exactly once here.
        drop(unsafe { Arc::from_raw(self.shared) });
        self.shared = ptr::null();
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        let _ = self.restore_inner();
    }
}

#[cfg(all(test, not(feature = "loom")))]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    /// The only unit test that installs handlers in the test process (others fork).
    #[test]
    fn shutdown__memory_usage__then_no_leaks() {
        let s = Shutdown::new().unwrap();
        for round in 0..1000 {
            let guard = s.install_signals().unwrap();
            assert_eq!(
                Arc::strong_count(&s.shared),
                2,
                "installation holds one count"
            );
            if round % 2 == 0 {
                guard.restore().unwrap();
            } else {
                drop(guard);
            }
            assert_eq!(Arc::strong_count(&s.shared), 1, "restore leaked the state");
            assert!(INSTALLED.load(Ordering::SeqCst).is_null());
        }
    }
}
