//! Attach mode: the tracer `dlopen`s the agent into a running process and calls
//! [`tracer_agent_attach`] with the path of its region. The program's calls were bound to glibc's
//! no-op hooks when it started, so the agent redirects them: it rewrites the GOT entries
//! (`R_X86_64_JUMP_SLOT` and `R_X86_64_GLOB_DAT`) of `__cyg_profile_func_enter/exit` in every
//! loaded object to its own hooks, RELRO pages included (`mprotect` around the store), see
//! [`got`]. Libraries loaded later are redirected too: the `dlopen`/`dlmopen` entries point at a
//! trampoline that redirects what each call loaded before the program gets the handle, without
//! changing how the call searches (see [`dlopen`]). When the tracer stops acceptance, the first
//! thread that sees it writes the saved entries of the objects still loaded back
//! ([`restore_hooks`]): from then on the program calls glibc's stubs again, untraced, at full
//! speed. A later attach reuses the loaded agent with a new region (a new generation).

mod dlopen;
pub(crate) mod got;

use core::sync::atomic::AtomicU32;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::ffi::{c_char, c_int, CStr};
use std::path::Path;

use registry::SharedRegion;

use crate::thread::{tls, ThreadState};
use crate::{Agent, AGENT, READY, STATE};

/// The newest attachment's generation (0: none; spawn mode's agent is generation 1).
static GENERATION: AtomicU32 = AtomicU32::new(0);

/// `tracer_agent_attach(path)`: maps the region at `path` (NUL-terminated), makes it the current
/// attachment and redirects the program's hook calls to the agent. Returns the number of GOT
/// entries that now point at the agent (0: nothing calls the hooks), -1 if the region cannot be
/// opened or mapped, -3 if it is not a usable region, or -2 if a live tracer is recording the
/// process already. On any failure nothing changes and nothing is written to the program's
/// stdout or stderr (they are the program's, not ours): the tracer reports the code.
///
/// # Safety
/// `path` is a valid NUL-terminated string. Called by the tracer from one thread of the target,
/// at a point where that thread holds no libc lock.
#[no_mangle]
pub unsafe extern "C" fn tracer_agent_attach(path: *const c_char) -> c_int {
    if recorded_by_live_tracer() {
        return BUSY;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let path = unsafe { CStr::from_ptr(path) };
    let path =
        Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()));
    let Ok(region) = SharedRegion::open_path(path) else {
        return -1;
    };
    let generation = GENERATION.load(Relaxed).max(1) + 1;
    let Ok(agent) = crate::build_from(region, generation) else {
        return -3;
    };
    // Acquire: pairs with the Release store of READY in `init_slow` / below.
    if STATE.load(Acquire) == READY {
        // SAFETY: a published agent is never freed.
        let old = unsafe { &*AGENT.load(Acquire) };
        // An earlier tracer that left without stopping: its threads move to this attachment.
        if old.reg.is_accepting() {
            let _ = old.reg.stop_accepting(core::time::Duration::ZERO);
        }
    }
    // Release: pairs with the Acquire loads in `crate::agent` and `stale`: the agent is built.
    AGENT.store(Box::into_raw(Box::new(agent)), Release);
    // Release: pairs with the Acquire loads in `stale`, `restore_hooks` and the restore pass's
    // admission in `got` (the new generation is seen with the agent that carries it).
    GENERATION.store(generation, Release);
    // Release: pairs with the Acquire in `crate::agent`.
    STATE.store(READY, Release);
    // SAFETY: this thread's errno (the lookups below may set it).
    let errno = unsafe { *libc::__errno_location() };
    dlopen::prepare();
    let hooks = got::run(got::Pass::Attach) + crate::patch::apply(generation).patched;
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
    hooks as c_int
}

/// [`tracer_agent_attach`]'s answer when another tracer is recording this process.
const BUSY: c_int = -2;

/// Whether the current agent's region still accepts events and the tracer that made it is alive
/// (a spawn, or another attach): a second tracer must not take its threads away.
fn recorded_by_live_tracer() -> bool {
    // Acquire: pairs with the Release stores of READY in `init_slow` and `tracer_agent_attach`.
    if STATE.load(Acquire) != READY {
        return false;
    }
    // SAFETY: a published agent is never freed.
    let current = unsafe { &*AGENT.load(Acquire) };
    if !current.reg.is_accepting() {
        return false;
    }
    let tracer = current.reg.tracer_pid() as libc::pid_t;
    // SAFETY: signal 0 only checks that the process exists.
    tracer > 0
        && (unsafe { libc::kill(tracer, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Whether `st` belongs to an attachment older than the current one.
#[inline]
pub(crate) fn stale(st: &ThreadState) -> bool {
    // Acquire: pairs with the Release store in `tracer_agent_attach`.
    st.agent.generation < GENERATION.load(Acquire)
}

/// Forgets this thread's state (it re-registers with the current agent on its next event).
pub(crate) fn forget_state() {
    // SAFETY: only this thread touches its TLS block.
    unsafe { (*tls()).state = core::ptr::null_mut() };
}

/// Puts the redirected GOT entries back, if `agent` is the current attachment and they were
/// redirected: from then on the program calls glibc's stubs and `dlopen` again. Only entries of
/// objects still loaded are written; `errno` is left as it was (this runs inside a hook).
pub(crate) fn restore_hooks(agent: &Agent) {
    // Relaxed flag: a hint that spares the pass (it decides under its lock). Acquire on
    // GENERATION: pairs with its Release store in `tracer_agent_attach`.
    if !got::redirected() || agent.generation < GENERATION.load(Acquire) {
        return;
    }
    // SAFETY: this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    got::run(got::Pass::Restore {
        generation: agent.generation,
    });
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}
