//! Recording: `tracer spawn`. Composes the pipeline's crates — the shared region (`registry`),
//! the agent, the drain thread (`drain`), the duration timer (`timer`) and signal-driven shutdown
//! (`shutdown`) — around a child process, and stops it in the order `docs/design.md` gives:
//! stop accepting events → close registrations → stop the drain thread (flush) → final drain →
//! fsync (the target gets the stop signal first and ends meanwhile) → cleanup (a target still
//! running is waited for) → summary → exit 0.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::{RegionConfig, Registry, SharedRegion};
use shutdown::{Budgets, PhaseContext, Pipeline, Reason, Shutdown, Statistics, Summary};

use crate::args::{RecordOptions, SpawnArgs};
use crate::error::{chain, CliError};
use crate::failure::{Agent, Exec, Output, Start};
use crate::symbols;

/// The longest a producer waits for the drain when its lane is full, whatever happens: a last
/// resort. A producer stops waiting much earlier if the drain's heartbeat goes silent for a
/// second (the tracer is gone), and while the drain lives it waits: lossless.
const PRODUCER_WAIT_US: u32 = 30_000_000;
/// Thread slots in the region (threads alive at once; exited threads' slots are reused).
const THREAD_CAPACITY: u32 = 1024;
/// Disk space set aside for the final manifest, so a full disk still gets a true one (a manifest
/// with a large program's symbols is a few hundred kilobytes).
const MANIFEST_RESERVE: u64 = 1 << 20;
/// How long a target that got the stop signal may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_millis(1000);
/// How often the main loop wakes when nothing happens (the live status line).
const TICK: Duration = Duration::from_millis(250);

