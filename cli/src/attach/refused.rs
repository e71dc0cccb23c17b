//! Why `tracer attach <pid>` does not trace a process: one variant per reason, each message
//! naming the problem and the fix; an underlying error stays the [`source`](std::error::Error::source).

use std::path::PathBuf;

use super::inject::InjectError;
use crate::symbols;

/// A refusal or failure of `tracer attach <pid>`.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No such process (or a pid that cannot be one).
    #[error("no process with pid {pid}; give the pid of a running program (see `pgrep`)")]
    NoProcess {
        /// The pid given.
        pid: i32,
    },
    /// The pid is the tracer's own.
    #[error("the tracer cannot attach to itself; give another pid")]
    Itself,
    /// A zombie.
    #[error("pid {pid} has exited (a zombie waiting for its parent); give a running process")]
    Zombie {
        /// The pid given.
        pid: i32,
    },
    /// Stopped by a signal: it reaches no safe point.
    #[error(
        "pid {pid} is stopped (SIGSTOP or Ctrl-Z), so it cannot reach a safe point; resume it \
         with `kill -CONT {pid}` first"
    )]
    Stopped {
        /// The pid given.
        pid: i32,
    },
    /// Another ptrace tracer (a debugger) holds it.
    #[error(
        "pid {pid} is already traced by pid {tracer} ({name}); detach that debugger or tracer first"
    )]
    Traced {
        /// The pid given.
        pid: i32,
        /// The tracer holding it.
        tracer: u32,
        /// That tracer's command name.
        name: String,
    },
    /// Another tracer of ours records it already.
    #[error("pid {pid} is already being recorded by another tracer ({how}); stop that one first")]
    Recorded {
        /// The pid given.
        pid: i32,
        /// How it is known.
        how: &'static str,
    },
    /// Another user's process, and the tracer is not root.
    #[error(
        "pid {pid} belongs to another user (uid {owner}) and the tracer runs as uid {me}; run the \
         tracer as that user"
    )]
    OtherUser {
        /// The pid given.
        pid: i32,
        /// Its owner.
        owner: u32,
        /// The tracer's user.
        me: u32,
    },
    /// Its executable cannot be read.
    #[error("cannot read the executable of pid {pid}")]
    Unreadable {
        /// The pid given.
        pid: i32,
        /// Why.
        #[source]
        cause: symbols::SymbolError,
    },
    /// An executable the tracer does not support (the reason names the fix).
    #[error("pid {pid}: {reason}")]
    Unsupported {
        /// The pid given.
        pid: i32,
        /// What is unsupported.
        reason: String,
    },
    /// Statically linked: no dynamic loader to load the agent.
    #[error(
        "pid {pid} is statically linked, so the agent cannot be loaded into it; rebuild it \
         dynamically linked"
    )]
    Static {
        /// The pid given.
        pid: i32,
    },
    /// Neither it nor its libraries were built for call tracing.
    #[error(
        "pid {pid} ({}) has no instrumentation hooks; rebuild it with {} and start it again",
        exe.display(),
        symbols::BUILD_MODES
    )]
    NoHooks {
        /// The pid given.
        pid: i32,
        /// Its executable.
        exe: PathBuf,
    },
    /// The kernel refused ptrace.
    #[error("cannot trace pid {pid}: {why}")]
    Denied {
        /// The pid given.
        pid: i32,
        /// Which rule refused it, and the fix.
        why: Denial,
    },
    /// ptrace failed otherwise.
    #[error("cannot trace pid {pid}")]
    Seize {
        /// The pid given.
        pid: i32,
        /// The system call's error.
        #[source]
        cause: std::io::Error,
    },
    /// The process exited while the agent was being loaded.
    #[error("pid {pid} exited during the attach; nothing was recorded")]
    Exited {
        /// The pid given.
        pid: i32,
    },
    /// No thread reached a safe point in time.
    #[error(
        "pid {pid} called no instrumented function and no library function through its PLT \
         within 3 s, so there was no safe point to load the agent; attach while it runs"
    )]
    NoSafePoint {
        /// The pid given.
        pid: i32,
    },
    /// Loading the agent failed.
    #[error("cannot attach to pid {pid}")]
    Injection {
        /// The pid given.
        pid: i32,
        /// What failed.
        #[source]
        cause: InjectError,
    },
}

