//! `tracer attach <pid>` end to end, on real C programs started by the test: the target is joined
//! while it runs, recorded, and left running unharmed; and every refusal is one line with a
//! non-zero exit.
#![allow(non_snake_case)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// `loop <threads> [seconds]`: workers call top() → mid() → leaf() ×2 forever (pausing briefly
/// every 1024 iterations); the main thread prints `tick <n> ok` every 100 ms if every worker made
/// progress since the previous tick, `tick <n> stuck` otherwise. With `seconds`, it exits 0 after
/// that long.
const LOOP_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile long sink;
static volatile long progress[64];
__attribute__((noinline)) void leaf(long i) { sink += i; }
__attribute__((noinline)) void mid(long i) { leaf(i); leaf(i + 1); }
__attribute__((noinline)) void top(long i) { mid(i); }

void *worker(void *arg) {
    long id = (long)arg;
    for (long i = 0;; i++) {
        top(i);
        progress[id]++;
        if ((i & 1023) == 0) usleep(200);
    }
    return NULL;
}

int main(int argc, char **argv) {
    long threads = argc > 1 ? atol(argv[1]) : 4;
    long seconds = argc > 2 ? atol(argv[2]) : 0;
    long seen[64] = {0};
    pthread_t t[64];
    for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (long n = 0; seconds == 0 || n < seconds * 10; n++) {
        usleep(100000);
        int ok = 1;
        for (long i = 0; i < threads; i++) {
            if (progress[i] == seen[i]) ok = 0;
            seen[i] = progress[i];
        }
        printf("tick %ld %s\n", n, ok ? "ok" : "stuck");
        fflush(stdout);
    }
    return 0;
}
"#;

/// `malloc_heavy <threads>`: workers allocate and free blocks of varied sizes inside
/// instrumented functions, forever; the main thread prints `alive <n>` every 100 ms.
const MALLOC_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile long sink;
__attribute__((noinline)) void *make(long i) {
    char *p = malloc(16 + (i * 37) % 4000);
    memset(p, (int)i, 16);
    return p;
}
__attribute__((noinline)) void churn(long i) {
    void *keep[8];
    for (int k = 0; k < 8; k++) keep[k] = make(i + k);
    for (int k = 0; k < 8; k++) { sink += ((char *)keep[k])[0]; free(keep[k]); }
    char *s = strdup("x");
    free(s);
}

void *worker(void *arg) {
    (void)arg;
    for (long i = 0;; i++) {
        churn(i);
        if ((i & 255) == 0) usleep(100);
    }
    return NULL;
}

int main(int argc, char **argv) {
    long threads = argc > 1 ? atol(argv[1]) : 4;
    pthread_t t[64];
    for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (long n = 0;; n++) {
        usleep(100000);
        printf("alive %ld\n", n);
        fflush(stdout);
    }
}
"#;

/// `idle [seconds]`: instrumented, but calls no instrumented function while it waits (`main` is
/// not instrumented); exits after `seconds` without running any hook (default: never).
const IDLE_C: &str = r#"
#include <stdlib.h>
#include <unistd.h>
__attribute__((noinline)) void work(void) {}
__attribute__((no_instrument_function)) int main(int argc, char **argv) {
    long seconds = argc > 1 ? atol(argv[1]) : 0;
    work();
    if (seconds) { usleep(seconds * 1000 * 1000); _exit(0); }
    for (;;) pause();
}
"#;

/// Built once per test binary (tests run in parallel).
fn built(cell: &'static OnceLock<PathBuf>, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    cell.get_or_init(|| build(name, source, flags)).clone()
}

fn loop_app() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    built(
        &EXE,
        "attach_loop",
        LOOP_C,
        &["-O1", "-g", "-finstrument-functions"],
    )
}

fn idle_app() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    built(
        &EXE,
        "attach_idle",
        IDLE_C,
        &["-O1", "-finstrument-functions"],
    )
}

