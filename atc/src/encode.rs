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
///
/// The drain runs it on every event a traced program makes, so it is built for speed: it reads
/// only the fields a prediction needs (two 8-byte words decide whether an event is the predicted
/// call or return), writes varints straight into a payload buffer sized for a full chunk plus
/// one event, remembers the last function called (a loop calling one function never probes the
/// dictionary), and keeps the general path (any event, stored exactly) out of line.
pub struct Encoder {
    thread_id: u32,
    /// File offset of the next sealed chunk.
    offset: u64,
    /// Records in the sealed chunks (the stream position of the open chunk's first record).
    sealed: u64,
    header: ChunkHeader,
    payload: Payload,
    count: u32,
    prev_ts: u64,
    /// The depth counter: a call at depth d leaves d + 1, a return leaves its own depth.
    depth: u32,
    next_detail: u32,
    stack: Vec<u64>,
    dict: Dict,
    /// The last function a call in the open chunk named, and its dictionary number: valid while
    /// `last_call_valid` (reset with the dictionary).
    last_call: (u64, u32),
    last_call_valid: bool,
    index: Vec<IndexEntry>,
}

/// Bytes 16..24 of a record (thread id, kind) as one little-endian word.
#[inline(always)]
const fn who(thread_id: u32, kind: u32) -> u64 {
    thread_id as u64 | (kind as u64) << 32
}

/// Bytes 24..32 of a record (call depth, detail sequence number) for an event without detail.
#[inline(always)]
const fn at_depth(depth: u32) -> u64 {
    depth as u64 | (NO_DETAIL as u64) << 32
}

#[inline(always)]
fn u64_at(raw: &[u8; event::SIZE], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[off..off + 8]);
    u64::from_le_bytes(b)
}

impl Encoder {
    /// An encoder for thread `thread_id` whose first chunk will start at file offset `base`.
    pub fn new(thread_id: u32, base: u64) -> Self {
        Encoder {
            thread_id,
            offset: base,
            sealed: 0,
            header: ChunkHeader::default(),
            payload: Payload::new(),
            count: 0,
            prev_ts: 0,
            depth: 0,
            next_detail: 0,
            stack: Vec::new(),
            dict: Dict::new(),
            last_call: (0, 0),
            last_call_valid: false,
            index: Vec::new(),
        }
    }

    /// Records taken so far.
    pub fn event_count(&self) -> u64 {
        self.sealed + u64::from(self.count)
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
        self.push_bytes_timed(records, out, |t| t);
    }

    /// [`push_bytes`](Self::push_bytes) of records whose timestamps are another clock's readings:
    /// each record is encoded with `time(its timestamp)` as its time (e.g. raw TSC ticks mapped
    /// to nanoseconds), read once as the encoder decodes it, without a copy of the records.
    #[inline]
    pub fn push_bytes_timed(
        &mut self,
        records: &[u8],
        out: &mut Vec<u8>,
        time: impl Fn(u64) -> u64 + Copy,
    ) {
        let whole = &records[..records.len() - records.len() % event::SIZE];
        let mut at = 0;
        while at < whole.len() {
            at += self.run_predicted(&whole[at..], time) * event::SIZE;
            if self.payload.len >= CHUNK_TARGET_BYTES {
                self.seal(out);
            }
            if let Some(raw) = whole.get(at..at + event::SIZE) {
                let mut r = Record::from_bytes(raw.try_into().expect("a whole record"));
                r.timestamp_ns = time(r.timestamp_ns);
                self.push_general(&r, out);
                at += event::SIZE;
            }
        }
    }

    /// Encodes one record, sealing the chunk into `out` if it is full.
    #[inline]
    pub fn push(&mut self, raw: &[u8; event::SIZE], out: &mut Vec<u8>) {
        self.push_bytes(raw, out);
    }

