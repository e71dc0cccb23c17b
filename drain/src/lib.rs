//! The drain: the tracer-side consumer that moves every thread's events from the shared-memory
//! lanes (`registry` + `ring`) into trace files (`atf`: ATC by default, ATF v2 on request), losing nothing.
//!
//! It owns:
//! - [`Drain`]: one pass over every active or exited slot (slots are sparse, so it walks what the
//!   registry lists, not `0..thread_count`), writing each lane's committed bytes to its thread's
//!   `index.atc` (or `index.atf`, see [`atf::EventFormat`]) in whole-ring-sized batches (no per-event write),
//!   each record's timestamp converted from the session clock's raw reading (TSC ticks) to
//!   nanoseconds with the region's clock ([`registry::Clock::to_ns`]) as the writer takes it,
//!   detail records' headers likewise, returning rings to the free queue
//!   at once, persisting marked detail windows, and recycling the slots of exited threads once their
//!   lanes are empty. After the stop handshake, [`Drain::final_drain`] empties every lane (exited
//!   threads and, for a crashed target, the active detail windows included) and finishes every
//!   file; [`Drain::finish`] writes the final manifest with the accounting and fsyncs the session.
//! - [`DrainThread`]: the thread that runs passes, sleeping between them as long as the busiest
//!   lane's pace allows (so it preempts a busy target less often), adaptively when idle, and
//!   woken at once through an eventfd ([`Waker`]) when the shutdown manager wants the final drain
//!   to start.
//! - Two helper threads that keep the drain off the file system's slow paths: one makes each new
//!   thread's directory and event file (the thread's lanes are drained from the pass after it is
//!   made, see [`Drain::files_on_helper`]), one starts the writeback of what was written (see
//!   [`DIRTY_BUDGET`]).
//!
//! The contract it keeps is the accounting invariant, per thread and in total:
//! `attempted = persisted + dropped by reason`. Producers count attempts and drops in the region;
//! the drain counts what it wrote; [`Drain::finish`] puts both in the manifest, and any accepted
//! event that could not be written (an I/O error) is named as such, never silently missing.
//!
//! I/O errors (disk full, EIO, a directory that became unwritable) stop the drain cleanly: the error
//! carries the path and the cause, what was written stays readable, and the target is never blocked
//! for long (its producers wait a bounded time, then count drops). A file that fails is given up
//! and its thread's later events are consumed and counted `not_written`, so passes and the final
//! drain can go on and the manifest stays balanced. The drain writes through its layout's
//! [`atf::FileSystem`]: give it an [`atf::fault::FaultyFs`] with [`SessionLayout::with_fs`] to
//! inject faults.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use drain::{Drain, Outcome};
//! let region = registry::SharedRegion::create(&registry::RegionConfig::default())?;
//! let registry = region.leak()?;
//! let layout = atf::SessionLayout::create("/tmp/traces", std::process::id())?;
//! let mut drain = Drain::new(registry, layout, atf::Manifest::new(atf::ClockType::Boottime))?;
//! drain.pass()?; // repeatedly, or on a DrainThread
//! registry.stop_accepting(std::time::Duration::from_millis(50));
//! drain.final_drain(false)?;
//! let report = drain.finish(&Outcome::default())?;
//! assert!(report.accounting.index.balanced());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod create;
mod thread;
mod waker;
mod writeback;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atf::{
    Accounting, Counts, DetailWindow, Drops, Manifest, SessionLayout, TargetFate, ThreadEntry,
};
use registry::{Clock, ClockSource, Registry, SlotInfo, SlotState};
use ring::Backend;
use ring::{frames, PoolConsumer, StdBackend};

pub use thread::DrainThread;
pub use waker::Waker;

/// Bytes written to the page cache, over all files, before the drain starts their writeback.
const WRITEBACK_BATCH: u64 = 4 << 20;
/// The most bytes whose writeback was started and not seen finished, over all files. Past it the
/// writeback helper waits for the oldest writeback, and past twice it the drain waits for the
/// helper (the disk sets the pace, and producers wait for ring space, losing nothing): so the
/// final fsync has a bounded backlog to write, whatever the recording's length, and the session
/// never fills the page cache with dirty data (which would also slow everyone else's writes).
pub const DIRTY_BUDGET: u64 = 16 << 20;

/// Why the drain stopped.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// Writing the session failed (the message names the file and the cause).
    #[error("writing the trace failed")]
    Io(#[from] atf::Error),
    /// The shared region broke its protocol (the target corrupted it, or a bug).
    #[error("thread {tid}'s lane is unreadable, its events from here on are lost")]
    Lane {
        /// The thread.
        tid: u32,
        /// What was wrong.
        #[source]
        source: ring::RingError,
    },
    /// The registry refused an operation.
    #[error("the shared region is unusable")]
    Registry(#[from] registry::RegistryError),
}

/// Statistics for the shutdown summary and the live status line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainStats {
    /// Index events written, all threads.
    pub events: u64,
    /// Detail records written, all threads.
    pub detail_records: u64,
    /// Bytes of the trace files: the event files as encoded (ATC chunks, or ATF v2's 32 bytes an
    /// event, headers included) and the detail records written.
    pub bytes: u64,
    /// Event bytes taken from the rings (32 an event): the input the event files encode.
    pub ring_bytes: u64,
    /// Times a producer found every ring of its index lane full and had to wait for the drain
    /// (all threads): 0 when the drain kept up.
    pub ring_waits: u64,
    /// Submitted rings consumed and returned to producers.
    pub rings_returned: u64,
    /// Passes run.
    pub passes: u64,
    /// Time spent inside passes and the final drain.
    pub busy: Duration,
    /// Bytes of the event files whose writeback was started while recording (see
    /// [`DIRTY_BUDGET`]), on the writeback helper thread or, for a file system that gives it no
    /// handle, on the drain's.
    pub writeback_bytes: u64,
    /// Files fsynced by [`Drain::finish`] (trace files, manifest, directories).
    pub files_synced: u64,
    /// Threads seen.
    pub threads: u64,
}

/// Counters shared with other threads while a [`DrainThread`] runs (the live status line).
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Index events written so far.
    pub events: AtomicU64,
    /// Bytes written so far.
    pub bytes: AtomicU64,
    /// Threads seen so far.
    pub threads: AtomicU64,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Bytes moved from the lanes to the files.
    pub bytes: u64,
    /// The most bytes moved from one thread's index lane: what the fastest producer wrote since
    /// the previous pass (the drain thread sizes its sleep from it).
    pub busiest: u64,
    /// Index lanes the pass took events from.
    pub lanes: u32,
}

/// How the recording ended, for the final manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Why the trace stopped ("signal SIGINT", "duration", "target exited", ...).
    pub stop_reason: String,
    /// What became of the target.
    pub target_fate: TargetFate,
    /// Wall-clock end, Unix nanoseconds.
    pub wall_end_unix_ns: u64,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            stop_reason: "stopped".into(),
            target_fate: TargetFate::Unknown,
            wall_end_unix_ns: wall_now_ns(),
        }
    }
}

/// What [`Drain::finish`] wrote.
#[derive(Debug, Clone)]
pub struct Report {
    /// The manifest's path.
    pub manifest: PathBuf,
    /// Totals over all threads and orphan events.
    pub accounting: Accounting,
    /// Per thread (tid) accounting, every process's.
    pub threads: Vec<ThreadEntry>,
    /// Per process: its pid, manifest and accounting (the target first).
    pub processes: Vec<ProcessReport>,
    /// Drain statistics.
    pub stats: DrainStats,
}

