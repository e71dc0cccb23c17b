//! Libraries loaded after the attach. The `dlopen` and `dlmopen` GOT entries of every object point
//! at a trampoline here; when the call has loaded something, the agent redirects the new objects'
//! entries (hooks and `dlopen`/`dlmopen` alike) before the program gets the handle back.
//!
//! **Why a trampoline, not a wrapper.** glibc's `dlopen` finds its caller from its own return
//! address: the caller's object decides the search path (its DT_RUNPATH or DT_RPATH, `$ORIGIN`)
//! and the namespace the library is loaded into (the caller's). A wrapper that calls it would
//! make the agent the caller; a tail jump would keep the caller but never get control back. The
//! trampoline does both: it finds a byte `0xC3` (`ret`) at an address G on the page of the
//! caller's return address R (so in the caller's object, or in the same anonymous mapping, which
//! glibc treats as the executable either way), pushes its continuation K, then G, and jumps to
//! the real function with the arguments untouched and the stack aligned as after a call. The
//! function sees G as its return address and returns there; G's `ret` pops K; K saves the
//! handle, calls [`loaded`], and returns it to R.
//!
//! - **Plain-call fallback.** With a CET shadow stack enabled, the return to G would not match
//!   the shadow stack and fault; the trampoline then calls the function itself (as it would if
//!   R's page held no `ret` byte, which does not happen in compiled code). The function then sees
//!   the agent as its caller: a bare name is searched with the agent's DT_RUNPATH (none) and
//!   `$ORIGIN` (the agent's directory) instead of the caller's, and the load goes to the agent's
//!   namespace. glibc 2.36 (Debian 12) never enables shadow stacks; glibc 2.39+ may.
//! - **Unwinding.** While the function runs, the frame above it reads as G, an address inside
//!   some unrelated function of the caller's object, and K above that has no unwind information:
//!   an unwinder walking out of `dlopen` (a C++ exception escaping a constructor of the library
//!   being loaded, a backtrace taken by a debugger or profiler inside `dlopen`) misreads the
//!   frames from G on. Such an exception does not reach a handler in the program (glibc does not
//!   support exceptions escaping `dlopen` either: its loader lock would stay held), and such a
//!   backtrace stops or goes wrong at G. Once the function has returned nothing of this is left
//!   on the stack.
//! - **Stop.** The agent is never unloaded, so a thread still inside `dlopen` when the entries are
//!   put back returns through K as usual; [`loaded`] then finds the GOT restored and does nothing.
//! - **Not seen.** Objects of other namespaces (`dlmopen` with `LM_ID_NEWLM`): `dl_iterate_phdr`
//!   reports the caller's namespace only, so their entries are never redirected and their calls
//!   stay untraced. A load that does not go through a redirected entry (a `dlopen` pointer the
//!   program kept from before the attach, glibc's own loads) is redirected at the next load that
//!   does. A thread that calls into a new library between its load and the redirection (only
//!   possible through a pointer obtained before that load returned) records the function's
//!   return without its call.
//!
//! **Spawn.** The same trampolines are the agent's exported `dlopen` and `dlmopen`: preloaded,
//! the agent comes before glibc in the global lookup, so the program's calls (and its libraries')
//! bind to them from the start, with no GOT to redirect. Their first call finds the real function
//! ([`resolve`]: the global lookup's answer if it is not the agent's own, else the next
//! definition after the agent) and whether a shadow stack is active; from then on they behave as
//! under attach, so every object a `dlopen` adds is in the module log (named, see
//! `crate::modules`), and its patchable sleds are patched, before the program gets the handle.

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicU8, AtomicUsize};
use std::ffi::{c_void, CStr};

use super::got::{self, Pass};
use crate::entry::integer_arguments;

/// The function each trampoline calls (0: not found, its entries are not redirected).
static REAL_DLOPEN: AtomicUsize = AtomicUsize::new(0);
static REAL_DLMOPEN: AtomicUsize = AtomicUsize::new(0);
/// 1: the trampolines call the function themselves (a shadow stack is active).
static PLAIN_CALL: AtomicU8 = AtomicU8::new(0);

