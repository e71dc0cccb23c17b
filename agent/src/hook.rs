//! The exported hooks and the hot path.
//!
//! `__cyg_profile_func_enter/exit` are naked: with detail records off they jump straight to the
//! Rust hot path (arguments untouched); with detail records on they first save every integer
//! register as the hook received it, the stack pointer and the return address into a frame on the
//! stack, and pass that frame along.
//!
//! Hot path of a registered thread ([`fast`] and [`record_fast`]; no lock, no syscall, no
//! allocation, no call, no vector register): one `fs`-relative TLS load; the presence mark; the
//! reentrancy guard; the stop handshake's write section (`SlotWriter::open` and
//! `SlotWriter::close`: two stores to the slot's own line, a compiler barrier, one load of the
//! session line); one `rdtsc` (the raw ticks go into the record: the drain converts them to
//! nanoseconds); four word stores into the active ring and a Release store of its
//! head. Anything unusual (a thread not
//! registered yet, a full ring, the stop, detail records) declines to the full path, [`record`].

use core::sync::atomic::compiler_fence;
use core::sync::atomic::Ordering::SeqCst;

use crate::state::ThreadState;
use crate::tls::tls;

use ::event::NO_DETAIL;
pub(crate) use ::event::{CALL, RETURN};
/// Registers saved by the naked hooks, in this order (the detail payload's register block).
/// `rsp` is the stack pointer at hook entry (it points at the return address); `ret` is the
/// return address, inside the instrumented function.
pub(crate) const REGS: usize = 17;
/// Detail record header: length, type, flags, index_seq, thread_id, timestamp.
const DETAIL_HEADER: usize = ::event::DETAIL_HEADER_SIZE;
/// Detail payload flag: the stack copy was clamped to the thread's stack bounds.
const STACK_CLAMPED: u32 = 1;

