//! `-fpatchable-function-entry` builds: the agent turns each NOP sled the loaded objects list
//! (`__patchable_function_entries`) into a call of the agent's `tracer_patch_entry` hook (see `entry`) when it
//! starts (spawn) or attaches, and turns them back into NOPs when the tracer stops, so a program
//! that is not traced, or no longer, runs its own untouched code.
//!
//! How a sled is written while other threads run, and why that is safe, is the `patchsite`
//! crate's contract: one-byte-NOP sleds are changed displacement first, opcode last (restored in
//! the reverse order), every CPU serialised in between (`membarrier` `SYNC_CORE`, else the TLB
//! shootdown of the `mprotect` that makes the code read-only again); a multi-byte NOP is replaced
//! by one aligned 8-byte store. The call's target lies below the object's code, in a region the
//! agent maps per object ("landing"): at each target, `jmp [rip + x]` to the hook. A landing is
//! never unmapped (a thread may be between the call and the jump when the sled is restored) and
//! is reused by the next attachment. Objects are patched and restored inside `dl_iterate_phdr`,
//! so none can be unloaded meanwhile.

use core::ffi::{c_int, c_void};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use patchsite::{Kind, Sled};

use crate::attach::got::Object as Loaded;

extern "C" {
    /// The entry hook a patched sled calls, by its exported name, as a compiled `__fentry__`
    /// call names its hook (defined in `entry`; naming it through the linker keeps this module
    /// below the hooks, which build on the agent this module's patching is part of).
    fn tracer_patch_entry();
}

const PAGE: usize = 4096;

/// Everything the agent patched or prepared, per object.
static BOOK: Mutex<Vec<Object>> = Mutex::new(Vec::new());

/// One object with sleds.
struct Object {
    /// Load base and the loader's copy of its name (together: the object).
    base: usize,
    name: usize,
    /// The displacement every call of this object uses (its landing stays mapped for good).
    disp: i32,
    sites: Vec<Site>,
    /// The executable segments' pages holding sites, and their protection.
    text: Vec<(usize, usize, c_int)>,
    /// Which attachment patched it (0: not patched now).
    generation: u32,
}

/// One sled.
#[derive(Clone, Copy)]
struct Site {
    /// Run-time address of the call.
    at: usize,
    kind: Kind,
    /// The NOP bytes it had (written back at the restore).
    nop: [u8; patchsite::CALL_LEN],
}

/// What [`apply`] did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Applied {
    /// Sleds that now call the hook.
    pub(crate) patched: usize,
    /// Sleds left alone: an unknown form, a NOP straddling an 8-byte word, or an object whose
    /// code could not be made writable or whose landing found no free place.
    pub(crate) skipped: usize,
    /// Of `skipped`: sleds of objects whose landing found no free place (a non-PIE executable
    /// loaded low in the address space has none below its code).
    pub(crate) no_room: usize,
}

/// Patches the sleds of every loaded object, for attachment `generation`.
pub(crate) fn apply(generation: u32) -> Applied {
    let Ok(mut book) = BOOK.lock() else {
        return Applied::default();
    };
    // Relaxed: read and written under the book's lock only.
    ACTIVE.store(generation, Relaxed);
    apply_locked(&mut book, generation)
}

fn apply_locked(book: &mut Vec<Object>, generation: u32) -> Applied {
    let mut applied = Applied::default();
    let hook = tracer_patch_entry as *const () as usize;
    each_object(|o| {
        let i = match book
            .iter()
            .position(|b| b.base == o.base && b.name == o.name)
        {
            Some(i) => i,
            None => match prepare(&o, hook) {
                Prepared::Object(object) => {
                    book.push(object);
                    book.len() - 1
                }
                Prepared::Nothing => return,
                Prepared::NoRoom(n) => {
                    applied.skipped += n;
                    applied.no_room += n;
                    return;
                }
                Prepared::Refused(n) => {
                    applied.skipped += n;
                    return;
                }
            },
        };
        let object = &mut book[i];
        if object.generation == 0 {
            let (patched, skipped) = write_all(object, true);
            applied.patched += patched;
            applied.skipped += skipped;
            object.generation = generation;
        } else {
            object.generation = generation;
            applied.patched += object.sites.len();
        }
    });
    applied
}

