//! Reader and writer for ATF v2, the on-disk trace format (specified in `docs/format.md`):
//! per-thread `index.atf` (64-byte header, 32-byte events, 64-byte footer), `detail.atf` (64-byte header, length-prefixed
//! records, 64-byte footer) and the session's `manifest.json`.
//!
//! Contract: every byte layout is exactly the one `docs/format.md` gives (little-endian, encoded field by field
//! at fixed offsets), so readers built for the original format open our files. A session is readable at
//! every instant: writers put a valid header first and only ever append whole events, the manifest is
//! replaced atomically, and the readers recover every complete event of a file that was never finished
//! (tracer killed). Readers stream in large chunks, never load a file whole, and report corrupt input
//! as an [`Error`], never a panic. Writers reach the disk through a [`FileSystem`] ([`RealFs`], or
//! [`fault::FaultyFs`] to inject faults): interrupted writes are retried and short ones continued;
//! any other write or fsync failure is an [`Error::Io`] naming the file and carrying the OS error,
//! and leaves the file readable up to its last complete event. Timestamps are nanoseconds of
//! `CLOCK_BOOTTIME` ([`ClockType::Boottime`]); raw TSC ticks are mapped onto that clock with a
//! [`TscCalibration`] recorded in the manifest.
//!
//! ```
//! use atf::{ClockType, EventKind, IndexEvent, IndexReader, IndexWriter, NO_DETAIL};
//! # fn main() -> atf::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("index.atf");
//! let mut writer = IndexWriter::create(&path, 42, ClockType::Boottime)?;
//! let call = IndexEvent {
//!     timestamp_ns: 1_000,
//!     function_id: atf::function_id(atf::module_id("/usr/bin/app"), 7),
//!     thread_id: 42,
//!     kind: EventKind::Call,
//!     call_depth: 0,
//!     detail_seq: NO_DETAIL,
//! };
//! writer.append_event(&call)?;
//! writer.append(&IndexEvent { timestamp_ns: 2_000, kind: EventKind::Return, ..call }.encode())?;
//! writer.finish()?;
//!
//! let reader = IndexReader::open(&path)?;
//! assert!(reader.finished());
//! let events: Vec<IndexEvent> = reader.events().collect::<atf::Result<_>>()?;
//! assert_eq!(events.len(), 2);
//! assert_eq!(events[0], call);
//! # Ok(())
//! # }
//! ```

#[cfg(test)]
#[macro_use]
#[allow(non_snake_case)]
mod testkit;
mod chunk;
mod compact;
mod convert;
mod detail;
mod engine;
mod error;
pub mod fault;
mod index;
mod le;
mod manifest;
mod session;
mod sink;
mod verify;

pub use convert::{convert_session, Converted};
pub use detail::{
    DetailFooter, DetailHeader, DetailReader, DetailRecord, DetailRecordHeader, DetailSummary,
    DetailWriter, Records,
};
pub use error::{Error, Result};
pub use event;
pub use index::{
    CheckedEvents, Events, IndexEvent, IndexFooter, IndexHeader, IndexReader, IndexSummary,
    IndexWriter,
};
pub use manifest::{
    Accounting, ClockInfo, Counts, DetailWindow, Drops, Manifest, Module, Symbol, TargetFate,
    ThreadEntry, TscCalibration,
};
pub use session::{fsync_dir, Session, SessionLayout, SessionThread, Warning, SYNC_WORKERS};
pub use sink::{Dir, FileSink, FileSystem, RealFs};
pub use verify::{open_regular, Damage, EventCheck};

/// Size of the header of both files.
pub const HEADER_SIZE: usize = 64;
/// Size of the footer of both files.
pub const FOOTER_SIZE: usize = 64;
/// Size of one index event (the agent's record, [`event::Record`]).
pub const EVENT_SIZE: usize = event::SIZE;
/// Size of the header that starts every detail record ([`event::DetailHeader`]).
pub const RECORD_HEADER_SIZE: usize = event::DETAIL_HEADER_SIZE;
/// `detail_seq` of an index event that has no detail record.
pub const NO_DETAIL: u32 = event::NO_DETAIL;

/// How a thread's events are encoded on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EventFormat {
    /// ATC, `index.atc` (`docs/atc.md`): 2 to 3 bytes an event in checksummed, self-contained
    /// chunks with a chunk index. The default.
    #[default]
    Atc,
    /// ATF v2, `index.atf`: 32 bytes an event, opened by the original project's readers.
    Atf2,
}

impl EventFormat {
    /// Every format, the default first.
    pub const ALL: [EventFormat; 2] = [EventFormat::Atc, EventFormat::Atf2];

    /// The file name of a thread's events in this format.
    pub const fn file_name(self) -> &'static str {
        match self {
            EventFormat::Atc => "index.atc",
            EventFormat::Atf2 => "index.atf",
        }
    }

    /// The name users give it (`--format atc`, `--format atf2`).
    pub const fn name(self) -> &'static str {
        match self {
            EventFormat::Atc => "atc",
            EventFormat::Atf2 => "atf2",
        }
    }

    /// The format a user's name names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The event file of the thread directory `thread_dir`, in whichever format it was recorded:
    /// the first of [`ALL`](Self::ALL)'s file names present there (a link or FIFO counts as
    /// present, so that its reader reports it), the default format's name if none is.
    pub fn events_path(thread_dir: &std::path::Path) -> std::path::PathBuf {
        Self::ALL
            .iter()
            .map(|f| thread_dir.join(f.file_name()))
            .find(|p| std::fs::symlink_metadata(p).is_ok())
            .unwrap_or_else(|| thread_dir.join(Self::default().file_name()))
    }
}

