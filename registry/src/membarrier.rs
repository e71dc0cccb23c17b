//! `membarrier(2)`: the asymmetric barrier of [`crate::Handshake::Membarrier`].
//!
//! The stopper (tracer) and the producers (target) are different processes, so
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED` (the caller's own process only) does not reach the producers.
//! `MEMBARRIER_CMD_GLOBAL_EXPEDITED` does: it interrupts every CPU currently running a thread of
//! any process that registered with `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED` (each agent
//! registers its process once, [`register_process`]), and threads not running are past a context
//! switch, itself a full barrier. If the expedited command is refused, `MEMBARRIER_CMD_GLOBAL`
//! (an RCU grace period, milliseconds, covering every process) is used.

const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_long = 1 << 1;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_long = 1 << 2;

fn membarrier(cmd: libc::c_long) -> libc::c_long {
    // SAFETY: membarrier takes two integers and touches no user memory.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_long) }
}

/// Whether the kernel offers the global expedited barrier (the tracer checks before choosing
/// [`crate::Handshake::Membarrier`]).
pub fn global_expedited_supported() -> bool {
    let mask = membarrier(MEMBARRIER_CMD_QUERY);
    mask >= 0
        && mask & MEMBARRIER_CMD_GLOBAL_EXPEDITED != 0
        && mask & MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED != 0
}

/// Registers the calling process for the global expedited barrier (producer side, once per
/// process image and after `fork`). `false`: this process must use fenced writes.
pub fn register_process() -> bool {
    membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0
}

/// Runs a full memory barrier on every CPU running a registered process (stopper side).
pub fn global_barrier() {
    if membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) != 0 {
        membarrier(MEMBARRIER_CMD_GLOBAL);
    }
}

/// A full memory barrier on every thread of the calling process, from one of them (the agent's
/// detach, before it unmaps what its hooks use). `registered`: the process registered with
/// [`register_process`], so the expedited command reaches its threads (microseconds); otherwise
/// `MEMBARRIER_CMD_GLOBAL` (an RCU grace period: milliseconds). `false`: the kernel ran neither.
pub fn own_process_barrier(registered: bool) -> bool {
    (registered && membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0)
        || membarrier(MEMBARRIER_CMD_GLOBAL) == 0
}
