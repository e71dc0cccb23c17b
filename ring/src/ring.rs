//! One SPSC ring whose whole state lives in caller-provided memory.
//!
//! Layout (`#[repr(C)]`, offsets only, so both sides may be in different processes):
//!
//! ```text
//! offset 0    RingHeader  magic, version, layout_size, capacity, record_size   (written once)
//! offset 128  head        producer position, bytes ever written   (producer's cache line)
//!             mark        detail-window mark bits                   (producer's cache line)
//! offset 256  tail        consumer position, bytes ever released  (consumer's cache line)
//! offset 384  data        `capacity` bytes, a power of two
//! ```
//!
//! Positions are monotonic byte counts; `position & (capacity - 1)` is the offset in the data area.
//! `head - tail` bytes are committed and not yet released. Fixed-size records (the index lane) never
//! straddle the end because the record size divides the capacity. Variable-size records (the detail
//! lane) are framed by an 8-byte header `[u32 length][u32 flags]` and padded to 8 bytes; a record that
//! would straddle the end is preceded by a padding frame that fills the rest of the data area, so
//! every record is contiguous and the consumer can hand out whole-record slices.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::{CachePadded, RingError};
use modelsync::{Atomic, Backend, StdBackend, Track};

/// `"RNG1"`: the first four bytes of every ring header.
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"RNG1");
/// Layout version of [`RingHeader`]. Bumped on any change of the layout or the protocol.
pub const RING_VERSION: u32 = 1;
/// Size of a variable record's frame header: `[u32 payload length][u32 flags]`.
pub const FRAME_HEADER: usize = 8;
/// Frame flag: this frame is padding up to the end of the data area, not a record.
const FRAME_PAD: u32 = 1;
/// Number of tracking cells (one per 8-byte word) a model backend supports; model rings stay small.
const TRACK_WORDS: usize = 64;

/// What kind of records a ring carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Every record is exactly this many bytes (a power of two, at most the capacity).
    Fixed(u32),
    /// Records of any length up to [`Ring::max_record_len`], framed and 8-byte aligned.
    Variable,
}

impl RecordKind {
    fn encode(self) -> u32 {
        match self {
            RecordKind::Fixed(n) => n,
            RecordKind::Variable => 0,
        }
    }
}

/// The header at the start of a ring's memory. Field docs say who writes what.
#[repr(C)]
pub struct RingHeader<B: Backend = StdBackend> {
    /// [`RING_MAGIC`]. Written once by [`Ring::init`].
    magic: u32,
    /// [`RING_VERSION`]. Written once.
    version: u32,
    /// Header plus data area, in bytes. Written once.
    layout_size: u64,
    /// Data area size in bytes, a power of two. Written once.
    capacity: u64,
    /// Record size for fixed records, 0 for variable records. Written once.
    record_size: u32,
    _reserved: u32,
    /// Producer position: bytes ever committed. Written only by the producer (Release).
    head: CachePadded<ProducerLine<B>>,
    /// Consumer position: bytes ever released. Written only by the consumer (Release).
    tail: CachePadded<B::AtomicU64>,
    /// Model-checker tracking cells; zero-sized in production.
    track: [B::Track; TRACK_WORDS],
}

/// The producer's cache line: its position and the window mark bits.
#[repr(C)]
struct ProducerLine<B: Backend> {
    head: B::AtomicU64,
    /// Detail-window marks (bit 0: this ring's contents were marked for persistence). Written only
    /// by the producer; the consumer reads them after taking the ring from the submit queue.
    mark: B::AtomicU32,
}

// The production layout is part of the shared-memory ABI between tracer and agent: pin it.
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    type H = RingHeader<StdBackend>;
    assert!(offset_of!(H, magic) == 0);
    assert!(offset_of!(H, version) == 4);
    assert!(offset_of!(H, layout_size) == 8);
    assert!(offset_of!(H, capacity) == 16);
    assert!(offset_of!(H, record_size) == 24);
    assert!(offset_of!(H, head) == 128);
    assert!(offset_of!(H, tail) == 256);
    assert!(size_of::<H>() == 384);
    assert!(align_of::<H>() == 128);
};

