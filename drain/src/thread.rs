//! The drain thread: passes while there is work, a sleep sized from the producers' pace between
//! passes, an adaptive sleep when idle, an immediate wake on [`Waker::kick`], and a clean
//! hand-back of the [`Drain`] for the final drain.
//!
//! After a pass that found events the drain sleeps until the busiest index lane should be about
//! half full again ([`FILL_FRACTION`], [`busy_sleep`]), at the fastest pace a lane was seen filling
//! lately ([`Pace`]: the bytes a pass took from its busiest lane over the time since the previous
//! pass), so it takes a busy producer's events in batches instead of chasing its write position,
//! and wakes (and preempts the target on a shared CPU) as rarely as that allows. The sleep is
//! never longer than most of the time a producer calling non-stop takes to fill an empty lane
//! ([`Pacing::cap`]), so a producer that speeds up finds room; nor longer than all lanes together
//! take to receive one lane's capacity ([`TOTAL_FRACTION`]), so many busy threads'
//! lanes hold little when a stop comes (its final drain writes what they hold); and never shorter
//! than [`MIN_IDLE`]. A pass that leaves no time (a long pass, a backlog), or that moved
//! [`BUSY_PASS_BYTES`], is followed by the next at once, without a sleep; a pass that found events
//! in more than [`PACED_LANES`] lanes is followed by [`MIN_IDLE`].
//! The idle sleep grows with the time since a pass last found events ([`idle_sleep`]), not with
//! the count of empty passes: a producer that pauses for a moment (descheduled on a busy machine,
//! between two bursts) finds the drain polling every [`MIN_IDLE`] when it resumes, while a target
//! that has been quiet for tens of milliseconds costs the tracer at most ~500 wake-ups a second.

use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Release};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Drain, DrainError, Waker};

/// The shortest sleep, idle or after a pass that found events, and the longest after one when
/// the lanes are too small for [`Pacing::cap`] to be longer, or detail records are on (a detail
/// lane fills faster than its thread's index lane, and its flight recorder drops what does not
/// fit).
const MIN_IDLE: Duration = Duration::from_micros(50);
/// The longest idle sleep: an idle target costs the tracer ~500 wake-ups a second at most.
const MAX_IDLE: Duration = Duration::from_millis(2);
/// The idle sleep is the time since events were last found divided by this (within
/// [`MIN_IDLE`]..=[`MAX_IDLE`]): [`MAX_IDLE`] after 32 ms without events.
const IDLE_DIVISOR: u32 = 16;
/// After a pass that found events, the drain sleeps until the busiest index lane should hold
/// about this fraction of its capacity (numerator, denominator).
const FILL_FRACTION: (u64, u64) = (1, 2);
/// ... and not longer than all index lanes together take to receive this fraction of one lane's
/// capacity (numerator, denominator): what many busy threads' lanes hold when a stop comes is
/// what its final drain writes.
const TOTAL_FRACTION: (u64, u64) = (1, 1);
/// Nanoseconds a producer calling non-stop takes per index event: ~30 ns per entry/exit pair
/// (BENCHMARKS.md, the agent alone), two events of [`atf::EVENT_SIZE`] bytes.
const FULL_SPEED_NS_PER_EVENT: u64 = 15;
/// The sleep after a pass that found events is at most this share of the time a producer calling
/// non-stop takes to fill an empty index lane (numerator, denominator): the rest is the margin for
/// the drain's wake-up latency and the start of its pass.
const CAP_FRACTION: (u64, u64) = (3, 4);
/// A pass that moved at least this many bytes is followed by the next at once, without a sleep
/// (nor the wake-up after it, which on a shared CPU preempts the target): it takes what came in
/// meanwhile, and the paced sleep follows that smaller pass.
const BUSY_PASS_BYTES: u64 = 64 << 10;
/// The sleep is paced only when at most this many index lanes had events in the pass; with more
/// it is [`MIN_IDLE`]: what many busy threads' lanes hold when a stop comes is what its final
/// drain writes, and a longer sleep made a 64-thread stop's final drain longer.
const PACED_LANES: u32 = 4;
/// A computed sleep shorter than this is not taken: the next pass starts at once.
const MIN_SLEEP: Duration = Duration::from_micros(5);

/// The region's lane sizes, as the drain thread's sleep needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pacing {
    /// Bytes of one thread's index lane (all its rings).
    lane_bytes: u64,
    /// The longest sleep after a pass that found events (see [`Pacing::cap`]).
    cap: Duration,
}

