//! A lane: a pool of rings with an active ring, a submit queue and a free queue.
//!
//! Layout (all offsets from the start of the pool's memory, each part aligned to [`Ring::ALIGN`]):
//!
//! ```text
//! PoolHeader      magic, version, layout_size, geometry, policy        (written once)
//!                 active ring id                                        (producer's cache line)
//!                 producer counters: accepted, dropped_full, swaps, waits  (producer's cache line;
//!                 accepted by variable-size records only, see `RingPool::counters`)
//! submit queue    a fixed-record ring of u32 ring ids, producer -> consumer
//! free queue      a fixed-record ring of u32 ring ids, consumer -> producer
//! ring 0 .. n-1   the rings of the lane
//! ```
//!
//! The producer writes the active ring. When it is full and a free ring is available, the producer
//! submits the full ring and makes the free one active (swap-on-full). The consumer takes submitted
//! rings in order, consumes each completely, and returns it to the free queue; it can also read the
//! committed prefix of the active ring (for the periodic drain and the final flush). The producer
//! never writes consumer state (tails, the free queue's head) and the consumer never writes producer
//! state (heads, the active id, the counters, the submit queue's head).
//!
//! Order: the consumer delivers bytes in exactly the order the producer committed them. Submitted
//! rings precede the active ring; after reading the active id the consumer re-checks the submit
//! queue, so a swap that happened meanwhile is taken in order, and it never reads in place a ring
//! it already took off the submit queue (a stale active id, see [`PoolConsumer::drain`]).

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::ring::{check_memory, Consumer, Full, Producer, RecordKind, Ring};
use crate::{CachePadded, RingError};
use modelsync::{Atomic, Backend, StdBackend};

/// `"RPL1"`: the first four bytes of every pool header.
pub const POOL_MAGIC: u32 = u32::from_le_bytes(*b"RPL1");
/// Layout version of the pool header.
pub const POOL_VERSION: u32 = 1;
/// The most rings a pool may have.
pub const MAX_RINGS: u32 = 1024;

/// What the producer does when the active ring is full and no free ring is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Wait up to this many microseconds for the consumer to free space (lossless while the consumer
    /// is alive). After a wait times out the producer assumes the consumer is gone and drops without
    /// waiting until space appears again, so a dead consumer never stalls the producer for long.
    Wait {
        /// The longest single wait, in microseconds.
        timeout_us: u32,
    },
    /// Drop the new record at once and count it.
    DropNewest,
}

impl FullPolicy {
    /// The default: wait up to 50 ms.
    pub const DEFAULT: FullPolicy = FullPolicy::Wait { timeout_us: 50_000 };

    fn encode(self) -> (u32, u32) {
        match self {
            FullPolicy::Wait { timeout_us } => (1, timeout_us),
            FullPolicy::DropNewest => (2, 0),
        }
    }

    fn decode(code: u32, timeout_us: u32) -> Option<Self> {
        match code {
            1 => Some(FullPolicy::Wait { timeout_us }),
            2 => Some(FullPolicy::DropNewest),
            _ => None,
        }
    }
}

impl Default for FullPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The shape of a pool: how many rings, how big, what records, which full-ring policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Number of rings (2 to [`MAX_RINGS`]).
    pub rings: u32,
    /// Data area of each ring in bytes (a power of two).
    pub ring_capacity: usize,
    /// Record kind of every ring.
    pub kind: RecordKind,
    /// What the producer does when every ring is full.
    pub policy: FullPolicy,
}

/// Counters the producer keeps in the pool header (single writer; read by anyone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounters {
    /// Records written into a ring.
    pub accepted: u64,
    /// Records dropped because every ring was full (after the wait, under [`FullPolicy::Wait`]).
    pub dropped_full: u64,
    /// Rings submitted to the consumer by swap-on-full.
    pub swaps: u64,
    /// Times the producer had to wait for the consumer.
    pub waits: u64,
}

impl PoolCounters {
    /// Records the producer attempted: accepted + dropped.
    pub fn attempted(&self) -> u64 {
        self.accepted + self.dropped_full
    }
}

/// The pool header. Field docs say who writes what.
#[repr(C)]
pub struct PoolHeader<B: Backend = StdBackend> {
    magic: u32,
    version: u32,
    layout_size: u64,
    rings: u32,
    record_size: u32,
    ring_capacity: u64,
    policy: u32,
    wait_timeout_us: u32,
    /// Offset of the submit queue, then the free queue, then ring 0; each ring `ring_stride` apart.
    submit_offset: u64,
    free_offset: u64,
    rings_offset: u64,
    ring_stride: u64,
    /// The active ring's id. Written only by the producer (Release, after submitting the old one).
    active: CachePadded<B::AtomicU32>,
    /// Producer counters. Written only by the producer (Relaxed: read after a handshake, or as
    /// statistics that may lag).
    counters: CachePadded<[B::AtomicU64; 4]>,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    type H = PoolHeader<StdBackend>;
    assert!(offset_of!(H, magic) == 0);
    assert!(offset_of!(H, layout_size) == 8);
    assert!(offset_of!(H, rings) == 16);
    assert!(offset_of!(H, ring_capacity) == 24);
    assert!(offset_of!(H, submit_offset) == 40);
    assert!(offset_of!(H, active) == 128);
    assert!(offset_of!(H, counters) == 256);
    assert!(size_of::<H>() == 384);
};

