//! Command-line arguments: what the user may say, with each flag's meaning and default, and the
//! validation that turns bad input into a one-line error before anything runs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The default output directory, shared by the users of the machine: each records into a private
/// `<user>` directory under it.
pub const DEFAULT_OUTPUT: &str = "/tmp/ada_traces";
/// The default number of stack bytes captured per detail event (seed 001).
pub const DEFAULT_STACK_BYTES: u16 = 128;
/// The most stack bytes a detail event may capture (seed 001).
pub const MAX_STACK_BYTES: u16 = 512;

/// A lossless function-call tracer for Linux.
///
/// Records every call and return of a program built with -finstrument-functions, -pg,
/// -pg -mfentry or -fpatchable-function-entry (Rust: nightly -Z instrument-mcount or
/// -Z patchable-function-entry) into per-thread trace files, and reads them back as a call tree,
/// a per-function report or a Perfetto timeline.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about, long_about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a program under the tracer and record it until it ends or you stop the trace.
    #[command(
        after_help = "Examples:\n  tracer spawn ./app\n  tracer spawn --duration 2.5 ./server -- --port 8080"
    )]
    Spawn(SpawnArgs),
    /// Join a running process, record it, and leave it running unharmed.
    Attach(AttachArgs),
    /// Show what a recorded session holds: target, duration, threads, accounting, files.
    Info(SessionArg),
    /// Print the call tree of each thread with durations.
    Replay(ReplayArgs),
    /// Print per-function statistics: calls, total time, self time, average.
    Report(ReportArgs),
    /// Convert a session for other tools (Chrome trace-event JSON for Perfetto and chrome://tracing).
    Export(ExportArgs),
}

/// Options shared by the recording subcommands.
#[derive(Debug, Clone, Args)]
pub struct RecordOptions {
    /// Directory the session is written under (as session_<date>_<time>/pid_<pid>/)
    /// [default: /tmp/ada_traces/<user>, private to you].
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// Stop recording after this many seconds (fractions allowed); 0 records until the target
    /// ends or you press Ctrl-C.
    #[arg(long, short, value_name = "SECONDS", default_value = "0", value_parser = parse_duration,
          allow_negative_numbers = true)]
    pub duration: f64,

    /// Bytes of the stack captured with each detail event, 0 to 512.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_STACK_BYTES, value_parser = parse_stack_bytes,
          allow_negative_numbers = true)]
    pub stack_bytes: u16,

    /// Mark detail windows when a thread calls this function (repeatable): symbol=<name>.
    /// Implies --detail.
    #[arg(long, value_name = "symbol=NAME", value_parser = parse_trigger)]
    pub trigger: Vec<Trigger>,

    /// Also keep a flight recorder of registers and stack bytes for every call (about 55 ns more
    /// per call); marked windows, and the last window of each thread if the target crashes, are
    /// saved to detail.atf.
    #[arg(long)]
    pub detail: bool,

    /// Record only the target process: its fork children, and the programs they exec, run
    /// untraced. By default each gets its own pid_<pid> directory in the session.
    #[arg(long)]
    pub no_follow: bool,

    /// Which calls into shared libraries to record (through the GOT, no rebuild needed): none,
    /// those made by the program's executable, or those made by every loaded library too.
    #[arg(long, value_name = "SCOPE", value_enum, default_value_t = LibraryCalls::Main,
          env = "TRACER_LIBRARY_CALLS", hide_env_values = true)]
    pub library_calls: LibraryCalls,

    /// How each thread's calls and returns are written: atc (compact, 2 to 3 bytes an event) or
    /// atf2 (ATF v2 index.atf, 32 bytes an event, for tools that read that format).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = TraceFormat::Atc,
          hide_possible_values = true)]
    pub format: TraceFormat,
}

/// On-disk encodings of a thread's events (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceFormat {
    /// ATC, `index.atc` (docs/atc.md): the default.
    Atc,
    /// ATF v2, `index.atf`.
    Atf2,
}

impl From<TraceFormat> for atf::EventFormat {
    fn from(f: TraceFormat) -> Self {
        match f {
            TraceFormat::Atc => atf::EventFormat::Atc,
            TraceFormat::Atf2 => atf::EventFormat::Atf2,
        }
    }
}

/// `--library-calls`: whose calls into shared libraries are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LibraryCalls {
    /// Only instrumented functions.
    None,
    /// Calls made by the main executable.
    Main,
    /// Calls made by the executable and every library it loads.
    All,
}

