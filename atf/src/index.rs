//! A thread's call/return events: `index.atf` (ATF v2, 32 bytes an event) and, through
//! [`crate::compact`], `index.atc` (ATC); one writer and one reader serve both.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::chunk::ChunkReader;
use crate::compact;
use crate::engine::{
    check_common_header, check_items_offset, finish_methods, has_magic, in_parent,
    open_with_header, reader_accessors, verify_range, FileCore, Kind,
};
use crate::error::{Error, Result};
#[cfg(test)]
use crate::le::put_u32;
use crate::le::u64_at;
use crate::manifest::TscCalibration;
use crate::sink::{Dir, FileSystem, RealFs};
use crate::verify::{self, field_matches, Damage, EventCheck};
use crate::{
    ClockType, EventFormat, EventKind, EVENT_SIZE, FILE_VERSION, FLAG_HAS_DETAIL, FOOTER_SIZE,
    HEADER_SIZE, INDEX_FOOTER_MAGIC, INDEX_MAGIC,
};

/// One index event (32 bytes on disk).
///
/// | off | field |
/// |---|---|
/// | 0 | u64 timestamp_ns |
/// | 8 | u64 function_id |
/// | 16 | u32 thread_id |
/// | 20 | u32 event_kind |
/// | 24 | u32 call_depth |
/// | 28 | u32 detail_seq |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndexEvent {
    /// Nanoseconds on the file's clock.
    pub timestamp_ns: u64,
    /// `(module_id << 32) | symbol_index`, or a raw address the manifest maps to a name.
    pub function_id: u64,
    /// OS thread id.
    pub thread_id: u32,
    /// Call, return or exception.
    pub kind: EventKind,
    /// Nesting depth at this event.
    pub call_depth: u32,
    /// Sequence number of the linked detail record, or [`crate::NO_DETAIL`].
    pub detail_seq: u32,
}

impl IndexEvent {
    /// The 32 bytes of this event.
    pub fn encode(&self) -> [u8; EVENT_SIZE] {
        event::Record::from(*self).to_bytes()
    }

    /// The event stored in 32 bytes (every bit pattern is an event).
    pub fn decode(b: &[u8; EVENT_SIZE]) -> Self {
        event::Record::from_bytes(b).into()
    }
}

impl From<event::Record> for IndexEvent {
    #[inline(always)]
    fn from(r: event::Record) -> Self {
        IndexEvent {
            timestamp_ns: r.timestamp_ns,
            function_id: r.function_id,
            thread_id: r.thread_id,
            kind: EventKind::from_raw(r.kind),
            call_depth: r.call_depth,
            detail_seq: r.detail_seq,
        }
    }
}

impl From<IndexEvent> for event::Record {
    #[inline(always)]
    fn from(e: IndexEvent) -> Self {
        event::Record {
            timestamp_ns: e.timestamp_ns,
            function_id: e.function_id,
            thread_id: e.thread_id,
            kind: e.kind.to_raw(),
            call_depth: e.call_depth,
            detail_seq: e.detail_seq,
        }
    }
}

event::file_header! {
    /// The 64-byte header of `index.atf` (magic `ATI2` at 0 is implied): the prefix every trace
    /// file kind shares (`flags` bit 0: a detail file exists; `thread_id` equal to the
    /// directory's id), then:
    pub struct IndexHeader(HEADER_SIZE, magic INDEX_MAGIC) {
        /// Byte 16: [`ClockType`] as a byte.
        clock_type: u8 @ 16,
        /// Bytes 24..28: 32.
        event_size: u32 @ 24,
        /// Bytes 28..32: final count, 0 while recording (saturates at `u32::MAX`; the footer has the u64).
        event_count: u32 @ 28,
        /// Bytes 32..40: 64.
        events_offset: u64 @ 32,
        /// Bytes 40..48: offset of the footer, 64 while recording.
        footer_offset: u64 @ 40,
        /// Bytes 48..56: timestamp of the first event.
        time_start_ns: u64 @ 48,
        /// Bytes 56..64: timestamp of the last event.
        time_end_ns: u64 @ 56,
    }
}

impl IndexHeader {
    /// The header of a file being recorded on this machine: no events, footer offset 64.
    pub fn recording(thread_id: u32, clock: ClockType) -> Self {
        IndexHeader {
            thread_id,
            clock_type: clock.to_raw(),
            event_size: EVENT_SIZE as u32,
            events_offset: HEADER_SIZE as u64,
            footer_offset: HEADER_SIZE as u64,
            ..IndexHeader::this_machine(FILE_VERSION)
        }
    }

    /// Whether bit 0 of `flags` says a detail file exists.
    pub fn has_detail(&self) -> bool {
        self.flags & FLAG_HAS_DETAIL != 0
    }
}

/// Whether the bytes after the header of a file in the recording state are a footer cut short
/// rather than events: fewer than a whole footer, starting with the footer's magic `2ITA`. An
/// event starting with those 4 bytes (the low half of its timestamp) in a file that short is a
/// 1-in-2^32 coincidence; a footer torn by a full disk is not.
fn torn_empty_footer(file: &File, len: u64) -> Result<bool, std::io::Error> {
    if !(HEADER_SIZE as u64 + 4..(HEADER_SIZE + FOOTER_SIZE) as u64).contains(&len) {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, HEADER_SIZE as u64)?;
    Ok(magic == INDEX_FOOTER_MAGIC)
}

event::le_struct! {
    /// The 64-byte footer of `index.atf` (magic `2ITA` at 0 is implied).
    pub struct IndexFooter(FOOTER_SIZE, magic INDEX_FOOTER_MAGIC) {
        /// Bytes 4..8: CRC-32C of the event bytes; 0 = not computed.
        checksum: u32 @ 4,
        /// Bytes 8..16: number of events (authoritative).
        event_count: u64 @ 8,
        /// Bytes 16..24: timestamp of the first event.
        time_start_ns: u64 @ 16,
        /// Bytes 24..32: timestamp of the last event.
        time_end_ns: u64 @ 24,
        /// Bytes 32..40: bytes of event data (`event_count * 32`).
        bytes_written: u64 @ 32,
    }
}

/// What a finished index file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexSummary {
    /// Events written.
    pub event_count: u64,
    /// First event's timestamp (0 if none).
    pub time_start_ns: u64,
    /// Last event's timestamp (0 if none).
    pub time_end_ns: u64,
    /// CRC-32C of the event bytes.
    pub checksum: u32,
    /// File size, header and footer included.
    pub file_bytes: u64,
}

/// Appends events to one thread's event file, in ATF v2 (`index.atf`, [`create`](Self::create))
/// or in ATC (`index.atc`, [`create_compact`](Self::create_compact); `docs/atc.md`).
///
/// The header is on disk from creation on; events are buffered and written in large writes, never
/// one write per event; at every instant the file is a header followed by whole events (ATF v2) or
/// whole checksummed chunks (ATC), which readers recover. [`flush`](Self::flush) writes everything
/// appended so far (ATC: it closes the open chunk). [`finish`](Self::finish) completes the file
/// (ATF v2: patches the header and appends the footer; ATC: appends the chunk index and the
/// trailer). Dropping an unfinished writer flushes it and leaves the file unfinished, as a crash
/// would.
///
/// Writes go through a [`FileSystem`] ([`RealFs`] unless created with
/// [`create_with`](Self::create_with)): an interrupted write is retried and a short one continued,
/// so no byte is lost or doubled. Any other write error (`ENOSPC`, `EIO`, `EFBIG`) is an
/// [`Error::Io`] naming the file, after which the writer accepts nothing more and the file stays a
/// header followed by whole events, plus at most one partial event (or chunk) that readers ignore.
/// A failed fsync is reported the same way and never retried: what reached the disk is then
/// unknown.
pub struct IndexWriter {
    core: FileCore,
    count: u64,
    time_start_ns: u64,
    time_end_ns: u64,
    body: Body,
}

/// What differs between the two encodings while writing.
enum Body {
    /// ATF v2: the header to patch at the end, the CRC-32C of the event bytes.
    Atf { header: IndexHeader, crc: u32 },
    /// ATC: the header (its flags may change), the encoder and its output buffer.
    Atc(Box<AtcBody>),
}

struct AtcBody {
    header: atc::FileHeader,
    encoder: atc::Encoder,
    out: Vec<u8>,
}

