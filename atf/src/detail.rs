//! `detail.atf`: one thread's detail records (registers and stack bytes around marked events).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::chunk::ChunkReader;
use crate::engine::{
    check_common_header, check_items_offset, finish_methods, in_parent, open_with_header,
    reader_accessors, verify_range, FileCore, Kind,
};
use crate::error::{Error, Result};
#[cfg(test)]
use crate::le::put_u32;
use crate::le::u32_at;
use crate::sink::{Dir, FileSystem, RealFs};
use crate::verify::{self, field_matches, Damage};
use crate::{
    DETAIL_FOOTER_MAGIC, DETAIL_MAGIC, FILE_VERSION, FOOTER_SIZE, HEADER_SIZE, RECORD_HEADER_SIZE,
};

event::file_header! {
    /// The 64-byte header of `detail.atf` (magic `ATD2` at 0 is implied): the prefix every trace
    /// file kind shares, 4 reserved bytes, then:
    pub struct DetailHeader(HEADER_SIZE, magic DETAIL_MAGIC) {
        /// Bytes 20..28: 64.
        events_offset: u64 @ 20,
        /// Bytes 28..36: number of records, 0 while recording.
        event_count: u64 @ 28,
        /// Bytes 36..44: bytes of records, 0 while recording.
        bytes_length: u64 @ 36,
        /// Bytes 44..52: `index_seq` of the first record.
        index_seq_start: u64 @ 44,
        /// Bytes 52..60: `index_seq` of the last record.
        index_seq_end: u64 @ 52,
    }
}

impl DetailHeader {
    /// The header of a file being recorded on this machine.
    pub fn recording(thread_id: u32) -> Self {
        DetailHeader {
            thread_id,
            events_offset: HEADER_SIZE as u64,
            ..DetailHeader::this_machine(FILE_VERSION)
        }
    }
}

/// The 24-byte header of a detail record, the payload following it: the layout the agent writes
/// ([`event::DetailHeader`]). The payload is the agent's capture (registers, stack pointer, stack
/// byte count, stack bytes); this crate stores it as opaque bytes.
pub use event::DetailHeader as DetailRecordHeader;

/// One detail record as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetailRecord {
    /// The 24-byte record header.
    pub header: DetailRecordHeader,
    /// `total_length - 24` payload bytes.
    pub payload: Vec<u8>,
}

event::le_struct! {
    /// The 64-byte footer of `detail.atf` (magic `2DTA` at 0 is implied).
    pub struct DetailFooter(FOOTER_SIZE, magic DETAIL_FOOTER_MAGIC) {
        /// Bytes 4..8: CRC-32C of the record bytes; 0 = not computed.
        checksum: u32 @ 4,
        /// Bytes 8..16: number of records.
        event_count: u64 @ 8,
        /// Bytes 16..24: bytes of records.
        bytes_length: u64 @ 16,
        /// Bytes 24..32: first record's timestamp.
        time_start_ns: u64 @ 24,
        /// Bytes 32..40: last record's timestamp.
        time_end_ns: u64 @ 32,
    }
}

/// What a finished detail file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetailSummary {
    /// Records written.
    pub record_count: u64,
    /// Bytes of records.
    pub bytes_length: u64,
    /// First record's timestamp (0 if none).
    pub time_start_ns: u64,
    /// Last record's timestamp (0 if none).
    pub time_end_ns: u64,
    /// CRC-32C of the record bytes.
    pub checksum: u32,
    /// File size, header and footer included.
    pub file_bytes: u64,
}

/// Running totals of the records written so far.
#[derive(Clone, Copy, Default)]
struct Totals {
    count: u64,
    bytes: u64,
    crc: u32,
    time_start_ns: u64,
    time_end_ns: u64,
    seq_start: u64,
    seq_end: u64,
}

impl Totals {
    fn add(&mut self, header: &DetailRecordHeader) {
        if self.count == 0 {
            self.time_start_ns = header.timestamp_ns;
            self.seq_start = u64::from(header.index_seq);
        }
        self.time_end_ns = header.timestamp_ns;
        self.seq_end = u64::from(header.index_seq);
        self.count += 1;
        self.bytes += u64::from(header.total_length);
    }
}

