//! Link-safe, private directories and files: everything is created relative to an open directory
//! handle ([`Dir`]), so nobody can redirect a write by swapping a path component for a symbolic
//! link or another directory between the check and the use.
//!
//! Contract:
//! - A [`Dir`] is an open directory descriptor (`O_DIRECTORY | O_CLOEXEC`) plus the path it was
//!   reached by, kept only to name it in messages. Every operation on it is an `*at` call on the
//!   descriptor with a single path component: the directory may be renamed or replaced by someone
//!   else afterwards and the operations still land in the directory that was opened.
//! - Directories it creates are made with `mkdirat`, opened with `O_NOFOLLOW` and checked with
//!   `fstat` to be a directory owned by the effective user; files with `O_CREAT | O_EXCL |
//!   O_NOFOLLOW`, so an existing file (or a planted link) is never opened, truncated or reused.
//!   Modes are set with `fchmod` after creation, so the umask cannot widen or narrow them
//!   (private: [`PRIVATE_DIR`] and [`PRIVATE_FILE`]).
//! - [`private_dir_under_shared`] finds or makes a per-user directory under a directory shared by
//!   several users (like `/tmp/ada_traces/<user>`), and refuses, with a one-line [`Error`] saying
//!   why and what to do, a shared directory that is a symbolic link, or that others could write
//!   to without the sticky bit, and a per-user directory that is a link or another user's.
//!
//! ```
//! use safedir::{Dir, PRIVATE_FILE};
//! use std::io::Write;
//! # fn main() -> std::io::Result<()> {
//! let tmp = tempfile::tempdir()?;
//! let out = Dir::create_all(&tmp.path().join("a/b"), safedir::PRIVATE_DIR)?;
//! let session = out.create_dir("session_1", safedir::PRIVATE_DIR)?;
//! let mut f = session.create_file("manifest.json.tmp", PRIVATE_FILE)?;
//! f.write_all(b"{}")?;
//! session.rename("manifest.json.tmp", "manifest.json")?;
//! // An existing file is never reused.
//! assert!(session.create_file("manifest.json", PRIVATE_FILE).is_err());
//! assert_eq!(session.stat()?.mode & 0o777, 0o700);
//! # Ok(()) }
//! ```

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Mode of the directories a recording creates: owner only.
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of the files a recording creates: owner read/write only.
pub const PRIVATE_FILE: u32 = 0o600;

/// Why a directory was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// What was being done, as a verb phrase.
        action: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A symbolic link where a directory was expected.
    #[error(
        "{} is a symbolic link, which anyone could point elsewhere; remove it or choose another \
         directory",
        path.display()
    )]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A shared directory that others could change under us.
    #[error(
        "{} can be changed by other users (owner uid {uid}, mode {mode:04o}, not sticky), so they \
         could swap what is written there; remove it, make it sticky (`chmod +t`), or choose \
         another directory",
        path.display()
    )]
    Untrusted {
        /// The directory.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
        /// Its owner.
        uid: u32,
    },
    /// A private directory that belongs to someone else.
    #[error(
        "{} belongs to uid {uid}, not to you (uid {me}); remove it or choose another directory",
        path.display()
    )]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The effective user.
        me: u32,
    },
}

impl Error {
    fn io(path: &Path, action: &'static str, source: io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

/// What `fstat` says about an open directory or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Owner.
    pub uid: u32,
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl Stat {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// An open directory: the handle every file and subdirectory is created through.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(ErrorKind::InvalidInput))
}

/// A single path component: not empty, no `/`, not `.` or `..`.
fn component(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{name:?} is not a single file name"),
        ));
    }
    cstr(OsStr::new(name))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned to us, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    // SAFETY: a zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`, which lives across the call.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(Stat {
        uid: st.st_uid,
        mode: st.st_mode,
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod on a descriptor we hold; no memory is passed.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and takes nothing.
    unsafe { libc::geteuid() }
}