/// `tracer spawn`.
pub fn spawn(args: SpawnArgs) -> Result<ExitCode, CliError> {
    let opts = &args.record;
    ignore_file_size_signal();
    timer::duration_from_secs(opts.duration).map_err(|e| Start::Duration(e.into()))?;
    let exe_info = symbols::inspect_executable(&args.executable).ok();
    if let Some(reason) = exe_info.as_ref().and_then(|i| i.unsupported()) {
        return Err(Start::Exec(Exec::Unsupported { reason }).into());
    }
    let output = open_output(opts)?;
    let library_calls = opts.library_calls != crate::args::LibraryCalls::None;
    match exe_info.as_ref() {
        Some(info) if library_calls && info.library_calls_only() => eprintln!(
            "tracer: {} was not built for call tracing, so only its library calls are recorded \
             (through its GOT); rebuild it with {} to record its own functions too",
            crate::read::clean(&args.executable.display().to_string()),
            symbols::BUILD_MODES
        ),
        Some(info) if !info.traceable() => {
            if let Some(problem) = info.problem() {
                eprintln!(
                    "tracer: warning: {}",
                    crate::read::clean(&problem.to_string())
                );
            }
        }
        _ => {}
    }
    let agent = find_agent()?;

    let config = region_config(opts)?;
    let region = SharedRegion::create(&config).map_err(|e| Start::CreateRegion(e.into()))?;
    let fd = region
        .inheritable_fd()
        .map_err(|e| Start::ShareRegion(e.into()))?;
    let registry = region.leak().map_err(|e| Start::Region(e.into()))?;
    // Before the target starts: its agent then waits for the trigger addresses, and its
    // children's agents know whether they are followed.
    let names = crate::names::Names::new(&opts.trigger, &registry, true);
    registry.set_follow_processes(!opts.no_follow);

    // Signals first, so a Ctrl-C during start-up is a clean stop, not a dead tracer.
    let shutdown = Shutdown::new()?;
    let signals = shutdown
        .install_signals()
        .map_err(|e| Start::Signals(e.into()))?;

    let child = start_target(&args, &agent, fd)?;
    // After the start: the target keeps the open-file limit it was given, only the tracer's grows.
    crate::processes::raise_fd_limit();
    // Now that the target runs with its own priority, give the tracer's threads (this one, and the
    // timer and drain threads started below) a larger CPU share, so the stop stays fast however
    // busy the target is. Best effort: without the privilege the priority stays as it was.
    raise_priority();
    // The target holds its own copy of the region's fd; ours is not needed any more.
    // SAFETY: `fd` is the inheritable duplicate made for the child, owned by nobody else here.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    let pid = child.id();
    let pidfd = pidfd_open(pid).map_err(|e| Start::Watch {
        pid,
        cause: e.into(),
    })?;
    let manifest = initial_manifest(&args, pid, registry);
    let target = Target {
        child: Some(child),
        pid,
        pidfd,
    };
    let (recorder, _) = record(
        opts, &output, target, registry, shutdown, signals, manifest, names,
    )?;
    if recorder.attempted == 0 && recorder.persisted == 0 {
        let instrumented = recorder.names.images.instrumented();
        let reason = no_events_reason(
            &args.executable,
            exe_info.as_ref(),
            instrumented,
            library_calls,
        );
        eprintln!("tracer: {}", crate::read::clean(&reason));
    }
    match recorder.error {
        Some(e) => Err(CliError::Refused(crate::error::Refusal::new(e, 1))),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// The region configuration both modes record with, fitted to the file-size limit (a memfd's
/// size counts against `ulimit -f`): with a limit smaller than the full region, fewer threads
/// get a slot at once (the others' events are dropped as `registry full`) or the rings are
/// smaller, and one note says so.
pub(crate) fn region_config(opts: &RecordOptions) -> Result<RegionConfig, CliError> {
    let limit = registry::file_size_limit().map(|bytes| {
        (
            bytes,
            "the file-size limit (ulimit -f)".to_owned(),
            "ulimit -f".to_owned(),
        )
    });
    fit_region(full_region_config(opts), limit)
}

/// `full` fitted to `limit` (the bytes it leaves the region, what the limit is, and the command
/// that raises it): the
/// largest configuration that fits, with a one-line note when it is smaller than `full`, or a
/// one-line error when even the smallest does not fit.
pub(crate) fn fit_region(
    full: RegionConfig,
    limit: Option<(u64, String, String)>,
) -> Result<RegionConfig, CliError> {
    let Some((limit, what, raise)) = limit else {
        return Ok(full);
    };
    let kib = |n: u64| n >> 10;
    let Some(fitted) = full.fit_to(limit) else {
        let smallest = registry::layout_size(&RegionConfig {
            capacity: registry::MIN_CAPACITY,
            index: registry::LaneConfig {
                rings: 2,
                ring_capacity: registry::MIN_FIT_RING,
            },
            detail: registry::LaneConfig {
                rings: 2,
                ring_capacity: registry::MIN_FIT_RING,
            },
            ..full.clone()
        })
        .unwrap_or(0) as u64;
        return Err(Start::RegionLimit {
            what,
            limit_kib: kib(limit),
            smallest_kib: kib(smallest),
            raise,
        }
        .into());
    };
    if fitted != full {
        eprintln!(
            "tracer: note: {what} leaves the shared region {} KiB: room for {} threads at once \
             with {}x{} KiB rings each (instead of {} with {}x{} KiB)",
            kib(limit),
            fitted.capacity,
            fitted.index.rings,
            fitted.index.ring_capacity >> 10,
            full.capacity,
            full.index.rings,
            full.index.ring_capacity >> 10
        );
    }
    Ok(fitted)
}

fn full_region_config(opts: &RecordOptions) -> RegionConfig {
    let detail_enabled = opts.detail || !opts.trigger.is_empty();
    let defaults = RegionConfig::default();
    RegionConfig {
        stack_bytes: u32::from(opts.stack_bytes),
        detail_enabled,
        // Without detail records the detail lanes stay empty: the smallest ones do, and the
        // region (its address space in the target, and its size against `ulimit -f`) halves.
        detail: if detail_enabled {
            defaults.detail
        } else {
            registry::LaneConfig {
                rings: 2,
                ring_capacity: registry::MIN_FIT_RING,
            }
        },
        // Lossless while the drain lives: a producer whose rings are all full waits up to this
        // long for the drain (on a loaded 2-core machine the drain can be off-CPU for tens of
        // milliseconds); a drain that is gone costs each thread one such wait, then drops.
        wait_timeout_us: PRODUCER_WAIT_US,
        capacity: THREAD_CAPACITY,
        library_calls: opts.library_calls.into(),
        ..defaults
    }
}

/// Records `target` (spawned, or attached when it has no child handle) from a running agent until a stop
/// trigger, then runs the shutdown phases and prints the summary. Returns the recorder (its
/// names, error and event count) and where the session went.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    opts: &RecordOptions,
    output: &atf::Dir,
    target: Target,
    registry: Registry<'static>,
    shutdown: Shutdown,
    signals: shutdown::SignalGuard,
    manifest: atf::Manifest,
    names: crate::names::Names,
) -> Result<(Recorder, PathBuf), CliError> {
    // Attached targets are not our children.
    let attached = target.child.is_none();
    let pid = target.pid;
    let duration =
        timer::duration_from_secs(opts.duration).map_err(|e| Start::Duration(e.into()))?;
    let layout = atf::SessionLayout::create_in(output, pid)
        .map_err(Output::Session)?
        .with_manifest_reserve(MANIFEST_RESERVE)
        .with_format(opts.format.into());
    let output_dir = layout.pid_dir().to_path_buf();
    let session = layout.clone();
    let drain = drain::Drain::new(registry, layout, manifest)
        .map(|d| d.follow_processes(true))
        .map_err(|e| Start::Drain(e.into()))?;
    let live = drain.live();
    let on_error = {
        let shutdown = shutdown.clone();
        move |e: &drain::DrainError| {
            shutdown.request(Reason::Error(chain(e)));
        }
    };
    let drain_thread =
        drain::DrainThread::spawn(drain, on_error).map_err(|e| Start::DrainThread(e.into()))?;
    let timer = match duration {
        Some(d) => {
            let shutdown = shutdown.clone();
            Some(
                timer::Timer::start(d, move || {
                    shutdown.request(Reason::Timer);
                })
                .map_err(|e| Start::Timer(e.into()))?,
            )
        }
        None => None,
    };

    let mut liveness = liveness::Liveness::new();
    if let Ok(fd) = target.pidfd.try_clone() {
        liveness.watch(pid, fd);
    }
    let mut recorder = Recorder {
        registry,
        liveness,
        following: false,
        died_in_write: 0,
        drain_thread: Some(drain_thread),
        drain: None,
        report: None,
        layout: session,
        child: Some(target),
        attached,
        attempted: 0,
        persisted: 0,
        target_fate: None,
        crashed: false,
        names,
        stop_signal: None,
        stop_signal_sent: None,
        reason: None,
        error: None,
    };
    let started = Instant::now();
    let status = StatusLine::new(live);
    let reason = recorder.wait_for_stop(&shutdown, &status, started);
    status.clear();
    if let Some(t) = &timer {
        t.cancel();
    }
    recorder.reason = Some(reason.clone());
    recorder.stop_signal = Some(match reason {
        Reason::Signal(sig) => sig,
        _ => libc::SIGTERM,
    });
    if matches!(reason, Reason::TargetCrashed(_)) {
        recorder.crashed = true;
    }

    let report = shutdown.execute(&mut recorder, &budgets())?;
    signals
        .restore()
        .map_err(|e| Start::RestoreSignals(e.into()))?;

    let stats = recorder.statistics(&output_dir);
    recorder.attempted = stats.events_attempted;
    recorder.persisted = stats.events_persisted;
    Summary { report, stats }.print();
    if let Some(report) = recorder.report.as_ref().filter(|r| r.processes.len() > 1) {
        eprintln!(
            "tracer: {} processes recorded, each in its own pid_<pid> directory of {}",
            report.processes.len(),
            output_dir.parent().unwrap_or(&output_dir).display()
        );
    }
    Ok((recorder, output_dir))
}

/// Phase budgets. They are safety nets for a target that cannot cooperate (a thread stopped by a
/// debugger inside a write), not speed targets: threads preempted inside a write finish it once
/// scheduled, and giving up on them early would turn accepted events into unwritten ones. On a
/// machine with far more busy threads than CPUs that can take a few scheduler periods.
fn budgets() -> Budgets {
    use shutdown::Phase;
    // Flushing, the final drain and syncing wait for the disk: a slow one must not turn written
    // events into skipped ones (a second Ctrl-C still forces a fast exit).
    Budgets::default()
        .with(Phase::StopAcceptance, Duration::from_secs(2))
        .with(Phase::CloseRegistrations, Duration::from_secs(1))
        .with(Phase::Flush, Duration::from_secs(10))
        .with(Phase::FinalDrain, Duration::from_secs(10))
        .with(Phase::Sync, Duration::from_secs(10))
}

/// Why nothing was recorded, with the fix.
fn no_events_reason(
    exe: &Path,
    info: Option<&symbols::ExeInfo>,
    instrumented: bool,
    library_calls: bool,
) -> String {
    if library_calls && info.is_some_and(symbols::ExeInfo::library_calls_only) && !instrumented {
        return format!(
            "recorded no events: {} made no library call from its executable before it stopped",
            exe.display()
        );
    }
    if !instrumented {
        if let Some(problem) = info.and_then(|i| i.problem()) {
            return format!("recorded no events: {problem}");
        }
    }
    format!(
        "recorded no events: {} called no instrumented function before it stopped",
        exe.display()
    )
}

/// Opens the directory sessions are created in, before anything starts: `--output` (its missing
/// parts created private, through their parents' handles), or by default the user's private
/// directory under [`crate::args::DEFAULT_OUTPUT`], which is refused when it could be swapped by
/// another user. It must accept new entries; nothing is written to find out.
pub(crate) fn open_output(opts: &RecordOptions) -> Result<atf::Dir, CliError> {
    let dir = match &opts.output {
        Some(path) => {
            atf::Dir::create_all(path, safedir::PRIVATE_DIR).map_err(|e| Output::Create {
                path: path.clone(),
                cause: e.into(),
            })?
        }
        None => safedir::private_dir_under_shared(
            Path::new(crate::args::DEFAULT_OUTPUT),
            &safedir::user_dir_name(),
        )
        .map_err(|e| match e {
            safedir::Error::Io { .. } => Output::Default(e),
            refused => Output::Unsafe(refused),
        })?,
    };
    // SAFETY: faccessat on a directory descriptor we hold, with a NUL-terminated "."; no memory
    // is written.
    let writable = unsafe {
        libc::faccessat(
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            c".".as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    } == 0;
    if !writable {
        let cause = std::io::Error::last_os_error();
        let path = dir.path().to_path_buf();
        return Err(Output::NotWritable { path, cause }.into());
    }
    Ok(dir)
}

/// The agent library, built and embedded in this binary by `build.rs`.
static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libagent.so"));

/// A path to the agent library that the target (and its children, and an injected `dlopen`)
/// can load: the embedded library written once to the user's private cache
/// (`~/.cache/tracer/agent-<hash>/libagent.so`, see [`privcache`]; for root
/// `/var/cache/tracer/...`, readable by the other users whose programs root traces), checked
/// byte for byte before each use. The tracer binary therefore works alone, wherever it is copied.
pub(crate) fn find_agent() -> Result<PathBuf, CliError> {
    let key = concat!("agent-", env!("TRACER_AGENT_HASH"));
    // Root may load it into another user's program (attach, or a program that changes user),
    // which must be able to read it: then it goes to a shared, root-only-writable cache.
    let access = if safedir::euid() == 0 {
        privcache::Access::Shared
    } else {
        privcache::Access::Private
    };
    let path = with_file_size_allowance(AGENT.len() as u64, || {
        privcache::materialize_as(access, "tracer", key, "libagent.so", AGENT)
    })
    .map_err(|e| match registry::file_size_limit() {
        Some(limit) if limit < AGENT.len() as u64 => Agent::FileSizeLimit {
            limit_kib: limit >> 10,
            agent_kib: AGENT.len() as u64 >> 10,
        },
        _ => Agent::Write(e.into()),
    })
    .map_err(Start::Agent)?;
    if on_noexec_mount(&path) {
        return Err(Start::Agent(Agent::Noexec { path }).into());
    }
    Ok(path)
}

/// Runs `write` (the tracer's own write of its agent to its cache) with the file-size limit
/// (`ulimit -f`) raised to at least `bytes` when it is lower and may be raised (up to the hard
/// limit, or beyond it with the privilege), then puts the limit back. Called before any other
/// thread or the target starts, so nothing else runs under the raised limit.
fn with_file_size_allowance<T>(bytes: u64, write: impl FnOnce() -> T) -> T {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `old`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut old) } != 0 || old.rlim_cur >= bytes {
        return write();
    }
    let raised = [
        libc::rlimit {
            rlim_cur: bytes,
            rlim_max: old.rlim_max.max(bytes),
        },
        libc::rlimit {
            rlim_cur: bytes.min(old.rlim_max),
            rlim_max: old.rlim_max,
        },
    ];
    // SAFETY: setrlimit reads a valid rlimit; a refusal leaves the limit as it was.
    let changed = raised
        .iter()
        .any(|r| unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, r) } == 0);
    let out = write();
    if changed {
        // SAFETY: as above; lowering a limit is always allowed.
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &old) };
    }
    out
}

