//! Phase 3: the agent loaded by the held thread: `dlopen(agent, RTLD_NOW)` (not when an earlier
//! attach loaded it) and `tracer_agent_attach(region_path)`, each called on a scratch area below
//! the thread's red zone, returning to address 0 (the fault ends the call). The attach function's
//! address comes from the agent file's symbols and the load bias in the `dlopen` handle, checked
//! against the file's code (`dlsym` if that check fails): every call is one more time the held
//! thread waits for a CPU.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use super::target::TargetSymbols;
use super::tracee::{Regs, Tracee};
use super::{InjectError, Result, Tracer, CALL_WAIT, RTLD_NOW, STACK_GAP};

impl Tracer {
    /// Loads the agent in thread `tid` (unless an earlier attach did) and calls
    /// `tracer_agent_attach` there. Returns the attach function's result.
    pub(super) fn load_agent(
        &mut self,
        tid: i32,
        saved: &Regs,
        syms: &TargetSymbols,
        agent: &Path,
        region_path: &Path,
    ) -> Result<i64> {
        use std::os::unix::ffi::OsStrExt;
        let scratch = (saved.rsp - STACK_GAP - 4096) & !0xF;
        let strings = |s: &[u8], at: u64| -> Result<u64> {
            let mut bytes = s.to_vec();
            bytes.push(0);
            self.mem.write_all_at(&bytes, at)?;
            Ok(at)
        };
        let agent_at = strings(agent.as_os_str().as_bytes(), scratch)?;
        let name_at = strings(b"tracer_agent_attach", scratch + 1024)?;
        let region_at = strings(region_path.as_os_str().as_bytes(), scratch + 1536)?;
        let sp = scratch - 256;
        // Each call is one more time the held thread must get a CPU, which on a busy target can
        // take milliseconds: `tracer_agent_attach` is found without calling `dlsym` (and, when
        // the agent is loaded already, without `dlopen`), its address checked against the file.
        let loaded = syms
            .attach_loaded
            .filter(|&at| self.code_matches(at, &syms.attach_code));
        let attach = match loaded {
            Some(at) => at,
            None => {
                let handle = self.call(tid, saved, sp, syms.dlopen, agent_at, RTLD_NOW)?;
                if handle == 0 {
                    return Err(InjectError::LoadFailed(agent.to_path_buf()));
                }
                // glibc's handle is the object's `struct link_map`, whose first field is its
                // load bias (`l_addr`).
                let mut bias = [0u8; 8];
                self.mem.read_exact_at(&mut bias, handle)?;
                let at = u64::from_le_bytes(bias).wrapping_add(syms.attach_offset);
                if self.code_matches(at, &syms.attach_code) {
                    at
                } else {
                    self.call(tid, saved, sp, syms.dlsym, handle, name_at)?
                }
            }
        };
        if attach == 0 {
            return Err(InjectError::NoAttachEntry(agent.to_path_buf()));
        }
        let hooks = self.call(tid, saved, sp, attach, region_at, 0)? as i32 as i64;
        if hooks == -2 {
            return Err(InjectError::AlreadyRecorded);
        }
        if hooks == -1 {
            return Err(InjectError::RegionUnreachable(region_path.to_path_buf()));
        }
        if hooks < 0 {
            return Err(InjectError::RegionUnusable);
        }
        Ok(hooks)
    }

    /// Whether the target's memory at `at` holds `code`.
    fn code_matches(&self, at: u64, code: &[u8]) -> bool {
        let mut found = vec![0u8; code.len()];
        !code.is_empty() && self.mem.read_exact_at(&mut found, at).is_ok() && found == code
    }

    /// Calls `function(a, b)` in the stopped thread `tid` on the stack at `sp`; returns `rax`.
    fn call(
        &mut self,
        tid: i32,
        saved: &Regs,
        sp: u64,
        function: u64,
        a: u64,
        b: u64,
    ) -> Result<u64> {
        let mut regs = *saved;
        // Return address 0: the function's `ret` faults, which ends the call.
        let sp = (sp & !0xF) - 8;
        self.mem.write_all_at(&0u64.to_le_bytes(), sp)?;
        regs.rsp = sp;
        regs.rip = function;
        regs.rdi = a;
        regs.rsi = b;
        regs.rax = 0;
        regs.orig_rax = u64::MAX;
        let tracee = Tracee(tid);
        tracee.set_regs(&regs)?;
        tracee.cont(0)?;
        let deadline = Instant::now() + CALL_WAIT;
        loop {
            let Some((who, status)) = self.wait(deadline)? else {
                return Err(InjectError::CallTimedOut);
            };
            if who != tid {
                self.handle(who, status)?;
                continue;
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                return Err(InjectError::Exited);
            }
            let sig = libc::WSTOPSIG(status);
            if status >> 16 == 0 && sig == libc::SIGSEGV {
                let regs = tracee.regs()?;
                if regs.rip == 0 {
                    return Ok(regs.rax);
                }
                return Err(InjectError::Faulted(regs.rip));
            }
            // Another signal or event on this thread: let it run on (handlers return here).
            let deliver = if status >> 16 == 0 { sig } else { 0 };
            tracee.cont(deliver)?;
        }
    }
}