/// Appends records to one thread's `detail.atf`; same guarantees as [`crate::IndexWriter`] (the
/// same file engine), the same handling of interrupted, short and failed writes and of a failed
/// fsync: after an error the file holds whole records and at most one partial record, which
/// readers ignore.
pub struct DetailWriter {
    core: FileCore,
    header: DetailHeader,
    totals: Totals,
}

/// Error messages of the detail file.
static DETAIL_KIND: Kind = Kind {
    create: "create the detail file (is the directory writable, the name unused?)",
    header: "write the detail header (is the disk full or failing?); the file was removed",
    write: "write the detail file (is the disk full or failing?)",
};

impl DetailWriter {
    /// Creates `path` (which must not exist) and writes the recording header.
    pub fn create(path: impl AsRef<Path>, thread_id: u32) -> Result<Self> {
        Self::create_with(&RealFs, path, thread_id)
    }

    /// [`create`](Self::create) on the file system `fs`: the directory holding `path` is opened
    /// (as given) and the file created in it with [`create_in`](Self::create_in).
    pub fn create_with(
        fs: &dyn FileSystem,
        path: impl AsRef<Path>,
        thread_id: u32,
    ) -> Result<Self> {
        in_parent(
            path.as_ref(),
            "open the directory of the detail file",
            |dir, name| Self::create_in(fs, dir, name, thread_id),
        )
    }

