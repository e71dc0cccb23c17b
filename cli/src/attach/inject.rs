//! Loading the agent into a running process with ptrace, at a safe point.
//!
//! Every thread is seized (`PTRACE_SEIZE`, which does not stop it; threads created meanwhile are
//! seized by the kernel through `PTRACE_O_TRACECLONE`; forked children too, and released with the
//! breakpoint undone in their copy). A breakpoint goes on glibc's
//! `__cyg_profile_func_enter` stub, written through `/proc/<pid>/mem`: the first thread that hits
//! it is at the entry of an instrumented function and holds no libc lock (when an earlier attach
//! whose tracer died left the program's calls bound to the agent, the agent's hooks get
//! breakpoints too). The breakpoints are removed at once (the other threads keep running); that
//! thread alone calls `dlopen(agent, RTLD_NOW)` (not when an earlier attach loaded the agent)
//! and then `tracer_agent_attach(region_path)`, each on a scratch area below its red zone,
//! returning to address 0 (the fault ends the call). The attach function's address comes from
//! the agent file's symbols and the load bias in the `dlopen` handle, checked against the file's
//! code (`dlsym` if that check fails): every call is one more time the held thread waits for a
//! CPU. Its registers are then restored exactly (at the stub's entry, which now runs the original
//! instruction), and every thread is interrupted briefly and detached. The tracer never kills the
//! target, and a tracer that dies mid-way leaves it running (a seized thread is released when its
//! tracer exits).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// Why an injection failed.
#[derive(Debug)]
pub enum InjectError {
    /// `PTRACE_SEIZE` refused (errno).
    Seize(i32),
    /// The process is gone.
    Exited,
    /// No thread called an instrumented function in time.
    NoSafePoint,
    /// Another live tracer records the process (its agent's region still accepts events).
    AlreadyRecorded,
    /// Anything else, said as one line.
    Other(String),
}