/// Finds the functions the trampolines call and whether they may return through G. Before the
/// first pass; later attachments keep what the first found (a trampoline may be running).
pub(super) fn prepare() {
    for (real, name) in [(&REAL_DLOPEN, c"dlopen"), (&REAL_DLMOPEN, c"dlmopen")] {
        // Acquire/Release: pair with each other (a second attachment sees the first's value).
        if real.load(Acquire) == 0 {
            if let Some(address) = resolve(name) {
                real.store(address, Release);
            }
        }
    }
    if shadow_stack_active() {
        PLAIN_CALL.store(1, Relaxed);
    }
}

/// The functions the trampolines call (0: not found), `dlopen`'s then `dlmopen`'s.
pub(super) fn reals() -> (usize, usize) {
    // Acquire: pairs with the Release store in `prepare`.
    (REAL_DLOPEN.load(Acquire), REAL_DLMOPEN.load(Acquire))
}

/// The trampolines that replace `dlopen` and `dlmopen`.
pub(super) fn trampolines() -> (usize, usize) {
    (
        dlopen_trampoline as *const () as usize,
        dlmopen_trampoline as *const () as usize,
    )
}

/// The definition of `name` the program's calls bind to: the global lookup's answer, if it is a
/// definition of that name (not an executable's PLT entry standing for it, which would lead back
/// to a redirected entry) and not the agent's own export; else the next definition after the
/// agent (spawn: the agent is preloaded, so the global lookup finds its export first).
fn resolve(name: &CStr) -> Option<usize> {
    [core::ptr::null_mut(), libc::RTLD_NEXT]
        .into_iter()
        .find_map(|scope| definition(scope, name))
}

/// `name`'s definition as `dlsym(scope, name)` finds it, if it is one, and not the agent's.
fn definition(scope: *mut c_void, name: &CStr) -> Option<usize> {
    // SAFETY: RTLD_DEFAULT (null) or RTLD_NEXT and a NUL-terminated name; glibc defines both
    // names, so the thread's dlerror state is left alone.
    let found = unsafe { libc::dlsym(scope, name.as_ptr()) };
    let (ours_dlopen, ours_dlmopen) = trampolines();
    if found.is_null() || [ours_dlopen, ours_dlmopen].contains(&(found as usize)) {
        return None;
    }
    // SAFETY: all-zero is a valid Dl_info (null pointers).
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: `info` is a valid out-parameter.
    if unsafe { libc::dladdr(found, &mut info) } == 0
        || info.dli_saddr != found
        || info.dli_sname.is_null()
    {
        return None;
    }
    // SAFETY: dladdr gives a NUL-terminated symbol name.
    (unsafe { CStr::from_ptr(info.dli_sname) } == name).then_some(found as usize)
}

/// A trampoline's first call in a process the agent was preloaded into (`prepare` never ran):
/// finds the function it calls (`which`: 0 `dlopen`, 1 `dlmopen`) and whether a shadow stack
/// is active. Never returns 0: without glibc's function the program could not have called it.
extern "C" fn resolve_lazily(which: u64) -> usize {
    // SAFETY: this thread's errno (the lookups may set it; the function called next sets its own).
    let errno = unsafe { *libc::__errno_location() };
    if shadow_stack_active() {
        PLAIN_CALL.store(1, Relaxed);
    }
    let (real, name) = if which == 0 {
        (&REAL_DLOPEN, c"dlopen")
    } else {
        (&REAL_DLMOPEN, c"dlmopen")
    };
    // Acquire/Release: as in `prepare` (two threads' first calls find the same address).
    let mut address = real.load(Acquire);
    if address == 0 {
        address = resolve(name).unwrap_or(0);
        real.store(address, Release);
    }
    if address == 0 {
        crate::say::say(&format!(
            "{} is called but glibc's definition cannot be found; aborting",
            name.to_string_lossy()
        ));
        std::process::abort();
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
    address
}

/// Whether this thread runs with a CET shadow stack (`ARCH_SHSTK_STATUS`; a kernel without them
/// answers EINVAL). glibc enables it for the whole process at startup, or not at all.
fn shadow_stack_active() -> bool {
    const ARCH_SHSTK_STATUS: libc::c_int = 0x5005;
    const ARCH_SHSTK_SHSTK: u64 = 1;
    let mut features = 0u64;
    // SAFETY: the kernel writes one u64 to `features`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_SHSTK_STATUS,
            &mut features as *mut u64,
        )
    };
    r == 0 && features & ARCH_SHSTK_SHSTK != 0
}

