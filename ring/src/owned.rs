//! A ring in this process's heap, split into an owning producer and consumer: the safe way to use
//! a [`Ring`] when both sides live in one process.

use crate::{Consumer, Producer};
use crate::{Full, HeapRegion, ReadChunk, RecordKind, Reservation, Ring, RingError};
use modelsync::{Backend, StdBackend};
use std::sync::Arc;

/// Makes a ring of `capacity` data bytes in this process's heap and returns its only producer and
/// its only consumer, each owning a share of the memory: the memory is freed when both are dropped,
/// and no `unsafe` is needed (like `rtrb::RingBuffer::new`).
///
/// `capacity` must be a power of two of at least 16 bytes; a fixed record size must be a power of
/// two no larger than the capacity. Either side may move to another thread.
///
/// ```
/// use ring::{channel, RecordKind};
///
/// let (mut tx, mut rx) = channel(1024, RecordKind::Variable)?;
/// let writer = std::thread::spawn(move || {
///     for i in 0u32..100 {
///         while tx.push(&i.to_le_bytes()).is_err() {
///             std::thread::yield_now(); // full: the reader is behind
///         }
///     }
/// });
/// let mut got = Vec::new();
/// while got.len() < 100 {
///     let chunk = rx.read_chunk()?;
///     for record in chunk.records() {
///         got.push(u32::from_le_bytes(record?.try_into().expect("4-byte records")));
///     }
///     chunk.release_all();
/// }
/// writer.join().unwrap();
/// assert_eq!(got, (0..100).collect::<Vec<u32>>());
/// # Ok::<(), ring::RingError>(())
/// ```
pub fn channel(
    capacity: usize,
    kind: RecordKind,
) -> Result<(HeapProducer, HeapConsumer), RingError> {
    channel_on::<StdBackend>(capacity, kind)
}

/// [`channel`] on another [`Backend`] (a model checker's).
pub fn channel_on<B: Backend>(
    capacity: usize,
    kind: RecordKind,
) -> Result<(HeapProducer<B>, HeapConsumer<B>), RingError> {
    let memory = Arc::new(HeapRegion::new(Ring::<B>::layout_size(capacity)));
    // SAFETY: the region is fresh, zeroed, page-aligned (more than `Ring::ALIGN`) and exactly
    // `layout_size(capacity)` bytes; nobody else can reach it yet. It lives as long as the longer
    // lived of the two handles below, each of which holds an `Arc` of it and drops its view of the
    // ring before that `Arc` (field order), so the `'static` views never outlive the memory, and no
    // view escapes with that lifetime (the handles lend the ring only for their own borrow).
    let ring = unsafe { Ring::<'static, B>::init(memory.as_non_null(), capacity, kind) }?;
    // SAFETY: these are the ring's only producer and only consumer: `ring` is dropped here and
    // the handles never hand their views out.
    let (producer, consumer) = unsafe { (ring.producer(), ring.consumer()) };
    Ok((
        HeapProducer {
            producer,
            _memory: memory.clone(),
        },
        HeapConsumer {
            consumer,
            _memory: memory,
        },
    ))
}

/// The producer of a ring made by [`channel`]: owns the producer role and a share of the memory.
#[derive(Debug)]
pub struct HeapProducer<B: Backend = StdBackend> {
    // Declared first, so dropped before the memory it points into.
    producer: Producer<'static, B>,
    _memory: Arc<HeapRegion>,
}

impl<B: Backend> HeapProducer<B> {
    /// The ring, lent for as long as this handle is borrowed: its size, kind and fill level.
    pub fn ring(&self) -> Ring<'_, B> {
        *self.producer.ring()
    }

    /// [`Producer::push`]: writes one record, or returns [`Full`] without writing.
    #[inline]
    pub fn push(&mut self, record: &[u8]) -> Result<(), Full> {
        self.producer.push(record)
    }

    /// [`Producer::reserve`]: room for a variable-size record, written in place, then committed.
    pub fn reserve(&mut self, len: usize) -> Option<Reservation<'_, 'static, B>> {
        self.producer.reserve(len)
    }

    /// [`Producer::mark`]: marks the ring's current contents.
    pub fn mark(&self) {
        self.producer.mark()
    }
}

/// The consumer of a ring made by [`channel`]: owns the consumer role and a share of the memory.
#[derive(Debug)]
pub struct HeapConsumer<B: Backend = StdBackend> {
    // Declared first, so dropped before the memory it points into.
    consumer: Consumer<'static, B>,
    _memory: Arc<HeapRegion>,
}

impl<B: Backend> HeapConsumer<B> {
    /// The ring, lent for as long as this handle is borrowed: its size, kind, fill level and mark.
    pub fn ring(&self) -> Ring<'_, B> {
        *self.consumer.ring()
    }

    /// [`Consumer::read_chunk`]: everything committed and not yet released, zero-copy.
    pub fn read_chunk(&mut self) -> Result<ReadChunk<'_, 'static, B>, RingError> {
        self.consumer.read_chunk()
    }

    /// [`Consumer::pop`]: one fixed-size record into `out`; `false` when the ring is empty.
    pub fn pop(&mut self, out: &mut [u8]) -> Result<bool, RingError> {
        self.consumer.pop(out)
    }
}
