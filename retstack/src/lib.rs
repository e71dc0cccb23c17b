//! Return interception for entry-only hooks (`mcount`, `__fentry__`, a patched NOP sled, a PLT
//! entry): the hook swaps the return address of the function it is called for with the address of
//! a return trampoline, and keeps the original in a per-thread [`ShadowStack`]; when the function
//! returns, the trampoline asks its handler for the original address (recording the exit on the
//! way) and jumps there.
//!
//! This crate owns the shadow stack and the trampoline. The caller owns where each thread's stack
//! lives (the agent keeps a pointer in its thread-local block) and what an entry or an exit records.
//!
//! # Contract
//! - A [`Frame`] is `(original return address, function, slot)`, where `slot` is the address of
//!   the stack word holding the return address. [`ShadowStack::hook`] pushes a frame and writes
//!   the trampoline into the slot; [`ShadowStack::unhook`] finds the frame whose slot the
//!   trampoline was entered from (the stack pointer minus 8) and gives back its original address.
//! - Frames skipped without returning (`longjmp`, `siglongjmp`, an exception that was caught) are
//!   popped, and handed to the caller's callback once each, innermost first: at the next return
//!   above them (exact slot match), or at the next hook whose slot lies above theirs on the same
//!   thread stack (or at the same slot, no longer holding the trampoline; a tail call reuses its
//!   caller's slot while it still holds the trampoline, and each such frame returns in turn: the
//!   trampoline goes back to itself once per frame). Frames on another stack (a signal handler on `sigaltstack`) are only popped by
//!   an exact match, never by address comparison.
//! - A full stack hooks nothing more: [`Hooked::Full`], counted in [`ShadowStack::overflows`];
//!   never a crash. The caller should not record that call's entry either.
//! - Before an unwinder walks the stack (and again each time it resumes after a cleanup, which
//!   may have called hooked functions), [`ShadowStack::restore_all`] writes every original return
//!   address back; [`ShadowStack::resume_at`], where the unwind ends (a `catch`), pops the frames
//!   it removed and puts the trampoline back into those still live. Without that call, the next
//!   hook does the same from its own slot.
//! - The stack is used by one thread, and by signal handlers interrupting it: the caller takes
//!   [`ShadowStack::try_enter`] around each operation, and a handler that finds it taken hooks
//!   nothing.
//! - Two kinds of trampoline share one handler (see [`return_trampoline!`]): one that a hook
//!   called from inside the function writes, and one that a hook jumping to the function (a
//!   library-call stub) calls through, so both returns are predicted. A slot may hold either:
//!   every comparison takes both ([`Trampolines`]).
//!
//! # Example
//! ```
//! use retstack::{Frame, Hooked, ShadowStack, Trampolines};
//! let mut stack = ShadowStack::boxed(4, (0, 0));
//! let mut word = 0x1234u64; // a return-address slot on some stack
//! let slot = &mut word as *mut u64;
//! let trampoline = Trampolines::one(0xdead);
//! // SAFETY: `slot` is a live, writable word.
//! assert_eq!(unsafe { stack.hook(slot, 0xf00, trampoline, |_| {}) }, Hooked::Yes);
//! assert_eq!(word, 0xdead);
//! let frame = stack.unhook(slot as u64, |_| {}).unwrap();
//! assert_eq!(frame, Frame { ret: 0x1234, function: 0xf00, slot: slot as u64 });
//! ```

#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;

/// One hooked call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// The original return address (into the caller).
    pub ret: u64,
    /// The function that was entered (what the caller records).
    pub function: u64,
    /// Address of the stack word that held `ret` and now holds the trampoline.
    pub slot: u64,
}

/// What [`ShadowStack::hook`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooked {
    /// The return is intercepted.
    Yes,
    /// The stack is full: nothing changed, counted.
    Full,
}

/// The return trampolines a hooked slot may hold: the one this caller writes, and another entry
/// into the same handler (a [`return_trampoline!`] of the other kind, see its `call_through`
/// form). Every comparison against "the trampoline" accepts both, so frames hooked through
/// either kind live in one shadow stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trampolines {
    /// What a hook (or a re-hook after an unwind) writes into a slot.
    pub written: u64,
    /// The other address a hooked slot may hold (`written` again when there is only one).
    pub other: u64,
}

impl Trampolines {
    /// A single trampoline.
    pub const fn one(trampoline: u64) -> Trampolines {
        Trampolines {
            written: trampoline,
            other: trampoline,
        }
    }

    /// Whether `word` (a slot's content) is one of the trampolines.
    #[inline(always)]
    pub fn holds(&self, word: u64) -> bool {
        word == self.written || word == self.other
    }
}

/// A per-thread stack of hooked frames, innermost last.
///
/// The frames lie in one buffer allocated at [`ShadowStack::boxed`] and never moved, after a
/// sentinel frame whose slot (`u64::MAX`) lies above every real slot and equals none: the fast
/// paths ([`ShadowStack::try_hook_fast`], [`ShadowStack::try_unhook_fast`]) compare the innermost
/// frame without first testing whether there is one.
#[derive(Debug)]
pub struct ShadowStack {
    /// The innermost frame, or the sentinel when no frame is hooked.
    top: *mut Frame,
    /// The place of the last frame there is room for (`base + capacity`) while the fast paths
    /// may run, null while they may not (the stack is in use, or frames are restored): one
    /// comparison of `top` against it tells the fast hook all three.
    fast_limit: *mut Frame,
    /// The sentinel, followed by room for `capacity` frames (`allocated` frames in all).
    base: *mut Frame,
    allocated: usize,
    /// The most frames.
    capacity: usize,
    /// 1 while an operation is in progress (see [`ShadowStack::try_enter`]).
    busy: u32,
    /// The outermost frames whose return address [`ShadowStack::restore_all`] wrote back and
    /// that are not hooked again yet: `frames()[..restored]` (frames pushed since are above them).
    restored: u32,
    /// Calls not hooked because the stack was full.
    overflows: u64,
    /// The thread's own stack, `[lo, hi)`: only frames inside it are compared by address.
    bounds: (u64, u64),
}

