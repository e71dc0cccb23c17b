//! Reading sessions back: `info`, `replay`, `report` and `export`, in the spirit of uftrace's commands.
//!
//! Every reader verifies what it reads (checksums, headers, every event): `info` when it opens the
//! session (`atf::Session::open`); `report`, `replay` and `export` in their own pass over the
//! events (`atf::Session::open_deferred`, [`pass`]), so the files are read once. The warnings
//! known on opening come first in every output; those a pass finds come where the reader has
//! them, in the same order as `open` gives them (see [`report()`], [`replay()`], [`export()`]).
//! Every reader streams: it walks each thread's events
//! once, front to back, holding only the open call stack of that thread (and, for `report`, one
//! row per function). Every string from the session is printed with its control characters
//! escaped ([`text`]). Streams that start or
//! end mid-call are normal (attach, a stop signal): [`frames::Walker`] pairs calls with returns and
//! says which frames have no call or no return. A closed standard output (`tracer replay s | head`)
//! ends the command quietly.

mod chrome;
mod detail;
mod failure;
mod find;
mod frames;
mod info;
mod names;
mod pass;
mod replay;
mod report;
mod text;
mod time;

#[cfg(test)]
mod corruption;
#[cfg(test)]
mod testing;

use std::io::{self, Write};

use std::path::Path;
pub(crate) use text::clean;

use crate::args::{ExportArgs, ExportFormat, ReplayArgs, ReportArgs, SessionArg};
use crate::error::CliError;
pub(crate) use failure::ReadFailure;

/// `tracer info`: what a session holds (target, times, threads, accounting, files), for each of
/// its processes.
pub fn info(args: &SessionArg, out: &mut dyn Write) -> Result<(), CliError> {
    let sessions = open_all(&args.session, Verify::AtOpen)?;
    for (n, session) in sessions.iter().enumerate() {
        if n > 0 {
            finish(writeln!(out))?;
        }
        finish(info::write(session, out))?;
    }
    Ok(())
}

/// `tracer replay`: the call tree of each thread with durations.
///
/// `replay` reads every event of the threads it shows, so it verifies them as it shows them
/// ([`atf::Session::open_deferred`]) and prints the warnings after the trees, complete then.
pub fn replay(args: &ReplayArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let mut sessions = open_all(&args.session.session, Verify::WhileReading)?;
    check_tids(&sessions, &args.tids)?;
    if args.depth == Some(0) {
        return Err(ReadFailure::DepthZero.into());
    }
    let options = replay::Options {
        tids: &args.tids,
        filter: args.filter.as_deref().filter(|f| !f.is_empty()),
        depth: args.depth.map(|d| d as usize),
        full_names: args.names.full_names,
        details: !args.no_detail,
    };
    let mut after = 0;
    let shown = for_each_process(&mut sessions, &args.tids, out, |session, out| {
        after += replay::write(session, &options, out)?;
        Ok(())
    });
    if after > 0 {
        // Said where it is seen when the output goes to a file or a pager.
        eprintln!(
            "tracer: warning: {after} warning{} follow{} the call trees (the events are checked as \
             they are shown)",
            if after == 1 { "" } else { "s" },
            if after == 1 { "s" } else { "" }
        );
    }
    shown
}

/// `tracer report`: per-function calls, total time, self time and average, sorted.
///
/// `report` reads every event of the threads it shows, and prints its rows (and the warnings
/// before them) only once it has read them all, so it verifies the events in that same pass
/// ([`atf::Session::open_deferred`]) instead of reading the files twice.
pub fn report(args: &ReportArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let mut sessions = open_all(&args.session.session, Verify::WhileReading)?;
    check_tids(&sessions, &args.tids)?;
    for_each_process(&mut sessions, &args.tids, out, |session, out| {
        report::write(session, &args.tids, args.sort, args.names.full_names, out)
    })
}

/// When a reader's sessions verify their events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    /// On opening ([`atf::Session::open`]), before the reader shows anything.
    AtOpen,
    /// In the reader's own pass over the events ([`atf::Session::open_deferred`]).
    WhileReading,
}

