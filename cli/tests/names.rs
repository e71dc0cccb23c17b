//! Names in every run: programs that end within a millisecond get every function's name, because
//! the agent reports the objects it sees and the tracer reads them from disk; `--trigger
//! symbol=NAME` is armed before such a program can call NAME.
#![allow(non_snake_case)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const SHORT_C: &str = r#"
__attribute__((noinline)) int leaf(int x) { return x * 2; }
__attribute__((noinline)) int mid(int x) { return leaf(x) + 1; }
int main(void) { return mid(3) == 7 ? 0 : 1; }
"#;

const SHORT_CPP: &str = r#"
#include <vector>
namespace shapes {
struct Square {
    int side;
    __attribute__((noinline)) int area() const { return side * side; }
};
__attribute__((noinline)) int total(const std::vector<Square>& all) {
    int t = 0;
    for (const Square& s : all) t += s.area();
    return t;
}
}
int main() {
    std::vector<shapes::Square> all{{1}, {2}, {3}};
    return shapes::total(all) == 14 ? 0 : 1;
}
"#;

/// Compiles C++ `source` with `c++` into the work dir, once per name.
fn build_cpp(name: &str, source: &str) -> PathBuf {
    let exe = workdir().join(name);
    if exe.exists() {
        return exe;
    }
    let src = workdir().join(format!("{name}.cpp"));
    std::fs::write(&src, source).unwrap();
    let out = Command::new("c++")
        .args(["-O1", "-finstrument-functions", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("c++ runs");
    assert!(
        out.status.success(),
        "c++ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Records `exe` once with `extra` options; returns the session's pid directory and stderr.
fn record(out: &Path, exe: &Path, extra: &[&str]) -> (PathBuf, String) {
    let mut args = vec!["spawn", "--output", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(exe.to_str().unwrap());
    let result = run(&args);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(0), "{err}");
    (session_dir(out), err)
}

/// Every function called in the session, by name; panics on an id without a name.
fn names_called(dir: &Path) -> std::collections::BTreeSet<String> {
    let (_, traces) = check_session(dir);
    let mut all = std::collections::BTreeSet::new();
    for t in traces {
        for name in t.by_name.keys() {
            assert!(
                !name.starts_with("0x"),
                "an unnamed function {name} in {dir:?}"
            );
            all.insert(name.clone());
        }
    }
    all
}

#[test]
fn names__three_function_c_program_10_runs__then_every_name_in_every_run() {
    let exe = build("short", SHORT_C, &["-O0", "-finstrument-functions"]);
    for run in 0..10 {
        let tmp = output_dir();
        let (dir, err) = record(tmp.path(), &exe, &[]);
        assert!(!err.contains("have no names"), "run {run}: {err}");
        let names = names_called(&dir);
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["leaf", "main", "mid"],
            "run {run}"
        );
    }
}

#[test]
fn names__small_cpp_program_10_runs__then_every_name_in_every_run() {
    let exe = build_cpp("short_cpp", SHORT_CPP);
    for run in 0..10 {
        let tmp = output_dir();
        let (dir, _) = record(tmp.path(), &exe, &[]);
        let names = names_called(&dir);
        for want in ["main", "shapes::total", "shapes::Square::area"] {
            assert!(
                names.iter().any(|n| n.starts_with(want)),
                "run {run}: no {want} in {names:?}"
            );
        }
    }
}

#[test]
fn trigger__short_program__then_the_window_of_the_first_call_is_kept() {
    let exe = build("short", SHORT_C, &["-O0", "-finstrument-functions"]);
    for run in 0..5 {
        let tmp = output_dir();
        let (dir, err) = record(tmp.path(), &exe, &["--trigger", "symbol=leaf"]);
        assert!(!err.contains("warning"), "run {run}: {err}");
        let session = atf::Session::open(&dir).unwrap();
        let m = &session.manifest;
        assert_eq!(
            m.detail_windows.len(),
            1,
            "run {run}: {:?}",
            m.detail_windows
        );
        let detail = &m.accounting.detail;
        assert_eq!(detail.attempted, 6, "run {run}: {detail:?}");
        assert_eq!(
            detail.persisted, 6,
            "run {run}: nothing unmarked: {detail:?}"
        );
    }
}

#[test]
fn trigger__unknown_name__then_said_once_and_nothing_guessed() {
    let exe = build("short", SHORT_C, &["-O0", "-finstrument-functions"]);
    let tmp = output_dir();
    let (dir, err) = record(tmp.path(), &exe, &["--trigger", "symbol=no_such_function"]);
    assert_eq!(
        err.matches("no_such_function").count(),
        1,
        "said once: {err}"
    );
    let session = atf::Session::open(&dir).unwrap();
    assert!(session.manifest.detail_windows.is_empty());
}

/// A library the program loads with `dlopen`: built into the test's work dir, instrumented.
const PLUGIN_C: &str = r#"
__attribute__((noinline)) int plug_leaf(int x) { return x * 3; }
__attribute__((noinline)) int plug_entry(int n) {
    int s = 0;
    for (int i = 0; i < n; i++) s += plug_leaf(i);
    return s;
}
"#;

/// Loads `libplugin.so` by its bare name (found through the program's own `$ORIGIN` run path,
/// which only the program's calls search) and calls into it 7 times.
const DLOPEN_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
__attribute__((noinline)) int host_call(int (*f)(int), int n) { return f(n); }
int main(void) {
    void *h = dlopen("libplugin.so", RTLD_NOW);
    if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 3; }
    int (*f)(int) = (int (*)(int))dlsym(h, "plug_entry");
    return host_call(f, 7) == 63 ? 0 : 1;
}
"#;

#[test]
fn names__spawned_program_dlopens_a_library_10_runs__then_its_functions_named_and_counted() {
    build(
        "libplugin.so",
        PLUGIN_C,
        &["-O1", "-shared", "-fPIC", "-finstrument-functions"],
    );
    let exe = build(
        "dlopener",
        DLOPEN_C,
        &["-O1", "-finstrument-functions", "-Wl,-rpath,$ORIGIN"],
    );
    for run in 0..10 {
        let tmp = output_dir();
        // Exit 0: the bare name was found the way the program's own call finds it.
        let (dir, err) = record(tmp.path(), &exe, &[]);
        assert!(!err.contains("warning"), "run {run}: {err}");
        let (_, traces) = check_session(&dir);
        let mut calls = std::collections::BTreeMap::new();
        for t in traces {
            for (name, n) in t.by_name {
                *calls.entry(name).or_insert(0u64) += n;
            }
        }
        let want: std::collections::BTreeMap<String, u64> = [
            ("host_call", 1),
            ("main", 1),
            ("plug_entry", 1),
            ("plug_leaf", 7),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(calls, want, "run {run}");
    }
}
