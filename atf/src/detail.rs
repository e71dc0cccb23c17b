//! `detail.atf`: one thread's detail records (registers and stack bytes around marked events).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::chunk::{ChunkReader, CHUNK};
use crate::error::{Error, Result};
use crate::index::check_common_header;
use crate::le::{put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};
use crate::{
    current_arch, DETAIL_FOOTER_MAGIC, DETAIL_MAGIC, ENDIAN_LITTLE, FILE_VERSION, FOOTER_SIZE,
    HEADER_SIZE, OS_LINUX, RECORD_HEADER_SIZE,
};

/// Writer buffer: records accumulate here and reach the file in writes of this size.
const WRITE_BUFFER: usize = 1 << 20;

/// The 64-byte header of `detail.atf` (magic `ATD2` at 0 is implied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetailHeader {
    /// Byte 4: 1 = little-endian.
    pub endian: u8,
    /// Byte 5: 1.
    pub version: u8,
    /// Byte 6: 1 x86_64, 2 arm64.
    pub arch: u8,
    /// Byte 7: 4 Linux.
    pub os: u8,
    /// Bytes 8..12.
    pub flags: u32,
    /// Bytes 12..16: OS thread id.
    pub thread_id: u32,
    /// Bytes 20..28: 64.
    pub events_offset: u64,
    /// Bytes 28..36: number of records, 0 while recording.
    pub event_count: u64,
    /// Bytes 36..44: bytes of records, 0 while recording.
    pub bytes_length: u64,
    /// Bytes 44..52: `index_seq` of the first record.
    pub index_seq_start: u64,
    /// Bytes 52..60: `index_seq` of the last record.
    pub index_seq_end: u64,
}

impl DetailHeader {
    /// The header of a file being recorded on this machine.
    pub fn recording(thread_id: u32) -> Self {
        DetailHeader {
            endian: ENDIAN_LITTLE,
            version: FILE_VERSION,
            arch: current_arch(),
            os: OS_LINUX,
            flags: 0,
            thread_id,
            events_offset: HEADER_SIZE as u64,
            event_count: 0,
            bytes_length: 0,
            index_seq_start: 0,
            index_seq_end: 0,
        }
    }

    /// The 64 bytes of this header, magic included, reserved bytes zero.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&DETAIL_MAGIC);
        b[4] = self.endian;
        b[5] = self.version;
        b[6] = self.arch;
        b[7] = self.os;
        put_u32(&mut b, 8, self.flags);
        put_u32(&mut b, 12, self.thread_id);
        put_u64(&mut b, 20, self.events_offset);
        put_u64(&mut b, 28, self.event_count);
        put_u64(&mut b, 36, self.bytes_length);
        put_u64(&mut b, 44, self.index_seq_start);
        put_u64(&mut b, 52, self.index_seq_end);
        b
    }

    /// The fields of 64 header bytes; the magic is the caller's to check.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Self {
        DetailHeader {
            endian: b[4],
            version: b[5],
            arch: b[6],
            os: b[7],
            flags: u32_at(b, 8),
            thread_id: u32_at(b, 12),
            events_offset: u64_at(b, 20),
            event_count: u64_at(b, 28),
            bytes_length: u64_at(b, 36),
            index_seq_start: u64_at(b, 44),
            index_seq_end: u64_at(b, 52),
        }
    }
}

/// The 24-byte header of a detail record; the payload follows it.
///
/// The payload is the agent's capture (registers, stack pointer, stack byte count, stack bytes);
/// this crate stores it as opaque bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DetailRecordHeader {
    /// Bytes 0..4: header plus payload.
    pub total_length: u32,
    /// Bytes 4..6: [`crate::DETAIL_CALL`] or [`crate::DETAIL_RETURN`].
    pub event_type: u16,
    /// Bytes 6..8.
    pub flags: u16,
    /// Bytes 8..12: position of the linked event in `index.atf`.
    pub index_seq: u32,
    /// Bytes 12..16: OS thread id.
    pub thread_id: u32,
    /// Bytes 16..24: nanoseconds on the session clock.
    pub timestamp_ns: u64,
}

impl DetailRecordHeader {
    /// The 24 bytes of this record header.
    pub fn encode(&self) -> [u8; RECORD_HEADER_SIZE] {
        let mut b = [0u8; RECORD_HEADER_SIZE];
        put_u32(&mut b, 0, self.total_length);
        put_u16(&mut b, 4, self.event_type);
        put_u16(&mut b, 6, self.flags);
        put_u32(&mut b, 8, self.index_seq);
        put_u32(&mut b, 12, self.thread_id);
        put_u64(&mut b, 16, self.timestamp_ns);
        b
    }

    /// The record header in 24 bytes.
    pub fn decode(b: &[u8; RECORD_HEADER_SIZE]) -> Self {
        DetailRecordHeader {
            total_length: u32_at(b, 0),
            event_type: u16_at(b, 4),
            flags: u16_at(b, 6),
            index_seq: u32_at(b, 8),
            thread_id: u32_at(b, 12),
            timestamp_ns: u64_at(b, 16),
        }
    }
}