/// A validated view of one ring in memory the caller provides. Cheap to copy.
///
/// Holds raw pointers only: the memory may be shared with another process, so no Rust reference to
/// the data area outlives a single operation, and the header's constant fields are read once, when
/// the view is made, and never trusted again.
pub struct Ring<'a, B: Backend = StdBackend> {
    header: NonNull<RingHeader<B>>,
    data: NonNull<u8>,
    capacity: u64,
    /// `capacity - 1`: a position's offset in the data area is `position & mask` (kept beside
    /// the capacity so writing a record does not compute it).
    mask: u64,
    kind: RecordKind,
    _memory: PhantomData<&'a [u8]>,
}

impl<B: Backend> Clone for Ring<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Ring<'_, B> {}

impl<B: Backend> core::fmt::Debug for Ring<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

// SAFETY: a `Ring` is a view of memory whose shared state is only accessed through atomics and the
// SPSC protocol; the raw pointers are valid for 'a by the contract of `init`/`attach`.
unsafe impl<B: Backend> Send for Ring<'_, B> {}
// SAFETY: as above; `&Ring` allows only atomic reads of shared state.
unsafe impl<B: Backend> Sync for Ring<'_, B> {}

/// The ring is full: the record was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl<'a, B: Backend> Ring<'a, B> {
    /// The size of the header that precedes the data area.
    pub const HEADER_SIZE: usize = core::mem::size_of::<RingHeader<B>>();
    /// The alignment the memory given to [`Ring::init`] and [`Ring::attach`] must have.
    pub const ALIGN: usize = core::mem::align_of::<RingHeader<B>>();

    /// Bytes of memory a ring with a data area of `capacity` bytes occupies.
    pub const fn layout_size(capacity: usize) -> usize {
        Self::HEADER_SIZE + capacity
    }

    /// Writes a new, empty ring into `memory` and returns a view of it.
    ///
    /// `capacity` (the data area) must be a power of two of at least 16 bytes, and `memory.len()`
    /// must be exactly [`Ring::layout_size`]`(capacity)`; a fixed record size must be a power of two
    /// no larger than the capacity.
    ///
    /// # Safety
    /// `memory` must be valid for reads and writes for `'a`, aligned to [`Ring::ALIGN`], and not
    /// in use by anybody else while `init` runs. Afterwards, at most one [`Producer`] and one
    /// [`Consumer`] may exist for this ring at any time, across all processes sharing the memory.
    pub unsafe fn init(
        memory: NonNull<[u8]>,
        capacity: usize,
        kind: RecordKind,
    ) -> Result<Self, RingError> {
        check_geometry(capacity as u64, kind.encode())?;
        check_memory::<B>(memory, Self::layout_size(capacity))?;
        let header = memory.cast::<RingHeader<B>>();
        let value = RingHeader::<B> {
            magic: RING_MAGIC,
            version: RING_VERSION,
            layout_size: Self::layout_size(capacity) as u64,
            capacity: capacity as u64,
            record_size: kind.encode(),
            _reserved: 0,
            head: CachePadded(ProducerLine {
                head: B::AtomicU64::new(0),
                mark: B::AtomicU32::new(0),
            }),
            tail: CachePadded(B::AtomicU64::new(0)),
            track: core::array::from_fn(|_| B::Track::new()),
        };
        // SAFETY: the caller gives us exclusive, valid, aligned memory of at least layout_size bytes
        // (checked above), which covers the header.
        unsafe { header.as_ptr().write(value) };
        // SAFETY: the header was just written; the same contract carries over.
        unsafe { Self::attach(memory) }
    }

    /// Validates the header in `memory` (magic, version, sizes) and returns a view of the ring.
    /// A wrong header is an error, never undefined behaviour.
    ///
    /// # Safety
    /// `memory` must be valid for reads and writes for `'a` and hold a ring written by
    /// [`Ring::init`] with the same backend (or garbage, which is reported). At most one
    /// [`Producer`] and one [`Consumer`] may exist for this ring at any time, across processes.
    pub unsafe fn attach(memory: NonNull<[u8]>) -> Result<Self, RingError> {
        check_memory::<B>(memory, Self::HEADER_SIZE)?;
        let header = memory.cast::<RingHeader<B>>();
        let h = header.as_ptr();
        // SAFETY: `memory` is valid and large enough for the header (checked above); the constant
        // fields are plain integers, any bit pattern is a valid value. We read them once.
        let (magic, version, layout_size, capacity, record_size) = unsafe {
            (
                core::ptr::addr_of!((*h).magic).read_volatile(),
                core::ptr::addr_of!((*h).version).read_volatile(),
                core::ptr::addr_of!((*h).layout_size).read_volatile(),
                core::ptr::addr_of!((*h).capacity).read_volatile(),
                core::ptr::addr_of!((*h).record_size).read_volatile(),
            )
        };
        if magic != RING_MAGIC {
            return Err(RingError::BadMagic {
                what: "ring",
                found: magic,
            });
        }
        if version != RING_VERSION {
            return Err(RingError::BadVersion {
                what: "ring",
                found: version,
                expected: RING_VERSION,
            });
        }
        check_geometry(capacity, record_size)?;
        let expected = Self::HEADER_SIZE as u64 + capacity;
        if layout_size != expected || layout_size > memory.len() as u64 {
            return Err(RingError::BadLayout {
                what: "ring",
                detail: format!(
                    "header says {layout_size} bytes, capacity {capacity} needs {expected}, \
                     memory has {}",
                    memory.len()
                ),
            });
        }
        let kind = match record_size {
            0 => RecordKind::Variable,
            n => RecordKind::Fixed(n),
        };
        // SAFETY: HEADER_SIZE + capacity <= memory.len(), so the data area is inside `memory`.
        let data =
            unsafe { NonNull::new_unchecked(memory.cast::<u8>().as_ptr().add(Self::HEADER_SIZE)) };
        Ok(Ring {
            header,
            data,
            capacity,
            mask: capacity - 1,
            kind,
            _memory: PhantomData,
        })
    }

    /// The data area's size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// The kind of records this ring carries.
    pub fn kind(&self) -> RecordKind {
        self.kind
    }

    /// The longest payload a variable-record ring accepts (its frame must fit in half the ring, so
    /// an empty ring always has room for it whatever its position).
    pub fn max_record_len(&self) -> usize {
        self.capacity as usize / 2 - FRAME_HEADER
    }

    /// Bytes committed and not yet released, as seen now (a snapshot; Acquire loads).
    pub fn len_bytes(&self) -> usize {
        // Acquire: pairs with the Release stores of both positions, for a consistent snapshot.
        let tail = self.tail().load(Acquire);
        let head = self.head().load(Acquire);
        head.wrapping_sub(tail).min(self.capacity) as usize
    }

    /// Bytes ever written into the ring (the producer's position), as seen now. Acquire: pairs
    /// with the producer's Release store of the head, as in [`Ring::len_bytes`].
    pub fn written(&self) -> u64 {
        self.head().load(Acquire)
    }

    /// Whether nothing is committed and unreleased (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len_bytes() == 0
    }

    /// The producer's handle. The producer resumes at the position stored in the ring.
    ///
    /// # Safety
    /// No other [`Producer`] for this ring may exist, in any process, while the result lives.
    pub unsafe fn producer(&self) -> Producer<'a, B> {
        // Relaxed: the head is written only by the producer side, which is us (or a predecessor
        // that handed the ring over through a queue whose Acquire/Release orders this load).
        let head = self.head().load(Relaxed);
        // Acquire: pairs with the consumer's Release store of the tail.
        let tail = self.tail().load(Acquire);
        Producer {
            ring: *self,
            head,
            free: free_after(head, tail, self.capacity),
            #[cfg(all(test, feature = "loom"))]
            broken_publish: false,
        }
    }

    /// The consumer's handle. The consumer resumes at the position stored in the ring.
    ///
    /// # Safety
    /// No other [`Consumer`] for this ring may exist, in any process, while the result lives.
    pub unsafe fn consumer(&self) -> Consumer<'a, B> {
        // Relaxed: the tail is written only by the consumer side, which is us.
        let tail = self.tail().load(Relaxed);
        Consumer {
            ring: *self,
            tail,
            cached_head: tail,
        }
    }

    /// Whether the producer marked this ring's contents (detail windows). Acquire: pairs with the
    /// Release `fetch_or` in [`Producer::mark`].
    pub fn is_marked(&self) -> bool {
        self.producer_line().mark.load(Acquire) != 0
    }

    fn producer_line(&self) -> &ProducerLine<B> {
        // SAFETY: the header is valid for 'a (contract of init/attach); we only take a reference
        // to an atomic-bearing struct, whose fields are only accessed atomically.
        unsafe { &(*self.header.as_ptr()).head.0 }
    }

    fn head(&self) -> &B::AtomicU64 {
        &self.producer_line().head
    }

    fn tail(&self) -> &B::AtomicU64 {
        // SAFETY: as in `producer_line`.
        unsafe { &(*self.header.as_ptr()).tail.0 }
    }

    /// Records accesses of `[from, to)` (positions) with the model checker; nothing in production.
    #[inline(always)]
    fn track(&self, from: u64, to: u64, write: bool) {
        if !<B::Track as Track>::ENABLED {
            return;
        }
        let mut pos = from & !7;
        while pos < to {
            let word = ((pos & self.mask) / 8) as usize % TRACK_WORDS;
            // SAFETY: the header is valid for 'a; tracking cells are only used through &self.
            let cell = unsafe { &(*self.header.as_ptr()).track[word] };
            if write {
                cell.write()
            } else {
                cell.read()
            }
            pos += 8;
        }
    }

    /// Pointer to the data area at `position`.
    #[inline(always)]
    fn at(&self, position: u64) -> *mut u8 {
        // SAFETY: the masked offset is below the capacity, inside the data area.
        unsafe { self.data.as_ptr().add((position & self.mask) as usize) }
    }
}

