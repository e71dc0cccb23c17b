//! Per-thread state: the 48-byte initial-exec TLS block, the slot-indexed [`ThreadState`],
//! lazy registration, teardown and fork.

use core::sync::atomic::Ordering::Relaxed;

use registry::{Clock, OrphanReason, RegistryError, SlotWriter};
use ring::PoolProducer;

use crate::Agent;

/// TLS status values.
pub(crate) const UNREGISTERED: u32 = 0;
pub(crate) const REGISTERED: u32 = 1;
pub(crate) const WAITING: u32 = 2;
pub(crate) const TORN_DOWN: u32 = 3;
pub(crate) const CLOSED: u32 = 4;
pub(crate) const REGISTERING: u32 = 5;
pub(crate) const INITIALISER: u32 = 6;

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
}

const _: () = assert!(core::mem::size_of::<Tls>() == 48);

core::arch::global_asm!(
    ".section .tbss,\"awT\",@nobits",
    ".p2align 3",
    ".globl agent_tls_block",
    ".hidden agent_tls_block",
    ".type agent_tls_block,@object",
    ".size agent_tls_block, 48",
    "agent_tls_block:",
    ".zero 48",
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

/// Everything a registered thread's hot path needs, in agent-private memory.
pub(crate) struct ThreadState {
    /// 1 while this thread is inside a hook (the reentrancy guard).
    pub(crate) busy: u32,
    /// Current call depth.
    pub(crate) depth: u32,
    /// Whether this thread has seen acceptance stopped (it steps aside once, see `hook`).
    pub(crate) stop_seen: bool,
    /// Pauses taken while the tracer settled the stop (bounded: a tracer that dies mid-stop must
    /// not slow the program for ever).
    pub(crate) settle_pauses: u8,
    pub(crate) tid: u32,
    pub(crate) slot: u32,
    /// Index events accepted so far: the position the next one takes in index.atf.
    pub(crate) index_seq: u32,
    /// Detail records written so far.
    pub(crate) detail_seq: u32,
    pub(crate) stack_lo: u64,
    pub(crate) stack_hi: u64,
    pub(crate) stack_bytes: u32,
    /// The image tag ORed into every function id (see `registry::image_tag`).
    pub(crate) tag: u64,
    pub(crate) clock: Clock,
    pub(crate) writer: SlotWriter<'static>,
    pub(crate) index: PoolProducer<'static>,
    pub(crate) detail: PoolProducer<'static>,
    pub(crate) agent: &'static Agent,
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

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

fn stack_bounds() -> (u64, u64) {
    // SAFETY: attr is initialised by pthread_getattr_np before use and destroyed after.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return (0, 0);
        }
        let mut addr: *mut libc::c_void = core::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if ok {
            (addr as u64, addr as u64 + size as u64)
        } else {
            (0, 0)
        }
    }
}

/// The slow path of a thread without a slot. Returns the state to write the event with, or `None`
/// when the event was dropped and counted.
#[cold]
#[inline(never)]
pub(crate) fn acquire_state(agent: &'static Agent) -> Option<*mut ThreadState> {
    let t = tls();
    // SAFETY: only this thread touches its TLS block. A signal handler interrupting us sees
    // REGISTERING and drops its event (counted).
    let tl = unsafe { &mut *t };
    let reg = &agent.reg;
    if tl.generation != agent.generation {
        // Registered (or closed out) under an earlier attachment: start afresh in this one.
        if tl.generation != 0 && tl.status != TORN_DOWN {
            tl.state = core::ptr::null_mut();
            tl.status = UNREGISTERED;
            tl.pending_depth = 0;
        }
        tl.generation = agent.generation;
    }
    match tl.status {
        REGISTERED if !tl.state.is_null() => return Some(tl.state),
        TORN_DOWN => {
            reg.count_orphan(OrphanReason::ThreadTeardown);
            return None;
        }
        CLOSED => {
            reg.count_orphan(OrphanReason::Shutdown);
            return None;
        }
        REGISTERING | INITIALISER => {
            // An event inside our own registration (signal handler): no slot to count it in yet.
            reg.count_orphan(OrphanReason::RegistryFull);
            return None;
        }
        WAITING if reg.recycled_count() == tl.seen_recycled => {
            reg.count_orphan(OrphanReason::RegistryFull);
            return None;
        }
        _ => {}
    }
    let was_waiting = tl.status == WAITING;
    tl.status = REGISTERING;
    let pid = agent.pid.load(Relaxed);
    let tid = gettid();
    match reg.register_in(pid, tid, agent.image) {
        Ok(r) => {
            let (lo, hi) = stack_bounds();
            reg.set_stack_bounds(r.slot, lo, hi);
            let mut writer = r.writer;
            writer.set_fenced(writer.fenced() || crate::producers_must_fence(reg));
            let state = ThreadState {
                busy: 0,
                stop_seen: false,
                settle_pauses: 0,
                depth: tl.pending_depth,
                tid,
                slot: r.slot,
                index_seq: 0,
                detail_seq: 0,
                stack_lo: lo,
                stack_hi: hi,
                stack_bytes: reg.stack_bytes(),
                tag: registry::image_tag(agent.image),
                clock: reg.clock(),
                writer,
                // SAFETY: the registration made this thread the lanes' only producer.
                index: unsafe { r.lanes.index.producer() },
                // SAFETY: as above.
                detail: unsafe { r.lanes.detail.producer() },
                agent,
            };
            // SAFETY: slot < capacity, so the entry lies in the array; the slot is ours alone, so
            // nobody else uses this entry.
            let ptr = unsafe { agent.threads.add(r.slot as usize) };
            // SAFETY: as above; the previous content (an earlier owner's) is plain data, overwritten.
            unsafe { ptr.write(state) };
            if was_waiting {
                reg.waiting(-1);
            } else {
                arm_teardown();
            }
            tl.pending_depth = 0;
            tl.state = ptr;
            tl.status = REGISTERED;
            Some(ptr)
        }
        Err(RegistryError::RegistryFull { .. }) => {
            if !was_waiting {
                reg.waiting(1);
                arm_teardown();
            }
            tl.seen_recycled = reg.recycled_count();
            tl.status = WAITING;
            reg.count_orphan(OrphanReason::RegistryFull);
            None
        }
        Err(_) => {
            if was_waiting {
                reg.waiting(-1);
            }
            tl.status = CLOSED;
            reg.count_orphan(OrphanReason::Shutdown);
            None
        }
    }
}

