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
}

impl From<Start> for CliError {
    fn from(start: Start) -> Self {
        let exit_code = if matches!(start, Start::Duration(_)) {
            2
        } else {
            1
        };
        CliError::Refused(Refusal::new(start, exit_code))
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
        }
    }
}

impl From<Output> for CliError {
    fn from(output: Output) -> Self {
        let fix = output.fix();
        CliError::Refused(Refusal::new(output, 2).with_fix(fix))
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
}
