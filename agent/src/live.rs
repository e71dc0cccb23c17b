//! The agent's process-wide state behind one accessor: which agent is current, which attachment
//! generation is live, and the presence protocol (the `quiesce` crate) that lets a detached
//! attachment's region and thread array be unmapped while the program's threads keep running.
//!
//! - **Generations.** Spawn mode's agent is generation 1 and lives as long as the process. Each
//!   attach makes a new agent with the next generation. [`generation`] is the live one (0: none);
//!   a thread's state belongs to the generation in its TLS block, and is used only while that
//!   generation is live (a thread of an older one registers afresh in the current one).
//! - **Inside.** Every entry point that may touch an agent (its region, its thread array) marks its
//!   thread inside first ([`enter`]) and out after its last access ([`leave`]): the hooks
//!   (`hook::event`, the entry-only hooks), the thread-exit destructor, the fork handler, the
//!   `dlopen` continuation and `tracer_agent_attach`. Code that needs none of it (the return
//!   trampoline's shadow stack, the GOT passes) needs no mark.
//! - **Detach.** The first thread that sees an attachment stopped runs the detach callbacks (see
//!   `detach`), then, once out, unpublishes it ([`retire_stopped`]); a later attach unpublishes the
//!   one it replaces. Unpublished, the attachment is retired behind `membarrier(2)` and freed
//!   (region unmapped, thread array unmapped) by the last thread to leave, or at once if none is
//!   inside. If the kernel runs no barrier, the attachment stays mapped, as it did before.

use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU8};

use quiesce::{Quiesce, Seat};

use crate::state::Agent;
use crate::tls::{tls, TORN_DOWN};

/// Initialisation states.
const UNINIT: u8 = 0;
const INITIALISING: u8 = 1;
const READY: u8 = 2;
const DISABLED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
/// The current agent (null: none, or the last one was detached).
static AGENT: AtomicPtr<Agent> = AtomicPtr::new(core::ptr::null_mut());
/// The current agent's generation (0: none).
static LIVE: AtomicU32 = AtomicU32::new(0);
/// The newest generation handed out (0: none yet).
static NEWEST: AtomicU32 = AtomicU32::new(0);

/// Threads that get a presence seat of their own; more share one counter (correct, slower).
const SEATS: usize = 1024;
static PRESENCE: Quiesce<SEATS> = Quiesce::new();

/// The TLS block's seat field: not claimed yet.
const SEAT_NONE: u32 = 0;
/// The TLS block's seat field: the shared counter (no seat was free, or the thread gave its back).
const SEAT_SHARED: u32 = u32::MAX;

/// The live generation (0: none). The hot path compares it with its thread's.
#[inline(always)]
pub(crate) fn generation() -> u32 {
    // Relaxed: it only tells whether this thread's own state is still usable; the presence mark
    // (made before) keeps that state mapped while the thread is inside.
    LIVE.load(Relaxed)
}

/// The newest attachment's generation: a GOT restore for an older one does nothing.
pub(crate) fn newest() -> u32 {
    // Acquire: pairs with the Release in `next_generation`.
    NEWEST.load(Acquire)
}

/// The generation for a new attachment (spawn's is 1).
pub(crate) fn next_generation() -> u32 {
    let next = NEWEST.load(Relaxed).max(1) + 1;
    // Release: pairs with the Acquire in `newest`. One attach at a time (the tracer holds the
    // thread), so no update is lost.
    NEWEST.store(next, Release);
    next
}

/// The current agent, made by `init` first if none was made yet (spawn mode: `build::spawn`).
/// `None`: untraced (no region, invalid region, detached, or this thread is the one initialising
/// and re-entered). Call it inside.
#[inline]
pub(crate) fn agent_or_init(init: fn() -> Option<Agent>) -> Option<&'static Agent> {
    // Acquire: pairs with the Release stores of READY.
    match STATE.load(Acquire) {
        READY => current(),
        DISABLED => None,
        _ => init_slow(init),
    }
}

/// Whether an agent is made and published (never initialises).
#[inline(always)]
pub(crate) fn is_ready() -> bool {
    // Acquire: pairs with the Release stores of READY.
    STATE.load(Acquire) == READY
}

/// The current agent if one was made; never initialises (for the fork and thread-exit handlers,
/// which may run before an attach has made one). Call it inside.
pub(crate) fn ready_agent() -> Option<&'static Agent> {
    // Acquire: pairs with the Release stores of READY.
    if STATE.load(Acquire) != READY {
        return None;
    }
    current()
}

