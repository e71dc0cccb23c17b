//! Entry-only hooks: `mcount` / `_mcount` (`-pg`: called after the prologue, the caller's return
//! address at `8(%rbp)`) and `__fentry__` (`-pg -mfentry`: the first instruction, the return
//! address at `8(%rsp)` on entry). Each records the call and hooks the function's return through
//! the thread's [`retstack::ShadowStack`]; [`tracer_return_hook`] records the return.
//!
//! The naked hooks save every register an instrumented function may still need (the six integer
//! argument registers, `rax` for variadic calls, `r10` for a static chain) around a fast path
//! that leaves the vector registers alone ([`enter_fast`]: a registered thread, room in its ring,
//! nothing unusual), and `xmm0`–`xmm7` as well only when it declines and the full path runs (its
//! Rust code may use them). Function ids: `__fentry__` knows the function's first byte (its own call
//! site, less a leading `endbr64`); `mcount` is called after a prologue of unknown length, so its
//! id is its return address, an address inside the function that the readers resolve to the
//! enclosing symbol.

use crate::hook::{event, CALL, FAST_DECLINED, RETURN};
use crate::say::say;
use crate::shadow::{make_shadow, SHADOW_CAPACITY};
use crate::tls::tls;

/// Assembly that moves each register to (`store`) or from (`load`) its word at `[rsp + offset]`,
/// with the instruction `$op`.
macro_rules! at_rsp {
    (store $op:literal: $($reg:ident $at:literal),*) => {
        concat!($($op, " [rsp + ", $at, "], ", stringify!($reg), "\n"),*)
    };
    (load $op:literal: $($reg:ident $at:literal),*) => {
        concat!($($op, " ", stringify!($reg), ", [rsp + ", $at, "]\n"),*)
    };
}
pub(crate) use at_rsp;

/// Assembly that saves (`store`) or restores (`load`) the integer registers a called function may
/// take arguments in (`rdi`..`r9`, `rax` for variadic calls, `r10` for a static chain) at
/// `[rsp]`..`[rsp + 64)` (the entry hooks here, the library-call stubs' entry, see `plt`, and the
/// `dlopen` stand-ins' first call).
macro_rules! integer_arguments {
    ($dir:ident) => {
        crate::entry::at_rsp!($dir "mov":
            rdi 0, rsi 8, rdx 16, rcx 24, r8 32, r9 40, rax 48, r10 56)
    };
}
pub(crate) use integer_arguments;

/// Assembly that saves (`store`) or restores (`load`) the vector argument registers
/// (`xmm0`-`xmm7`) at `[rsp + 64]`..`[rsp + 192)`: only on a hook's slow path, whose Rust code may
/// use them (the fast paths leave them alone, see [`enter_fast`]).
macro_rules! vector_arguments {
    ($dir:ident) => {
        crate::entry::at_rsp!($dir "movdqu":
            xmm0 64, xmm1 80, xmm2 96, xmm3 112, xmm4 128, xmm5 144, xmm6 160, xmm7 176)
    };
}
pub(crate) use vector_arguments;

/// 1 when the naked hooks save the vector registers around their fast path too: in builds with
/// debug assertions, which are unoptimised, and whose fast paths are not the inlined, call-free
/// code that `agent/tests/hot_path.rs` checks in the release build (they call helpers, which may
/// use any register). 0 in release builds.
pub(crate) const SAVE_VECTORS_ALWAYS: u8 = cfg!(debug_assertions) as u8;

