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
//! under exactly one drop reason (ring full, shutdown, registry full, agent setup, reentrant,
//! thread teardown); the hot path takes no lock, makes no system call and allocates nothing; the
//! target is never blocked indefinitely (a full lane waits a bounded time, see
//! `ring::FullPolicy`). An entry-only
//! hook records its call only if it could hook the return (a call deeper than the shadow stack
//! records neither, said once); the first hook of a thread allocates its shadow stack.
//!
//! - **Finding the region.** Spawn: from the inherited memfd whose number is in
//!   `TRACER_REGION_FD` (or a path in `TRACER_REGION_PATH`), initialised from the constructor and,
//!   for hooks that run earlier (another library's constructor), lazily from the first hook. No
//!   region, or an invalid one: one line on stderr, and every hook returns at once (untraced,
//!   ~native speed). Attach: the tracer `dlopen`s the agent (whose constructor then does nothing)
//!   and calls `tracer_agent_attach(path)`, which maps the region, redirects the program's hook
//!   GOT entries to the agent and puts them back at the stop (see `attach`); once no thread is
//!   inside the agent any more, the attachment's region and thread array are unmapped (see
//!   `live`).
//! - **The stop handshake's barrier.** With [`registry::Handshake::Membarrier`] a producer may
//!   skip its fence only once its process is registered for the stopper's membarrier. Spawn
//!   registers in the constructor (one thread: cheap). Attach must not: in a multi-threaded
//!   process the kernel's registration waits for an RCU grace period (6–16 ms), and the tracer
//!   holds the loading thread meanwhile. So the first attachment starts a short-lived thread that
//!   registers and exits; producers fence until they see it done (`process::producers_must_fence`), then
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
//!   objects it added: spawn's preloaded agent exports `dlopen`/`dlmopen` stand-ins that keep the
//!   caller's search path, attach redirects the GOT entries to the same ones; see `modules` and
//!   `attach::dlopen`), and tags every function id it records with the serial
//!   (`registry::image_tag`): an exec'd program's functions never share ids with its parent's,
//!   even at the same addresses (`-no-pie`). A fork child keeps its parent's image.
//!
//! - **Modules, bottom up** (none imports one above it): `state` (an attachment's `Agent` and the
//!   per-thread `ThreadState`), `tls`, `say`, `process` (what outlives every attachment: the
//!   teardown key, the fork handler, the membarrier registration, the detail switch), `shadow`,
//!   `detach` (the detach callbacks), `modules`, `attach::got` (the GOT patcher, given a table of
//!   targets), `patch`, `build` (making an agent), `live` (the current agent, the generations and
//!   the presence protocol), `thread` (registration, teardown, fork), `hook`, `entry`,
//!   `attach::dlopen`, `attach`.
//!
//! The example below is what the tracer does (the `cli` crate); the agent itself has no Rust API:
//!
//! ```text
//! let region = registry::SharedRegion::create(&RegionConfig::default())?;
//! let fd = region.inheritable_fd()?;
//! Command::new(target).env("LD_PRELOAD", agent_so).env(registry::ENV_REGION_FD, fd.to_string())
//! ```

mod attach;
mod build;
mod detach;
pub(crate) mod entry;
mod hook;
mod live;
mod modules;
mod patch;
mod plt;
mod process;
mod say;
mod shadow;
mod state;
mod thread;
mod tls;

/// Initialises the agent from the environment when it names a region (spawn). Loaded without one
/// (attach: `dlopen` by the tracer, which then calls `tracer_agent_attach`), it stays silent and
/// uninitialised; a hook reached without any region says so once, lazily.
extern "C" fn constructor() {
    if std::env::var_os(registry::ENV_REGION_FD).is_some()
        || std::env::var_os(registry::ENV_REGION_PATH).is_some()
    {
        let seat = live::enter();
        if let Some(agent) = live::agent_or_init(build::spawn) {
            change_program(agent);
        }
        live::leave(seat);
    }
}

/// Spawn mode, before the program's `main` (one thread, normally): its library calls go through
/// the agent's stubs and its patchable entries' sleds call the agent. Done here, not when the agent
/// is built (which a hook called by an earlier library's constructor may do), so that making an
/// agent never depends on the hooks.
fn change_program(agent: &state::Agent) {
    let scope = agent.reg.library_calls();
    plt::redirect(scope);
    if scope == registry::LibraryCalls::All {
        attach::follow_loads(agent.generation);
    }
    let sleds = patch::apply(agent.generation);
    if sleds.no_room > 0 {
        say::say(&format!(
            "{} patchable function entries left unpatched (their calls are not recorded): no free \
             address range below the code for their calls to land in (a non-PIE executable); \
             build with -fPIE, or with -pg -mfentry",
            sleds.no_room
        ));
    }
    if sleds.skipped > sleds.no_room {
        say::say(&format!(
            "{} patchable function entries left unpatched (their calls are not recorded): fewer \
             than 5 NOP bytes after the entry, an unknown NOP form, or code that cannot be made \
             writable",
            sleds.skipped - sleds.no_room
        ));
    }
}

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;