    /// Encodes the predicted events at the start of `records` (whole records) into the open
    /// chunk and returns how many it took: it stops before the first event that is not the
    /// predicted call or return without detail (see below), that is far from the previous one in
    /// time, or that would not fit the chunk, and takes nothing when no chunk is open.
    ///
    /// Predicted: the return of the function on top of the stack at the depth below the current
    /// one, and a call at the current depth of the function called last or of one the dictionary
    /// holds or has room for; both of the chunk's thread, with no detail, time not going back.
    /// The state it changes stays in registers for the run and is stored once at the end.
    #[inline(always)]
    fn run_predicted(&mut self, records: &[u8], time: impl Fn(u64) -> u64) -> usize {
        if self.count == 0 {
            return 0;
        }
        let ret_who = who(self.thread_id, RETURN);
        let call_who = who(self.thread_id, CALL);
        let (mut prev_ts, mut depth, mut len) = (self.prev_ts, self.depth, self.payload.len);
        let (mut last_call, mut last_call_valid) = (self.last_call, self.last_call_valid);
        let buf = &mut *self.payload.buf;
        let stack = &mut self.stack;
        let dict = &mut self.dict;
        let mut taken = 0;
        for raw in records.chunks_exact(event::SIZE) {
            if len >= CHUNK_TARGET_BYTES {
                break;
            }
            let raw: &[u8; event::SIZE] = raw.try_into().expect("a whole record");
            let ts = time(u64_at(raw, 0));
            // Time going backwards wraps to a huge delta.
            let delta = ts.wrapping_sub(prev_ts);
            if delta >= MAX_DELTA {
                break;
            }
            let function = u64_at(raw, 8);
            let who_kind = u64_at(raw, 16);
            let depth_detail = u64_at(raw, 24);
            if who_kind == ret_who
                && depth_detail == at_depth(depth.saturating_sub(1))
                && stack.last() == Some(&function)
            {
                len += put(buf, len, (delta << 3) | op::RET);
                stack.pop();
                depth = depth_detail as u32;
            } else if who_kind == call_who && depth_detail == at_depth(depth) {
                let slot = if last_call_valid && last_call.0 == function {
                    last_call.1
                } else {
                    let Some((slot, new)) = dict.find(function) else {
                        break;
                    };
                    if new {
                        // The introduction: the number (the dictionary's length), then the id.
                        len += put(buf, len, (delta << 3) | op::CALL);
                        len += put(buf, len, u64::from(slot));
                        len += put(buf, len, function);
                        stack.push(function);
                        depth = depth.wrapping_add(1);
                        (last_call, last_call_valid) = ((function, slot), true);
                        prev_ts = ts;
                        taken += 1;
                        continue;
                    }
                    slot
                };
                len += put(buf, len, (delta << 3) | op::CALL);
                len += put(buf, len, u64::from(slot));
                stack.push(function);
                depth = depth.wrapping_add(1);
                (last_call, last_call_valid) = ((function, slot), true);
            } else {
                break;
            }
            prev_ts = ts;
            taken += 1;
        }
        (self.prev_ts, self.depth, self.payload.len) = (prev_ts, depth, len);
        (self.last_call, self.last_call_valid) = (last_call, last_call_valid);
        self.count += taken as u32;
        taken
    }

    /// [`push`](Self::push) of a record that opens a chunk, is far from the previous one in time,
    /// or is not a predicted call or return.
    #[inline(never)]
    fn push_general(&mut self, r: &Record, out: &mut Vec<u8>) {
        if self.count > 0 && r.timestamp_ns.abs_diff(self.prev_ts) >= MAX_DELTA {
            self.seal(out);
        }
        if self.count == 0 {
            self.open(r.timestamp_ns);
        }
        self.encode_general(r);
        self.count += 1;
        if self.payload.len >= CHUNK_TARGET_BYTES {
            self.seal(out);
        }
    }

    fn open(&mut self, ts: u64) {
        self.header = ChunkHeader {
            first_seq: self.sealed,
            time_first_ns: ts,
            thread_id: self.thread_id,
            start_depth: self.depth,
            next_detail: self.next_detail,
            ..ChunkHeader::default()
        };
        self.prev_ts = ts;
    }

    /// What a predicted call of `function` (dictionary number `slot`) does to the state.
    #[inline(always)]
    fn called(&mut self, function: u64, slot: u32) {
        self.stack.push(function);
        self.depth = self.depth.wrapping_add(1);
        self.last_call = (function, slot);
        self.last_call_valid = true;
    }

