//! `index.atc`: a thread's events in ATC, the compact encoding of the `atc` crate
//! (`docs/atc.md`). The writer side lives in [`crate::IndexWriter`] (it shares the file engine
//! with ATF v2); this module finds the chunks of a file — through the trailer and chunk index of
//! a finished file, or by walking the chunk headers of one that was not finished — and decodes
//! them one at a time.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use atc::{ChunkHeader, DecodeError, Decoder, IndexEntry, Trailer, CHUNK_HEADER_SIZE};
use event::Record;

use crate::engine::{check_common_header, open_with_header, Kind};
use crate::error::{Error, Result};
use crate::verify::{self, Damage, EventCheck};
use crate::IndexEvent;
use crate::{ClockType, FILE_VERSION};

/// Error messages of the ATC file.
pub(crate) static KIND: Kind = Kind {
    create: "create the event file (is the directory writable, the name unused?)",
    header: "write the event file header (is the disk full or failing?); the file was removed",
    write: "write the event file (is the disk full or failing?)",
};

/// The header of a file recorded on this machine.
pub(crate) fn file_header(thread_id: u32, clock: ClockType) -> atc::FileHeader {
    atc::FileHeader {
        thread_id,
        clock_type: clock.to_raw(),
        chunk_header_size: CHUNK_HEADER_SIZE as u32,
        ..atc::FileHeader::this_machine(atc::VERSION)
    }
}

/// Bytes after the last chunk of a finished file with `chunks` chunks: index block and trailer.
pub(crate) fn tail_len(chunks: usize) -> u64 {
    (atc::INDEX_HEADER_SIZE + chunks * atc::INDEX_ENTRY_SIZE + atc::TRAILER_SIZE) as u64
}

/// Whether `path` is a regular file starting with the ATC magic (any error: no, and the ATF v2
/// reader reports it).
pub(crate) fn has_magic(path: &Path) -> bool {
    crate::engine::has_magic(path, atc::FILE_MAGIC)
}

/// Reads bytes at an offset of the file being opened; the `&str` names the read in errors.
type ReadAt<'a> = dyn Fn(&'static str, &mut [u8], u64) -> Result<()> + 'a;

/// Where an ATC file's chunks are, and what they hold.
pub(crate) struct Chunks {
    header: atc::FileHeader,
    entries: Vec<IndexEntry>,
    /// End of the last whole chunk.
    end: u64,
    event_count: u64,
    finished: bool,
    note: Option<String>,
    /// An unfinished file whose chunk walk stopped before its end: where, and why.
    stopped: Option<(u64, String)>,
    /// The file's length when opened.
    len: u64,
}

impl Chunks {
    /// Opens `path` and finds its chunks.
    pub(crate) fn open(path: &Path) -> Result<(File, Chunks)> {
        let (file, len, raw) = open_with_header(path, "an ATC event", atc::FILE_MAGIC)?;
        let header = atc::FileHeader::decode(&raw).ok_or_else(|| {
            Error::corrupt(path, "the file header does not start with ATC1".to_owned())
        })?;
        check_common_header(path, header.endian, header.version)?;
        if header.version != FILE_VERSION || header.chunk_header_size != CHUNK_HEADER_SIZE as u32 {
            return Err(Error::corrupt(
                path,
                format!(
                    "the header says chunk headers are {} bytes; ATC version 1 has {CHUNK_HEADER_SIZE}",
                    header.chunk_header_size
                ),
            ));
        }
        let read = |what, buf: &mut [u8], at| {
            file.read_exact_at(buf, at)
                .map_err(|e| Error::io(path, what, e))
        };
        if let Some(chunks) = Self::from_trailer(&header, len, &read)? {
            return Ok((file, chunks));
        }
        // Not finished: walk the chunk headers.
        let mut entries = Vec::new();
        let (mut at, mut count) = (atc::FILE_HEADER_SIZE as u64, 0u64);
        let mut stop: Option<String> = None;
        while at + CHUNK_HEADER_SIZE as u64 <= len {
            let mut raw = [0u8; CHUNK_HEADER_SIZE];
            read("read a chunk header", &mut raw, at)?;
            let Some(h) = ChunkHeader::decode(&raw) else {
                if raw[0..4] != atc::INDEX_MAGIC {
                    stop = Some(format!("stopped at offset {at}, which holds no chunk"));
                }
                break;
            };
            if !h.plausible() || h.first_seq != count {
                stop = Some(format!("stopped at a damaged chunk header at offset {at}"));
                break;
            }
            let next = at + (CHUNK_HEADER_SIZE as u64) + u64::from(h.payload_len);
            if next > len {
                break; // the last chunk was cut short
            }
            entries.push(IndexEntry::of(at, &h));
            count += u64::from(h.event_count);
            at = next;
        }
        let mut note = format!(
            "the file was not finished; recovered {count} events in {} complete chunk{}",
            entries.len(),
            if entries.len() == 1 { "" } else { "s" }
        );
        if let Some(stop) = &stop {
            note.push_str(&format!(", {stop}"));
        }
        if len > at {
            note.push_str(&format!(", ignored {} trailing bytes", len - at));
        }
        let chunks = Chunks {
            header,
            entries,
            end: at,
            event_count: count,
            finished: false,
            note: Some(note),
            stopped: stop.map(|why| (at, why)),
            len,
        };
        Ok((file, chunks))
    }