/// One process of a finished session.
#[derive(Debug, Clone)]
pub struct ProcessReport {
    /// Its pid.
    pub pid: u32,
    /// Its manifest's path.
    pub manifest: PathBuf,
    /// Its accounting (the target's includes the events of threads that held no slot).
    pub accounting: Accounting,
}

/// Nanoseconds since the Unix epoch, now.
pub fn wall_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One thread's files and counts. Keyed by tid: a tid the kernel reuses within a session (only
/// after the first thread is gone) continues the same files, in time order.
struct ThreadFiles {
    tid: u32,
    index: Option<atf::IndexWriter>,
    detail: Option<atf::DetailWriter>,
    /// Accounting from the registry for owners already recycled, plus the live owner's at finish.
    counts: Counts,
    detail_counts: Counts,
    /// Index events written (after a write error: the whole events the file holds).
    written: u64,
    /// Bytes of the index file whose writeback was started (see `flush_all`).
    submitted: u64,
    /// Bytes of the index file written, as of its last flush or its finish.
    index_bytes: u64,
    /// Detail records written (after a write error: the whole records the file holds).
    detail_written: u64,
    /// Records of marked windows taken from the lanes, written or not: those not written (an
    /// I/O error) are `not_written`, never unmarked windows.
    detail_taken: u64,
    /// The detail file failed (or could not be created): later marked records are consumed
    /// without being written.
    detail_failed: bool,
    windows: Vec<DetailWindow>,
    /// First and last timestamps of the finished index file, if it holds events.
    time_range: Option<(u64, u64)>,
}

/// The live owner of a slot, with the consumer side of its lanes.
struct Owner<'r, B: Backend> {
    info: SlotInfo,
    index: PoolConsumer<'r, B>,
    detail: PoolConsumer<'r, B>,
    /// Index events consumed from this owner's lane (written or not): an event is published
    /// before the producer counts it accepted, so this can exceed the slot's `accepted` by the
    /// event of a thread killed between the two (see `reconcile_after_stop`).
    taken: u64,
}

/// The drain of one recording: see the crate documentation.
///
/// Generic over the region's atomics backend `B` (production: [`StdBackend`]; the `sim` crate runs
/// the same code on a model checker's atomics).
pub struct Drain<'r, B: Backend = StdBackend> {
    registry: Registry<'r, B>,
    /// Every process's directory and manifest, by [`ProcKey`]; [`ROOT`] always.
    procs: BTreeMap<ProcKey, Process>,
    /// The target's pid (the root process's): slots of other pids are followed processes.
    root_pid: u32,
    /// Whether other processes get directories of their own (see [`Drain::follow_processes`]).
    follow: bool,
    owners: BTreeMap<u32, Owner<'r, B>>,
    files: BTreeMap<(ProcKey, u32), ThreadFiles>,
    stats: DrainStats,
    /// Detail record bytes written, all threads.
    detail_bytes: u64,
    live: Arc<LiveStats>,
    /// The writeback helper, started at the first writeback (see `start_writeback`).
    writeback: Option<writeback::Writeback>,
    /// Writebacks started on this thread and not yet waited for, oldest first (files whose
    /// file system gives no handle for the helper): `((process, tid), offset, len)`.
    in_flight: std::collections::VecDeque<((ProcKey, u32), u64, u64)>,
    /// Their bytes.
    in_flight_bytes: u64,
    /// When the target's manifest was last rewritten during the passes.
    manifest_written: Instant,
    /// Set by [`Drain::final_drain`] and [`Drain::finish`]: acceptance has stopped, so counts read
    /// from now on are post-stop snapshots (see `reconcile_after_stop`).
    stopped: bool,
    /// The helper that makes new threads' event files (see `create`), started at the first new
    /// thread; `None` after it could not be started (files are then made on this thread).
    creator: Option<create::Creator>,
    /// Whether new threads' files are made on the helper (see [`Drain::files_on_helper`]); set
    /// when starting it failed, so it is not tried again.
    creator_off: bool,
    /// Files asked of the helper and not yet made: their slots' lanes wait (see `drain_slot`).
    pending: std::collections::BTreeSet<create::FileKey>,
    /// The first file the helper failed to make, not yet returned by a pass.
    create_error: Option<DrainError>,
    /// The most bytes the current pass moved from one index lane (see [`Pass::busiest`]).
    busiest: u64,
    /// Index lanes the current pass took events from (see [`Pass::lanes`]).
    lanes: u32,
}

/// How often the target's manifest is rewritten during the passes when following processes.
const MANIFEST_INTERVAL: Duration = Duration::from_secs(1);

/// Which process directory a slot's events go to: [`ROOT`], or a followed process's pid.
type ProcKey = u32;
/// The target's own directory (pid 0 is never a user process).
const ROOT: ProcKey = 0;

/// One process's directory and manifest.
struct Process {
    layout: SessionLayout,
    manifest: Manifest,
    /// The manifest changed since it was last written.
    dirty: bool,
    /// The process images its threads ran (see `registry::Registry::new_image`).
    images: std::collections::BTreeSet<u32>,
}

/// A process the drain writes: its pid, the images it ran, its manifest (see
/// [`Drain::processes_mut`]).
pub struct ProcessView<'a> {
    /// Its pid.
    pub pid: u32,
    /// The images its threads ran.
    pub images: &'a std::collections::BTreeSet<u32>,
    /// Its manifest as it will be written.
    pub manifest: &'a mut Manifest,
}

impl<'r, B: Backend> Drain<'r, B> {
    /// A drain writing into `layout`, with `manifest` carrying what the caller knows of the target
    /// (pid, executable, argv, clock, symbols). Writes the initial manifest, so the session is
    /// readable from now on. Every file is written through the layout's file system
    /// ([`SessionLayout::with_fs`]; the operating system's by default):
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use atf::fault::{FaultPlan, FaultyFs};
    /// let region = registry::SharedRegion::create(&registry::RegionConfig::default())?;
    /// let plan = FaultPlan::new().only_paths_containing("index.at").full_after(1 << 20, libc::ENOSPC);
    /// let layout = atf::SessionLayout::create("/tmp/traces", 1)?.with_fs(Arc::new(FaultyFs::new(plan)));
    /// let drain = drain::Drain::new(region.registry()?, layout, atf::Manifest::new(atf::ClockType::Boottime))?;
    /// # Ok(()) }
    /// ```
    pub fn new(
        registry: Registry<'r, B>,
        layout: SessionLayout,
        mut manifest: Manifest,
    ) -> Result<Self, DrainError> {
        manifest.finished = false;
        layout.write_manifest(&mut manifest)?;
        let root_pid = manifest.target_pid;
        let root = Process {
            layout,
            manifest,
            dirty: false,
            images: Default::default(),
        };
        Ok(Drain {
            registry,
            procs: BTreeMap::from([(ROOT, root)]),
            root_pid,
            follow: false,
            owners: BTreeMap::new(),
            files: BTreeMap::new(),
            stats: DrainStats::default(),
            detail_bytes: 0,
            live: Arc::new(LiveStats::default()),
            writeback: None,
            in_flight: Default::default(),
            in_flight_bytes: 0,
            manifest_written: Instant::now(),
            stopped: false,
            creator: None,
            // A model checker's schedule must not run file-system calls (whose faults it may
            // draw) on a thread it does not know.
            creator_off: core::any::TypeId::of::<B>() != core::any::TypeId::of::<StdBackend>(),
            pending: Default::default(),
            create_error: None,
            busiest: 0,
            lanes: 0,
        })
    }

