//! The writers' I/O seam: every byte the writers put in a session and every fsync go through a
//! [`FileSystem`] and the [`FileSink`]s it opens.
//!
//! [`RealFs`] is the operating system: its sinks are plain [`File`]s, called once per buffered
//! write (a megabyte), so the seam costs one indirect call per megabyte and nothing per event.
//! [`crate::fault::FaultyFs`] wraps it to inject short writes, `EINTR`, `ENOSPC`, `EIO` and slow or
//! failing fsyncs. Whatever the sink does, the writers retry `EINTR`, continue short writes, and
//! report any other error as [`crate::Error::Io`] naming the file. The readers read the files at
//! their paths, so a file system's files must be real files there.

use std::fmt;
use std::fs::File;
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub use safedir::Dir;

/// An open file the writers append to and patch in place, as `write(2)`, `pwrite(2)` and
/// `fsync(2)` see it: a write may be short (it returns the count written) or fail with
/// [`ErrorKind::Interrupted`] having written nothing; the callers handle both.
pub trait FileSink: Send + Sync + fmt::Debug {
    /// Writes at the current position and advances it; returns how many bytes were written.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize>;

    /// Writes at `offset` without moving the position; returns how many bytes were written.
    fn write_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<usize>;

    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;

    /// Makes the file's data and metadata durable (`fsync`).
    fn sync_all(&mut self) -> io::Result<()>;

    /// Asks the kernel to start writing the dirty pages back without waiting
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). A hint: it never fails, and by default does
    /// nothing.
    fn start_writeback(&mut self) {}

    /// Starts writing bytes `offset..offset + len` back to the disk (`sync_file_range` with
    /// `SYNC_FILE_RANGE_WRITE`), and with `wait` first waits for any writeback of that range
    /// already under way and then for this one (`WAIT_BEFORE | WRITE | WAIT_AFTER`): the data is
    /// on its way to the disk, but not durable (no metadata, no cache flush). A hint: it never
    /// fails, and by default does nothing.
    fn writeback(&mut self, offset: u64, len: u64, wait: bool) {
        let _ = (offset, len, wait);
    }

    /// A second handle on the same open file, for [`writeback`](Self::writeback) from another
    /// thread, so a writer that must not stall on the disk can hand its writeback to a helper.
    /// `None` by default: the caller then does the writeback itself.
    fn writeback_handle(&self) -> Option<Box<dyn FileSink>> {
        None
    }
}

/// Where the writers create their files, and how they rename and make them durable.
///
/// Every operation names a file by a single name inside an open directory handle ([`Dir`]), so a
/// path component swapped for a link after the directory was opened cannot redirect it, and files
/// are only ever created new (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600 whatever the umask): an
/// existing file or a planted link is never truncated or written through. Directory creation and
/// the readers use [`Dir`] and `std::fs` directly: a file system here decides what happens to the
/// bytes written and to the syncs, not where files live.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Creates `name` in `dir`, which must not exist, for writing, with mode 0600.
    fn create_new(&self, dir: &Dir, name: &str) -> io::Result<Box<dyn FileSink>>;

    /// Renames `from` over `to`, both in `dir`, atomically (`renameat(2)`).
    fn rename(&self, dir: &Dir, from: &str, to: &str) -> io::Result<()>;

    /// Removes the file `name` from `dir`.
    fn remove_file(&self, dir: &Dir, name: &str) -> io::Result<()>;

    /// Makes the entries of the directory `dir` durable (`fsync` of the directory).
    fn sync_dir(&self, dir: &Dir) -> io::Result<()>;

    /// Makes everything on the file system holding `dir` durable (`syncfs(2)`).
    fn sync_fs(&self, dir: &Dir) -> io::Result<()>;

    /// Makes a written file's data and metadata durable: the file `name` in `dir`, opened
    /// read-only through the directory's handle without following a link, then `fsync`. For files
    /// whose writer is already closed; a directory renamed or replaced by a link meanwhile does
    /// not matter, since the handle still names the session's own directory.
    fn sync_file(&self, dir: &Dir, name: &str) -> io::Result<()>;
}

/// The operating system's file system: [`File`]s, `rename(2)`, `fsync(2)`, `syncfs(2)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealFs;