/// The attachment whose sleds are patched now (0: none, the program runs its NOPs).
static ACTIVE: AtomicU32 = AtomicU32::new(0);

/// After a `dlopen`: patches what it loaded, while an attachment (or spawn's agent) records.
pub(crate) fn after_dlopen() {
    let Ok(mut book) = BOOK.lock() else {
        return;
    };
    // Relaxed: written under the book's lock, held here.
    let generation = ACTIVE.load(Relaxed);
    if generation != 0 {
        apply_locked(&mut book, generation);
    }
}

/// Puts every sled patched by attachment `generation` back, in the objects still loaded.
pub(crate) fn restore(generation: u32) {
    let Ok(mut book) = BOOK.lock() else {
        return;
    };
    // Relaxed: under the book's lock, as in `apply`; only the attachment that patched ends it.
    let _ = ACTIVE.compare_exchange(generation, 0, Relaxed, Relaxed);
    if !book.iter().any(|o| o.generation == generation) {
        return;
    }
    each_object(|o| {
        if let Some(object) = book
            .iter_mut()
            .find(|b| b.base == o.base && b.name == o.name && b.generation == generation)
        {
            write_all(object, false);
            object.generation = 0;
        }
    });
    // Objects unloaded meanwhile took their code along; a new one at the same place starts afresh.
    book.retain(|o| o.generation != generation);
}

enum Prepared {
    Object(Object),
    /// No sleds.
    Nothing,
    /// Sleds, but none can be patched (how many).
    Refused(usize),
    /// Sleds, but no place for the landing (how many).
    NoRoom(usize),
}

/// Finds an object's sleds and maps its landing.
fn prepare(o: &Loaded<'_>, hook: usize) -> Prepared {
    let Some(entries) = sled_entries(o) else {
        return Prepared::Nothing;
    };
    let mut sites = Vec::with_capacity(entries.len());
    let mut skipped = 0;
    for start in entries {
        let Some(exec) = exec_segment(o, start) else {
            skipped += 1;
            continue;
        };
        let len = patchsite::MAX_SLED.min(exec.1 - start);
        // SAFETY: `[start, start + len)` lies within a loaded executable segment of the object
        // (checked just above), which stays mapped while the loader's list is locked.
        let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, len) };
        match patchsite::classify(bytes) {
            Some(s) if usable(&s, start) => {
                let at = start + s.call_at;
                let mut nop = [0u8; patchsite::CALL_LEN];
                nop.copy_from_slice(&bytes[s.call_at..s.call_at + patchsite::CALL_LEN]);
                sites.push(Site {
                    at,
                    kind: s.kind,
                    nop,
                });
            }
            _ => skipped += 1,
        }
    }
    if sites.is_empty() {
        return Prepared::Refused(skipped);
    }
    sites.sort_unstable_by_key(|s| s.at);
    sites.dedup_by_key(|s| s.at);
    let Some(disp) = map_landing(&sites, hook) else {
        return Prepared::NoRoom(skipped + sites.len());
    };
    let mut text: Vec<(usize, usize, c_int)> = Vec::new();
    for (lo, hi, flags) in o.loads() {
        if flags & libc::PF_X == 0 {
            continue;
        }
        let inside: Vec<&Site> = sites.iter().filter(|s| (lo..hi).contains(&s.at)).collect();
        if let (Some(first), Some(last)) = (inside.first(), inside.last()) {
            let from = first.at & !(PAGE - 1);
            let to = (last.at + patchsite::CALL_LEN + PAGE - 1) & !(PAGE - 1);
            let mut prot = libc::PROT_EXEC;
            if flags & libc::PF_R != 0 {
                prot |= libc::PROT_READ;
            }
            text.push((from, to, prot));
        }
    }
    Prepared::Object(Object {
        base: o.base,
        name: o.name,
        disp,
        sites,
        text,
        generation: 0,
    })
}

fn usable(s: &Sled, start: usize) -> bool {
    s.kind == Kind::OneByteNops || s.atomic_word(start as u64).is_some()
}

