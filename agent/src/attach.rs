//! Attach mode: the tracer `dlopen`s the agent into a running process and calls
//! [`tracer_agent_attach`] with the path of its region. The program's calls were bound to glibc's
//! no-op hooks when it started, so the agent redirects them: it rewrites the GOT entries
//! (`R_X86_64_JUMP_SLOT` and `R_X86_64_GLOB_DAT`) of `__cyg_profile_func_enter/exit` in every
//! loaded object to its own hooks, RELRO pages included (`mprotect` around the store). When the
//! tracer stops acceptance, the first thread that sees it writes the saved entries back
//! ([`restore_hooks`]): from then on the program calls glibc's stubs again, untraced, at full
//! speed. A later attach reuses the loaded agent with a new region (a new generation).

use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicU32, AtomicU8};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::Path;
use std::sync::Mutex;

use registry::SharedRegion;

use crate::thread::{tls, ThreadState};
use crate::{Agent, AGENT, READY, STATE};

/// The newest attachment's generation (0: none; spawn mode's agent is generation 1).
static GENERATION: AtomicU32 = AtomicU32::new(0);
/// Whether GOT entries currently point at the agent: UNPATCHED or PATCHED.
static GOT_STATE: AtomicU8 = AtomicU8::new(UNPATCHED);
const UNPATCHED: u8 = 0;
const PATCHED: u8 = 1;
/// The entries rewritten, with their original values.
static PATCHES: Mutex<Vec<Patch>> = Mutex::new(Vec::new());

const R_X86_64_GLOB_DAT: u32 = 6;
const R_X86_64_JUMP_SLOT: u32 = 7;
const DT_NULL: i64 = 0;
const DT_PLTRELSZ: i64 = 2;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_JMPREL: i64 = 23;
const PT_DYNAMIC: u32 = 2;
const PT_GNU_RELRO: u32 = 0x6474_e552;

/// One rewritten GOT entry.
struct Patch {
    address: usize,
    original: usize,
    hook: usize,
    relro: bool,
}

/// `tracer_agent_attach(path)`: maps the region at `path` (NUL-terminated), makes it the current
/// attachment and redirects the program's hook calls to the agent. Returns the number of GOT
/// entries that now point at the agent (0: nothing calls the hooks), -1 if the region cannot be
/// used (said on stderr), or -2 if a live tracer is recording the process already (nothing
/// changes).
///
/// # Safety
/// `path` is a valid NUL-terminated string. Called by the tracer from one thread of the target,
/// at a point where that thread holds no libc lock.
#[no_mangle]
pub unsafe extern "C" fn tracer_agent_attach(path: *const c_char) -> c_int {
    if recorded_by_live_tracer() {
        return BUSY;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let path = unsafe { CStr::from_ptr(path) };
    let path =
        Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()));
    let region = match SharedRegion::open_path(path) {
        Ok(r) => r,
        Err(e) => {
            crate::say(&format!("cannot attach: {e}"));
            return -1;
        }
    };
    let generation = GENERATION.load(Relaxed).max(1) + 1;
    let agent = match crate::build_from(region, generation) {
        Ok(a) => a,
        Err(e) => {
            crate::say(&format!("cannot attach: {e}"));
            return -1;
        }
    };
    // Acquire: pairs with the Release store of READY in `init_slow` / below.
    if STATE.load(Acquire) == READY {
        // SAFETY: a published agent is never freed.
        let old = unsafe { &*AGENT.load(Acquire) };
        // An earlier tracer that left without stopping: its threads move to this attachment.
        if old.reg.is_accepting() {
            let _ = old.reg.stop_accepting(core::time::Duration::ZERO);
        }
    }
    // Release: pairs with the Acquire loads in `crate::agent` and `stale`: the agent is built.
    AGENT.store(Box::into_raw(Box::new(agent)), Release);
    // Release: pairs with the Acquire loads in `stale` and `restore_hooks` (the new generation is
    // seen with the agent that carries it).
    GENERATION.store(generation, Release);
    // Release: pairs with the Acquire in `crate::agent`.
    STATE.store(READY, Release);
    patch_hooks() as c_int
}