/// Whether `path` lies on a file system mounted `noexec` (shared libraries cannot be mapped
/// executable there).
fn on_noexec_mount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: all-zero bytes are a valid `statvfs`; `c` is NUL-terminated and `st` writable.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ok = unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0;
    ok && st.f_flag & libc::ST_NOEXEC != 0
}

/// Starts the target with the agent preloaded (added to the user's LD_PRELOAD, not replacing it)
/// and the region's fd number in its environment.
fn start_target(args: &SpawnArgs, agent: &Path, fd: i32) -> Result<Child, CliError> {
    let mut preload = OsString::from(agent);
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(existing);
    }
    let mut command = Command::new(&args.executable);
    command
        .args(&args.args)
        .env("LD_PRELOAD", preload)
        .env(registry::ENV_REGION_FD, fd.to_string());
    // The tracer ignores SIGXFSZ (see `ignore_file_size_signal`), and an ignored signal stays
    // ignored across exec: give the target the default back, so it runs as without the tracer.
    // SAFETY: the closure runs in the forked child before exec and only calls signal(2), which
    // is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| Start::Exec(Exec::of(args.executable.display().to_string(), e)).into())
}

/// Ignores SIGXFSZ in the tracer: a trace file that reaches the file-size limit (`ulimit -f`)
/// then fails with `EFBIG`, which the drain counts and reports in one line, instead of the signal
/// killing the tracer without a word and leaving the session unfinished.
pub(crate) fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN takes no handler code and no memory.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