/// The run-time addresses of an object's sleds, read from the section its file lists.
fn sled_entries(o: &Loaded<'_>) -> Option<Vec<usize>> {
    let path = path(o)?;
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let read = |offset: u64, buf: &mut [u8]| {
        // SAFETY: `buf` is writable for its length; a short or failed read is refused.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset as i64) };
        n == buf.len() as isize
    };
    let section = patchsite::find_section(read, patchsite::SECTION);
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    let (address, size) = section?;
    let lo = o.base.wrapping_add(address as usize);
    let count = size as usize / 8;
    // The section is loaded (SHF_ALLOC): it must lie in one of the object's segments.
    if count == 0 || !o.loads().any(|(a, b, _)| a <= lo && lo + count * 8 <= b) {
        return None;
    }
    // SAFETY: `count` words inside a loaded segment of the object (checked above).
    let words = unsafe { core::slice::from_raw_parts(lo as *const u64, count) };
    // Relocated run-time addresses; a link-time one (an object loaded at its link address, or a
    // word the loader left alone) is rebased.
    let entries = words
        .iter()
        .filter(|&&w| w != 0)
        .map(|&w| {
            let w = w as usize;
            if exec_segment(o, w).is_some() {
                w
            } else {
                o.base.wrapping_add(w)
            }
        })
        .collect();
    Some(entries)
}

