//! Making an [`Agent`]: spawn mode's from the environment ([`spawn`]), an attachment's from the
//! region the tracer gives ([`for_attach`]). Either maps the region, makes the thread array,
//! reports the image's objects into the module log and makes sure the process-wide hooks exist;
//! spawn mode also registers for the stop handshake's membarrier. Changing the program's code
//! (library-call stubs, patched sleds) is left to the caller: the attach, or spawn mode's
//! constructor.

use core::sync::atomic::AtomicU32;

use registry::SharedRegion;

use crate::say::say;
use crate::state::{Agent, ThreadState};
use crate::{detach, modules, patch, process, thread, tls};

/// Builds spawn mode's agent from the environment (`live` publishes it). `None`: untraced, said
/// once on stderr.
pub(crate) fn spawn() -> Option<Agent> {
    tls::set_initialiser(true);
    let result = from_env();
    tls::set_initialiser(false);
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

fn from_env() -> Result<Agent, String> {
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
    process::register_now(&agent.reg);
    // The program's code is changed (library-call stubs, patched sleds) by the constructor, once
    // the agent is published: see `crate::constructor`.
    Ok(agent)
}

/// An agent over `region`, serving attachment `generation` (attach: the caller is a thread the
/// tracer holds, so the membarrier registration, if still needed, runs on a thread of its own).
pub(crate) fn for_attach(region: SharedRegion, generation: u32) -> Result<Agent, String> {
    let agent = build_agent(region, generation)?;
    if agent.reg.handshake() == registry::Handshake::Membarrier {
        process::register_in_background();
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
    process::process_hooks(thread::teardown, thread::after_fork_in_child)?;
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
    process::set_detail(reg.detail_enabled());
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
