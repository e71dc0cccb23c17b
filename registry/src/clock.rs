//! The session clock: nanoseconds of `CLOCK_BOOTTIME`, read as raw TSC ticks when the TSC is
//! invariant and synchronised, through the vDSO otherwise.
//!
//! The tracer measures the TSC frequency once, when it creates the region ([`Clock::calibrate`]):
//! two (TSC, `CLOCK_BOOTTIME`) pairs a few milliseconds apart, each pair bracketed by two TSC reads
//! so its error is half the bracket. It stores `tsc_base`, `ns_base` and a fixed-point
//! `mult`/`shift` (`shift` = 32) in the control block.
//!
//! Producers stamp each record with the clock's raw reading, [`Clock::now_ticks`]: one `rdtsc`
//! for a [`ClockSource::Tsc`] clock, no syscall, no arithmetic. The rings therefore hold ticks,
//! and the drain maps each record's reading to nanoseconds with [`Clock::to_ns`] (it reads the
//! clock from the region header) before any writer sees it:
//! `ns_base + ((ticks - tsc_base) * mult) >> shift`, saturating below `tsc_base`. Trace files
//! hold `CLOCK_BOOTTIME` nanoseconds, ATF `clock_type` 3, as before. Times that are not records'
//! (the drain's heartbeat, a producer's wait for it) stay in nanoseconds ([`Clock::now_ns`]).
//!
//! The TSC is used only when `/proc/cpuinfo` lists `constant_tsc` and `nonstop_tsc` and the kernel's
//! clocksource is `tsc` (the kernel checked the TSCs of all CPUs are in sync). Otherwise the source
//! is [`ClockSource::Boottime`]: producers call `clock_gettime(CLOCK_BOOTTIME)` (vDSO, ~25 ns),
//! the reading is nanoseconds already, and [`Clock::to_ns`] is the identity.
//! The error of the TSC mapping is the calibration's relative error (a few ppm for a 20 ms window)
//! times the time since `tsc_base`.

use crate::layout::{CLOCK_BOOTTIME, CLOCK_TSC};

/// Where producers take time from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockSource {
    /// Raw `rdtsc` ticks mapped to `CLOCK_BOOTTIME` nanoseconds by the calibration.
    Tsc,
    /// `clock_gettime(CLOCK_BOOTTIME)` through the vDSO.
    Boottime,
}

/// A calibration of the TSC against `CLOCK_BOOTTIME` (or the decision not to use the TSC).
/// The field names match `atf::TscCalibration`, which the manifest records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// The source producers read.
    pub source: ClockSource,
    /// Measured TSC frequency (0 for [`ClockSource::Boottime`]).
    pub tsc_hz: u64,
    /// A TSC reading taken together with `ns_base`.
    pub tsc_base: u64,
    /// `CLOCK_BOOTTIME` nanoseconds at `tsc_base`.
    pub ns_base: u64,
    /// Fixed-point nanoseconds per tick, scaled by `2^shift`.
    pub mult: u64,
    /// Fixed-point shift of `mult`, below 64 ([`Clock::tsc`] makes 32; a region whose header says
    /// otherwise is refused when it is attached), so the conversion is one plain shift.
    pub shift: u32,
}

/// Fixed-point shift of [`Clock::mult`].
const SHIFT: u32 = 32;

impl Clock {
    /// The vDSO clock, no TSC.
    pub fn boottime() -> Clock {
        Clock {
            source: ClockSource::Boottime,
            tsc_hz: 0,
            tsc_base: 0,
            ns_base: 0,
            mult: 0,
            shift: SHIFT,
        }
    }

    /// A TSC mapping through the reference pair (`tsc_base`, `ns_base`) at `tsc_hz`.
    pub fn tsc(tsc_hz: u64, tsc_base: u64, ns_base: u64) -> Clock {
        let mult = ((1_000_000_000u128 << SHIFT) / u128::from(tsc_hz.max(1))) as u64;
        Clock {
            source: ClockSource::Tsc,
            tsc_hz,
            tsc_base,
            ns_base,
            mult,
            shift: SHIFT,
        }
    }

    /// Measures the TSC over `window` if it is usable (see the module docs), else the vDSO clock.
    /// Blocks for `window` (20 ms gives a few ppm).
    pub fn calibrate(window: std::time::Duration) -> Clock {
        if !tsc_usable() {
            return Clock::boottime();
        }
        let (t0, n0) = reference_pair();
        std::thread::sleep(window);
        let (t1, n1) = reference_pair();
        if t1 <= t0 || n1 <= n0 {
            return Clock::boottime();
        }
        let hz = (u128::from(t1 - t0) * 1_000_000_000 / u128::from(n1 - n0)) as u64;
        Clock::tsc(hz, t1, n1)
    }

    /// Nanoseconds for a TSC reading (saturating below `tsc_base`).
    ///
    /// The shift is taken modulo 64: the clock's `shift` is below 64 (see [`Clock::shift`]), so
    /// the conversion is one multiply and one double-word shift, without the branch-free
    /// handling of a shift past the low word. The final add wraps: past `u64::MAX` ns (a
    /// reading centuries ahead, which only a broken target's scribbles give the drain) the
    /// time is meaningless either way, and the conversion never panics.
    #[inline(always)]
    pub fn tsc_to_ns(&self, ticks: u64) -> u64 {
        debug_assert!(self.shift < 64, "clock shift {} not below 64", self.shift);
        let delta = ticks.saturating_sub(self.tsc_base);
        self.ns_base
            .wrapping_add(((u128::from(delta) * u128::from(self.mult)) >> (self.shift & 63)) as u64)
    }