/// Error messages of the ATF v2 index file.
static INDEX_KIND: Kind = Kind {
    create: "create the index file (is the directory writable, the name unused?)",
    header: "write the index header (is the disk full or failing?); the file was removed",
    write: "write the index file (is the disk full or failing?)",
};

impl IndexWriter {
    /// Creates the ATF v2 file `path` (which must not exist) and writes the recording header.
    pub fn create(path: impl AsRef<Path>, thread_id: u32, clock: ClockType) -> Result<Self> {
        Self::create_with(&RealFs, path, thread_id, clock)
    }

    /// [`create`](Self::create) on the file system `fs`: the directory holding `path` is opened
    /// (as given) and the file created in it with [`create_in`](Self::create_in).
    pub fn create_with(
        fs: &dyn FileSystem,
        path: impl AsRef<Path>,
        thread_id: u32,
        clock: ClockType,
    ) -> Result<Self> {
        Self::create_with_format(fs, path, thread_id, clock, EventFormat::Atf2)
    }

    /// Creates the ATC file `path` (which must not exist) and writes its header.
    pub fn create_compact(
        path: impl AsRef<Path>,
        thread_id: u32,
        clock: ClockType,
    ) -> Result<Self> {
        Self::create_with_format(&RealFs, path, thread_id, clock, EventFormat::Atc)
    }

    /// Creates `path` in `format` on the file system `fs`: the directory holding `path` is opened
    /// (as given) and the file created in it with [`create_in_format`](Self::create_in_format).
    pub fn create_with_format(
        fs: &dyn FileSystem,
        path: impl AsRef<Path>,
        thread_id: u32,
        clock: ClockType,
        format: EventFormat,
    ) -> Result<Self> {
        in_parent(
            path.as_ref(),
            "open the directory of the event file",
            |dir, name| Self::create_in_format(fs, dir, name, thread_id, clock, format),
        )
    }

    /// Creates the ATF v2 file `name` in `dir` on the file system `fs` (see
    /// [`create_in_format`](Self::create_in_format)).
    pub fn create_in(
        fs: &dyn FileSystem,
        dir: &Dir,
        name: &str,
        thread_id: u32,
        clock: ClockType,
    ) -> Result<Self> {
        Self::create_in_format(fs, dir, name, thread_id, clock, EventFormat::Atf2)
    }

    /// Creates `name` in `dir` on the file system `fs` (new, never an existing file or a link;
    /// mode 0600) in `format`, and writes its header. If the header cannot be written whole, the
    /// file is removed again: no file is better than one no reader opens.
    pub fn create_in_format(
        fs: &dyn FileSystem,
        dir: &Dir,
        name: &str,
        thread_id: u32,
        clock: ClockType,
        format: EventFormat,
    ) -> Result<Self> {
        let (core, body) = match format {
            EventFormat::Atf2 => {
                let header = IndexHeader::recording(thread_id, clock);
                let core = FileCore::create(fs, dir, name, &INDEX_KIND, &header.encode())?;
                (core, Body::Atf { header, crc: 0 })
            }
            EventFormat::Atc => {
                let header = compact::file_header(thread_id, clock);
                let core = FileCore::create(fs, dir, name, &compact::KIND, &header.encode())?;
                let body = AtcBody {
                    header,
                    encoder: atc::Encoder::new(thread_id, atc::FILE_HEADER_SIZE as u64),
                    out: Vec::with_capacity(2 * atc::CHUNK_TARGET_BYTES),
                };
                (core, Body::Atc(Box::new(body)))
            }
        };
        Ok(IndexWriter {
            core,
            count: 0,
            time_start_ns: 0,
            time_end_ns: 0,
            body,
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        self.core.path()
    }

    /// The encoding of the file.
    pub fn format(&self) -> EventFormat {
        match self.body {
            Body::Atf { .. } => EventFormat::Atf2,
            Body::Atc(_) => EventFormat::Atc,
        }
    }

    /// Events appended so far (buffered or written).
    pub fn event_count(&self) -> u64 {
        self.count
    }

    /// Appends whole encoded events, e.g. a slice taken straight from a ring. The length must be a
    /// multiple of 32; nothing is appended otherwise.
    pub fn append(&mut self, events: &[u8]) -> Result<()> {
        if !self.accept(events, |t| t)? {
            return Ok(());
        }
        match &mut self.body {
            Body::Atf { crc, .. } => {
                *crc = crc32c::crc32c_append(*crc, events);
                self.core.write(events)
            }
            Body::Atc(atc) => {
                atc.encoder.push_bytes(events, &mut atc.out);
                write_out(&mut self.core, &mut atc.out)
            }
        }
    }

    /// [`append`](Self::append) of events whose timestamps are another clock's readings (e.g.
    /// raw TSC ticks, as a ring holds them): each event is stored with `time(its timestamp)`.
    /// The conversion is made in the one pass the writer makes over the events anyway (ATF v2:
    /// in the write buffer they are copied into; ATC: as the encoder decodes them); the events
    /// given are not changed.
    pub fn append_timed(&mut self, events: &[u8], time: impl Fn(u64) -> u64 + Copy) -> Result<()> {
        if !self.accept(events, time)? {
            return Ok(());
        }
        match &mut self.body {
            Body::Atf { crc, .. } => self.core.write_changed(events, EVENT_SIZE, |piece| {
                for event in piece.chunks_exact_mut(EVENT_SIZE) {
                    let (ts, _) = event.split_first_chunk_mut::<8>().expect("a whole event");
                    *ts = time(u64::from_le_bytes(*ts)).to_le_bytes();
                }
                *crc = crc32c::crc32c_append(*crc, piece);
            }),
            Body::Atc(atc) => {
                atc.encoder.push_bytes_timed(events, &mut atc.out, time);
                write_out(&mut self.core, &mut atc.out)
            }
        }
    }

    /// Checks a batch of events for [`append`](Self::append) and counts it, with its first and
    /// last timestamps through `time`. `false`: nothing to append.
    fn accept(&mut self, events: &[u8], time: impl Fn(u64) -> u64) -> Result<bool> {
        self.core.check_usable()?;
        if events.len() % EVENT_SIZE != 0 {
            return Err(Error::invalid(
                self.core.path(),
                format!(
                    "a batch of {} bytes is not a whole number of {EVENT_SIZE}-byte events; \
                     pass only complete events",
                    events.len()
                ),
            ));
        }
        if events.is_empty() {
            return Ok(false);
        }
        if self.count == 0 {
            self.time_start_ns = time(u64_at(events, 0));
        }
        self.time_end_ns = time(u64_at(events, events.len() - EVENT_SIZE));
        self.count += (events.len() / EVENT_SIZE) as u64;
        Ok(true)
    }

    /// Appends one event.
    pub fn append_event(&mut self, event: &IndexEvent) -> Result<()> {
        self.append(&event.encode())
    }

    /// Appends whole encoded events whose timestamps are raw TSC ticks, converting each timestamp to
    /// nanoseconds with `calibration` on the way in ([`append_timed`](Self::append_timed)).
    pub fn append_tsc(&mut self, events: &[u8], calibration: &TscCalibration) -> Result<()> {
        self.append_timed(events, |t| calibration.to_ns(t))
    }

    /// Sets bit 0 of the header flags (a detail file exists) and rewrites the header in place.
    pub fn set_has_detail(&mut self, has_detail: bool) -> Result<()> {
        self.core.check_usable()?;
        let set = |flags: u32| {
            if has_detail {
                flags | FLAG_HAS_DETAIL
            } else {
                flags & !FLAG_HAS_DETAIL
            }
        };
        match &mut self.body {
            Body::Atf { header, .. } if set(header.flags) != header.flags => {
                header.flags = set(header.flags);
                self.core.write_at(&header.encode(), 0)
            }
            Body::Atc(atc) if set(atc.header.flags) != atc.header.flags => {
                atc.header.flags = set(atc.header.flags);
                self.core.write_at(&atc.header.encode(), 0)
            }
            _ => Ok(()),
        }
    }

    /// Writes every appended event to the file (to the page cache; see [`sync`](Self::sync)).
    pub fn flush(&mut self) -> Result<()> {
        self.core.check_usable()?;
        if let Body::Atc(atc) = &mut self.body {
            atc.encoder.seal(&mut atc.out);
            write_out(&mut self.core, &mut atc.out)?;
        }
        self.core.flush()
    }

    /// Flushes and makes the written bytes durable (`fdatasync`). A failure is final (see the
    /// type's documentation).
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.core.sync()
    }

    /// Flushes and asks the kernel to start writing the file's dirty pages to disk, without
    /// waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Called as a long recording goes, it
    /// keeps the final [`finish`](Self::finish) fsync short: only the last few megabytes are left
    /// to write. A file system that does not support it is not an error.
    pub fn start_writeback(&mut self) -> Result<()> {
        self.flush()?;
        self.core.start_writeback()
    }

    /// Bytes of the file its events reached so far (header and encoded events, buffered ones
    /// included; ATC: up to the last sealed chunk).
    pub fn bytes_written(&self) -> u64 {
        self.core.len()
    }

    /// Flushes, then starts the disk write of bytes `offset..offset + len` and, with `wait`,
    /// waits for it (see [`crate::FileSink::writeback`]). Called as a long recording goes, behind
    /// the write position, it keeps the data not yet on its way to the disk small, so the final
    /// fsync is short and the page cache never holds a large backlog of this file.
    pub fn writeback(&mut self, offset: u64, len: u64, wait: bool) -> Result<()> {
        self.flush()?;
        self.core.writeback(offset, len, wait)
    }

    /// Flushes, then a second handle on the file for [`crate::FileSink::writeback`] from another
    /// thread: a writer that must not stall on the disk starts and waits for its writeback there.
    /// `None` when the file system gives no such handle (the caller then uses
    /// [`writeback`](Self::writeback)).
    pub fn writeback_handle(&mut self) -> Result<Option<Box<dyn crate::FileSink>>> {
        self.flush()?;
        self.core.writeback_handle()
    }

    finish_methods!(
        IndexSummary,
        /// Completes the file and fsyncs it. ATF v2: patches the header (count, footer offset,
        /// time range), then appends the footer with the CRC-32C of the events; the header is
        /// patched first, so a crash in between leaves a header whose footer offset is the end of
        /// the file, which every reader recovers. ATC: appends the chunk index and the trailer.
    );

    fn complete(mut self, sync: bool) -> Result<IndexSummary> {
        self.core.check_usable()?;
        let (checksum, file_bytes) = match &mut self.body {
            Body::Atf { header, crc } => {
                self.core.flush()?;
                let events_bytes = self.count * EVENT_SIZE as u64;
                let footer_offset = HEADER_SIZE as u64 + events_bytes;
                header.event_count = u32::try_from(self.count).unwrap_or(u32::MAX);
                header.footer_offset = footer_offset;
                header.time_start_ns = self.time_start_ns;
                header.time_end_ns = self.time_end_ns;
                self.core.write_at(&header.encode(), 0)?;
                let footer = IndexFooter {
                    checksum: *crc,
                    event_count: self.count,
                    time_start_ns: self.time_start_ns,
                    time_end_ns: self.time_end_ns,
                    bytes_written: events_bytes,
                };
                self.core.write_at(&footer.encode(), footer_offset)?;
                (*crc, footer_offset + FOOTER_SIZE as u64)
            }
            Body::Atc(atc) => {
                atc.encoder.finish(&mut atc.out);
                write_out(&mut self.core, &mut atc.out)?;
                // The encoder's offset is now where the index starts.
                let end = atc.encoder.offset() + compact::tail_len(atc.encoder.index().len());
                (0, end)
            }
        };
        self.core.finish(sync)?;
        Ok(IndexSummary {
            event_count: self.count,
            time_start_ns: self.time_start_ns,
            time_end_ns: self.time_end_ns,
            checksum,
            file_bytes,
        })
    }
}

/// Writes what an encoder sealed and empties its buffer.
fn write_out(core: &mut FileCore, out: &mut Vec<u8>) -> Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let result = core.write(out);
    out.clear();
    result
}