    /// Gives every process other than the target (the manifest's `target_pid`), a fork child
    /// and what it execs, a `pid_<pid>` directory of its own in the session, with its manifest
    /// and accounting; and keeps a process's main-thread files open while the process lives, so
    /// the image an `exec` starts continues them (same pid, same thread id). Off: every slot's
    /// events go to the target's directory.
    pub fn follow_processes(mut self, on: bool) -> Self {
        self.follow = on;
        self
    }

    /// Whether a new thread's directory and event file are made on a helper thread (`true`, the
    /// default on [`StdBackend`]), so the drain goes on with the other lanes while the file
    /// system allocates them and drains the new thread's lanes from the pass after; or on the
    /// drain's own thread when it first meets the thread (`false`, and on a model checker's
    /// backend). An exited thread's file is always made at once, so its slot is recycled in the
    /// same pass.
    pub fn files_on_helper(mut self, on: bool) -> Self {
        self.creator_off = !on;
        self
    }

    /// Every process written so far, the target first: its pid, images and manifest (marked to
    /// be written again, e.g. after adding names).
    pub fn processes_mut(&mut self) -> impl Iterator<Item = ProcessView<'_>> {
        let root_pid = self.root_pid;
        self.procs.iter_mut().map(move |(key, p)| {
            p.dirty = true;
            ProcessView {
                pid: if *key == ROOT { root_pid } else { *key },
                images: &p.images,
                manifest: &mut p.manifest,
            }
        })
    }

    fn key_of(&self, pid: u32) -> ProcKey {
        if self.follow && pid != self.root_pid && pid != ROOT {
            pid
        } else {
            ROOT
        }
    }

    fn root(&self) -> &Process {
        &self.procs[&ROOT]
    }

    /// The registry this drain reads.
    pub fn registry(&self) -> Registry<'r, B> {
        self.registry
    }

    /// The session's layout.
    pub fn layout(&self) -> &SessionLayout {
        &self.root().layout
    }

    /// The manifest as it will be written (e.g. to add modules and symbols).
    pub fn manifest_mut(&mut self) -> &mut Manifest {
        let root = self.procs.get_mut(&ROOT).expect("the root process");
        root.dirty = true;
        &mut root.manifest
    }

    /// Statistics so far.
    pub fn stats(&self) -> &DrainStats {
        &self.stats
    }

    /// Counters other threads may read while this drain runs on a [`DrainThread`].
    pub fn live(&self) -> Arc<LiveStats> {
        self.live.clone()
    }

    /// One pass: every active or exited slot's index lane (submitted rings and the active ring's
    /// committed prefix), its marked detail windows; exited slots are finished and recycled. Flushes
    /// what it wrote, so a killed tracer leaves it on disk.
    pub fn pass(&mut self) -> Result<Pass, DrainError> {
        self.pass_until(&std::sync::atomic::AtomicBool::new(false))
    }

    /// [`Drain::pass`], ending early (between two slots) once `stop` is set: a pass can move tens
    /// of megabytes, and whoever stops the drain thread should not wait for all of it.
    pub fn pass_until(&mut self, stop: &std::sync::atomic::AtomicBool) -> Result<Pass, DrainError> {
        // Relaxed: a hint to return early; the caller synchronises through the join.
        self.pass_unless(&|| stop.load(Relaxed))
    }

    /// [`Drain::pass`], ending early (between two slots) once `stop()` says so: the shutdown's
    /// flush phase gives up its pass on a second signal this way.
    pub fn pass_unless(&mut self, stop: &dyn Fn() -> bool) -> Result<Pass, DrainError> {
        self.pass_inner(stop, true)
    }

    /// The shutdown's flush pass: [`Drain::pass_unless`] without rewriting the manifest, which
    /// [`Drain::finish_counted`] writes moments later in its final form (each rewrite is two
    /// fsyncs and a rename on the stop's path), and without waiting for writeback (the final
    /// fsync writes everything). Until then readers find new threads by their directories, as
    /// between two passes. A pass whose `stop` says so by its end skips both too.
    pub fn stop_pass_unless(&mut self, stop: &dyn Fn() -> bool) -> Result<Pass, DrainError> {
        self.pass_inner(stop, false)
    }

    fn pass_inner(&mut self, stop: &dyn Fn() -> bool, manifests: bool) -> Result<Pass, DrainError> {
        let started = Instant::now();
        self.registry.beat(registry::clock::boottime_ns());
        self.collect_files(false);
        let mut moved = 0;
        self.busiest = 0;
        self.lanes = 0;
        for info in self.slots_in_registration_order() {
            if stop() {
                break;
            }
            // Producers waiting for ring space keep waiting while this beat is fresh.
            self.registry.beat(registry::clock::boottime_ns());
            let drained = self.drain_slot(info, false);
            if drained.is_err() {
                self.update_live_stats();
            }
            moved += drained?;
        }
        // Once a pass, not once a slot: it sums over every thread's files.
        self.update_live_stats();
        // A pass that ends because the tracer is stopping (or the stop's own flush pass) neither
        // waits for the disk's writeback nor rewrites the manifest: the stop waits for this
        // thread, and the final sync and manifest come moments later (measured with 64 threads
        // on a loaded disk: the drain thread's last pass held the stop 19-68 ms in 4 runs of 20).
        let stopping = !manifests || stop();
        self.flush_all(stopping)?;
        if !stopping {
            self.write_manifests()?;
        }
        self.stats.passes += 1;
        self.stats.busy += started.elapsed();
        if let Some(e) = self.create_error.take() {
            return Err(e);
        }
        Ok(Pass {
            bytes: moved,
            busiest: self.busiest,
            lanes: self.lanes,
        })
    }

    /// The final drain, after the stop handshake: passes until every lane is empty, then the active
    /// detail windows that are marked — or all of them when `crashed` (the target died by a
    /// signal: its last window is the evidence) — and finishes every thread's files.
    pub fn final_drain(&mut self, crashed: bool) -> Result<(), DrainError> {
        let started = Instant::now();
        self.stopped = true;
        // A file that fails is given up (see `fail_index`) and the final drain goes on, so every
        // lane is emptied and every other file finished; the first error is returned at the end.
        let mut first = None;
        self.collect_files(true);
        if let Some(e) = self.create_error.take() {
            keep_first(&mut first, e);
        }
        for info in self.slots_in_registration_order() {
            // Twice at most: after its file failed, a slot's events are consumed, not written.
            for _ in 0..2 {
                match self.drain_slot(info, true) {
                    Ok(_) => break,
                    Err(e) => keep_first(&mut first, e),
                }
            }
            if let Err(e) = self.persist_active_detail(info.index, crashed) {
                keep_first(&mut first, e);
            }
        }
        self.retire_all_and_finish(&mut first);
        self.update_live_stats();
        self.stats.busy += started.elapsed();
        first.map_or(Ok(()), Err)
    }

    /// Retires every remaining owner (folding in its counts) and finishes every thread's files,
    /// going on past failures; the first error is kept in `first`.
    fn retire_all_and_finish(&mut self, first: &mut Option<DrainError>) {
        for key in self.owners.keys().copied().collect::<Vec<_>>() {
            if let Err(e) = self.retire(key) {
                keep_first(first, e);
            }
        }
        for files in self.files.values_mut() {
            if let Err(e) = finish_files(files) {
                keep_first(first, e);
            }
        }
    }

    /// Writes the final manifest (threads, time range, accounting per thread and in total, stop
    /// reason, target fate, `finished: true`) and fsyncs the trace files' directories and the
    /// manifest. Call after [`Drain::final_drain`] and the stop handshake; called without the
    /// final drain (a forced shutdown), it writes what it has: accepted events still in the lanes
    /// are counted as `not_written`, and the files stay readable. A trace file that fails to
    /// finish is left as written (readable up to its last whole event, the rest `not_written`):
    /// the manifest is written all the same, then the file's error is returned.
    pub fn finish(self, outcome: &Outcome) -> Result<Report, DrainError> {
        let (report, error) = self.finish_counted(outcome);
        error.map_or(Ok(report), Err)
    }

    /// [`Drain::finish`], returning the report whatever failed: the accounting comes from the
    /// region's counters and what the drain wrote, so it is true even when files, the manifest
    /// or the sync failed (events that did not reach a file are `not_written`). The first error,
    /// if any, comes with it.
    pub fn finish_counted(self, outcome: &Outcome) -> (Report, Option<DrainError>) {
        self.finish_counted_then(outcome, &mut || None)
    }

    /// [`Drain::finish_counted`], asking `late_fate` for the target's fate once the trace files
    /// and directories are durable, just before the target's manifest is written: a tracer that
    /// signalled its target before finishing learns how it ended while the files were synced,
    /// and writes the manifest once, with the fate, instead of again after. `None` keeps
    /// `outcome.target_fate`.
    pub fn finish_counted_then(
        mut self,
        outcome: &Outcome,
        late_fate: &mut dyn FnMut() -> Option<TargetFate>,
    ) -> (Report, Option<DrainError>) {
        let started = Instant::now();
        self.stopped = true;
        let mut first = None;
        // Every file asked for: an owner's counts go to its thread's files when it is retired.
        self.collect_files(true);
        if let Some(e) = self.create_error.take() {
            keep_first(&mut first, e);
        }
        self.retire_all_and_finish(&mut first);
        let mut orphans = self.registry.orphan_counts();
        // Post-stop snapshot: late orphan attempts whose drop is not counted yet are shutdown drops.
        let counted = orphans.registry_full
            + orphans.agent_setup
            + orphans.thread_teardown
            + orphans.shutdown;
        if orphans.attempted > counted {
            orphans.shutdown += orphans.attempted - counted;
        } else {
            orphans.attempted = counted;
        }
        let mut accounting = Accounting::default();
        let mut threads = Vec::new();
        let mut processes = Vec::new();
        let mut write_error = None;
        let root_pid = self.root_pid;
        for (&key, process) in self.procs.iter_mut() {
            let mut own = Accounting::default();
            let mut entries = Vec::new();
            for files in self.files.range((key, 0)..=(key, u32::MAX)).map(|(_, f)| f) {
                let entry = thread_entry(files);
                own.index.add(&entry.index);
                own.detail.add(&entry.detail);
                entries.push(entry);
            }
            if key == ROOT {
                // Events of threads that never held a slot: all dropped, each with its reason.
                own.index.add(&Counts {
                    attempted: orphans.attempted,
                    persisted: 0,
                    dropped: Drops {
                        registry_full: orphans.registry_full,
                        agent_setup: orphans.agent_setup,
                        thread_teardown: orphans.thread_teardown,
                        shutdown: orphans.shutdown,
                        ..Drops::default()
                    },
                });
            }
            accounting.index.add(&own.index);
            accounting.detail.add(&own.detail);
            threads.extend(entries.iter().cloned());
            let m = &mut process.manifest;
            m.threads = entries;
            m.accounting = own.clone();
            m.stop_reason = Some(outcome.stop_reason.clone());
            // The target's fate is known; a followed process is not the tracer's child.
            m.target_fate = Some(if key == ROOT {
                outcome.target_fate.clone()
            } else {
                TargetFate::Unknown
            });
            m.wall_end_unix_ns = Some(outcome.wall_end_unix_ns);
            // The process's first and last event, over every thread's finished file.
            let ranges = self
                .files
                .range((key, 0)..=(key, u32::MAX))
                .filter_map(|(_, f)| f.time_range);
            let (start, end) =
                ranges.fold((u64::MAX, 0), |(s, e), (fs, fe)| (s.min(fs), e.max(fe)));
            if start <= end {
                (m.time_start_ns, m.time_end_ns) = (start, end);
            }
            m.detail_windows = self
                .files
                .range((key, 0)..=(key, u32::MAX))
                .flat_map(|(_, f)| f.windows.clone())
                .collect();
            m.finished = true;
            // Every manifest is written even if one fails; the first error is returned. The
            // followed processes' are made durable by the session's sync below; the target's is
            // written after it (synced as it is replaced), when its fate is most likely known.
            if key != ROOT {
                match process
                    .layout
                    .write_manifest_unsynced(&mut process.manifest)
                {
                    Ok(()) => process.dirty = false,
                    Err(e) => {
                        write_error.get_or_insert(e);
                    }
                }
            }
            processes.push(ProcessReport {
                pid: if key == ROOT { root_pid } else { key },
                manifest: process.layout.manifest_path(),
                accounting: own,
            });
        }
        // The session's own trace files (finished unsynced), the followed processes' manifests
        // (written unsynced) and every thread, process and session directory, fsynced in
        // parallel through the session's directory handles (the target's manifest is fsynced
        // as it is written, below): never other programs' dirty data, as a syncfs would.
        // Writeback started during the recording leaves them little to write.
        if write_error.is_none() {
            let others: Vec<&SessionLayout> = self
                .procs
                .iter()
                .filter(|(&key, _)| key != ROOT)
                .map(|(_, process)| &process.layout)
                .collect();
            match self.root().layout.sync_session(&others) {
                Ok(synced) => self.stats.files_synced += synced as u64,
                Err(e) => first = Some(e.into()),
            }
        }
        if let Some(fate) = late_fate() {
            if let Some(root) = self.procs.get_mut(&ROOT) {
                root.manifest.target_fate = Some(fate);
            }
        }
        if let Some(root) = self.procs.get_mut(&ROOT) {
            match root.layout.write_manifest(&mut root.manifest) {
                Ok(()) => {
                    root.dirty = false;
                    self.stats.files_synced += 1;
                }
                Err(e) => {
                    write_error.get_or_insert(e);
                }
            }
        }
        // A failed manifest write or sync is the error returned, over a file's: it says a
        // manifest on disk is the previous one, or that durability is unknown. Either way the
        // report carries the true accounting.
        if let Some(e) = write_error {
            first = Some(e.into());
        }
        self.update_live_stats();
        self.stats.busy += started.elapsed();
        let report = Report {
            manifest: self.root().layout.manifest_path(),
            accounting,
            threads,
            processes,
            stats: self.stats,
        };
        (report, first)
    }

    /// Writes the manifests that changed (threads as they are so far): the target's. A followed
    /// process's manifest is written when its directory is made and at the end (each write is
    /// an fsync; a program forking thousands of short children must not cost thousands per
    /// pass); until then readers find its threads by their directories.
    fn write_manifests(&mut self) -> Result<(), DrainError> {
        // Following processes, the target's manifest is rewritten at most once a second: each
        // rewrite is an fsync, and with children coming and going every pass would make one.
        if self.follow && self.manifest_written.elapsed() < MANIFEST_INTERVAL {
            return Ok(());
        }
        self.manifest_written = Instant::now();
        for (&key, process) in self
            .procs
            .iter_mut()
            .filter(|(&key, p)| p.dirty && key == ROOT)
        {
            process.manifest.threads = self
                .files
                .range((key, 0)..=(key, u32::MAX))
                .map(|(_, f)| thread_entry(f))
                .collect();
            process.layout.write_manifest(&mut process.manifest)?;
            process.dirty = false;
        }
        Ok(())
    }

    /// Flushes every file's buffered bytes; starts their writeback unless `stopping` (the final
    /// fsync writes them, and the writeback's throttle would make the stop wait for the disk).
    fn flush_all(&mut self, stopping: bool) -> Result<(), DrainError> {
        let mut unsubmitted = 0;
        for files in self.files.values_mut() {
            if let Some(w) = files.index.as_mut() {
                if let Err(e) = w.flush() {
                    fail_index(files);
                    return Err(e.into());
                }
                files.index_bytes = w.bytes_written();
                unsubmitted += w.bytes_written().saturating_sub(files.submitted);
            }
            if let Some(w) = files.detail.as_mut() {
                if let Err(e) = w.flush() {
                    fail_detail(files);
                    return Err(e.into());
                }
            }
        }
        if unsubmitted >= WRITEBACK_BATCH && !stopping {
            self.start_writeback();
        }
        Ok(())
    }

    /// Starts the writeback of every index file's bytes written since the last call, on the
    /// writeback helper thread (see `writeback`), so the drain does not stall on the disk; waits
    /// only when the disk is far behind. A file whose file system gives no handle for the helper
    /// is written back here, waiting for the oldest writebacks until at most [`DIRTY_BUDGET`]
    /// bytes are in flight. Writeback is a hint: its errors show at the final fsync, which
    /// reports them.
    fn start_writeback(&mut self) {
        if self.writeback.is_none() {
            // No helper (no thread to be had): everything is written back here.
            self.writeback = writeback::Writeback::start().ok();
        }
        for (&key, files) in self.files.iter_mut() {
            let Some(w) = files.index.as_mut() else {
                continue;
            };
            let end = w.bytes_written();
            if end <= files.submitted {
                continue;
            }
            let range = (key, files.submitted, end - files.submitted);
            let mut handed = false;
            if let (Some(helper), Ok(Some(handle))) = (&self.writeback, w.writeback_handle()) {
                handed = helper.submit(handle, range.1, range.2).is_ok();
            }
            if handed || w.writeback(range.1, range.2, false).is_ok() {
                self.stats.writeback_bytes += range.2;
                if !handed {
                    self.in_flight_bytes += range.2;
                    self.in_flight.push_back(range);
                }
                files.submitted = end;
            }
        }
        if let Some(helper) = &self.writeback {
            helper.throttle();
        }
        while self.in_flight_bytes > DIRTY_BUDGET {
            let Some((key, offset, len)) = self.in_flight.pop_front() else {
                break;
            };
            self.in_flight_bytes -= len;
            // A file already finished (its thread exited) is left to the final fsync.
            if let Some(w) = self.files.get_mut(&key).and_then(|f| f.index.as_mut()) {
                let _ = w.writeback(offset, len, true);
            }
        }
    }

    /// Drains one slot's lanes; retires (finishes and recycles) it when its thread has exited.
    fn drain_slot(&mut self, info: SlotInfo, final_pass: bool) -> Result<u64, DrainError> {
        // A different serial means the slot was recycled and reclaimed: retire the old owner.
        if self
            .owners
            .get(&info.index)
            .is_some_and(|o| o.info.serial != info.serial)
        {
            self.retire(info.index)?;
        }
        let mut moved = 0;
        if !self.owners.contains_key(&info.index) && self.adopt(info)? {
            moved += self.drain_older_owners(info, final_pass)?;
        }
        let key = self.key_of(info.pid);
        if info.state == SlotState::Exited && self.pending.contains(&(key, info.tid)) {
            // The thread is gone: wait for its file, so its slot is recycled in this pass.
            self.collect_files(true);
        }
        let (Some(owner), Some(files), Some(process)) = (
            self.owners.get_mut(&info.index),
            self.files.get_mut(&(key, info.tid)),
            self.procs.get(&key),
        ) else {
            return Ok(moved);
        };
        let tid = info.tid;
        // Index lane: everything committed, active prefix included. Without a writer (the tid was
        // reused after its files were finished) the events are consumed, not written, and the
        // manifest counts them as `not_written`.
        let clock = self.registry.clock();
        let r = match files.index.as_mut() {
            Some(writer) => owner
                .index
                .drain(true, |chunk| append_events(writer, chunk.bytes, &clock)),
            None => owner.index.drain(true, |_| Ok::<(), atf::Error>(())),
        };
        let r = match r {
            Ok(r) => r,
            Err(ring::DrainError::Sink(e)) => {
                // The chunk stays in the lane; the next drain consumes it without a writer.
                fail_index(files);
                return Err(e.into());
            }
            Err(e) => return Err(lane_error(tid, e)),
        };
        owner.taken += r.bytes / atf::EVENT_SIZE as u64;
        if let Some(writer) = files.index.as_ref() {
            files.written = writer.event_count();
            self.stats.ring_bytes += r.bytes;
        }
        moved += r.bytes;
        self.busiest = self.busiest.max(r.bytes);
        self.lanes += u32::from(r.bytes > 0);
        self.stats.rings_returned += r.rings_returned;
        // Detail lane: submitted rings only (the active one is the flight recorder's window);
        // marked windows are persisted, unmarked ones discarded (counted in `thread_entry`).
        let mut persisted = Persisted::default();
        let r = owner
            .detail
            .drain(false, |chunk| {
                persist_detail(&process.layout, tid, files, chunk, &clock, &mut persisted);
                Ok::<(), atf::Error>(())
            })
            .map_err(|e| lane_error(tid, e))?;
        moved += r.bytes;
        self.detail_bytes += persisted.bytes;
        self.stats.rings_returned += r.rings_returned;
        if let Some(e) = persisted.error {
            return Err(e.into());
        }
        // Exited: the owner published EXITED (Release) after its last event, and `slots()` read it
        // with Acquire, so the lanes drained above held everything. Retire the slot.
        if info.state == SlotState::Exited && !final_pass {
            self.persist_active_detail(info.index, false)?;
            self.retire(info.index)?;
        }
        Ok(moved)
    }

    fn update_live_stats(&mut self) {
        self.stats.events = self.files.values().map(|f| f.written).sum();
        self.stats.detail_records = self.files.values().map(|f| f.detail_written).sum();
        self.stats.threads = self.files.len() as u64;
        let index_bytes: u64 = self.files.values().map(|f| f.index_bytes).sum();
        self.stats.bytes = index_bytes + self.detail_bytes;
        self.live.events.store(self.stats.events, Relaxed);
        self.live.bytes.store(self.stats.bytes, Relaxed);
        self.live.threads.store(self.stats.threads, Relaxed);
    }

    /// Takes a newly seen slot: consumers of its lanes, its thread's files. Returns whether it
    /// continues a thread whose files were made or asked for already.
    fn adopt(&mut self, info: SlotInfo) -> Result<bool, DrainError> {
        let lanes = self.registry.lanes(info.index)?;
        // SAFETY: the drain is the only consumer of every slot's lanes (one Drain per region), and
        // an owner's consumers are dropped (`retire`) before the slot is recycled.
        let (index, detail) = unsafe { (lanes.index.consumer(), lanes.detail.consumer()) };
        self.owners.insert(
            info.index,
            Owner {
                info,
                index,
                detail,
                taken: 0,
            },
        );
        let key = self.key_of(info.pid);
        if !self.procs.contains_key(&key) {
            self.new_process(info.pid)?;
        }
        let process = self.procs.get_mut(&key).expect("made above");
        process.images.insert(info.image);
        process.dirty = true;
        if self.files.contains_key(&(key, info.tid)) || self.pending.contains(&(key, info.tid)) {
            // The same thread id again: the image an `exec` started (it keeps the pid and the
            // exec'ing thread becomes the main thread), whose files were kept open for it; or a
            // tid the kernel reused after the thread was gone. Its accounting continues, and its
            // files too if still open (see `drain_slot`); a file still being made on the helper
            // is waited for like the first owner's, never made twice.
            return Ok(true);
        }
        // A live thread's file is made by the helper, and its lanes wait until it is there (see
        // `drain_slot`); an exited one's here and now, so its slot is recycled in this pass.
        if info.state != SlotState::Exited && self.request_file((key, info.tid)) {
            return Ok(false);
        }
        let made = self.procs[&key]
            .layout
            .create_index(info.tid, atf::ClockType::Boottime);
        self.insert_files((key, info.tid), made).map(|()| false)
    }

    /// The registry's active and exited slots, oldest registration first. A thread's successive
    /// owners (an `exec`'s old and new image, same pid and thread id) share its files, so the
    /// older one's events must be written first, wherever the slots lie: the new image's main
    /// thread probes for a slot from its thread id, finds the old image's still held, and may
    /// wrap around to a lower index.
    fn slots_in_registration_order(&self) -> Vec<SlotInfo> {
        let mut slots: Vec<SlotInfo> = self.registry.slots().collect();
        slots.sort_unstable_by_key(|s| s.serial);
        slots
    }

    /// Drains the older owners of `info`'s thread (which continues their files) before it, from
    /// their slots as they are now: the old image of an `exec` seen still active earlier in this
    /// pass, or left undrained because its file was still being made, so its last events go
    /// into the file ahead of the new image's. Returns the bytes moved.
    fn drain_older_owners(&mut self, info: SlotInfo, final_pass: bool) -> Result<u64, DrainError> {
        let older: Vec<u32> = self
            .owners
            .values()
            .filter(|o| {
                o.info.pid == info.pid && o.info.tid == info.tid && o.info.serial < info.serial
            })
            .map(|o| o.info.index)
            .collect();
        let mut moved = 0;
        for index in older {
            // Only the drain recycles a slot, so it still holds this owner.
            if let Some(now) = self.registry.slot_info(index) {
                moved += self.drain_slot(now, final_pass)?;
            }
        }
        Ok(moved)
    }

    /// Asks the file-creation helper for `key`'s event file (see `create`), starting it if
    /// needed. `false`: make it here and now (the recording is stopping, or there is no helper).
    fn request_file(&mut self, key: create::FileKey) -> bool {
        if self.pending.contains(&key) {
            return true;
        }
        if self.stopped {
            return false;
        }
        if self.creator.is_none() && !self.creator_off {
            self.creator = create::Creator::start().ok();
            self.creator_off = self.creator.is_none();
        }
        let Some(creator) = &self.creator else {
            return false;
        };
        if !creator.request(key, &self.procs[&key.0].layout) {
            return false;
        }
        self.pending.insert(key);
        true
    }

    /// Takes the files the helper made: all of them so far, or, when `wait`, every one asked for
    /// (waiting for the helper). A file it failed to make leaves its thread without a writer
    /// (its events are consumed and counted `not_written`) and its error in `create_error`.
    fn collect_files(&mut self, wait: bool) {
        let Some(creator) = self.creator.take() else {
            return;
        };
        let mut made: Vec<_> = creator.ready().collect();
        while wait && made.len() < self.pending.len() {
            match creator.next() {
                Some(file) => made.push(file),
                None => break,
            }
        }
        for (key, file) in made {
            self.pending.remove(&key);
            if let Err(e) = self.insert_files(key, file) {
                self.create_error.get_or_insert(e);
            }
        }
        if wait && !self.pending.is_empty() {
            // The helper died: make what it did not, here.
            for key in std::mem::take(&mut self.pending) {
                let made = self.procs[&key.0]
                    .layout
                    .create_index(key.1, atf::ClockType::Boottime);
                if let Err(e) = self.insert_files(key, made) {
                    self.create_error.get_or_insert(e);
                }
            }
        }
        self.creator = Some(creator);
    }

    /// Records thread `key`'s files: its event file as made (or failed to be made).
    fn insert_files(
        &mut self,
        key: create::FileKey,
        made: atf::Result<atf::IndexWriter>,
    ) -> Result<(), DrainError> {
        // A thread whose file cannot be created is still accounted for: its events are consumed
        // without a writer and counted as `not_written`.
        let (index, created) = match made {
            Ok(index) => (Some(index), Ok(())),
            Err(e) => (None, Err(e.into())),
        };
        self.files.insert(
            key,
            ThreadFiles {
                tid: key.1,
                index,
                detail: None,
                counts: Counts::default(),
                detail_counts: Counts::default(),
                written: 0,
                submitted: 0,
                index_bytes: 0,
                detail_written: 0,
                detail_taken: 0,
                detail_failed: false,
                time_range: None,
                windows: Vec::new(),
            },
        );
        created
    }

    /// Makes the directory and first manifest of a followed process: the target's manifest's
    /// session facts (clock, tracer, start), this process's pid, and its executable and arguments
    /// as `/proc` shows them now (best effort: a process that exec'd already shows its new
    /// program; the caller names each image from the module log).
    fn new_process(&mut self, pid: u32) -> Result<(), DrainError> {
        let root = self.root();
        let layout = root.layout.process(pid)?;
        let mut manifest = root.manifest.clone();
        manifest.threads.clear();
        manifest.modules.clear();
        manifest.symbols.clear();
        manifest.detail_windows.clear();
        manifest.accounting = Accounting::default();
        manifest.stop_reason = None;
        manifest.target_fate = None;
        manifest.finished = false;
        manifest.target_pid = pid;
        manifest.followed_from = Some(parent_of(pid).unwrap_or(0));
        manifest.executable = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        manifest.argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        // Unsynced: the final sync of the file system makes it durable with everything else.
        layout.write_manifest_unsynced(&mut manifest)?;
        self.procs.insert(
            pid,
            Process {
                layout,
                manifest,
                dirty: false,
                images: Default::default(),
            },
        );
        Ok(())
    }

    /// Persists the committed prefix of a slot's active detail ring if it is marked (or `all`).
    fn persist_active_detail(&mut self, slot: u32, all: bool) -> Result<(), DrainError> {
        let Some(owner) = self.owners.get_mut(&slot) else {
            return Ok(());
        };
        let tid = owner.info.tid;
        let key = if self.follow && owner.info.pid != self.root_pid && owner.info.pid != ROOT {
            owner.info.pid
        } else {
            ROOT
        };
        let (Some(files), Some(process)) = (self.files.get_mut(&(key, tid)), self.procs.get(&key))
        else {
            return Ok(());
        };
        let clock = self.registry.clock();
        let mut persisted = Persisted::default();
        owner
            .detail
            .drain(true, |mut chunk| {
                if all {
                    chunk.marked = true;
                }
                persist_detail(&process.layout, tid, files, chunk, &clock, &mut persisted);
                Ok::<(), atf::Error>(())
            })
            .map_err(|e| lane_error(tid, e))?;
        self.detail_bytes += persisted.bytes;
        persisted.error.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Folds a slot owner's counters into its thread's accounting, drops the consumers and, if the
    /// thread has exited, returns the slot to the registry.
    fn retire(&mut self, slot: u32) -> Result<(), DrainError> {
        let Some(owner) = self.owners.get(&slot) else {
            return Ok(());
        };
        if self
            .pending
            .contains(&(self.key_of(owner.info.pid), owner.info.tid))
        {
            // Its counts go to its thread's files: wait for them (a slot recycled and taken by
            // another thread before the helper made its first owner's file).
            self.collect_files(true);
        }
        let Some(owner) = self.owners.remove(&slot) else {
            return Ok(());
        };
        // The state first, then the counts: EXITED read before them (Acquire in `slot_info`)
        // makes them final. Read the other way round, a thread could count an attempt, be read,
        // then count its drop and exit before the state read, and its half-counted event would
        // pass for final (an accepted event "not written").
        let state = self.registry.slot_info(slot).map(|s| s.state);
        let mut c = self.registry.counts(slot)?;
        self.stats.ring_waits += c.ring_waits;
        if self.stopped && state != Some(SlotState::Exited) {
            reconcile_after_stop(&mut c, owner.taken);
        }
        drop(owner.index);
        drop(owner.detail);
        let key = self.key_of(owner.info.pid);
        if let Some(process) = self.procs.get_mut(&key) {
            process.dirty = true;
        }
        if let Some(files) = self.files.get_mut(&(key, owner.info.tid)) {
            files.counts.add(&Counts {
                attempted: c.attempted,
                persisted: 0, // filled from what was written, in `thread_entry`
                dropped: Drops {
                    ring_full: c.ring_full,
                    shutdown: c.shutdown,
                    reentrant: c.reentrant,
                    ..Drops::default()
                },
            });
            files.detail_counts.add(&Counts {
                attempted: c.detail_accepted + c.detail_ring_full,
                persisted: 0,
                dropped: Drops {
                    ring_full: c.detail_ring_full,
                    ..Drops::default()
                },
            });
        }
        if state == Some(SlotState::Exited) {
            // The thread is gone: close its files now, so many short-lived threads do not hold
            // many descriptors, then hand the slot back. Except a followed process's main thread
            // while the process lives: its slot is retired by an `exec`, and the new image's
            // main thread (same pid, same thread id) continues its files.
            // A file that fails to finish does not keep the slot: its counts are already taken
            // (retiring it again would count them twice) and its lanes are empty.
            let info = owner.info;
            let continued = self.follow
                && info.tid == info.pid
                && (process_alive(info.pid) || self.has_other_owner(info));
            let finished = match self.files.get_mut(&(key, info.tid)) {
                Some(files) if !continued => finish_files(files),
                _ => Ok(()),
            };
            self.registry.recycle(slot)?;
            return finished;
        }
        Ok(())
    }
}

