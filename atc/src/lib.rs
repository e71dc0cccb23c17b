//! ATC, the compact encoding of one thread's call/return events (`docs/atc.md` is the format's
//! specification): a 64-byte file header, then self-contained chunks, each a 56-byte header with a
//! CRC-32C and a payload of a few bytes per event (delta timestamps, a per-chunk function
//! dictionary, returns predicted from a per-chunk call stack, LEB128 varints), then, once the file
//! is finished, a chunk index and a 32-byte trailer.
//!
//! Contract: the encoding is lossless — [`decode`](Decoder::decode) gives back every
//! [`event::Record`] the [`Encoder`] took, bit for bit, whatever the records hold (events that break
//! the predictions are stored in full). Each chunk decodes alone (its header carries the base
//! timestamp, depth, detail sequence and thread id; the dictionary and call stack start empty), so a
//! reader can start at any chunk, a torn or damaged chunk costs only itself, and a file cut at any
//! byte (a killed writer) keeps every chunk before the cut. This crate does no I/O: it turns records
//! into bytes and back; `atf` puts those bytes in files. The encoder allocates nothing per event.
//!
//! ```
//! use atc::{ChunkHeader, Decoder, Encoder, CHUNK_HEADER_SIZE, FILE_HEADER_SIZE};
//! use event::{Record, CALL, NO_DETAIL, RETURN};
//!
//! let mut enc = Encoder::new(7, FILE_HEADER_SIZE as u64);
//! let mut bytes = Vec::new();
//! for i in 0..1000u64 {
//!     let kind = if i % 2 == 0 { CALL } else { RETURN };
//!     let r = Record { timestamp_ns: 1_000 + 25 * i, function_id: 0x40_1130, thread_id: 7,
//!                      kind, call_depth: 0, detail_seq: NO_DETAIL };
//!     enc.push(&r.to_bytes(), &mut bytes);
//! }
//! enc.seal(&mut bytes);
//! assert!(bytes.len() < 1000 * 3); // 32 000 bytes as raw records
//!
//! let raw: [u8; CHUNK_HEADER_SIZE] = bytes[..CHUNK_HEADER_SIZE].try_into().unwrap();
//! let header = ChunkHeader::decode(&raw).unwrap();
//! let payload = &bytes[CHUNK_HEADER_SIZE..CHUNK_HEADER_SIZE + header.payload_len as usize];
//! let mut out = Vec::new();
//! Decoder::default().decode(&raw, payload, &mut out).unwrap();
//! assert_eq!(out.len(), 1000);
//! assert_eq!(out[1].timestamp_ns, 1_025);
//! ```

mod decode;
mod encode;
mod varint;

pub use decode::{DecodeError, Decoder};
pub use encode::Encoder;

/// Size of the file header.
pub const FILE_HEADER_SIZE: usize = 64;
/// Size of a chunk header.
pub const CHUNK_HEADER_SIZE: usize = 56;
/// Size of the header of the chunk index block.
pub const INDEX_HEADER_SIZE: usize = 16;
/// Size of one chunk index entry.
pub const INDEX_ENTRY_SIZE: usize = 32;
/// Size of the trailer that ends a finished file.
pub const TRAILER_SIZE: usize = 32;

/// Magic of the file header.
pub const FILE_MAGIC: [u8; 4] = *b"ATC1";
/// Magic of a chunk header.
pub const CHUNK_MAGIC: [u8; 4] = *b"ATCK";
/// Magic of the chunk index block.
pub const INDEX_MAGIC: [u8; 4] = *b"ATCI";
/// Magic of the trailer.
pub const TRAILER_MAGIC: [u8; 4] = *b"ATCE";
/// File header `version`.
pub const VERSION: u8 = 1;
/// File header `flags` bit: the thread has a detail file.
pub const FLAG_HAS_DETAIL: u32 = 1;

