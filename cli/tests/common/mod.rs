//! Shared by the end-to-end tests: C targets built with `cc` into a temp dir, the real `tracer`
//! binary, and checks on the sessions it writes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workload: `app <threads> <iterations> <mode>`.
/// Each iteration of a worker calls `top()`, which calls `mid()`, which calls `leaf()` twice:
/// 4 calls, 8 events. Modes: `exit` (return normally), `spin` (loop forever), `crash` (after the
/// iterations, thread 0 dereferences NULL while the others wait), `fork` and `sleep`.
pub const APP_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile long sink;
static long iterations;
static const char *mode;
static pthread_barrier_t done;

__attribute__((noinline)) void leaf(long i) { sink += i; }
__attribute__((noinline)) void mid(long i) { leaf(i); leaf(i + 1); }
__attribute__((noinline)) void top(long i) { mid(i); }

void *worker(void *arg) {
    long id = (long)arg;
    if (strcmp(mode, "spin") == 0) {
        for (long i = 0;; i++) top(i);
    }
    for (long i = 0; i < iterations; i++) top(i);
    if (strcmp(mode, "crash") == 0) {
        pthread_barrier_wait(&done);
        if (id == 0) { volatile int *p = NULL; *p = 1; }
        for (;;) pause();
    }
    return NULL;
}

int main(int argc, char **argv) {
    long threads = argc > 1 ? atol(argv[1]) : 1;
    iterations = argc > 2 ? atol(argv[2]) : 1000;
    mode = argc > 3 ? argv[3] : "exit";
    pthread_barrier_init(&done, NULL, (unsigned)threads);
    pthread_t t[1024];
    for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (long i = 0; i < threads; i++) pthread_join(t[i], NULL);
    printf("done %ld\n", sink);
    return 0;
}
"#;

/// Held by tests whose target keeps the CPUs busy (dozens of spinning threads), so they do not
/// run at the same time: two of them at once on a small machine measure the machine.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temp dir that lives as long as the test binary.
pub fn workdir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// Compiles `source` with `cc` and `flags` into the work dir, once per name and test binary:
/// tests run in parallel, and a second test asking for the same program waits for the first
/// build instead of racing it (or running a half-written file).
pub fn build(name: &str, source: &str, flags: &[&str]) -> PathBuf {
    type Built = std::sync::Arc<OnceLock<PathBuf>>;
    static BUILT: std::sync::Mutex<std::collections::BTreeMap<String, Built>> =
        std::sync::Mutex::new(std::collections::BTreeMap::new());
    let cell = BUILT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.to_owned())
        .or_default()
        .clone();
    cell.get_or_init(|| compile(name, source, flags)).clone()
}

