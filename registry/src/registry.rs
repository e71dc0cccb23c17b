//! The view of a region and its protocols: slot claim/exit/recycle, registration closing, the stop
//! handshake, counters.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::time::Duration;

use modelsync::{Atomic, Backend, StdBackend};
use ring::{CachePadded, RingPool};

use crate::clock::{Clock, ClockSource};
use crate::layout::*;
use crate::RegistryError;

/// The session's `accepting` word: events are accepted.
const ACCEPTING: u32 = 1;
/// Not accepting, and the tracer is still stopping (waiting for the sections open at the stop,
/// draining, syncing).
const SETTLING: u32 = 2;
/// Not accepting, and the tracer no longer waits.
const STOPPED: u32 = 0;

/// A slot's lifecycle state, as the tracer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Unused.
    Free,
    /// Being claimed by a thread (transient).
    Claimed,
    /// Owned by a live thread.
    Active,
    /// Its thread has exited; the lanes still hold what the drain has not taken.
    Exited,
    /// Being reset by the tracer (transient).
    Recycling,
}

impl SlotState {
    fn decode(v: u32) -> SlotState {
        match v {
            FREE => SlotState::Free,
            CLAIMED => SlotState::Claimed,
            ACTIVE => SlotState::Active,
            EXITED => SlotState::Exited,
            _ => SlotState::Recycling,
        }
    }
}

/// Who holds a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot index.
    pub index: u32,
    /// State when read.
    pub state: SlotState,
    /// Process id of the owner.
    pub pid: u32,
    /// Thread id of the owner (the ATF thread id).
    pub tid: u32,
    /// Registration serial: differs between successive owners of the same slot.
    pub serial: u64,
    /// The process image the owner runs in (see [`Registry::new_image`]).
    pub image: u32,
}

/// The accounting of one thread's index lane. Exact once the thread is outside its write section
/// (after [`Registry::stop_accepting`], or once the slot is [`SlotState::Exited`]):
/// `attempted == accepted + ring_full + shutdown + reentrant` ([`ThreadCounts::balanced`]).
/// `accepted` events are persisted once the drain has emptied the lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadCounts {
    /// Events the thread's hooks saw while it held the slot.
    pub attempted: u64,
    /// Events written into the index lane.
    pub accepted: u64,
    /// Dropped: every ring full after the bounded wait.
    pub ring_full: u64,
    /// Times the thread found every index ring full and waited for the drain (whether or not
    /// space came back): a measure of the drain keeping up, not an accounting term.
    pub ring_waits: u64,
    /// Dropped: acceptance already stopped.
    pub shutdown: u64,
    /// Dropped: a hook ran inside a hook (signal handler, instrumented callback).
    pub reentrant: u64,
    /// Detail records written into the detail lane (a flight recorder: persisted only if marked).
    pub detail_accepted: u64,
    /// Detail records dropped because every detail ring was full.
    pub detail_ring_full: u64,
}

impl ThreadCounts {
    /// Total drops.
    pub fn dropped(&self) -> u64 {
        self.ring_full + self.shutdown + self.reentrant
    }

    /// Whether the accounting invariant holds.
    pub fn balanced(&self) -> bool {
        self.attempted == self.accepted + self.dropped()
    }
}

/// Events of threads that held no slot (all dropped): `attempted == registry_full +
/// agent_setup + thread_teardown + shutdown`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrphanCounts {
    /// Events seen.
    pub attempted: u64,
    /// Dropped: no free slot (the thread retries on later events).
    pub registry_full: u64,
    /// Dropped: the agent was setting the thread up (registering it, or starting in it), so
    /// the event is a call made for the agent (libc's, under `--library-calls all`) or a signal
    /// handler's at that moment.
    pub agent_setup: u64,
    /// Dropped: the thread's slot was already released at teardown.
    pub thread_teardown: u64,
    /// Dropped: registrations or acceptance closed before the thread got a slot.
    pub shutdown: u64,
    /// Threads waiting for a slot right now.
    pub waiting_threads: u64,
}

impl OrphanCounts {
    /// Whether `attempted` equals the sum of the drops.
    pub fn balanced(&self) -> bool {
        self.attempted
            == self.registry_full + self.agent_setup + self.thread_teardown + self.shutdown
    }
}

/// Why an orphan event was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanReason {
    /// No free slot.
    RegistryFull,
    /// The agent was setting the thread up: registering it, or starting in it.
    AgentSetup,
    /// After the thread's teardown.
    ThreadTeardown,
    /// Registrations closed.
    Shutdown,
}

/// What the stop handshake found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Slots whose owner was still inside a write section when the wait ended (the timeout, or
    /// [`StopWatch::cancelled`]): a live thread stopped by a debugger, or one that had no CPU.
    pub stragglers: Vec<SlotInfo>,
    /// Slots whose owner died inside a write section ([`StopWatch::owner_alive`] said so): the
    /// section never ends, and the event it was writing was never published, so nothing
    /// published is missing. Every event such a thread published before it died is in its lane.
    pub dead: Vec<SlotInfo>,
    /// The wait was cut short by [`StopWatch::cancelled`].
    pub cancelled: bool,
}

impl StopReport {
    /// Every section open at the stop has ended or belongs to a dead thread: the lanes now hold
    /// every published event, and every later one is counted as a `shutdown` drop.
    pub fn complete(&self) -> bool {
        self.stragglers.is_empty()
    }
}

/// The write sections open when acceptance stopped ([`Registry::stop_now`]): `(slot, sequence)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenSections(Vec<(u32, u64)>);

impl OpenSections {
    /// How many sections were open.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the stopper consults while it waits for the write sections open at the stop
/// ([`Registry::stop_accepting_with`]). Called every few hundred microseconds of waiting, and
/// only while some section is still open.
pub trait StopWatch {
    /// Whether the thread owning `slot` (thread `slot.tid` of process `slot.pid`) can still run.
    /// `false` once it has ended (its process died, exec replaced it, it was killed): a write
    /// section it left open will never close, and what it published is already in its lane.
    fn owner_alive(&mut self, slot: &SlotInfo) -> bool;