impl Drop for IndexWriter {
    fn drop(&mut self) {
        // An unfinished ATC file keeps the events of its open chunk, as ATF v2 keeps its buffer
        // (the core writes what is buffered when it drops, unless it failed).
        if let Body::Atc(atc) = &mut self.body {
            if self.core.check_usable().is_ok() && atc.encoder.pending() > 0 {
                atc.encoder.seal(&mut atc.out);
                let _ = write_out(&mut self.core, &mut atc.out);
            }
        }
    }
}

/// Reads one thread's event file, ATF v2 (`index.atf`) or ATC (`index.atc`), whichever its magic
/// says; streaming; recovers files that were never finished.
pub struct IndexReader {
    file: File,
    path: PathBuf,
    event_count: u64,
    time_start_ns: u64,
    time_end_ns: u64,
    note: Option<String>,
    layout: Layout,
}

/// What differs between the encodings when reading.
enum Layout {
    Atf {
        header: IndexHeader,
        footer: Option<IndexFooter>,
    },
    Atc(compact::Chunks),
}

impl IndexReader {
    /// Opens and validates `path`. A finished file (ATF v2: a consistent footer; ATC: a valid
    /// trailer and chunk index) is read as its footer says; otherwise its whole events (ATC: its
    /// whole chunks) are recovered, a partial trailing event (chunk) is ignored, and
    /// [`finished`](Self::finished) is false, with [`recovery_note`](Self::recovery_note) saying why.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // By the magic; a file that has neither is reported as what its name says it is.
        let named_atc = path.extension().is_some_and(|e| e == "atc");
        if compact::has_magic(path) || (named_atc && !has_magic(path, INDEX_MAGIC)) {
            let (file, chunks) = compact::Chunks::open(path)?;
            return Ok(IndexReader {
                file,
                path: path.to_path_buf(),
                event_count: chunks.event_count(),
                time_start_ns: chunks.time_range().0,
                time_end_ns: chunks.time_range().1,
                note: chunks.note().map(str::to_owned),
                layout: Layout::Atc(chunks),
            });
        }
        let (file, len, raw) = open_with_header(path, "an ATF index", INDEX_MAGIC)?;
        let header = IndexHeader::get_fields(&raw); // the magic was checked on opening
        check_common_header(path, header.endian, header.version)?;
        if header.event_size != EVENT_SIZE as u32 {
            return Err(Error::corrupt(
                path,
                format!(
                    "the header says events are {} bytes; ATF v2 events are 32",
                    header.event_size
                ),
            ));
        }
        check_items_offset(path, header.events_offset, "events")?;

        let fo = header.footer_offset;
        let mut note = None;
        let mut footer = None;
        if fo >= HEADER_SIZE as u64
            && fo
                .checked_add(FOOTER_SIZE as u64)
                .is_some_and(|end| end <= len)
        {
            let mut raw = [0u8; FOOTER_SIZE];
            file.read_exact_at(&mut raw, fo)
                .map_err(|e| Error::io(path, "read the index footer", e))?;
            // In the recording state (offset 64) only a file of exactly header + footer is finished:
            // bytes at 64 that merely look like a footer are the first event.
            let plausible = fo != HEADER_SIZE as u64 || len == (HEADER_SIZE + FOOTER_SIZE) as u64;
            if let Some(found) = IndexFooter::decode(&raw).filter(|_| plausible) {
                let events_bytes = fo - HEADER_SIZE as u64;
                if events_bytes % EVENT_SIZE as u64 != 0
                    || found.event_count != events_bytes / EVENT_SIZE as u64
                {
                    return Err(Error::corrupt(
                        path,
                        format!(
                            "the footer at offset {fo} counts {} events, but {events_bytes} bytes \
                             of events precede it; the file contradicts itself",
                            found.event_count
                        ),
                    ));
                }
                footer = Some(found);
            } else if fo != HEADER_SIZE as u64 {
                note = Some(format!(
                    "no footer at offset {fo} (damaged or never written)"
                ));
            }
        } else if fo > len {
            note = Some(format!(
                "the header puts the footer at offset {fo}, past the end of the {len}-byte file \
                 (truncated)"
            ));
        } else if fo < HEADER_SIZE as u64 {
            note = Some(format!(
                "the header's footer offset {fo} lies inside the header"
            ));
        }