pub(crate) fn raise_priority() {
    // SAFETY: setpriority takes no pointers; on Linux `PRIO_PROCESS, 0` is the calling thread, and
    // threads created later inherit its value. A failure leaves the priority unchanged.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) };
}

pub(crate) fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn initial_manifest(args: &SpawnArgs, pid: u32, registry: Registry<'static>) -> atf::Manifest {
    let exe = std::fs::canonicalize(&args.executable).unwrap_or_else(|_| args.executable.clone());
    let argv = std::iter::once(args.executable.display().to_string())
        .chain(args.args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    manifest_for(pid, &exe, argv, registry)
}

/// The manifest's opening state: target, time, tracer version, clock.
pub(crate) fn manifest_for(
    pid: u32,
    exe: &Path,
    argv: Vec<String>,
    registry: Registry<'static>,
) -> atf::Manifest {
    let mut m = atf::Manifest::new(atf::ClockType::Boottime);
    m.target_pid = pid;
    m.executable = exe.display().to_string();
    m.argv = argv;
    m.wall_start_unix_ns = drain::wall_now_ns();
    m.tracer_version = env!("CARGO_PKG_VERSION").to_owned();
    let clock = registry.clock();
    m.clock = Some(match clock.source {
        registry::ClockSource::Tsc => atf::ClockInfo::tsc(atf::TscCalibration {
            tsc_hz: clock.tsc_hz,
            tsc_base: clock.tsc_base,
            ns_base: clock.ns_base,
            mult: clock.mult,
            shift: clock.shift,
        }),
        registry::ClockSource::Boottime => atf::ClockInfo::boottime(),
    });
    m
}

/// The target: its process handle when spawned, and a pidfd to poll for its exit.
pub(crate) struct Target {
    /// The spawned child; `None` when attached.
    pub(crate) child: Option<Child>,
    /// Its pid.
    pub(crate) pid: u32,
    /// Readable once it has exited.
    pub(crate) pidfd: OwnedFd,
}

/// The recording's state through the shutdown phases.
pub(crate) struct Recorder {
    registry: Registry<'static>,
    /// Whether the processes and threads holding slots still run (the stop handshake does not
    /// wait for a thread that died inside a write).
    liveness: liveness::Liveness,
    /// Processes other than the target were seen: the main loop wakes more often to hand back
    /// the slots of those that ended.
    following: bool,
    /// Threads that died inside a write section (their last event was never published).
    died_in_write: usize,
    drain_thread: Option<drain::DrainThread>,
    drain: Option<drain::Drain<'static>>,
    report: Option<drain::Report>,
    /// The session's directories, for rewriting the manifest after the drain is gone.
    layout: atf::SessionLayout,
    child: Option<Target>,
    /// Attach mode: the target is never signalled, and is left running.
    attached: bool,
    /// Events the agent attempted (known once the session is written).
    pub(crate) attempted: u64,
    /// Events written to the trace files.
    pub(crate) persisted: u64,
    target_fate: Option<atf::TargetFate>,
    crashed: bool,
    /// Modules and names of every process image, from the module log, and the triggers.
    pub(crate) names: crate::names::Names,
    stop_signal: Option<i32>,
    stop_signal_sent: Option<i32>,
    reason: Option<Reason>,
    /// The drain's error that failed the recording, if any.
    pub(crate) error: Option<Arc<drain::DrainError>>,
}

impl Recorder {
    /// Blocks until something requests the shutdown: a signal, the timer, the drain failing, or
    /// the target ending. Wakes every [`TICK`] for the status line and library rescans.
    fn wait_for_stop(
        &mut self,
        shutdown: &Shutdown,
        status: &StatusLine,
        started: Instant,
    ) -> Reason {
        loop {
            if let Some(reason) = shutdown.requested() {
                return reason;
            }
            // New objects reported by the agents: read their files, arm the triggers they
            // resolve, acknowledge them (an agent may be waiting).
            // Written as soon as they are known: a tracer killed later leaves them in the session.
            if self.names.poll(&self.registry, false) {
                self.names.persist(&self.layout);
            }
            let tick = if self.names.has_triggers() {
                crate::names::TRIGGER_TICK
            } else if self.following {
                crate::processes::FOLLOW_TICK
            } else {
                TICK
            };
            let pidfd = self
                .child
                .as_ref()
                .map(|t| t.pidfd.as_raw_fd())
                .unwrap_or(-1);
            let mut fds = [
                libc::pollfd {
                    fd: shutdown.wake_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: pidfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds; a negative fd is ignored by poll.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, tick.as_millis() as i32) };
            if fds[1].revents != 0 {
                if let Some(reason) = self.reap() {
                    shutdown.request(reason);
                }
            }
            // Watch every process that holds a slot while it is known to exist, so the stop can
            // tell its death from a reused pid.
            for slot in self.registry.slots() {
                self.liveness.observe(slot.pid);
            }
            // Followed processes that ended hand their slots back (they never run their threads'
            // teardown), so a program forking many short children does not fill the region.
            let root = self.child.as_ref().map(|t| t.pid);
            self.following |=
                crate::processes::reclaim_ended(&self.registry, &mut self.liveness, root);
            // Drain the wake fd first, then read the flag (no lost wake-up).
            let _ = shutdown.drain_wake();
            status.update(started, self.registry);
        }
    }

    /// If the target has ended, records its fate and returns the matching reason.
    fn reap(&mut self) -> Option<Reason> {
        let target = self.child.as_mut()?;
        let Some(child) = target.child.as_mut() else {
            // Attached: not our child, so its status is not ours to read; the pidfd says it ended.
            let mut fd = libc::pollfd {
                fd: target.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no waiting.
            let ended = unsafe { libc::poll(&mut fd, 1, 0) } > 0;
            if !ended {
                return None;
            }
            self.target_fate = Some(atf::TargetFate::Unknown);
            return Some(Reason::Manual);
        };
        let status = child.try_wait().ok()??;
        use std::os::unix::process::ExitStatusExt;
        let (fate, reason) = match (status.code(), status.signal()) {
            (Some(code), _) => (atf::TargetFate::Exited { code }, Reason::TargetExited(code)),
            (None, Some(signal)) => (
                atf::TargetFate::Signaled {
                    signal,
                    core_dumped: status.core_dumped(),
                },
                Reason::TargetCrashed(signal),
            ),
            _ => (atf::TargetFate::Unknown, Reason::TargetExited(-1)),
        };
        self.target_fate = Some(fate);
        Some(reason)
    }

    fn target_alive(&mut self) -> bool {
        if self.target_fate.is_some() {
            return false;
        }
        self.reap();
        self.target_fate.is_none()
    }

    /// Sends the target it spawned the stop signal, once, if it still runs; returns whether it
    /// still runs. Attached targets are left running. `unless_ending`: not to a target already
    /// on its way out (a fatal signal pending for it, or exiting), the group's signal having
    /// reached it too: the summary then says so, and cleanup signals it if it is still there.
    fn signal_target(&mut self, unless_ending: bool) -> bool {
        if self.attached || !self.target_alive() {
            return false;
        }
        let Some(target) = self.child.as_ref() else {
            return false;
        };
        let signal = self.stop_signal.unwrap_or(libc::SIGTERM);
        if unless_ending && process_ending(target.pid, signal) {
            return false;
        }
        if self.stop_signal_sent.is_none() {
            // SAFETY: signalling our own child, which we have not reaped (so the pid is still
            // ours).
            unsafe { libc::kill(target.pid as libc::pid_t, signal) };
            self.stop_signal_sent = Some(signal);
        }
        true
    }

    /// Waits up to `wait` for the target to end; returns its fate if it did.
    fn target_fate_within(&mut self, wait: Duration) -> Option<atf::TargetFate> {
        let end = Instant::now() + wait;
        while self.target_alive() {
            let left = end.saturating_duration_since(Instant::now());
            let target = self.child.as_ref().filter(|_| !left.is_zero())?;
            let mut fd = libc::pollfd {
                fd: target.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut fd, 1, left.as_millis().max(1) as i32) };
        }
        self.target_fate.clone()
    }

    /// Stops the target if it still runs: the stop signal (unless sent already), a grace
    /// period, then SIGKILL. A second signal (`forced`) cuts the grace period short.
    fn stop_target(&mut self, deadline: Instant, forced: &dyn Fn() -> bool) {
        if !self.signal_target(false) {
            return;
        }
        let grace_end = deadline.min(Instant::now() + STOP_GRACE);
        loop {
            if self.reap().is_some() {
                return;
            }
            let left = grace_end.saturating_duration_since(Instant::now());
            if left.is_zero() || forced() {
                break;
            }
            // In slices, so a second signal is seen within one.
            let left = left.min(PHASE_POLL);
            let Some(target) = self.child.as_ref() else {
                return;
            };
            let mut fd = libc::pollfd {
                fd: target.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut fd, 1, left.as_millis().max(1) as i32) };
        }
        if let Some(child) = self.child.as_mut().and_then(|t| t.child.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.reap();
    }

    fn statistics(&self, output: &Path) -> Statistics {
        let mut s = Statistics {
            output: Some(output.to_path_buf()),
            stop_signal_sent: self.stop_signal_sent,
            ..Statistics::default()
        };
        let pid = self.child.as_ref().map(|t| t.pid).unwrap_or(0);
        s.target = match &self.target_fate {
            None if self.attached => shutdown::TargetFate::Detached { pid },
            Some(atf::TargetFate::Exited { code }) => {
                shutdown::TargetFate::Exited { pid, code: *code }
            }
            Some(atf::TargetFate::Signaled { signal, .. }) => shutdown::TargetFate::Killed {
                pid,
                signal: *signal,
            },
            _ => shutdown::TargetFate::Unknown,
        };
        if let Some(report) = &self.report {
            let a = &report.accounting.index;
            s.events_attempted = a.attempted;
            s.events_persisted = a.persisted;
            let d = &a.dropped;
            s.after_stop = d.shutdown;
            s.dropped = [
                ("ring full", d.ring_full),
                ("registry full", d.registry_full),
                ("agent setup", d.agent_setup),
                ("reentrant", d.reentrant),
                ("thread teardown", d.thread_teardown),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .chain(d.other.iter().map(|(k, v)| (k.replace('_', " "), *v)))
            .collect();
            s.bytes_written = report.stats.bytes;
            s.ring_waits = report.stats.ring_waits;
            s.files_synced = report.stats.files_synced;
            s.threads_flushed = report.threads.len() as u64;
        }
        s
    }

    /// Whether the target has ended (reaped, or seen ended through its pidfd).
    fn target_dead(&mut self) -> bool {
        let pid = self.child.as_ref().map(|t| t.pid);
        self.target_fate.is_some() || pid.is_some_and(|pid| self.liveness.process_ended(pid))
    }
}

/// What the stop handshake asks while it waits: whether a slot's thread still lives, and whether
/// a second signal asked to stop waiting.
struct StopWatch<'a, 'c> {
    liveness: &'a mut liveness::Liveness,
    ctx: &'a PhaseContext<'c>,
}

impl registry::StopWatch for StopWatch<'_, '_> {
    fn owner_alive(&mut self, slot: &registry::SlotInfo) -> bool {
        self.liveness.thread_alive(slot.pid, slot.tid)
    }

    fn cancelled(&mut self) -> bool {
        self.ctx.forced()
    }
}

/// Whether process `pid` is already ending: SIGKILL or `signal` pending for it or one of its
/// threads (a fatal signal to a process queues SIGKILL to each of its threads), or its main
/// thread exiting. Best effort, from `/proc/<pid>/status` and `/proc/<pid>/stat`: a process
/// whose files cannot be read is not known to be ending.
fn process_ending(pid: u32, signal: i32) -> bool {
    let mask = |status: &str, key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = |sig: i32| 1u64 << (sig - 1);
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let pending = mask(&status, "SigPnd:") | mask(&status, "ShdPnd:");
        if pending & (bit(libc::SIGKILL) | bit(signal)) != 0 {
            return true;
        }
    }
    // The flags are the 9th field of stat, the 7th after the command's closing parenthesis.
    const PF_EXITING: u64 = 0x4;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(6)?.parse::<u64>().ok()
        })
        .is_some_and(|flags| flags & PF_EXITING != 0)
}

