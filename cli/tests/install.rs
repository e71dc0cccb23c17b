//! One file to install: the `tracer` binary carries its agent library, so a copy of it alone, in
//! a directory of its own and run from elsewhere, records a program; and so does the one
//! `cargo install --path cli` installs. The install runs for real, into a temporary `--root`,
//! with the profile and target directory of this test run, so it reuses what is built already
//! (seconds) instead of building the workspace again in release mode (minutes on a small
//! machine); what it checks, the binary cargo puts in `<root>/bin` working alone, does not depend
//! on the profile.
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

/// The target directory and profile of this test run, from where cargo built `tracer`
/// (`<target>/<profile dir>/tracer`), as `cargo install` takes them.
fn this_build() -> (std::path::PathBuf, Vec<String>) {
    let exe = Path::new(env!("CARGO_BIN_EXE_tracer"));
    let profile_dir = exe.parent().expect("the profile directory");
    let target = profile_dir.parent().expect("the target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => vec!["--debug".to_owned()],
        Some("release") => Vec::new(),
        Some(other) => vec!["--profile".to_owned(), other.to_owned()],
        None => Vec::new(),
    };
    (target.to_path_buf(), profile)
}

#[test]
fn cargo_install_path_cli__then_the_installed_tracer_records_alone() {
    let root = tempfile::tempdir().unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let (target, profile) = this_build();
    let result = Command::new(env!("CARGO"))
        .args(["install", "--locked", "--offline", "--path"])
        .arg(workspace.join("cli"))
        .arg("--root")
        .arg(root.path())
        .args(&profile)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo runs");
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    // The one file cargo installed, copied away from the root and run from elsewhere.
    let installed = root.path().join("bin");
    let files: Vec<_> = std::fs::read_dir(&installed)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["tracer"], "one file installed");
    let alone = tempfile::tempdir().unwrap();
    let exe = alone.path().join("tracer");
    std::fs::copy(installed.join("tracer"), &exe).unwrap();
    drop(root);
    let elsewhere = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    trace_with(&exe, elsewhere.path(), cache.path(), output_dir().path());
}