    /// Whether to stop waiting now (a second signal): the open sections become stragglers.
    fn cancelled(&mut self) -> bool;
}

/// The [`StopWatch`] of [`Registry::stop_accepting`]: every owner alive, never cancelled.
#[derive(Debug, Clone, Copy, Default)]
pub struct Patient;

impl StopWatch for Patient {
    fn owner_alive(&mut self, _slot: &SlotInfo) -> bool {
        true
    }

    fn cancelled(&mut self) -> bool {
        false
    }
}

/// A thread's lanes, as ring pools.
#[derive(Debug, Clone, Copy)]
pub struct Lanes<'a, B: Backend = StdBackend> {
    /// The index lane (32-byte ATF events).
    pub index: RingPool<'a, B>,
    /// The detail lane (ATF detail records, flight recorder).
    pub detail: RingPool<'a, B>,
}

/// A slot claimed by the calling thread: its index, serial, lanes and hot-path writer.
#[derive(Debug)]
pub struct Registration<'a, B: Backend = StdBackend> {
    /// Slot index.
    pub slot: u32,
    /// Registration serial.
    pub serial: u64,
    /// The slot's lanes, freshly initialised (this thread is their only producer).
    pub lanes: Lanes<'a, B>,
    /// The write-section guard of the stop handshake.
    pub writer: SlotWriter<'a, B>,
}

/// The producer's side of the stop handshake and its counters, for one slot.
pub struct SlotWriter<'a, B: Backend = StdBackend> {
    hot: &'a SlotHot<B>,
    accepting: &'a B::AtomicU32,
    fenced: bool,
}

impl<B: Backend> core::fmt::Debug for SlotWriter<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlotWriter")
            .field("fenced", &self.fenced)
            .finish_non_exhaustive()
    }
}

/// Single-writer increment: a Relaxed load and store (no locked instruction).
#[inline(always)]
fn bump<A: Atomic<u64>>(a: &A) {
    a.store(a.load(Relaxed).wrapping_add(1), Relaxed);
}

/// The events a slot's owner attempted, from its write-section sequence `in_write`: each event
/// enters one section (+1, odd) and leaves it (+1, even), refused or not, so a section still open
/// (a thread inside, or one that died there) counts too.
fn sections_entered(in_write: u64) -> u64 {
    in_write.div_ceil(2)
}

/// A write section [`SlotWriter::open`] entered: publish the event, then leave it with
/// [`SlotWriter::close`]. Only `open` makes one, so holding it proves the slot's sequence is odd
/// (this thread is its only writer): leaving is one increment. Dropping it without closing leaves
/// the section open, as a thread that dies inside it does: the stopper then waits for it (or
/// finds its owner dead).
#[must_use = "a write section stays open until it is closed"]
#[derive(Debug)]
pub struct WriteSection {
    _opened: (),
}

impl<B: Backend> SlotWriter<'_, B> {
    /// Enters a write section: counts the event as attempted, marks the slot "in write" and checks
    /// that events are still accepted. `false`: the event is dropped (counted under `shutdown`)
    /// and the section is already left. `true`: write the event, then call [`Self::end`].
    ///
    /// Must not be re-entered on the same slot (the agent's reentrancy guard sees to it).
    #[inline(always)]
    pub fn begin(&self) -> bool {
        self.enter(self.fenced).is_some()
    }

    /// [`Self::begin`], returning the open section (`None`: refused, counted, already left), for
    /// [`Self::close`]. Before entering, a fenced
    /// writer asks `still_fenced` whether it must keep its fence (see [`Self::set_fenced`]) and
    /// drops it for good when not; an unfenced one tests its flag once and calls nothing.
    #[inline(always)]
    pub fn open(&mut self, still_fenced: impl FnOnce() -> bool) -> Option<WriteSection> {
        if !self.fenced {
            return self.enter(false);
        }
        if still_fenced() {
            return self.enter(true);
        }
        self.fenced = false;
        self.enter(false)
    }

    /// [`Self::open`] for a writer its caller knows to be unfenced (it keeps track of
    /// [`Self::fenced`] itself): tests nothing before entering. On a fenced writer it would leave
    /// out the fence the stopper counts on.
    #[inline(always)]
    pub fn open_unfenced(&self) -> Option<WriteSection> {
        debug_assert!(!self.fenced, "open_unfenced on a fenced writer");
        self.enter(false)
    }

    /// The entry of [`Self::begin`] and [`Self::open`], with the producer barrier `fenced` chose.
    #[inline(always)]
    fn enter(&self, fenced: bool) -> Option<WriteSection> {
        let hot = self.hot;
        // Enter: the sequence becomes odd (single writer: a load and a store, no locked RMW).
        // Release, not Relaxed: the stopper may read this value instead of the previous section's
        // end, and must then see that section's event too (a later plain store does not continue
        // the earlier Release; pairs with the Acquire loads in `stop_accepting`). A plain `mov` on
        // x86.
        let entered = hot.in_write.load(Relaxed) | 1;
        hot.in_write.store(entered, Release);
        if fenced {
            // SeqCst fence: pairs with the stopper's fence in `stop_accepting` (Dekker: at least
            // one of us sees the other's store).
            B::fence(SeqCst);
        } else {
            // Compiler barrier only: the stopper's membarrier promotes it to a full barrier on
            // every CPU running this process (see `Handshake::Membarrier`).
            core::sync::atomic::compiler_fence(SeqCst);
        }
        if self.accepting.load(Relaxed) == ACCEPTING {
            return Some(WriteSection { _opened: () });
        }
        // Only while the session stops: laid out away from the writer's straight line.
        cold();
        bump(&hot.counters[C_SHUTDOWN]);
        // Release: pairs with the Acquire loads of `in_write` in `stop_accepting`.
        hot.in_write.store(entered.wrapping_add(1), Release);
        None
    }

    /// Whether events are still accepted, for a producer waiting inside its write section (for
    /// ring space): once this is false it should give up the event with [`Self::drop_for_shutdown`]
    /// and leave, so the stopper is not held up. Relaxed: a hint; the handshake's ordering comes
    /// from `begin`/`end`.
    #[inline(always)]
    pub fn still_accepting(&self) -> bool {
        self.accepting.load(Relaxed) == ACCEPTING
    }

    /// Whether the tracer is still stopping: acceptance stopped, and it is waiting for the write
    /// sections open at the stop, draining and syncing ([`Registry::end_stop`] ends it). A thread
    /// whose event was refused should then step aside for a moment (sleep): on a machine with
    /// more busy threads than CPUs, the threads the tracer waits for are preempted ones, which
    /// finish only once they get a CPU, and the tracer itself needs one. Relaxed: a hint.
    #[inline(always)]
    pub fn stop_settling(&self) -> bool {
        self.accepting.load(Relaxed) == SETTLING
    }

    /// Counts the current event, which the producer gave up inside its write section because
    /// acceptance stopped (its publication did not complete before the stop), as a `shutdown`
    /// drop. Call [`Self::end`] afterwards.
    #[inline]
    pub fn drop_for_shutdown(&self) {
        bump(&self.hot.counters[C_SHUTDOWN]);
    }

    /// Leaves the write section [`Self::begin`] entered. Release: pairs with the stopper's
    /// Acquire load of `in_write`, so the event just published is visible to the final drain.
    #[inline(always)]
    pub fn end(&self) {
        // Leave: the sequence becomes even again (we are its only writer).
        let seq = self.hot.in_write.load(Relaxed);
        self.hot.in_write.store((seq | 1).wrapping_add(1), Release);
    }

    /// Leaves the write section [`Self::open`] entered: the sequence, odd since (the section
    /// says so), becomes even again. Release: pairs with the stopper's Acquire load of
    /// `in_write`, so the event just published is visible to the final drain.
    #[inline(always)]
    pub fn close(&self, section: WriteSection) {
        let WriteSection { _opened: () } = section;
        let seq = self.hot.in_write.load(Relaxed);
        self.hot.in_write.store(seq.wrapping_add(1), Release);
    }

    /// Counts an event dropped because a hook ran inside a hook on this thread. Uses an atomic
    /// read-modify-write, so a signal handler interrupting another increment loses nothing.
    pub fn count_reentrant(&self) {
        self.hot.counters[C_REENTRANT].fetch_add(1, Relaxed);
    }

    /// Chooses the producer barrier: `true` for `fence(SeqCst)` (when the process could not
    /// register for membarrier, or the region says [`Handshake::Fence`]).
    pub fn set_fenced(&mut self, fenced: bool) {
        self.fenced = fenced;
    }

    /// Whether the producer barrier is a full fence.
    pub fn fenced(&self) -> bool {
        self.fenced
    }
}

