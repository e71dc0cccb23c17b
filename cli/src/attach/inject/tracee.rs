//! One thread of the target under ptrace, as a type: every request returns a checked result, and
//! the one failure that is expected while threads come and go (the thread has exited: `ESRCH`) is
//! told apart from the others ([`gone`]).

use std::io;

/// The registers of a stopped thread.
pub(super) type Regs = libc::user_regs_struct;

/// A thread of the target (its tid), seized or about to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tracee(pub(super) i32);

impl Tracee {
    /// A request that passes integers only (no pointer) in `addr` and `data`.
    fn request(self, request: libc::c_uint, data: usize) -> io::Result<()> {
        // SAFETY: the requests made through here take integers, not pointers, in addr and data.
        if unsafe { libc::ptrace(request, self.0, 0usize, data) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `PTRACE_SEIZE` with `options` (the thread keeps running).
    pub(super) fn seize(self, options: i32) -> io::Result<()> {
        self.request(libc::PTRACE_SEIZE, options as usize)
    }

    /// `PTRACE_SETOPTIONS`.
    pub(super) fn set_options(self, options: i32) -> io::Result<()> {
        self.request(libc::PTRACE_SETOPTIONS, options as usize)
    }

    /// Resumes the stopped thread, delivering `signal` (0: none).
    pub(super) fn cont(self, signal: i32) -> io::Result<()> {
        self.request(libc::PTRACE_CONT, signal as usize)
    }

    /// Leaves a thread in a group stop stopped, still reporting (`PTRACE_LISTEN`).
    pub(super) fn listen(self) -> io::Result<()> {
        self.request(libc::PTRACE_LISTEN, 0)
    }

    /// Stops the running thread (`PTRACE_INTERRUPT`).
    pub(super) fn interrupt(self) -> io::Result<()> {
        self.request(libc::PTRACE_INTERRUPT, 0)
    }

    /// Lets the stopped thread go, delivering `signal` (0: none).
    pub(super) fn detach(self, signal: i32) -> io::Result<()> {
        self.request(libc::PTRACE_DETACH, signal as usize)
    }

    /// The stopped thread's registers.
    pub(super) fn regs(self) -> io::Result<Regs> {
        // SAFETY: an all-zero register set is a valid value; GETREGS overwrites it.
        let mut regs: Regs = unsafe { std::mem::zeroed() };
        // SAFETY: GETREGS writes one user_regs_struct into `regs`, live for the call.
        if unsafe { libc::ptrace(libc::PTRACE_GETREGS, self.0, 0usize, &mut regs as *mut Regs) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(regs)
    }

    /// Sets the stopped thread's registers.
    pub(super) fn set_regs(self, regs: &Regs) -> io::Result<()> {
        // SAFETY: SETREGS reads one user_regs_struct from `regs`, live for the call.
        if unsafe { libc::ptrace(libc::PTRACE_SETREGS, self.0, 0usize, regs as *const Regs) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The message of the thread's last ptrace event stop (the new thread's or child's id after
    /// a clone, fork or vfork event).
    pub(super) fn event_msg(self) -> io::Result<libc::c_ulong> {
        let mut msg: libc::c_ulong = 0;
        // SAFETY: GETEVENTMSG writes one c_ulong to the address in data, which is `msg`, live and
        // writable for the call.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETEVENTMSG,
                self.0,
                0usize,
                &mut msg as *mut libc::c_ulong,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(msg)
    }
}

/// `Ok` if `result` is, or failed only because the thread has exited meanwhile (`ESRCH`): a
/// thread that is gone needs nothing more. Any other failure is returned.
pub(super) fn gone<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn tracee__thread_that_does_not_exist__then_every_request_fails_as_gone() {
        let nobody = Tracee(i32::MAX);
        assert_eq!(gone(nobody.cont(0)).unwrap(), None);
        assert_eq!(gone(nobody.detach(0)).unwrap(), None);
        assert!(gone(nobody.regs()).unwrap().is_none());
        assert_eq!(gone(nobody.event_msg()).unwrap(), None);
    }

    #[test]
    fn gone__other_failure__then_returned() {
        let denied: io::Result<()> = Err(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(gone(denied).unwrap_err().raw_os_error(), Some(libc::EPERM));
    }
}
