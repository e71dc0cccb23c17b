//! Where a shutdown is: the state the request word and the phase manager both read, in its own
//! module so neither imports the other for it.

/// Where a shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// No phase has begun.
    Running = 0,
    /// [`Pipeline::stop_acceptance`](crate::Pipeline::stop_acceptance) is running.
    StoppingAcceptance = 1,
    /// [`Pipeline::close_registrations`](crate::Pipeline::close_registrations) is running.
    ClosingRegistrations = 2,
    /// [`Pipeline::flush`](crate::Pipeline::flush) is running.
    Flushing = 3,
    /// [`Pipeline::final_drain`](crate::Pipeline::final_drain) is running.
    FinalDrain = 4,
    /// [`Pipeline::sync`](crate::Pipeline::sync) is running.
    Syncing = 5,
    /// [`Pipeline::cleanup`](crate::Pipeline::cleanup) is running.
    Cleanup = 6,
    /// Every phase ran or was skipped.
    Done = 7,
}

impl State {
    pub(crate) fn from_u8(v: u8) -> State {
        match v {
            1 => State::StoppingAcceptance,
            2 => State::ClosingRegistrations,
            3 => State::Flushing,
            4 => State::FinalDrain,
            5 => State::Syncing,
            6 => State::Cleanup,
            7 => State::Done,
            _ => State::Running,
        }
    }
}
