//! The agent: the library loaded into the traced process (`LD_PRELOAD=libagent.so`). It exports
//! the `-finstrument-functions` hooks `__cyg_profile_func_enter/exit`, maps the tracer's region
//! (the `registry` crate), registers each thread lazily on its first event and writes every call
//! and return into that thread's lanes: a 32-byte ATF index event (already in its on-disk form,
//! timestamp in `CLOCK_BOOTTIME` nanoseconds) and, when the region enables it, an ATF detail
//! record (registers as the hook saw them, the stack pointer, `stack_bytes` bytes of the stack).
//!
//! Contract: every event a hook sees is either written into the thread's index lane or counted
//! under exactly one drop reason (ring full, shutdown, registry full, reentrant, thread teardown);
//! the hot path takes no lock, makes no system call and allocates nothing; the target is never
//! blocked indefinitely (a full lane waits a bounded time, see `ring::FullPolicy`).
//!
//! - **Finding the region.** Spawn: from the inherited memfd whose number is in
//!   `TRACER_REGION_FD` (or a path in `TRACER_REGION_PATH`), initialised from the constructor and,
//!   for hooks that run earlier (another library's constructor), lazily from the first hook. No
//!   region, or an invalid one: one line on stderr, and every hook returns at once (untraced,
//!   ~native speed). Attach: the tracer `dlopen`s the agent (whose constructor then does nothing)
//!   and calls `tracer_agent_attach(path)`, which maps the region, redirects the program's hook
//!   GOT entries to the agent and puts them back at the stop (see `attach`).
//! - **Threads.** Per-thread state lives in the region's slot and in an agent-private array indexed
//!   by slot; the only thread-local storage is a 32-byte initial-exec TLS block reached with one
//!   `fs`-relative load (no `__tls_get_addr`). A pthread key destructor (run in the last rounds)
//!   marks the slot exited; later events of that thread count as `thread_teardown`.
//! - **Reentrancy.** A hook that runs while the same thread is inside a hook (a signal handler
//!   calling instrumented code) is counted as `reentrant` and not written.
//! - **fork.** The child re-registers its thread under its own pid on its next event, continuing
//!   at the same call depth; the parent's slots are untouched.
//! - **exec.** Tracing is inherited on purpose: the memfd stays open across `exec` and the
//!   environment keeps `LD_PRELOAD` and `TRACER_REGION_FD`, so an exec'd instrumented program is
//!   traced too, its threads keyed by (pid, tid) in their own slots. A new image first retires the
//!   slots its previous image of the same pid left active.
//!
//! The example below is what the tracer does (the `cli` crate); the agent itself has no Rust API:
//!
//! ```text
//! let region = registry::SharedRegion::create(&RegionConfig::default())?;
//! let fd = region.inheritable_fd()?;
//! Command::new(target).env("LD_PRELOAD", agent_so).env(registry::ENV_REGION_FD, fd.to_string())
//! ```

mod attach;
mod hook;
mod thread;

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU8};

use registry::{Registry, SharedRegion};

use crate::thread::ThreadState;

/// Initialisation states.
const UNINIT: u8 = 0;
const INITIALISING: u8 = 1;
const READY: u8 = 2;
const DISABLED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static AGENT: AtomicPtr<Agent> = AtomicPtr::new(core::ptr::null_mut());
/// The pthread key of the thread teardown destructor, created once (0 until then).
static KEY: AtomicU32 = AtomicU32::new(0);
/// Set once the key exists and the fork handler is installed.
static PROCESS_HOOKS: AtomicU8 = AtomicU8::new(0);

/// The process-wide agent, made once and never freed.
pub(crate) struct Agent {
    pub(crate) reg: Registry<'static>,
    /// Per-slot thread state, agent-private (`capacity` entries).
    pub(crate) threads: *mut ThreadState,
    /// This process's pid (updated in a fork child).
    pub(crate) pid: AtomicU32,
    /// 1 when producers must fence (no membarrier registration, or the region says so).
    pub(crate) fenced: AtomicU32,
    pub(crate) key: libc::pthread_key_t,
    /// Which attachment this agent serves: 1 for the first, one more for each later attach.
    /// Threads registered under an older one re-register (see `thread::acquire_state`).
    pub(crate) generation: u32,
}

// SAFETY: `threads` is only dereferenced for the slot the calling thread owns.
unsafe impl Sync for Agent {}
// SAFETY: as above.
unsafe impl Send for Agent {}

/// Writes one line to stderr without allocating or locking.
fn say(line: &str) {
    let mut buf = [0u8; 512];
    let prefix = b"tracer agent: ";
    let body = line.as_bytes();
    let n = (prefix.len() + body.len()).min(buf.len() - 1);
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..n].copy_from_slice(&body[..n - prefix.len()]);
    buf[n] = b'\n';
    // SAFETY: writing our own buffer to fd 2; a failed write is ignored (nothing else to do).
    unsafe { libc::write(2, buf.as_ptr().cast(), n + 1) };
}

