//! The agent: the library loaded into the traced process (`LD_PRELOAD=libagent.so`). It exports
//! the `-finstrument-functions` hooks `__cyg_profile_func_enter/exit` and the entry-only hooks of
//! `-pg` / `-pg -mfentry` builds (`mcount`, `_mcount`, `__fentry__`: the return is intercepted
//! through a per-thread shadow stack, the `retstack` crate; see `entry`), patches the NOP sleds of
//! `-fpatchable-function-entry` builds into calls of the same entry path while it records (see
//! `patch`), maps the tracer's region
//! (the `registry` crate), registers each thread lazily on its first event and writes every call
//! and return into that thread's lanes: a 32-byte ATF index event (already in its on-disk form,
//! timestamp in `CLOCK_BOOTTIME` nanoseconds) and, when the region enables it, an ATF detail
//! record (registers as the hook saw them, the stack pointer, `stack_bytes` bytes of the stack).
//!
//! Contract: every event a hook sees is either written into the thread's index lane or counted
//! under exactly one drop reason (ring full, shutdown, registry full, reentrant, thread teardown);
//! the hot path takes no lock, makes no system call and allocates nothing; the target is never
//! blocked indefinitely (a full lane waits a bounded time, see `ring::FullPolicy`). An entry-only
//! hook records its call only if it could hook the return (a call deeper than the shadow stack
//! records neither, said once); the first hook of a thread allocates its shadow stack.
//!
//! - **Finding the region.** Spawn: from the inherited memfd whose number is in
//!   `TRACER_REGION_FD` (or a path in `TRACER_REGION_PATH`), initialised from the constructor and,
//!   for hooks that run earlier (another library's constructor), lazily from the first hook. No
//!   region, or an invalid one: one line on stderr, and every hook returns at once (untraced,
//!   ~native speed). Attach: the tracer `dlopen`s the agent (whose constructor then does nothing)
//!   and calls `tracer_agent_attach(path)`, which maps the region, redirects the program's hook
//!   GOT entries to the agent and puts them back at the stop (see `attach`).
//! - **The stop handshake's barrier.** With [`registry::Handshake::Membarrier`] a producer may
//!   skip its fence only once its process is registered for the stopper's membarrier. Spawn
//!   registers in the constructor (one thread: cheap). Attach must not: in a multi-threaded
//!   process the kernel's registration waits for an RCU grace period (6–16 ms), and the tracer
//!   holds the loading thread meanwhile. So the first attachment starts a short-lived thread that
//!   registers and exits; producers fence until they see it done ([`producers_must_fence`]), then
//!   drop the fence on their next event. Registration is per process and permanent: later
//!   attachments find it done.
//! - **Threads.** Per-thread state lives in the region's slot and in an agent-private array indexed
//!   by slot; the only thread-local storage is a 40-byte initial-exec TLS block reached with one
//!   `fs`-relative load (no `__tls_get_addr`). A pthread key destructor (run in the last rounds)
//!   marks the slot exited; later events of that thread count as `thread_teardown`.
//! - **Reentrancy.** A hook that runs while the same thread is inside a hook (a signal handler
//!   calling instrumented code) is counted as `reentrant` and not written.
//! - **fork.** The child re-registers its thread under its own pid on its next event, continuing
//!   at the same call depth; the parent's slots are untouched. With following turned off
//!   (`tracer spawn --no-follow`, `registry::Registry::set_follow_processes`), a process other
//!   than the target (a fork child, or a program one execs) runs untraced, silently.
//! - **exec.** Tracing is inherited on purpose: the memfd stays open across `exec` and the
//!   environment keeps `LD_PRELOAD` and `TRACER_REGION_FD`, so an exec'd instrumented program is
//!   traced too, its threads keyed by (pid, tid) in their own slots. A new image first retires the
//!   slots its previous image of the same pid left active.
//! - **Images and names.** Each agent start takes a new image serial from the region, reports the
//!   objects the loader has mapped into the region's module log (and, after each `dlopen`, the
//!   objects it added; see `modules`), and tags every function id it records with the serial
//!   (`registry::image_tag`): an exec'd program's functions never share ids with its parent's,
//!   even at the same addresses (`-no-pie`). A fork child keeps its parent's image.
//!
//! The example below is what the tracer does (the `cli` crate); the agent itself has no Rust API:
//!
//! ```text
//! let region = registry::SharedRegion::create(&RegionConfig::default())?;
//! let fd = region.inheritable_fd()?;
//! Command::new(target).env("LD_PRELOAD", agent_so).env(registry::ENV_REGION_FD, fd.to_string())
//! ```

