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
        Err(BuildError::NotFollowed) => None,
        Err(e) => {
            say(&format!("{e}; the program runs untraced"));
            None
        }
    }
}

/// Why no agent was made.
#[derive(Debug)]
pub(crate) enum BuildError {
    /// No region in the environment: the program was not started by the tracer.
    NoRegion,
    /// A process the target started, with following turned off: untraced, silently.
    NotFollowed,
    /// The region is unusable.
    Region(registry::RegistryError),
    /// No pthread key was left for the thread-exit teardown.
    TeardownKey(std::io::Error),
    /// The per-thread state could not be mapped.
    ThreadState(std::io::Error),
}

impl core::fmt::Display for BuildError {
    /// The message, then each cause, `: `-separated (one line on stderr).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let cause: Option<&dyn std::error::Error> = match self {
            BuildError::NoRegion => {
                return write!(
                    f,
                    "no region ({} and {} are unset): start the program with `tracer spawn`",
                    registry::ENV_REGION_FD,
                    registry::ENV_REGION_PATH
                )
            }
            BuildError::NotFollowed => return f.write_str("not followed"),
            BuildError::Region(e) => Some(e),
            BuildError::TeardownKey(e) => {
                f.write_str("no pthread key left for thread teardown")?;
                Some(e)
            }
            BuildError::ThreadState(e) => {
                f.write_str("cannot map the per-thread state")?;
                Some(e)
            }
        };
        let mut first = matches!(self, BuildError::Region(_));
        for e in std::iter::successors(cause, |e| e.source()) {
            if !first {
                f.write_str(": ")?;
            }
            first = false;
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

fn from_env() -> Result<Agent, BuildError> {
    let region = match SharedRegion::from_env() {
        Ok(Some(r)) => r,
        Ok(None) => return Err(BuildError::NoRegion),
        Err(e) => return Err(BuildError::Region(e)),
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
pub(crate) fn for_attach(region: SharedRegion, generation: u32) -> Result<Agent, BuildError> {
    let agent = build_agent(region, generation)?;
    if agent.reg.handshake() == registry::Handshake::Membarrier {
        process::register_in_background();
    }
    Ok(agent)
}

fn build_agent(region: SharedRegion, generation: u32) -> Result<Agent, BuildError> {
    let view = region.registry().map_err(BuildError::Region)?;
    if !view.traces_process(std::process::id()) {
        return Err(BuildError::NotFollowed);
    }
    let capacity = view.capacity() as usize;
    process::process_hooks(thread::teardown, thread::after_fork_in_child)
        .map_err(BuildError::TeardownKey)?;
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
        return Err(BuildError::ThreadState(std::io::Error::last_os_error()));
    }
    let (reg, mapping) = match region.leak_unmappable() {
        Ok(leaked) => leaked,
        Err(e) => {
            // SAFETY: mapped just above, used by nothing yet.
            unsafe { libc::munmap(threads, threads_len) };
            return Err(BuildError::Region(e));
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