fn check_geometry(capacity: u64, record_size: u32) -> Result<(), RingError> {
    if capacity < 16 || !capacity.is_power_of_two() || capacity > (1 << 40) {
        return Err(RingError::BadLayout {
            what: "ring",
            detail: format!("capacity {capacity} is not a power of two between 16 B and 1 TiB"),
        });
    }
    if record_size != 0 && (!record_size.is_power_of_two() || u64::from(record_size) > capacity) {
        return Err(RingError::BadLayout {
            what: "ring",
            detail: format!(
                "record size {record_size} is not a power of two no larger than capacity {capacity}"
            ),
        });
    }
    Ok(())
}

pub(crate) fn check_memory<B: Backend>(
    memory: NonNull<[u8]>,
    needed: usize,
) -> Result<(), RingError> {
    let align = core::mem::align_of::<RingHeader<B>>();
    if (memory.cast::<u8>().as_ptr() as usize) % align != 0 {
        return Err(RingError::Misaligned { align });
    }
    if memory.len() < needed {
        return Err(RingError::TooSmall {
            needed,
            got: memory.len(),
        });
    }
    Ok(())
}

/// The writing side of a ring. Not `Clone`: there is exactly one.
///
/// Keeps its own position and the bytes free as of the consumer's position it last read, and reads
/// the consumer's atomic only when those say the ring may be full.
pub struct Producer<'a, B: Backend = StdBackend> {
    ring: Ring<'a, B>,
    head: u64,
    /// Bytes free after the head as of the consumer's tail last read: writes up to this many need
    /// no look at the tail (one compare), and each write takes what it wrote off.
    free: u64,
    /// Negative control for the loom models: publish with Relaxed instead of Release.
    #[cfg(all(test, feature = "loom"))]
    pub(crate) broken_publish: bool,
}