    /// Creates `name` in `dir` on the file system `fs` (new, never an existing file or a link;
    /// mode 0600) and writes the recording header. If the header cannot be written whole, the
    /// file is removed again.
    pub fn create_in(fs: &dyn FileSystem, dir: &Dir, name: &str, thread_id: u32) -> Result<Self> {
        let header = DetailHeader::recording(thread_id);
        let core = FileCore::create(fs, dir, name, &DETAIL_KIND, &header.encode())?;
        Ok(DetailWriter {
            core,
            header,
            totals: Totals::default(),
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        self.core.path()
    }

    /// Records appended so far.
    pub fn record_count(&self) -> u64 {
        self.totals.count
    }

    /// Appends whole encoded records (each a 24-byte header and `total_length - 24` payload bytes),
    /// e.g. a slice taken straight from a ring. Every length is checked first: each is at least 24
    /// and together they cover the slice exactly; nothing is appended otherwise.
    pub fn append(&mut self, records: &[u8]) -> Result<()> {
        self.append_timed(records, |t| t)
    }

    /// [`append`](Self::append) of records whose header timestamps are another clock's readings
    /// (e.g. raw TSC ticks, as a ring holds them): each record is stored with
    /// `time(its timestamp)` in its header; the records given are not changed.
    pub fn append_timed(&mut self, records: &[u8], time: impl Fn(u64) -> u64) -> Result<()> {
        self.core.check_usable()?;
        // First pass: check every length; second pass: account and write. No allocation per batch.
        let mut off = 0usize;
        while off < records.len() {
            let rest = records.len() - off;
            if rest < RECORD_HEADER_SIZE {
                return Err(self.bad_batch(format!(
                    "{rest} bytes at offset {off} are too few for a {RECORD_HEADER_SIZE}-byte \
                     record header"
                )));
            }
            let len = u32_at(records, off) as usize;
            if len < RECORD_HEADER_SIZE || len > rest {
                return Err(self.bad_batch(format!(
                    "the record at offset {off} has total_length {len}, but it must be at least \
                     {RECORD_HEADER_SIZE} and fit in the {rest} bytes left"
                )));
            }
            off += len;
        }
        let mut off = 0usize;
        while off < records.len() {
            let mut raw = [0u8; RECORD_HEADER_SIZE];
            raw.copy_from_slice(&records[off..off + RECORD_HEADER_SIZE]);
            let mut header = DetailRecordHeader::from_bytes(&raw);
            let ts = time(header.timestamp_ns);
            let end = off + header.total_length as usize;
            if ts == header.timestamp_ns {
                self.totals.add(&header);
                self.write_bytes(&records[off..end])?;
            } else {
                header.timestamp_ns = ts;
                self.totals.add(&header);
                self.write_bytes(&header.to_bytes())?;
                self.write_bytes(&records[off + RECORD_HEADER_SIZE..end])?;
            }
            off = end;
        }
        Ok(())
    }

    /// Appends one record. `header.total_length` must be `24 + payload.len()`.
    pub fn append_record(&mut self, header: &DetailRecordHeader, payload: &[u8]) -> Result<()> {
        self.core.check_usable()?;
        if header.total_length as usize != RECORD_HEADER_SIZE + payload.len() {
            return Err(self.bad_batch(format!(
                "total_length {} does not equal {RECORD_HEADER_SIZE} + the {}-byte payload",
                header.total_length,
                payload.len()
            )));
        }
        self.totals.add(header);
        self.write_bytes(&header.to_bytes())?;
        self.write_bytes(payload)
    }

    /// Writes buffered records to the file (to the page cache; see [`sync`](Self::sync)).
    pub fn flush(&mut self) -> Result<()> {
        self.core.flush()
    }

    /// Flushes and makes the written bytes durable (`fdatasync`). A failure is final: what
    /// reached the disk is unknown, and the writer accepts nothing more.
    pub fn sync(&mut self) -> Result<()> {
        self.core.sync()
    }

    finish_methods!(
        DetailSummary,
        /// Flushes, patches the header, appends the footer with the CRC-32C of the records, and
        /// fsyncs.
    );

    fn complete(mut self, sync: bool) -> Result<DetailSummary> {
        self.core.flush()?;
        let t = self.totals;
        self.header.event_count = t.count;
        self.header.bytes_length = t.bytes;
        self.header.index_seq_start = t.seq_start;
        self.header.index_seq_end = t.seq_end;
        self.core.write_at(&self.header.encode(), 0)?;
        let footer = DetailFooter {
            checksum: t.crc,
            event_count: t.count,
            bytes_length: t.bytes,
            time_start_ns: t.time_start_ns,
            time_end_ns: t.time_end_ns,
        };
        let footer_offset = HEADER_SIZE as u64 + t.bytes;
        self.core.write_at(&footer.encode(), footer_offset)?;
        self.core.finish(sync)?;
        Ok(DetailSummary {
            record_count: t.count,
            bytes_length: t.bytes,
            time_start_ns: t.time_start_ns,
            time_end_ns: t.time_end_ns,
            checksum: t.crc,
            file_bytes: footer_offset + FOOTER_SIZE as u64,
        })
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.totals.crc = crc32c::crc32c_append(self.totals.crc, bytes);
        self.core.write(bytes)
    }

    fn bad_batch(&self, problem: String) -> Error {
        Error::invalid(
            self.core.path(),
            format!("{problem}; pass only complete detail records"),
        )
    }
}

/// Reads one `detail.atf`, streaming; recovers files that were never finished.
pub struct DetailReader {
    file: File,
    path: PathBuf,
    header: DetailHeader,
    footer: Option<DetailFooter>,
    /// End of the record bytes (exclusive).
    records_end: u64,
    record_count: u64,
    time_start_ns: u64,
    time_end_ns: u64,
    note: Option<String>,
}

impl DetailReader {
    /// Opens and validates `path`. A file whose last 64 bytes are a footer matching its length is
    /// finished; otherwise the complete records are found by a scan (a partial last record is
    /// ignored) and [`finished`](Self::finished) is false.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (file, len, raw) = open_with_header(path, "an ATF detail", DETAIL_MAGIC)?;
        let header = DetailHeader::get_fields(&raw); // the magic was checked on opening
        check_common_header(path, header.endian, header.version)?;
        check_items_offset(path, header.events_offset, "records")?;

        let min_finished = (HEADER_SIZE + FOOTER_SIZE) as u64;
        if len >= min_finished {
            let mut raw = [0u8; FOOTER_SIZE];
            file.read_exact_at(&mut raw, len - FOOTER_SIZE as u64)
                .map_err(|e| Error::io(path, "read the detail footer", e))?;
            if let Some(footer) = DetailFooter::decode(&raw) {
                if footer.bytes_length == len - min_finished {
                    return Ok(DetailReader {
                        file,
                        path: path.to_path_buf(),
                        header,
                        footer: Some(footer),
                        records_end: len - FOOTER_SIZE as u64,
                        record_count: footer.event_count,
                        time_start_ns: footer.time_start_ns,
                        time_end_ns: footer.time_end_ns,
                        note: None,
                    });
                }
            }
        }

        // Recovery: walk the records and keep the complete ones.
        let mut chunks = ChunkReader::new(&file, HEADER_SIZE as u64, len);
        let (mut count, mut start, mut end) = (0u64, 0u64, 0u64);
        let mut stop = None;
        loop {
            let at = chunks.offset();
            let raw = match chunks.take(RECORD_HEADER_SIZE) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => break,
                Err(e) => return Err(Error::io(path, "read the detail records", e)),
            };
            let mut buf = [0u8; RECORD_HEADER_SIZE];
            buf.copy_from_slice(raw);
            let rec = DetailRecordHeader::from_bytes(&buf);
            if (rec.total_length as usize) < RECORD_HEADER_SIZE {
                stop = Some(format!(
                    "an invalid record length {} at offset {at}",
                    rec.total_length
                ));
                chunks = ChunkReader::new(&file, at, at);
                break;
            }
            let payload = rec.total_length as usize - RECORD_HEADER_SIZE;
            match chunks.take(payload) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    chunks = ChunkReader::new(&file, at, at);
                    break;
                }
                Err(e) => return Err(Error::io(path, "read the detail records", e)),
            }
            if count == 0 {
                start = rec.timestamp_ns;
            }
            end = rec.timestamp_ns;
            count += 1;
        }
        let records_end = chunks.offset();
        let ignored = len - records_end;
        let mut note = format!("the file was not finished; recovered {count} complete records");
        if let Some(stop) = stop {
            note.push_str(&format!(", stopped at {stop}"));
        }
        if ignored > 0 {
            note.push_str(&format!(", ignored {ignored} trailing bytes"));
        }
        Ok(DetailReader {
            file,
            path: path.to_path_buf(),
            header,
            footer: None,
            records_end,
            record_count: count,
            time_start_ns: start,
            time_end_ns: end,
            note: Some(note),
        })
    }

    reader_accessors!("record");

    /// The header as stored.
    pub fn header(&self) -> &DetailHeader {
        &self.header
    }

    /// The footer, if the file was finished.
    pub fn footer(&self) -> Option<&DetailFooter> {
        self.footer.as_ref()
    }

    /// Whether the writer finished the file.
    pub fn finished(&self) -> bool {
        self.footer.is_some()
    }

    /// Number of records (the footer's count for a finished file).
    pub fn record_count(&self) -> u64 {
        self.record_count
    }

    /// All records in order, read in large chunks.
    pub fn records(&self) -> Records<'_> {
        Records {
            reader: self,
            chunks: ChunkReader::new(&self.file, HEADER_SIZE as u64, self.records_end),
            failed: false,
        }
    }

    /// Recomputes the CRC-32C of the records and compares it with the footer's. `Ok(true)`: it
    /// matches; `Ok(false)`: no checksum recorded (unfinished file or checksum 0).
    pub fn verify_checksum(&self) -> Result<bool> {
        verify_range(
            &self.file,
            &self.path,
            "read the detail records",
            (HEADER_SIZE as u64, self.records_end),
            self.footer.map(|f| f.checksum),
        )
    }
}