fn attach(pid: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["attach", "--output", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(pid);
    run(&args)
}

/// Checks a session joined mid-flight: every thread's stream is readable with time never going
/// back, each return matches the innermost call seen (returns of calls made before the attach come
/// first, with no open call), the accounting balances. Returns the events per function name.
fn check_joined(dir: &Path) -> (atf::Session, std::collections::BTreeMap<String, u64>) {
    let (session, traces) = check_session_with(dir, true);
    (session, calls_by_name(traces))
}

/// Calls per function name, over every thread.
fn calls_by_name(traces: Vec<ThreadTrace>) -> std::collections::BTreeMap<String, u64> {
    let mut calls = std::collections::BTreeMap::new();
    for t in traces {
        for (name, n) in t.by_name {
            *calls.entry(name).or_insert(0u64) += n;
        }
    }
    calls
}

#[test]
fn attach__multithreaded_program_for_1s__then_events_recorded_and_target_unharmed() {
    let _heavy = heavy();
    let tmp = output_dir();
    let started = Instant::now();
    let mut target = Target::start(&loop_app(), &["4"]);
    assert_eq!(target.next_line(), "tick 0 ok");
    let result = attach(&target.pid(), tmp.path(), &["--duration", "1"]);
    // Tick n comes at least n × 100 ms after the target started: later ticks than this one were
    // printed after the tracer had left.
    let last_attached = started.elapsed().as_millis() as u64 / 100;
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(0), "{err}");
    assert!(err.contains("still running"), "{err}");
    let (session, calls) = check_joined(&session_dir(tmp.path()));
    assert_eq!(session.manifest.target_fate, Some(atf::TargetFate::Running));
    assert!(calls.get("top").copied().unwrap_or(0) > 0, "{calls:?}");
    assert!(calls.get("leaf").copied().unwrap_or(0) > 0, "{calls:?}");
    // Still running, the output unchanged in form and order, and every worker progressing after
    // the tracer left: a tick printed after it says `ok`. A single tick may say `stuck` (some
    // worker got no CPU for 100 ms, which a loaded machine does to the program untraced too, and
    // the recording's lossless waits for ring space more often); a worker the attach left
    // deadlocked makes every later tick say it.
    let mut ticks = Vec::new();
    for n in 1.. {
        let line = target.next_line();
        assert!(
            line == format!("tick {n} ok") || line == format!("tick {n} stuck"),
            "{ticks:?} then {line:?}"
        );
        let done = n > last_attached && line.ends_with("ok");
        ticks.push(line);
        if done {
            break;
        }
        assert!(
            n < last_attached + 300,
            "no tick after the tracer left says every worker progressed: {ticks:?}"
        );
    }
    assert!(target.alive());
    assert_eq!(target.kill(), "", "the target wrote on stderr");
}

/// Attaches `rounds` times (0.1 s each) to a running target: every session is readable and holds
/// calls of `function`, the target survives every round, and it is still making progress (not
/// deadlocked) and silent on stderr at the end.
fn attach_rounds(mut target: Target, rounds: u32, function: &str) {
    let pid = target.pid();
    for round in 0..rounds {
        let tmp = output_dir();
        let result = attach(&pid, tmp.path(), &["--duration", "0.1"]);
        let err = stderr(&result);
        assert_eq!(result.status.code(), Some(0), "round {round}: {err}");
        let (_, calls) = check_joined(&session_dir(tmp.path()));
        assert!(
            calls.get(function).copied().unwrap_or(0) > 0,
            "round {round}: {calls:?}"
        );
        assert!(target.alive(), "round {round}: the target died");
    }
    let before = target.next_line();
    let after = target.next_line();
    assert_ne!(before, after, "the target stopped making progress");
    assert_eq!(target.kill(), "");
}

#[test]
fn attach__detach_20_times_to_malloc_heavy_program__then_no_crash_no_deadlock_sessions_readable() {
    let _heavy = heavy();
    let exe = build(
        "attach_malloc",
        MALLOC_C,
        &["-O1", "-g", "-finstrument-functions"],
    );
    let mut target = Target::start(&exe, &["4"]);
    assert_eq!(target.next_line(), "alive 0");
    attach_rounds(target, 20, "make");
}