        let (event_count, time_start_ns, time_end_ns) = match footer {
            Some(f) => (f.event_count, f.time_start_ns, f.time_end_ns),
            None => {
                // Recovery: whole events up to the end of the file, or up to the footer offset the
                // header already names when the footer itself was not written.
                let mut end = len;
                if fo > HEADER_SIZE as u64 && fo <= len {
                    end = fo;
                }
                if fo == HEADER_SIZE as u64
                    && torn_empty_footer(&file, len)
                        .map_err(|e| Error::io(path, "read the index footer", e))?
                {
                    // A finished file of no events keeps the recording state's header (footer at
                    // 64): a footer cut short there (a full disk) is not an event.
                    end = HEADER_SIZE as u64;
                    note = Some("the footer was cut short".to_owned());
                }
                let count = (end - HEADER_SIZE as u64) / EVENT_SIZE as u64;
                let note_text = note
                    .take()
                    .unwrap_or_else(|| "the file was not finished".to_owned());
                note = Some(format!(
                    "{note_text}; recovered {count} complete events{}",
                    if (end - HEADER_SIZE as u64) % EVENT_SIZE as u64 != 0 {
                        ", ignored a partial trailing event"
                    } else {
                        ""
                    }
                ));
                let (start, end_ts) = if count == 0 {
                    (0, 0)
                } else {
                    (
                        read_timestamp(&file, path, 0)?,
                        read_timestamp(&file, path, count - 1)?,
                    )
                };
                (count, start, end_ts)
            }
        };
        Ok(IndexReader {
            file,
            path: path.to_path_buf(),
            event_count,
            time_start_ns,
            time_end_ns,
            note,
            layout: Layout::Atf { header, footer },
        })
    }

    reader_accessors!("event");

    /// The file's encoding.
    pub fn format(&self) -> EventFormat {
        match self.layout {
            Layout::Atf { .. } => EventFormat::Atf2,
            Layout::Atc(_) => EventFormat::Atc,
        }
    }

    /// The ATF v2 header as stored (`None` for an ATC file).
    pub fn header(&self) -> Option<&IndexHeader> {
        match &self.layout {
            Layout::Atf { header, .. } => Some(header),
            Layout::Atc(_) => None,
        }
    }

    /// The ATF v2 footer, if the file is ATF v2 and was finished.
    pub fn footer(&self) -> Option<&IndexFooter> {
        match &self.layout {
            Layout::Atf { footer, .. } => footer.as_ref(),
            Layout::Atc(_) => None,
        }
    }

    /// Whether the header says the thread has a detail file.
    pub fn has_detail(&self) -> bool {
        match &self.layout {
            Layout::Atf { header, .. } => header.has_detail(),
            Layout::Atc(chunks) => chunks.header().flags & atc::FLAG_HAS_DETAIL != 0,
        }
    }

    /// Whether the writer finished the file.
    pub fn finished(&self) -> bool {
        match &self.layout {
            Layout::Atf { footer, .. } => footer.is_some(),
            Layout::Atc(chunks) => chunks.finished(),
        }
    }

    /// Number of readable events.
    pub fn event_count(&self) -> u64 {
        self.event_count
    }

    /// The clock the timestamps use, if the header names a known one.
    pub fn clock(&self) -> Option<ClockType> {
        ClockType::from_raw(self.clock_type())
    }

    /// The header's clock type byte (offset 16 in both formats), known or not.
    pub fn clock_type(&self) -> u8 {
        match &self.layout {
            Layout::Atf { header, .. } => header.clock_type,
            Layout::Atc(chunks) => chunks.header().clock_type,
        }
    }

    /// All events in order, read in large chunks.
    pub fn events(&self) -> Events<'_> {
        self.events_from(0)
    }

    /// All events in order, as [`events`](Self::events), except that in an ATC file a chunk that
    /// fails its checksum or does not decode is skipped instead of ending the stream with an
    /// error: what a reader shows after reporting the damage (see [`verify`](Self::verify)).
    /// [`Events::next_seq`] gives each event's stream position. ATF v2 events carry no
    /// checksum of their own, so nothing is skipped there.
    pub fn events_past_damage(&self) -> Events<'_> {
        let mut events = self.events_from(0);
        if let Inner::Atc(chunks) = &mut events.inner {
            chunks.past_damage();
        }
        events
    }

    /// Events from sequence number `seq` on.
    pub fn events_from(&self, seq: u64) -> Events<'_> {
        let seq = seq.min(self.event_count);
        let inner = match &self.layout {
            Layout::Atf { .. } => {
                let end = HEADER_SIZE as u64 + self.event_count * EVENT_SIZE as u64;
                let start = HEADER_SIZE as u64 + seq * EVENT_SIZE as u64;
                Inner::Atf(AtfEvents {
                    chunks: ChunkReader::new(&self.file, start, end),
                    seq,
                    check: None,
                })
            }
            Layout::Atc(chunks) => Inner::Atc(chunks.events_from(&self.file, &self.path, seq)),
        };
        Events {
            reader: self,
            inner,
            failed: false,
        }
    }

    /// Events from the first one at or after `time_ns` on (timestamps of a thread do not go
    /// backwards). ATC finds the chunk in its index and decodes from there; ATF v2 searches the
    /// fixed-size events by bisection.
    pub fn events_from_time(&self, time_ns: u64) -> Result<Events<'_>> {
        let seq = match &self.layout {
            Layout::Atf { .. } => {
                let (mut lo, mut hi) = (0u64, self.event_count);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if read_timestamp(&self.file, &self.path, mid)? < time_ns {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                lo
            }
            Layout::Atc(chunks) => chunks.seq_at_time(&self.file, &self.path, time_ns)?,
        };
        Ok(self.events_from(seq))
    }

    /// The event with sequence number `seq` (its position in the thread's stream).
    pub fn event(&self, seq: u64) -> Result<IndexEvent> {
        if seq >= self.event_count {
            return Err(Error::invalid(
                &self.path,
                format!("no event {seq}: the file holds {} events", self.event_count),
            ));
        }
        match self.events_from(seq).next() {
            Some(event) => event,
            None => Err(Error::corrupt(
                &self.path,
                format!("event {seq} could not be read"),
            )),
        }
    }

    /// Checks the stored checksums against the bytes. ATF v2: the CRC-32C of the events against
    /// the footer's, `Ok(false)` when none was recorded (unfinished file or checksum 0). ATC: every
    /// chunk's CRC-32C, `Ok(true)` when all match. A mismatch is an [`Error::Checksum`].
    pub fn verify_checksum(&self) -> Result<bool> {
        match &self.layout {
            Layout::Atf { footer, .. } => verify_range(
                &self.file,
                &self.path,
                "read the index events",
                (
                    HEADER_SIZE as u64,
                    HEADER_SIZE as u64 + self.event_count * EVENT_SIZE as u64,
                ),
                footer.map(|f| f.checksum),
            ),
            Layout::Atc(chunks) => chunks.verify(&self.file, &self.path).map(|()| true),
        }
    }
}

impl IndexReader {
    /// Checks everything the file says against everything else it says, in one pass over the
    /// events, and returns every damaged range found (an error only if the file cannot be read).
    /// ATC: the header's thread id, clock, flags and reserved bytes, each chunk's checksum and
    /// decoding, the chunk index against the chunks, and each event (see [`EventCheck`]).
    /// ATF v2: the header's thread id against `thread_id` (the one its directory names), its
    /// clock, flags and reserved bytes, the header's copies of the footer's fields, the footer's
    /// time range and length against the events, the CRC-32C of the events, and each event.
    pub fn verify(&self, thread_id: u32) -> Result<Vec<Damage>> {
        self.events_checked(thread_id)?.finish()
    }