/// The current agent, as [`agent_or_init`] sees it.
fn current() -> Option<&'static Agent> {
    // Acquire: pairs with the Release in `publish` and `init`: the agent is fully built.
    let p = AGENT.load(Acquire);
    // SAFETY: a published agent is freed only after it was unpublished and every thread that was
    // inside when it was has left; the caller is inside.
    (!p.is_null()).then(|| unsafe { &*p })
}

#[cold]
fn init_slow(init: fn() -> Option<Agent>) -> Option<&'static Agent> {
    loop {
        // Acquire/Relaxed: winning the CAS makes this thread the initialiser.
        match STATE.compare_exchange(UNINIT, INITIALISING, Acquire, Relaxed) {
            Ok(_) => {
                let agent = init();
                if let Some(agent) = agent {
                    LIVE.store(agent.generation, Relaxed);
                    NEWEST.fetch_max(agent.generation, Relaxed);
                    // Relaxed: published by the Release store of READY below.
                    AGENT.store(Box::into_raw(Box::new(agent)), Relaxed);
                }
                let ok = !AGENT.load(Relaxed).is_null();
                // Release: pairs with the Acquire in `agent`.
                STATE.store(if ok { READY } else { DISABLED }, Release);
                return if ok { current() } else { None };
            }
            Err(READY) | Err(DISABLED) => return agent_or_init(init),
            Err(_) => {
                if crate::tls::is_initialiser() {
                    return None; // re-entered from inside `init`
                }
                // Another thread is initialising (short, bounded): wait for it.
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }
}

/// Stops tracing this process for good (a fork child the tracer does not follow): every hook
/// returns at once from now on, as without a region.
pub(crate) fn untrace_this_process() {
    // Release: pairs with the Acquire in `agent`; this process's copy of the state only.
    STATE.store(DISABLED, Release);
}

/// Whether a live tracer records through the current agent (its region accepts events and the
/// tracer that made it exists). Call it inside.
pub(crate) fn recorded_by_live_tracer() -> bool {
    let Some(current) = ready_agent() else {
        return false;
    };
    if !current.reg.is_accepting() {
        return false;
    }
    let tracer = current.reg.tracer_pid() as libc::pid_t;
    // SAFETY: signal 0 only checks that the process exists.
    tracer > 0
        && (unsafe { libc::kill(tracer, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// An attachment to retire once its caller is out: the agent and its generation.
#[derive(Clone, Copy)]
pub(crate) struct Retiring {
    agent: *mut Agent,
    generation: u32,
}

/// Makes `agent` (a new attachment) current. Returns the attachment it replaces, for
/// [`retire`] once the caller is out (spawn's agent is never retired).
pub(crate) fn publish(agent: Agent) -> Option<Retiring> {
    let generation = agent.generation;
    let new = Box::into_raw(Box::new(agent));
    // AcqRel: Release pairs with the Acquire in `current` (the agent is built); Acquire takes the
    // replaced one.
    let old = AGENT.swap(new, AcqRel);
    // AcqRel: one of this swap and `retire_stopped`'s exchange unpublishes the old generation.
    let replaced = LIVE.swap(generation, AcqRel);
    // Release: pairs with the Acquire in `agent`.
    STATE.store(READY, Release);
    (replaced >= 2 && !old.is_null()).then_some(Retiring {
        agent: old,
        generation: replaced,
    })
}

/// The attachment of `agent`, for [`retire_stopped`] once the caller is out.
pub(crate) fn stopped(agent: &'static Agent) -> Retiring {
    Retiring {
        agent: agent as *const Agent as *mut Agent,
        generation: agent.generation,
    }
}

/// Unpublishes a stopped attachment and retires it, unless it is spawn's, or was unpublished
/// already (by another thread that saw the stop, or a later attach). Call it outside.
#[cold]
pub(crate) fn retire_stopped(r: Retiring) {
    if r.generation < 2 {
        return;
    }
    // AcqRel: the winner alone retires it (the agent is not freed before that, so `r.agent` is
    // still the one this thread saw inside).
    if LIVE
        .compare_exchange(r.generation, 0, AcqRel, Relaxed)
        .is_err()
    {
        return;
    }
    // AcqRel: as in `publish`; a newer agent published meanwhile stays.
    let _ = AGENT.compare_exchange(r.agent, core::ptr::null_mut(), AcqRel, Relaxed);
    retire(r);
}

/// Retires an unpublished attachment: behind the barrier, listed for freeing once every thread
/// that may use it has left; freed now if none is inside. Call it outside.
#[cold]
pub(crate) fn retire(r: Retiring) {
    let token = r.agent as u64 | (u64::from(r.generation) & 0xffff) << 48;
    debug_assert_eq!(
        r.agent as u64 >> 48,
        0,
        "user-space pointers fit in 48 bits"
    );
    let barrier =
        || registry::membarrier::own_process_barrier(crate::process::membarrier_registered());
    if PRESENCE.retire(token, barrier).is_err() {
        return; // no barrier, or too many waiting: it stays mapped
    }
    // Threads inside leave within microseconds; the last one reclaims if this does not.
    for _ in 0..RETIRE_TRIES {
        if PRESENCE.reclaim(free) > 0 || PRESENCE.waiting() == 0 {
            return;
        }
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
    }
}

/// How often the retiring thread looks for everyone out before leaving it to the last one.
const RETIRE_TRIES: u32 = 16;

/// Frees a retired attachment: its thread array, its region, the agent.
fn free(token: u64) {
    let agent = (token & ((1 << 48) - 1)) as *mut Agent;
    // SAFETY: a retired agent, reclaimed once: no thread is inside, and none can reach it again
    // (unpublished before its barrier); it was made by `Box::into_raw` in `publish`.
    let agent = unsafe { Box::from_raw(agent) };
    // SAFETY: as above; nothing uses the thread array or the region any more.
    unsafe { agent.unmap() };
}

/// Marks the calling thread inside; returns its seat for [`leave`].
#[inline(always)]
pub(crate) fn enter() -> Seat {
    let t = tls();
    // SAFETY: only this thread touches its TLS block.
    let raw = unsafe { (*t).seat };
    let seat = if raw == SEAT_NONE {
        claim()
    } else {
        from_tls(raw)
    };
    PRESENCE.enter(seat);
    seat
}

/// Marks the calling thread out (of one section); the last one out frees what waits.
#[inline(always)]
pub(crate) fn leave(seat: Seat) {
    if PRESENCE.leave(seat) {
        reclaim();
    }
}

/// [`enter`] through the thread's own seat's marker (its TLS block's `marker`), for the hooks'
/// fast paths (see `hook::fast`): claims nothing and calls nothing. A thread without a seat of
/// its own (none claimed yet, or on the shared counter) takes the full path instead.
#[inline(always)]
pub(crate) fn enter_marked(marker: quiesce::Marker<'static>) {
    PRESENCE.enter_marked(marker);
}

/// [`leave`] through the marker [`enter_marked`] marked, without the reclaim: `true` when the
/// caller must call [`reclaim_now`] (once out).
#[inline(always)]
#[must_use]
pub(crate) fn leave_marked(marker: quiesce::Marker<'static>) -> bool {
    PRESENCE.leave_marked(marker)
}

/// Frees what waits for every thread to be out (after [`leave_marked`] said so).
#[cold]
#[inline(never)]
pub(crate) fn reclaim_now() {
    reclaim();
}

#[cold]
#[inline(never)]
fn reclaim() {
    PRESENCE.reclaim(free);
}

#[cold]
#[inline(never)]
fn claim() -> Seat {
    let t = tls();
    // SAFETY: only this thread touches its TLS block.
    let tl = unsafe { &mut *t };
    // A thread that gave its seat back at teardown shares the counter from then on.
    let seat = if tl.status == TORN_DOWN {
        Seat::SHARED
    } else {
        PRESENCE.claim()
    };
    tl.seat = if seat.is_shared() {
        SEAT_SHARED
    } else {
        // The seat goes back at the thread's exit, whatever it does meanwhile.
        crate::process::arm_teardown();
        seat.to_raw() + 1
    };
    tl.marker = PRESENCE.marker(seat);
    seat
}

#[inline(always)]
fn from_tls(raw: u32) -> Seat {
    if raw == SEAT_SHARED {
        Seat::SHARED
    } else {
        Seat::from_raw(raw - 1)
    }
}

/// At the end of a thread's teardown (outside): its seat goes to the next thread; its later
/// calls (other destructors) share the counter.
pub(crate) fn release_seat() {
    // SAFETY: only this thread touches its TLS block.
    let tl = unsafe { &mut *tls() };
    tl.marker = None;
    if tl.seat != SEAT_NONE && tl.seat != SEAT_SHARED {
        PRESENCE.release(from_tls(tl.seat));
    }
    tl.seat = SEAT_SHARED;
}

/// In a fork child (its only thread, outside): the other threads' seats are free and out.
pub(crate) fn after_fork() {
    // SAFETY: only this thread touches its TLS block.
    let raw = unsafe { (*tls()).seat };
    PRESENCE.after_fork(if raw == SEAT_NONE {
        Seat::SHARED
    } else {
        from_tls(raw)
    });
}