/// Defines an entry hook: saves the integer argument registers and calls `$fast(slot, pc) -> code`
/// with the address of the instrumented function's return-address word (`$slot`: computed from
/// `rbp`, or from `r11`, the stack pointer at the hook's entry) and the hook's return address. The
/// fast path leaves the vector registers alone; on any answer but `FAST_DONE` the hook saves
/// them too and calls `$slow(slot, pc, regs, code)`. With detail records on, the fast path is
/// skipped: `$slow` gets `FAST_DECLINED` and the registers as the hook received them (the detail
/// payload's block, see `hook::REGS`, at `[rsp + 208]`; `r11` reads as the stack pointer: the
/// hook's first instruction takes it), else null. Restores what it saved, returns.
macro_rules! entry_hook {
    ($(#[$meta:meta])* $name:ident, slot = $slot:literal, fast = $fast:path, slow = $slow:path) => {
        $(#[$meta])*
        ///
        /// # Safety
        /// Only called by compiler-generated code at a function's entry.
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                // The call site's alignment is unknown (gcc calls `mcount` right after pushing
                // the saved registers; `__fentry__` is called before the function's frame
                // exists), so align for the Rust callee: r11 keeps the entry rsp (r11 is a
                // scratch register no call passes anything in).
                "mov r11, rsp",
                "and rsp, -16",
                "sub rsp, 352",
                "mov [rsp + 192], r11",
                integer_arguments!(store),
                // Unoptimised builds: the fast path's code is not checked (see
                // `SAVE_VECTORS_ALWAYS`), so the vectors are saved around it too.
                ".if {always}",
                vector_arguments!(store),
                ".endif",
                "cmp byte ptr [rip + {detail}], 0",
                "jne 3f",
                $slot,
                "mov rsi, [r11]",
                "call {fast}",
                "test rax, rax",
                "jnz 4f",
                "2:",
                ".if {always}",
                vector_arguments!(load),
                ".endif",
                integer_arguments!(load),
                "mov rsp, [rsp + 192]",
                "ret",
                // Detail records: every register as the hook received it, in the detail
                // payload's order.
                "3:",
                retstack::store_registers!(),
                "mov [rsp + {regs} + 120], r11",
                "mov rax, [r11]",
                "mov [rsp + {regs} + 128], rax",
                "lea rdx, [rsp + {regs}]",
                "mov ecx, {declined}",
                "jmp 5f",
                // The fast path's answer (rax) for the slow one.
                "4:",
                "xor edx, edx",
                "mov rcx, rax",
                "5:",
                ".ifeq {always}",
                vector_arguments!(store),
                ".endif",
                "mov r11, [rsp + 192]",
                $slot,
                "mov rsi, [r11]",
                "call {slow}",
                vector_arguments!(load),
                "jmp 2b",
                fast = sym $fast,
                slow = sym $slow,
                detail = sym crate::process::DETAIL_ON,
                declined = const crate::hook::FAST_DECLINED,
                regs = const 208,
                always = const crate::entry::SAVE_VECTORS_ALWAYS,
            )
        }
    };
}

const _: () = assert!(
    208 + crate::hook::REGS * 8 <= 352 && crate::hook::REGS == retstack::DETAIL_REGS,
    "the hooks' register block is the detail payload's, inside the hook's frame"
);

entry_hook!(
    /// The `-pg` hook (the name x86-64 gcc and clang call).
    mcount, slot = "lea rdi, [rbp + 8]", fast = mcount_fast, slow = mcount_slow
);
entry_hook!(
    /// The `-pg` hook under its other name (some toolchains call `_mcount`).
    _mcount, slot = "lea rdi, [rbp + 8]", fast = mcount_fast, slow = mcount_slow
);
entry_hook!(
    /// The `-pg -mfentry` hook, the function's first instruction.
    __fentry__, slot = "lea rdi, [r11 + 8]", fast = fentry_fast, slow = fentry_slow
);

entry_hook!(
    /// What a patched `-fpatchable-function-entry` sled calls (through its object's landing, see
    /// `patch`): like `__fentry__`, before the function's frame exists, but at the sled's end, so
    /// its id is the address after the sled, inside the function (as `mcount`'s).
    tracer_patch_entry, slot = "lea rdi, [r11 + 8]", fast = mcount_fast, slow = mcount_slow
);

retstack::return_trampoline!(
    /// Where a hooked function returns to: records the return and goes on to the real caller.
    tracer_return_hook => on_return, fast = return_fast, detail = crate::process::DETAIL_ON
);

extern "C" fn mcount_fast(slot: *mut u64, pc: u64) -> u64 {
    enter_fast(slot, pc)
}

extern "C" fn fentry_fast(slot: *mut u64, pc: u64) -> u64 {
    enter_fast(slot, fentry_function(pc))
}

extern "C" fn mcount_slow(slot: *mut u64, pc: u64, regs: *const u64, code: u64) {
    crate::hook::after_fast(code, (), || enter(slot, pc, regs));
}

extern "C" fn fentry_slow(slot: *mut u64, pc: u64, regs: *const u64, code: u64) {
    crate::hook::after_fast(code, (), || enter(slot, fentry_function(pc), regs));
}