/// The frame below the outermost (see [`ShadowStack`]).
const SENTINEL: Frame = Frame {
    ret: 0,
    function: 0,
    slot: u64::MAX,
};

impl Drop for ShadowStack {
    fn drop(&mut self) {
        // SAFETY: `base` and `allocated` are the buffer of the vector `boxed` made (its pointer
        // and capacity), freed only here; a length of 0 drops no frame (`Frame` needs no drop).
        drop(unsafe { Vec::from_raw_parts(self.base, 0, self.allocated) });
    }
}

impl ShadowStack {
    /// A stack holding up to `capacity` frames, for a thread whose stack is `bounds` (`(0, 0)`:
    /// unknown, so frames are popped by exact match only). Allocates once, here (the buffer's
    /// pages are touched only as frames are pushed).
    pub fn boxed(capacity: usize, bounds: (u64, u64)) -> Box<ShadowStack> {
        let mut frames = core::mem::ManuallyDrop::new(Vec::with_capacity(capacity + 1));
        frames.push(SENTINEL);
        let base = frames.as_mut_ptr();
        let mut stack = Box::new(ShadowStack {
            top: base,
            fast_limit: core::ptr::null_mut(),
            base,
            allocated: frames.capacity(),
            capacity,
            busy: 0,
            restored: 0,
            overflows: 0,
            bounds,
        });
        stack.refresh_limit();
        stack
    }

    /// Sets [`ShadowStack::fast_limit`] from the flags.
    #[inline(always)]
    fn refresh_limit(&mut self) {
        self.fast_limit = if (self.busy | self.restored) == 0 {
            // SAFETY: `capacity` frames after the sentinel are in the buffer (see `boxed`).
            unsafe { self.base.add(self.capacity) }
        } else {
            core::ptr::null_mut()
        };
    }

    /// Marks the stack in use; `false` if it already is (a signal handler interrupted an
    /// operation on this thread: the handler must neither hook nor unhook anything).
    #[inline(always)]
    pub fn try_enter(&mut self) -> bool {
        if self.busy != 0 {
            return false;
        }
        self.busy = 1;
        self.fast_limit = core::ptr::null_mut();
        // The flag must be stored before the operation's first access (a handler on this thread
        // is the only other party): a compiler fence suffices.
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        true
    }

    /// Ends what [`ShadowStack::try_enter`] began.
    #[inline(always)]
    pub fn leave(&mut self) {
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        self.busy = 0;
        self.refresh_limit();
    }

    /// Number of hooked frames.
    pub fn len(&self) -> usize {
        // SAFETY: `top` points into the buffer that starts at `base`, at or after it.
        unsafe { self.top.offset_from(self.base) as usize }
    }

    /// Whether no frame is hooked.
    pub fn is_empty(&self) -> bool {
        self.top == self.base
    }

    /// Calls not hooked because the stack was full.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// The hooked frames, outermost first.
    pub fn frames(&self) -> &[Frame] {
        // SAFETY: the `len()` frames after the sentinel are initialised (each was written by a
        // push before `top` covered it), in the buffer, which lives as long as `self`.
        unsafe { core::slice::from_raw_parts(self.base.add(1), self.len()) }
    }

    /// The innermost frame.
    #[inline(always)]
    fn last(&self) -> Option<Frame> {
        // SAFETY: `top` is the innermost frame, initialised (not the sentinel: tested).
        (!self.is_empty()).then(|| unsafe { *self.top })
    }

    /// Pops the innermost frame.
    #[inline(always)]
    fn pop(&mut self) -> Option<Frame> {
        let top = self.last()?;
        // SAFETY: a frame above the sentinel: the one below it is still in the buffer.
        self.top = unsafe { self.top.sub(1) };
        Some(top)
    }

    /// Keeps `restored` within the frames left after pops.
    #[inline(always)]
    fn clamp_restored(&mut self) {
        self.restored = self.restored.min(self.len() as u32);
        self.refresh_limit();
    }

    #[inline(always)]
    fn on_thread_stack(&self, slot: u64) -> bool {
        slot >= self.bounds.0 && slot < self.bounds.1
    }

    /// Hooks the return of `function`, whose return address is at `slot`: pops the frames this
    /// call proves dead (same thread stack, slot at or below `slot`), handing each to `dead`, then
    /// pushes the frame and writes `trampolines.written` into the slot.
    ///
    /// # Safety
    /// `slot` is the live return-address word of the function being entered, on the calling
    /// thread's stack; the frames already pushed were pushed by this thread.
    #[inline(always)]
    pub unsafe fn hook(
        &mut self,
        slot: *mut u64,
        function: u64,
        trampolines: Trampolines,
        mut dead: impl FnMut(&Frame),
    ) -> Hooked {
        let at = slot as u64;
        // SAFETY: the caller guarantees `slot` is this function's live return-address word.
        let ret = unsafe { slot.read() };
        if let Some(top) = self.last() {
            if self.is_dead(&top, at, ret, trampolines) {
                self.pop_dead(at, ret, trampolines, &mut dead);
            }
        }
        if self.restored != 0 {
            self.rehook_live(at, trampolines);
        }
        if self.len() >= self.capacity {
            self.overflows += 1;
            return Hooked::Full;
        }
        // SAFETY: fewer than `capacity` frames, so the place above `top` is in the buffer.
        unsafe {
            self.top = self.top.add(1);
            self.top.write(Frame {
                ret,
                function,
                slot: at,
            });
        }
        // SAFETY: as above.
        unsafe { slot.write(trampolines.written) };
        Hooked::Yes
    }

