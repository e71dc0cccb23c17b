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

use modelsync::{Atomic, Backend, StdBackend};

use crate::Registry;

/// Entries in a region's module log (a few per process image: the executable, libc and the
/// instrumented libraries).
#[cfg(not(all(test, feature = "loom")))]
pub const MODULE_LOG_CAPACITY: usize = 2048;
/// Entries in a region's module log (a few under the loom models, whose atomics are costly).
#[cfg(all(test, feature = "loom"))]
pub const MODULE_LOG_CAPACITY: usize = 3;
/// Path bytes an entry holds; a longer path is cut and flagged [`MODULE_TRUNCATED`].
pub const MODULE_PATH_MAX: usize = 200;
/// Entry flag: the image's executable.
pub const MODULE_MAIN: u32 = 1;
/// Entry flag: the last entry of one report (the agent's start, or one `dlopen`).
pub const MODULE_LAST: u32 = 2;
/// Entry flag: the path was longer than [`MODULE_PATH_MAX`] and is cut.
pub const MODULE_TRUNCATED: u32 = 4;
/// Bits a function id's image tag is shifted by (user addresses on x86-64 stay below 2^47).
pub const IMAGE_TAG_SHIFT: u32 = 48;

/// The tag an image's agent ORs into its function ids: image 0 (the first image of the session)
/// records plain addresses; later images are told apart by the top 16 bits.
pub fn image_tag(image: u32) -> u64 {
    u64::from(image & 0xFFFF) << IMAGE_TAG_SHIFT
}

/// The address part of a function id (without its image tag).
pub fn untagged(function_id: u64) -> u64 {
    function_id & ((1u64 << IMAGE_TAG_SHIFT) - 1)
}

const PATH_WORDS: usize = MODULE_PATH_MAX / 8;
const PUBLISHED: u32 = 1;

/// The module log's line in the control block.
#[repr(C)]
pub(crate) struct ModuleLine<B: Backend> {
    /// Entries claimed so far (can pass the capacity: the excess is counted as lost).
    pub(crate) claimed: B::AtomicU32,
    /// Image serials handed out.
    pub(crate) images: B::AtomicU32,
    /// Entries the tracer has consumed, contiguous from 0.
    pub(crate) acked: B::AtomicU32,
    /// Non-zero: a writer that ends a report waits (bounded) for `acked` to pass it.
    pub(crate) wait: B::AtomicU32,
    /// Non-zero (the default): processes other than the first are traced too (fork children and
    /// what they exec). Set by the tracer before the target starts.
    pub(crate) follow: B::AtomicU32,
    /// The pid of the first process whose agent started in the region (the target), 0 before.
    pub(crate) root_pid: B::AtomicU32,
}

impl<B: Backend> ModuleLine<B> {
    pub(crate) fn new() -> Self {
        ModuleLine {
            claimed: B::AtomicU32::new(0),
            images: B::AtomicU32::new(0),
            acked: B::AtomicU32::new(0),
            wait: B::AtomicU32::new(0),
            follow: B::AtomicU32::new(1),
            root_pid: B::AtomicU32::new(0),
        }
    }
}

/// One entry of the module log: 256 bytes.
#[repr(C)]
pub struct ModuleEntry<B: Backend = StdBackend> {
    state: B::AtomicU32,
    pid: B::AtomicU32,
    image: B::AtomicU32,
    flags: B::AtomicU32,
    bias: B::AtomicU64,
    dev: B::AtomicU64,
    ino: B::AtomicU64,
    mtime_ns: B::AtomicU64,
    path_len: B::AtomicU32,
    _reserved: u32,
    path: [B::AtomicU64; PATH_WORDS],
}

impl<B: Backend> ModuleEntry<B> {
    pub(crate) fn new() -> Self {
        ModuleEntry {
            state: B::AtomicU32::new(0),
            pid: B::AtomicU32::new(0),
            image: B::AtomicU32::new(0),
            flags: B::AtomicU32::new(0),
            bias: B::AtomicU64::new(0),
            dev: B::AtomicU64::new(0),
            ino: B::AtomicU64::new(0),
            mtime_ns: B::AtomicU64::new(0),
            path_len: B::AtomicU32::new(0),
            _reserved: 0,
            path: core::array::from_fn(|_| B::AtomicU64::new(0)),
        }
    }
}

const _: () = {
    use core::mem::{offset_of, size_of};
    type E = ModuleEntry<StdBackend>;
    assert!(offset_of!(E, state) == 0);
    assert!(offset_of!(E, bias) == 16);
    assert!(offset_of!(E, mtime_ns) == 40);
    assert!(offset_of!(E, path_len) == 48);
    assert!(offset_of!(E, path) == 56);
    assert!(size_of::<E>() == 256);
    assert!(size_of::<ModuleLine<StdBackend>>() == 24);
};

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
