//! Fault injection for tests and the simulation: [`FaultyFs`], a [`FileSystem`] over real files
//! that fails writes and syncs as a [`FaultPlan`] says.
//!
//! The plan is explicit and the faults depend only on the order of the calls, never on time or
//! chance, so a schedule that ran once runs the same way again ([`FaultPlan::random`] derives a
//! plan from a seed). Counts are kept over every file the plan applies to, so "the 5th write"
//! and "after 1 MiB" mean the 5th write and the first MiB of the whole file system, as on a disk
//! that fills up. A slow sync calls a stall hook (by default `std::thread::sleep`; a model
//! checker passes one that yields), with no lock held.
//!
//! ```
//! use std::sync::Arc;
//! use atf::fault::{FaultPlan, FaultyFs};
//! # fn main() -> atf::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let plan = FaultPlan::new()
//!     .only_paths_containing("index.atf")
//!     .interrupt_writes_every(2)
//!     .full_after(64 + 10 * 32 + 5, libc::ENOSPC);
//! let fs = Arc::new(FaultyFs::new(plan));
//! let path = dir.path().join("index.atf");
//! let mut writer = atf::IndexWriter::create_with(&*fs, &path, 1, atf::ClockType::Boottime)?;
//! writer.append(&[0u8; 20 * 32])?; // buffered
//! let err = writer.flush().unwrap_err(); // 10 events and 5 bytes fit, then ENOSPC
//! assert!(matches!(&err, atf::Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)));
//! assert_eq!(atf::IndexReader::open(&path)?.event_count(), 10);
//! assert!(fs.injected().interrupts > 0);
//! # Ok(()) }
//! ```

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::sink::{Dir, FileSink, FileSystem, RealFs};

/// Which faults a [`FaultyFs`] injects, built with the methods below (none by default).
///
/// Write calls and sync calls are numbered from 1 over every file the plan applies to, in the
/// order they happen; an interrupted call counts too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    paths_containing: Option<String>,
    space: Option<(u64, i32)>,
    interrupt_every: u64,
    short_every: u64,
    short_max: usize,
    fail_write: Option<WriteFailure>,
    fail_sync: Option<(u64, i32)>,
    fail_sync_fs: Option<i32>,
    slow_sync: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WriteFailure {
    nth: u64,
    errno: i32,
    sticky: bool,
}

impl FaultPlan {
    /// A plan that injects nothing: a [`FaultyFs`] with it behaves as [`RealFs`].
    pub fn new() -> Self {
        FaultPlan::default()
    }

    /// Applies the faults only to operations on paths containing `part` (e.g. `"index.atf"`,
    /// `"detail.atf"`, `".atf"`, `"manifest"`); the others pass through untouched and are not
    /// counted. For a directory sync or a `syncfs` the path is the directory's.
    pub fn only_paths_containing(mut self, part: impl Into<String>) -> Self {
        self.paths_containing = Some(part.into());
        self
    }

    /// A disk that fills up: once `bytes` bytes have been added to files in total, a write that
    /// would grow a file fails with `errno` (`libc::ENOSPC`, or `libc::EFBIG` for a size limit).
    /// The write that crosses the limit is cut short at it (a short write), as `write(2)` does.
    /// Overwriting bytes a file already has needs no space and still works.
    pub fn full_after(mut self, bytes: u64, errno: i32) -> Self {
        self.space = Some((bytes, errno));
        self
    }

    /// Every `every`-th write call fails with `EINTR`, having written nothing (`every` below 2 is
    /// taken as 2: a file system that is always interrupted never makes progress).
    pub fn interrupt_writes_every(mut self, every: u64) -> Self {
        self.interrupt_every = every.max(2);
        self
    }

    /// Every `every`-th write call (at least 1) writes at most `max` bytes (at least 1).
    pub fn short_writes_every(mut self, every: u64, max: usize) -> Self {
        self.short_every = every.max(1);
        self.short_max = max.max(1);
        self
    }

    /// The `nth` write call fails with `errno` (e.g. `libc::EIO`), writing nothing; the others
    /// work.
    pub fn fail_write(mut self, nth: u64, errno: i32) -> Self {
        self.fail_write = Some(WriteFailure {
            nth,
            errno,
            sticky: false,
        });
        self
    }

