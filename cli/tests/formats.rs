//! The two event formats end to end: ATC by default, ATF v2 with `--format atf2`, conversion
//! either way with `tracer export --format`, every reader on both, and a tracer killed with
//! SIGKILL at any moment leaving a readable session in either format.
#![allow(non_snake_case)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Records `app 2 300` (2 workers, 300 iterations each) with `extra` flags; returns the session.
fn record(out: &Path, extra: &[&str]) -> PathBuf {
    let mut args = vec!["spawn", "--output", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let app = app();
    args.extend_from_slice(&[app.to_str().unwrap(), "--", "2", "300"]);
    let result = run(&args);
    assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
    session_dir(out)
}

/// The event file names of every thread directory of `session`.
fn event_files(session: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for thread in std::fs::read_dir(session).unwrap() {
        let thread = thread.unwrap().path();
        if !thread.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&thread).unwrap() {
            let name = file.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with("index.") {
                names.push(name);
            }
        }
    }
    names
}

/// Whether the session under `out` has written its first manifest (it is readable from then on).
fn has_manifest(out: &Path) -> bool {
    let pid_dirs = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten());
    for pid in pid_dirs {
        if pid.path().join("manifest.json").exists() {
            return true;
        }
    }
    false
}

/// Standard output of `tracer <args>`, which must succeed.
fn stdout_of(args: &[&str]) -> String {
    let result = run(args);
    assert_eq!(
        result.status.code(),
        Some(0),
        "{args:?}: {}",
        stderr(&result)
    );
    String::from_utf8_lossy(&result.stdout).into_owned()
}

#[test]
fn spawn__default_and_format_atf2__then_index_atc_or_index_atf_and_every_reader_reads_both() {
    let tmp = output_dir();
    for (flags, file, magic) in [
        (&[][..], "index.atc", b"ATC1"),
        (&["--format", "atf2"][..], "index.atf", b"ATI2"),
    ] {
        let out = tmp.path().join(file);
        let session = record(&out, flags);
        let files = event_files(&session);
        assert!(!files.is_empty());
        assert!(files.iter().all(|f| f == file), "{files:?}");
        let (opened, threads) = check_session(&session);
        assert!(opened.warnings.is_empty(), "{:?}", opened.warnings);
        let leaves: u64 = threads
            .iter()
            .map(|t| t.by_name.get("leaf").copied().unwrap_or(0))
            .sum();
        assert_eq!(leaves, 2 * 300 * 2);
        for t in &opened.threads {
            let bytes = std::fs::read(t.index.path()).unwrap();
            assert_eq!(&bytes[..4], magic);
            assert!(t.index.finished());
        }
        let dir = session.to_str().unwrap();
        assert!(stdout_of(&["info", dir]).contains(file));
        assert!(stdout_of(&["replay", dir]).contains("leaf"));
        assert!(stdout_of(&["report", dir]).contains("leaf"));
        assert!(stdout_of(&["export", dir]).contains("\"leaf\""));
    }
}

#[test]
fn export__format_atf2_then_atc__then_same_events_and_same_replay_as_recorded() {
    let tmp = output_dir();
    let recorded = record(&tmp.path().join("rec"), &[]);
    let v2_out = tmp.path().join("v2");
    let said = stdout_of(&[
        "export",
        recorded.to_str().unwrap(),
        "--format",
        "atf2",
        "--output",
        v2_out.to_str().unwrap(),
    ]);
    assert!(said.contains("(atf2)"), "{said}");
    let v2 = session_dir(&v2_out);
    assert!(event_files(&v2).iter().all(|f| f == "index.atf"));
    let back_out = tmp.path().join("back");
    stdout_of(&[
        "export",
        v2.to_str().unwrap(),
        "--format",
        "atc",
        "--output",
        back_out.to_str().unwrap(),
    ]);
    let back = session_dir(&back_out);
    assert!(event_files(&back).iter().all(|f| f == "index.atc"));

    let events = |dir: &Path| -> Vec<Vec<atf::IndexEvent>> {
        let s = atf::Session::open(dir).unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        s.threads
            .iter()
            .map(|t| t.index.events().map(Result::unwrap).collect())
            .collect()
    };
    assert_eq!(events(&recorded), events(&v2));
    assert_eq!(events(&recorded), events(&back));
    let replay = |dir: &Path| stdout_of(&["replay", dir.to_str().unwrap()]);
    assert_eq!(replay(&recorded), replay(&v2));
    assert_eq!(replay(&recorded), replay(&back));
}