mod attach;
mod detach;
pub(crate) mod entry;
mod hook;
mod live;
mod modules;
mod patch;
mod thread;

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicU32, AtomicU8};

use registry::{Registry, SharedRegion};

use crate::thread::ThreadState;

/// The pthread key of the thread teardown destructor, created once (0 until then).
static KEY: AtomicU32 = AtomicU32::new(0);
/// Set once the key exists and the fork handler is installed.
static PROCESS_HOOKS: AtomicU8 = AtomicU8::new(0);
/// This process's membarrier registration: one of the `BARRIER_*` states.
static BARRIER: AtomicU8 = AtomicU8::new(BARRIER_NONE);
/// Not registered (nobody tried yet, or starting the registering thread failed).
const BARRIER_NONE: u8 = 0;
/// A registering thread is at it.
const BARRIER_PENDING: u8 = 1;
/// Registered: producers of a membarrier region need no fence.
const BARRIER_READY: u8 = 2;
/// The kernel refused: producers fence.
const BARRIER_REFUSED: u8 = 3;

/// The agent of one attachment (or of spawn mode): made by `build_agent`, published by `live`, and
/// freed, with its region and thread array, when a detached attachment is reclaimed.
pub(crate) struct Agent {
    pub(crate) reg: Registry<'static>,
    /// The region's mapping (unmapped when the attachment is reclaimed).
    mapping: registry::Mapping,
    /// Per-slot thread state, agent-private (`capacity` entries).
    pub(crate) threads: *mut ThreadState,
    /// The thread array's size in bytes.
    threads_len: usize,
    /// This process's pid (updated in a fork child).
    pub(crate) pid: AtomicU32,
    /// Which attachment this agent serves: 1 for the first, one more for each later attach.
    /// Threads registered under an older one re-register (see `thread::acquire_state`).
    pub(crate) generation: u32,
    /// This process image's serial in the region (see `registry::modules`).
    pub(crate) image: u32,
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

/// Builds spawn mode's agent from the environment (`live` publishes it). `None`: untraced, said
/// once on stderr.
fn init() -> Option<Agent> {
    thread::set_initialiser(true);
    let result = build();
    thread::set_initialiser(false);
    match result {
        Ok(agent) => Some(agent),
        Err(msg) => {
            if !msg.is_empty() {
                say(&format!("{msg}; the program runs untraced"));
            }
            None
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
    let agent = build_agent(region, 1)?;
    // Spawn: the constructor runs before the program starts threads, so registering here is cheap.
    register_now(&agent.reg);
    let sleds = patch::apply(agent.generation);
    if sleds.skipped > 0 {
        say(&format!(
            "{} patchable function entries left unpatched (their calls are not recorded): an \
             unknown NOP form, or code that cannot be made writable",
            sleds.skipped
        ));
    }
    Ok(agent)
}

/// An agent over `region`, serving attachment `generation` (attach: the caller is a thread the
/// tracer holds, so the membarrier registration, if still needed, runs on a thread of its own).
pub(crate) fn build_from(region: SharedRegion, generation: u32) -> Result<Agent, String> {
    let agent = build_agent(region, generation)?;
    if agent.reg.handshake() == registry::Handshake::Membarrier {
        register_in_background();
    }
    Ok(agent)
}

fn build_agent(region: SharedRegion, generation: u32) -> Result<Agent, String> {
    let view = region.registry().map_err(|e| e.to_string())?;
    if !view.traces_process(std::process::id()) {
        // A process the target started, with following turned off: untraced, silently.
        return Err(String::new());
    }
    let capacity = view.capacity() as usize;
    process_hooks()?;
    detach::on_detach(restore_patches);
    let threads_len = capacity * core::mem::size_of::<ThreadState>();
    // SAFETY: a fresh private anonymous mapping; nothing else is affected.
    let threads = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            threads_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if threads == libc::MAP_FAILED {
        return Err("cannot map the per-thread state".into());
    }
    let (reg, mapping) = match region.leak_unmappable() {
        Ok(leaked) => leaked,
        Err(e) => {
            // SAFETY: mapped just above, used by nothing yet.
            unsafe { libc::munmap(threads, threads_len) };
            return Err(e.to_string());
        }
    };
    let pid = std::process::id();
    // A fresh image of a pid that had slots (exec): those threads are gone.
    reg.retire_pid(pid);
    hook::set_detail(reg.detail_enabled());
    // The objects this image has mapped, for the tracer to name its functions from the files.
    let image = reg.new_image();
    modules::forget();
    modules::report_new(&reg, pid, image);
    Ok(Agent {
        reg,
        mapping,
        threads: threads.cast(),
        threads_len,
        pid: AtomicU32::new(pid),
        generation,
        image,
    })
}

/// The detach callback of `patch`: the sleds the stopped attachment patched go back.
fn restore_patches(agent: &Agent) {
    patch::restore(agent.generation);
}

impl Agent {
    /// Unmaps the thread array and the region.
    ///
    /// # Safety
    /// No thread uses this agent, its thread array or its region again.
    unsafe fn unmap(self: Box<Self>) {
        let Agent {
            mapping,
            threads,
            threads_len,
            ..
        } = *self;
        // SAFETY: the array mapped in `build_agent`, unused now (the caller's contract).
        unsafe { libc::munmap(threads.cast(), threads_len) };
        // SAFETY: as above, for the region.
        unsafe { mapping.unmap() };
    }
}

/// The thread-exit destructor's key, once made.
pub(crate) fn teardown_key() -> Option<libc::pthread_key_t> {
    // Acquire: pairs with the Release store in `process_hooks`: the key is stored before the flag.
    (PROCESS_HOOKS.load(Acquire) != 0).then(|| KEY.load(Relaxed))
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

/// Whether a producer writing into `reg` must fence its write sections: the region says
/// [`registry::Handshake::Fence`], or this process is not (yet) registered for the stopper's
/// membarrier. Once this is `false` it stays so for that region.
///
/// Why dropping the fence mid-recording is sound (the Dekker pair of `SlotWriter::begin` and
/// `Registry::stop_accepting`: producer stores `in_write`, barrier, loads `accepting`; stopper
/// clears `accepting`, fence and membarrier, loads `in_write`). While fenced, the producer's
/// barrier is its own `SeqCst` fence, which pairs with the stopper's fence whatever the
/// registration's state: a stop that comes before the registration finishes is handled like a
/// [`registry::Handshake::Fence`] region. Unfenced, the producer relies on the stopper's
/// membarrier running a full barrier on its CPU; the kernel's registration returns only after it
/// has marked every CPU running the process and run a full barrier there (and a thread scheduled
/// later is marked by its context switch, itself a full barrier). A stopper's membarrier that reads
/// a CPU's mark before it was set is ordered, by its own barrier and that one, before the
/// producer's later load of `accepting`, which therefore sees the stop. A producer drops its fence
/// only after seeing READY, which is stored after the registration returned: its unfenced sections
/// all follow the registration.
#[inline]
pub(crate) fn producers_must_fence(reg: &Registry<'_>) -> bool {
    // Acquire: pairs with the Release stores of READY in `register_now` and `registering_thread`
    // (a producer that sees READY runs its later write sections after the registration).
    reg.handshake() != registry::Handshake::Membarrier || BARRIER.load(Acquire) != BARRIER_READY
}

/// Whether this process is registered for the expedited membarrier (so a barrier from inside it
/// reaches its threads in microseconds).
pub(crate) fn membarrier_registered() -> bool {
    // Acquire: pairs with the Release stores of READY in `register_now` and `registering_thread`.
    BARRIER.load(Acquire) == BARRIER_READY
}

/// Registers this process for the stopper's membarrier on the calling thread, if the region uses
/// it (spawn's constructor, and a fork child: one thread, so the kernel's registration is cheap).
pub(crate) fn register_now(reg: &Registry<'_>) {
    if reg.handshake() != registry::Handshake::Membarrier {
        return;
    }
    let state = if registry::membarrier::register_process() {
        BARRIER_READY
    } else {
        BARRIER_REFUSED
    };
    // Release: pairs with the Acquire in `producers_must_fence`.
    BARRIER.store(state, Release);
}

/// A fork child: it has no registering thread (only the forking thread is copied) and a process
/// of its own, so it registers afresh when it runs an agent.
pub(crate) fn barrier_after_fork(reg: Option<&Registry<'_>>) {
    // Release: pairs with the Acquire in `producers_must_fence` (NONE: fence until registered).
    BARRIER.store(BARRIER_NONE, Release);
    if let Some(reg) = reg {
        register_now(reg);
    }
}

/// Starts the thread that registers this process for the stopper's membarrier, unless it is
/// registered, refused, or being registered already. If the thread cannot be started, producers
/// keep fencing (correct, a few ns more per event) and the next attachment tries again.
///
/// Starting a thread here is safe: the caller is at a point where it holds no libc lock (the
/// tracer's safe point, the same that makes its `dlopen` safe), and `pthread_create` takes only
/// the loader's and the stack cache's locks. The thread is detached, blocks every signal (so no
/// signal of the program is ever delivered to it), runs agent code only (no instrumented
/// function, no pthread key) and exits once the flag is published.
fn register_in_background() {
    // Relaxed: the CAS only elects the starter; the state it publishes is ordered by its own
    // Release store.
    if BARRIER
        .compare_exchange(BARRIER_NONE, BARRIER_PENDING, Relaxed, Relaxed)
        .is_err()
    {
        return;
    }
    if !spawn_detached(registering_thread) {
        // Relaxed: NONE makes producers fence, as PENDING did.
        BARRIER.store(BARRIER_NONE, Relaxed);
    }
}

/// The registering thread's body.
extern "C" fn registering_thread(_: *mut libc::c_void) -> *mut libc::c_void {
    let state = if registry::membarrier::register_process() {
        BARRIER_READY
    } else {
        BARRIER_REFUSED
    };
    // Release: pairs with the Acquire in `producers_must_fence`.
    BARRIER.store(state, Release);
    core::ptr::null_mut()
}

/// The registering thread's stack: its body makes one system call.
const HELPER_STACK: usize = 64 << 10;

/// Starts `body` on a detached thread with every signal blocked. `false`: it could not start.
fn spawn_detached(body: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void) -> bool {
    // SAFETY: the attribute and signal sets are initialised before use and the attribute is
    // destroyed after; the calling thread's signal mask is restored before returning. The new
    // thread inherits the all-blocked mask, so there is no moment where it can take a signal.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_attr_init(&mut attr) != 0 {
            return false;
        }
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, HELPER_STACK.max(libc::PTHREAD_STACK_MIN));
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let mut thread: libc::pthread_t = 0;
        let started = libc::pthread_create(&mut thread, &attr, body, core::ptr::null_mut()) == 0;
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        started
    }
}

/// Initialises the agent from the environment when it names a region (spawn). Loaded without one
/// (attach: `dlopen` by the tracer, which then calls `tracer_agent_attach`), it stays silent and
/// uninitialised; a hook reached without any region says so once, lazily.
extern "C" fn constructor() {
    if std::env::var_os(registry::ENV_REGION_FD).is_some()
        || std::env::var_os(registry::ENV_REGION_PATH).is_some()
    {
        let seat = live::enter();
        let _ = live::agent();
        live::leave(seat);
    }
}

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use registry::{Handshake, RegionConfig};

