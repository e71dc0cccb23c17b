//! The readers on a real recording that was damaged afterwards: a flipped byte is reported with
//! the file and the byte range (before the rows by `report` and `info`; after the trees by
//! `replay`, which checks the events as it shows them, and says so on stderr), and a FIFO in place
//! of a trace file is refused at once instead of blocking the reader.
#![allow(non_snake_case)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Records the workload (one worker) and returns the session and the worker's index file.
fn recorded(out: &Path) -> (PathBuf, PathBuf) {
    let result = run(&[
        "spawn",
        "--output",
        out.to_str().unwrap(),
        app().to_str().unwrap(),
        "--",
        "1",
        "50",
    ]);
    assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
    let dir = session_dir(out);
    let session = atf::Session::open(&dir).unwrap();
    assert!(session.warnings.is_empty(), "{:?}", session.warnings);
    let worker = session
        .threads
        .iter()
        .max_by_key(|t| t.index.event_count())
        .unwrap();
    (dir.clone(), worker.index.path().to_path_buf())
}

/// Runs the tracer with `args`, killing it if it takes longer than 20 s.
fn run_with_watchdog(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = tracer()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("tracer {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn readers__one_byte_of_an_event_flipped__then_warning_names_file_and_range() {
    let tmp = output_dir();
    let (dir, index) = recorded(tmp.path());
    let mut bytes = std::fs::read(&index).unwrap();
    // ATC: a byte in the middle of the first chunk's payload (the chunk's 56-byte header follows
    // the file's 64; its payload length is at bytes 4..8 of it, and depends on how many events
    // the drain's first pass found). The chunk fails its checksum and is reported from its first
    // byte on.
    let payload_len = u32::from_le_bytes(bytes[64 + 4..64 + 8].try_into().unwrap()) as usize;
    assert!(payload_len > 0);
    let at = 64 + 56 + payload_len / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&index, &bytes).unwrap();
    let names_the_damage = |line: &str| {
        line.starts_with("# warning: damaged: ")
            && line.contains(&*index.to_string_lossy())
            && line.contains("bytes 64..")
            && line.contains("checksum mismatch")
    };
    let (code, stdout, stderr) = run_with_watchdog(&["report", dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(names_the_damage(first), "{stdout}");

    let (code, stdout, stderr) = run_with_watchdog(&["replay", dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(names_the_damage(last), "{stdout}");
    assert!(
        stderr.contains(
            "1 warning follows the call trees (the events are checked as they are shown)"
        ),
        "{stderr}"
    );
    // The damaged chunk's events are not shown: fewer than the worker's 50 calls of top().
    assert!(stdout.matches("top() {").count() < 50, "{stdout}");

    let (code, info, _) = run_with_watchdog(&["info", dir.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(info.contains("checksum mismatch"), "{info}");
}

#[test]
fn readers__fifo_in_place_of_a_trace_file__then_refused_at_once_naming_it() {
    let tmp = output_dir();
    let (dir, index) = recorded(tmp.path());
    std::fs::remove_file(&index).unwrap();
    let c = std::ffi::CString::new(index.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for command in ["info", "replay", "report", "export"] {
        let (code, stdout, stderr) = run_with_watchdog(&[command, dir.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{command}: {stderr}");
        let said = format!("{stdout}{stderr}");
        assert!(
            said.contains("is a FIFO, not a regular file"),
            "{command}: {said}"
        );
        assert!(
            said.contains(&*index.to_string_lossy()),
            "{command}: {said}"
        );
    }
}
