//! A user who ran `tracer spawn -o out ./app` and then types `tracer report out`: the readers
//! take an output directory for its only session (saying which on stderr), refuse one with several
//! in a line naming the newest and how to pick, and say when a directory holds none. The default
//! output directory (`/tmp/ada_traces/<user>`, and `/tmp/ada_traces` itself) behaves the same;
//! that test needs root to give itself a private `/tmp`, and skips saying so without it.
#![allow(non_snake_case)]

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Every reading command, with the arguments that make it print to stdout.
const READERS: [&[&str]; 4] = [
    &["info"],
    &["replay"],
    &["report"],
    &["export", "--format", "chrome"],
];

/// `tracer spawn [-o out] app 1 10`, as typed; returns the session it wrote.
fn record(out: Option<&Path>) -> PathBuf {
    let before = sessions(out.unwrap_or(&own_default_dir()));
    let mut command = tracer();
    command.arg("spawn");
    if let Some(out) = out {
        command.arg("-o").arg(out);
    }
    let done = command
        .arg(app())
        .args(["1", "10"])
        .output()
        .expect("the tracer runs");
    assert_eq!(done.status.code(), Some(0), "{}", stderr(&done));
    let after = sessions(out.unwrap_or(&own_default_dir()));
    let new: Vec<_> = after.into_iter().filter(|s| !before.contains(s)).collect();
    assert_eq!(new.len(), 1, "one new session: {new:?}");
    new.into_iter().next().unwrap()
}

/// The `session_*` directories in `dir`.
fn sessions(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("session_")
        })
        .collect()
}

fn own_default_dir() -> PathBuf {
    Path::new("/tmp/ada_traces").join(user_name())
}

fn user_name() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn read(command: &[&str], path: &Path) -> std::process::Output {
    let mut args = command.to_vec();
    args.push(path.to_str().unwrap());
    run(&args)
}

/// Every reader given `output` prints what it prints for `session`, after one line on stderr
/// naming the session it chose.
fn assert_reads_only_session(output: &Path, session: &Path, named_output: &Path) {
    for command in READERS {
        let via_output = read(command, output);
        let direct = read(command, session);
        let err = stderr(&via_output);
        assert_eq!(via_output.status.code(), Some(0), "{command:?}: {err}");
        assert_eq!(
            err,
            format!(
                "tracer: reading {}, the only session in {}\n",
                session.display(),
                named_output.display()
            ),
            "{command:?}"
        );
        assert!(!via_output.stdout.is_empty(), "{command:?}");
        assert_eq!(via_output.stdout, direct.stdout, "{command:?}");
    }
}

/// Every reader given `given` exits 2 with one line naming the output directory `output`,
/// listing `newest_first` and naming the newest as the one to pass.
fn assert_refused_listing(given: &Path, output: &Path, newest_first: &[PathBuf]) {
    let names: Vec<String> = newest_first
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let want = format!(
        "tracer: {}: an output directory with {} sessions (newest first: {}); pass the one to \
         read, e.g. {}\n",
        output.display(),
        names.len(),
        names.join(", "),
        newest_first[0].display()
    );
    for command in READERS {
        let out = read(command, given);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), want, "{command:?}");
        assert!(out.stdout.is_empty(), "{command:?}");
    }
}

#[test]
fn reading__output_directory_with_one_session__then_that_session_named_on_stderr() {
    let out = output_dir();
    let session = record(Some(out.path()));
    assert_reads_only_session(out.path(), &session, out.path());
}

#[test]
fn reading__output_directory_with_three_sessions__then_one_line_naming_them_newest_first() {
    let out = output_dir();
    let made: Vec<PathBuf> = (0..3).map(|_| record(Some(out.path()))).collect();
    let newest_first: Vec<PathBuf> = made.into_iter().rev().collect();
    assert_refused_listing(out.path(), out.path(), &newest_first);
    // The session it names works as given.
    let report = read(&["report"], &newest_first[0]);
    assert_eq!(report.status.code(), Some(0), "{}", stderr(&report));
}

#[test]
fn reading__directory_without_sessions__then_says_there_is_none() {
    let out = output_dir();
    for command in READERS {
        let done = read(command, out.path());
        let err = stderr(&done);
        assert_eq!(done.status.code(), Some(2), "{command:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "tracer: {}: no session here",
                out.path().display()
            )),
            "{err}"
        );
    }
}

#[test]
fn reading__default_output_directory__then_as_any_output_directory() {
    if !in_private_tmp("reading__default_output_directory__then_as_any_output_directory") {
        return;
    }
    let own = own_default_dir();
    let root = Path::new("/tmp/ada_traces");
    let first = record(None);
    assert_eq!(first.parent().unwrap(), own);
    assert_reads_only_session(&own, &first, &own);
    // `/tmp/ada_traces` itself means the user's own directory in it.
    assert_reads_only_session(root, &first, &own);
    let second = record(None);
    assert_refused_listing(&own, &own, &[second.clone(), first.clone()]);
    assert_refused_listing(root, &own, &[second, first]);
}