impl DetailReader {
    /// Checks the file against itself, like [`crate::IndexReader::verify`]: the header's thread
    /// id against `thread_id` (its directory's), reserved bytes, the header's copies of the
    /// footer's counts, the footer's time range, the CRC-32C of the records, and each record: its
    /// thread, its event type, and its `index_seq` against the `index_events` events of the
    /// thread's index file. Returns every damaged range found; an error only if the file cannot
    /// be read.
    pub fn verify(&self, thread_id: u32, index_events: u64) -> Result<Vec<Damage>> {
        let path = &self.path;
        let h = &self.header;
        let (raw, mut out) = verify::header_and_thread::<HEADER_SIZE>(
            &self.file,
            path,
            "read the detail header",
            h.thread_id,
            thread_id,
        )?;
        field_matches(
            path,
            8..12,
            "the header's flags",
            h.flags.into(),
            0,
            &mut out,
        );
        verify::reserved_zero(path, 16, &raw[16..20], "header", &mut out);
        verify::reserved_zero(path, 60, &raw[60..64], "header", &mut out);
        verify::platform(path, h.arch, h.os, &mut out);

        let crc = ChunkReader::new(&self.file, HEADER_SIZE as u64, self.records_end)
            .crc32c()
            .map_err(|e| Error::io(path, "read the detail records", e))?;

        let (mut count, mut at) = (0u64, HEADER_SIZE as u64);
        let mut seqs = None;
        let mut times = None;
        // Per kind of bad record (other thread, unknown type, past the index, out of order):
        // how many, and the first one.
        let mut bad: [(u64, Option<Damage>); 4] = Default::default();
        let mut last_ts = None;
        for record in self.records() {
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    out.push(Damage::new(path, at..self.records_end, e.to_string()));
                    break;
                }
            };
            let r = record.header;
            let range = at..at + u64::from(r.total_length);
            count += 1;
            let first_seq = seqs.map_or(r.index_seq, |(f, _)| f);
            seqs = Some((first_seq, r.index_seq));
            let first_ts = times.map_or(r.timestamp_ns, |(f, _)| f);
            times = Some((first_ts, r.timestamp_ns));
            let problems = [
                (r.thread_id != thread_id).then(|| {
                    format!(
                        "a record of thread {} in the file of thread {thread_id}",
                        r.thread_id
                    )
                }),
                (r.event_type != crate::DETAIL_CALL && r.event_type != crate::DETAIL_RETURN)
                    .then(|| format!("a record of unknown event type {}", r.event_type)),
                (u64::from(r.index_seq) >= index_events).then(|| {
                    format!(
                        "a record for index event {}, past the {index_events} events of the \
                         index file",
                        r.index_seq
                    )
                }),
                last_ts
                    .filter(|l| r.timestamp_ns < *l)
                    .map(|l| format!("a record at {} ns after one at {l} ns", r.timestamp_ns)),
            ];
            for (slot, problem) in bad.iter_mut().zip(problems) {
                if let Some(problem) = problem {
                    slot.0 += 1;
                    slot.1
                        .get_or_insert_with(|| Damage::new(path, range.clone(), problem));
                }
            }
            last_ts = Some(r.timestamp_ns);
            at = range.end;
        }
        for (n, damage) in bad {
            if let Some(mut damage) = damage {
                if n > 1 {
                    damage
                        .problem
                        .push_str(&format!(" (and {} more records like it)", n - 1));
                }
                out.push(damage);
            }
        }

        let (seq_first, seq_last) = seqs.unwrap_or((0, 0));
        let (t_first, t_last) = times.unwrap_or((0, 0));
        let bytes = self.records_end - HEADER_SIZE as u64;
        match self.footer {
            Some(f) => {
                let fo = self.records_end;
                let mut raw_footer = [0u8; FOOTER_SIZE];
                self.file
                    .read_exact_at(&mut raw_footer, fo)
                    .map_err(|e| Error::io(path, "read the detail footer", e))?;
                field_matches(
                    path,
                    28..36,
                    "the header's record count",
                    h.event_count,
                    f.event_count,
                    &mut out,
                );
                field_matches(
                    path,
                    36..44,
                    "the header's byte count",
                    h.bytes_length,
                    bytes,
                    &mut out,
                );
                field_matches(
                    path,
                    44..52,
                    "the header's first index_seq",
                    h.index_seq_start,
                    seq_first.into(),
                    &mut out,
                );
                field_matches(
                    path,
                    52..60,
                    "the header's last index_seq",
                    h.index_seq_end,
                    seq_last.into(),
                    &mut out,
                );
                field_matches(
                    path,
                    fo + 8..fo + 16,
                    "the footer's record count",
                    f.event_count,
                    count,
                    &mut out,
                );
                field_matches(
                    path,
                    fo + 24..fo + 32,
                    "the footer's first timestamp",
                    f.time_start_ns,
                    t_first,
                    &mut out,
                );
                field_matches(
                    path,
                    fo + 32..fo + 40,
                    "the footer's last timestamp",
                    f.time_end_ns,
                    t_last,
                    &mut out,
                );
                verify::footer_tail(
                    path,
                    (fo, &raw_footer),
                    (f.checksum, crc),
                    HEADER_SIZE as u64..self.records_end,
                    "records",
                    &mut out,
                );
            }
            None => {
                field_matches(
                    path,
                    28..36,
                    "the header's record count (recording state)",
                    h.event_count,
                    0,
                    &mut out,
                );
                field_matches(
                    path,
                    36..44,
                    "the header's byte count (recording state)",
                    h.bytes_length,
                    0,
                    &mut out,
                );
                field_matches(
                    path,
                    44..52,
                    "the header's first index_seq (recording state)",
                    h.index_seq_start,
                    0,
                    &mut out,
                );
                field_matches(
                    path,
                    52..60,
                    "the header's last index_seq (recording state)",
                    h.index_seq_end,
                    0,
                    &mut out,
                );
            }
        }
        Ok(out)
    }
}

