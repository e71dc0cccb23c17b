//! Attach mode: the tracer `dlopen`s the agent into a running process and calls
//! [`tracer_agent_attach`] with the path of its region. The program's calls were bound to glibc's
//! no-op hooks when it started, so the agent redirects them: it rewrites the GOT entries
//! (`R_X86_64_JUMP_SLOT` and `R_X86_64_GLOB_DAT`) of `__cyg_profile_func_enter/exit` in every
//! loaded object to its own hooks, RELRO pages included (`mprotect` around the store), see
//! [`got`]. Libraries loaded later are redirected too: the `dlopen`/`dlmopen` entries point at a
//! trampoline that redirects what each call loaded before the program gets the handle, without
//! changing how the call searches (see [`dlopen`]). When the tracer stops acceptance, the first
//! thread that sees it writes the saved entries of the objects still loaded back (the detach
//! callback [`restore_hooks`]): from then on the program calls glibc's stubs again, untraced, at
//! full speed, and the attachment's region is unmapped once no thread is inside the agent (see
//! `live`). A later attach reuses the loaded agent with a new region (a new generation).

mod dlopen;
pub(crate) mod got;

use std::ffi::{c_char, c_int, CStr};
use std::path::Path;

use registry::SharedRegion;

use crate::live;
use crate::state::Agent;

/// `tracer_agent_attach(path)`: maps the region at `path` (NUL-terminated), makes it the current
/// attachment and redirects the program's hook calls to the agent. Returns the number of GOT
/// entries that now point at the agent (0: nothing calls the hooks), -1 if the region cannot be
/// opened or mapped, -3 if it is not a usable region, or -2 if a live tracer is recording the
/// process already. On any failure nothing changes, nothing stays mapped and nothing is written to
/// the program's stdout or stderr (they are the program's, not ours): the tracer reports the code.
/// An earlier attachment still mapped (its tracer died, or no thread has left it yet) is retired.
///
/// # Safety
/// `path` is a valid NUL-terminated string. Called by the tracer from one thread of the target,
/// at a point where that thread holds no libc lock.
#[no_mangle]
pub unsafe extern "C" fn tracer_agent_attach(path: *const c_char) -> c_int {
    // SAFETY: the caller passes a NUL-terminated string.
    let path = unsafe { CStr::from_ptr(path) };
    let seat = live::enter();
    let (result, replaced) = attach_inside(path);
    live::leave(seat);
    if let Some(replaced) = replaced {
        live::retire(replaced);
    }
    result
}

/// [`tracer_agent_attach`]'s body, inside. Returns its answer and the attachment it replaced.
fn attach_inside(path: &CStr) -> (c_int, Option<live::Retiring>) {
    if live::recorded_by_live_tracer() {
        return (BUSY, None);
    }
    let path =
        Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()));
    let Ok(region) = SharedRegion::open_path(path) else {
        return (-1, None);
    };
    let generation = live::next_generation();
    let Ok(agent) = crate::build::for_attach(region, generation) else {
        return (-3, None);
    };
    // An earlier tracer that left without stopping: its threads move to this attachment.
    if let Some(old) = live::ready_agent() {
        if old.reg.is_accepting() {
            let _ = old.reg.stop_accepting(core::time::Duration::ZERO);
        }
    }
    let scope = agent.reg.library_calls();
    let replaced = live::publish(agent);
    crate::detach::on_detach(restore_hooks);
    crate::detach::on_detach(crate::plt::restore_at_detach);
    // SAFETY: this thread's errno (the lookups below may set it).
    let errno = unsafe { *libc::__errno_location() };
    dlopen::prepare();
    got::set_targets(targets());
    let hooks = got::run(got::Pass::Attach { generation })
        + crate::patch::apply(generation).patched
        + crate::plt::redirect(scope);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
    (hooks as c_int, replaced)
}

/// Spawn mode with `--library-calls all`: `dlopen` and `dlmopen` go through the trampolines (the
/// program's other entries point at the agent already: it is preloaded), so what a later load
/// adds gets its library-call entries redirected and its objects reported before the program gets
/// the handle.
pub(crate) fn follow_loads(generation: u32) {
    // SAFETY: this thread's errno (the lookups below may set it).
    let errno = unsafe { *libc::__errno_location() };
    dlopen::prepare();
    got::set_targets(targets());
    got::run(got::Pass::Attach { generation });
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// What the GOT entries are redirected to: the agent's hooks, its unwinder stand-ins and the
/// `dlopen` trampolines (after [`dlopen::prepare`], which finds what those call).
fn targets() -> got::Targets {
    use crate::{entry, hook};
    let (dlopen, dlmopen) = dlopen::trampolines();
    let (real_dlopen, real_dlmopen) = dlopen::reals();
    got::Targets {
        enter: hook::__cyg_profile_func_enter as *const () as usize,
        exit: hook::__cyg_profile_func_exit as *const () as usize,
        mcount: entry::mcount as *const () as usize,
        fentry: entry::__fentry__ as *const () as usize,
        raise: entry::_Unwind_RaiseException as *const () as usize,
        resume: entry::_Unwind_Resume as *const () as usize,
        begin_catch: entry::__cxa_begin_catch as *const () as usize,
        delete: entry::_Unwind_DeleteException as *const () as usize,
        dlopen,
        dlmopen,
        real_dlopen,
        real_dlmopen,
    }
}

/// [`tracer_agent_attach`]'s answer when another tracer is recording this process.
const BUSY: c_int = -2;

/// The detach callback: puts the redirected GOT entries back, if `agent` is the newest attachment
/// and they were redirected: from then on the program calls glibc's stubs and `dlopen` again. Only
/// entries of objects still loaded are written; `errno` is left as it was (this runs inside a
/// hook).
fn restore_hooks(agent: &Agent) {
    // Relaxed flag: a hint that spares the pass (it decides under its lock).
    if !got::redirected() || agent.generation < live::newest() {
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
