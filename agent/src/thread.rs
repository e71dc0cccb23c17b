//! Per-thread state: the initial-exec TLS block, the slot-indexed [`ThreadState`],
//! lazy registration, teardown and fork.

use core::sync::atomic::Ordering::Relaxed;

use registry::{OrphanReason, RegistryError, WriteSection};

use crate::process::arm_teardown;
use crate::state::{Agent, ThreadState};
use crate::tls::{
    tls, AGENT_OWN, CLOSED, INITIALISER, REGISTERED, REGISTERING, TORN_DOWN, UNREGISTERED, WAITING,
};

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
        if tl.generation != 0 && tl.status != TORN_DOWN && tl.status != AGENT_OWN {
            tl.state = core::ptr::null_mut();
            tl.status = UNREGISTERED;
            tl.pending_depth = 0;
        }
        tl.generation = agent.generation;
    }
    if tl.status == UNREGISTERED && crate::process::on_own_stack() {
        // One of the agent's own threads (its C library calls reach the hooks when every object's
        // library calls are traced): not the program's, so neither recorded nor counted.
        tl.status = AGENT_OWN;
    }
    match tl.status {
        REGISTERED if !tl.state.is_null() => return Some(tl.state),
        AGENT_OWN => return None,
        TORN_DOWN => {
            reg.count_orphan(OrphanReason::ThreadTeardown);
            return None;
        }
        CLOSED => {
            reg.count_orphan(OrphanReason::Shutdown);
            return None;
        }
        REGISTERING => {
            // A call the C library makes for the agent while it registers this thread (every
            // object's library calls traced: `pthread_getattr_np`'s own `malloc`, say): the
            // agent's, not the program's, so neither recorded nor counted. Nothing else runs on
            // this thread meanwhile: its signals are held (see [`SignalsHeld`]).
            return None;
        }
        INITIALISER => {
            // An event inside the agent's initialiser (a signal handler's call): no slot to count
            // it in yet.
            reg.count_orphan(OrphanReason::AgentSetup);
            return None;
        }
        WAITING if reg.recycled_count() == tl.seen_recycled => {
            reg.count_orphan(OrphanReason::RegistryFull);
            return None;
        }
        _ => {}
    }
    let was_waiting = tl.status == WAITING;
    let held = SignalsHeld::new();
    tl.status = REGISTERING;
    let state = register(agent, tl, was_waiting);
    // Signals that came meanwhile are delivered here, their handlers' events recorded (or
    // counted) as the registration's outcome allows.
    drop(held);
    state
}

/// Signals held on the calling thread while it lives (every one that can be: a fault of the
/// thread's own code is still delivered). A thread registering holds them, so every event the
/// hooks see on it meanwhile is a call the agent's own work made.
struct SignalsHeld(libc::sigset_t);

impl SignalsHeld {
    fn new() -> SignalsHeld {
        // SAFETY: all-zero is a valid sigset_t, filled or written by the calls below.
        let (mut all, mut old): (libc::sigset_t, libc::sigset_t) =
            unsafe { (core::mem::zeroed(), core::mem::zeroed()) };
        // SAFETY: valid sigset_t pointers; pthread_sigmask changes only this thread's mask.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        SignalsHeld(old)
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // SAFETY: the mask this thread had before, restored on this thread.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, core::ptr::null_mut()) };
    }
}

