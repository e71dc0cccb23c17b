//! The shared-memory layout of a region: control block, slot table, lanes.
//!
//! ```text
//! offset 0              ControlBlock   constants (written once), session line, heartbeat,
//!                                      orphan counters, trigger addresses, module log line
//! modules_offset        ModuleEntry × MODULE_LOG_CAPACITY  (256 bytes each, see `modules`)
//! slots_offset          Slot × capacity  (256 bytes each: lifecycle line + producer line)
//! lanes_offset          Lane × capacity  (lane_stride bytes each: index RingPool, detail RingPool)
//! ```
//!
//! Everything is `#[repr(C)]`, holds offsets and never pointers, and is pinned by compile-time
//! assertions on the production ([`StdBackend`]) instantiation: this is the ABI between the tracer
//! and the agent, which may come from different builds (the version catches that).

use modelsync::{Backend, StdBackend};
use ring::{CachePadded, FullPolicy, PoolConfig, RecordKind, RingPool};

use crate::RegistryError;

/// How the stop handshake orders a producer's "I am writing" against the stopper's "stop".
///
/// Both are the same Dekker pattern (producer: store `in_write`, barrier, load `accepting`;
/// stopper: clear `accepting`, barrier, wait for every odd `in_write` to change); they differ in who pays for the
/// barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Producers use a compiler barrier only (free); the stopper calls
    /// `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, which runs a full barrier on every CPU
    /// currently running a thread of a process registered for it (each agent registers its
    /// process). A process whose registration failed falls back to [`Handshake::Fence`] by itself.
    Membarrier,
    /// `fence(SeqCst)` on both sides (an `mfence` per event on the producer side).
    Fence,
}

/// `"TRG1"`: the first four bytes of a region.
pub const REGION_MAGIC: u32 = u32::from_le_bytes(*b"TRG1");
/// Layout version of the region. Bumped on any change of layout or protocol.
pub const REGION_VERSION: u32 = 3;
/// The most trigger addresses a region holds.
pub const MAX_TRIGGERS: usize = 64;
/// The most threads a region may be created for.
pub const MAX_CAPACITY: u32 = 4096;
/// The smallest ring [`RegionConfig::fit_to`] shrinks to: 64 index events, and room for the
/// largest detail record (a variable ring takes records up to half its size).
pub const MIN_FIT_RING: usize = 2 << 10;
/// The fewest threads a production region ([`crate::SharedRegion::create`]) is created for.
pub const MIN_CAPACITY: u32 = 64;
/// The most stack bytes a detail record may copy.
pub const MAX_STACK_BYTES: u32 = 512;
/// Stack bytes copied per detail record unless configured.
pub const DEFAULT_STACK_BYTES: u32 = 128;
/// Page size the lanes are aligned to (so each thread's lanes start on their own page).
pub(crate) const PAGE: usize = 4096;

/// Slot states (see [`crate::SlotState`]).
pub(crate) const FREE: u32 = 0;
pub(crate) const CLAIMED: u32 = 1;
pub(crate) const ACTIVE: u32 = 2;
pub(crate) const EXITED: u32 = 3;
pub(crate) const RECYCLING: u32 = 4;

/// Indices of the producer counters in [`SlotHot::counters`] (the events a slot's owner
/// attempted are counted by its write-section sequence, see [`SlotHot::in_write`]).
pub(crate) const C_SHUTDOWN: usize = 0;
pub(crate) const C_REENTRANT: usize = 1;
pub(crate) const SLOT_COUNTERS: usize = 2;

/// Indices of the orphan counters in [`ControlBlock::orphans`].
pub(crate) const O_ATTEMPTED: usize = 0;
pub(crate) const O_REGISTRY_FULL: usize = 1;
pub(crate) const O_TEARDOWN: usize = 2;
pub(crate) const O_SHUTDOWN: usize = 3;
pub(crate) const O_WAITING: usize = 4;
pub(crate) const O_AGENT_SETUP: usize = 5;
pub(crate) const ORPHAN_COUNTERS: usize = 6;

/// Handshake modes (see [`Handshake`]).
pub(crate) const HS_MEMBARRIER: u32 = 1;
pub(crate) const HS_FENCE: u32 = 2;

/// Clock sources (see [`crate::ClockSource`]).
pub(crate) const CLOCK_TSC: u32 = 1;
pub(crate) const CLOCK_BOOTTIME: u32 = 2;

/// Feature bits.
pub(crate) const F_DETAIL: u32 = 1;
/// Feature bits 1-2: which objects' library calls the agent traces (see [`LibraryCalls`]).
pub(crate) const F_LIBRARY_CALLS_SHIFT: u32 = 1;
pub(crate) const F_LIBRARY_CALLS_MASK: u32 = 3;