impl From<LibraryCalls> for registry::LibraryCalls {
    fn from(scope: LibraryCalls) -> Self {
        match scope {
            LibraryCalls::None => registry::LibraryCalls::None,
            LibraryCalls::Main => registry::LibraryCalls::Main,
            LibraryCalls::All => registry::LibraryCalls::All,
        }
    }
}

/// `tracer spawn`.
#[derive(Debug, Args)]
pub struct SpawnArgs {
    /// Recording options.
    #[command(flatten)]
    pub record: RecordOptions,

    /// The program to run (a path, or a name looked up in PATH), then its arguments, passed as
    /// typed: options after the program are the program's (the tracer's go before it). A `--`
    /// before the program, or right after it, is optional and not passed on.
    #[arg(
        value_name = "PROGRAM [ARGS]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    command: Vec<OsString>,

    /// The program, found by [`SpawnArgs::resolve`].
    #[arg(skip)]
    pub executable: PathBuf,

    /// Its arguments, set by [`SpawnArgs::resolve`].
    #[arg(skip)]
    pub args: Vec<OsString>,
}

impl SpawnArgs {
    /// Splits the command line after the tracer's options into the program (looked up as
    /// [`parse_executable`] does) and its arguments; the error is the one-line reason.
    pub fn resolve(&mut self) -> Result<(), String> {
        let mut words = std::mem::take(&mut self.command).into_iter();
        let program = words
            .next()
            .ok_or("no program given; for example: tracer spawn ./app")?;
        let name = program.to_str().ok_or_else(|| {
            format!(
                "the program name {} is not valid UTF-8; rename the file",
                program.to_string_lossy()
            )
        })?;
        self.executable = parse_executable(name)?;
        let mut words = words.peekable();
        // `tracer spawn ./app -- args`, the form that separates the program's arguments: the
        // `--` is the tracer's, not the program's.
        words.next_if(|w| w == "--");
        self.args = words.collect();
        Ok(())
    }
}

/// `tracer attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Recording options.
    #[command(flatten)]
    pub record: RecordOptions,

    /// The process id to join.
    #[arg(value_name = "PID", value_parser = parse_pid)]
    pub pid: i32,
}

/// A session directory argument.
#[derive(Debug, Clone, Args)]
pub struct SessionArg {
    /// A session directory (session_<...> or one of its pid_<pid> directories), or the output
    /// directory it was written in when that holds no other session.
    #[arg(value_name = "SESSION")]
    pub session: PathBuf,
}

/// `tracer replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The session to read.
    #[command(flatten)]
    pub session: SessionArg,
    /// Only these threads (tids; repeatable).
    #[arg(long = "tid", value_name = "TID")]
    pub tids: Vec<u32>,
    /// Only calls of functions whose name contains this text (and what they call).
    #[arg(long = "filter", short = 'F', value_name = "NAME")]
    pub filter: Option<String>,
    /// Do not print calls deeper than this.
    #[arg(long, short = 'D', value_name = "N")]
    pub depth: Option<u32>,
    /// Do not show detail records (registers and stack bytes) under their calls.
    #[arg(long)]
    pub no_detail: bool,
    /// Name display.
    #[command(flatten)]
    pub names: NameArgs,
}

/// How function names are shown.
#[derive(Debug, Clone, Default, Args)]
pub struct NameArgs {
    /// Show whole signatures (`ns::Box<int>::get() const`) instead of short names
    /// (`ns::Box::get`).
    #[arg(long)]
    pub full_names: bool,
}

/// `tracer report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The session to read.
    #[command(flatten)]
    pub session: SessionArg,
    /// Sort by this column.
    #[arg(long, short, value_enum, default_value_t = SortKey::Total)]
    pub sort: SortKey,
    /// Only these threads (tids; repeatable).
    #[arg(long = "tid", value_name = "TID")]
    pub tids: Vec<u32>,
    /// Name display.
    #[command(flatten)]
    pub names: NameArgs,
}

/// Columns `tracer report` can sort by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// Total time including callees.
    Total,
    /// Time in the function itself.
    #[value(name = "self")]
    SelfTime,
    /// Number of calls.
    Calls,
    /// Average total time per call.
    Avg,
    /// Function name.
    Name,
}

/// `tracer export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The session to read.
    #[command(flatten)]
    pub session: SessionArg,
    /// The output format.
    #[arg(long, short, value_enum, default_value_t = ExportFormat::Chrome)]
    pub format: ExportFormat,
    /// Write here instead of standard output (chrome); the directory the converted session is
    /// written under (atf2, atc: required).
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Name display.
    #[command(flatten)]
    pub names: NameArgs,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Chrome trace-event JSON (opens in ui.perfetto.dev and chrome://tracing).
    Chrome,
    /// A copy of the session with every thread's events in ATF v2 (`index.atf`), for readers of
    /// that format.
    Atf2,
    /// A copy of the session with every thread's events in ATC (`index.atc`).
    Atc,
}