/// How long the manifest's write waits, after the session's files are synced, for a target
/// signalled before them to end: about what writing the manifest again would cost.
const FATE_WAIT: Duration = Duration::from_millis(5);

/// How long closing registrations waits at a time before it looks again at its deadline and at a
/// second signal.
const PHASE_POLL: Duration = Duration::from_millis(10);

fn phase_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> shutdown::Error {
    shutdown::Error::phase(e)
}

impl Pipeline for Recorder {
    fn stop_acceptance(&mut self, ctx: &PhaseContext<'_>) -> Result<(), shutdown::Error> {
        // Acceptance stops at once: every event begun from here on is counted as made after the
        // stop, and producers waiting for ring space give up (a shutdown drop).
        let open = self.registry.stop_now();
        // Then the drain thread stops (after the slot it is on): from here on the tracer's
        // threads only wait, so target threads preempted inside a write get the CPU to finish it.
        self.take_drain();
        // One call for the whole budget: each call snapshots the write sections open at that
        // moment, so calling again in slices would keep catching threads that just entered one
        // and then wait for them too, which on an oversubscribed machine never ends. The watch
        // cuts it short on a second signal, and skips threads that died inside a section (a
        // terminal's Ctrl-C kills the target with the tracer): what they published is in their
        // lanes, and the event they were writing never was.
        let mut watch = StopWatch {
            liveness: &mut self.liveness,
            ctx,
        };
        let report = self
            .registry
            .wait_stopped(open, ctx.remaining(), &mut watch);
        self.died_in_write = report.dead.len();
        if report.complete() {
            return Ok(());
        }
        let n = report.stragglers.len();
        Err(shutdown::Error::phase(if report.cancelled {
            format!("{n} thread(s) still inside a write when the second signal came")
        } else {
            format!("{n} thread(s) stayed inside a write (stopped by a debugger?)")
        }))
    }

