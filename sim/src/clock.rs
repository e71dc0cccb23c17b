//! Virtual time: the simulation's use of `modelsync`'s virtual clock.
//!
//! shuttle has no time (and its `Condvar::wait_timeout` never times out), so the simulation runs
//! on the virtual clock of `modelsync::Shuttle`: a base instant plus the time that passed, per
//! schedule. Time passes as the target works: each event a producer attempts takes
//! [`EVENT_TIME`] (so a timer of `n` ms expires after about `n` events, at a random point of the
//! recording), and the drain's fsync may take long ([`advance`]). While the target runs, a timed
//! wait step only yields, so other threads run; once the target has ended ([`target_ended`])
//! nothing else moves the clock, so the wait's deadline passes at once. Every timed wait therefore
//! ends: on a notification, as the target works, or when it is gone.

use modelsync::{virtual_time, Backend, Clock, Shuttle};
use std::time::Duration;

pub use modelsync::virtual_time::{advance, now};

/// What one producer event costs in virtual time.
pub const EVENT_TIME: Duration = Duration::from_millis(1);

/// Starts a schedule: no time passed, the target running (time moves as it works).
pub fn reset() {
    virtual_time::reset();
    virtual_time::drive();
}

/// The target has ended: from now on a timed wait's deadline passes as soon as it yields.
pub fn target_ended() {
    virtual_time::release();
}

/// Waits `d` of virtual time, as a phase's bounded wait polls (one `Clock::wait_step`).
pub fn pause(d: Duration) {
    <Shuttle as Backend>::Clock::wait_step(now() + d);
}