    /// Every event, as [`events_past_damage`](Self::events_past_damage), checked as it is read:
    /// once the iterator has run to the end, [`CheckedEvents::finish`] returns what
    /// [`verify`](Self::verify) would, without a second pass over the file. (`verify` is this,
    /// with the events thrown away.)
    pub fn events_checked(&self, thread_id: u32) -> Result<CheckedEvents<'_>> {
        let mut events = self.events_past_damage();
        match (&self.layout, &mut events.inner) {
            (Layout::Atf { header, .. }, Inner::Atf(atf)) => {
                atf.chunks.keep_crc32c();
                atf.check = Some(Box::new(AtfCheck {
                    damage: self.atf_header_damage(header, thread_id)?,
                    events: EventCheck::new(&self.path, thread_id),
                    first_last: None,
                }));
            }
            (Layout::Atc(chunks), inner) => {
                *inner = Inner::Atc(chunks.events_checked(&self.file, &self.path, thread_id)?);
            }
            (Layout::Atf { .. }, Inner::Atc(_)) => unreachable!("an ATF v2 file reads as ATF v2"),
        }
        Ok(CheckedEvents { events })
    }

    /// The ATF v2 header's damage: its thread id against `thread_id`, clock, flags, reserved
    /// bytes and platform.
    fn atf_header_damage(&self, h: &IndexHeader, thread_id: u32) -> Result<Vec<Damage>> {
        let path = &self.path;
        let (raw, mut out) = verify::header_and_thread::<HEADER_SIZE>(
            &self.file,
            path,
            "read the index header",
            h.thread_id,
            thread_id,
        )?;
        if ClockType::from_raw(h.clock_type).is_none() {
            out.push(Damage::new(
                path,
                16..17,
                format!("the header names an unknown clock type {}", h.clock_type),
            ));
        }
        if h.flags & !FLAG_HAS_DETAIL != 0 {
            out.push(Damage::new(
                path,
                8..12,
                format!("the header's flags {:#x} set undefined bits", h.flags),
            ));
        }
        verify::reserved_zero(path, 17, &raw[17..24], "header", &mut out);
        verify::platform(path, h.arch, h.os, &mut out);
        Ok(out)
    }

    /// The ATF v2 damage a pass over every event finds, after the header's (`check.damage`): the
    /// header's copies of the footer's fields, the footer against the events (`crc` is their
    /// CRC-32C), then each event's.
    fn atf_end_damage(&self, check: AtfCheck, crc: u32) -> Result<Vec<Damage>> {
        let Layout::Atf { header: h, footer } = &self.layout else {
            unreachable!("only an ATF v2 file has an ATF v2 check");
        };
        let footer = footer.as_ref();
        let path = &self.path;
        let AtfCheck {
            damage: mut out,
            events: check,
            first_last,
        } = check;
        let n = self.event_count;
        let events_end = HEADER_SIZE as u64 + n * EVENT_SIZE as u64;
        let (first, last) = first_last.unwrap_or((0, 0));
        match footer {
            Some(f) => {
                let fo = h.footer_offset;
                let mut raw_footer = [0u8; FOOTER_SIZE];
                self.file
                    .read_exact_at(&mut raw_footer, fo)
                    .map_err(|e| Error::io(path, "read the index footer", e))?;
                let stored = u32::try_from(n).unwrap_or(u32::MAX);
                field_matches(
                    path,
                    28..32,
                    "the header's event count",
                    h.event_count.into(),
                    stored.into(),
                    &mut out,
                );
                field_matches(
                    path,
                    48..56,
                    "the header's first timestamp",
                    h.time_start_ns,
                    f.time_start_ns,
                    &mut out,
                );
                field_matches(
                    path,
                    56..64,
                    "the header's last timestamp",
                    h.time_end_ns,
                    f.time_end_ns,
                    &mut out,
                );
                field_matches(
                    path,
                    fo + 16..fo + 24,
                    "the footer's first timestamp",
                    f.time_start_ns,
                    first,
                    &mut out,
                );
                field_matches(
                    path,
                    fo + 24..fo + 32,
                    "the footer's last timestamp",
                    f.time_end_ns,
                    last,
                    &mut out,
                );
                field_matches(
                    path,
                    fo + 32..fo + 40,
                    "the footer's byte count",
                    f.bytes_written,
                    n * EVENT_SIZE as u64,
                    &mut out,
                );
                verify::footer_tail(
                    path,
                    (fo, &raw_footer),
                    (f.checksum, crc),
                    HEADER_SIZE as u64..events_end,
                    "events",
                    &mut out,
                );
            }
            None => {
                // The recording state: the fields the writer fills in at the end are still zero.
                field_matches(
                    path,
                    28..32,
                    "the header's event count (recording state)",
                    h.event_count.into(),
                    0,
                    &mut out,
                );
                field_matches(
                    path,
                    48..56,
                    "the header's first timestamp (recording state)",
                    h.time_start_ns,
                    0,
                    &mut out,
                );
                field_matches(
                    path,
                    56..64,
                    "the header's last timestamp (recording state)",
                    h.time_end_ns,
                    0,
                    &mut out,
                );
            }
        }
        out.extend(check.finish());
        Ok(out)
    }
}

/// Iterator over a thread's events; yields an error (then stops) if the file shrinks under it or
/// (ATC) a chunk fails its checksum.
pub struct Events<'a> {
    reader: &'a IndexReader,
    inner: Inner<'a>,
    failed: bool,
}

enum Inner<'a> {
    Atf(AtfEvents<'a>),
    Atc(compact::ChunkEvents<'a>),
}

/// ATF v2 events being read.
struct AtfEvents<'a> {
    /// The bytes left.
    chunks: ChunkReader<'a>,
    /// The stream position of the next event.
    seq: u64,
    /// A verifying pass's findings (see [`IndexReader::events_checked`]).
    check: Option<Box<AtfCheck>>,
}

/// What a verifying pass over an ATF v2 file has found so far.
struct AtfCheck {
    /// The header's damage.
    damage: Vec<Damage>,
    events: EventCheck,
    /// Timestamps of the first and last event read.
    first_last: Option<(u64, u64)>,
}

/// A thread's events read and verified in one pass ([`IndexReader::events_checked`]): an
/// iterator like [`IndexReader::events_past_damage`], then [`finish`](Self::finish) for the
/// damage found.
pub struct CheckedEvents<'a> {
    events: Events<'a>,
}

impl CheckedEvents<'_> {
    /// The same events, except that a damaged ATC chunk ends the stream with its error instead of
    /// being skipped (as [`IndexReader::events`] does), for a reader that must not go on without
    /// its events, such as a copy; [`finish`](Self::finish) still lists the damage.
    pub fn stopping_at_damage(mut self) -> Self {
        if let Inner::Atc(chunks) = &mut self.events.inner {
            chunks.stop_at_damage();
        }
        self
    }

    /// The stream position of the next event returned (see [`Events::next_seq`]).
    pub fn next_seq(&self) -> u64 {
        self.events.next_seq()
    }

    /// Reads whatever events are left and returns every damaged range found, as
    /// [`IndexReader::verify`] lists them; an error if the file could not be read.
    pub fn finish(self) -> Result<Vec<Damage>> {
        let Events { reader, inner, .. } = self.events;
        match inner {
            Inner::Atc(chunks) => chunks.finish_check(),
            Inner::Atf(mut atf) => {
                let mut raw = [0u8; EVENT_SIZE];
                while let Some(bytes) = atf
                    .chunks
                    .take(EVENT_SIZE)
                    .map_err(|e| reader.events_io_error(e))?
                {
                    raw.copy_from_slice(bytes);
                    atf.check_event(&raw);
                }
                let crc = atf.chunks.crc32c_so_far();
                match atf.check {
                    Some(check) => reader.atf_end_damage(*check, crc),
                    None => Ok(Vec::new()),
                }
            }
        }
    }
}

impl CheckedEvents<'_> {
    /// Passes every event left to `f`, in order (see [`Events::try_each`]).
    #[inline]
    pub fn try_each<E: From<Error>>(
        &mut self,
        f: impl FnMut(IndexEvent) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.events.try_each(f)
    }
}

impl Iterator for CheckedEvents<'_> {
    type Item = Result<IndexEvent>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.events.next()
    }
}

impl AtfEvents<'_> {
    /// Decodes the event in `bytes` (32 of them) and, in a verifying pass, checks it.
    #[inline]
    fn check_event(&mut self, bytes: &[u8]) -> IndexEvent {
        Self::decode_checked(&mut self.check, &mut self.seq, bytes)
    }

    /// [`Self::check_event`] on the fields it uses, so the bytes can be borrowed from `chunks`.
    #[inline(always)]
    fn decode_checked(
        check: &mut Option<Box<AtfCheck>>,
        seq: &mut u64,
        bytes: &[u8],
    ) -> IndexEvent {
        let mut raw = [0u8; EVENT_SIZE];
        raw.copy_from_slice(bytes);
        let event = IndexEvent::decode(&raw);
        if let Some(check) = check {
            let start = HEADER_SIZE as u64 + *seq * EVENT_SIZE as u64;
            check.events.event(start..start + EVENT_SIZE as u64, &event);
            let first = check.first_last.map_or(event.timestamp_ns, |(f, _)| f);
            check.first_last = Some((first, event.timestamp_ns));
        }
        *seq += 1;
        event
    }

    /// Passes every event left to `f`, a buffer of them at a time (see [`Events::try_each`]).
    #[inline]
    fn try_each<E: From<Error>>(
        &mut self,
        reader: &IndexReader,
        mut f: impl FnMut(IndexEvent) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let AtfEvents { chunks, seq, check } = self;
        loop {
            let events = (chunks.remaining() / EVENT_SIZE as u64).min(CHUNK_EVENTS) as usize;
            if events == 0 {
                return Ok(());
            }
            let bytes = match chunks.take(events * EVENT_SIZE) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return Ok(()),
                Err(e) => return Err(reader.events_io_error(e).into()),
            };
            for raw in bytes.chunks_exact(EVENT_SIZE) {
                f(Self::decode_checked(check, seq, raw))?;
            }
        }
    }
}

