//! The encoder: records in, sealed chunks out.

use event::{Record, CALL, NO_DETAIL, RETURN};

use crate::{
    encode_index, op, varint, ChunkHeader, IndexEntry, Trailer, CHUNK_HEADER_SIZE,
    CHUNK_MAX_EVENTS, CHUNK_TARGET_BYTES, DICT_MAX,
};

/// Timestamp deltas from here on start a new chunk (they would not fit the op varint).
const MAX_DELTA: u64 = 1 << 60;

/// Encodes one thread's records into chunks (see the crate documentation).
///
/// [`push`](Self::push) adds a record to the open chunk and, when the chunk is full
/// ([`CHUNK_TARGET_BYTES`], [`CHUNK_MAX_EVENTS`]), appends it sealed to `out`;
/// [`seal`](Self::seal) closes the open chunk at once (a writer does so before every write that
/// must survive a crash); [`finish`](Self::finish) seals and appends the chunk index and the
/// trailer. The encoder remembers where each chunk starts (from the `base` offset it was given)
/// to build the index.
pub struct Encoder {
    thread_id: u32,
    /// File offset of the next sealed chunk.
    offset: u64,
    /// Stream position of the next record.
    seq: u64,
    header: ChunkHeader,
    payload: Vec<u8>,
    count: u32,
    prev_ts: u64,
    /// The depth counter: a call at depth d leaves d + 1, a return leaves its own depth.
    depth: u32,
    next_detail: u32,
    stack: Vec<u64>,
    dict: Dict,
    index: Vec<IndexEntry>,
}

impl Encoder {
    /// An encoder for thread `thread_id` whose first chunk will start at file offset `base`.
    pub fn new(thread_id: u32, base: u64) -> Self {
        Encoder {
            thread_id,
            offset: base,
            seq: 0,
            header: ChunkHeader::default(),
            payload: Vec::with_capacity(CHUNK_TARGET_BYTES + 64),
            count: 0,
            prev_ts: 0,
            depth: 0,
            next_detail: 0,
            stack: Vec::new(),
            dict: Dict::new(),
            index: Vec::new(),
        }
    }

    /// Records taken so far.
    pub fn event_count(&self) -> u64 {
        self.seq
    }

    /// Records in the open (unsealed) chunk.
    pub fn pending(&self) -> u32 {
        self.count
    }

    /// The sealed chunks so far.
    pub fn index(&self) -> &[IndexEntry] {
        &self.index
    }

    /// File offset where the next sealed chunk starts (the base plus every byte sealed).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Encodes whole 32-byte records (a trailing partial record is ignored), sealing full chunks
    /// into `out`.
    pub fn push_bytes(&mut self, records: &[u8], out: &mut Vec<u8>) {
        for raw in records.chunks_exact(event::SIZE) {
            let mut b = [0u8; event::SIZE];
            b.copy_from_slice(raw);
            self.push(&b, out);
        }
    }

    /// Encodes one record, sealing the chunk into `out` if it is full.
    #[inline]
    pub fn push(&mut self, raw: &[u8; event::SIZE], out: &mut Vec<u8>) {
        let r = Record::from_bytes(raw);
        if self.count > 0 && r.timestamp_ns.abs_diff(self.prev_ts) >= MAX_DELTA {
            self.seal(out);
        }
        if self.count == 0 {
            self.open(&r);
        }
        self.encode(&r);
        self.count += 1;
        self.seq += 1;
        if self.payload.len() >= CHUNK_TARGET_BYTES || self.count >= CHUNK_MAX_EVENTS {
            self.seal(out);
        }
    }

    fn open(&mut self, r: &Record) {
        self.header = ChunkHeader {
            first_seq: self.seq,
            time_first_ns: r.timestamp_ns,
            thread_id: self.thread_id,
            start_depth: self.depth,
            next_detail: self.next_detail,
            ..ChunkHeader::default()
        };
        self.prev_ts = r.timestamp_ns;
    }