#[test]
fn attach__sigint_to_tracer__then_clean_stop_and_target_keeps_running() {
    let _heavy = heavy();
    let tmp = output_dir();
    let mut target = Target::start(&loop_app(), &["2"]);
    target.next_line();
    let tracer = tracer()
        .args([
            "attach",
            "--output",
            tmp.path().to_str().unwrap(),
            &target.pid(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it has attached (the session directory exists), then interrupt it.
    let start = Instant::now();
    while std::fs::read_dir(tmp.path()).unwrap().next().is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "never attached");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let result = tracer.wait_with_output().unwrap();
    assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
    let (session, _) = check_joined(&session_dir(tmp.path()));
    assert_eq!(session.manifest.target_fate, Some(atf::TargetFate::Running));
    let line = target.next_line();
    assert!(line.ends_with("ok"), "{line}");
    assert!(target.alive());
}

#[test]
fn attach__target_exits_while_recorded__then_session_written_and_exit_0() {
    let tmp = output_dir();
    let mut target = Target::start(&loop_app(), &["2", "1"]);
    target.next_line();
    let result = attach(&target.pid(), tmp.path(), &[]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(0), "{err}");
    // Its threads die wherever they are, even between publishing an event and counting it.
    let (session, _) = check_session_with(&session_dir(tmp.path()), true);
    assert_eq!(
        session.manifest.stop_reason.as_deref(),
        Some("target exited")
    );
}

#[test]
fn attach__pid_does_not_exist__then_refused() {
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let tmp = output_dir();
    let result = attach(&gone.id().to_string(), tmp.path(), &[]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(err.contains("no process with pid"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn attach__pid_not_a_number__then_refused() {
    let result = run(&["attach", "abc"]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(err.contains("not a process id"), "{err}");
}

#[test]
fn attach__uninstrumented_program__then_refused_with_rebuild_hint() {
    let exe = build("attach_plain", IDLE_C, &["-O1"]);
    let target = Target::start(&exe, &[]);
    let tmp = output_dir();
    let result = attach(&target.pid(), tmp.path(), &[]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(err.contains("-finstrument-functions"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn attach__statically_linked_program__then_refused() {
    let src = workdir().join("attach_static.c");
    std::fs::write(&src, IDLE_C).unwrap();
    let exe = workdir().join("attach_static");
    let built = Command::new("cc")
        .args(["-static", "-finstrument-functions", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    if !built.status.success() {
        eprintln!("skipped: no static libc here");
        return;
    }
    let target = Target::start(&exe, &[]);
    let tmp = output_dir();
    let result = attach(&target.pid(), tmp.path(), &[]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(err.contains("statically linked"), "{err}");
}

#[test]
fn attach__process_already_traced__then_refused_naming_the_tracer() {
    let target = Target::start(&loop_app(), &["1"]);
    let pid = target.pid().parse::<i32>().unwrap();
    // SAFETY: seizing our own child; it keeps running (SEIZE does not stop it).
    let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, 0usize) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let tmp = output_dir();
    let result = attach(&target.pid(), tmp.path(), &[]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(err.contains("already traced by pid"), "{err}");
}

#[test]
fn attach__process_of_another_user__then_refused_saying_so() {
    let tmp = output_dir();
    // SAFETY: geteuid has no preconditions.
    let result = if unsafe { libc::geteuid() } == 0 {
        // As root, run the tracer as another user against a target of root's.
        let target = Target::start(&loop_app(), &["1"]);
        use std::os::unix::process::CommandExt;
        let out = tracer()
            .args(["attach", "--output", "/tmp", &target.pid()])
            .uid(65534)
            .output()
            .unwrap();
        drop(target);
        out
    } else {
        attach("1", tmp.path(), &[])
    };
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(err.contains("belongs to another user"), "{err}");
}

#[test]
fn attach__target_calls_no_instrumented_function__then_refused_after_waiting() {
    let exe = idle_app();
    let mut target = Target::start(&exe, &[]);
    std::thread::sleep(Duration::from_millis(100));
    let tmp = output_dir();
    let result = attach(&target.pid(), tmp.path(), &[]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(1), "{err}");
    assert!(err.contains("no safe point"), "{err}");
    assert!(target.alive(), "the refused target must keep running");
}

#[test]
fn attach__target_exits_during_attach__then_clean_message() {
    let exe = idle_app();
    let target = Target::start(&exe, &["1"]);
    std::thread::sleep(Duration::from_millis(100));
    let tmp = output_dir();
    let result = attach(&target.pid(), tmp.path(), &[]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(1), "{err}");
    assert!(err.contains("exited during the attach"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn attach__stopped_process__then_refused_with_resume_hint() {
    let mut target = Target::start(&idle_app(), &[]);
    let pid = target.pid().parse::<i32>().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let start = Instant::now();
    while !std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .contains("State:\tT")
    {
        assert!(start.elapsed() < Duration::from_secs(10), "never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    let tmp = output_dir();
    let result = attach(&target.pid(), tmp.path(), &[]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(err.contains("kill -CONT"), "{err}");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(target.alive());
}

#[test]
fn attach__process_recorded_by_tracer_spawn__then_refused_and_spawn_session_intact() {
    let _heavy = heavy();
    let tmp = output_dir();
    let spawn_out = output_dir();
    let mut spawned = tracer()
        .args(["spawn", "--output", spawn_out.path().to_str().unwrap()])
        .arg(loop_app())
        .args(["--", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(spawned.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "tick 0 ok");
    // The target is the tracer's only child.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", spawned.id())).unwrap();
    let target = children
        .split_whitespace()
        .next()
        .expect("the spawned target")
        .to_owned();
    let result = attach(&target, tmp.path(), &[]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(err.contains("already being recorded"), "{err}");
    // The spawn session goes on and ends cleanly.
    assert!(lines.next().unwrap().unwrap().starts_with("tick 1"));
    // SAFETY: signalling our own child (the spawn tracer).
    unsafe { libc::kill(spawned.id() as i32, libc::SIGINT) };
    let out = spawned.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    check_joined(&session_dir(spawn_out.path()));
}

#[test]
fn attach__second_tracer_then_refused__first_tracer_killed__then_attach_again_works() {
    let _heavy = heavy();
    let mut target = Target::start(&loop_app(), &["2"]);
    target.next_line();
    let first_out = output_dir();
    let mut first = tracer()
        .args([
            "attach",
            "--output",
            first_out.path().to_str().unwrap(),
            &target.pid(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_dir(first_out.path())
        .unwrap()
        .next()
        .is_none()
    {
        assert!(start.elapsed() < Duration::from_secs(20), "never attached");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second tracer finds the agent recording for a live tracer.
    let tmp = output_dir();
    let result = attach(&target.pid(), tmp.path(), &["--duration", "0.2"]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(err.contains("already being recorded"), "{err}");
    // The first tracer dies without stopping: the target lives on, and can be attached again
    // (its calls still go to the agent, whose hooks are the safe point now).
    first.kill().unwrap();
    first.wait().unwrap();
    let again = output_dir();
    let result = attach(&target.pid(), again.path(), &["--duration", "0.3"]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(0), "{err}");
    let (_, calls) = check_joined(&session_dir(again.path()));
    assert!(calls.get("top").copied().unwrap_or(0) > 0, "{calls:?}");
    let line = target.next_line();
    assert!(line.starts_with("tick"), "{line}");
    assert!(target.alive());
}

/// `plugin_host`: a worker thread calls the instrumented `beat()` every millisecond; the main
/// thread answers one line per command read on stdin:
/// - `load`: `dlopen("libplug.so")`, a bare name found through the host's DT_RUNPATH
///   (`$ORIGIN/plugins`) only; `close`: `dlclose` it, and say whether it is still mapped;
/// - `run`, `inner`: call `plug_run(3)` (`plug_mid` → `plug_leaf` ×2), `plug_inner(5)` (which
///   loads `libinner.so` by a bare name found through libplug's own DT_RUNPATH, `$ORIGIN`);
/// - `whois`, `plugwhois`: the objects that the host's (libplug's) `dlopen` and
///   `__cyg_profile_func_enter` pointers lead to (GOT entries that the attach redirects);
/// - `missing`: `dlopen` of a library that exists nowhere, and its `dlerror()`.
const HOST_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void __cyg_profile_func_enter(void *, void *);
static volatile long sink;
__attribute__((noinline)) void beat(long i) { sink += i; }

static void *worker(void *arg) {
    (void)arg;
    for (long i = 0;; i++) { beat(i); usleep(1000); }
    return NULL;
}

static const char *object_of(void *p) {
    Dl_info info;
    if (!p || !dladdr(p, &info) || !info.dli_fname) return "?";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

static int mapped(const char *name) {
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    while (maps && fgets(line, sizeof line, maps)) found |= strstr(line, name) != NULL;
    if (maps) fclose(maps);
    return found;
}

int main(void) {
    static void *plug;
    char line[256];
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (!strcmp(line, "load")) {
            plug = dlopen("libplug.so", RTLD_NOW);
            printf("load %s\n", plug ? "ok" : dlerror());
        } else if (!strcmp(line, "close")) {
            dlclose(plug);
            plug = NULL;
            printf("close %s\n", mapped("libplug.so") ? "mapped" : "unmapped");
        } else if (!strcmp(line, "run") || !strcmp(line, "inner")) {
            const char *name = !strcmp(line, "run") ? "plug_run" : "plug_inner";
            long (*f)(long) = (long (*)(long))dlsym(plug, name);
            printf("%s %ld\n", line, f ? f(!strcmp(line, "run") ? 3 : 5) : -1L);
        } else if (!strcmp(line, "whois")) {
            printf("whois dlopen=%s enter=%s\n", object_of((void *)dlopen),
                   object_of((void *)__cyg_profile_func_enter));
        } else if (!strcmp(line, "plugwhois")) {
            const char *(*f)(void) = (const char *(*)(void))dlsym(plug, "plug_whois");
            printf("plugwhois %s\n", f ? f() : "?");
        } else if (!strcmp(line, "missing")) {
            void *h = dlopen("libno_such_plugin.so", RTLD_NOW);
            printf("missing %s\n", h ? "loaded" : dlerror());
        } else {
            printf("unknown %s\n", line);
        }
    }
    return 0;
}
"#;

/// `plugins/libplug.so`: instrumented, bound now (its GOT entries sit on RELRO pages).
const PLUG_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

void __cyg_profile_func_enter(void *, void *);
__attribute__((noinline)) long plug_leaf(long i) { return i * 2; }
__attribute__((noinline)) long plug_mid(long i) { return plug_leaf(i) + plug_leaf(i + 1); }
long plug_run(long i) { return plug_mid(i); }

long plug_inner(long i) {
    void *h = dlopen("libinner.so", RTLD_NOW);
    long (*f)(long) = h ? (long (*)(long))dlsym(h, "inner_run") : NULL;
    return f ? f(i) : -1;
}

static const char *object_of(void *p) {
    Dl_info info;
    if (!p || !dladdr(p, &info) || !info.dli_fname) return "?";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

const char *plug_whois(void) {
    static char answer[256];
    snprintf(answer, sizeof answer, "dlopen=%s enter=%s", object_of((void *)dlopen),
             object_of((void *)__cyg_profile_func_enter));
    return answer;
}
"#;

/// `plugins/libinner.so`: instrumented, lazily bound.
const INNER_C: &str = r#"
__attribute__((noinline)) long inner_leaf(long i) { return i + 1; }
long inner_run(long i) { return inner_leaf(i) * 10; }
"#;

/// The host and its two plugins, built once per test binary.
fn plugin_host() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        std::fs::create_dir_all(workdir().join("plugins")).unwrap();
        let instrumented = ["-O1", "-g", "-finstrument-functions"];
        let shared = ["-shared", "-fPIC", "-Wl,--enable-new-dtags"];
        let plug = [&instrumented[..], &shared, &["-Wl,-z,now,-rpath,$ORIGIN"]].concat();
        build("plugins/libplug.so", PLUG_C, &plug);
        build(
            "plugins/libinner.so",
            INNER_C,
            &[&instrumented[..], &shared].concat(),
        );
        let host = [
            &instrumented[..],
            &["-Wl,--enable-new-dtags,-rpath,$ORIGIN/plugins"],
        ]
        .concat();
        build("plugin_host", HOST_C, &host)
    })
    .clone()
}

/// A running `plugin_host`, driven line by line, once it is ready for commands.
fn host() -> Target {
    let mut host = Target::start(&plugin_host(), &[]);
    assert_eq!(host.next_line(), "ready");
    host
}

/// `tracer attach --output <out> <pid>` in the background, returned once it has attached (the
/// session directory exists: the tracer makes it after the injection; the output directory's
/// write probe comes and goes before).
fn attach_in_background(pid: &str, out: &Path) -> Background {
    let tracer = Background(Some(
        tracer()
            .args(["attach", "--output", out.to_str().unwrap(), pid])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let start = Instant::now();
    let session_made = || {
        std::fs::read_dir(out).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("session_")
        })
    };
    while !session_made() {
        assert!(start.elapsed() < Duration::from_secs(20), "never attached");
        std::thread::sleep(Duration::from_millis(20));
    }
    tracer
}

/// Stops a background tracer with SIGINT; it must exit 0.
fn stop(tracer: Background) {
    let tracer = tracer.take();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let result = tracer.wait_with_output().unwrap();
    assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
}

const UNTRACED: &str = "dlopen=libc.so.6 enter=libc.so.6";
const REDIRECTED: &str = "dlopen=libagent.so enter=libagent.so";

#[test]
fn attach__library_dlopened_by_runpath_after_attach__then_its_calls_traced_and_its_got_restored() {
    let mut host = host();
    assert_eq!(host.ask("whois"), format!("whois {UNTRACED}"));
    let tmp = output_dir();
    let tracer = attach_in_background(&host.pid(), tmp.path());
    assert_eq!(host.ask("whois"), format!("whois {REDIRECTED}"));
    // Found through the host's RUNPATH: dlopen saw the host as its caller.
    assert_eq!(host.ask("load"), "load ok");
    assert_eq!(host.ask("run"), "run 14");
    // The new library's own entries, dlopen's included, were redirected at its load: its own
    // bare-name load is found through its RUNPATH, and traced too.
    assert_eq!(host.ask("plugwhois"), format!("plugwhois {REDIRECTED}"));
    assert_eq!(host.ask("inner"), "inner 60");
    stop(tracer);
    let (session, calls) = check_joined(&session_dir(tmp.path()));
    assert_eq!(session.manifest.target_fate, Some(atf::TargetFate::Running));
    for name in [
        "plug_run",
        "plug_mid",
        "plug_inner",
        "plug_whois",
        "inner_run",
        "inner_leaf",
    ] {
        assert_eq!(calls.get(name).copied(), Some(1), "{name}: {calls:?}");
    }
    assert_eq!(calls.get("plug_leaf").copied(), Some(2), "{calls:?}");
    // The stop put every entry back, the library's too: the host runs on untraced, unchanged.
    host.ask_until("whois", &format!("whois {UNTRACED}"));
    assert_eq!(host.ask("plugwhois"), format!("plugwhois {UNTRACED}"));
    assert_eq!(host.ask("run"), "run 14");
    assert_eq!(host.ask("inner"), "inner 60");
    // A second attach finds the library loaded and redirects it with the rest.
    let again = output_dir();
    let tracer = attach_in_background(&host.pid(), again.path());
    assert_eq!(host.ask("plugwhois"), format!("plugwhois {REDIRECTED}"));
    assert_eq!(host.ask("run"), "run 14");
    stop(tracer);
    let (_, calls) = check_joined(&session_dir(again.path()));
    assert_eq!(calls.get("plug_leaf").copied(), Some(2), "{calls:?}");
    host.ask_until("whois", &format!("whois {UNTRACED}"));
    assert_eq!(host.close(), "", "the host wrote on stderr");
}

#[test]
fn attach__dlopen_of_missing_library_while_attached__then_null_and_the_same_dlerror() {
    let mut host = host();
    let untraced = host.ask("missing");
    assert!(
        untraced.starts_with("missing libno_such_plugin.so: "),
        "{untraced}"
    );
    let tmp = output_dir();
    let tracer = attach_in_background(&host.pid(), tmp.path());
    assert_eq!(host.ask("whois"), format!("whois {REDIRECTED}"));
    assert_eq!(host.ask("missing"), untraced);
    stop(tracer);
    check_joined(&session_dir(tmp.path()));
    host.ask_until("whois", &format!("whois {UNTRACED}"));
    assert_eq!(host.ask("missing"), untraced);
    assert_eq!(host.close(), "");
}

#[test]
fn attach__redirected_library_dlclosed_before_the_stop__then_stop_restores_the_rest_unharmed() {
    let mut host = host();
    let tmp = output_dir();
    let tracer = attach_in_background(&host.pid(), tmp.path());
    assert_eq!(host.ask("load"), "load ok");
    assert_eq!(host.ask("run"), "run 14");
    assert_eq!(host.ask("close"), "close unmapped");
    // Loaded again (likely where it was before), redirected again, and unloaded again.
    assert_eq!(host.ask("load"), "load ok");
    assert_eq!(host.ask("plugwhois"), format!("plugwhois {REDIRECTED}"));
    assert_eq!(host.ask("close"), "close unmapped");
    stop(tracer);
    let (_, traces) = check_session_with(&session_dir(tmp.path()), true);
    let calls: u64 = traces.iter().map(|t| t.calls).sum();
    assert!(calls > 0);
    host.ask_until("whois", &format!("whois {UNTRACED}"));
    // Loaded after the stop: untraced, and working.
    assert_eq!(host.ask("load"), "load ok");
    assert_eq!(host.ask("plugwhois"), format!("plugwhois {UNTRACED}"));
    assert_eq!(host.ask("run"), "run 14");
    assert_eq!(host.close(), "");
}

/// `dl_storm <threads>`: each worker loads `libplug.so` (through the storm's DT_RUNPATH), calls
/// `plug_run` and, every 16th round, `plug_inner` (which loads `libinner.so`), then unloads it,
/// forever; the main thread prints `alive <n>` every 100 ms.
const DL_STORM_C: &str = r#"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile long sink;
__attribute__((noinline)) void round_trip(long i) {
    void *h = dlopen("libplug.so", RTLD_NOW);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); abort(); }
    long (*run)(long) = (long (*)(long))dlsym(h, "plug_run");
    sink += run(i);
    if ((i & 15) == 0) {
        long (*inner)(long) = (long (*)(long))dlsym(h, "plug_inner");
        if (inner(i) < 0) { fprintf(stderr, "libinner.so not found\n"); abort(); }
    }
    dlclose(h);
}

void *worker(void *arg) {
    (void)arg;
    for (long i = 0;; i++) round_trip(i);
    return NULL;
}

int main(int argc, char **argv) {
    long threads = argc > 1 ? atol(argv[1]) : 3;
    pthread_t t[16];
    for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (long n = 0;; n++) {
        usleep(100000);
        printf("alive %ld\n", n);
        fflush(stdout);
    }
}
"#;

#[test]
fn attach__threads_dlopen_and_dlclose_in_a_loop__then_10_attaches_no_crash_sessions_readable() {
    let _heavy = heavy();
    plugin_host(); // builds the plugins
    let exe = build(
        "attach_dl_storm",
        DL_STORM_C,
        &[
            "-O1",
            "-g",
            "-finstrument-functions",
            "-Wl,--enable-new-dtags,-rpath,$ORIGIN/plugins",
        ],
    );
    let mut target = Target::start(&exe, &["3"]);
    assert_eq!(target.next_line(), "alive 0");
    attach_rounds(target, 10, "round_trip");
}

/// The main function of the tick-printing targets: starts `argv[1]` workers (`worker(id)`, which
/// bumps `progress[id]`) and prints `tick <n> ok|stuck` every 100 ms.
macro_rules! ticking_main {
    () => {
        r#"
int main(int argc, char **argv) {
    long threads = argc > 1 ? atol(argv[1]) : 4;
    long seen[64] = {0};
    pthread_t t[64];
    for (long i = 0; i < threads; i++) pthread_create(&t[i], 0, worker, (void *)i);
    for (long n = 0;; n++) {
        usleep(100000);
        int ok = 1;
        for (long i = 0; i < threads; i++) { if (progress[i] == seen[i]) ok = 0; seen[i] = progress[i]; }
        printf("tick %ld %s\n", n, ok ? "ok" : "stuck");
        fflush(stdout);
    }
}
"#
    };
}

/// `phases <threads>`: workers call `phase()` forever; each phase calls `top()` 200 times with a
/// 100 µs sleep every 20 calls, so a phase lasts a few milliseconds and an attach or a detach
/// usually finds it (and `top`) live on every worker's stack. The main thread prints `tick <n>`
/// every 100 ms, with `ok` while every worker makes progress.
const PHASES_C: &str = concat!(
    r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile long sink;
static volatile long progress[64];
void leaf(long i) { sink += i; }
void mid(long i) { leaf(i); leaf(i + 1); }
void top(long i) { mid(i); }
void phase(long id) {
    for (long i = 0; i < 200; i++) { top(i); if (i % 20 == 0) usleep(100); }
    progress[id]++;
}
void *worker(void *arg) { for (;;) phase((long)arg); return NULL; }

"#,
    ticking_main!()
);

/// Attaches 5 times to a program built with entry-only hooks (`flags`): each session records
/// calls, properly nested, and frames hooked when the tracer leaves return through the agent's
/// trampoline afterwards: the target keeps running, every worker progressing, silent on stderr.
fn attach_entry_only_build(name: &str, flags: &[&str]) {
    attach_entry_only_build_of(name, PHASES_C, flags);
}

/// [`attach_entry_only_build`] of another program that prints the same ticks.
fn attach_entry_only_build_of(name: &str, source: &str, flags: &[&str]) {
    let _heavy = heavy();
    let exe = build(name, source, flags);
    let dir = tempfile::tempdir().unwrap();
    // A `-pg` program writes gmon.out into its working directory when it exits.
    let mut target = Target::spawn(Command::new(&exe).arg("4").current_dir(dir.path()));
    assert_eq!(target.next_line(), "tick 0 ok");
    let pid = target.pid();
    for round in 0..5 {
        let tmp = output_dir();
        let result = attach(&pid, tmp.path(), &["--duration", "0.2"]);
        let err = stderr(&result);
        assert_eq!(result.status.code(), Some(0), "round {round}: {err}");
        let (_, traces) = check_session_with(&session_dir(tmp.path()), true);
        let calls: u64 = traces.iter().map(|t| t.calls).sum();
        assert!(calls > 0, "round {round}: nothing recorded");
        assert!(target.alive(), "round {round}: the target died");
    }
    // After the last detach, frames hooked then have returned: every worker still progresses.
    let mut ok = 0;
    for _ in 0..20 {
        if target.next_line().ends_with(" ok") {
            ok += 1;
            if ok == 3 {
                break;
            }
        }
    }
    assert_eq!(
        ok, 3,
        "the workers stopped making progress after the detach"
    );
    assert_eq!(target.kill(), "", "the target wrote on stderr");
}

#[test]
fn attach__pg_program_5_rounds__then_recorded_and_hooked_frames_return_after_each_detach() {
    attach_entry_only_build("attach_phases_pg", &["-O1", "-pg"]);
}

#[test]
fn attach__mfentry_program_5_rounds__then_recorded_and_hooked_frames_return_after_each_detach() {
    attach_entry_only_build("attach_phases_fentry", &["-O1", "-pg", "-mfentry"]);
}

/// `throwing <threads>`: workers throw a C++ exception through 6 hooked frames and catch it,
/// forever; the main thread prints `tick <n> ok|stuck` every 100 ms.
const THROWING_CC: &str = concat!(
    r#"
#include <pthread.h>
#include <stdexcept>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>
#define HOOKED __attribute__((noinline))
static volatile long sink;
static volatile long progress[64];
HOOKED void cleanup(int n) { sink += n; }
struct Guard { int n; ~Guard() { cleanup(n); } };
HOOKED int thrower(int n) { Guard g{n}; if (n == 0) throw std::runtime_error("deep"); return thrower(n - 1) + 1; }
HOOKED int catcher(int n) { try { return thrower(n); } catch (const std::exception &) { return -1; } }
void *worker(void *arg) {
    long id = (long)arg;
    for (long i = 0;; i++) { sink += catcher(5); progress[id]++; if (i % 64 == 0) usleep(100); }
    return nullptr;
}
"#,
    ticking_main!()
);

#[test]
fn attach__cxx_pg_program_throwing_through_hooked_frames__then_survives_attach_and_detach() {
    attach_entry_only_build_of(
        "attach_throwing_pg",
        THROWING_CC,
        &["-x", "c++", "-O1", "-pg", "-Wl,--no-as-needed", "-lstdc++"],
    );
}
