//! The agent's only thread-local storage: a 56-byte initial-exec TLS block reached with one
//! `fs`-relative load (no `__tls_get_addr`), zeroed by the loader for every new thread.

use crate::state::ThreadState;

/// TLS status values.
pub(crate) const UNREGISTERED: u32 = 0;
pub(crate) const REGISTERED: u32 = 1;
pub(crate) const WAITING: u32 = 2;
pub(crate) const TORN_DOWN: u32 = 3;
pub(crate) const CLOSED: u32 = 4;
pub(crate) const REGISTERING: u32 = 5;
pub(crate) const INITIALISER: u32 = 6;
/// A thread the agent started for itself (see `process::on_own_stack`): never traced, and its
/// calls are not counted as the program's.
pub(crate) const AGENT_OWN: u32 = 7;

/// The thread-local block. Zero-initialised by the loader for every thread (`.tbss`).
#[repr(C)]
pub(crate) struct Tls {
    /// The thread's state while it holds a slot; null otherwise (the hot path's only test).
    pub(crate) state: *mut ThreadState,
    /// One of the status values above.
    pub(crate) status: u32,
    /// Rounds of the pthread key destructor seen (it re-arms itself to run late).
    pub(crate) teardown_round: u32,
    /// `recycled_count` when this thread last failed to find a slot.
    pub(crate) seen_recycled: u64,
    /// Call depth to resume at after re-registering (fork child).
    pub(crate) pending_depth: u32,
    /// The agent generation this thread's status and state belong to (0: none yet).
    pub(crate) generation: u32,
    /// The thread's shadow stack of hooked returns (entry-only hooks), made on first use and kept
    /// across attachments: a frame hooked under one attachment returns through it after the next.
    pub(crate) shadow: *mut retstack::ShadowStack,
    /// The thread's presence seat (see `live`): 0 until claimed.
    pub(crate) seat: u32,
    /// That seat's own marker, while the thread holds a seat of its own (`None`, null, before and
    /// after, and for a thread on the shared counter): what the fast paths mark through.
    pub(crate) marker: Option<quiesce::Marker<'static>>,
}

const _: () = assert!(core::mem::size_of::<Tls>() == 56);

core::arch::global_asm!(
    ".section .tbss,\"awT\",@nobits",
    ".p2align 3",
    ".globl agent_tls_block",
    ".hidden agent_tls_block",
    ".type agent_tls_block,@object",
    ".size agent_tls_block, 56",
    "agent_tls_block:",
    ".zero 56",
    ".text",
);

/// This thread's TLS block: `fs:0` (the thread pointer) plus the block's initial-exec offset.
#[inline(always)]
pub(crate) fn tls() -> *mut Tls {
    let p: *mut Tls;
    // SAFETY: reads the thread pointer and a GOT entry the dynamic linker filled with the block's
    // static TLS offset (R_X86_64_TPOFF64); no memory is written. Both are constant per thread.
    unsafe {
        core::arch::asm!(
            "mov {p}, qword ptr fs:[0]",
            "add {p}, qword ptr [rip + agent_tls_block@GOTTPOFF]",
            p = out(reg) p,
            options(pure, nomem, nostack),
        )
    };
    p
}

pub(crate) fn is_initialiser() -> bool {
    // SAFETY: the TLS block is valid for this thread's lifetime.
    unsafe { (*tls()).status == INITIALISER }
}

pub(crate) fn set_initialiser(on: bool) {
    let t = tls();
    // SAFETY: as above; only this thread touches its block.
    unsafe {
        if on {
            (*t).status = INITIALISER;
        } else if (*t).status == INITIALISER {
            (*t).status = UNREGISTERED;
        }
    }
}
