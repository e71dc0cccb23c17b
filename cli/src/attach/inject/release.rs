//! Phase 4: every seized thread interrupted once and detached (threads and children made
//! meanwhile included), each with the signal it stopped for, the breakpoint's own trap excepted.
//! A failure releasing one thread does not stop the round: every other thread is still released,
//! and the first failure is returned.

use std::time::{Duration, Instant};

use super::seize::tgid;
use super::tracee::{gone, Tracee};
use super::{InjectError, Result, Tracer, CALL_WAIT};

impl Tracer {
    /// Interrupts and detaches every seized thread. Returns how long the round took.
    ///
    /// A thread that executed the breakpoint just before it was removed may report the interrupt
    /// before its trap: its `SIGTRAP` is still pending and would kill it once detached. Such a
    /// thread is moved back to the instruction and resumed to take the signal while still traced,
    /// where it is suppressed.
    pub(super) fn detach_all(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let mut failed: Option<InjectError> = None;
        let mut pending: Vec<i32> = Vec::new();
        for &tid in &self.tids {
            match gone(Tracee(tid).interrupt()) {
                Ok(Some(())) => pending.push(tid),
                Ok(None) => {} // exited meanwhile
                Err(e) => {
                    failed.get_or_insert(e.into());
                }
            }
        }
        let deadline = Instant::now() + CALL_WAIT;
        let mut trap_pending: Vec<i32> = Vec::new();
        while !pending.is_empty() {
            let (tid, status) = match self.wait(deadline) {
                Ok(Some(stop)) => stop,
                // Out of time, or no traced thread left (the process exited).
                Ok(None) | Err(InjectError::Exited) => break,
                Err(e) => {
                    failed.get_or_insert(e);
                    break;
                }
            };
            if let Err(e) = self.release_one(tid, status, &mut pending, &mut trap_pending) {
                failed.get_or_insert(e);
                pending.retain(|&t| t != tid);
            }
        }
        self.tids.clear();
        match failed {
            Some(e) => Err(e),
            None => Ok(started.elapsed()),
        }
    }

    /// Handles one stop of the release round: `tid` is released (and taken off `pending`), or
    /// resumed to take its breakpoint trap while still traced.
    fn release_one(
        &self,
        tid: i32,
        status: i32,
        pending: &mut Vec<i32>,
        trap_pending: &mut Vec<i32>,
    ) -> Result<()> {
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            pending.retain(|&t| t != tid);
            return Ok(());
        }
        if !self.tids.contains(&tid) && tgid(tid) != Some(self.pid) {
            pending.retain(|&t| t != tid);
            return self.release_fork(tid, status);
        }
        let tracee = Tracee(tid);
        let event = status >> 16;
        let mut sig = if event == 0 {
            libc::WSTOPSIG(status)
        } else {
            0
        };
        if event == libc::PTRACE_EVENT_CLONE
            || event == libc::PTRACE_EVENT_FORK
            || event == libc::PTRACE_EVENT_VFORK
        {
            // A new thread or child stops once, seized: wait for it and release it too. Gone:
            // the thread has exited, and there is no new thread to release.
            if let Some(new) = gone(tracee.event_msg())? {
                if new != 0 && !pending.contains(&(new as i32)) {
                    pending.push(new as i32);
                }
            }
        }
        if sig == libc::SIGTRAP && trap_pending.contains(&tid) {
            sig = 0; // the breakpoint's trap, taken now: suppressed
        } else if let Some(mut regs) = gone(tracee.regs())? {
            if self.hit(regs.rip).is_some() {
                regs.rip -= 1;
                tracee.set_regs(&regs)?;
                if sig == libc::SIGTRAP {
                    sig = 0;
                } else {
                    trap_pending.push(tid);
                    gone(tracee.cont(0))?;
                    return Ok(());
                }
            }
        }
        gone(tracee.detach(sig))?;
        pending.retain(|&t| t != tid);
        Ok(())
    }
}
