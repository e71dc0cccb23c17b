//! `tracer attach <pid>`: checks that the process can be joined (each refusal is one line naming
//! the reason and the fix), creates the region, loads the agent into the running process with
//! ptrace at a safe point ([`inject`]), then records with the same pipeline as spawn. At the stop
//! the agent is quiesced (acceptance stops; the first target thread that sees it restores the
//! GOT entries it redirected) and the target keeps running, never signalled by the tracer.
//!
//! The region is a memfd the target opens as `/proc/<tracer pid>/fd/<n>`: nothing is left on a
//! file system if the tracer dies, and the target keeps its mapping.
//!
//! How long the target was stopped is said on stderr after the injection; with
//! `TRACER_ATTACH_REPORT=<file>` in the tracer's environment it is also written to that file as
//! one JSON object, for benchmarks and scripts: `pid`, `threads`, `hooks`, `held_ns` (the
//! loading thread held), `held_running_ns` and `held_runnable_ns` (of that, the thread on a CPU
//! and waiting for one; absent without `/proc/<pid>/task/<tid>/schedstat`), `detach_round_ns`
//! (the round within which every thread was stopped once).

mod inject;
mod refused;
mod sleds;

pub use refused::Refused;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use registry::SharedRegion;
use shutdown::Shutdown;

use crate::args::AttachArgs;
use crate::error::CliError;
use crate::failure::Start;
use crate::record::{self, Target};
use crate::symbols;

/// `tracer attach <pid>`.
pub fn attach(args: AttachArgs) -> Result<ExitCode, CliError> {
    let opts = &args.record;
    let pid = args.pid;
    timer::duration_from_secs(opts.duration).map_err(|e| Start::Duration(e.into()))?;
    let library_calls = opts.library_calls != crate::args::LibraryCalls::None;
    check_target(pid, library_calls)?;
    record::ignore_file_size_signal();
    let output = record::open_output(opts)?;
    let agent = record::find_agent()?;

    let config = record::region_config(opts)?;
    let config = record::fit_region(config, address_space_headroom(pid))?;
    let region = SharedRegion::create(&config).map_err(|e| Start::CreateRegion(e.into()))?;
    let fd = region.fd().ok_or(Start::NoMemfd)?.as_raw_fd();
    let region_path = PathBuf::from(format!("/proc/{}/fd/{fd}", std::process::id()));
    let registry = region.leak().map_err(|e| Start::Region(e.into()))?;
    let pidfd = record::pidfd_open(pid as u32).map_err(|_| no_process(pid))?;

    let shutdown = Shutdown::new()?;
    let signals = shutdown
        .install_signals()
        .map_err(|e| Start::Signals(e.into()))?;

    // The tracer's threads get a larger CPU share (best effort), so each target thread it stops
    // is released as soon as its stop is seen, however busy the target keeps the CPUs.
    record::raise_priority();
    let injected = inject::inject(pid, &agent, &region_path, library_calls)
        .map_err(|e| Refused::of_injection(pid, e))?;
    // On a busy target most of the hold can be the thread waiting for a CPU, as it would anyway.
    let waiting = injected
        .held_scheduling
        .map(|s| {
            format!(
                " ({:.2} ms of it waiting for a CPU)",
                s.runnable.as_secs_f64() * 1e3
            )
        })
        .unwrap_or_default();
    eprintln!(
        "tracer: attached to pid {pid}: {} thread(s), {} hook(s) redirected; the loading thread \
         was held {:.2} ms{waiting}, each thread stopped within a {:.2} ms detach round",
        injected.threads,
        injected.hooks,
        injected.injecting_thread_stopped.as_secs_f64() * 1e3,
        injected.detach_round.as_secs_f64() * 1e3,
    );
    if let Some(path) = std::env::var_os(ATTACH_REPORT_ENV) {
        write_report(Path::new(&path), pid, &injected);
    }
    let manifest = initial_manifest(pid, registry);
    let target = Target {
        child: None,
        pid: pid as u32,
        pidfd,
    };
    let region_len = registry.layout_size();
    let names = crate::names::Names::new(&opts.trigger, &registry, false);
    let recorded = record::record(
        opts, &output, target, registry, shutdown, signals, manifest, names,
    );
    release_region(fd, region_len);
    let (recorder, _) = recorded?;
    if recorder.attempted == 0 && recorder.persisted == 0 {
        eprintln!(
            "tracer: recorded no events: pid {pid} called no instrumented function and made no \
             recorded library call while attached"
        );
    }
    match recorder.error {
        Some(e) => Err(CliError::Refused(crate::error::Refusal::new(e, 1))),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// The environment variable naming the file the injection's figures are written to.
const ATTACH_REPORT_ENV: &str = "TRACER_ATTACH_REPORT";

/// Writes the injection's figures to `path` as one JSON object; a failure is one line on stderr
/// (the recording goes on).
fn write_report(path: &Path, pid: i32, injected: &inject::Injected) {
    let mut report = serde_json::json!({
        "pid": pid,
        "threads": injected.threads,
        "hooks": injected.hooks,
        "held_ns": injected.injecting_thread_stopped.as_nanos() as u64,
        "detach_round_ns": injected.detach_round.as_nanos() as u64,
    });
    if let Some(s) = injected.held_scheduling {
        report["held_running_ns"] = (s.running.as_nanos() as u64).into();
        report["held_runnable_ns"] = (s.runnable.as_nanos() as u64).into();
    }
    if let Err(e) = std::fs::write(path, format!("{report}\n")) {
        eprintln!(
            "tracer: cannot write the attach report to {} ({ATTACH_REPORT_ENV}): {e}; give a \
             writable file",
            path.display()
        );
    }
}

/// Frees the region's memory once the session is written. The agent unmaps its own mapping once no
/// thread of the target is inside it (see `docs/attach-detach.md`); until then it reads as zeros:
/// acceptance is off, so a thread of the target that still calls into this attachment's lanes
/// stops at the acceptance test, and nothing stays resident in the target for this attachment.
fn release_region(fd: i32, len: usize) {
    // SAFETY: fallocate on our own memfd; a failure leaves the memory in place (the target keeps
    // it until it exits), which is harmless.
    unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            len as libc::off_t,
        )
    };
}