/// The entry hooks' fast path: records the call of `function` and hooks its return when this
/// thread is registered in the live attachment, has its presence seat and its shadow stack, and
/// nothing unusual is in the way (see `hook::ready_fast`, `ShadowStack::try_hook_fast`); else
/// declines before changing anything. It calls nothing and leaves every vector register alone, so
/// the naked hooks save those only when it does not answer `FAST_DONE` (the system test
/// `hot_path__disassembled__then_no_vector_register_and_no_call` checks the compiled code).
#[inline(always)]
pub(crate) fn enter_fast(slot: *mut u64, function: u64) -> u64 {
    crate::hook::fast(
        FAST_DECLINED,
        #[inline(always)]
        |st, sh| {
            // SAFETY: this thread's own shadow stack (made by it, never freed while it runs);
            // `slot` is the entered function's return-address word, on this thread's stack (the
            // naked hook computed it from the frame the compiler set up).
            if !sh.is_null() && unsafe { (*sh).try_hook_fast(slot, function, trampoline()) } {
                // SAFETY: `fast` runs this only on a state it found ready.
                unsafe { crate::hook::record_fast(st, CALL, function) }
            } else {
                FAST_DECLINED
            }
        },
    )
}

/// The return trampoline's fast path, as [`enter_fast`]: pops the innermost frame when it is the
/// one returning and records its return, or declines before changing anything.
extern "C" fn return_fast(slot: u64) -> retstack::FastReturn {
    let declined = retstack::FastReturn {
        ret: 0,
        code: FAST_DECLINED,
    };
    crate::hook::fast(
        declined,
        #[inline(always)]
        // SAFETY: this thread's own shadow stack, if it has one.
        |st, sh| match unsafe { sh.as_mut() }.and_then(|sh| sh.try_unhook_fast(slot)) {
            Some((ret, function)) => retstack::FastReturn {
                ret,
                // SAFETY: `fast` runs this only on a state it found ready.
                code: unsafe { crate::hook::record_fast(st, RETURN, function) },
            },
            None => declined,
        },
    )
}

/// The first byte of the function whose `__fentry__` call returns to `pc`: the call is `e8 rel32`
/// (5 bytes) or `ff 15 disp32` (6, through the GOT), possibly after an `endbr64`.
#[inline(always)]
fn fentry_function(pc: u64) -> u64 {
    let at = |a: u64| {
        // SAFETY: the bytes read lie within the call instruction that just ran and the 4 bytes
        // before it; those are either an `endbr64` of the same function or, when the call is the
        // function's first instruction, the previous function's code or padding of the same
        // executable mapping (a function never starts a mapping: the ELF header and `.init` come
        // first).
        unsafe { core::ptr::read_unaligned(a as *const [u8; 2]) }
    };
    let call = if at(pc - 6) == [0xff, 0x15] {
        pc - 6
    } else {
        pc - 5
    };
    // SAFETY: as above.
    let before = unsafe { core::ptr::read_unaligned((call - 4) as *const [u8; 4]) };
    if before == [0xf3, 0x0f, 0x1e, 0xfa] {
        call - 4
    } else {
        call
    }
}

/// Records the call of `function`, whose return address is at `slot`, and hooks its return (inside
/// the agent: see `live`); the `-pg` hooks and the library-call stubs (see `plt`) share it.
#[inline(always)]
pub(crate) fn enter(slot: *mut u64, function: u64, regs: *const u64) {
    let seat = crate::live::enter();
    let stopped = enter_inside(slot, function, regs);
    crate::live::leave(seat);
    if let Some(stopped) = stopped {
        crate::live::retire_stopped(stopped);
    }
}

/// [`enter`]'s body, inside. Returns the attachment this thread has just seen stopped.
#[inline(always)]
fn enter_inside(slot: *mut u64, function: u64, regs: *const u64) -> Option<crate::live::Retiring> {
    let st = crate::hook::free_state()?;
    let t = tls();
    // SAFETY: the TLS block is valid for this thread's lifetime; only this thread touches it.
    let mut shadow = unsafe { (*t).shadow };
    if shadow.is_null() {
        shadow = make_shadow(t, st);
        if shadow.is_null() {
            return None;
        }
    }
    // SAFETY: this thread's own shadow stack (made by it, never freed while it runs).
    let sh = unsafe { &mut *shadow };
    if !sh.try_enter() {
        // A signal handler interrupted this thread's own shadow-stack work.
        st.writer.count_reentrant();
        return None;
    }
    let trampoline = tracer_return_hook as *const () as u64;
    let mut any_dead = false;
    // SAFETY: `slot` is the entered function's return-address word (the naked hook computed it
    // from the frame the compiler set up), on this thread's stack.
    let hooked = unsafe {
        sh.hook(slot, function, trampoline, |dead| {
            any_dead = true;
            event(RETURN, dead.function, core::ptr::null())
        })
    };
    sh.leave();
    if hooked == retstack::Hooked::Yes {
        if any_dead {
            // Those returns took the thread's state afresh: so does this call.
            event(CALL, function, regs);
        } else {
            return crate::hook::record(st, CALL, function, regs);
        }
    } else if sh.overflows() == 1 {
        overflow_notice();
    }
    None
}