/// The encoder closes a chunk once its payload reaches this many bytes.
pub const CHUNK_TARGET_BYTES: usize = 64 << 10;
/// The encoder closes a chunk once it holds this many events.
pub const CHUNK_MAX_EVENTS: u32 = 1 << 16;
/// The encoder closes a chunk before its dictionary would exceed this many functions.
pub const DICT_MAX: usize = 4096;
/// Largest payload a reader accepts (bigger is corrupt input, not an allocation to attempt).
pub const READ_MAX_PAYLOAD: u32 = 16 << 20;
/// Largest event count a reader accepts in one chunk.
pub const READ_MAX_EVENTS: u32 = 1 << 24;

/// Event operations: the low 3 bits of each event's first varint.
pub(crate) mod op {
    /// Return of the function on top of the chunk's call stack, at the predicted depth.
    pub const RET: u64 = 0;
    /// Call of a dictionary function at the predicted depth.
    pub const CALL: u64 = 1;
    /// [`RET`] with the next detail sequence number.
    pub const RET_D: u64 = 2;
    /// [`CALL`] with the next detail sequence number.
    pub const CALL_D: u64 = 3;
    /// Every field stored, timestamp before the previous one.
    pub const FULL_BACK: u64 = 6;
    /// Every field stored.
    pub const FULL: u64 = 7;
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

event::file_header! {
    /// The 64-byte file header (the prefix every trace file kind shares, then the clock and the
    /// chunk header size). Byte 5, `version`, is [`VERSION`]; `flags` holds [`FLAG_HAS_DETAIL`].
    pub struct FileHeader(FILE_HEADER_SIZE, magic FILE_MAGIC) {
        /// Byte 16: the clock (3 = `CLOCK_BOOTTIME` nanoseconds, as in ATF v2).
        clock_type: u8 @ 16,
        /// Bytes 20..24: [`CHUNK_HEADER_SIZE`].
        chunk_header_size: u32 @ 20,
    }
}

/// The 56-byte header of a chunk: everything its payload needs to decode alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Bytes 4..8: payload bytes after this header.
    pub payload_len: u32,
    /// Bytes 8..12: events in the payload (at least 1).
    pub event_count: u32,
    /// Bytes 12..16: CRC-32C of this header (these 4 bytes as zero) followed by the payload.
    pub crc: u32,
    /// Bytes 16..24: position of the chunk's first event in the thread's event stream.
    pub first_seq: u64,
    /// Bytes 24..32: timestamp of the first event (the base of the deltas).
    pub time_first_ns: u64,
    /// Bytes 32..40: timestamp of the last event.
    pub time_last_ns: u64,
    /// Bytes 40..44: the thread id of every predicted event.
    pub thread_id: u32,
    /// Bytes 44..48: the depth counter before the first event.
    pub start_depth: u32,
    /// Bytes 48..52: the detail sequence number the next detail-linked event takes.
    pub next_detail: u32,
}

impl ChunkHeader {
    /// The CRC-32C a chunk with these header bytes and this payload must carry.
    pub fn checksum(raw: &[u8; CHUNK_HEADER_SIZE], payload: &[u8]) -> u32 {
        let mut zeroed = *raw;
        zeroed[12..16].fill(0);
        crc32c::crc32c_append(crc32c::crc32c(&zeroed), payload)
    }

    /// Whether a payload length and event count are within what a reader accepts.
    pub fn plausible(&self) -> bool {
        self.event_count >= 1
            && self.event_count <= READ_MAX_EVENTS
            && self.payload_len <= READ_MAX_PAYLOAD
            && self.payload_len >= self.event_count.min(1)
    }
}

event::le_fields!(ChunkHeader, CHUNK_HEADER_SIZE, magic CHUNK_MAGIC, {
    payload_len: u32 @ 4, event_count: u32 @ 8, crc: u32 @ 12, first_seq: u64 @ 16,
    time_first_ns: u64 @ 24, time_last_ns: u64 @ 32, thread_id: u32 @ 40, start_depth: u32 @ 44,
    next_detail: u32 @ 48,
});