    /// The `nth` write call and every later one fail with `errno`, writing nothing (a device
    /// that went bad).
    pub fn fail_writes_from(mut self, nth: u64, errno: i32) -> Self {
        self.fail_write = Some(WriteFailure {
            nth,
            errno,
            sticky: true,
        });
        self
    }

    /// The `nth` sync call (a file's `fsync`/`fdatasync`, a directory's `fsync`, or `syncfs`)
    /// fails with `errno` without syncing.
    pub fn fail_sync(mut self, nth: u64, errno: i32) -> Self {
        self.fail_sync = Some((nth, errno));
        self
    }

    /// Every session-wide sync fails with `errno` without syncing: `syncfs`, and the
    /// end-of-session fsync of each finished file by its path ([`FileSystem::sync_file`]).
    pub fn fail_sync_fs(mut self, errno: i32) -> Self {
        self.fail_sync_fs = Some(errno);
        self
    }

    /// Every sync call first stalls for `duration` (see [`FaultyFs::with_stall`]).
    pub fn slow_sync(mut self, duration: Duration) -> Self {
        self.slow_sync = Some(duration);
        self
    }

    /// A plan derived from `seed` alone: some mix of interrupts, short writes, a full disk, a
    /// failing write and a failing sync, with small enough numbers that they fire within a few
    /// megabytes. Combine with [`only_paths_containing`](Self::only_paths_containing) to spare
    /// some files.
    pub fn random(seed: u64) -> Self {
        let mut r = SplitMix64(seed);
        let mut plan = FaultPlan::new();
        if r.below(2) == 0 {
            plan = plan.interrupt_writes_every(2 + r.below(7));
        }
        if r.below(2) == 0 {
            plan = plan.short_writes_every(1 + r.below(5), 512 + r.below(8192) as usize);
        }
        let errno = [libc::EIO, libc::ENOSPC, libc::EFBIG][r.below(3) as usize];
        match r.below(4) {
            0 => plan = plan.full_after(r.below(2 << 20), errno),
            1 => plan = plan.fail_write(1 + r.below(64), errno),
            2 => plan = plan.fail_writes_from(1 + r.below(64), errno),
            _ => {}
        }
        if r.below(4) == 0 {
            plan = plan.fail_sync(1 + r.below(4), libc::EIO);
        }
        plan
    }

    fn applies_to(&self, path: &Path) -> bool {
        self.paths_containing
            .as_ref()
            .map_or(true, |part| path.to_string_lossy().contains(part.as_str()))
    }
}

/// What a [`FaultyFs`] did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// Write calls on files the plan applies to.
    pub write_calls: u64,
    /// Sync calls on files and directories the plan applies to.
    pub sync_calls: u64,
    /// Writes failed with `EINTR`.
    pub interrupts: u64,
    /// Writes cut short (by the plan's short writes or at the full-disk limit).
    pub short_writes: u64,
    /// Writes failed with an error other than `EINTR` (full disk included).
    pub write_errors: u64,
    /// Syncs failed.
    pub sync_errors: u64,
    /// Syncs stalled.
    pub stalls: u64,
    /// Bytes added to files the plan applies to.
    pub bytes_added: u64,
}

/// The stall hook of slow syncs.
type Stall = dyn Fn(Duration) + Send + Sync;

struct Shared {
    state: Mutex<State>,
    stall: Box<Stall>,
}

struct State {
    plan: FaultPlan,
    injected: Injected,
}

impl Shared {
    /// The state; a panic elsewhere while it was held leaves plain counters, still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The decisions for one sync call on a path the plan applies to, taken under the lock; the
    /// stall then runs without it.
    fn sync(&self, fs_wide: bool, real: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let (stall, fail) = {
            let mut st = self.lock();
            st.injected.sync_calls += 1;
            let call = st.injected.sync_calls;
            let plan = &st.plan;
            let stall = plan.slow_sync;
            let fail = plan
                .fail_sync
                .filter(|&(nth, _)| nth == call)
                .map(|(_, errno)| errno)
                .or(plan.fail_sync_fs.filter(|_| fs_wide));
            st.injected.stalls += u64::from(stall.is_some());
            st.injected.sync_errors += u64::from(fail.is_some());
            (stall, fail)
        };
        if let Some(duration) = stall {
            (self.stall)(duration);
        }
        match fail {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => real(),
        }
    }
}