#[cold]
#[inline(never)]
fn overflow_notice() {
    say(&format!(
        "a thread is more than {SHADOW_CAPACITY} hooked calls deep; deeper calls are not \
         recorded until it returns"
    ));
}

/// The return trampoline's handler, after [`return_fast`] answered `code` (`ret`: the frame it
/// popped, unless it declined): pops the frame entered from `slot`, records its return (and
/// those of frames skipped by a `longjmp`), and gives back where to return to.
extern "C" fn on_return(slot: u64, regs: *mut u64, code: u64, ret: u64) -> u64 {
    crate::hook::after_fast(code, ret, || on_return_full(slot, regs))
}

/// [`on_return`] when the fast path did nothing.
fn on_return_full(slot: u64, regs: *mut u64) -> u64 {
    let t = tls();
    // SAFETY: only this thread touches its TLS block; a hooked frame implies a shadow stack.
    let shadow = unsafe { (*t).shadow };
    if shadow.is_null() {
        lost(slot);
    }
    // SAFETY: this thread's own shadow stack.
    let sh = unsafe { &mut *shadow };
    // Never taken here in practice (a handler's frames are only hooked while the stack is free,
    // and return before the handler does); the frame must be popped regardless.
    let entered = sh.try_enter();
    let frame = sh.unhook(slot, |skipped| {
        event(RETURN, skipped.function, core::ptr::null())
    });
    if entered {
        sh.leave();
    }
    match frame {
        Some(f) => {
            if !regs.is_null() {
                // SAFETY: the trampoline's register block (`hook::REGS` words): its last word is
                // the return address, which only the frame knows.
                unsafe { regs.add(crate::hook::REGS - 1).write(f.ret) };
            }
            event(RETURN, f.function, regs);
            f.ret
        }
        None => lost(slot),
    }
}

/// A return through the trampoline with no frame to go back to: the shadow stack was corrupted.
/// Continuing would jump somewhere arbitrary.
#[cold]
fn lost(slot: u64) -> ! {
    say(&format!(
        "a hooked return at stack address {slot:#x} has no saved return address; aborting"
    ));
    std::process::abort()
}

/// The unwinder's entry points the agent stands in front of: before an exception (C++ `throw`,
/// a Rust panic) walks the stack, and again whenever it resumes after a cleanup, every hooked
/// frame of the thread gets its real return address back, so the unwinder sees the program's own
/// frames. Frames still live after the catch are hooked again: at once when C++ code enters a
/// `catch` (`__cxa_begin_catch`), else at the thread's next hooked call (a Rust `catch_unwind`);
/// those gone are recorded as returned then.
macro_rules! before_unwinder {
    ($(#[$meta:meta])* $name:ident, $real:ident, $prepare:path) => {
        $(#[$meta])*
        ///
        /// # Safety
        /// Called as the function it stands for; arguments pass through untouched.
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                // Entered by `call`: rsp = 8 (mod 16); one push aligns the call below.
                "push rdi",
                "push rsi",
                "sub rsp, 8",
                // The caller's stack pointer once this function returns.
                "lea rdi, [rsp + 32]",
                "call {prepare}",
                "add rsp, 8",
                "pop rsi",
                "pop rdi",
                "jmp rax",
                prepare = sym $prepare,
            )
        }

        static $real: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    };
}

before_unwinder!(
    /// `_Unwind_RaiseException`, where every C++ `throw` and Rust panic starts unwinding.
    _Unwind_RaiseException, REAL_RAISE, before_raise
);
before_unwinder!(
    /// `_Unwind_Resume`, where an unwind goes on after a cleanup (a destructor, a `Drop`), which
    /// may have called hooked functions and so hooked the frames above it again.
    _Unwind_Resume, REAL_RESUME, before_resume
);
before_unwinder!(
    /// `__cxa_begin_catch`, where a C++ `catch` block starts: the frames above it are live.
    __cxa_begin_catch, REAL_BEGIN_CATCH, at_catch
);
before_unwinder!(
    /// `_Unwind_DeleteException`, where a caught exception is disposed of (a Rust `catch_unwind`
    /// does it in the catching frame).
    _Unwind_DeleteException, REAL_DELETE, at_delete
);