    fn close_registrations(&mut self, ctx: &PhaseContext<'_>) -> Result<(), shutdown::Error> {
        loop {
            let dead = self.target_dead();
            let wait = if dead {
                Duration::ZERO
            } else {
                ctx.remaining().min(PHASE_POLL)
            };
            match self.registry.close_registrations(wait) {
                Ok(()) => return Ok(()),
                Err(_) if dead => return Ok(()),
                Err(e) if ctx.should_stop() => return Err(phase_error(e)),
                Err(_) => {}
            }
        }
    }

    fn flush(&mut self, ctx: &PhaseContext<'_>) -> Result<(), shutdown::Error> {
        // One pass over every thread: submitted rings and each active ring's committed prefix
        // (the drain reads it in place, so no producer has to submit anything).
        self.take_drain(); // normally already done by stop_acceptance
        let Some(drain) = self.drain.as_mut() else {
            return Err(phase_error("the drain thread ended abnormally"));
        };
        // A second signal ends the pass between two threads (the shutdown is then forced).
        drain
            .stop_pass_unless(&|| ctx.forced())
            .map(|_| ())
            .map_err(|e| phase_error(self.failed(e)))
    }

    fn final_drain(&mut self, _ctx: &PhaseContext<'_>) -> Result<(), shutdown::Error> {
        let Some(drain) = self.drain.as_mut() else {
            return Err(phase_error("the drain thread ended abnormally"));
        };
        drain
            .final_drain(self.crashed)
            .map_err(|e| phase_error(self.failed(e)))
    }