const ACCEPTED: usize = 0;
const DROPPED_FULL: usize = 1;
const SWAPS: usize = 2;
const WAITS: usize = 3;

/// Geometry derived from a config; the single source of truth for offsets.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    queue_capacity: usize,
    submit_offset: usize,
    free_offset: usize,
    rings_offset: usize,
    ring_stride: usize,
    layout_size: usize,
}

fn align_up(n: usize, align: usize) -> usize {
    n.next_multiple_of(align)
}

fn geometry<B: Backend>(rings: u32, ring_capacity: usize) -> Geometry {
    let align = Ring::<B>::ALIGN;
    // Queues hold u32 ids; a capacity of at least `rings` ids means a push never fails in a
    // well-behaved pool (every id is in exactly one place: active, submit queue or free queue).
    let queue_capacity = (rings as usize * 4).next_power_of_two().max(16);
    let queue_size = align_up(Ring::<B>::layout_size(queue_capacity), align);
    let submit_offset = align_up(core::mem::size_of::<PoolHeader<B>>(), align);
    let free_offset = submit_offset + queue_size;
    let rings_offset = free_offset + queue_size;
    let ring_stride = align_up(Ring::<B>::layout_size(ring_capacity), align);
    Geometry {
        queue_capacity,
        submit_offset,
        free_offset,
        rings_offset,
        ring_stride,
        layout_size: rings_offset + ring_stride * rings as usize,
    }
}

/// A validated view of a ring pool in caller-provided memory. Cheap to copy.
pub struct RingPool<'a, B: Backend = StdBackend> {
    header: NonNull<PoolHeader<B>>,
    submit: Ring<'a, B>,
    free: Ring<'a, B>,
    rings: NonNull<u8>,
    ring_stride: usize,
    count: u32,
    /// The rings' record size, 0 for variable-size records.
    record_size: u32,
    policy: FullPolicy,
    _memory: PhantomData<&'a [u8]>,
}

impl<B: Backend> Clone for RingPool<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for RingPool<'_, B> {}

impl<B: Backend> core::fmt::Debug for RingPool<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RingPool")
            .field("rings", &self.count)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

// SAFETY: a pool view only reaches shared state through atomics and the ring protocol; the pointers
// are valid for 'a by the contract of `init`/`attach`.
unsafe impl<B: Backend> Send for RingPool<'_, B> {}
// SAFETY: as above.
unsafe impl<B: Backend> Sync for RingPool<'_, B> {}

impl<'a, B: Backend> RingPool<'a, B> {
    /// The alignment the pool's memory must have.
    pub const ALIGN: usize = Ring::<B>::ALIGN;

    /// Bytes of memory a pool with this configuration occupies.
    pub fn layout_size(config: &PoolConfig) -> usize {
        geometry::<B>(config.rings, config.ring_capacity).layout_size
    }

