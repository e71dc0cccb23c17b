//! Process-wide state that outlives every attachment: the thread-exit destructor's key and the
//! fork handler (made once), the membarrier registration the stop handshake relies on, and the
//! detail-records switch the naked hooks read.

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize};

use registry::Registry;

/// 1 when detail records are on: read by the naked hooks (see `hook`), and by the entry-only
/// hooks and the return trampoline (see `entry`).
pub(crate) static DETAIL_ON: AtomicU8 = AtomicU8::new(0);

/// Turns detail records on or off for the hooks.
pub(crate) fn set_detail(on: bool) {
    DETAIL_ON.store(u8::from(on), Relaxed);
}

/// The pthread key of the thread teardown destructor, created once (0 until then).
static KEY: AtomicU32 = AtomicU32::new(0);
/// Set once the key exists and the fork handler is installed.
static PROCESS_HOOKS: AtomicU8 = AtomicU8::new(0);
/// This process's membarrier registration: one of the `BARRIER_*` states.
static BARRIER: AtomicU8 = AtomicU8::new(BARRIER_NONE);
/// Not registered (nobody tried yet, or starting the registering thread failed).
const BARRIER_NONE: u8 = 0;
/// A registering thread is at it.
const BARRIER_PENDING: u8 = 1;
/// Registered: producers of a membarrier region need no fence.
const BARRIER_READY: u8 = 2;
/// The kernel refused: producers fence.
const BARRIER_REFUSED: u8 = 3;

/// The thread-exit destructor's key, once made.
pub(crate) fn teardown_key() -> Option<libc::pthread_key_t> {
    // Acquire: pairs with the Release store in `process_hooks`: the key is stored before the flag.
    (PROCESS_HOOKS.load(Acquire) != 0).then(|| KEY.load(Relaxed))
}