impl Pacing {
    /// From the region's configuration.
    fn of(config: &registry::RegionConfig) -> Pacing {
        let lane_bytes = u64::from(config.index.rings) * config.index.ring_capacity as u64;
        Pacing {
            lane_bytes,
            cap: if config.detail_enabled {
                MIN_IDLE
            } else {
                Pacing::cap(lane_bytes)
            },
        }
    }

    /// [`CAP_FRACTION`] of the time a producer calling non-stop ([`FULL_SPEED_NS_PER_EVENT`])
    /// takes to fill an empty lane of `lane_bytes`, and not below [`MIN_IDLE`]: ~92 µs for the
    /// default lane of 4 rings of 64 KiB (8192 events, ~123 µs at full speed).
    fn cap(lane_bytes: u64) -> Duration {
        let full = lane_bytes / atf::EVENT_SIZE as u64 * FULL_SPEED_NS_PER_EVENT;
        Duration::from_nanos(full * CAP_FRACTION.0 / CAP_FRACTION.1).max(MIN_IDLE)
    }
}

/// The pace of the busiest index lane: the fastest seen lately, forgotten by half every
/// [`PACE_HALF_LIFE`]. A producer that shares its CPU writes in bursts, and the pace over one
/// interval between passes averages a burst with the time it was off the CPU; sizing the sleep
/// from that average would let its next burst fill the lane.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Pace {
    /// Bytes per nanosecond.
    peak: f64,
}

/// How fast [`Pace`] forgets a fast pace.
const PACE_HALF_LIFE: Duration = Duration::from_millis(20);

impl Pace {
    /// Takes a pass that moved `busiest` bytes from the busiest index lane, `since` after the
    /// previous pass started; returns the pace to size the next sleep from (bytes per ns).
    fn observe(&mut self, busiest: u64, since: Duration) -> f64 {
        let ns = since.as_nanos().max(1) as f64;
        let decay = (-(ns / PACE_HALF_LIFE.as_nanos() as f64)).exp2();
        self.peak = (busiest as f64 / ns).max(self.peak * decay);
        self.peak
    }
}