impl FileSink for File {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        Write::write(self, bytes)
    }

    fn write_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<usize> {
        FileExt::write_at(self, bytes, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn writeback(&mut self, offset: u64, len: u64, wait: bool) {
        use std::os::fd::AsRawFd;
        let flags = if wait {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER
        } else {
            libc::SYNC_FILE_RANGE_WRITE
        };
        let (offset, len) = (offset as libc::off64_t, len as libc::off64_t);
        // SAFETY: sync_file_range on our own open descriptor; no memory is passed. A file system
        // that does not support it returns an error, which a hint ignores.
        unsafe {
            libc::sync_file_range(self.as_raw_fd(), offset, len, flags);
        }
    }

    fn writeback_handle(&self) -> Option<Box<dyn FileSink>> {
        // A duplicate descriptor: the same open file, closed when the handle drops.
        self.try_clone()
            .ok()
            .map(|f| Box::new(f) as Box<dyn FileSink>)
    }

    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range on our own open descriptor; no memory is passed. A file system
        // that does not support it returns an error, which a hint ignores.
        unsafe {
            libc::sync_file_range(self.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
}

impl FileSystem for RealFs {
    fn create_new(&self, dir: &Dir, name: &str) -> io::Result<Box<dyn FileSink>> {
        Ok(Box::new(dir.create_file(name, safedir::PRIVATE_FILE)?))
    }

    fn rename(&self, dir: &Dir, from: &str, to: &str) -> io::Result<()> {
        dir.rename(from, to)
    }

    fn remove_file(&self, dir: &Dir, name: &str) -> io::Result<()> {
        dir.remove_file(name)
    }

    fn sync_dir(&self, dir: &Dir) -> io::Result<()> {
        dir.sync()
    }

    fn sync_fs(&self, dir: &Dir) -> io::Result<()> {
        dir.sync_fs()
    }

    fn sync_file(&self, dir: &Dir, name: &str) -> io::Result<()> {
        dir.open_file(name)?.sync_all()
    }
}

/// Opens the directory holding `path` (as given, links followed: the caller's path) and returns
/// it with the file's name, for the path-taking conveniences of the writers.
pub(crate) fn parent_and_name(path: &Path) -> io::Result<(Dir, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "not a UTF-8 file name"))?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((Dir::open(parent)?, name.to_owned()))
}

/// Writes all of `bytes` at the sink's position: a short write is continued from where it
/// stopped, `EINTR` is retried, so no byte is lost or written twice. Any other error is returned
/// as is; the bytes before it are in the file.
pub(crate) fn write_all(sink: &mut dyn FileSink, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match sink.write(bytes) {
            Ok(0) => return Err(wrote_nothing()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// [`write_all`] at a file offset.
pub(crate) fn write_all_at(
    sink: &mut dyn FileSink,
    mut bytes: &[u8],
    mut offset: u64,
) -> io::Result<()> {
    while !bytes.is_empty() {
        match sink.write_at(bytes, offset) {
            Ok(0) => return Err(wrote_nothing()),
            Ok(n) => {
                bytes = bytes.get(n..).unwrap_or_default();
                offset += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs a sync, retrying it while it is interrupted (`EINTR` reports no writeback error). Any
/// other failure is returned and must not be retried as if a later success covered it.
pub(crate) fn sync_retrying(mut sync: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    loop {
        match sync() {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

fn wrote_nothing() -> io::Error {
    io::Error::new(
        ErrorKind::WriteZero,
        "the file system accepted none of the bytes",
    )
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    /// A sink that records what reached it and misbehaves on a schedule.
    #[derive(Debug, Default)]
    struct Scripted {
        data: Vec<u8>,
        calls: u64,
        /// Per call (cycled): `Some(n)` writes at most `n` bytes, `None` fails with EINTR.
        script: Vec<Option<usize>>,
    }

    impl FileSink for Scripted {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let at = self.data.len() as u64;
            self.write_at(bytes, at)
        }

        fn write_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<usize> {
            let step = self.script[self.calls as usize % self.script.len()];
            self.calls += 1;
            let Some(max) = step else {
                return Err(ErrorKind::Interrupted.into());
            };
            let n = bytes.len().min(max);
            let end = offset as usize + n;
            if self.data.len() < end {
                self.data.resize(end, 0);
            }
            self.data[offset as usize..end].copy_from_slice(&bytes[..n]);
            Ok(n)
        }

        fn sync_data(&mut self) -> io::Result<()> {
            Ok(())
        }

        fn sync_all(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_all__short_writes_and_eintr__then_every_byte_once_in_order() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut sink = Scripted {
            script: vec![Some(7), None, None, Some(1), Some(4096), None],
            ..Scripted::default()
        };
        write_all(&mut sink, &bytes).unwrap();
        assert_eq!(sink.data, bytes);
        write_all_at(&mut sink, &[9; 100], 50).unwrap();
        assert_eq!(&sink.data[50..150], &[9; 100]);
        assert_eq!(sink.data.len(), bytes.len());
    }

    #[test]
    fn write_all__sink_accepts_nothing__then_write_zero_error_not_a_loop() {
        let mut sink = Scripted {
            script: vec![Some(0)],
            ..Scripted::default()
        };
        let err = write_all(&mut sink, b"abc").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WriteZero);
        let err = write_all_at(&mut sink, b"abc", 0).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WriteZero);
    }

    #[test]
    fn sync_retrying__interrupted_then_failed__then_failure_returned_once() {
        let mut calls = 0;
        let result = sync_retrying(|| {
            calls += 1;
            match calls {
                1 | 2 => Err(ErrorKind::Interrupted.into()),
                _ => Err(io::Error::from_raw_os_error(libc::EIO)),
            }
        });
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert_eq!(calls, 3);
    }
}
