//! Why a reading command (`info`, `replay`, `report`, `export`) fails: one variant per reason,
//! each naming the problem and the fix, the underlying error kept as its source.

use std::path::PathBuf;

use crate::error::{CliError, Refusal};

/// A failure of a reading command.
#[derive(Debug, thiserror::Error)]
pub enum ReadFailure {
    /// The path names nothing.
    #[error(
        "{}: no such session directory; pass a session_<...> or pid_<pid> directory written by \
         `tracer spawn` (default under /tmp/ada_traces/<user>)",
        path.display()
    )]
    NoSession {
        /// The path given.
        path: PathBuf,
    },
    /// The path is an output directory holding several sessions.
    #[error(
        "{}: an output directory with {} sessions (newest first: {}); pass the one to read, \
         e.g. {}",
        path.display(),
        sessions.len(),
        newest(sessions),
        path.join(&sessions[0]).display()
    )]
    OutputDirectory {
        /// The path given.
        path: PathBuf,
        /// The names of its sessions, newest first (at least two).
        sessions: Vec<String>,
    },
    /// The path is a directory with no session in it.
    #[error(
        "{}: no session here (no manifest.json, pid_<pid> or session_<...> directory in it); pass \
         a directory written by `tracer spawn` (default under /tmp/ada_traces/<user>)",
        path.display()
    )]
    NoSessionIn {
        /// The path given.
        path: PathBuf,
    },
    /// The session cannot be opened.
    #[error(transparent)]
    Unreadable(atf::Error),
    /// A `--tid` the session does not have.
    #[error(
        "thread {tid} is not in the session; its threads are {} (see `tracer info`)",
        list(have)
    )]
    NoThread {
        /// The thread asked for.
        tid: u32,
        /// The session's threads.
        have: Vec<u32>,
    },
    /// `--depth 0`.
    #[error("--depth 0 would show nothing; use 1 for the outermost calls, or more")]
    DepthZero,
    /// A session format asked for without a directory to write it to.
    #[error("--format {format} writes a session directory; name where with --output DIR")]
    NoOutputDir {
        /// The format's name.
        format: &'static str,
    },
    /// The export file cannot be created.
    #[error("{}: cannot create the output file", path.display())]
    CreateOutput {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        cause: std::io::Error,
    },
    /// Writing the export file failed.
    #[error("{}: writing the export failed", path.display())]
    WriteExport {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        cause: std::io::Error,
    },
    /// Writing the output (stdout) failed.
    #[error("writing the output failed")]
    WriteOutput(#[source] std::io::Error),
    /// The session went bad while it was read.
    #[error(transparent)]
    Read(atf::Error),
    /// The conversion stopped part-way.
    #[error(
        "the session was not converted (what was written under {} is incomplete)",
        output.display()
    )]
    NotConverted {
        /// Why.
        #[source]
        cause: atf::Error,
        /// Where the incomplete copy is.
        output: PathBuf,
    },
}

/// How many sessions an [`ReadFailure::OutputDirectory`] error names.
const SESSIONS_NAMED: usize = 5;

/// `a, b, c, d, e and 3 older` from session names sorted newest first.
fn newest(sessions: &[String]) -> String {
    let shown = sessions[..sessions.len().min(SESSIONS_NAMED)].join(", ");
    match sessions.len().saturating_sub(SESSIONS_NAMED) {
        0 => shown,
        older => format!("{shown} and {older} older"),
    }
}

fn list(tids: &[u32]) -> String {
    if tids.is_empty() {
        return "none".to_owned();
    }
    let shown: Vec<String> = tids.iter().map(u32::to_string).collect();
    shown.join(", ")
}

impl ReadFailure {
    /// Exit status: 2 when the request cannot work as given, 1 when reading or writing failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReadFailure::WriteExport { .. }
            | ReadFailure::WriteOutput(_)
            | ReadFailure::Read(_)
            | ReadFailure::NotConverted { .. } => 1,
            _ => 2,
        }
    }

    /// What to do about it, printed after the causes (when it follows them).
    pub fn fix(&self) -> Option<String> {
        match self {
            ReadFailure::CreateOutput { .. } => {
                Some("check that its directory exists and is writable".to_owned())
            }
            ReadFailure::WriteExport { .. } => Some("is the disk full?".to_owned()),
            _ => None,
        }
    }
}

impl From<ReadFailure> for CliError {
    fn from(failure: ReadFailure) -> Self {
        let exit_code = failure.exit_code();
        let refusal = match failure.fix() {
            Some(fix) => Refusal::new(failure, exit_code).with_fix(fix),
            None => Refusal::new(failure, exit_code),
        };
        CliError::Refused(refusal)
    }
}