/// One entry of the chunk index: where a chunk starts and what it covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexEntry {
    /// File offset of the chunk header.
    pub offset: u64,
    /// Position of its first event in the thread's stream.
    pub first_seq: u64,
    /// Timestamp of its first event.
    pub time_first_ns: u64,
    /// Timestamp of its last event.
    pub time_last_ns: u64,
}

impl IndexEntry {
    /// The entry a chunk header at `offset` describes.
    pub fn of(offset: u64, header: &ChunkHeader) -> Self {
        IndexEntry {
            offset,
            first_seq: header.first_seq,
            time_first_ns: header.time_first_ns,
            time_last_ns: header.time_last_ns,
        }
    }

    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.time_first_ns.to_le_bytes());
        out.extend_from_slice(&self.time_last_ns.to_le_bytes());
    }
}

/// The 32-byte trailer of a finished file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Bytes 8..16: file offset of the chunk index block.
    pub index_offset: u64,
    /// Bytes 16..24: events in the file.
    pub event_count: u64,
    /// Bytes 24..28: chunks in the file (entries in the index).
    pub chunk_count: u32,
}

impl Trailer {
    /// The 32 bytes: magic, CRC-32C of bytes 8..32, the fields.
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[0..4].copy_from_slice(&TRAILER_MAGIC);
        self.put_fields(&mut b);
        let crc = crc32c::crc32c(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The trailer in 32 bytes, or `None` if the magic or the checksum is wrong.
    pub fn decode(b: &[u8; TRAILER_SIZE]) -> Option<Self> {
        if b[0..4] != TRAILER_MAGIC || u32_at(b, 4) != crc32c::crc32c(&b[8..]) {
            return None;
        }
        Some(Self::get_fields(b))
    }
}

event::le_fields!(Trailer, TRAILER_SIZE, {
    index_offset: u64 @ 8, event_count: u64 @ 16, chunk_count: u32 @ 24,
});

/// The bytes of an index block listing `entries`: magic, count, CRC-32C of the entries, then
/// the entries.
pub fn encode_index(entries: &[IndexEntry], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    let body = out.len();
    for e in entries {
        e.put(out);
    }
    let crc = crc32c::crc32c(&out[body..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// The entries of an index block (header and entries, exactly `16 + 32 * count` bytes), or
/// `None` if its magic, length, checksum or reserved bytes are wrong.
pub fn decode_index(bytes: &[u8]) -> Option<Vec<IndexEntry>> {
    if bytes.len() < INDEX_HEADER_SIZE || bytes[0..4] != INDEX_MAGIC || u32_at(bytes, 12) != 0 {
        return None;
    }
    let count = u32_at(bytes, 4) as usize;
    let body = &bytes[INDEX_HEADER_SIZE..];
    if body.len() != count.checked_mul(INDEX_ENTRY_SIZE)?
        || u32_at(bytes, 8) != crc32c::crc32c(body)
    {
        return None;
    }
    Some(
        body.chunks_exact(INDEX_ENTRY_SIZE)
            .map(|e| IndexEntry {
                offset: u64_at(e, 0),
                first_seq: u64_at(e, 8),
                time_first_ns: u64_at(e, 16),
                time_last_ns: u64_at(e, 24),
            })
            .collect(),
    )
}

/// The index of the chunk holding the first event at or after `time_ns`, assuming chunks in
/// time order (the recording clock is monotonic per thread): the first chunk whose last event
/// is not before `time_ns`; `entries.len()` if there is none.
pub fn chunk_at_time(entries: &[IndexEntry], time_ns: u64) -> usize {
    entries.partition_point(|e| e.time_last_ns < time_ns)
}

/// The index of the chunk holding event `seq`: the last chunk starting at or before it.
pub fn chunk_at_seq(entries: &[IndexEntry], seq: u64) -> usize {
    entries
        .partition_point(|e| e.first_seq <= seq)
        .saturating_sub(1)
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests;