    /// The chunks as a finished file's trailer and index list them, or `None` if the file has no
    /// valid trailer and index (it was not finished).
    fn from_trailer(
        header: &atc::FileHeader,
        len: u64,
        read: &ReadAt<'_>,
    ) -> Result<Option<Chunks>> {
        let min = (atc::FILE_HEADER_SIZE + atc::INDEX_HEADER_SIZE + atc::TRAILER_SIZE) as u64;
        if len < min {
            return Ok(None);
        }
        let mut raw = [0u8; atc::TRAILER_SIZE];
        read("read the trailer", &mut raw, len - atc::TRAILER_SIZE as u64)?;
        let Some(trailer) = Trailer::decode(&raw) else {
            return Ok(None);
        };
        let chunks = trailer.chunk_count as usize;
        if trailer.index_offset < atc::FILE_HEADER_SIZE as u64
            || trailer.index_offset.checked_add(tail_len(chunks)) != Some(len)
        {
            return Ok(None);
        }
        let mut block = vec![0u8; atc::INDEX_HEADER_SIZE + chunks * atc::INDEX_ENTRY_SIZE];
        read("read the chunk index", &mut block, trailer.index_offset)?;
        let Some(entries) = atc::decode_index(&block) else {
            return Ok(None);
        };
        // The entries must tile the file from the header to the index, in stream order, or the
        // index is not trusted (and the chunks are walked instead).
        let mut prev_seq = None;
        for (i, e) in entries.iter().enumerate() {
            let next_offset = entries
                .get(i + 1)
                .map_or(trailer.index_offset, |n| n.offset);
            let starts_right =
                i > 0 || (e.offset == atc::FILE_HEADER_SIZE as u64 && e.first_seq == 0);
            if !starts_right
                || next_offset <= e.offset
                || prev_seq.is_some_and(|p| e.first_seq <= p)
            {
                return Ok(None);
            }
            prev_seq = Some(e.first_seq);
        }
        let consistent = match entries.last() {
            Some(last) => last.first_seq < trailer.event_count,
            None => {
                trailer.event_count == 0 && trailer.index_offset == atc::FILE_HEADER_SIZE as u64
            }
        };
        if !consistent {
            return Ok(None);
        }
        Ok(Some(Chunks {
            header: *header,
            entries,
            end: trailer.index_offset,
            event_count: trailer.event_count,
            finished: true,
            note: None,
            stopped: None,
            len,
        }))
    }

    pub(crate) fn header(&self) -> &atc::FileHeader {
        &self.header
    }

    pub(crate) fn event_count(&self) -> u64 {
        self.event_count
    }

    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    pub(crate) fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    pub(crate) fn time_range(&self) -> (u64, u64) {
        match (self.entries.first(), self.entries.last()) {
            (Some(first), Some(last)) => (first.time_first_ns, last.time_last_ns),
            _ => (0, 0),
        }
    }