/// The control block at offset 0. Constant fields are written once by [`crate::Registry::init`]
/// and copied (validated) by [`crate::Registry::attach`]; the atomics are documented one by one.
#[repr(C)]
pub struct ControlBlock<B: Backend = StdBackend> {
    pub(crate) magic: u32,
    pub(crate) version: u32,
    pub(crate) layout_size: u64,
    pub(crate) capacity: u32,
    pub(crate) stack_bytes: u32,
    pub(crate) slots_offset: u64,
    pub(crate) slot_stride: u64,
    pub(crate) lanes_offset: u64,
    pub(crate) lane_stride: u64,
    pub(crate) detail_offset: u64,
    pub(crate) index_rings: u32,
    pub(crate) detail_rings: u32,
    pub(crate) index_ring_capacity: u64,
    pub(crate) detail_ring_capacity: u64,
    pub(crate) wait_timeout_us: u32,
    pub(crate) handshake: u32,
    pub(crate) features: u32,
    pub(crate) tracer_pid: u32,
    pub(crate) clock_source: u32,
    pub(crate) clock_shift: u32,
    pub(crate) clock_mult: u64,
    pub(crate) tsc_hz: u64,
    pub(crate) tsc_base: u64,
    pub(crate) ns_base: u64,
    /// Flags and allocators every producer reads; written by the tracer (flags) and by claimers
    /// (`high_water`, `serial`).
    pub(crate) session: CachePadded<Session<B>>,
    /// The drain's last beat, in clock nanoseconds (written by the tracer).
    pub(crate) heartbeat: CachePadded<B::AtomicU64>,
    /// Events of threads that hold no slot, by outcome (fetch_add by any producer).
    pub(crate) orphans: CachePadded<[B::AtomicU64; ORPHAN_COUNTERS]>,
    /// Trigger function addresses; `session.trigger_count` says how many are valid.
    pub(crate) triggers: [B::AtomicU64; MAX_TRIGGERS],
    /// The module log's allocators and acknowledgement (see [`crate::modules`]).
    pub(crate) modules: CachePadded<crate::module_log::ModuleLine<B>>,
}

/// The session line.
#[repr(C)]
pub(crate) struct Session<B: Backend> {
    /// 1 while producers may publish events. Cleared by the stopper (Dekker with `in_write`).
    pub(crate) accepting: B::AtomicU32,
    /// 1 while threads may claim slots. Cleared by the closer (Dekker with the CLAIMED state).
    pub(crate) registrations_open: B::AtomicU32,
    /// Number of valid trigger addresses.
    pub(crate) trigger_count: B::AtomicU32,
    /// One past the highest slot index ever claimed: the tracer scans `0..high_water`.
    pub(crate) high_water: B::AtomicU32,
    /// Registration serial numbers, unique per claim (tells a reused slot from its predecessor).
    pub(crate) serial: B::AtomicU64,
    /// Slots returned to FREE so far: a thread waiting for a slot retries when this changes.
    pub(crate) recycled: B::AtomicU64,
}

/// One thread slot: 256 bytes, two 128-byte lines.
#[repr(C)]
pub struct Slot<B: Backend = StdBackend> {
    pub(crate) life: CachePadded<SlotLife<B>>,
    pub(crate) hot: CachePadded<SlotHot<B>>,
}

/// The lifecycle line: state, identity.
#[repr(C)]
pub(crate) struct SlotLife<B: Backend> {
    /// FREE → CLAIMED (claimer CAS) → ACTIVE (claimer) → EXITED (owner) → RECYCLING → FREE
    /// (tracer). CLAIMED → FREE when registrations closed under the claimer.
    pub(crate) state: B::AtomicU32,
    pub(crate) pid: B::AtomicU32,
    pub(crate) tid: B::AtomicU32,
    /// The process image the owner runs in (see [`crate::Registry::new_image`]).
    pub(crate) image: B::AtomicU32,
    pub(crate) serial: B::AtomicU64,
    /// Stack bounds `[lo, hi)` of the owning thread, for safe stack copies (agent-private meaning).
    pub(crate) stack_lo: B::AtomicU64,
    pub(crate) stack_hi: B::AtomicU64,
}

