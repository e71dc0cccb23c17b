//! The crate's error type, and the one-line rendering of an error with its causes.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::io;

/// Everything that can go wrong in this crate. The messages say what failed; the OS error or the
/// pipeline's own error is the [`source`](StdError::source), rendered after the message by
/// [`error_chain`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The wake eventfd could not be created.
    #[error("cannot create the shutdown eventfd (raise the open-file limit, e.g. `ulimit -n`)")]
    WakeFd(#[source] io::Error),
    /// Waiting on or draining the wake eventfd failed.
    #[error("cannot wait on the shutdown eventfd")]
    Wait(#[source] io::Error),
    /// `sigaction` refused our handler.
    #[error("cannot install the {signal} handler")]
    Install {
        /// The signal's name.
        signal: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `sigaction` refused to put the original handler back.
    #[error("cannot restore the original {signal} handler")]
    Restore {
        /// The signal's name.
        signal: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A second installation while the first guard is alive.
    #[error(
        "shutdown signal handlers are already installed; restore or drop the first SignalGuard \
         before installing again"
    )]
    AlreadyInstalled,
    /// [`Shutdown::execute`](crate::Shutdown::execute) was called twice.
    #[error("the shutdown phases already ran; call Shutdown::execute once per shutdown")]
    AlreadyExecuted,
    /// A [`Pipeline`](crate::Pipeline) phase failed: the pipeline's own error, kept whole (its
    /// message and its causes), or a message when there is no error value.
    #[error(transparent)]
    Phase(Box<dyn StdError + Send + Sync + 'static>),
}

impl Error {
    /// A phase failure, for [`Pipeline`](crate::Pipeline) implementations: an error value (kept
    /// with its causes) or a message (`&str`, `String`).
    pub fn phase(cause: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Error::Phase(cause.into())
    }
}

/// `error` on one line: its message, then each cause in turn, `: `-separated (the first line of
/// each). A cause whose text the line already holds is not repeated, so an error whose message
/// spells out its cause still reads once.
///
/// ```
/// use std::io;
/// let e = shutdown::Error::Install {
///     signal: "SIGINT",
///     source: io::Error::from_raw_os_error(libc::EPERM),
/// };
/// assert_eq!(
///     shutdown::error_chain(&e),
///     "cannot install the SIGINT handler: Operation not permitted (os error 1)"
/// );
/// ```
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let first_line = |e: &dyn StdError| {
        let text = e.to_string();
        text.lines().next().unwrap_or("").to_owned()
    };
    let mut line = first_line(error);
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = first_line(e);
        if !text.is_empty() && !line.contains(&text) {
            let _ = write!(line, ": {text}");
        }
        cause = e.source();
    }
    if line.is_empty() {
        line.push_str("failed");
    }
    line
}
