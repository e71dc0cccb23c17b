//! The recurring failures of `spawn` and `attach` as typed errors: starting the recording
//! ([`Start`], exit 1) and the output directory ([`Output`], exit 2). Each names the problem,
//! keeps the system's error as its source (printed once, by the CLI), and an output failure
//! names its fix, which the CLI prints after the causes.

use std::path::PathBuf;

use crate::error::{Cause, CliError, Refusal};

/// A step of starting a recording that failed.
#[derive(Debug, thiserror::Error)]
pub enum Start {
    /// `--duration` is not a number of seconds (exit 2, the one bad-input case here).
    #[error("--duration")]
    Duration(#[source] Cause),
    /// The shared region cannot be created.
    #[error("cannot create the shared region")]
    CreateRegion(#[source] Cause),
    /// The region's descriptor cannot be handed to the target.
    #[error("cannot share the region with the target")]
    ShareRegion(#[source] Cause),
    /// The region is created but cannot be used.
    #[error("the shared region is unusable")]
    Region(#[source] Cause),
    /// The region has no memfd the target could open.
    #[error("the shared region has no memfd")]
    NoMemfd,
    /// The signal handlers cannot be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] Cause),
    /// The signal handlers cannot be put back after the stop.
    #[error("cannot restore signal handlers")]
    RestoreSignals(#[source] Cause),
    /// No pidfd for the target.
    #[error("cannot watch the target (pid {pid})")]
    Watch {
        /// The target.
        pid: u32,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// The drain cannot be set up.
    #[error("cannot start the drain")]
    Drain(#[source] Cause),
    /// The drain thread cannot be started.
    #[error("cannot start the drain thread")]
    DrainThread(#[source] Cause),
    /// The `--duration` timer cannot be started.
    #[error("cannot start the duration timer")]
    Timer(#[source] Cause),
    /// A limit leaves no room for even the smallest shared region.
    #[error(
        "{what} leaves the shared region {limit_kib} KiB, below the {smallest_kib} KiB the \
         smallest one needs; raise it with `{raise}`"
    )]
    RegionLimit {
        /// The limit, as the user knows it ("the file-size limit (ulimit -f)").
        what: String,
        /// What it leaves, in KiB.
        limit_kib: u64,
        /// What the smallest region takes, in KiB.
        smallest_kib: u64,
        /// The command that raises it.
        raise: String,
    },
    /// The agent library cannot be put where targets load it from.
    #[error(transparent)]
    Agent(#[from] Agent),
    /// The program cannot be started.
    #[error(transparent)]
    Exec(#[from] Exec),
}

/// The agent library, written once to a cache directory, cannot be used from there.
#[derive(Debug, thiserror::Error)]
pub enum Agent {
    /// `ulimit -f` forbids writing it.
    #[error(
        "the file-size limit (ulimit -f) of {limit_kib} KiB is below the agent library's \
         {agent_kib} KiB, which the tracer writes once to its cache; run it once without the \
         limit, or raise it"
    )]
    FileSizeLimit {
        /// The limit, in KiB.
        limit_kib: u64,
        /// The library's size, in KiB.
        agent_kib: u64,
    },
    /// Writing it failed (fix: another cache directory).
    #[error("cannot write the agent library to the cache")]
    Write(#[source] Cause),
    /// The cache is on a noexec mount.
    #[error(
        "{}: the cache is on a file system mounted noexec, where the program cannot load the \
         agent; point XDG_CACHE_HOME at a directory on another file system",
        path.display()
    )]
    Noexec {
        /// Where the library is.
        path: PathBuf,
    },
}

/// The program given to `spawn` cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum Exec {
    /// Not an executable format of this machine (exit 2).
    #[error(
        "{shown} is not a program this system can run (exec format error); give an executable \
         built for this machine"
    )]
    Format {
        /// The program, as given.
        shown: String,
    },
    /// Not executable (exit 2).
    #[error(
        "{shown} cannot be executed (permission denied); check its mode and its file system's \
         noexec flag"
    )]
    Denied {
        /// The program, as given.
        shown: String,
    },
    /// A program the tracer does not support (exit 2); the reason names the fix.
    #[error("{reason}")]
    Unsupported {
        /// Why, and what to do.
        reason: String,
    },
    /// Any other failure of the start (exit 1).
    #[error("cannot start {shown}")]
    Other {
        /// The program, as given.
        shown: String,
        /// The system's error.
        #[source]
        cause: std::io::Error,
    },
}

impl Exec {
    /// The failure of starting `shown` with `cause`.
    pub fn of(shown: String, cause: std::io::Error) -> Exec {
        match cause.raw_os_error() {
            Some(libc::ENOEXEC) => Exec::Format { shown },
            Some(libc::EACCES) => Exec::Denied { shown },
            _ => Exec::Other { shown, cause },
        }
    }
}

impl From<Start> for CliError {
    fn from(start: Start) -> Self {
        let exit_code = match start {
            Start::Duration(_)
            | Start::Exec(Exec::Format { .. } | Exec::Denied { .. } | Exec::Unsupported { .. }) => {
                2
            }
            _ => 1,
        };
        // The fix that follows the cause.
        let fix = matches!(start, Start::Agent(Agent::Write(_)))
            .then_some("point XDG_CACHE_HOME at a writable directory");
        let refusal = Refusal::new(start, exit_code);
        CliError::Refused(match fix {
            Some(fix) => refusal.with_fix(fix),
            None => refusal,
        })
    }
}

/// The directory the session goes to cannot take it.
#[derive(Debug, thiserror::Error)]
pub enum Output {
    /// `--output` (or a missing part of it) cannot be created.
    #[error("cannot create the output directory {}", path.display())]
    Create {
        /// The directory asked for.
        path: PathBuf,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// The directory exists but does not let the tracer create entries.
    #[error("cannot write to the output directory {}", path.display())]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// The access check's error.
        #[source]
        cause: std::io::Error,
    },
    /// The default directory under the shared one cannot be made or opened.
    #[error(transparent)]
    Default(safedir::Error),
    /// The default directory under the shared one is refused as unsafe (its message says why
    /// and what to do).
    #[error("{0} with --output")]
    Unsafe(safedir::Error),
    /// The session directory cannot be created in it.
    #[error(transparent)]
    Session(atf::Error),
}

impl Output {
    /// What to do about it.
    pub fn fix(&self) -> String {
        match self {
            Output::Create { .. } | Output::NotWritable { .. } => {
                "choose another with --output".to_owned()
            }
            Output::Default(safedir::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                let shared = crate::args::DEFAULT_OUTPUT;
                format!(
                    "ask the owner of {shared} to let every user make a directory in it \
                     (`chmod 1777 {shared}`), or choose another directory with --output"
                )
            }
            Output::Default(_) | Output::Session(_) => {
                "choose another directory with --output".to_owned()
            }
            Output::Unsafe(_) => String::new(),
        }
    }
}

impl From<Output> for CliError {
    fn from(output: Output) -> Self {
        let fix = output.fix();
        let refusal = Refusal::new(output, 2);
        CliError::Refused(if fix.is_empty() {
            refusal
        } else {
            refusal.with_fix(fix)
        })
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn output_not_writable__then_exit_2_problem_cause_once_then_fix() {
        let cause = std::io::Error::from_raw_os_error(libc::EACCES);
        let path = PathBuf::from("/srv/traces");
        let e: CliError = Output::NotWritable { path, cause }.into();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.render(),
            "cannot write to the output directory /srv/traces: Permission denied (os error 13); \
             choose another with --output"
        );
    }

