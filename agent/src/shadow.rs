//! Each thread's shadow stack of hooked returns (the entry-only hooks, see `entry`): made on the
//! thread's first hooked call, kept across attachments, and handed to a later thread when it ends.

use std::sync::Mutex;

use crate::state::ThreadState;
use crate::tls::Tls;

/// Frames one thread can have hooked at once; deeper calls are not recorded (counted, said once).
pub(crate) const SHADOW_CAPACITY: usize = 4096;

/// Shadow stacks of threads that ended, for reuse (thread start and end only).
static SPARE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// Gives the calling thread a shadow stack (a spare one, or a new one).
#[cold]
#[inline(never)]
pub(crate) fn make_shadow(t: *mut Tls, st: &mut ThreadState) -> *mut retstack::ShadowStack {
    // Held busy: a signal handler arriving meanwhile records nothing (counted as reentrant)
    // instead of taking the lock again.
    st.set_busy(true);
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    let bounds = (st.stack_lo, st.stack_hi);
    let spare = SPARE.lock().ok().and_then(|mut s| s.pop());
    let shadow = match spare {
        Some(p) => {
            let p = p as *mut retstack::ShadowStack;
            // SAFETY: a spare stack is owned by nobody until taken here.
            unsafe { (*p).reset(bounds) };
            p
        }
        None => Box::into_raw(retstack::ShadowStack::boxed(SHADOW_CAPACITY, bounds)),
    };
    // SAFETY: only this thread touches its TLS block.
    unsafe { (*t).shadow = shadow };
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    st.set_busy(false);
    shadow
}

/// At thread teardown (after every frame it hooked has returned or been abandoned): its shadow
/// stack goes back to the spares.
pub(crate) fn release_shadow(t: &mut Tls) {
    if t.shadow.is_null() {
        return;
    }
    let p = core::mem::replace(&mut t.shadow, core::ptr::null_mut());
    if let Ok(mut spare) = SPARE.lock() {
        spare.push(p as usize);
    }
}
