//! Library calls of programs nobody rebuilt: the agent redirects the GOT entries of the main
//! executable (`--library-calls main`, the default) or of every object (`all`) and records each
//! call into a shared library as a call/return pair named by the library function, with exact
//! counts, whatever the binding (lazy, `-z now`, `LD_BIND_NOW`, `-fno-plt`), and without harm
//! from functions that do not return normally.

#![allow(non_snake_case)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

/// `libcalls <mode> [threads]`. Modes:
/// - `counts`: each of `threads` workers calls `getpid` 1000 times, `strlen` (an IFUNC) 300 times,
///   `malloc` and `free` 200 times each; the main thread creates and joins them.
/// - `exit`: an `atexit` handler calls `getpid` once; `exit` from two program frames deep.
/// - `_exit`: `_exit` after one `getpid`.
/// - `longjmp`: ten rounds of `setjmp`, `getpid` and `longjmp` from a nested function, then
///   `getpid` after each landing.
/// - `pthread_exit`: a thread calls `getpid` then `pthread_exit` two frames deep.
/// - `fork`: the child calls `getpid` 3 times and `_exit(0)`s; the parent waits and checks.
/// - `vfork`: the child `_exit`s at once; the parent calls `getpid` after, 5 times.
/// - `exec`: calls `getpid` twice, then `execv`s itself in mode `execd` (3 `getpid`s).
/// - `qsort`: `qsort` of 64 ints with a comparator that calls `getpid`; prints the comparisons.
const LIBCALLS_C: &str = r#"
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile long sink;
static char text[64] = "library calls of a program nobody rebuilt";

void *worker(void *arg) {
    (void)arg;
    for (int i = 0; i < 1000; i++) sink += getpid();
    for (int i = 0; i < 300; i++) sink += strlen(text);
    for (int i = 0; i < 200; i++) free(malloc(16 + i));
    return NULL;
}

static void at_exit(void) { sink += getpid(); }
__attribute__((noinline)) void leave(int depth) { if (depth == 0) exit(0); leave(depth - 1); sink++; }

static jmp_buf where;
__attribute__((noinline)) void jumper(void) { sink += getpid(); longjmp(where, 1); }

__attribute__((noinline)) void *exiter(void *arg) { (void)arg; sink += getpid(); pthread_exit(NULL); }
__attribute__((noinline)) void *thread_leave(void *arg) { return exiter(arg); }

static long comparisons;
static int by_value(const void *a, const void *b) {
    comparisons++;
    sink += getpid();
    return *(const int *)a - *(const int *)b;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "counts";
    if (strcmp(mode, "counts") == 0) {
        long threads = argc > 2 ? atol(argv[2]) : 1;
        pthread_t t[64];
        for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, NULL);
        for (long i = 0; i < threads; i++) pthread_join(t[i], NULL);
    } else if (strcmp(mode, "exit") == 0) {
        atexit(at_exit);
        puts("done");
        fflush(stdout);
        leave(2);
    } else if (strcmp(mode, "_exit") == 0) {
        sink += getpid();
        puts("done");
        fflush(stdout);
        _exit(0);
    } else if (strcmp(mode, "longjmp") == 0) {
        for (int i = 0; i < 10; i++) {
            if (setjmp(where) == 0) jumper();
            sink += getpid();
        }
    } else if (strcmp(mode, "pthread_exit") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, thread_leave, NULL);
        pthread_join(t, NULL);
    } else if (strcmp(mode, "fork") == 0) {
        pid_t pid = fork();
        if (pid == 0) {
            for (int i = 0; i < 3; i++) sink += getpid();
            _exit(0);
        }
        int status = 1;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { puts("child failed"); return 1; }
    } else if (strcmp(mode, "vfork") == 0) {
        pid_t pid = vfork();
        if (pid == 0) _exit(0);
        int status = 1;
        waitpid(pid, &status, 0);
        for (int i = 0; i < 5; i++) sink += getpid();
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { puts("child failed"); return 1; }
    } else if (strcmp(mode, "exec") == 0) {
        sink += getpid();
        sink += getpid();
        char *args[] = { argv[0], "execd", NULL };
        execv("/proc/self/exe", args);
        puts("exec failed");
        return 1;
    } else if (strcmp(mode, "execd") == 0) {
        for (int i = 0; i < 3; i++) sink += getpid();
    } else if (strcmp(mode, "qsort") == 0) {
        int v[64];
        for (int i = 0; i < 64; i++) v[i] = (i * 37) % 64;
        qsort(v, 64, sizeof v[0], by_value);
        printf("comparisons %ld\n", comparisons);
    }
    puts("done");
    return 0;
}
"#;