impl<B: Backend> core::fmt::Debug for Producer<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Producer")
            .field("head", &self.head)
            .field("free", &self.free)
            .finish()
    }
}

// SAFETY: the producer may move to another thread; it owns the producer role of the ring.
unsafe impl<B: Backend> Send for Producer<'_, B> {}

impl<'a, B: Backend> Producer<'a, B> {
    /// The ring this producer writes.
    pub fn ring(&self) -> &Ring<'a, B> {
        &self.ring
    }

    /// Whether `needed` more bytes fit, reading the consumer's tail only when the free bytes
    /// counted since it was last read are too few.
    #[inline(always)]
    fn has_room(&mut self, needed: u64) -> bool {
        if self.free >= needed {
            return true;
        }
        // Rare (once per many records): laid out away from the producer's straight line.
        cold();
        // Acquire: pairs with the consumer's Release store of the tail, so its reads of the space
        // we are about to overwrite happened before our writes.
        let tail = self.ring.tail().load(Acquire);
        self.free = free_after(self.head, tail, self.ring.capacity);
        self.free >= needed
    }

    /// Commits `bytes` more bytes to the consumer: at most [`Producer::has_room`] found free since
    /// the last commit.
    #[inline(always)]
    fn publish(&mut self, bytes: u64) {
        self.head = self.head.wrapping_add(bytes);
        self.free -= bytes;
        #[cfg(all(test, feature = "loom"))]
        let order = if self.broken_publish {
            Relaxed
        } else {
            Release
        };
        #[cfg(not(all(test, feature = "loom")))]
        let order = Release;
        // Release: pairs with the consumer's Acquire load of the head; the record bytes written
        // before this store are visible to a consumer that sees the new head.
        self.ring.head().store(self.head, order);
    }

    /// Writes one record. On a fixed-record ring `record.len()` must equal the record size (a
    /// record of another size is refused with [`Full`] and never written); on a variable-record
    /// ring this is [`Producer::push_variable`].
    #[inline]
    pub fn push(&mut self, record: &[u8]) -> Result<(), Full> {
        let RecordKind::Fixed(size) = self.ring.kind else {
            return self.push_variable(record);
        };
        let size = u64::from(size);
        if record.len() as u64 != size || !self.has_room(size) {
            return Err(Full);
        }
        self.ring.track(self.head, self.head + size, true);
        // SAFETY: `has_room` proved [head, head + size) is free (the consumer released it), the
        // record size divides the capacity so the span does not wrap, and `record` has `size`
        // bytes. Only the producer writes free space.
        unsafe {
            core::ptr::copy_nonoverlapping(record.as_ptr(), self.ring.at(self.head), size as usize)
        };
        self.publish(size);
        Ok(())
    }

    /// Whether one fixed-size record of `N` little-endian words fits now: the ring
    /// [holds such records](Self::holds_words) and [has room](Self::room_for_words) for one.
    #[inline(always)]
    pub fn fits_words<const N: usize>(&mut self) -> bool {
        self.holds_words::<N>() && self.room_for_words::<N>()
    }

    /// Whether the ring holds fixed-size records of `N` words (its kind never changes: a caller
    /// that found it so once need only ask [`Producer::room_for_words`] on each write).
    #[inline(always)]
    pub fn holds_words<const N: usize>(&self) -> bool {
        self.ring.kind == RecordKind::Fixed(8 * N as u32)
    }

    /// Whether `8 * N` more bytes fit now (this may read the consumer's tail): with
    /// [`Producer::holds_words`], what [`Producer::fits_words`] asks.
    #[inline(always)]
    pub fn room_for_words<const N: usize>(&mut self) -> bool {
        self.has_room(8 * N as u64)
    }

    /// Writes one fixed-size record given as `N` little-endian words, if it [fits
    /// now](Self::fits_words); `false`: nothing written. Each word is one volatile store, and
    /// nothing is called: code that must leave the vector registers alone (a hook that did not
    /// save them) can write with it.
    #[inline(always)]
    pub fn try_push_words<const N: usize>(&mut self, words: &[u64; N]) -> bool {
        if !self.fits_words::<N>() {
            return false;
        }
        // SAFETY: it fits, just checked.
        unsafe { self.push_words_fitted(words) };
        true
    }

    /// [`Producer::try_push_words`] without the check, for a caller that made it already.
    ///
    /// # Safety
    /// [`Producer::fits_words`] returned true for `N` since this producer's last write (or
    /// [`Producer::holds_words`] at any time and [`Producer::room_for_words`] since that write):
    /// else the words could overwrite bytes the consumer is reading.
    #[inline(always)]
    pub unsafe fn push_words_fitted<const N: usize>(&mut self, words: &[u64; N]) {
        let size = 8 * N as u64;
        self.ring.track(self.head, self.head + size, true);
        let at = self.ring.at(self.head).cast::<u64>();
        for (i, w) in words.iter().enumerate() {
            // SAFETY: `fits_words` proved [head, head + size) is free (the caller's contract), the
            // record size divides the
            // capacity so the span does not wrap, and positions are multiples of the record size
            // (a multiple of 8), so each word is aligned. Only the producer writes free space.
            unsafe { at.add(i).write_volatile(w.to_le()) };
        }
        self.publish(size);
    }

    /// Writes one variable-size record (framed, 8-byte aligned). Fails with [`Full`] when there is
    /// no room now; a record longer than [`Ring::max_record_len`] never fits and also returns `Full`.
    pub fn push_variable(&mut self, record: &[u8]) -> Result<(), Full> {
        let mut slot = self.reserve(record.len()).ok_or(Full)?;
        slot.as_mut_slice().copy_from_slice(record);
        slot.commit();
        Ok(())
    }

    /// Reserves room for a variable-size record of `len` bytes, to be written in place and then
    /// committed. Dropping the reservation without committing writes nothing.
    pub fn reserve(&mut self, len: usize) -> Option<Reservation<'_, 'a, B>> {
        if self.ring.kind != RecordKind::Variable || len > self.ring.max_record_len() {
            return None;
        }
        let framed = (FRAME_HEADER + len).next_multiple_of(8) as u64;
        let to_end = self.ring.capacity - (self.head & self.ring.mask);
        let pad = if to_end < framed { to_end } else { 0 };
        if !self.has_room(pad + framed) {
            return None;
        }
        if pad != 0 {
            // The record would straddle the end: fill the rest of the data area with a padding
            // frame. It is committed together with the record, in `Reservation::commit`.
            self.ring
                .track(self.head, self.head + FRAME_HEADER as u64, true);
            write_frame(
                self.ring.at(self.head),
                (pad as usize - FRAME_HEADER) as u32,
                FRAME_PAD,
            );
        }
        Some(Reservation {
            producer: self,
            pad,
            len,
        })
    }

    /// Marks the ring's current contents for persistence (detail windows). Release: pairs with the
    /// Acquire in [`Ring::is_marked`].
    pub fn mark(&self) {
        self.ring.producer_line().mark.fetch_or(1, Release);
    }

    /// Clears the mark, when the producer takes the ring back from the free queue.
    pub fn clear_mark(&self) {
        // Relaxed: the mark is only meaningful once published through the submit queue (Release).
        self.ring.producer_line().mark.store(0, Relaxed);
    }

    /// Bytes this producer could write now without refreshing its view of the consumer.
    pub fn cached_free_bytes(&self) -> usize {
        self.free as usize
    }
}

