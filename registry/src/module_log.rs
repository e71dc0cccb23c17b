//! The module log's layout in the shared region: its line in the control block, its 256-byte
//! entries, their flags and the image tags of function ids (the protocol is in `modules`).

use modelsync::{Atomic, Backend, StdBackend};

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

pub(crate) const PATH_WORDS: usize = MODULE_PATH_MAX / 8;
pub(crate) const PUBLISHED: u32 = 1;

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
    pub(crate) state: B::AtomicU32,
    pub(crate) pid: B::AtomicU32,
    pub(crate) image: B::AtomicU32,
    pub(crate) flags: B::AtomicU32,
    pub(crate) bias: B::AtomicU64,
    pub(crate) dev: B::AtomicU64,
    pub(crate) ino: B::AtomicU64,
    pub(crate) mtime_ns: B::AtomicU64,
    pub(crate) path_len: B::AtomicU32,
    pub(crate) _reserved: u32,
    pub(crate) path: [B::AtomicU64; PATH_WORDS],
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