/// The producer line: written only by the owning thread.
#[repr(C)]
pub(crate) struct SlotHot<B: Backend> {
    /// Write-section sequence: odd while the owner is inside a write section (between `begin`
    /// and `end`), incremented on entry and on exit. The stopper waits only until an odd value it
    /// saw *changes*: a section entered later sees acceptance stopped and leaves at once. Every
    /// event the owner attempts opens one section, so it also counts them: `(in_write + 1) / 2`
    /// (one section open counts), which spares the hot path a counter of its own. 64 bits: it
    /// never wraps.
    pub(crate) in_write: B::AtomicU64,
    pub(crate) counters: [B::AtomicU64; SLOT_COUNTERS],
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    type C = ControlBlock<StdBackend>;
    assert!(offset_of!(C, magic) == 0);
    assert!(offset_of!(C, version) == 4);
    assert!(offset_of!(C, layout_size) == 8);
    assert!(offset_of!(C, capacity) == 16);
    assert!(offset_of!(C, slots_offset) == 24);
    assert!(offset_of!(C, index_ring_capacity) == 72);
    assert!(offset_of!(C, clock_mult) == 112);
    assert!(offset_of!(C, ns_base) == 136);
    assert!(offset_of!(C, session) == 256);
    assert!(offset_of!(C, heartbeat) == 384);
    assert!(offset_of!(C, orphans) == 512);
    assert!(offset_of!(C, triggers) == 640);
    assert!(offset_of!(C, modules) == 1152);
    assert!(size_of::<C>() == 1280);
    assert!(align_of::<C>() == 128);
    type S = Slot<StdBackend>;
    assert!(offset_of!(S, life) == 0);
    assert!(offset_of!(S, hot) == 128);
    assert!(size_of::<S>() == 256);
    assert!(offset_of!(SlotLife<StdBackend>, image) == 12);
    assert!(offset_of!(SlotLife<StdBackend>, serial) == 16);
    assert!(offset_of!(SlotHot<StdBackend>, counters) == 8);
};

/// Shape of one lane (a pool of rings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneConfig {
    /// Rings in the pool (2 to 1024).
    pub rings: u32,
    /// Data bytes per ring (a power of two).
    pub ring_capacity: usize,
}

/// Everything a region is created from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionConfig {
    /// Thread slots (at least [`MIN_CAPACITY`] for [`crate::SharedRegion::create`]).
    pub capacity: u32,
    /// The index lane of each thread (32-byte records, bounded wait when full).
    pub index: LaneConfig,
    /// The detail lane of each thread (variable records, flight recorder: drops when full).
    pub detail: LaneConfig,
    /// Longest wait of a producer whose index rings are all full, in microseconds.
    pub wait_timeout_us: u32,
    /// Stack bytes per detail record (0..=[`MAX_STACK_BYTES`]).
    pub stack_bytes: u32,
    /// Whether producers write detail records.
    pub detail_enabled: bool,
    /// How the stop handshake orders producers (see [`Handshake`]).
    pub handshake: Handshake,
    /// Which objects' calls into shared libraries the agent records (through their GOT).
    pub library_calls: LibraryCalls,
}

/// Which objects' calls into shared libraries (through their GOT entries) the agent records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LibraryCalls {
    /// None: only instrumented functions are recorded.
    #[default]
    None,
    /// Calls made by the main executable.
    Main,
    /// Calls made by every loaded object (but the agent and the dynamic loader).
    All,
}

impl LibraryCalls {
    pub(crate) fn encode(self) -> u32 {
        let v = match self {
            LibraryCalls::None => 0,
            LibraryCalls::Main => 1,
            LibraryCalls::All => 2,
        };
        v << F_LIBRARY_CALLS_SHIFT
    }

    pub(crate) fn decode(features: u32) -> Self {
        match (features >> F_LIBRARY_CALLS_SHIFT) & F_LIBRARY_CALLS_MASK {
            1 => LibraryCalls::Main,
            2 => LibraryCalls::All,
            _ => LibraryCalls::None,
        }
    }
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig {
            capacity: 256,
            index: LaneConfig {
                rings: 4,
                ring_capacity: 64 << 10,
            },
            detail: LaneConfig {
                rings: 4,
                ring_capacity: 64 << 10,
            },
            wait_timeout_us: 50_000,
            stack_bytes: DEFAULT_STACK_BYTES,
            detail_enabled: true,
            handshake: Handshake::Membarrier,
            library_calls: LibraryCalls::None,
        }
    }
}

impl RegionConfig {
    /// The index lane's pool configuration.
    pub fn index_pool(&self) -> PoolConfig {
        PoolConfig {
            rings: self.index.rings,
            ring_capacity: self.index.ring_capacity,
            kind: RecordKind::Fixed(32),
            policy: FullPolicy::Wait {
                timeout_us: self.wait_timeout_us,
            },
        }
    }