/// The bytes free after `head` in a ring of `capacity` bytes whose consumer's tail is `tail`. A
/// consumer in another process could store any value: a tail "ahead" of the head, or more than
/// the capacity behind it, reads as full (nothing free), so the producer drops and never writes
/// out of bounds.
#[inline]
fn free_after(head: u64, tail: u64, capacity: u64) -> u64 {
    capacity.saturating_sub(head.wrapping_sub(tail))
}

fn write_frame(at: *mut u8, len: u32, flags: u32) {
    let mut frame = [0u8; FRAME_HEADER];
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..].copy_from_slice(&flags.to_le_bytes());
    // SAFETY: callers pass a pointer to at least FRAME_HEADER free bytes of the data area, which only
    // the producer writes.
    unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), at, FRAME_HEADER) };
}

/// Room for one variable-size record, reserved by [`Producer::reserve`].
pub struct Reservation<'p, 'a, B: Backend> {
    producer: &'p mut Producer<'a, B>,
    pad: u64,
    len: usize,
}

impl<B: Backend> Reservation<'_, '_, B> {
    fn payload_position(&self) -> u64 {
        self.producer.head + self.pad + FRAME_HEADER as u64
    }

    /// The record's bytes, to be filled in (initially whatever the ring held before).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let pos = self.payload_position();
        self.producer.ring.track(pos, pos + self.len as u64, true);
        // SAFETY: [pos, pos + len) lies in reserved free space (checked in `reserve`) that does not
        // wrap (padding took care of that); only this producer writes it until `commit`.
        unsafe { core::slice::from_raw_parts_mut(self.producer.ring.at(pos), self.len) }
    }

    /// Publishes the record to the consumer.
    pub fn commit(self) {
        let start = self.producer.head + self.pad;
        self.producer
            .ring
            .track(start, start + FRAME_HEADER as u64, true);
        write_frame(self.producer.ring.at(start), self.len as u32, 0);
        let framed = (FRAME_HEADER + self.len).next_multiple_of(8) as u64;
        self.producer.publish(self.pad + framed);
    }
}