    /// Writes a new pool into `memory`: ring 0 active, every other ring in the free queue.
    ///
    /// # Safety
    /// `memory` must be valid for reads and writes for `'a`, aligned to [`RingPool::ALIGN`], of at
    /// least [`RingPool::layout_size`] bytes, and not in use by anybody else while `init` runs.
    /// Afterwards at most one [`PoolProducer`] and one [`PoolConsumer`] may exist at a time, across
    /// all processes sharing the memory.
    pub unsafe fn init(memory: NonNull<[u8]>, config: &PoolConfig) -> Result<Self, RingError> {
        if !(2..=MAX_RINGS).contains(&config.rings) {
            return Err(RingError::BadLayout {
                what: "ring pool",
                detail: format!("{} rings; a pool has 2 to {MAX_RINGS}", config.rings),
            });
        }
        let g = geometry::<B>(config.rings, config.ring_capacity);
        check_memory::<B>(memory, g.layout_size)?;
        let base = memory.cast::<u8>();
        let sub = |offset: usize, len: usize| {
            // SAFETY: every part lies inside [0, layout_size), checked against memory.len() above.
            let ptr = unsafe { base.as_ptr().add(offset) };
            NonNull::slice_from_raw_parts(NonNull::new(ptr).unwrap_or(base), len)
        };
        let queue_len = Ring::<B>::layout_size(g.queue_capacity);
        // SAFETY: each part (queues, rings) is a distinct, aligned sub-range of the memory the
        // caller gave us exclusively.
        unsafe {
            Ring::<B>::init(
                sub(g.submit_offset, queue_len),
                g.queue_capacity,
                RecordKind::Fixed(4),
            )
        }?;
        // SAFETY: as above.
        let free = unsafe {
            Ring::<B>::init(
                sub(g.free_offset, queue_len),
                g.queue_capacity,
                RecordKind::Fixed(4),
            )
        }?;
        for i in 0..config.rings as usize {
            let ring_len = Ring::<B>::layout_size(config.ring_capacity);
            // SAFETY: as above.
            unsafe {
                Ring::<B>::init(
                    sub(g.rings_offset + i * g.ring_stride, ring_len),
                    config.ring_capacity,
                    config.kind,
                )
            }?;
        }
        // Every ring but ring 0 starts free.
        // SAFETY: nobody else uses the memory yet, so this is the only producer of the free queue.
        let mut free_producer = unsafe { free.producer() };
        for id in 1..config.rings {
            free_producer
                .push(&id.to_le_bytes())
                .map_err(|Full| RingError::Corrupt {
                    detail: "free queue too small".into(),
                })?;
        }
        let (policy, wait_timeout_us) = config.policy.encode();
        let header = PoolHeader::<B> {
            magic: POOL_MAGIC,
            version: POOL_VERSION,
            layout_size: g.layout_size as u64,
            rings: config.rings,
            record_size: match config.kind {
                RecordKind::Fixed(n) => n,
                RecordKind::Variable => 0,
            },
            ring_capacity: config.ring_capacity as u64,
            policy,
            wait_timeout_us,
            submit_offset: g.submit_offset as u64,
            free_offset: g.free_offset as u64,
            rings_offset: g.rings_offset as u64,
            ring_stride: g.ring_stride as u64,
            active: CachePadded(B::AtomicU32::new(0)),
            counters: CachePadded(core::array::from_fn(|_| B::AtomicU64::new(0))),
        };
        // SAFETY: the header range [0, size_of header) is inside the exclusive memory and aligned.
        unsafe { base.cast::<PoolHeader<B>>().as_ptr().write(header) };
        // SAFETY: just initialised; the caller's contract carries over.
        unsafe { Self::attach(memory) }
    }

    /// Validates a pool in `memory` (magic, version, geometry, each ring's header) and returns a
    /// view. A wrong header is an error, never undefined behaviour.
    ///
    /// # Safety
    /// As for [`Ring::attach`]: `memory` valid for reads and writes for `'a`; at most one producer
    /// and one consumer of the pool at a time, across processes.
    pub unsafe fn attach(memory: NonNull<[u8]>) -> Result<Self, RingError> {
        check_memory::<B>(memory, core::mem::size_of::<PoolHeader<B>>())?;
        let header = memory.cast::<PoolHeader<B>>();
        let h = header.as_ptr();
        macro_rules! read {
            ($field:ident) => {
                // SAFETY: the header lies inside `memory` (checked); plain integer fields, any bit
                // pattern is a valid value; read once, never trusted again.
                unsafe { core::ptr::addr_of!((*h).$field).read_volatile() }
            };
        }
        let magic = read!(magic);
        if magic != POOL_MAGIC {
            return Err(RingError::BadMagic {
                what: "ring pool",
                found: magic,
            });
        }
        let version = read!(version);
        if version != POOL_VERSION {
            return Err(RingError::BadVersion {
                what: "ring pool",
                found: version,
                expected: POOL_VERSION,
            });
        }
        let count = read!(rings);
        let capacity = read!(ring_capacity);
        let bad = |detail: String| RingError::BadLayout {
            what: "ring pool",
            detail,
        };
        if !(2..=MAX_RINGS).contains(&count) || capacity > (1 << 40) {
            return Err(bad(format!("{count} rings of {capacity} bytes")));
        }
        let g = geometry::<B>(count, capacity as usize);
        let layout_size = read!(layout_size);
        if layout_size != g.layout_size as u64
            || layout_size > memory.len() as u64
            || read!(submit_offset) != g.submit_offset as u64
            || read!(free_offset) != g.free_offset as u64
            || read!(rings_offset) != g.rings_offset as u64
            || read!(ring_stride) != g.ring_stride as u64
        {
            return Err(bad(format!(
                "header says {layout_size} bytes, geometry needs {}, memory has {}",
                g.layout_size,
                memory.len()
            )));
        }
        let policy = FullPolicy::decode(read!(policy), read!(wait_timeout_us))
            .ok_or_else(|| bad("unknown full-ring policy".into()))?;
        let record_size = read!(record_size);
        let base = memory.cast::<u8>();
        let part = |offset: usize, len: usize| {
            // SAFETY: offsets come from `geometry`, which stays inside layout_size <= memory.len().
            let ptr = unsafe { base.as_ptr().add(offset) };
            NonNull::slice_from_raw_parts(NonNull::new(ptr).unwrap_or(base), len)
        };
        let queue_len = Ring::<B>::layout_size(g.queue_capacity);
        // SAFETY: sub-ranges of the caller's valid memory; contract carried over.
        let submit = unsafe { Ring::<B>::attach(part(g.submit_offset, queue_len)) }?;
        // SAFETY: as above.
        let free = unsafe { Ring::<B>::attach(part(g.free_offset, queue_len)) }?;
        for q in [&submit, &free] {
            if q.kind() != RecordKind::Fixed(4) || q.capacity() != g.queue_capacity {
                return Err(bad("queue geometry does not match the pool".into()));
            }
        }
        let ring_len = Ring::<B>::layout_size(capacity as usize);
        for i in 0..count as usize {
            // SAFETY: as above.
            let ring =
                unsafe { Ring::<B>::attach(part(g.rings_offset + i * g.ring_stride, ring_len)) }?;
            let expected = match record_size {
                0 => RecordKind::Variable,
                n => RecordKind::Fixed(n),
            };
            if ring.kind() != expected || ring.capacity() as u64 != capacity {
                return Err(bad(format!("ring {i} does not match the pool's geometry")));
            }
        }
        // SAFETY: rings_offset < layout_size <= memory.len().
        let rings = unsafe { NonNull::new_unchecked(base.as_ptr().add(g.rings_offset)) };
        Ok(RingPool {
            header,
            submit,
            free,
            rings,
            ring_stride: g.ring_stride,
            count,
            record_size,
            policy,
            _memory: PhantomData,
        })
    }

