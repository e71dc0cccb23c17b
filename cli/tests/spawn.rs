//! `tracer spawn` end to end, on real C programs: nothing lost, whatever stops the trace.
#![allow(non_snake_case)]

mod common;

use std::time::{Duration, Instant};

use common::*;

fn spawn_and_check(threads: u32, iterations: u64) {
    let _heavy = heavy();
    let tmp = output_dir();
    let out = tmp.path().to_path_buf();
    let app = app();
    let result = run(&[
        "spawn",
        "--output",
        out.to_str().unwrap(),
        app.to_str().unwrap(),
        "--",
        &threads.to_string(),
        &iterations.to_string(),
        "exit",
    ]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(0), "{err}");
    assert!(err.contains("shutdown complete"), "no summary: {err}");
    let (session, traces) = check_session(&session_dir(&out));
    assert_eq!(
        session.manifest.target_fate,
        Some(atf::TargetFate::Exited { code: 0 })
    );
    let names = session_dir(&out).parent().unwrap().join("names.json");
    assert!(
        !names.exists(),
        "a clean stop leaves the names in the manifests only"
    );
    let workers: Vec<_> = traces
        .iter()
        .filter(|t| t.by_name.contains_key("worker"))
        .collect();
    assert_eq!(
        workers.len(),
        threads as usize,
        "one trace per worker thread"
    );
    for t in workers {
        assert_eq!(t.by_name["top"], iterations, "thread {}", t.tid);
        assert_eq!(t.by_name["mid"], iterations, "thread {}", t.tid);
        assert_eq!(t.by_name["leaf"], 2 * iterations, "thread {}", t.tid);
        assert_eq!(t.calls, t.returns, "thread {}: unbalanced", t.tid);
    }
    let acc = &session.manifest.accounting.index;
    assert_eq!(acc.dropped.total(), 0, "drops on a clean exit: {acc:?}");
}

#[test]
fn system__normal_exit_8_threads__then_every_call_recorded() {
    spawn_and_check(8, 20_000);
}

#[test]
fn system__normal_exit_64_threads__then_every_call_recorded() {
    spawn_and_check(64, 2_000);
}

/// Starts 64 spinning threads under the tracer, waits until they are recording, sends `signal`
/// to the tracer alone, and checks the stop.
fn stop_with_signal(signal: i32) {
    let _heavy = heavy();
    let tmp = output_dir();
    let out = tmp.path().to_path_buf();
    let mut child = spawn_spinning(&out, 64, std::process::Stdio::piped());
    wait_for_trace(&out, 1 << 20);
    // SAFETY: signalling our own child process (the tracer), not its process group.
    unsafe { libc::kill(child.child().id() as i32, signal) };
    let started = Instant::now();
    let result = child.take().wait_with_output().unwrap();
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(0), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the tracer hung"
    );
    assert!(err.contains("shutdown complete"), "no summary: {err}");
    let (session, traces) = check_session(&session_dir(&out));
    assert!(traces.iter().map(|t| t.calls).sum::<u64>() > 0);
    let acc = &session.manifest.accounting.index;
    assert_eq!(
        acc.dropped.ring_full, 0,
        "ring-full drops under the waiting policy: {acc:?}"
    );
    assert!(!acc.dropped.other.contains_key("not_written"), "{acc:?}");
}

#[test]
fn system__ctrl_c__then_clean_exit() {
    stop_with_signal(libc::SIGINT);
}

#[test]
fn system__sigterm__then_clean_exit() {
    stop_with_signal(libc::SIGTERM);
}

#[test]
fn system__duration_1s_on_endless_program__then_stops_after_1s() {
    let _heavy = heavy();
    let tmp = output_dir();
    let out = tmp.path().to_path_buf();
    let app = app();
    let started = Instant::now();
    let result = run(&[
        "spawn",
        "--duration",
        "1",
        "--output",
        out.to_str().unwrap(),
        app.to_str().unwrap(),
        "--",
        "4",
        "0",
        "spin",
    ]);
    let elapsed = started.elapsed();
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(0), "{err}");
    assert!(
        elapsed >= Duration::from_secs(1),
        "stopped before the duration: {elapsed:?}"
    );
    assert!(
        err.contains("duration"),
        "the summary does not give the reason: {err}"
    );
    let (session, _) = check_session(&session_dir(&out));
    assert_eq!(
        session.manifest.target_fate,
        Some(atf::TargetFate::Signaled {
            signal: libc::SIGTERM,
            core_dumped: false
        }),
        "the target should get SIGTERM on duration expiry"
    );
}

