//! What readers check in what they read, whatever the file format: a [`Damage`] names the file,
//! the byte range and the problem; [`EventCheck`] checks a thread's decoded events (unknown kinds,
//! another thread's id, time running backwards) however they were stored; [`open_regular`] opens
//! a trace file only if it is a regular file, without following a symlink or blocking on a FIFO.
//!
//! A format's reader feeds these: it reports every byte range whose content contradicts the
//! format (a checksum that does not match, a header that disagrees with its footer, reserved bytes
//! that are not zero) as a `Damage`, and passes each decoded event with its byte range to an
//! `EventCheck`. [`crate::Session::open`] gathers them as [`crate::Warning::Damaged`], which the
//! readers print before anything they show, so an event read from damaged bytes never passes as
//! real without a warning.

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::{EventKind, IndexEvent};

/// A byte range of a file whose content contradicts its format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The file.
    pub path: PathBuf,
    /// The bytes concerned, `[start, end)`.
    pub range: Range<u64>,
    /// What is wrong, in words.
    pub problem: String,
}

impl Damage {
    /// A damage of `path` at `range`.
    pub fn new(path: &Path, range: Range<u64>, problem: impl Into<String>) -> Self {
        Damage {
            path: path.to_path_buf(),
            range,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: bytes {}..{}: {}",
            self.path.display(),
            self.range.start,
            self.range.end,
            self.problem
        )
    }
}

/// One kind of suspicious event: how many, and the first one's bytes and description.
#[derive(Default)]
struct Group {
    count: u64,
    first: Option<(Range<u64>, String)>,
}

impl Group {
    #[cold]
    fn add(&mut self, range: Range<u64>, describe: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some((range, describe()));
        }
    }

    fn damage(self, path: &Path, what: &str, out: &mut Vec<Damage>) {
        if let Some((range, first)) = self.first {
            let problem = if self.count == 1 {
                format!("{first}; the event is {what}")
            } else {
                format!(
                    "{first}; this and {} more events are {what}",
                    self.count - 1
                )
            };
            out.push(Damage::new(path, range, problem));
        }
    }
}

/// Checks one thread's decoded events in file order, whatever format stored them. Feed every
/// event with the byte range it was decoded from, then [`finish`](Self::finish).
///
/// ```
/// use atf::{EventCheck, EventKind, IndexEvent, NO_DETAIL};
/// let mut check = EventCheck::new(std::path::Path::new("thread_7/index.atf"), 7);
/// let event = IndexEvent {
///     timestamp_ns: 5, function_id: 1, thread_id: 7, kind: EventKind::Other(9),
///     call_depth: 0, detail_seq: NO_DETAIL,
/// };
/// check.event(64..96, &event);
/// let damage = check.finish();
/// assert!(damage[0].problem.contains("unknown kind 9"));
/// ```
pub struct EventCheck {
    path: PathBuf,
    thread_id: u32,
    last_timestamp: Option<u64>,
    unknown: Group,
    foreign: Group,
    backwards: Group,
}

impl EventCheck {
    /// A check of the events of thread `thread_id` (the id its directory names) read from `path`.
    pub fn new(path: &Path, thread_id: u32) -> Self {
        EventCheck {
            path: path.to_path_buf(),
            thread_id,
            last_timestamp: None,
            unknown: Group::default(),
            foreign: Group::default(),
            backwards: Group::default(),
        }
    }

    /// Checks the next event, decoded from the bytes `range`.
    #[inline]
    pub fn event(&mut self, range: Range<u64>, event: &IndexEvent) {
        if let EventKind::Other(raw) = event.kind {
            self.unknown
                .add(range.clone(), || format!("an event of unknown kind {raw}"));
        }
        if event.thread_id != self.thread_id {
            let tid = self.thread_id;
            self.foreign.add(range.clone(), || {
                format!(
                    "an event of thread {} in the file of thread {tid}",
                    event.thread_id
                )
            });
        }
        if let Some(last) = self.last_timestamp {
            if event.timestamp_ns < last {
                self.backwards.add(range, || {
                    format!(
                        "an event at {} ns after one at {last} ns",
                        event.timestamp_ns
                    )
                });
            }
        }
        self.last_timestamp = Some(event.timestamp_ns);
    }

    /// The damage found, one entry per kind of problem (its first event and the count).
    pub fn finish(self) -> Vec<Damage> {
        let mut out = Vec::new();
        self.unknown
            .damage(&self.path, "skipped by the readers", &mut out);
        self.foreign
            .damage(&self.path, "read as this thread's anyway", &mut out);
        self.backwards
            .damage(&self.path, "out of time order (damaged?)", &mut out);
        out
    }
}

/// Opens `path` for reading if it is a regular file. A symlink is not followed, and a FIFO or a
/// device is refused without blocking (it is opened non-blocking, checked with `fstat`, and only
/// a regular file is switched back to blocking reads). The descriptor is close-on-exec.
pub fn open_regular(path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::corrupt(
                    path,
                    "is a symbolic link; a session's files are regular files, so it is not \
                     followed (was the file replaced?)",
                )
            } else {
                Error::io(path, "open the file", e)
            }
        })?;
    let kind = file
        .metadata()
        .map_err(|e| Error::io(path, "stat the file", e))?
        .file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(Error::corrupt(
            path,
            format!(
                "is {what}, not a regular file; a session's files are regular files (was it \
                 replaced?)"
            ),
        ));
    }
    // SAFETY: `file` owns a valid descriptor for the duration of both calls; F_GETFL/F_SETFL
    // only read and change its status flags.
    let cleared = unsafe {
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(Error::io(
            path,
            "switch the file to blocking reads",
            io::Error::last_os_error(),
        ));
    }
    Ok(file)
}