    /// Number of rings.
    pub fn rings(&self) -> u32 {
        self.count
    }

    /// The full-ring policy the pool was created with.
    pub fn policy(&self) -> FullPolicy {
        self.policy
    }

    /// Ring `id` (validated at attach time).
    pub fn ring(&self, id: u32) -> Option<Ring<'a, B>> {
        if id >= self.count {
            return None;
        }
        // SAFETY: ring `id` lies inside the pool's memory and was validated by `attach`.
        let ptr = unsafe { self.rings.as_ptr().add(id as usize * self.ring_stride) };
        let len = self.ring_stride;
        // SAFETY: validated by `attach`; the caller's contract of `attach` covers this sub-range.
        unsafe {
            Ring::attach(NonNull::slice_from_raw_parts(
                NonNull::new_unchecked(ptr),
                len,
            ))
        }
        .ok()
    }

    fn header(&self) -> &PoolHeader<B> {
        // SAFETY: the header is valid for 'a; only its atomics are accessed through this reference
        // after initialisation (the constant fields were copied at attach time).
        unsafe { self.header.as_ref() }
    }

    /// The producer's counters, as seen now: exact once the producer has stopped and that was
    /// established by a handshake (a join, or the registry's stop handshake). A pool of
    /// fixed-size records counts what it accepted by the bytes its rings were written (each
    /// ring's head only grows, across swaps and reuse), so its producer keeps no count per record;
    /// a pool of variable-size records counts each one.
    pub fn counters(&self) -> PoolCounters {
        let c = &self.header().counters.0;
        let accepted = match self.record_size {
            // Relaxed: a statistic, exact after the handshake (see above).
            0 => c[ACCEPTED].load(Relaxed),
            size => {
                let bytes: u64 = (0..self.count)
                    .filter_map(|id| self.ring(id))
                    .map(|ring| ring.written())
                    .sum();
                bytes / u64::from(size)
            }
        };
        PoolCounters {
            accepted,
            dropped_full: c[DROPPED_FULL].load(Relaxed),
            swaps: c[SWAPS].load(Relaxed),
            waits: c[WAITS].load(Relaxed),
        }
    }

    /// The active ring's id, as seen now. Acquire: pairs with the producer's Release store in the
    /// swap, so the submission of the previous active ring is visible too.
    pub fn active(&self) -> u32 {
        self.header().active.0.load(Acquire)
    }

    /// The producer's handle.
    ///
    /// # Safety
    /// No other [`PoolProducer`] for this pool may exist, in any process, while the result lives.
    pub unsafe fn producer(&self) -> PoolProducer<'a, B> {
        // Relaxed: `active` is written only by the producer role, which is us.
        let active = self.header().active.0.load(Relaxed);
        let ring = self.ring(active).unwrap_or_else(|| {
            // A corrupt id cannot come from a well-behaved producer; fall back to ring 0.
            self.ring(0).expect("a pool has at least two rings")
        });
        PoolProducer {
            pool: *self,
            active,
            // SAFETY: we are the only producer of the pool, hence of its active ring, of the
            // submit queue, and the only consumer of the free queue.
            ring: unsafe { ring.producer() },
            // SAFETY: as above.
            submit: unsafe { self.submit.producer() },
            // SAFETY: as above.
            free: unsafe { self.free.consumer() },
            gave_up: false,
        }
    }

    /// The consumer's handle.
    ///
    /// # Safety
    /// No other [`PoolConsumer`] for this pool may exist, in any process, while the result lives.
    pub unsafe fn consumer(&self) -> PoolConsumer<'a, B> {
        let rings = (0..self.count)
            .filter_map(|id| self.ring(id))
            // SAFETY: we are the only consumer of the pool, hence of each of its rings.
            .map(|ring| unsafe { ring.consumer() })
            .collect();
        PoolConsumer {
            pool: *self,
            rings,
            // SAFETY: as above: the only consumer of the submit queue and producer of the free queue.
            submit: unsafe { self.submit.consumer() },
            // SAFETY: as above.
            free: unsafe { self.free.producer() },
            current: None,
            last_taken: None,
        }
    }
}