/// K's call, on the thread that called `dlopen`/`dlmopen`, before the handle goes back to the
/// program: redirects the entries of what the call loaded (if the GOT is still redirected) and
/// reports the new objects into the module log, leaving `errno` and the thread's dlerror state as the call left them.
extern "C" fn loaded(handle: *mut c_void) {
    if handle.is_null() {
        return;
    }
    // SAFETY: this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    if got::redirected() {
        got::run(Pass::Loaded);
    }
    crate::patch::after_dlopen();
    crate::plt::after_load();
    // The new objects go into the module log, so their functions get names.
    let seat = crate::live::enter();
    if let Some(agent) = crate::live::ready_agent() {
        crate::modules::report_new(&agent.reg, agent.pid.load(Relaxed), agent.image);
    }
    crate::live::leave(seat);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Defines an exported stand-in for a loading function: a jump to [`hop`] with the real function
/// in r11 once it is known (`$real`), else to [`first_call`] with `$which` in eax (its index in
/// [`resolve_lazily`]).
macro_rules! load_trampoline {
    ($(#[$meta:meta])* $name:ident, export = $export:literal, real = $real:path, which = $which:literal) => {
        $(#[$meta])*
        ///
        /// # Safety
        #[doc = concat!("Called as `", $export, "`, with its arguments.")]
        #[unsafe(naked)]
        #[export_name = $export]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                "endbr64",
                "mov r11, qword ptr [rip + {real}]",
                "test r11, r11",
                "jz 1f",
                "jmp {hop}",
                "1:",
                "mov eax, {which}",
                "jmp {first}",
                real = sym $real,
                hop = sym hop,
                first = sym first_call,
                which = const $which,
            )
        }
    };
}

load_trampoline!(
    /// Replaces `dlopen`: the real one, called as if from the caller (see the module doc).
    /// Exported as `dlopen`, so a preloaded agent stands in front of glibc's from the start.
    dlopen_trampoline, export = "dlopen", real = REAL_DLOPEN, which = 0
);

load_trampoline!(
    /// Replaces `dlmopen`, as [`dlopen_trampoline`] does `dlopen`; exported as `dlmopen`.
    dlmopen_trampoline, export = "dlmopen", real = REAL_DLMOPEN, which = 1
);

/// A trampoline whose function is not known yet: eax says which (0 `dlopen`, 1 `dlmopen`);
/// [rsp] is the caller's return address and rsp = 8 (mod 16), as at the trampoline's entry.
/// Finds the function with [`resolve_lazily`], the integer argument registers saved around the
/// call, and goes on to [`hop`] with it in r11.
///
/// # Safety
/// Entered by a jump from a trampoline, as described.
#[unsafe(naked)]
unsafe extern "C" fn first_call() {
    core::arch::naked_asm!(
        // rsp = 0 (mod 16) for the call.
        "sub rsp, 72",
        integer_arguments!(store),
        "mov edi, eax",
        "call {resolve}",
        "mov r11, rax",
        integer_arguments!(load),
        "add rsp, 72",
        "jmp {hop}",
        resolve = sym resolve_lazily,
        hop = sym hop,
    )
}

