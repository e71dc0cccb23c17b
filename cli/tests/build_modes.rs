//! Programs built for call tracing other than with `-finstrument-functions`: `-pg` (`mcount`
//! after the prologue), `-pg -mfentry` (`__fentry__` first) and `-fpatchable-function-entry`
//! (NOP sleds the agent patches), whose returns the agent intercepts, and libraries of another
//! mode inside a `-pg` executable. Each is traced by a plain `tracer spawn` and by `tracer
//! attach`, with exact counts in every thread and properly nested returns.

#![allow(non_snake_case)]

mod common;

use common::*;

/// The `main()` of the threaded programs below, in C that also compiles as C++: starts
/// `argv[1]` threads (1 if not given, at most 256) running the program's `worker`, joins them and
/// prints `done <sink>`. Before starting them it runs the program's `SET_UP(argc, argv)`, a macro
/// (so the main thread makes no call of its own that the tracer would count).
macro_rules! workers_main {
    () => {
        r#"
int main(int argc, char **argv) {
    long threads = argc > 1 ? atol(argv[1]) : 1;
    SET_UP(argc, argv);
    pthread_t t[256];
    for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (long i = 0; i < threads; i++) pthread_join(t[i], NULL);
    printf("done %ld\n", sink);
    return 0;
}
"#
    };
}

/// `rec <threads> <depth> <mode>`: every worker calls `fib(15)` (1973 calls) and then, by mode,
/// `deep(depth)` (depth + 1 calls), `jump` (a `longjmp` out of 10 hooked frames, twice), `sig` (a
/// signal handler running on an alternate stack calls `fib(5)`, 15 calls), `fork` (forks 6 hooked
/// frames deep; the child returns through 5 of them and exits), `pexit` (`pthread_exit` 6 hooked
/// frames deep), `exit` (`exit` 6 hooked frames deep, after printing `done`) or `sigjump` (a
/// signal raised 10 hooked frames deep runs a handler that `siglongjmp`s out from 4 hooked frames
/// of its own, twice).
const REC_C: &str = concat!(
    r#"
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long depth;
static const char *mode;
static volatile long sink;

int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
long deep(long n) { return n == 0 ? 0 : 1 + deep(n - 1); }

static __thread jmp_buf where;
void dive(int n) { if (n == 0) longjmp(where, 1); dive(n - 1); sink++; }
void jump(void) { if (setjmp(where) == 0) dive(9); }

void on_signal(int s) { (void)s; sink += fib(5); }

static __thread sigjmp_buf sigwhere;
void escape(int n) { if (n == 0) siglongjmp(sigwhere, 1); escape(n - 1); sink++; }
void on_usr2(int s) { (void)s; escape(3); }
void sdive(int n) { if (n == 0) raise(SIGUSR2); else sdive(n - 1); sink++; }
void sjump(void) { if (sigsetjmp(sigwhere, 1) == 0) sdive(9); }

/* fork: the child returns through the parent's hooked frames, then exits; the parent checks. */
#include <sys/wait.h>
#include <unistd.h>
static __thread int child_ok = 1;
long forker(long n) {
    if (n == 0) {
        pid_t pid = fork();
        if (pid == 0) return -1000;
        int status = 0;
        waitpid(pid, &status, 0);
        child_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        return 0;
    }
    return forker(n - 1) + 1;
}
/* pexit / exit: leave from deep inside hooked frames. */
long leaver(long n, int how) {
    if (n == 0) { if (how) { printf("done\n"); fflush(stdout); exit(0); } pthread_exit(NULL); }
    return leaver(n - 1, how) + 1;
}

void *worker(void *arg) {
    (void)arg;
    sink += fib(15);
    if (strcmp(mode, "deep") == 0) sink += deep(depth);
    if (strcmp(mode, "jump") == 0) { jump(); jump(); }
    if (strcmp(mode, "fork") == 0) {
        if (forker(5) < 0) _exit(0); /* the child, back through five hooked frames */
        if (!child_ok) { printf("child failed\n"); exit(1); }
    }
    if (strcmp(mode, "sigjump") == 0) {
        struct sigaction sa = { .sa_handler = on_usr2 };
        sigaction(SIGUSR2, &sa, NULL);
        sjump();
        sjump();
    }
    if (strcmp(mode, "pexit") == 0) sink += leaver(5, 0);
    if (strcmp(mode, "exit") == 0) sink += leaver(5, 1);
    if (strcmp(mode, "sig") == 0) {
        stack_t ss = { .ss_sp = malloc(1 << 16), .ss_size = 1 << 16 };
        sigaltstack(&ss, NULL);
        struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_ONSTACK };
        sigaction(SIGUSR1, &sa, NULL);
        pthread_kill(pthread_self(), SIGUSR1);
    }
    return NULL;
}