/// Maps a landing for `sites` at the first displacement whose region is free: `jmp [rip + x]`
/// at each call's target, `x` reaching one word holding `hook`. Read-only and executable after.
fn map_landing(sites: &[Site], hook: usize) -> Option<i32> {
    let first = sites.first()?.at;
    let last = sites.last()?.at;
    for disp in patchsite::DISPLACEMENTS {
        let target = |at: usize| (at + patchsite::CALL_LEN).wrapping_add(disp as isize as usize);
        let (t0, t1) = (target(first), target(last) + JMP_LEN);
        if t0 > first {
            continue; // below the address space
        }
        let lo = t0 & !(PAGE - 1);
        let word = (t1 + 7) & !7;
        let hi = (word + 8 + PAGE - 1) & !(PAGE - 1);
        // SAFETY: a fresh anonymous mapping at a place nothing occupies (the kernel refuses an
        // occupied one: MAP_FIXED_NOREPLACE); an older kernel that ignores the flag may place
        // it elsewhere, which is checked and undone.
        let got = unsafe {
            libc::mmap(
                lo as *mut c_void,
                hi - lo,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            continue;
        }
        if got as usize != lo {
            // SAFETY: the mapping just made, unused.
            unsafe { libc::munmap(got, hi - lo) };
            continue;
        }
        // SAFETY: `[lo, hi)` is ours and writable; every target and the word lie inside it
        // (targets of distinct sites are at least 6 bytes apart: each sled is followed by at
        // least one instruction of its function before the next sled).
        unsafe {
            (word as *mut usize).write(hook);
            for s in sites {
                let t = target(s.at);
                let rel = (word as isize - (t + JMP_LEN) as isize) as i32;
                let r = rel.to_le_bytes();
                let jmp = [0xff, 0x25, r[0], r[1], r[2], r[3]];
                core::ptr::copy_nonoverlapping(jmp.as_ptr(), t as *mut u8, JMP_LEN);
            }
            libc::mprotect(got, hi - lo, libc::PROT_READ | libc::PROT_EXEC);
        }
        return Some(disp);
    }
    None
}

/// `jmp [rip + rel32]`.
const JMP_LEN: usize = 6;

/// Writes every site of `object` (`patch`: NOPs to calls; else back). Returns (written,
/// skipped): skipped when the code cannot be made writable.
fn write_all(object: &mut Object, patch: bool) -> (usize, usize) {
    let writable = object.text.iter().all(|&(lo, hi, prot)| {
        // SAFETY: pages of the object's own code, kept executable while written.
        unsafe { libc::mprotect(lo as *mut c_void, hi - lo, prot | libc::PROT_WRITE) == 0 }
    });
    if !writable {
        protect(object);
        return (0, object.sites.len());
    }
    let call = patchsite::call_bytes(object.disp);
    let nops = [0x90u8; patchsite::CALL_LEN];
    let (from, to) = if patch { (nops, call) } else { (call, nops) };
    let phases = patchsite::steps(from, to);
    for (n, phase) in phases.iter().enumerate() {
        for s in &object.sites {
            match s.kind {
                Kind::OneByteNops => {
                    for &(offset, byte) in phase.stores() {
                        // SAFETY: a byte of the site, writable now; a volatile byte store is
                        // one store the CPU makes visible whole.
                        unsafe { core::ptr::write_volatile((s.at + offset) as *mut u8, byte) };
                    }
                }
                Kind::FiveByteNop if n == 0 => five_byte(s.at, if patch { call } else { s.nop }),
                Kind::FiveByteNop => {}
            }
        }
        if n == 0 {
            sync_cores();
        }
    }
    protect(object);
    sync_cores();
    (object.sites.len(), 0)
}

/// Writes `code` (the call, or the NOP back) over the 5-byte site at `at` in one aligned 8-byte
/// store.
fn five_byte(at: usize, code: [u8; patchsite::CALL_LEN]) {
    let word = at & !7;
    let offset = at - word;
    // SAFETY: the aligned word holding the whole site (checked when the site was taken), in a
    // writable page of the object's code; an atomic store of it is what other CPUs see whole.
    let cell = unsafe { &*(word as *const core::sync::atomic::AtomicU64) };
    // Relaxed: the code bytes are ordered for other CPUs by the serialisation that follows, not
    // by a memory-model edge.
    let old = cell.load(core::sync::atomic::Ordering::Relaxed);
    let mut bytes = old.to_le_bytes();
    bytes[offset..offset + patchsite::CALL_LEN].copy_from_slice(&code);
    // Relaxed: as above.
    cell.store(
        u64::from_le_bytes(bytes),
        core::sync::atomic::Ordering::Relaxed,
    );
}

/// Makes the object's code read-only again (its own protection).
fn protect(object: &Object) {
    for &(lo, hi, prot) in &object.text {
        // SAFETY: pages of the object's own code, given back their protection.
        unsafe { libc::mprotect(lo as *mut c_void, hi - lo, prot) };
    }
}

/// Serialises every CPU running this process, so none executes code bytes it fetched before the
/// stores so far (`membarrier` `PRIVATE_EXPEDITED_SYNC_CORE`, registered on first use). Without
/// it, the `mprotect` that ends each pass flushes the TLB of those CPUs with an interrupt, whose
/// return serialises them too.
fn sync_cores() {
    use core::sync::atomic::{AtomicU8, Ordering::Relaxed};
    const REGISTER: c_int = 1 << 6;
    const SYNC_CORE: c_int = 1 << 5;
    static STATE: AtomicU8 = AtomicU8::new(0);
    // Relaxed: a per-process registration; a race registers twice, which is harmless.
    let mut state = STATE.load(Relaxed);
    if state == 0 {
        // SAFETY: membarrier takes no pointers.
        let r = unsafe { libc::syscall(libc::SYS_membarrier, REGISTER, 0, 0) };
        state = if r == 0 { 1 } else { 2 };
        STATE.store(state, Relaxed);
    }
    if state == 1 {
        // SAFETY: as above; registered just before.
        unsafe { libc::syscall(libc::SYS_membarrier, SYNC_CORE, 0, 0) };
    }
}

/// The executable segment of `o` holding `address`.
fn exec_segment(o: &Loaded<'_>, address: usize) -> Option<(usize, usize)> {
    o.loads()
        .find(|&(lo, hi, f)| f & libc::PF_X != 0 && (lo..hi).contains(&address))
        .map(|(lo, hi, _)| (lo, hi))
}

/// The file to read the sections of `o` from: the loader's name, or the executable's.
fn path(o: &Loaded<'_>) -> Option<std::ffi::CString> {
    // SAFETY: the loader's NUL-terminated name of the object (valid during the callback).
    let name = (o.name != 0)
        .then(|| unsafe { core::ffi::CStr::from_ptr(o.name as *const core::ffi::c_char) })
        .map(|n| n.to_bytes())
        .unwrap_or_default();
    if name.is_empty() {
        // The executable (the loader names it "").
        return Some(c"/proc/self/exe".to_owned());
    }
    if !name.contains(&b'/') {
        return None; // the vDSO and the like: no file
    }
    std::ffi::CString::new(name).ok()
}

/// Calls `f` with each loaded object, inside `dl_iterate_phdr` (the loader's list locked: no
/// object is unloaded meanwhile).
fn each_object(mut f: impl FnMut(Loaded<'_>)) {
    crate::attach::got::each_object(|o| {
        f(o);
        true
    });
}