impl Dir {
    /// Opens the existing directory `path`, following links in it as given.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: a NUL-terminated path and valid flags; the result is checked.
        let fd = owned(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens `path`, creating the components that do not exist as directories of `mode` through
    /// the handle of their parent (each created one opened with `O_NOFOLLOW` and checked to be
    /// the user's own). Components that exist are followed as given: the path is the caller's.
    pub fn create_all(path: &Path, mode: u32) -> io::Result<Dir> {
        let start = if path.is_absolute() { "/" } else { "." };
        let mut dir = Dir::open(Path::new(start))?;
        dir.path = PathBuf::new();
        if path.is_absolute() {
            dir.path.push("/");
        }
        for part in path.components() {
            let name = match part {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
                Component::ParentDir => OsStr::new(".."),
                Component::Normal(n) => n,
            };
            let c = cstr(name)?;
            // SAFETY: valid directory fd and NUL-terminated name; the result is checked.
            let opened = owned(unsafe {
                libc::openat(
                    dir.fd.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            });
            let next_path = dir.path.join(name);
            dir = match opened {
                Ok(fd) => Dir {
                    fd,
                    path: next_path,
                },
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let name = name.to_str().ok_or(ErrorKind::InvalidInput)?;
                    match dir.create_dir(name, mode) {
                        Ok(d) => d,
                        // Made by someone else meanwhile: it must still be ours to be used.
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => dir.open_own_dir(name)?,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
        }
        Ok(dir)
    }

    /// The path this directory was reached by (for messages; operations use the handle).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// `fstat` of the directory.
    pub fn stat(&self) -> io::Result<Stat> {
        fstat(self.fd.as_fd())
    }

    /// A second handle to the same directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// Creates the directory `name` (it must not exist) with exactly `mode`, and opens it.
    pub fn create_dir(&self, name: &str, mode: u32) -> io::Result<Dir> {
        let c = component(name)?;
        // SAFETY: valid directory fd and NUL-terminated name.
        check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), PRIVATE_DIR) })?;
        let dir = self.open_own_dir(name)?;
        fchmod(dir.fd.as_fd(), mode)?;
        Ok(dir)
    }