/// The agent, initialising it if needed. `None`: untraced (no region, invalid region, or this
/// thread is the one initialising and re-entered through an instrumented callee).
#[inline]
pub(crate) fn agent() -> Option<&'static Agent> {
    // Acquire: pairs with the Release store of READY in `init`: the agent is fully built.
    match STATE.load(Acquire) {
        READY => {
            // Acquire: pairs with the Release store in `attach::tracer_agent_attach` (a later
            // attach replaces the agent); every agent is fully built before it is published.
            // SAFETY: set before READY was published, never freed.
            Some(unsafe { &*AGENT.load(Acquire) })
        }
        DISABLED => None,
        _ => init_slow(),
    }
}

/// The agent if it is already initialised; never initialises it (for the fork and thread-exit
/// handlers, which may run before an attach has made the agent).
pub(crate) fn ready_agent() -> Option<&'static Agent> {
    // Acquire: pairs with the Release stores of READY in `init_slow` and `tracer_agent_attach`.
    if STATE.load(Acquire) != READY {
        return None;
    }
    agent()
}

#[cold]
fn init_slow() -> Option<&'static Agent> {
    loop {
        // Acquire/Relaxed: winning the CAS makes this thread the initialiser.
        match STATE.compare_exchange(UNINIT, INITIALISING, Acquire, Relaxed) {
            Ok(_) => {
                let ok = init();
                // Release: pairs with the Acquire in `agent`.
                STATE.store(if ok { READY } else { DISABLED }, Release);
                return if ok { agent() } else { None };
            }
            Err(READY) | Err(DISABLED) => return agent(),
            Err(_) => {
                if thread::is_initialiser() {
                    return None; // re-entered from inside `init`
                }
                // Another thread is initialising (short, bounded): wait for it.
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }
}

fn init() -> bool {
    thread::set_initialiser(true);
    let result = build();
    thread::set_initialiser(false);
    match result {
        Ok(agent) => {
            AGENT.store(Box::into_raw(Box::new(agent)), Relaxed);
            true
        }
        Err(msg) => {
            say(&format!("{msg}; the program runs untraced"));
            false
        }
    }
}

fn build() -> Result<Agent, String> {
    let region = match SharedRegion::from_env() {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(format!(
                "no region ({} and {} are unset): start the program with `tracer spawn`",
                registry::ENV_REGION_FD,
                registry::ENV_REGION_PATH
            ))
        }
        Err(e) => return Err(e.to_string()),
    };
    build_from(region, 1)
}

/// An agent over `region`, serving attachment `generation`.
pub(crate) fn build_from(region: SharedRegion, generation: u32) -> Result<Agent, String> {
    let reg = region.leak().map_err(|e| e.to_string())?;
    let capacity = reg.capacity() as usize;
    let bytes = capacity * core::mem::size_of::<ThreadState>();
    // SAFETY: a fresh private anonymous mapping; nothing else is affected.
    let threads = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if threads == libc::MAP_FAILED {
        return Err("cannot map the per-thread state".into());
    }
    let key = process_hooks()?;
    let pid = std::process::id();
    // A fresh image of a pid that had slots (exec): those threads are gone.
    reg.retire_pid(pid);
    hook::set_detail(reg.detail_enabled());
    Ok(Agent {
        reg,
        threads: threads.cast(),
        pid: AtomicU32::new(pid),
        fenced: AtomicU32::new(u32::from(!producer_barrier_ready(&reg))),
        key,
        generation,
    })
}

/// The teardown key and the fork handler, made once per process (a later attach reuses them).
fn process_hooks() -> Result<libc::pthread_key_t, String> {
    // Acquire: pairs with the Release store below: the key is stored before the flag.
    if PROCESS_HOOKS.load(Acquire) != 0 {
        return Ok(KEY.load(Relaxed));
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-parameter; the destructor is an extern "C" fn.
    if unsafe { libc::pthread_key_create(&mut key, Some(thread::teardown)) } != 0 {
        return Err("no pthread key left for thread teardown".into());
    }
    // SAFETY: the handler is an extern "C" fn that only touches the agent's state.
    unsafe { libc::pthread_atfork(None, None, Some(thread::after_fork_in_child)) };
    KEY.store(key, Relaxed);
    // Release: pairs with the Acquire load above.
    PROCESS_HOOKS.store(1, Release);
    Ok(key)
}

/// Registers this process for the stopper's membarrier, if the region uses it. `false`: producers
/// of this process must fence.
pub(crate) fn producer_barrier_ready(reg: &Registry<'_>) -> bool {
    reg.handshake() == registry::Handshake::Membarrier && registry::membarrier::register_process()
}

/// Initialises the agent from the environment when it names a region (spawn). Loaded without one
/// (attach: `dlopen` by the tracer, which then calls `tracer_agent_attach`), it stays silent and
/// uninitialised; a hook reached without any region says so once, lazily.
extern "C" fn constructor() {
    if std::env::var_os(registry::ENV_REGION_FD).is_some()
        || std::env::var_os(registry::ENV_REGION_PATH).is_some()
    {
        let _ = agent();
    }
}

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;
