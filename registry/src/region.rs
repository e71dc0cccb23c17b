//! The region in a memfd: created by the tracer, inherited or opened by the agent.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;

use crate::clock::Clock;
use crate::layout::{RegionConfig, MIN_CAPACITY};
use crate::{Handshake, Registry, RegistryError};

/// Environment variable holding the number of the inherited region fd (spawn mode).
pub const ENV_REGION_FD: &str = "TRACER_REGION_FD";
/// Environment variable holding a path to the region (a `/proc/<pid>/fd/<n>` or a file), used
/// when no fd is inherited (attach mode).
pub const ENV_REGION_PATH: &str = "TRACER_REGION_PATH";

/// A region mapped `MAP_SHARED` into this process: the tracer's (from [`SharedRegion::create`],
/// owning the memfd) or the agent's (from [`SharedRegion::open_fd`]/[`SharedRegion::open_path`]).
///
/// Like `memmap2::MmapRaw`, it hands out raw memory only: everything inside is reached through
/// [`Registry`], which uses atomics for all shared state. It maps with `mmap(2)` itself rather
/// than through `memmap2` because the agent, preloaded into every traced program, uses this type
/// too and stays free of third-party dependencies; the mapping it needs (one shared read-write
/// map of a whole descriptor, unmapped on drop) is a dozen lines.
#[derive(Debug)]
pub struct SharedRegion {
    ptr: NonNull<u8>,
    len: usize,
    fd: Option<OwnedFd>,
}

// SAFETY: the mapping is plain shared memory; all access goes through the registry's atomics.
unsafe impl Send for SharedRegion {}
// SAFETY: as above.
unsafe impl Sync for SharedRegion {}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let what = what.into();
    move |source| RegistryError::Io { what, source }
}

/// This process's file-size limit (`RLIMIT_FSIZE`, `ulimit -f`) in bytes, `None` when unlimited.
/// A memfd's size counts against it: a region larger than the limit cannot be created (see
/// [`RegionConfig::fit_to`]).
pub fn file_size_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `limit`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

fn map(fd: BorrowedFd<'_>, len: usize) -> Result<NonNull<u8>, std::io::Error> {
    // SAFETY: a fresh shared mapping of `len` bytes of `fd`; no existing memory is affected.
    let ptr = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))
}

impl SharedRegion {
    /// Creates a region for `config` in a new memfd (close-on-exec; see
    /// [`SharedRegion::inheritable_fd`]), calibrating the clock (20 ms). The handshake falls back
    /// to [`Handshake::Fence`] when the kernel lacks the global expedited membarrier.
    pub fn create(config: &RegionConfig) -> Result<Self, RegistryError> {
        Self::create_with_clock(
            config,
            &Clock::calibrate(std::time::Duration::from_millis(20)),
        )
    }