impl<B: Backend> Drain<'_, B> {
    /// Whether a slot other than `info`'s holds the same thread (pid and tid): the image an
    /// `exec` started registered it. Asked after finding the process dead, so every such slot is
    /// registered already (a dead process registers nothing more).
    fn has_other_owner(&self, info: SlotInfo) -> bool {
        self.registry
            .slots()
            .any(|s| s.index != info.index && s.pid == info.pid && s.tid == info.tid)
    }
}

/// The parent of process `pid` as `/proc/<pid>/stat` says it now.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ppid ...`
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether process `pid` can still run code: `/proc/<pid>/stat` exists and does not say zombie
/// or dead. (A pid reused by another process reads as alive: files are then kept open until the
/// final drain, which is harmless.)
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last `)` (comm may hold anything).
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X' | 'x') | None)
}

/// Makes a count snapshot taken after the stop handshake consistent.
///
/// After the stop, a live producer still counts each new event twice — `attempted`, then
/// `shutdown` — with no way to read both at one instant. Everything else is frozen (nothing is
/// accepted any more), so an attempt not yet matched by a drop is, by construction, a post-stop
/// event: a `shutdown` drop. Counts of exited threads are final and never adjusted, so a real
/// accounting error still shows.
fn reconcile_after_stop(c: &mut registry::ThreadCounts, taken: u64) {
    // What the drain consumed is accepted, whatever the counter says. The index lane's pool
    // counts what it accepted by the bytes its rings were written, so the two agree; a pool that
    // counted each record after publishing it (as variable-size pools do) could lose the count
    // of a record whose thread was killed in between, and this keeps such a record accounted.
    c.accepted = c.accepted.max(taken);
    let counted = c.accepted + c.dropped();
    if c.attempted > counted {
        c.shutdown += c.attempted - counted;
    } else {
        c.attempted = counted;
    }
}

