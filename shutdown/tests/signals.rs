//! Real signal delivery, each case in a forked child with an `alarm` watchdog, so the handlers of
//! one case never meet another case (or the test harness) and a hang ends as a failure.
#![allow(non_snake_case)]

mod support;

use shutdown::{
    handler_address, Budgets, Error, ForceCause, Phase, Reason, Shutdown, Statistics, Summary,
};
use std::mem::MaybeUninit;
use std::time::Duration;
use support::{Act, FakePipeline};

/// How long a child may run before the watchdog's SIGALRM kills it.
const WATCHDOG_SECONDS: u32 = 20;
const PATIENCE: Option<Duration> = Some(Duration::from_secs(10));

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Runs `body` in a forked child; the parent fails the test unless the child exits 0.
fn in_child(body: fn() -> Check) {
    // SAFETY: the child only runs `body` (our code, no locks shared with other harness threads
    // except the allocator, which glibc makes fork-safe) and leaves through `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: alarm has no preconditions; SIGALRM's default action ends the child.
        unsafe { libc::alarm(WATCHDOG_SECONDS) };
        let code = match std::panic::catch_unwind(body) {
            Ok(Ok(())) => 0,
            Ok(Err(msg)) => {
                let line = format!("child check failed: {msg}\n");
                // SAFETY: writes a live buffer to stderr.
                unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
                1
            }
            Err(_) => 2,
        };
        // SAFETY: ends the child without running the parent's atexit handlers or destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a live local.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFSIGNALED(status) {
        panic!(
            "child killed by signal {} (SIGALRM = watchdog: it hung)",
            libc::WTERMSIG(status)
        );
    }
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child failed (1 = check, 2 = panic); see stderr"
    );
}

