//! What one attachment (or spawn mode) owns: the [`Agent`] (its region, its thread array, its
//! generation and image) and the per-thread [`ThreadState`] entries of that array, which the hot
//! path uses.

use core::sync::atomic::AtomicU32;

use registry::{Clock, Registry, SlotWriter};
use ring::PoolProducer;

/// The agent of one attachment (or of spawn mode): made by `build_agent`, published by `live`, and
/// freed, with its region and thread array, when a detached attachment is reclaimed.
pub(crate) struct Agent {
    pub(crate) reg: Registry<'static>,
    /// The region's mapping (unmapped when the attachment is reclaimed).
    pub(crate) mapping: registry::Mapping,
    /// Per-slot thread state, agent-private (`capacity` entries).
    pub(crate) threads: *mut ThreadState,
    /// The thread array's size in bytes.
    pub(crate) threads_len: usize,
    /// This process's pid (updated in a fork child).
    pub(crate) pid: AtomicU32,
    /// Which attachment this agent serves: 1 for the first, one more for each later attach.
    /// Threads registered under an older one re-register (see `thread::acquire_state`).
    pub(crate) generation: u32,
    /// This process image's serial in the region (see `registry::modules`).
    pub(crate) image: u32,
}

// SAFETY: `threads` is only dereferenced for the slot the calling thread owns.
unsafe impl Sync for Agent {}
// SAFETY: as above.
unsafe impl Send for Agent {}

/// Everything a registered thread's hot path needs, in agent-private memory.
pub(crate) struct ThreadState {
    /// The fast path's one test, zero when it may run unfenced: [`BUSY`] while this thread is
    /// inside a hook (the reentrancy guard); [`SLOW_ONLY`] for good when its events may not take
    /// the fast path at all, fixed at registration (see `hook::ready_fast`: the clock does not
    /// read the TSC, detail records are on, or the index lane does not hold fixed-size records of
    /// one event); [`FENCED`] while `writer` may keep its fence (set at registration from the
    /// writer's flag, which only `thread::open_section` changes afterwards, clearing this with
    /// it): the fast path then runs its fenced copy, and without it opens its write section
    /// without testing the writer's flag.
    pub(crate) gate: u32,
    /// Current call depth.
    pub(crate) depth: u32,
    /// Whether this thread has seen acceptance stopped (it steps aside once, see `hook`).
    pub(crate) stop_seen: bool,
    /// Pauses taken while the tracer settled the stop (bounded: a tracer that dies mid-stop must
    /// not slow the program for ever).
    pub(crate) settle_pauses: u8,
    pub(crate) tid: u32,
    /// The third word of this thread's call and return records (`event::Record::thread_kind_word`),
    /// made at registration: the fast path loads it instead of building it.
    pub(crate) call_word: u64,
    /// The same for its returns.
    pub(crate) return_word: u64,
    /// The fourth word of a record without detail, its depth left 0
    /// (`event::Record::depth_detail_word(0, NO_DETAIL)`): the fast path ORs the depth into it,
    /// one instruction, where building it took two (a 64-bit constant is no immediate).
    pub(crate) no_detail_word: u64,
    pub(crate) slot: u32,
    /// Index events accepted so far: the position the next one takes in index.atf, for a
    /// detail record to link to. Counted by the full path only: the fast path is taken only by
    /// a thread without detail records (see `gate`), which never reads it.
    pub(crate) index_seq: u32,
    /// Detail records written so far.
    pub(crate) detail_seq: u32,
    pub(crate) stack_lo: u64,
    pub(crate) stack_hi: u64,
    pub(crate) stack_bytes: u32,
    /// The image tag ORed into every function id (see `registry::image_tag`).
    pub(crate) tag: u64,
    pub(crate) clock: Clock,
    pub(crate) writer: SlotWriter<'static>,
    pub(crate) index: PoolProducer<'static>,
    pub(crate) detail: PoolProducer<'static>,
    pub(crate) agent: &'static Agent,
}

/// [`ThreadState::gate`]: inside a hook.
pub(crate) const BUSY: u32 = 1;
/// [`ThreadState::gate`]: never the fast path.
pub(crate) const SLOW_ONLY: u32 = 2;
/// [`ThreadState::gate`]: the writer may keep its fence.
pub(crate) const FENCED: u32 = 4;

impl ThreadState {
    /// Whether this thread is inside a hook (see [`ThreadState::gate`]).
    #[inline(always)]
    pub(crate) fn busy(&self) -> bool {
        self.gate & BUSY != 0
    }

    /// Marks this thread inside a hook, or out again (keeping [`SLOW_ONLY`]). A signal handler
    /// interrupting the update (between its load and its store) finds the thread not yet, or
    /// still, inside, and leaves the gate as it found it.
    #[inline(always)]
    pub(crate) fn set_busy(&mut self, busy: bool) {
        if busy {
            self.gate |= BUSY;
        } else {
            self.gate &= !BUSY;
        }
    }
}

impl Agent {
    /// Unmaps the thread array and the region.
    ///
    /// # Safety
    /// No thread uses this agent, its thread array or its region again.
    pub(crate) unsafe fn unmap(self: Box<Self>) {
        let Agent {
            mapping,
            threads,
            threads_len,
            ..
        } = *self;
        // SAFETY: the array mapped in `build_agent`, unused now (the caller's contract).
        unsafe { libc::munmap(threads.cast(), threads_len) };
        // SAFETY: as above, for the region.
        unsafe { mapping.unmap() };
    }
}