    fn sync(&mut self, _ctx: &PhaseContext<'_>) -> Result<(), shutdown::Error> {
        // When forced, the flush phase was skipped.
        self.take_drain();
        // A shutdown forced before its stop handshake leaves the target accepting: stop it now,
        // without waiting, so the final count snapshot is taken after the stop (an attempt not yet
        // matched is then a shutdown drop) rather than while threads still accept events.
        if self.registry.is_accepting() {
            let _ = self.registry.stop_accepting(Duration::ZERO);
        }
        let Some(mut drain) = self.drain.take() else {
            return Err(phase_error(
                "nothing to sync: the drain thread ended abnormally",
            ));
        };
        // Acceptance has stopped: no agent writes the log any more, except one still starting;
        // an entry claimed and never published is given up.
        self.names.poll(&self.registry, true);
        crate::processes::name_processes(&self.names.images, &mut drain);
        for note in self.names.notes(&self.registry) {
            // Object paths and symbol names come from the program's files: escaped.
            eprintln!("tracer: warning: {}", crate::read::clean(&note.to_string()));
        }
        let outcome = drain::Outcome {
            stop_reason: match &self.reason {
                Some(Reason::Manual) if self.attached && self.target_fate.is_some() => {
                    "target exited".into()
                }
                Some(reason) => describe(reason),
                None => "stopped".into(),
            },
            target_fate: self.target_fate.clone().unwrap_or(atf::TargetFate::Running),
            wall_end_unix_ns: drain::wall_now_ns(),
        };
        // The trace is complete (the final drain is done and acceptance stopped): the target
        // gets its stop signal now, and ends while the session's files are synced, so the
        // manifest, written last, says how it ended, instead of being written again in cleanup.
        // One that takes longer than a few milliseconds more (it handles the signal, say) is
        // waited for in cleanup, as before.
        let signalled = self.signal_target(true);
        // A target that had ended already (the group's signal killed it too) was reaped just
        // now, after the outcome above: its fate is known too.
        let mut late_fate = || {
            if signalled {
                self.target_fate_within(FATE_WAIT)
            } else {
                self.target_fate.clone()
            }
        };
        // The counts are reported even when files failed (their events are `not_written`).
        let (report, error) = drain.finish_counted_then(&outcome, &mut late_fate);
        self.report = Some(report);
        match error {
            None => {
                // Every manifest holds its names now: the copy kept in case the tracer was
                // killed goes (a copy left behind changes nothing a reader shows).
                let _ = self.layout.remove_names();
                Ok(())
            }
            Some(e) => Err(phase_error(self.failed(e))),
        }
    }

