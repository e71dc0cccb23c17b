//! The crate's one error type.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong reading or writing a session. Each message names the file and the
/// problem; none of them is ever a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused an operation on a file or directory.
    #[error("{}: cannot {action}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was attempted, with the hint that fixes the usual cause.
        action: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is not a readable ATF file (wrong magic, unknown version, sizes that contradict the
    /// format, a record that runs past the end).
    #[error("{}: {problem}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        problem: String,
    },
    /// A chunk of an ATC event file is damaged: its checksum, its lengths or its encoding. Its
    /// events are lost; the chunks around it are not.
    #[error("{}: the chunk at offset {offset}: {damage}", path.display())]
    Chunk {
        /// The file.
        path: PathBuf,
        /// Where the chunk's header starts.
        offset: u64,
        /// What is wrong with it.
        damage: atc::DecodeError,
    },
    /// The footer's CRC-32C does not match the event bytes (ATF v2).
    #[error(
        "{}: checksum mismatch: the footer records {expected:#010x} but the events hash to \
         {actual:#010x}; the file was damaged after it was written",
        path.display()
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// CRC-32C stored in the footer.
        expected: u32,
        /// CRC-32C of the bytes on disk.
        actual: u32,
    },
    /// `manifest.json` is not valid JSON or lacks a required key.
    #[error("{}: invalid manifest, the session metadata is unreadable", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A caller passed data that would break the format (a batch that is not whole events, a detail
    /// record whose length field disagrees with its bytes, an event number past the end).
    #[error("{}: {problem}", path.display())]
    InvalidInput {
        /// The file the data was meant for.
        path: PathBuf,
        /// What is wrong with the data.
        problem: String,
    },
    /// A write failed earlier; the writer refuses more so the file keeps its last consistent state.
    #[error(
        "{}: an earlier write failed; the file stays readable up to its last complete event, \
         but this writer accepts nothing more",
        path.display()
    )]
    WriterFailed {
        /// The file.
        path: PathBuf,
    },
    /// The directory given as a session is not one.
    #[error("{}: {problem}", path.display())]
    NotASession {
        /// The directory.
        path: PathBuf,
        /// Why it is not a session, and what to pass instead.
        problem: String,
    },
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, action: &'static str, source: io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, problem: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    pub(crate) fn invalid(path: &Path, problem: impl Into<String>) -> Self {
        Error::InvalidInput {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

impl From<Error> for std::io::Error {
    /// The error as an I/O error of kind `Other` carrying it (what a reader that writes its
    /// output through `io::Write` returns), so `get_ref` and `downcast_ref` give it back.
    fn from(e: Error) -> Self {
        std::io::Error::other(e)
    }
}
