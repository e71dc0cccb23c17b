//! The session directory: `<output>/session_<YYYYmmdd_HHMMSS>/pid_<pid>/` with `manifest.json` and one
//! `thread_<tid>/` per thread.

use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::detail::{DetailReader, DetailWriter};
use crate::error::{Error, Result};
use crate::index::{IndexReader, IndexWriter};
use crate::manifest::Manifest;
use crate::sink::{self, Dir, FileSystem, RealFs};
use crate::verify::Damage;
use crate::{ClockType, EventFormat};

/// File name of the manifest inside a pid directory.
const MANIFEST: &str = "manifest.json";
/// The session's names so far, beside its `pid_<pid>` directories (see
/// [`SessionLayout::write_names`]).
const NAMES: &str = "names.json";

/// fsyncs a directory, so the entries created or renamed in it survive a crash.
pub fn fsync_dir(dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    let handle = Dir::open(dir).map_err(|e| Error::io(dir, "open the directory", e))?;
    sync_dir_with(&RealFs, &handle)
}

/// The most fsyncs [`SessionLayout::sync_session`] runs at once: enough for a 64-thread session's
/// files and directories to be in flight together. Each fsync ends with a flush of the disk's
/// write cache, and the block layer serves the flushes that wait at the same time with one; with
/// 8 at a time, 64 threads' ~130 fsyncs were ~17 flushes one after another (3-6 ms each on a
/// shared virtual disk), with all of them at once, 2 or 3.
pub const SYNC_WORKERS: usize = 128;

/// One thing [`SessionLayout::sync_session`] makes durable.
enum Durable<'a> {
    /// A file, by its directory and name.
    File(&'a Dir, &'a str),
    /// A directory's entries.
    Dir(&'a Dir),
}

/// Runs `job` on every item, on up to [`SYNC_WORKERS`] threads; every item is tried, the first
/// error (in item order) is returned.
fn in_parallel<T: Sync>(items: &[T], job: &(dyn Fn(&T) -> Result<()> + Sync)) -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let next = AtomicUsize::new(0);
    let mut errors: Vec<(usize, Error)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..SYNC_WORKERS.min(items.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut errors = Vec::new();
                    // Relaxed: only hands out indices; the scope's join publishes the results.
                    loop {
                        let at = next.fetch_add(1, Relaxed);
                        let Some(item) = items.get(at) else { break };
                        if let Err(e) = job(item) {
                            errors.push((at, e));
                        }
                    }
                    errors
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    errors.sort_by_key(|(at, _)| *at);
    errors.into_iter().next().map_or(Ok(()), |(_, e)| Err(e))
}

fn sync_dir_with(fs: &dyn FileSystem, dir: &Dir) -> Result<()> {
    sink::sync_retrying(|| fs.sync_dir(dir)).map_err(|e| {
        Error::io(
            dir.path(),
            "fsync the directory; after a failed fsync whether its entries survive a crash is \
             unknown",
            e,
        )
    })
}

/// Where a recording puts its files. Creating one makes the directories; the writers and the
/// manifest go where its paths say, through its [`FileSystem`] ([`RealFs`] unless replaced with
/// [`with_fs`](Self::with_fs)). Two layouts are equal when their directories are.
///
/// Everything is created through directory handles ([`Dir`]): the session and process
/// directories with `mkdirat` (mode 0700) and opened without following links, the thread
/// directories inside the process directory's handle, the files new (`O_EXCL | O_NOFOLLOW`, mode
/// 0600). Once created, the session cannot be redirected by renaming or replacing a directory on
/// its path: the handles keep pointing at the directories that were made.
#[derive(Clone, Debug)]
pub struct SessionLayout {
    session: Arc<Dir>,
    pid: Arc<Dir>,
    fs: Arc<dyn FileSystem>,
    /// Whether [`RESERVE`] holds space for the final manifest (see
    /// [`with_manifest_reserve`](SessionLayout::with_manifest_reserve)).
    reserve: Arc<std::sync::atomic::AtomicBool>,
    format: EventFormat,
}

impl PartialEq for SessionLayout {
    fn eq(&self, other: &Self) -> bool {
        self.session.path() == other.session.path() && self.pid.path() == other.pid.path()
    }
}

impl Eq for SessionLayout {}

impl SessionLayout {
    /// Creates `<output>/session_<local YYYYmmdd_HHMMSS>/pid_<pid>/`, and `output` if needed (the
    /// parts of it that do not exist are made private, through their parents' handles; the parts
    /// that exist are followed as given). If a session directory of that second exists, the name
    /// gets a suffix `_2`, `_3`, ...
    pub fn create(output: impl AsRef<Path>, pid: u32) -> Result<Self> {
        let output = output.as_ref();
        let dir = Dir::create_all(output, safedir::PRIVATE_DIR).map_err(|e| {
            Error::io(
                output,
                "create the output directory (is its parent writable?)",
                e,
            )
        })?;
        Self::create_in(&dir, pid)
    }

