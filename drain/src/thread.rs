//! The drain thread: passes while there is work, an adaptive sleep when idle, an immediate wake on
//! [`Waker::kick`], and a clean hand-back of the [`Drain`] for the final drain.
//!
//! A pass that found less than a ring's worth of events is followed by a short sleep rather than
//! the next pass at once ([`BUSY_PASS_BYTES`]), so the drain takes a busy producer's events in
//! batches instead of chasing its write position. The idle sleep grows with the time since a pass last found events ([`idle_sleep`]), not with
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
/// A pass that moved at least this many bytes is followed by the next at once (the lanes have a
/// backlog); after a smaller one the drain sleeps [`MIN_IDLE`] first. Passing again at once over
/// a lane a producer is filling would take a few events at a time and pull the ring's position
/// cache lines from the producer's core over and over, which costs the producer more than the
/// drain saves.
const BUSY_PASS_BYTES: u64 = 64 << 10;
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
                        Ok(pass) if pass.bytes >= BUSY_PASS_BYTES => last_events = Instant::now(),
                        Ok(pass) => {
                            if pass.bytes > 0 {
                                last_events = Instant::now();
                            }
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

/// The drain thread's nice value (the highest time share), when the tracer may set it.
const DRAIN_NICE: i32 = -20;

/// Asks for the largest CPU share for the drain thread ([`DRAIN_NICE`]), best effort: without
/// the privilege it keeps the tracer's.
///
/// With many busy target threads on few CPUs the drain's share decides how far it falls behind:
/// against 256 spinning threads at nice 0, nice -10 is ~4 % of the CPU time and nice -20 ~25 %;
/// a drain that falls behind makes producers wait for ring space, and their sleep/wake churn takes
/// the CPUs further. (A `SCHED_DEADLINE` reservation of half a CPU persisted more with 256 threads
/// but doubled a single producer's cost per call: see BENCHMARKS.md, "Drain and trace files".)
///
/// It also sets the thread's timer slack to [`TIMER_SLACK_NS`]: with the default slack of 50 µs a
/// [`MIN_IDLE`] sleep lasts ~100 µs or more, most of the ~140 µs a producer calling non-stop
/// takes to fill its lane, so a short sleep became a wait for ring space.
pub(crate) fn raise_priority() {
    // SAFETY: gettid, setpriority and prctl(PR_SET_TIMERSLACK) take no pointers; a failure leaves
    // the priority or the slack as it was.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, DRAIN_NICE);
        libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS);
    }
}

/// The drain thread's timer slack: sleeps end when asked, not up to 50 µs later.
const TIMER_SLACK_NS: libc::c_ulong = 1_000;

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