/// The producer's side of a pool: writes records into the active ring, swaps on full.
pub struct PoolProducer<'a, B: Backend = StdBackend> {
    pool: RingPool<'a, B>,
    active: u32,
    ring: Producer<'a, B>,
    submit: Producer<'a, B>,
    free: Consumer<'a, B>,
    /// A wait timed out: the consumer is presumed gone, so drop without waiting until space
    /// appears again.
    gave_up: bool,
}

impl<B: Backend> core::fmt::Debug for PoolProducer<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PoolProducer")
            .field("active", &self.active)
            .field("gave_up", &self.gave_up)
            .finish_non_exhaustive()
    }
}

/// The record was dropped because every ring was full; it is counted in `dropped_full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped;

/// Why [`PoolProducer::push_unless`] did not write a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Every ring was full (after the wait, under [`FullPolicy::Wait`]); counted in `dropped_full`.
    Full,
    /// The caller's `abandon` ended the wait; not counted here.
    Abandoned,
}

impl<'a, B: Backend> PoolProducer<'a, B> {
    /// The pool this producer writes.
    pub fn pool(&self) -> &RingPool<'a, B> {
        &self.pool
    }

    /// Writes one record (fixed or variable, per the pool's kind), swapping rings when the active
    /// one is full and applying the pool's [`FullPolicy`] when no ring is free.
    #[inline]
    pub fn push(&mut self, record: &[u8]) -> Result<(), Dropped> {
        self.push_unless(record, || false).map_err(|_| Dropped)
    }

    /// Whether one record of `N` words fits in the active ring now (see
    /// [`Producer::fits_words`]); no ring is swapped.
    #[inline(always)]
    pub fn fits_words<const N: usize>(&mut self) -> bool {
        self.ring.fits_words::<N>()
    }

    /// Whether the pool's rings hold fixed-size records of `N` words (every ring of a pool holds
    /// the same kind, checked when the pool was opened: see [`Producer::holds_words`]).
    #[inline(always)]
    pub fn holds_words<const N: usize>(&self) -> bool {
        self.ring.holds_words::<N>()
    }

    /// Whether one record of `N` words' bytes fit in the active ring now (see
    /// [`Producer::room_for_words`]); no ring is swapped.
    #[inline(always)]
    pub fn room_for_words<const N: usize>(&mut self) -> bool {
        self.ring.room_for_words::<N>()
    }

    /// Writes one record of `N` words into the active ring if it fits now, and counts it; never
    /// swaps rings, waits or calls out (see [`Producer::try_push_words`]). `false`: nothing
    /// written or counted.
    #[inline(always)]
    pub fn try_push_words<const N: usize>(&mut self, words: &[u64; N]) -> bool {
        // Counted by the bytes written (see `RingPool::counters`): the rings hold fixed-size
        // records.
        self.ring.try_push_words(words)
    }

    /// [`PoolProducer::try_push_words`] without the check, for a caller that made it already.
    ///
    /// # Safety
    /// [`PoolProducer::fits_words`] returned true for `N` since this producer's last write (or
    /// [`PoolProducer::holds_words`] at any time and [`PoolProducer::room_for_words`] since).
    #[inline(always)]
    pub unsafe fn push_words_fitted<const N: usize>(&mut self, words: &[u64; N]) {
        // SAFETY: the caller's contract, for the active ring (no write swapped it since).
        // Counted by the bytes written (see `RingPool::counters`): the rings hold fixed-size
        // records.
        unsafe { self.ring.push_words_fitted(words) };
    }

    /// Like [`PoolProducer::push`], but a wait for space ends as soon as `abandon()` says so: the
    /// record is then not written and *not* counted here ([`PushError::Abandoned`]); the caller
    /// accounts for it (the agent abandons when acceptance stops, and counts a shutdown drop).
    #[inline]
    pub fn push_unless(
        &mut self,
        record: &[u8],
        abandon: impl Fn() -> bool,
    ) -> Result<(), PushError> {
        if self.ring.push(record).is_ok() {
            self.count_accepted();
            return Ok(());
        }
        self.push_slow(record, &abandon)
    }

    #[cold]
    #[inline(never)]
    fn push_slow(&mut self, record: &[u8], abandon: &dyn Fn() -> bool) -> Result<(), PushError> {
        if self.try_swap() && self.ring.push(record).is_ok() {
            self.gave_up = false;
            self.count_accepted();
            return Ok(());
        }
        if let FullPolicy::Wait { timeout_us } = self.pool.policy {
            if !self.gave_up {
                self.count(WAITS);
                let deadline = B::deadline_after(u64::from(timeout_us));
                let mut step = 0;
                loop {
                    // Space may come back either way: the consumer released part of the active
                    // ring, or it returned a ring to the free queue.
                    if self.ring.push(record).is_ok()
                        || (self.try_swap() && self.ring.push(record).is_ok())
                    {
                        self.count_accepted();
                        return Ok(());
                    }
                    if abandon() {
                        return Err(PushError::Abandoned);
                    }
                    if !B::backoff(step, &deadline) {
                        break;
                    }
                    step += 1;
                }
                self.gave_up = true;
            }
        }
        self.count(DROPPED_FULL);
        Err(PushError::Full)
    }

    /// Counts a record that the caller abandoned (see [`PoolProducer::push_unless`]) because the
    /// consumer is gone as dropped for a full ring, and stops waiting on later records until a
    /// ring is free again.
    pub fn give_up(&mut self) {
        self.gave_up = true;
        self.count(DROPPED_FULL);
    }

    /// Submits the active ring and makes a free one active, if a free ring is available.
    fn try_swap(&mut self) -> bool {
        match self.submit_active() {
            Some((next, ring)) => {
                self.publish_active(next, ring);
                true
            }
            None => false,
        }
    }

    /// The first half of a swap: takes a free ring and submits the active one. Until
    /// [`PoolProducer::publish_active`], the header still names the submitted ring as active.
    fn submit_active(&mut self) -> Option<(u32, Ring<'a, B>)> {
        let mut id = [0u8; 4];
        // The free queue's Acquire (in pop) pairs with the consumer's Release when it returned the
        // ring, so the ring's released tail (empty) is visible to us.
        match self.free.pop(&mut id) {
            Ok(true) => {}
            Ok(false) | Err(_) => return None,
        }
        let next = u32::from_le_bytes(id);
        let ring = self.pool.ring(next)?; // a bad id from the consumer: keep ours
                                          // The submit queue's Release (in push) publishes every record of the old ring to the
                                          // consumer that pops its id. Capacity >= ring count, so this cannot fail in a sane pool.
        self.submit.push(&self.active.to_le_bytes()).ok()?;
        Some((next, ring))
    }

    /// The second half of a swap: makes ring `next` (from [`PoolProducer::submit_active`]) active.
    fn publish_active(&mut self, next: u32, ring: Ring<'a, B>) {
        // SAFETY: the ring came out of the free queue, so the consumer has finished with it and no
        // other producer exists (we are the pool's only producer).
        self.ring = unsafe { ring.producer() };
        self.ring.clear_mark();
        self.active = next;
        // Release: pairs with the Acquire in `RingPool::active`: a consumer that sees the new id
        // also sees the submission of the old ring in `submit_active`.
        self.pool.header().active.0.store(next, Release);
        self.count(SWAPS);
        self.gave_up = false;
    }

    /// Marks the active ring's contents for persistence (detail windows).
    pub fn mark_active(&self) {
        self.ring.mark();
    }

    /// The id of the ring being written.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Counts an accepted record, in a pool of variable-size records (a pool of fixed-size ones
    /// counts them by the bytes written, see `RingPool::counters`).
    #[inline(always)]
    fn count_accepted(&self) {
        if self.pool.record_size == 0 {
            self.count(ACCEPTED);
        }
    }

    #[inline(always)]
    fn count(&self, which: usize) {
        let c = &self.pool.header().counters.0[which];
        // Relaxed load + store, not fetch_add: we are the only writer, and a plain store avoids a
        // locked instruction on the hot path. Readers see a value that may lag, never a torn one.
        c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
    }
}