    /// As [`SharedRegion::create`], with a given clock.
    pub fn create_with_clock(config: &RegionConfig, clock: &Clock) -> Result<Self, RegistryError> {
        if config.capacity < MIN_CAPACITY {
            return Err(RegistryError::BadConfig(format!(
                "capacity of {} threads: use at least {MIN_CAPACITY}",
                config.capacity
            )));
        }
        let mut config = config.clone();
        if config.handshake == Handshake::Membarrier
            && !crate::membarrier::global_expedited_supported()
        {
            config.handshake = Handshake::Fence;
        }
        let len = crate::layout_size(&config)?;
        // SAFETY: a NUL-terminated name and valid flags.
        let raw = unsafe { libc::memfd_create(c"tracer-region".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io("memfd_create for the shared region")(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: memfd_create returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A memfd is created 0777; the region is reachable as /proc/<pid>/fd/<n> only, but it
        // holds the target's call stream and stack bytes, so it is the owner's alone.
        // SAFETY: fchmod on our own fd; no memory is passed.
        if unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) } != 0 {
            return Err(io("making the region private (fchmod 0600)")(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: ftruncate on our own fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io(format!("sizing the region to {len} bytes"))(
                std::io::Error::last_os_error(),
            ));
        }
        let ptr = map(fd.as_fd(), len).map_err(io("mapping the region"))?;
        let region = SharedRegion {
            ptr,
            len,
            fd: Some(fd),
        };
        // SAFETY: a fresh, page-aligned, exclusive mapping of `len` bytes.
        unsafe { Registry::<ring::StdBackend>::init(region.memory(), &config, clock) }?;
        Ok(region)
    }

    /// Maps and validates the region behind `fd` (which stays open and is not owned).
    pub fn open_fd(fd: RawFd) -> Result<Self, RegistryError> {
        // SAFETY: a zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: fstat writes into `st`; a bad fd is an error return.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(io(format!("region fd {fd} is not open"))(
                std::io::Error::last_os_error(),
            ));
        }
        let len = st.st_size as usize;
        let needed = core::mem::size_of::<crate::layout::ControlBlock>();
        if len < needed {
            return Err(RegistryError::TooSmall { needed, got: len });
        }
        // SAFETY: `fd` is open (fstat succeeded) for the duration of this call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let ptr = map(borrowed, len).map_err(io(format!("mapping region fd {fd}")))?;
        let region = SharedRegion { ptr, len, fd: None };
        region.registry()?;
        Ok(region)
    }

    /// Opens, maps and validates the region at `path`.
    pub fn open_path(path: &Path) -> Result<Self, RegistryError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(format!("opening region {}", path.display())))?;
        Self::open_fd(file.as_raw_fd())
    }

    /// The region named by the environment: [`ENV_REGION_FD`], else [`ENV_REGION_PATH`].
    /// `Ok(None)` when neither is set.
    pub fn from_env() -> Result<Option<Self>, RegistryError> {
        if let Some(v) = std::env::var_os(ENV_REGION_FD) {
            let s = v.to_string_lossy();
            let fd: RawFd = s.trim().parse().map_err(|_| {
                RegistryError::BadConfig(format!(
                    "{ENV_REGION_FD}={s} is not a file descriptor number"
                ))
            })?;
            return Self::open_fd(fd).map(Some);
        }
        if let Some(p) = std::env::var_os(ENV_REGION_PATH) {
            return Self::open_path(Path::new(&p)).map(Some);
        }
        Ok(None)
    }

    fn memory(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }

    /// The validated registry view of the mapping.
    pub fn registry(&self) -> Result<Registry<'_>, RegistryError> {
        // SAFETY: the mapping is valid for reads and writes while `self` lives.
        unsafe { Registry::<ring::StdBackend>::attach(self.memory()) }
    }

    /// Leaks the mapping and returns a view valid for the rest of the process (the agent never
    /// unmaps the region).
    pub fn leak(self) -> Result<Registry<'static>, RegistryError> {
        let memory = self.memory();
        core::mem::forget(self);
        // SAFETY: the mapping is never unmapped now, so it is valid for 'static.
        unsafe { Registry::<ring::StdBackend>::attach(memory) }
    }

    /// As [`SharedRegion::leak`], for a process that unmaps the region once no thread can touch it
    /// again (the agent at the end of an attach): the [`Mapping`] unmaps it.
    pub fn leak_unmappable(self) -> Result<(Registry<'static>, Mapping), RegistryError> {
        let mapping = Mapping {
            ptr: self.ptr,
            len: self.len,
        };
        Ok((self.leak()?, mapping))
    }

    /// The region's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd (tracer side only).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// Clears close-on-exec on the memfd so a child spawned next inherits it, and returns its
    /// number, to pass as [`ENV_REGION_FD`].
    pub fn inheritable_fd(&self) -> Result<RawFd, RegistryError> {
        let fd = self
            .fd()
            .ok_or_else(|| RegistryError::BadConfig("this mapping has no memfd to pass on".into()))?
            .as_raw_fd();
        // SAFETY: fcntl on our own open fd.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(io("clearing close-on-exec on the region fd")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(fd)
    }
}

/// A leaked region's mapping (see [`SharedRegion::leak_unmappable`]).
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an address range; unmapping it is the only thing it allows, behind `unsafe`.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Unmaps the region.
    ///
    /// # Safety
    /// No [`Registry`] view of it, or anything reached through one (lanes, writers, producers), is
    /// used again, by any thread.
    pub unsafe fn unmap(self) {
        // SAFETY: the mapping made by the region's constructor, unmapped once (the caller's
        // contract says nothing uses it any more).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: mapped in this struct's constructor with this length, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