/// The trampolines' body: r11 holds the function to call; [rsp] is the caller's return address
/// R and rsp = 8 (mod 16), as at any function's entry; rdi, rsi, rdx (the arguments) are left
/// untouched. Only rax, r10 and r11 are used before the call (scratch registers in the ABI).
///
/// # Safety
/// Entered by a jump from a trampoline, as described.
#[unsafe(naked)]
unsafe extern "C" fn hop() {
    core::arch::naked_asm!(
        "cmp byte ptr [rip + {plain}], 0",
        "jne 4f",
        // G: the first 0xC3 at or after R on R's page, else the last one before R.
        "mov rax, qword ptr [rsp]",
        "mov r10, rax",
        "or r10, 4095",
        "2:",
        "cmp byte ptr [rax], 0xc3",
        "je 5f",
        "cmp rax, r10",
        "je 3f",
        "add rax, 1",
        "jmp 2b",
        "3:",
        "mov rax, qword ptr [rsp]",
        "mov r10, rax",
        "and r10, -4096",
        "6:",
        "cmp rax, r10",
        "je 4f",
        "sub rax, 1",
        "cmp byte ptr [rax], 0xc3",
        "jne 6b",
        // Return to G, whose `ret` goes on to K; rsp = 8 (mod 16) again at the function's entry.
        "5:",
        "lea r10, [rip + 7f]",
        "push r10",
        "push rax",
        "jmp r11",
        // K: [rsp] = R, rsp = 8 (mod 16), rax = the handle.
        "7:",
        "push rax",
        "mov rdi, rax",
        "call {loaded}",
        "pop rax",
        "ret",
        // Plain call: the function sees the agent as its caller.
        "4:",
        "sub rsp, 8",
        "call r11",
        "add rsp, 8",
        "jmp 7b",
        plain = sym PLAIN_CALL,
        loaded = sym loaded,
    )
}

#[cfg(test)]
mod tests {
    #![allow(non_snake_case)]
    use super::*;
    use std::ffi::{c_char, c_int};

    type Dlopen = unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void;
    type Dlmopen = unsafe extern "C" fn(libc::Lmid_t, *const c_char, c_int) -> *mut c_void;

    /// Serialises the tests that switch the plain-call fallback on.
    static PLAIN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Runs `f` with the trampolines in plain-call mode if `plain`.
    fn with_mode<T>(plain: bool, f: impl FnOnce() -> T) -> T {
        let _serial = PLAIN.lock().unwrap_or_else(|e| e.into_inner());
        PLAIN_CALL.store(u8::from(plain), Relaxed);
        let out = f();
        PLAIN_CALL.store(u8::from(shadow_stack_active()), Relaxed);
        out
    }

    /// The stack pointer at its entry (pointing at its return address).
    #[unsafe(naked)]
    extern "C" fn entry_rsp() -> usize {
        core::arch::naked_asm!("mov rax, rsp", "ret")
    }

    /// Its return address.
    #[unsafe(naked)]
    extern "C" fn entry_return_address() -> usize {
        core::arch::naked_asm!("mov rax, qword ptr [rsp]", "ret")
    }

    /// [`hop`] in front of [`entry_rsp`].
    #[unsafe(naked)]
    extern "C" fn rsp_through_hop() -> usize {
        core::arch::naked_asm!(
            "lea r11, [rip + {f}]",
            "jmp {hop}",
            f = sym entry_rsp,
            hop = sym hop,
        )
    }

    /// [`hop`] in front of [`entry_return_address`].
    #[unsafe(naked)]
    extern "C" fn return_address_through_hop() -> usize {
        core::arch::naked_asm!(
            "lea r11, [rip + {f}]",
            "jmp {hop}",
            f = sym entry_return_address,
            hop = sym hop,
        )
    }

    fn through_trampoline() -> Dlopen {
        prepare();
        assert_ne!(reals().0, 0, "dlopen resolved");
        // SAFETY: the trampoline takes dlopen's arguments and returns its result.
        unsafe { core::mem::transmute::<usize, Dlopen>(trampolines().0) }
    }

