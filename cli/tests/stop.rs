//! Stopping a recording the way people do: a terminal's Ctrl-C and `kill -- -PGID` signal the
//! whole process group (the tracer and its target), `timeout` signals the tracer and then its
//! group. Each test puts the tracer and its target in a process group of their own and signals
//! that group, then checks the stop was clean (exit 0, no phase failed, forced or skipped), that
//! the summary says how the target ended, and that the accounting is exact with nothing published
//! lost: every accepted event is in the files, and the only events not recorded are those made
//! after the stop (or the one a thread was writing when the signal killed it).
#![allow(non_snake_case)]

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

/// A target that handles SIGINT and SIGTERM itself: its workers call `work` until the signal,
/// then `main` calls `cleanup_step` for 300 ms and exits 0.
const HANDLES_SIGINT_C: &str = r#"
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

static volatile long sink;
static volatile sig_atomic_t stop;

static void on_signal(int s) { (void)s; stop = 1; }
__attribute__((noinline)) void work(long i) { sink += i; }
__attribute__((noinline)) void cleanup_step(long i) { sink -= i; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

void *worker(void *arg) {
    (void)arg;
    while (!stop) work(1);
    return NULL;
}

int main(int argc, char **argv) {
    long threads = argc > 1 ? atol(argv[1]) : 1;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    pthread_t t[256];
    for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (long i = 0; i < threads; i++) pthread_join(t[i], NULL);
    double end = now() + 0.3;
    while (now() < end) cleanup_step(1);
    return 0;
}
"#;

/// `tracer spawn --output <out> <exe> -- <args>` as the leader of a new process group (the
/// target inherits it).
fn spawn_in_own_group(out: &Path, exe: &Path, args: &[&str]) -> Background {
    Background(Some(
        tracer()
            .arg("spawn")
            .arg("--output")
            .arg(out)
            .arg(exe)
            .arg("--")
            .args(args)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tracer starts"),
    ))
}

/// Signals the process group led by `tracer` and waits for the tracer's output.
fn signal_group(mut tracer: Background, signal: i32) -> Output {
    let pgid = tracer.child().id() as i32;
    // SAFETY: signalling the process group this test created (the tracer and its target only).
    unsafe { libc::kill(-pgid, signal) };
    tracer.take().wait_with_output().expect("the tracer ends")
}

/// The stop was clean: exit 0, the summary printed, no phase failed, overran or was skipped.
fn assert_clean_stop(result: &Output) -> String {
    let err = stderr(result);
    assert_eq!(result.status.code(), Some(0), "{err}");
    assert!(err.contains("tracer: shutdown complete"), "{err}");
    for bad in ["failed", "forced", "skipped", "overran", "BROKEN"] {
        assert!(!err.contains(bad), "{bad}: {err}");
    }
    err
}

/// Nothing published was lost: balanced per thread and in total, every accepted event in the
/// files (check_session compares each file with the manifest), and the only events not recorded
/// are those made after the stop.
fn assert_nothing_published_lost(out: &Path) -> atf::Session {
    let (session, traces) = check_session(&session_dir(out));
    assert!(traces.iter().map(|t| t.calls).sum::<u64>() > 0);
    let acc = &session.manifest.accounting.index;
    assert_eq!(
        acc.dropped.total(),
        acc.dropped.shutdown,
        "a real drop: {acc:?}"
    );
    assert_eq!(acc.attempted, acc.persisted + acc.dropped.shutdown);
    session
}

fn group_signal_kills_spinning_target(threads: u32, signal: i32) {
    let _heavy = heavy();
    let tmp = output_dir();
    let out = tmp.path().to_path_buf();
    let app = app();
    let tracer = spawn_in_own_group(&out, &app, &[&threads.to_string(), "0", "spin"]);
    wait_for_trace(&out, 1 << 20);
    let result = signal_group(tracer, signal);
    let err = assert_clean_stop(&result);
    let name = shutdown::signal_name(signal);
    assert!(
        err.contains(&format!("killed by {name}, which reached it too")),
        "the summary does not say how the target ended: {err}"
    );
    let session = assert_nothing_published_lost(&out);
    assert_eq!(
        session.manifest.target_fate,
        Some(atf::TargetFate::Signaled {
            signal,
            core_dumped: false
        })
    );
    // Killed mid-call, threads die inside write sections: at most the event each was writing is
    // missing, and it was never published.
    for t in &session.manifest.threads {
        assert!(t.index.balanced(), "thread {}: {:?}", t.id, t.index);
    }
}

#[test]
fn stop__group_sigint_1_thread__then_clean_and_nothing_published_lost() {
    group_signal_kills_spinning_target(1, libc::SIGINT);
}

#[test]
fn stop__group_sigint_4_threads__then_clean_and_nothing_published_lost() {
    group_signal_kills_spinning_target(4, libc::SIGINT);
}

#[test]
fn stop__group_sigint_64_threads__then_clean_and_nothing_published_lost() {
    group_signal_kills_spinning_target(64, libc::SIGINT);
}

#[test]
fn stop__group_sigterm_1_thread__then_clean_and_nothing_published_lost() {
    group_signal_kills_spinning_target(1, libc::SIGTERM);
}

#[test]
fn stop__group_sigterm_4_threads__then_clean_and_nothing_published_lost() {
    group_signal_kills_spinning_target(4, libc::SIGTERM);
}

#[test]
fn stop__group_sigterm_64_threads__then_clean_and_nothing_published_lost() {
    group_signal_kills_spinning_target(64, libc::SIGTERM);
}

/// `timeout -s INT 2 tracer spawn ...`: `timeout` signals the tracer, then its whole group (the
/// tracer again, and the target); the repeated delivery is one request, not a second signal.
#[test]
fn stop__timeout_sigint_on_tracer_and_group__then_clean_and_nothing_published_lost() {
    if Command::new("timeout").arg("--version").output().is_err() {
        eprintln!("skipped: no `timeout` command on this machine");
        return;
    }
    let _heavy = heavy();
    let tmp = output_dir();
    let out = tmp.path().to_path_buf();
    let result = Command::new("timeout")
        .args(["--preserve-status", "-s", "INT", "2"])
        .arg(env!("CARGO_BIN_EXE_tracer"))
        .arg("spawn")
        .arg("--output")
        .arg(&out)
        .arg(app())
        .args(["--", "4", "0", "spin"])
        .stdout(Stdio::null())
        .output()
        .expect("timeout runs");
    let err = assert_clean_stop(&result);
    assert!(err.contains("SIGINT received"), "{err}");
    // `timeout` signals the tracer and then the group in two `kill` calls: when it is preempted
    // between them for longer than the tracer takes to complete the trace (about a millisecond),
    // the tracer stops the target first, and the summary says so. Either way SIGINT ended it.
    assert!(
        err.contains("killed by SIGINT") || err.contains("ended by SIGINT from the tracer"),
        "{err}"
    );
    assert_nothing_published_lost(&out);
}

/// A target that catches SIGINT and keeps calling functions for 300 ms while it cleans up, then
/// exits 0: the stop is clean and the target's exit code is kept. Acceptance stops at the signal,
/// so the calls of its clean-up are counted as made after the stop, not recorded.
#[test]
fn stop__group_sigint_target_handles_it__then_clean_and_its_cleanup_counted_after_the_stop() {
    let _heavy = heavy();
    let tmp = output_dir();
    let out = tmp.path().to_path_buf();
    let exe = build(
        "handles_sigint",
        HANDLES_SIGINT_C,
        &["-O1", "-g", "-finstrument-functions"],
    );
    let tracer = spawn_in_own_group(&out, &exe, &["4"]);
    wait_for_trace(&out, 1 << 20);
    let result = signal_group(tracer, libc::SIGINT);
    let err = assert_clean_stop(&result);
    assert!(err.contains("exited with code 0"), "{err}");
    let session = assert_nothing_published_lost(&out);
    assert_eq!(
        session.manifest.target_fate,
        Some(atf::TargetFate::Exited { code: 0 })
    );
    assert!(
        session.manifest.accounting.index.dropped.shutdown > 0,
        "300 ms of clean-up calls, none counted after the stop: {:?}",
        session.manifest.accounting.index
    );
}

/// 256 threads calling non-stop on a machine with a few CPUs, SIGINT to the tracer alone: no
/// ring-full drop while the tracer lives (producers wait for the drain), the stop is clean, and
/// nothing published is lost.
#[test]
fn stop__256_busy_threads_sigint_to_tracer__then_clean_no_ring_full_and_nothing_published_lost() {
    let _heavy = heavy();
    let tmp = output_dir();
    let out = tmp.path().to_path_buf();
    let mut tracer = spawn_in_own_group(&out, &app(), &["256", "0", "spin"]);
    wait_for_trace(&out, 4 << 20);
    let pid = tracer.child().id() as i32;
    // SAFETY: signalling the tracer this test started, not its group.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let result = tracer.take().wait_with_output().expect("the tracer ends");
    let err = assert_clean_stop(&result);
    assert!(err.contains("from the tracer"), "{err}");
    let session = assert_nothing_published_lost(&out);
    assert_eq!(session.manifest.accounting.index.dropped.ring_full, 0);
    assert!(
        session.manifest.threads.len() >= 200,
        "{} threads recorded",
        session.manifest.threads.len()
    );
}