    /// Events from stream position `seq` on.
    pub(crate) fn events_from<'a>(
        &'a self,
        file: &'a File,
        path: &'a Path,
        seq: u64,
    ) -> ChunkEvents<'a> {
        let at = atc::chunk_at_seq(&self.entries, seq);
        let skip = self
            .entries
            .get(at)
            .map_or(0, |e| seq.saturating_sub(e.first_seq));
        ChunkEvents {
            chunks: self,
            file,
            path,
            next: at,
            skip,
            remaining: self.event_count - seq.min(self.event_count),
            next_seq: seq,
            past_damage: false,
            decoder: Decoder::default(),
            raw: Vec::new(),
            buf: Vec::new(),
            pos: 0,
            range: 0..0,
            check: None,
        }
    }

    /// Every event, past damage, checked as it is decoded (see [`ChunkEvents::finish_check`]):
    /// the header against `thread_id` and the format, each chunk (checksum, decoding, its index
    /// entry, its place in the stream), each event, and bytes an unfinished file could not
    /// account for.
    pub(crate) fn events_checked<'a>(
        &'a self,
        file: &'a File,
        path: &'a Path,
        thread_id: u32,
    ) -> Result<ChunkEvents<'a>> {
        let mut events = self.events_from(file, path, 0);
        events.past_damage = true;
        events.check = Some(Box::new(ChunkCheck {
            damage: self.header_damage(file, path, thread_id)?,
            events: EventCheck::new(path, thread_id),
            decoded: 0,
        }));
        Ok(events)
    }

    /// The stream position of the first event at or after `time_ns` (the event count if none).
    pub(crate) fn seq_at_time(&self, file: &File, path: &Path, time_ns: u64) -> Result<u64> {
        let at = atc::chunk_at_time(&self.entries, time_ns);
        let Some(entry) = self.entries.get(at) else {
            return Ok(self.event_count);
        };
        let (mut raw, mut buf) = (Vec::new(), Vec::new());
        self.read_chunk(file, path, at, &mut raw, &mut Decoder::default(), &mut buf)?;
        let skip = buf.partition_point(|r| r.timestamp_ns < time_ns);
        Ok(entry.first_seq + skip as u64)
    }

    /// Decodes every chunk, checking its CRC-32C.
    pub(crate) fn verify(&self, file: &File, path: &Path) -> Result<()> {
        let (mut raw, mut buf, mut decoder) = (Vec::new(), Vec::new(), Decoder::default());
        for i in 0..self.entries.len() {
            self.read_chunk(file, path, i, &mut raw, &mut decoder, &mut buf)?;
        }
        Ok(())
    }

    /// The file header's damage: its thread id against `thread_id`, its clock, flags, reserved
    /// bytes and platform.
    fn header_damage(&self, file: &File, path: &Path, thread_id: u32) -> Result<Vec<Damage>> {
        let h = &self.header;
        let (raw, mut out) = verify::header_and_thread::<{ atc::FILE_HEADER_SIZE }>(
            file,
            path,
            "read the event file header",
            h.thread_id,
            thread_id,
        )?;
        if crate::ClockType::from_raw(h.clock_type).is_none() {
            out.push(Damage::new(
                path,
                16..17,
                format!("the header names an unknown clock type {}", h.clock_type),
            ));
        }
        if h.flags & !atc::FLAG_HAS_DETAIL != 0 {
            out.push(Damage::new(
                path,
                8..12,
                format!("the header's flags {:#x} set undefined bits", h.flags),
            ));
        }
        verify::reserved_zero(path, 17, &raw[17..20], "header", &mut out);
        verify::reserved_zero(path, 24, &raw[24..], "header", &mut out);
        verify::platform(path, h.arch, h.os, &mut out);
        Ok(out)
    }

    /// The bytes of chunk `i`: from its header to the next chunk (or the end of the chunks).
    fn range(&self, i: usize) -> std::ops::Range<u64> {
        let end = self.entries.get(i + 1).map_or(self.end, |n| n.offset);
        self.entries[i].offset..end
    }

    /// Reads chunk `i` into `raw` (one read) and decodes it into `buf` (emptied first).
    fn read_chunk(
        &self,
        file: &File,
        path: &Path,
        i: usize,
        raw: &mut Vec<u8>,
        decoder: &mut Decoder,
        buf: &mut Vec<Record>,
    ) -> Result<()> {
        let std::ops::Range { start: offset, end } = self.range(i);
        raw.resize((end - offset) as usize, 0);
        file.read_exact_at(raw, offset)
            .map_err(|e| Error::io(path, "read a chunk (did the file shrink?)", e))?;
        buf.clear();
        let damaged = |damage: DecodeError| Error::Chunk {
            path: path.to_path_buf(),
            offset,
            damage,
        };
        let (head, payload) = raw.split_at(CHUNK_HEADER_SIZE.min(raw.len()));
        let head: &[u8; CHUNK_HEADER_SIZE] = head
            .try_into()
            .map_err(|_| damaged(DecodeError::NotAChunk))?;
        let h = decoder.decode(head, payload, buf).map_err(damaged)?;
        if h.first_seq != self.entries[i].first_seq {
            return Err(damaged(DecodeError::Malformed {
                at: 0,
                what: "the chunk is not the one the index lists",
            }));
        }
        Ok(())
    }
}

