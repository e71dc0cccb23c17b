//! The agent loaded into real C programs built with `-finstrument-functions`: exact event counts
//! and the accounting invariant, checked from a drain in the test itself.

#![allow(non_snake_case)]

mod common;

use common::{cc, run, run_with, Event};

const CALL: u32 = 1;
const RETURN: u32 = 2;

/// Each call is followed, at the same depth, by its return: the stream of one thread is a
/// well-nested tree starting at `base` depth.
fn assert_nested(events: &[Event], base: u32) {
    let mut depth = base;
    for e in events {
        match e.kind {
            CALL => {
                assert_eq!(e.depth, depth, "{e:?}");
                depth += 1;
            }
            RETURN => {
                depth -= 1;
                assert_eq!(e.depth, depth, "{e:?}");
            }
            k => panic!("kind {k}"),
        }
    }
    let ts: Vec<u64> = events.iter().map(|e| e.timestamp_ns).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "timestamps go back");
}

const NESTED: &str = r#"
#include <pthread.h>
#include <stdio.h>
#define N 20000
__attribute__((noinline)) int c(int x) { return x + 1; }
__attribute__((noinline)) int b(int x) { return c(x) * 2; }
__attribute__((noinline)) int a(int x) { return b(x) - 1; }
void *worker(void *arg) {
    long s = 0;
    for (int i = 0; i < N; i++) s += a(i);
    return (void *)s;
}
int main(void) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], 0, worker, 0);
    for (int i = 0; i < 4; i++) pthread_join(t[i], 0);
    printf("n=%d\n", N);
    return 0;
}
"#;

#[test]
fn agent__nested_calls_in_four_threads__then_every_event_recorded_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "nested", NESTED, &[]);
    let run = run(&prog, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.stderr, "");
    run.assert_accounting();
    let n = run.value("n");
    let main_pid = run.threads.iter().find(|t| t.tid == t.pid).unwrap().pid;
    let workers: Vec<_> = run.threads.iter().filter(|t| t.tid != main_pid).collect();
    assert_eq!(workers.len(), 4);
    for w in &workers {
        // worker() itself, then a → b → c per iteration.
        assert_eq!(
            w.events.len() as u64,
            2 + 6 * n,
            "{:?} {:?}",
            w.counts,
            &w.events[..3]
        );
        assert!(w.events.iter().all(|e| e.tid == w.tid));
        assert_nested(&w.events, 0);
        assert_eq!(w.counts.dropped(), 0, "{:?}", w.counts);
    }
    let main = run.events_of(main_pid);
    assert_eq!(main.len(), 2, "main's call and return");
    assert_nested(&main, 0);
    assert_eq!(run.attempted(), 4 * (2 + 6 * n) + 2);
}

/// The rings hold the clock's raw readings, on the fast path (index lane only) as on the full
/// one: converted as the drain converts them, every event's time is within the run, in
/// nanoseconds (the mapping's error is far below the millisecond allowed), and a thread's
/// events have times of their own (a reading stored in another unit would map many of them to
/// one time, the clock's base).
#[test]
fn agent__index_lane_only__then_event_times_once_converted_are_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "nested", NESTED, &[]);
    let config = registry::RegionConfig {
        detail_enabled: false,
        ..common::config()
    };
    let before = registry::clock::boottime_ns();
    let run = run_with(&config, &[], &prog, &[]);
    let after = registry::clock::boottime_ns();
    assert!(run.status.success(), "{}", run.stderr);
    run.assert_accounting();
    let (low, high) = (before - 1_000_000, after + 1_000_000);
    for t in &run.threads {
        assert_nested(&t.events, 0);
        let times: std::collections::BTreeSet<u64> =
            t.events.iter().map(|e| e.timestamp_ns).collect();
        assert!(
            times.range(..low).next().is_none() && times.range(high..).next().is_none(),
            "thread {}: events from {:?} to {:?} ns, the run from {before} to {after} ns ({:?})",
            t.tid,
            times.first(),
            times.last(),
            run.clock
        );
        assert!(
            times.len() * 2 > t.events.len(),
            "thread {}: {} times for {} events ({:?})",
            t.tid,
            times.len(),
            t.events.len(),
            run.clock
        );
    }
}