/// The workload built with `flags` (plain C: no instrumentation), once per name.
fn libcalls(name: &str, flags: &[&str]) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = vec!["-O1", "-fno-builtin"];
    all.extend_from_slice(flags);
    build(name, LIBCALLS_C, &all)
}

/// Runs `tracer spawn [extra] -o <dir> <exe> -- <args>` with `env` (library calls at their
/// default unless `extra` says otherwise), checks it exited 0, and returns its output and the
/// directory.
fn run_spawn(
    extra: &[&str],
    env: &[(&str, &str)],
    exe: &Path,
    args: &[&str],
) -> (std::process::Output, tempfile::TempDir) {
    let tmp = output_dir();
    let out = tracer()
        .env_remove("TRACER_LIBRARY_CALLS")
        .current_dir(tmp.path())
        .arg("spawn")
        .args(extra)
        .arg("-o")
        .arg(tmp.path())
        .arg(exe)
        .arg("--")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the tracer runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    (out, tmp)
}

/// [`run_spawn`], and the checked session's per-thread traces.
fn spawn_with(
    extra: &[&str],
    env: &[(&str, &str)],
    exe: &Path,
    args: &[&str],
) -> (std::process::Output, Vec<ThreadTrace>, tempfile::TempDir) {
    let (out, tmp) = run_spawn(extra, env, exe, args);
    let (_, traces) = check_session(&session_dir(tmp.path()));
    (out, traces, tmp)
}

/// Calls per name over every thread.
fn total(traces: &[ThreadTrace]) -> BTreeMap<String, u64> {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for t in traces {
        for (name, n) in &t.by_name {
            *by.entry(name.clone()).or_default() += n;
        }
    }
    by
}

fn count(by: &BTreeMap<String, u64>, name: &str) -> u64 {
    by.get(name).copied().unwrap_or(0)
}

/// Every worker made exactly its calls, each returned, and the main thread created and joined
/// them.
fn check_counts(traces: &[ThreadTrace], threads: u64) {
    let workers: Vec<&ThreadTrace> = traces
        .iter()
        .filter(|t| t.by_name.contains_key("getpid"))
        .collect();
    assert_eq!(workers.len() as u64, threads, "{traces:#?}");
    for t in workers {
        assert_eq!(count(&t.by_name, "getpid"), 1000, "{t:?}");
        assert_eq!(count(&t.by_name, "strlen"), 300, "{t:?}");
        assert_eq!(count(&t.by_name, "malloc"), 200, "{t:?}");
        assert_eq!(count(&t.by_name, "free"), 200, "{t:?}");
        assert_eq!(t.calls, 1700, "only the worker's own library calls: {t:?}");
        assert_eq!(t.returns, t.calls, "{t:?}");
    }
    let all = total(traces);
    assert_eq!(count(&all, "pthread_create"), threads, "{all:?}");
    assert_eq!(count(&all, "pthread_join"), threads, "{all:?}");
}

#[test]
fn counts__lazy_binding_8_threads__then_exact_per_thread_counts_named_by_library_function() {
    let exe = libcalls("libcalls_lazy", &[]);
    let (out, traces, _tmp) = spawn_with(&[], &[], &exe, &["counts", "8"]);
    check_counts(&traces, 8);
    let err = stderr(&out);
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("only its library calls are recorded"))
        .collect();
    assert_eq!(
        said.len(),
        1,
        "one line says what is recorded and why: {err}"
    );
    assert!(said[0].contains("not built for call tracing"), "{err}");
}

/// Every object's library calls: the C library's own calls made while the agent registers each
/// thread (`pthread_getattr_np`'s `malloc`, say) are the agent's, not the program's: neither
/// recorded nor counted, and the workers' counts stay exact. (The C library's calls as a thread
/// exits, after its slot was given back, are the program's: counted as `thread_teardown`.)
#[test]
fn scope_all__8_threads__then_nothing_dropped_while_the_agent_sets_threads_up() {
    let exe = libcalls("libcalls_lazy", &[]);
    let (out, tmp) = run_spawn(&["--library-calls", "all"], &[], &exe, &["counts", "8"]);
    let (session, traces) = check_session(&session_dir(tmp.path()));
    let accounting = &session.manifest.accounting.index;
    assert!(accounting.balanced(), "{accounting:?}");
    let dropped = &accounting.dropped;
    assert_eq!(
        dropped.total(),
        dropped.thread_teardown,
        "only the exits' calls: {accounting:?}"
    );
    assert_eq!(dropped.agent_setup, 0, "{accounting:?}");
    let summary = stderr(&out);
    assert!(!summary.contains("agent setup"), "{summary}");
    assert!(!summary.contains("registry full"), "{summary}");
    let workers: Vec<&ThreadTrace> = traces
        .iter()
        .filter(|t| t.by_name.contains_key("getpid"))
        .collect();
    assert_eq!(workers.len(), 8, "{traces:#?}");
    for t in workers {
        assert_eq!(count(&t.by_name, "getpid"), 1000, "{t:?}");
    }
}