    #[test]
    fn start_step_fails__then_exit_1_and_the_cause_printed_once() {
        let e: CliError =
            Start::DrainThread(std::io::Error::other("no threads left").into()).into();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.render(), "cannot start the drain thread: no threads left");
        let bad: CliError = Start::Duration("not a number of seconds".into()).into();
        assert_eq!(bad.exit_code(), 2);
    }

    #[test]
    fn program_cannot_start__then_a_bad_program_is_exit_2_and_a_failed_start_exit_1() {
        let start = |errno| -> CliError {
            let e = std::io::Error::from_raw_os_error(errno);
            Start::Exec(Exec::of("./app".to_owned(), e)).into()
        };
        assert_eq!(start(libc::ENOEXEC).exit_code(), 2);
        assert!(start(libc::ENOEXEC)
            .render()
            .contains("give an executable built"));
        assert_eq!(start(libc::EACCES).exit_code(), 2);
        let failed = start(libc::ENOMEM);
        assert_eq!(failed.exit_code(), 1);
        assert_eq!(failed.render().matches("Cannot allocate memory").count(), 1);
    }

    #[test]
    fn agent_cache_unwritable__then_cause_once_then_the_fix() {
        let cause = std::io::Error::from_raw_os_error(libc::EROFS);
        let e: CliError = Start::Agent(Agent::Write(cause.into())).into();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.render(),
            "cannot write the agent library to the cache: Read-only file system (os error 30); \
             point XDG_CACHE_HOME at a writable directory"
        );
    }
}
