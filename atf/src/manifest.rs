//! `manifest.json`: the session's metadata, the keys the original readers need plus ours.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sink::{self, Dir, FileSystem, RealFs};
use crate::ClockType;

/// The session manifest. The first seven keys are the original format's; everything else is ours and
/// defaults when absent, so manifests written by the original tracer parse too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `"2.0"`, or `"2.1"` when `modules` and `symbols` are present ([`write_atomic`](Self::write_atomic)
    /// keeps this right).
    #[serde(default)]
    pub format_version: String,
    /// [`ClockType`] byte of every file's timestamps.
    #[serde(default)]
    pub clock_type: u8,
    /// Earliest event of the session, nanoseconds on that clock.
    #[serde(default)]
    pub time_start_ns: u64,
    /// Latest event of the session.
    #[serde(default)]
    pub time_end_ns: u64,
    /// One entry per thread directory.
    pub threads: Vec<ThreadEntry>,
    /// Loaded modules (format 2.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<Module>,
    /// Function names (format 2.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub symbols: Vec<Symbol>,

    /// True once the tracer wrote the final manifest; false while recording or if it was killed.
    #[serde(default)]
    pub finished: bool,
    /// Process id of the traced program.
    #[serde(default)]
    pub target_pid: u32,
    /// Path of the traced executable.
    #[serde(default)]
    pub executable: String,
    /// Its arguments, `argv[0]` first.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Wall-clock start of the recording, nanoseconds since the Unix epoch.
    #[serde(default)]
    pub wall_start_unix_ns: u64,
    /// Wall-clock end of the recording, once it ended.
    #[serde(default)]
    pub wall_end_unix_ns: Option<u64>,
    /// Version of the tracer that wrote the session.
    #[serde(default)]
    pub tracer_version: String,
    /// Why the recording stopped, e.g. `"sigint"`, `"sigterm"`, `"duration"`, `"target_exited"`,
    /// `"target_signaled"`, `"error: ..."`.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// What became of the traced program.
    #[serde(default)]
    pub target_fate: Option<TargetFate>,
    /// The clock behind the timestamps and how raw ticks were mapped onto it.
    #[serde(default)]
    pub clock: Option<ClockInfo>,
    /// Totals over all threads; each thread's own counts are in its entry.
    #[serde(default)]
    pub accounting: Accounting,
    /// Detail windows that were persisted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detail_windows: Vec<DetailWindow>,
    /// Set for a process the tracer followed (a fork child of the target, or of another followed
    /// process): the pid of its parent when the tracer first saw it (0 if unknown). Absent for
    /// the target itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followed_from: Option<u32>,
}

/// One thread of the session: `thread_<id>/` holds its files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadEntry {
    /// OS thread id, equal to the directory's id.
    pub id: u32,
    /// Whether `detail.atf` exists.
    pub has_detail: bool,
    /// Index-lane accounting of this thread.
    #[serde(default)]
    pub index: Counts,
    /// Detail-lane accounting of this thread.
    #[serde(default)]
    pub detail: Counts,
}

/// A loaded module (executable or shared library).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// [`crate::module_id`] of `path`.
    pub module_id: u32,
    /// Path as loaded.
    pub path: String,
    /// Load address.
    pub base_address: u64,
    /// Mapped size in bytes.
    pub size: u64,
    /// Build id (hex) or another stable identity; empty if unknown.
    #[serde(default)]
    pub uuid: String,
}

/// A function name for a function id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symbol {
    /// The id as `0x%016x`.
    pub function_id: String,
    /// Module the symbol belongs to.
    pub module_id: u32,
    /// Index of the symbol within the module.
    pub symbol_index: u32,
    /// Demangled name.
    pub name: String,
    /// The function's size in bytes, 0 when unknown (and then not written). An id inside
    /// `[function id, function id + size)` (what an entry-only hook such as `mcount` reports) is
    /// this function; an id past it is not.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Symbol {
    /// A symbol whose function id is `(module_id << 32) | symbol_index`.
    pub fn new(module_id: u32, symbol_index: u32, name: impl Into<String>) -> Self {
        Symbol {
            function_id: format!("{:#018x}", crate::function_id(module_id, symbol_index)),
            module_id,
            symbol_index,
            name: name.into(),
            size: 0,
        }
    }

    /// The function id parsed from its `0x` string, if well formed.
    pub fn function_id(&self) -> Option<u64> {
        let hex = self
            .function_id
            .strip_prefix("0x")
            .or_else(|| self.function_id.strip_prefix("0X"))?;
        u64::from_str_radix(hex, 16).ok()
    }
}