/// Iterator over a detail file's records; yields an error (then stops) on a malformed record.
pub struct Records<'a> {
    reader: &'a DetailReader,
    chunks: ChunkReader<'a>,
    failed: bool,
}

impl Records<'_> {
    fn fail(&mut self, error: Error) -> Option<Result<DetailRecord>> {
        self.failed = true;
        Some(Err(error))
    }
}

impl Iterator for Records<'_> {
    type Item = Result<DetailRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.chunks.remaining() == 0 {
            return None;
        }
        let path = &self.reader.path;
        let at = self.chunks.offset();
        let remaining = self.chunks.remaining();
        let header = match self.chunks.take(RECORD_HEADER_SIZE) {
            Ok(Some(bytes)) => {
                let mut raw = [0u8; RECORD_HEADER_SIZE];
                raw.copy_from_slice(bytes);
                DetailRecordHeader::from_bytes(&raw)
            }
            Ok(None) => {
                let e = Error::corrupt(
                    path,
                    format!(
                        "{remaining} stray bytes at offset {at} where a record header should be"
                    ),
                );
                return self.fail(e);
            }
            Err(e) => return self.fail(Error::io(path, "read the detail records", e)),
        };
        let len = header.total_length as usize;
        if len < RECORD_HEADER_SIZE || len as u64 > remaining {
            let e = Error::corrupt(
                path,
                format!(
                    "the record at offset {at} has total_length {len}; it must be at least \
                     {RECORD_HEADER_SIZE} and fit in the {remaining} bytes left"
                ),
            );
            return self.fail(e);
        }
        match self.chunks.take(len - RECORD_HEADER_SIZE) {
            Ok(Some(payload)) => Some(Ok(DetailRecord {
                header,
                payload: payload.to_vec(),
            })),
            Ok(None) => unreachable_short(self, at),
            Err(e) => self.fail(Error::io(path, "read the detail records", e)),
        }
    }
}

