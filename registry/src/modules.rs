//! The module log: which ELF objects each process image has mapped, as its agent saw them.
//!
//! Names must not depend on the tracer reading `/proc/<pid>/maps` before the target exits: a
//! program that runs for less than a millisecond is gone before the tracer looks. So the agent
//! reports, when it starts in a process image and whenever that image loads more objects, every
//! object it sees: the file's path, its load bias, and what identifies the file (device, inode,
//! modification time). The tracer reads the files from disk at those addresses whenever it likes,
//! during the recording or after the target is gone.
//!
//! **Images.** A process image is what one `exec` (or the spawn) started: each agent start takes a
//! serial from [`Registry::new_image`], stamps it on its log entries and its thread slots, and
//! tags its function ids with it (see [`image_tag`]): a fork child keeps its parent's image (the
//! same mappings), an exec'd program gets a new one, so a function id never means two functions.
//!
//! **Contract** (modelled with loom in `models.rs`). Writers are any thread of any traced process;
//! the reader is the tracer.
//! - *Append.* A writer claims entry `i` with a `fetch_add` on `claimed` (unique under races; a
//!   claim at or past [`MODULE_LOG_CAPACITY`] is not recorded and is counted by
//!   [`Registry::modules_lost`]), writes the entry's fields (Relaxed), then publishes it with a
//!   Release store of `state`. The tracer reads an entry only after an Acquire load of `state`
//!   sees it published, so it sees every field as written. Entries are never rewritten.
//! - *Order.* Entries may be published out of claim order (two writers); the tracer consumes any
//!   published entry and moves its contiguous cursor over them. An entry whose writer died between
//!   claim and publication stays unpublished; the tracer skips it once the writers are gone.
//! - *Acknowledgement.* While [`Registry::set_module_wait`] is on (the tracer has
//!   `--trigger symbol=` names to resolve), a writer that ended a report waits, bounded, until the
//!   tracer's `acked` (entries consumed, contiguous from 0, with the trigger addresses they
//!   resolve already published: Release, pairing with the writer's Acquire) passes its last entry.
//!   So a trigger in the program is armed before the program's own code runs.
//!
//! ```
//! use registry::{ModuleReport, RegionConfig, SharedRegion, MODULE_LAST, MODULE_MAIN};
//! let region = SharedRegion::create(&RegionConfig::default()).unwrap();
//! let reg = region.registry().unwrap();
//! // Agent: a new image reports its executable.
//! let image = reg.new_image();
//! let report = ModuleReport {
//!     pid: 42, image, flags: MODULE_MAIN | MODULE_LAST, bias: 0x5555_0000_0000,
//!     dev: 1, ino: 2, mtime_ns: 3, path: b"/usr/bin/app",
//! };
//! let at = reg.report_module(&report).unwrap();
//! // Tracer: read it back.
//! let entry = reg.module(at).unwrap();
//! assert_eq!((entry.pid, entry.path.as_slice()), (42, &b"/usr/bin/app"[..]));
//! reg.ack_modules(at + 1);
//! ```

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use modelsync::{Atomic, Backend};

pub use crate::module_log::{
    image_tag, untagged, IMAGE_TAG_SHIFT, MODULE_LAST, MODULE_LOG_CAPACITY, MODULE_MAIN,
    MODULE_PATH_MAX, MODULE_TRUNCATED,
};
use crate::module_log::{ModuleEntry, ModuleLine, PUBLISHED};
use crate::Registry;

/// One mapped object as the log holds it; `P` is its path bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module<P> {
    /// The process that reported it.
    pub pid: u32,
    /// Its image serial ([`Registry::new_image`]).
    pub image: u32,
    /// [`MODULE_MAIN`], [`MODULE_LAST`]; [`MODULE_TRUNCATED`] is set by the log.
    pub flags: u32,
    /// Load bias: runtime address − link-time address (`dlpi_addr`).
    pub bias: u64,
    /// The file's device (`st_dev`), 0 if unknown.
    pub dev: u64,
    /// Its inode (`st_ino`), 0 if unknown.
    pub ino: u64,
    /// Its modification time in nanoseconds since the epoch, 0 if unknown.
    pub mtime_ns: u64,
    /// Its path as the loader opened it (cut at [`MODULE_PATH_MAX`] in the log).
    pub path: P,
}

/// What an agent reports about one mapped object.
pub type ModuleReport<'p> = Module<&'p [u8]>;

/// A published entry, as the tracer reads it.
pub type ModuleRecord = Module<Vec<u8>>;