/// What one drain call persisted, and the first write error it met.
#[derive(Default)]
struct Persisted {
    bytes: u64,
    error: Option<atf::Error>,
}

/// Persists a detail chunk if its window is marked (unmarked windows are the flight recorder's
/// discarded history, accounted for in `thread_entry`). The chunk is always consumed: a record
/// that cannot be written gives the detail file up (see `fail_detail`), the error goes into
/// `persisted`, and this and later marked records are counted as `not_written`.
fn persist_detail(
    layout: &SessionLayout,
    tid: u32,
    files: &mut ThreadFiles,
    chunk: ring::Chunk<'_>,
    clock: &Clock,
    persisted: &mut Persisted,
) {
    if !chunk.marked {
        return;
    }
    if files.detail.is_none() && files.index.is_some() && !files.detail_failed {
        match layout.create_detail(tid) {
            Ok(writer) => files.detail = Some(writer),
            Err(e) => {
                files.detail_failed = true;
                persisted.error.get_or_insert(e);
            }
        }
    }
    let mut window = DetailWindow {
        thread_id: tid,
        reason: if chunk.active {
            "final".into()
        } else {
            "marked".into()
        },
        index_seq_start: u64::MAX,
        index_seq_end: 0,
        records: 0,
    };
    for record in frames(chunk.bytes) {
        // A torn frame cannot come from the ring (it validates frames); stop at it regardless.
        let Ok(record) = record else { break };
        files.detail_taken += 1;
        let Some(writer) = files.detail.as_mut() else {
            continue;
        };
        // The header's timestamp is the clock's raw reading, as the index records' are.
        if let Err(e) = writer.append_timed(record, |t| clock.to_ns(t)) {
            fail_detail(files);
            persisted.error.get_or_insert(e);
            continue;
        }
        files.detail_written += 1;
        if let Some(seq) = record.get(8..12) {
            let seq = u64::from(u32::from_le_bytes(seq.try_into().unwrap_or_default()));
            window.index_seq_start = window.index_seq_start.min(seq);
            window.index_seq_end = window.index_seq_end.max(seq);
        }
        window.records += 1;
        persisted.bytes += record.len() as u64;
    }
    if window.records > 0 {
        files.windows.push(window);
    }
}