    /// Creates `session_<local YYYYmmdd_HHMMSS>/pid_<pid>/` in the open directory `output`.
    pub fn create_in(output: &Dir, pid: u32) -> Result<Self> {
        let stamp = local_timestamp();
        let mut session = None;
        for n in 1..=1000u32 {
            let name = if n == 1 {
                format!("session_{stamp}")
            } else {
                format!("session_{stamp}_{n}")
            };
            match output.create_dir(&name, safedir::PRIVATE_DIR) {
                Ok(dir) => {
                    session = Some(dir);
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::io(
                        &output.join(&name),
                        "create the session directory (is the output directory writable?)",
                        e,
                    ))
                }
            }
        }
        let session = session.ok_or_else(|| {
            Error::io(
                output.path(),
                "find a free session directory name (1000 sessions this second; clean up)",
                ErrorKind::AlreadyExists.into(),
            )
        })?;
        let name = format!("pid_{pid}");
        let pid = session
            .create_dir(&name, safedir::PRIVATE_DIR)
            .map_err(|e| Error::io(&session.join(&name), "create the process directory", e))?;
        sync_dir_with(&RealFs, &session)?;
        sync_dir_with(&RealFs, output)?;
        Ok(SessionLayout {
            session: Arc::new(session),
            pid: Arc::new(pid),
            fs: Arc::new(RealFs),
            reserve: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            format: EventFormat::default(),
        })
    }

    /// Sets `bytes` of disk space aside in the process directory (a hidden file, allocated now),
    /// so the final manifest can still be written when the disk fills up during the recording:
    /// if writing a [finished](Manifest::finished) manifest fails for lack of space, the reserve
    /// is given back and the write tried once more. Best effort: without the space (or under a
    /// smaller file-size limit) there is no reserve, and the session is recorded all the same.
    pub fn with_manifest_reserve(self, bytes: u64) -> Self {
        let made = self
            .pid
            .create_file(RESERVE, safedir::PRIVATE_FILE)
            .and_then(|file| {
                use std::os::fd::AsRawFd;
                // SAFETY: posix_fallocate on the file we just created; no memory is passed.
                let rc =
                    unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::from_raw_os_error(rc))
                }
            });
        match made {
            Ok(()) => self
                .reserve
                .store(true, std::sync::atomic::Ordering::Relaxed),
            Err(_) => {
                let _ = self.pid.remove_file(RESERVE);
            }
        }
        self
    }

    /// Gives the manifest reserve back (removes its file). Returns whether there was one.
    fn release_reserve(&self) -> bool {
        // Relaxed: the flag only guards the unlink, which the directory handle serializes.
        if !self
            .reserve
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return false;
        }
        self.pid.remove_file(RESERVE).is_ok()
    }

    /// The layout of another process of the same session: `<session>/pid_<pid>/` (private),
    /// created through the session directory's handle if it does not exist yet, writing through
    /// the same file system in the same event format (a followed fork child).
    pub fn process(&self, pid: u32) -> Result<Self> {
        let name = format!("pid_{pid}");
        let dir = match self.session.create_dir(&name, safedir::PRIVATE_DIR) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => self.session.open_dir_nofollow(&name),
            other => other,
        }
        .map_err(|e| Error::io(&self.session.join(&name), "create the process directory", e))?;
        Ok(SessionLayout {
            session: self.session.clone(),
            pid: Arc::new(dir),
            fs: self.fs.clone(),
            reserve: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            format: self.format,
        })
    }

    /// The same layout, its files written through `fs` from now on: the trace files, the
    /// manifest and the syncs (e.g. a [`crate::fault::FaultyFs`] in tests and the simulation).
    pub fn with_fs(mut self, fs: Arc<dyn FileSystem>) -> Self {
        self.fs = fs;
        self
    }

    /// The same layout, writing threads' events in `format` from now on ([`EventFormat::Atc`]
    /// unless set).
    pub fn with_format(mut self, format: EventFormat) -> Self {
        self.format = format;
        self
    }

    /// The encoding of the threads' event files.
    pub fn format(&self) -> EventFormat {
        self.format
    }

    /// The file system the layout's files are written through.
    pub fn fs(&self) -> &Arc<dyn FileSystem> {
        &self.fs
    }

    /// `<output>/session_<...>`.
    pub fn session_dir(&self) -> &Path {
        self.session.path()
    }

    /// `<session>/pid_<pid>`, the directory readers open.
    pub fn pid_dir(&self) -> &Path {
        self.pid.path()
    }

    /// The open process directory, which the manifest and the thread directories are made in.
    pub fn pid_handle(&self) -> &Dir {
        &self.pid
    }

    /// `<pid dir>/manifest.json`.
    pub fn manifest_path(&self) -> PathBuf {
        self.pid.join(MANIFEST)
    }

    /// `<pid dir>/thread_<tid>`.
    pub fn thread_dir(&self, tid: u32) -> PathBuf {
        self.pid.join(&thread_name(tid))
    }

    /// `<pid dir>/thread_<tid>/index.atc` (or `index.atf`, see [`with_format`](Self::with_format)).
    pub fn index_path(&self, tid: u32) -> PathBuf {
        self.thread_dir(tid).join(self.format.file_name())
    }

    /// `<pid dir>/thread_<tid>/detail.atf`.
    pub fn detail_path(&self, tid: u32) -> PathBuf {
        self.thread_dir(tid).join(DETAIL)
    }

    /// Creates the thread's directory if needed and its event file, in the layout's format.
    pub fn create_index(&self, tid: u32, clock: ClockType) -> Result<IndexWriter> {
        let dir = self.ensure_thread_dir(tid)?;
        let name = self.format.file_name();
        IndexWriter::create_in_format(&*self.fs, &dir, name, tid, clock, self.format)
    }

    /// Creates the thread's directory if needed and its `detail.atf`.
    pub fn create_detail(&self, tid: u32) -> Result<DetailWriter> {
        let dir = self.ensure_thread_dir(tid)?;
        DetailWriter::create_in(&*self.fs, &dir, DETAIL, tid)
    }

    /// Writes `manifest` atomically to [`manifest_path`](Self::manifest_path), renaming within
    /// the process directory's handle. The final manifest (`finished`) uses the reserve if the
    /// disk is full (see [`with_manifest_reserve`](Self::with_manifest_reserve)), and the reserve
    /// is given back once it is written.
    pub fn write_manifest(&self, manifest: &mut Manifest) -> Result<()> {
        let written = manifest.write_atomic_in(&*self.fs, &self.pid, MANIFEST);
        if !manifest.finished {
            return written;
        }
        let written = match written {
            Err(Error::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
                    && self.release_reserve() =>
            {
                manifest.write_atomic_in(&*self.fs, &self.pid, MANIFEST)
            }
            other => other,
        };
        self.release_reserve();
        written
    }

    /// [`write_manifest`](Self::write_manifest) without its fsyncs (and without the reserve): the
    /// manifest is durable only once the caller fsyncs it and the process directory (see
    /// [`sync_session`](Self::sync_session)). A session with many processes writes many
    /// manifests.
    pub fn write_manifest_unsynced(&self, manifest: &mut Manifest) -> Result<()> {
        manifest.write_atomic_unsynced_in(&*self.fs, &self.pid, MANIFEST)
    }

    /// Writes the names of the session's functions known so far to `<session>/names.json`, as
    /// the tracer learns them: `names` is a manifest of which only `modules` and `symbols` count
    /// (every process image's, their addresses tagged by image, so one file serves every
    /// process). Atomic and durable as [`write_manifest`](Self::write_manifest), through the
    /// session directory's handle. A reader whose manifest lists no modules and no symbols (the
    /// tracer was killed before its final manifest) takes them from this file.
    pub fn write_names(&self, names: &mut Manifest) -> Result<()> {
        names.write_atomic_in(&*self.fs, &self.session, NAMES)
    }

    /// Removes `<session>/names.json` (see [`write_names`](Self::write_names)) once every
    /// manifest holds its names; nothing if there is none.
    pub fn remove_names(&self) -> Result<()> {
        match self.session.remove_file(NAMES) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io(
                &self.session.join(NAMES),
                "remove the names kept while recording",
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Reads the manifest back through the process directory's handle.
    pub fn read_manifest(&self) -> Result<Manifest> {
        let path = self.manifest_path();
        let file = self
            .pid
            .open_file(MANIFEST)
            .map_err(|e| Error::io(&path, "read the manifest", e))?;
        Manifest::from_reader(file, &path)
    }

    /// Makes everything on the session's file system durable with one `syncfs(2)`: every trace
    /// file (also those finished with `finish_unsynced`), the manifest and every directory, in one
    /// journal commit instead of one fsync per file and directory (64 threads: ~1 s of fsyncs
    /// become one call). It also flushes other dirty data of that file system.
    ///
    /// A failure is final: the kernel may have dropped pages it could not write, and a later sync
    /// that succeeds does not bring them back, so the session's durability is then unknown.
    pub fn sync_filesystem(&self) -> Result<()> {
        sink::sync_retrying(|| self.fs.sync_fs(&self.session)).map_err(|e| {
            Error::io(
                self.session.path(),
                "sync the file system (is the disk failing?); after a failed sync what reached \
                 the disk is unknown: the session reads back now but may not survive a crash",
                e,
            )
        })
    }

    /// Makes the session durable, and only the session: the trace files of every thread
    /// directory (`index.atc` or `index.atf`, `detail.atf` where it exists) and every directory
    /// (thread, process, session) are fsynced, all at once, through the directory handles the
    /// session was created with, so a session directory renamed or replaced by a link meanwhile
    /// cannot redirect a sync. Unlike `syncfs`, it never waits for other programs' dirty data on
    /// the same file system. The fsyncs run on up to [`SYNC_WORKERS`] threads at once, so the
    /// file system and the disk serve them together (one journal commit, one cache flush for
    /// many files) instead of one after another.
    /// Returns how many files and directories were synced.
    ///
    /// `others` are the session's other processes (followed children, see [`Self::process`]):
    /// their trace files, their manifests (written with
    /// [`write_manifest_unsynced`](Self::write_manifest_unsynced)) and their directories are
    /// synced with this process's, in the same parallel pass.
    ///
    /// A failure is final (see [`Self::sync_filesystem`]); the first one is returned, naming its
    /// file, after every other sync was tried.
    pub fn sync_session(&self, others: &[&SessionLayout]) -> Result<usize> {
        let mut dirs = self.thread_dirs()?;
        let mut manifests = Vec::new();
        for other in others {
            dirs.extend(other.thread_dirs()?);
            manifests.push(&*other.pid);
        }
        let fs = &*self.fs;
        let files: Vec<(&Dir, &str)> = dirs
            .iter()
            .flat_map(|dir| [(dir, INDEX_ATC), (dir, INDEX_ATF), (dir, DETAIL)])
            .chain(manifests.iter().map(|&dir| (dir, MANIFEST)))
            .collect();
        let synced = std::sync::atomic::AtomicUsize::new(0);
        let sync_file = |&(dir, name): &(&Dir, &str)| {
            match sink::sync_retrying(|| fs.sync_file(dir, name)) {
                Ok(()) => {
                    // Relaxed: a count read after the scope's join.
                    synced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                }
                // A file that was never created (no detail records, or its creation failed and
                // its events are `not_written`) has nothing to sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(
                    &dir.join(name),
                    "fsync the trace file (is the disk failing?); after a failed fsync what \
                     reached the disk is unknown: the session reads back now but may not \
                     survive a crash",
                    e,
                )),
            }
        };
        // Every entry is in place (the files were created when their threads registered, the
        // manifests renamed before this call): the directories need not wait for the files, so
        // all of them are synced in the same pass.
        let process_dirs = manifests.into_iter().chain([&*self.pid, &*self.session]);
        let all: Vec<Durable<'_>> = files
            .iter()
            .map(|&(dir, name)| Durable::File(dir, name))
            .chain(dirs.iter().chain(process_dirs).map(Durable::Dir))
            .collect();
        let dirs_synced = std::sync::atomic::AtomicUsize::new(0);
        let sync = |item: &Durable<'_>| match *item {
            Durable::File(dir, name) => sync_file(&(dir, name)),
            Durable::Dir(dir) => sync_dir_with(fs, dir).map(|()| {
                // Relaxed: a count read after the scope's join.
                dirs_synced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }),
        };
        in_parallel(&all, &sync)?;
        Ok(synced.into_inner() + dirs_synced.into_inner())
    }

    /// The thread directories of the process directory, opened through its handle.
    fn thread_dirs(&self) -> Result<Vec<Dir>> {
        let names = self
            .pid
            .names()
            .map_err(|e| Error::io(self.pid.path(), "list the process directory", e))?;
        names
            .iter()
            .filter(|name| thread_id_of(name).is_some())
            .map(|name| {
                self.pid
                    .open_own_dir(name)
                    .map_err(|e| Error::io(&self.pid.join(name), "open the thread directory", e))
            })
            .collect()
    }

    /// fsyncs the session's directories: the session, process and thread directories.
    pub fn sync_dirs(&self) -> Result<()> {
        for dir in self.thread_dirs()? {
            sync_dir_with(&*self.fs, &dir)?;
        }
        sync_dir_with(&*self.fs, &self.pid)?;
        sync_dir_with(&*self.fs, &self.session)
    }

    fn ensure_thread_dir(&self, tid: u32) -> Result<Dir> {
        let name = thread_name(tid);
        self.pid
            .ensure_dir(&name, safedir::PRIVATE_DIR)
            .map_err(|e| Error::io(&self.pid.join(&name), "create the thread directory", e))
    }
}