#[test]
fn counts__ld_bind_now__then_exact_counts() {
    let exe = libcalls("libcalls_lazy2", &[]);
    let (_, traces, _tmp) = spawn_with(&[], &[("LD_BIND_NOW", "1")], &exe, &["counts", "4"]);
    check_counts(&traces, 4);
}

#[test]
fn counts__z_now_full_relro__then_exact_counts() {
    let exe = libcalls("libcalls_now", &["-Wl,-z,now,-z,relro"]);
    let (_, traces, _tmp) = spawn_with(&[], &[], &exe, &["counts", "4"]);
    check_counts(&traces, 4);
}

#[test]
fn counts__fno_plt__then_got_indirect_calls_counted_exactly() {
    let exe = libcalls("libcalls_noplt", &["-fno-plt"]);
    let (_, traces, _tmp) = spawn_with(&[], &[], &exe, &["counts", "4"]);
    check_counts(&traces, 4);
}

#[test]
fn counts__fno_plt_and_z_now__then_exact_counts() {
    let exe = libcalls("libcalls_noplt_now", &["-fno-plt", "-Wl,-z,now,-z,relro"]);
    let (_, traces, _tmp) = spawn_with(&[], &[], &exe, &["counts", "2"]);
    check_counts(&traces, 2);
}

#[test]
fn counts__no_pie__then_exact_counts() {
    let exe = libcalls("libcalls_nopie", &["-no-pie", "-fno-pie"]);
    let (_, traces, _tmp) = spawn_with(&[], &[], &exe, &["counts", "2"]);
    check_counts(&traces, 2);
}

#[test]
fn library_calls_none__uninstrumented_program__then_nothing_recorded_and_told_why() {
    let exe = libcalls("libcalls_none", &[]);
    let (out, _tmp) = run_spawn(&["--library-calls", "none"], &[], &exe, &["counts", "1"]);
    let err = stderr(&out);
    assert!(err.contains("recorded no events"), "{err}");
    assert!(err.contains("not built for call tracing"), "{err}");
}