/// [`acquire_state`]'s registration of this thread (status `REGISTERING`, signals held): the
/// state to write with, or `None` when the event was dropped and counted.
fn register(
    agent: &'static Agent,
    tl: &mut crate::tls::Tls,
    was_waiting: bool,
) -> Option<*mut ThreadState> {
    let reg = &agent.reg;
    let pid = agent.pid.load(Relaxed);
    let tid = gettid();
    match reg.register_in(pid, tid, agent.image) {
        Ok(r) => {
            let (lo, hi) = stack_bounds();
            reg.set_stack_bounds(r.slot, lo, hi);
            let mut writer = r.writer;
            writer.set_fenced(writer.fenced() || crate::process::producers_must_fence(reg));
            // SAFETY: the registration made this thread the lanes' only producer.
            let index = unsafe { r.lanes.index.producer() };
            let fast_path = reg.clock().source == registry::ClockSource::Tsc
                && !reg.detail_enabled()
                && index.holds_words::<{ ::event::SIZE / 8 }>();
            let state = ThreadState {
                gate: if fast_path {
                    0
                } else {
                    crate::state::SLOW_ONLY
                } | if writer.fenced() {
                    crate::state::FENCED
                } else {
                    0
                },
                stop_seen: false,
                settle_pauses: 0,
                depth: tl.pending_depth,
                tid,
                call_word: ::event::Record::thread_kind_word(tid, ::event::CALL),
                return_word: ::event::Record::thread_kind_word(tid, ::event::RETURN),
                no_detail_word: ::event::Record::depth_detail_word(0, ::event::NO_DETAIL),
                slot: r.slot,
                index_seq: 0,
                detail_seq: 0,
                stack_lo: lo,
                stack_hi: hi,
                stack_bytes: reg.stack_bytes(),
                tag: registry::image_tag(agent.image),
                clock: reg.clock(),
                writer,
                index,
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

/// Enters this thread's write section of the stop handshake (`None`: refused, counted).
/// `fenced`: its gate's [`FENCED`](crate::state::FENCED), as the caller read it. Unfenced, it
/// tests nothing more; fenced, it drops the fence first once its process is registered for the
/// stopper's membarrier (a thread that registered its slot while the registration was pending),
/// and the gate's `FENCED` with it.
#[inline(always)]
pub(crate) fn open_section(st: &mut ThreadState, fenced: bool) -> Option<WriteSection> {
    if !fenced {
        return st.writer.open_unfenced();
    }
    let reg = &st.agent.reg;
    let section = st.writer.open(|| crate::process::producers_must_fence(reg));
    if !st.writer.fenced() {
        st.gate &= !crate::state::FENCED;
    }
    section
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
    crate::shadow::release_shadow(tl);
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
    crate::process::barrier_after_fork(agent.map(|a| &a.reg));
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

#[cfg(test)]
mod tests {
    #![allow(non_snake_case)]
    use super::SignalsHeld;

    /// This thread's signal mask.
    fn mask() -> libc::sigset_t {
        // SAFETY: a valid out-pointer; a null set only reads the mask.
        unsafe {
            let mut now: libc::sigset_t = core::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, core::ptr::null(), &mut now);
            now
        }
    }

    fn held(set: &libc::sigset_t, signal: i32) -> bool {
        // SAFETY: a valid, initialised set.
        unsafe { libc::sigismember(set, signal) == 1 }
    }

    #[test]
    fn signals_held__while_it_lives__then_all_held_and_the_mask_as_it_was_after() {
        std::thread::spawn(|| {
            // A mask of the program's own: SIGUSR1 held, SIGUSR2 not.
            // SAFETY: valid sets; only this test thread's mask changes.
            unsafe {
                let mut usr1: libc::sigset_t = core::mem::zeroed();
                libc::sigemptyset(&mut usr1);
                libc::sigaddset(&mut usr1, libc::SIGUSR1);
                libc::pthread_sigmask(libc::SIG_SETMASK, &usr1, core::ptr::null_mut());
            }
            let before = mask();
            {
                let _held = SignalsHeld::new();
                let now = mask();
                for signal in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGINT, libc::SIGALRM] {
                    assert!(held(&now, signal), "signal {signal} held while registering");
                }
            }
            let after = mask();
            for signal in 1..32 {
                assert_eq!(
                    held(&after, signal),
                    held(&before, signal),
                    "signal {signal}: the mask as the program had it"
                );
            }
            assert!(held(&after, libc::SIGUSR1) && !held(&after, libc::SIGUSR2));
        })
        .join()
        .unwrap();
    }
}