/// The length was checked against what remains, so this only reports an inconsistency as an error.
fn unreachable_short(records: &mut Records<'_>, at: u64) -> Option<Result<DetailRecord>> {
    let e = Error::corrupt(
        &records.reader.path,
        format!("the record at offset {at} is cut short"),
    );
    records.fail(e)
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use crate::chunk::CHUNK;
    use crate::{DETAIL_CALL, DETAIL_RETURN};

    fn record(i: u32) -> DetailRecord {
        let payload: Vec<u8> = (0..(i as usize * 13) % 200)
            .map(|b| (b as u8) ^ (i as u8))
            .collect();
        DetailRecord {
            header: DetailRecordHeader {
                total_length: (RECORD_HEADER_SIZE + payload.len()) as u32,
                event_type: if i % 2 == 0 {
                    DETAIL_CALL
                } else {
                    DETAIL_RETURN
                },
                flags: i as u16,
                index_seq: 100 + i,
                thread_id: 77,
                timestamp_ns: 5_000 + u64::from(i),
            },
            payload,
        }
    }

    fn encoded(range: std::ops::Range<u32>) -> Vec<u8> {
        let mut out = Vec::new();
        for i in range {
            let r = record(i);
            out.extend_from_slice(&r.header.to_bytes());
            out.extend_from_slice(&r.payload);
        }
        out
    }

    fn write_finished(path: &Path, n: u32) -> DetailSummary {
        let mut w = DetailWriter::create(path, 77).unwrap();
        w.append(&encoded(0..n)).unwrap();
        w.finish().unwrap()
    }

    fn read_all(r: &DetailReader) -> Vec<DetailRecord> {
        r.records().collect::<Result<Vec<_>>>().unwrap()
    }

    #[test]
    fn detail_header__encode__then_fields_at_the_format_offsets() {
        let h = DetailHeader {
            flags: 0xa1a2_a3a4,
            thread_id: 0xb1b2_b3b4,
            event_count: 0xc1c2_c3c4_c5c6_c7c8,
            bytes_length: 0xd1d2_d3d4_d5d6_d7d8,
            index_seq_start: 0xe1e2_e3e4_e5e6_e7e8,
            index_seq_end: 0xf1f2_f3f4_f5f6_f7f8,
            ..DetailHeader::recording(0)
        };
        let b = h.encode();
        assert_eq!(&b[0..4], b"ATD2");
        assert_eq!((b[4], b[5], b[6], b[7]), (1, 1, crate::current_arch(), 4));
        assert_eq!(b[8..12], 0xa1a2_a3a4u32.to_le_bytes());
        assert_eq!(b[12..16], 0xb1b2_b3b4u32.to_le_bytes());
        assert_eq!(b[16..20], [0; 4], "reserved");
        assert_eq!(b[20..28], 64u64.to_le_bytes());
        assert_eq!(b[28..36], 0xc1c2_c3c4_c5c6_c7c8u64.to_le_bytes());
        assert_eq!(b[36..44], 0xd1d2_d3d4_d5d6_d7d8u64.to_le_bytes());
        assert_eq!(b[44..52], 0xe1e2_e3e4_e5e6_e7e8u64.to_le_bytes());
        assert_eq!(b[52..60], 0xf1f2_f3f4_f5f6_f7f8u64.to_le_bytes());
        assert_eq!(b[60..64], [0; 4], "reserved");
        assert_eq!(DetailHeader::decode(&b), Some(h));
    }

    #[test]
    fn detail_footer__encode__then_fields_at_the_format_offsets() {
        let (checksum, [event_count, bytes_length, time_start_ns, time_end_ns]) =
            crate::testkit::FOOTER_FIELDS;
        let f = DetailFooter {
            checksum,
            event_count,
            bytes_length,
            time_start_ns,
            time_end_ns,
        };
        let b = f.encode();
        crate::testkit::assert_footer_layout(&b, b"2DTA");
        assert_eq!(DetailFooter::decode(&b), Some(f));
    }

    #[test]
    fn detail_writer__records_and_batches__then_reader_returns_them_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("detail.atf");
        let mut w = DetailWriter::create(&path, 77).unwrap();
        w.append(&encoded(0..50)).unwrap();
        for i in 50..60 {
            let r = record(i);
            w.append_record(&r.header, &r.payload).unwrap();
        }
        w.append(&encoded(60..5000)).unwrap();
        let summary = w.finish().unwrap();
        let expected: Vec<DetailRecord> = (0..5000).map(record).collect();
        let bytes: u64 = expected
            .iter()
            .map(|r| u64::from(r.header.total_length))
            .sum();
        assert_eq!(summary.record_count, 5000);
        assert_eq!(summary.bytes_length, bytes);

        let r = DetailReader::open(&path).unwrap();
        assert!(r.finished());
        assert_eq!(r.record_count(), 5000);
        assert_eq!(r.time_range(), (5_000, 5_000 + 4999));
        assert_eq!(r.header().event_count, 5000);
        assert_eq!(r.header().bytes_length, bytes);
        assert_eq!(
            (r.header().index_seq_start, r.header().index_seq_end),
            (100, 100 + 4999)
        );
        assert_eq!(read_all(&r), expected);
        assert!(r.verify_checksum().unwrap());
    }

    #[test]
    fn detail_reader__records_larger_than_a_read_chunk__then_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("detail.atf");
        let mut w = DetailWriter::create(&path, 77).unwrap();
        let mut expected = Vec::new();
        for (i, size) in [10usize, CHUNK + 7, 3, 700 * 1024, 700 * 1024, 0]
            .into_iter()
            .enumerate()
        {
            let payload: Vec<u8> = (0..size).map(|b| (b % 251) as u8 ^ i as u8).collect();
            let header = DetailRecordHeader::for_payload(DETAIL_CALL, i as u32, 77, i as u64, size);
            w.append_record(&header, &payload).unwrap();
            expected.push(DetailRecord { header, payload });
        }
        w.flush().unwrap();
        std::mem::forget(w);
        // Unfinished: the recovery scan crosses the same boundaries.
        let r = DetailReader::open(&path).unwrap();
        assert_eq!(r.record_count(), 6);
        assert_eq!(read_all(&r), expected);
    }

    #[test]
    fn detail_writer__bad_lengths__then_invalid_input_and_nothing_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("detail.atf");
        let mut w = DetailWriter::create(&path, 77).unwrap();
        let good = encoded(0..3);
        let mut short = good.clone();
        short.pop();
        let mut tiny_len = good.clone();
        put_u32(&mut tiny_len, 0, 23);
        for bad in [&short[..], &tiny_len[..], &good[..10]] {
            let err = w.append(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        }
        let r = record(2);
        let mut wrong = r.header;
        wrong.total_length += 1;
        assert!(w.append_record(&wrong, &r.payload).is_err());
        assert_eq!(w.record_count(), 0);
        w.append(&good).unwrap();
        assert_eq!(w.finish().unwrap().record_count, 3);
    }

    #[test]
    fn detail_reader__garbage_header__then_corrupt_error_naming_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("detail.atf");
        std::fs::write(&path, [7u8; 64]).unwrap();
        let msg = DetailReader::open(&path).err().unwrap().to_string();
        assert!(
            msg.contains("detail.atf") && msg.contains("not an ATF detail file"),
            "{msg}"
        );
    }

    #[test]
    fn detail_reader__finished_file_with_bad_record_length__then_corrupt_error_while_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("detail.atf");
        write_finished(&path, 3);
        let mut bytes = std::fs::read(&path).unwrap();
        put_u32(&mut bytes, 64, 1_000_000);
        std::fs::write(&path, &bytes).unwrap();
        let r = DetailReader::open(&path).unwrap();
        let results: Vec<_> = r.records().collect();
        assert_eq!(results.len(), 1);
        let msg = results[0].as_ref().unwrap_err().to_string();
        assert!(msg.contains("total_length 1000000"), "{msg}");
    }

    /// `detail.atf` in the shared tests.
    struct Detail;

    impl crate::testkit::FileKind for Detail {
        type Writer = DetailWriter;
        type Reader = DetailReader;
        type Item = DetailRecord;
        const NAME: &'static str = "detail.atf";
        const MAGIC: &'static [u8] = b"ATD2\x01\x01";
        const ITEMS: &'static str = "records";
        const OPS: u8 = 4;
        const STORM: (&'static [u64], u64, usize) = (&[3000], 2, 777);
        const PARTIAL_NOTE: &'static str = "trailing bytes";

        same_named_calls!(DetailWriter, DetailReader);

        fn item(i: u64) -> DetailRecord {
            record(i as u32)
        }
        fn create_with(fs: &dyn FileSystem, path: &Path) -> Result<DetailWriter> {
            DetailWriter::create_with(fs, path, 77)
        }
        fn append(w: &mut DetailWriter, range: std::ops::Range<u64>) -> Result<()> {
            w.append(&encoded(range.start as u32..range.end as u32))
        }
        fn append_one(w: &mut DetailWriter, i: u64) -> Result<()> {
            let r = record(i as u32);
            w.append_record(&r.header, &r.payload)
        }
        fn extra(_: &mut DetailWriter, op: u8, _: u64) -> Result<()> {
            unreachable!("detail.atf has no operation {op}")
        }
        fn read_all(r: &DetailReader) -> Vec<DetailRecord> {
            read_all(r)
        }
        fn count(r: &DetailReader) -> u64 {
            r.record_count()
        }
        fn read_anything(r: &DetailReader) {
            for record in r.records().flatten() {
                assert_eq!(
                    record.payload.len() + RECORD_HEADER_SIZE,
                    record.header.total_length as usize
                );
            }
        }
        fn bytes_of(n: u64) -> u64 {
            (0..n as u32)
                .map(|i| u64::from(record(i).header.total_length))
                .sum()
        }
    }

    writer_tests!(Detail);
    whole_item_tests!(Detail);
}
