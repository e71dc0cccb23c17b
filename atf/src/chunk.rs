//! Sequential reads of a byte range of a file through one large buffer (positioned reads, so several
//! readers can share one `File`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes read per refill.
pub(crate) const CHUNK: usize = 1 << 20;

pub(crate) struct ChunkReader<'a> {
    file: &'a File,
    /// File offset of the next byte not yet in `buf`.
    pos: u64,
    /// End of the range (exclusive).
    end: u64,
    buf: Vec<u8>,
    /// Consumed prefix of `buf`.
    start: usize,
    /// The CRC-32C of every byte read so far, if kept (see [`Self::keep_crc32c`]).
    crc: Option<u32>,
}

impl<'a> ChunkReader<'a> {
    pub(crate) fn new(file: &'a File, pos: u64, end: u64) -> Self {
        ChunkReader {
            file,
            pos,
            end,
            buf: Vec::new(),
            start: 0,
            crc: None,
        }
    }

    /// From now on, keeps the CRC-32C of the bytes read from the file as they arrive (call it
    /// before reading anything), so a pass that reads the whole range gets its checksum without
    /// going over the bytes again.
    pub(crate) fn keep_crc32c(&mut self) {
        self.crc = Some(0);
    }

    /// The CRC-32C of the bytes read from the file so far (the whole range once [`Self::take`]
    /// has returned `None`), if [`Self::keep_crc32c`] was called; 0 otherwise.
    pub(crate) fn crc32c_so_far(&self) -> u32 {
        self.crc.unwrap_or(0)
    }

    /// Bytes of the range not yet returned.
    pub(crate) fn remaining(&self) -> u64 {
        (self.buf.len() - self.start) as u64 + (self.end - self.pos)
    }

    /// File offset of the next byte `take` returns.
    pub(crate) fn offset(&self) -> u64 {
        self.pos - (self.buf.len() - self.start) as u64
    }

    /// The next `n` bytes, or `None` when fewer than `n` remain in the range. A file that shrank under
    /// us is an `UnexpectedEof` error.
    pub(crate) fn take(&mut self, n: usize) -> io::Result<Option<&[u8]>> {
        if (n as u64) > self.remaining() {
            return Ok(None);
        }
        if self.buf.len() - self.start < n {
            self.refill(n)?;
        }
        let out = &self.buf[self.start..self.start + n];
        self.start += n;
        Ok(Some(out))
    }

    /// Passes the rest of the range to `f` in chunks, each with its file offset.
    pub(crate) fn each(&mut self, mut f: impl FnMut(u64, &[u8])) -> io::Result<()> {
        loop {
            let n = (self.remaining() as usize).min(CHUNK);
            if n == 0 {
                return Ok(());
            }
            let at = self.offset();
            if let Some(bytes) = self.take(n)? {
                f(at, bytes);
            }
        }
    }

    /// CRC-32C of the rest of the range.
    pub(crate) fn crc32c(&mut self) -> io::Result<u32> {
        let mut crc = 0u32;
        self.each(|_, bytes| crc = crc32c::crc32c_append(crc, bytes))?;
        Ok(crc)
    }

    /// Makes at least `n` bytes available in `buf[start..]` (the caller checked they exist).
    fn refill(&mut self, n: usize) -> io::Result<()> {
        self.buf.drain(..self.start);
        self.start = 0;
        let have = self.buf.len();
        let want = (n - have).max(CHUNK).min((self.end - self.pos) as usize);
        self.buf.resize(have + want, 0);
        if let Err(err) = self.file.read_exact_at(&mut self.buf[have..], self.pos) {
            self.buf.truncate(have);
            return Err(err);
        }
        if let Some(crc) = &mut self.crc {
            *crc = crc32c::crc32c_append(*crc, &self.buf[have..]);
        }
        self.pos += want as u64;
        Ok(())
    }
}