/// How long to sleep after a pass that lasted `took`, the busiest index lane filling at `pace`
/// bytes per ns ([`Pace`]) and all lanes together at `total` (the last pass's bytes over the time
/// since the previous one): until that lane holds [`FILL_FRACTION`] of its capacity, or all
/// lanes together [`TOTAL_FRACTION`] of one lane's, whichever comes first, at most
/// [`Pacing::cap`] after the pass started, and not below [`MIN_IDLE`] (shorter sleeps wake the
/// drain, and preempt the target, more often than lanes of this size need); zero (the next pass
/// at once) when that leaves less than [`MIN_SLEEP`]; [`MIN_IDLE`] when no index lane had events.
/// The bound on all lanes keeps what many busy threads' lanes hold small, so a stop's final drain
/// (which writes it) stays short.
fn busy_sleep(pacing: Pacing, pace: f64, total: f64, took: Duration) -> Duration {
    if pace <= 0.0 {
        return MIN_IDLE;
    }
    let target = (pacing.lane_bytes * FILL_FRACTION.0 / FILL_FRACTION.1) as f64;
    let together = (pacing.lane_bytes * TOTAL_FRACTION.0 / TOTAL_FRACTION.1) as f64;
    let until = (target / pace).min(together / total.max(f64::MIN_POSITIVE));
    let until_target = Duration::from_nanos(until.min(u64::MAX as f64) as u64);
    let sleep = until_target.min(pacing.cap).saturating_sub(took);
    if sleep < MIN_SLEEP {
        Duration::ZERO
    } else {
        sleep.max(MIN_IDLE)
    }
}

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
                let pacing = Pacing::of(&drain.registry().config());
                // Before any event: the target is starting, poll as if it were busy.
                let mut last_events = Instant::now();
                let mut last_start = last_events;
                let mut pace = Pace::default();
                let mut on_error = Some(on_error);
                // Acquire: pairs with the Release store in `stop`.
                while !stop2.load(Acquire) {
                    let start = Instant::now();
                    let pass = drain.pass_until(&stop2);
                    let since = start - last_start;
                    last_start = start;
                    match pass {
                        Ok(pass) => {
                            let pace = pace.observe(pass.busiest, since);
                            let sleep = if pass.bytes == 0 {
                                idle_sleep(last_events.elapsed())
                            } else {
                                last_events = Instant::now();
                                if pass.bytes >= BUSY_PASS_BYTES {
                                    Duration::ZERO
                                } else if pass.lanes > PACED_LANES {
                                    MIN_IDLE
                                } else {
                                    let total = pass.bytes as f64 / since.as_nanos().max(1) as f64;
                                    busy_sleep(pacing, pace, total, start.elapsed())
                                }
                            };
                            if !sleep.is_zero() {
                                waker2.wait(sleep);
                            }
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
/// [`MIN_IDLE`] sleep lasts ~100 µs or more, most of the ~120 µs a producer calling non-stop
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

    fn default_pacing() -> Pacing {
        Pacing::of(&registry::RegionConfig {
            detail_enabled: false,
            ..Default::default()
        })
    }

    #[test]
    fn pacing__default_lane__cap_is_three_quarters_of_a_full_speed_fill() {
        let p = default_pacing();
        assert_eq!(p.lane_bytes, 256 << 10);
        // 8192 events at 15 ns: 122.88 µs; three quarters of it.
        assert_eq!(p.cap, Duration::from_nanos(92_160));
    }

    #[test]
    fn pacing__small_lane_or_detail_records__cap_is_the_shortest_idle_sleep() {
        assert_eq!(Pacing::cap(4 << 10), MIN_IDLE);
        let detail = Pacing::of(&registry::RegionConfig::default());
        assert!(registry::RegionConfig::default().detail_enabled);
        assert_eq!(detail.cap, MIN_IDLE);
    }

    /// The pace of `bytes` in `since`, from nothing.
    fn pace(bytes: u64, since: Duration) -> f64 {
        Pace::default().observe(bytes, since)
    }

    #[test]
    fn busy_sleep__slow_producer__sleeps_the_cap_less_the_pass() {
        let p = default_pacing();
        // 4 KiB in 100 µs: half the lane is 3.2 ms away; the cap bounds it.
        let pace = pace(4 << 10, Duration::from_micros(100));
        let s = busy_sleep(p, pace, pace, Duration::from_micros(10));
        assert_eq!(s, p.cap - Duration::from_micros(10));
    }

    #[test]
    fn busy_sleep__fast_producer__sleeps_until_its_lane_is_half_full() {
        let p = default_pacing();
        // 64 KiB in 40 µs, the other lanes quiet and this one slower on average (it shares its
        // CPU): half the lane (128 KiB) is 80 µs after the pass started.
        let pace = pace(64 << 10, Duration::from_micros(40));
        let s = busy_sleep(p, pace, 0.5, Duration::from_micros(5));
        assert!(
            s.abs_diff(Duration::from_micros(75)) < Duration::from_nanos(10),
            "{s:?}"
        );
    }

    #[test]
    fn busy_sleep__backlog_or_long_pass__passes_again_at_once() {
        let p = default_pacing();
        // A full lane: half of it came in half the interval, which the pass itself took.
        let full = pace(256 << 10, Duration::from_millis(2));
        let full = busy_sleep(p, full, full, Duration::from_millis(1));
        assert_eq!(full, Duration::ZERO);
        // A pass longer than the cap.
        let long = pace(1 << 10, Duration::from_millis(1));
        let long = busy_sleep(p, long, long, Duration::from_micros(200));
        assert_eq!(long, Duration::ZERO);
    }

    #[test]
    fn busy_sleep__many_busy_lanes__until_they_hold_one_lane_together() {
        let p = default_pacing();
        // The busiest lane at 0.5 byte/ns (half of it in 262 µs), all 64 lanes together at 4
        // bytes/ns: one lane's capacity in ~65.5 µs.
        let s = busy_sleep(p, 0.5, 4.0, Duration::from_micros(10));
        assert!(
            s.abs_diff(Duration::from_nanos(55_536)) < Duration::from_nanos(10),
            "{s:?}"
        );
    }

    #[test]
    fn busy_sleep__detail_bytes_only__sleeps_the_shortest_idle_sleep() {
        assert_eq!(
            busy_sleep(default_pacing(), 0.0, 1.0, Duration::ZERO),
            MIN_IDLE
        );
    }

    #[test]
    fn pace__a_burst_then_a_slow_interval__keeps_the_burst_pace_for_a_while() {
        let mut pace = Pace::default();
        // 2 bytes per ns (a producer calling non-stop), then a slow interval: the burst's pace,
        // barely decayed, still sizes the sleep.
        let fast = pace.observe(100_000, Duration::from_micros(50));
        assert_eq!(fast, 2.0);
        let after = pace.observe(1_000, Duration::from_micros(100));
        assert!(after > 1.99 && after < 2.0, "{after}");
        // One half-life later, half of it.
        let later = pace.observe(0, PACE_HALF_LIFE);
        assert!((later - after / 2.0).abs() < 1e-9, "{later}");
    }
}
