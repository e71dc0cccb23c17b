//! The drain's file system under injected faults: an `atf::fault::FaultyFs` whose plan is drawn
//! per schedule from shuttle's random source (so a replay draws the same plan), one fault kind
//! per schedule, and a tally of what fired.
//!
//! Kinds that must lose nothing ([`Kind::loses_nothing`]): `EINTR` storms, short writes and slow
//! syncs (the stall hook yields to the scheduler and lets virtual time pass); the recording's full
//! invariants hold exactly as without faults. Kinds that fail the drain: a disk full part-way
//! (`ENOSPC`), `EIO` on the n-th write, and a failing fsync or `syncfs` (`EIO`); the checks are
//! then those after a write fault (the `checks` module) and the error carries the plan's errno.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use atf::fault::{FaultPlan, FaultyFs, Injected};
use shuttle::rand::Rng;

/// One schedule's fault kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every 2nd to 4th write fails with `EINTR`, having written nothing.
    Interrupts,
    /// Every 1st to 3rd write writes at most a few bytes.
    ShortWrites,
    /// Every sync stalls (the stall hook yields and lets virtual time pass).
    SlowSync,
    /// The disk fills up part-way: the crossing write is short, later growing writes `ENOSPC`.
    NoSpace,
    /// The n-th write (after the drain's first manifest) fails with `EIO`.
    WriteError,
    /// The n-th sync of the final manifest and session, or every `syncfs`, fails with `EIO`.
    SyncError,
}

impl Kind {
    /// Every kind, in [`Tally`] order.
    pub const ALL: [Kind; 6] = [
        Kind::Interrupts,
        Kind::ShortWrites,
        Kind::SlowSync,
        Kind::NoSpace,
        Kind::WriteError,
        Kind::SyncError,
    ];

    /// Whether the drain must lose nothing under this kind (no error, full invariants).
    pub fn loses_nothing(self) -> bool {
        matches!(self, Kind::Interrupts | Kind::ShortWrites | Kind::SlowSync)
    }

    /// Whether `injected` shows this kind's fault fired.
    pub fn fired(self, injected: &Injected) -> bool {
        match self {
            Kind::Interrupts => injected.interrupts > 0,
            Kind::ShortWrites => injected.short_writes > 0,
            Kind::SlowSync => injected.stalls > 0,
            Kind::NoSpace | Kind::WriteError => injected.write_errors > 0,
            Kind::SyncError => injected.sync_errors > 0,
        }
    }

    fn at(self) -> usize {
        Kind::ALL.iter().position(|&k| k == self).expect("a kind")
    }
}

/// Write calls of the drain's first manifest (`Drain::new`: the JSON, then a newline).
const FIRST_MANIFEST_WRITES: u64 = 2;
/// Sync calls of the first manifest (the temporary file, the directory); `Drain::finish` makes
/// three more (the temporary file, the directory, `syncfs`).
const FIRST_MANIFEST_SYNCS: u64 = 2;
/// Bytes of the first manifest, at least (about 800: the disk fills up after it).
const FIRST_MANIFEST_BYTES: u64 = 1024;

/// One schedule's faulty file system and what it injects.
#[derive(Debug, Clone)]
pub struct Drawn {
    /// The kind drawn.
    pub kind: Kind,
    /// The errno a failing kind's errors carry.
    pub errno: Option<i32>,
    /// The file system the drain's session layout writes through.
    pub fs: Arc<FaultyFs>,
}

/// Draws a kind and its plan from the schedule's random source. `writes` and `bytes` bound where
/// a write fault or a full disk may come (about what the scenario writes).
pub fn draw(writes: u64, bytes: u64) -> Drawn {
    let mut rng = shuttle::rand::thread_rng();
    let kind = Kind::ALL[rng.gen_range(0..Kind::ALL.len())];
    let (plan, errno) = match kind {
        Kind::Interrupts => (
            FaultPlan::new().interrupt_writes_every(rng.gen_range(2..=4)),
            None,
        ),
        Kind::ShortWrites => (
            FaultPlan::new().short_writes_every(rng.gen_range(1..=3), rng.gen_range(1..=48)),
            None,
        ),
        Kind::SlowSync => (
            FaultPlan::new().slow_sync(Duration::from_millis(rng.gen_range(1..=20))),
            None,
        ),
        Kind::NoSpace => (
            FaultPlan::new().full_after(
                FIRST_MANIFEST_BYTES + rng.gen_range(0..=bytes),
                libc::ENOSPC,
            ),
            Some(libc::ENOSPC),
        ),
        Kind::WriteError => (
            FaultPlan::new()
                .fail_write(FIRST_MANIFEST_WRITES + rng.gen_range(1..=writes), libc::EIO),
            Some(libc::EIO),
        ),
        Kind::SyncError => {
            let plan = match rng.gen_range(0..4) {
                3 => FaultPlan::new().fail_sync_fs(libc::EIO),
                n => FaultPlan::new().fail_sync(FIRST_MANIFEST_SYNCS + 1 + n, libc::EIO),
            };
            (plan, Some(libc::EIO))
        }
    };
    let fs = Arc::new(FaultyFs::with_stall(plan, |d| {
        crate::clock::advance(d);
        shuttle::thread::yield_now();
    }));
    Drawn { kind, errno, fs }
}

/// Checks a drain error under a drawn fault: it is a file error carrying the plan's errno.
pub fn check_errno(drawn: &Drawn, error: &drain::DrainError) {
    let expected = drawn
        .errno
        .unwrap_or_else(|| panic!("the drain failed under {:?}: {error}", drawn.kind));
    let drain::DrainError::Io(atf::Error::Io { source, .. }) = error else {
        panic!("the drain failed, but not on a file: {error}");
    };
    assert_eq!(
        source.raw_os_error(),
        Some(expected),
        "the error does not carry the injected errno: {error}"
    );
}

/// Schedules per kind, and how many of them had the fault fire, on this thread.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Schedules drawn, per kind in [`Kind::ALL`] order.
    pub schedules: [u64; 6],
    /// Schedules whose fault fired, per kind.
    pub fired: [u64; 6],
    /// What was injected, summed over the schedules.
    pub injected: Injected,
}

std::thread_local! {
    /// shuttle runs a test's schedules on the test's thread: this is that test's tally.
    static TALLY: Cell<Tally> = Cell::new(Tally::default());
}

/// The [`Tally`] of the schedules run on this thread so far.
pub fn tally() -> Tally {
    TALLY.with(Cell::get)
}

/// Counts one finished schedule.
pub fn count(drawn: &Drawn) {
    let injected = drawn.fs.injected();
    let mut t = tally();
    let i = drawn.kind.at();
    t.schedules[i] += 1;
    t.fired[i] += u64::from(drawn.kind.fired(&injected));
    let s = &mut t.injected;
    s.write_calls += injected.write_calls;
    s.sync_calls += injected.sync_calls;
    s.interrupts += injected.interrupts;
    s.short_writes += injected.short_writes;
    s.write_errors += injected.write_errors;
    s.sync_errors += injected.sync_errors;
    s.stalls += injected.stalls;
    s.bytes_added += injected.bytes_added;
    TALLY.with(|c| c.set(t));
}

/// [`draw`] with bounds from `scenario`'s size: a write fault within its first writes, a full
/// disk within the bytes its threads write.
pub fn draw_for(scenario: &crate::scenario::Scenario) -> Drawn {
    let events = u64::from(scenario.producers * scenario.lives * scenario.events);
    let details = match scenario.detail_every {
        0 => 0,
        n => events / u64::from(n),
    };
    draw(16, 64 + events * 32 + details * 32)
}