/// Events of consecutive chunks, decoded one chunk at a time.
pub(crate) struct ChunkEvents<'a> {
    chunks: &'a Chunks,
    file: &'a File,
    path: &'a Path,
    next: usize,
    skip: u64,
    remaining: u64,
    /// Stream position of the next event returned.
    next_seq: u64,
    /// Whether a damaged chunk is skipped instead of ending the stream with its error.
    past_damage: bool,
    decoder: Decoder,
    raw: Vec<u8>,
    buf: Vec<Record>,
    pos: usize,
    /// The bytes of the chunk `buf` was decoded from.
    range: std::ops::Range<u64>,
    /// A verifying pass's findings (see [`Chunks::events_checked`]).
    check: Option<Box<ChunkCheck>>,
}

/// What a verifying pass over an ATC file has found so far.
struct ChunkCheck {
    /// The header's damage, then each damaged chunk's, in file order.
    damage: Vec<Damage>,
    events: EventCheck,
    /// Events up to the end of the last chunk that decoded.
    decoded: u64,
}

impl ChunkCheck {
    /// Checks chunk `i`, which decoded to `events`, against its index entry and the chunks
    /// before it.
    fn chunk(&mut self, chunks: &Chunks, path: &Path, i: usize, events: &[Record]) {
        let entry = &chunks.entries[i];
        let range = chunks.range(i);
        let (first, last) = (
            events[0].timestamp_ns,
            events[events.len() - 1].timestamp_ns,
        );
        if (entry.time_first_ns, entry.time_last_ns) != (first, last) {
            self.damage.push(Damage::new(
                path,
                range.clone(),
                format!(
                    "the chunk index gives this chunk the times {}..{} ns, its events run \
                     {first}..{last} ns",
                    entry.time_first_ns, entry.time_last_ns
                ),
            ));
        }
        if entry.first_seq != self.decoded {
            self.damage.push(Damage::new(
                path,
                range,
                format!(
                    "the chunk starts at event {} but {} events precede it",
                    entry.first_seq, self.decoded
                ),
            ));
        }
        self.decoded = entry.first_seq + events.len() as u64;
    }
}