    #[inline(always)]
    fn encode(&mut self, r: &Record) {
        let back = r.timestamp_ns < self.prev_ts;
        let delta = r.timestamp_ns.abs_diff(self.prev_ts);
        self.prev_ts = r.timestamp_ns;
        let detail = if r.detail_seq == NO_DETAIL {
            Some(0)
        } else if r.detail_seq == self.next_detail {
            Some(op::RET_D - op::RET)
        } else {
            None
        };
        if let (false, true, Some(d)) = (back, r.thread_id == self.thread_id, detail) {
            if r.kind == RETURN
                && self.stack.last() == Some(&r.function_id)
                && r.call_depth == self.depth.saturating_sub(1)
            {
                varint::put(&mut self.payload, (delta << 3) | (op::RET + d));
                self.stack.pop();
                self.depth = r.call_depth;
                self.note_detail(r.detail_seq);
                return;
            }
            if r.kind == CALL && r.call_depth == self.depth {
                if let Some((slot, new)) = self.dict.find(r.function_id) {
                    varint::put(&mut self.payload, (delta << 3) | (op::CALL + d));
                    varint::put(&mut self.payload, u64::from(slot));
                    if new {
                        varint::put(&mut self.payload, r.function_id);
                    }
                    self.stack.push(r.function_id);
                    self.depth = r.call_depth.wrapping_add(1);
                    self.note_detail(r.detail_seq);
                    return;
                }
            }
        }
        let code = if back { op::FULL_BACK } else { op::FULL };
        varint::put(&mut self.payload, (delta << 3) | code);
        varint::put(&mut self.payload, u64::from(r.kind));
        varint::put(&mut self.payload, r.function_id);
        varint::put(&mut self.payload, u64::from(r.call_depth));
        varint::put(&mut self.payload, u64::from(r.detail_seq.wrapping_add(1)));
        varint::put(&mut self.payload, u64::from(r.thread_id));
        apply_full(r, &mut self.stack, &mut self.depth);
        self.note_detail(r.detail_seq);
    }

    #[inline(always)]
    fn note_detail(&mut self, seq: u32) {
        if seq != NO_DETAIL {
            self.next_detail = seq.wrapping_add(1);
        }
    }

    /// Seals the open chunk, if it holds any record, appending its header and payload to `out`.
    /// Returns whether a chunk was sealed.
    pub fn seal(&mut self, out: &mut Vec<u8>) -> bool {
        if self.count == 0 {
            return false;
        }
        self.header.payload_len = self.payload.len() as u32;
        self.header.event_count = self.count;
        self.header.time_last_ns = self.prev_ts;
        self.header.crc = 0;
        let raw = self.header.encode();
        self.header.crc = ChunkHeader::checksum(&raw, &self.payload);
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&self.payload);
        self.index.push(IndexEntry::of(self.offset, &self.header));
        self.offset += (CHUNK_HEADER_SIZE + self.payload.len()) as u64;
        self.payload.clear();
        self.count = 0;
        self.stack.clear();
        self.dict.clear();
        true
    }

    /// Seals the open chunk and appends the chunk index and the trailer: the file is finished.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.seal(out);
        let index_offset = self.offset;
        encode_index(&self.index, out);
        let trailer = Trailer {
            index_offset,
            event_count: self.seq,
            chunk_count: self.index.len() as u32,
        };
        out.extend_from_slice(&trailer.encode());
    }
}

/// What a fully stored event does to the chunk's call stack and depth counter (the decoder
/// applies the same rule).
#[inline(always)]
pub(crate) fn apply_full(r: &Record, stack: &mut Vec<u64>, depth: &mut u32) {
    match r.kind {
        CALL => {
            stack.push(r.function_id);
            *depth = r.call_depth.wrapping_add(1);
        }
        RETURN => {
            stack.pop();
            *depth = r.call_depth;
        }
        _ => *depth = r.call_depth,
    }
}

/// The chunk's function dictionary: function id to its number in order of first appearance.
/// Open addressing at most half full; a generation stamp empties it in O(1) per chunk.
struct Dict {
    keys: Vec<u64>,
    slots: Vec<u32>,
    gens: Vec<u32>,
    gen: u32,
    len: u32,
}

const DICT_BITS: u32 = 13;
const _: () = assert!((1 << DICT_BITS) >= 2 * DICT_MAX);

impl Dict {
    fn new() -> Self {
        let n = 1 << DICT_BITS;
        Dict {
            keys: vec![0; n],
            slots: vec![0; n],
            gens: vec![0; n],
            gen: 1,
            len: 0,
        }
    }

    /// The number of `function`, and whether it was added just now; `None` if it is new and
    /// the dictionary is full.
    #[inline(always)]
    fn find(&mut self, function: u64) -> Option<(u32, bool)> {
        let mask = (1usize << DICT_BITS) - 1;
        let mut h = (function.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - DICT_BITS)) as usize;
        loop {
            if self.gens[h] != self.gen {
                if self.len as usize >= DICT_MAX {
                    return None;
                }
                self.gens[h] = self.gen;
                self.keys[h] = function;
                self.slots[h] = self.len;
                self.len += 1;
                return Some((self.len - 1, true));
            }
            if self.keys[h] == function {
                return Some((self.slots[h], false));
            }
            h = (h + 1) & mask;
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.gens.fill(0);
            self.gen = 1;
        }
    }
}