/// Appends a run of ring records to an event file, each timestamp (the session clock's raw
/// reading, see `registry::clock`) converted to nanoseconds on the way: in the writer's one pass
/// over the records (the ATC encoder's decoding, or ATF v2's copy into its write buffer), so a
/// record costs the drain a multiply and a shift more, not another pass over memory. A
/// [`ClockSource::Boottime`] clock's readings are nanoseconds already: appended as they are.
#[inline]
fn append_events(writer: &mut atf::IndexWriter, records: &[u8], clock: &Clock) -> atf::Result<()> {
    match clock.source {
        ClockSource::Tsc => {
            // A copy, so its fields stay in registers across the writer's stores (through a
            // reference they could alias the output bytes, and are loaded again per record).
            let clock = *clock;
            writer.append_timed(records, move |t| clock.tsc_to_ns(t))
        }
        ClockSource::Boottime => writer.append(records),
    }
}

/// Finishes a thread's detail file, then its index file; a detail file that fails does not keep
/// the index from being finished. Returns the first error.
fn finish_files(files: &mut ThreadFiles) -> Result<(), DrainError> {
    let mut first = None;
    if let Some(detail) = files.detail.take() {
        let path = detail.path().to_owned();
        if let Err(e) = detail.finish_unsynced() {
            files.detail_failed = true;
            files.detail_written = files.detail_written.min(records_in_file(&path));
            keep_first(&mut first, e.into());
        }
        if let Some(index) = files.index.as_mut() {
            if let Err(e) = index.set_has_detail(true) {
                fail_index(files);
                keep_first(&mut first, e.into());
            }
        }
    }
    if let Some(index) = files.index.take() {
        files.written = index.event_count();
        let path = index.path().to_owned();
        let finished = index.finish_unsynced();
        if let Ok(summary) = &finished {
            files.index_bytes = summary.file_bytes;
            if summary.event_count > 0 {
                files.time_range = Some((summary.time_start_ns, summary.time_end_ns));
            }
        }
        if let Err(e) = finished {
            // Either the last events or the footer were cut short: at most what was appended,
            // at most what a reader finds (a torn footer must not pass for an event).
            files.written = files.written.min(events_in_file(&path));
            keep_first(&mut first, e.into());
        }
    }
    first.map_or(Ok(()), Err)
}