/// Magic of an index header.
pub const INDEX_MAGIC: [u8; 4] = *b"ATI2";
/// Magic of an index footer.
pub const INDEX_FOOTER_MAGIC: [u8; 4] = *b"2ITA";
/// Magic of a detail header.
pub const DETAIL_MAGIC: [u8; 4] = *b"ATD2";
/// Magic of a detail footer.
pub const DETAIL_FOOTER_MAGIC: [u8; 4] = *b"2DTA";

pub use event::{current_arch, ARCH_ARM64, ARCH_X86_64, ENDIAN_LITTLE, OS_LINUX};
/// Header `version` value of both files.
pub const FILE_VERSION: u8 = 1;
/// Index header `flags` bit: the thread has a `detail.atf`.
pub const FLAG_HAS_DETAIL: u32 = 1;

/// The clock an index file's timestamps are read from (index header byte 16, manifest `clock_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClockType {
    /// macOS `mach_continuous_time` (original tracer only).
    MachContinuous = 1,
    /// Windows `QueryPerformanceCounter` (original tracer only).
    Qpc = 2,
    /// Linux `CLOCK_BOOTTIME` nanoseconds; ours, also when raw TSC ticks were mapped onto it.
    Boottime = 3,
}

impl ClockType {
    /// The byte stored in files and in the manifest.
    pub const fn to_raw(self) -> u8 {
        self as u8
    }

    /// The clock a stored byte names, if it names one.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(ClockType::MachContinuous),
            2 => Some(ClockType::Qpc),
            3 => Some(ClockType::Boottime),
            _ => None,
        }
    }
}

/// What an index event records (`event_kind`, a u32 on disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Function entry (1).
    Call,
    /// Function exit (2).
    Return,
    /// Unwound by an exception (3).
    Exception,
    /// Any other value found in a file, kept as is.
    Other(u32),
}

impl EventKind {
    /// The u32 stored on disk.
    pub const fn to_raw(self) -> u32 {
        match self {
            EventKind::Call => event::CALL,
            EventKind::Return => event::RETURN,
            EventKind::Exception => event::EXCEPTION,
            EventKind::Other(raw) => raw,
        }
    }

    /// The kind a stored u32 names.
    #[inline(always)]
    pub const fn from_raw(raw: u32) -> Self {
        // A table, not a `match`: a reader converts every event, calls and returns come in no
        // order a branch predictor learns, and a `match` compiles to a branch on which.
        const KNOWN: [EventKind; 3] = [EventKind::Call, EventKind::Return, EventKind::Exception];
        const _: () = assert!(event::CALL == 1 && event::RETURN == 2 && event::EXCEPTION == 3);
        let i = raw.wrapping_sub(1) as usize;
        if i < KNOWN.len() {
            KNOWN[i]
        } else {
            EventKind::Other(raw)
        }
    }
}

/// Detail record `event_type` of a call.
pub const DETAIL_CALL: u16 = event::DETAIL_CALL;
/// Detail record `event_type` of a return.
pub const DETAIL_RETURN: u16 = event::DETAIL_RETURN;

/// The original's module id: FNV-1a-32 of the lowercased module path.
///
/// ```
/// assert_eq!(atf::module_id(""), 0x811c_9dc5);
/// assert_eq!(atf::module_id("/LIB/libc.so.6"), atf::module_id("/lib/libc.so.6"));
/// ```
pub fn module_id(path: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in path.to_lowercase().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The original's function id: `(module_id << 32) | symbol_index`.
///
/// ```
/// assert_eq!(atf::function_id(0xdead_beef, 5), 0xdead_beef_0000_0005);
/// ```
pub const fn function_id(module_id: u32, symbol_index: u32) -> u64 {
    ((module_id as u64) << 32) | symbol_index as u64
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn module_id__known_vectors__then_fnv1a_32() {
        // Reference values of FNV-1a-32.
        assert_eq!(module_id("a"), 0xe40c_292c);
        assert_eq!(module_id("foobar"), 0xbf9c_f968);
        assert_eq!(module_id("FOOBAR"), 0xbf9c_f968);
    }

    #[test]
    fn event_kind__raw_round_trip__then_identity() {
        for raw in [0, 1, 2, 3, 4, u32::MAX] {
            assert_eq!(EventKind::from_raw(raw).to_raw(), raw);
        }
    }

    #[test]
    fn clock_type__raw_round_trip__then_identity() {
        for clock in [
            ClockType::MachContinuous,
            ClockType::Qpc,
            ClockType::Boottime,
        ] {
            assert_eq!(ClockType::from_raw(clock.to_raw()), Some(clock));
        }
        assert_eq!(ClockType::from_raw(0), None);
        assert_eq!(ClockType::Boottime.to_raw(), 3);
    }
}
