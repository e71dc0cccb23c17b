//! The shape of one simulated recording: how many producers, lives and events, the slot
//! capacity, when to stop, and which runner and faults a schedule gets.

/// The shape of one simulated recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// Producer threads running at once (each a target thread, re-created after it exits).
    pub producers: u32,
    /// Successive threads per producer: each registers, writes, exits; the next one has a new tid.
    pub lives: u32,
    /// Events each thread attempts.
    pub events: u32,
    /// Registry slots (fewer than `producers` exercises `registry_full` and slot reuse).
    pub capacity: u32,
    /// Every n-th event also writes a detail record (0: never).
    pub detail_every: u32,
    /// Every n-th detail record marks its window for persistence (0: never).
    pub mark_every: u32,
    /// Whether the stop may come before every thread is done (else it comes after the last event,
    /// as when the target exits).
    pub stop_early: bool,
    /// The drain thread yields up to this many times between passes (a slow drain: ring-full
    /// waits and drops).
    pub drain_pause: u32,
    /// Whether the file system may fail the drain's writes (see `check_after_fault`).
    pub faults: bool,
    /// Whether the drain writes through a faulty file system whose plan each schedule draws (see
    /// the `faults` module), in this process.
    pub fs_faults: bool,
    /// Whether the real shutdown manager stops the recording (requested by a timer, injected
    /// signals or the target's exit; see the `managed` runner) instead of the stopper.
    pub managed: bool,
    /// Managed only: also check, after a forced shutdown whose stop handshake did not complete,
    /// that every drop the manifest counts is one its thread saw (see the `managed` runner; the
    /// default leaves it out).
    pub strict_forced_drops: bool,
    /// Managed only: the target dies of a signal while one of its threads is inside a write
    /// section (it published its event, or not, and never leaves the section); the others stop
    /// before their next event. The stop must not wait for the dead thread, and every event
    /// published before the death must be persisted.
    pub dies_mid_write: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            producers: 3,
            lives: 2,
            events: 6,
            capacity: 2,
            detail_every: 2,
            mark_every: 2,
            stop_early: true,
            drain_pause: 0,
            faults: false,
            fs_faults: false,
            managed: false,
            strict_forced_drops: false,
            dies_mid_write: false,
        }
    }
}

impl Scenario {
    /// More threads than slots: orphan drops, slot recycling and reuse by new threads.
    pub fn contended() -> Self {
        Scenario::default()
    }

    /// Two long-lived threads writing more than their rings hold: swaps, waits for the drain,
    /// ring-full drops, a stop while a producer waits for space.
    pub fn backpressure() -> Self {
        Scenario {
            producers: 2,
            lives: 1,
            events: 24,
            detail_every: 1,
            mark_every: 3,
            drain_pause: 600,
            ..Scenario::default()
        }
    }

    /// Long-lived threads writing more than the file system takes: run with a file-size limit
    /// (see the `faults` tests), the drain's writes fail part-way (a short write, then `EFBIG`).
    pub fn faulty() -> Self {
        Scenario {
            producers: 2,
            lives: 1,
            events: 160,
            detail_every: 4,
            faults: true,
            ..Scenario::default()
        }
    }

    /// Long-lived threads whose drain writes through a faulty file system: `EINTR` storms, short
    /// writes, slow syncs, a full disk, `EIO` on a write or a sync (see the `faults` module).
    pub fn faulty_fs() -> Self {
        Scenario {
            producers: 2,
            lives: 1,
            events: 40,
            fs_faults: true,
            ..Scenario::default()
        }
    }

    /// [`Scenario::faulty_fs`] stopped by the real shutdown manager.
    pub fn managed_faulty_fs() -> Self {
        Scenario {
            managed: true,
            ..Scenario::faulty_fs()
        }
    }

    /// Short-lived threads: exit, recycle and re-registration racing the stop.
    pub fn churn() -> Self {
        Scenario {
            producers: 2,
            lives: 4,
            events: 3,
            detail_every: 1,
            mark_every: 1,
            ..Scenario::default()
        }
    }

    /// The default shape, stopped by the real shutdown manager: a timer, signals (during the
    /// shutdown too) and the target's exit request it; random budgets force some shutdowns.
    pub fn managed() -> Self {
        Scenario {
            managed: true,
            ..Scenario::default()
        }
    }

    /// [`Scenario::managed`] with the target killed while a thread is inside a write section
    /// (a terminal's Ctrl-C reaching the target too).
    pub fn managed_dying() -> Self {
        Scenario {
            dies_mid_write: true,
            ..Scenario::managed()
        }
    }

    /// [`Scenario::backpressure`] stopped by the real shutdown manager: a slow drain, so phases
    /// wait for it and budgets run out.
    pub fn managed_backpressure() -> Self {
        Scenario {
            managed: true,
            drain_pause: 200,
            ..Scenario::backpressure()
        }
    }
}