fn current_action(signo: i32) -> libc::sigaction {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: queries only (null new action); `old` is writable.
    let rc = unsafe { libc::sigaction(signo, std::ptr::null(), old.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: sigaction filled it (and it was zeroed).
    unsafe { old.assume_init() }
}

fn set_action(signo: i32, handler: usize, flags: i32) {
    // SAFETY: plain data, zero is a valid start.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = flags;
    // SAFETY: `sa` is a valid action for a signal we may catch.
    let rc = unsafe { libc::sigaction(signo, &sa, std::ptr::null_mut()) };
    assert_eq!(rc, 0);
}

fn is_member(set: &libc::sigset_t, signo: i32) -> bool {
    // SAFETY: `set` is a valid, initialised sigset_t.
    unsafe { libc::sigismember(set, signo) == 1 }
}

#[test]
fn signal_handler__install__then_handlers_registered() {
    in_child(|| {
        let s = Shutdown::new().map_err(|e| e.to_string())?;
        let guard = s.install_signals().map_err(|e| e.to_string())?;
        for (signo, other) in [(libc::SIGINT, libc::SIGTERM), (libc::SIGTERM, libc::SIGINT)] {
            let sa = current_action(signo);
            ensure!(
                sa.sa_sigaction == handler_address(),
                "signal {signo}: not our handler"
            );
            ensure!(
                sa.sa_flags & libc::SA_RESTART != 0,
                "signal {signo}: no SA_RESTART"
            );
            ensure!(
                is_member(&sa.sa_mask, other),
                "signal {signo}: signal {other} not blocked in it"
            );
        }
        ensure!(
            matches!(s.install_signals(), Err(Error::AlreadyInstalled)),
            "a second installation was accepted"
        );
        drop(guard);
        Ok(())
    });
}

#[test]
fn signal_handler__restore__then_original_handlers() {
    extern "C" fn sentinel(_: libc::c_int) {}
    in_child(|| {
        set_action(
            libc::SIGINT,
            sentinel as extern "C" fn(libc::c_int) as usize,
            libc::SA_NODEFER,
        );
        set_action(libc::SIGTERM, libc::SIG_IGN, 0);
        let s = Shutdown::new().map_err(|e| e.to_string())?;
        for round in ["restore()", "drop"] {
            let guard = s.install_signals().map_err(|e| e.to_string())?;
            if round == "drop" {
                drop(guard);
            } else {
                guard.restore().map_err(|e| e.to_string())?;
            }
            let int = current_action(libc::SIGINT);
            ensure!(
                int.sa_sigaction == sentinel as extern "C" fn(libc::c_int) as usize,
                "{round}: SIGINT handler not restored"
            );
            ensure!(
                int.sa_flags & libc::SA_NODEFER != 0,
                "{round}: SIGINT flags not restored"
            );
            ensure!(
                current_action(libc::SIGTERM).sa_sigaction == libc::SIG_IGN,
                "{round}: SIGTERM not restored"
            );
        }
        // After restore, our handler is gone: SIGTERM is ignored, the shutdown never hears of it.
        // SAFETY: raise has no memory-safety preconditions.
        unsafe { libc::raise(libc::SIGTERM) };
        ensure!(
            s.requested().is_none(),
            "a restored handler still requested a shutdown"
        );
        Ok(())
    });
}

#[test]
fn signal_handler__sa_restart__then_no_eintr() {
    in_child(|| {
        let s = Shutdown::new().map_err(|e| e.to_string())?;
        let _guard = s.install_signals().map_err(|e| e.to_string())?;
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        ensure!(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0, "pipe failed");
        // SAFETY: gettid has no preconditions.
        let reader_tid = unsafe { libc::gettid() };
        let waker = s.clone();
        let helper = std::thread::spawn(move || {
            // Wait until the reader is blocked in read(2), so the signal interrupts that call.
            let path = format!("/proc/self/task/{reader_tid}/syscall");
            let read_nr = format!("{} ", libc::SYS_read);
            while !std::fs::read_to_string(&path).is_ok_and(|s| s.starts_with(&read_nr)) {
                std::thread::sleep(Duration::from_millis(1));
            }
            // SAFETY: sends SIGINT to the reader thread of this process.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), reader_tid, libc::SIGINT) };
            let woke = waker.wait(PATIENCE);
            // SAFETY: writes one byte from a live buffer to the pipe's write end.
            unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
            woke
        });
        let mut byte = 0u8;
        // SAFETY: reads one byte into a live local.
        let n = unsafe { libc::read(fds[0], (&mut byte as *mut u8).cast(), 1) };
        let err = std::io::Error::last_os_error();
        let woke = helper.join().map_err(|_| "helper panicked".to_string())?;
        ensure!(
            n == 1 && byte == b'x',
            "read returned {n} ({err}): interrupted instead of restarted"
        );
        ensure!(
            matches!(woke, Ok(Some(Reason::Signal(libc::SIGINT)))),
            "the waiter saw {woke:?}"
        );
        Ok(())
    });
}

#[test]
fn signal_handler__errno__then_preserved() {
    in_child(|| {
        let s = Shutdown::new().map_err(|e| e.to_string())?;
        let _guard = s.install_signals().map_err(|e| e.to_string())?;
        // Fill the eventfd so the handler's own write fails with EAGAIN and sets errno.
        let full: u64 = u64::MAX - 1;
        // SAFETY: writes 8 bytes from a live local to the shutdown's eventfd.
        let n = unsafe { libc::write(s.wake_fd(), (&full as *const u64).cast(), 8) };
        ensure!(n == 8, "fill failed");
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = 4242 };
        // SAFETY: raise has no memory-safety preconditions; the handler runs before it returns.
        unsafe { libc::raise(libc::SIGINT) };
        // SAFETY: as above.
        let errno = unsafe { *libc::__errno_location() };
        ensure!(errno == 4242, "errno changed to {errno} across the handler");
        ensure!(
            s.requested() == Some(Reason::Signal(libc::SIGINT)),
            "no request recorded"
        );
        Ok(())
    });
}

#[test]
fn shutdown__concurrent_signals__then_single_shutdown() {
    in_child(|| {
        let s = Shutdown::new().map_err(|e| e.to_string())?;
        let _guard = s.install_signals().map_err(|e| e.to_string())?;
        let senders: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let signo = if i % 2 == 0 {
                        libc::SIGINT
                    } else {
                        libc::SIGTERM
                    };
                    for _ in 0..50 {
                        // SAFETY: sends a signal to this process.
                        unsafe { libc::kill(libc::getpid(), signo) };
                    }
                })
            })
            .collect();
        for t in senders {
            t.join().map_err(|_| "sender panicked".to_string())?;
        }
        let reason = s.wait(PATIENCE).map_err(|e| e.to_string())?;
        ensure!(
            matches!(reason, Some(Reason::Signal(libc::SIGINT | libc::SIGTERM))),
            "woke with {reason:?}"
        );
        let (seen, ignored) = (s.signals_received(), s.ignored_requests());
        ensure!(
            seen >= 1 && ignored == seen - 1,
            "{seen} signals but {ignored} ignored"
        );
        ensure!(
            !s.force_requested(),
            "signals before the phases began forced the shutdown"
        );
        let mut p = FakePipeline::new(4, 1);
        let report = s
            .execute_with_notices(&mut p, &Budgets::default(), &mut |_| {})
            .map_err(|e| e.to_string())?;
        ensure!(
            report.clean() && report.reason == reason.unwrap(),
            "{report:?}"
        );
        ensure!(
            matches!(
                s.execute_with_notices(&mut p, &Budgets::default(), &mut |_| {}),
                Err(Error::AlreadyExecuted)
            ),
            "a second shutdown ran"
        );
        Ok(())
    });
}