    /// Opens the directory `name`, or creates it with `mode` if it does not exist. Either way it
    /// must be a real directory (not a link) owned by the effective user.
    pub fn ensure_dir(&self, name: &str, mode: u32) -> io::Result<Dir> {
        match self.create_dir(name, mode) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => self.open_own_dir(name),
            other => other,
        }
    }

    /// Opens the subdirectory `name` without following a link, and checks that the effective
    /// user owns it (`PermissionDenied` otherwise).
    pub fn open_own_dir(&self, name: &str) -> io::Result<Dir> {
        let dir = self.open_dir_nofollow(name)?;
        let st = dir.stat()?;
        if st.uid != euid() {
            return Err(io::Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to uid {}, not to uid {}",
                    dir.path.display(),
                    st.uid,
                    euid()
                ),
            ));
        }
        Ok(dir)
    }

    /// Opens the subdirectory `name` without following a link (a link fails with `ELOOP` or
    /// `ENOTDIR`).
    pub fn open_dir_nofollow(&self, name: &str) -> io::Result<Dir> {
        let c = component(name)?;
        // SAFETY: valid directory fd and NUL-terminated name; the result is checked.
        let fd = owned(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        Ok(Dir {
            fd,
            path: self.join(name),
        })
    }

    /// Whether `name` is a symbolic link (`fstatat` without following).
    pub fn is_symlink(&self, name: &str) -> io::Result<bool> {
        let c = component(name)?;
        // SAFETY: a zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, NUL-terminated name, `st` lives across the call.
        check(unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(st.st_mode & libc::S_IFMT == libc::S_IFLNK)
    }

    /// Creates the file `name`, which must not exist (not even as a link), for writing, with
    /// exactly `mode`.
    pub fn create_file(&self, name: &str, mode: u32) -> io::Result<File> {
        let c = component(name)?;
        // SAFETY: valid directory fd and NUL-terminated name; the result is checked.
        let fd = owned(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                PRIVATE_FILE as libc::c_uint,
            )
        })?;
        fchmod(fd.as_fd(), mode)?;
        Ok(File::from(fd))
    }

    /// Opens the existing file `name` for reading, without following a link.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let c = component(name)?;
        // SAFETY: valid directory fd and NUL-terminated name; the result is checked.
        let fd = owned(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        Ok(File::from(fd))
    }

    /// Renames `from` over `to`, both in this directory, atomically (`renameat`).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (f, t) = (component(from)?, component(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid directory fd and NUL-terminated names.
        check(unsafe { libc::renameat(fd, f.as_ptr(), fd, t.as_ptr()) })
    }

    /// Removes the file (or link) `name` from this directory (`unlinkat`, which never follows).
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: valid directory fd and NUL-terminated name.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
    }

    /// The names in this directory (without `.` and `..`), read through the handle: the
    /// directory that was opened, wherever it is now.
    pub fn names(&self) -> io::Result<Vec<String>> {
        // A second descriptor for the stream: closedir closes it, and its read position is its
        // own (reopened through "." rather than dup'ed, which would share the position).
        let fd = self.open_dir_nofollow_raw(c".")?;
        // SAFETY: `fd` is an open directory descriptor we own; on success the stream owns it.
        let stream = unsafe { libc::fdopendir(fd.as_raw_fd()) };
        if stream.is_null() {
            return Err(io::Error::last_os_error());
        }
        std::mem::forget(fd);
        let mut names = Vec::new();
        let mut failed = None;
        loop {
            // readdir returns null both at the end and on an error; errno tells them apart.
            // SAFETY: this thread's errno.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `stream` is a valid open directory stream used by this thread only.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(0) {
                    failed = Some(e);
                }
                break;
            }
            // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated; it stays
            // valid until the next readdir on this stream.
            let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
            let name = name.to_string_lossy();
            if name != "." && name != ".." {
                names.push(name.into_owned());
            }
        }
        // SAFETY: closes the stream (and the descriptor it owns) once.
        unsafe { libc::closedir(stream) };
        failed.map_or(Ok(names), Err)
    }

    fn open_dir_nofollow_raw(&self, name: &std::ffi::CStr) -> io::Result<OwnedFd> {
        // SAFETY: valid directory fd and NUL-terminated name; the result is checked.
        owned(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })
    }

    /// Makes this directory's entries durable (`fsync`).
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: fsync on a descriptor we hold.
        check(unsafe { libc::fsync(self.fd.as_raw_fd()) })
    }

    /// Makes everything on this directory's file system durable (`syncfs`).
    pub fn sync_fs(&self) -> io::Result<()> {
        // SAFETY: syncfs on a descriptor we hold.
        check(unsafe { libc::syncfs(self.fd.as_raw_fd()) })
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Dir {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The effective user's name for a per-user directory: the login name, or `uid<N>` when it has
/// none usable as a file name.
pub fn user_dir_name() -> String {
    let uid = euid();
    let mut buf = vec![0u8; 4096];
    // SAFETY: a zeroed passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pw`'s strings.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() && !pw.pw_name.is_null() {
        // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
        if let Ok(name) = name.to_str() {
            if component(name).is_ok() {
                return name.to_owned();
            }
        }
    }
    format!("uid{uid}")
}

/// Whether a shared directory can be trusted to hold per-user directories: not writable by
/// others unless sticky (then only an entry's owner may rename or remove it), and owned by the
/// user or root unless sticky.
fn shared_trusted(st: &Stat) -> bool {
    let sticky = st.mode & libc::S_ISVTX != 0;
    let others_write = st.mode & 0o022 != 0;
    sticky || (!others_write && (st.uid == euid() || st.uid == 0))
}

/// The effective user's private directory `<shared>/<user>` (mode 0700), made if needed.
///
/// `shared` (e.g. `/tmp/ada_traces`) is made sticky and writable by all, like `/tmp`, when it
/// does not exist, so every user of the machine gets a directory under it. It is refused when it
/// is a symbolic link, or writable by others without the sticky bit ([`Error::Untrusted`]). The
/// per-user directory is refused when it is a link or belongs to another user; one of the user's
/// own with a wider mode is narrowed to 0700. The path up to `shared`'s parent is followed as
/// given.
pub fn private_dir_under_shared(shared: &Path, user: &str) -> Result<Dir, Error> {
    let parent_path = shared
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = shared
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::io(shared, "use", ErrorKind::InvalidInput.into()))?;
    let parent = Dir::open(parent_path).map_err(|e| Error::io(parent_path, "open", e))?;
    let top = open_or_make(&parent, base, 0o1777)?;
    let st = top.stat().map_err(|e| Error::io(shared, "inspect", e))?;
    if !shared_trusted(&st) {
        return Err(Error::Untrusted {
            path: shared.to_path_buf(),
            mode: st.mode & 0o7777,
            uid: st.uid,
        });
    }
    let own = open_or_make(&top, user, PRIVATE_DIR)?;
    let st = own
        .stat()
        .map_err(|e| Error::io(own.path(), "inspect", e))?;
    if st.uid != euid() {
        return Err(Error::NotOwned {
            path: own.path,
            uid: st.uid,
            me: euid(),
        });
    }
    if st.mode & 0o077 != 0 {
        fchmod(own.fd.as_fd(), PRIVATE_DIR).map_err(|e| Error::io(own.path(), "chmod 0700", e))?;
    }
    Ok(own)
}

/// Opens `name` in `parent` without following a link, creating it with exactly `mode` first if
/// it does not exist.
fn open_or_make(parent: &Dir, name: &str, mode: u32) -> Result<Dir, Error> {
    let path = parent.join(name);
    match parent.create_dir(name, mode) {
        Ok(dir) => return Ok(dir),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == ErrorKind::PermissionDenied && path_exists(parent, name) => {}
        Err(e) => return Err(Error::io(&path, "create the directory", e)),
    }
    parent.open_dir_nofollow(name).map_err(|e| {
        if parent.is_symlink(name).unwrap_or(false) {
            Error::Symlink { path: path.clone() }
        } else {
            Error::io(&path, "open the directory", e)
        }
    })
}

fn path_exists(parent: &Dir, name: &str) -> bool {
    parent.is_symlink(name).is_ok()
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests;