/// The consumer's side of a pool: drains submitted rings in order, returns them to the free queue,
/// and reads the committed prefix of the active ring.
pub struct PoolConsumer<'a, B: Backend = StdBackend> {
    pool: RingPool<'a, B>,
    rings: Vec<Consumer<'a, B>>,
    submit: Consumer<'a, B>,
    free: Producer<'a, B>,
    /// A submitted ring taken off the submit queue whose bytes the sink has not all accepted yet;
    /// it is finished first on the next pass.
    current: Option<u32>,
    /// The ring last taken off the submit queue. While the header still names it as active, the
    /// producer is between submitting it and publishing the next active ring (see `drain`).
    last_taken: Option<u32>,
}

impl<B: Backend> core::fmt::Debug for PoolConsumer<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PoolConsumer")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// One contiguous run of committed bytes handed to the drain callback.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'c> {
    /// Whole records (fixed) or whole frames (variable; iterate with [`frames`]).
    pub bytes: &'c [u8],
    /// The ring it came from.
    pub ring: u32,
    /// Whether the producer marked that ring (detail windows).
    pub marked: bool,
    /// Whether the ring is the active one (its committed prefix) rather than a submitted one.
    pub active: bool,
}

/// What a drain pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainStats {
    /// Bytes handed to the callback (and released).
    pub bytes: u64,
    /// Submitted rings consumed and returned to the free queue.
    pub rings_returned: u64,
}