/// File name of the space set aside for the final manifest.
const RESERVE: &str = ".manifest-reserve";
/// File names of a thread's event file, in either format.
const INDEX_ATC: &str = EventFormat::Atc.file_name();
const INDEX_ATF: &str = EventFormat::Atf2.file_name();
/// File name of a thread's detail file.
const DETAIL: &str = "detail.atf";

fn thread_name(tid: u32) -> String {
    format!("thread_{tid}")
}

/// One thread of an opened session.
pub struct SessionThread {
    /// OS thread id.
    pub id: u32,
    /// Its index file.
    pub index: IndexReader,
    /// Its detail file, if one exists and opened.
    pub detail: Option<DetailReader>,
}

/// A problem found while opening a session that still leaves it readable.
#[derive(Debug)]
pub enum Warning {
    /// The manifest is not the final one: the tracer was killed or is still recording.
    Unfinished,
    /// A thread's index file could not be opened; the thread is left out.
    ThreadUnreadable {
        /// The thread.
        thread_id: u32,
        /// Why.
        error: Error,
    },
    /// A thread's detail file could not be opened; its index is still read.
    DetailUnreadable {
        /// The thread.
        thread_id: u32,
        /// Why.
        error: Error,
    },
    /// The manifest says the thread has a detail file but there is none.
    DetailMissing {
        /// The thread.
        thread_id: u32,
        /// Where it should be.
        path: PathBuf,
    },
    /// A thread directory the manifest does not list (the tracer stopped before rewriting it); its
    /// files are read anyway.
    UnlistedThread {
        /// The thread.
        thread_id: u32,
    },
    /// Bytes of a file contradict the format or the rest of the file (a checksum mismatch, a
    /// header that disagrees with its footer or its directory, an event of unknown kind): what is
    /// read from that range may be wrong.
    Damaged(Damage),
    /// A file was not finished; its complete events were recovered.
    FileRecovered {
        /// The file.
        path: PathBuf,
        /// What was recovered.
        note: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Unfinished => write!(
                f,
                "the session was not finished (tracer killed or still recording); complete events \
                 were recovered, counters in the manifest may be stale"
            ),
            Warning::ThreadUnreadable { thread_id, error } => {
                write!(f, "thread {thread_id} left out: {error}")
            }
            Warning::DetailUnreadable { thread_id, error } => {
                write!(f, "thread {thread_id}: detail records left out: {error}")
            }
            Warning::DetailMissing { thread_id, path } => write!(
                f,
                "thread {thread_id}: the manifest lists detail records but {} is missing",
                path.display()
            ),
            Warning::UnlistedThread { thread_id } => write!(
                f,
                "thread {thread_id} has files but is not in the manifest; read it anyway"
            ),
            Warning::Damaged(damage) => write!(f, "damaged: {damage}"),
            Warning::FileRecovered { path, note } => write!(f, "{}: {note}", path.display()),
        }
    }
}