/// What became of the traced program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetFate {
    /// It exited with this status.
    Exited {
        /// Exit status.
        code: i32,
    },
    /// It was killed by a signal.
    Signaled {
        /// Signal number.
        signal: i32,
        /// Whether it dumped core.
        #[serde(default)]
        core_dumped: bool,
    },
    /// It was still running when the tracer stopped (attach mode).
    Running,
    /// Not known (tracer killed, or not observable).
    Unknown,
}

/// The clock behind the timestamps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockInfo {
    /// The clock the nanoseconds are on, e.g. `"CLOCK_BOOTTIME"`.
    pub name: String,
    /// How events were stamped: `"tsc"` (calibrated raw ticks) or `"clock_gettime"`.
    pub source: String,
    /// The tick-to-nanosecond mapping, when `source` is `"tsc"`.
    #[serde(default)]
    pub tsc: Option<TscCalibration>,
}

impl ClockInfo {
    /// Timestamps read directly from `clock_gettime(CLOCK_BOOTTIME)`.
    pub fn boottime() -> Self {
        ClockInfo {
            name: "CLOCK_BOOTTIME".to_owned(),
            source: "clock_gettime".to_owned(),
            tsc: None,
        }
    }

    /// Raw TSC ticks mapped onto `CLOCK_BOOTTIME` with `calibration`.
    pub fn tsc(calibration: TscCalibration) -> Self {
        ClockInfo {
            name: "CLOCK_BOOTTIME".to_owned(),
            source: "tsc".to_owned(),
            tsc: Some(calibration),
        }
    }
}

/// Linear map from TSC ticks to clock nanoseconds:
/// `ns = ns_base + ((ticks - tsc_base) * mult) >> shift`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TscCalibration {
    /// Measured TSC frequency.
    pub tsc_hz: u64,
    /// A TSC reading taken together with `ns_base`.
    pub tsc_base: u64,
    /// The clock's nanoseconds at `tsc_base`.
    pub ns_base: u64,
    /// Fixed-point nanoseconds per tick.
    pub mult: u64,
    /// Fixed-point shift of `mult`.
    pub shift: u32,
}

impl TscCalibration {
    /// The map through the reference pair (`tsc_base`, `ns_base`) at `tsc_hz` ticks per second.
    pub fn new(tsc_hz: u64, tsc_base: u64, ns_base: u64) -> Self {
        const SHIFT: u32 = 32;
        let mult = ((1_000_000_000u128 << SHIFT) / u128::from(tsc_hz.max(1))) as u64;
        TscCalibration {
            tsc_hz,
            tsc_base,
            ns_base,
            mult,
            shift: SHIFT,
        }
    }

    /// Nanoseconds on the clock for a TSC reading (saturating at 0 and `u64::MAX`).
    pub fn to_ns(&self, ticks: u64) -> u64 {
        let delta = i128::from(ticks) - i128::from(self.tsc_base);
        let ns =
            i128::from(self.ns_base) + ((delta * i128::from(self.mult)) >> self.shift.min(127));
        ns.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// Drops by reason. Reasons not named here go to `other`, keyed by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// All rings were full under the lossy policy (or the wait timed out).
    #[serde(default)]
    pub ring_full: u64,
    /// The event came after the stop.
    #[serde(default)]
    pub shutdown: u64,
    /// The thread found no free registry slot.
    #[serde(default)]
    pub registry_full: u64,
    /// The agent was setting the thread up (registering it, or starting in it): a call made for
    /// the agent (libc's, under `--library-calls all`) or a signal handler's at that moment.
    /// Newer than the other reasons, so written only when not zero: a reader that does not know
    /// it finds it under `other`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub agent_setup: u64,
    /// The hook was re-entered.
    #[serde(default)]
    pub reentrant: u64,
    /// The thread was being torn down.
    #[serde(default)]
    pub thread_teardown: u64,
    /// Any other reason.
    #[serde(flatten)]
    pub other: BTreeMap<String, u64>,
}

impl Drops {
    /// All drops, whatever the reason.
    pub fn total(&self) -> u64 {
        self.ring_full
            + self.shutdown
            + self.registry_full
            + self.agent_setup
            + self.reentrant
            + self.thread_teardown
            + self.other.values().sum::<u64>()
    }
}

/// The accounting of one lane: attempted = persisted + dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Events the producers tried to record.
    #[serde(default)]
    pub attempted: u64,
    /// Events in the files.
    #[serde(default)]
    pub persisted: u64,
    /// Events not recorded, by reason.
    #[serde(default)]
    pub dropped: Drops,
}

