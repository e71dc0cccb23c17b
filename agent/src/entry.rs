//! Entry-only hooks: `mcount` / `_mcount` (`-pg`: called after the prologue, the caller's return
//! address at `8(%rbp)`) and `__fentry__` (`-pg -mfentry`: the first instruction, the return
//! address at `8(%rsp)` on entry). Each records the call and hooks the function's return through
//! the thread's [`retstack::ShadowStack`]; [`tracer_return_hook`] records the return.
//!
//! The naked hooks save every register an instrumented function may still need (the six integer
//! argument registers, `rax` for variadic calls, `r10` for a static chain) around a fast path
//! that leaves the vector registers alone ([`enter_fast`]: a registered thread, room in its ring,
//! nothing unusual), and `xmm0`–`xmm7` as well only when it declines and the full path runs (its
//! Rust code may use them). Function ids: each hook's return address, an address inside the
//! function (after `mcount`'s prologue of unknown length, after `__fentry__`'s call, after a
//! patched sled) that the readers resolve to the enclosing symbol; the same for every call of the
//! function, and free to compute (the function's first byte would cost `__fentry__` two reads of
//! the code before its return address on every call, for no name the readers do not find).

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

/// Assembly around a naked hook's call of its fast path in unoptimised builds (see
/// [`SAVE_VECTORS_ALWAYS`]; the hook passes it as `always = const`): `save` aligns the stack
/// below a frame that keeps the stack pointer at `[rsp + 192]` (in `r11` too) and saves the
/// vector argument registers there; `restore` loads them and the stack pointer back. Nothing in
/// release builds.
macro_rules! vectors_in_debug {
    (save) => {
        concat!(
            ".if {always}\n",
            "mov r11, rsp\n",
            "and rsp, -16\n",
            "sub rsp, 208\n",
            "mov [rsp + 192], r11\n",
            crate::entry::vector_arguments!(store),
            ".endif\n"
        )
    };
    (restore) => {
        concat!(
            ".if {always}\n",
            crate::entry::vector_arguments!(load),
            "mov rsp, [rsp + 192]\n",
            ".endif\n"
        )
    };
}
pub(crate) use vectors_in_debug;

/// 1 when the naked hooks save the vector registers around their fast path too: in builds with
/// debug assertions, which are unoptimised, and whose fast paths are not the inlined, call-free
/// code that `agent/tests/hot_path.rs` checks in the release build (they call helpers, which may
/// use any register). 0 in release builds.
pub(crate) const SAVE_VECTORS_ALWAYS: u8 = cfg!(debug_assertions) as u8;

/// Bytes of an entry hook's fast-path frame: the eight integer argument registers, and a word
/// that keeps the fast path's call aligned when the hook is called with the stack aligned (the
/// usual case; the fast path relies on no alignment, see [`SAVE_VECTORS_ALWAYS`]).
pub(crate) const HOOK_FRAME: usize = 72;