impl ChunkEvents<'_> {
    /// Events not yet returned (as the headers count them).
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Stream position of the next event returned.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// From now on, a chunk that fails its checksum or does not decode is skipped (its events
    /// are not returned) instead of ending the stream with its error; read errors still end it.
    pub(crate) fn past_damage(&mut self) {
        self.past_damage = true;
    }

    /// From now on, a chunk that fails its checksum or does not decode ends the stream with its
    /// error (the default, undoing [`past_damage`](Self::past_damage)); a verifying pass still
    /// records it.
    pub(crate) fn stop_at_damage(&mut self) {
        self.past_damage = false;
    }

    /// For a verifying pass ([`Chunks::events_checked`]): reads whatever events are left, then
    /// returns every damaged range found: the header's, each damaged chunk's in file order, the
    /// trailer's count, where an unfinished file stopped, each kind of damaged event (an error
    /// only if the file could not be read). Without a check, nothing.
    pub(crate) fn finish_check(mut self) -> Result<Vec<Damage>> {
        while let Some(event) = self.next() {
            event?;
        }
        let Some(check) = self.check.take() else {
            return Ok(Vec::new());
        };
        let (chunks, path) = (self.chunks, self.path);
        let ChunkCheck {
            damage: mut out,
            events,
            decoded,
        } = *check;
        if chunks.finished && decoded != chunks.event_count && out.is_empty() {
            out.push(Damage::new(
                path,
                chunks.len - atc::TRAILER_SIZE as u64..chunks.len,
                format!(
                    "the trailer counts {} events but the chunks hold {decoded}",
                    chunks.event_count
                ),
            ));
        }
        if let Some((at, why)) = &chunks.stopped {
            out.push(Damage::new(
                path,
                *at..chunks.len,
                format!("{why}; the bytes from there on are not read"),
            ));
        }
        out.extend(events.finish());
        Ok(out)
    }

    #[inline]
    pub(crate) fn next(&mut self) -> Option<Result<Record>> {
        if self.pos >= self.buf.len() {
            if let Err(e) = self.fill()? {
                return Some(Err(e));
            }
        }
        let r = self.buf[self.pos];
        if let Some(check) = &mut self.check {
            check.events.event(self.range.clone(), &IndexEvent::from(r));
        }
        self.pos += 1;
        self.next_seq += 1;
        self.remaining = self.remaining.saturating_sub(1);
        Some(Ok(r))
    }

    /// Passes every event left to `f`, in order, a decoded chunk at a time: what calling
    /// [`next`](Self::next) until the end does, without an `Option<Result>` per event. Stops at
    /// the first error, `f`'s or the file's.
    #[inline]
    pub(crate) fn try_each<E: From<Error>>(
        &mut self,
        mut f: impl FnMut(IndexEvent) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        loop {
            if self.pos >= self.buf.len() {
                match self.fill() {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(())) => {}
                }
            }
            for r in &self.buf[self.pos..] {
                let event = IndexEvent::from(*r);
                if let Some(check) = &mut self.check {
                    check.events.event(self.range.clone(), &event);
                }
                self.pos += 1;
                self.next_seq += 1;
                self.remaining = self.remaining.saturating_sub(1);
                f(event)?;
            }
        }
    }

    /// Decodes the next chunk that has events for us into `buf` (checking it in a verifying
    /// pass); `None` at the end, an error for a damaged chunk unless damage is passed over.
    fn fill(&mut self) -> Option<Result<()>> {
        while self.pos >= self.buf.len() {
            if self.next >= self.chunks.entries.len() {
                return None;
            }
            let i = self.next;
            self.next += 1;
            if let Err(e) = self.chunks.read_chunk(
                self.file,
                self.path,
                i,
                &mut self.raw,
                &mut self.decoder,
                &mut self.buf,
            ) {
                let skippable = !matches!(e, Error::Io { .. });
                if let (Some(check), true) = (&mut self.check, skippable) {
                    // The chunk held the events up to the next chunk's first, as the index
                    // (checked to tile the file) says: the next chunk is not out of place.
                    let end = self
                        .chunks
                        .entries
                        .get(i + 1)
                        .map_or(self.chunks.event_count, |next| next.first_seq);
                    let lost = end.saturating_sub(self.chunks.entries[i].first_seq);
                    let what = match &e {
                        Error::Chunk { offset, damage, .. } => {
                            format!("the chunk at offset {offset}: {damage}")
                        }
                        other => other.to_string(),
                    };
                    check.damage.push(Damage::new(
                        self.path,
                        self.chunks.range(i),
                        match lost {
                            1 => format!("{what}; its 1 event is not read"),
                            n => format!("{what}; its {n} events are not read"),
                        },
                    ));
                    check.decoded = end;
                }
                if self.past_damage && skippable {
                    self.buf.clear();
                    self.pos = 0;
                    self.skip = 0;
                    continue;
                }
                self.next = self.chunks.entries.len();
                return Some(Err(e));
            }
            if let Some(check) = &mut self.check {
                check.chunk(self.chunks, self.path, i, &self.buf);
            }
            self.range = self.chunks.range(i);
            self.pos = (self.skip as usize).min(self.buf.len());
            self.skip = 0;
            self.next_seq = self.chunks.entries[i].first_seq + self.pos as u64;
        }
        Some(Ok(()))
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {

    use crate::fault::{FaultPlan, FaultyFs};
    use crate::index::tests::{batch, event, read_all, Atc};
    use crate::testkit::os_error;
    use crate::{ClockType, Error, EventFormat, IndexEvent, IndexReader, IndexWriter};

    /// `pairs` calls and returns of one function, 20 ns apart: what the agent writes.
    fn calls(pairs: u64) -> Vec<u8> {
        (0..2 * pairs)
            .flat_map(|i| {
                event::Record {
                    timestamp_ns: 5_000 + 20 * i,
                    function_id: 0x40_1130,
                    thread_id: 77,
                    kind: if i % 2 == 0 {
                        event::CALL
                    } else {
                        event::RETURN
                    },
                    call_depth: 0,
                    detail_seq: event::NO_DETAIL,
                }
                .to_bytes()
            })
            .collect()
    }

    fn create(fs: &FaultyFs, path: &std::path::Path) -> crate::Result<IndexWriter> {
        IndexWriter::create_with_format(fs, path, 77, ClockType::Boottime, EventFormat::Atc)
    }

    #[test]
    fn compact_writer__finished__then_reader_gives_every_event_and_seeks_by_seq_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atc");
        let mut w = IndexWriter::create_compact(&path, 77, ClockType::Boottime).unwrap();
        assert_eq!(w.format(), EventFormat::Atc);
        let n = 200_000u64;
        for (i, piece) in batch(0..n).chunks(2048 * 32).enumerate() {
            w.append(piece).unwrap();
            if i % 7 == 0 {
                w.flush().unwrap(); // small chunks, as the drain's passes make them
            }
        }
        w.set_has_detail(true).unwrap();
        let summary = w.finish().unwrap();
        assert_eq!(summary.event_count, n);
        assert_eq!(summary.file_bytes, std::fs::metadata(&path).unwrap().len());

        let r = IndexReader::open(&path).unwrap();
        assert_eq!(r.format(), EventFormat::Atc);
        assert!(r.finished());
        assert!(r.has_detail());
        assert!(r.header().is_none());
        assert_eq!(r.recovery_note(), None);
        assert_eq!(r.event_count(), n);
        assert_eq!(
            r.time_range(),
            (event(0).timestamp_ns, event(n - 1).timestamp_ns)
        );
        assert_eq!(read_all(&r), (0..n).map(event).collect::<Vec<_>>());
        assert!(r.verify_checksum().unwrap());
        for seq in [0, 1, 65_535, 65_536, 123_457, n - 1] {
            assert_eq!(r.event(seq).unwrap(), event(seq));
            let from: Vec<IndexEvent> = r.events_from(seq).map(Result::unwrap).collect();
            assert_eq!(from.len() as u64, n - seq);
            assert_eq!(from[0], event(seq));
        }
        let t = event(150_000).timestamp_ns - 5;
        let first = r.events_from_time(t).unwrap().next().unwrap().unwrap();
        assert_eq!(first, event(150_000));
        assert_eq!(r.events_from_time(u64::MAX).unwrap().count(), 0);
        assert!(r.event(n).is_err());
    }

    #[test]
    fn compact_writer__one_function_called_over_and_over__then_under_3_bytes_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atc");
        let mut w = IndexWriter::create_compact(&path, 77, ClockType::Boottime).unwrap();
        let raw = calls(500_000);
        for piece in raw.chunks(64 << 10) {
            w.append(piece).unwrap();
        }
        let summary = w.finish().unwrap();
        let per_event = summary.file_bytes as f64 / 1e6;
        assert!(per_event < 3.0, "{per_event} bytes per event");
        let r = IndexReader::open(&path).unwrap();
        let back: Vec<u8> = r.events().flat_map(|e| e.unwrap().encode()).collect();
        assert_eq!(back, raw);
    }

    #[test]
    fn compact_reader__file_cut_at_any_byte__then_a_prefix_of_whole_chunks_and_no_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atc");
        let mut w = IndexWriter::create_compact(&path, 77, ClockType::Boottime).unwrap();
        for i in 0..6u64 {
            w.append(&batch(i * 50..(i + 1) * 50)).unwrap();
            w.flush().unwrap();
        }
        w.finish().unwrap();
        let whole = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.atc");
        for len in 0..whole.len() {
            std::fs::write(&cut, &whole[..len]).unwrap();
            let Ok(r) = IndexReader::open(&cut) else {
                assert!(len < 64, "a {len}-byte prefix did not open");
                continue;
            };
            assert!(!r.finished());
            let events = read_all(&r);
            assert_eq!(events.len() % 50, 0, "cut at {len}");
            assert_eq!(
                events,
                (0..events.len() as u64).map(event).collect::<Vec<_>>()
            );
            assert!(r.recovery_note().unwrap().contains("not finished"));
        }
    }

    #[test]
    fn compact_reader__verified_as_another_thread__then_damage_names_the_directory_s_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atc");
        let mut w = IndexWriter::create_compact(&path, 77, ClockType::Boottime).unwrap();
        w.append(&batch(0..10)).unwrap();
        w.finish().unwrap();
        let found = IndexReader::open(&path).unwrap().verify(78).unwrap();
        let said: Vec<String> = found.iter().map(|d| d.to_string()).collect();
        assert!(
            said.iter().any(|d| d.contains(
                "bytes 12..16: the header's thread id is 77 but the file is in the directory of \
                 thread 78"
            )),
            "{said:#?}"
        );
    }

    #[test]
    fn compact_reader__damaged_chunk__then_checksum_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atc");
        let mut w = IndexWriter::create_compact(&path, 77, ClockType::Boottime).unwrap();
        w.append(&batch(0..100)).unwrap();
        w.flush().unwrap();
        w.append(&batch(100..200)).unwrap();
        w.finish().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[64 + atc::CHUNK_HEADER_SIZE + 10] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let r = IndexReader::open(&path).unwrap();
        let err = r.verify_checksum().unwrap_err();
        assert!(
            matches!(
                err,
                Error::Chunk {
                    offset: 64,
                    damage: atc::DecodeError::Checksum { .. },
                    ..
                }
            ),
            "{err}"
        );
        let said = err.to_string();
        assert!(
            said.contains("index.atc: the chunk at offset 64: checksum mismatch: the chunk header"),
            "{said}"
        );
        assert!(!said.contains("footer"), "ATC has no footer: {said}");
        let mut events = r.events();
        assert!(events.next().unwrap().is_err());
        assert!(events.next().is_none());
        // The second chunk decodes alone.
        assert_eq!(r.event(150).unwrap(), event(150));
    }

    #[test]
    fn compact_writer__disk_full_mid_flush__then_enospc_and_earlier_chunks_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atc");
        let fs = FaultyFs::new(FaultPlan::new().full_after(3_000, libc::ENOSPC));
        let mut w = create(&fs, &path).unwrap();
        w.append(&batch(0..40)).unwrap();
        w.flush().unwrap();
        w.append(&batch(40..1000)).unwrap();
        let err = w.flush().unwrap_err();
        assert_eq!(os_error(&err, &path), Some(libc::ENOSPC));
        assert!(matches!(w.flush(), Err(Error::WriterFailed { .. })));
        drop(w);
        let r = IndexReader::open(&path).unwrap();
        assert!(!r.finished());
        assert_eq!(read_all(&r), (0..40).map(event).collect::<Vec<_>>());
    }

    writer_tests!(Atc);
}