/// A recorded session opened for reading: the manifest, one reader per thread, and the problems found.
pub struct Session {
    /// The pid directory (holding `manifest.json`).
    pub dir: PathBuf,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// Readable threads: the manifest's, in its order, then unlisted ones by id.
    pub threads: Vec<SessionThread>,
    /// Problems that leave the session readable: first what opening the files found (the
    /// session or a file not finished, a thread not listed, a file missing or unreadable), then
    /// what checking the threads' events and their headers found, thread by thread.
    pub warnings: Vec<Warning>,
    /// Threads whose events are verified by the reader's own pass (see
    /// [`Session::open_deferred`]), in thread order.
    pending: Vec<Pending>,
}

/// A thread of a [`Session::open_deferred`] session whose events are not verified yet.
struct Pending {
    thread_id: u32,
    /// Where its damage goes in `warnings`: where [`Session::open`] puts it, after what opening
    /// the files found, counted without the damage of any other pending thread.
    at: usize,
    /// What the reader's pass over its events found, once reported.
    found: Option<Vec<Damage>>,
    /// The damage opening found in the thread's other fields and files (the header's detail
    /// flag and clock, the detail file), reported after its events'.
    rest: Vec<Damage>,
}

impl Session {
    /// Opens a session from its `pid_<pid>` directory, or from a `session_<...>` directory holding
    /// exactly one of them. Missing or unreadable thread files, unfinished files and an unfinished
    /// session are [`Warning`]s; only an unusable directory or manifest is an error.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir.as_ref(), false)
    }

    /// Opens a session as [`open`](Self::open) does, except that each thread's events are not
    /// read: every file is opened and its structure checked (headers, footer, trailer, chunk
    /// index), and the check of the events themselves (every checksum, every chunk, every event)
    /// is left to a reader that reads them all anyway, so the files are read once instead of
    /// twice. Such a reader reads each thread through
    /// [`IndexReader::events_checked`](crate::IndexReader::events_checked), hands what it found
    /// to [`report_damage`](Self::report_damage), and at the end calls
    /// [`finish_verification`](Self::finish_verification), which verifies the threads it did not
    /// read and puts every thread's damage in [`warnings`](Self::warnings) where `open` puts it:
    /// from then on the session is the one `open` returns. Until then `warnings` lacks the
    /// events' damage, so a reader prints nothing of it before.
    pub fn open_deferred(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir.as_ref(), true)
    }

    /// How many of the first [`warnings`](Self::warnings) stay first whatever the pending passes
    /// find: all of them once verification is finished (and for a session opened with
    /// [`open`](Self::open)); before, those ahead of the place of the first thread yet to be
    /// verified. A reader that shows these before its pass and the others after it shows every
    /// warning in the order `open` gives.
    pub fn settled_warnings(&self) -> usize {
        self.pending
            .iter()
            .map(|p| p.at)
            .min()
            .unwrap_or(self.warnings.len())
    }

    /// Whether thread `thread_id`'s events are yet to be verified (see
    /// [`open_deferred`](Self::open_deferred)).
    pub fn unverified(&self, thread_id: u32) -> bool {
        self.pending
            .iter()
            .any(|p| p.thread_id == thread_id && p.found.is_none())
    }

    /// Records what a pass over thread `thread_id`'s events found
    /// ([`CheckedEvents::finish`](crate::CheckedEvents::finish)); nothing if the thread was
    /// verified already.
    pub fn report_damage(&mut self, thread_id: u32, found: Vec<Damage>) {
        if let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| p.thread_id == thread_id && p.found.is_none())
        {
            p.found = Some(found);
        }
    }

    /// Verifies every thread whose events no pass reported on (a thread that cannot be read is
    /// left out, as [`open`](Self::open) leaves it out), and puts every thread's damage in
    /// [`warnings`](Self::warnings) where `open` puts it.
    pub fn finish_verification(&mut self) {
        // What goes where, in thread order; each place counts only `open`'s own warnings.
        let mut places: Vec<(usize, Vec<Warning>)> = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let found = match p.found {
                Some(found) => Ok(found),
                None => match self.threads.iter().position(|t| t.id == p.thread_id) {
                    Some(i) => self.threads[i]
                        .index
                        .verify(p.thread_id)
                        .map_err(|e| (i, e)),
                    None => continue,
                },
            };
            let warnings = match found {
                Ok(found) => found
                    .into_iter()
                    .chain(p.rest)
                    .map(Warning::Damaged)
                    .collect(),
                Err((i, error)) => {
                    self.threads.remove(i);
                    vec![Warning::ThreadUnreadable {
                        thread_id: p.thread_id,
                        error,
                    }]
                }
            };
            places.push((p.at, warnings));
        }
        // From the last place to the first, so each insertion leaves the earlier places right.
        for (at, warnings) in places.into_iter().rev() {
            self.warnings.splice(at..at, warnings);
        }
    }

    fn open_with(dir: &Path, deferred: bool) -> Result<Self> {
        let dir = resolve_pid_dir(dir)?;
        let manifest = Manifest::read(dir.join(MANIFEST))?;
        let mut session = Session {
            dir,
            manifest,
            threads: Vec::new(),
            warnings: Vec::new(),
            pending: Vec::new(),
        };
        if !session.manifest.finished {
            session.warnings.push(Warning::Unfinished);
        }
        session.names_beside();
        // What checking the events and headers finds follows everything opening the files
        // finds, so a reader checking the events as it shows them (`open_deferred`) can show
        // every note about the files first.
        let mut checked = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let listed: Vec<(u32, bool)> = session
            .manifest
            .threads
            .iter()
            .map(|t| (t.id, t.has_detail))
            .collect();
        for (id, has_detail) in listed {
            if seen.insert(id) {
                session.open_thread(id, has_detail, deferred, &mut checked);
            }
        }
        let mut unlisted: Vec<u32> = fs::read_dir(&session.dir)
            .map_err(|e| Error::io(&session.dir, "list the session directory", e))?
            .flatten()
            .filter_map(|e| thread_id_of(&e.file_name().to_string_lossy()))
            .filter(|id| !seen.contains(id))
            .collect();
        unlisted.sort_unstable();
        for id in unlisted {
            session
                .warnings
                .push(Warning::UnlistedThread { thread_id: id });
            session.open_thread(id, false, deferred, &mut checked);
        }
        let opened = session.warnings.len();
        for p in &mut session.pending {
            p.at = opened;
        }
        session.warnings.extend(checked);
        Ok(session)
    }

    /// A manifest without modules and symbols (its tracer was killed before writing the final
    /// one) takes those of the session's `names.json`, if there is one; one that cannot be read
    /// is a warning, and the functions are shown by address.
    fn names_beside(&mut self) {
        if !self.manifest.modules.is_empty() || !self.manifest.symbols.is_empty() {
            return;
        }
        let Some(path) = self.dir.parent().map(|s| s.join(NAMES)) else {
            return;
        };
        if fs::symlink_metadata(&path).is_err() {
            return;
        }
        match Manifest::read(&path) {
            Ok(names) => {
                self.manifest.modules = names.modules;
                self.manifest.symbols = names.symbols;
            }
            Err(e) => self.warnings.push(Warning::FileRecovered {
                path,
                note: format!("cannot be read, so functions are shown by address ({e})"),
            }),
        }
    }

    /// Index events readable in all threads.
    pub fn event_count(&self) -> u64 {
        self.threads.iter().map(|t| t.index.event_count()).sum()
    }
}

