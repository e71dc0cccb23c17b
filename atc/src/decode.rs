//! The decoder: one chunk's header and payload in, its records out.

use event::{Record, CALL, NO_DETAIL, RETURN};

use crate::encode::apply_full;
use crate::{op, varint, ChunkHeader, CHUNK_HEADER_SIZE};

/// Why a chunk does not decode. Any of these means the chunk is damaged (or not a chunk); the
/// chunks around it are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header does not start with `ATCK`.
    #[error("no chunk header here (the magic is not ATCK)")]
    NotAChunk,
    /// The header's lengths are outside what a reader accepts.
    #[error(
        "the chunk header claims {events} events in {payload} bytes, which no writer produces"
    )]
    Implausible {
        /// The claimed event count.
        events: u32,
        /// The claimed payload length.
        payload: u32,
    },
    /// The payload given is not as long as the header says.
    #[error("the chunk payload is {actual} bytes, its header says {expected}")]
    Length {
        /// From the header.
        expected: u32,
        /// Given.
        actual: usize,
    },
    /// The CRC-32C does not match.
    #[error(
        "checksum mismatch: the chunk header records {expected:#010x} but the chunk's header and \
         payload hash to {actual:#010x}; the chunk was damaged after it was written"
    )]
    Checksum {
        /// From the header.
        expected: u32,
        /// Of the bytes read.
        actual: u32,
    },
    /// The payload does not decode to the header's events (a writer bug, since the checksum
    /// matched).
    #[error("the chunk payload is malformed at byte {at}: {what}")]
    Malformed {
        /// Offset in the payload.
        at: usize,
        /// What was wrong.
        what: &'static str,
    },
}

/// Decodes chunks; keeps its dictionary and stack buffers from one chunk to the next, so a reader
/// allocates nothing per chunk once warm.
#[derive(Default)]
pub struct Decoder {
    dict: Vec<u64>,
    stack: Vec<u64>,
}

impl Decoder {
    /// Checks a chunk (magic, lengths, CRC-32C) and appends its records to `out`. Returns the
    /// chunk's header. On error `out` is left as it was.
    pub fn decode(
        &mut self,
        raw: &[u8; CHUNK_HEADER_SIZE],
        payload: &[u8],
        out: &mut Vec<Record>,
    ) -> Result<ChunkHeader, DecodeError> {
        let header = ChunkHeader::decode(raw).ok_or(DecodeError::NotAChunk)?;
        if !header.plausible() {
            return Err(DecodeError::Implausible {
                events: header.event_count,
                payload: header.payload_len,
            });
        }
        if payload.len() != header.payload_len as usize {
            return Err(DecodeError::Length {
                expected: header.payload_len,
                actual: payload.len(),
            });
        }
        let actual = ChunkHeader::checksum(raw, payload);
        if actual != header.crc {
            return Err(DecodeError::Checksum {
                expected: header.crc,
                actual,
            });
        }
        let start = out.len();
        if let Err(e) = self.decode_payload(&header, payload, out) {
            out.truncate(start);
            return Err(e);
        }
        Ok(header)
    }

    fn decode_payload(
        &mut self,
        h: &ChunkHeader,
        p: &[u8],
        out: &mut Vec<Record>,
    ) -> Result<(), DecodeError> {
        let bad = |at: usize, what: &'static str| DecodeError::Malformed { at, what };
        self.dict.clear();
        self.stack.clear();
        out.reserve(h.event_count as usize);
        let (mut ts, mut depth, mut next_detail) = (h.time_first_ns, h.start_depth, h.next_detail);
        let mut pos = 0usize;
        for _ in 0..h.event_count {
            let at = pos;
            let v = varint::get(p, &mut pos).ok_or(bad(at, "truncated event"))?;
            let code = v & 7;
            let delta = v >> 3;
            ts = if code == op::FULL_BACK {
                ts.wrapping_sub(delta)
            } else {
                ts.wrapping_add(delta)
            };
            let with_detail = code == op::RET_D || code == op::CALL_D;
            let detail_seq = if with_detail { next_detail } else { NO_DETAIL };
            let r = match code {
                op::RET | op::RET_D => {
                    let function_id = self
                        .stack
                        .pop()
                        .ok_or(bad(at, "return with no open call"))?;
                    depth = depth.saturating_sub(1);
                    Record {
                        timestamp_ns: ts,
                        function_id,
                        thread_id: h.thread_id,
                        kind: RETURN,
                        call_depth: depth,
                        detail_seq,
                    }
                }
                op::CALL | op::CALL_D => {
                    let slot = varint::get(p, &mut pos).ok_or(bad(at, "truncated call"))?;
                    let function_id = match slot {
                        s if s < self.dict.len() as u64 => self.dict[s as usize],
                        s if s == self.dict.len() as u64 => {
                            let f = varint::get(p, &mut pos).ok_or(bad(at, "truncated call"))?;
                            self.dict.push(f);
                            f
                        }
                        _ => return Err(bad(at, "call of a function not in the dictionary")),
                    };
                    self.stack.push(function_id);
                    let r = Record {
                        timestamp_ns: ts,
                        function_id,
                        thread_id: h.thread_id,
                        kind: CALL,
                        call_depth: depth,
                        detail_seq,
                    };
                    depth = depth.wrapping_add(1);
                    r
                }
                op::FULL | op::FULL_BACK => {
                    let mut field = || varint::get(p, &mut pos).ok_or(bad(at, "truncated event"));
                    let kind = field()? as u32;
                    let function_id = field()?;
                    let call_depth = field()? as u32;
                    let detail = (field()? as u32).wrapping_sub(1);
                    let thread_id = field()? as u32;
                    let r = Record {
                        timestamp_ns: ts,
                        function_id,
                        thread_id,
                        kind,
                        call_depth,
                        detail_seq: detail,
                    };
                    apply_full(&r, &mut self.stack, &mut depth);
                    r
                }
                _ => return Err(bad(at, "unknown operation")),
            };
            if r.detail_seq != NO_DETAIL {
                next_detail = r.detail_seq.wrapping_add(1);
            }
            out.push(r);
        }
        if pos != p.len() {
            return Err(bad(pos, "bytes after the last event"));
        }
        if ts != h.time_last_ns {
            return Err(bad(pos, "the last timestamp differs from the header's"));
        }
        Ok(())
    }
}
