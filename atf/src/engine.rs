//! The file engine every trace file kind shares: [`FileCore`] writes a header, buffers appended
//! bytes into large writes, patches in place, flushes, syncs and finishes, with one policy for
//! failures; the reader helpers open a file and check its header, and checksum a byte range.
//! `index.atf`, `detail.atf` and `index.atc` differ only in what they append and in their header
//! and footer bytes, which their own modules encode.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::chunk::ChunkReader;
use crate::error::{Error, Result};
use crate::sink::{self, Dir, FileSink, FileSystem};
use crate::{ENDIAN_LITTLE, FILE_VERSION, HEADER_SIZE};

/// The accessors every trace file reader has alike, from its fields `path`, `note`,
/// `time_start_ns` and `time_end_ns`; `$item` names one thing the file holds ("record", "event").
macro_rules! reader_accessors {
    ($item:literal) => {
        /// The file.
        pub fn path(&self) -> &Path {
            &self.path
        }

        /// For a recovered file: why it counts as unfinished and what was recovered.
        pub fn recovery_note(&self) -> Option<&str> {
            self.note.as_deref()
        }

        #[doc = concat!("Timestamps of the first and last ", $item, " (0, 0 if none).")]
        pub fn time_range(&self) -> (u64, u64) {
            (self.time_start_ns, self.time_end_ns)
        }
    };
}
pub(crate) use reader_accessors;