/// Runs `write` for each process of `sessions` that has one of `tids` (all if empty), under a
/// `# process <pid> (<executable>)` line when there are several.
fn for_each_process(
    sessions: &mut [atf::Session],
    tids: &[u32],
    out: &mut dyn Write,
    mut write: impl FnMut(&mut atf::Session, &mut dyn Write) -> io::Result<()>,
) -> Result<(), CliError> {
    let several = sessions.len() > 1;
    let chosen = sessions
        .iter_mut()
        .filter(|s| tids.is_empty() || s.threads.iter().any(|t| tids.contains(&t.id)));
    for (n, session) in chosen.enumerate() {
        if several {
            let m = &session.manifest;
            let header = format!(
                "{}# process {} ({})",
                if n > 0 { "\n" } else { "" },
                process_pid(session),
                m.executable
            );
            finish(writeln!(out, "{header}"))?;
        }
        finish(write(session, out))?;
    }
    Ok(())
}

/// A process directory's pid: its manifest's, else its name's.
fn process_pid(session: &atf::Session) -> u32 {
    match session.manifest.target_pid {
        0 => pid_in_name(&session.dir).unwrap_or(0),
        pid => pid,
    }
}

/// `1234` for `.../pid_1234`.
fn pid_in_name(dir: &Path) -> Option<u32> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("pid_")?
        .parse()
        .ok()
}

/// When the call of a return with no recorded call was made: a followed process starts inside
/// the calls its parent had open when it forked; the target, before the recording began.
pub(crate) fn orphan_origin(manifest: &atf::Manifest) -> &'static str {
    if manifest.followed_from.is_some() {
        "made in the parent before the fork"
    } else {
        "made before the recording started"
    }
}

/// Every process of the session at `path`: a `pid_<pid>` directory alone, or each `pid_<pid>`
/// directory of a `session_<...>` directory, the target first (its manifest is not marked
/// `followed_from`), then the followed processes by pid. An output directory stands for its
/// only session ([`find`]).
fn open_all(path: &Path, verify: Verify) -> Result<Vec<atf::Session>, CliError> {
    let path = &find::session_path(path)?;
    if path.join("manifest.json").exists() {
        return Ok(vec![open(path, verify)?]);
    }
    let mut dirs: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((pid_in_name(&e.path())?, e.path())))
        .filter(|(_, p)| p.join("manifest.json").exists())
        .collect();
    if dirs.len() < 2 {
        return Ok(vec![open(path, verify)?]);
    }
    dirs.sort();
    let mut sessions = dirs
        .iter()
        .map(|(_, dir)| open(dir, verify))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(target) = sessions
        .iter()
        .position(|s| s.manifest.followed_from.is_none())
    {
        let t = sessions.remove(target);
        sessions.insert(0, t);
    }
    Ok(sessions)
}

/// `tracer export`: Chrome trace-event JSON, to `args.output` if given, else to `out`.
pub fn export(args: &ExportArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let format = match args.format {
        ExportFormat::Chrome => None,
        ExportFormat::Atf2 => Some(atf::EventFormat::Atf2),
        ExportFormat::Atc => Some(atf::EventFormat::Atc),
    };
    if let Some(format) = format {
        return convert(args, format, out);
    }
    // Every event is written, so each is verified as it is written (the document's metadata, at
    // its end, lists every warning).
    let mut sessions = open_all(&args.session.session, Verify::WhileReading)?;
    warning_around(&mut sessions, |sessions| export_chrome(args, sessions, out))
}

/// Runs `read`, a pass over every event of `sessions` that verifies them, with the sessions'
/// warnings on stderr: those known before it, then those it finds (and any after them), so they
/// read in the order [`atf::Session::open`] gives.
fn warning_around<T>(
    sessions: &mut [atf::Session],
    read: impl FnOnce(&mut [atf::Session]) -> T,
) -> T {
    let settled: Vec<usize> = sessions.iter().map(|s| s.settled_warnings()).collect();
    for (session, &settled) in sessions.iter().zip(&settled) {
        for warning in warnings(session).take(settled) {
            eprintln!("tracer: warning: {warning}");
        }
    }
    let done = read(sessions);
    for (session, &settled) in sessions.iter().zip(&settled) {
        for warning in warnings(session).skip(settled) {
            eprintln!("tracer: warning: {warning}");
        }
    }
    done
}