/// ATF v2 events [`AtfEvents::try_each`] takes from its buffer at once.
const CHUNK_EVENTS: u64 = (crate::chunk::CHUNK / EVENT_SIZE) as u64;

impl IndexReader {
    fn events_io_error(&self, e: std::io::Error) -> Error {
        Error::io(
            &self.path,
            "read the index events (did the file shrink?)",
            e,
        )
    }
}

impl Events<'_> {
    /// The stream position (sequence number) of the next event returned; after a `next` that
    /// returned an event, that event's position is one less. Detail records link to events by it.
    pub fn next_seq(&self) -> u64 {
        match &self.inner {
            Inner::Atf(atf) => atf.seq,
            Inner::Atc(chunks) => chunks.next_seq(),
        }
    }
}

impl Events<'_> {
    /// Passes every event left to `f`, in order, and stops at the first error, `f`'s or the
    /// file's (then nothing more is read): what a `for` loop over the iterator does, without an
    /// `Option<Result>` handed through per event (ATC: a decoded chunk at a time).
    #[inline]
    pub fn try_each<E: From<Error>>(
        &mut self,
        mut f: impl FnMut(IndexEvent) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        if self.failed {
            return Ok(());
        }
        let result = match &mut self.inner {
            Inner::Atc(chunks) => chunks.try_each(&mut f),
            Inner::Atf(atf) => atf.try_each(self.reader, &mut f),
        };
        self.failed = result.is_err();
        result
    }
}

impl Iterator for Events<'_> {
    type Item = Result<IndexEvent>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let result = match &mut self.inner {
            Inner::Atc(chunks) => chunks.next()?.map(IndexEvent::from),
            Inner::Atf(atf) => match atf.chunks.take(EVENT_SIZE) {
                Ok(Some(bytes)) => {
                    let mut raw = [0u8; EVENT_SIZE];
                    raw.copy_from_slice(bytes);
                    Ok(atf.check_event(&raw))
                }
                Ok(None) => return None,
                Err(e) => Err(self.reader.events_io_error(e)),
            },
        };
        self.failed = result.is_err();
        Some(result)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match &self.inner {
            Inner::Atf(atf) => (atf.chunks.remaining() / EVENT_SIZE as u64) as usize,
            Inner::Atc(chunks) => chunks.remaining() as usize,
        };
        (0, Some(n))
    }
}

fn read_timestamp(file: &File, path: &Path, seq: u64) -> Result<u64> {
    let mut raw = [0u8; 8];
    file.read_exact_at(&mut raw, HEADER_SIZE as u64 + seq * EVENT_SIZE as u64)
        .map_err(|e| Error::io(path, "read an index event", e))?;
    Ok(u64::from_le_bytes(raw))
}

#[cfg(test)]
#[allow(non_snake_case)]
pub(crate) mod tests {
    use super::*;
    use crate::le::put_u64;
    use crate::NO_DETAIL;

    pub(crate) fn event(i: u64) -> IndexEvent {
        IndexEvent {
            timestamp_ns: 1_000 + i * 10,
            function_id: crate::function_id(0xabcd_0123, i as u32 % 7),
            thread_id: 77,
            kind: if i % 2 == 0 {
                EventKind::Call
            } else {
                EventKind::Return
            },
            call_depth: (i % 5) as u32,
            detail_seq: if i % 3 == 0 { i as u32 } else { NO_DETAIL },
        }
    }

    /// A writer of `format` at `path` on the real file system (thread 77, a boottime clock).
    fn writer_at(path: &Path, format: EventFormat) -> IndexWriter {
        IndexWriter::create_with_format(&crate::sink::RealFs, path, 77, ClockType::Boottime, format)
            .unwrap()
    }

    pub(crate) fn batch(range: std::ops::Range<u64>) -> Vec<u8> {
        range.flat_map(|i| event(i).encode()).collect()
    }

    fn write_finished(path: &Path, n: u64) -> IndexSummary {
        let mut w = IndexWriter::create(path, 77, ClockType::Boottime).unwrap();
        w.append(&batch(0..n)).unwrap();
        w.finish().unwrap()
    }

    pub(crate) fn read_all(reader: &IndexReader) -> Vec<IndexEvent> {
        reader.events().collect::<Result<Vec<_>>>().unwrap()
    }