/// A writer's `finish` (documented by the attributes given) and `finish_unsynced`, both through
/// its `complete(self, sync: bool) -> Result<$summary>`.
macro_rules! finish_methods {
    ($summary:ty, $(#[$doc:meta])*) => {
        $(#[$doc])*
        pub fn finish(self) -> Result<$summary> {
            self.complete(true)
        }

        /// [`finish`](Self::finish) without the fsync, for a caller that makes many files durable
        /// at once (see [`crate::SessionLayout::sync_filesystem`]): the file is complete and
        /// readable, but durable only once synced.
        pub fn finish_unsynced(self) -> Result<$summary> {
            self.complete(false)
        }
    };
}
pub(crate) use finish_methods;

/// Opens the directory holding `path` (as given) and calls `create` with it and the file's name:
/// the `create_with` of every writer. `action` is the error's step ("open the directory of the
/// event file").
pub(crate) fn in_parent<T>(
    path: &Path,
    action: &'static str,
    create: impl FnOnce(&Dir, &str) -> Result<T>,
) -> Result<T> {
    let (dir, name) = sink::parent_and_name(path).map_err(|e| Error::io(path, action, e))?;
    create(&dir, &name)
}

/// Writer buffer: appended bytes accumulate here and reach the file in writes of this size.
pub(crate) const WRITE_BUFFER: usize = 1 << 20;

/// What a file kind's error messages call its steps.
pub(crate) struct Kind {
    /// Creating the file.
    pub create: &'static str,
    /// Writing its header at creation.
    pub header: &'static str,
    /// Any later write.
    pub write: &'static str,
}

/// The action of a failed fsync: the kernel may have dropped the pages it could not write and
/// a second fsync would not report it, so nothing is retried and the state on disk is unknown.
pub(crate) const SYNC_FAILED: &str =
    "fsync the file; after a failed fsync which written bytes reached the disk is unknown (the \
     kernel may have dropped them), so it is not synced again and its writer accepts nothing more";

/// One file being written: see the module documentation.
///
/// Interrupted writes are retried and short ones continued (in [`sink`]). Any other write error,
/// and any failed fsync, is an [`Error::Io`] naming the file, after which the core accepts
/// nothing more ([`Error::WriterFailed`]). Dropping an unfinished core writes its buffer (best
/// effort), leaving the file as a crash would.
pub(crate) struct FileCore {
    file: Box<dyn FileSink>,
    path: PathBuf,
    kind: &'static Kind,
    buf: Vec<u8>,
    /// Bytes of the file so far, buffered ones included.
    len: u64,
    failed: bool,
    done: bool,
}

impl FileCore {
    /// Creates `name` in `dir` on `fs` (new, never an existing file or a link; mode 0600) and
    /// writes `header`. If the header cannot be written whole, the file is removed again: no file
    /// is better than one no reader opens.
    pub(crate) fn create(
        fs: &dyn FileSystem,
        dir: &Dir,
        name: &str,
        kind: &'static Kind,
        header: &[u8],
    ) -> Result<Self> {
        let path = dir.join(name);
        let mut file = fs
            .create_new(dir, name)
            .map_err(|e| Error::io(&path, kind.create, e))?;
        if let Err(e) = sink::write_all(&mut *file, header) {
            drop(file);
            let _ = fs.remove_file(dir, name);
            return Err(Error::io(&path, kind.header, e));
        }
        Ok(FileCore {
            file,
            path,
            kind,
            buf: Vec::with_capacity(WRITE_BUFFER),
            len: header.len() as u64,
            failed: false,
            done: false,
        })
    }

    /// Bytes of the file so far: the header and everything appended, buffered bytes included.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// An error if an earlier write or sync failed.
    pub(crate) fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::WriterFailed {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Appends `bytes`: buffered, or (a large slice) written straight after what is buffered.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.check_usable()?;
        self.len += bytes.len() as u64;
        if bytes.len() >= WRITE_BUFFER / 2 {
            self.flush()?;
            let result = sink::write_all(&mut *self.file, bytes);
            return self.check_write(result);
        }
        if self.buf.len() + bytes.len() > WRITE_BUFFER {
            self.flush()?;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Appends `bytes` changed on the way: they are copied into the buffer `unit`-aligned pieces
    /// at a time (`unit` divides `bytes.len()`), and `change` rewrites each piece in the buffer
    /// right after its copy, while its bytes are in the first-level cache, before it is written.
    pub(crate) fn write_changed(
        &mut self,
        bytes: &[u8],
        unit: usize,
        mut change: impl FnMut(&mut [u8]),
    ) -> Result<()> {
        /// Bytes copied then changed at a time: well inside a first-level data cache.
        const PIECE: usize = 8 << 10;
        self.check_usable()?;
        let piece = (PIECE - PIECE % unit).max(unit);
        for part in bytes.chunks(piece) {
            if self.buf.len() + part.len() > WRITE_BUFFER {
                self.flush()?;
            }
            let start = self.buf.len();
            self.buf.extend_from_slice(part);
            change(&mut self.buf[start..]);
            self.len += part.len() as u64;
        }
        Ok(())
    }

    /// Writes `bytes` at `offset` (a header patch), leaving the append position alone.
    pub(crate) fn write_at(&mut self, bytes: &[u8], offset: u64) -> Result<()> {
        self.check_usable()?;
        let result = sink::write_all_at(&mut *self.file, bytes, offset);
        self.check_write(result)
    }

    /// Writes the buffer to the file (the page cache).
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = sink::write_all(&mut *self.file, &self.buf);
        self.buf.clear();
        self.check_write(result)
    }

    /// Flushes and makes the written bytes durable (`fdatasync`); a failure is final.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.flush()?;
        let file = &mut self.file;
        let result = sink::sync_retrying(|| file.sync_data());
        self.check_sync(result)
    }

    /// Flushes and starts the disk write of the dirty pages without waiting.
    pub(crate) fn start_writeback(&mut self) -> Result<()> {
        self.flush()?;
        self.file.start_writeback();
        Ok(())
    }

    /// Flushes, then starts the disk write of bytes `offset..offset + len` and, with `wait`,
    /// waits for it (see [`FileSink::writeback`]).
    pub(crate) fn writeback(&mut self, offset: u64, len: u64, wait: bool) -> Result<()> {
        self.flush()?;
        self.file.writeback(offset, len, wait);
        Ok(())
    }

    /// Flushes, then a second handle on the file for [`FileSink::writeback`] from another thread
    /// (`None` if the sink has none: see [`FileSink::writeback_handle`]).
    pub(crate) fn writeback_handle(&mut self) -> Result<Option<Box<dyn FileSink>>> {
        self.flush()?;
        Ok(self.file.writeback_handle())
    }

    /// Ends the file after its last bytes were written: `fsync` when `sync`, then nothing more
    /// is written, not even on drop.
    pub(crate) fn finish(&mut self, sync: bool) -> Result<()> {
        self.flush()?;
        if sync {
            let file = &mut self.file;
            let result = sink::sync_retrying(|| file.sync_all());
            self.check_sync(result)?;
        }
        self.done = true;
        Ok(())
    }

    fn check_write(&mut self, result: std::io::Result<()>) -> Result<()> {
        result.map_err(|e| {
            self.failed = true;
            Error::io(&self.path, self.kind.write, e)
        })
    }

    fn check_sync(&mut self, result: std::io::Result<()>) -> Result<()> {
        result.map_err(|e| {
            self.failed = true;
            Error::io(&self.path, SYNC_FAILED, e)
        })
    }
}

impl Drop for FileCore {
    fn drop(&mut self) {
        if !self.done && !self.failed && !self.buf.is_empty() {
            // Best effort: the file stays a header followed by whole items whatever happens here.
            let _ = sink::write_all(&mut *self.file, &self.buf);
        }
    }
}

/// Opens a trace file and reads its 64-byte header, checking the length and the magic; `what`
/// names the kind in messages ("an ATF index", "an ATF detail", "an ATC event"). Returns the file, its length
/// and the raw header.
pub(crate) fn open_with_header(
    path: &Path,
    what: &str,
    magic: [u8; 4],
) -> Result<(File, u64, [u8; HEADER_SIZE])> {
    let file = crate::verify::open_regular(path)?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(path, "stat the trace file", e))?
        .len();
    if len < HEADER_SIZE as u64 {
        return Err(Error::corrupt(
            path,
            format!("the file is {len} bytes, shorter than the {HEADER_SIZE}-byte header"),
        ));
    }
    let mut raw = [0u8; HEADER_SIZE];
    file.read_exact_at(&mut raw, 0)
        .map_err(|e| Error::io(path, "read the trace file's header", e))?;
    if raw[0..4] != magic {
        return Err(Error::corrupt(
            path,
            format!(
                "not {what} file: it starts with {:?}, expected {:?}",
                String::from_utf8_lossy(&raw[0..4]),
                String::from_utf8_lossy(&magic)
            ),
        ));
    }
    Ok((file, len, raw))
}

/// Whether `path` is a regular file starting with `magic` (any error: no; the reader that opens
/// it reports the error). A FIFO or a link is never opened for reading here.
pub(crate) fn has_magic(path: &Path, magic: [u8; 4]) -> bool {
    let mut found = [0u8; 4];
    crate::verify::open_regular(path)
        .ok()
        .is_some_and(|f| f.read_exact_at(&mut found, 0).is_ok() && found == magic)
}

/// Checks the byte-order and version bytes every file kind's header carries at 4 and 5.
pub(crate) fn check_common_header(path: &Path, endian: u8, version: u8) -> Result<()> {
    if endian != ENDIAN_LITTLE {
        return Err(Error::corrupt(
            path,
            format!(
                "unsupported byte order {endian} in the header (only 1, little-endian, is defined)"
            ),
        ));
    }
    if version != FILE_VERSION {
        return Err(Error::corrupt(
            path,
            format!(
                "unsupported file version {version} (this reader knows version {FILE_VERSION})"
            ),
        ));
    }
    Ok(())
}

/// Checks the header's `events_offset`: ATF v2 puts the `items` (records, events) at 64.
pub(crate) fn check_items_offset(path: &Path, events_offset: u64, items: &str) -> Result<()> {
    if events_offset != HEADER_SIZE as u64 {
        return Err(Error::corrupt(
            path,
            format!("the header puts {items} at offset {events_offset}; ATF v2 puts them at 64"),
        ));
    }
    Ok(())
}

/// Compares the CRC-32C of the bytes `start..end` of `file` with `expected` (a footer's):
/// `Ok(true)` when they match, `Ok(false)` when nothing was recorded (`None` or 0), an
/// [`Error::Checksum`] when they differ. `what` names the bytes in a read error.
pub(crate) fn verify_range(
    file: &File,
    path: &Path,
    what: &'static str,
    (start, end): (u64, u64),
    expected: Option<u32>,
) -> Result<bool> {
    let expected = match expected {
        Some(crc) if crc != 0 => crc,
        _ => return Ok(false),
    };
    let actual = ChunkReader::new(file, start, end)
        .crc32c()
        .map_err(|e| Error::io(path, what, e))?;
    if actual != expected {
        return Err(Error::Checksum {
            path: path.to_path_buf(),
            expected,
            actual,
        });
    }
    Ok(true)
}