    /// This configuration shrunk to fit a region of at most `max_bytes` (a file-size limit: a
    /// memfd's size counts against `RLIMIT_FSIZE`): first fewer thread slots, down to
    /// [`MIN_CAPACITY`], then smaller rings, down to [`MIN_FIT_RING`], then two rings per lane.
    /// Unchanged when it fits;
    /// `None` when even the smallest does not.
    pub fn fit_to(&self, max_bytes: u64) -> Option<RegionConfig> {
        let fits = |c: &RegionConfig| layout_size(c).is_ok_and(|n| n as u64 <= max_bytes);
        let mut config = self.clone();
        if fits(&config) {
            return Some(config);
        }
        loop {
            // The most slots that fit with these rings (the size grows with the slot count).
            let (mut lo, mut hi) = (MIN_CAPACITY.min(config.capacity), config.capacity);
            config.capacity = lo;
            if fits(&config) {
                while lo < hi {
                    let mid = lo + (hi - lo).div_ceil(2);
                    config.capacity = mid;
                    if fits(&config) {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                config.capacity = lo;
                return Some(config);
            }
            config.capacity = self.capacity;
            let smaller = |lane: &mut LaneConfig| {
                if lane.ring_capacity > MIN_FIT_RING {
                    lane.ring_capacity /= 2;
                    true
                } else {
                    false
                }
            };
            let shrunk_index = smaller(&mut config.index);
            let shrunk_detail = smaller(&mut config.detail);
            if !shrunk_index && !shrunk_detail {
                // Last, fewer rings per lane (two keep one filling while one drains).
                let fewer = |lane: &mut LaneConfig| {
                    let had = lane.rings;
                    lane.rings = lane.rings.min(2);
                    had != lane.rings
                };
                let fewer_index = fewer(&mut config.index);
                let fewer_detail = fewer(&mut config.detail);
                if !fewer_index && !fewer_detail {
                    return None;
                }
            }
        }
    }

    /// The detail lane's pool configuration.
    pub fn detail_pool(&self) -> PoolConfig {
        PoolConfig {
            rings: self.detail.rings,
            ring_capacity: self.detail.ring_capacity,
            kind: RecordKind::Variable,
            policy: FullPolicy::DropNewest,
        }
    }
}

/// Offsets derived from a configuration: the single source of truth for where things are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) capacity: u32,
    pub(crate) modules_offset: usize,
    pub(crate) slots_offset: usize,
    pub(crate) slot_stride: usize,
    pub(crate) lanes_offset: usize,
    pub(crate) lane_stride: usize,
    pub(crate) detail_offset: usize,
    pub(crate) index_len: usize,
    pub(crate) detail_len: usize,
    pub(crate) layout_size: usize,
}

fn lane_ok(lane: &LaneConfig, what: &str) -> Result<(), RegistryError> {
    let cap = lane.ring_capacity;
    if !(2..=1024).contains(&lane.rings) || cap < 256 || !cap.is_power_of_two() || cap > 1 << 30 {
        return Err(RegistryError::BadConfig(format!(
            "{what} lane of {} rings of {cap} bytes: use 2 to 1024 rings of a power of two \
             between 256 B and 1 GiB",
            lane.rings
        )));
    }
    Ok(())
}

pub(crate) fn geometry<B: Backend>(config: &RegionConfig) -> Result<Geometry, RegistryError> {
    if config.capacity == 0 || config.capacity > MAX_CAPACITY {
        return Err(RegistryError::BadConfig(format!(
            "capacity of {} threads: use 1 to {MAX_CAPACITY}",
            config.capacity
        )));
    }
    if config.stack_bytes > MAX_STACK_BYTES {
        return Err(RegistryError::BadConfig(format!(
            "{} stack bytes: use 0 to {MAX_STACK_BYTES}",
            config.stack_bytes
        )));
    }
    lane_ok(&config.index, "index")?;
    lane_ok(&config.detail, "detail")?;
    let capacity = config.capacity as usize;
    let modules_offset = core::mem::size_of::<ControlBlock<B>>().next_multiple_of(PAGE);
    let slots_offset = (modules_offset
        + crate::module_log::MODULE_LOG_CAPACITY
            * core::mem::size_of::<crate::module_log::ModuleEntry<B>>())
    .next_multiple_of(PAGE);
    let slot_stride = core::mem::size_of::<Slot<B>>();
    let lanes_offset = (slots_offset + capacity * slot_stride).next_multiple_of(PAGE);
    let index_len = RingPool::<B>::layout_size(&config.index_pool());
    let detail_len = RingPool::<B>::layout_size(&config.detail_pool());
    let detail_offset = index_len.next_multiple_of(PAGE);
    let lane_stride = (detail_offset + detail_len).next_multiple_of(PAGE);
    Ok(Geometry {
        capacity: config.capacity,
        modules_offset,
        slots_offset,
        slot_stride,
        lanes_offset,
        lane_stride,
        detail_offset,
        index_len,
        detail_len,
        layout_size: lanes_offset + capacity * lane_stride,
    })
}

/// The region size a configuration needs, in bytes.
pub fn layout_size(config: &RegionConfig) -> Result<usize, RegistryError> {
    geometry::<StdBackend>(config).map(|g| g.layout_size)
}
