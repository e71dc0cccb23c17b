//! The disk says no while recording: a file-size limit (`ulimit -f`) and a full disk (a 2 MiB
//! tmpfs, which needs root to mount; skipped with a note otherwise). Each ends with exit 1 and
//! one line naming the cause, a finished manifest whose accounting balances with the unwritten
//! events counted as `not_written`, and a summary that counts what is on disk.
#![allow(non_snake_case)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// A program that writes `argv[1]` MiB to the file `argv[2]`, uninstrumented.
const WRITER_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    FILE *f = fopen(argv[2], "w");
    static char buf[1 << 20];
    for (long i = 0; i < atol(argv[1]); i++) fwrite(buf, 1, sizeof buf, f);
    fclose(f);
    return 0;
}
"#;

/// Runs `script` with bash, whose `ulimit -f` counts KiB (dash's counts 512-byte blocks).
fn sh(script: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh runs")
}

/// The checks every fault shares: exit 1, the last line names `cause`, the session is finished,
/// balanced, and counts both what is on disk and what was not written.
fn check_counted_failure(out: &Output, pid_dir: &Path, cause: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("tracer: writing the trace failed"),
        "{err}"
    );
    // The cause is printed once, after what failed (not again by each error that wraps it).
    assert_eq!(last.matches(cause).count(), 1, "{err}");
    assert!(!err.contains("recorded no events"), "{err}");
    assert!(
        !err.contains("attempted                          0"),
        "{err}"
    );
    let session = atf::Session::open(pid_dir).expect("the session opens");
    let m = &session.manifest;
    assert!(m.finished, "the final manifest was not written");
    let acc = &m.accounting.index;
    assert!(acc.balanced(), "{acc:?}");
    assert!(acc.persisted > 0, "{acc:?}");
    assert!(
        acc.dropped.other.get("not_written").copied().unwrap_or(0) > 0,
        "{acc:?}"
    );
    for t in &m.threads {
        assert!(t.index.balanced(), "thread {}: {:?}", t.id, t.index);
    }
    // What the manifest says was persisted is what the files hold.
    assert_eq!(session.event_count(), acc.persisted);
}

/// Runs the tracer once without a limit, so the agent library is in its cache (the tracer
/// writes it there on first use, and a hard `ulimit -f` below its size forbids that write).
fn warm_agent_cache() {
    let out = run(&[
        "spawn",
        "--output",
        output_dir().path().to_str().unwrap(),
        "/bin/true",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn faults__file_size_limit__then_region_fits_efbig_counted_and_one_line() {
    let tmp = output_dir();
    let app = app();
    warm_agent_cache();
    let out = sh(&format!(
        "ulimit -f 2048 && exec {} spawn --output {} {} -- 4 400000 exit",
        env!("CARGO_BIN_EXE_tracer"),
        tmp.path().display(),
        app.display()
    ));
    let err = stderr(&out);
    assert!(
        err.lines()
            .next()
            .unwrap_or_default()
            .contains("note: the file-size limit (ulimit -f) leaves the shared region 2048 KiB"),
        "{err}"
    );
    check_counted_failure(&out, &session_dir(tmp.path()), "File too large");
}

#[test]
fn faults__soft_file_size_limit_and_no_agent_cache__then_cache_written_and_recorded() {
    // SAFETY: geteuid takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: emptying root's agent cache (a private /var/cache) needs root");
        return;
    }
    let tmp = output_dir();
    let app = app();
    // A fresh /var/cache, where root's tracer caches its agent: the first run must write it,
    // under a soft limit far below its size (the tracer raises it for that write only).
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "bash", "-c"])
        .arg(format!(
            "mount -t tmpfs tmpfs /var/cache && ulimit -S -f 2048 && exec {} spawn --output {} \
             {} -- 1 1000 exit",
            env!("CARGO_BIN_EXE_tracer"),
            tmp.path().display(),
            app.display()
        ))
        .output()
        .expect("unshare runs");
    let err = stderr(&out);
    if err.contains("unshare failed") || err.starts_with("mount:") {
        eprintln!("skipped: no private mount namespace: {err}");
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{err}");
    let session = atf::Session::open(session_dir(tmp.path())).unwrap();
    assert!(session.manifest.finished && session.event_count() > 0);
}

#[test]
fn faults__file_size_limit__then_target_still_gets_sigxfsz() {
    let tmp = output_dir();
    let writer = build("writer", WRITER_C, &["-O1"]);
    warm_agent_cache();
    let out = sh(&format!(
        "ulimit -f 4096 && exec {} spawn --output {} {} -- 6 {}/big",
        env!("CARGO_BIN_EXE_tracer"),
        tmp.path().display(),
        writer.display(),
        tmp.path().display()
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let session = atf::Session::open(session_dir(tmp.path())).unwrap();
    assert_eq!(
        session.manifest.target_fate,
        Some(atf::TargetFate::Signaled {
            signal: libc::SIGXFSZ,
            core_dumped: false
        })
    );
}

#[test]
fn faults__full_disk__then_enospc_counted_final_manifest_and_one_line() {
    // SAFETY: geteuid takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let tmp = output_dir();
    let app = app();
    std::fs::create_dir(tmp.path().join("small")).unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=2m tmpfs {dir} && {tracer} spawn --output {dir} {app} -- 4 \
             400000 exit; status=$?; cp -r {dir} {dir}.copy; exit $status",
            dir = tmp.path().join("small").display(),
            tracer = env!("CARGO_BIN_EXE_tracer"),
            app = app.display()
        ))
        .current_dir(tmp.path())
        .output()
        .expect("unshare runs");
    if stderr(&out).contains("unshare failed") || stderr(&out).starts_with("mount:") {
        eprintln!("skipped: no private mount namespace: {}", stderr(&out));
        return;
    }
    check_counted_failure(
        &out,
        &session_dir(&tmp.path().join("small.copy")),
        "No space left on device",
    );
}