/// Constants copied from the control block when the view is made (never re-read).
#[derive(Debug, Clone, Copy)]
struct Constants {
    geometry: Geometry,
    config_index: LaneConfig,
    config_detail: LaneConfig,
    wait_timeout_us: u32,
    stack_bytes: u32,
    detail_enabled: bool,
    library_calls: LibraryCalls,
    handshake: Handshake,
    clock: Clock,
    tracer_pid: u32,
}

/// A validated view of a region: the control block, the slots and the lanes. Cheap to copy.
///
/// Holds raw pointers only; all shared state is reached through atomics. The same view serves the
/// tracer (create, drain, stop) and the agent (register, write).
pub struct Registry<'a, B: Backend = StdBackend> {
    base: NonNull<u8>,
    k: Constants,
    _memory: PhantomData<(&'a [u8], B)>,
}

impl<B: Backend> Clone for Registry<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Registry<'_, B> {}

impl<B: Backend> core::fmt::Debug for Registry<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Registry")
            .field("capacity", &self.k.geometry.capacity)
            .field("handshake", &self.k.handshake)
            .finish_non_exhaustive()
    }
}

// SAFETY: the view reaches shared state only through atomics; the pointers are valid for 'a by the
// contract of `init`/`attach`.
unsafe impl<B: Backend> Send for Registry<'_, B> {}
// SAFETY: as above.
unsafe impl<B: Backend> Sync for Registry<'_, B> {}

/// The alignment a region's memory must have.
pub const REGION_ALIGN: usize = 4096;

fn check_memory(memory: NonNull<[u8]>, needed: usize) -> Result<(), RegistryError> {
    if (memory.cast::<u8>().as_ptr() as usize) % REGION_ALIGN != 0 {
        return Err(RegistryError::Misaligned {
            align: REGION_ALIGN,
        });
    }
    if memory.len() < needed {
        return Err(RegistryError::TooSmall {
            needed,
            got: memory.len(),
        });
    }
    Ok(())
}