/// A [`FileSystem`] over real files that injects the faults of its [`FaultPlan`]. Share it as
/// an `Arc` (e.g. with [`crate::SessionLayout::with_fs`]) and read [`injected`](Self::injected)
/// afterwards to see what fired.
pub struct FaultyFs {
    shared: Arc<Shared>,
}

impl FaultyFs {
    /// A file system injecting `plan`'s faults; a slow sync sleeps.
    pub fn new(plan: FaultPlan) -> Self {
        FaultyFs::with_stall(plan, std::thread::sleep)
    }

    /// A file system injecting `plan`'s faults; a slow sync calls `stall` with the plan's
    /// duration instead of sleeping (a model checker's scheduler can yield there, or a test can
    /// count the calls). It is called with no lock held, on the syncing thread.
    pub fn with_stall(plan: FaultPlan, stall: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        FaultyFs {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    plan,
                    injected: Injected::default(),
                }),
                stall: Box::new(stall),
            }),
        }
    }

    /// The plan.
    pub fn plan(&self) -> FaultPlan {
        self.shared.lock().plan.clone()
    }

    /// What was injected so far.
    pub fn injected(&self) -> Injected {
        self.shared.lock().injected
    }

    fn open(&self, dir: &Dir, name: &str) -> io::Result<Box<dyn FileSink>> {
        let file = dir.create_file(name, safedir::PRIVATE_FILE)?;
        let path = dir.join(name);
        Ok(Box::new(FaultyFile {
            file,
            faulty: self.shared.lock().plan.applies_to(&path),
            path,
            pos: 0,
            len: 0,
            shared: self.shared.clone(),
        }))
    }

    fn applies_to(&self, path: &Path) -> bool {
        self.shared.lock().plan.applies_to(path)
    }
}

impl fmt::Debug for FaultyFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("FaultyFs")
            .field("plan", &st.plan)
            .field("injected", &st.injected)
            .finish()
    }
}

impl FileSystem for FaultyFs {
    fn create_new(&self, dir: &Dir, name: &str) -> io::Result<Box<dyn FileSink>> {
        self.open(dir, name)
    }

    fn rename(&self, dir: &Dir, from: &str, to: &str) -> io::Result<()> {
        RealFs.rename(dir, from, to)
    }

    fn remove_file(&self, dir: &Dir, name: &str) -> io::Result<()> {
        RealFs.remove_file(dir, name)
    }

    fn sync_dir(&self, dir: &Dir) -> io::Result<()> {
        if !self.applies_to(dir.path()) {
            return RealFs.sync_dir(dir);
        }
        self.shared.sync(false, || RealFs.sync_dir(dir))
    }

    fn sync_fs(&self, dir: &Dir) -> io::Result<()> {
        if !self.applies_to(dir.path()) {
            return RealFs.sync_fs(dir);
        }
        self.shared.sync(true, || RealFs.sync_fs(dir))
    }

    fn sync_file(&self, dir: &Dir, name: &str) -> io::Result<()> {
        if !self.applies_to(&dir.join(name)) {
            return RealFs.sync_file(dir, name);
        }
        // The end-of-session syncs of finished files: `fail_sync_fs` fails them all.
        self.shared.sync(true, || RealFs.sync_file(dir, name))
    }
}

/// A file of a [`FaultyFs`]: a real file, written with positioned writes at the position and
/// length it tracks (it was created empty).
struct FaultyFile {
    file: File,
    path: PathBuf,
    /// Whether the plan applies to this file.
    faulty: bool,
    /// Position of the next sequential write.
    pos: u64,
    /// File length: the end of the furthest byte written.
    len: u64,
    shared: Arc<Shared>,
}