/// Defines an entry hook: saves the integer argument registers and calls `$fast(slot, pc) -> code`
/// with the address of the instrumented function's return-address word (`$slot`: computed from
/// `rbp`, or from `rsp`, [`HOOK_FRAME`] below the stack pointer at the hook's entry; `$slot_slow`
/// the same from `r11`, that frame) and the hook's return address. The fast path leaves the
/// vector registers alone and needs no stack alignment; on any answer but `FAST_DONE` the hook
/// aligns the stack, saves the vector registers too and calls `$slow(slot, pc, regs, code)`. The
/// fast path declines while detail records are on (see `hook::ready_fast`): then `$slow` gets
/// `FAST_DECLINED` and the registers as the hook received them (the detail payload's block, see
/// `hook::REGS`, at `[rsp + 208]`; `r11` reads as the stack pointer at the hook's entry), else
/// null. Restores what it saved, returns.
macro_rules! entry_hook {
    ($(#[$meta:meta])* $name:ident, slot = $slot:literal, slot_slow = $slot_slow:literal,
        fast = $fast:path, slow = $slow:path) => {
        $(#[$meta])*
        ///
        /// # Safety
        /// Only called by compiler-generated code at a function's entry.
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                "sub rsp, {frame}",
                integer_arguments!(store),
                $slot,
                "mov rsi, [rsp + {frame}]",
                // Unoptimised builds: the fast path's code is not checked (see
                // `SAVE_VECTORS_ALWAYS`), so it gets an aligned stack and the vectors are saved
                // around it too.
                vectors_in_debug!(save),
                "call {fast}",
                vectors_in_debug!(restore),
                "test rax, rax",
                "jnz 4f",
                "2:",
                integer_arguments!(load),
                "add rsp, {frame}",
                "ret",
                // The fast path's answer (rax) for the slow one, on an aligned frame above the
                // fast path's (r11).
                "4:",
                "mov r11, rsp",
                "and rsp, -16",
                "sub rsp, 352",
                "mov [rsp + 192], r11",
                vector_arguments!(store),
                "mov rcx, rax",
                "xor edx, edx",
                "cmp rcx, {declined}",
                "jne 5f",
                "cmp byte ptr [rip + {detail}], 0",
                "je 5f",
                // Detail records: every register as the hook received it, in the detail
                // payload's order: rdi..rax and r10 from the fast path's frame, r11 and rsp the
                // stack pointer at the hook's entry, the others untouched since.
                "mov rax, [r11]", "mov [rsp + {regs}], rax",
                "mov rax, [r11 + 8]", "mov [rsp + {regs} + 8], rax",
                "mov rax, [r11 + 16]", "mov [rsp + {regs} + 16], rax",
                "mov rax, [r11 + 24]", "mov [rsp + {regs} + 24], rax",
                "mov rax, [r11 + 32]", "mov [rsp + {regs} + 32], rax",
                "mov rax, [r11 + 40]", "mov [rsp + {regs} + 40], rax",
                "mov rax, [r11 + 48]", "mov [rsp + {regs} + 48], rax",
                "mov [rsp + {regs} + 56], rbx",
                "mov [rsp + {regs} + 64], rbp",
                "mov rax, [r11 + 56]", "mov [rsp + {regs} + 72], rax",
                "lea rax, [r11 + {frame}]", "mov [rsp + {regs} + 80], rax",
                "mov [rsp + {regs} + 88], r12",
                "mov [rsp + {regs} + 96], r13",
                "mov [rsp + {regs} + 104], r14",
                "mov [rsp + {regs} + 112], r15",
                "mov [rsp + {regs} + 120], rax",
                "mov rax, [r11 + {frame}]",
                "mov [rsp + {regs} + 128], rax",
                "lea rdx, [rsp + {regs}]",
                "5:",
                $slot_slow,
                "mov rsi, [r11 + {frame}]",
                "call {slow}",
                vector_arguments!(load),
                "mov rsp, [rsp + 192]",
                "jmp 2b",
                fast = sym $fast,
                slow = sym $slow,
                detail = sym crate::process::DETAIL_ON,
                declined = const crate::hook::FAST_DECLINED,
                regs = const 208,
                frame = const crate::entry::HOOK_FRAME,
                always = const crate::entry::SAVE_VECTORS_ALWAYS,
            )
        }
    };
}

const _: () = assert!(
    208 + crate::hook::REGS * 8 <= 352 && crate::hook::REGS == retstack::DETAIL_REGS,
    "the hooks' register block is the detail payload's, inside the hook's frame"
);
const _: () = assert!(
    HOOK_FRAME >= 64 && HOOK_FRAME % 16 == 8 && HOOK_FRAME + 8 == 80,
    "the fast-path frame holds the eight argument registers and keeps a call aligned; the \
     `__fentry__` slot literals are 8 bytes above it"
);