/// What an empty file in an unfinished session is said to be.
const EMPTY_NOTE: &str =
    "empty: the tracer stopped before writing its header, so it holds no events";

/// What a thread directory without an events file in an unfinished session is said to be.
const NO_FILE_NOTE: &str =
    "has no events file: the tracer stopped before creating it, so it holds no events";

/// Whether `path` is a regular file of 0 bytes (not following a link).
fn is_empty_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file() && m.len() == 0)
}

impl Session {
    /// Opens thread `id`'s files into `threads`, saying what is wrong with them in `warnings`,
    /// and what checking its events and headers found in `checked`; `deferred`: its events'
    /// damage is left for the reader's pass (see [`Session::open_deferred`]).
    fn open_thread(
        &mut self,
        id: u32,
        has_detail: bool,
        deferred: bool,
        checked: &mut Vec<Warning>,
    ) {
        let clock_type = self.manifest.clock_type;
        let unfinished = !self.manifest.finished;
        let (threads, warnings) = (&mut self.threads, &mut self.warnings);
        let thread_dir = self.dir.join(format!("thread_{id}"));
        let events_path = EventFormat::events_path(&thread_dir);
        // A tracer killed between creating a thread's file and writing its header leaves it empty:
        // in an unfinished session that is crash residue holding no events, not damage. (In a
        // finished session every file has its header, so an empty one is reported below.)
        // `symlink_metadata`: a link or FIFO in its place still goes to the reader, which refuses it.
        if unfinished && is_empty_file(&events_path) {
            warnings.push(Warning::FileRecovered {
                path: events_path,
                note: EMPTY_NOTE.to_owned(),
            });
            return;
        }
        // Killed between creating the thread's directory and its file: the same residue.
        if unfinished
            && fs::symlink_metadata(&events_path).is_err()
            && fs::symlink_metadata(&thread_dir).is_ok_and(|m| m.is_dir())
        {
            warnings.push(Warning::FileRecovered {
                path: thread_dir,
                note: NO_FILE_NOTE.to_owned(),
            });
            return;
        }
        let index = match IndexReader::open(events_path) {
            Ok(index) => index,
            Err(error) => {
                warnings.push(Warning::ThreadUnreadable {
                    thread_id: id,
                    error,
                });
                return;
            }
        };
        if let Some(note) = index.recovery_note() {
            warnings.push(Warning::FileRecovered {
                path: index.path().to_path_buf(),
                note: note.to_owned(),
            });
        }
        let detail_path = thread_dir.join("detail.atf");
        // `symlink_metadata`: a symlink or FIFO in its place is reported by the reader, not skipped.
        let detail = if unfinished && is_empty_file(&detail_path) {
            warnings.push(Warning::FileRecovered {
                path: detail_path,
                note: EMPTY_NOTE.to_owned(),
            });
            None
        } else if fs::symlink_metadata(&detail_path).is_ok() {
            match DetailReader::open(&detail_path) {
                Ok(detail) => {
                    if let Some(note) = detail.recovery_note() {
                        warnings.push(Warning::FileRecovered {
                            path: detail_path,
                            note: note.to_owned(),
                        });
                    }
                    Some(detail)
                }
                Err(error) => {
                    warnings.push(Warning::DetailUnreadable {
                        thread_id: id,
                        error,
                    });
                    None
                }
            }
        } else {
            if has_detail {
                warnings.push(Warning::DetailMissing {
                    thread_id: id,
                    path: detail_path,
                });
            }
            None
        };
        let verified = if deferred {
            Ok(Vec::new())
        } else {
            index.verify(id)
        };
        let mut damage = match verified {
            Ok(damage) => damage,
            Err(error) => {
                checked.push(Warning::ThreadUnreadable {
                    thread_id: id,
                    error,
                });
                return;
            }
        };
        if index.finished() && index.has_detail() != detail.is_some() {
            damage.push(Damage::new(
                index.path(),
                8..12,
                if detail.is_some() {
                    "the header says the thread has no detail records, but it has a detail file"
                } else {
                    "the header says the thread has detail records, but no detail file is readable"
                },
            ));
        }
        if index.clock_type() != clock_type {
            damage.push(Damage::new(
                index.path(),
                16..17,
                format!(
                    "the header's clock type {} differs from the manifest's {clock_type}",
                    index.clock_type()
                ),
            ));
        }
        let detail = detail.and_then(|d| match d.verify(id, index.event_count()) {
            Ok(found) => {
                damage.extend(found);
                Some(d)
            }
            Err(error) => {
                warnings.push(Warning::DetailUnreadable {
                    thread_id: id,
                    error,
                });
                None
            }
        });
        if deferred {
            self.pending.push(Pending {
                thread_id: id,
                // Set once every file is open.
                at: 0,
                found: None,
                rest: damage,
            });
        } else {
            checked.extend(damage.into_iter().map(Warning::Damaged));
        }
        threads.push(SessionThread { id, index, detail });
    }
}

fn resolve_pid_dir(dir: &Path) -> Result<PathBuf> {
    // Whatever is named manifest.json marks the directory; `Manifest::read` refuses it if it is
    // not a regular file, with a message naming it.
    if fs::symlink_metadata(dir.join(MANIFEST)).is_ok() {
        return Ok(dir.to_path_buf());
    }
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, "open the session directory", e))?;
    let mut pids: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pid_") && e.path().is_dir())
        .map(|e| e.path())
        .collect();
    pids.sort();
    match pids.len() {
        1 => Ok(pids.remove(0)),
        0 => Err(Error::NotASession {
            path: dir.to_path_buf(),
            problem: "no manifest.json and no pid_<pid> directory here; pass a session_<...> or \
                      pid_<pid> directory"
                .to_owned(),
        }),
        n => Err(Error::NotASession {
            path: dir.to_path_buf(),
            problem: format!("holds {n} traced processes; pass one of its pid_<pid> directories"),
        }),
    }
}

/// The tid of a `thread_<tid>` directory name.
fn thread_id_of(name: &str) -> Option<u32> {
    name.strip_prefix("thread_")?.parse().ok()
}

