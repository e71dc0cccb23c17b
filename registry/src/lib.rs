//! The control block the tracer shares with the traced process, in one memfd-backed region: a
//! versioned header (magic, version, layout size, capacity, ring geometry, session flags, clock
//! calibration, trigger addresses, stack-bytes setting, drain heartbeat), the module log (which
//! ELF objects each process image mapped, see [`modules`]), a table of thread slots and, per slot, two lanes (index and detail [`ring::RingPool`]s), with the counters of the
//! accounting invariant.
//!
//! Contracts kept here (slots, registration closing and the stop handshake, each modelled with loom:
//! `cargo test -p registry --features loom --release --lib`):
//! - **Slots.** A claim is a CAS FREE → CLAIMED, so it is unique under races; the claimer
//!   initialises the slot's lanes and publishes ACTIVE (Release). The owner publishes EXITED at
//!   thread teardown; only the tracer, after its final drain of the lanes, returns the slot to FREE
//!   ([`Registry::recycle`]). A thread that finds no free slot is counted (`registry_full`) on every
//!   event and retries when a slot is recycled.
//! - **Registration closing.** [`Registry::close_registrations`] and [`Registry::register`] form a
//!   Dekker pair (fences on both sides, registration is rare): after it returns, no slot becomes
//!   ACTIVE.
//! - **Stop handshake.** A producer's write section is [`SlotWriter::begin`] (store `in_write`,
//!   barrier, load `accepting`) … [`SlotWriter::end`] (Release). [`Registry::stop_accepting`]
//!   clears `accepting`, runs the matching barrier and waits until every section it saw open has
//!   ended (`in_write` is a sequence, odd inside a section, so later sections do not count): then every
//!   accepted event is visible to the final drain and every later one is counted as `shutdown`. The
//!   barrier is asymmetric by default ([`Handshake::Membarrier`]: a compiler barrier for producers,
//!   `membarrier(GLOBAL_EXPEDITED)` for the stopper, which reaches the target's threads in another
//!   process); [`Handshake::Fence`] puts `fence(SeqCst)` on both sides.
//! - **Accounting.** Per thread: `attempted = accepted + ring_full + shutdown + reentrant`
//!   ([`ThreadCounts`]); events of threads without a slot are [`OrphanCounts`]. Producers write only
//!   their own counters; the invariant is exact once the producer is out of its write section.
//!   Every event opens one write section, so `attempted` needs no counter of its own: it is the
//!   number of sections `in_write` has entered (a 64-bit sequence, +2 per section), plus the
//!   reentrant drops, which enter none.
//!
//! Timestamps in the rings are the session clock's raw readings ([`Clock::now_ticks`]: TSC ticks,
//! or `CLOCK_BOOTTIME` nanoseconds when the TSC is not used); the drain maps them to
//! `CLOCK_BOOTTIME` nanoseconds with the region's clock ([`Clock::to_ns`], see [`clock`]), so a
//! ring record is an ATF event once its timestamp is converted.
//!
//! # Example
//!
//! ```
//! use registry::{RegionConfig, SharedRegion};
//! use std::time::Duration;
//!
//! // Tracer: create the region (a memfd) and hand its fd to the target.
//! let region = SharedRegion::create(&RegionConfig::default()).unwrap();
//! let reg = region.registry().unwrap();
//!
//! // Agent (normally in the target): register the thread and write one event.
//! let me = reg.register(std::process::id(), 42).unwrap();
//! // SAFETY: this thread is the slot's only producer.
//! let mut index = unsafe { me.lanes.index.producer() };
//! if me.writer.begin() {
//!     index.push(&[0u8; 32]).unwrap();
//!     me.writer.end();
//! }
//!
//! // Tracer: stop, then drain and check the accounting.
//! assert!(reg.stop_accepting(Duration::from_secs(1)).stragglers.is_empty());
//! let slot = reg.slots().next().unwrap();
//! // SAFETY: the tracer is the lanes' only consumer.
//! let mut drain = unsafe { reg.lanes(slot.index).unwrap().index.consumer() };
//! let mut bytes = 0;
//! drain.drain(true, |c| -> Result<(), ()> { bytes += c.bytes.len(); Ok(()) }).unwrap();
//! let counts = reg.counts(slot.index).unwrap();
//! assert_eq!((bytes, counts.attempted, counts.accepted), (32, 1, 1));
//! assert!(counts.balanced());
//! ```

