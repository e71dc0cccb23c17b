//! Phase 1: every thread of the target seized (`PTRACE_SEIZE`, which does not stop it), with
//! clone, fork and vfork events, so threads and children made meanwhile are seized by the kernel.

use super::tracee::Tracee;
use super::{InjectError, Result, Tracer, FORK_OPTIONS};

impl Tracer {
    /// Seizes every thread; repeats until a scan finds none new.
    pub(super) fn seize_all(&mut self) -> Result<()> {
        loop {
            let mut new = 0;
            for tid in tasks(self.pid)? {
                if self.tids.contains(&tid) {
                    continue;
                }
                if let Err(e) = Tracee(tid).seize(libc::PTRACE_O_TRACECLONE | FORK_OPTIONS) {
                    let errno = e.raw_os_error().unwrap_or(0);
                    if errno == libc::ESRCH && tid != self.pid {
                        continue; // that thread exited meanwhile
                    }
                    return Err(if errno == libc::ESRCH {
                        InjectError::Exited
                    } else {
                        InjectError::Seize(errno)
                    });
                }
                self.tids.push(tid);
                new += 1;
            }
            if new == 0 {
                return Ok(());
            }
        }
    }
}

/// The thread group (process) a thread belongs to.
pub(super) fn tgid(tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The thread ids of `pid`.
fn tasks(pid: i32) -> Result<Vec<i32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}