/// A detail-window trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Mark the window when this function is called.
    Symbol(String),
}

fn parse_duration(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| {
        format!("'{s}' is not a number of seconds; use e.g. 10 or 2.5 (0 = no limit)")
    })?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!(
            "'{s}' is not a duration; use a number of seconds >= 0 (0 = no limit)"
        ));
    }
    if v > 1e9 {
        return Err(format!(
            "'{s}' seconds is too long; use at most 1e9 (or 0 = no limit)"
        ));
    }
    Ok(v)
}

fn parse_stack_bytes(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n <= u64::from(MAX_STACK_BYTES) => Ok(n as u16),
        _ => Err(format!(
            "'{s}' is out of range; use a number of bytes from 0 to {MAX_STACK_BYTES}"
        )),
    }
}

fn parse_trigger(s: &str) -> Result<Trigger, String> {
    match s.split_once('=') {
        Some(("symbol", name)) if !name.trim().is_empty() => {
            Ok(Trigger::Symbol(name.trim().to_owned()))
        }
        _ => Err(format!(
            "'{s}' is not a trigger; use symbol=<function name>"
        )),
    }
}

fn parse_pid(s: &str) -> Result<i32, String> {
    match s.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!(
            "'{s}' is not a process id; use a positive number (see `pgrep <name>`)"
        )),
    }
}

/// Resolves the program to run: a path (relative or absolute) must exist and be an executable
/// file; a bare name is looked up in `PATH`, like a shell would.
fn parse_executable(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("the program name is empty; give a path such as ./app".into());
    }
    if s.contains('/') {
        return check_executable(Path::new(s)).map(|()| PathBuf::from(s));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(s);
        if check_executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    if Path::new(s).exists() {
        return Err(format!(
            "'{s}' is not in PATH; to run the file in this directory, use ./{s}"
        ));
    }
    Err(format!(
        "'{s}' was not found in PATH; give the program's path, e.g. ./{s}"
    ))
}

fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{shown} does not exist; check the path"),
        std::io::ErrorKind::PermissionDenied => {
            format!("{shown} cannot be read (permission denied); check its directory's permissions")
        }
        _ => format!("{shown} cannot be read: {e}"),
    })?;
    if meta.is_dir() {
        return Err(format!(
            "{shown} is a directory, not a program; give the executable inside it"
        ));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "{shown} is not executable; run `chmod +x {shown}` or give the right file"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn duration__fractions_and_zero__then_accepted() {
        assert_eq!(parse_duration("2.5"), Ok(2.5));
        assert_eq!(parse_duration("0"), Ok(0.0));
    }

    #[test]
    fn duration__negative_nan_or_text__then_refused_with_the_fix() {
        for bad in ["-1", "NaN", "inf", "ten", ""] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("seconds"), "{bad}: {err}");
        }
    }

    #[test]
    fn stack_bytes__513__then_refused() {
        assert_eq!(parse_stack_bytes("512"), Ok(512));
        assert!(parse_stack_bytes("513").unwrap_err().contains("0 to 512"));
        assert!(parse_stack_bytes("-1").is_err());
    }

    #[test]
    fn trigger__symbol_name__then_parsed() {
        assert_eq!(
            parse_trigger("symbol=main"),
            Ok(Trigger::Symbol("main".into()))
        );
        assert!(parse_trigger("main").is_err());
        assert!(parse_trigger("symbol=").is_err());
    }

    #[test]
    fn executable__missing_or_not_executable__then_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(parse_executable(missing.to_str().unwrap())
            .unwrap_err()
            .contains("does not exist"));
        let plain = dir.path().join("data.txt");
        std::fs::write(&plain, "x").unwrap();
        assert!(parse_executable(plain.to_str().unwrap())
            .unwrap_err()
            .contains("chmod +x"));
        assert!(parse_executable(dir.path().to_str().unwrap())
            .unwrap_err()
            .contains("directory"));
        assert!(
            parse_executable("sh").is_ok(),
            "bare names are looked up in PATH"
        );
    }

    #[test]
    fn pid__not_a_number__then_refused() {
        assert_eq!(parse_pid("42"), Ok(42));
        assert!(parse_pid("abc").is_err());
        assert!(parse_pid("0").is_err());
    }

    #[test]
    fn cli__definition__then_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