    /// [`ShadowStack::hook`] when nothing unusual is in the way: the stack is free (see
    /// [`ShadowStack::try_enter`]), no frame is restored, there is room, and the innermost frame's
    /// slot lies above `slot` (the usual nesting; with no frame, the sentinel's does). `false`:
    /// nothing done; call [`ShadowStack::hook`]. Calls nothing, and stores the frame one word at a
    /// time (volatile stores): a hook that left the vector registers unsaved can call it. It does
    /// not mark the stack in use: the caller keeps this thread's signal handlers from hooking or
    /// unhooking anything until it returns (the agent's fast path holds its thread's reentrancy
    /// guard, so a handler's hooks take their slow path, which leaves the stack alone).
    ///
    /// # Safety
    /// As for [`ShadowStack::hook`], and a signal handler interrupting it on this thread does not
    /// use the stack.
    #[inline(always)]
    pub unsafe fn try_hook_fast(&mut self, slot: *mut u64, function: u64, trampoline: u64) -> bool {
        let at = slot as u64;
        let top = self.top;
        // Room, the stack free and nothing restored, in one comparison (see `fast_limit`: null
        // while the stack is in use or frames are restored).
        if top >= self.fast_limit {
            return false;
        }
        // SAFETY: `top` is the innermost frame or the sentinel, both initialised.
        let top_slot = unsafe { (*top).slot };
        // The usual nesting: the innermost hooked frame is a caller, its slot above this one.
        // Anything else (a frame proven dead, a tail call reusing its caller's hooked slot, a
        // frame on another stack) is left to `hook`, which tells them apart.
        if top_slot <= at {
            return false;
        }
        // SAFETY: the caller guarantees `slot` is this function's live return-address word.
        let ret = unsafe { slot.read() };
        // SAFETY: `top` is below `fast_limit`, the last place in the buffer: the place above it
        // is in the buffer too; it is written word by word before `top` covers it. Only this
        // thread changes the stack, and a signal handler interrupting it leaves it alone (the
        // caller's contract).
        unsafe {
            let frame = top.add(1);
            (&raw mut (*frame).ret).write_volatile(ret);
            (&raw mut (*frame).function).write_volatile(function);
            (&raw mut (*frame).slot).write_volatile(at);
            self.top = frame;
            slot.write(trampoline);
        }
        true
    }

    /// [`ShadowStack::unhook`] when the innermost frame is the one entered from `slot` and the
    /// stack is free: pops it and gives back its original return address and function. `None`:
    /// nothing done; call [`ShadowStack::unhook`]. Calls nothing and reads the frame one word at
    /// a time, as [`ShadowStack::try_hook_fast`].
    #[inline(always)]
    pub fn try_unhook_fast(&mut self, slot: u64) -> Option<(u64, u64)> {
        self.try_unhook_fast_then(slot, |function| function)
    }

    /// [`ShadowStack::try_unhook_fast`] that runs `then` on the popped frame's function before it
    /// reads the frame's return address (so a caller that records the return first need not
    /// keep that address in a register meanwhile): the address and what `then` gave.
    #[inline(always)]
    pub fn try_unhook_fast_then<R>(
        &mut self,
        slot: u64,
        then: impl FnOnce(u64) -> R,
    ) -> Option<(u64, R)> {
        // The stack free and nothing restored (see `fast_limit`).
        if self.fast_limit.is_null() {
            return None;
        }
        let top = self.top;
        // SAFETY: `top` is the innermost frame or the sentinel, both initialised; the sentinel's
        // slot equals no real one, so a match is a hooked frame.
        let (function, at) = unsafe {
            (
                (&raw const (*top).function).read_volatile(),
                (&raw const (*top).slot).read_volatile(),
            )
        };
        if at != slot {
            return None;
        }
        // SAFETY: a hooked frame (not the sentinel): the place below it is in the buffer.
        self.top = unsafe { top.sub(1) };
        let answer = then(function);
        // SAFETY: the popped frame is still in the buffer, unchanged: only this thread pushes,
        // not before this returns (`then` has no access to the stack: `self` is borrowed), and a
        // signal handler interrupting it leaves the stack alone (as for `try_hook_fast`).
        let ret = unsafe { (&raw const (*top).ret).read_volatile() };
        Some((ret, answer))
    }

    /// Whether `frame` is proven gone by a hook at `at` whose slot holds `ret`: on the thread's
    /// stack, below the new slot, or at the same slot no longer holding a trampoline (a tail
    /// call reuses its caller's slot, still hooked: that frame is live and returns later).
    #[inline(always)]
    fn is_dead(&self, frame: &Frame, at: u64, ret: u64, trampolines: Trampolines) -> bool {
        let below = frame.slot < at || (frame.slot == at && !trampolines.holds(ret));
        below && self.on_thread_stack(at) && self.on_thread_stack(frame.slot)
    }

    #[cold]
    fn pop_dead(
        &mut self,
        at: u64,
        ret: u64,
        trampolines: Trampolines,
        dead: &mut impl FnMut(&Frame),
    ) {
        while let Some(top) = self.last() {
            if !self.is_dead(&top, at, ret, trampolines) {
                break;
            }
            dead(&top);
            self.pop();
        }
        self.clamp_restored();
    }

    /// The frame the trampoline was entered for: `slot` is the trampoline's stack pointer minus 8.
    /// Frames above it (skipped by a `longjmp` or an unwind) are popped first and handed to
    /// `skipped`, innermost first. `None`: no frame has that slot (the caller cannot know where to
    /// return; nothing is popped).
    #[inline(always)]
    pub fn unhook(&mut self, slot: u64, mut skipped: impl FnMut(&Frame)) -> Option<Frame> {
        // The innermost frame, nearly always.
        if let Some(top) = self.last() {
            if top.slot == slot {
                self.pop();
                self.clamp_restored();
                return Some(top);
            }
        }
        let i = self.frames().iter().rposition(|f| f.slot == slot)?;
        while self.len() > i + 1 {
            let f = self.pop()?;
            skipped(&f);
        }
        let f = self.pop();
        self.clamp_restored();
        f
    }