fn compile(name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let dir = workdir();
    let exe = dir.join(name);
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg("-pthread")
        .output()
        .expect("cc runs");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// One `#[test]` per row, each calling `check` with the row's arguments: for cases that differ
/// only by data (a build mode, a thread count, the counts expected).
///
/// ```ignore
/// tests_of!(check_workers {
///     pg__1_thread__then_exact_counts: (&pg(), 1, &[], FIB15, FIB15 + 1),
/// });
/// ```
#[allow(unused_macros)]
macro_rules! tests_of {
    ($check:ident { $( $(#[$meta:meta])* $name:ident: ($($arg:expr),* $(,)?) ),* $(,)? }) => {
        $(
            $(#[$meta])*
            #[test]
            fn $name() {
                $check($($arg),*);
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use tests_of;

/// The instrumented workload.
pub fn app() -> PathBuf {
    build("app", APP_C, &["-O1", "-g", "-finstrument-functions"])
}

/// The tracer binary under test. Library calls are off (`TRACER_LIBRARY_CALLS=none`), so the
/// counts of instrumented functions stay exact; the library-call tests ask for them explicitly.
pub fn tracer() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tracer"));
    command.env("TRACER_LIBRARY_CALLS", "none");
    command
}

/// A fresh output directory, removed when the returned guard drops (a spinning target writes
/// gigabytes a second).
pub fn output_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The target's directory (`.../session_*/pid_<target>`) of the one session under `out`.
pub fn session_dir(out: &Path) -> PathBuf {
    // The target's directory: a followed process's manifest names the process it came from
    // (directory order is the file system's, so the first one listed may be a child's).
    let pids = pid_dirs(out);
    let followed = |p: &PathBuf| {
        std::fs::read_to_string(p.join("manifest.json"))
            .is_ok_and(|m| m.contains("\"followed_from\""))
    };
    pids.iter()
        .find(|p| !followed(p))
        .or(pids.first())
        .cloned()
        .expect("a pid directory")
}

/// Every process directory (`.../session_*/pid_*`) of the one session under `out`.
pub fn pid_dirs(out: &Path) -> Vec<PathBuf> {
    let session = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("session_")
        })
        .expect("a session directory");
    std::fs::read_dir(&session)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("pid_"))
        .collect()
}

/// Per-thread facts read back from a session.
#[derive(Debug)]
pub struct ThreadTrace {
    pub tid: u32,
    pub calls: u64,
    pub returns: u64,
    /// Calls per function name.
    pub by_name: std::collections::BTreeMap<String, u64>,
}

/// The session's function names by function id (from the manifest's symbols).
pub fn function_names(session: &atf::Session) -> std::collections::HashMap<u64, String> {
    session
        .manifest
        .symbols
        .iter()
        .filter_map(|s| Some((s.function_id()?, s.name.clone())))
        .collect()
}

/// The session's function name of an id: the symbol whose id it is, or whose
/// `[id, id + size)` holds it (an entry-only hook's id is an address inside the function).
pub fn function_namer(session: &atf::Session) -> impl Fn(u64) -> Option<String> {
    let mut symbols: Vec<(u64, u64, String)> = session
        .manifest
        .symbols
        .iter()
        .filter_map(|s| Some((s.function_id()?, s.size, s.name.clone())))
        .collect();
    symbols.sort();
    move |id| {
        let i = symbols.partition_point(|s| s.0 <= id).checked_sub(1)?;
        let (start, size, name) = &symbols[i];
        (*start == id || id - start < *size).then(|| name.clone())
    }
}

/// Starts `tracer spawn --output <out> <app> -- <threads> 0 spin` in the background.
pub fn spawn_spinning(out: &Path, threads: u32, stderr: std::process::Stdio) -> Background {
    Background(Some(
        tracer()
            .arg("spawn")
            .arg("--output")
            .arg(out)
            .arg(app())
            .args(["--", &threads.to_string(), "0", "spin"])
            .stderr(stderr)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the tracer starts"),
    ))
}

/// Waits until the session holds at least `bytes` of trace files.
pub fn wait_for_trace(out: &Path, bytes: u64) {
    // Generous: on a loaded 2-core machine dozens of spinning target threads leave the drain a
    // small share of a CPU, and the trace grows only as fast as it writes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = None;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the trace did not reach {bytes} bytes in 60 s (session: {seen:?} bytes)"
        );
        if let Ok(dir) = std::panic::catch_unwind(|| session_dir(out)) {
            let now = dir_bytes(&dir);
            if now >= bytes {
                return;
            }
            seen = Some(now);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Bytes of the files under `dir`, subdirectories included; hidden files (the space the session
/// sets aside for its final manifest) are not trace data and are left out.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
        .map(|(path, m)| {
            if m.is_dir() {
                dir_bytes(&path)
            } else {
                m.len()
            }
        })
        .sum()
}

/// Reads every thread, checks each stream is well nested with no gap (depths move by one, every
/// return matches the innermost open call, timestamps never go back), and that files and the
/// manifest agree; returns per-thread counts.
pub fn check_session(dir: &Path) -> (atf::Session, Vec<ThreadTrace>) {
    check_session_with(dir, false)
}

/// [`check_session`] for a joined stream: with `joined`, a stream may begin with returns whose
/// calls were made before the recording began (attach). Every thread's accounting balances
/// exactly, a target that died wherever its threads were included.
pub fn check_session_with(dir: &Path, joined: bool) -> (atf::Session, Vec<ThreadTrace>) {
    let session = atf::Session::open(dir).expect("the session opens");
    let name_of = function_namer(&session);
    let mut out = Vec::new();
    for thread in &session.threads {
        let mut stack: Vec<u64> = Vec::new();
        let mut last_ts = 0;
        let mut t = ThreadTrace {
            tid: thread.id,
            calls: 0,
            returns: 0,
            by_name: Default::default(),
        };
        for event in thread.index.events() {
            let e = event.expect("a readable event");
            assert!(
                e.timestamp_ns >= last_ts,
                "thread {}: time went back",
                thread.id
            );
            last_ts = e.timestamp_ns;
            match e.kind {
                atf::EventKind::Call => {
                    t.calls += 1;
                    stack.push(e.function_id);
                    let name =
                        name_of(e.function_id).unwrap_or_else(|| format!("{:#x}", e.function_id));
                    *t.by_name.entry(name).or_default() += 1;
                }
                atf::EventKind::Return => {
                    t.returns += 1;
                    match stack.pop() {
                        Some(open) => assert_eq!(
                            open, e.function_id,
                            "thread {}: mis-nested return",
                            thread.id
                        ),
                        None if joined => {} // its call was made before the recording began
                        None => panic!("thread {}: return with no call", thread.id),
                    }
                }
                other => panic!("unexpected event kind {other:?}"),
            }
        }
        // Persisted count in the file equals the manifest's.
        let entry = session
            .manifest
            .threads
            .iter()
            .find(|m| m.id == thread.id)
            .expect("the thread is in the manifest");
        assert_eq!(
            entry.index.persisted,
            thread.index.event_count(),
            "thread {}",
            thread.id
        );
        let c = &entry.index;
        assert!(c.balanced(), "thread {}: {c:?}", thread.id);
        out.push(t);
    }
    assert!(
        session.manifest.accounting.index.balanced(),
        "{:?}",
        session.manifest.accounting.index
    );
    (session, out)
}

/// A tracer started in the background: stopped on drop if the test ends early (a failed assertion
/// must not leave a tracer and its busy target running).
pub struct Background(pub Option<std::process::Child>);

impl Background {
    /// The running tracer.
    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("still owned")
    }

    /// Takes the child back, for a test that waits for it.
    pub fn take(mut self) -> std::process::Child {
        self.0.take().expect("still owned")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SIGTERM: the tracer stops its target and exits; SIGKILL if it does not.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs the tracer to completion and returns its output.
pub fn run(args: &[&str]) -> Output {
    tracer().args(args).output().expect("the tracer runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `tracer spawn -o <fresh dir> <exe> -- <args>` from inside that directory (a `-pg` program
/// writes gmon.out into its working directory) and checks that the tracer exited 0. Returns the
/// output (the target's stdout is the tracer's) and the directory, removed when dropped.
pub fn spawn_in_fresh_dir(exe: &Path, args: &[&str]) -> (Output, tempfile::TempDir) {
    let tmp = output_dir();
    let out = tracer()
        .current_dir(tmp.path())
        .arg("spawn")
        .arg("-o")
        .arg(tmp.path())
        .arg(exe)
        .arg("--")
        .args(args)
        .output()
        .expect("the tracer runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    (out, tmp)
}

/// A target program with its stdout read line by line and its stdin held open for commands
/// (a program that reads none ignores it); killed when dropped, so a failed assertion leaves
/// nothing running.
pub struct Target {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Target {
    /// Starts `exe args`.
    pub fn start(exe: &Path, args: &[&str]) -> Target {
        Target::spawn(Command::new(exe).args(args))
    }

    /// Starts `command` with stdin, stdout and stderr piped.
    pub fn spawn(command: &mut Command) -> Target {
        use std::process::Stdio;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the target starts");
        let stdin = child.stdin.take();
        let lines = std::io::BufRead::lines(std::io::BufReader::new(
            child.stdout.take().expect("piped stdout"),
        ));
        Target {
            child,
            stdin,
            lines,
        }
    }

    /// The target's pid, as the tracer takes it.
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The next line the target prints.
    pub fn next_line(&mut self) -> String {
        self.lines
            .next()
            .expect("the target prints a line")
            .expect("readable output")
    }

    /// Whether the target still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends one command line and returns the target's answer, its next line.
    pub fn ask(&mut self, command: &str) -> String {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").expect("the target reads commands");
        self.next_line()
    }

    /// Asks `command` until the answer is `want` (a change the target sees shortly after the
    /// tracer has left); fails after 20 s.
    pub fn ask_until(&mut self, command: &str, want: &str) {
        let start = std::time::Instant::now();
        loop {
            let answer = self.ask(command);
            if answer == want {
                return;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "{answer}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Kills the target and returns what it wrote on stderr.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr()
    }

    /// Closes its stdin, checks that it then exits 0, and returns what it wrote on stderr.
    pub fn close(mut self) -> String {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0));
        self.stderr()
    }

    fn stderr(&mut self) -> String {
        let mut err = String::new();
        std::io::Read::read_to_string(
            &mut self.child.stderr.take().expect("piped stderr"),
            &mut err,
        )
        .unwrap();
        err
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set in the re-run inside the private mount namespace.
pub const INNER: &str = "TRACER_PRIVATE_TMP_INNER";
/// What the inner run prints when it cannot mount its own `/tmp`.
pub const CANNOT_MOUNT: &str = "cannot mount a tmpfs on /tmp here";
/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the test `name` again in its own mount namespace with a fresh tmpfs on `/tmp`, or says why
/// it cannot. Returns true when the caller is that inner run and should do the work.
pub fn in_private_tmp(name: &str) -> bool {
    if std::env::var_os(INNER).is_some() {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/tmp"])
            .status()
            .expect("mount runs");
        if !status.success() {
            // Said to the outer run, which skips.
            println!("{CANNOT_MOUNT}");
            return false;
        }
        return true;
    }
    if !is_root() {
        eprintln!("skipped: {name} needs root (to mount a private /tmp)");
        return false;
    }
    // The C targets are built outside /tmp, which the inner run replaces.
    let tmpdir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    if tmpdir.starts_with("/tmp") {
        eprintln!(
            "skipped: {name} mounts a private /tmp, which would hide this build under {}",
            tmpdir.display()
        );
        return false;
    }
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .env("TMPDIR", &tmpdir)
        .output()
        .expect("unshare runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if (!out.status.success() && text.contains("unshare failed")) || text.contains(CANNOT_MOUNT) {
        eprintln!("skipped: {name} needs a private mount namespace and tmpfs mounts: {text}");
        return false;
    }
    assert!(out.status.success(), "inner run of {name} failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "inner run of {name} ran nothing:\n{text}"
    );
    eprintln!("{text}");
    false
}