impl fmt::Debug for FaultyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyFile")
            .field("path", &self.path)
            .field("faulty", &self.faulty)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl FaultyFile {
    /// One write of `bytes` at `at`, after the plan's faults; moves the position if `sequential`.
    fn write_faulty(&mut self, bytes: &[u8], at: u64, sequential: bool) -> io::Result<usize> {
        if !self.faulty {
            return self.write_real(bytes, at, sequential);
        }
        let shared = self.shared.clone();
        // Held across the real write: the counts and the space stay consistent, and a write
        // never yields to a scheduler, so nothing waits on this lock.
        let mut st = shared.lock();
        st.injected.write_calls += 1;
        let call = st.injected.write_calls;
        let plan = st.plan.clone();
        if plan.interrupt_every > 0 && call % plan.interrupt_every == 0 {
            st.injected.interrupts += 1;
            return Err(io::Error::from_raw_os_error(libc::EINTR));
        }
        if let Some(f) = plan.fail_write {
            if call == f.nth || (f.sticky && call > f.nth) {
                st.injected.write_errors += 1;
                return Err(io::Error::from_raw_os_error(f.errno));
            }
        }
        let mut n = bytes.len();
        if let Some((space, errno)) = plan.space {
            let left = space.saturating_sub(st.injected.bytes_added);
            // Bytes from `at` on that fit: up to the current end, plus the space left.
            let room = (self.len + left).saturating_sub(at);
            if room == 0 {
                st.injected.write_errors += 1;
                return Err(io::Error::from_raw_os_error(errno));
            }
            if room < n as u64 {
                n = room as usize;
                st.injected.short_writes += 1;
            }
        }
        if plan.short_every > 0 && call % plan.short_every == 0 && n > plan.short_max {
            n = plan.short_max;
            st.injected.short_writes += 1;
        }
        let before = self.len;
        let written = self.write_real(&bytes[..n], at, sequential)?;
        st.injected.bytes_added += self.len - before;
        Ok(written)
    }

    fn write_real(&mut self, bytes: &[u8], at: u64, sequential: bool) -> io::Result<usize> {
        let written = self.file.write_at(bytes, at)?;
        let end = at + written as u64;
        self.len = self.len.max(end);
        if sequential {
            self.pos = end;
        }
        Ok(written)
    }

    fn sync(&mut self, real: impl FnOnce(&File) -> io::Result<()>) -> io::Result<()> {
        if !self.faulty {
            return real(&self.file);
        }
        let file = &self.file;
        self.shared.sync(false, || real(file))
    }
}

impl FileSink for FaultyFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_faulty(bytes, self.pos, true)
    }

    fn write_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<usize> {
        self.write_faulty(bytes, offset, false)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.sync(File::sync_data)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync(File::sync_all)
    }

    fn start_writeback(&mut self) {
        FileSink::start_writeback(&mut self.file);
    }
}