    /// Writes every hooked frame's original return address back (before an unwinder walks the
    /// stack, or before the hooks go away). Frames stay on the stack, marked restored.
    ///
    /// # Safety
    /// Every pushed frame's slot is still a writable word of this thread's memory (a dead frame's
    /// slot lies below the stack pointer, in the thread's stack or alternate stack mapping).
    pub unsafe fn restore_all(&mut self, trampolines: Trampolines) {
        for f in &self.frames()[self.restored as usize..] {
            let slot = f.slot as *mut u64;
            // SAFETY: the caller guarantees the slot is writable; a slot that no longer holds a
            // trampoline belongs to a dead frame whose word was reused, and is left alone.
            unsafe {
                if trampolines.holds(slot.read()) {
                    slot.write(f.ret);
                }
            }
        }
        self.restored = self.len() as u32;
        self.refresh_limit();
    }

    /// Re-hooks restored frames that are still live: on the thread's stack above `at` (a hook's
    /// slot, so everything above it is a caller) and still holding their original address. They
    /// get `trampolines.written`, whichever kind hooked them first: either returns correctly (a
    /// library call's frame re-hooked with the jumping kind costs one mispredicted return).
    fn rehook_live(&mut self, at: u64, trampolines: Trampolines) {
        for f in self.frames() {
            if f.slot > at && self.on_thread_stack(f.slot) && self.on_thread_stack(at) {
                let slot = f.slot as *mut u64;
                // SAFETY: a slot above a live hook's slot on this thread's stack is a live frame's
                // return-address word (frames below it were popped by `pop_dead` just before).
                unsafe {
                    if slot.read() == f.ret {
                        slot.write(trampolines.written);
                    }
                }
            }
        }
        self.restored = 0;
        self.refresh_limit();
    }

    /// Makes a used stack like a new one, for a thread whose stack is `bounds` (reuse after the
    /// thread that had it ended).
    pub fn reset(&mut self, bounds: (u64, u64)) {
        self.top = self.base;
        self.busy = 0;
        self.restored = 0;
        self.overflows = 0;
        self.bounds = bounds;
        self.refresh_limit();
    }

    /// After an unwind that ended in a frame whose stack pointer is `sp` (a `catch`): frames on
    /// the thread's stack below `sp` are gone (handed to `gone`, innermost first), and restored
    /// frames above it are hooked again.
    ///
    /// # Safety
    /// `sp` is the calling thread's current stack pointer (or that of the frame it returns to),
    /// and every frame above it on the thread's stack is live.
    pub unsafe fn resume_at(
        &mut self,
        sp: u64,
        trampolines: Trampolines,
        mut gone: impl FnMut(&Frame),
    ) {
        if !self.on_thread_stack(sp) {
            return;
        }
        while let Some(top) = self.last() {
            // The frame whose slot is just below `sp` is the one the current call returns from:
            // gone if the word holds another return address now (the catching frame's call
            // reused it), live if it still holds a trampoline (a hooked function tail-called
            // the function that ends the unwind, and returns through it).
            // SAFETY: a word just below `sp` on this thread's stack (the caller's contract).
            let live_tail =
                top.slot == sp - 8 && trampolines.holds(unsafe { (top.slot as *const u64).read() });
            if !(top.slot < sp && !live_tail && self.on_thread_stack(top.slot)) {
                break;
            }
            gone(&top);
            self.pop();
        }
        self.clamp_restored();
        if self.restored != 0 {
            self.rehook_live(sp - 8, trampolines);
        }
    }

    /// Forgets every frame without touching the stack (a thread that ends).
    pub fn clear(&mut self, mut dropped: impl FnMut(&Frame)) {
        while let Some(f) = self.pop() {
            dropped(&f);
        }
        self.restored = 0;
        self.refresh_limit();
    }
}

/// What a trampoline's fast handler gives back (see [`return_trampoline!`]): where to return to,
/// and a code, [`FAST_DONE`] or any other for the handler.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastReturn {
    /// The original return address (meaningless unless the code says the frame was popped).
    pub ret: u64,
    /// [`FAST_DONE`]: return to `ret` now; [`FAST_DECLINED`]: nothing was done; any other value
    /// is the caller's own, handed to the handler.
    pub code: u64,
}

/// A fast handler's code: the return is handled, go to `ret`.
pub const FAST_DONE: u64 = 0;
/// A fast handler's code: nothing was done (the slow handler does everything).
pub const FAST_DECLINED: u64 = 1;

/// A detail flag that is never set: [`return_trampoline!`] without `detail` uses it.
#[doc(hidden)]
pub static DETAIL_NEVER: u8 = 0;

/// Bytes of a `call_through` trampoline's first instruction (`call r11`, `41 ff d3`): its
/// return entry, the address hooked slots get, is this far past its start (see
/// [`return_trampoline!`]).
pub const CALL_THROUGH_BYTES: u64 = 3;

/// Words in the register block a trampoline with `detail` passes: `rdi`, `rsi`, `rdx`, `rcx`,
/// `r8`, `r9`, `rax`, `rbx`, `rbp`, `r10`, `r11`, `r12`–`r15`, `rsp`, and a last word left 0 for
/// the handler to fill with the return address (only the frame knows it). `r11` reads as the
/// stack pointer (the trampoline keeps it there, a scratch register at a return); `rsp` is the
/// stack pointer the function returned with.
pub const DETAIL_REGS: usize = 17;

/// Assembly (one string literal, for `naked_asm!`) that stores the 15 integer registers but `rsp`
/// into a register block at `[rsp + {regs}]`, in the block's order (see [`DETAIL_REGS`]): `rdi`,
/// `rsi`, `rdx`, `rcx`, `r8`, `r9`, `rax`, `rbx`, `rbp`, `r10`, `r11`, `r12`–`r15`. The caller
/// passes `regs = const <offset>` and fills the last two words (the stack pointer and the return
/// address) itself. Every naked hook that records registers (this crate's trampoline, the agent's
/// entry hooks) stores them with it, so they agree on the layout.
#[macro_export]
macro_rules! store_registers {
    () => {
        $crate::store_registers!(@
            rdi 0, rsi 8, rdx 16, rcx 24, r8 32, r9 40, rax 48, rbx 56, rbp 64, r10 72, r11 80,
            r12 88, r13 96, r14 104, r15 112
        )
    };
    (@ $($reg:ident $at:literal),*) => {
        concat!($("mov [rsp + {regs} + ", $at, "], ", stringify!($reg), "\n"),*)
    };
}