/// The teardown key (destructor `teardown`) and the fork handler (`in_child`), made once per
/// process (a later attach reuses them). The error is `pthread_key_create`'s.
pub(crate) fn process_hooks(
    teardown: unsafe extern "C" fn(*mut libc::c_void),
    in_child: unsafe extern "C" fn(),
) -> Result<libc::pthread_key_t, std::io::Error> {
    // Acquire: pairs with the Release store below: the key is stored before the flag.
    if PROCESS_HOOKS.load(Acquire) != 0 {
        return Ok(KEY.load(Relaxed));
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-parameter; the destructor is an extern "C" fn.
    let rc = unsafe { libc::pthread_key_create(&mut key, Some(teardown)) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    // SAFETY: the handler is an extern "C" fn that only touches the agent's state.
    unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    KEY.store(key, Relaxed);
    // Release: pairs with the Acquire load above.
    PROCESS_HOOKS.store(1, Release);
    Ok(key)
}

/// Whether a producer writing into `reg` must fence its write sections: the region says
/// [`registry::Handshake::Fence`], or this process is not (yet) registered for the stopper's
/// membarrier. Once this is `false` it stays so for that region.
///
/// Why dropping the fence mid-recording is sound (the Dekker pair of `SlotWriter::open` and
/// `Registry::stop_accepting`: producer stores `in_write`, barrier, loads `accepting`; stopper
/// clears `accepting`, fence and membarrier, loads `in_write`). While fenced, the producer's
/// barrier is its own `SeqCst` fence, which pairs with the stopper's fence whatever the
/// registration's state: a stop that comes before the registration finishes is handled like a
/// [`registry::Handshake::Fence`] region. Unfenced, the producer relies on the stopper's
/// membarrier running a full barrier on its CPU; the kernel's registration returns only after it
/// has marked every CPU running the process and run a full barrier there (and a thread scheduled
/// later is marked by its context switch, itself a full barrier). A stopper's membarrier that reads
/// a CPU's mark before it was set is ordered, by its own barrier and that one, before the
/// producer's later load of `accepting`, which therefore sees the stop. A producer drops its fence
/// only after seeing READY, which is stored after the registration returned: its unfenced sections
/// all follow the registration.
#[inline]
pub(crate) fn producers_must_fence(reg: &Registry<'_>) -> bool {
    // Acquire: pairs with the Release stores of READY in `register_now` and `registering_thread`
    // (a producer that sees READY runs its later write sections after the registration).
    reg.handshake() != registry::Handshake::Membarrier || BARRIER.load(Acquire) != BARRIER_READY
}

/// Whether this process is registered for the expedited membarrier (so a barrier from inside it
/// reaches its threads in microseconds).
pub(crate) fn membarrier_registered() -> bool {
    // Acquire: pairs with the Release stores of READY in `register_now` and `registering_thread`.
    BARRIER.load(Acquire) == BARRIER_READY
}

/// Registers this process for the stopper's membarrier on the calling thread, if the region uses
/// it (spawn's constructor, and a fork child: one thread, so the kernel's registration is cheap).
pub(crate) fn register_now(reg: &Registry<'_>) {
    if reg.handshake() != registry::Handshake::Membarrier {
        return;
    }
    let state = if registry::membarrier::register_process() {
        BARRIER_READY
    } else {
        BARRIER_REFUSED
    };
    // Release: pairs with the Acquire in `producers_must_fence`.
    BARRIER.store(state, Release);
}

/// A fork child: it has no registering thread (only the forking thread is copied) and a process
/// of its own, so it registers afresh when it runs an agent.
pub(crate) fn barrier_after_fork(reg: Option<&Registry<'_>>) {
    // Release: pairs with the Acquire in `producers_must_fence` (NONE: fence until registered).
    BARRIER.store(BARRIER_NONE, Release);
    if let Some(reg) = reg {
        register_now(reg);
    }
}

/// Starts the thread that registers this process for the stopper's membarrier, unless it is
/// registered, refused, or being registered already. If the thread cannot be started, producers
/// keep fencing (correct, a few ns more per event) and the next attachment tries again.
///
/// Starting a thread here is safe: the caller is at a point where it holds no libc lock (the
/// tracer's safe point, the same that makes its `dlopen` safe), and `pthread_create` takes only
/// the loader's and the stack cache's locks. The thread is detached, blocks every signal (so no
/// signal of the program is ever delivered to it), runs agent code only (no instrumented
/// function, no pthread key) and exits once the flag is published.
pub(crate) fn register_in_background() {
    // Relaxed: the CAS only elects the starter; the state it publishes is ordered by its own
    // Release store.
    if BARRIER
        .compare_exchange(BARRIER_NONE, BARRIER_PENDING, Relaxed, Relaxed)
        .is_err()
    {
        return;
    }
    if !spawn_detached(registering_thread) {
        // Relaxed: NONE makes producers fence, as PENDING did.
        BARRIER.store(BARRIER_NONE, Relaxed);
    }
}

/// The registering thread's body.
extern "C" fn registering_thread(_: *mut libc::c_void) -> *mut libc::c_void {
    let state = if registry::membarrier::register_process() {
        BARRIER_READY
    } else {
        BARRIER_REFUSED
    };
    // Release: pairs with the Acquire in `producers_must_fence`.
    BARRIER.store(state, Release);
    core::ptr::null_mut()
}

/// The registering thread's stack. Its body makes one system call, but with library calls traced
/// in every object (`--library-calls all`) the C library's own calls as the thread starts and ends
/// go through redirected GOT entries and so through the agent's hooks (which find the thread
/// exempt, see [`on_own_stack`], and return at once). 1 MiB, only the pages touched are used.
const HELPER_STACK: usize = 1 << 20;
/// The unmapped page below a helper stack, so an overflow faults instead of writing elsewhere.
const GUARD: usize = 4096;

/// The stacks of the threads the agent started for itself, as (lowest, highest) address pairs
/// (0, 0: free). A thread whose stack is one of them is never traced (see
/// `thread::acquire_state`): its calls are the agent's, not the program's. A detached thread
/// cannot unmap the stack it runs on, so a stack that was used stays listed and mapped; one is
/// made per membarrier registration, at most once per process (and a fork child registers on its
/// own thread), so the table does not fill in practice. When it is full the thread still starts,
/// on a stack of the C library's, and is traced as before.
static OWN_STACKS: [[AtomicUsize; 2]; 4] =
    [const { [AtomicUsize::new(0), AtomicUsize::new(0)] }; 4];

/// Whether the calling thread runs on a stack the agent made for one of its own threads.
pub(crate) fn on_own_stack() -> bool {
    // An address in the calling thread's current frame.
    let marker = 0u8;
    let sp = core::hint::black_box(&marker) as *const u8 as usize;
    OWN_STACKS.iter().any(|[lo, hi]| {
        // Acquire: pairs with the Release store of `hi` in `own_stack` (both bounds are seen).
        let hi = hi.load(Acquire);
        hi != 0 && (lo.load(Relaxed)..hi).contains(&sp)
    })
}

/// Maps a stack of [`HELPER_STACK`] bytes above a guard page and lists it in [`OWN_STACKS`].
/// Returns its table entry and (lowest address, size), or `None` (no free entry, or the mapping
/// failed): the caller then lets the C library make the stack.
fn own_stack() -> Option<(usize, usize, usize)> {
    let entry = OWN_STACKS.iter().position(|[lo, _]| {
        // Relaxed: the CAS only claims the entry; the bounds are published by `hi`'s Release.
        lo.compare_exchange(0, 1, Relaxed, Relaxed).is_ok()
    })?;
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it yet.
    let base = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            GUARD + HELPER_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        // Relaxed: nothing was published under this entry.
        OWN_STACKS[entry][0].store(0, Relaxed);
        return None;
    }
    let base = base as usize;
    // SAFETY: the first page of the mapping just made, ours alone. A failure only loses the
    // guard.
    unsafe { libc::mprotect(base as *mut libc::c_void, GUARD, libc::PROT_NONE) };
    let lo = base + GUARD;
    OWN_STACKS[entry][0].store(lo, Relaxed);
    // Release: pairs with the Acquire in `on_own_stack`.
    OWN_STACKS[entry][1].store(lo + HELPER_STACK, Release);
    Some((entry, lo, HELPER_STACK))
}

/// Takes back a stack [`own_stack`] made for a thread that never started.
fn drop_own_stack(entry: usize, lo: usize) {
    // The reverse of `own_stack`: `hi` first, so a reader stops matching the range, then `lo`,
    // which frees the entry. No thread runs on the stack either way. Release: as in `own_stack`.
    OWN_STACKS[entry][1].store(0, Release);
    // SAFETY: the mapping `own_stack` made, used by no thread (pthread_create failed).
    unsafe { libc::munmap((lo - GUARD) as *mut libc::c_void, GUARD + HELPER_STACK) };
    OWN_STACKS[entry][0].store(0, Relaxed);
}

/// Starts `body` on a detached thread with every signal blocked, on a stack of its own that
/// [`on_own_stack`] recognises. `false`: it could not start.
fn spawn_detached(body: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void) -> bool {
    let stack = own_stack();
    // SAFETY: the attribute and signal sets are initialised before use and the attribute is
    // destroyed after; the calling thread's signal mask is restored before returning. The new
    // thread inherits the all-blocked mask, so there is no moment where it can take a signal. A
    // stack given to the attribute is a mapping of ours of the size given, used by that thread
    // alone and never unmapped once it started.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_attr_init(&mut attr) != 0 {
            if let Some((entry, lo, _)) = stack {
                drop_own_stack(entry, lo);
            }
            return false;
        }
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        match stack {
            Some((_, lo, size)) => {
                libc::pthread_attr_setstack(&mut attr, lo as *mut libc::c_void, size);
            }
            None => {
                libc::pthread_attr_setstacksize(
                    &mut attr,
                    HELPER_STACK.max(libc::PTHREAD_STACK_MIN),
                );
            }
        }
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let mut thread: libc::pthread_t = 0;
        let started = libc::pthread_create(&mut thread, &attr, body, core::ptr::null_mut()) == 0;
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        if !started {
            if let Some((entry, lo, _)) = stack {
                drop_own_stack(entry, lo);
            }
        }
        started
    }
}