/// Writes the Chrome trace-event document of `sessions` to `args.output` if given (and a line
/// saying so to `out`), else to `out`.
fn export_chrome(
    args: &ExportArgs,
    sessions: &mut [atf::Session],
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match &args.output {
        None => finish(chrome::write_all(sessions, args.names.full_names, out).map(|_| ())),
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|cause| ReadFailure::CreateOutput {
                path: path.clone(),
                cause,
            })?;
            let mut file = io::BufWriter::with_capacity(1 << 20, file);
            let written =
                chrome::write_all(sessions, args.names.full_names, &mut file).and_then(|n| {
                    file.flush()?;
                    Ok(n)
                });
            let count = match written {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => {
                    return Err(match into_atf_error(e) {
                        Ok(a) => ReadFailure::Read(a),
                        Err(cause) => ReadFailure::WriteExport {
                            path: path.clone(),
                            cause,
                        },
                    }
                    .into())
                }
            };
            finish(writeln!(
                out,
                "wrote {count} complete events of {} threads to {}",
                sessions.iter().map(|s| s.threads.len()).sum::<usize>(),
                path.display()
            ))
        }
    }
}

/// `tracer export --format atf2|atc`: the session written again under `--output` with every
/// thread's events in `format`.
fn convert(
    args: &ExportArgs,
    format: atf::EventFormat,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let Some(output) = &args.output else {
        let format = format.name();
        return Err(ReadFailure::NoOutputDir { format }.into());
    };
    // Every event is copied, so each is verified as it is copied; a damaged ATC chunk stops the
    // copy, as before.
    let mut sessions = open_all(&args.session.session, Verify::WhileReading)?;
    for session in &mut sessions {
        // The manifest as recorded (`open` escaped its strings for display).
        session.manifest = atf::Manifest::read(session.dir.join("manifest.json"))?;
    }
    let converted = warning_around(&mut sessions, |sessions| {
        atf::convert_session(sessions, output, format)
    });
    let done = converted.map_err(|cause| ReadFailure::NotConverted {
        cause,
        output: output.clone(),
    })?;
    finish(writeln!(
        out,
        "wrote {} events of {} threads in {} processes ({}) to {}",
        done.events,
        done.threads,
        done.pid_dirs.len(),
        format.name(),
        done.session_dir.display()
    ))
}

/// Opens the session the user named; any problem with that path is a usage error naming it.
fn open(path: &Path, verify: Verify) -> Result<atf::Session, CliError> {
    if !path.exists() {
        let path = path.to_path_buf();
        return Err(ReadFailure::NoSession { path }.into());
    }
    let opened = match verify {
        Verify::AtOpen => atf::Session::open(path),
        Verify::WhileReading => atf::Session::open_deferred(path),
    };
    let mut session = opened.map_err(ReadFailure::Unreadable)?;
    session.manifest = text::clean_manifest(&session.manifest);
    Ok(session)
}

/// The session's warnings as lines safe to print (a path may hold any byte).
fn warnings(session: &atf::Session) -> impl Iterator<Item = String> + '_ {
    session
        .warnings
        .iter()
        .map(|w| text::clean(&w.to_string()).into_owned())
}

/// Refuses `--tid` values that name no thread of the session, listing the ones it has.
fn check_tids(sessions: &[atf::Session], tids: &[u32]) -> Result<(), CliError> {
    let threads = || sessions.iter().flat_map(|s| s.threads.iter());
    for tid in tids {
        if !threads().any(|t| t.id == *tid) {
            let have = threads().map(|t| t.id).collect();
            return Err(ReadFailure::NoThread { tid: *tid, have }.into());
        }
    }
    Ok(())
}

