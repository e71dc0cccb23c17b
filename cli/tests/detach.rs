//! What `tracer attach` leaves in the target: after the detach the agent unmaps the attachment's
//! region and thread array, so maps and VmSize stay flat from the first attach on; a failed attach
//! writes nothing on the target's stdout or stderr and leaves it running untraced; a target with an
//! address-space limit (`ulimit -v`) is given regions that fit it; no file descriptor stays open;
//! a 32-bit program is refused in one line. (See `docs/attach-detach.md`.)
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

    /// `(VmSize kB, mappings, region mappings)` once no region of the tracer is mapped any more
    /// (the agent unmaps it when a thread leaves the stopped attachment: within milliseconds for
    /// this target), or as they are after 5 s.
    fn settled_footprint(&self) -> (u64, usize, usize) {
        let maps_path = format!("/proc/{}/maps", self.child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let maps = std::fs::read_to_string(&maps_path).unwrap();
            let regions = maps.lines().filter(|l| l.contains("tracer-region")).count();
            if regions == 0 || std::time::Instant::now() > deadline {
                return (self.status_field("VmSize:"), maps.lines().count(), regions);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
fn detach__twenty_rounds__then_no_region_stays_and_maps_and_vmsize_are_flat_after_the_first() {
    let _heavy = heavy();
    let (dir, exe) = quiet();
    let mut target = Target::start(dir.path(), "exec", &exe);
    let fd_dir = format!("/proc/{}/fd", target.child.id());
    let fds = || std::fs::read_dir(&fd_dir).unwrap().count();
    let fds_before = fds();
    let mut first = None;
    for round in 1..=20 {
        let tmp = output_dir();
        let result = attach(&target.pid(), tmp.path());
        let err = stderr(&result);
        assert_eq!(result.status.code(), Some(0), "round {round}: {err}");
        let (session, _) = check_session_with(&session_dir(tmp.path()), true);
        assert!(session.event_count() > 0, "round {round}: nothing recorded");
        let (vm_kb, maps, regions) = target.settled_footprint();
        assert_eq!(regions, 0, "round {round}: the region is still mapped");
        let (first_vm, first_maps) = *first.get_or_insert((vm_kb, maps));
        if round == 5 || round == 20 {
            assert_eq!(
                (vm_kb, maps),
                (first_vm, first_maps),
                "after {round} rounds: (VmSize kB, mappings) moved from the first attach's"
            );
        }
        assert!(target.alive(), "round {round}: the target died");
    }
    assert_eq!(fds(), fds_before, "the agent left file descriptors open");
    assert_eq!(target.output(), "");
}

/// Eight workers calling `top()` → `mid()` → `leaf()` without pause, recursing a little so that
/// returns are in flight at every moment; silent.
const BUSY_C: &str = r#"
#include <pthread.h>
#include <unistd.h>
static volatile long sink;
__attribute__((noinline)) void leaf(long i) { sink += i; }
__attribute__((noinline)) void mid(long i) { if (i & 1) mid(i - 1); else leaf(i); }
__attribute__((noinline)) void top(long i) { mid(i & 7); }
void *worker(void *arg) { (void)arg; for (long i = 0;; i++) top(i); return NULL; }
int main(void) {
    pthread_t t[8];
    for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (;;) pause();
}
"#;

#[test]
fn detach__eight_threads_calling_without_pause__then_every_round_unmaps_and_the_target_lives() {
    let _heavy = heavy();
    // Calls in flight at the detach, through the enter/exit hooks and through the return
    // trampoline (`-pg`: frames hooked before the detach return after it).
    for (name, flags) in [
        ("busy_cyg", &["-O1", "-finstrument-functions"][..]),
        ("busy_pg", &["-O1", "-pg"][..]),
    ] {
        let exe = build(name, BUSY_C, flags);
        let dir = tempfile::tempdir().unwrap();
        let mut target = Target::start(dir.path(), "exec", &exe);
        for round in 1..=6 {
            let tmp = output_dir();
            let result = attach(&target.pid(), tmp.path());
            let err = stderr(&result);
            assert_eq!(result.status.code(), Some(0), "{name} round {round}: {err}");
            let (session, _) = check_session_with(&session_dir(tmp.path()), true);
            assert!(session.event_count() > 0, "{name} round {round}");
            assert_eq!(
                target.settled_footprint().2,
                0,
                "{name} round {round}: region left"
            );
            assert!(target.alive(), "{name} round {round}: the target died");
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            target.alive(),
            "{name}: the target died after the last detach"
        );
        assert_eq!(target.output(), "", "{name}");
    }
}

/// A static i386 program that calls `pause()` for ever (`mov eax, 29; int 0x80; jmp` back): an
/// ELF header, one loadable segment, 9 bytes of code.
fn i386_pause_elf() -> Vec<u8> {
    const BASE: u32 = 0x0804_8000;
    let code: [u8; 9] = [0xB8, 29, 0, 0, 0, 0xCD, 0x80, 0xEB, 0xF7];
    let size = (52 + 32 + code.len()) as u32;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    for half in [2u16, 3] {
        elf.extend_from_slice(&half.to_le_bytes()); // ET_EXEC, EM_386
    }
    for word in [1u32, BASE + 84, 52, 0, 0] {
        elf.extend_from_slice(&word.to_le_bytes()); // version, entry, phoff, shoff, flags
    }
    for half in [52u16, 32, 1, 40, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, ...
    }
    for word in [1u32, 0, BASE, BASE, size, size, 5, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes()); // PT_LOAD, offset, addresses, sizes, R+X
    }
    elf.extend_from_slice(&code);
    elf
}

#[test]
fn attach__running_32_bit_program__then_one_line_exit_2_and_it_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("pause32");
    // A dynamic one when the toolchain can build it (gcc-multilib), else a hand-made static one.
    let built = Command::new("cc")
        .args(["-m32", "-o"])
        .arg(&exe)
        .arg("-x")
        .arg("c")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut cc| {
            use std::io::Write;
            cc.stdin
                .take()
                .unwrap()
                .write_all(b"#include <unistd.h>\nint main(void) { for (;;) pause(); }\n")?;
            cc.wait()
        })
        .is_ok_and(|s| s.success());
    if !built {
        eprintln!(
            "note: cc -m32 cannot build here (no gcc-multilib): using a hand-made static i386 ELF"
        );
        std::fs::write(&exe, i386_pause_elf()).unwrap();
    }
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = match Command::new(&exe).stdin(Stdio::null()).spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("skipped: this kernel cannot run 32-bit programs ({e})");
            return;
        }
    };
    std::thread::sleep(Duration::from_millis(100));
    let tmp = output_dir();
    let result = attach(&child.id().to_string(), tmp.path());
    let err = stderr(&result);
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(
        err.contains("32-bit x86 programs are not supported"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(alive, "the 32-bit program died");
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
fn detach__target_with_address_space_limit__then_every_region_fits_and_it_survives() {
    let _heavy = heavy();
    let (dir, exe) = quiet();
    let limit_kib = 400_000;
    let mut target = Target::start(dir.path(), &format!("ulimit -v {limit_kib}; exec"), &exe);
    let fd_dir = format!("/proc/{}/fd", target.child.id());
    let fds = || std::fs::read_dir(&fd_dir).unwrap().count();
    let fds_before = fds();
    // Each detach unmaps its region, so what the limit leaves does not shrink from one attach to
    // the next: every one is fitted and recorded.
    for round in 0..8 {
        let tmp = output_dir();
        let result = attach(&target.pid(), tmp.path());
        let err = stderr(&result);
        assert!(target.alive(), "round {round}: the target died: {err}");
        assert!(target.status_field("VmSize:") <= limit_kib);
        assert_eq!(result.status.code(), Some(0), "round {round}: {err}");
        assert!(
            err.contains("address-space limit (ulimit -v), half of its free part, leaves"),
            "round {round}: {err}"
        );
        let (session, _) = check_session_with(&session_dir(tmp.path()), true);
        assert!(session.event_count() > 0, "round {round}");
        assert_eq!(
            target.settled_footprint().2,
            0,
            "round {round}: region left"
        );
    }
    assert_eq!(fds(), fds_before, "the agent left file descriptors open");
    assert_eq!(target.output(), "");
}