impl<'a, B: Backend> Registry<'a, B> {
    fn module_line(&self) -> &'a ModuleLine<B> {
        &self.control().modules.0
    }

    /// A new image serial, for an agent starting in a process image (spawn, exec, attach).
    pub fn new_image(&self) -> u32 {
        // Relaxed: a unique number; nothing is published through it.
        self.module_line().images.fetch_add(1, Relaxed)
    }

    /// Appends an entry. Returns its index, or `None` when the log is full (counted by
    /// [`Self::modules_lost`]).
    pub fn report_module(&self, r: &ModuleReport<'_>) -> Option<u32> {
        // Relaxed: the claim only has to be unique; the entry is published by `state` below.
        let i = self.module_line().claimed.fetch_add(1, Relaxed);
        let entry = self.module_entry(i)?;
        let len = r.path.len().min(MODULE_PATH_MAX);
        let truncated = if r.path.len() > MODULE_PATH_MAX {
            MODULE_TRUNCATED
        } else {
            0
        };
        entry.pid.store(r.pid, Relaxed);
        entry.image.store(r.image, Relaxed);
        entry.flags.store(r.flags | truncated, Relaxed);
        entry.bias.store(r.bias, Relaxed);
        entry.dev.store(r.dev, Relaxed);
        entry.ino.store(r.ino, Relaxed);
        entry.mtime_ns.store(r.mtime_ns, Relaxed);
        entry.path_len.store(len as u32, Relaxed);
        for (w, word) in entry.path.iter().enumerate() {
            let mut bytes = [0u8; 8];
            let from = (w * 8).min(len);
            let to = (w * 8 + 8).min(len);
            bytes[..to - from].copy_from_slice(&r.path[from..to]);
            word.store(u64::from_le_bytes(bytes), Relaxed);
        }
        // Release: pairs with the Acquire in `module`: every field above is visible with it.
        entry.state.store(PUBLISHED, Release);
        Some(i)
    }

    /// Entry `index` if it is published; `None` if it is not (yet), or out of range.
    pub fn module(&self, index: u32) -> Option<ModuleRecord> {
        let entry = self.module_entry(index)?;
        // Acquire: pairs with the Release store in `report_module`.
        if entry.state.load(Acquire) != PUBLISHED {
            return None;
        }
        let len = (entry.path_len.load(Relaxed) as usize).min(MODULE_PATH_MAX);
        let mut path = Vec::with_capacity(len);
        for word in &entry.path {
            path.extend_from_slice(&word.load(Relaxed).to_le_bytes());
        }
        path.truncate(len);
        Some(ModuleRecord {
            pid: entry.pid.load(Relaxed),
            image: entry.image.load(Relaxed),
            flags: entry.flags.load(Relaxed),
            bias: entry.bias.load(Relaxed),
            dev: entry.dev.load(Relaxed),
            ino: entry.ino.load(Relaxed),
            mtime_ns: entry.mtime_ns.load(Relaxed),
            path,
        })
    }

    /// Entries claimed so far, at most the capacity (those below are published or being written).
    pub fn modules_claimed(&self) -> u32 {
        // Relaxed: a bound for the scan; each entry is read through its own Acquire.
        self.module_line()
            .claimed
            .load(Relaxed)
            .min(MODULE_LOG_CAPACITY as u32)
    }

    /// Reports that did not fit in the log (their objects have no names).
    pub fn modules_lost(&self) -> u32 {
        self.module_line()
            .claimed
            .load(Relaxed)
            .saturating_sub(MODULE_LOG_CAPACITY as u32)
    }

    /// Tracer (the only writer, never lowering it): entries `0..consumed` are read and the
    /// triggers they resolve are published.
    /// Release: pairs with the Acquire in [`Self::wait_module_ack`].
    pub fn ack_modules(&self, consumed: u32) {
        self.module_line().acked.store(consumed, Release);
    }

    /// Tracer: whether writers wait for acknowledgements (on while there are trigger names to
    /// resolve). Set before the target starts.
    pub fn set_module_wait(&self, on: bool) {
        // Relaxed: read by writers as a hint; the acknowledgement carries the ordering.
        self.module_line().wait.store(u32::from(on), Relaxed);
    }

    /// Agent: if the tracer asked for it, waits until it has consumed entry `index`, at most
    /// `timeout_us`. Returns whether it did (or no wait was asked for).
    pub fn wait_module_ack(&self, index: u32, timeout_us: u64) -> bool {
        let line = self.module_line();
        if line.wait.load(Relaxed) == 0 {
            return true;
        }
        let deadline = B::deadline_after(timeout_us);
        let mut step = 0;
        // Acquire: pairs with the Release in `ack_modules`: the trigger addresses the tracer
        // published before acknowledging are visible to this process's threads.
        while line.acked.load(Acquire) <= index {
            if !B::backoff(step, &deadline) {
                return false;
            }
            step += 1;
        }
        true
    }

    /// Tracer: whether processes other than the target are traced (before the target starts).
    pub fn set_follow_processes(&self, on: bool) {
        // Relaxed: read by agents that start later, in processes the target starts afterwards.
        self.module_line().follow.store(u32::from(on), Relaxed);
    }

    /// Agent: whether process `pid` is to be traced. The first process to ask becomes the
    /// target (the spawned program's agent starts before any process it starts); the others are
    /// traced unless the tracer turned following off.
    pub fn traces_process(&self, pid: u32) -> bool {
        let line = self.module_line();
        // Relaxed: the CAS only elects the first process; nothing is published through it.
        let root = match line.root_pid.compare_exchange(0, pid, Relaxed, Relaxed) {
            Ok(_) => pid,
            Err(root) => root,
        };
        root == pid || line.follow.load(Relaxed) != 0
    }

    fn module_entry(&self, index: u32) -> Option<&'a ModuleEntry<B>> {
        if index as usize >= MODULE_LOG_CAPACITY {
            return None;
        }
        let offset = self.geometry().modules_offset
            + index as usize * core::mem::size_of::<ModuleEntry<B>>();
        // SAFETY: index < capacity, so the entry lies inside the validated log, which `init`
        // wrote; aligned since the log is page-aligned and the stride is the entry's size.
        Some(unsafe { &*self.base_ptr().add(offset).cast::<ModuleEntry<B>>() })
    }
}
