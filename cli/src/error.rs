//! The binary's one error type, mapped to exit codes in one place ([`CliError::exit_code`]), and
//! printed with its chain of causes in one place ([`CliError::render`]).

/// The error that caused a [`CliError`], kept typed (for its own chain of causes) instead of
/// flattened into the message.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure the user sees as one line on stderr: what the tracer was doing, then each cause.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A session could not be read or written (exit 1).
    #[error(transparent)]
    Session(#[from] atf::Error),
    /// The shutdown machinery failed (exit 1).
    #[error(transparent)]
    Shutdown(#[from] shutdown::Error),
    /// A command's own typed refusal or failure (as `attach`'s), with its exit status.
    #[error(transparent)]
    Refused(Refusal),
}

/// A command's own error type (kept typed: [`Refusal::error`] downcasts to it), with the exit
/// status it maps to; its message and causes are its own.
#[derive(Debug)]
pub struct Refusal {
    error: Cause,
    exit_code: u8,
    fix: Option<String>,
}

impl Refusal {
    /// `error`, exiting with `exit_code`.
    pub fn new(error: impl Into<Cause>, exit_code: u8) -> Self {
        Refusal {
            error: error.into(),
            exit_code,
            fix: None,
        }
    }

    /// The same, with the fix printed after the error's causes.
    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    /// The typed error (to downcast).
    #[cfg(test)]
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl CliError {
    /// Exit status: 2 for bad input, 1 for run-time failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Session(_) | CliError::Shutdown(_) => 1,
            CliError::Refused(refusal) => refusal.exit_code,
        }
    }

    /// The one line the user sees: the message, then each cause, `: `-separated, then the fix
    /// if it comes after the causes.
    pub fn render(&self) -> String {
        match self {
            CliError::Refused(Refusal { fix: Some(fix), .. }) => format!("{}; {fix}", chain(self)),
            _ => chain(self),
        }
    }
}

/// `error` and its causes on one line (see [`shutdown::error_chain`]), for messages that go on
/// after the cause or are kept as text.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    shutdown::error_chain(error)
}
