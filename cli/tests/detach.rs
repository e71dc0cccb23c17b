//! What `tracer attach` leaves in the target: a failed attach writes nothing on the target's
//! stdout or stderr and leaves it running untraced; a target with an address-space limit
//! (`ulimit -v`) is given regions that fit it, so repeated attaches never break it; no file
//! descriptor stays open. (Each attach's region stays mapped: see `docs/attach-detach.md`.)
#![allow(non_snake_case)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Two workers calling `top()` → `leaf()` forever, pausing 1 ms every 1024 calls; silent.
const QUIET_C: &str = r#"
#include <pthread.h>
#include <unistd.h>
static volatile long sink;
__attribute__((noinline)) void leaf(long i) { sink += i; }
__attribute__((noinline)) void top(long i) { leaf(i); }
void *worker(void *arg) {
    (void)arg;
    for (long i = 0;; i++) { top(i); if ((i & 1023) == 0) usleep(1000); }
    return NULL;
}
int main(void) {
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (;;) pause();
}
"#;

/// The quiet target, copied where any user can run it.
fn quiet() -> (tempfile::TempDir, PathBuf) {
    let exe = build("quiet", QUIET_C, &["-O1", "-finstrument-functions"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("quiet");
    std::fs::copy(&exe, &copy).unwrap();
    (dir, copy)
}

/// A started target whose stdout and stderr go to files, killed on drop.
struct Target {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Target {
    /// Runs `bash -c "<prefix> <exe>"`, the prefix ending in an `exec` (after a `ulimit`, or of
    /// `setpriv`), so the pid is the target's.
    fn start(dir: &Path, prefix: &str, exe: &Path) -> Target {
        let (out, err) = (dir.join("stdout"), dir.join("stderr"));
        let child = Command::new("bash")
            .arg("-c")
            .arg(format!("{prefix} {}", exe.display()))
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("the target starts");
        // Until the shell and `setpriv` have exec'ed the program, and its workers run.
        let exe_link = format!("/proc/{}/exe", child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::read_link(&exe_link).ok().as_deref() != Some(exe) {
            assert!(
                std::time::Instant::now() < deadline,
                "the target never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        Target { child, out, err }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn status_field(&self, name: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap() + &std::fs::read_to_string(&self.err).unwrap()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attach(pid: &str, out: &Path) -> std::process::Output {
    run(&[
        "attach",
        "--duration",
        "0.1",
        "--output",
        out.to_str().unwrap(),
        pid,
    ])
}

#[test]
fn detach__agent_cannot_open_the_region__then_one_line_and_nothing_on_the_targets_output() {
    // SAFETY: geteuid takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (to attach to another user's program)");
        return;
    }
    let (dir, exe) = quiet();
    // Run by nobody, the target cannot open root's /proc/<tracer>/fd/<n>: the agent's attach fails.
    let mut target = Target::start(
        dir.path(),
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups --",
        &exe,
    );
    let tmp = output_dir();
    let result = attach(&target.pid(), tmp.path());
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the agent could not open the tracer's region"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(target.alive(), "the target died");
    assert_eq!(target.output(), "", "the target's stdout/stderr got output");
}

#[test]
fn detach__target_with_address_space_limit__then_regions_fit_until_refused_and_it_survives() {
    let _heavy = heavy();
    let (dir, exe) = quiet();
    let limit_kib = 400_000;
    let mut target = Target::start(dir.path(), &format!("ulimit -v {limit_kib}; exec"), &exe);
    let fd_dir = format!("/proc/{}/fd", target.child.id());
    let fds = || std::fs::read_dir(&fd_dir).unwrap().count();
    let fds_before = fds();
    let mut recorded = 0;
    for round in 0..16 {
        let tmp = output_dir();
        let result = attach(&target.pid(), tmp.path());
        let err = stderr(&result);
        assert!(target.alive(), "round {round}: the target died: {err}");
        assert!(target.status_field("VmSize:") <= limit_kib);
        if result.status.code() == Some(1) {
            // What the limit leaves is too small now: refused in one line, the target untouched.
            assert!(err.contains("prlimit --pid"), "round {round}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "round {round}: {err}");
            break;
        }
        assert_eq!(result.status.code(), Some(0), "round {round}: {err}");
        assert!(
            err.contains("address-space limit (ulimit -v), half of its free part, leaves"),
            "round {round}: {err}"
        );
        let (session, _) = check_session_with(&session_dir(tmp.path()), true);
        assert!(session.event_count() > 0, "round {round}");
        recorded += 1;
    }
    assert!(recorded >= 4, "only {recorded} attaches fitted");
    assert_eq!(fds(), fds_before, "the agent left file descriptors open");
    assert_eq!(target.output(), "");
}
