//! Loading the agent into a running process with ptrace, at a safe point, in four phases, each in
//! its own module, over a typed tracee whose every request is checked ([`tracee`]):
//!
//! 1. [`seize`]: every thread is seized (`PTRACE_SEIZE`, which does not stop it; threads created
//!    meanwhile are seized by the kernel through `PTRACE_O_TRACECLONE`; forked children too, and
//!    released with the breakpoint undone in their copy).
//! 2. [`safepoint`]: a breakpoint goes on glibc's hook stubs, written through `/proc/<pid>/mem`:
//!    the first thread that hits it is at the entry of an instrumented function and holds no libc
//!    lock (when an earlier attach whose tracer died left the program's calls bound to the agent,
//!    the agent's hooks get breakpoints too; so do patchable entries' sleds). The breakpoints are
//!    removed at once (the other threads keep running).
//! 3. [`load`]: that thread alone calls `dlopen(agent, RTLD_NOW)` (not when an earlier attach
//!    loaded the agent) and then `tracer_agent_attach(region_path)`. Its registers are then
//!    restored exactly (at the stub's entry, which now runs the original instruction).
//! 4. [`release`]: every thread is interrupted briefly and detached.
//!
//! The addresses come from the files libc and the agent are mapped from ([`target`]), read with
//! the tracer's own ELF reader and maps parser (`crate::symbols`). The tracer never kills the
//! target, and a tracer that dies mid-way leaves it running (a seized thread is released when its
//! tracer exits).

mod load;
mod release;
mod safepoint;
mod seize;
mod target;
mod tracee;

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use target::TargetSymbols;
use tracee::Tracee;

/// How long the target has to call an instrumented function once the breakpoint is set.
const SAFE_POINT_WAIT: Duration = Duration::from_secs(3);
/// How long each injected call may take.
const CALL_WAIT: Duration = Duration::from_secs(5);
const RTLD_NOW: u64 = 2;
const INT3: u8 = 0xCC;
/// Bytes of the stack left alone below the interrupted frame (the x86-64 red zone and more).
const STACK_GAP: u64 = 1024;
/// Forked children are seized too, so one that inherits the breakpoint is released with the
/// original byte back rather than killed by its trap.
const FORK_OPTIONS: i32 = libc::PTRACE_O_TRACEFORK | libc::PTRACE_O_TRACEVFORK;

/// What the injection did, for the summary and the stop-time benchmark.
#[derive(Debug, Clone)]
pub struct Injected {
    /// Threads seized.
    pub threads: usize,
    /// How long the chosen thread was held while it loaded the agent.
    pub injecting_thread_stopped: Duration,
    /// How long the final interrupt-and-detach round took (each thread is stopped within it).
    pub detach_round: Duration,
    /// Of the time held, how long the loading thread ran and how long it waited for a CPU
    /// (`/proc/<pid>/task/<tid>/schedstat`; `None` without it). The rest is the tracer's turns
    /// and the thread sleeping in the kernel.
    pub held_scheduling: Option<Scheduling>,
    /// GOT entries the agent redirected.
    pub hooks: i64,
}

/// A thread's scheduler time over an interval.
#[derive(Debug, Clone, Copy)]
pub struct Scheduling {
    /// On a CPU.
    pub running: Duration,
    /// Runnable, waiting for a CPU.
    pub runnable: Duration,
}

/// (ns on a CPU, ns waiting for one) of a thread so far, from its schedstat.
fn schedstat(pid: i32, tid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// Why an injection failed. The first four are answered by the caller with their own advice;
/// the others read as one line, with the system's error as their source where there is one.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// `PTRACE_SEIZE` refused (errno).
    #[error("PTRACE_SEIZE was refused (errno {0})")]
    Seize(i32),
    /// The process is gone.
    #[error("the process exited")]
    Exited,
    /// No thread called an instrumented function in time.
    #[error("no thread reached a safe point in time")]
    NoSafePoint,
    /// Another live tracer records the process (its agent's region still accepts events).
    #[error("another tracer records the process")]
    AlreadyRecorded,
    /// The target maps no C library, whose loader functions the injection calls.
    #[error("the target has no libc mapped (statically linked?)")]
    NoLibc,
    /// The target's C library lacks a function the injection calls.
    #[error("{library} does not define {name}")]
    LibcLacks {
        /// The library file.
        library: std::path::PathBuf,
        /// The function.
        name: &'static str,
    },
    /// The agent library lacks its entry points: a tracer built from mixed versions.
    #[error("{0} does not define the agent's functions; rebuild the tracer")]
    AgentIncomplete(std::path::PathBuf),
    /// The target's `dlopen` of the agent returned no handle.
    #[error("the target could not load {0} (dlopen failed)")]
    LoadFailed(std::path::PathBuf),
    /// The loaded agent has no attach entry point.
    #[error("{0} has no tracer_agent_attach; rebuild the tracer")]
    NoAttachEntry(std::path::PathBuf),
    /// The agent could not open the tracer's region through `/proc/<tracer>/fd`.
    #[error(
        "the agent could not open the tracer's region {0} from inside the target (can it read \
         the tracer's /proc/<pid>/fd? both must run as the same user)"
    )]
    RegionUnreachable(std::path::PathBuf),
    /// The agent found the region's layout not its own.
    #[error(
        "the agent found the tracer's region unusable (a tracer and agent of different \
         versions?); rebuild the tracer"
    )]
    RegionUnusable,
    /// A function called in the target did not return in time.
    #[error("the target did not finish loading the agent within 5 s")]
    CallTimedOut,
    /// A function called in the target faulted somewhere else than at its return.
    #[error("the target faulted while loading the agent (at {0:#x})")]
    Faulted(u64),
    /// Reading a library's symbols failed.
    #[error("cannot read the symbols the injection needs")]
    Symbols(#[source] crate::symbols::SymbolError),
    /// A system call on the target (ptrace, its memory, its /proc files) failed.
    #[error("a system call on the target failed")]
    Os(#[source] std::io::Error),
}

impl From<std::io::Error> for InjectError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOENT) => InjectError::Exited,
            _ => InjectError::Os(e),
        }
    }
}