    /// The clock's raw reading now, what producers stamp records with: TSC ticks for a
    /// [`ClockSource::Tsc`] clock, nanoseconds for [`ClockSource::Boottime`]. [`Clock::to_ns`]
    /// maps it to nanoseconds.
    #[inline(always)]
    pub fn now_ticks(&self) -> u64 {
        match self.source {
            ClockSource::Tsc => rdtsc(),
            ClockSource::Boottime => boottime_ns(),
        }
    }

    /// Nanoseconds on the session clock for a raw reading of it ([`Clock::now_ticks`]): the TSC
    /// mapping ([`Clock::tsc_to_ns`]) for a [`ClockSource::Tsc`] clock, the identity for
    /// [`ClockSource::Boottime`].
    #[inline(always)]
    pub fn to_ns(&self, ticks: u64) -> u64 {
        match self.source {
            ClockSource::Tsc => self.tsc_to_ns(ticks),
            ClockSource::Boottime => ticks,
        }
    }

    /// The current time on the session clock, in nanoseconds: [`Clock::to_ns`] of
    /// [`Clock::now_ticks`].
    #[inline(always)]
    pub fn now_ns(&self) -> u64 {
        self.to_ns(self.now_ticks())
    }

    pub(crate) fn encode_source(&self) -> u32 {
        match self.source {
            ClockSource::Tsc => CLOCK_TSC,
            ClockSource::Boottime => CLOCK_BOOTTIME,
        }
    }

    pub(crate) fn decode_source(code: u32) -> Option<ClockSource> {
        match code {
            CLOCK_TSC => Some(ClockSource::Tsc),
            CLOCK_BOOTTIME => Some(ClockSource::Boottime),
            _ => None,
        }
    }
}

/// One `rdtsc` (not serialising: ~15 ns here; ordering against neighbouring events of the same
/// thread is kept by the data dependency through the ring).
#[inline(always)]
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no memory effects and is available on every x86_64 CPU.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        boottime_ns()
    }
}

/// `clock_gettime(CLOCK_BOOTTIME)` in nanoseconds (vDSO, no syscall).
#[inline]
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux we support.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A (TSC, ns) pair: the clock read bracketed by two TSC reads; the tightest of a few tries.
fn reference_pair() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..16 {
        let a = rdtsc();
        let ns = boottime_ns();
        let b = rdtsc();
        if b.wrapping_sub(a) < best.0 {
            best = (b.wrapping_sub(a), a + (b - a) / 2, ns);
        }
    }
    (best.1, best.2)
}

/// Whether the TSC is invariant and the kernel trusts it as its clocksource.
pub fn tsc_usable() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let line = flags.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let has = |f: &str| line.split_whitespace().any(|w| w == f);
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default();
    has("constant_tsc") && has("nonstop_tsc") && source.trim() == "tsc"
}

#[cfg(all(test, not(feature = "loom")))]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn clock__tsc_mapping__then_base_maps_to_base_and_one_second_of_ticks_to_1e9_ns() {
        let clock = Clock::tsc(2_000_000_000, 1_000, 5_000);
        assert_eq!(clock.tsc_to_ns(1_000), 5_000);
        assert_eq!(
            clock.tsc_to_ns(1_000 + 2_000_000_000),
            5_000 + 1_000_000_000
        );
        assert_eq!(clock.tsc_to_ns(0), 5_000);
        // A frequency whose period is not a binary fraction: off by at most 1 ns per second.
        let clock = Clock::tsc(3_000_000_000, 0, 0);
        assert!(clock.tsc_to_ns(3_000_000_000).abs_diff(1_000_000_000) <= 1);
    }

    #[test]
    fn clock__tsc_reading__then_to_ns_is_the_mapping_saturating_below_the_base() {
        let clock = Clock::tsc(2_000_000_000, 1_000_000, 7_000);
        assert_eq!(clock.to_ns(1_000_000 + 2_000), 7_000 + 1_000);
        assert_eq!(clock.to_ns(5), 7_000, "below tsc_base");
        assert_eq!(clock.to_ns(u64::MAX), clock.tsc_to_ns(u64::MAX));
        // A reading no clock gives: a time, not a panic.
        let far = Clock {
            ns_base: u64::MAX - 10,
            ..clock
        };
        let _ = far.to_ns(u64::MAX);
    }

    #[test]
    fn clock__boottime_reading__then_to_ns_is_the_identity() {
        let clock = Clock::boottime();
        for t in [0, 1, 123_456_789, u64::MAX] {
            assert_eq!(clock.to_ns(t), t);
        }
        let a = boottime_ns();
        let t = clock.now_ticks();
        let b = boottime_ns();
        assert!(a <= t && t <= b, "{a} {t} {b}");
    }

    #[test]
    fn clock__calibrate__then_now_tracks_boottime() {
        let clock = Clock::calibrate(std::time::Duration::from_millis(20));
        let a = boottime_ns();
        let n = clock.now_ns();
        let t = clock.to_ns(clock.now_ticks());
        let b = boottime_ns();
        // The mapping is within a millisecond of the vDSO clock right after calibration.
        assert!(n + 1_000_000 >= a && n <= b + 1_000_000, "{a} {n} {b}");
        assert!(t + 1_000_000 >= a && t <= b + 1_000_000, "{a} {t} {b}");
    }
}