/// The part of the target's address-space limit (`ulimit -v`, `RLIMIT_AS`) the region may take:
/// half of what the target has not mapped yet, so the target keeps room to grow. `None` when the
/// target has no such limit. A region stays mapped in the target while it records (and until no
/// thread is inside the agent, see `docs/attach-detach.md`), so a limited target must not be given
/// one larger than this.
fn address_space_headroom(pid: i32) -> Option<(u64, String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?
        .split_whitespace()
        .nth(3)?
        .parse::<u64>()
        .ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let used_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let headroom = soft.saturating_sub(used_kib << 10) / 2;
    Some((
        headroom,
        format!("pid {pid}'s address-space limit (ulimit -v), half of its free part,"),
        format!("prlimit --pid {pid} --as=<bytes>"),
    ))
}

fn no_process(pid: i32) -> CliError {
    Refused::NoProcess { pid }.into()
}

/// The refusals that can be decided before touching the process. With `library_calls`, a program
/// not built for call tracing is taken (its library calls are recorded, said in one line).
fn check_target(pid: i32, library_calls: bool) -> Result<(), CliError> {
    if pid <= 0 {
        return Err(no_process(pid));
    }
    if pid as u32 == std::process::id() {
        return Err(Refused::Itself.into());
    }
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| no_process(pid))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    if field("State:").first().map(String::as_str) == Some("Z") {
        return Err(Refused::Zombie { pid }.into());
    }
    if field("State:").first().map(String::as_str) == Some("T") {
        return Err(Refused::Stopped { pid }.into());
    }
    if let Some(tracer) = field("TracerPid:")
        .first()
        .and_then(|v| v.parse::<u32>().ok())
    {
        if tracer != 0 {
            let name = std::fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
            let name = name.trim().to_owned();
            return Err(Refused::Traced { pid, tracer, name }.into());
        }
    }
    // Started by `tracer spawn`: its calls go to the preloaded agent, recording for that tracer.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let spawned = environ
        .split(|&b| b == 0)
        .any(|v| v.starts_with(format!("{}=", registry::ENV_REGION_FD).as_bytes()));
    if spawned {
        let how = "it was started by `tracer spawn`";
        return Err(Refused::Recorded { pid, how }.into());
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let uids: Vec<u32> = field("Uid:")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    if me != 0 && !uids.is_empty() && uids.iter().any(|&u| u != me) {
        let owner = uids[0];
        return Err(Refused::OtherUser { pid, owner, me }.into());
    }
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let info =
        symbols::inspect_executable(&exe).map_err(|cause| Refused::Unreadable { pid, cause })?;
    if let Some(reason) = info.unsupported() {
        return Err(Refused::Unsupported { pid, reason }.into());
    }
    if let symbols::ExeKind::Elf {
        interpreter: None, ..
    } = info.kind
    {
        return Err(Refused::Static { pid }.into());
    }
    if !info.traceable() {
        // Its libraries may be instrumented even if the executable is not.
        let instrumented = symbols::capture(pid as u32).is_ok_and(|c| c.instrumented());
        if !instrumented && library_calls {
            let exe_name = std::fs::read_link(&exe).unwrap_or(exe);
            eprintln!(
                "tracer: pid {pid} ({}) was not built for call tracing, so only its library \
                 calls are recorded (through its GOT); rebuild it with {} to record its own \
                 functions too",
                crate::read::clean(&exe_name.display().to_string()),
                symbols::BUILD_MODES
            );
        } else if !instrumented {
            let exe = std::fs::read_link(&exe).unwrap_or(exe);
            return Err(Refused::NoHooks { pid, exe }.into());
        }
    }
    Ok(())
}

fn initial_manifest(pid: i32, registry: registry::Registry<'static>) -> atf::Manifest {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    record::manifest_for(pid as u32, &exe, argv, registry)
}