    #[test]
    fn events_try_each__both_formats_damaged_or_not__then_what_the_iterator_and_verify_give() {
        // 100 000 events: ATF v2 in several buffers of the chunk reader, ATC in several chunks.
        let n = 100_000u64;
        for format in [EventFormat::Atf2, EventFormat::Atc] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format.file_name());
            let mut w = writer_at(&path, format);
            for part in batch(0..n).chunks(20_000 * EVENT_SIZE) {
                w.append(part).unwrap();
                w.flush().unwrap();
            }
            w.finish().unwrap();
            for damaged in [false, true] {
                if damaged {
                    // A byte in the middle of the file: an event (ATF v2) or a chunk (ATC).
                    let mut bytes = std::fs::read(&path).unwrap();
                    let middle = bytes.len() / 2;
                    bytes[middle] ^= 0x04;
                    std::fs::write(&path, bytes).unwrap();
                }
                let r = IndexReader::open(&path).unwrap();
                let iterated: Vec<IndexEvent> =
                    r.events_past_damage().map(Result::unwrap).collect();
                let mut each = Vec::new();
                r.events_past_damage()
                    .try_each(|e| -> Result<()> {
                        each.push(e);
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(each, iterated, "{format:?}, damaged: {damaged}");
                assert_eq!(
                    each.len() as u64 == n,
                    !damaged || format == EventFormat::Atf2
                );

                let mut checked = r.events_checked(77).unwrap();
                let mut seen = 0u64;
                checked
                    .try_each(|_| -> Result<()> {
                        seen += 1;
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(seen, each.len() as u64);
                let found = checked.finish().unwrap();
                assert_eq!(found, r.verify(77).unwrap());
                assert_eq!(found.is_empty(), !damaged, "{format:?}: {found:?}");

                // `f`'s error stops the pass at once and is returned.
                let mut calls = 0;
                let stopped = r.events().try_each(|_| {
                    calls += 1;
                    if calls == 3 {
                        Err(Error::invalid(&path, "enough"))
                    } else {
                        Ok(())
                    }
                });
                assert!(stopped.unwrap_err().to_string().contains("enough"));
                assert_eq!(calls, 3);
            }
        }
    }

    #[test]
    fn index_event__encode__then_fields_at_the_format_offsets() {
        let e = IndexEvent {
            timestamp_ns: 0x0102_0304_0506_0708,
            function_id: 0x1112_1314_1516_1718,
            thread_id: 0x2122_2324,
            kind: EventKind::Exception,
            call_depth: 0x3132_3334,
            detail_seq: 0x4142_4344,
        };
        let b = e.encode();
        assert_eq!(b.len(), 32);
        assert_eq!(b[0..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(b[8..16], 0x1112_1314_1516_1718u64.to_le_bytes());
        assert_eq!(b[16..20], 0x2122_2324u32.to_le_bytes());
        assert_eq!(b[20..24], 3u32.to_le_bytes());
        assert_eq!(b[24..28], 0x3132_3334u32.to_le_bytes());
        assert_eq!(b[28..32], 0x4142_4344u32.to_le_bytes());
        assert_eq!(IndexEvent::decode(&b), e);
    }

    #[test]
    fn index_header__encode__then_fields_at_the_format_offsets() {
        let h = IndexHeader {
            flags: 1,
            thread_id: 0xa1a2_a3a4,
            event_count: 0xb1b2_b3b4,
            footer_offset: 0xc1c2_c3c4_c5c6_c7c8,
            time_start_ns: 0xd1d2_d3d4_d5d6_d7d8,
            time_end_ns: 0xe1e2_e3e4_e5e6_e7e8,
            ..IndexHeader::recording(0, ClockType::Boottime)
        };
        let b = h.encode();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[0..4], b"ATI2");
        assert_eq!(b[4], 1, "endian");
        assert_eq!(b[5], 1, "version");
        assert_eq!(b[6], crate::current_arch());
        assert_eq!(b[7], 4, "os");
        assert_eq!(b[8..12], 1u32.to_le_bytes());
        assert_eq!(b[12..16], 0xa1a2_a3a4u32.to_le_bytes());
        assert_eq!(b[16], 3, "clock_type boottime");
        assert_eq!(b[17..24], [0; 7], "reserved");
        assert_eq!(b[24..28], 32u32.to_le_bytes());
        assert_eq!(b[28..32], 0xb1b2_b3b4u32.to_le_bytes());
        assert_eq!(b[32..40], 64u64.to_le_bytes());
        assert_eq!(b[40..48], 0xc1c2_c3c4_c5c6_c7c8u64.to_le_bytes());
        assert_eq!(b[48..56], 0xd1d2_d3d4_d5d6_d7d8u64.to_le_bytes());
        assert_eq!(b[56..64], 0xe1e2_e3e4_e5e6_e7e8u64.to_le_bytes());
        assert_eq!(IndexHeader::decode(&b), Some(h));
    }

    #[test]
    fn index_footer__encode__then_fields_at_the_format_offsets() {
        let (checksum, [event_count, time_start_ns, time_end_ns, bytes_written]) =
            crate::testkit::FOOTER_FIELDS;
        let f = IndexFooter {
            checksum,
            event_count,
            time_start_ns,
            time_end_ns,
            bytes_written,
        };
        let b = f.encode();
        crate::testkit::assert_footer_layout(&b, b"2ITA");
        assert_eq!(IndexFooter::decode(&b), Some(f));
        assert_eq!(IndexFooter::decode(&[0; 64]), None);
    }

    #[test]
    fn index_writer__batches_of_every_size__then_reader_returns_every_event_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        let mut w = IndexWriter::create(&path, 77, ClockType::Boottime).unwrap();
        // Small batches that fill the buffer, single events, and batches larger than the buffer.
        let mut next = 0u64;
        for n in [1u64, 3, 2048, 1, 40_000, 17, 70_000, 5] {
            w.append(&batch(next..next + n)).unwrap();
            next += n;
            w.append_event(&event(next)).unwrap();
            next += 1;
        }
        assert_eq!(w.event_count(), next);
        let summary = w.finish().unwrap();
        assert_eq!(summary.event_count, next);
        assert_eq!(summary.file_bytes, 64 + next * 32 + 64);

        let r = IndexReader::open(&path).unwrap();
        assert!(r.finished());
        assert_eq!(r.recovery_note(), None);
        assert_eq!(r.event_count(), next);
        assert_eq!(
            r.time_range(),
            (event(0).timestamp_ns, event(next - 1).timestamp_ns)
        );
        assert_eq!(r.clock(), Some(ClockType::Boottime));
        let events = read_all(&r);
        assert_eq!(events.len() as u64, next);
        assert!(events
            .iter()
            .enumerate()
            .all(|(i, e)| *e == event(i as u64)));
        assert!(r.verify_checksum().unwrap());
        assert_eq!(r.event(12_345).unwrap(), event(12_345));
        assert_eq!(r.events_from(next - 2).count(), 2);
    }

    #[test]
    fn index_writer__finish__then_header_patched_and_footer_holds_crc32c() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        let summary = write_finished(&path, 10);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 64 + 320 + 64);
        let header = IndexHeader::get_fields(bytes[..64].try_into().unwrap());
        assert_eq!(header.event_count, 10);
        assert_eq!(header.footer_offset, 384);
        assert_eq!(header.time_start_ns, event(0).timestamp_ns);
        assert_eq!(header.time_end_ns, event(9).timestamp_ns);
        let footer = IndexFooter::decode(bytes[384..].try_into().unwrap()).unwrap();
        assert_eq!(footer.checksum, crc32c::crc32c(&bytes[64..384]));
        assert_eq!(footer.checksum, summary.checksum);
        assert_eq!(footer.event_count, 10);
        assert_eq!(footer.bytes_written, 320);
    }