/// One detail record as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetailRecord {
    /// The 24-byte record header.
    pub header: DetailRecordHeader,
    /// `total_length - 24` payload bytes.
    pub payload: Vec<u8>,
}

/// The 64-byte footer of `detail.atf` (magic `2DTA` at 0 is implied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetailFooter {
    /// Bytes 4..8: CRC-32C of the record bytes; 0 = not computed.
    pub checksum: u32,
    /// Bytes 8..16: number of records.
    pub event_count: u64,
    /// Bytes 16..24: bytes of records.
    pub bytes_length: u64,
    /// Bytes 24..32: first record's timestamp.
    pub time_start_ns: u64,
    /// Bytes 32..40: last record's timestamp.
    pub time_end_ns: u64,
}

impl DetailFooter {
    /// The 64 bytes of this footer, magic included, reserved bytes zero.
    pub fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..4].copy_from_slice(&DETAIL_FOOTER_MAGIC);
        put_u32(&mut b, 4, self.checksum);
        put_u64(&mut b, 8, self.event_count);
        put_u64(&mut b, 16, self.bytes_length);
        put_u64(&mut b, 24, self.time_start_ns);
        put_u64(&mut b, 32, self.time_end_ns);
        b
    }

    /// The footer in 64 bytes, or `None` if they do not start with `2DTA`.
    pub fn decode(b: &[u8; FOOTER_SIZE]) -> Option<Self> {
        if b[0..4] != DETAIL_FOOTER_MAGIC {
            return None;
        }
        Some(DetailFooter {
            checksum: u32_at(b, 4),
            event_count: u64_at(b, 8),
            bytes_length: u64_at(b, 16),
            time_start_ns: u64_at(b, 24),
            time_end_ns: u64_at(b, 32),
        })
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

/// Appends records to one thread's `detail.atf`; same guarantees as [`crate::IndexWriter`].
pub struct DetailWriter {
    file: File,
    path: PathBuf,
    header: DetailHeader,
    buf: Vec<u8>,
    totals: Totals,
    failed: bool,
    done: bool,
}

impl DetailWriter {
    /// Creates `path` (which must not exist) and writes the recording header.
    pub fn create(path: impl AsRef<Path>, thread_id: u32) -> Result<Self> {
        let path = path.as_ref();
        let mut file = OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| {
            Error::io(path, "create the detail file (is the directory writable, the name unused?)", e)
        })?;
        let header = DetailHeader::recording(thread_id);
        file.write_all(&header.encode())
            .map_err(|e| Error::io(path, "write the detail header", e))?;
        Ok(DetailWriter {
            file,
            path: path.to_path_buf(),
            header,
            buf: Vec::with_capacity(WRITE_BUFFER),
            totals: Totals::default(),
            failed: false,
            done: false,
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records appended so far.
    pub fn record_count(&self) -> u64 {
        self.totals.count
    }

    /// Appends whole encoded records (each a 24-byte header and `total_length - 24` payload bytes),
    /// e.g. a slice taken straight from a ring. Every length is checked first: each is at least 24
    /// and together they cover the slice exactly; nothing is appended otherwise.
    pub fn append(&mut self, records: &[u8]) -> Result<()> {
        self.check_usable()?;
        let mut headers = Vec::new();
        let mut off = 0usize;
        while off < records.len() {
            let rest = records.len() - off;
            if rest < RECORD_HEADER_SIZE {
                return Err(self.bad_batch(format!(
                    "{rest} bytes at offset {off} are too few for a {RECORD_HEADER_SIZE}-byte record header"
                )));
            }
            let mut raw = [0u8; RECORD_HEADER_SIZE];
            raw.copy_from_slice(&records[off..off + RECORD_HEADER_SIZE]);
            let header = DetailRecordHeader::decode(&raw);
            let len = header.total_length as usize;
            if len < RECORD_HEADER_SIZE || len > rest {
                return Err(self.bad_batch(format!(
                    "the record at offset {off} has total_length {len}, but it must be at least \
                     {RECORD_HEADER_SIZE} and fit in the {rest} bytes left"
                )));
            }
            headers.push(header);
            off += len;
        }
        for header in &headers {
            self.totals.add(header);
        }
        self.write_bytes(records)
    }

    /// Appends one record. `header.total_length` must be `24 + payload.len()`.
    pub fn append_record(&mut self, header: &DetailRecordHeader, payload: &[u8]) -> Result<()> {
        self.check_usable()?;
        if header.total_length as usize != RECORD_HEADER_SIZE + payload.len() {
            return Err(self.bad_batch(format!(
                "total_length {} does not equal {RECORD_HEADER_SIZE} + the {}-byte payload",
                header.total_length,
                payload.len()
            )));
        }
        self.totals.add(header);
        self.write_bytes(&header.encode())?;
        self.write_bytes(payload)
    }

    /// Writes buffered records to the file (to the page cache; see [`sync`](Self::sync)).
    pub fn flush(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(&self.buf);
        self.buf.clear();
        self.check_write(result)
    }

    /// Flushes and makes the written bytes durable (`fdatasync`).
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        let result = self.file.sync_data();
        self.check_write(result)
    }

    /// Flushes, patches the header, appends the footer with the CRC-32C of the records, and fsyncs.
    pub fn finish(mut self) -> Result<DetailSummary> {
        self.flush()?;
        let t = self.totals;
        self.header.event_count = t.count;
        self.header.bytes_length = t.bytes;
        self.header.index_seq_start = t.seq_start;
        self.header.index_seq_end = t.seq_end;
        let result = self.file.write_all_at(&self.header.encode(), 0);
        self.check_write(result)?;
        let footer = DetailFooter {
            checksum: t.crc,
            event_count: t.count,
            bytes_length: t.bytes,
            time_start_ns: t.time_start_ns,
            time_end_ns: t.time_end_ns,
        };
        let footer_offset = HEADER_SIZE as u64 + t.bytes;
        let result = self.file.write_all_at(&footer.encode(), footer_offset);
        self.check_write(result)?;
        let result = self.file.sync_all();
        self.check_write(result)?;
        self.done = true;
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
        if bytes.len() >= WRITE_BUFFER / 2 {
            self.flush()?;
            let result = self.file.write_all(bytes);
            return self.check_write(result);
        }
        if self.buf.len() + bytes.len() > WRITE_BUFFER {
            self.flush()?;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn bad_batch(&self, problem: String) -> Error {
        Error::invalid(&self.path, format!("{problem}; pass only complete detail records"))
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::WriterFailed { path: self.path.clone() });
        }
        Ok(())
    }

    fn check_write(&mut self, result: std::io::Result<()>) -> Result<()> {
        result.map_err(|e| {
            self.failed = true;
            Error::io(&self.path, "write the detail file (is the disk full?)", e)
        })
    }
}

impl Drop for DetailWriter {
    fn drop(&mut self) {
        if !self.done && !self.failed && !self.buf.is_empty() {
            // Best effort: a reader recovers every complete record whatever happens here.
            let _ = self.file.write_all(&self.buf);
        }
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
        let file = File::open(path).map_err(|e| Error::io(path, "open the detail file", e))?;
        let len = file.metadata().map_err(|e| Error::io(path, "stat the detail file", e))?.len();
        if len < HEADER_SIZE as u64 {
            return Err(Error::corrupt(
                path,
                format!("the file is {len} bytes, shorter than the {HEADER_SIZE}-byte detail header"),
            ));
        }
        let mut raw = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut raw, 0).map_err(|e| Error::io(path, "read the detail header", e))?;
        if raw[0..4] != DETAIL_MAGIC {
            return Err(Error::corrupt(
                path,
                format!(
                    "not an ATF detail file: it starts with {:?}, expected \"ATD2\"",
                    String::from_utf8_lossy(&raw[0..4])
                ),
            ));
        }
        let header = DetailHeader::decode(&raw);
        check_common_header(path, header.endian, header.version)?;
        if header.events_offset != HEADER_SIZE as u64 {
            return Err(Error::corrupt(
                path,
                format!("the header puts records at offset {}; ATF v2 puts them at 64", header.events_offset),
            ));
        }

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
            let rec = DetailRecordHeader::decode(&buf);
            if (rec.total_length as usize) < RECORD_HEADER_SIZE {
                stop = Some(format!("an invalid record length {} at offset {at}", rec.total_length));
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

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

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

    /// For a recovered file: why it counts as unfinished and what was recovered.
    pub fn recovery_note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// Number of records (the footer's count for a finished file).
    pub fn record_count(&self) -> u64 {
        self.record_count
    }

    /// Timestamps of the first and last record (0, 0 if none).
    pub fn time_range(&self) -> (u64, u64) {
        (self.time_start_ns, self.time_end_ns)
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
        let expected = match self.footer {
            Some(f) if f.checksum != 0 => f.checksum,
            _ => return Ok(false),
        };
        let mut chunks = ChunkReader::new(&self.file, HEADER_SIZE as u64, self.records_end);
        let mut actual = 0u32;
        loop {
            let n = (chunks.remaining() as usize).min(CHUNK);
            if n == 0 {
                break;
            }
            let bytes = chunks
                .take(n)
                .map_err(|e| Error::io(&self.path, "read the detail records", e))?
                .unwrap_or_default();
            actual = crc32c::crc32c_append(actual, bytes);
        }
        if actual != expected {
            return Err(Error::Checksum { path: self.path.clone(), expected, actual });
        }
        Ok(true)
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
                DetailRecordHeader::decode(&raw)
            }
            Ok(None) => {
                let e = Error::corrupt(
                    path,
                    format!("{remaining} stray bytes at offset {at} where a record header should be"),
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
            Ok(Some(payload)) => Some(Ok(DetailRecord { header, payload: payload.to_vec() })),
            Ok(None) => unreachable_short(self, at),
            Err(e) => self.fail(Error::io(path, "read the detail records", e)),
        }
    }
}

/// The length was checked against what remains, so this only reports an inconsistency as an error.
fn unreachable_short(records: &mut Records<'_>, at: u64) -> Option<Result<DetailRecord>> {
    let e = Error::corrupt(&records.reader.path, format!("the record at offset {at} is cut short"));
    records.fail(e)
}