/// Defines `pub unsafe extern "C" fn $name()`, a return trampoline: entered by a hooked
/// function's `ret`, it pushes the integer return-value registers (`rax`, `rdx`) and calls
/// `$fast(slot: u64) -> FastReturn` with the slot it was entered from (the stack is aligned for
/// the call when the function was called with it aligned; `$fast` must not rely on it).
/// [`FAST_DONE`]: it jumps to the returned address with the registers as the function left them.
/// Any other code: it aligns the stack, saves the vector return registers (`xmm0`, `xmm1`) too
/// and calls `$handler(slot: u64, regs: *mut u64, code: u64, ret: u64) -> u64` with the fast
/// handler's answer, then jumps to the address the handler returns (the frame's original return
/// address). So `$fast` must leave every vector register alone (it may decline whatever it cannot
/// do that way), and `$handler` may use any. Where the expanding crate is built with debug
/// assertions (unoptimised, so `$fast` is not the inlined code of a release build), `$fast` gets
/// an aligned stack and `xmm0` and `xmm1` are saved around it too. While the byte `$flag` is
/// nonzero, `$fast` is skipped: the handler is called with
/// [`FAST_DECLINED`] and `regs`, a block of [`DETAIL_REGS`] words (the registers as the function
/// returned); else `regs` is null. Neither handler may return without an address to go to.
///
/// Two kinds, with the same handlers:
/// - `return_trampoline!(name => handler, fast = f)`: the hook wrote the trampoline's address
///   over a return address the function was *called* with, so the processor's return-stack
///   predictor expects the caller: the function's `ret` is mispredicted, and the trampoline goes
///   on with a `jmp` (a `ret` would consume the caller's prediction, and mispredict every return
///   above it). For hooks called from inside the function (`mcount`, `__fentry__`).
/// - `return_trampoline!(call_through name => handler, fast = f)`: for a hook that *jumps* to the
///   function (a library-call stub). `name` is entered by a `jmp` with `r11` the function and
///   `rsp` one word above the hooked slot (the slot dropped); it `call`s the function, which
///   pushes the trampoline's own entry, [`CALL_THROUGH_BYTES`] past `name`, into the same slot.
///   The function's `ret` is predicted (the `call` just pushed that entry), and the trampoline
///   goes on with `push; ret`, which is too (the caller's own `call` is next on the predictor).
#[macro_export]
macro_rules! return_trampoline {
    ($(#[$meta:meta])* call_through $name:ident => $handler:path, fast = $fast:path, detail = $flag:path) => {
        $crate::return_trampoline!(@
            $(#[$meta])*
            ///
            /// # Safety
            /// Only ever entered by a `jmp` from a hook that hooked the return of the function in
            /// `r11` through a slot one word below `rsp` (the trampoline's own entry, the
            /// address after the first instruction, is what the slot gets); that entry only ever by
            /// the function's `ret`.
            $name => $handler, fast = $fast, detail = $flag,
            enter = "call r11", leave = "push r10\nret"
        );
    };
    ($(#[$meta:meta])* call_through $name:ident => $handler:path, fast = $fast:path) => {
        $crate::return_trampoline!(
            $(#[$meta])* call_through $name => $handler, fast = $fast, detail = $crate::DETAIL_NEVER
        );
    };
    ($(#[$meta:meta])* $name:ident => $handler:path, fast = $fast:path) => {
        $crate::return_trampoline!(
            $(#[$meta])* $name => $handler, fast = $fast, detail = $crate::DETAIL_NEVER
        );
    };
    ($(#[$meta:meta])* $name:ident => $handler:path, fast = $fast:path, detail = $flag:path) => {
        $crate::return_trampoline!(@
            $(#[$meta])*
            ///
            /// # Safety
            /// Only ever entered by a `ret` from a frame hooked with this address.
            $name => $handler, fast = $fast, detail = $flag,
            enter = "", leave = "jmp r10"
        );
    };
    (@ $(#[$meta:meta])* $name:ident => $handler:path, fast = $fast:path, detail = $flag:path,
        enter = $enter:literal, leave = $leave:literal) => {
        $(#[$meta])*
        #[unsafe(naked)]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                $enter,
                // Entered by `ret`: rsp = slot + 8. r11 and r10 are scratch at a return (neither
                // carries a return value).
                "push rax",
                "push rdx",
                "cmp byte ptr [rip + {flag}], 0",
                "jne 3f",
                "lea rdi, [rsp + 8]",
                // Unoptimised builds of the crate that expands this: the fast handler is not
                // the inlined, call-free code a release build is, so it gets an aligned stack
                // and the vectors are saved around it too.
                ".if {always}",
                "mov r11, rsp",
                "and rsp, -16",
                "sub rsp, 48",
                "mov [rsp + 32], r11",
                "movdqu [rsp], xmm0",
                "movdqu [rsp + 16], xmm1",
                ".endif",
                "call {fast}",
                ".if {always}",
                "movdqu xmm0, [rsp]",
                "movdqu xmm1, [rsp + 16]",
                "mov rsp, [rsp + 32]",
                ".endif",
                "test rdx, rdx",
                "jnz 4f",
                "2:",
                "mov r10, rax",
                "pop rdx",
                "pop rax",
                $leave,
                // Detail records: the registers as the function returned (r11 reads as the
                // stack pointer it returned with), on an aligned frame (r11 keeps that pointer).
                "3:",
                "lea r11, [rsp + 16]",
                "and rsp, -16",
                "sub rsp, 192",
                "mov [rsp + 176], r11",
                $crate::store_registers!(),
                "mov [rsp + 120], r11",
                "mov qword ptr [rsp + 128], 0",
                "mov rsi, rsp",
                "mov edx, {declined}",
                "xor ecx, ecx",
                "jmp 5f",
                // The fast handler's answer (rax, rdx) for the handler, on an aligned frame.
                "4:",
                "lea r11, [rsp + 16]",
                "and rsp, -16",
                "sub rsp, 192",
                "mov [rsp + 176], r11",
                "xor esi, esi",
                "mov rcx, rax",
                "5:",
                "movdqu [rsp + 144], xmm0",
                "movdqu [rsp + 160], xmm1",
                "mov rdi, [rsp + 176]",
                "sub rdi, 8",
                "call {handler}",
                "movdqu xmm0, [rsp + 144]",
                "movdqu xmm1, [rsp + 160]",
                // Back on the two pushed words, the handler's address in rax.
                "mov rsp, [rsp + 176]",
                "sub rsp, 16",
                "jmp 2b",
                fast = sym $fast,
                handler = sym $handler,
                flag = sym $flag,
                declined = const $crate::FAST_DECLINED,
                regs = const 0,
                always = const cfg!(debug_assertions) as u8,
            )
        }
    };
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    const TRAMP: u64 = 0xdead;
    const TRAMPS: Trampolines = Trampolines::one(TRAMP);
    /// The other kind of trampoline (a library call's call-through return), and both as a caller
    /// that writes the first sees them.
    const THROUGH: u64 = 0xbeef;
    const BOTH: Trampolines = Trampolines {
        written: TRAMP,
        other: THROUGH,
    };

    /// A fake thread stack of 64 words; slots are word addresses in it.
    struct Stack(Vec<u64>);
    impl Stack {
        fn new() -> Self {
            Stack(vec![0; 64])
        }
        fn slot(&mut self, i: usize) -> *mut u64 {
            &mut self.0[i] as *mut u64
        }
        fn bounds(&self) -> (u64, u64) {
            let lo = self.0.as_ptr() as u64;
            (lo, lo + 64 * 8)
        }
    }

    #[test]
    fn hook_then_unhook__nested__then_lifo_with_original_addresses() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        for (i, f) in [(60usize, 1u64), (50, 2), (40, 3)] {
            s.0[i] = 100 + f;
            // SAFETY: a word of our fake stack.
            let hooked = unsafe { st.hook(s.slot(i), f, TRAMPS, |_| panic!()) };
            assert_eq!(hooked, Hooked::Yes);
            assert_eq!(s.0[i], TRAMP);
        }
        for (i, f) in [(40usize, 3u64), (50, 2), (60, 1)] {
            let fr = st
                .unhook(s.slot(i) as u64, |_| panic!("nothing skipped"))
                .unwrap();
            assert_eq!((fr.function, fr.ret), (f, 100 + f));
        }
        assert!(st.is_empty());
    }

    #[test]
    fn unhook__after_longjmp__then_skipped_frames_popped_innermost_first() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        for (i, f) in [(60usize, 1u64), (50, 2), (40, 3)] {
            // SAFETY: a word of our fake stack.
            unsafe { st.hook(s.slot(i), f, TRAMPS, |_| {}) };
        }
        let mut skipped = vec![];
        let fr = st
            .unhook(s.slot(60) as u64, |f| skipped.push(f.function))
            .unwrap();
        assert_eq!(fr.function, 1);
        assert_eq!(skipped, [3, 2]);
    }

    #[test]
    fn hook__at_or_above_dead_slots__then_dead_frames_popped() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        for (i, f) in [(60usize, 1u64), (50, 2), (40, 3)] {
            // SAFETY: a word of our fake stack.
            unsafe { st.hook(s.slot(i), f, TRAMPS, |_| {}) };
        }
        // longjmp back into function 1's frame, which then calls 4 at the slot 2 had: the call
        // stored its own return address there.
        s.0[50] = 555;
        let mut dead = vec![];
        // SAFETY: as above.
        unsafe { st.hook(s.slot(50), 4, TRAMPS, |f| dead.push(f.function)) };
        assert_eq!(dead, [3, 2]);
        assert_eq!(
            st.frames().iter().map(|f| f.function).collect::<Vec<_>>(),
            [1, 4]
        );
    }

    #[test]
    fn hook__tail_call_reusing_a_hooked_slot__then_both_frames_return_through_it() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        s.0[60] = 101;
        // SAFETY: a word of our fake stack.
        unsafe {
            st.hook(s.slot(60), 1, TRAMPS, |_| panic!("live"));
            st.hook(s.slot(60), 2, TRAMPS, |_| {
                panic!("a tail call is not a dead frame")
            });
        }
        let inner = st.unhook(s.slot(60) as u64, |_| panic!()).unwrap();
        assert_eq!(
            (inner.function, inner.ret),
            (2, TRAMP),
            "back to the trampoline"
        );
        let outer = st.unhook(s.slot(60) as u64, |_| panic!()).unwrap();
        assert_eq!((outer.function, outer.ret), (1, 101));
    }

    #[test]
    fn hook__slot_on_another_stack__then_nothing_popped_by_address() {
        let mut s = Stack::new();
        let mut alt = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        // SAFETY: words of our fake stacks.
        unsafe {
            st.hook(s.slot(10), 1, TRAMPS, |_| panic!());
            st.hook(alt.slot(63), 2, TRAMPS, |_| panic!("another stack"));
            st.hook(alt.slot(50), 3, TRAMPS, |_| panic!("another stack"));
        }
        assert_eq!(st.len(), 3);
    }

    #[test]
    fn hook__deeper_than_capacity__then_counted_and_untouched() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(2, s.bounds());
        for i in 0..5 {
            s.0[60 - i] = 7;
            // SAFETY: a word of our fake stack.
            let h = unsafe { st.hook(s.slot(60 - i), i as u64, TRAMPS, |_| {}) };
            assert_eq!(h, if i < 2 { Hooked::Yes } else { Hooked::Full });
        }
        assert_eq!(st.overflows(), 3);
        assert_eq!(s.0[58], 7, "an unhooked frame keeps its return address");
    }

    #[test]
    fn restore_all_then_resume_at__live_frames_rehooked_gone_ones_popped() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        for (i, f) in [(60usize, 1u64), (50, 2), (40, 3)] {
            s.0[i] = 100 + f;
            // SAFETY: a word of our fake stack.
            unsafe { st.hook(s.slot(i), f, TRAMPS, |_| {}) };
        }
        // SAFETY: as above.
        unsafe { st.restore_all(TRAMPS) };
        assert_eq!([s.0[60], s.0[50], s.0[40]], [101, 102, 103]);
        // A cleanup on the way calls a hooked function below frame 3 (which hooks the frames
        // above it again), then the unwind resumes: everything is restored once more.
        // SAFETY: as above.
        unsafe {
            st.hook(s.slot(30), 4, TRAMPS, |_| {
                panic!("frame 3 is still being unwound")
            })
        };
        assert_eq!(st.unhook(s.slot(30) as u64, |_| {}).unwrap().function, 4);
        // SAFETY: as above.
        unsafe { st.restore_all(TRAMPS) };
        assert_eq!([s.0[60], s.0[50], s.0[40]], [101, 102, 103]);
        // Caught in function 2 (its stack pointer just below slot 50): 3 is gone, 1 and 2 live.
        let mut gone = vec![];
        // SAFETY: as above.
        unsafe { st.resume_at(s.slot(49) as u64, TRAMPS, |f| gone.push(f.function)) };
        assert_eq!(gone, [3]);
        assert_eq!(
            [s.0[60], s.0[50]],
            [TRAMP, TRAMP],
            "live frames hooked again"
        );
    }

    #[test]
    fn restore_all__twice_with_frames_pushed_between__then_the_new_frames_restored_too() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        s.0[60] = 101;
        // SAFETY: words of our fake stack.
        unsafe {
            st.hook(s.slot(60), 1, TRAMPS, |_| {});
            st.restore_all(TRAMPS);
        }
        // Caught without a resume_at (a Rust catch_unwind): the next calls hook on top.
        s.0[40] = 103;
        // SAFETY: as above.
        unsafe {
            st.hook(s.slot(50), 2, TRAMPS, |_| {});
            st.hook(s.slot(40), 3, TRAMPS, |_| {});
        }
        assert_eq!(s.0[60], TRAMP, "frame 1 is hooked again by the next call");
        // SAFETY: as above.
        unsafe { st.restore_all(TRAMPS) };
        assert_eq!([s.0[60], s.0[40]], [101, 103]);
    }

    #[test]
    fn resume_at__hooked_frame_tail_calling_the_end_of_the_unwind__then_kept_live() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        s.0[60] = 101;
        s.0[50] = 102;
        // SAFETY: words of our fake stack.
        unsafe {
            st.hook(s.slot(60), 1, TRAMPS, |_| {});
            st.hook(s.slot(50), 2, TRAMPS, |_| {});
        }
        // Frame 2 tail-calls the function that ends the unwind: its caller's stack pointer is
        // just above frame 2's slot, which still holds the trampoline.
        let mut gone = vec![];
        // SAFETY: as above.
        unsafe { st.resume_at(s.slot(51) as u64, TRAMPS, |f| gone.push(f.function)) };
        assert!(gone.is_empty(), "{gone:?}");
        // The catching frame's own call reused the slot: that frame is gone.
        s.0[50] = 555;
        // SAFETY: as above.
        unsafe { st.resume_at(s.slot(51) as u64, TRAMPS, |f| gone.push(f.function)) };
        assert_eq!(gone, [2]);
    }

    #[test]
    fn try_hook_fast__usual_nesting__then_same_frames_as_hook_and_popped_by_try_unhook_fast() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        for (i, f) in [(60usize, 1u64), (50, 2)] {
            s.0[i] = 100 + f;
            // SAFETY: a word of our fake stack.
            assert!(unsafe { st.try_hook_fast(s.slot(i), f, TRAMP) });
            assert_eq!(s.0[i], TRAMP);
        }
        assert_eq!(
            st.frames()[1],
            Frame {
                ret: 102,
                function: 2,
                slot: s.slot(50) as u64
            }
        );
        assert_eq!(st.try_unhook_fast(s.slot(60) as u64), None, "not the top");
        assert_eq!(st.try_unhook_fast(s.slot(50) as u64), Some((102, 2)));
        assert_eq!(st.try_unhook_fast(s.slot(60) as u64), Some((101, 1)));
        assert!(st.is_empty());
    }

    #[test]
    fn try_hook_fast__dead_top_tail_call_full_busy_or_restored__then_declined_and_nothing_changed()
    {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(2, s.bounds());
        // SAFETY: words of our fake stack.
        unsafe {
            st.hook(s.slot(40), 1, TRAMPS, |_| {});
            // A call at or above a frame's slot proves it dead: the slow path pops it.
            assert!(!st.try_hook_fast(s.slot(50), 2, TRAMP));
            // A tail call reusing the innermost frame's hooked slot: left to `hook` too.
            s.0[40] = TRAMP;
            assert!(!st.try_hook_fast(s.slot(40), 2, TRAMP));
            assert!(st.try_hook_fast(s.slot(30), 2, TRAMP));
            assert!(!st.try_hook_fast(s.slot(20), 3, TRAMP), "full");
        }
        assert_eq!(st.len(), 2);
        assert!(st.try_enter());
        assert_eq!(st.try_unhook_fast(s.slot(30) as u64), None, "busy");
        st.leave();
        // SAFETY: as above.
        unsafe { st.restore_all(TRAMPS) };
        assert_eq!(st.try_unhook_fast(s.slot(30) as u64), None, "restored");
        assert_eq!(st.len(), 2);
    }

    #[test]
    fn try_fast__empty_restored_then_resumed__then_declined_until_every_frame_is_hooked_again() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        // Empty: no frame to unhook (the sentinel's slot matches none).
        assert_eq!(st.try_unhook_fast(s.slot(60) as u64), None);
        assert_eq!(st.try_unhook_fast(u64::MAX - 7), None);
        s.0[60] = 101;
        // SAFETY: words of our fake stack.
        unsafe {
            assert!(st.try_hook_fast(s.slot(60), 1, TRAMP));
            st.restore_all(TRAMPS);
            s.0[40] = 103;
            assert!(!st.try_hook_fast(s.slot(40), 2, TRAMP), "restored");
            assert_eq!(st.try_unhook_fast(s.slot(60) as u64), None, "restored");
            // Caught in function 1: it is hooked again, and the fast paths take over.
            st.resume_at(s.slot(59) as u64, TRAMPS, |_| panic!("live"));
            assert!(st.try_hook_fast(s.slot(40), 2, TRAMP));
        }
        assert_eq!(st.try_unhook_fast(s.slot(40) as u64), Some((103, 2)));
        assert_eq!(st.try_unhook_fast(s.slot(60) as u64), Some((101, 1)));
        assert!(st.is_empty());
        assert!(st.frames().is_empty());
    }

    #[test]
    fn reset__after_frames_and_a_busy_stack__then_empty_and_fast_again() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(2, s.bounds());
        // SAFETY: words of our fake stack.
        unsafe {
            assert!(st.try_hook_fast(s.slot(60), 1, TRAMP));
            assert!(st.try_hook_fast(s.slot(50), 2, TRAMP));
            assert!(!st.try_hook_fast(s.slot(40), 3, TRAMP), "full");
        }
        assert!(st.try_enter());
        st.reset((0, 0));
        assert!(st.is_empty());
        // SAFETY: as above.
        assert!(unsafe { st.try_hook_fast(s.slot(40), 3, TRAMP) });
        assert_eq!(st.frames().len(), 1);
    }

    #[test]
    fn hook__tail_call_from_a_slot_holding_the_other_trampoline__then_live_not_dead() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        s.0[60] = 101;
        // SAFETY: words of our fake stack.
        unsafe { st.hook(s.slot(60), 1, BOTH, |_| panic!("live")) };
        // A library call's stub calls through, so its slot holds the other entry; the function
        // then tail-calls another hooked function, which reuses the slot.
        s.0[60] = THROUGH;
        // SAFETY: as above.
        unsafe {
            st.hook(s.slot(60), 2, BOTH, |_| {
                panic!("a tail call is not a dead frame")
            })
        };
        assert_eq!(st.len(), 2);
        let inner = st.unhook(s.slot(60) as u64, |_| panic!()).unwrap();
        assert_eq!((inner.function, inner.ret), (2, THROUGH));
        // Any other word at the slot proves both frames dead.
        s.0[60] = 555;
        let mut dead = vec![];
        // SAFETY: as above.
        unsafe { st.hook(s.slot(60), 3, BOTH, |f| dead.push(f.function)) };
        assert_eq!(dead, [1]);
    }

    #[test]
    fn restore_all_then_resume_at__slots_holding_either_trampoline__then_restored_and_rehooked() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        for (i, f) in [(60usize, 1u64), (50, 2), (40, 3)] {
            s.0[i] = 100 + f;
            // SAFETY: a word of our fake stack.
            unsafe { st.hook(s.slot(i), f, BOTH, |_| {}) };
        }
        // Frames 2 and 3 are library calls whose stubs called through.
        s.0[50] = THROUGH;
        s.0[40] = THROUGH;
        // SAFETY: as above.
        unsafe { st.restore_all(BOTH) };
        assert_eq!([s.0[60], s.0[50], s.0[40]], [101, 102, 103]);
        // Caught in function 2: 3 is gone, 1 and 2 are hooked again (with the written kind,
        // which returns correctly from either).
        let mut gone = vec![];
        // SAFETY: as above.
        unsafe { st.resume_at(s.slot(49) as u64, BOTH, |f| gone.push(f.function)) };
        assert_eq!(gone, [3]);
        assert_eq!([s.0[60], s.0[50]], [TRAMP, TRAMP]);
    }

    #[test]
    fn resume_at__end_of_unwind_tail_called_from_a_call_through_slot__then_kept_live() {
        let mut s = Stack::new();
        let mut st = ShadowStack::boxed(8, s.bounds());
        s.0[50] = 102;
        // SAFETY: words of our fake stack.
        unsafe { st.hook(s.slot(50), 2, BOTH, |_| {}) };
        s.0[50] = THROUGH;
        let mut gone = vec![];
        // SAFETY: as above.
        unsafe { st.resume_at(s.slot(51) as u64, BOTH, |f| gone.push(f.function)) };
        assert!(gone.is_empty(), "{gone:?}");
    }

    #[test]
    fn trampolines__one__then_holds_only_it() {
        assert!(TRAMPS.holds(TRAMP));
        assert!(!TRAMPS.holds(THROUGH));
        assert!(BOTH.holds(TRAMP) && BOTH.holds(THROUGH) && !BOTH.holds(0));
    }

    extern "C" fn never_fast(_slot: u64) -> FastReturn {
        unreachable!("never entered")
    }

    extern "C" fn never_handler(_slot: u64, _regs: *mut u64, _code: u64, _ret: u64) -> u64 {
        unreachable!("never entered")
    }

    return_trampoline!(
        /// A call-through trampoline, only read.
        call_through test_through => never_handler, fast = never_fast
    );

    #[test]
    fn call_through__first_instruction__then_call_r11_of_call_through_bytes() {
        // SAFETY: the function's first bytes, mapped code of this test binary.
        let code = unsafe { core::ptr::read(test_through as *const [u8; 3]) };
        assert_eq!(code, [0x41, 0xff, 0xd3], "call r11");
        assert_eq!(code.len() as u64, CALL_THROUGH_BYTES);
    }

    #[test]
    fn try_enter__twice__then_second_refused_until_leave() {
        let mut st = ShadowStack::boxed(1, (0, 0));
        assert!(st.try_enter());
        assert!(!st.try_enter());
        st.leave();
        assert!(st.try_enter());
    }
}
