//! What puts the program back as it was when an attachment stops: callbacks registered by the
//! parts of the agent that changed the program (attach's GOT entries; a patcher's call sites), run
//! by each thread the first time it sees its attachment stopped, inside its hook. The hooks call
//! this list and name none of them.
//!
//! A callback gets the stopped attachment's agent, must be cheap when it has nothing left to do
//! (every thread that sees the stop runs it once), must not allocate when it has (it runs inside a
//! hook) and must keep `errno` as it found it. Once the callbacks have run, the thread leaves its
//! hook and the attachment is retired and unmapped (see `live`).

use core::sync::atomic::AtomicUsize;
use core::sync::atomic::Ordering::{AcqRel, Acquire};

use crate::state::Agent;

/// A detach callback.
pub(crate) type Callback = fn(&Agent);

/// Room for every part of the agent that changes the program.
const MAX_CALLBACKS: usize = 8;

static CALLBACKS: [AtomicUsize; MAX_CALLBACKS] = [const { AtomicUsize::new(0) }; MAX_CALLBACKS];

/// Adds `f` to the callbacks (once: adding it again changes nothing).
pub(crate) fn on_detach(f: Callback) {
    let f = f as usize;
    for slot in &CALLBACKS {
        // AcqRel: pairs with the Acquire in `run` (the callback's code is there before it is
        // listed; a function pointer needs nothing more).
        match slot.compare_exchange(0, f, AcqRel, Acquire) {
            Ok(_) => return,
            Err(seen) if seen == f => return,
            Err(_) => {}
        }
    }
    debug_assert!(false, "more than {MAX_CALLBACKS} detach callbacks");
}

/// Runs every callback for `agent`, which this thread has just seen stopped.
pub(crate) fn run(agent: &Agent) {
    for slot in &CALLBACKS {
        // Acquire: pairs with the AcqRel in `on_detach`.
        let f = slot.load(Acquire);
        if f == 0 {
            break;
        }
        // SAFETY: only `on_detach` stores here, and only `Callback` values.
        let f: Callback = unsafe { core::mem::transmute::<usize, Callback>(f) };
        f(agent);
    }
}