/// The reading side of a ring. Not `Clone`: there is exactly one.
pub struct Consumer<'a, B: Backend = StdBackend> {
    ring: Ring<'a, B>,
    tail: u64,
    cached_head: u64,
}

impl<B: Backend> core::fmt::Debug for Consumer<'_, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Consumer")
            .field("tail", &self.tail)
            .field("cached_head", &self.cached_head)
            .finish()
    }
}

// SAFETY: the consumer may move to another thread; it owns the consumer role of the ring.
unsafe impl<B: Backend> Send for Consumer<'_, B> {}

impl<'a, B: Backend> Consumer<'a, B> {
    /// The ring this consumer reads.
    pub fn ring(&self) -> &Ring<'a, B> {
        &self.ring
    }

    /// Everything committed and not yet released, as up to two slices of whole records (two when
    /// the committed bytes wrap around the end of the data area). Zero-copy: the slices point into
    /// the ring. Nothing is released until [`ReadChunk::release`] (or `release_all`).
    ///
    /// The producer is not trusted: a head that claims more than the capacity, or a position that is
    /// not a whole number of records, is [`RingError::Corrupt`].
    pub fn read_chunk(&mut self) -> Result<ReadChunk<'_, 'a, B>, RingError> {
        // Acquire: pairs with the producer's Release store of the head in `publish`, so the record
        // bytes up to that head are visible.
        let head = self.ring.head().load(Acquire);
        let committed = head.wrapping_sub(self.tail);
        let unit = match self.ring.kind {
            RecordKind::Fixed(n) => u64::from(n),
            RecordKind::Variable => 8,
        };
        if committed > self.ring.capacity || committed % unit != 0 {
            return Err(RingError::Corrupt {
                detail: format!(
                    "producer position {head} is not a whole number of records ahead of consumer \
                     position {} (capacity {})",
                    self.tail, self.ring.capacity
                ),
            });
        }
        self.cached_head = head;
        self.ring.track(self.tail, head, false);
        let offset = self.tail & self.ring.mask;
        let first_len = committed.min(self.ring.capacity - offset);
        Ok(ReadChunk {
            consumer: self,
            first_len: first_len as usize,
            second_len: (committed - first_len) as usize,
        })
    }

    /// Pops one fixed-size record into `out` (which must be the record size). Returns `false` when
    /// the ring is empty. Uses the cached producer position and refreshes it only when empty.
    pub fn pop(&mut self, out: &mut [u8]) -> Result<bool, RingError> {
        let RecordKind::Fixed(size) = self.ring.kind else {
            return Err(RingError::WrongKind);
        };
        let size = u64::from(size);
        if out.len() as u64 != size {
            return Err(RingError::WrongKind);
        }
        if self.cached_head == self.tail {
            // Acquire: pairs with the producer's Release store of the head.
            self.cached_head = self.ring.head().load(Acquire);
            let committed = self.cached_head.wrapping_sub(self.tail);
            if committed > self.ring.capacity || committed % size != 0 {
                return Err(RingError::Corrupt {
                    detail: format!("producer position {} is inconsistent", self.cached_head),
                });
            }
            if committed == 0 {
                return Ok(false);
            }
        }
        self.ring.track(self.tail, self.tail + size, false);
        // SAFETY: [tail, tail + size) is committed (tail < cached head, validated), does not wrap
        // (the record size divides the capacity), and the producer does not write it until we
        // release it below.
        unsafe {
            core::ptr::copy_nonoverlapping(self.ring.at(self.tail), out.as_mut_ptr(), size as usize)
        };
        self.release(size);
        Ok(true)
    }

    /// Releases `bytes` bytes back to the producer.
    fn release(&mut self, bytes: u64) {
        self.tail = self.tail.wrapping_add(bytes);
        // Release: pairs with the producer's Acquire load of the tail in `has_room`: our reads of
        // the released bytes happen before the producer overwrites them.
        self.ring.tail().store(self.tail, Release);
    }
}

