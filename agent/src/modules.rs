//! Reporting the process image's objects into the region's module log (see `registry::modules`):
//! at the agent's start (every object the loader has mapped) and after each `dlopen` (the objects
//! it added). The tracer reads the files from disk at the reported load biases, so names never
//! depend on the target still running when the tracer looks.
//!
//! Each object is reported once per image: the agent remembers the load biases it reported (a
//! process-private list; `dlopen` of an object already loaded reports nothing). The agent itself
//! is left out (it is never instrumented), and so are objects without a file (the vDSO).

use std::ffi::{c_int, c_void, CStr};
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use registry::{ModuleReport, Registry, MODULE_LAST, MODULE_MAIN};

use crate::say::say;

/// How long a new image waits for the tracer to read its objects when the tracer asked for it
/// (`--trigger symbol=` names to resolve), so the triggers are armed before the program runs.
/// A bound, not a figure: the tracer answers within a few of its 1 ms ticks.
const ACK_TIMEOUT_US: u64 = 2_000_000;

/// Load biases already reported in this image (a fork child inherits them, rightly: same image).
static REPORTED: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// One object the loader lists.
struct Object {
    bias: u64,
    /// The object's lowest mapped address (tells two objects at bias 0 apart: a non-PIE
    /// executable and another non-relocated object).
    first: u64,
    path: Vec<u8>,
    main: bool,
}

/// Reports every object of this image not reported yet; waits for the tracer's acknowledgement if
/// it asked for one. Returns how many objects were reported.
pub(crate) fn report_new(reg: &Registry<'_>, pid: u32, image: u32) -> usize {
    let mut objects: Vec<Object> = Vec::new();
    // SAFETY: the callback only reads the `dl_phdr_info` it is given, during the call.
    unsafe { libc::dl_iterate_phdr(Some(collect), (&mut objects as *mut Vec<Object>).cast()) };
    let own = own_base();
    let Ok(mut reported) = REPORTED.lock() else {
        return 0;
    };
    let fresh: Vec<&Object> = objects
        .iter()
        .filter(|o| o.bias != own && !reported.contains(&(o.bias, o.first)))
        .filter(|o| o.main || o.path.first() == Some(&b'/'))
        .collect();
    let mut last = None;
    for (n, o) in fresh.iter().enumerate() {
        let (dev, ino, mtime_ns) = identity(&o.path);
        let mut flags = if o.main { MODULE_MAIN } else { 0 };
        if n + 1 == fresh.len() {
            flags |= MODULE_LAST;
        }
        let report = ModuleReport {
            pid,
            image,
            flags,
            bias: o.bias,
            dev,
            ino,
            mtime_ns,
            path: &o.path,
        };
        if let Some(at) = reg.report_module(&report) {
            last = Some(at);
        }
        reported.push((o.bias, o.first));
    }
    drop(reported);
    if let Some(at) = last {
        if !reg.wait_module_ack(at, ACK_TIMEOUT_US) {
            say("the tracer did not read this program's objects in time; triggers may be missed");
        }
    }
    fresh.len()
}

/// Forgets what was reported (a new image: the agent's statics start afresh anyway after
/// `exec`; this is for an attach to a new region, whose log is empty).
pub(crate) fn forget() {
    if let Ok(mut reported) = REPORTED.lock() {
        reported.clear();
    }
}

extern "C" fn collect(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
    // SAFETY: `data` is the Vec passed to dl_iterate_phdr; `info` is valid during the call.
    let (objects, info) = unsafe { (&mut *data.cast::<Vec<Object>>(), &*info) };
    let bias = info.dlpi_addr;
    let mut first = u64::MAX;
    for i in 0..usize::from(info.dlpi_phnum) {
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        let ph = unsafe { &*info.dlpi_phdr.add(i) };
        if ph.p_type == libc::PT_LOAD {
            first = first.min(bias.wrapping_add(ph.p_vaddr));
        }
    }
    let name = if info.dlpi_name.is_null() {
        &[][..]
    } else {
        // SAFETY: a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes()
    };
    // The first object with an empty name is the executable.
    let main = name.is_empty() && !objects.iter().any(|o| o.main);
    let path = if main {
        std::fs::read_link("/proc/self/exe")
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .unwrap_or_default()
    } else {
        name.to_vec()
    };
    if first != u64::MAX && !path.is_empty() {
        objects.push(Object {
            bias,
            first,
            path,
            main,
        });
    }
    0
}

/// The agent's own load bias.
fn own_base() -> u64 {
    // SAFETY: all-zero is a valid Dl_info.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: a valid out-parameter and an address inside the agent.
    if unsafe { libc::dladdr(own_base as *const c_void, &mut info) } == 0 {
        return u64::MAX;
    }
    // `dli_fbase` is the lowest mapped address; the agent is a shared object linked at 0, so
    // that is its bias.
    info.dli_fbase as u64
}

/// Device, inode and modification time (ns) of the file at `path`; zeros if it cannot be read.
fn identity(path: &[u8]) -> (u64, u64, u64) {
    let Ok(c) = std::ffi::CString::new(path) else {
        return (0, 0, 0);
    };
    // SAFETY: all-zero is a valid stat buffer.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-parameter.
    if unsafe { libc::stat(c.as_ptr(), &mut st) } != 0 {
        return (0, 0, 0);
    }
    let mtime = (st.st_mtime as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(st.st_mtime_nsec as u64);
    (st.st_dev, st.st_ino, mtime)
}