impl<'a, B: Backend> Registry<'a, B> {
    /// Writes a new region into `memory`: the control block (accepting and registrations open,
    /// no triggers) and `capacity` free slots. Lanes are initialised by each claimer.
    ///
    /// # Safety
    /// `memory` must be valid for reads and writes for `'a`, aligned to [`REGION_ALIGN`], at least
    /// [`crate::layout_size`] bytes, zeroed or not, and not in use by anybody else during `init`.
    pub unsafe fn init(
        memory: NonNull<[u8]>,
        config: &RegionConfig,
        clock: &Clock,
    ) -> Result<Self, RegistryError> {
        let g = geometry::<B>(config)?;
        check_memory(memory, g.layout_size)?;
        let base = memory.cast::<u8>();
        let control = ControlBlock::<B> {
            magic: REGION_MAGIC,
            version: REGION_VERSION,
            layout_size: g.layout_size as u64,
            capacity: config.capacity,
            stack_bytes: config.stack_bytes,
            slots_offset: g.slots_offset as u64,
            slot_stride: g.slot_stride as u64,
            lanes_offset: g.lanes_offset as u64,
            lane_stride: g.lane_stride as u64,
            detail_offset: g.detail_offset as u64,
            index_rings: config.index.rings,
            detail_rings: config.detail.rings,
            index_ring_capacity: config.index.ring_capacity as u64,
            detail_ring_capacity: config.detail.ring_capacity as u64,
            wait_timeout_us: config.wait_timeout_us,
            handshake: match config.handshake {
                Handshake::Membarrier => HS_MEMBARRIER,
                Handshake::Fence => HS_FENCE,
            },
            features: if config.detail_enabled { F_DETAIL } else { 0 }
                | config.library_calls.encode(),
            tracer_pid: std::process::id(),
            clock_source: clock.encode_source(),
            clock_shift: clock.shift,
            clock_mult: clock.mult,
            tsc_hz: clock.tsc_hz,
            tsc_base: clock.tsc_base,
            ns_base: clock.ns_base,
            session: CachePadded(Session {
                accepting: B::AtomicU32::new(ACCEPTING),
                registrations_open: B::AtomicU32::new(1),
                trigger_count: B::AtomicU32::new(0),
                high_water: B::AtomicU32::new(0),
                serial: B::AtomicU64::new(0),
                recycled: B::AtomicU64::new(0),
            }),
            heartbeat: CachePadded(B::AtomicU64::new(0)),
            orphans: CachePadded(core::array::from_fn(|_| B::AtomicU64::new(0))),
            triggers: core::array::from_fn(|_| B::AtomicU64::new(0)),
            modules: CachePadded(crate::module_log::ModuleLine::new()),
        };
        // SAFETY: the caller gives exclusive, aligned memory of at least layout_size bytes (checked),
        // which covers the control block at offset 0.
        unsafe { base.cast::<ControlBlock<B>>().as_ptr().write(control) };
        let entry_size = core::mem::size_of::<crate::module_log::ModuleEntry<B>>();
        for i in 0..crate::module_log::MODULE_LOG_CAPACITY {
            // SAFETY: entry i lies inside the module log, inside the exclusive memory (the geometry
            // reserves MODULE_LOG_CAPACITY entries from the page-aligned modules_offset).
            unsafe {
                base.as_ptr()
                    .add(g.modules_offset + i * entry_size)
                    .cast::<crate::module_log::ModuleEntry<B>>()
                    .write(crate::module_log::ModuleEntry::new())
            };
        }
        for i in 0..g.capacity as usize {
            let slot = Slot::<B> {
                life: CachePadded(SlotLife {
                    state: B::AtomicU32::new(FREE),
                    pid: B::AtomicU32::new(0),
                    tid: B::AtomicU32::new(0),
                    image: B::AtomicU32::new(0),
                    serial: B::AtomicU64::new(0),
                    stack_lo: B::AtomicU64::new(0),
                    stack_hi: B::AtomicU64::new(0),
                }),
                hot: CachePadded(SlotHot {
                    in_write: B::AtomicU64::new(0),
                    counters: core::array::from_fn(|_| B::AtomicU64::new(0)),
                }),
            };
            // SAFETY: slot i lies inside the slot table, inside the exclusive memory; the stride is
            // the slot size, so slots do not overlap; 128-aligned because slots_offset is
            // page-aligned and the stride a multiple of 128.
            unsafe {
                base.as_ptr()
                    .add(g.slots_offset + i * g.slot_stride)
                    .cast::<Slot<B>>()
                    .write(slot)
            };
        }
        // SAFETY: just written; the caller's contract carries over.
        unsafe { Self::attach(memory) }
    }

    /// Validates the region in `memory` (magic, version, layout size, geometry) and returns a view.
    /// A wrong header is a [`RegistryError`], never undefined behaviour.
    ///
    /// # Safety
    /// `memory` must be valid for reads and writes for `'a` and hold a region written by
    /// [`Registry::init`] with the same backend (or garbage, which is reported).
    pub unsafe fn attach(memory: NonNull<[u8]>) -> Result<Self, RegistryError> {
        check_memory(memory, core::mem::size_of::<ControlBlock<B>>())?;
        let h = memory.cast::<ControlBlock<B>>().as_ptr();
        macro_rules! read {
            ($field:ident) => {
                // SAFETY: the control block lies inside `memory` (checked); plain integer fields,
                // any bit pattern is valid; read once, never trusted again.
                unsafe { core::ptr::addr_of!((*h).$field).read_volatile() }
            };
        }
        let magic = read!(magic);
        if magic != REGION_MAGIC {
            return Err(RegistryError::BadMagic { found: magic });
        }
        let version = read!(version);
        if version != REGION_VERSION {
            return Err(RegistryError::BadVersion {
                found: version,
                expected: REGION_VERSION,
            });
        }
        let layout = read!(layout_size);
        if layout > memory.len() as u64 {
            return Err(RegistryError::TooSmall {
                needed: layout as usize,
                got: memory.len(),
            });
        }
        let handshake = match read!(handshake) {
            HS_MEMBARRIER => Handshake::Membarrier,
            HS_FENCE => Handshake::Fence,
            other => {
                return Err(RegistryError::BadLayout(format!(
                    "unknown handshake mode {other}"
                )))
            }
        };
        let source = Clock::decode_source(read!(clock_source))
            .ok_or_else(|| RegistryError::BadLayout("unknown clock source".into()))?;
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let config = RegionConfig {
            capacity: read!(capacity),
            index: LaneConfig {
                rings: read!(index_rings),
                ring_capacity: to_usize(read!(index_ring_capacity)),
            },
            detail: LaneConfig {
                rings: read!(detail_rings),
                ring_capacity: to_usize(read!(detail_ring_capacity)),
            },
            wait_timeout_us: read!(wait_timeout_us),
            stack_bytes: read!(stack_bytes),
            detail_enabled: read!(features) & F_DETAIL != 0,
            handshake,
            library_calls: LibraryCalls::decode(read!(features)),
        };
        let g = geometry::<B>(&config)
            .map_err(|e| RegistryError::BadLayout(format!("header geometry: {e}")))?;
        if layout != g.layout_size as u64
            || read!(slots_offset) != g.slots_offset as u64
            || read!(slot_stride) != g.slot_stride as u64
            || read!(lanes_offset) != g.lanes_offset as u64
            || read!(lane_stride) != g.lane_stride as u64
            || read!(detail_offset) != g.detail_offset as u64
        {
            return Err(RegistryError::BadLayout(format!(
                "header says {layout} bytes, its geometry needs {}",
                g.layout_size
            )));
        }
        let clock = Clock {
            source,
            tsc_hz: read!(tsc_hz),
            tsc_base: read!(tsc_base),
            ns_base: read!(ns_base),
            mult: read!(clock_mult),
            shift: read!(clock_shift),
        };
        if clock.shift >= 64 {
            // Excluded here so that the drain converts with one plain shift (`Clock::tsc_to_ns`).
            return Err(RegistryError::BadLayout(format!(
                "clock shift {} is not below 64",
                clock.shift
            )));
        }
        if source == ClockSource::Tsc && clock.mult == 0 {
            return Err(RegistryError::BadLayout(
                "TSC clock without calibration".into(),
            ));
        }
        Ok(Registry {
            base: memory.cast(),
            k: Constants {
                geometry: g,
                config_index: config.index,
                config_detail: config.detail,
                wait_timeout_us: config.wait_timeout_us,
                stack_bytes: config.stack_bytes,
                detail_enabled: config.detail_enabled,
                library_calls: config.library_calls,
                handshake,
                clock,
                tracer_pid: read!(tracer_pid),
            },
            _memory: PhantomData,
        })
    }