/// A small deterministic generator for [`FaultPlan::random`].
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use crate::sink::write_all;

    fn errno(result: io::Result<usize>) -> Option<i32> {
        result.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn faulty_fs__full_after__then_crossing_write_is_short_and_the_next_fails() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open(dir.path()).unwrap();
        let fs = FaultyFs::new(FaultPlan::new().full_after(10, libc::ENOSPC));
        let path = dir.path().join("a");
        let mut f = fs.create_new(&d, "a").unwrap();
        assert_eq!(f.write(b"0123456").unwrap(), 7);
        assert_eq!(f.write(b"789abcdef").unwrap(), 3);
        assert_eq!(errno(f.write(b"x")), Some(libc::ENOSPC));
        // Overwriting needs no space.
        assert_eq!(f.write_at(b"AB", 0).unwrap(), 2);
        // A write over the end is cut where the space runs out.
        assert_eq!(f.write_at(b"xyz", 9).unwrap(), 1);
        assert_eq!(std::fs::read(&path).unwrap(), b"AB2345678x");
        // The space is the file system's: another file finds it full too.
        let mut g = fs.create_new(&d, "b").unwrap();
        assert_eq!(errno(g.write(b"x")), Some(libc::ENOSPC));
        let injected = fs.injected();
        assert_eq!(injected.bytes_added, 10);
        assert_eq!(injected.short_writes, 2);
        assert_eq!(injected.write_errors, 2);
    }

    #[test]
    fn faulty_fs__nth_write_and_sticky_failures__then_fail_on_those_calls_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open(dir.path()).unwrap();
        let fs = FaultyFs::new(FaultPlan::new().fail_write(2, libc::EIO));
        let mut f = fs.create_new(&d, "a").unwrap();
        let results: Vec<Option<i32>> = (0..4).map(|_| errno(f.write(b"x"))).collect();
        assert_eq!(results, [None, Some(libc::EIO), None, None]);

        let fs = FaultyFs::new(FaultPlan::new().fail_writes_from(2, libc::EIO));
        let mut f = fs.create_new(&d, "b").unwrap();
        let results: Vec<Option<i32>> = (0..4).map(|_| errno(f.write(b"x"))).collect();
        assert_eq!(
            results,
            [None, Some(libc::EIO), Some(libc::EIO), Some(libc::EIO)]
        );
    }

    #[test]
    fn faulty_fs__interrupts_and_short_writes__then_write_all_puts_every_byte_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open(dir.path()).unwrap();
        let fs = FaultyFs::new(
            FaultPlan::new()
                .interrupt_writes_every(2)
                .short_writes_every(1, 3),
        );
        let path = dir.path().join("a");
        let mut f = fs.create_new(&d, "a").unwrap();
        let bytes: Vec<u8> = (0..=255).collect();
        write_all(&mut *f, &bytes).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let injected = fs.injected();
        assert_eq!(injected.interrupts, injected.write_calls / 2);
        // `every` 1 would never make progress: taken as 2.
        let fs = FaultyFs::new(FaultPlan::new().interrupt_writes_every(1));
        let mut f = fs.create_new(&d, "b").unwrap();
        write_all(&mut *f, b"abc").unwrap();
    }

    #[test]
    fn faulty_fs__paths_not_matching__then_untouched_and_uncounted() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open(dir.path()).unwrap();
        let fs = FaultyFs::new(
            FaultPlan::new()
                .only_paths_containing("index.atf")
                .fail_writes_from(1, libc::EIO)
                .fail_sync(1, libc::EIO)
                .fail_sync_fs(libc::EIO),
        );
        let mut other = fs.create_new(&d, "manifest.json.tmp").unwrap();
        assert_eq!(other.write(b"{}").unwrap(), 2);
        other.sync_all().unwrap();
        fs.sync_dir(&d).unwrap();
        fs.sync_fs(&d).unwrap();
        assert_eq!(fs.injected(), Injected::default());
        let mut index = fs.create_new(&d, "index.atf").unwrap();
        assert_eq!(errno(index.write(b"x")), Some(libc::EIO));
        assert_eq!(
            index.sync_all().unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
    }

    #[test]
    fn faulty_fs__syncs__then_nth_fails_syncfs_fails_and_slow_ones_call_the_stall_hook() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open(dir.path()).unwrap();
        let stalls = Arc::new(Mutex::new(Vec::new()));
        let seen = stalls.clone();
        let plan = FaultPlan::new()
            .fail_sync(2, libc::EIO)
            .fail_sync_fs(libc::EROFS)
            .slow_sync(Duration::from_secs(60));
        let fs = FaultyFs::with_stall(plan, move |d| seen.lock().unwrap().push(d));
        let mut f = fs.create_new(&d, "a").unwrap();
        f.sync_data().unwrap();
        assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(libc::EIO));
        fs.sync_dir(&d).unwrap();
        let err = fs.sync_fs(&d).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        assert_eq!(*stalls.lock().unwrap(), [Duration::from_secs(60); 4]);
        let injected = fs.injected();
        assert_eq!((injected.sync_calls, injected.sync_errors), (4, 2));
    }

    #[test]
    fn fault_plan__random__then_same_seed_same_plan_and_every_kind_drawn() {
        assert_eq!(FaultPlan::random(7), FaultPlan::random(7));
        let plans: Vec<FaultPlan> = (0..200).map(FaultPlan::random).collect();
        assert!(plans.iter().any(|p| p.interrupt_every > 0));
        assert!(plans.iter().any(|p| p.short_every > 0));
        assert!(plans.iter().any(|p| p.space.is_some()));
        assert!(plans.iter().any(|p| p.fail_write.is_some_and(|f| f.sticky)));
        assert!(plans
            .iter()
            .any(|p| p.fail_write.is_some_and(|f| !f.sticky)));
        assert!(plans.iter().any(|p| p.fail_sync.is_some()));
        assert!(plans.iter().any(|p| *p == FaultPlan::new()));
    }
}
