//! fork and exec, end to end: every followed process gets its own `pid_<pid>` directory with its
//! manifest, names and exact accounting; an exec'd program is named from its own files (also at
//! its parent's addresses, `-no-pie`); `--no-follow` records the target alone; the readers given
//! the session directory cover every process.
#![allow(non_snake_case)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

/// `forker <mode> <n> <program>`: calls parent_leaf 10 times, then per mode: `fork` n children
/// that call child_work 5 times and `_exit`; `exec` n children that exec <program>; `inplace`
/// execs <program> itself; `last_slot` forks until a child's pid is n - 1 modulo n (the others
/// `_exit` at once, calling nothing), and that child stops the tracer (its grandparent) with
/// SIGSTOP, waits until every thread of it is stopped, calls child_work 5 times and execs
/// <program>. The parent calls parent_leaf once more after its children.
const FORKER_C: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <signal.h>
#include <stdio.h>
#include <dirent.h>
__attribute__((noinline)) int parent_leaf(int x) { return x + 1; }
__attribute__((noinline)) int child_work(int x) { return x * 3; }
/* Whether every thread of process `pid` is stopped (state T in /proc/<pid>/task/<tid>/stat). */
__attribute__((no_instrument_function)) static int all_stopped(pid_t pid) {
    char dir[64], path[160], buf[512];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    DIR *d = opendir(dir);
    if (!d) return 0;
    int seen = 0, stopped = 1;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s/stat", dir, e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = 0;
        const char *end = strrchr(buf, ')');
        seen = 1;
        if (!end || end[1] != ' ' || end[2] != 'T') stopped = 0;
    }
    closedir(d);
    return seen && stopped;
}
int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "fork";
    int n = argc > 2 ? atoi(argv[2]) : 1;
    for (int i = 0; i < 10; i++) parent_leaf(i);
    if (!strcmp(mode, "inplace")) {
        execl(argv[3], argv[3], (char *)0);
        return 9;
    }
    if (!strcmp(mode, "last_slot")) {
        pid_t tracer = getppid();
        for (long tries = 0; tries < 1000000; tries++) {
            pid_t p = fork();
            if (p == 0) {
                if (getpid() % n != n - 1) _exit(0);
                kill(tracer, SIGSTOP);
                for (int w = 0; w < 10000 && !all_stopped(tracer); w++) usleep(1000);
                for (int i = 0; i < 5; i++) child_work(i);
                execl(argv[3], argv[3], (char *)0);
                _exit(9);
            }
            int st;
            waitpid(p, &st, 0);
            if (p % n == n - 1) break;
        }
        parent_leaf(100);
        return 0;
    }
    for (int k = 0; k < n; k++) {
        pid_t p = fork();
        if (p == 0) {
            if (!strcmp(mode, "exec")) { execl(argv[3], argv[3], (char *)0); _exit(9); }
            for (int i = 0; i < 5; i++) child_work(i);
            _exit(0);
        }
        int st;
        waitpid(p, &st, 0);
    }
    parent_leaf(100);
    return 0;
}
"#;

/// The exec'd program: only_in_other 7 times.
const OTHER_C: &str = r#"
__attribute__((noinline)) int only_in_other(int x) { return x - 1; }
int main(void) { int s = 0; for (int i = 0; i < 7; i++) s += only_in_other(i); return s == 14 ? 0 : 1; }
"#;

fn programs(pie: bool) -> (PathBuf, PathBuf) {
    let flags: &[&str] = if pie {
        &["-O0", "-finstrument-functions"]
    } else {
        &["-O0", "-finstrument-functions", "-no-pie"]
    };
    let suffix = if pie { "pie" } else { "nopie" };
    (
        build(&format!("forker_{suffix}"), FORKER_C, flags),
        build(&format!("other_{suffix}"), OTHER_C, flags),
    )
}

/// One process of a session: its pid, calls by name, and whether it was followed.
#[derive(Debug)]
struct Proc {
    pid: u32,
    calls: BTreeMap<String, u64>,
    followed: bool,
    not_written: u64,
}

/// Records `forker <args>` and reads back every process (each checked: nested, balanced).
fn record(extra: &[&str], forker: &Path, args: &[&str]) -> (tempfile::TempDir, PathBuf, Vec<Proc>) {
    let tmp = output_dir();
    let mut argv = vec!["spawn", "--output", tmp.path().to_str().unwrap()];
    argv.extend_from_slice(extra);
    argv.push(forker.to_str().unwrap());
    argv.push("--");
    argv.extend_from_slice(args);
    let result = run(&argv);
    let (session, procs) = read_back(&result, tmp.path());
    (tmp, session, procs)
}