#[test]
fn export__format_atf2_of_a_damaged_chunk__then_not_converted_naming_the_chunk_and_warned() {
    let tmp = output_dir();
    let recorded = record(&tmp.path().join("rec"), &[]);
    let session = atf::Session::open(&recorded).unwrap();
    let index = session
        .threads
        .iter()
        .max_by_key(|t| t.index.event_count())
        .unwrap()
        .index
        .path()
        .to_path_buf();
    // A byte of the first chunk's payload (after the file's 64-byte header and the chunk's 56).
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[64 + 56 + 2] ^= 0x10;
    std::fs::write(&index, bytes).unwrap();
    let out = tmp.path().join("v2");
    let result = run(&[
        "export",
        recorded.to_str().unwrap(),
        "--format",
        "atf2",
        "--output",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("tracer: the session was not converted"),
        "{err}"
    );
    assert!(
        last.contains("the chunk at offset 64: checksum mismatch"),
        "{err}"
    );
    assert!(last.contains(&*index.to_string_lossy()), "{err}");
}

#[test]
fn export__format_atf2_without_output__then_usage_error_naming_the_fix() {
    let tmp = output_dir();
    let recorded = record(tmp.path(), &[]);
    let result = run(&["export", recorded.to_str().unwrap(), "--format", "atf2"]);
    assert_eq!(result.status.code(), Some(2));
    let err = stderr(&result);
    assert!(err.contains("--output DIR"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn spawn__tracer_sigkilled_at_any_moment__then_every_session_readable_undamaged_and_whole() {
    let _heavy = heavy();
    // Kill points spread over the first half second of a spinning 2-thread recording, where
    // chunks are being sealed, files created and the manifest rewritten.
    for (i, delay_ms) in [0u64, 3, 17, 60, 150, 400].into_iter().enumerate() {
        for format in ["atc", "atf2"] {
            let tmp = output_dir();
            let out = tmp.path();
            let mut tracer = Background(Some(
                tracer()
                    .args(["spawn", "--format", format, "--output"])
                    .arg(out)
                    .arg(app())
                    .args(["--", "2", "0", "spin"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            ));
            let deadline = Instant::now() + Duration::from_secs(20);
            while !has_manifest(out) {
                assert!(Instant::now() < deadline, "no session appeared");
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(delay_ms + i as u64));
            let mut child = tracer.0.take().unwrap();
            child.kill().unwrap();
            child.wait().unwrap();
            let case = format!("{format}, killed {delay_ms} ms in");
            let session = atf::Session::open(session_dir(out)).expect(&case);
            // The target outlives its killed tracer: stop it before any assertion.
            // SAFETY: signalling the target this test started (through the tracer).
            unsafe { libc::kill(session.manifest.target_pid as i32, libc::SIGKILL) };
            for w in &session.warnings {
                assert!(
                    // A thread that started after the last manifest was written is unlisted.
                    matches!(
                        w,
                        atf::Warning::Unfinished
                            | atf::Warning::FileRecovered { .. }
                            | atf::Warning::UnlistedThread { .. }
                    ),
                    "{case}: {w}"
                );
            }
            for t in &session.threads {
                let mut n = 0u64;
                for e in t.index.events() {
                    let e = e.unwrap_or_else(|e| panic!("{case}: {e}"));
                    assert_eq!(e.thread_id, t.id, "{case}");
                    n += 1;
                }
                assert_eq!(n, t.index.event_count(), "{case}");
            }
            let dir = session.dir.to_str().unwrap().to_owned();
            for command in ["info", "replay", "report", "export"] {
                let result = run(&[command, &dir]);
                assert_eq!(
                    result.status.code(),
                    Some(0),
                    "{case}: {command}: {}",
                    stderr(&result)
                );
            }
        }
    }
}