/// Gives up a thread's index file after a write error. The writer is dropped unfinished (a failed
/// writer writes nothing more), so the file stays readable up to its last whole event, which is
/// what `written` now counts; the thread's later events are consumed without a writer and the
/// manifest counts them as `not_written`.
fn fail_index(files: &mut ThreadFiles) {
    if let Some(writer) = files.index.take() {
        let (path, appended) = (writer.path().to_owned(), writer.event_count());
        drop(writer);
        files.written = appended.min(events_in_file(&path));
    }
}

/// [`fail_index`] for the detail file: `detail_written` becomes the whole records the file
/// holds, and later marked records are counted as `not_written`.
fn fail_detail(files: &mut ThreadFiles) {
    files.detail_failed = true;
    if let Some(writer) = files.detail.take() {
        let path = writer.path().to_owned();
        drop(writer);
        files.detail_written = files.detail_written.min(records_in_file(&path));
    }
}

/// Whole events in an index file as the reader finds them (0 if it cannot open it).
fn events_in_file(path: &std::path::Path) -> u64 {
    atf::IndexReader::open(path).map_or(0, |r| r.event_count())
}

/// Whole records in a detail file as the reader finds them (0 if it cannot open it).
fn records_in_file(path: &std::path::Path) -> u64 {
    atf::DetailReader::open(path).map_or(0, |r| r.record_count())
}