    #[test]
    fn index_writer__created__then_recording_header_on_disk_before_any_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        let _w = IndexWriter::create(&path, 9, ClockType::Boottime).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 64);
        let header = IndexHeader::get_fields(bytes[..64].try_into().unwrap());
        assert_eq!((header.event_count, header.footer_offset), (0, 64));
        let r = IndexReader::open(&path).unwrap();
        assert!(!r.finished());
        assert_eq!(r.event_count(), 0);
    }

    #[test]
    fn index_writer__partial_event__then_invalid_input_and_nothing_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        let mut w = IndexWriter::create(&path, 77, ClockType::Boottime).unwrap();
        let err = w.append(&[0u8; 33]).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(err.to_string().contains("index.atf"), "{err}");
        assert_eq!(w.event_count(), 0);
        w.append(&batch(0..2)).unwrap();
        assert_eq!(w.finish().unwrap().event_count, 2);
    }

    #[test]
    fn index_writer__existing_file__then_create_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        std::fs::write(&path, b"keep me").unwrap();
        let err = IndexWriter::create(&path, 1, ClockType::Boottime)
            .err()
            .unwrap();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn index_writer__set_has_detail__then_flag_on_disk_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        let mut w = IndexWriter::create(&path, 77, ClockType::Boottime).unwrap();
        w.set_has_detail(true).unwrap();
        assert!(IndexReader::open(&path).unwrap().has_detail());
        w.finish().unwrap();
        assert!(IndexReader::open(&path).unwrap().has_detail());
    }

    #[test]
    fn index_writer__append_tsc__then_timestamps_in_nanoseconds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        // 3 GHz: 3 ticks per nanosecond.
        let cal = TscCalibration::new(3_000_000_000, 1_000_000, 5_000);
        let mut raw = event(0);
        raw.timestamp_ns = 1_000_000 + 3_000;
        let mut w = IndexWriter::create(&path, 77, ClockType::Boottime).unwrap();
        w.append_tsc(&raw.encode(), &cal).unwrap();
        let summary = w.finish().unwrap();
        let r = IndexReader::open(&path).unwrap();
        let e = r.event(0).unwrap();
        assert!(
            (5_999..=6_000).contains(&e.timestamp_ns),
            "{}",
            e.timestamp_ns
        );
        assert_eq!(summary.time_start_ns, e.timestamp_ns);
        assert!(r.verify_checksum().unwrap());
    }

    #[test]
    fn index_writer__append_timed_both_formats__then_files_equal_append_of_the_converted_events() {
        // 40 000 events: more than one write buffer (ATF v2 converts a piece at a time) and
        // several ATC chunks, appended in uneven batches.
        let n = 40_000u64;
        let time = |t: u64| 7_000 + (t - 1_000) * 3 / 2;
        let ticks = batch(0..n);
        let converted: Vec<u8> = (0..n)
            .flat_map(|i| {
                let mut e = event(i);
                e.timestamp_ns = time(e.timestamp_ns);
                e.encode()
            })
            .collect();
        for format in [EventFormat::Atf2, EventFormat::Atc] {
            let dir = tempfile::tempdir().unwrap();
            let write = |name: &str, timed: bool| {
                let path = dir.path().join(name);
                let mut w = writer_at(&path, format);
                for part in ticks.chunks(3_333 * EVENT_SIZE) {
                    if timed {
                        w.append_timed(part, time).unwrap();
                    } else {
                        let at = part.as_ptr() as usize - ticks.as_ptr() as usize;
                        w.append(&converted[at..at + part.len()]).unwrap();
                    }
                }
                (path, w.finish().unwrap())
            };
            let (timed, summary) = write("timed", true);
            let (plain, expected) = write("plain", false);
            assert_eq!(summary, expected, "{format:?}");
            assert_eq!(
                std::fs::read(&timed).unwrap(),
                std::fs::read(&plain).unwrap()
            );
            let r = IndexReader::open(&timed).unwrap();
            assert!(r.verify(77).unwrap().is_empty(), "{format:?}");
            assert_eq!(
                r.event(n - 1).unwrap().timestamp_ns,
                time(event(n - 1).timestamp_ns)
            );
            assert_eq!(summary.time_start_ns, time(event(0).timestamp_ns));
        }
    }

    #[test]
    fn index_reader__header_patched_but_footer_missing__then_events_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        write_finished(&path, 4);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..64 + 4 * 32]).unwrap();
        let r = IndexReader::open(&path).unwrap();
        assert!(!r.finished());
        assert_eq!(r.event_count(), 4);
    }

    #[test]
    fn index_reader__first_event_looks_like_footer__then_still_recording() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        let mut w = IndexWriter::create(&path, 77, ClockType::Boottime).unwrap();
        let mut lookalike = [0u8; 64];
        lookalike[0..4].copy_from_slice(b"2ITA");
        w.append(&lookalike).unwrap();
        w.append(&batch(0..1)).unwrap();
        w.flush().unwrap();
        std::mem::forget(w);
        let r = IndexReader::open(&path).unwrap();
        assert!(!r.finished());
        assert_eq!(r.event_count(), 3);
    }

    #[test]
    fn index_reader__garbage_header__then_corrupt_error_naming_file_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        let good = IndexHeader::recording(1, ClockType::Boottime).encode();
        type Mutation = Box<dyn Fn(&mut [u8; 64])>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|b| b[0..4].copy_from_slice(b"NOPE")),
                "not an ATF index file",
            ),
            (Box::new(|b| b[4] = 2), "byte order"),
            (Box::new(|b| b[5] = 9), "file version 9"),
            (Box::new(|b| put_u32(b, 24, 48)), "events are 48 bytes"),
            (Box::new(|b| put_u64(b, 32, 128)), "offset 128"),
        ];
        for (mutate, expected) in cases {
            let mut b = good;
            mutate(&mut b);
            std::fs::write(&path, b).unwrap();
            let err = IndexReader::open(&path).err().unwrap();
            let msg = err.to_string();
            assert!(msg.contains(expected) && msg.contains("index.atf"), "{msg}");
        }
    }

    #[test]
    fn index_reader__footer_contradicts_offset__then_corrupt_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        write_finished(&path, 4);
        let mut bytes = std::fs::read(&path).unwrap();
        put_u64(&mut bytes, 64 + 128 + 8, 5); // footer.event_count
        std::fs::write(&path, &bytes).unwrap();
        let msg = IndexReader::open(&path).err().unwrap().to_string();
        assert!(msg.contains("counts 5 events"), "{msg}");
    }

    #[test]
    fn index_reader__footer_offset_past_end__then_recovered_with_note() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        write_finished(&path, 4);
        let mut bytes = std::fs::read(&path).unwrap();
        put_u64(&mut bytes, 40, u64::MAX - 3);
        std::fs::write(&path, &bytes).unwrap();
        let r = IndexReader::open(&path).unwrap();
        assert!(!r.finished());
        assert!(
            r.recovery_note().unwrap().contains("past the end"),
            "{:?}",
            r.recovery_note()
        );
    }

    #[test]
    fn index_reader__damaged_event__then_checksum_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        write_finished(&path, 4);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = IndexReader::open(&path)
            .unwrap()
            .verify_checksum()
            .unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
    }

    #[test]
    fn index_reader__event_past_end__then_invalid_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.atf");
        write_finished(&path, 4);
        let msg = IndexReader::open(&path)
            .unwrap()
            .event(4)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no event 4"), "{msg}");
    }

    #[test]
    fn index_reader__missing_file__then_io_error_naming_it() {
        let msg = IndexReader::open("/nonexistent/index.atf")
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.starts_with("/nonexistent/index.atf: cannot open"),
            "{msg}"
        );
    }

    /// The event files in the shared tests: `index.atf` (ATF v2) and, with `ATC`, `index.atc`.
    pub(crate) struct Events<const ATC: bool>;
    /// `index.atf` in the shared tests.
    pub(crate) type Atf = Events<false>;
    /// `index.atc` in the shared tests.
    pub(crate) type Atc = Events<true>;

    impl<const ATC: bool> crate::testkit::FileKind for Events<ATC> {
        type Writer = IndexWriter;
        type Reader = IndexReader;
        type Item = IndexEvent;
        const NAME: &'static str = if ATC { "index.atc" } else { "index.atf" };
        const MAGIC: &'static [u8] = if ATC { &atc::FILE_MAGIC } else { b"ATI2" };
        const ITEMS: &'static str = "events";
        const OPS: u8 = 6;
        const STORM: (&'static [u64], u64, usize) = (&[1, 3, 40_000, 2048, 1, 20_000], 3, 10_000);
        const PARTIAL_NOTE: &'static str = "partial trailing event";

        same_named_calls!(IndexWriter, IndexReader);

        fn item(i: u64) -> IndexEvent {
            event(i)
        }
        fn create_with(fs: &dyn FileSystem, path: &Path) -> Result<IndexWriter> {
            let format = if ATC {
                EventFormat::Atc
            } else {
                EventFormat::Atf2
            };
            IndexWriter::create_with_format(fs, path, 77, ClockType::Boottime, format)
        }
        fn append(w: &mut IndexWriter, range: std::ops::Range<u64>) -> Result<()> {
            w.append(&batch(range))
        }
        fn append_one(w: &mut IndexWriter, i: u64) -> Result<()> {
            w.append_event(&event(i))
        }
        fn extra(w: &mut IndexWriter, op: u8, n: u64) -> Result<()> {
            match op {
                4 => w.set_has_detail(n % 2 == 0),
                _ => w.start_writeback(),
            }
        }
        fn read_all(r: &IndexReader) -> Vec<IndexEvent> {
            read_all(r)
        }
        fn count(r: &IndexReader) -> u64 {
            r.event_count()
        }
        fn read_anything(r: &IndexReader) {
            if ATC {
                // A damaged chunk is skipped: fewer events than counted.
                r.events_past_damage().for_each(drop);
            } else {
                let n = r.events().filter(|e| e.is_ok()).count() as u64;
                assert_eq!(n, r.event_count());
            }
            let _ = r.event(r.event_count().saturating_sub(1));
        }
        fn bytes_of(n: u64) -> u64 {
            assert!(!ATC, "index.atc stores events in compressed chunks");
            n * EVENT_SIZE as u64
        }
        fn extras_held(r: &IndexReader) -> bool {
            r.has_detail()
        }
    }

    writer_tests!(Atf);
    whole_item_tests!(Atf);

    mod faults {
        use super::*;
        use crate::fault::{FaultPlan, FaultyFs};
        use crate::testkit::os_error;

        fn faulty(plan: FaultPlan) -> FaultyFs {
            FaultyFs::new(plan)
        }

        #[test]
        fn index_writer__large_batch_fails_part_way__then_prefix_readable() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("index.atf");
            // The batch goes straight from the slice in short writes; the fourth piece fails.
            let fs = faulty(
                FaultPlan::new()
                    .short_writes_every(1, 100_000)
                    .fail_write(5, libc::EIO),
            );
            let mut w = IndexWriter::create_with(&fs, &path, 77, ClockType::Boottime).unwrap();
            let err = w.append(&batch(0..40_000)).unwrap_err();
            assert_eq!(os_error(&err, &path), Some(libc::EIO));
            let r = IndexReader::open(&path).unwrap();
            assert_eq!(r.event_count(), 300_000 / 32);
            assert_eq!(
                read_all(&r),
                (0..300_000 / 32).map(event).collect::<Vec<_>>()
            );
        }

        #[test]
        fn index_writer__empty_file_footer_cut_short__then_no_phantom_event() {
            for cut in [4, 31, 32, 47, 63] {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("index.atf");
                let fs = faulty(FaultPlan::new().full_after(64 + cut, libc::ENOSPC));
                let w = IndexWriter::create_with(&fs, &path, 77, ClockType::Boottime).unwrap();
                let err = w.finish().unwrap_err();
                assert_eq!(os_error(&err, &path), Some(libc::ENOSPC));
                assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 + cut);
                let r = IndexReader::open(&path).unwrap();
                assert!(!r.finished());
                assert_eq!(read_all(&r), Vec::new(), "cut after {cut} bytes");
            }
        }
    }
}