    fn cleanup(&mut self, ctx: &PhaseContext<'_>) -> Result<(), shutdown::Error> {
        // The trace is written: the target's threads stop pausing on their refused events.
        self.registry.end_stop();
        let was_running = self.target_fate.is_none();
        self.stop_target(ctx.deadline(), &|| ctx.forced());
        // The manifest was written while the target still ran: record how it ended.
        if was_running {
            if let (Some(_), Some(fate)) = (&self.report, &self.target_fate) {
                let mut manifest = self.layout.read_manifest().map_err(phase_error)?;
                manifest.target_fate = Some(fate.clone());
                self.layout
                    .write_manifest(&mut manifest)
                    .map_err(phase_error)?;
            }
        }
        Ok(())
    }
}

impl Recorder {
    /// Keeps `e` as the recording's error (the latest phase's, as the one the user sees) and
    /// returns it for the phase's own error.
    fn failed(&mut self, e: drain::DrainError) -> Arc<drain::DrainError> {
        let e = Arc::new(e);
        self.error = Some(e.clone());
        e
    }

    fn take_drain(&mut self) {
        if let Some(thread) = self.drain_thread.take() {
            if let Some(e) = thread.error() {
                self.error.get_or_insert(e);
            }
            self.drain = thread.stop();
        }
    }
}

/// The stop reason as the manifest says it.
fn describe(reason: &Reason) -> String {
    match reason {
        Reason::Signal(sig) => format!("signal {}", shutdown::signal_name(*sig)),
        Reason::Timer => "duration elapsed".into(),
        Reason::TargetExited(code) => format!("target exited with status {code}"),
        Reason::TargetCrashed(sig) => format!("target killed by {}", shutdown::signal_name(*sig)),
        Reason::Manual => "stopped".into(),
        Reason::Error(e) => format!("error: {e}"),
    }
}

/// The live status line on a terminal: elapsed time, events/s, threads, drops.
struct StatusLine {
    live: Arc<drain::LiveStats>,
    enabled: bool,
    last: std::cell::Cell<(Instant, u64)>,
}

impl StatusLine {
    fn new(live: Arc<drain::LiveStats>) -> Self {
        StatusLine {
            live,
            enabled: std::io::stderr().is_terminal(),
            last: std::cell::Cell::new((Instant::now(), 0)),
        }
    }

    fn update(&self, started: Instant, registry: Registry<'static>) {
        if !self.enabled {
            return;
        }
        let events = self.live.events.load(Relaxed);
        let (at, before) = self.last.get();
        let dt = at.elapsed().as_secs_f64().max(1e-3);
        let rate = (events.saturating_sub(before)) as f64 / dt;
        self.last.set((Instant::now(), events));
        let dropped: u64 = registry
            .slots()
            .filter_map(|s| registry.counts(s.index).ok())
            .map(|c| c.dropped())
            .sum::<u64>()
            + registry.orphan_counts().attempted;
        eprint!(
            "\r\x1b[2Ktracer: {:>7.1} s  {:>10} events  {:>9.0} events/s  {:>4} threads  {} dropped",
            started.elapsed().as_secs_f64(),
            events,
            rate,
            self.live.threads.load(Relaxed),
            dropped
        );
    }

    fn clear(&self) {
        if self.enabled {
            eprint!("\r\x1b[2K");
        }
    }
}