/// Damage for each run of non-zero bytes in `bytes`, which sit at file offset `at` and must be
/// zero (reserved by the format).
pub(crate) fn reserved_zero(path: &Path, at: u64, bytes: &[u8], what: &str, out: &mut Vec<Damage>) {
    if let Some(first) = bytes.iter().position(|b| *b != 0) {
        let last = bytes.iter().rposition(|b| *b != 0).unwrap_or(first);
        out.push(Damage::new(
            path,
            at + first as u64..at + last as u64 + 1,
            format!("reserved bytes of the {what} are not zero"),
        ));
    }
}

/// Damage if the header's `arch` (byte 6) or `os` (byte 7) is not one the format defines.
pub(crate) fn platform(path: &Path, arch: u8, os: u8, out: &mut Vec<Damage>) {
    if arch != crate::ARCH_X86_64 && arch != crate::ARCH_ARM64 {
        out.push(Damage::new(
            path,
            6..7,
            format!("the header names an unknown architecture {arch}"),
        ));
    }
    if os != crate::OS_LINUX {
        out.push(Damage::new(
            path,
            7..8,
            format!(
                "the header names an unknown operating system {os} (only {}, Linux, is defined)",
                crate::OS_LINUX
            ),
        ));
    }
}

/// The start of every file kind's check: the raw `N`-byte header of `file` (`what` names it in a
/// read error) and the damage found so far: none, or the thread id stored at 12..16 (`stored`)
/// differing from `thread_id`, the one the file's directory names.
pub(crate) fn header_and_thread<const N: usize>(
    file: &File,
    path: &Path,
    what: &'static str,
    stored: u32,
    thread_id: u32,
) -> Result<([u8; N], Vec<Damage>)> {
    let mut raw = [0u8; N];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut raw, 0)
        .map_err(|e| Error::io(path, what, e))?;
    let mut out = Vec::new();
    if stored != thread_id {
        out.push(Damage::new(
            path,
            12..16,
            format!(
                "the header's thread id is {stored} but the file is in the directory of thread \
                 {thread_id}"
            ),
        ));
    }
    Ok((raw, out))
}

/// The end every ATF v2 footer shares: damage if its reserved bytes (40..64 of `raw_footer`, at
/// file offset `fo`) are not zero, or if its checksum (at `fo + 4`) is missing for `body` bytes
/// of `items` (records, events) that exist, or differs from `crc`, theirs.
pub(crate) fn footer_tail(
    path: &Path,
    (fo, raw_footer): (u64, &[u8]),
    (stored, crc): (u32, u32),
    body: Range<u64>,
    items: &str,
    out: &mut Vec<Damage>,
) {
    reserved_zero(path, fo + 40, &raw_footer[40..], "footer", out);
    if stored == 0 && !body.is_empty() {
        out.push(Damage::new(
            path,
            fo + 4..fo + 8,
            format!(
                "the footer records no checksum for {items} that exist; they cannot be verified"
            ),
        ));
    } else if stored != crc {
        out.push(Damage::new(
            path,
            body,
            format!(
                "checksum mismatch: the footer (bytes {}..{}) records {stored:#010x} but the \
                 {items} hash to {crc:#010x}; {items} read from here may be damaged",
                fo + 4,
                fo + 8,
            ),
        ));
    }
}

/// Damage if a stored field differs from what the rest of the file says it must be.
pub(crate) fn field_matches(
    path: &Path,
    range: Range<u64>,
    field: &str,
    stored: u64,
    expected: u64,
    out: &mut Vec<Damage>,
) {
    if stored != expected {
        out.push(Damage::new(
            path,
            range,
            format!("{field} is {stored} but the file says {expected}"),
        ));
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use crate::NO_DETAIL;

    fn ev(ts: u64, tid: u32, kind: EventKind) -> IndexEvent {
        IndexEvent {
            timestamp_ns: ts,
            function_id: 1,
            thread_id: tid,
            kind,
            call_depth: 0,
            detail_seq: NO_DETAIL,
        }
    }

    #[test]
    fn event_check__clean_stream__then_no_damage() {
        let mut c = EventCheck::new(Path::new("f"), 7);
        for i in 0..10u64 {
            c.event(64 + i * 32..96 + i * 32, &ev(i, 7, EventKind::Call));
        }
        assert!(c.finish().is_empty());
    }

    #[test]
    fn event_check__unknown_foreign_and_backwards__then_one_damage_each_with_first_range_and_count()
    {
        let mut c = EventCheck::new(Path::new("f"), 7);
        c.event(64..96, &ev(10, 7, EventKind::Other(7)));
        c.event(96..128, &ev(5, 8, EventKind::Other(9)));
        c.event(128..160, &ev(6, 8, EventKind::Return));
        let d = c.finish();
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(d[0].range, 64..96);
        assert!(d[0].problem.contains("unknown kind 7"), "{}", d[0]);
        assert!(d[0].problem.contains("and 1 more"), "{}", d[0]);
        assert_eq!(d[1].range, 96..128);
        assert!(d[1].problem.contains("thread 8"), "{}", d[1]);
        assert_eq!(d[2].range, 96..128);
        assert!(
            d[2].to_string().starts_with("f: bytes 96..128: "),
            "{}",
            d[2]
        );
    }

    #[test]
    fn open_regular__fifo_directory_symlink_device__then_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        for (path, says) in [
            (fifo.as_path(), "a FIFO"),
            (dir.path(), "a directory"),
            (link.as_path(), "symbolic link"),
            (Path::new("/dev/zero"), "a character device"),
        ] {
            let msg = open_regular(path).unwrap_err().to_string();
            assert!(msg.contains(says), "{msg}");
            assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
        }
        let f = open_regular(&file).unwrap();
        // SAFETY: F_GETFL on a descriptor `f` owns.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
    }
}