/// Checks the tracer's exit and stderr, then reads back every process of the session in `out`
/// (each checked: nested, balanced, every function named, nothing dropped).
fn read_back(result: &std::process::Output, out: &Path) -> (PathBuf, Vec<Proc>) {
    let err = stderr(result);
    assert_eq!(result.status.code(), Some(0), "{err}");
    assert!(!err.contains("have no names"), "{err}");
    let session = session_dir(out).parent().unwrap().to_path_buf();
    let mut procs = Vec::new();
    for entry in std::fs::read_dir(&session).unwrap() {
        let dir = entry.unwrap().path();
        let (s, traces) = check_session(&dir);
        let mut calls = BTreeMap::new();
        for t in traces {
            for (name, n) in t.by_name {
                assert!(!name.starts_with("0x"), "unnamed {name} in {dir:?}");
                *calls.entry(name).or_default() += n;
            }
        }
        let a = &s.manifest.accounting.index;
        assert!(a.balanced(), "{dir:?}: {a:?}");
        procs.push(Proc {
            pid: s.manifest.target_pid,
            calls,
            followed: s.manifest.followed_from.is_some(),
            not_written: a.dropped.other.get("not_written").copied().unwrap_or(0),
        });
        assert_eq!(a.dropped.total(), 0, "{dir:?}: nothing dropped: {a:?}");
    }
    procs.sort_by_key(|p| (p.followed, p.pid));
    (session, procs)
}