type Result<T> = std::result::Result<T, InjectError>;

/// Loads `agent` into `pid` and calls `tracer_agent_attach(region_path)` in it. With
/// `library_calls`, the entries of the executable's PLT are safe points too.
pub fn inject(pid: i32, agent: &Path, region_path: &Path, library_calls: bool) -> Result<Injected> {
    let syms = target::target_symbols(pid, agent)?;
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))?;
    let _sigchld = SigchldBlocked::new();
    let mut hooks = syms.hooks.clone();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    hooks.extend(super::sleds::safe_points(pid, &maps, &mem));
    if library_calls {
        // A thread at one is in the program's own code, calling out: the safe point of a
        // program not built for call tracing, whose library calls the agent records.
        hooks.extend(target::plt_entries(pid, &maps));
    }
    let mut tracer = Tracer {
        pid,
        tids: Vec::new(),
        mem,
        bps: hooks.iter().map(|&at| (at, 0)).collect(),
        bp_active: false,
    };
    let result = tracer.run(&syms, agent, region_path);
    // Whatever happened, leave no breakpoint and no seized thread behind.
    let removed = tracer.remove_breakpoint();
    let detach = tracer.detach_all();
    let mut injected = result?;
    removed?;
    injected.detach_round = detach?;
    Ok(injected)
}

/// SIGCHLD blocked in the calling thread while it waits for tracees (so `sigtimedwait` can take
/// it), restored on drop.
struct SigchldBlocked {
    old: libc::sigset_t,
}

impl SigchldBlocked {
    fn new() -> Self {
        // SAFETY: valid signal sets; pthread_sigmask only changes this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            SigchldBlocked { old }
        }
    }
}

impl Drop for SigchldBlocked {
    fn drop(&mut self) {
        // A SIGCHLD still pending here is consumed first: its default action is to ignore it.
        // SAFETY: restores the mask saved in `new`, for this thread only.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

struct Tracer {
    pid: i32,
    tids: Vec<i32>,
    mem: File,
    /// Breakpoints: address and the original byte there. glibc's stub, and the agent's own hooks
    /// when an earlier attach left them bound (its tracer died before the stop).
    bps: Vec<(u64, u8)>,
    bp_active: bool,
}

impl Tracer {
    fn run(&mut self, syms: &TargetSymbols, agent: &Path, region_path: &Path) -> Result<Injected> {
        self.seize_all()?;
        self.set_breakpoint()?;
        let (tid, saved) = self.wait_safe_point()?;
        let held = Instant::now();
        let sched_before = schedstat(self.pid, tid);
        self.remove_breakpoint()?;
        // Threads this one starts from now on are not seized: the agent starts one of its own
        // (it registers the process for membarrier, see the agent's doc), which then costs this
        // thread no clone stop and the detach round no wait for it. With the breakpoint gone, an
        // untraced new thread has nothing to trip on.
        let held_thread = Tracee(tid);
        held_thread.set_options(FORK_OPTIONS)?;
        let mut restore = saved;
        restore.rip = saved.rip - 1;
        let outcome = self.load_agent(tid, &saved, syms, agent, region_path);
        let held_scheduling =
            sched_before
                .zip(schedstat(self.pid, tid))
                .map(|((run0, wait0), (run1, wait1))| Scheduling {
                    running: Duration::from_nanos(run1.saturating_sub(run0)),
                    runnable: Duration::from_nanos(wait1.saturating_sub(wait0)),
                });
        // Back to the stub's entry, exactly as it was (it was not in a system call).
        restore.orig_rax = u64::MAX;
        let set = held_thread.set_regs(&restore);
        let cont = held_thread.cont(0);
        let injecting_thread_stopped = held.elapsed();
        let hooks = outcome?;
        set?;
        cont?;
        Ok(Injected {
            threads: self.tids.len(),
            injecting_thread_stopped,
            detach_round: Duration::ZERO,
            held_scheduling,
            hooks,
        })
    }

    /// `waitpid(-1, __WALL | WNOHANG)` until `deadline`; `None` on timeout.
    fn wait(&self, deadline: Instant) -> Result<Option<(i32, i32)>> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into our variable.
            let tid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::WNOHANG) };
            if tid > 0 {
                return Ok(Some((tid, status)));
            }
            if tid < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ECHILD) {
                    return Err(InjectError::Exited);
                }
                return Err(InjectError::Os(e));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            // Sleep until a tracee changes state (its stop sends us SIGCHLD, blocked in this
            // thread by `block_sigchld`), or 1 ms at most (the signal may go to another thread).
            let left = deadline.saturating_duration_since(Instant::now());
            let nap = left.min(Duration::from_millis(1));
            let timeout = libc::timespec {
                tv_sec: 0,
                tv_nsec: nap.as_nanos() as libc::c_long,
            };
            // SAFETY: a valid, initialised signal set and timespec; the signal info is not wanted.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGCHLD);
                libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout);
            }
        }
    }
}