impl From<std::io::Error> for InjectError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOENT) => InjectError::Exited,
            _ => InjectError::Other(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, InjectError>;

/// Addresses of libc functions in the target.
struct LibcSyms {
    /// Where to put breakpoints: glibc's hook stub, and the agent's hooks if it is loaded.
    hooks: Vec<u64>,
    dlopen: u64,
    dlsym: u64,
    /// `tracer_agent_attach` in the agent file: its address relative to the load base, and its
    /// first bytes (to check an address computed in the target before calling it).
    attach_offset: u64,
    attach_code: Vec<u8>,
    /// `tracer_agent_attach`'s address if this agent file is loaded already (an earlier attach).
    attach_loaded: Option<u64>,
}

/// Loads `agent` into `pid` and calls `tracer_agent_attach(region_path)` in it. With
/// `library_calls`, the entries of the executable's PLT are safe points too.
pub fn inject(pid: i32, agent: &Path, region_path: &Path, library_calls: bool) -> Result<Injected> {
    let syms = libc_symbols(pid, agent)?;
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
        hooks.extend(plt_entries(pid, &maps));
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
    let _ = tracer.remove_breakpoint();
    let detach = tracer.detach_all();
    let mut injected = result?;
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
    fn run(&mut self, syms: &LibcSyms, agent: &Path, region_path: &Path) -> Result<Injected> {
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
        ptrace(libc::PTRACE_SETOPTIONS, tid, 0, FORK_OPTIONS as usize)?;
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
        let set = set_regs(tid, &restore);
        let cont = ptrace(libc::PTRACE_CONT, tid, 0, 0);
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

    /// Seizes every thread; repeats until a scan finds none new.
    fn seize_all(&mut self) -> Result<()> {
        loop {
            let mut new = 0;
            for tid in tasks(self.pid)? {
                if self.tids.contains(&tid) {
                    continue;
                }
                let opts = (libc::PTRACE_O_TRACECLONE | FORK_OPTIONS) as usize;
                // SAFETY: PTRACE_SEIZE takes a tid and an options word, no pointers.
                let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, opts) };
                if r != 0 {
                    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
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

    fn set_breakpoint(&mut self) -> Result<()> {
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

    fn remove_breakpoint(&mut self) -> Result<()> {
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
    fn wait_safe_point(&mut self) -> Result<(i32, libc::user_regs_struct)> {
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
    fn trapped_at_breakpoint(
        &self,
        tid: i32,
        status: i32,
    ) -> Result<Option<libc::user_regs_struct>> {
        if !libc::WIFSTOPPED(status) || libc::WSTOPSIG(status) != libc::SIGTRAP || status >> 16 != 0
        {
            return Ok(None);
        }
        let regs = get_regs(tid)?;
        Ok(self.hit(regs.rip).map(|_| regs))
    }

    /// Resumes a thread after a stop that is not ours to act on.
    fn handle(&mut self, tid: i32, status: i32) -> Result<()> {
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
            self.release_fork(tid, status);
            return Ok(());
        }
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        let deliver = if event == libc::PTRACE_EVENT_CLONE {
            // Failing, the thread has gone: there is no new thread to hold.
            if let Ok(new) = event_msg(tid) {
                if new != 0 && !self.tids.contains(&(new as i32)) {
                    self.tids.push(new as i32);
                }
            }
            0
        } else if event != 0 {
            0 // an interrupt, group or new-thread stop
        } else if sig == libc::SIGTRAP {
            // A thread that hit the breakpoint just before it was removed: run the instruction.
            match get_regs(tid) {
                Ok(mut regs) if self.hit(regs.rip).is_some() && !self.bp_active => {
                    regs.rip -= 1;
                    set_regs(tid, &regs)?;
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
            let _ = ptrace(libc::PTRACE_LISTEN, tid, 0, 0);
            return Ok(());
        }
        let _ = ptrace(libc::PTRACE_CONT, tid, 0, deliver as usize);
        Ok(())
    }

    /// The breakpoint a thread stopped at `rip` has just executed, if any.
    fn hit(&self, rip: u64) -> Option<u64> {
        self.bps.iter().map(|b| b.0).find(|&at| at + 1 == rip)
    }

    /// Releases a child the target forked while it was seized: the breakpoint its copy of libc
    /// may hold is undone (and its trap, if it hit it), then it is detached.
    fn release_fork(&self, child: i32, status: i32) {
        if let Ok(mem) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{child}/mem"))
        {
            for &(at, original) in &self.bps {
                let mut byte = [0u8; 1];
                if mem.read_exact_at(&mut byte, at).is_ok() && byte[0] == INT3 && original != INT3 {
                    let _ = mem.write_all_at(&[original], at);
                }
            }
        }
        let mut sig = 0;
        if status >> 16 == 0 {
            sig = libc::WSTOPSIG(status);
            if sig == libc::SIGTRAP {
                if let Ok(mut regs) = get_regs(child) {
                    if self.hit(regs.rip).is_some() {
                        regs.rip -= 1;
                        let _ = set_regs(child, &regs);
                        sig = 0;
                    }
                }
            }
        }
        let _ = ptrace(libc::PTRACE_DETACH, child, 0, sig as usize);
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
                return Err(InjectError::Other(format!("waitpid: {e}")));
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

    /// Loads the agent in thread `tid` (unless an earlier attach did) and calls
    /// `tracer_agent_attach` there. Returns the attach function's result.
    fn load_agent(
        &mut self,
        tid: i32,
        saved: &libc::user_regs_struct,
        syms: &LibcSyms,
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
                    return Err(InjectError::Other(format!(
                        "the target could not load {} (dlopen failed)",
                        agent.display()
                    )));
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
            return Err(InjectError::Other(format!(
                "{} has no tracer_agent_attach; rebuild the tracer",
                agent.display()
            )));
        }
        let hooks = self.call(tid, saved, sp, attach, region_at, 0)? as i32 as i64;
        if hooks == -2 {
            return Err(InjectError::AlreadyRecorded);
        }
        if hooks == -1 {
            return Err(InjectError::Other(format!(
                "the agent could not open the tracer's region {} from inside the target (can \
                 it read the tracer's /proc/<pid>/fd? both must run as the same user)",
                region_path.display()
            )));
        }
        if hooks < 0 {
            return Err(InjectError::Other(
                "the agent found the tracer's region unusable (a tracer and agent of different \
                 versions?); rebuild the tracer"
                    .into(),
            ));
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
        saved: &libc::user_regs_struct,
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
        set_regs(tid, &regs)?;
        ptrace(libc::PTRACE_CONT, tid, 0, 0)?;
        let deadline = Instant::now() + CALL_WAIT;
        loop {
            let Some((who, status)) = self.wait(deadline)? else {
                return Err(InjectError::Other(
                    "the target did not finish loading the agent within 5 s".into(),
                ));
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
                let regs = get_regs(tid)?;
                if regs.rip == 0 {
                    return Ok(regs.rax);
                }
                return Err(InjectError::Other(format!(
                    "the target faulted while loading the agent (at {:#x})",
                    regs.rip
                )));
            }
            // Another signal or event on this thread: let it run on (handlers return here).
            let deliver = if status >> 16 == 0 { sig } else { 0 };
            ptrace(libc::PTRACE_CONT, tid, 0, deliver as usize)?;
        }
    }

    /// Interrupts and detaches every seized thread. Returns how long the round took.
    ///
    /// A thread that executed the breakpoint just before it was removed may report the interrupt
    /// before its trap: its `SIGTRAP` is still pending and would kill it once detached. Such a
    /// thread is moved back to the instruction and resumed to take the signal while still traced,
    /// where it is suppressed.
    fn detach_all(&mut self) -> Result<Duration> {
        let started = Instant::now();
        for &tid in &self.tids {
            let _ = ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0);
        }
        let deadline = Instant::now() + CALL_WAIT;
        let mut pending: Vec<i32> = self.tids.clone();
        let mut trap_pending: Vec<i32> = Vec::new();
        while !pending.is_empty() {
            let Some((tid, status)) = self.wait(deadline).unwrap_or(None) else {
                break;
            };
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                pending.retain(|&t| t != tid);
                continue;
            }
            if !self.tids.contains(&tid) && tgid(tid) != Some(self.pid) {
                self.release_fork(tid, status);
                pending.retain(|&t| t != tid);
                continue;
            }
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
                // A new thread or child stops once, seized: wait for it and release it too.
                // Failing, the thread has gone: there is no new thread to release.
                if let Ok(new) = event_msg(tid) {
                    if new != 0 && !pending.contains(&(new as i32)) {
                        pending.push(new as i32);
                    }
                }
            }
            if sig == libc::SIGTRAP && trap_pending.contains(&tid) {
                sig = 0; // the breakpoint's trap, taken now: suppressed
            } else if let Ok(mut regs) = get_regs(tid) {
                if self.hit(regs.rip).is_some() {
                    regs.rip -= 1;
                    let _ = set_regs(tid, &regs);
                    if sig == libc::SIGTRAP {
                        sig = 0;
                    } else {
                        trap_pending.push(tid);
                        let _ = ptrace(libc::PTRACE_CONT, tid, 0, 0);
                        continue;
                    }
                }
            }
            let _ = ptrace(libc::PTRACE_DETACH, tid, 0, sig as usize);
            pending.retain(|&t| t != tid);
        }
        self.tids.clear();
        Ok(started.elapsed())
    }
}

fn ptrace(request: libc::c_uint, tid: i32, addr: usize, data: usize) -> std::io::Result<()> {
    // SAFETY: requests used here take integers, not pointers, in addr and data.
    if unsafe { libc::ptrace(request, tid, addr, data) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The event message of `tid`'s last ptrace event stop (the new thread's or child's id after a
/// clone, fork or vfork event), checked.
fn event_msg(tid: i32) -> std::io::Result<libc::c_ulong> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: GETEVENTMSG writes one c_ulong to the address in data, which is `msg`, live and
    // writable for the call.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETEVENTMSG,
            tid,
            0usize,
            &mut msg as *mut libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(msg)
}

fn get_regs(tid: i32) -> Result<libc::user_regs_struct> {
    // SAFETY: an all-zero register set is a valid value; GETREGS overwrites it.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: GETREGS writes one user_regs_struct into `regs`.
    if unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0usize, &mut regs as *mut _) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(regs)
}

fn set_regs(tid: i32, regs: &libc::user_regs_struct) -> Result<()> {
    // SAFETY: SETREGS reads one user_regs_struct from `regs`.
    if unsafe { libc::ptrace(libc::PTRACE_SETREGS, tid, 0usize, regs as *const _) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Whether a `PTRACE_EVENT_STOP` with this signal is a group stop.
fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// The thread group (process) a thread belongs to.
fn tgid(tid: i32) -> Option<i32> {
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

/// Where libc is mapped in `pid`, the addresses of the functions the injection needs, and the
/// agent's hooks and attach function if `agent` is mapped already.
fn libc_symbols(pid: i32, agent: &Path) -> Result<LibcSyms> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let libc = module(&maps, |name, _, _| {
        name.starts_with("libc.so") || name.starts_with("libc-")
    })
    .ok_or_else(|| {
        InjectError::Other("the target has no libc mapped (statically linked?)".into())
    })?;
    // The target's own view of the file (it may live in another mount namespace).
    let libc_file =
        Path::new(&format!("/proc/{pid}/root")).join(libc.1.strip_prefix("/").unwrap_or(&libc.1));
    let libc_data = std::fs::read(&libc_file).or_else(|_| std::fs::read(&libc.1))?;
    let found = elf_symbols(
        &libc_data,
        &libc.1,
        &["__cyg_profile_func_enter", "dlopen", "dlsym"],
    )?;
    let mut hooks = vec![libc.0 + found[0].0];
    // The entry hooks of `-pg` and `-pg -mfentry` builds are safe points too (glibc defines
    // them; another libc may not).
    for name in ENTRY_ONLY_HOOKS {
        if let Ok(found) = elf_symbols(&libc_data, &libc.1, &[name]) {
            hooks.push(libc.0 + found[0].0);
        }
    }

    let agent_data = std::fs::read(agent)?;
    let agent_syms = elf_symbols(
        &agent_data,
        agent,
        &[
            "tracer_agent_attach",
            "__cyg_profile_func_enter",
            "__cyg_profile_func_exit",
        ],
    )?;
    let (attach_offset, attach_code) = agent_syms[0].clone();
    // Loaded already if the same file (same inode) is mapped: an earlier attach loaded it.
    let agent_path = std::fs::canonicalize(agent).unwrap_or_else(|_| agent.to_path_buf());
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(agent)?);
    let mut attach_loaded = None;
    if let Some((base, _)) = module(&maps, |_, path, ino| {
        Path::new(path) == agent_path && ino == inode
    }) {
        hooks.extend([base + agent_syms[1].0, base + agent_syms[2].0]);
        if let Ok(found) = elf_symbols(&agent_data, agent, &ENTRY_ONLY_HOOKS) {
            hooks.extend(found.iter().map(|(offset, _)| base + offset));
        }
        attach_loaded = Some(base + attach_offset);
    }
    Ok(LibcSyms {
        hooks,
        dlopen: libc.0 + found[1].0,
        dlsym: libc.0 + found[2].0,
        attach_offset,
        attach_code,
        attach_loaded,
    })
}

/// The run-time addresses of the executable's PLT entries (`.plt.sec` with IBT, else `.plt` but
/// its first, resolver entry); none if it cannot be read or has no PLT (`-fno-plt`).
fn plt_entries(pid: i32, maps: &str) -> Vec<u64> {
    use object::{Object, ObjectSection, ObjectSegment};
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return Vec::new();
    };
    let Some((start, _)) = module(maps, |_, path, _| Path::new(path) == exe) else {
        return Vec::new();
    };
    let Ok(data) = std::fs::read(format!("/proc/{pid}/exe")) else {
        return Vec::new();
    };
    let Ok(elf) = object::File::parse(&*data) else {
        return Vec::new();
    };
    // The first mapping (file offset 0) holds the lowest segment.
    let Some(first) = elf.segments().map(|s| s.address()).min() else {
        return Vec::new();
    };
    let bias = start.wrapping_sub(first & !0xfff);
    let (section, skip) = match elf.section_by_name(".plt.sec") {
        Some(s) => (s, 0),
        None => match elf.section_by_name(".plt") {
            Some(s) => (s, PLT_ENTRY),
            None => return Vec::new(),
        },
    };
    (section.address() + skip..section.address() + section.size())
        .step_by(PLT_ENTRY as usize)
        .map(|a| a.wrapping_add(bias))
        .collect()
}

/// Bytes per x86-64 PLT entry.
const PLT_ENTRY: u64 = 16;

/// The entry-only hooks (`-pg`, `-pg -mfentry`, patched sleds) a thread may be stopped at.
const ENTRY_ONLY_HOOKS: [&str; 3] = ["mcount", "__fentry__", "tracer_patch_entry"];

/// Bytes of a function's code compared before calling it at a computed address.
const CODE_CHECK: u64 = 16;

/// The address (relative to the load base) and first bytes of each of `wanted`, defined in the
/// ELF file `data` (read from `path`).
fn elf_symbols(data: &[u8], path: &Path, wanted: &[&str]) -> Result<Vec<(u64, Vec<u8>)>> {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let elf = object::File::parse(data)
        .map_err(|e| InjectError::Other(format!("cannot read {}: {e}", path.display())))?;
    wanted
        .iter()
        .map(|name| {
            let address = elf
                .dynamic_symbols()
                .filter(|s| s.is_definition() && s.address() != 0)
                .find(|s| s.name().ok() == Some(*name))
                .map(|s| s.address())
                .ok_or_else(|| {
                    InjectError::Other(format!("{} does not define {name}", path.display()))
                })?;
            let code = elf
                .segments()
                .find_map(|seg| seg.data_range(address, CODE_CHECK).ok().flatten())
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            Ok((address, code))
        })
        .collect()
}

/// The load address and path of the first module in `maps` that `wanted(file name, path, inode)`
/// picks. The maps parser of `symbols` reads the path as the rest of the line, so a path with
/// spaces is kept whole.
fn module(maps: &str, wanted: impl Fn(&str, &str, u64) -> bool) -> Option<(u64, PathBuf)> {
    crate::symbols::maps::parse(maps).into_iter().find_map(|m| {
        let name = Path::new(&m.path).file_name()?.to_str()?;
        (m.offset == 0 && wanted(name, &m.path, m.inode)).then(|| (m.start, PathBuf::from(&m.path)))
    })
}

#[cfg(test)]
#[allow(non_snake_case)]
mod module_tests {
    use super::*;

    #[test]
    fn module__library_path_with_spaces__then_whole_path_found() {
        let maps =
            "7f0000000000-7f0000001000 r-xp 00000000 08:01 1234   /opt/my libs/libagent.so\n";
        let found = module(maps, |name, _, _| name == "libagent.so");
        assert_eq!(
            found,
            Some((0x7f00_0000_0000, PathBuf::from("/opt/my libs/libagent.so")))
        );
    }
}
