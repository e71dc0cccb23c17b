//! The shutdown request: who asked first, later requests, escalation, and the wake-up.
//!
//! One 64-bit word holds the winning [`Reason`] (0 = still running); the first compare-exchange wins
//! and every later request is counted and ignored. A signal that arrives once the manager has begun
//! the phases escalates to a *forced* shutdown instead. Every request and escalation also writes the
//! wake fd; a waiter drains the fd *first* and reads the word *second*, so a request can never slip
//! between the two and leave it asleep.

use crate::state::State;
use crate::Error;
use modelsync::{Atomic, Backend, Clock, Monitor, Ordering, StdBackend, Wake};
use std::fmt;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

/// Why the tracer shuts down. The first request wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// SIGINT or SIGTERM (the signal number).
    Signal(i32),
    /// The `--duration` timer expired.
    Timer,
    /// The target exited by itself with this exit code.
    TargetExited(i32),
    /// The target was killed by this signal.
    TargetCrashed(i32),
    /// The owner asked (for example the attach target vanished, or a test).
    Manual,
    /// A fault in the tracer itself (disk full, drain failure...).
    Error(String),
}

const KIND_SIGNAL: u64 = 1;
const KIND_TIMER: u64 = 2;
const KIND_EXITED: u64 = 3;
const KIND_CRASHED: u64 = 4;
const KIND_MANUAL: u64 = 5;
const KIND_ERROR: u64 = 6;

impl Reason {
    /// Packs kind (low byte) and value (next 32 bits) into a non-zero word; errors keep their text aside.
    fn pack(&self) -> u64 {
        let (kind, value) = match self {
            Reason::Signal(s) => (KIND_SIGNAL, *s),
            Reason::Timer => (KIND_TIMER, 0),
            Reason::TargetExited(c) => (KIND_EXITED, *c),
            Reason::TargetCrashed(s) => (KIND_CRASHED, *s),
            Reason::Manual => (KIND_MANUAL, 0),
            Reason::Error(_) => (KIND_ERROR, 0),
        };
        kind | (u64::from(value as u32) << 8)
    }