#define SET_UP(argc, argv) \
    (depth = argc > 2 ? atol(argv[2]) : 0, mode = argc > 3 ? argv[3] : "plain")
"#,
    workers_main!()
);

/// Calls per function id of one thread.
fn calls_by_id(session: &atf::Session, tid: u32) -> std::collections::HashMap<u64, u64> {
    let thread = session.threads.iter().find(|t| t.id == tid).unwrap();
    let mut by = std::collections::HashMap::new();
    for e in thread.index.events() {
        let e = e.unwrap();
        if e.kind == atf::EventKind::Call {
            *by.entry(e.function_id).or_default() += 1;
        }
    }
    by
}

/// Spawns `exe` with `args` under the tracer and returns the checked session (balanced
/// accounting, nested returns in every thread) and its per-thread counts.
fn trace(exe: &std::path::Path, args: &[&str]) -> (atf::Session, Vec<ThreadTrace>) {
    let (out, tmp) = spawn_in_fresh_dir(exe, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("done"), "the target ran: {stdout}");
    let result = check_session(&session_dir(tmp.path()));
    let acc = &result.0.manifest.accounting.index;
    assert_eq!(acc.dropped.total(), 0, "drops on a clean exit: {acc:?}");
    result
}

/// Every worker thread (every thread but the main one) made `expect` calls in all, `most` of
/// them to one function, and returned from each.
fn check_workers(exe: &std::path::Path, threads: u32, args: &[&str], most: u64, expect: u64) {
    let threads_arg = threads.to_string();
    let mut all = vec![threads_arg.as_str()];
    all.extend_from_slice(args);
    let (session, traces) = trace(exe, &all);
    let main_tid = session.manifest.target_pid;
    let workers: Vec<_> = traces.iter().filter(|t| t.tid != main_tid).collect();
    assert_eq!(workers.len(), threads as usize, "one trace per worker");
    for t in workers {
        assert_eq!(t.calls, expect, "thread {}: calls", t.tid);
        assert_eq!(t.returns, t.calls, "thread {}: returns", t.tid);
        let by = calls_by_id(&session, t.tid);
        assert_eq!(by.values().max(), Some(&most), "thread {}: {by:?}", t.tid);
    }
}

/// The compiler flags of each build mode, after the optimisation level.
const PG: &[&str] = &["-pg"];
const FENTRY: &[&str] = &["-pg", "-mfentry"];
const PATCHABLE: &[&str] = &["-fpatchable-function-entry=5"];
/// Sleds with NOPs before the entry too (`N,M`): the call goes at the sled's end.
const PATCHABLE_16_8: &[&str] = &["-fpatchable-function-entry=16,8"];

/// `flags` after `opt`.
fn with(opt: &'static str, flags: &[&'static str]) -> Vec<&'static str> {
    [&[opt][..], flags].concat()
}

