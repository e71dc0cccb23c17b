//! Lock-free single-producer/single-consumer rings, and pools of them, whose entire state lives in
//! memory the caller provides — typically a `MAP_SHARED` mapping of a memfd, so that the producer
//! (the agent inside the traced process) and the consumer (the tracer's drain thread) can be in
//! different processes.
//!
//! This crate owns:
//! - [`Ring`]: one SPSC ring of fixed-size records (the index lane's 32-byte events) or framed
//!   variable-size records (the detail lane), with a zero-copy batch read ([`Consumer::read_chunk`]).
//! - [`RingPool`]: a lane, made of a few rings, an active ring, a submit queue (producer → consumer)
//!   and a free queue (consumer → producer), with swap-on-full, a [`FullPolicy`] (bounded wait or
//!   drop-newest, every drop counted) and the consumer's ability to read the committed prefix of the
//!   active ring.
//! - [`channel`]: a ring in this process's heap, split into an owning [`HeapProducer`] and
//!   [`HeapConsumer`], safe to use without `unsafe`.
//!
//! The protocol is generic over a [`modelsync::Backend`], so the same code runs on std atomics in
//! production ([`StdBackend`]) and under loom (this crate's models) or shuttle (the `sim` crate).
//!
//! # The memory-ordering contract
//!
//! 1. **Publish/consume.** The producer writes a record's bytes, then stores its new position with
//!    Release; the consumer loads that position with Acquire before reading the bytes. Symmetrically
//!    the consumer stores its position with Release after it is done reading, and the producer loads
//!    it with Acquire before overwriting the space. Each side caches the other's position and reloads
//!    it only when the cache says "maybe full" (producer) or "maybe empty" (consumer).
//! 2. **Swap, submit, return.** The producer pushes the full ring's id into the submit queue
//!    (Release, via the queue's own publish) and only then stores the new active id (Release). The
//!    consumer that pops an id (Acquire) sees that ring whole; it consumes it, releases its space
//!    (Release), and pushes the id into the free queue (Release); the producer that pops it
//!    (Acquire) sees the ring empty.
//! 3. **Active prefix.** The consumer may read the active ring's committed prefix while the producer
//!    keeps writing it; that is contract 1 again. Order across rings is kept because the consumer
//!    re-checks the submit queue after reading the active id (Acquire), see [`PoolConsumer::drain`].
//!
//! The consumer never trusts the producer: positions that claim more than the capacity, frames that
//! run past the committed bytes, ids out of range — all are [`RingError::Corrupt`], never undefined
//! behaviour. Headers carry magic, version and layout size; attaching to memory with a wrong header
//! is an error.
//!
//! These contracts are checked by loom models in this crate (`cargo test -p ring --features loom`),
//! including a negative control that shows a Relaxed publish is caught.
//!
//! # Example
//!
//! In one process, [`channel`] makes a ring in the heap and returns its owning producer and
//! consumer, with no `unsafe` (see its example). Over memory you provide (a shared mapping):
//!
//! ```
//! use ring::{HeapRegion, RecordKind, Ring, StdBackend};
//!
//! let region = HeapRegion::new(Ring::<StdBackend>::layout_size(1024));
//! // SAFETY: the region is fresh, aligned, big enough, and lives as long as the ring; this thread
//! // makes the only producer and the only consumer.
//! let ring = unsafe { Ring::<StdBackend>::init(region.as_non_null(), 1024, RecordKind::Fixed(32)) }
//!     .unwrap();
//! let (mut tx, mut rx) = unsafe { (ring.producer(), ring.consumer()) };
//!
//! tx.push(&[7u8; 32]).unwrap();
//! let chunk = rx.read_chunk().unwrap();
//! assert_eq!(chunk.as_slices().0, &[7u8; 32][..]);
//! chunk.release_all();
//! ```

#![warn(missing_docs)]

#[cfg(all(test, feature = "loom"))]
mod models;
mod owned;
mod pool;
mod region;
mod ring;

pub use modelsync::{Backend, StdBackend};
pub use owned::{channel, channel_on, HeapConsumer, HeapProducer};
pub use pool::{
    frames, Chunk, DrainError, DrainStats, Dropped, FullPolicy, PoolConfig, PoolConsumer,
    PoolCounters, PoolProducer, PushError, RingPool, MAX_RINGS, POOL_MAGIC, POOL_VERSION,
};
pub use region::HeapRegion;
pub use ring::{
    Consumer, Full, Producer, ReadChunk, RecordKind, Records, Reservation, Ring, RingHeader,
    FRAME_HEADER, RING_MAGIC, RING_VERSION,
};

/// Pads and aligns a value to 128 bytes (two cache lines, which also defeats the adjacent-line
/// prefetcher on x86_64), so the producer's and the consumer's hot fields never share a line.
#[derive(Debug, Default)]
#[repr(C, align(128))]
pub struct CachePadded<T>(pub T);

/// Why a ring or pool could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The memory does not start with the expected magic number.
    #[error("{what} header has magic {found:#010x}, not a {what}: the memory is not a {what} or was overwritten; recreate it")]
    BadMagic {
        /// "ring" or "ring pool".
        what: &'static str,
        /// The magic found.
        found: u32,
    },
    /// The header was written by another layout version.
    #[error("{what} layout version {found}, this build speaks version {expected}: use a tracer and agent from the same build")]
    BadVersion {
        /// "ring" or "ring pool".
        what: &'static str,
        /// The version found.
        found: u32,
        /// The version this build writes.
        expected: u32,
    },
    /// The sizes in the header are inconsistent or do not fit the memory.
    #[error("{what} layout is inconsistent ({detail}): recreate it with a valid configuration")]
    BadLayout {
        /// "ring" or "ring pool".
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The memory is smaller than the layout needs.
    #[error("memory of {got} bytes is too small, the layout needs {needed}: map the whole region")]
    TooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The memory is not aligned as the header requires.
    #[error("memory is not aligned to {align} bytes: use a page-aligned mapping or a HeapRegion")]
    Misaligned {
        /// The alignment required.
        align: usize,
    },
    /// The other side broke the protocol (or the memory was overwritten).
    #[error("ring state is corrupt: {detail}")]
    Corrupt {
        /// What is inconsistent.
        detail: String,
    },
    /// The operation does not apply to this ring's record kind.
    #[error("operation does not match the ring's record kind")]
    WrongKind,
}