/// Arms the thread-exit destructor for the calling thread (once the key exists).
pub(crate) fn arm_teardown() {
    if let Some(key) = teardown_key() {
        // SAFETY: the key was created by `process_hooks`; the value is a non-null marker, never
        // dereferenced.
        unsafe { libc::pthread_setspecific(key, core::ptr::dangling::<libc::c_void>()) };
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use registry::{Handshake, RegionConfig, SharedRegion};

    fn region(handshake: Handshake) -> SharedRegion {
        let config = RegionConfig {
            capacity: 64,
            handshake,
            ..RegionConfig::default()
        };
        SharedRegion::create(&config).expect("a small region")
    }

    /// Waits until no registering thread is at work (it makes one system call; the bound only
    /// keeps a broken build from hanging).
    fn settled() -> u8 {
        for _ in 0..60_000 {
            // Acquire: as in `producers_must_fence`.
            let state = BARRIER.load(Acquire);
            if state != BARRIER_PENDING {
                return state;
            }
            std::thread::sleep(core::time::Duration::from_millis(1));
        }
        panic!("the registering thread never published its outcome");
    }

    // One test, because the registration is process-wide state.
    #[test]
    fn barrier__attach_then_fork_then_attach__then_producers_fence_only_until_registered() {
        let fence_region = region(Handshake::Fence);
        let fence = fence_region.registry().unwrap();
        let membarrier_region = region(Handshake::Membarrier);
        let mb = membarrier_region.registry().unwrap();
        assert!(producers_must_fence(&fence));
        assert!(producers_must_fence(&mb), "nothing registered yet");

        // Attach: the registration runs on a thread of its own, then producers drop the fence.
        register_in_background();
        let registered = registry::membarrier::global_expedited_supported();
        let expected = if registered {
            BARRIER_READY
        } else {
            BARRIER_REFUSED
        };
        assert_eq!(settled(), expected);
        assert_eq!(producers_must_fence(&mb), !registered);
        assert!(producers_must_fence(&fence), "a fence region always fences");

        // A later attach starts nothing: the state stays as it is.
        register_in_background();
        assert_eq!(BARRIER.load(Acquire), expected);

        // A fork child without an agent: unregistered until it runs one.
        barrier_after_fork(None);
        assert!(producers_must_fence(&mb));
        // With one (spawn's constructor, or the fork handler): registered on the spot.
        barrier_after_fork(Some(&mb));
        assert_eq!(BARRIER.load(Acquire), expected);
        assert_eq!(producers_must_fence(&mb), !registered);
    }
}
