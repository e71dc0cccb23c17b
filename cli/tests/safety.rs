//! A shared `/tmp` with a hostile user on it: root's `tracer spawn` never writes through a link
//! planted by another user, never into a directory another user controls, and keeps its traces
//! private.
//!
//! These tests need root (to act as `nobody` and to give each test its own `/tmp`, a fresh tmpfs
//! in a private mount namespace, so the machine's real `/tmp/ada_traces` is never touched); they
//! say so and pass without checking anything when not run as root. Each re-runs itself inside
//! `unshare -m` (see [`in_private_tmp`]).
#![allow(non_snake_case)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// A root-only file and directory the hostile user points links at.
const VICTIM_DIR: &str = "/tmp/victim";

/// `sh -c script` as the user nobody.
fn nobody_command(script: &str) -> Command {
    let mut command = Command::new("setpriv");
    command.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        "sh",
        "-c",
        script,
    ]);
    command
}

/// Runs `script` with `sh -c` as the user nobody.
fn as_nobody(script: &str) -> Output {
    nobody_command(script).output().expect("setpriv runs")
}

fn nobody_ok(script: &str) {
    let out = as_nobody(script);
    assert!(
        out.status.success(),
        "as nobody: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A root-only victim: a directory of root's files, mode 0600, that an attacker would like
/// overwritten or truncated.
fn plant_victim() -> PathBuf {
    let dir = PathBuf::from(VICTIM_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["secret", "manifest.json", "index.atf"] {
        let path = dir.join(name);
        std::fs::write(&path, format!("root's own {name}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

/// Every file under `dir` with its size, mtime and bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(snapshot(&path));
        } else {
            let bytes = std::fs::read(&path).unwrap_or_default();
            out.insert(
                path,
                (
                    meta.len(),
                    meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
                    bytes,
                ),
            );
        }
    }
    out
}

fn spawn_default(app: &Path) -> Output {
    run(&["spawn", app.to_str().unwrap(), "--", "1", "100", "exit"])
}

/// Links named like every temporary name the tracer ever used, for the next pids.
fn plant_write_test_links(dir: &str) {
    nobody_ok(&format!(
        "p=$$; i=0; while [ $i -lt 400 ]; do \
         ln -sf {VICTIM_DIR}/secret {dir}/.tracer-write-test-$((p+i)); i=$((i+1)); done"
    ));
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn safety__hostile_default_directory__then_refused_or_private_and_no_victim_changes() {
    if !in_private_tmp(
        "safety__hostile_default_directory__then_refused_or_private_and_no_victim_changes",
    ) {
        return;
    }
    let victim = plant_victim();
    let before = snapshot(&victim);
    let app = app();

    // 1. nobody made the shared directory writable by all, without the sticky bit, and planted
    //    links for the next pids: refused, one line, exit 2.
    nobody_ok("mkdir -m 777 /tmp/ada_traces");
    plant_write_test_links("/tmp/ada_traces");
    let out = spawn_default(&app);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("/tmp/ada_traces can be changed by other users"),
        "{err}"
    );
    assert!(err.contains("--output"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // 2. Sticky (like /tmp) but with root's per-user name taken by a link: refused.
    nobody_ok(&format!(
        "chmod 1777 /tmp/ada_traces && ln -s {VICTIM_DIR} /tmp/ada_traces/root"
    ));
    let out = spawn_default(&app);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("/tmp/ada_traces/root is a symbolic link"),
        "{err}"
    );

    // 3. ... or by nobody's own directory: refused.
    nobody_ok("rm /tmp/ada_traces/root && mkdir -m 777 /tmp/ada_traces/root");
    let out = spawn_default(&app);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("belongs to uid 65534"), "{err}");

    // 4. With the name free: root gets a private directory and a private, complete session.
    nobody_ok("rmdir /tmp/ada_traces/root");
    let out = spawn_default(&app);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let own = Path::new("/tmp/ada_traces/root");
    assert_eq!(mode_of(own), 0o700);
    assert_eq!(std::fs::metadata(own).unwrap().uid(), 0);
    let (session, _) = check_session(&session_dir(own));
    assert!(session.manifest.finished);
    assert!(session.event_count() > 0);
    for (path, _) in snapshot(own) {
        assert_eq!(mode_of(&path), 0o600, "{}", path.display());
    }
    let unreadable = as_nobody(&format!("cat {}/*/*/manifest.json", own.display()));
    assert!(!unreadable.status.success(), "nobody read root's manifest");

    // 5. Another user records too: nobody gets a private directory of their own next to root's.
    let tracer = env!("CARGO_BIN_EXE_tracer");
    if as_nobody(&format!("{tracer} --version")).status.success() {
        std::fs::create_dir_all("/tmp/pub").unwrap();
        std::fs::copy(&app, "/tmp/pub/app").unwrap();
        std::fs::set_permissions("/tmp/pub", std::fs::Permissions::from_mode(0o755)).unwrap();
        nobody_ok(&format!("{tracer} spawn /tmp/pub/app -- 1 100 exit"));
        let theirs = Path::new("/tmp/ada_traces/nobody");
        assert_eq!(mode_of(theirs), 0o700);
        assert_eq!(std::fs::metadata(theirs).unwrap().uid(), 65534);
        assert!(check_session(&session_dir(theirs)).0.manifest.finished);
        // A shared directory nobody may add to (root's, 0755): one line saying what to do.
        std::fs::remove_dir_all(theirs).unwrap();
        std::os::unix::fs::chown("/tmp/ada_traces", Some(0), Some(0)).unwrap();
        std::fs::set_permissions("/tmp/ada_traces", std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let out = as_nobody(&format!("{tracer} spawn /tmp/pub/app -- 1 100 exit"));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("chmod 1777 /tmp/ada_traces"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    } else {
        eprintln!(
            "step 5 skipped: nobody cannot run {tracer} (a directory on its path is private)"
        );
    }

    // 6. The shared directory itself a link: refused, nothing created where it points.
    std::fs::remove_dir_all("/tmp/ada_traces").unwrap();
    nobody_ok("mkdir -m 777 /tmp/elsewhere && ln -s /tmp/elsewhere /tmp/ada_traces");
    let out = spawn_default(&app);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/tmp/ada_traces is a symbolic link"), "{err}");
    assert_eq!(std::fs::read_dir("/tmp/elsewhere").unwrap().count(), 0);

    assert_eq!(
        snapshot(&victim),
        before,
        "a file outside the session changed"
    );
}

#[test]
fn safety__sessions_swapped_for_links_while_recording__then_no_victim_changes() {
    if !in_private_tmp("safety__sessions_swapped_for_links_while_recording__then_no_victim_changes")
    {
        return;
    }
    let victim = plant_victim();
    // The victim holds names a session holds, so a write through a swapped link would hit them.
    std::fs::create_dir_all(victim.join("pid_1/thread_1")).unwrap();
    let before = snapshot(&victim);
    let app = app();
    // nobody owns a sticky shared output directory, so nobody may rename root's entries in it.
    nobody_ok("mkdir -m 1777 /tmp/shared");
    plant_write_test_links("/tmp/shared");
    let swapper = nobody_command(&format!(
        "n=0; while true; do for d in /tmp/shared/session_*; do \
             [ -d \"$d\" ] && [ ! -L \"$d\" ] || continue; \
             n=$((n+1)); mv \"$d\" /tmp/shared/moved_$n 2>/dev/null && \
             ln -s {VICTIM_DIR} \"$d\"; done; done"
    ))
    .spawn()
    .expect("the swapper starts");
    let mut swapper = KillOnDrop(swapper);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut runs = 0;
    while runs < 7 && Instant::now() < deadline {
        let out = run(&[
            "spawn",
            "--output",
            "/tmp/shared",
            app.to_str().unwrap(),
            "--",
            "2",
            "2000",
            "exit",
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "run {runs}: {err}");
        runs += 1;
    }
    swapper.0.kill().ok();
    swapper.0.wait().ok();
    let moved: Vec<PathBuf> = std::fs::read_dir("/tmp/shared")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("moved_")
        })
        .collect();
    // Each swapped session was written whole where it went, not through the link.
    for dir in &moved {
        let (session, _) = check_session(&atf::Session::open(dir).unwrap().dir);
        assert!(session.manifest.finished, "{}", dir.display());
    }
    let moved = moved.len();
    eprintln!("{runs} runs, {moved} session directories swapped for links while recording");
    assert_eq!(
        snapshot(&victim),
        before,
        "a file outside the sessions changed"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