    fn region(handshake: Handshake) -> SharedRegion {
        let config = RegionConfig {
            capacity: 64,
            handshake,
            ..RegionConfig::default()
        };
        SharedRegion::create(&config).expect("a small region")
    }

    /// Waits until no registering thread is at work (it makes one system call; the bound only
    /// keeps a broken build from hanging).
    fn settled() -> u8 {
        for _ in 0..60_000 {
            // Acquire: as in `producers_must_fence`.
            let state = BARRIER.load(Acquire);
            if state != BARRIER_PENDING {
                return state;
            }
            std::thread::sleep(core::time::Duration::from_millis(1));
        }
        panic!("the registering thread never published its outcome");
    }

    // One test, because the registration is process-wide state.
    #[test]
    fn barrier__attach_then_fork_then_attach__then_producers_fence_only_until_registered() {
        let fence_region = region(Handshake::Fence);
        let fence = fence_region.registry().unwrap();
        let membarrier_region = region(Handshake::Membarrier);
        let mb = membarrier_region.registry().unwrap();
        assert!(producers_must_fence(&fence));
        assert!(producers_must_fence(&mb), "nothing registered yet");

        // Attach: the registration runs on a thread of its own, then producers drop the fence.
        register_in_background();
        let registered = registry::membarrier::global_expedited_supported();
        let expected = if registered {
            BARRIER_READY
        } else {
            BARRIER_REFUSED
        };
        assert_eq!(settled(), expected);
        assert_eq!(producers_must_fence(&mb), !registered);
        assert!(producers_must_fence(&fence), "a fence region always fences");

        // A later attach starts nothing: the state stays as it is.
        register_in_background();
        assert_eq!(BARRIER.load(Acquire), expected);

        // A fork child without an agent: unregistered until it runs one.
        barrier_after_fork(None);
        assert!(producers_must_fence(&mb));
        // With one (spawn's constructor, or the fork handler): registered on the spot.
        barrier_after_fork(Some(&mb));
        assert_eq!(BARRIER.load(Acquire), expected);
        assert_eq!(producers_must_fence(&mb), !registered);
    }
}