/// Drops this producer's fence once its process is registered for the stopper's membarrier (a
/// thread that registered its slot while the registration was pending). Free when unfenced: one
/// test of a flag the write section reads anyway.
#[inline(always)]
pub(crate) fn refresh_fence(st: &mut ThreadState) {
    if st.writer.fenced() && !crate::producers_must_fence(&st.agent.reg) {
        st.writer.set_fenced(false);
    }
}

/// Arms the thread-exit destructor for the calling thread (once the key exists).
pub(crate) fn arm_teardown() {
    if let Some(key) = crate::teardown_key() {
        // SAFETY: the key was created by `process_hooks`; the value is a non-null marker, never
        // dereferenced.
        unsafe { libc::pthread_setspecific(key, core::ptr::dangling::<libc::c_void>()) };
    }
}

/// The pthread key destructor: re-arms itself for two more rounds (so it runs after other keys'
/// destructors, which may call instrumented code), then releases the slot, and the thread's
/// presence seat (its later calls share the counter).
pub(crate) extern "C" fn teardown(_value: *mut libc::c_void) {
    let seat = crate::live::enter();
    let last = teardown_inside();
    crate::live::leave(seat);
    if last {
        crate::live::release_seat();
    }
}

/// [`teardown`]'s body, inside. Returns whether this was the last round.
fn teardown_inside() -> bool {
    // SAFETY: only this thread touches its TLS block.
    let tl = unsafe { &mut *tls() };
    tl.teardown_round += 1;
    if tl.teardown_round < 3 {
        arm_teardown();
        return false;
    }
    if let Some(agent) = crate::live::ready_agent() {
        // The slot and the waiting count are the current attachment's only if the thread
        // registered in it; an older attachment's state may be unmapped already.
        let current = tl.generation == agent.generation;
        if !tl.state.is_null() && current {
            // SAFETY: our own state; we are not inside a hook (destructors run outside them).
            let slot = unsafe { (*tl.state).slot };
            agent.reg.exit(slot);
        } else if tl.status == WAITING && current {
            agent.reg.waiting(-1);
        }
    }
    tl.state = core::ptr::null_mut();
    crate::entry::release_shadow(tl);
    tl.status = TORN_DOWN;
    true
}

/// `pthread_atfork` child handler: the child's only thread drops the parent's slot (the parent
/// keeps using it) and re-registers under the child's pid on its next event, at the same depth.
pub(crate) extern "C" fn after_fork_in_child() {
    // The parent's other threads do not exist here: their presence marks go.
    crate::live::after_fork();
    let seat = crate::live::enter();
    after_fork_inside();
    crate::live::leave(seat);
}

fn after_fork_inside() {
    let agent = crate::live::ready_agent();
    crate::barrier_after_fork(agent.map(|a| &a.reg));
    let Some(agent) = agent else {
        return;
    };
    let pid = std::process::id();
    if !agent.reg.traces_process(pid) {
        crate::live::untrace_this_process();
    }
    agent.pid.store(pid, Relaxed);
    // SAFETY: only this thread touches its TLS block.
    let tl = unsafe { &mut *tls() };
    if !tl.state.is_null() && tl.generation == agent.generation {
        // SAFETY: the state was ours in the parent and is a private copy now.
        tl.pending_depth = unsafe { (*tl.state).depth };
    }
    tl.state = core::ptr::null_mut();
    tl.status = UNREGISTERED;
    tl.teardown_round = 0;
}