    fn last_error() -> String {
        // SAFETY: dlerror returns null or a NUL-terminated message.
        let e = unsafe { libc::dlerror() };
        assert!(!e.is_null());
        // SAFETY: as above.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }

    #[test]
    fn resolve__dlopen_and_dlmopen__then_glibc_definitions() {
        let dlopen = resolve(c"dlopen").expect("dlopen");
        assert!(resolve(c"dlmopen").is_some());
        // SAFETY: all-zero is a valid Dl_info.
        let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
        // SAFETY: a valid out-parameter.
        let found = unsafe { libc::dladdr(dlopen as *const c_void, &mut info) };
        assert_ne!(found, 0);
        // SAFETY: dladdr gives a NUL-terminated file name.
        let file = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy();
        assert!(file.contains("libc.so"), "{file}");
        assert!(resolve(c"no_such_function_anywhere").is_none());
    }

    #[test]
    fn trampoline__loads_a_library__then_same_handle_as_a_direct_call() {
        let dlopen = through_trampoline();
        // SAFETY: valid arguments; the library stays loaded (a second reference).
        let ours = unsafe { dlopen(c"libm.so.6".as_ptr(), libc::RTLD_NOW) };
        // SAFETY: as above.
        let direct = unsafe { libc::dlopen(c"libm.so.6".as_ptr(), libc::RTLD_NOW) };
        assert!(!ours.is_null());
        assert_eq!(ours, direct);
        // SAFETY: handles from dlopen, closed once each.
        unsafe {
            libc::dlclose(ours);
            libc::dlclose(direct);
        }
    }

    #[test]
    fn trampoline__missing_library__then_null_and_the_same_dlerror_as_a_direct_call() {
        let dlopen = through_trampoline();
        // SAFETY: valid arguments.
        let ours = unsafe { dlopen(c"libno_such_library.so".as_ptr(), libc::RTLD_NOW) };
        assert!(ours.is_null());
        let through = last_error();
        // SAFETY: as above.
        let direct = unsafe { libc::dlopen(c"libno_such_library.so".as_ptr(), libc::RTLD_NOW) };
        assert!(direct.is_null());
        assert_eq!(through, last_error());
    }

    #[test]
    fn trampoline__plain_call__then_same_handle() {
        let dlopen = through_trampoline();
        // SAFETY: valid arguments.
        let ours = with_mode(true, || unsafe {
            dlopen(c"libm.so.6".as_ptr(), libc::RTLD_NOW)
        });
        // SAFETY: as above.
        let direct = unsafe { libc::dlopen(c"libm.so.6".as_ptr(), libc::RTLD_NOW) };
        assert_eq!(ours, direct);
        // SAFETY: handles from dlopen, closed once each.
        unsafe {
            libc::dlclose(ours);
            libc::dlclose(direct);
        }
    }

    #[test]
    fn dlmopen_trampoline__base_namespace__then_same_handle_as_a_direct_call() {
        prepare();
        assert_ne!(reals().1, 0, "dlmopen resolved");
        // SAFETY: the trampoline takes dlmopen's arguments and returns its result.
        let dlmopen = unsafe { core::mem::transmute::<usize, Dlmopen>(trampolines().1) };
        // SAFETY: valid arguments.
        let ours = unsafe { dlmopen(libc::LM_ID_BASE, c"libm.so.6".as_ptr(), libc::RTLD_NOW) };
        // SAFETY: as above.
        let direct = unsafe { libc::dlopen(c"libm.so.6".as_ptr(), libc::RTLD_NOW) };
        assert!(!ours.is_null());
        assert_eq!(ours, direct);
        // SAFETY: handles from dlopen, closed once each.
        unsafe {
            libc::dlclose(ours);
            libc::dlclose(direct);
        }
    }

    #[test]
    fn hop__either_mode__then_the_function_is_entered_with_the_stack_aligned_as_after_a_call() {
        for plain in [false, true] {
            let rsp = with_mode(plain, || rsp_through_hop());
            assert_eq!(rsp % 16, 8, "plain call: {plain}");
        }
    }

    #[test]
    fn hop__then_the_function_returns_to_a_ret_byte_in_the_callers_object() {
        let g = with_mode(false, || return_address_through_hop());
        // SAFETY: the hop found a mapped code byte there.
        assert_eq!(unsafe { *(g as *const u8) }, 0xC3);
        // SAFETY: all-zero is a valid Dl_info.
        let mut caller: libc::Dl_info = unsafe { core::mem::zeroed() };
        // SAFETY: as above.
        let mut found: libc::Dl_info = unsafe { core::mem::zeroed() };
        let here = hop__then_the_function_returns_to_a_ret_byte_in_the_callers_object as *const ();
        // SAFETY: valid out-parameters.
        unsafe {
            assert_ne!(libc::dladdr(here.cast(), &mut caller), 0);
            assert_ne!(libc::dladdr(g as *const c_void, &mut found), 0);
        }
        assert_eq!(caller.dli_fbase, found.dli_fbase);
        // The plain call returns into the agent's code instead.
        let plain = with_mode(true, || return_address_through_hop());
        assert_ne!(plain, g);
    }
}