    fn unpack(word: u64, error: impl FnOnce() -> String) -> Option<Reason> {
        let value = (word >> 8) as u32 as i32;
        Some(match word & 0xff {
            0 => return None,
            KIND_SIGNAL => Reason::Signal(value),
            KIND_TIMER => Reason::Timer,
            KIND_EXITED => Reason::TargetExited(value),
            KIND_CRASHED => Reason::TargetCrashed(value),
            KIND_MANUAL => Reason::Manual,
            _ => Reason::Error(error()),
        })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Signal(s) => write!(f, "{} received", signal_name(*s)),
            Reason::Timer => f.write_str("duration elapsed"),
            Reason::TargetExited(c) => write!(f, "target exited with code {c}"),
            Reason::TargetCrashed(s) => write!(f, "target killed by {}", signal_name(*s)),
            Reason::Manual => f.write_str("requested by the tracer"),
            Reason::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// The conventional name of a signal number (`SIGINT`), or `signal N` for the uncommon ones.
pub fn signal_name(signo: i32) -> String {
    let name = match signo {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signo}"),
    };
    name.to_string()
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This request started the shutdown.
    Accepted,
    /// A shutdown was already requested; this one was counted and ignored.
    Ignored,
    /// A signal during the shutdown: the shutdown is now forced (fast exit).
    Escalated,
}

/// How close a signal must follow the first one from the same sender to be the same request.
pub(crate) const DUPLICATE_WINDOW_NS: u64 = 100_000_000;

/// State shared by the handle's clones, the signal handler and the manager. Every flag and counter
/// is one atomic word of the backend.
pub(crate) struct Shared<B: Backend> {
    /// The winning reason, packed; 0 while running.
    request: B::AtomicU64,
    /// 1 once the manager has begun the phases: from then on a signal escalates.
    started: B::AtomicU64,
    /// 1 once a second signal arrived during the shutdown (or the owner forced it).
    force: B::AtomicU64,
    /// Signals seen by the handler, first included.
    signals: B::AtomicU64,
    /// Requests that lost to the first one (signals coalesced before the phases began included).
    ignored: B::AtomicU64,
    /// Who sent the first signal ([`Shared::on_signal_from`]'s `sender`; 0 unknown).
    first_sender: B::AtomicU64,
    /// When the first signal arrived (monotonic nanoseconds).
    first_at: B::AtomicU64,
    /// Current [`State`] as its discriminant (informational, for observers).
    state: B::AtomicU64,
    /// Text of a [`Reason::Error`]; written under the lock that also covers the winning exchange.
    error: B::Monitor<Option<String>>,
    pub(crate) wake: B::Wake,
}

impl<B: Backend> fmt::Debug for Shared<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("request", &self.request)
            .field("started", &self.started)
            .field("force", &self.force)
            .field("signals", &self.signals)
            .field("ignored", &self.ignored)
            .field("state", &self.state)
            .field("wake", &self.wake)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Shared<B> {
    fn new() -> Result<Self, Error> {
        Ok(Self {
            request: B::AtomicU64::new(0),
            started: B::AtomicU64::new(0),
            force: B::AtomicU64::new(0),
            signals: B::AtomicU64::new(0),
            ignored: B::AtomicU64::new(0),
            first_sender: B::AtomicU64::new(0),
            first_at: B::AtomicU64::new(0),
            state: B::AtomicU64::new(State::Running as u64),
            error: Monitor::new(None),
            wake: B::Wake::new().map_err(Error::WakeFd)?,
        })
    }

    /// Tries to become the first request. Async-signal-safe for every reason but `Error`.
    #[inline]
    fn try_claim(&self, word: u64) -> bool {
        // AcqRel: the Release half pairs with the Acquire load in `requested`; the Acquire half
        // (and the failure Acquire) makes the winner's word visible to the losers.
        self.request
            .compare_exchange(0, word, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The signal handler's whole job: atomics and one wake-up. No allocation, no lock (on
    /// [`StdBackend`]: the wake is one eventfd write).
    #[inline]
    pub(crate) fn on_signal(&self, signo: i32) -> Outcome {
        self.on_signal_from(signo, 0, 0)
    }

    /// [`Shared::on_signal`] for a signal from `sender` (0: unknown) at `now_ns` (monotonic): the
    /// same sender's same signal again within [`DUPLICATE_WINDOW_NS`] of the first is the same
    /// request delivered twice (`timeout` and `kill` signal the child, then its process group),
    /// not a second one, so it does not force the shutdown.
    #[inline]
    pub(crate) fn on_signal_from(&self, signo: i32, sender: u64, now_ns: u64) -> Outcome {
        self.signals.fetch_add(1, Ordering::Relaxed);
        // Relaxed: only compared by later handler runs; a race between two deliveries at the
        // same instant at worst escalates, as without the check.
        let duplicate = sender != 0
            && self.first_sender.load(Ordering::Relaxed) == sender
            && now_ns.saturating_sub(self.first_at.load(Ordering::Relaxed)) < DUPLICATE_WINDOW_NS;
        let outcome = if self.try_claim(Reason::Signal(signo).pack()) {
            self.first_at.store(now_ns, Ordering::Relaxed);
            self.first_sender.store(sender, Ordering::Relaxed);
            Outcome::Accepted
        } else if duplicate {
            self.ignored.fetch_add(1, Ordering::Relaxed);
            Outcome::Ignored
        } else if self.started.load(Ordering::Acquire) != 0 {
            // Acquire: pairs with the Release half of the swap in `begin`.
            // Release: pairs with the Acquire load in `force_requested`.
            self.force.store(1, Ordering::Release);
            Outcome::Escalated
        } else {
            self.ignored.fetch_add(1, Ordering::Relaxed);
            Outcome::Ignored
        };
        self.wake.notify();
        outcome
    }

    fn request(&self, reason: Reason) -> Outcome {
        let claimed = match &reason {
            Reason::Error(text) => {
                // The lock is held across the exchange so a reader that sees KIND_ERROR and then
                // takes the lock always finds the text.
                let mut slot = self.error.lock();
                let claimed = self.try_claim(reason.pack());
                if claimed {
                    *slot = Some(text.clone());
                }
                claimed
            }
            _ => self.try_claim(reason.pack()),
        };
        if claimed {
            self.wake.notify();
            Outcome::Accepted
        } else {
            self.ignored.fetch_add(1, Ordering::Relaxed);
            Outcome::Ignored
        }
    }

    /// Requests `reason` without counting a loss as an ignored request (the manager's own default).
    pub(crate) fn claim_if_running(&self, reason: Reason) {
        if self.try_claim(reason.pack()) {
            self.wake.notify();
        }
    }

    fn requested(&self) -> Option<Reason> {
        // Acquire: pairs with the AcqRel exchange in `try_claim`.
        let word = self.request.load(Ordering::Acquire);
        Reason::unpack(word, || self.error.lock().clone().unwrap_or_default())
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<Option<Reason>, Error> {
        let deadline = timeout.map(|t| B::Clock::now() + t);
        loop {
            // Drain first, read second: a request made after the read has written the fd after our
            // drain, so the wait below returns at once.
            self.wake.drain().map_err(Error::Wait)?;
            if let Some(reason) = self.requested() {
                return Ok(Some(reason));
            }
            let left = deadline.map(|d| d.saturating_duration_since(B::Clock::now()));
            if left == Some(Duration::ZERO) {
                return Ok(None);
            }
            if !self.wake.wait(left).map_err(Error::Wait)? {
                return Ok(None);
            }
        }
    }

    /// Marks the phases as begun; `false` if they already had (exactly one shutdown runs).
    pub(crate) fn begin(&self) -> bool {
        // AcqRel: the Release half pairs with the Acquire load in `on_signal`, so a signal handled
        // after this point escalates; the Acquire half orders a losing caller after the winner.
        self.started.swap(1, Ordering::AcqRel) == 0
    }

    pub(crate) fn force_requested(&self) -> bool {
        // Acquire: pairs with the Release store in `on_signal` / `force`.
        self.force.load(Ordering::Acquire) != 0
    }

    fn force(&self) {
        // Release: pairs with the Acquire load in `force_requested`.
        self.force.store(1, Ordering::Release);
        self.wake.notify();
    }

    pub(crate) fn set_state(&self, state: State) {
        self.state.store(state as u64, Ordering::Relaxed);
    }
}

#[cfg(all(test, feature = "loom"))]
impl<B: Backend> Shared<B> {
    pub(crate) fn started_for_model(&self) -> bool {
        // Acquire: pairs with the AcqRel swap in `begin`.
        self.started.load(Ordering::Acquire) != 0
    }

    pub(crate) fn wait_wake_for_model(&self) {
        self.wake.wait(None).unwrap();
    }
}

/// A cloneable handle on one shutdown: request it, wait for it, install the signal handlers on it
/// ([`StdBackend`] only), run its phases ([`Shutdown::execute`]).
///
/// Generic over the [`Backend`] its atomics, locks, wake-up and clock come from: production uses
/// [`StdBackend`] (the default, made by [`Shutdown::new`]); a model checker runs the same code on a
/// model backend such as `modelsync::Loom` ([`Shutdown::on_backend`]).
pub struct Shutdown<B: Backend = StdBackend> {
    pub(crate) shared: Arc<Shared<B>>,
}

impl<B: Backend> Clone for Shutdown<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<B: Backend> fmt::Debug for Shutdown<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("shared", &self.shared)
            .finish()
    }
}

impl Shutdown {
    /// A fresh shutdown in state [`State::Running`], with its own eventfd.
    pub fn new() -> Result<Self, Error> {
        Self::on_backend()
    }
}

impl<B: Backend> Shutdown<B> {
    /// A fresh shutdown in state [`State::Running`] on backend `B` ([`Shutdown::new`] is this on
    /// [`StdBackend`]).
    pub fn on_backend() -> Result<Self, Error> {
        Ok(Self {
            shared: Arc::new(Shared::new()?),
        })
    }

    /// Requests the shutdown. The first request wins; later ones are counted and ignored (a timer
    /// expiring during the shutdown, the target exiting after a Ctrl-C...).
    pub fn request(&self, reason: Reason) -> Outcome {
        self.shared.request(reason)
    }

    /// Does exactly what the signal handler does for `signo`: the first request wins, a signal
    /// during the phases escalates to a forced shutdown, every call wakes the waiter.
    pub fn notify_signal(&self, signo: i32) -> Outcome {
        self.shared.on_signal(signo)
    }

    /// The winning reason, if a shutdown was requested.
    pub fn requested(&self) -> Option<Reason> {
        self.shared.requested()
    }

    /// Blocks until a shutdown is requested (`Some(reason)`) or `timeout` passes (`None`); `None`
    /// as timeout waits for ever. Spurious wake-ups are absorbed here.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Option<Reason>, Error> {
        self.shared.wait(timeout)
    }

    /// Consumes pending wake-ups after `poll` reported [`Shutdown::wake_fd`] readable; then read
    /// [`Shutdown::requested`] (in that order, or a wake-up can be lost).
    pub fn drain_wake(&self) -> Result<(), Error> {
        self.shared.wake.drain().map(drop).map_err(Error::Wait)
    }

    /// The eventfd that becomes readable on every request, signal and escalation: poll it together
    /// with other fds (a child's pidfd). Valid as long as a clone of this handle lives. -1 on a
    /// model backend (it has no file descriptor).
    pub fn wake_fd(&self) -> RawFd {
        self.shared.wake.raw_fd()
    }

    /// Forces the shutdown (as a second signal would): remaining graceful phases are skipped.
    pub fn force(&self) {
        self.shared.force()
    }

    /// `true` once a second signal arrived during the shutdown (or [`Shutdown::force`] was called).
    /// Phase implementations poll this to cut their work short.
    pub fn force_requested(&self) -> bool {
        self.shared.force_requested()
    }

    /// Where the shutdown is now.
    pub fn state(&self) -> State {
        State::from_u8(self.shared.state.load(Ordering::Relaxed) as u8)
    }

    /// Signals seen by the handler (the first one included).
    pub fn signals_received(&self) -> u32 {
        self.shared.signals.load(Ordering::Relaxed) as u32
    }

    /// Requests that lost to the first one.
    pub fn ignored_requests(&self) -> u32 {
        self.shared.ignored.load(Ordering::Relaxed) as u32
    }
}

#[cfg(all(test, not(feature = "loom")))]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_mgr__create__then_initialized() {
        let s = Shutdown::new().unwrap();
        assert_eq!(s.requested(), None);
        assert_eq!(s.state(), State::Running);
        assert!(!s.force_requested());
        assert_eq!((s.signals_received(), s.ignored_requests()), (0, 0));
        assert!(s.wake_fd() >= 0);
    }

    #[test]
    fn shutdown_mgr__trigger__then_flag_set_atomic() {
        let s = Shutdown::new().unwrap();
        assert_eq!(s.request(Reason::TargetExited(-3)), Outcome::Accepted);
        assert_eq!(s.requested(), Some(Reason::TargetExited(-3)));
        assert_eq!(s.request(Reason::Timer), Outcome::Ignored);
        assert_eq!(s.requested(), Some(Reason::TargetExited(-3)));
        assert_eq!(s.ignored_requests(), 1);
    }

    fn readable(fd: RawFd) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack, zero timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    #[test]
    fn shutdown_mgr__wakeup__then_fd_readable() {
        let s = Shutdown::new().unwrap();
        assert!(!readable(s.wake_fd()), "readable before any request");
        s.request(Reason::Manual);
        assert!(readable(s.wake_fd()), "not readable after a request");
        s.drain_wake().unwrap();
        assert!(!readable(s.wake_fd()), "still readable after drain");
    }

    #[test]
    fn shutdown_mgr__error_reason__then_text_kept() {
        let s = Shutdown::new().unwrap();
        s.request(Reason::Error("disk full".into()));
        s.request(Reason::Error("second".into()));
        assert_eq!(s.requested(), Some(Reason::Error("disk full".into())));
    }

    #[test]
    fn shutdown_mgr__wait_timeout__then_none() {
        let s = Shutdown::new().unwrap();
        assert_eq!(s.wait(Some(Duration::from_millis(1))).unwrap(), None);
        assert_eq!(s.wait(Some(Duration::ZERO)).unwrap(), None);
    }

    #[test]
    fn shutdown_mgr__request_from_thread__then_waiter_wakes() {
        let s = Shutdown::new().unwrap();
        let other = s.clone();
        let t = std::thread::spawn(move || other.notify_signal(libc::SIGTERM));
        assert_eq!(s.wait(None).unwrap(), Some(Reason::Signal(libc::SIGTERM)));
        assert_eq!(t.join().unwrap(), Outcome::Accepted);
    }

    #[test]
    fn shutdown_mgr__signal_before_phases__then_coalesced_not_forced() {
        let s = Shutdown::new().unwrap();
        assert_eq!(s.request(Reason::Timer), Outcome::Accepted);
        assert_eq!(s.notify_signal(libc::SIGINT), Outcome::Ignored);
        assert!(!s.force_requested());
        assert!(s.shared.begin());
        assert!(!s.shared.begin(), "phases began twice");
        assert_eq!(s.notify_signal(libc::SIGINT), Outcome::Escalated);
        assert!(s.force_requested());
        assert_eq!(s.requested(), Some(Reason::Timer));
        assert_eq!(s.signals_received(), 2);
    }

    #[test]
    fn shutdown_mgr__same_sender_twice_during_phases__then_one_request_not_forced() {
        let s = Shutdown::new().unwrap();
        let sender = 0x0200_0000_0000_1234;
        assert_eq!(
            s.shared.on_signal_from(libc::SIGINT, sender, 1_000),
            Outcome::Accepted
        );
        assert!(s.shared.begin());
        // `timeout` signals the tracer, then its group: the same request twice.
        assert_eq!(
            s.shared.on_signal_from(libc::SIGINT, sender, 2_000),
            Outcome::Ignored
        );
        assert!(!s.force_requested());
        // Another sender, or the same one much later, is a second request: forced.
        assert_eq!(
            s.shared
                .on_signal_from(libc::SIGINT, sender, 1_000 + DUPLICATE_WINDOW_NS),
            Outcome::Escalated
        );
        assert!(s.force_requested());
    }

    #[test]
    fn reason__pack_unpack__then_roundtrip() {
        for r in [
            Reason::Signal(libc::SIGINT),
            Reason::Timer,
            Reason::TargetExited(255),
            Reason::TargetExited(-1),
            Reason::TargetCrashed(libc::SIGSEGV),
            Reason::Manual,
        ] {
            assert_eq!(Reason::unpack(r.pack(), String::new), Some(r));
        }
    }
}