/// Committed bytes of a ring, borrowed from its [`Consumer`] (see [`Consumer::read_chunk`]).
pub struct ReadChunk<'c, 'a, B: Backend = StdBackend> {
    consumer: &'c mut Consumer<'a, B>,
    first_len: usize,
    second_len: usize,
}

impl<B: Backend> ReadChunk<'_, '_, B> {
    /// The committed bytes as two slices (the second is empty unless they wrap). For fixed records
    /// both are whole records; for variable records they are whole frames (see [`Self::records`]).
    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        let ring = &self.consumer.ring;
        let tail = self.consumer.tail;
        // SAFETY: both spans are committed bytes inside the data area (validated in `read_chunk`),
        // which the producer does not write until they are released, and the release needs
        // `&mut self.consumer`, which this chunk borrows.
        unsafe {
            (
                core::slice::from_raw_parts(ring.at(tail), self.first_len),
                core::slice::from_raw_parts(ring.data.as_ptr(), self.second_len),
            )
        }
    }

    /// Total committed bytes in this chunk.
    pub fn len(&self) -> usize {
        self.first_len + self.second_len
    }

    /// Whether the chunk is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payloads of the variable-size records in this chunk, in order, padding skipped. A frame
    /// whose length runs past the committed bytes ends the iteration with an error.
    pub fn records(&self) -> Records<'_> {
        let (first, second) = self.as_slices();
        Records {
            parts: [first, second],
            part: 0,
            offset: 0,
        }
    }

    /// Releases the first `bytes` bytes (a whole number of records or frames) to the producer.
    pub fn release(self, bytes: usize) {
        let bytes = bytes.min(self.len());
        self.consumer.release(bytes as u64);
    }

    /// Releases the whole chunk to the producer.
    pub fn release_all(self) {
        let n = self.len();
        self.release(n);
    }
}