extern "C" fn before_raise(_sp: u64) -> usize {
    restore_all();
    real(&REAL_RAISE, c"_Unwind_RaiseException", LIBGCC)
}

/// Every hooked frame of this thread gets its real return address back.
fn restore_all() {
    with_shadow(|sh| {
        // SAFETY: this thread's hooked slots are words of its stacks (see `ShadowStack::hook`).
        unsafe { sh.restore_all(trampoline()) }
    });
}

extern "C" fn before_resume(_sp: u64) -> usize {
    restore_all();
    real(&REAL_RESUME, c"_Unwind_Resume", LIBGCC)
}

extern "C" fn at_catch(sp: u64) -> usize {
    resume(sp);
    real(&REAL_BEGIN_CATCH, c"__cxa_begin_catch", LIBSTDCXX)
}

/// The unwind ended in the frame whose stack pointer is `sp`.
fn resume(sp: u64) {
    with_shadow(|sh| {
        // SAFETY: this thread's hooked slots are words of its stacks; `sp` is the catching frame's
        // stack pointer, so every frame above it is live.
        unsafe {
            sh.resume_at(sp, trampoline(), |gone| {
                event(RETURN, gone.function, core::ptr::null())
            })
        }
    });
}

extern "C" fn at_delete(sp: u64) -> usize {
    resume(sp);
    real(&REAL_DELETE, c"_Unwind_DeleteException", LIBGCC)
}

/// Where the unwinder and the C++ runtime live.
const LIBGCC: &core::ffi::CStr = c"libgcc_s.so.1";
const LIBSTDCXX: &core::ffi::CStr = c"libstdc++.so.6";

/// Whether `f` is one of the agent's own stand-ins (a lookup that found the agent itself).
fn ours(f: usize) -> bool {
    [
        _Unwind_RaiseException as *const () as usize,
        _Unwind_Resume as *const () as usize,
        __cxa_begin_catch as *const () as usize,
        _Unwind_DeleteException as *const () as usize,
    ]
    .contains(&f)
}

fn trampoline() -> u64 {
    tracer_return_hook as *const () as u64
}

/// Runs `f` on this thread's shadow stack, if it has one and is not inside a shadow-stack
/// operation (an exception thrown from a signal handler that interrupted one).
fn with_shadow(f: impl FnOnce(&mut retstack::ShadowStack)) {
    // SAFETY: only this thread touches its TLS block.
    let shadow = unsafe { (*tls()).shadow };
    if shadow.is_null() {
        return;
    }
    // SAFETY: this thread's own shadow stack.
    let sh = unsafe { &mut *shadow };
    if sh.try_enter() {
        f(sh);
        sh.leave();
    }
}

/// The next definition of `name` after the agent, or `library`'s, looked up once.
fn real(
    cell: &core::sync::atomic::AtomicUsize,
    name: &core::ffi::CStr,
    library: &core::ffi::CStr,
) -> usize {
    use core::sync::atomic::Ordering::Relaxed;
    // Relaxed: the address is the same whoever looks it up; a race looks it up twice.
    let mut f = cell.load(Relaxed);
    if f == 0 {
        // SAFETY: a NUL-terminated name; RTLD_NEXT searches the objects loaded after the agent
        // (spawn: all of them, the agent is preloaded). Attach loaded the agent last, so then
        // the library that defines it is asked by name.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
        if f == 0 || ours(f) {
            // SAFETY: a NUL-terminated library name; RTLD_NOLOAD only finds a loaded library (its
            // reference is dropped again at once: the program holds its own).
            let lib = unsafe { libc::dlopen(library.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
            if !lib.is_null() {
                // SAFETY: a handle just returned and a NUL-terminated name.
                f = unsafe { libc::dlsym(lib, name.as_ptr()) } as usize;
                // SAFETY: as above.
                unsafe { libc::dlclose(lib) };
            }
        }
        if f == 0 || ours(f) {
            say(&format!(
                "{} is called but not defined after the agent; aborting",
                name.to_string_lossy()
            ));
            std::process::abort();
        }
        cell.store(f, Relaxed);
    }
    f
}
