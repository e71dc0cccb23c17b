//! One file to install: the `tracer` binary carries its agent library, so a copy of it alone, in
//! a directory of its own and run from elsewhere, records a program. The real gesture,
//! `cargo install --path cli`, builds everything again in release mode (minutes on a small
//! machine), so it runs only when asked: `cargo test -p cli --test install -- --ignored`.
#![allow(non_snake_case)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Runs `tracer` (at `exe`) from `cwd` with its cache in `cache`, tracing the workload; checks
/// the session it writes.
fn trace_with(exe: &Path, cwd: &Path, cache: &Path, out: &Path) {
    let result = Command::new(exe)
        .current_dir(cwd)
        .env("XDG_CACHE_HOME", cache)
        .args(["spawn", "--output"])
        .arg(out)
        .arg(app())
        .args(["--", "2", "100", "exit"])
        .output()
        .expect("the copied tracer runs");
    let err = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(0), "{err}");
    let (_, traces) = check_session(&session_dir(out));
    let workers = traces.iter().filter(|t| t.by_name.contains_key("worker"));
    assert_eq!(workers.count(), 2, "{traces:?}");
    // The agent was written to the cache (root's is shared, so other users' programs can load
    // it), and nothing else was needed.
    // SAFETY: geteuid takes nothing and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = if root {
        std::path::PathBuf::from("/var/cache/tracer")
    } else {
        cache.join("tracer")
    };
    let cached: Vec<_> = std::fs::read_dir(&dir)
        .expect("the agent's cache directory")
        .map(|e| e.unwrap().path().join("libagent.so"))
        .filter(|p| p.is_file())
        .collect();
    assert!(!cached.is_empty(), "nothing in {}", dir.display());
}

#[test]
fn tracer_binary_copied_alone_elsewhere__then_spawn_records_with_the_embedded_agent() {
    let alone = tempfile::tempdir().unwrap();
    let exe = alone.path().join("tracer");
    std::fs::copy(env!("CARGO_BIN_EXE_tracer"), &exe).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = output_dir();
    trace_with(&exe, elsewhere.path(), cache.path(), out.path());
    // A second run reuses the cached library.
    let again = output_dir();
    trace_with(&exe, elsewhere.path(), cache.path(), again.path());
}

#[test]
#[ignore = "builds the workspace in release mode (minutes); run with --ignored"]
fn cargo_install_path_cli__then_the_installed_tracer_records_alone() {
    let root = tempfile::tempdir().unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new(env!("CARGO"))
        .args(["install", "--offline", "--path"])
        .arg(workspace.join("cli"))
        .arg("--root")
        .arg(root.path())
        .status()
        .expect("cargo runs");
    assert!(status.success());
    let exe = root.path().join("bin").join("tracer");
    let elsewhere = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    trace_with(&exe, elsewhere.path(), cache.path(), output_dir().path());
}