/// Why a drain pass stopped early.
#[derive(Debug)]
pub enum DrainError<E> {
    /// The callback failed; the chunk it was given was not released and will be offered again.
    Sink(E),
    /// The producer's side of the shared memory is inconsistent.
    Ring(RingError),
}

/// Iterates the variable-size record payloads in a [`Chunk`]'s bytes.
pub fn frames(bytes: &[u8]) -> crate::ring::Records<'_> {
    crate::ring::Records::new(bytes)
}

impl<'a, B: Backend> PoolConsumer<'a, B> {
    /// The pool this consumer reads.
    pub fn pool(&self) -> &RingPool<'a, B> {
        &self.pool
    }

    /// Hands every committed byte of the lane to `sink`, in the producer's order: first each
    /// submitted ring (consumed completely, then returned to the free queue), then, if
    /// `include_active`, the committed prefix of the active ring. Each call of `sink` gets one
    /// contiguous run of whole records; what `sink` accepted is released.
    ///
    /// Order argument: the producer submits the old ring (Release) before publishing the new active
    /// id (Release). After reading the active id (Acquire) we look at the submit queue again; if a
    /// swap happened since our pass over it, we go round again before touching the active ring.
    /// If the id read is the ring we last took off the submit queue, the producer is between
    /// the two steps of a swap: that ring is ours (perhaps already back in the free queue, where
    /// the producer may take and refill it after rings still unconsumed), and the next active ring
    /// holds nothing yet, so the active ring is left for a later pass.
    pub fn drain<E>(
        &mut self,
        include_active: bool,
        mut sink: impl FnMut(Chunk<'_>) -> Result<(), E>,
    ) -> Result<DrainStats, DrainError<E>> {
        let mut stats = DrainStats::default();
        loop {
            loop {
                let id = match self.current {
                    Some(id) => id,
                    None => {
                        let mut id = [0u8; 4];
                        if !self.submit.pop(&mut id).map_err(DrainError::Ring)? {
                            break;
                        }
                        u32::from_le_bytes(id)
                    }
                };
                self.current = Some(id);
                self.last_taken = Some(id);
                let consumer = self.rings.get_mut(id as usize).ok_or_else(|| {
                    DrainError::Ring(RingError::Corrupt {
                        detail: format!(
                            "submit queue names ring {id}, the pool has {}",
                            self.pool.count
                        ),
                    })
                })?;
                stats.bytes += consume(consumer, id, false, &mut sink)?;
                self.current = None;
                // The free queue's Release (in push) pairs with the producer's Acquire when it takes
                // the ring: our release of the ring's tail happens before its reuse.
                self.free.push(&id.to_le_bytes()).map_err(|Full| {
                    DrainError::Ring(RingError::Corrupt {
                        detail: "free queue overflow: a ring id was submitted twice".into(),
                    })
                })?;
                stats.rings_returned += 1;
            }
            if !include_active {
                return Ok(stats);
            }
            let active = match self.readable_active() {
                Readable::Ring(active) => active,
                Readable::Swapped => continue, // a swap happened after our pass over the queue
                Readable::Stale => return Ok(stats),
            };
            let Some(consumer) = self.rings.get_mut(active as usize) else {
                return Err(DrainError::Ring(RingError::Corrupt {
                    detail: format!("active ring {active} out of range"),
                }));
            };
            stats.bytes += consume(consumer, active, true, &mut sink)?;
            return Ok(stats);
        }
    }

    /// The active ring, if it may be read in place now (see [`PoolConsumer::drain`]).
    fn readable_active(&self) -> Readable {
        let active = self.pool.active();
        if !self.submit.ring().is_empty() {
            Readable::Swapped
        } else if self.last_taken == Some(active) {
            // The swap that submitted it is half done: the next active ring holds nothing yet.
            Readable::Stale
        } else {
            Readable::Ring(active)
        }
    }

    /// Whether every ring is empty and nothing is submitted (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.current.is_none()
            && self.submit.ring().is_empty()
            && self.rings.iter().all(|c| c.ring().is_empty())
    }
}