/// [`REC_C`] at -O0 in a build mode.
fn rec(name: &str, mode: &[&'static str]) -> std::path::PathBuf {
    build(name, REC_C, &with("-O0", mode))
}

fn pg() -> std::path::PathBuf {
    rec("rec_pg", PG)
}

fn fentry() -> std::path::PathBuf {
    rec("rec_fentry", FENTRY)
}

fn patchable() -> std::path::PathBuf {
    rec("rec_pfe", PATCHABLE)
}

/// fib(15) makes 1973 calls; the worker's own call makes one more.
const FIB15: u64 = 1973;

tests_of!(check_workers {
    pg__1_thread__then_exact_counts: (&pg(), 1, &[], FIB15, FIB15 + 1),
    pg__64_threads__then_exact_counts_in_every_thread: (&pg(), 64, &[], FIB15, FIB15 + 1),
    mfentry__1_thread__then_exact_counts: (&fentry(), 1, &[], FIB15, FIB15 + 1),
    mfentry__64_threads__then_exact_counts_in_every_thread: (&fentry(), 64, &[], FIB15, FIB15 + 1),
    patchable__1_thread__then_exact_counts: (&patchable(), 1, &[], FIB15, FIB15 + 1),
    patchable__64_threads__then_exact_counts_in_every_thread: (
        &patchable(),
        64,
        &[],
        FIB15,
        FIB15 + 1
    ),
    patchable_16_8__64_threads__then_exact_counts_in_every_thread: (
        &rec("rec_pfe_16_8", PATCHABLE_16_8),
        64,
        &[],
        FIB15,
        FIB15 + 1
    ),
    // The handler's fib(5) calls count with the worker's fib(15): same function.
    patchable__signal_handler_on_an_alternate_stack__then_its_calls_nest_inside: (
        &patchable(),
        2,
        &["0", "sig"],
        FIB15 + 15,
        1 + FIB15 + 1 + 15
    ),
    mfentry__signal_handler_on_an_alternate_stack__then_its_calls_nest_inside: (
        &fentry(),
        2,
        &["0", "sig"],
        FIB15 + 15,
        1 + FIB15 + 1 + 15
    ),
    // Each sjump: sjump, sdive x10, on_usr2, escape x4 (the fourth siglongjmps), all popped on
    // sjump's return.
    pg__siglongjmp_out_of_a_handler_through_hooked_frames__then_skipped_frames_return: (
        &pg(),
        2,
        &["0", "sigjump"],
        FIB15,
        1 + FIB15 + 2 * 16
    ),
    patchable__siglongjmp_out_of_a_handler_through_hooked_frames__then_skipped_frames_return: (
        &patchable(),
        2,
        &["0", "sigjump"],
        FIB15,
        1 + FIB15 + 2 * 16
    ),
    // Each jump: jump, dive x10 (the tenth longjmps), all popped on jump's return.
    pg__longjmp_out_of_hooked_frames__then_skipped_frames_return_and_nesting_holds: (
        &pg(),
        2,
        &["0", "jump"],
        FIB15,
        1 + FIB15 + 2 * 11
    ),
});

/// Recursion 10000 deep: the shadow stack holds 4096 frames, so worker and deep(0..=4094) are
/// hooked and the rest not, and nothing crashes.
fn recursion_deeper_than_the_shadow_stack(exe: std::path::PathBuf) {
    let (_, traces) = trace(&exe, &["1", "10000", "deep"]);
    let worker = traces.iter().max_by_key(|t| t.calls).unwrap();
    assert_eq!(worker.calls, 1 + FIB15 + 4095, "{worker:?}");
}

tests_of!(recursion_deeper_than_the_shadow_stack {
    pg__recursion_deeper_than_the_shadow_stack__then_deeper_calls_left_out_and_no_crash: (pg()),
    patchable__recursion_deeper_than_the_shadow_stack__then_deeper_calls_left_out_and_no_crash:
        (patchable()),
});

/// A `-finstrument-functions` library called from a `-pg` executable.
const LIB_C: &str = r#"
int fib(int n);
__attribute__((noinline)) int lib_leaf(int n) { return n + 1; }
int lib_entry(int n) { return lib_leaf(n) + fib(3); }
"#;

const MIXED_C: &str = r#"
#include <stdio.h>
int lib_entry(int n);
int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
int main(void) { int s = 0; for (int i = 0; i < 100; i++) s += lib_entry(i); printf("done %d\n", s); return 0; }
"#;

/// A library built with `lib_flag` called from a `-pg` executable: one nested tree.
fn mixed_in_pg(name: &str, lib_flag: &str) {
    let dir = workdir();
    let lib = build(
        &format!("lib{name}.so"),
        LIB_C,
        &["-O0", "-shared", "-fPIC", lib_flag],
    );
    assert!(lib.exists());
    let exe = build(
        name,
        MIXED_C,
        &[
            "-O0",
            "-pg",
            &format!("-L{}", dir.display()),
            "-Wl,--no-as-needed",
            &format!("-l{name}"),
            &format!("-Wl,-rpath,{}", dir.display()),
            "-rdynamic",
        ],
    );
    let (_, traces) = trace(&exe, &[]);
    assert_eq!(traces.len(), 1);
    // main; 100 x (lib_entry, lib_leaf, fib(3) = 5 calls).
    assert_eq!(traces[0].calls, 1 + 100 * 7, "{:?}", traces[0]);
}

tests_of!(mixed_in_pg {
    mixed__finstrument_library_in_a_pg_executable__then_one_nested_tree: (
        "mixed",
        "-finstrument-functions"
    ),
    mixed__patchable_library_in_a_pg_executable__then_one_nested_tree: ("mixedpfe", PATCHABLE[0]),
});

/// Optimised builds call the hook at any stack alignment (gcc calls `mcount` right after pushing
/// the saved registers): counts per function of the shared workload, at -O2.
fn optimised(name: &str, flags: &[&str]) {
    let exe = build(name, APP_C, flags);
    let (session, traces) = trace(&exe, &["4", "5000"]);
    let main_tid = session.manifest.target_pid;
    let workers: Vec<_> = traces.iter().filter(|t| t.tid != main_tid).collect();
    assert_eq!(workers.len(), 4);
    for t in workers {
        let mut counts: Vec<u64> = calls_by_id(&session, t.tid).into_values().collect();
        counts.sort_unstable();
        // worker once; top and mid 5000 times each; leaf 10000 times.
        assert_eq!(counts, [1, 5000, 5000, 10000], "thread {}", t.tid);
    }
}

tests_of!(optimised {
    pg__O2_build__then_exact_counts_per_function: ("app_pg_o2", &with("-O2", PG)),
    mfentry__O2_build__then_exact_counts_per_function: ("app_fentry_o2", &with("-O2", FENTRY)),
    patchable__O2_build__then_exact_counts_per_function: ("app_pfe_o2", &with("-O2", PATCHABLE)),
});

/// `throw <threads>`: each worker, 100 times: `catcher()` calls `thrower(5)`, which recurses to
/// depth 0 and throws through the hooked frames, caught in `catcher`; then `after()`, whose
/// return must still be recorded. A destructor (`Guard`) runs in every unwound frame and calls the
/// hooked `cleanup()`. Per worker: 1 + 100 x (catcher, 6 thrower, 6 cleanup, after) calls.
const THROW_CC: &str = concat!(
    r#"
#include <pthread.h>
#include <stdexcept>
#include <cstdio>
#include <cstdlib>
static volatile long sink;
#define HOOKED __attribute__((noinline))
HOOKED void cleanup(int n) { sink += n; }
struct Guard { int n; ~Guard() { cleanup(n); } };
HOOKED int thrower(int n) {
    Guard g{n};
    if (n == 0) throw std::runtime_error("deep");
    return thrower(n - 1) + 1;
}
HOOKED int catcher(int n) {
    try { return thrower(n); } catch (const std::exception &) { return -1; }
}
HOOKED int after(int x) { return x + 1; }
void *worker(void *) {
    for (int i = 0; i < 100; i++) { sink += catcher(5); sink += after(i); }
    return nullptr;
}
#define SET_UP(argc, argv) ((void)0)
"#,
    workers_main!()
);

/// [`THROW_CC`] built at -O1 in a build mode: each worker's 100 throws through hooked frames are
/// caught, and every call returns.
fn cxx_exceptions_through_hooked_frames(name: &str, mode: &[&'static str]) {
    let mut all = vec!["-x", "c++", "-O1"];
    all.extend_from_slice(mode);
    all.extend_from_slice(&["-Wl,--no-as-needed", "-lstdc++"]);
    let exe = build(name, THROW_CC, &all);
    check_workers(&exe, 4, &[], 600, 1 + 100 * 14);
}

tests_of!(cxx_exceptions_through_hooked_frames {
    pg__cxx_exceptions_through_hooked_frames__then_caught_and_every_call_returns: ("throw_pg", PG),
    mfentry__cxx_exceptions_through_hooked_frames__then_caught_and_every_call_returns: (
        "throw_fentry",
        FENTRY
    ),
    patchable__cxx_exceptions_through_hooked_frames__then_caught_and_every_call_returns: (
        "throw_pfe",
        PATCHABLE
    ),
});

tests_of!(fork_with_hooked_frames {
    pg__fork_with_hooked_frames__then_child_returns_through_them_and_parent_exact: (&pg()),
    patchable__fork_with_hooked_frames__then_child_returns_through_them_and_parent_exact:
        (&patchable()),
});

/// Workers fork 6 hooked frames deep: every child returns through 6 of them, and every worker
/// records its calls exactly.
fn fork_with_hooked_frames(exe: &std::path::Path) {
    let (out, tmp) = spawn_in_fresh_dir(exe, &["2", "0", "fork"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("done"));
    let session = session_dir(tmp.path()).parent().unwrap().to_path_buf();
    // The children's threads are in their own pid directories, or with the parent's: either
    // way a child's stream starts with the returns of calls its parent made.
    let (mut workers, mut children) = (0, 0);
    for dir in std::fs::read_dir(&session).unwrap() {
        let dir = dir.unwrap().path();
        if !dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("pid_")
        {
            continue;
        }
        let (_, traces) = check_session_with(&dir, true);
        for t in traces {
            if t.calls == 0 {
                // A child: back through forker(0..=5), then `_exit` inside worker.
                children += 1;
                assert_eq!(t.returns, 6, "{t:?}");
            } else if t.calls > 1 {
                // A worker: worker, fib(15), forker x6, all returned.
                workers += 1;
                assert_eq!(t.calls, 1 + FIB15 + 6, "{t:?}");
                assert_eq!(t.returns, t.calls, "{t:?}");
            }
        }
    }
    assert_eq!((workers, children), (2, 2));
}

#[test]
fn pg__pthread_exit_from_deep_inside__then_threads_end_cleanly_and_later_threads_traced() {
    // 8 threads leave 6 hooked frames each behind; their shadow stacks are reused by later ones.
    let (session, traces) = trace(&pg(), &["8", "0", "pexit"]);
    let main_tid = session.manifest.target_pid;
    for t in traces.iter().filter(|t| t.tid != main_tid) {
        assert_eq!(t.calls, 1 + FIB15 + 6, "thread {}", t.tid);
        assert_eq!(
            t.returns, FIB15,
            "thread {}: worker and leaver never return",
            t.tid
        );
    }
}

#[test]
fn mfentry__exit_from_deep_inside__then_recording_complete_and_balanced() {
    let (session, traces) = trace(&fentry(), &["1", "0", "exit"]);
    let main_tid = session.manifest.target_pid;
    let worker = traces.iter().find(|t| t.tid != main_tid).unwrap();
    assert_eq!(worker.calls, 1 + FIB15 + 6);
    assert_eq!(worker.returns, FIB15);
}

/// `backtrace(3)` in a `-pg` program: the unwinder stops at the first hooked return address (the
/// limitation the README states), and the program goes on unharmed.
const BACKTRACE_C: &str = r#"
#include <execinfo.h>
#include <stdio.h>
int inner(void) { void *b[64]; return backtrace(b, 64); }
int middle(void) { return inner(); }
int main(void) { int n = middle(); printf("done %d\n", n); return 0; }
"#;

#[test]
fn pg__program_takes_its_own_backtrace__then_it_stops_at_the_first_hooked_frame_and_runs_on() {
    let exe = build("backtrace_pg", BACKTRACE_C, &["-O0", "-pg"]);
    let untraced = std::process::Command::new(&exe).output().unwrap();
    let frames = |out: &[u8]| -> u32 {
        let text = String::from_utf8_lossy(out);
        text.trim().strip_prefix("done ").unwrap().parse().unwrap()
    };
    let whole = frames(&untraced.stdout);
    let (out, tmp) = spawn_in_fresh_dir(&exe, &[]);
    let traced = frames(&out.stdout);
    assert!(traced >= 1 && traced < whole, "{traced} of {whole} frames");
    let (_, traces) = check_session(&session_dir(tmp.path()));
    assert_eq!(traces[0].calls, 3, "main, middle, inner");
    assert_eq!(traces[0].returns, 3);
}

/// `gate <threads> <file>`: prints `ready`, then calls `wait_gate()` (a 1 ms sleep) until `file`
/// exists, then starts the workers (each computes `fib(15)`) and exits. Attached to before the
/// gate opens, a tracer sees every worker's calls from the first.
const GATE_C: &str = concat!(
    r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile long sink;
int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
void *worker(void *arg) { (void)arg; sink += fib(15); return NULL; }
void wait_gate(void) { usleep(1000); }

#define SET_UP(argc, argv) \
    do { printf("ready\n"); fflush(stdout); while (access(argv[2], F_OK) != 0) wait_gate(); } while (0)
"#,
    workers_main!()
);

/// Attaches to a [`GATE_C`] program built with `flags`, opens the gate once the tracer says it
/// is attached, and records until the program exits: every worker made exactly `fib(15)`'s calls
/// and its own, all returned.
fn attach_exact(name: &str, mode: &[&'static str], threads: u32) {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let exe = build(
        name,
        GATE_C,
        &[&with("-O0", mode)[..], &["-pthread"]].concat(),
    );
    let dir = output_dir();
    let gate = dir.path().join("gate");
    let mut target = std::process::Command::new(&exe)
        .arg(threads.to_string())
        .arg(&gate)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the target starts");
    let mut out = BufReader::new(target.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let traces = output_dir();
    let mut tracer = tracer()
        .args(["attach", "-o"])
        .arg(traces.path())
        .arg(target.id().to_string())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tracer runs");
    let mut err = BufReader::new(tracer.stderr.take().unwrap());
    let mut said = String::new();
    loop {
        let mut l = String::new();
        if err.read_line(&mut l).unwrap() == 0 {
            let _ = target.kill();
            panic!("the tracer ended before attaching: {said}");
        }
        said.push_str(&l);
        if l.contains("attached to pid") {
            break;
        }
    }
    std::fs::write(&gate, b"").unwrap();
    err.read_to_string(&mut said).unwrap();
    let status = tracer.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{said}");
    assert!(target.wait().unwrap().success());
    let (session, traces) = check_session_with(&session_dir(traces.path()), true);
    let main_tid = session.manifest.target_pid;
    let workers: Vec<_> = traces.iter().filter(|t| t.tid != main_tid).collect();
    assert_eq!(
        workers.len(),
        threads as usize,
        "one trace per worker: {said}"
    );
    for t in workers {
        assert_eq!(t.calls, FIB15 + 1, "thread {}: calls", t.tid);
        assert_eq!(t.returns, t.calls, "thread {}: returns", t.tid);
        let by = calls_by_id(&session, t.tid);
        assert_eq!(by.values().max(), Some(&FIB15), "thread {}: {by:?}", t.tid);
    }
}

tests_of!(attach_exact {
    attach__patchable_1_thread__then_exact_counts: ("gate_pfe_1", PATCHABLE, 1),
    attach__patchable_64_threads__then_exact_counts_in_every_thread: ("gate_pfe_64", PATCHABLE, 64),
    attach__pg_64_threads__then_exact_counts_in_every_thread: ("gate_pg", PG, 64),
    attach__mfentry_64_threads__then_exact_counts_in_every_thread: ("gate_fentry", FENTRY, 64),
});

/// `spin`: two threads call `top()` (which calls `mid()` and `leaf()`) for ever, printing `ready`.
const SPIN_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static volatile long sink;
void leaf(long i) { sink += i; }
void mid(long i) { leaf(i); leaf(i + 1); }
void top(long i) { mid(i); }
void *worker(void *arg) { (void)arg; for (long i = 0;; i++) { top(i); if (i % 64 == 0) usleep(50); } }
int main(void) {
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, worker, NULL);
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
"#;

/// The bytes of `pid`'s executable mappings of `exe` against the file's.
fn code_matches_file(pid: u32, exe: &std::path::Path) -> bool {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let file = std::fs::read(exe).unwrap();
    let mut checked = 0;
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[1].contains('x') || std::path::Path::new(f[5]) != exe {
            continue;
        }
        let (lo, hi) = f[0].split_once('-').unwrap();
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).unwrap(),
            u64::from_str_radix(hi, 16).unwrap(),
        );
        let offset = u64::from_str_radix(f[2], 16).unwrap() as usize;
        let mut code = vec![0u8; (hi - lo) as usize];
        mem.read_exact_at(&mut code, lo).unwrap();
        let end = (offset + code.len()).min(file.len());
        if code[..end - offset] != file[offset..end] {
            return false;
        }
        checked += 1;
    }
    assert!(
        checked > 0,
        "no code mapping of {} in {maps}",
        exe.display()
    );
    true
}

#[test]
fn attach__patchable_program_3_rounds__then_sleds_patched_while_attached_and_code_restored_after() {
    use std::io::{BufRead, BufReader};
    let exe = build(
        "spin_pfe",
        SPIN_C,
        &["-O0", "-pthread", "-fpatchable-function-entry=5"],
    );
    let dir = output_dir();
    let mut target = std::process::Command::new(&exe)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the target starts");
    let stdout = target.stdout.take().unwrap();
    let pid = target.id();
    // Killed on drop, if an assertion fails.
    let mut target = Background(Some(target));
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(code_matches_file(pid, &exe), "patched before any attach");
    for round in 0..3 {
        let out = output_dir();
        let result = tracer()
            .args(["attach", "--duration", "0.3", "-o"])
            .arg(out.path())
            .arg(pid.to_string())
            .output()
            .unwrap();
        let err = stderr(&result);
        assert_eq!(result.status.code(), Some(0), "round {round}: {err}");
        let session = session_dir(out.path());
        check_session_with(&session, true);
        let report = run(&["report", session.to_str().unwrap()]);
        let report = String::from_utf8_lossy(&report.stdout);
        for name in ["top", "mid", "leaf"] {
            let line = report.lines().find(|l| l.ends_with(&format!(" {name}")));
            assert!(line.is_some(), "round {round}: {name} recorded: {report}");
        }
        assert!(code_matches_file(pid, &exe), "round {round}: code restored");
        let alive = target.0.as_mut().unwrap().try_wait().unwrap().is_none();
        assert!(alive, "round {round}: the target died");
    }
}

/// `mid(0x1234)` calls `leaf` twice and returns `0x1236 + 0x1238`.
const TRIGGER_C: &str = r#"
#include <stdio.h>
__attribute__((noinline)) long leaf(long a, double x) { return a + (long)x; }
__attribute__((noinline)) long mid(long a) { return leaf(a, 2.5) + leaf(a + 1, 3.5); }
int main(void) { printf("done %ld\n", mid(0x1234)); return 0; }
"#;

/// `--trigger symbol=mid` on a program built with `flags`: the window is kept, and `replay`
/// shows mid's call with its argument (the hook's `rdi`) and its return with the value (`rax`).
fn trigger_shows_arguments_and_return_value(name: &str, mode: &[&'static str]) {
    let exe = build(name, TRIGGER_C, &with("-O1", mode));
    let tmp = output_dir();
    let out = tracer()
        .current_dir(tmp.path())
        .args(["spawn", "--trigger", "symbol=mid", "-o"])
        .arg(tmp.path())
        .arg(&exe)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dir = session_dir(tmp.path());
    let replay = run(&["replay", dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&replay.stdout).into_owned();
    assert!(text.contains("mid() {"), "{text}");
    let call = text.split("mid() {").nth(1).unwrap();
    assert!(call.contains("/* detail of the call ("), "{text}");
    assert!(
        call.contains("rdi 0000000000001234"),
        "mid's argument: {text}"
    );
    assert!(call.contains("in mid+0x"), "{text}");
    // The return's detail follows the line that closes the call.
    let after = call.split("} /* mid */").nth(1).unwrap();
    let ret = after.split(" */").next().unwrap();
    assert!(ret.contains("/* detail of the return"), "{text}");
    assert!(
        ret.contains(&format!("rax {:016x}", 0x1236 + 0x1238)),
        "mid's value: {text}"
    );
    assert!(ret.contains("returning to main+0x"), "{text}");
}

tests_of!(trigger_shows_arguments_and_return_value {
    pg__trigger_symbol__then_its_argument_and_return_value_shown: ("trigger_pg", PG),
    mfentry__trigger_symbol__then_its_argument_and_return_value_shown: ("trigger_fentry", FENTRY),
    patchable__trigger_symbol__then_its_argument_and_return_value_shown: ("trigger_pfe", PATCHABLE),
});

/// A plugin built with `-fpatchable-function-entry`, loaded with `dlopen` after the start.
const PLUGIN_C: &str = r#"
__attribute__((noinline)) int plugin_leaf(int n) { return n + 1; }
int plugin_entry(int n) { return plugin_leaf(n) + plugin_leaf(n + 1); }
"#;

/// `dl <plugin>`: a `-pg` program that loads the plugin and calls `plugin_entry` 10 times.
const DLOPEN_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    (void)argc;
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { printf("dlopen failed: %s\n", dlerror()); return 1; }
    int (*entry)(int) = (int (*)(int))dlsym(h, "plugin_entry");
    int s = 0;
    for (int i = 0; i < 10; i++) s += entry(i);
    printf("done %d\n", s);
    return 0;
}
"#;

#[test]
fn patchable__library_loaded_with_dlopen__then_its_sleds_patched_and_calls_counted() {
    let plugin = build(
        "libpatchplugin.so",
        PLUGIN_C,
        &["-O0", "-shared", "-fPIC", "-fpatchable-function-entry=5"],
    );
    let exe = build("dlopen_pg", DLOPEN_C, &["-O0", "-pg", "-ldl"]);
    let (_, traces) = trace(&exe, &[plugin.to_str().unwrap()]);
    assert_eq!(traces.len(), 1);
    // main, then 10 x (plugin_entry, plugin_leaf x 2).
    assert_eq!(traces[0].calls, 1 + 10 * 3, "{:?}", traces[0]);
}

/// [`REC_C`] built with `flags` runs untraced under `tracer spawn`, done and exit 0, with one
/// line about its patchable sleds that says `why`.
fn runs_untraced_with_one_line(name: &str, flags: &[&str], why: &str) {
    let exe = build(name, REC_C, flags);
    let tmp = output_dir();
    let out = tracer()
        .current_dir(tmp.path())
        .args(["spawn", "-o"])
        .arg(tmp.path())
        .arg(&exe)
        .args(["--", "1"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("done"));
    let said: Vec<&str> = err.lines().filter(|l| l.contains("patchable")).collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(said[0].contains(why), "{err}");
}

tests_of!(runs_untraced_with_one_line {
    patchable__non_pie_executable__then_runs_untraced_with_one_line_naming_the_fix: (
        "rec_pfe_nopie",
        &with("-O0", &["-no-pie", PATCHABLE[0]]),
        "build with -fPIE"
    ),
    patchable__sleds_shorter_than_a_call__then_runs_untraced_with_one_line_saying_why: (
        "rec_pfe_4",
        &["-O0", "-fpatchable-function-entry=4"],
        "fewer than 5 NOP bytes"
    ),
});