fn calls(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

#[test]
fn fork__three_children_without_exec__then_each_its_own_directory_with_exact_counts() {
    let (forker, _) = programs(true);
    let (_tmp, _, procs) = record(&[], &forker, &["fork", "3"]);
    assert_eq!(procs.len(), 4, "{procs:?}");
    assert!(!procs[0].followed);
    assert_eq!(procs[0].calls, calls(&[("main", 1), ("parent_leaf", 11)]));
    for child in &procs[1..] {
        assert!(child.followed);
        assert_eq!(child.calls, calls(&[("child_work", 5)]), "{child:?}");
    }
}

fn fork_and_exec(pie: bool) {
    let (forker, other) = programs(pie);
    let (_tmp, _, procs) = record(&[], &forker, &["exec", "2", other.to_str().unwrap()]);
    assert_eq!(procs.len(), 3, "{procs:?}");
    assert_eq!(procs[0].calls, calls(&[("main", 1), ("parent_leaf", 11)]));
    for child in &procs[1..] {
        assert_eq!(
            child.calls,
            calls(&[("main", 1), ("only_in_other", 7)]),
            "the exec'd program under its own names: {child:?}"
        );
        assert_eq!(child.not_written, 0);
    }
}

#[test]
fn fork_exec__pie__then_the_child_has_the_other_programs_names_and_counts() {
    fork_and_exec(true);
}

#[test]
fn fork_exec__no_pie_same_addresses__then_never_the_parents_names() {
    fork_and_exec(false);
}

fn exec_in_place(pie: bool) {
    let (forker, other) = programs(pie);
    for _ in 0..3 {
        let (_tmp, session, procs) =
            record(&[], &forker, &["inplace", "0", other.to_str().unwrap()]);
        assert_eq!(procs.len(), 1, "{procs:?}");
        assert_eq!(
            procs[0].calls,
            calls(&[("main", 2), ("parent_leaf", 10), ("only_in_other", 7)]),
            "both images in the process's directory, each under its names"
        );
        assert_eq!(procs[0].not_written, 0);
        // The old program's open calls end at the exec; the new one starts at depth 0.
        let replay = run(&["replay", session.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&replay.stdout);
        assert!(text.contains("/* main: ended by exec */"), "{text}");
        assert!(!text.contains("unfinished"), "{text}");
        let mains: Vec<&str> = text.lines().filter(|l| l.ends_with("main() {")).collect();
        assert_eq!(mains.len(), 2, "{text}");
        assert!(mains.iter().all(|l| l.ends_with("] | main() {")), "{text}");
    }
}

#[test]
fn exec_in_place__pie__then_both_images_counted_and_named() {
    exec_in_place(true);
}

#[test]
fn exec_in_place__no_pie__then_both_images_counted_and_named() {
    exec_in_place(false);
}

/// The tracer's thread slots: a thread takes the first free one from its thread id modulo this.
const THREAD_SLOTS: u32 = 1024;

/// A followed child whose pid falls on the tracer's last thread slot (one process in 1024)
/// calls a few functions and execs another program while the tracer gets no CPU (a loaded
/// machine; here the child stops the tracer with SIGSTOP until both programs have ended). The
/// exec'd program's main thread, same pid and thread id, finds the old image's slot still held
/// and takes a lower one. The child's directory still holds one event file in time order, the
/// old image's calls then the new one's, each under its names, and the recording ends cleanly.
#[test]
fn exec__child_on_the_last_thread_slot_while_the_tracer_is_stopped__then_its_events_in_time_order()
{
    let (forker, other) = programs(false);
    let tmp = output_dir();
    let slots = THREAD_SLOTS.to_string();
    let tracer = tracer()
        .args(["spawn", "--output", tmp.path().to_str().unwrap()])
        .arg(&forker)
        .args(["last_slot", &slots, other.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the tracer runs");
    let pid = tracer.id();
    let stopped = wait_for_state(pid, 'T');
    let target = children(pid);
    let ended = target.len() == 1 && wait_for_state(target[0], 'Z');
    // SAFETY: kill takes no pointers; `pid` is our child, not yet reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    let result = tracer.wait_with_output().expect("the tracer ends");
    assert!(stopped, "the child stops the tracer before its calls");
    assert!(
        ended,
        "the programs end while the tracer is stopped: {target:?}"
    );
    let (_, procs) = read_back(&result, tmp.path());
    assert_eq!(procs.len(), 2, "{procs:?}");
    assert_eq!(procs[0].calls, calls(&[("main", 1), ("parent_leaf", 11)]));
    assert_eq!(procs[1].pid % THREAD_SLOTS, THREAD_SLOTS - 1, "{procs:?}");
    assert_eq!(
        procs[1].calls,
        calls(&[("child_work", 5), ("main", 1), ("only_in_other", 7)]),
        "both images in the child's directory, each under its names"
    );
}

/// Waits (at most 30 s) until process `pid` is in `state` (`/proc/<pid>/stat`: `T` stopped, `Z`
/// ended and not yet reaped); returns whether it got there.
fn wait_for_state(pid: u32, state: char) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses and may hold spaces.
        let now = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if now == Some(state) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

/// The children of process `pid` (of any of its threads).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let list =
            std::fs::read_to_string(task.unwrap().path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    out
}

#[test]
fn fork__200_short_children__then_every_call_of_every_child_counted() {
    let _heavy = heavy();
    let (forker, _) = programs(true);
    let (_tmp, _, procs) = record(&[], &forker, &["fork", "200"]);
    assert_eq!(procs.len(), 201);
    assert_eq!(procs[0].calls, calls(&[("main", 1), ("parent_leaf", 11)]));
    for child in &procs[1..] {
        assert_eq!(child.calls, calls(&[("child_work", 5)]), "{child:?}");
    }
}

#[test]
fn no_follow__fork_and_exec__then_only_the_target_is_recorded_and_silently() {
    let (forker, other) = programs(true);
    let tmp = output_dir();
    let result = run(&[
        "spawn",
        "--no-follow",
        "--output",
        tmp.path().to_str().unwrap(),
        forker.to_str().unwrap(),
        "--",
        "exec",
        "2",
        other.to_str().unwrap(),
    ]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(0), "{err}");
    assert!(!err.contains("tracer agent"), "children are silent: {err}");
    let session = session_dir(tmp.path()).parent().unwrap().to_path_buf();
    assert_eq!(std::fs::read_dir(&session).unwrap().count(), 1);
    let (s, traces) = check_session(&session_dir(tmp.path()));
    assert_eq!(s.manifest.accounting.index.attempted, 24);
    assert_eq!(
        traces[0].by_name,
        calls(&[("main", 1), ("parent_leaf", 11)])
    );
}

#[test]
fn readers__session_directory__then_every_process_covered() {
    let (forker, other) = programs(true);
    let (_tmp, session, procs) = record(&[], &forker, &["exec", "2", other.to_str().unwrap()]);
    let s = session.to_str().unwrap();
    let text = |args: &[&str]| {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    for p in &procs {
        let header = format!("# process {} ", p.pid);
        assert!(text(&["replay", s]).contains(&header), "replay: {header}");
        assert!(text(&["report", s]).contains(&header), "report: {header}");
        assert!(text(&["info", s]).contains(&format!("Process id    {}", p.pid)));
    }
    let report = text(&["report", s]);
    assert_eq!(report.matches("only_in_other").count(), 2, "{report}");
    let json = tempfile::NamedTempFile::new().unwrap();
    text(&["export", s, "-o", json.path().to_str().unwrap()]);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json.path()).unwrap()).unwrap();
    let pids: Vec<u64> = doc["metadata"]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    assert_eq!(pids[0], u64::from(procs[0].pid), "the target first");
    let complete = doc["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .count();
    assert_eq!(complete, 12 + 2 * 8);
    // A pid directory alone still reads as before.
    let one = format!("{s}/pid_{}", procs[1].pid);
    assert!(!text(&["replay", &one]).contains("# process"));
}

/// Prints the soft open-file limit it runs with.
const NOFILE_C: &str = r#"
#include <stdio.h>
#include <sys/resource.h>
__attribute__((noinline)) long soft_limit(void) {
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r);
    return (long)r.rlim_cur;
}
int main(void) { printf("%ld\n", soft_limit()); return 0; }
"#;

#[test]
fn spawn__soft_open_file_limit_below_hard__then_the_target_keeps_its_own() {
    let exe = build("nofile", NOFILE_C, &["-O0", "-finstrument-functions"]);
    let tmp = output_dir();
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-parameter.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) };
    assert_eq!(got, 0);
    let soft = 256.min(hard.rlim_max);
    let script = format!("ulimit -Sn {soft} && exec \"$0\" spawn --output \"$1\" \"$2\"");
    let result = std::process::Command::new("sh")
        .args(["-c", &script])
        .arg(env!("CARGO_BIN_EXE_tracer"))
        .arg(tmp.path())
        .arg(&exe)
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
    assert_eq!(
        String::from_utf8_lossy(&result.stdout).trim(),
        soft.to_string()
    );
}
