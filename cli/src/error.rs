//! The binary's one error type, mapped to exit codes in one place ([`CliError::exit_code`]).

use std::fmt;

/// A failure the user sees as one line on stderr.
#[derive(Debug)]
pub enum CliError {
    /// The user asked for something that cannot work (exit 2): a bad argument, a missing file,
    /// an output directory that cannot be written.
    Usage(String),
    /// The tracer itself failed while running (exit 1).
    Runtime(String),
}

impl CliError {
    /// Exit status: 2 for bad input, 1 for run-time failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }

    /// A bad-input error.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::Usage(message.into())
    }

    /// A run-time error.
    pub fn runtime(message: impl Into<String>) -> Self {
        CliError::Runtime(message.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = match self {
            CliError::Usage(m) | CliError::Runtime(m) => m,
        };
        // One line, always: the first line of whatever the cause said.
        f.write_str(message.lines().next().unwrap_or("failed"))
    }
}

impl std::error::Error for CliError {}

impl From<atf::Error> for CliError {
    fn from(e: atf::Error) -> Self {
        CliError::Runtime(e.to_string())
    }
}