/// The fenced handshake (every write section fences): the fast path's fenced copy records the
/// same events, exactly, as the unfenced one.
#[test]
fn agent__nested_calls_in_four_threads_fenced__then_every_event_recorded_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "nested", NESTED, &[]);
    let config = registry::RegionConfig {
        handshake: registry::Handshake::Fence,
        ..common::config()
    };
    let run = run_with(&config, &[], &prog, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.stderr, "");
    run.assert_accounting();
    let n = run.value("n");
    let main_pid = run.threads.iter().find(|t| t.tid == t.pid).unwrap().pid;
    for w in run.threads.iter().filter(|t| t.tid != main_pid) {
        assert_eq!(w.events.len() as u64, 2 + 6 * n, "{:?}", w.counts);
        assert_nested(&w.events, 0);
        assert_eq!(w.counts.dropped(), 0, "{:?}", w.counts);
    }
    assert_eq!(run.attempted(), 4 * (2 + 6 * n) + 2);
}

const MANY_THREADS: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#define THREADS 64
#define K 100
static pthread_barrier_t barrier;
__attribute__((noinline)) int f(int x) { return x + 1; }
void *worker(void *arg) {
    long s = 0;
    for (int i = 0; i < K; i++) s += f(i);
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < K; i++) s += f(i);
    return (void *)s;
}
void *late(void *arg) {
    long s = 0;
    for (int i = 0; i < K; i++) s += f(i);
    return (void *)s;
}
int main(void) {
    pthread_t t[THREADS + 1];
    pthread_barrier_init(&barrier, 0, THREADS);
    for (int i = 0; i < THREADS; i++) pthread_create(&t[i], 0, worker, 0);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], 0);
    usleep(300000); /* the drain recycles the exited slots */
    pthread_create(&t[THREADS], 0, late, 0);
    pthread_join(t[THREADS], 0);
    printf("threads=%d\nk=%d\n", THREADS, K);
    return 0;
}
"#;

/// 64 workers and main on 64 slots: one worker waits (its events counted as registry_full), and a
/// thread created after all 64 ends gets a recycled slot and is recorded in full.
#[test]
fn agent__thread_after_64_others_and_capacity_plus_one__then_waiter_counted_and_late_thread_recorded(
) {
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "many", MANY_THREADS, &[]);
    let run = run(&prog, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    run.assert_accounting();
    let (threads, k) = (run.value("threads"), run.value("k"));
    // 64 workers: worker + 2K calls each; the late thread: late + K calls; main: 1 call.
    let expected = threads * (2 + 4 * k) + (2 + 2 * k) + 2;
    assert_eq!(run.attempted(), expected);
    assert!(
        run.orphans.registry_full > 2 * k,
        "the 65th thread waited: {:?}",
        run.orphans
    );
    assert_eq!(run.orphans.waiting_threads, 0);
    let main_pid = run.threads[0].pid;
    let tids: std::collections::BTreeSet<u32> = run.threads.iter().map(|t| t.tid).collect();
    assert!(tids.len() >= 65, "main + 63 workers + the late thread");
    // The late thread is the one whose only function is late() + f: 2 + 2K events, all recorded.
    let late = run
        .threads
        .iter()
        .find(|t| t.tid != main_pid && t.events.len() as u64 == 2 + 2 * k)
        .expect("the late thread was recorded in full");
    assert_nested(&late.events, 0);
}

const SIGNALS: &str = r#"
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
#define N 200000
static volatile sig_atomic_t handled;
static volatile int done;
static pthread_t main_thread;
__attribute__((noinline)) int in_handler(int x) { return x * 3; }
void on_signal(int sig) { handled++; in_handler(sig); }
__attribute__((noinline)) int c(int x) { return x + 1; }
__attribute__((noinline)) int b(int x) { return c(x) * 2; }
__attribute__((noinline)) int a(int x) { return b(x) - 1; }
__attribute__((no_instrument_function)) void *sender(void *arg) {
    while (!done) { pthread_kill(main_thread, SIGUSR1); usleep(100); }
    return 0;
}
__attribute__((no_instrument_function)) int main(void) {
    main_thread = pthread_self();
    signal(SIGUSR1, on_signal);
    pthread_t t;
    pthread_create(&t, 0, sender, 0);
    long s = 0;
    for (int i = 0; i < N; i++) s += a(i);
    done = 1;
    pthread_join(t, 0);
    printf("n=%d\nhandled=%d\n", N, (int)handled);
    return 0;
}
"#;