    /// Any event: predicted with its detail sequence number when it can be, stored in full
    /// otherwise.
    #[inline(always)]
    fn encode_general(&mut self, r: &Record) {
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
                self.payload.put((delta << 3) | (op::RET + d));
                self.stack.pop();
                self.depth = r.call_depth;
                self.note_detail(r.detail_seq);
                return;
            }
            if r.kind == CALL && r.call_depth == self.depth {
                if let Some((slot, new)) = self.dict.find(r.function_id) {
                    self.payload.put((delta << 3) | (op::CALL + d));
                    self.payload.put(u64::from(slot));
                    if new {
                        self.payload.put(r.function_id);
                    }
                    self.called(r.function_id, slot);
                    self.note_detail(r.detail_seq);
                    return;
                }
            }
        }
        let code = if back { op::FULL_BACK } else { op::FULL };
        self.payload.put((delta << 3) | code);
        self.payload.put(u64::from(r.kind));
        self.payload.put(r.function_id);
        self.payload.put(u64::from(r.call_depth));
        self.payload.put(u64::from(r.detail_seq.wrapping_add(1)));
        self.payload.put(u64::from(r.thread_id));
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
        let payload = self.payload.bytes();
        self.header.payload_len = payload.len() as u32;
        self.header.event_count = self.count;
        self.header.time_last_ns = self.prev_ts;
        self.header.crc = 0;
        let raw = self.header.encode();
        self.header.crc = ChunkHeader::checksum(&raw, payload);
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(payload);
        self.index.push(IndexEntry::of(self.offset, &self.header));
        self.offset += (CHUNK_HEADER_SIZE + payload.len()) as u64;
        self.payload.len = 0;
        self.sealed += u64::from(self.count);
        self.count = 0;
        self.stack.clear();
        self.dict.clear();
        self.last_call_valid = false;
        true
    }

    /// Seals the open chunk and appends the chunk index and the trailer: the file is finished.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.seal(out);
        let index_offset = self.offset;
        encode_index(&self.index, out);
        let trailer = Trailer {
            index_offset,
            event_count: self.sealed,
            chunk_count: self.index.len() as u32,
        };
        out.extend_from_slice(&trailer.encode());
    }
}

/// Largest encoding of one event: an event stored in full (the op varint, three 32-bit fields of
/// up to 5 bytes, two 64-bit ones of up to 10).
const EVENT_MAX: usize = 2 * varint::MAX_LEN + 4 * 5;

/// The open chunk's payload: a buffer that holds a full chunk plus the event that fills it, so
/// varints are written in place with no growth check (the encoder seals once `len` reaches
/// [`CHUNK_TARGET_BYTES`], before the next event).
struct Payload {
    buf: Box<[u8; PAYLOAD_CAPACITY]>,
    len: usize,
}

const PAYLOAD_CAPACITY: usize = CHUNK_TARGET_BYTES + EVENT_MAX + varint::MAX_LEN;
// Every event takes at least one byte: a chunk of CHUNK_MAX_EVENTS events has reached
// CHUNK_TARGET_BYTES, so `push` checks the bytes only.
const _: () = assert!(CHUNK_MAX_EVENTS as usize >= CHUNK_TARGET_BYTES);

impl Payload {
    fn new() -> Self {
        Payload {
            buf: vec![0u8; PAYLOAD_CAPACITY]
                .into_boxed_slice()
                .try_into()
                .expect("PAYLOAD_CAPACITY bytes"),
            len: 0,
        }
    }

    #[inline(always)]
    fn put(&mut self, v: u64) {
        self.len += put(&mut self.buf, self.len, v);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Writes the varint `v` at `buf[at..]` and returns its length. The encoder starts an event only
/// below [`CHUNK_TARGET_BYTES`], so its varints fit the buffer.
#[inline(always)]
fn put(buf: &mut [u8; PAYLOAD_CAPACITY], at: usize, v: u64) -> usize {
    let dst: &mut [u8; varint::MAX_LEN] = (&mut buf[at..at + varint::MAX_LEN])
        .try_into()
        .expect("a varint-sized window");
    varint::put_at(dst, v)
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
/// Open addressing at most half full, one 16-byte entry a probe (key, number and generation side
/// by side); a generation stamp empties it in O(1) per chunk.
struct Dict {
    entries: Vec<DictEntry>,
    gen: u32,
    len: u32,
}

#[derive(Clone, Copy, Default)]
struct DictEntry {
    key: u64,
    slot: u32,
    /// The entry is in use when this is the dictionary's generation.
    gen: u32,
}

const DICT_BITS: u32 = 13;
const _: () = assert!((1 << DICT_BITS) >= 2 * DICT_MAX);

impl Dict {
    fn new() -> Self {
        Dict {
            entries: vec![DictEntry::default(); 1 << DICT_BITS],
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
            let e = &mut self.entries[h & mask];
            if e.gen != self.gen {
                if self.len as usize >= DICT_MAX {
                    return None;
                }
                *e = DictEntry {
                    key: function,
                    slot: self.len,
                    gen: self.gen,
                };
                self.len += 1;
                return Some((e.slot, true));
            }
            if e.key == function {
                return Some((e.slot, false));
            }
            h = (h & mask) + 1;
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.entries.fill(DictEntry::default());
            self.gen = 1;
        }
    }
}