/// [`tracer_agent_attach`]'s answer when another tracer is recording this process.
const BUSY: c_int = -2;

/// Whether the current agent's region still accepts events and the tracer that made it is alive
/// (a spawn, or another attach): a second tracer must not take its threads away.
fn recorded_by_live_tracer() -> bool {
    // Acquire: pairs with the Release stores of READY in `init_slow` and `tracer_agent_attach`.
    if STATE.load(Acquire) != READY {
        return false;
    }
    // SAFETY: a published agent is never freed.
    let current = unsafe { &*AGENT.load(Acquire) };
    if !current.reg.is_accepting() {
        return false;
    }
    let tracer = current.reg.tracer_pid() as libc::pid_t;
    // SAFETY: signal 0 only checks that the process exists.
    tracer > 0
        && (unsafe { libc::kill(tracer, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Whether `st` belongs to an attachment older than the current one.
#[inline]
pub(crate) fn stale(st: &ThreadState) -> bool {
    // Acquire: pairs with the Release store in `tracer_agent_attach`.
    st.agent.generation < GENERATION.load(Acquire)
}

/// Forgets this thread's state (it re-registers with the current agent on its next event).
pub(crate) fn forget_state() {
    // SAFETY: only this thread touches its TLS block.
    unsafe { (*tls()).state = core::ptr::null_mut() };
}

/// Writes the saved GOT entries back, if `agent` is the current attachment and they were changed.
pub(crate) fn restore_hooks(agent: &Agent) {
    // Relaxed flag: a hint that spares the lock (the swap below decides). Acquire on GENERATION:
    // pairs with its Release store in `tracer_agent_attach`.
    if GOT_STATE.load(Relaxed) != PATCHED || agent.generation < GENERATION.load(Acquire) {
        return;
    }
    let Ok(mut patches) = PATCHES.lock() else {
        return;
    };
    // AcqRel: the mutex orders this with `patch_hooks`; the flag only spares the lock.
    if GOT_STATE.swap(UNPATCHED, AcqRel) != PATCHED {
        return;
    }
    for p in patches.drain(..) {
        // SAFETY: `p.address` is a GOT entry found in a loaded object's relocations, which stays
        // mapped (objects with instrumented code are not unloaded while it runs).
        unsafe { store(&p, p.hook, p.original) };
    }
}

/// Points every hook GOT entry of every loaded object at the agent. Returns how many do.
fn patch_hooks() -> usize {
    let Ok(mut patches) = PATCHES.lock() else {
        return 0;
    };
    // Acquire: pairs with the Release store of PATCHED below (an earlier attachment's).
    if GOT_STATE.load(Acquire) == PATCHED {
        return patches.len(); // still redirected (an earlier tracer left without stopping)
    }
    let mut found = Vec::new();
    // SAFETY: the callback only reads the loader's program headers and dynamic sections.
    unsafe { libc::dl_iterate_phdr(Some(collect), (&mut found as *mut Vec<Patch>).cast()) };
    for p in &found {
        // SAFETY: as in `restore_hooks`.
        unsafe { store(p, p.original, p.hook) };
    }
    *patches = found;
    // Release: pairs with the Acquire above.
    GOT_STATE.store(PATCHED, Release);
    patches.len()
}

/// Replaces the entry's value `from` with `to` (leaves it if it holds something else).
///
/// # Safety
/// `p.address` is a mapped, 8-byte aligned GOT entry.
unsafe fn store(p: &Patch, from: usize, to: usize) {
    let entry = p.address as *mut usize;
    let page_size = 4096usize;
    let page = (p.address & !(page_size - 1)) as *mut c_void;
    if p.relro {
        // SAFETY: the page holds the entry; making it writable for the store is what the
        // dynamic linker does before it seals RELRO.
        unsafe { libc::mprotect(page, page_size, libc::PROT_READ | libc::PROT_WRITE) };
    }
    let slot = entry.cast::<core::sync::atomic::AtomicUsize>();
    // SAFETY: an aligned word of a mapped, writable page; a compare-exchange keeps an entry that
    // changed meanwhile.
    let _ = unsafe { &*slot }.compare_exchange(from, to, Relaxed, Relaxed);
    if p.relro {
        // SAFETY: as above; RELRO pages are read-only.
        unsafe { libc::mprotect(page, page_size, libc::PROT_READ) };
    }
}

#[repr(C)]
struct Dyn {
    tag: i64,
    val: u64,
}

#[repr(C)]
struct Rela {
    offset: u64,
    info: u64,
    addend: i64,
}

#[repr(C)]
struct Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

/// `dl_iterate_phdr` callback: appends the object's hook GOT entries to the `Vec<Patch>`.
unsafe extern "C" fn collect(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: the loader passes a valid info and our own Vec pointer.
    let (info, found) = unsafe { (&*info, &mut *data.cast::<Vec<Patch>>()) };
    let base = info.dlpi_addr as usize;
    // SAFETY: the loader's program headers, `dlpi_phnum` of them.
    let phdrs = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let Some(dynamic) = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC) else {
        return 0;
    };
    let relro = phdrs
        .iter()
        .find(|p| p.p_type == PT_GNU_RELRO)
        // The loader seals whole pages only: the last partial page stays writable.
        .map(|p| {
            let lo = base + p.p_vaddr as usize;
            (lo, (lo + p.p_memsz as usize) & !4095)
        });
    // The loader relocates most d_ptr values in place; the vDSO's stay relative.
    let abs = |v: u64| {
        let v = v as usize;
        if v < base {
            v + base
        } else {
            v
        }
    };
    let (mut strtab, mut symtab, mut rela, mut relasz, mut jmprel, mut pltrelsz) =
        (0, 0, 0, 0, 0, 0);
    let mut d = (base + dynamic.p_vaddr as usize) as *const Dyn;
    loop {
        // SAFETY: the dynamic section is mapped and ends with DT_NULL.
        let entry = unsafe { &*d };
        match entry.tag {
            DT_NULL => break,
            DT_STRTAB => strtab = abs(entry.val),
            DT_SYMTAB => symtab = abs(entry.val),
            DT_RELA => rela = abs(entry.val),
            DT_RELASZ => relasz = entry.val as usize,
            DT_JMPREL => jmprel = abs(entry.val),
            DT_PLTRELSZ => pltrelsz = entry.val as usize,
            _ => {}
        }
        // SAFETY: still inside the dynamic section (DT_NULL not reached).
        d = unsafe { d.add(1) };
    }
    if strtab == 0 || symtab == 0 {
        return 0;
    }
    let enter = crate::hook::__cyg_profile_func_enter as *const () as usize;
    let exit = crate::hook::__cyg_profile_func_exit as *const () as usize;
    for (table, bytes) in [(rela, relasz), (jmprel, pltrelsz)] {
        if table == 0 {
            continue;
        }
        let n = bytes / core::mem::size_of::<Rela>();
        // SAFETY: the object's relocation table, `bytes` long.
        let relas = unsafe { core::slice::from_raw_parts(table as *const Rela, n) };
        for r in relas {
            let kind = (r.info & 0xffff_ffff) as u32;
            if kind != R_X86_64_JUMP_SLOT && kind != R_X86_64_GLOB_DAT {
                continue;
            }
            let index = (r.info >> 32) as usize;
            // SAFETY: a symbol index taken from the object's own relocation.
            let sym = unsafe { &*(symtab as *const Sym).add(index) };
            // SAFETY: the string table holds NUL-terminated names at `st_name` offsets.
            let name = unsafe { CStr::from_ptr((strtab + sym.name as usize) as *const c_char) };
            let hook = match name.to_bytes() {
                b"__cyg_profile_func_enter" => enter,
                b"__cyg_profile_func_exit" => exit,
                _ => continue,
            };
            let address = base + r.offset as usize;
            // SAFETY: a GOT entry of a loaded object, aligned (the loader writes it as a word).
            let original = unsafe { *(address as *const usize) };
            if original == hook {
                continue;
            }
            let in_relro = relro.is_some_and(|(lo, hi)| address >= lo && address < hi);
            found.push(Patch {
                address,
                original,
                hook,
                relro: in_relro,
            });
        }
    }
    0
}