    pub(crate) fn geometry(&self) -> &Geometry {
        &self.k.geometry
    }

    pub(crate) fn base_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub(crate) fn control(&self) -> &'a ControlBlock<B> {
        // SAFETY: validated by attach; valid for 'a; only atomics are accessed through it after
        // attach copied the constants.
        unsafe { self.base.cast::<ControlBlock<B>>().as_ref() }
    }

    fn session(&self) -> &'a Session<B> {
        &self.control().session.0
    }

    fn slot(&self, index: u32) -> Option<&'a Slot<B>> {
        let g = &self.k.geometry;
        if index >= g.capacity {
            return None;
        }
        // SAFETY: index < capacity, so the slot lies inside the validated slot table.
        Some(unsafe {
            &*self
                .base
                .as_ptr()
                .add(g.slots_offset + index as usize * g.slot_stride)
                .cast::<Slot<B>>()
        })
    }

    fn lane_memory(&self, index: u32) -> (NonNull<[u8]>, NonNull<[u8]>) {
        let g = &self.k.geometry;
        let lane = g.lanes_offset + index as usize * g.lane_stride;
        // SAFETY: callers pass index < capacity; both pools lie inside the lane, inside the region.
        let at = |off: usize| unsafe { NonNull::new_unchecked(self.base.as_ptr().add(off)) };
        (
            NonNull::slice_from_raw_parts(at(lane), g.index_len),
            NonNull::slice_from_raw_parts(at(lane + g.detail_offset), g.detail_len),
        )
    }

    /// The configuration the region was created with.
    pub fn config(&self) -> RegionConfig {
        RegionConfig {
            capacity: self.k.geometry.capacity,
            index: self.k.config_index,
            detail: self.k.config_detail,
            wait_timeout_us: self.k.wait_timeout_us,
            stack_bytes: self.k.stack_bytes,
            detail_enabled: self.k.detail_enabled,
            handshake: self.k.handshake,
            library_calls: self.k.library_calls,
        }
    }

    /// Which objects' library calls the agent records.
    pub fn library_calls(&self) -> LibraryCalls {
        self.k.library_calls
    }

    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.k.geometry.capacity
    }

    /// The region's size in bytes.
    pub fn layout_size(&self) -> usize {
        self.k.geometry.layout_size
    }

    /// Stack bytes per detail record.
    pub fn stack_bytes(&self) -> u32 {
        self.k.stack_bytes
    }

    /// Whether producers write detail records.
    pub fn detail_enabled(&self) -> bool {
        self.k.detail_enabled
    }

    /// The stop handshake's mode.
    pub fn handshake(&self) -> Handshake {
        self.k.handshake
    }

    /// The session clock.
    pub fn clock(&self) -> Clock {
        self.k.clock
    }

    /// Process id of the tracer that created the region.
    pub fn tracer_pid(&self) -> u32 {
        self.k.tracer_pid
    }

    // ---- session flags ------------------------------------------------------------------------

    /// Whether events are accepted (a snapshot).
    pub fn is_accepting(&self) -> bool {
        self.session().accepting.load(Relaxed) == ACCEPTING
    }

    /// Whether threads may still claim slots (a snapshot).
    pub fn registrations_open(&self) -> bool {
        self.session().registrations_open.load(Relaxed) != 0
    }

    /// Replaces the trigger address list (at most [`MAX_TRIGGERS`]): a thread that calls one of
    /// these functions marks its active detail ring for persistence.
    pub fn set_triggers(&self, addresses: &[u64]) -> Result<(), RegistryError> {
        if addresses.len() > MAX_TRIGGERS {
            return Err(RegistryError::BadConfig(format!(
                "{} trigger addresses: at most {MAX_TRIGGERS}",
                addresses.len()
            )));
        }
        let s = self.session();
        // Relaxed: shrinking first means a producer never reads an address being rewritten as valid
        // (a stale trigger for a moment is harmless).
        s.trigger_count.store(0, Relaxed);
        for (slot, &a) in self.control().triggers.iter().zip(addresses) {
            slot.store(a, Relaxed);
        }
        // Release: pairs with the Acquire in `trigger_count`, publishing the addresses.
        s.trigger_count.store(addresses.len() as u32, Release);
        Ok(())
    }

    /// Replaces the trigger functions, each as its code's `[start, end)` (at most
    /// [`MAX_TRIGGERS`] / 2): a thread that calls one of them marks its active detail ring for
    /// persistence. A range, not an address, because an entry-only hook (`mcount`, a patched
    /// sled) reports an address inside the function. Stored as consecutive pairs of the trigger
    /// list (see [`Self::trigger_range`]).
    pub fn set_trigger_ranges(&self, ranges: &[(u64, u64)]) -> Result<(), RegistryError> {
        let mut flat = [0u64; MAX_TRIGGERS];
        if ranges.len() * 2 > MAX_TRIGGERS {
            return Err(RegistryError::BadConfig(format!(
                "{} trigger functions: at most {}",
                ranges.len(),
                MAX_TRIGGERS / 2
            )));
        }
        for (i, &(start, end)) in ranges.iter().enumerate() {
            flat[2 * i] = start;
            flat[2 * i + 1] = end;
        }
        self.set_triggers(&flat[..ranges.len() * 2])
    }

    /// Number of trigger functions published with [`Self::set_trigger_ranges`].
    #[inline(always)]
    pub fn trigger_range_count(&self) -> usize {
        self.trigger_count() / 2
    }

    /// Trigger function `i`'s `[start, end)` (below [`Self::trigger_range_count`]).
    #[inline(always)]
    pub fn trigger_range(&self, i: usize) -> (u64, u64) {
        (self.trigger(2 * i), self.trigger(2 * i + 1))
    }

    /// Number of valid trigger addresses. Acquire: pairs with the Release in `set_triggers`.
    #[inline(always)]
    pub fn trigger_count(&self) -> usize {
        (self.session().trigger_count.load(Acquire) as usize).min(MAX_TRIGGERS)
    }

    /// Trigger address `i` (below [`Self::trigger_count`]).
    #[inline(always)]
    pub fn trigger(&self, i: usize) -> u64 {
        self.control().triggers[i % MAX_TRIGGERS].load(Relaxed)
    }

    /// The drain's heartbeat: call on every drain pass with the session clock's time.
    pub fn beat(&self, now_ns: u64) {
        // Relaxed: a liveness hint, not a publication.
        self.control().heartbeat.0.store(now_ns, Relaxed);
    }

    /// The drain's last beat (session clock nanoseconds; 0 before the first).
    pub fn heartbeat(&self) -> u64 {
        self.control().heartbeat.0.load(Relaxed)
    }

    // ---- slots, tracer side ---------------------------------------------------------------------

    /// One past the highest slot index ever claimed. Acquire: pairs with the claimer's Release
    /// update, so a slot below it that is ACTIVE has its identity written.
    pub fn high_water(&self) -> u32 {
        self.session()
            .high_water
            .load(Acquire)
            .min(self.k.geometry.capacity)
    }

    /// Slot `index`'s state and owner, as seen now.
    pub fn slot_info(&self, index: u32) -> Option<SlotInfo> {
        let slot = self.slot(index)?;
        // Acquire: pairs with the claimer's Release store of ACTIVE (identity and lanes written)
        // and the owner's Release store of EXITED (everything it published).
        let state = SlotState::decode(slot.life.0.state.load(Acquire));
        Some(SlotInfo {
            index,
            state,
            pid: slot.life.0.pid.load(Relaxed),
            tid: slot.life.0.tid.load(Relaxed),
            serial: slot.life.0.serial.load(Relaxed),
            image: slot.life.0.image.load(Relaxed),
        })
    }

    /// The slots that are active or exited (not yet recycled), scanning `0..high_water`.
    pub fn slots(&self) -> impl Iterator<Item = SlotInfo> + 'a {
        let me = *self;
        (0..self.high_water())
            .filter_map(move |i| me.slot_info(i))
            .filter(|s| matches!(s.state, SlotState::Active | SlotState::Exited))
    }

    /// Slot `index`'s lanes as ring pools. Only meaningful for an active or exited slot (the owner
    /// initialised them before publishing ACTIVE).
    pub fn lanes(&self, index: u32) -> Result<Lanes<'a, B>, RegistryError> {
        if index >= self.k.geometry.capacity {
            return Err(RegistryError::NoSuchSlot { index });
        }
        let (i, d) = self.lane_memory(index);
        // SAFETY: both ranges lie inside the region, valid for 'a; attach validates their headers.
        let index_pool = unsafe { RingPool::<B>::attach(i) }?;
        // SAFETY: as above.
        let detail_pool = unsafe { RingPool::<B>::attach(d) }?;
        Ok(Lanes {
            index: index_pool,
            detail: detail_pool,
        })
    }

    /// Slot `index`'s accounting (see [`ThreadCounts`] for when it is exact).
    pub fn counts(&self, index: u32) -> Result<ThreadCounts, RegistryError> {
        let slot = self
            .slot(index)
            .ok_or(RegistryError::NoSuchSlot { index })?;
        let lanes = self.lanes(index)?;
        let c = &slot.hot.0.counters;
        let (ip, dp) = (lanes.index.counters(), lanes.detail.counters());
        let reentrant = c[C_REENTRANT].load(Relaxed);
        Ok(ThreadCounts {
            attempted: sections_entered(slot.hot.0.in_write.load(Relaxed)) + reentrant,
            accepted: ip.accepted,
            ring_full: ip.dropped_full,
            ring_waits: ip.waits,
            shutdown: c[C_SHUTDOWN].load(Relaxed),
            reentrant,
            detail_accepted: dp.accepted,
            detail_ring_full: dp.dropped_full,
        })
    }

    /// The orphan counters (events of threads without a slot).
    pub fn orphan_counts(&self) -> OrphanCounts {
        let o = &self.control().orphans.0;
        OrphanCounts {
            attempted: o[O_ATTEMPTED].load(Relaxed),
            registry_full: o[O_REGISTRY_FULL].load(Relaxed),
            agent_setup: o[O_AGENT_SETUP].load(Relaxed),
            thread_teardown: o[O_TEARDOWN].load(Relaxed),
            shutdown: o[O_SHUTDOWN].load(Relaxed),
            waiting_threads: o[O_WAITING].load(Relaxed),
        }
    }

    /// Returns an exited slot to the free list, once the drain has emptied its lanes and read its
    /// counters, and dropped its consumers of them. The next claimer re-initialises the lanes.
    pub fn recycle(&self, index: u32) -> Result<(), RegistryError> {
        let slot = self
            .slot(index)
            .ok_or(RegistryError::NoSuchSlot { index })?;
        // Acquire: pairs with the owner's Release store of EXITED.
        if let Err(found) = slot
            .life
            .0
            .state
            .compare_exchange(EXITED, RECYCLING, Acquire, Relaxed)
        {
            return Err(RegistryError::NotExited {
                index,
                state: format!("{:?}", SlotState::decode(found)),
            });
        }
        // Release: pairs with the claimer's Acquire CAS FREE → CLAIMED, so our reads of the lanes
        // (the final drain) happen before its re-initialisation of them.
        slot.life.0.state.store(FREE, Release);
        // Release: pairs with the Acquire in `recycled_count` (a waiting thread retries).
        self.session().recycled.fetch_add(1, Release);
        Ok(())
    }

    /// Stops acceptance and waits (up to `timeout`) until no producer is inside a write section.
    /// When it returns without stragglers, every event a producer published is visible to the
    /// caller (the final drain) and every later event is counted as `shutdown`.
    /// [`Self::stop_accepting_with`] also stops waiting for dead threads and on request.
    pub fn stop_accepting(&self, timeout: Duration) -> StopReport {
        self.stop_accepting_with(timeout, &mut Patient)
    }

    /// [`Self::stop_accepting`], asking `watch` while it waits whether each thread it waits for
    /// still lives (a dead one's open section is reported in [`StopReport::dead`], not waited
    /// for) and whether to give up at once ([`StopReport::cancelled`]).
    ///
    /// One snapshot of the open sections is taken right after the stop and only those are waited
    /// for, so calling this once with the whole budget is what terminates on a busy machine;
    /// cancellation is how the caller cuts that one wait short.
    pub fn stop_accepting_with(&self, timeout: Duration, watch: &mut dyn StopWatch) -> StopReport {
        let stop = self.stop_now();
        let report = self.wait_stopped(stop, timeout, watch);
        self.end_stop();
        report
    }

    /// Tells the target's threads that the tracer's stop is over: threads whose events are
    /// refused stop pausing ([`SlotWriter::stop_settling`]). Until then, after [`Self::stop_now`],
    /// they pause on each refused event, leaving the CPUs to the tracer (which still drains and
    /// syncs) and to threads it waits for. [`Self::stop_accepting`] calls it itself.
    pub fn end_stop(&self) {
        // Relaxed: a hint for producers; acceptance stays stopped either way.
        self.session().accepting.store(STOPPED, Relaxed);
    }

    /// The first half of [`Self::stop_accepting_with`]: stops acceptance now (the flag and the
    /// barrier) and notes the write sections open at that instant, without waiting. Every event
    /// a producer begins after this is counted as `shutdown`; the events of the sections noted
    /// are accepted or not once [`Self::wait_stopped`] has seen those sections end. Lets the
    /// caller do something between the stop and the wait (stop its drain thread).
    pub fn stop_now(&self) -> OpenSections {
        // Relaxed store, then the SeqCst fence (and the membarrier): the Dekker pair of the fence
        // (or compiler barrier) in `SlotWriter::begin`.
        self.session().accepting.store(SETTLING, Relaxed);
        B::fence(SeqCst);
        if self.k.handshake == Handshake::Membarrier {
            crate::membarrier::global_barrier();
        }
        // Snapshot every slot's section sequence first, then wait for the sections that were
        // open at the snapshot. Sampling slot by slot after waiting for the previous one would let
        // threads re-enter (post-stop, bail-out) sections and be preempted inside them, turning
        // one scheduler period of waiting into one per slot.
        OpenSections(
            (0..self.high_water())
                .filter_map(|index| {
                    // Acquire: pairs with the Release stores of `in_write` in `SlotWriter` (entry,
                    // exit and bail-out): once a section we saw open has ended, its event is
                    // visible.
                    let seen = self.slot(index)?.hot.0.in_write.load(Acquire);
                    (seen & 1 == 1).then_some((index, seen))
                })
                .collect(),
        )
    }

    /// The second half of [`Self::stop_accepting_with`]: waits (up to `timeout`) for the sections
    /// [`Self::stop_now`] saw open, asking `watch` about dead owners and cancellation.
    pub fn wait_stopped(
        &self,
        open: OpenSections,
        timeout: Duration,
        watch: &mut dyn StopWatch,
    ) -> StopReport {
        let mut report = StopReport::default();
        let deadline = B::deadline_after(timeout.as_micros() as u64);
        let open = open.0;
        for (index, seen) in open {
            let Some(slot) = self.slot(index) else {
                continue;
            };
            // Acquire: pairs with the Release stores of `in_write` in `SlotWriter`, so a section
            // seen ended has its event visible.
            let ended = || slot.hot.0.in_write.load(Acquire) != seen;
            let mut step = 0u32;
            // Only the section we saw matters: one entered after the stop sees `accepting == 0`
            // and leaves at once, so a thread calling non-stop cannot keep us here.
            let left_open = loop {
                if report.cancelled || ended() {
                    break !ended();
                }
                // After the first short spin, and then every 16 waiting steps, ask about the
                // caller and the owner: a thread that died inside its section never leaves it.
                if step % 16 == 1 {
                    if watch.cancelled() {
                        report.cancelled = true;
                        continue;
                    }
                    if let Some(info) = self.slot_info(index).filter(|i| !watch.owner_alive(i)) {
                        // The owner's death is observed through the kernel (its exit, our system
                        // call), which orders its last stores before it: a section that ended
                        // just before the death reads as ended here.
                        if !ended() {
                            report.dead.push(info);
                        }
                        break false;
                    }
                }
                if !B::backoff(step, &deadline) {
                    break !ended();
                }
                step += 1;
            };
            if left_open {
                report.stragglers.extend(self.slot_info(index));
            }
        }
        report
    }

    /// Closes registrations and waits (up to `timeout`) until no claim is in flight. Afterwards no
    /// slot becomes ACTIVE, so the set of slots to drain is final.
    pub fn close_registrations(&self, timeout: Duration) -> Result<(), RegistryError> {
        self.session().registrations_open.store(0, Relaxed);
        // SeqCst fence: pairs with the claimer's fence in `register` (Dekker: the claimer sees the
        // closed flag, or we see its CLAIMED state). Registration is rare, so both sides fence.
        B::fence(SeqCst);
        let deadline = B::deadline_after(timeout.as_micros() as u64);
        let cap = self.k.geometry.capacity;
        for index in 0..cap {
            let Some(slot) = self.slot(index) else { break };
            let mut step = 0;
            // Acquire: pairs with the claimer's Release store of ACTIVE or FREE.
            while slot.life.0.state.load(Acquire) == CLAIMED {
                if !B::backoff(step, &deadline) {
                    return Err(RegistryError::ClaimInFlight { index });
                }
                step += 1;
            }
        }
        Ok(())
    }

    // ---- slots, agent side ----------------------------------------------------------------------

    /// Claims a free slot for thread `tid` of process `pid` and initialises its lanes.
    /// [`RegistryError::RegistryFull`]: no slot free now (retry when [`Self::recycled_count`]
    /// changes); [`RegistryError::RegistrationsClosed`]: the session is stopping.
    pub fn register(&self, pid: u32, tid: u32) -> Result<Registration<'a, B>, RegistryError> {
        self.register_in(pid, tid, 0)
    }

    /// [`Self::register`] for a thread of process image `image` (see [`Self::new_image`]).
    pub fn register_in(
        &self,
        pid: u32,
        tid: u32,
        image: u32,
    ) -> Result<Registration<'a, B>, RegistryError> {
        let s = self.session();
        if s.registrations_open.load(Relaxed) == 0 {
            return Err(RegistryError::RegistrationsClosed);
        }
        let cap = self.k.geometry.capacity;
        let start = tid % cap;
        let mut claimed = None;
        for k in 0..cap {
            let index = (start + k) % cap;
            let Some(slot) = self.slot(index) else { break };
            // Acquire: pairs with the tracer's Release store of FREE in `recycle` (its final reads
            // of the lanes happen before our re-initialisation).
            if slot.life.0.state.load(Relaxed) == FREE
                && slot
                    .life
                    .0
                    .state
                    .compare_exchange(FREE, CLAIMED, Acquire, Relaxed)
                    .is_ok()
            {
                claimed = Some((index, slot));
                break;
            }
        }
        let Some((index, slot)) = claimed else {
            return Err(RegistryError::RegistryFull { capacity: cap });
        };
        // SeqCst fence: pairs with the closer's fence in `close_registrations`.
        B::fence(SeqCst);
        if s.registrations_open.load(Relaxed) == 0 {
            // Release: pairs with the closer's Acquire load of the state.
            slot.life.0.state.store(FREE, Release);
            return Err(RegistryError::RegistrationsClosed);
        }
        let (i, d) = self.lane_memory(index);
        // SAFETY: we hold the slot CLAIMED, so nobody else touches its lanes: the tracer only makes
        // consumers of ACTIVE or EXITED slots and dropped its old ones before `recycle`. The ranges
        // lie inside the region and are page-aligned.
        let lanes = unsafe {
            RingPool::<B>::init(i, &self.config().index_pool()).and_then(|index_pool| {
                RingPool::<B>::init(d, &self.config().detail_pool()).map(|detail_pool| Lanes {
                    index: index_pool,
                    detail: detail_pool,
                })
            })
        };
        let lanes = match lanes {
            Ok(lanes) => lanes,
            Err(e) => {
                // Release: as above, give the slot back.
                slot.life.0.state.store(FREE, Release);
                return Err(e.into());
            }
        };
        let serial = s.serial.fetch_add(1, Relaxed) + 1;
        let life = &slot.life.0;
        life.pid.store(pid, Relaxed);
        life.tid.store(tid, Relaxed);
        life.image.store(image, Relaxed);
        life.serial.store(serial, Relaxed);
        let hot = &slot.hot.0;
        hot.in_write.store(0, Relaxed);
        for c in &hot.counters {
            c.store(0, Relaxed);
        }
        let mut hw = s.high_water.load(Relaxed);
        while hw <= index {
            // Release: pairs with the Acquire in `high_water` (the tracer's scan bound).
            match s
                .high_water
                .compare_exchange(hw, index + 1, Release, Relaxed)
            {
                Ok(_) => break,
                Err(now) => hw = now,
            }
        }
        // Release: pairs with the Acquire load in `slot_info`: identity, counters and lanes are
        // written before the tracer sees the slot ACTIVE.
        life.state.store(ACTIVE, Release);
        Ok(Registration {
            slot: index,
            serial,
            lanes,
            writer: SlotWriter {
                hot,
                accepting: &s.accepting,
                fenced: self.k.handshake == Handshake::Fence,
            },
        })
    }

    /// Records the owning thread's stack bounds `[lo, hi)` in its slot (for the tracer's
    /// information and crash analysis).
    pub fn set_stack_bounds(&self, index: u32, lo: u64, hi: u64) {
        if let Some(slot) = self.slot(index) {
            slot.life.0.stack_lo.store(lo, Relaxed);
            slot.life.0.stack_hi.store(hi, Relaxed);
        }
    }

    /// Releases the calling thread's slot at thread exit. The owner must not write the slot or its
    /// lanes afterwards. Release: pairs with the tracer's Acquire in `slot_info`/`recycle`, so all
    /// it published and counted is visible.
    pub fn exit(&self, index: u32) {
        if let Some(slot) = self.slot(index) {
            slot.life.0.state.store(EXITED, Release);
        }
    }

    /// Marks every ACTIVE or CLAIMED slot of process `pid` EXITED: called by a fresh process image
    /// (after `exec`) for the slots its previous image left behind. Returns how many.
    pub fn retire_pid(&self, pid: u32) -> u32 {
        let mut n = 0;
        for index in 0..self.high_water() {
            let Some(slot) = self.slot(index) else { break };
            if slot.life.0.pid.load(Relaxed) != pid {
                continue;
            }
            for from in [ACTIVE, CLAIMED] {
                // Release: as in `exit`; Acquire: its previous owner's writes, for the in_write reset.
                if slot
                    .life
                    .0
                    .state
                    .compare_exchange(from, EXITED, AcqRel, Relaxed)
                    .is_ok()
                {
                    // Close a section the old image left open (sequence back to even); an even
                    // sequence stays as it is (it counts the events attempted).
                    let seq = slot.hot.0.in_write.load(Relaxed);
                    if seq & 1 == 1 {
                        slot.hot.0.in_write.store(seq.wrapping_add(1), Release);
                    }
                    n += 1;
                }
            }
        }
        n
    }

    /// Counts an event of a thread without a slot.
    pub fn count_orphan(&self, reason: OrphanReason) {
        let o = &self.control().orphans.0;
        o[O_ATTEMPTED].fetch_add(1, Relaxed);
        let i = match reason {
            OrphanReason::RegistryFull => O_REGISTRY_FULL,
            OrphanReason::AgentSetup => O_AGENT_SETUP,
            OrphanReason::ThreadTeardown => O_TEARDOWN,
            OrphanReason::Shutdown => O_SHUTDOWN,
        };
        o[i].fetch_add(1, Relaxed);
    }

    /// Adjusts the gauge of threads waiting for a slot (+1 when a thread starts waiting, -1 when
    /// it gets a slot or gives up).
    pub fn waiting(&self, delta: i64) {
        self.control().orphans.0[O_WAITING].fetch_add(delta as u64, Relaxed);
    }

    /// How many slots were recycled so far: a thread waiting for a slot retries when it changes.
    /// Acquire: pairs with the Release in `recycle`.
    #[inline(always)]
    pub fn recycled_count(&self) -> u64 {
        self.session().recycled.load(Acquire)
    }
}

/// Marks the path that calls it as rarely taken, so the compiler lays that path out of the common
/// one's straight line (a call to a `#[cold]` function weighs its branch; inlined, it leaves no
/// code, so a hook's path that must call nothing may use it).
#[cold]
#[inline]
fn cold() {}