/// Defines a `-finstrument-functions` hook of event kind `$kind`: with detail records off, a jump
/// to `$fast`; with them on, every integer register as the hook received it, the stack pointer and
/// the return address saved into a frame (the detail payload's register block) passed on.
macro_rules! cyg_hook {
    ($(#[$meta:meta])* $name:ident, kind = $kind:literal, fast = $fast:path) => {
        $(#[$meta])*
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name(this_fn: *mut libc::c_void, call_site: *mut libc::c_void) {
            core::arch::naked_asm!(
                "cmp byte ptr [rip + {detail}], 0",
                "jne 2f",
                "jmp {fast}",
                "2:",
                "sub rsp, 136",
                retstack::store_registers!(),
                "lea rax, [rsp + 136]",
                "mov [rsp + 120], rax",
                "mov rax, [rsp + 136]",
                "mov [rsp + 128], rax",
                "mov edx, {kind}",
                "mov rcx, rsp",
                "call {slow}",
                "add rsp, 136",
                "ret",
                detail = sym crate::process::DETAIL_ON,
                fast = sym $fast,
                slow = sym with_registers,
                kind = const $kind,
                regs = const 0,
            )
        }
    };
}

cyg_hook!(
    /// The enter hook every `-finstrument-functions` function calls first.
    ///
    /// # Safety
    /// Called by compiler-generated code with the instrumented function's address and call site.
    __cyg_profile_func_enter, kind = 1, fast = enter_fast
);

cyg_hook!(
    /// The exit hook every `-finstrument-functions` function calls last.
    ///
    /// # Safety
    /// As for [`__cyg_profile_func_enter`].
    __cyg_profile_func_exit, kind = 2, fast = exit_fast
);

const _: () = assert!(CALL == 1 && RETURN == 2, "the hooks' `kind` literals");

extern "C" fn enter_fast(this_fn: usize, _call_site: usize) {
    event(CALL, this_fn as u64, core::ptr::null());
}

extern "C" fn exit_fast(this_fn: usize, _call_site: usize) {
    event(RETURN, this_fn as u64, core::ptr::null());
}

extern "C" fn with_registers(this_fn: usize, _call_site: usize, kind: u32, regs: *const u64) {
    // The hook's frame, never null: the full path, without a copy of the fast one.
    inside(|st| record(st, kind, this_fn as u64, regs));
}

/// This thread's state, registering it if needed, when it is not inside a hook already. `None`:
/// the event is dropped, and counted (reentrant, or by `acquire_state`).
#[inline(always)]
pub(crate) fn free_state() -> Option<&'static mut ThreadState> {
    let t = tls();
    // SAFETY: the TLS block is valid for this thread's lifetime; only this thread touches it.
    let (mut state, generation) = unsafe { ((*t).state, (*t).generation) };
    // A state of an attachment that is no longer live may be unmapped: it is not read.
    if state.is_null() || generation != crate::live::generation() {
        state = slow_state()?;
    }
    // SAFETY: a non-null state pointer is this thread's entry of the agent's array, used only by
    // this thread (a signal handler on this thread is kept out by `busy`).
    let st = unsafe { &mut *state };
    if st.busy() {
        st.writer.count_reentrant();
        return None;
    }
    Some(st)
}

/// Records one event of this thread (the caller marks nothing: this marks the thread inside the
/// agent around everything that touches it, see `live`).
#[inline(always)]
pub(crate) fn event(kind: u32, function: u64, regs: *const u64) {
    if !regs.is_null() {
        // Detail records: the full path.
        inside(|st| record(st, kind, function, regs));
        return;
    }
    let code = fast(
        FAST_DECLINED,
        #[inline(always)]
        // SAFETY: `fast` runs this only on a state it found `ready_fast`, `fenced` as it found.
        |st, _, fenced| unsafe { record_fast(st, fenced, kind, function) },
    );
    if code != FAST_DONE {
        event_slow(code, kind, function);
    }
}

/// [`event`] (without registers) after its fast path answered `code`.
#[inline(never)]
fn event_slow(code: u64, kind: u32, function: u64) {
    after_fast(code, (), || {
        inside(|st| record(st, kind, function, core::ptr::null()))
    });
}

/// Runs `f` on this thread's free state (see [`free_state`]) inside the agent, and retires the
/// attachment it says it has seen stopped once out.
#[inline(always)]
fn inside(f: impl FnOnce(&mut ThreadState) -> Option<crate::live::Retiring>) {
    let seat = crate::live::enter();
    let stopped = free_state().and_then(f);
    crate::live::leave(seat);
    if let Some(stopped) = stopped {
        crate::live::retire_stopped(stopped);
    }
}

/// [`event`] for a thread whose free state the caller holds already (see [`free_state`]), inside
/// the agent. Returns the attachment this thread has just seen stopped, to retire once out.
#[inline(always)]
#[must_use]
pub(crate) fn record(
    st: &mut ThreadState,
    kind: u32,
    function: u64,
    regs: *const u64,
) -> Option<crate::live::Retiring> {
    let mut stopped = None;
    let function = function | st.tag;
    st.set_busy(true);
    // Compiler fence, not an atomic: the guard is only read by this thread (and by a signal
    // handler interrupting it), so the compiler must not move the hook's work above it.
    compiler_fence(SeqCst);
    let depth = step_depth(st, kind);
    let fenced = st.gate & crate::state::FENCED != 0;
    if let Some(section) = crate::thread::open_section(st, fenced) {
        // The clock's raw reading, as on the fast path: the drain converts it to nanoseconds.
        let ts = st.clock.now_ticks();
        let detail_seq = if regs.is_null() {
            NO_DETAIL
        } else {
            write_detail(st, kind, function, ts, regs)
        };
        let ev = ::event::Record {
            timestamp_ns: ts,
            function_id: function,
            thread_id: st.tid,
            kind,
            call_depth: depth,
            detail_seq,
        }
        .to_bytes();
        // `reg` by reference: the registry handle is 176 bytes, and a copy of it per event was a
        // `memcpy` call.
        let (writer, clock, reg) = (&st.writer, &st.clock, &st.agent.reg);
        // A wait for ring space lasts while the drain lives: it ends when acceptance stops, or
        // when the drain has been silent for a second and the tracer process is gone (or silent
        // for ten: alive but hung). The pid check runs only on that slow path. The heartbeat is
        // nanoseconds, so it is compared with `now_ns`, not with the record's raw `ts`.
        let drain_gone = || {
            let beat = reg.heartbeat();
            let silent = clock.now_ns().saturating_sub(beat);
            beat != 0
                && silent > DRAIN_SILENCE_NS
                && (silent > DRAIN_HUNG_NS || !process_alive(reg.tracer_pid()))
        };
        match st
            .index
            .push_unless(&ev, || !writer.still_accepting() || drain_gone())
        {
            Ok(()) => st.index_seq = st.index_seq.wrapping_add(1),
            // Waiting for space when the stop came: the event's publication did not complete
            // before the stop, so it is a shutdown drop, and the stopper is not kept waiting.
            Err(ring::PushError::Abandoned) if !writer.still_accepting() => {
                st.writer.drop_for_shutdown()
            }
            // The drain is gone: a ring-full drop, and no more waiting until space comes back.
            Err(ring::PushError::Abandoned) => st.index.give_up(),
            Err(ring::PushError::Full) => {}
        }
        st.writer.close(section);
    } else {
        stopped = refused(st);
    }
    compiler_fence(SeqCst);
    st.set_busy(false);
    stopped
}

/// After the stop handshake refused an event of this thread (inside, busy): the first time, the
/// program's changes are undone (attach mode: its hook GOT entries go back to glibc's) and the
/// attachment is returned, to retire once out; later, a pause while the tracer settles.
fn refused(st: &mut ThreadState) -> Option<crate::live::Retiring> {
    if !st.stop_seen {
        st.stop_seen = true;
        crate::detach::run(st.agent);
        let stopped = crate::live::stopped(st.agent);
        step_aside();
        Some(stopped)
    } else {
        if st.settle_pauses < MAX_SETTLE_PAUSES && st.writer.stop_settling() {
            // The tracer still waits for threads preempted inside a write: leave them the CPU.
            st.settle_pauses += 1;
            pause(SETTLE_PAUSE_NS);
        }
        None
    }
}

/// What a fast path (see `entry`) tells its naked hook: the event is recorded.
pub(crate) const FAST_DONE: u64 = retstack::FAST_DONE;
/// Nothing was done: the hook saves the vector registers and takes the full path.
pub(crate) const FAST_DECLINED: u64 = retstack::FAST_DECLINED;
/// The stop handshake refused the event (counted): the hook saves the vector registers and calls
/// [`after_fast`], which does what a refusal does (see [`refused`]).
pub(crate) const FAST_REFUSED: u64 = 2;
/// The event is recorded, and the thread left last while an attachment waits to be freed: the
/// hook saves the vector registers and calls [`after_fast`], which frees it.
pub(crate) const FAST_RECLAIM: u64 = 3;

/// Whether this thread's next event can be recorded on the fast path: not inside a hook, the TSC
/// clock, no detail records and an index lane of fixed-size records (one word for all four, see
/// `ThreadState::gate`: the entry-only hooks count on the decline to record registers), and
/// room in the active ring (acceptance is the handshake's to check: a stopped one refuses in
/// `SlotWriter::open`), `fenced` saying whether its writer may still keep the fence (the gate's
/// [`FENCED`](crate::state::FENCED)). Reads only.
#[inline(always)]
pub(crate) fn ready_fast(st: &mut ThreadState, fenced: bool) -> bool {
    let open = if fenced {
        // Loaded again (volatile), so the unfenced test compares the gate in memory with zero
        // instead of loading it into a register for both.
        // SAFETY: a plain field of this thread's state, valid and aligned.
        let gate = unsafe { core::ptr::read_volatile(&st.gate) };
        gate == crate::state::FENCED
    } else {
        st.gate == 0
    };
    open && st.index.room_for_words::<{ ::event::SIZE / 8 }>()
}

/// What a fast path answers: a code, alone or with more (see `retstack::FastReturn`).
pub(crate) trait FastAnswer: Copy {
    /// Its code: [`FAST_DONE`], [`FAST_DECLINED`], [`FAST_REFUSED`] or [`FAST_RECLAIM`].
    fn code(self) -> u64;
    /// The same answer with another code.
    fn with_code(self, code: u64) -> Self;
}

impl FastAnswer for u64 {
    #[inline(always)]
    fn code(self) -> u64 {
        self
    }
    #[inline(always)]
    fn with_code(self, code: u64) -> Self {
        code
    }
}

impl FastAnswer for retstack::FastReturn {
    #[inline(always)]
    fn code(self) -> u64 {
        self.code
    }
    #[inline(always)]
    fn with_code(self, code: u64) -> Self {
        retstack::FastReturn { code, ..self }
    }
}

/// The fast paths' frame: when this thread already has a presence seat of its own (a thread on
/// the shared counter takes the full path) and its state in the live attachment, and the state
/// is [`ready_fast`], runs `f` on it, the thread's shadow stack (null if it has none yet) and
/// whether its writer may keep the fence (a constant in each of the two places `f` is inlined),
/// inside and busy; else answers `declined` having changed nothing. A thread that leaves last
/// while an attachment waits to be freed turns a [`FAST_DONE`] into [`FAST_RECLAIM`]. Calls
/// nothing and leaves the vector registers alone (so must `f`): the naked hooks save those only
/// when the answer is not [`FAST_DONE`]. `f` runs only on a state found [`ready_fast`], and may
/// record one event with [`record_fast`].
#[inline(always)]
pub(crate) fn fast<A: FastAnswer>(
    declined: A,
    f: impl FnOnce(&mut ThreadState, *mut retstack::ShadowStack, bool) -> A,
) -> A {
    let t = tls();
    // SAFETY: the TLS block is valid for this thread's lifetime; only this thread touches it.
    let (marker, state, shadow, generation) =
        unsafe { ((*t).marker, (*t).state, (*t).shadow, (*t).generation) };
    // Every path but the unfenced writer's recording is marked cold: the compiler then lays that
    // one out as a straight line with no taken branch, which measured ~3 % of a library call's
    // cost faster around a system call (the code after one runs with colder caches).
    if state.is_null() {
        cold();
        return declined;
    }
    let Some(marker) = marker else {
        cold();
        return declined;
    };
    crate::live::enter_marked(marker);
    let answer = if generation != crate::live::generation() {
        cold();
        declined
    } else {
        // SAFETY: the live generation's state of this thread (see `free_state`), kept mapped
        // while it is inside; a signal handler on this thread is kept out by its `gate`.
        let st = unsafe { &mut *state };
        // Two copies of `f`, one for each writer's fence, chosen by one test of the gate.
        if ready_fast(st, false) {
            // The gate was zero: busy is all it holds until it is zero again (an unfenced
            // writer stays so).
            st.gate = crate::state::BUSY;
            compiler_fence(SeqCst);
            let answer = f(st, shadow, false);
            compiler_fence(SeqCst);
            st.gate = 0;
            answer
        } else {
            cold();
            if ready_fast(st, true) {
                st.set_busy(true);
                compiler_fence(SeqCst);
                let answer = f(st, shadow, true);
                compiler_fence(SeqCst);
                // Kept: `FENCED`, or its absence once the write section's opening dropped it. A
                // volatile store, so the compiler keeps it apart from the unfenced copy's (which
                // then stores a constant, not a value the two copies share).
                let gate = st.gate & !crate::state::BUSY;
                // SAFETY: a plain field of this thread's state, valid and aligned.
                unsafe { core::ptr::write_volatile(&mut st.gate, gate) };
                answer
            } else {
                declined
            }
        }
    };
    // A declined or refused event goes inside again on its slow path, whose leave reclaims.
    if crate::live::leave_marked(marker) && answer.code() == FAST_DONE {
        answer.with_code(FAST_RECLAIM)
    } else {
        answer
    }
}

/// [`record`] on the fast path (the caller checked [`ready_fast`] since this thread's last event,
/// which answered `fenced`, and holds `busy`): calls nothing
/// and leaves the vector registers alone. [`FAST_DONE`], or [`FAST_REFUSED`] when the stop came
/// in between (the event is counted as a shutdown drop; the caller's hook runs [`after_fast`]).
///
/// # Safety
/// [`ready_fast`] returned true for `st` and `fenced` since this thread's last event.
#[inline(always)]
pub(crate) unsafe fn record_fast(
    st: &mut ThreadState,
    fenced: bool,
    kind: u32,
    function: u64,
) -> u64 {
    let depth = step_depth(st, kind);
    let Some(section) = crate::thread::open_section(st, fenced) else {
        return FAST_REFUSED;
    };
    let thread_kind = if kind == CALL {
        st.call_word
    } else {
        st.return_word
    };
    // `kind` is one of the two (the hooks pass constants): its word was made at registration.
    debug_assert_eq!(thread_kind, ::event::Record::thread_kind_word(st.tid, kind));
    // Raw ticks, converted to nanoseconds by the drain (`Clock::to_ns`): this path runs only on a
    // TSC clock (`ThreadState::gate`), whose raw reading is one `rdtsc`. Read here, while the
    // thread is busy, not earlier in `fast` (where its latency would overlap the tests, ~1–2 ns a
    // call around a system call): a signal handler interrupting the thread before it is busy
    // records its own events first, and those would then be stamped later than this event, which
    // follows them in the ring, and the thread's time would go back.
    let words = ::event::Record::words_with(
        registry::clock::rdtsc(),
        function | st.tag,
        thread_kind,
        u64::from(depth) | st.no_detail_word,
    );
    // SAFETY: `ready_fast` found room for one record (the caller's contract) in a lane whose
    // rings hold such records (`gate` is zero only then), and only this thread fills the ring.
    unsafe { st.index.push_words_fitted(&words) };
    // `index_seq` stays: only detail records read it, and a thread on this path has none
    // (`gate` is zero only with them off, for the state's lifetime).
    st.writer.close(section);
    FAST_DONE
}

/// Marks the path that calls it as rarely taken, so the compiler lays that path out of the fast
/// path's straight line (a call to a `#[cold]` function weighs its branch; inlined, it leaves no
/// code, so the fast path still calls nothing).
#[cold]
#[inline]
fn cold() {}

/// The slow half of a fast path's answer (`code`, not [`FAST_DONE`]), with the vector registers
/// saved: a refusal's consequences, a reclaim, or, declined, `full` (the whole event).
#[inline(always)]
pub(crate) fn after_fast<T>(code: u64, done: T, full: impl FnOnce() -> T) -> T {
    match code {
        FAST_RECLAIM => crate::live::reclaim_now(),
        FAST_REFUSED => after_refusal(),
        _ => return full(),
    }
    done
}

/// [`refused`] for a fast path's refusal, inside again.
#[cold]
#[inline(never)]
fn after_refusal() {
    inside(|st| {
        if st.writer.still_accepting() {
            // A newer attachment took over meanwhile: the refusal was the old one's.
            return None;
        }
        st.set_busy(true);
        compiler_fence(SeqCst);
        let stopped = refused(st);
        compiler_fence(SeqCst);
        st.set_busy(false);
        stopped
    });
}

/// The depth this event of `kind` records at (a call one deeper after it, a return one
/// shallower before it).
#[inline(always)]
fn step_depth(st: &mut ThreadState, kind: u32) -> u32 {
    if kind == CALL {
        st.depth += 1;
        st.depth - 1
    } else {
        st.depth = st.depth.saturating_sub(1);
        st.depth
    }
}

/// How long the drain's heartbeat may be silent before a producer waiting for ring space checks
/// whether the tracer still exists (the drain beats on every slot it visits, many times a second,
/// but a write can block it for longer on a busy disk).
const DRAIN_SILENCE_NS: u64 = 1_000_000_000;
/// How long it may be silent, with the tracer alive, before a waiting producer gives up anyway.
const DRAIN_HUNG_NS: u64 = 10_000_000_000;

/// Whether process `pid` exists (signal 0 checks without sending anything).
#[cold]
fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only reports whether `pid` exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The most pauses a thread takes while the tracer stops (1 ms, then 5 ms each: at most about a
/// second, so a tracer that died while stopping does not slow the program for ever).
const MAX_SETTLE_PAUSES: u8 = 200;

/// The first time a thread finds acceptance stopped, it sleeps 1 ms, and 5 ms on each later event
/// while the tracer is still stopping (`SlotWriter::stop_settling`). The stopper waits for
/// threads that were preempted inside a write when it stopped acceptance; on a machine with more
/// busy threads than CPUs, threads that keep calling would otherwise hold the CPUs for whole
/// scheduler slices while those wait for their turn (measured with 64 threads on 2 CPUs: the
/// stop takes ~0.2 ms with this pause, 150-250 ms without). Never on the steady-state path.
#[cold]
#[inline(never)]
fn step_aside() {
    pause(1_000_000);
}

/// Each later pause while the tracer is still stopping: long enough that hundreds of refused
/// threads cost the CPUs little (few wake-ups), short next to the stop's budget.
const SETTLE_PAUSE_NS: i64 = 5_000_000;

/// Sleeps `ns` nanoseconds (less if a signal interrupts it).
#[cold]
#[inline(never)]
fn pause(ns: i64) {
    let pause = libc::timespec {
        tv_sec: 0,
        tv_nsec: ns,
    };
    // SAFETY: a valid timespec; an interrupted sleep (EINTR) is simply shorter.
    unsafe { libc::nanosleep(&pause, core::ptr::null_mut()) };
}

#[cold]
#[inline(never)]
pub(crate) fn slow_state() -> Option<*mut ThreadState> {
    let agent = crate::live::agent_or_init(crate::build::spawn)?;
    crate::thread::acquire_state(agent)
}

/// Writes the detail record of an event (and marks the window on a trigger). Returns its detail
/// sequence number, or [`NO_DETAIL`] if the detail lane dropped it.
#[inline(never)]
fn write_detail(st: &mut ThreadState, kind: u32, function: u64, ts: u64, regs: *const u64) -> u32 {
    let mut buf = [0u8; DETAIL_HEADER + REGS * 8 + 8 + registry::MAX_STACK_BYTES as usize];
    // SAFETY: the naked hook passes a frame of REGS saved registers on its own stack.
    let saved = unsafe { core::slice::from_raw_parts(regs, REGS) };
    let rsp = saved[15];
    // The stack copy stays inside this thread's stack: [rsp, min(rsp + n, stack_hi)). An rsp outside
    // the bounds (an alternate signal stack) copies nothing.
    let want = st.stack_bytes as u64;
    let (len, clamped) = if rsp >= st.stack_lo && rsp < st.stack_hi {
        let len = want.min(st.stack_hi - rsp);
        (len as usize, len < want)
    } else {
        (0, want > 0)
    };
    let payload = REGS * 8 + 8 + len;
    let total = DETAIL_HEADER + payload;
    let header = ::event::DetailHeader {
        total_length: total as u32,
        event_type: if kind == CALL {
            ::event::DETAIL_CALL
        } else {
            ::event::DETAIL_RETURN
        },
        flags: 0,
        index_seq: st.index_seq,
        thread_id: st.tid,
        timestamp_ns: ts,
    };
    buf[..DETAIL_HEADER].copy_from_slice(&header.to_bytes());
    for (i, r) in saved.iter().enumerate() {
        let at = DETAIL_HEADER + i * 8;
        buf[at..at + 8].copy_from_slice(&r.to_le_bytes());
    }
    let at = DETAIL_HEADER + REGS * 8;
    buf[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
    let flags = if clamped { STACK_CLAMPED } else { 0 };
    buf[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
    if len > 0 {
        // SAFETY: [rsp, rsp + len) lies within this thread's mapped stack (checked above) and is
        // above the stack pointer, i.e. live frames.
        let stack = unsafe { core::slice::from_raw_parts(rsp as *const u8, len) };
        buf[at + 8..at + 8 + len].copy_from_slice(stack);
    }
    let seq = match st.detail.push(&buf[..total]) {
        Ok(()) => {
            let seq = st.detail_seq;
            st.detail_seq = st.detail_seq.wrapping_add(1);
            seq
        }
        Err(_) => NO_DETAIL,
    };
    // A trigger marks the window that now holds its record.
    if kind == CALL {
        let reg = &st.agent.reg;
        let n = reg.trigger_range_count();
        if (0..n).any(|i| {
            let (start, end) = reg.trigger_range(i);
            (start..end).contains(&function)
        }) {
            st.detail.mark_active();
        }
    }
    seq
}