pub mod clock;
mod layout;
pub mod membarrier;
#[cfg(all(test, feature = "loom"))]
mod models;
mod module_log;
pub mod modules;
mod region;
mod registry;

pub use clock::{Clock, ClockSource};
pub use layout::{
    layout_size, ControlBlock, Handshake, LaneConfig, LibraryCalls, RegionConfig, Slot,
    DEFAULT_STACK_BYTES, MAX_CAPACITY, MAX_STACK_BYTES, MAX_TRIGGERS, MIN_CAPACITY, MIN_FIT_RING,
    REGION_MAGIC, REGION_VERSION,
};
pub use modules::{
    image_tag, untagged, Module, ModuleRecord, ModuleReport, MODULE_LAST, MODULE_LOG_CAPACITY,
    MODULE_MAIN, MODULE_PATH_MAX, MODULE_TRUNCATED,
};
pub use region::{file_size_limit, Mapping, SharedRegion, ENV_REGION_FD, ENV_REGION_PATH};
pub use registry::{
    Lanes, OpenSections, OrphanCounts, OrphanReason, Patient, Registration, Registry, SlotInfo,
    SlotState, SlotWriter, StopReport, StopWatch, ThreadCounts, WriteSection, REGION_ALIGN,
};

/// Why a region could not be created, opened or used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The memory does not start with [`REGION_MAGIC`].
    #[error("region has magic {found:#010x}, not a tracer region: pass the fd or path of a region the tracer created")]
    BadMagic {
        /// The magic found.
        found: u32,
    },
    /// The region was written by another layout version.
    #[error("region layout version {found}, this build speaks version {expected}: use the agent built with this tracer")]
    BadVersion {
        /// The version found.
        found: u32,
        /// The version this build writes.
        expected: u32,
    },
    /// The header's sizes or modes are inconsistent.
    #[error("region layout is inconsistent ({0}): recreate the region")]
    BadLayout(String),
    /// The memory is smaller than the layout needs.
    #[error("region of {got} bytes is too small, its layout needs {needed}: map the whole region")]
    TooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The memory is not aligned as required.
    #[error("region memory is not aligned to {align} bytes: map it with mmap")]
    Misaligned {
        /// The alignment required.
        align: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid region configuration: {0}")]
    BadConfig(String),
    /// A lane's ring pool is invalid.
    #[error("thread lane")]
    Ring(#[from] ring::RingError),
    /// A system call failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A slot index out of range.
    #[error("no slot {index} in this region: use an index below its capacity")]
    NoSuchSlot {
        /// The index asked for.
        index: u32,
    },
    /// Recycling a slot whose thread has not exited.
    #[error("slot {index} is {state}, not exited: recycle only slots whose thread exited and whose lanes are drained")]
    NotExited {
        /// The slot.
        index: u32,
        /// Its state.
        state: String,
    },
    /// No free slot.
    #[error("all {capacity} thread slots are taken: the thread retries when one is recycled; raise the capacity")]
    RegistryFull {
        /// The region's capacity.
        capacity: u32,
    },
    /// Registrations are closed.
    #[error("registrations are closed: the session is stopping")]
    RegistrationsClosed,
    /// A claim did not finish within the timeout.
    #[error("a registration of slot {index} was still in flight at the timeout: its thread is stopped or gone")]
    ClaimInFlight {
        /// The slot.
        index: u32,
    },
}

#[cfg(all(test, not(feature = "loom")))]
mod tests;
