//! Whether the processes and threads writing into a session can still run, asked by whoever waits
//! for them (the stop handshake waits for write sections, and must not wait for a thread that
//! died inside one).
//!
//! A process is watched through a pidfd: it refers to that process and no other, so a pid reused
//! after the process was reaped never passes for it. [`Liveness::watch`] takes a pidfd the caller
//! already holds (the spawned child's), [`Liveness::observe`] opens one for a pid seen alive (the
//! earlier, the safer: a pid first opened after its process was reaped and the number reused
//! would name the wrong process). A process has ended once its pidfd is readable (every thread has
//! exited; a zombie counts as ended). A thread of a live process has ended once
//! `/proc/<pid>/task/<tid>` is gone or says zombie or dead (threads die alone only through
//! `pthread_exit`, or when another thread calls `exec`).
//!
//! Contract: [`Liveness::thread_alive`] never says `false` for a thread that can still run user
//! code; it may say `true` for a while after a death (until the kernel has finished the exit).
//!
//! ```
//! let mut live = liveness::Liveness::new();
//! let me = std::process::id();
//! live.observe(me);
//! assert!(!live.process_ended(me));
//! assert!(live.thread_alive(me, me));
//! ```

use std::collections::HashMap;
use std::io::Read as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What is known about one process.
#[derive(Debug)]
enum Watched {
    /// Its pidfd, readable once it has ended.
    Pidfd(OwnedFd),
    /// It had ended (or was never seen) when a pidfd was first asked for.
    Ended,
    /// pidfds are unavailable (kernel before 5.3): ask `/proc` by pid.
    ByPid,
}

/// The processes watched so far and the answers about them. Not shared: one owner asks.
#[derive(Debug, Default)]
pub struct Liveness {
    processes: HashMap<u32, Watched>,
}

impl Liveness {
    /// Nothing watched yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Watches `pid` through `pidfd` (a pidfd of that process the caller already holds).
    pub fn watch(&mut self, pid: u32, pidfd: OwnedFd) {
        self.processes.insert(pid, Watched::Pidfd(pidfd));
    }

    /// Starts watching `pid` if it is not watched yet (opens a pidfd now, while the process is
    /// known to exist). Cheap when already watched.
    pub fn observe(&mut self, pid: u32) {
        self.processes.entry(pid).or_insert_with(|| open(pid));
    }

    /// Whether process `pid` has ended (every thread exited, zombie or reaped).
    pub fn process_ended(&mut self, pid: u32) -> bool {
        match self.processes.entry(pid).or_insert_with(|| open(pid)) {
            Watched::Pidfd(fd) => {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, no waiting.
                let n = unsafe { libc::poll(&mut p, 1, 0) };
                if n > 0 && p.revents != 0 {
                    self.processes.insert(pid, Watched::Ended);
                    return true;
                }
                false
            }
            Watched::Ended => true,
            Watched::ByPid => !matches!(
                task_state(&format!("/proc/{pid}/stat")),
                Some(s) if !ended_state(s)
            ),
        }
    }

    /// Whether thread `tid` of process `pid` can still run: its process has not ended and the
    /// thread is neither gone nor a zombie.
    pub fn thread_alive(&mut self, pid: u32, tid: u32) -> bool {
        if self.process_ended(pid) {
            return false;
        }
        match task_state(&format!("/proc/{pid}/task/{tid}/stat")) {
            Some(state) => !ended_state(state),
            None => false,
        }
    }
}

/// Opens a pidfd for `pid`.
fn open(pid: u32) -> Watched {
    // SAFETY: pidfd_open takes a pid and flags, no pointers; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd >= 0 {
        // SAFETY: a fresh descriptor nothing else owns.
        return Watched::Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ESRCH) => Watched::Ended,
        _ => Watched::ByPid,
    }
}

/// The state letter of a `/proc/.../stat` file (`R`, `S`, `Z`...), or `None` if it is gone.
fn task_state(path: &str) -> Option<u8> {
    let mut buf = [0u8; 512];
    let mut f = std::fs::File::open(path).ok()?;
    let n = f.read(&mut buf).ok()?;
    let text = &buf[..n];
    // `pid (comm) S ...`: comm may hold spaces and parentheses, so take the last ')'.
    let close = text.iter().rposition(|&b| b == b')')?;
    text.get(close + 2).copied()
}

/// Whether a state letter means the task will never run again.
fn ended_state(state: u8) -> bool {
    matches!(state, b'Z' | b'X' | b'x')
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn liveness__own_process__then_alive() {
        let mut live = Liveness::new();
        let me = std::process::id();
        assert!(!live.process_ended(me));
        assert!(live.thread_alive(me, me));
    }

    #[test]
    fn liveness__child_exited_not_reaped__then_ended() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let mut live = Liveness::new();
        live.observe(pid);
        // A zombie until reaped: ended all the same.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !live.process_ended(pid) {
            assert!(std::time::Instant::now() < deadline, "never seen ended");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!live.thread_alive(pid, pid));
        child.wait().unwrap();
        assert!(live.process_ended(pid), "still ended once reaped");
    }

    #[test]
    fn liveness__thread_exited__then_not_alive_while_process_lives() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: gettid takes no arguments.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
        })
        .join()
        .unwrap();
        let tid = rx.recv().unwrap();
        let me = std::process::id();
        let mut live = Liveness::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while live.thread_alive(me, tid) {
            assert!(
                std::time::Instant::now() < deadline,
                "thread never seen ended"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!live.process_ended(me));
    }

    #[test]
    fn task_state__comm_with_parenthesis__then_state_after_last_paren() {
        let dir = tempfile::tempdir().unwrap();
        let stat = dir.path().join("stat");
        std::fs::write(&stat, b"12 (a) b) Z 1 2 3").unwrap();
        assert_eq!(task_state(stat.to_str().unwrap()), Some(b'Z'));
        std::fs::remove_file(&stat).unwrap();
        assert_eq!(task_state(stat.to_str().unwrap()), None);
    }
}
