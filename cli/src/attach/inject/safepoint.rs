//! Phase 2: a safe point. A breakpoint goes on glibc's hook stubs (and the agent's hooks when an
//! earlier attach left the program's calls bound to them), written through `/proc/<pid>/mem`:
//! the first thread that hits it is at the entry of an instrumented function and holds no libc
//! lock. Every other stop meanwhile is handled so that the program runs on as if untraced (signals
//! delivered, group stops kept, new threads held, forked children released with the breakpoint
//! undone in their copy).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use super::seize::tgid;
use super::tracee::{gone, Regs, Tracee};
use super::{InjectError, Result, Tracer, INT3, SAFE_POINT_WAIT};

impl Tracer {
    pub(super) fn set_breakpoint(&mut self) -> Result<()> {
        for bp in &mut self.bps {
            let mut byte = [0u8; 1];
            self.mem.read_exact_at(&mut byte, bp.0)?;
            bp.1 = byte[0];
        }
        self.bp_active = true;
        for &(at, _) in &self.bps {
            self.mem.write_all_at(&[INT3], at)?;
        }
        Ok(())
    }

    pub(super) fn remove_breakpoint(&mut self) -> Result<()> {
        if !self.bp_active {
            return Ok(());
        }
        for &(at, original) in &self.bps {
            self.mem.write_all_at(&[original], at)?;
        }
        self.bp_active = false;
        Ok(())
    }

    /// Waits for the first thread to hit the breakpoint; handles the others' stops meanwhile.
    pub(super) fn wait_safe_point(&mut self) -> Result<(i32, Regs)> {
        let deadline = Instant::now() + SAFE_POINT_WAIT;
        loop {
            let Some((tid, status)) = self.wait(deadline)? else {
                return Err(InjectError::NoSafePoint);
            };
            if let Some(regs) = self.trapped_at_breakpoint(tid, status)? {
                return Ok((tid, regs));
            }
            self.handle(tid, status)?;
        }
    }

    /// Registers of `tid` if this stop is our breakpoint's trap.
    fn trapped_at_breakpoint(&self, tid: i32, status: i32) -> Result<Option<Regs>> {
        if !libc::WIFSTOPPED(status) || libc::WSTOPSIG(status) != libc::SIGTRAP || status >> 16 != 0
        {
            return Ok(None);
        }
        let regs = Tracee(tid).regs()?;
        Ok(self.hit(regs.rip).map(|_| regs))
    }

    /// Resumes a thread after a stop that is not ours to act on.
    pub(super) fn handle(&mut self, tid: i32, status: i32) -> Result<()> {
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            self.tids.retain(|&t| t != tid);
            if self.tids.is_empty() || !Path::new(&format!("/proc/{}", self.pid)).exists() {
                return Err(InjectError::Exited);
            }
            return Ok(());
        }
        if !libc::WIFSTOPPED(status) {
            return Ok(());
        }
        if !self.tids.contains(&tid) && tgid(tid) != Some(self.pid) {
            return self.release_fork(tid, status);
        }
        let tracee = Tracee(tid);
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        let deliver = if event == libc::PTRACE_EVENT_CLONE {
            // Gone: the thread has exited, and there is no new thread to hold.
            if let Some(new) = gone(tracee.event_msg())? {
                if new != 0 && !self.tids.contains(&(new as i32)) {
                    self.tids.push(new as i32);
                }
            }
            0
        } else if event != 0 {
            0 // an interrupt, group or new-thread stop
        } else if sig == libc::SIGTRAP {
            // A thread that hit the breakpoint just before it was removed: run the instruction.
            match gone(tracee.regs())? {
                Some(mut regs) if self.hit(regs.rip).is_some() && !self.bp_active => {
                    regs.rip -= 1;
                    tracee.set_regs(&regs)?;
                    0
                }
                _ => sig,
            }
        } else {
            sig
        };
        if !self.tids.contains(&tid) {
            self.tids.push(tid);
        }
        if event == libc::PTRACE_EVENT_STOP && is_stop_signal(sig) {
            // A group stop (SIGSTOP, Ctrl-Z): the process stays stopped; we only listen.
            gone(tracee.listen())?;
            return Ok(());
        }
        gone(tracee.cont(deliver))?;
        Ok(())
    }

    /// The breakpoint a thread stopped at `rip` has just executed, if any.
    pub(super) fn hit(&self, rip: u64) -> Option<u64> {
        self.bps.iter().map(|b| b.0).find(|&at| at + 1 == rip)
    }

    /// Releases a child the target forked while it was seized: the breakpoint its copy of libc
    /// may hold is undone (and its trap, if it hit it), then it is detached. A child that has
    /// exited meanwhile needs nothing.
    pub(super) fn release_fork(&self, child: i32, status: i32) -> Result<()> {
        // A child whose memory cannot be opened has exited (or exec'd into another image).
        if let Ok(mem) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{child}/mem"))
        {
            for &(at, original) in &self.bps {
                let mut byte = [0u8; 1];
                if mem.read_exact_at(&mut byte, at).is_ok() && byte[0] == INT3 && original != INT3 {
                    mem.write_all_at(&[original], at)?;
                }
            }
        }
        let tracee = Tracee(child);
        let mut sig = 0;
        if status >> 16 == 0 {
            sig = libc::WSTOPSIG(status);
            if sig == libc::SIGTRAP {
                if let Some(mut regs) = gone(tracee.regs())? {
                    if self.hit(regs.rip).is_some() {
                        regs.rip -= 1;
                        tracee.set_regs(&regs)?;
                        sig = 0;
                    }
                }
            }
        }
        gone(tracee.detach(sig))?;
        Ok(())
    }
}

/// Whether a `PTRACE_EVENT_STOP` with this signal is a group stop.
fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}