#[test]
fn system__target_crashes__then_completed_calls_recorded_and_crash_reported() {
    let tmp = output_dir();
    let out = tmp.path().to_path_buf();
    let app = app();
    let result = run(&[
        "spawn",
        "--detail",
        "--output",
        out.to_str().unwrap(),
        app.to_str().unwrap(),
        "--",
        "4",
        "5000",
        "crash",
    ]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(0), "{err}");
    assert!(err.contains("SIGSEGV"), "the crash is not reported: {err}");
    let (session, traces) = check_session(&session_dir(&out));
    assert!(matches!(
        session.manifest.target_fate,
        Some(atf::TargetFate::Signaled {
            signal: libc::SIGSEGV,
            ..
        })
    ));
    let workers: Vec<_> = traces
        .iter()
        .filter(|t| t.by_name.contains_key("worker"))
        .collect();
    assert_eq!(workers.len(), 4);
    for t in workers {
        assert_eq!(t.by_name["top"], 5000, "a completed call is missing");
        assert_eq!(t.by_name["leaf"], 10000);
    }
    assert!(
        session
            .threads
            .iter()
            .filter(|t| t.detail.is_some())
            .count()
            >= 4,
        "the last detail window of each thread was not persisted"
    );
}

#[test]
fn system__tracer_killed_with_sigkill__then_session_still_readable() {
    let _heavy = heavy();
    let tmp = output_dir();
    let out = tmp.path().to_path_buf();
    let child = spawn_spinning(&out, 4, std::process::Stdio::null());
    wait_for_trace(&out, 1 << 20);
    let mut tracer = child.take();
    tracer.kill().unwrap();
    tracer.wait().unwrap();
    let session = atf::Session::open(session_dir(&out)).expect("readable after SIGKILL");
    // The target outlives its killed tracer (its rings fill, it runs on untraced): stop it first,
    // so a failed assertion below leaves nothing running.
    // SAFETY: signalling the target this test started (through the tracer).
    unsafe { libc::kill(session.manifest.target_pid as i32, libc::SIGKILL) };
    assert!(!session.manifest.finished);
    let events: u64 = session.threads.iter().map(|t| t.index.event_count()).sum();
    assert!(events > 0);
    for t in &session.threads {
        for e in t.index.events() {
            e.expect("every recovered event is whole");
        }
    }
}