#[test]
fn signal__second_during_shutdown__then_forced_fast_exit() {
    in_child(|| {
        let s = Shutdown::new().map_err(|e| e.to_string())?;
        let _guard = s.install_signals().map_err(|e| e.to_string())?;
        // SAFETY: raise has no memory-safety preconditions.
        unsafe { libc::raise(libc::SIGTERM) };
        ensure!(
            s.wait(PATIENCE).map_err(|e| e.to_string())? == Some(Reason::Signal(libc::SIGTERM)),
            "no request"
        );
        let mut p = FakePipeline::new(2, 3).with(Phase::Flush, Act::Raise(libc::SIGINT));
        let report = s
            .execute_with_notices(&mut p, &Budgets::default(), &mut |_| {})
            .map_err(|e| e.to_string())?;
        ensure!(
            report.forced == Some(ForceCause::SecondSignal),
            "not forced: {report:?}"
        );
        ensure!(
            p.calls
                .ends_with(&[Phase::Flush, Phase::Sync, Phase::Cleanup]),
            "calls {:?}",
            p.calls
        );
        ensure!(
            report.skipped().collect::<Vec<_>>() == [Phase::FinalDrain],
            "skipped the wrong phases"
        );
        ensure!(
            report.notices.iter().any(|n| n.contains("second signal")),
            "no notice: {:?}",
            report.notices
        );
        Ok(())
    });
}

#[test]
fn shutdown_summary__stderr__then_visible() {
    in_child(|| {
        let s = Shutdown::new().map_err(|e| e.to_string())?;
        s.request(Reason::Timer);
        let mut p = FakePipeline::new(1, 1);
        let report = s
            .execute_with_notices(&mut p, &Budgets::default(), &mut |_| {})
            .map_err(|e| e.to_string())?;
        let summary = Summary {
            report,
            stats: Statistics::default(),
        };
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        ensure!(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0, "pipe failed");
        // SAFETY: duplicates valid descriptors; the saved copy restores stderr afterwards.
        let saved = unsafe { libc::dup(2) };
        // SAFETY: as above.
        unsafe { libc::dup2(fds[1], 2) };
        summary.print();
        // SAFETY: as above; closing our write ends lets the read below see end-of-file.
        unsafe {
            libc::dup2(saved, 2);
            libc::close(saved);
            libc::close(fds[1]);
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a live buffer of the given length.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        ensure!(
            out == summary.render().into_bytes(),
            "stderr did not carry the summary"
        );
        Ok(())
    });
}