/// A signal handler calling instrumented code: handler events that interrupt a hook are counted
/// as reentrant, the others recorded; nothing is lost.
#[test]
fn agent__signal_handler_calls_instrumented_code__then_reentrant_counted_and_total_exact() {
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "signals", SIGNALS, &[]);
    let run = run(&prog, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    run.assert_accounting();
    let (n, handled) = (run.value("n"), run.value("handled"));
    assert!(handled > 0);
    assert_eq!(run.threads.len(), 1);
    let t = &run.threads[0];
    // a → b → c per iteration; on_signal → in_handler per signal. A signal that lands inside the
    // thread's registration is counted with the orphans (the thread holds no slot yet), as
    // dropped during the agent's setup of the thread: the one thread never finds the registry full.
    assert_eq!(run.attempted(), 6 * n + 4 * handled);
    assert_eq!(
        t.counts.accepted + t.counts.reentrant + run.orphans.agent_setup,
        6 * n + 4 * handled,
        "{:?} {:?}",
        t.counts,
        run.orphans
    );
    assert_eq!(run.orphans.registry_full, 0, "{:?}", run.orphans);
    assert_eq!(t.counts.ring_full + t.counts.shutdown, 0);
}

const FORK: &str = r#"
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
#define N 1000
#define M 700
__attribute__((noinline)) int f(int x) { return x + 1; }
int main(void) {
    long s = 0;
    for (int i = 0; i < N; i++) s += f(i);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        for (int i = 0; i < M; i++) s += f(i);
        _exit(0);
    }
    waitpid(child, 0, 0);
    for (int i = 0; i < N; i++) s += f(i);
    printf("n=%d\nm=%d\nchild=%d\n", N, M, (int)child);
    return 0;
}
"#;

/// fork(): the child records under its own pid, in its own slot, continuing at the parent's depth;
/// the parent's stream is unaffected.
#[test]
fn agent__program_forks__then_child_recorded_under_its_own_pid() {
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "fork", FORK, &[]);
    let run = run(&prog, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    run.assert_accounting();
    let (n, m, child) = (run.value("n"), run.value("m"), run.value("child") as u32);
    let kid: Vec<_> = run.threads.iter().filter(|t| t.pid == child).collect();
    assert_eq!(kid.len(), 1);
    assert_eq!(kid[0].tid, child);
    assert_eq!(kid[0].events.len() as u64, 2 * m);
    assert_nested(&kid[0].events, 1);
    let parent = run.threads.iter().find(|t| t.pid != child).unwrap();
    assert_eq!(parent.events.len() as u64, 2 + 4 * n);
    assert_nested(&parent.events, 0);
    assert_eq!(run.attempted(), 2 + 4 * n + 2 * m);
}

const EXEC: &str = r#"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#define N 300
#define M 500
__attribute__((noinline)) int f(int x) { return x + 1; }
int main(int argc, char **argv) {
    long s = 0;
    if (argc > 1 && strcmp(argv[1], "again") == 0) {
        for (int i = 0; i < M; i++) s += f(i);
        printf("n=%d\nm=%d\npid=%d\n", N, M, (int)getpid());
        return 0;
    }
    for (int i = 0; i < N; i++) s += f(i);
    execl("/proc/self/exe", argv[0], "again", (char *)0);
    return 1;
}
"#;

/// exec: tracing is inherited on purpose; the new image retires the old image's slot and records
/// itself in a new one, same pid and tid.
#[test]
fn agent__program_execs_itself__then_both_images_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "exec", EXEC, &[]);
    let run = run(&prog, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    run.assert_accounting();
    let (n, m, pid) = (run.value("n"), run.value("m"), run.value("pid") as u32);
    assert_eq!(run.threads.len(), 2, "one registration per image");
    assert!(run.threads.iter().all(|t| t.pid == pid && t.tid == pid));
    let mut lens: Vec<u64> = run.threads.iter().map(|t| t.events.len() as u64).collect();
    lens.sort();
    // First image: main's call + N calls (no return: exec); second: main + M calls.
    let mut expected = vec![1 + 2 * n, 2 + 2 * m];
    expected.sort();
    assert_eq!(lens, expected);
}

const EARLY_LIB: &str = r#"
__attribute__((noinline)) int early_work(int x) { return x * 7; }
int early_result;
__attribute__((constructor)) void early_init(void) { early_result = early_work(6); }
"#;

const EARLY_MAIN: &str = r#"
#include <stdio.h>
extern int early_result;
__attribute__((noinline)) int f(int x) { return x + 1; }
int main(void) {
    printf("early=%d\n", early_result + f(0) - 1);
    return 0;
}
"#;

