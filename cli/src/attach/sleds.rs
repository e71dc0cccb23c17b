//! Safe points in `-fpatchable-function-entry` programs: until the agent patches them, their
//! sleds call nothing, so the injection stops a thread at a sled instead of a hook. A byte of a
//! sled that every entry executes ([`patchsite::Sled::stop_at`]) is the entry of an instrumented
//! function, as safe as the hooks' entry.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// At most this many sleds get a breakpoint (the first thread to reach any of them is enough).
const MAX_POINTS: usize = 4096;

/// Where to stop a thread of `pid` at a sled (run-time addresses), read through `mem`, the
/// target's `/proc/<pid>/mem`, for the modules mapped in `maps`.
pub(super) fn safe_points(pid: i32, maps: &str, mem: &File) -> Vec<u64> {
    let mut points = Vec::new();
    for m in crate::symbols::maps::parse(maps) {
        if m.offset != 0 || !m.path.starts_with('/') || points.len() >= MAX_POINTS {
            continue;
        }
        // The target's own view of the file (it may live in another mount namespace).
        let own = format!("/proc/{pid}/root{}", m.path);
        let Ok(file) = File::open(&own).or_else(|_| File::open(&m.path)) else {
            continue;
        };
        let read = |offset: u64, buf: &mut [u8]| file.read_exact_at(buf, offset).is_ok();
        let Some((address, size)) = patchsite::find_section(read, patchsite::SECTION) else {
            continue;
        };
        let mut e_type = [0u8; 2];
        if file.read_exact_at(&mut e_type, 16).is_err() {
            continue;
        }
        // A position-independent object's first segment is at link address 0.
        let bias = if u16::from_le_bytes(e_type) == object::elf::ET_EXEC {
            0
        } else {
            m.start
        };
        let count = (size / 8).min((MAX_POINTS - points.len()) as u64) as usize;
        let mut words = vec![0u8; count * 8];
        if mem.read_exact_at(&mut words, bias + address).is_err() {
            continue;
        }
        for word in words.chunks_exact(8) {
            let start = u64::from_le_bytes(word.try_into().unwrap_or_default());
            let mut bytes = [0u8; patchsite::MAX_SLED];
            let n = mem.read_at(&mut bytes, start).unwrap_or(0);
            if let Some(sled) = patchsite::classify(&bytes[..n]) {
                points.push(start + sled.stop_at() as u64);
            }
        }
    }
    points
}