/// Keeps the first of several errors (the one that explains the others).
fn keep_first(first: &mut Option<DrainError>, e: DrainError) {
    first.get_or_insert(e);
}

/// The manifest entry of a thread: the registry's counts with what the drain wrote as `persisted`.
/// Accepted events that are not in the file (an I/O error stopped the drain) are named
/// `not_written`, so the equation still balances and says why.
fn thread_entry(files: &ThreadFiles) -> ThreadEntry {
    let mut index = files.counts.clone();
    index.persisted = files.written;
    let accepted = index.attempted.saturating_sub(index.dropped.total());
    if accepted > files.written {
        index
            .dropped
            .other
            .insert("not_written".into(), accepted - files.written);
    }
    let mut detail = files.detail_counts.clone();
    detail.persisted = files.detail_written;
    let accepted = detail.attempted.saturating_sub(detail.dropped.total());
    let taken = files.detail_taken.max(files.detail_written);
    if taken > files.detail_written {
        // Records of marked windows that an I/O error kept out of the file.
        detail
            .dropped
            .other
            .insert("not_written".into(), taken - files.detail_written);
    }
    if accepted > taken {
        // The flight recorder keeps only marked windows: the rest is discarded by design.
        detail
            .dropped
            .other
            .insert("unmarked_window".into(), accepted - taken);
    }
    ThreadEntry {
        id: files.tid,
        has_detail: files.detail_written > 0,
        index,
        detail,
    }
}

fn lane_error<E: Into<DrainError>>(tid: u32, e: ring::DrainError<E>) -> DrainError {
    match e {
        ring::DrainError::Sink(e) => e.into(),
        ring::DrainError::Ring(source) => DrainError::Lane { tid, source },
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::reconcile_after_stop;
    use registry::ThreadCounts;

    fn counts(attempted: u64, accepted: u64, shutdown: u64) -> ThreadCounts {
        ThreadCounts {
            attempted,
            accepted,
            shutdown,
            ..ThreadCounts::default()
        }
    }

    #[test]
    fn reconcile__attempt_without_outcome__then_shutdown_drop() {
        let mut c = counts(5, 3, 1);
        reconcile_after_stop(&mut c, 3);
        assert_eq!((c.attempted, c.accepted, c.shutdown), (5, 3, 2));
        assert!(c.balanced());
    }

    #[test]
    fn reconcile__event_published_but_not_counted__then_accepted_not_dropped() {
        // Killed between publishing its 4th event and counting it: the drain took 4 events.
        let mut c = counts(4, 3, 0);
        reconcile_after_stop(&mut c, 4);
        assert_eq!((c.attempted, c.accepted, c.shutdown), (4, 4, 0));
        assert!(c.balanced());
    }

    #[test]
    fn reconcile__drop_counted_before_its_attempt__then_attempt_raised() {
        let mut c = counts(3, 2, 2);
        reconcile_after_stop(&mut c, 2);
        assert_eq!((c.attempted, c.accepted, c.shutdown), (4, 2, 2));
        assert!(c.balanced());
    }
}