impl Counts {
    /// Whether the invariant `attempted == persisted + dropped` holds.
    pub fn balanced(&self) -> bool {
        self.persisted.checked_add(self.dropped.total()) == Some(self.attempted)
    }

    /// Adds `other` into `self` (for totals).
    pub fn add(&mut self, other: &Counts) {
        self.attempted += other.attempted;
        self.persisted += other.persisted;
        let d = &mut self.dropped;
        d.ring_full += other.dropped.ring_full;
        d.shutdown += other.dropped.shutdown;
        d.registry_full += other.dropped.registry_full;
        d.agent_setup += other.dropped.agent_setup;
        d.reentrant += other.dropped.reentrant;
        d.thread_teardown += other.dropped.thread_teardown;
        for (reason, n) in &other.dropped.other {
            *d.other.entry(reason.clone()).or_default() += n;
        }
    }
}

/// Session totals per lane.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounting {
    /// Index lane, all threads.
    #[serde(default)]
    pub index: Counts,
    /// Detail lane, all threads.
    #[serde(default)]
    pub detail: Counts,
}

/// A persisted detail window: the detail records around one marked event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailWindow {
    /// Thread the window belongs to.
    pub thread_id: u32,
    /// Why it was persisted: `"trigger:<symbol>"` or `"crash"`.
    pub reason: String,
    /// `index_seq` of the first record in the window.
    pub index_seq_start: u64,
    /// `index_seq` of the last record in the window.
    pub index_seq_end: u64,
    /// Records in the window.
    pub records: u64,
}

impl Manifest {
    /// An empty, unfinished manifest for a session on `clock`.
    pub fn new(clock: ClockType) -> Self {
        Manifest {
            format_version: "2.0".to_owned(),
            clock_type: clock.to_raw(),
            time_start_ns: 0,
            time_end_ns: 0,
            threads: Vec::new(),
            modules: Vec::new(),
            symbols: Vec::new(),
            finished: false,
            target_pid: 0,
            executable: String::new(),
            argv: Vec::new(),
            wall_start_unix_ns: 0,
            wall_end_unix_ns: None,
            tracer_version: String::new(),
            stop_reason: None,
            target_fate: None,
            clock: None,
            accounting: Accounting::default(),
            detail_windows: Vec::new(),
            followed_from: None,
        }
    }