/// What [`PoolConsumer::readable_active`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readable {
    /// This ring is active, and every ring submitted before it was taken.
    Ring(u32),
    /// A ring was submitted after the last pass over the submit queue.
    Swapped,
    /// The header names the ring last taken off the submit queue: the producer has not published
    /// the next one yet.
    Stale,
}

fn consume<B: Backend, E>(
    consumer: &mut Consumer<'_, B>,
    id: u32,
    active: bool,
    sink: &mut impl FnMut(Chunk<'_>) -> Result<(), E>,
) -> Result<u64, DrainError<E>> {
    let marked = consumer.ring().is_marked();
    let chunk = consumer.read_chunk().map_err(DrainError::Ring)?;
    let (first, second) = chunk.as_slices();
    let mut done = 0;
    let mut failed = None;
    for bytes in [first, second] {
        if bytes.is_empty() {
            continue;
        }
        let run = Chunk {
            bytes,
            ring: id,
            marked,
            active,
        };
        if let Err(e) = sink(run) {
            failed = Some(e);
            break;
        }
        done += bytes.len();
    }
    chunk.release(done);
    match failed {
        Some(e) => Err(DrainError::Sink(e)),
        None => Ok(done as u64),
    }
}

#[cfg(all(test, not(feature = "loom")))]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use crate::HeapRegion;

    const CONFIG: PoolConfig = PoolConfig {
        rings: 2,
        ring_capacity: 16,
        kind: RecordKind::Fixed(8),
        policy: FullPolicy::DropNewest,
    };

    fn collect(got: &mut Vec<u64>, chunk: Chunk<'_>) -> Result<(), ()> {
        for r in chunk.bytes.chunks_exact(8) {
            got.push(u64::from_le_bytes(r.try_into().map_err(drop)?));
        }
        Ok(())
    }

    #[test]
    fn drain__during_half_done_swap__then_ring_taken_off_submit_queue_not_read_as_active() {
        let region = HeapRegion::new(RingPool::<StdBackend>::layout_size(&CONFIG));
        // SAFETY: fresh, aligned, exclusive memory of the right size.
        let pool = unsafe { RingPool::<StdBackend>::init(region.as_non_null(), &CONFIG) }.unwrap();
        // SAFETY: the only producer and the only consumer of the pool.
        let (mut tx, mut rx) = unsafe { (pool.producer(), pool.consumer()) };
        let mut got = Vec::new();
        for i in 1..=2u64 {
            tx.push(&i.to_le_bytes()).unwrap();
        }
        // Ring 0 is full: the producer submits it, and stops before publishing ring 1 as active.
        let (next, ring) = tx.submit_active().expect("ring 1 is free");
        rx.drain(true, |c| collect(&mut got, c)).unwrap();
        assert_eq!(got, [1, 2]);
        // Ring 0 is back in the free queue while the header still names it: reading it in place
        // would deliver its next fill (records 5, 6) before ring 1's records 3, 4.
        assert_eq!(pool.active(), 0);
        assert_eq!(rx.readable_active(), Readable::Stale);
        tx.publish_active(next, ring);
        assert_eq!(rx.readable_active(), Readable::Ring(1));
        for i in 3..=6u64 {
            tx.push(&i.to_le_bytes()).unwrap();
        }
        assert_eq!(rx.readable_active(), Readable::Swapped);
        rx.drain(true, |c| collect(&mut got, c)).unwrap();
        assert_eq!(got, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn try_push_words__until_the_active_ring_is_full__then_written_counted_and_never_swapped() {
        let region = HeapRegion::new(RingPool::<StdBackend>::layout_size(&CONFIG));
        // SAFETY: fresh, aligned, exclusive memory of the right size.
        let pool = unsafe { RingPool::<StdBackend>::init(region.as_non_null(), &CONFIG) }.unwrap();
        // SAFETY: the only producer and the only consumer of the pool.
        let (mut tx, mut rx) = unsafe { (pool.producer(), pool.consumer()) };
        assert!(!tx.fits_words::<2>(), "records of 8 bytes, not 16");
        assert!(!tx.try_push_words(&[1u64, 2]));
        assert!(tx.try_push_words(&[7u64]));
        assert!(tx.try_push_words(&[8u64]));
        assert!(!tx.fits_words::<1>(), "the active ring (16 bytes) is full");
        assert!(!tx.try_push_words(&[9u64]), "no swap to the free ring");
        assert_eq!(pool.active(), 0);
        assert_eq!(tx.pool().counters().accepted, 2);
        let mut got = Vec::new();
        rx.drain(true, |c| collect(&mut got, c)).unwrap();
        assert_eq!(got, [7, 8]);
        assert!(tx.try_push_words(&[10u64]), "room again once drained");
    }
}