/// Whether `tid` passes a `--tid` selection (empty = all threads).
fn selected(tids: &[u32], tid: u32) -> bool {
    tids.is_empty() || tids.contains(&tid)
}

/// An error reading the session, carried through the writers' `io::Result`.
fn input_error(e: atf::Error) -> io::Error {
    io::Error::other(e)
}

/// The session error inside an `io::Error` made by [`input_error`], or the `io::Error` itself.
fn into_atf_error(e: io::Error) -> Result<atf::Error, io::Error> {
    if !e.get_ref().is_some_and(|inner| inner.is::<atf::Error>()) {
        return Err(e);
    }
    let inner = e.into_inner().expect("checked above");
    Ok(*inner.downcast::<atf::Error>().expect("checked above"))
}

/// Maps a reader's outcome: a closed pipe is a clean stop, a session read error or an output
/// error is a run-time failure.
fn finish(result: io::Result<()>) -> Result<(), CliError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(match into_atf_error(e) {
            Ok(a) => ReadFailure::Read(a),
            Err(e) => ReadFailure::WriteOutput(e),
        }
        .into()),
    }
}

/// First and last timestamps of the session: the manifest's range widened by every thread's.
fn time_span(session: &atf::Session) -> (u64, u64) {
    let m = &session.manifest;
    let mut start = if m.time_start_ns != 0 {
        m.time_start_ns
    } else {
        u64::MAX
    };
    let mut end = m.time_end_ns;
    for t in &session.threads {
        if t.index.event_count() > 0 {
            let (s, e) = t.index.time_range();
            start = start.min(s);
            end = end.max(e);
        }
    }
    if start == u64::MAX {
        start = end;
    }
    (start, end.max(start))
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::args::{ExportFormat, SortKey};

    /// `tracer replay` of `s` with no option.
    fn replay_args(s: &TestSession) -> ReplayArgs {
        ReplayArgs {
            session: s.arg(),
            tids: vec![],
            filter: None,
            depth: None,
            no_detail: false,
            names: Default::default(),
        }
    }

    #[test]
    fn open__missing_path__then_usage_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no_such_session");
        let args = SessionArg {
            session: missing.clone(),
        };
        let err = info(&args, &mut Vec::new()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(msg.contains(&*missing.to_string_lossy()), "{msg}");
        assert!(msg.contains("pass a session_"), "{msg}");
    }

    #[test]
    fn open__directory_without_session__then_usage_error_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let args = ReportArgs {
            session: SessionArg {
                session: dir.path().to_path_buf(),
            },
            sort: SortKey::Total,
            tids: vec![],
            names: Default::default(),
        };
        let err = report(&args, &mut Vec::new()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("no manifest.json"), "{err}");
    }

    #[test]
    fn open__output_directory_with_one_session__then_reads_that_session() {
        let s = TestSession::build(&[(7, simple_tree(1_000))], true);
        let args = SessionArg {
            session: s.dir.path().to_path_buf(),
        };
        let (mut via_output, mut direct) = (Vec::new(), Vec::new());
        info(&args, &mut via_output).unwrap();
        info(&s.arg(), &mut direct).unwrap();
        assert_eq!(
            String::from_utf8(via_output).unwrap(),
            String::from_utf8(direct).unwrap()
        );
    }

    /// A killed session of several threads, one chunk damaged: every note about the files
    /// (the session and each thread's file not finished) comes before the trees, the damage the
    /// pass over the events finds after them, all in the order `tracer info` gives.
    #[test]
    fn replay__killed_session_with_a_damaged_chunk__then_warnings_in_opening_order_around_the_trees(
    ) {
        let s = TestSession::build(&[(7, simple_tree(1_000)), (8, simple_tree(5_000))], false);
        // A byte of thread 7's first chunk's payload (after the file's 64-byte header and the
        // chunk's 56): its checksum fails.
        let path = s.layout.index_path(7);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[64 + 56 + 2] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let opened: Vec<String> = warnings(&s.open()).collect();
        let args = replay_args(&s);
        let mut out = Vec::new();
        replay(&args, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let said: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# warning: "))
            .collect();
        assert_eq!(said, opened, "{text}");
        let (before, after) = text.split_once("# DURATION").unwrap();
        // Known on opening: the session and every thread's file were not finished.
        assert!(before.contains("the session was not finished"), "{text}");
        for tid in [7, 8] {
            assert!(
                before.contains(&format!(
                    "thread_{tid}/index.atc: the file was not finished"
                )),
                "{text}"
            );
        }
        // Found by the pass.
        assert!(after.contains("checksum mismatch"), "{text}");
        assert!(!after.contains("not finished"), "{text}");
    }

    #[test]
    fn replay__unknown_tid__then_usage_error_listing_threads() {
        let s = TestSession::build(&[(7, simple_tree(1_000))], true);
        let args = ReplayArgs {
            tids: vec![8],
            ..replay_args(&s)
        };
        let err = replay(&args, &mut Vec::new()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("its threads are 7"), "{err}");
    }

    #[test]
    fn replay__depth_zero__then_usage_error() {
        let s = TestSession::build(&[(7, simple_tree(1_000))], true);
        let args = ReplayArgs {
            depth: Some(0),
            ..replay_args(&s)
        };
        assert_eq!(replay(&args, &mut Vec::new()).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn replay__stdout_closed__then_clean_stop() {
        let s = TestSession::build(&[(7, simple_tree(1_000))], true);
        let args = replay_args(&s);
        let mut closed = ClosedPipe::default();
        replay(&args, &mut closed).unwrap();
        assert_eq!(closed.writes, 1, "stops at the first failed write");
        let args = ReportArgs {
            session: s.arg(),
            sort: SortKey::Total,
            tids: vec![],
            names: Default::default(),
        };
        report(&args, &mut ClosedPipe::default()).unwrap();
        info(&s.arg(), &mut ClosedPipe::default()).unwrap();
        let args = ExportArgs {
            session: s.arg(),
            format: ExportFormat::Chrome,
            output: None,
            names: Default::default(),
        };
        export(&args, &mut ClosedPipe::default()).unwrap();
    }

    #[test]
    fn export__output_file__then_json_written_there_and_a_note_on_stdout() {
        let s = TestSession::build(&[(7, simple_tree(1_000))], true);
        let file = s.dir.path().join("trace.json");
        let args = ExportArgs {
            session: s.arg(),
            format: ExportFormat::Chrome,
            output: Some(file.clone()),
            names: Default::default(),
        };
        let mut out = Vec::new();
        export(&args, &mut out).unwrap();
        let note = String::from_utf8(out).unwrap();
        assert!(
            note.starts_with("wrote 3 complete events of 1 threads"),
            "{note}"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert!(json["traceEvents"].is_array());
    }

    #[test]
    fn export__output_in_missing_directory__then_usage_error() {
        let s = TestSession::build(&[(7, simple_tree(1_000))], true);
        let args = ExportArgs {
            session: s.arg(),
            format: ExportFormat::Chrome,
            output: Some(s.dir.path().join("nope/trace.json")),
            names: Default::default(),
        };
        let err = export(&args, &mut Vec::new()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("nope/trace.json"), "{err}");
    }

    #[test]
    fn readers__recursion_40000_deep__then_report_and_export_complete_without_panic() {
        use atf::EventKind::{Call, Return};
        let depth = 40_000u64;
        let mut events: Vec<Ev> = (0..depth).map(|i| (Call, FIB, i)).collect();
        events.extend((0..depth).map(|i| (Return, FIB, depth + i)));
        let s = TestSession::build(&[(7, events)], true);
        let mut out = Vec::new();
        let args = ReportArgs {
            session: s.arg(),
            sort: SortKey::Total,
            tids: vec![],
            names: Default::default(),
        };
        report(&args, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("40000"), "every call counted: {text}");
        let mut out = Vec::new();
        let args = ExportArgs {
            session: s.arg(),
            format: ExportFormat::Chrome,
            output: None,
            names: Default::default(),
        };
        export(&args, &mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let events = json["traceEvents"].as_array().unwrap();
        assert!(events.len() as u64 >= depth, "{}", events.len());
    }
}
