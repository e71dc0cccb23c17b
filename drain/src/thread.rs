//! The drain thread: passes while there is work, an adaptive sleep when idle, an immediate wake on
//! [`Waker::kick`], and a clean hand-back of the [`Drain`] for the final drain.
//!
//! The idle sleep grows with the time since a pass last found events ([`idle_sleep`]), not with
//! the count of empty passes: a producer that pauses for a moment (descheduled on a busy machine,
//! between two bursts) finds the drain polling every [`MIN_IDLE`] when it resumes, while a target
//! that has been quiet for tens of milliseconds costs the tracer at most ~500 wake-ups a second.

use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Release};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Drain, DrainError, Waker};

/// The shortest idle sleep: short enough that a busy producer's rings never fill while we sleep
/// (a lane of 4 rings of 64 KiB holds 8192 events, ~140 µs of a thread calling non-stop).
const MIN_IDLE: Duration = Duration::from_micros(50);
/// The longest idle sleep: an idle target costs the tracer ~500 wake-ups a second at most.
const MAX_IDLE: Duration = Duration::from_millis(2);
/// The idle sleep is the time since events were last found divided by this (within
/// [`MIN_IDLE`]..=[`MAX_IDLE`]): [`MAX_IDLE`] after 32 ms without events.
const IDLE_DIVISOR: u32 = 16;

/// How long to sleep after an empty pass, `quiet` after the last pass that found events.
fn idle_sleep(quiet: Duration) -> Duration {
    (quiet / IDLE_DIVISOR).clamp(MIN_IDLE, MAX_IDLE)
}

/// A running drain thread. [`DrainThread::stop`] hands the [`Drain`] back for the final drain.
pub struct DrainThread {
    handle: Option<JoinHandle<Drain<'static>>>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    error: Arc<Mutex<Option<Arc<DrainError>>>>,
}

impl std::fmt::Debug for DrainThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainThread").finish_non_exhaustive()
    }
}

impl DrainThread {
    /// Starts draining on a new thread named `drain`. `on_error` runs once, on the drain thread, if
    /// a pass fails (the thread then stops draining and waits to be stopped): the caller typically
    /// requests shutdown with reason "error".
    pub fn spawn(
        mut drain: Drain<'static>,
        on_error: impl FnOnce(&DrainError) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Waker::new()?);
        let error = Arc::new(Mutex::new(None));
        let (stop2, waker2, error2) = (stop.clone(), waker.clone(), error.clone());
        let handle = std::thread::Builder::new()
            .name("drain".into())
            .spawn(move || {
                raise_priority();
                // Before any event: the target is starting, poll as if it were busy.
                let mut last_events = Instant::now();
                let mut on_error = Some(on_error);
                // Acquire: pairs with the Release store in `stop`.
                while !stop2.load(Acquire) {
                    match drain.pass_until(&stop2) {
                        Ok(pass) if pass.bytes > 0 => last_events = Instant::now(),
                        Ok(_) => {
                            waker2.wait(idle_sleep(last_events.elapsed()));
                        }
                        Err(e) => {
                            let e = Arc::new(e);
                            if let Ok(mut slot) = error2.lock() {
                                *slot = Some(e.clone());
                            }
                            if let Some(f) = on_error.take() {
                                f(&e);
                            }
                            // Stop writing; wait to be stopped (producers wait a bounded time,
                            // then count drops, so the target is not blocked).
                            // Acquire: pairs with the Release store in `stop`/`drop`.
                            while !stop2.load(Acquire) {
                                waker2.wait(MAX_IDLE * 50);
                            }
                        }
                    }
                }
                drain
            })?;
        Ok(DrainThread {
            handle: Some(handle),
            stop,
            waker,
            error,
        })
    }

    /// The waker: kick it to make the thread pass at once.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// The error that stopped the thread, if any (with its causes).
    pub fn error(&self) -> Option<Arc<DrainError>> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// Stops the thread after its current pass and returns the drain (for the final drain).
    /// `None` if the thread panicked.
    pub fn stop(mut self) -> Option<Drain<'static>> {
        // Release: pairs with the Acquire loads in the loop; nothing else is published with it.
        self.stop.store(true, Release);
        self.waker.kick();
        self.handle.take().and_then(|h| h.join().ok())
    }
}

/// The CPU time the drain thread is guaranteed, and at most takes, per [`BUDGET_PERIOD`] when
/// it runs under `SCHED_DEADLINE` (see [`raise_priority`]): half a CPU.
const BUDGET_RUNTIME: Duration = Duration::from_millis(5);
/// See [`BUDGET_RUNTIME`].
const BUDGET_PERIOD: Duration = Duration::from_millis(10);

/// `struct sched_attr` of `sched_setattr(2)` (its first version, 48 bytes).
#[repr(C)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
}

const SCHED_DEADLINE: u32 = 6;
/// Threads the drain thread starts (the writeback helper) get the normal policy.
const SCHED_FLAG_RESET_ON_FORK: u64 = 1;

/// Gives the drain thread the CPU whenever it has work, within a bound, best effort: a
/// `SCHED_DEADLINE` reservation of [`BUDGET_RUNTIME`] every [`BUDGET_PERIOD`] when the tracer may
/// set it (root, `CAP_SYS_NICE`), nice -10 otherwise.
///
/// With many busy target threads on few CPUs a time share is not enough: against 256 spinning
/// threads at nice 0, nice -10 is ~4 % of the CPU time, the drain falls behind, producers wait for
/// ring space and their sleep/wake churn takes the CPUs further. Under the reservation the drain
/// runs as soon as it wakes, ahead of every time-shared thread, for up to half a CPU: about what
/// it needs to keep up with two CPUs of producers calling non-stop, and never more, however far
/// behind it is (a real-time priority would take a whole CPU from everyone else then).
fn raise_priority() {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: SCHED_DEADLINE,
        sched_flags: SCHED_FLAG_RESET_ON_FORK,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: BUDGET_RUNTIME.as_nanos() as u64,
        sched_deadline: BUDGET_PERIOD.as_nanos() as u64,
        sched_period: BUDGET_PERIOD.as_nanos() as u64,
    };
    // SAFETY: sched_setattr reads one valid, fully initialised sched_attr whose size field says
    // its length; pid 0 is the calling thread. A failure (no privilege, no admission) leaves the
    // policy as it was.
    let reserved =
        unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } == 0;
    if !reserved {
        // SAFETY: gettid and setpriority take no pointers; a failure leaves the priority as it was.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, -10);
        }
    }
}

impl Drop for DrainThread {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            // Release: pairs with the Acquire loads in the thread's loop.
            self.stop.store(true, Release);
            self.waker.kick();
            let _ = h.join();
        }
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn idle_sleep__grows_with_the_quiet_time__then_bounded() {
        assert_eq!(idle_sleep(Duration::ZERO), MIN_IDLE);
        assert_eq!(idle_sleep(Duration::from_micros(500)), MIN_IDLE);
        assert_eq!(
            idle_sleep(Duration::from_millis(4)),
            Duration::from_micros(250)
        );
        assert_eq!(idle_sleep(Duration::from_millis(32)), MAX_IDLE);
        assert_eq!(idle_sleep(Duration::from_secs(60)), MAX_IDLE);
    }
}