/// A library constructor that runs before the agent's: its hooks initialise the agent lazily and
/// its calls are recorded.
#[test]
fn agent__library_constructor_runs_before_agent__then_its_calls_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libearly.so");
    let src = dir.path().join("early.c");
    std::fs::write(&src, EARLY_LIB).unwrap();
    let ok = std::process::Command::new("cc")
        .args(["-O1", "-finstrument-functions", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .unwrap();
    assert!(ok.success());
    let prog = common::cc(
        dir.path(),
        "early",
        EARLY_MAIN,
        &[
            "-L",
            dir.path().to_str().unwrap(),
            "-learly",
            "-Wl,-rpath,$ORIGIN",
        ],
    );
    // LD_PRELOAD="libagent.so libearly.so": the loader runs libearly's constructor before the
    // agent's (checked with LD_DEBUG=libs), so the first hook initialises the agent.
    let run = common::run_preloading(&common::config(), &[], &[&lib], &prog, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.value("early"), 42);
    run.assert_accounting();
    assert_eq!(run.threads.len(), 1);
    // early_init → early_work, then main → f.
    assert_eq!(run.threads[0].events.len(), 8);
    assert_nested(&run.threads[0].events[..4], 0);
}

const TRIGGER: &str = r#"
#include <stdio.h>
__attribute__((noinline)) int quiet(int x) { return x + 1; }
__attribute__((noinline)) int boom(int x) { return x * 2; }
int main(void) {
    long s = 0;
    for (int i = 0; i < 100; i++) s += quiet(i);
    s += boom(3);
    printf("boom=%ld\n", (long)(void *)boom);
    return 0;
}
"#;

/// Detail records: a trigger function's call marks its detail window, whose records link to their
/// index events and hold the hook's registers and stack bytes.
#[test]
fn agent__trigger_function_called__then_marked_detail_window_links_to_its_index_event() {
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "trigger", TRIGGER, &["-no-pie"]);
    let nm = std::process::Command::new("nm")
        .arg(&prog)
        .output()
        .unwrap();
    let boom = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .find(|l| l.ends_with(" boom"))
        .map(|l| u64::from_str_radix(l.split_whitespace().next().unwrap(), 16).unwrap())
        .expect("nm finds boom");
    let run = run_with(&common::config(), &[boom], &prog, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.value("boom"), boom);
    run.assert_accounting();
    let t = &run.threads[0];
    assert!(!t.marked_details.is_empty(), "the trigger marked a window");
    let hit = t
        .marked_details
        .iter()
        .find(|d| {
            let index_seq = u32::from_le_bytes(d[8..12].try_into().unwrap()) as usize;
            let kind = u16::from_le_bytes(d[4..6].try_into().unwrap());
            kind == 3 && t.events.get(index_seq).map(|e| e.function) == Some(boom)
        })
        .expect("a call record of boom in the marked window");
    let total = u32::from_le_bytes(hit[0..4].try_into().unwrap()) as usize;
    assert_eq!(total, hit.len());
    let reg = |i: usize| u64::from_le_bytes(hit[24 + i * 8..32 + i * 8].try_into().unwrap());
    assert_eq!(reg(0), boom, "rdi holds this_fn as the hook saw it");
    let stack_len = u32::from_le_bytes(hit[24 + 17 * 8..28 + 17 * 8].try_into().unwrap());
    assert_eq!(stack_len, 128);
    let index_seq = u32::from_le_bytes(hit[8..12].try_into().unwrap()) as usize;
    assert_ne!(t.events[index_seq].detail_seq, u32::MAX);
    // The detail record's timestamp is the same reading as its index event's, in the same unit.
    let reading = u64::from_le_bytes(hit[16..24].try_into().unwrap());
    assert_eq!(run.clock.to_ns(reading), t.events[index_seq].timestamp_ns);
}

const PLAIN: &str = r#"
#include <stdio.h>
__attribute__((noinline)) int f(int x) { return x + 1; }
int main(void) { long s = 0; for (int i = 0; i < 1000; i++) s += f(i); printf("s=%ld\n", s); return 0; }
"#;

/// Without a region, or with an invalid one, the agent says so in one line and the program runs.
#[test]
fn agent__no_region_or_invalid_region__then_one_line_and_program_runs_untraced() {
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "plain", PLAIN, &[]);
    let bogus = dir.path().join("bogus");
    std::fs::write(&bogus, vec![0u8; 8192]).unwrap();
    for env in [
        None,
        Some((registry::ENV_REGION_FD, "77".to_string())),
        Some((registry::ENV_REGION_PATH, bogus.display().to_string())),
    ] {
        let mut cmd = std::process::Command::new(&prog);
        cmd.env("LD_PRELOAD", common::agent_so())
            .env_remove(registry::ENV_REGION_FD)
            .env_remove(registry::ENV_REGION_PATH);
        if let Some((k, v)) = &env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "s=500500\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{env:?}: {err}");
        assert!(err.starts_with("tracer agent: "), "{err}");
        assert!(err.contains("untraced"), "{err}");
    }
}