/// Iterator over variable-size record payloads (see [`ReadChunk::records`]).
#[derive(Debug)]
pub struct Records<'c> {
    parts: [&'c [u8]; 2],
    part: usize,
    offset: usize,
}

impl<'c> Records<'c> {
    /// Iterates the frames in `bytes` (whole frames, as handed out by a consumer).
    pub fn new(bytes: &'c [u8]) -> Self {
        Records {
            parts: [bytes, &[]],
            part: 0,
            offset: 0,
        }
    }
}

impl<'c> Iterator for Records<'c> {
    type Item = Result<&'c [u8], RingError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let part = *self.parts.get(self.part)?;
            let rest = &part[self.offset..];
            if rest.is_empty() {
                self.part += 1;
                self.offset = 0;
                continue;
            }
            let corrupt = |detail: String| Some(Err(RingError::Corrupt { detail }));
            if rest.len() < FRAME_HEADER {
                self.part = 2;
                return corrupt(format!(
                    "{} stray bytes where a frame header was expected",
                    rest.len()
                ));
            }
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
            let flags = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
            let framed = (FRAME_HEADER + len).next_multiple_of(8);
            if framed > rest.len() {
                self.part = 2;
                return corrupt(format!(
                    "frame of {len} bytes runs past the {} committed bytes",
                    rest.len()
                ));
            }
            self.offset += framed;
            if flags & FRAME_PAD != 0 {
                continue;
            }
            return Some(Ok(&rest[FRAME_HEADER..FRAME_HEADER + len]));
        }
    }
}

/// Marks the path that calls it as rarely taken, so the compiler lays that path out of the common
/// one's straight line (a call to a `#[cold]` function weighs its branch; inlined, it leaves no
/// code, so a hot path that must call nothing may use it).
#[cold]
#[inline]
fn cold() {}