    /// Reads and parses `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_reader(crate::verify::open_regular(path)?, path)
    }

    /// Reads and parses a manifest from an open file; `path` names it in errors.
    pub fn from_reader(mut file: std::fs::File, path: &Path) -> Result<Self> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes)
            .map_err(|e| Error::io(path, "read the manifest", e))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Manifest {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Replaces `path` atomically: writes `<path>.tmp` in the same directory, fsyncs it, renames it
    /// over `path`, and fsyncs the directory. A reader sees the old or the new manifest, never a mix.
    /// Sets `format_version` to `"2.1"` if modules or symbols are present, `"2.0"` otherwise.
    pub fn write_atomic(&mut self, path: impl AsRef<Path>) -> Result<()> {
        self.write_atomic_with(&RealFs, path)
    }

    /// [`write_atomic`](Self::write_atomic) on the file system `fs`: the directory holding `path`
    /// is opened (as given) and the manifest replaced in it with
    /// [`write_atomic_in`](Self::write_atomic_in).
    pub fn write_atomic_with(&mut self, fs: &dyn FileSystem, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (dir, name) = sink::parent_and_name(path)
            .map_err(|e| Error::io(path, "open the manifest's directory", e))?;
        self.write_atomic_in(fs, &dir, &name)
    }

    /// Replaces `name` in `dir` atomically on the file system `fs`: writes `<name>.tmp` as a new
    /// file (mode 0600; a temporary left by an earlier failure is removed first, never reused),
    /// fsyncs it, renames it over `name` with `renameat` in the same directory handle, and fsyncs
    /// the directory. If writing or syncing the temporary file fails, it is removed and `name`
    /// keeps the previous manifest; a failed sync is never retried (what reached the disk is
    /// unknown).
    pub fn write_atomic_in(&mut self, fs: &dyn FileSystem, dir: &Dir, name: &str) -> Result<()> {
        self.replace_in(fs, dir, name, true)
    }

    /// [`write_atomic_in`](Self::write_atomic_in) without its two fsyncs: the manifest is
    /// replaced in one rename, but whether it survives a crash is up to a later fsync of the
    /// manifest and its directory (`SessionLayout::sync_session`), which the caller must run. For
    /// sessions with many processes, where an fsync per manifest would cost seconds.
    pub fn write_atomic_unsynced_in(
        &mut self,
        fs: &dyn FileSystem,
        dir: &Dir,
        name: &str,
    ) -> Result<()> {
        self.replace_in(fs, dir, name, false)
    }

    fn replace_in(&mut self, fs: &dyn FileSystem, dir: &Dir, name: &str, sync: bool) -> Result<()> {
        let path = dir.join(name);
        self.format_version = if self.modules.is_empty() && self.symbols.is_empty() {
            "2.0"
        } else {
            "2.1"
        }
        .to_owned();
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| Error::Manifest {
            path: path.clone(),
            source,
        })?;
        let tmp_name = format!("{name}.tmp");
        let tmp = dir.join(&tmp_name);
        let created = match fs.create_new(dir, &tmp_name) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = fs.remove_file(dir, &tmp_name);
                fs.create_new(dir, &tmp_name)
            }
            other => other,
        };
        let mut file = created.map_err(|e| {
            Error::io(
                &tmp,
                "create the temporary manifest (is the directory writable?)",
                e,
            )
        })?;
        let written = sink::write_all(&mut *file, &bytes)
            .and_then(|()| sink::write_all(&mut *file, b"\n"))
            .map_err(|e| {
                Error::io(
                    &tmp,
                    "write the temporary manifest (is the disk full or failing?); the manifest was \
                     left as it was",
                    e,
                )
            })
            .and_then(|()| {
                if !sync {
                    return Ok(());
                }
                sink::sync_retrying(|| file.sync_all()).map_err(|e| {
                    Error::io(
                        &tmp,
                        "fsync the temporary manifest; after a failed fsync what reached the disk \
                         is unknown, so it was not renamed over the manifest, which was left as \
                         it was",
                        e,
                    )
                })
            });
        drop(file);
        if let Err(e) = written {
            let _ = fs.remove_file(dir, &tmp_name);
            return Err(e);
        }
        fs.rename(dir, &tmp_name, name)
            .map_err(|e| Error::io(&path, "replace the manifest", e))?;
        if !sync {
            return Ok(());
        }
        sink::sync_retrying(|| fs.sync_dir(dir)).map_err(|e| {
            Error::io(
                dir.path(),
                "fsync the directory after replacing the manifest; after a failed fsync whether \
                 the new manifest survives a crash is unknown",
                e,
            )
        })
    }

    /// The session's accounting recomputed from the thread entries.
    pub fn thread_totals(&self) -> Accounting {
        let mut total = Accounting::default();
        for t in &self.threads {
            total.index.add(&t.index);
            total.detail.add(&t.detail);
        }
        total
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use std::fs;

    fn full_manifest() -> Manifest {
        let mut m = Manifest::new(ClockType::Boottime);
        let mut counts = Counts {
            attempted: 10,
            persisted: 7,
            ..Counts::default()
        };
        counts.dropped.shutdown = 2;
        counts.dropped.other.insert("future_reason".to_owned(), 1);
        m.threads = vec![
            ThreadEntry {
                id: 4242,
                has_detail: true,
                index: counts.clone(),
                detail: Counts::default(),
            },
            ThreadEntry {
                id: 4243,
                has_detail: false,
                ..ThreadEntry::default()
            },
        ];
        m.accounting = m.thread_totals();
        m.time_start_ns = 11;
        m.time_end_ns = 99;
        m.modules = vec![Module {
            module_id: crate::module_id("/usr/bin/app"),
            path: "/usr/bin/app".to_owned(),
            base_address: 0x5555_0000_0000,
            size: 4096,
            uuid: "abcdef".to_owned(),
        }];
        m.symbols = vec![Symbol::new(crate::module_id("/usr/bin/app"), 3, "main")];
        m.finished = true;
        m.target_pid = 1234;
        m.executable = "/usr/bin/app".to_owned();
        m.argv = vec!["app".to_owned(), "--flag".to_owned()];
        m.wall_start_unix_ns = 1_700_000_000_000_000_000;
        m.wall_end_unix_ns = Some(1_700_000_001_000_000_000);
        m.tracer_version = "0.1.0".to_owned();
        m.stop_reason = Some("sigint".to_owned());
        m.target_fate = Some(TargetFate::Signaled {
            signal: 11,
            core_dumped: false,
        });
        m.clock = Some(ClockInfo::tsc(TscCalibration::new(2_500_000_000, 100, 200)));
        m.detail_windows = vec![DetailWindow {
            thread_id: 4242,
            reason: "crash".to_owned(),
            index_seq_start: 5,
            index_seq_end: 9,
            records: 5,
        }];
        m
    }

    #[test]
    fn manifest__write_then_read__then_equal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let mut m = full_manifest();
        m.write_atomic(&path).unwrap();
        assert_eq!(Manifest::read(&path).unwrap(), m);
        assert!(!dir.path().join("manifest.json.tmp").exists());
    }

    #[test]
    fn manifest__written__then_original_keys_have_original_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let mut m = full_manifest();
        m.write_atomic(&path).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["format_version"], "2.1");
        assert_eq!(v["clock_type"], 3);
        assert_eq!(v["time_start_ns"], 11);
        assert_eq!(v["time_end_ns"], 99);
        assert_eq!(v["threads"][0]["id"], 4242);
        assert_eq!(v["threads"][0]["has_detail"], true);
        assert_eq!(v["modules"][0]["base_address"], 0x5555_0000_0000u64);
        let id = crate::module_id("/usr/bin/app");
        assert_eq!(
            v["symbols"][0]["function_id"],
            format!("0x{id:08x}00000003")
        );
        assert_eq!(v["symbols"][0]["symbol_index"], 3);
        assert_eq!(v["threads"][0]["index"]["dropped"]["future_reason"], 1);
        assert_eq!(v["target_fate"]["kind"], "signaled");

        m.modules.clear();
        m.symbols.clear();
        m.write_atomic(&path).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["format_version"], "2.0");
        assert!(v.get("modules").is_none() && v.get("symbols").is_none());
    }

    #[test]
    fn manifest__original_keys_only__then_parses_with_defaults() {
        let json = r#"{"format_version":"2.0","clock_type":1,"time_start_ns":5,"time_end_ns":6,
                       "threads":[{"id":0,"has_detail":false},{"id":1,"has_detail":true}]}"#;
        let m: Manifest = serde_json::from_str(json).unwrap();
        assert_eq!(m.threads.len(), 2);
        assert!(m.threads[1].has_detail);
        assert!(!m.finished);
        assert_eq!(m.accounting, Accounting::default());
    }

    #[test]
    fn manifest__bad_json__then_error_naming_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        for bad in ["{\"threads\": [", "{}", "[1,2]", ""] {
            fs::write(&path, bad).unwrap();
            let err = Manifest::read(&path).unwrap_err();
            assert!(matches!(err, Error::Manifest { .. }), "{err}");
            assert!(
                err.to_string().contains("manifest.json: invalid manifest"),
                "{err}"
            );
        }
    }

    #[test]
    fn manifest__replaced_while_read__then_reader_never_sees_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let mut m = full_manifest();
        m.write_atomic(&path).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                // Relaxed: a plain stop flag, no data is published through it.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                    let m = Manifest::read(&path).expect("every read sees a whole manifest");
                    assert!(!m.threads.is_empty());
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..100u32 {
            m.threads.push(ThreadEntry {
                id: 10_000 + i,
                ..ThreadEntry::default()
            });
            m.symbols
                .push(Symbol::new(1, i, "x".repeat(i as usize * 10)));
            m.write_atomic(&path).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(Manifest::read(&path).unwrap().threads.len(), 102);
    }

    mod faults {
        use super::*;
        use crate::fault::{FaultPlan, FaultyFs};
        use std::time::Duration;

        /// A manifest on disk (written without faults) and a different one to replace it with.
        fn old_and_new(dir: &Path) -> (std::path::PathBuf, Manifest, Manifest) {
            let path = dir.join("manifest.json");
            let mut old = full_manifest();
            old.write_atomic(&path).unwrap();
            let mut new = full_manifest();
            new.finished = true;
            new.symbols = (0..2000).map(|i| Symbol::new(1, i, "f")).collect();
            (path, old, new)
        }

        fn os_error(err: &Error, path: &Path) -> Option<i32> {
            match err {
                Error::Io {
                    path: at, source, ..
                } => {
                    assert_eq!(at, path, "{err}");
                    source.raw_os_error()
                }
                other => panic!("not an I/O error: {other}"),
            }
        }

        #[test]
        fn manifest__write_fails_with_enospc_or_eio__then_old_manifest_intact_and_no_temporary_left(
        ) {
            let plans = [
                (
                    FaultPlan::new().full_after(1000, libc::ENOSPC),
                    libc::ENOSPC,
                ),
                (FaultPlan::new().fail_write(2, libc::EIO), libc::EIO),
            ];
            for (plan, errno) in plans {
                let dir = tempfile::tempdir().unwrap();
                let (path, old, mut new) = old_and_new(dir.path());
                let fs = FaultyFs::new(plan.short_writes_every(1, 512));
                let err = new.write_atomic_with(&fs, &path).unwrap_err();
                let tmp = dir.path().join("manifest.json.tmp");
                assert_eq!(os_error(&err, &tmp), Some(errno));
                assert!(err.to_string().contains("left as it was"), "{err}");
                assert_eq!(Manifest::read(&path).unwrap(), old);
                assert!(!tmp.exists());
            }
        }

        #[test]
        fn manifest__fsync_fails__then_old_manifest_intact_and_error_says_state_unknown() {
            let dir = tempfile::tempdir().unwrap();
            let (path, old, mut new) = old_and_new(dir.path());
            let fs = FaultyFs::new(FaultPlan::new().fail_sync(1, libc::EIO));
            let err = new.write_atomic_with(&fs, &path).unwrap_err();
            let tmp = dir.path().join("manifest.json.tmp");
            assert_eq!(os_error(&err, &tmp), Some(libc::EIO));
            assert!(err.to_string().contains("unknown"), "{err}");
            assert_eq!(Manifest::read(&path).unwrap(), old);
            assert!(!tmp.exists());
            // The next write is a new file and a new fsync: it replaces the manifest.
            new.write_atomic_with(&fs, &path).unwrap();
            assert_eq!(Manifest::read(&path).unwrap(), new);
        }

        #[test]
        fn manifest__directory_fsync_fails__then_error_names_directory_and_new_manifest_in_place() {
            let dir = tempfile::tempdir().unwrap();
            let (path, _, mut new) = old_and_new(dir.path());
            // Sync 1 is the temporary file's, sync 2 the directory's.
            let fs = FaultyFs::new(FaultPlan::new().fail_sync(2, libc::EIO));
            let err = new.write_atomic_with(&fs, &path).unwrap_err();
            assert_eq!(os_error(&err, dir.path()), Some(libc::EIO));
            assert!(err.to_string().contains("unknown"), "{err}");
            assert_eq!(Manifest::read(&path).unwrap(), new);
        }

        #[test]
        fn manifest__eintr_storm_and_short_writes__then_replaced_whole() {
            let dir = tempfile::tempdir().unwrap();
            let (path, _, mut new) = old_and_new(dir.path());
            let fs = FaultyFs::new(
                FaultPlan::new()
                    .interrupt_writes_every(2)
                    .short_writes_every(1, 100),
            );
            new.write_atomic_with(&fs, &path).unwrap();
            assert_eq!(Manifest::read(&path).unwrap(), new);
            assert!(fs.injected().interrupts > 100, "{:?}", fs.injected());
        }

        #[test]
        fn manifest__slow_fsync__then_replaced() {
            let dir = tempfile::tempdir().unwrap();
            let (path, _, mut new) = old_and_new(dir.path());
            let fs = FaultyFs::new(FaultPlan::new().slow_sync(Duration::from_millis(5)));
            new.write_atomic_with(&fs, &path).unwrap();
            assert_eq!(Manifest::read(&path).unwrap(), new);
            assert_eq!(fs.injected().stalls, 2);
        }
    }

    #[test]
    fn counts__balanced__then_attempted_is_persisted_plus_every_drop() {
        let mut c = Counts {
            attempted: 11,
            persisted: 4,
            ..Counts::default()
        };
        c.dropped.ring_full = 1;
        c.dropped.shutdown = 1;
        c.dropped.registry_full = 1;
        c.dropped.agent_setup = 1;
        c.dropped.reentrant = 1;
        c.dropped.thread_teardown = 1;
        assert!(!c.balanced());
        c.dropped.other.insert("other".to_owned(), 1);
        assert!(c.balanced());
        let mut total = Counts::default();
        total.add(&c);
        total.add(&c);
        assert_eq!(total.attempted, 22);
        assert_eq!(total.dropped.total(), 14);
        assert!(total.balanced());
    }

    #[test]
    fn drops__agent_setup__then_readers_without_the_field_count_it_under_other() {
        /// `Drops` as readers before `agent_setup` declared it.
        #[derive(Deserialize)]
        struct Before {
            registry_full: u64,
            #[serde(flatten)]
            other: BTreeMap<String, u64>,
        }
        let d = Drops {
            registry_full: 2,
            agent_setup: 61,
            ..Drops::default()
        };
        let json = serde_json::to_string(&d).unwrap();
        let before: Before = serde_json::from_str(&json).unwrap();
        assert_eq!(before.registry_full, 2);
        assert_eq!(before.other.get("agent_setup"), Some(&61), "{json}");
        assert_eq!(
            before.registry_full + before.other.values().sum::<u64>(),
            d.total()
        );
        // Written only when something was dropped for it; a manifest without it reads as none.
        assert!(!serde_json::to_string(&Drops::default())
            .unwrap()
            .contains("agent_setup"));
        let old: Drops = serde_json::from_str(r#"{"registry_full": 2, "ring_full": 1}"#).unwrap();
        assert_eq!((old.agent_setup, old.total()), (0, 3));
    }

    #[test]
    fn tsc_calibration__to_ns__then_linear_through_the_reference_pair() {
        let cal = TscCalibration::new(2_000_000_000, 1_000, 50);
        assert_eq!(cal.to_ns(1_000), 50);
        assert_eq!(cal.to_ns(1_000 + 2_000_000_000), 1_000_000_050);
        assert_eq!(cal.to_ns(0), 0, "before the reference, saturating at 0");
        let slow = TscCalibration::new(1_000_000_000, 0, 0);
        assert_eq!(slow.to_ns(123_456_789_012), 123_456_789_012);
    }

    #[test]
    fn symbol__function_id__then_parsed_back() {
        let s = Symbol::new(0xdead_beef, 42, "f");
        assert_eq!(s.function_id, "0xdeadbeef0000002a");
        assert_eq!(s.function_id(), Some(0xdead_beef_0000_002a));
        assert_eq!(
            Symbol {
                function_id: "zz".to_owned(),
                ..s
            }
            .function_id(),
            None
        );
    }
}
