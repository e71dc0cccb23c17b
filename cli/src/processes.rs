//! Following the target's processes while recording: fork children and the programs they exec
//! are traced by their inherited agent (unless `--no-follow`), and the drain gives each process
//! a `pid_<pid>` directory of its own (`drain::Drain::follow_processes`). This module does the
//! tracer's part: it hands back the slots of processes that ended (their threads never run the
//! agent's teardown), names each process from the images it ran, and makes room for one open
//! file per followed process.

use registry::{Registry, SlotState};

use crate::symbols::Images;

/// Raises the soft limit on open files to the hard limit: a followed process's main-thread file
/// stays open while the process lives (an `exec` continues it), so a program with many children
/// alive at once needs many. Best effort: the limit stays as it was if it cannot be raised. Call
/// it once the target has started: the limit is inherited, and the target's must stay its own.
pub(crate) fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-parameter.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: a valid rlimit; raising the soft limit up to the hard one needs no privilege.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}

/// How often the main loop hands back slots while processes other than the target hold some (a
/// program forking hundreds of short children a second would otherwise fill the region).
pub(crate) const FOLLOW_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// Marks the active slots of every ended process other than `root` exited, so the drain
/// finishes their files and recycles the slots. A process that ended runs no code, so none of its
/// threads can be inside a write section any more ([`Registry::retire_pid`] closes one it died
/// in). `liveness` watches each pid from the first time a slot of it was seen, so a reused pid is
/// never taken for the ended process. Returns whether processes other than `root` hold slots.
pub(crate) fn reclaim_ended(
    reg: &Registry<'_>,
    liveness: &mut liveness::Liveness,
    root: Option<u32>,
) -> bool {
    let mut others = false;
    let mut ended: Vec<u32> = Vec::new();
    for slot in reg.slots() {
        if Some(slot.pid) == root {
            continue;
        }
        others = true;
        if slot.state != SlotState::Active || ended.contains(&slot.pid) {
            continue;
        }
        if liveness.process_ended(slot.pid) {
            ended.push(slot.pid);
        }
    }
    for pid in ended {
        reg.retire_pid(pid);
    }
    others
}

/// Fills every process's manifest with the modules and names of the images it ran, and names a
/// followed process's executable after its last image (the program it exec'd, if it did).
pub(crate) fn name_processes(images: &Images, drain: &mut drain::Drain<'_>) {
    for (n, view) in drain.processes_mut().enumerate() {
        images.fill_manifest(view.images, view.manifest);
        let last = view
            .images
            .iter()
            .rev()
            .find_map(|i| images.executables.get(i));
        if let (true, Some(exe)) = (n > 0, last) {
            view.manifest.executable = exe.clone();
        }
    }
}