#[test]
fn exit__from_program_frames__then_exit_recorded_and_atexit_calls_nest_inside() {
    let exe = libcalls("libcalls_exit", &[]);
    let (out, traces, _tmp) = spawn_with(&[], &[], &exe, &["exit"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"));
    let all = total(&traces);
    assert_eq!(count(&all, "exit"), 1, "{all:?}");
    assert_eq!(count(&all, "__cxa_atexit"), 1, "atexit(3): {all:?}");
    assert_eq!(
        count(&all, "getpid"),
        1,
        "the handler's call, inside exit: {all:?}"
    );
}

#[test]
fn underscore_exit__then_recorded_and_stream_intact() {
    let exe = libcalls("libcalls_uexit", &[]);
    let (_, traces, _tmp) = spawn_with(&[], &[], &exe, &["_exit"]);
    let all = total(&traces);
    assert_eq!(count(&all, "_exit"), 1, "{all:?}");
    assert_eq!(count(&all, "getpid"), 1, "{all:?}");
}

#[test]
fn longjmp__out_of_a_nested_function__then_every_call_returns_once() {
    let exe = libcalls("libcalls_jump", &[]);
    let (_, traces, _tmp) = spawn_with(&[], &[], &exe, &["longjmp"]);
    let all = total(&traces);
    assert_eq!(count(&all, "_setjmp"), 10, "{all:?}");
    assert_eq!(count(&all, "longjmp"), 10, "{all:?}");
    assert_eq!(count(&all, "getpid"), 20, "{all:?}");
    let main = traces
        .iter()
        .find(|t| t.by_name.contains_key("longjmp"))
        .unwrap();
    assert_eq!(
        main.returns, main.calls,
        "skipped frames returned: {main:?}"
    );
}

#[test]
fn pthread_exit__two_frames_deep__then_thread_ends_and_stream_intact() {
    let exe = libcalls("libcalls_pexit", &[]);
    let (out, traces, _tmp) = spawn_with(&[], &[], &exe, &["pthread_exit"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"));
    let all = total(&traces);
    assert_eq!(count(&all, "pthread_exit"), 1, "{all:?}");
    assert_eq!(count(&all, "pthread_join"), 1, "{all:?}");
}

#[test]
fn fork__child_returns_through_hooked_call__then_both_run_on() {
    let exe = libcalls("libcalls_fork", &[]);
    let (out, tmp) = run_spawn(&[], &[], &exe, &["fork"]);
    // Each process has its own directory; the child's stream starts with the return of `fork`,
    // whose call is in its parent's.
    let traces: Vec<ThreadTrace> = pid_dirs(tmp.path())
        .iter()
        .flat_map(|dir| check_session_with(dir, true).1)
        .collect();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("done") && !stdout.contains("failed"),
        "{stdout}"
    );
    let all = total(&traces);
    assert_eq!(count(&all, "fork"), 1, "{all:?}");
    assert_eq!(count(&all, "waitpid"), 1, "{all:?}");
    assert_eq!(count(&all, "getpid"), 3, "the child's: {all:?}");
}

#[test]
fn vfork__child_shares_the_stack__then_parent_unharmed_and_counts_exact() {
    let exe = libcalls("libcalls_vfork", &[]);
    let (out, traces, _tmp) = spawn_with(&[], &[], &exe, &["vfork"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("done") && !stdout.contains("failed"),
        "{stdout}"
    );
    let all = total(&traces);
    assert_eq!(count(&all, "vfork"), 1, "{all:?}");
    assert_eq!(count(&all, "getpid"), 5, "{all:?}");
}

#[test]
fn exec__into_itself__then_calls_of_both_images_recorded_in_one_stream() {
    let exe = libcalls("libcalls_exec", &[]);
    let (out, tmp) = run_spawn(&[], &[], &exe, &["exec"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"));
    let (session, traces) = check_session(&session_dir(tmp.path()));
    let all = total(&traces);
    assert_eq!(count(&all, "execv"), 1, "{all:?}");
    assert_eq!(
        count(&all, "getpid"),
        5,
        "2 before the exec, 3 after: {all:?}"
    );
    // The first image: 8 strcmp, 2 getpid, execv (no return); the new one: 9 strcmp, 3 getpid,
    // puts, each returned: 21 + 26 events, all written.
    let acc = &session.manifest.accounting.index;
    assert_eq!((acc.attempted, acc.persisted), (47, 47), "{acc:?}");
}

#[test]
fn qsort__comparator_calls_back_into_the_program__then_its_calls_nest_inside_qsort() {
    let exe = libcalls("libcalls_qsort", &[]);
    let (out, traces, _tmp) = spawn_with(&[], &[], &exe, &["qsort"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let comparisons: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("comparisons "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the target counted");
    let all = total(&traces);
    assert_eq!(count(&all, "qsort"), 1, "{all:?}");
    assert_eq!(count(&all, "getpid"), comparisons, "{all:?}");
}

/// A library whose function calls `getpid` 7 times (its own GOT), for `--library-calls all`.
const LIB_C: &str = r#"
#include <unistd.h>
long lib_work(void) { long s = 0; for (int i = 0; i < 7; i++) s += getpid(); return s; }
"#;

const USES_LIB_C: &str = r#"
#include <stdio.h>
long lib_work(void);
int main(void) { printf("done %ld\n", lib_work() > 0 ? 1L : 0L); return 0; }
"#;

fn with_library() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let lib = build("liblcwork.so", LIB_C, &["-O1", "-shared", "-fPIC"]);
        let dir = lib.parent().unwrap().to_str().unwrap().to_owned();
        build(
            "uses_lib",
            USES_LIB_C,
            &[
                "-O1",
                &format!("-L{dir}"),
                &format!("-Wl,-rpath,{dir}"),
                "-Wl,--no-as-needed",
                "-llcwork",
                "-x",
                "c",
            ],
        )
    })
    .clone()
}

#[test]
fn scope_main__library_calls_getpid__then_only_the_executables_call_recorded() {
    let (_, traces, _tmp) = spawn_with(&[], &[], &with_library(), &[]);
    let all = total(&traces);
    assert_eq!(count(&all, "lib_work"), 1, "{all:?}");
    assert_eq!(count(&all, "getpid"), 0, "the library's own calls: {all:?}");
}

#[test]
fn scope_all__library_calls_getpid__then_its_calls_nest_under_the_executables() {
    let (_, traces, _tmp) = spawn_with(&["--library-calls", "all"], &[], &with_library(), &[]);
    let all = total(&traces);
    assert_eq!(count(&all, "lib_work"), 1, "{all:?}");
    assert_eq!(count(&all, "getpid"), 7, "{all:?}");
}

#[test]
fn bin_ls__a_directory__then_opendir_readdir_closedir() {
    let dir = output_dir();
    for name in ["a", "b", "c"] {
        std::fs::write(dir.path().join(name), b"").unwrap();
    }
    let (out, traces, _tmp) = spawn_with(
        &[],
        &[],
        Path::new("/bin/ls"),
        &[dir.path().to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains('b'));
    let all = total(&traces);
    assert_eq!(count(&all, "opendir"), 1, "{all:?}");
    assert!(all.keys().any(|k| k.starts_with("readdir")), "{all:?}");
    assert_eq!(count(&all, "closedir"), 1, "{all:?}");
}

#[test]
fn python3__print__then_library_calls_recorded_with_one_line_saying_so() {
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped: /usr/bin/python3 is not installed");
        return;
    }
    let (out, traces, _tmp) =
        spawn_with(&[], &[], Path::new("/usr/bin/python3"), &["-c", "print(1)"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let calls: u64 = traces.iter().map(|t| t.calls).sum();
    assert!(calls > 100, "python makes many library calls: {calls}");
    let err = stderr(&out);
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("only its library calls"))
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn static_program__then_one_line_explains_why_nothing_is_recorded() {
    let probe = std::process::Command::new("cc")
        .args(["-static", "-x", "c", "-o", "/dev/null", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"int main(void){return 0;}")?;
            c.wait()
        });
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: no static libc to link a static program with");
        return;
    }
    let exe = libcalls("libcalls_static", &["-static"]);
    let (out, _tmp) = run_spawn(&[], &[], &exe, &["counts", "1"]);
    let err = stderr(&out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("statically linked"))
        .collect();
    assert!(!lines.is_empty(), "{err}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("rebuild it without `-static`")),
        "{err}"
    );
}

const NESTED_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) long work(long n) { return getpid() + n; }
int main(void) { long s = 0; for (int i = 0; i < 10; i++) s += work(i); printf("done %ld\n", s > 0 ? 1L : 0L); return 0; }
"#;

#[test]
fn fentry_program__library_calls_main__then_library_calls_nest_under_instrumented_functions() {
    let exe = build("nested_fentry", NESTED_C, &["-O1", "-pg", "-mfentry"]);
    let (_, traces, tmp) = spawn_with(&[], &[], &exe, &[]);
    let all = total(&traces);
    assert_eq!(count(&all, "work"), 10, "{all:?}");
    assert_eq!(count(&all, "getpid"), 10, "{all:?}");
    // Each getpid is called inside work, in one tree.
    let mut parents = BTreeMap::<String, u64>::new();
    walk_calls(tmp.path(), |name, parent, _| {
        if name == "getpid" {
            *parents.entry(parent.to_owned()).or_default() += 1;
        }
    });
    assert_eq!(parents.get("work"), Some(&10), "{parents:?}");
}

/// Walks each thread's events of the session in `dir`, keeping the stack of open calls: calls
/// `on_call(name, caller's name, depth)` at each call, and checks that each return closes the
/// innermost open call.
fn walk_calls(dir: &Path, mut on_call: impl FnMut(&str, &str, usize)) {
    let session = atf::Session::open(session_dir(dir)).unwrap();
    let name_of = function_namer(&session);
    let name = |id: u64| name_of(id).unwrap_or_default();
    for thread in &session.threads {
        let mut stack: Vec<u64> = Vec::new();
        for e in thread.index.events() {
            let e = e.unwrap();
            match e.kind {
                atf::EventKind::Call => {
                    let parent = stack.last().map(|&p| name(p)).unwrap_or_default();
                    stack.push(e.function_id);
                    on_call(&name(e.function_id), &parent, stack.len());
                }
                _ => assert_eq!(stack.pop(), Some(e.function_id), "a return out of order"),
            }
        }
    }
}

/// Starts `exe` with `env`, its output piped; returns it and a reader of its next output line.
fn start_printing(
    exe: &Path,
    env: &[(&str, &str)],
) -> (std::process::Child, impl FnMut() -> String) {
    let mut child = std::process::Command::new(exe)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    (child, move || lines.next().unwrap().unwrap())
}

/// `tracer attach --duration <seconds>` to `pid` (library calls at their default), into a new
/// output directory.
fn attach_for(pid: u32, seconds: &str) -> (std::process::Output, tempfile::TempDir) {
    let tmp = output_dir();
    let out = tracer()
        .env_remove("TRACER_LIBRARY_CALLS")
        .args(["attach", "--duration", seconds, "-o"])
        .arg(tmp.path())
        .arg(pid.to_string())
        .output()
        .unwrap();
    (out, tmp)
}

/// `descend(n)`: `strlen`, then (n > 0) a `qsort` of two ints whose comparator calls
/// `descend(n - 1)`: library frames and the program's own (hooked by `__fentry__`) alternate, 3 per
/// level, in one shadow stack.
const DESCEND_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static volatile long sink;
static char text[] = "deep";
static long pending = -1;
void descend(long n);
static int compare(const void *a, const void *b) {
    long n = pending;
    pending = -1;
    if (n >= 0) descend(n);
    return *(const int *)a - *(const int *)b;
}
__attribute__((noinline)) void descend(long n) {
    sink += strlen(text);
    if (n == 0) return;
    int v[2] = {2, 1};
    pending = n - 1;
    qsort(v, 2, sizeof v[0], compare);
    if (v[0] != 1) abort();
}
int main(int argc, char **argv) { descend(atol(argv[1])); puts("done"); return 0; }
"#;

#[test]
fn fentry_program__recursion_through_qsort_200_deep__then_every_frame_returns_in_order() {
    let exe = build(
        "descend_fentry",
        DESCEND_C,
        &["-O1", "-fno-builtin", "-pg", "-mfentry"],
    );
    let (out, traces, tmp) = spawn_with(&[], &[], &exe, &["200"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"));
    let all = total(&traces);
    assert_eq!(count(&all, "descend"), 201, "{all:?}");
    assert_eq!(count(&all, "qsort"), 200, "{all:?}");
    assert_eq!(count(&all, "strlen"), 201, "{all:?}");
    for t in &traces {
        assert_eq!(t.calls, t.returns, "{t:?}");
    }
    // Each return closes the innermost open call, down to 600 frames and back.
    let mut deepest = 0;
    walk_calls(tmp.path(), |name, parent, depth| {
        if name == "qsort" {
            assert_eq!(parent, "descend");
        }
        deepest = deepest.max(depth);
    });
    assert!(deepest >= 600, "{deepest}");
}

/// `measure` ends in a tail call of `strlen` (`jmp strlen@plt` at `-O2`): the library call
/// reuses the slot `__fentry__` hooked, which already holds the hooks' trampoline.
const TAIL_C: &str = r#"
#include <stdio.h>
#include <string.h>
static volatile long sink;
__attribute__((noinline)) size_t measure(const char *s) { return strlen(s); }
int main(void) {
    for (int i = 0; i < 100; i++) sink += measure("tail call");
    printf("done %ld\n", sink);
    return 0;
}
"#;

#[test]
fn fentry_program__tail_call_into_a_library_function__then_both_return_once_in_order() {
    let exe = build(
        "tail_fentry",
        TAIL_C,
        &["-O2", "-fno-builtin", "-pg", "-mfentry"],
    );
    let (out, traces, tmp) = spawn_with(&[], &[], &exe, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("done 900"));
    let all = total(&traces);
    assert_eq!(count(&all, "measure"), 100, "{all:?}");
    assert_eq!(count(&all, "strlen"), 100, "{all:?}");
    for t in &traces {
        assert_eq!(t.calls, t.returns, "{t:?}");
    }
    walk_calls(tmp.path(), |name, parent, _| {
        if name == "strlen" {
            assert_eq!(parent, "measure");
        }
    });
}

/// `sorter`: sorts two ints with a comparator that sleeps 20 ms, forever, printing `tick <n>
/// sorted` after each sort: a `qsort` of the main thread is in flight at almost any moment.
const SORTER_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static int slow(const void *a, const void *b) { usleep(20000); return *(const int *)a - *(const int *)b; }
int main(void) {
    for (long n = 0;; n++) {
        int v[2] = {2, 1};
        qsort(v, 2, sizeof v[0], slow);
        printf("tick %ld %s\n", n, v[0] == 1 && v[1] == 2 ? "sorted" : "WRONG");
        fflush(stdout);
    }
}
"#;

#[test]
fn attach__qsort_in_flight_at_each_of_5_detaches__then_it_returns_and_the_program_goes_on() {
    let _heavy = heavy();
    let exe = build("sorter", SORTER_C, &["-O1"]);
    let (mut child, mut next) = start_printing(&exe, &[]);
    let pid = child.id();
    assert_eq!(next(), "tick 0 sorted");
    for round in 0..5 {
        let (out, tmp) = attach_for(pid, "0.1");
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {}",
            stderr(&out)
        );
        let (_, traces) = check_session_with(&session_dir(tmp.path()), true);
        assert!(count(&total(&traces), "usleep") >= 1, "round {round}");
        // The qsort in flight at the detach returned (through the agent's return, still mapped).
        for _ in 0..2 {
            let line = next();
            assert!(line.ends_with(" sorted"), "round {round}: {line}");
        }
    }
    assert!(child.try_wait().unwrap().is_none(), "the target lives");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `ticker`: a worker calls `getpid` 1000 times then sleeps 1 ms, forever; the main thread prints
/// `tick <n>` every 100 ms, so a `usleep` of the main thread is in flight at almost any moment.
const TICKER_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static volatile long sink;
void *worker(void *arg) { (void)arg; for (;;) { for (int i = 0; i < 1000; i++) sink += getpid(); usleep(1000); } return NULL; }
int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    for (long n = 0;; n++) { printf("tick %ld\n", n); fflush(stdout); usleep(100000); }
}
"#;

/// The run-time address of the executable's GOT entry for `name` in process `pid`.
fn got_entry(pid: u32, exe: &Path, name: &str) -> u64 {
    use object::{Object, ObjectSegment, ObjectSymbol, ObjectSymbolTable};
    let data = std::fs::read(exe).unwrap();
    let elf = object::File::parse(&*data).unwrap();
    let dynsym = elf.dynamic_symbol_table().unwrap();
    let offset = elf
        .dynamic_relocations()
        .unwrap()
        .find_map(|(offset, r)| match r.target() {
            object::RelocationTarget::Symbol(i) => {
                (dynsym.symbol_by_index(i).ok()?.name().ok()? == name).then_some(offset)
            }
            _ => None,
        })
        .expect("a GOT entry");
    let first = elf.segments().map(|s| s.address()).min().unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let exe_path = std::fs::canonicalize(exe).unwrap();
    let start = maps
        .lines()
        .find(|l| l.ends_with(exe_path.to_str().unwrap()))
        .and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok())
        .unwrap();
    start - (first & !0xfff) + offset
}

/// The 8 bytes at `address` in process `pid`.
fn peek(pid: u32, address: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut word = [0u8; 8];
    mem.read_exact_at(&mut word, address).unwrap();
    u64::from_le_bytes(word)
}

/// Anonymous executable mappings of `pid` (the agent's stub pages among them).
fn anonymous_code_pages(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 5 && f[1].contains('x')
        })
        .count()
}

#[test]
fn attach__uninstrumented_program_20_rounds__then_calls_recorded_got_restored_and_no_growth() {
    let _heavy = heavy();
    let exe = build("ticker", TICKER_C, &["-O1"]);
    let (mut child, mut next) = start_printing(&exe, &[("LD_BIND_NOW", "1")]);
    let pid = child.id();
    assert_eq!(next(), "tick 0");
    let entry = got_entry(pid, &exe, "getpid");
    let bound = peek(pid, entry);
    let mut stub_pages = None;
    for round in 0..20 {
        let (out, tmp) = attach_for(pid, "0.15");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "round {round}: {err}");
        assert_eq!(
            err.lines()
                .filter(|l| l.contains("only its library calls"))
                .count(),
            1,
            "round {round}: {err}"
        );
        let (_, traces) = check_session_with(&session_dir(tmp.path()), true);
        let all = total(&traces);
        assert!(count(&all, "getpid") >= 1000, "round {round}: {all:?}");
        assert_eq!(
            peek(pid, entry),
            bound,
            "round {round}: the GOT entry is put back"
        );
        // The stubs are made once and reused by every later attach.
        let pages = anonymous_code_pages(pid);
        assert_eq!(*stub_pages.get_or_insert(pages), pages, "round {round}");
        let _ = next(); // still ticking
    }
    // A usleep of the main thread was in flight at each detach: it returned, the ticks go on.
    for _ in 0..3 {
        assert!(next().starts_with("tick "));
    }
    assert!(child.try_wait().unwrap().is_none(), "the target lives");
    child.kill().unwrap();
    child.wait().unwrap();
}

const DLOPENS_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { printf("dlopen failed: %s\n", dlerror()); return 1; }
    long (*work)(void) = (long (*)(void))dlsym(lib, "lib_work");
    long s = 0;
    for (int i = 0; i < 3; i++) s += work();
    printf("done %ld\n", s > 0 ? 1L : 0L);
    return 0;
}
"#;

#[test]
fn scope_all__library_loaded_with_dlopen__then_its_calls_recorded_and_named() {
    with_library();
    let lib = workdir().join("liblcwork.so");
    let exe = build("dlopens", DLOPENS_C, &["-O1", "-ldl"]);
    let (out, traces, _tmp) = spawn_with(
        &["--library-calls", "all"],
        &[],
        &exe,
        &[lib.to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"));
    let all = total(&traces);
    assert_eq!(
        count(&all, "dlopen"),
        0,
        "dlopen itself is left alone: {all:?}"
    );
    assert_eq!(count(&all, "getpid"), 21, "3 x lib_work's 7: {all:?}");
}

/// `throws <n>`: n times, a nested function throws (through `__cxa_allocate_exception` and
/// `__cxa_throw`) and its caller catches; a comparator of `qsort` throws out of `qsort` once.
const THROWS_CC: &str = r#"
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <unistd.h>
static volatile long sink;
__attribute__((noinline)) void thrower(int n) { sink += getpid(); if (n >= 0) throw std::runtime_error("x"); }
__attribute__((noinline)) int catcher(int n) { try { thrower(n); } catch (const std::exception &) { return 1; } return 0; }
static int cmp(const void *a, const void *b) { if (*(const int *)a == 7) throw 7; return *(const int *)a - *(const int *)b; }
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 5, caught = 0;
    for (int i = 0; i < n; i++) caught += catcher(i);
    int v[16];
    for (int i = 0; i < 16; i++) v[i] = 15 - i;
    try { qsort(v, 16, sizeof v[0], cmp); } catch (int) { caught++; }
    std::printf("done %d\n", caught);
    return 0;
}
"#;

#[test]
fn cxa_throw__caught_by_the_caller_and_out_of_qsort__then_every_call_returns_once() {
    let exe = build(
        "throws",
        THROWS_CC,
        &[
            "-x",
            "c++",
            "-O1",
            "-fexceptions",
            "-Wl,--no-as-needed",
            "-lstdc++",
        ],
    );
    let (out, traces, _tmp) = spawn_with(&[], &[], &exe, &["5"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("done 6"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let all = total(&traces);
    assert_eq!(count(&all, "__cxa_throw"), 6, "{all:?}");
    assert_eq!(count(&all, "getpid"), 5, "{all:?}");
    assert_eq!(count(&all, "qsort"), 1, "{all:?}");
    let main = traces
        .iter()
        .find(|t| t.by_name.contains_key("qsort"))
        .unwrap();
    assert_eq!(
        main.returns, main.calls,
        "thrown-through calls returned: {main:?}"
    );
}

/// `reloader <lib>`: every 20 ms loads `lib`, calls its `lib_work` (7 `getpid`s) and unloads it,
/// printing `tick <n>` each time.
const RELOADER_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    for (long n = 0;; n++) {
        void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (!lib) { printf("dlopen failed\n"); return 1; }
        long (*work)(void) = (long (*)(void))dlsym(lib, "lib_work");
        printf("tick %ld %ld\n", n, work() > 0 ? 1L : 0L);
        fflush(stdout);
        dlclose(lib);
        usleep(20000);
    }
}
"#;

#[test]
fn attach_scope_all__library_loaded_after_the_attach__then_its_calls_recorded() {
    let _heavy = heavy();
    with_library();
    let lib = workdir().join("liblcwork.so");
    let exe = build("reloader", RELOADER_C, &["-O1", "-ldl"]);
    let mut child = std::process::Command::new(&exe)
        .arg(&lib)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut next = move || lines.next().unwrap().unwrap();
    assert!(next().starts_with("tick 0"));
    let tmp = output_dir();
    let out = tracer()
        .env_remove("TRACER_LIBRARY_CALLS")
        .args([
            "attach",
            "--library-calls",
            "all",
            "--duration",
            "0.5",
            "-o",
        ])
        .arg(tmp.path())
        .arg(child.id().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (session, traces) = check_session_with(&session_dir(tmp.path()), true);
    // The C library's calls for the agent as it registers the program's thread are not the
    // program's: nothing dropped but calls made after the stop (counted as `shutdown`; the
    // thread is still running at the stop, so no teardown).
    let accounting = &session.manifest.accounting.index;
    let dropped = &accounting.dropped;
    assert_eq!(dropped.agent_setup, 0, "{accounting:?}");
    assert_eq!(dropped.total(), dropped.shutdown, "{accounting:?}");
    let all = total(&traces);
    let loads = count(&all, "dlopen");
    assert_eq!(loads, 0, "dlopen itself is left alone: {all:?}");
    assert!(
        count(&all, "lib_work") == 0,
        "called through dlsym, not the GOT: {all:?}"
    );
    let getpids = count(&all, "getpid");
    assert!(
        getpids >= 7 && getpids % 7 == 0,
        "whole lib_work calls: {all:?}"
    );
    // The program has one thread. The agent's own thread (it registers the process for the stop
    // handshake's membarrier at the attach) calls the C library too, through redirected entries
    // in this scope, but it is not the program's: no thread of its own in the session.
    assert_eq!(traces.len(), 1, "only the program's thread: {traces:?}");
    for _ in 0..3 {
        assert!(next().starts_with("tick "), "the target runs on");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