/// Local time as `YYYYmmdd_HHMMSS` (UTC if the local time zone cannot be read).
fn local_timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = secs as libc::time_t;
    // SAFETY: `libc::tm` is plain data (integers and a nullable pointer); all-zero bytes are valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call; `localtime_r` writes only `tm`.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        // SAFETY: as above, for `gmtime_r`.
        unsafe { libc::gmtime_r(&t, &mut tm) };
    }
    format!(
        "{:04}{:02}{:02}_{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use crate::{EventKind, IndexEvent, ThreadEntry, NO_DETAIL};

    fn event(tid: u32, i: u64) -> IndexEvent {
        IndexEvent {
            timestamp_ns: i,
            function_id: i % 3,
            thread_id: tid,
            kind: if i % 2 == 0 {
                EventKind::Call
            } else {
                EventKind::Return
            },
            call_depth: 0,
            detail_seq: NO_DETAIL,
        }
    }

    fn batch(tid: u32, n: u64) -> Vec<u8> {
        (0..n).flat_map(|i| event(tid, i).encode()).collect()
    }

    /// Records a finished session in `layout`: threads `(tid, events)`, the first with one
    /// detail record, their files finished with or without an fsync (`sync`), then the final
    /// manifest, and the directories synced.
    fn record_finished(layout: &SessionLayout, threads: &[(u32, u64)], sync: bool) {
        let tids: Vec<u32> = threads.iter().map(|t| t.0).collect();
        let mut m = manifest_for(&tids);
        layout.write_manifest(&mut m).unwrap();
        for &(tid, n) in threads {
            let mut w = layout.create_index(tid, ClockType::Boottime).unwrap();
            w.append(&batch(tid, n)).unwrap();
            w.set_has_detail(tid == tids[0]).unwrap();
            let done = if sync {
                w.finish()
            } else {
                w.finish_unsynced()
            };
            done.unwrap();
        }
        let mut d = layout.create_detail(tids[0]).unwrap();
        let header = crate::DetailRecordHeader::for_payload(crate::DETAIL_CALL, 0, tids[0], 0, 4);
        d.append_record(&header, &[1, 2, 3, 4]).unwrap();
        let done = if sync {
            d.finish()
        } else {
            d.finish_unsynced()
        };
        done.unwrap();
        m.threads[0].has_detail = true;
        m.finished = true;
        layout.write_manifest(&mut m).unwrap();
        layout.sync_dirs().unwrap();
    }

    fn manifest_for(tids: &[u32]) -> Manifest {
        let mut m = Manifest::new(ClockType::Boottime);
        m.threads = tids
            .iter()
            .map(|&id| ThreadEntry {
                id,
                ..ThreadEntry::default()
            })
            .collect();
        m
    }

    #[test]
    fn session_layout__create__then_names_follow_the_format() {
        let out = tempfile::tempdir().unwrap();
        let layout = SessionLayout::create(out.path().join("traces"), 4321).unwrap();
        let name = layout
            .session_dir()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let stamp = name.strip_prefix("session_").unwrap();
        assert_eq!(stamp.len(), 15, "{name}");
        assert!(stamp.chars().enumerate().all(|(i, c)| if i == 8 {
            c == '_'
        } else {
            c.is_ascii_digit()
        }));
        assert_eq!(layout.pid_dir(), layout.session_dir().join("pid_4321"));
        assert!(layout.pid_dir().is_dir());
        assert_eq!(
            layout.manifest_path(),
            layout.pid_dir().join("manifest.json")
        );
        assert_eq!(
            layout.index_path(7),
            layout.pid_dir().join("thread_7/index.atc")
        );
        assert_eq!(
            layout.clone().with_format(EventFormat::Atf2).index_path(7),
            layout.pid_dir().join("thread_7/index.atf")
        );
        assert_eq!(
            layout.detail_path(7),
            layout.pid_dir().join("thread_7/detail.atf")
        );
    }

    #[test]
    fn session_layout__created_twice__then_second_gets_its_own_directory() {
        let out = tempfile::tempdir().unwrap();
        let a = SessionLayout::create(out.path(), 1).unwrap();
        let b = SessionLayout::create(out.path(), 1).unwrap();
        assert_ne!(a.session_dir(), b.session_dir());
        let (an, bn) = (
            a.session_dir().to_string_lossy(),
            b.session_dir().to_string_lossy(),
        );
        if bn.starts_with(&*an) {
            // Same second: the suffix tells them apart.
            assert_eq!(bn, format!("{an}_2"));
        }
    }

    #[test]
    fn session__finished_recording__then_every_event_and_no_warning() {
        let out = tempfile::tempdir().unwrap();
        let layout = SessionLayout::create(out.path(), 99).unwrap();
        record_finished(&layout, &[(11, 100), (12, 5)], true);

        let s = Session::open(layout.session_dir()).unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(s.dir, layout.pid_dir());
        assert_eq!(s.threads.iter().map(|t| t.id).collect::<Vec<_>>(), [11, 12]);
        assert_eq!(s.event_count(), 105);
        assert_eq!(s.threads[0].detail.as_ref().unwrap().record_count(), 1);
        assert!(s.threads[1].detail.is_none());
    }

    #[test]
    fn session__writers_killed_mid_run__then_flushed_events_recovered_and_reported_unfinished() {
        let out = tempfile::tempdir().unwrap();
        let layout = SessionLayout::create(out.path(), 99).unwrap();
        let mut m = manifest_for(&[21]);
        layout.write_manifest(&mut m).unwrap();
        let mut w21 = layout.create_index(21, ClockType::Boottime).unwrap();
        w21.append(&batch(21, 3000)).unwrap();
        w21.flush().unwrap();
        // Thread 22 appeared after the last manifest rewrite.
        let mut w22 = layout.create_index(22, ClockType::Boottime).unwrap();
        w22.append(&batch(22, 7)).unwrap();
        w22.flush().unwrap();
        // The crash: no finish, no drop, no final manifest.
        std::mem::forget(w21);
        std::mem::forget(w22);

        let s = Session::open(layout.pid_dir()).unwrap();
        assert_eq!(s.threads.len(), 2);
        let t21 = s.threads[0]
            .index
            .events()
            .collect::<Result<Vec<_>>>()
            .unwrap();
        assert_eq!(t21, (0..3000).map(|i| event(21, i)).collect::<Vec<_>>());
        assert_eq!(s.threads[1].index.event_count(), 7);
        assert!(matches!(s.warnings[0], Warning::Unfinished));
        assert!(s
            .warnings
            .iter()
            .any(|w| matches!(w, Warning::UnlistedThread { thread_id: 22 })));
        let recovered = s
            .warnings
            .iter()
            .filter(|w| matches!(w, Warning::FileRecovered { .. }))
            .count();
        assert_eq!(recovered, 2);
        assert!(s.warnings.iter().all(|w| !w.to_string().is_empty()));
    }

    #[test]
    fn session__tracer_killed_between_creating_a_file_and_its_header__then_empty_thread_not_damage()
    {
        for finished in [false, true] {
            let out = tempfile::tempdir().unwrap();
            let layout = SessionLayout::create(out.path(), 99).unwrap();
            let mut m = manifest_for(&[41, 42]);
            m.finished = finished;
            layout.write_manifest(&mut m).unwrap();
            let mut w41 = layout.create_index(41, ClockType::Boottime).unwrap();
            w41.append(&batch(41, 5)).unwrap();
            w41.flush().unwrap();
            std::mem::forget(w41);
            // Thread 42's file was created, and the tracer died before its header went out;
            // thread 43's directory was made, and it died before the file.
            let dir42 = layout.pid_dir().join("thread_42");
            fs::create_dir(&dir42).unwrap();
            fs::File::create(EventFormat::events_path(&dir42)).unwrap();
            fs::create_dir(layout.pid_dir().join("thread_43")).unwrap();

            let s = Session::open(layout.pid_dir()).unwrap();
            assert_eq!(s.threads.iter().map(|t| t.id).collect::<Vec<_>>(), [41]);
            assert_eq!(s.event_count(), 5);
            for (id, name) in [(42, "thread_42"), (43, "thread_43")] {
                let named = |w: &&Warning| {
                    !matches!(w, Warning::UnlistedThread { .. }) && w.to_string().contains(name)
                };
                let w = s.warnings.iter().find(named).unwrap();
                if finished {
                    // A finished session made every file and wrote every header: an empty or
                    // missing file there is damage.
                    assert!(
                        matches!(w, Warning::ThreadUnreadable { thread_id, .. } if *thread_id == id),
                        "{w}"
                    );
                } else {
                    assert!(matches!(w, Warning::FileRecovered { .. }), "{w}");
                    assert!(w.to_string().contains("holds no events"), "{w}");
                }
            }
        }
    }

    #[test]
    fn session__unfinished_opened_deferred__then_warnings_known_at_open_are_settled_first() {
        let out = tempfile::tempdir().unwrap();
        let layout = SessionLayout::create(out.path(), 98).unwrap();
        let mut m = manifest_for(&[21, 22]);
        m.finished = false;
        layout.write_manifest(&mut m).unwrap();
        for tid in [21u32, 22] {
            let mut w = layout.create_index(tid, ClockType::Boottime).unwrap();
            w.append(&batch(tid, 100)).unwrap();
            w.finish().unwrap();
        }
        // Thread 22's only chunk is damaged.
        let path = layout.index_path(22);
        let mut bytes = fs::read(&path).unwrap();
        bytes[atc::FILE_HEADER_SIZE + atc::CHUNK_HEADER_SIZE + 20] ^= 0x10;
        fs::write(&path, bytes).unwrap();
        let said = |s: &Session| s.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let opened = said(&Session::open(layout.pid_dir()).unwrap());
        let mut s = Session::open_deferred(layout.pid_dir()).unwrap();
        let settled = s.settled_warnings();
        assert!(settled >= 1, "the unfinished session: {:#?}", said(&s));
        let before = said(&s)[..settled].to_vec();
        s.finish_verification();
        assert_eq!(said(&s), opened);
        assert_eq!(
            said(&s)[..settled],
            before[..],
            "what was settled stays first"
        );
        assert!(
            opened.len() > settled,
            "the damage comes after: {opened:#?}"
        );
    }

    #[test]
    fn session__opened_deferred__then_after_the_pass_the_warnings_open_gives_in_its_order() {
        let out = tempfile::tempdir().unwrap();
        let layout = SessionLayout::create(out.path(), 99).unwrap();
        let mut m = manifest_for(&[11, 12, 13]);
        m.finished = true;
        layout.write_manifest(&mut m).unwrap();
        for tid in [11u32, 12, 13] {
            let mut w = layout.create_index(tid, ClockType::Boottime).unwrap();
            for part in batch(tid, 150).chunks(50 * 32) {
                w.append(part).unwrap();
                w.flush().unwrap(); // a chunk of 50 events
            }
            // Thread 12 says it has detail records and has none: damage found on opening.
            w.set_has_detail(tid == 12).unwrap();
            w.finish().unwrap();
        }
        // A byte in the middle of the first chunk's payload of threads 11 and 13.
        for tid in [11u32, 13] {
            let path = layout.index_path(tid);
            let mut bytes = fs::read(&path).unwrap();
            bytes[atc::FILE_HEADER_SIZE + atc::CHUNK_HEADER_SIZE + 20] ^= 0x10;
            fs::write(&path, bytes).unwrap();
        }
        let said = |s: &Session| s.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let opened = Session::open(layout.pid_dir()).unwrap();
        // One damaged chunk each in 11 and 13 (the chunk after it is not out of place), the
        // detail flag of 12.
        assert_eq!(said(&opened).len(), 3, "{:#?}", said(&opened));

        // A pass over thread 13 alone (`report --tid 13`): 11 and 12 are verified at the end.
        let mut s = Session::open_deferred(layout.pid_dir()).unwrap();
        assert!(s.unverified(13) && s.unverified(11));
        assert!(
            said(&s).len() < said(&opened).len(),
            "the events' damage waits for the pass"
        );
        // Nothing precedes thread 11's place: no warning is settled before the pass.
        assert_eq!(s.settled_warnings(), 0);
        let t13 = s.threads.iter().find(|t| t.id == 13).unwrap();
        let mut events = t13.index.events_checked(13).unwrap();
        let read = events.by_ref().map(Result::unwrap).count();
        assert_eq!(read, 100, "the damaged chunk is skipped");
        let found = events.finish().unwrap();
        assert_eq!(found, t13.index.verify(13).unwrap());
        s.report_damage(13, found);
        assert!(!s.unverified(13));
        s.finish_verification();
        assert_eq!(said(&s), said(&opened));
        assert_eq!(s.settled_warnings(), 3);
        assert!(!s.unverified(11));
        // Nothing left to do the second time.
        s.finish_verification();
        assert_eq!(said(&s), said(&opened));
    }

    #[test]
    fn session__manifest_lists_missing_thread__then_warning_not_error() {
        let out = tempfile::tempdir().unwrap();
        let layout = SessionLayout::create(out.path(), 99).unwrap();
        let mut m = manifest_for(&[31, 32]);
        m.threads[1].has_detail = true;
        m.finished = true;
        layout.write_manifest(&mut m).unwrap();
        layout
            .create_index(32, ClockType::Boottime)
            .unwrap()
            .finish()
            .unwrap();
        let s = Session::open(layout.pid_dir()).unwrap();
        assert_eq!(s.threads.len(), 1);
        assert!(matches!(
            &s.warnings[0],
            Warning::ThreadUnreadable { thread_id: 31, .. }
        ));
        assert!(
            s.warnings[0].to_string().contains("thread_31/index.atc"),
            "{}",
            s.warnings[0]
        );
        assert!(matches!(
            &s.warnings[1],
            Warning::DetailMissing { thread_id: 32, .. }
        ));
    }

    #[test]
    fn session__corrupt_thread_file__then_thread_left_out_with_reason() {
        let out = tempfile::tempdir().unwrap();
        let layout = SessionLayout::create(out.path(), 99).unwrap();
        let mut m = manifest_for(&[41]);
        m.finished = true;
        layout.write_manifest(&mut m).unwrap();
        fs::create_dir(layout.thread_dir(41)).unwrap();
        fs::write(layout.index_path(41), [0xffu8; 100]).unwrap();
        let s = Session::open(layout.pid_dir()).unwrap();
        assert!(s.threads.is_empty());
        assert!(
            s.warnings[0].to_string().contains("not an ATC event file"),
            "{}",
            s.warnings[0]
        );
    }

    #[test]
    fn session__not_a_session__then_clear_error() {
        let out = tempfile::tempdir().unwrap();
        let msg = Session::open(out.path()).err().unwrap().to_string();
        assert!(
            msg.contains("no manifest.json and no pid_<pid> directory"),
            "{msg}"
        );
        fs::create_dir(out.path().join("pid_1")).unwrap();
        fs::create_dir(out.path().join("pid_2")).unwrap();
        let msg = Session::open(out.path()).err().unwrap().to_string();
        assert!(msg.contains("holds 2 traced processes"), "{msg}");
        let msg = Session::open(out.path().join("missing"))
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("cannot open the session directory"), "{msg}");
    }

    #[test]
    fn session_layout__with_fs__then_trace_files_manifest_and_syncs_go_through_it() {
        use crate::fault::{FaultPlan, FaultyFs};
        let out = tempfile::tempdir().unwrap();
        let fs = Arc::new(FaultyFs::new(
            FaultPlan::new()
                .interrupt_writes_every(2)
                .short_writes_every(1, 1000),
        ));
        let layout = SessionLayout::create(out.path(), 99)
            .unwrap()
            .with_fs(fs.clone());
        assert_eq!(layout.clone().with_fs(Arc::new(RealFs)), layout);
        record_finished(&layout, &[(11, 5000)], false);
        layout.sync_filesystem().unwrap();

        let injected = fs.injected();
        assert!(injected.interrupts > 0, "{injected:?}");
        // Two manifest fsyncs and two directory fsyncs for them, three directories, one syncfs.
        assert_eq!(injected.sync_calls, 2 * 2 + 3 + 1, "{injected:?}");
        let s = Session::open(layout.pid_dir()).unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(s.event_count(), 5000);
        assert_eq!(s.threads[0].detail.as_ref().unwrap().record_count(), 1);
    }

    #[test]
    fn session_layout__syncfs_fails__then_error_names_session_and_says_durability_unknown() {
        use crate::fault::{FaultPlan, FaultyFs};
        let out = tempfile::tempdir().unwrap();
        let fs = Arc::new(FaultyFs::new(FaultPlan::new().fail_sync_fs(libc::EIO)));
        let layout = SessionLayout::create(out.path(), 99).unwrap().with_fs(fs);
        let mut m = manifest_for(&[]);
        layout.write_manifest(&mut m).unwrap();
        layout.sync_dirs().unwrap();
        let err = layout.sync_filesystem().unwrap_err();
        let Error::Io { path, source, .. } = &err else {
            panic!("not an I/O error: {err}");
        };
        assert_eq!(path, layout.session_dir());
        assert_eq!(source.raw_os_error(), Some(libc::EIO));
        assert!(err.to_string().contains("unknown"), "{err}");
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn session_layout__umask_zero__then_dirs_0700_and_files_0600() {
        let out = tempfile::tempdir().unwrap();
        // SAFETY: umask only swaps the process's mask; restored below.
        let old = unsafe { libc::umask(0) };
        let layout = SessionLayout::create(out.path().join("new"), 99);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let layout = layout.unwrap();
        let mut m = manifest_for(&[7]);
        layout.write_manifest(&mut m).unwrap();
        layout
            .create_index(7, ClockType::Boottime)
            .unwrap()
            .finish()
            .unwrap();
        layout.create_detail(7).unwrap().finish().unwrap();
        for dir in [
            out.path().join("new"),
            layout.session_dir().to_path_buf(),
            layout.pid_dir().to_path_buf(),
            layout.thread_dir(7),
        ] {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        }
        for file in [
            layout.manifest_path(),
            layout.index_path(7),
            layout.detail_path(7),
        ] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }

    #[test]
    fn session_layout__session_swapped_for_a_link__then_files_still_land_in_the_session() {
        let out = tempfile::tempdir().unwrap();
        let victim_dir = out.path().join("victim");
        fs::create_dir(&victim_dir).unwrap();
        fs::write(victim_dir.join(MANIFEST), b"precious").unwrap();
        let layout = SessionLayout::create(out.path().join("traces"), 99).unwrap();
        // Someone renames the fresh session away and puts a link to the victim in its place.
        let moved = out.path().join("traces/moved");
        fs::rename(layout.session_dir(), &moved).unwrap();
        std::os::unix::fs::symlink(&victim_dir, layout.session_dir()).unwrap();
        std::os::unix::fs::symlink(&victim_dir, moved.join("pid_other")).unwrap();
        let mut m = manifest_for(&[5]);
        layout.write_manifest(&mut m).unwrap();
        layout
            .create_index(5, ClockType::Boottime)
            .unwrap()
            .finish()
            .unwrap();
        m.finished = true;
        layout.write_manifest(&mut m).unwrap();
        layout.sync_dirs().unwrap();
        assert_eq!(fs::read(victim_dir.join(MANIFEST)).unwrap(), b"precious");
        assert_eq!(fs::read_dir(&victim_dir).unwrap().count(), 1);
        let s = Session::open(moved.join("pid_99")).unwrap();
        assert!(s.manifest.finished);
        assert_eq!(s.threads.len(), 1);
        assert_eq!(layout.read_manifest().unwrap(), s.manifest);
    }

    #[test]
    fn session_open__manifest_without_names__then_names_json_names_it_or_warns() {
        let out = tempfile::tempdir().unwrap();
        let layout = SessionLayout::create(out.path(), 99).unwrap();
        let mut m = manifest_for(&[]);
        layout.write_manifest(&mut m).unwrap();
        let s = Session::open(layout.pid_dir()).unwrap();
        assert!(s.manifest.symbols.is_empty(), "no names.json: no names");
        let mut names = Manifest::new(ClockType::Boottime);
        names.symbols.push(crate::Symbol::new(1, 2, "compute"));
        layout.write_names(&mut names).unwrap();
        let s = Session::open(layout.session_dir()).unwrap();
        assert_eq!(s.manifest.symbols, names.symbols);
        assert!(s.warnings.iter().all(|w| matches!(w, Warning::Unfinished)));
        // A manifest with its own names keeps them.
        let mut own = manifest_for(&[]);
        own.symbols.push(crate::Symbol::new(3, 4, "main"));
        layout.write_manifest(&mut own).unwrap();
        let s = Session::open(layout.pid_dir()).unwrap();
        assert_eq!(s.manifest.symbols, own.symbols);
        // A names.json that cannot be read: one warning, no names.
        layout.write_manifest(&mut m).unwrap();
        fs::write(layout.session_dir().join(NAMES), b"{ cut").unwrap();
        let s = Session::open(layout.pid_dir()).unwrap();
        assert!(s.manifest.symbols.is_empty());
        let said: Vec<String> = s.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            said.iter()
                .any(|w| w.contains("names.json: cannot be read")),
            "{said:?}"
        );
    }

    #[test]
    fn write_manifest__temporary_name_is_a_planted_link__then_link_removed_not_followed() {
        let out = tempfile::tempdir().unwrap();
        let victim = out.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let layout = SessionLayout::create(out.path().join("traces"), 99).unwrap();
        let tmp = layout.pid_dir().join("manifest.json.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let mut m = manifest_for(&[]);
        layout.write_manifest(&mut m).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(!tmp.exists());
        assert!(!fs::symlink_metadata(layout.manifest_path())
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn session__bad_manifest__then_manifest_error() {
        let out = tempfile::tempdir().unwrap();
        let layout = SessionLayout::create(out.path(), 99).unwrap();
        fs::write(layout.manifest_path(), "{\"threads\": 3}").unwrap();
        let err = Session::open(layout.session_dir()).err().unwrap();
        assert!(matches!(err, Error::Manifest { .. }), "{err}");
    }
}