/// Which rule made the kernel refuse ptrace of a process of our own user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// Yama scope 3.
    #[error("kernel.yama.ptrace_scope is 3 (ptrace disabled until reboot)")]
    Disabled,
    /// Yama scope 1 or 2.
    #[error(
        "kernel.yama.ptrace_scope is {0}, which forbids attaching to a process that is not a \
         child; run `sudo sysctl kernel.yama.ptrace_scope=0` or run the tracer with CAP_SYS_PTRACE"
    )]
    NotAChild(u32),
    /// A seccomp filter on the tracer.
    #[error(
        "a seccomp filter on the tracer forbids ptrace (a container limit?); run it where ptrace \
         is allowed (e.g. docker --cap-add=SYS_PTRACE)"
    )]
    Seccomp,
    /// Anything else.
    #[error(
        "permission denied by the kernel (another user's process, a set-uid program, or a \
         container without CAP_SYS_PTRACE)"
    )]
    Kernel,
}

impl Denial {
    /// The rule in force for this tracer.
    pub fn now() -> Denial {
        let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let own = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let seccomp = own
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0);
        match scope {
            Some(3) => Denial::Disabled,
            Some(n @ 1..=2) => Denial::NotAChild(n),
            _ if seccomp != 0 => Denial::Seccomp,
            _ => Denial::Kernel,
        }
    }
}

impl From<Refused> for crate::error::CliError {
    fn from(refused: Refused) -> Self {
        let exit_code = refused.exit_code();
        let fix = match &refused {
            Refused::Unreadable { cause, .. } => cause.fix(),
            _ => None,
        };
        let refusal = crate::error::Refusal::new(refused, exit_code);
        crate::error::CliError::Refused(match fix {
            Some(fix) => refusal.with_fix(fix),
            None => refusal,
        })
    }
}

impl Refused {
    /// The refusal of a failed injection.
    pub fn of_injection(pid: i32, e: InjectError) -> Refused {
        match e {
            InjectError::Seize(errno) if errno == libc::EPERM || errno == libc::EACCES => {
                Refused::Denied {
                    pid,
                    why: Denial::now(),
                }
            }
            InjectError::Seize(errno) => Refused::Seize {
                pid,
                cause: std::io::Error::from_raw_os_error(errno),
            },
            InjectError::Exited => Refused::Exited { pid },
            InjectError::NoSafePoint => Refused::NoSafePoint { pid },
            InjectError::AlreadyRecorded => Refused::Recorded {
                pid,
                how: "spawn or attach",
            },
            cause => Refused::Injection { pid, cause },
        }
    }

    /// Exit status: 2 when the request cannot work as given, 1 when the attach itself failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Refused::Seize { .. }
            | Refused::Exited { .. }
            | Refused::NoSafePoint { .. }
            | Refused::Injection { .. } => 1,
            _ => 2,
        }
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use crate::error::CliError;

    fn refused(e: &CliError) -> &Refused {
        let CliError::Refused(r) = e else {
            panic!("not a refusal: {e:?}")
        };
        r.error().downcast_ref::<Refused>().expect("a Refused")
    }

    #[test]
    fn refused__seize_fails__then_exit_1_typed_and_the_cause_printed_once() {
        let e: CliError = Refused::of_injection(7, InjectError::Seize(libc::ESRCH)).into();
        assert_eq!(e.exit_code(), 1);
        assert!(matches!(refused(&e), Refused::Seize { pid: 7, .. }));
        let line = e.render();
        assert!(line.starts_with("cannot trace pid 7: "), "{line}");
        assert_eq!(line.matches("No such process").count(), 1, "{line}");
    }

    #[test]
    fn refused__no_process__then_exit_2_naming_the_fix() {
        let e: CliError = Refused::NoProcess { pid: 0 }.into();
        assert_eq!(e.exit_code(), 2);
        assert!(matches!(refused(&e), Refused::NoProcess { pid: 0 }));
        assert!(e.render().contains("see `pgrep`"), "{}", e.render());
    }
}