entry_hook!(
    /// The `-pg` hook (the name x86-64 gcc and clang call).
    mcount, slot = "lea rdi, [rbp + 8]", slot_slow = "lea rdi, [rbp + 8]",
    fast = entry_fast, slow = entry_slow
);
entry_hook!(
    /// The `-pg` hook under its other name (some toolchains call `_mcount`).
    _mcount, slot = "lea rdi, [rbp + 8]", slot_slow = "lea rdi, [rbp + 8]",
    fast = entry_fast, slow = entry_slow
);
entry_hook!(
    /// The `-pg -mfentry` hook, the function's first instruction: before the function's frame
    /// exists, so its return address is the word above the hook's own.
    __fentry__, slot = "lea rdi, [rsp + 80]", slot_slow = "lea rdi, [r11 + 80]",
    fast = entry_fast, slow = entry_slow
);

entry_hook!(
    /// What a patched `-fpatchable-function-entry` sled calls (through its object's landing, see
    /// `patch`): like `__fentry__`, before the function's frame exists; its id is the address
    /// after the sled.
    tracer_patch_entry, slot = "lea rdi, [rsp + 80]", slot_slow = "lea rdi, [r11 + 80]",
    fast = entry_fast, slow = entry_slow
);

retstack::return_trampoline!(
    /// Where a hooked function returns to: records the return and goes on to the real caller.
    tracer_return_hook => on_return, fast = return_fast, detail = crate::process::DETAIL_ON
);

retstack::return_trampoline!(
    /// Where a library-call stub (see `plt`) goes on to a function whose return it hooked: calls
    /// it, and is where it returns to ([`return_through`]); records the return as
    /// [`tracer_return_hook`] does, with the same handlers.
    call_through library_return => on_return, fast = return_fast, detail = crate::process::DETAIL_ON
);

/// The return address a library call's slot holds while the function runs: [`library_return`]'s
/// entry after its `call`.
fn return_through() -> u64 {
    library_return as *const () as u64 + retstack::CALL_THROUGH_BYTES
}

/// Every entry hook's fast path, [`enter_fast`] with the hook's return address `pc` for the
/// function's id.
extern "C" fn entry_fast(slot: *mut u64, pc: u64) -> u64 {
    enter_fast(slot, pc)
}

/// Every entry hook's slow path, after [`entry_fast`] answered `code` (see `hook::after_fast`).
extern "C" fn entry_slow(slot: *mut u64, pc: u64, regs: *const u64, code: u64) {
    crate::hook::after_fast(code, (), || enter(slot, pc, regs));
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
        |st, sh, fenced| {
            // SAFETY: this thread's own shadow stack (made by it, never freed while it runs);
            // `slot` is the entered function's return-address word, on this thread's stack (the
            // naked hook computed it from the frame the compiler set up); a signal handler
            // interrupting this finds the thread busy, so its hooks leave the stack alone.
            if !sh.is_null() && unsafe { (*sh).try_hook_fast(slot, function, trampoline()) } {
                // SAFETY: `fast` runs this only on a state it found ready, `fenced` as found.
                unsafe { crate::hook::record_fast(st, fenced, CALL, function) }
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
        |st, sh, fenced| {
            // SAFETY: this thread's own shadow stack, if it has one.
            let Some(sh) = (unsafe { sh.as_mut() }) else {
                return declined;
            };
            // The return is recorded before the frame's return address is read (see
            // `try_unhook_fast_then`).
            let popped = sh.try_unhook_fast_then(
                slot,
                #[inline(always)]
                // SAFETY: `fast` runs this only on a state it found ready, `fenced` as found.
                |function| unsafe { crate::hook::record_fast(st, fenced, RETURN, function) },
            );
            match popped {
                Some((ret, code)) => retstack::FastReturn { ret, code },
                None => declined,
            }
        },
    )
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
    let mut any_dead = false;
    // SAFETY: `slot` is the entered function's return-address word (the naked hook computed it
    // from the frame the compiler set up), on this thread's stack.
    let hooked = unsafe {
        sh.hook(slot, function, trampolines(), |dead| {
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
        unsafe { sh.restore_all(trampolines()) }
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
            sh.resume_at(sp, trampolines(), |gone| {
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

/// The trampoline hooks write, and the library-call stubs' call-through one a slot may hold
/// instead (see `plt`).
fn trampolines() -> retstack::Trampolines {
    retstack::Trampolines {
        written: trampoline(),
        other: return_through(),
    }
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