/// Threads that call named functions a few times, then wait to be killed.
const NAMED_C: &str = r#"
#include <pthread.h>
#include <unistd.h>
static volatile long sink;
__attribute__((noinline)) void parse_record(long i) { sink += i; }
__attribute__((noinline)) void compute_total(long i) { parse_record(i); parse_record(i + 1); }
void *worker(void *arg) {
    for (long i = 0; i < 100; i++) compute_total(i + (long)arg);
    for (;;) pause();
}
int main(void) {
    pthread_t t[3];
    for (long i = 0; i < 3; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (;;) pause();
}
"#;

/// Records `args` until every named call is on disk and the session holds their names (the
/// tracer writes them within a tick of the program reporting its objects), kills the
/// tracer with SIGKILL, then the target; returns `tracer replay`'s stdout and stderr.
fn killed_session_replay(args: &[&str]) -> (String, String) {
    let tmp = output_dir();
    let out = tmp.path().to_path_buf();
    let tracer = Background(Some(
        tracer()
            .arg("spawn")
            .arg("--output")
            .arg(&out)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the tracer starts"),
    ));
    // 3 workers × 100 × (compute_total + 2 parse_record), a call and a return each.
    let expected = 3 * 100 * 3 * 2;
    let deadline = Instant::now() + Duration::from_secs(20);
    let names = |dir: &std::path::Path| dir.parent().unwrap().join("names.json");
    loop {
        let recorded = std::panic::catch_unwind(|| session_dir(&out))
            .ok()
            .and_then(|dir| Some((atf::Session::open(&dir).ok()?.event_count(), dir)));
        if let Some((events, dir)) = recorded {
            let named = std::fs::read_to_string(names(&dir))
                .is_ok_and(|names| names.contains("\"compute_total\""));
            if events >= expected && named {
                break;
            }
        }
        // Today's tracer writes no names before it stops: go on, and let the replay say so.
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut child = tracer.take();
    child.kill().unwrap();
    child.wait().unwrap();
    let dir = session_dir(&out);
    let session = atf::Session::open(&dir).expect("readable after SIGKILL");
    // SAFETY: signalling the target this test started (through the tracer).
    unsafe { libc::kill(session.manifest.target_pid as i32, libc::SIGKILL) };
    assert!(!session.manifest.finished);
    let replay = run(&["replay", dir.to_str().unwrap()]);
    assert_eq!(replay.status.code(), Some(0), "{}", stderr(&replay));
    (
        String::from_utf8_lossy(&replay.stdout).into_owned(),
        stderr(&replay),
    )
}

/// `replay`'s output names each of `names`, and neither output says a function has no name.
fn assert_named(stdout: &str, stderr: &str, names: &[&str]) {
    for name in names {
        assert!(
            stdout.contains(name),
            "{name} not named:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        !stdout.contains("no name") && !stderr.contains("no name"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn system__tracer_killed_with_sigkill__then_replay_names_the_functions() {
    let named = build("named", NAMED_C, &["-O1", "-finstrument-functions"]);
    let (stdout, stderr) = killed_session_replay(&[named.to_str().unwrap()]);
    assert_named(
        &stdout,
        &stderr,
        &["worker", "compute_total", "parse_record"],
    );
}

#[test]
fn system__tracer_killed_after_the_target_execs__then_replay_names_the_new_programs_functions() {
    let named = build("named", NAMED_C, &["-O1", "-finstrument-functions"]);
    let launcher = build(
        "launcher",
        r#"#include <unistd.h>
__attribute__((noinline)) void launch(char **argv) { execv(argv[0], argv); }
int main(int argc, char **argv) { if (argc > 1) launch(argv + 1); return 1; }
"#,
        &["-O1", "-finstrument-functions"],
    );
    let (stdout, stderr) =
        killed_session_replay(&[launcher.to_str().unwrap(), "--", named.to_str().unwrap()]);
    assert_named(
        &stdout,
        &stderr,
        &["launch", "compute_total", "parse_record"],
    );
}

#[test]
fn system__uninstrumented_target__then_runs_and_says_why_nothing_recorded() {
    let plain = build("plain", "int main(void) { return 3; }", &["-O1"]);
    let tmp = output_dir();
    let out = tmp.path().to_path_buf();
    let result = run(&[
        "spawn",
        "--output",
        out.to_str().unwrap(),
        plain.to_str().unwrap(),
    ]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(0), "{err}");
    assert!(
        err.contains("-finstrument-functions"),
        "no explanation: {err}"
    );
    assert_eq!(
        err.matches("recorded no events").count(),
        1,
        "said more than once: {err}"
    );
}

#[test]
fn system__program_arguments_with_or_without_dashes__then_passed_as_typed() {
    let exe = build(
        "print_args",
        r#"#include <stdio.h>
__attribute__((noinline)) static void show(const char *a) { printf("[%s]", a); }
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) show(argv[i]);
    printf("\n");
    return 0;
}
"#,
        &["-O1", "-finstrument-functions"],
    );
    let exe = exe.to_str().unwrap();
    // As people type it: the program's own options right after it, tracer options before it.
    for (args, printed) in [
        (
            vec![exe, "-v", "--size", "10", "in.txt"],
            "[-v][--size][10][in.txt]",
        ),
        (vec![exe, "--", "-v", "x"], "[-v][x]"),
        (vec!["--", exe, "a", "b"], "[a][b]"),
        (vec![exe, "--duration", "1"], "[--duration][1]"),
        (vec![exe, "-o", "x", "--", "y"], "[-o][x][--][y]"),
        (vec![exe, "--", "--", "z"], "[--][z]"),
    ] {
        let tmp = output_dir();
        let out = tracer()
            .args(["spawn", "--output"])
            .arg(tmp.path())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().next(), Some(printed), "{args:?}");
        let (session, _) = check_session(&session_dir(tmp.path()));
        // main, then show once per argument: a call and a return each.
        let arguments = printed.matches('[').count() as u64;
        assert_eq!(session.event_count(), 2 * (1 + arguments), "{args:?}");
    }
}
