//! The GOT entries the agent rewrites: in each loaded object, the `R_X86_64_JUMP_SLOT` and
//! `R_X86_64_GLOB_DAT` entries of the hooks (`__cyg_profile_func_enter/exit`, `mcount`,
//! `_mcount`, `__fentry__`), of the unwinder's entry points and of `dlopen`/`dlmopen`, pointed at
//! the addresses the attach gives in a [`Targets`] table (this module names none of the agent's
//! functions), with the book of what each held before.
//!
//! - **Mapped while written.** Every pass runs inside `dl_iterate_phdr`, which holds the loader's
//!   list lock: `dlclose` unlinks and unmaps an object under that same lock, so an object the pass
//!   lists stays mapped until it ends, and an object unloaded since it was rewritten is simply not
//!   listed (its entries are forgotten, never written). Lock order: the loader's lock, then the
//!   book, never the other way round.
//! - **Objects being loaded.** Another thread's `dlopen` lists an object before it has relocated
//!   it and sealed its RELRO pages. An entry that still holds its link-time value (the loader would
//!   add the base to it, or overwrite it) is left alone, and so is an entry on a RELRO page that is
//!   still writable (the loader seals it when it has finished; a store racing the seal would
//!   fault). Both are taken at the next pass after a load.
//! - **Compare and swap.** An entry is only ever changed from the value read when the pass
//!   planned the store: one that changed meanwhile (lazy binding resolving it concurrently, see
//!   below) is left as it is. A lazy `_dl_fixup` that read the entry before a pass and writes the
//!   resolved function after it undoes the redirection of that one entry (calls through it run
//!   untraced, as before the attach): the next pass after a load redirects it again, and at the
//!   stop the entry already holds glibc's function, as good as the original the restore would
//!   have written.
//! - **Order.** The program's other threads run on during a pass, so every entry but the enter
//!   hooks' is stored first and the enter hooks' last, in one burst (see [`redirect`]).
//! - **Cost.** A pass after a load only checks the objects the previous pass finished (their
//!   redirected entries still hold the agent's values) and walks the relocations of the others
//!   only, so its cost follows what the load added, not what was loaded before (walking every
//!   relocation of a large program takes milliseconds). A load that adds no object (the library
//!   was loaded already) stops at the first object.

use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicU8, AtomicUsize};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Mutex;

/// What the entries are redirected to, and what they are redirected from: given once by the
/// attach ([`set_targets`]), so this module names none of the agent's functions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Targets {
    /// The agent's `__cyg_profile_func_enter` and `__cyg_profile_func_exit`.
    pub(crate) enter: usize,
    pub(crate) exit: usize,
    /// The agent's `mcount` and `__fentry__`.
    pub(crate) mcount: usize,
    pub(crate) fentry: usize,
    /// The agent's stand-ins for the unwinder's entry points (see [`Unwinder`]).
    pub(crate) raise: usize,
    pub(crate) resume: usize,
    pub(crate) begin_catch: usize,
    pub(crate) delete: usize,
    /// The trampolines that replace `dlopen` and `dlmopen`.
    pub(crate) dlopen: usize,
    pub(crate) dlmopen: usize,
    /// The functions those trampolines call (0: not found; their entries stay as they are).
    pub(crate) real_dlopen: usize,
    pub(crate) real_dlmopen: usize,
}

impl Targets {
    /// Where `name`'s entries point once redirected.
    fn of(&self, name: Name) -> usize {
        match name {
            Name::Enter => self.enter,
            Name::Exit => self.exit,
            Name::Mcount => self.mcount,
            Name::Fentry => self.fentry,
            Name::Unwinder(Unwinder::Raise) => self.raise,
            Name::Unwinder(Unwinder::Resume) => self.resume,
            Name::Unwinder(Unwinder::BeginCatch) => self.begin_catch,
            Name::Unwinder(Unwinder::Delete) => self.delete,
            Name::Dlopen => self.dlopen,
            Name::Dlmopen => self.dlmopen,
        }
    }

    /// The function a redirected `dlopen`/`dlmopen` entry's trampoline calls (0 for the others).
    fn real(&self, name: Name) -> usize {
        match name {
            Name::Dlopen => self.real_dlopen,
            Name::Dlmopen => self.real_dlmopen,
            _ => 0,
        }
    }
}

/// The targets every pass uses (set before the first).
static TARGETS: std::sync::OnceLock<Targets> = std::sync::OnceLock::new();

/// Sets the targets (the first call wins: the agent's functions do not move, and the functions
/// the trampolines call are found once).
pub(crate) fn set_targets(targets: Targets) {
    let _ = TARGETS.set(targets);
}

/// Whether GOT entries currently point at the agent: [`UNPATCHED`] or [`PATCHED`].
static GOT_STATE: AtomicU8 = AtomicU8::new(UNPATCHED);
const UNPATCHED: u8 = 0;
const PATCHED: u8 = 1;

/// The entries rewritten, and how far the last pass got. Locked inside the loader's lock only.
static BOOK: Mutex<Book> = Mutex::new(Book {
    patches: Vec::new(),
    scanned_adds: 0,
    known: Vec::new(),
    known_entries: Vec::new(),
    generation: 0,
});

struct Book {
    patches: Vec<Patch>,
    /// The loader's load count (`dlpi_adds`) when a pass last found nothing left to rewrite; a
    /// pass after a load that sees the same count has nothing to do. 0: scan at the next load.
    scanned_adds: u64,
    /// The objects in which the last pass left nothing to do, in the loader's order: a pass after
    /// a load checks their redirected entries instead of walking their relocations again.
    known: Vec<Known>,
    /// The entries of `known` objects that hold the agent's values: address and value.
    known_entries: Vec<(usize, usize)>,
    /// The attachment whose pass redirected the entries last (a restore for an older one is
    /// stale).
    generation: u32,
}

/// An object a pass left nothing to do in.
struct Known {
    key: Key,
    /// Its entries in [`Book::known_entries`].
    entries: core::ops::Range<usize>,
}

/// What tells a loaded object from another between two passes. An object loaded where an unloaded
/// one was may have the same key, but not the agent's values in its entries (it starts with the
/// loader's), so a known object is skipped only while its entries still hold them.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    base: usize,
    phdrs: usize,
    phnum: usize,
    name: usize,
    dynamic: usize,
}

/// One rewritten GOT entry.
struct Patch {
    address: usize,
    /// What the entry held before the agent wrote `ours`.
    original: usize,
    ours: usize,
    name: Name,
    /// Set during a pass when the entry lies in an object still loaded.
    live: bool,
}

/// The symbols whose GOT entries the agent redirects.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Name {
    Enter,
    Exit,
    /// `mcount` or `_mcount` (`-pg`): an entry hook whose return goes through the trampoline.
    Mcount,
    /// `__fentry__` (`-pg -mfentry`): likewise.
    Fentry,
    /// The unwinder's entry points the agent stands in front of (see `entry`), so that an
    /// exception never walks a hooked return address. Never put back: a frame hooked before the
    /// stop may still be on a stack when an exception passes after it.
    Unwinder(Unwinder),
    Dlopen,
    Dlmopen,
}

impl Name {
    fn from_symbol(name: &[u8]) -> Option<Name> {
        match name {
            b"__cyg_profile_func_enter" => Some(Name::Enter),
            b"__cyg_profile_func_exit" => Some(Name::Exit),
            b"mcount" | b"_mcount" => Some(Name::Mcount),
            b"__fentry__" => Some(Name::Fentry),
            b"_Unwind_RaiseException" => Some(Name::Unwinder(Unwinder::Raise)),
            b"_Unwind_Resume" => Some(Name::Unwinder(Unwinder::Resume)),
            b"__cxa_begin_catch" => Some(Name::Unwinder(Unwinder::BeginCatch)),
            b"_Unwind_DeleteException" => Some(Name::Unwinder(Unwinder::Delete)),
            b"dlopen" => Some(Name::Dlopen),
            b"dlmopen" => Some(Name::Dlmopen),
            _ => None,
        }
    }

    fn is_hook(self) -> bool {
        matches!(self, Name::Enter | Name::Exit | Name::Mcount | Name::Fentry)
    }

    /// A hook that records calls: stored last (an exit hook, or the return trampoline, is in
    /// place before any call is recorded).
    fn is_entry(self) -> bool {
        matches!(self, Name::Enter | Name::Mcount | Name::Fentry)
    }
}

/// The unwinder functions of [`Name::Unwinder`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Unwinder {
    Raise,
    Resume,
    BeginCatch,
    Delete,
}

/// What a pass does.
pub(super) enum Pass {
    /// Redirect every entry of every loaded object (the attach of attachment `generation`).
    Attach { generation: u32 },
    /// Redirect the entries not redirected yet, if the GOT is redirected (after a load).
    Loaded,
    /// Put every entry back, if attachment `generation` is still the current one (the stop).
    Restore { generation: u32 },
}

/// Whether the GOT points at the agent (a hint: the pass decides under the book's lock).
pub(super) fn redirected() -> bool {
    GOT_STATE.load(Relaxed) == PATCHED
}

/// Runs `pass` over every loaded object of the agent's namespace. Returns how many hook entries
/// point at the agent afterwards. Allocates nothing in a [`Pass::Restore`] (it runs inside a hook).
pub(super) fn run(pass: Pass) -> usize {
    let Some(targets) = TARGETS.get() else {
        return 0;
    };
    let mut hooks = 0;
    locked(|adds| {
        let Ok(mut book) = BOOK.lock() else {
            return;
        };
        if !admit(&pass, adds, &book) {
            return;
        }
        match pass {
            Pass::Restore { .. } => restore(&mut book, targets),
            Pass::Attach { .. } | Pass::Loaded => {
                redirect(&mut book, targets, adds, matches!(pass, Pass::Loaded));
                if let Pass::Attach { generation } = pass {
                    book.generation = generation;
                    // Release: pairs with the Acquire in `admit` (a later pass sees the book this
                    // one left).
                    GOT_STATE.store(PATCHED, Release);
                }
                hooks = book.patches.iter().filter(|p| p.name.is_hook()).count();
            }
        }
    });
    hooks
}

/// Runs `f` with the loader's list locked (inside `dl_iterate_phdr`, whose lock is recursive, so
/// `f` may walk the objects again), with the loader's load count.
fn locked(f: impl FnOnce(u64)) {
    let mut f = Some(f);
    each_object(|object| {
        if let Some(f) = f.take() {
            f(object.adds);
        }
        false
    });
}

/// Whether `pass` goes ahead, decided with the book locked (inside the loader's lock).
fn admit(pass: &Pass, adds: u64, book: &Book) -> bool {
    match *pass {
        Pass::Attach { .. } => true,
        // Acquire: pairs with the Release store of PATCHED in `run`.
        Pass::Loaded => GOT_STATE.load(Acquire) == PATCHED && adds != book.scanned_adds,
        Pass::Restore { generation } => {
            // A later attachment whose pass ran meanwhile keeps the entries (the book's lock
            // orders the two passes; one that comes after this restore redirects them again).
            if generation < book.generation {
                return false;
            }
            // AcqRel: the book's lock orders this with the other passes; the flag is a hint
            // outside it.
            GOT_STATE.swap(UNPATCHED, AcqRel) == PATCHED
        }
    }
}

/// Puts back every entry of the objects still loaded (inside the loader's lock).
fn restore(book: &mut Book, targets: &Targets) {
    let agent_code = targets.dlopen;
    each_object(|object| {
        if object.contains(agent_code) {
            return true;
        }
        for p in book
            .patches
            .iter()
            .filter(|p| object.writable(p.address) && !matches!(p.name, Name::Unwinder(_)))
        {
            // SAFETY: an entry of an object the loader lists, so still mapped.
            unsafe { put_back(&object, p) };
        }
        true
    });
    book.patches.clear();
    book.scanned_adds = 0;
    book.known.clear();
    book.known_entries.clear();
}

/// Redirects the entries of every object (inside the loader's lock, so every object listed stays
/// mapped until the stores are done). With `skip_known`, objects the book knows are only checked.
///
/// The program's other threads keep running meanwhile (the tracer holds only the thread that
/// attaches), so the order of the stores is what each of them sees: every entry but the enter
/// hooks' first, then the enter hooks' in one burst, a few stores long. A thread therefore records
/// returns without their calls only until its first recorded call (the start of a joined stream),
/// and from then on every return of a call it recorded. Were an enter hook redirected before an
/// exit hook, a call made between the two stores (two `mprotect`s apart on a RELRO page) would be
/// recorded without its return. What remains: a thread that calls from an object whose enter
/// hook is already redirected into one whose enter hook is not yet, within the burst, records
/// that callee's return without its call inside an open call.
fn redirect(book: &mut Book, targets: &Targets, adds: u64, skip_known: bool) {
    let agent_code = targets.dlopen;
    book.patches.iter_mut().for_each(|p| p.live = false);
    let mut walk = Walk::new(adds);
    each_object(|object| {
        if object.contains(agent_code) {
            return true; // the agent's own calls to dlopen must reach glibc
        }
        for p in book.patches.iter_mut() {
            p.live |= object.writable(p.address);
        }
        // SAFETY: the loader lists `object`, so it stays mapped for the call.
        unsafe { walk.plan_object(&object, book, targets, skip_known) };
        true
    });
    // SAFETY: every planned entry belongs to an object still listed (the lock is held).
    unsafe { walk.apply(&mut book.patches) };
    book.patches.retain(|p| p.live);
    book.scanned_adds = if walk.complete { walk.adds } else { 0 };
    book.known = walk.known;
    book.known_entries = walk.known_entries;
}

/// A redirecting pass's progress.
struct Walk {
    adds: u64,
    /// Nothing was left for a later pass.
    complete: bool,
    /// The stores to make.
    plans: Vec<Plan>,
    /// The book's known objects, for the next pass.
    known: Vec<Known>,
    known_entries: Vec<(usize, usize)>,
    /// Where the search for the next known object resumes in the book's list.
    cursor: usize,
    /// Objects planned so far.
    objects: usize,
}

/// A store a pass will make.
struct Plan {
    address: usize,
    from: usize,
    to: usize,
    name: Name,
    /// On a sealed RELRO page (opened for the store).
    sealed: bool,
    /// The object's position in the pass (its enter hooks are stored only if all its other
    /// stores were).
    object: usize,
}

impl Walk {
    fn new(adds: u64) -> Walk {
        Walk {
            adds,
            complete: true,
            plans: Vec::new(),
            known: Vec::new(),
            known_entries: Vec::new(),
            cursor: 0,
            objects: 0,
        }
    }

    /// Plans the stores that redirect `object`'s entries; with `skip_known`, an object the book
    /// knows whose entries still hold the agent's values is only checked.
    ///
    /// # Safety
    /// `object` stays mapped for the call.
    unsafe fn plan_object(
        &mut self,
        object: &Object<'_>,
        book: &Book,
        targets: &Targets,
        skip_known: bool,
    ) {
        let key = object.key();
        if skip_known {
            // Survivors keep their order in the loader's list: search forward from the last one.
            let found = book.known[self.cursor.min(book.known.len())..]
                .iter()
                .position(|k| k.key == key)
                .map(|i| self.cursor + i);
            if let Some(i) = found {
                let entries = &book.known_entries[book.known[i].entries.clone()];
                let held = entries.iter().all(|&(address, ours)| {
                    // SAFETY: read only, and only inside the object's writable segments, which
                    // are mapped (the caller's contract).
                    object.writable(address) && unsafe { slot(address) }.load(Relaxed) == ours
                });
                if held {
                    self.cursor = i + 1;
                    self.know(key, entries.iter().copied());
                    return;
                }
            }
        }
        let start = self.known_entries.len();
        let planned = self.plans.len();
        let mut finished = true;
        object.entries(|entry| {
            // SAFETY: an entry of `object`, mapped (the caller's contract).
            match unsafe { plan(object, targets, entry) } {
                Outcome::Held(address, ours) => self.known_entries.push((address, ours)),
                Outcome::Planned(plan) => {
                    self.known_entries.push((plan.address, plan.to));
                    self.plans.push(Plan {
                        object: self.objects,
                        ..plan
                    });
                }
                Outcome::Left => {}
                Outcome::Deferred => finished = false,
            }
        });
        self.objects += 1;
        if finished {
            self.known.push(Known {
                key,
                entries: start..self.known_entries.len(),
            });
        } else {
            // All of an object's entries or none: the object is walked again next time.
            self.known_entries.truncate(start);
            self.plans.truncate(planned);
            self.complete = false;
        }
    }

    fn know(&mut self, key: Key, entries: impl Iterator<Item = (usize, usize)>) {
        let start = self.known_entries.len();
        self.known_entries.extend(entries);
        self.known.push(Known {
            key,
            entries: start..self.known_entries.len(),
        });
    }

    /// Makes the planned stores: opens the sealed pages, stores every entry but the enter hooks',
    /// then the enter hooks', and seals the pages again; records each entry changed in `patches`.
    /// A store that finds its entry changed meanwhile is left out, and so are the enter hooks of
    /// its object (the object is walked again at the next pass, as its known values no longer
    /// match).
    ///
    /// # Safety
    /// Every planned entry is mapped, 8-byte aligned, and if `sealed`, on a page the loader has
    /// sealed (it writes it no more).
    unsafe fn apply(&mut self, patches: &mut Vec<Patch>) {
        let mut pages: Vec<(usize, bool)> = self
            .plans
            .iter()
            .filter(|p| p.sealed)
            .map(|p| (p.address & !(PAGE - 1), false))
            .collect();
        pages.sort_unstable();
        pages.dedup();
        for (page, open) in pages.iter_mut() {
            // SAFETY: a sealed page of a listed object; only its protection changes (what the
            // loader does before it seals).
            *open = unsafe {
                libc::mprotect(
                    *page as *mut c_void,
                    PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            } == 0;
        }
        let writable =
            |plan: &Plan| !plan.sealed || pages.contains(&(plan.address & !(PAGE - 1), true));
        // Objects with a store left out: their enter hooks stay as they are (a call recorded
        // without its return otherwise).
        let mut incomplete: Vec<usize> = Vec::new();
        for enter in [false, true] {
            for plan in self.plans.iter().filter(|p| p.name.is_entry() == enter) {
                if enter && incomplete.contains(&plan.object) {
                    continue;
                }
                // Relaxed: the program reads the entry with plain loads for its calls; what it
                // points to is code, and the trampolines' targets are stored before any entry
                // names them (x86-64 makes stores visible in program order).
                // SAFETY: a mapped word (the caller's contract), writable now.
                let stored = writable(plan)
                    && unsafe { slot(plan.address) }
                        .compare_exchange(plan.from, plan.to, Relaxed, Relaxed)
                        .is_ok();
                if !stored {
                    self.complete = false;
                    incomplete.push(plan.object);
                    continue;
                }
                patches.retain(|p| p.address != plan.address);
                patches.push(Patch {
                    address: plan.address,
                    original: plan.from,
                    ours: plan.to,
                    name: plan.name,
                    live: true,
                });
            }
        }
        for &(page, open) in &pages {
            if open {
                // SAFETY: as above; the page was sealed read-only.
                unsafe { libc::mprotect(page as *mut c_void, PAGE, libc::PROT_READ) };
            }
        }
    }
}

/// What [`plan`] decided for an entry.
enum Outcome {
    /// The entry holds the agent's value already (address, value).
    Held(usize, usize),
    /// A store points it at the agent.
    Planned(Plan),
    /// Not the agent's to take: bound to another implementation.
    Left,
    /// Left for a later pass: the object is still being loaded.
    Deferred,
}

/// Decides whether `entry` is to point at the agent: if it is bound to what the agent replaces.
///
/// # Safety
/// `entry` is an entry of `object`, which stays mapped for the call.
unsafe fn plan(object: &Object<'_>, targets: &Targets, entry: Entry) -> Outcome {
    let ours = targets.of(entry.name);
    // SAFETY: a mapped, 8-byte aligned GOT entry (the caller's contract).
    let value = unsafe { slot(entry.address) }.load(Relaxed);
    if value == ours {
        return Outcome::Held(entry.address, ours);
    }
    if !object.relocated(value) {
        return Outcome::Deferred;
    }
    if let Name::Dlopen | Name::Dlmopen = entry.name {
        // Only an entry bound to the function the trampoline calls (or still bound lazily to
        // the object's own PLT): another binding (a namespace's own copy, an executable's PLT
        // entry that is redirected itself) stays as it is.
        let real = targets.real(entry.name);
        let lazy = entry.jump_slot && object.contains(value);
        if real == 0 || (value != real && !lazy) {
            return Outcome::Left;
        }
    }
    let sealed = object.in_relro(entry.address);
    if sealed && page_writable(entry.address) {
        return Outcome::Deferred; // not sealed yet: the loader is still working on this object
    }
    Outcome::Planned(Plan {
        address: entry.address,
        from: value,
        to: ours,
        name: entry.name,
        sealed,
        object: 0,
    })
}

/// Writes `p`'s original value back if the entry still holds the agent's.
///
/// # Safety
/// `p.address` lies in a writable segment of `object`, which stays mapped for the call.
unsafe fn put_back(object: &Object<'_>, p: &Patch) {
    // SAFETY: a mapped, 8-byte aligned word (the caller's contract).
    let entry = unsafe { slot(p.address) };
    if entry.load(Relaxed) != p.ours {
        return; // not ours (any more): nothing to undo, and its page is left untouched
    }
    let sealed = object.in_relro(p.address);
    let page = (p.address & !(PAGE - 1)) as *mut c_void;
    // SAFETY: the page holds the entry, sealed by the loader (it held the agent's value, stored
    // after the seal); only its protection changes.
    if sealed && unsafe { libc::mprotect(page, PAGE, libc::PROT_READ | libc::PROT_WRITE) } != 0 {
        return;
    }
    // Relaxed: as in `Walk::apply`.
    let _ = entry.compare_exchange(p.ours, p.original, Relaxed, Relaxed);
    if sealed {
        // SAFETY: as above.
        unsafe { libc::mprotect(page, PAGE, libc::PROT_READ) };
    }
}

/// The GOT entry at `address` as an atomic word.
///
/// # Safety
/// `address` is a mapped, 8-byte aligned word that stays mapped while the reference is used.
pub(crate) unsafe fn slot(address: usize) -> &'static AtomicUsize {
    // SAFETY: the caller's contract; the loader and the program access it as a word too.
    unsafe { &*(address as *const AtomicUsize) }
}

/// Whether the page holding `address` (4-byte aligned) can be written now, without changing it:
/// `FUTEX_WAKE_OP` applies `*address |= 0` atomically in the kernel, which answers EFAULT for a
/// page that cannot be written (and wakes no one: no waiter counts are given).
pub(crate) fn page_writable(address: usize) -> bool {
    // FUTEX_OP(FUTEX_OP_OR, 0, FUTEX_OP_CMP_EQ, 0).
    const OR_ZERO: u32 = 2 << 28;
    let word = address as *mut u32;
    // SAFETY: the kernel checks the address itself; OR with 0 leaves the word as it is, and a
    // concurrent store to it is not lost (the kernel's update is a compare-and-swap loop).
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAKE_OP | libc::FUTEX_PRIVATE_FLAG,
            0,
            0usize,
            word,
            OR_ZERO,
        )
    };
    r >= 0
}

pub(crate) const PAGE: usize = 4096;
const R_X86_64_GLOB_DAT: u32 = 6;
const R_X86_64_JUMP_SLOT: u32 = 7;
const DT_NULL: i64 = 0;
const DT_PLTRELSZ: i64 = 2;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_JMPREL: i64 = 23;
const DT_VERSYM: i64 = 0x6fff_fff0;
const DT_VERNEED: i64 = 0x6fff_fffe;
const DT_VERNEEDNUM: i64 = 0x6fff_ffff;
const STT_FUNC: u8 = 2;
const STT_GNU_IFUNC: u8 = 10;

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

/// A GOT entry naming one of [`Name`].
struct Entry {
    address: usize,
    name: Name,
    jump_slot: bool,
}

/// A loaded object as `dl_iterate_phdr` reports it (valid during the callback).
pub(crate) struct Object<'a> {
    pub(crate) base: usize,
    pub(crate) phdrs: &'a [libc::Elf64_Phdr],
    /// The loader's count of objects loaded so far.
    adds: u64,
    /// The address of its name (the loader's copy).
    pub(crate) name: usize,
}

impl Object<'_> {
    fn key(&self) -> Key {
        let dynamic = self
            .phdrs
            .iter()
            .find(|p| p.p_type == libc::PT_DYNAMIC)
            .map_or(0, |p| self.base.wrapping_add(p.p_vaddr as usize));
        Key {
            base: self.base,
            phdrs: self.phdrs.as_ptr() as usize,
            phnum: self.phdrs.len(),
            name: self.name,
            dynamic,
        }
    }

    /// Run-time ranges of the `PT_LOAD` segments, with their flags.
    pub(crate) fn loads(&self) -> impl Iterator<Item = (usize, usize, u32)> + '_ {
        self.phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_LOAD)
            .map(|p| {
                let lo = self.base.wrapping_add(p.p_vaddr as usize);
                (lo, lo.wrapping_add(p.p_memsz as usize), p.p_flags)
            })
    }

    /// The lowest and highest (exclusive) addresses of its `PT_LOAD` segments.
    pub(crate) fn span(&self) -> (usize, usize) {
        self.loads().fold((usize::MAX, 0), |(lo, hi), (l, h, _)| {
            (lo.min(l), hi.max(h))
        })
    }

    pub(crate) fn contains(&self, address: usize) -> bool {
        self.loads().any(|(lo, hi, _)| (lo..hi).contains(&address))
    }

    /// Whether `address` lies in a writable segment (the GOT's, RELRO included).
    pub(crate) fn writable(&self, address: usize) -> bool {
        self.loads()
            .any(|(lo, hi, flags)| flags & libc::PF_W != 0 && (lo..hi).contains(&address))
    }

    /// Whether `address` lies on a page the loader seals read-only after relocation (whole pages
    /// only: the last partial page of PT_GNU_RELRO stays writable).
    pub(crate) fn in_relro(&self, address: usize) -> bool {
        self.phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_GNU_RELRO)
            .any(|p| {
                let lo = self.base.wrapping_add(p.p_vaddr as usize);
                let hi = lo.wrapping_add(p.p_memsz as usize) & !(PAGE - 1);
                (lo..hi).contains(&address)
            })
    }

    /// Whether a GOT entry holding `value` has been relocated: before, it holds a link-time
    /// value (0, or an address in the object's own link-time range, below its size); after, a
    /// run-time address, which lies above the object's load base. An executable loaded at its
    /// link-time address (base 0) is relocated before any of its code runs.
    pub(crate) fn relocated(&self, value: usize) -> bool {
        let size = self
            .phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_LOAD)
            .map(|p| (p.p_vaddr + p.p_memsz) as usize)
            .max()
            .unwrap_or(0);
        self.base == 0 || value >= size
    }

    /// Calls `f` with each GOT entry naming one of [`Name`].
    fn entries(&self, mut f: impl FnMut(Entry)) {
        self.relocations(|r| {
            if let Some(name) = Name::from_symbol(r.name.to_bytes()) {
                f(Entry {
                    address: r.address,
                    name,
                    jump_slot: r.jump_slot,
                });
            }
        });
    }

    /// Calls `f` with each `R_X86_64_JUMP_SLOT` and `R_X86_64_GLOB_DAT` relocation of the object
    /// (its GOT entries that name a symbol).
    pub(crate) fn relocations(&self, mut f: impl FnMut(Relocation<'_>)) {
        let Some(dynamic) = self.phdrs.iter().find(|p| p.p_type == libc::PT_DYNAMIC) else {
            return;
        };
        let base = self.base;
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
        let (mut versym, mut verneed, mut verneednum) = (0, 0, 0);
        let mut d = base.wrapping_add(dynamic.p_vaddr as usize) as *const Dyn;
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
                DT_VERSYM => versym = abs(entry.val),
                DT_VERNEED => verneed = abs(entry.val),
                DT_VERNEEDNUM => verneednum = entry.val as usize,
                _ => {}
            }
            // SAFETY: still inside the dynamic section (DT_NULL not reached).
            d = unsafe { d.add(1) };
        }
        if strtab == 0 || symtab == 0 {
            return;
        }
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
                let version = if versym == 0 {
                    None
                } else {
                    // SAFETY: DT_VERSYM has one half-word per dynamic symbol; the needed-version
                    // chain is the object's own, `verneednum` long.
                    unsafe { needed_version(strtab, versym, verneed, verneednum, index) }
                };
                f(Relocation {
                    address: base.wrapping_add(r.offset as usize),
                    name,
                    version,
                    function: matches!(sym.info & 0xf, STT_FUNC | STT_GNU_IFUNC),
                    jump_slot: kind == R_X86_64_JUMP_SLOT,
                });
            }
        }
    }
}

/// The version an object requires of its undefined symbol `index` (`GLIBC_2.2.5`), if any.
///
/// # Safety
/// The tables are the object's own, mapped, as its dynamic section gives them.
unsafe fn needed_version(
    strtab: usize,
    versym: usize,
    verneed: usize,
    count: usize,
    index: usize,
) -> Option<&'static CStr> {
    // SAFETY: the caller's contract.
    let wanted = unsafe { *(versym as *const u16).add(index) } & 0x7fff;
    if wanted <= 1 || verneed == 0 {
        return None; // local or global: no version
    }
    let mut need = verneed;
    for _ in 0..count {
        // SAFETY: an Elf64_Verneed of the chain (vn_cnt at 2, vn_aux at 8, vn_next at 12).
        let (cnt, aux, next) = unsafe {
            (
                *((need + 2) as *const u16),
                *((need + 8) as *const u32),
                *((need + 12) as *const u32),
            )
        };
        let mut a = need + aux as usize;
        for _ in 0..cnt {
            // SAFETY: an Elf64_Vernaux (vna_other at 6, vna_name at 8, vna_next at 12).
            let (other, name, anext) = unsafe {
                (
                    *((a + 6) as *const u16),
                    *((a + 8) as *const u32),
                    *((a + 12) as *const u32),
                )
            };
            if other & 0x7fff == wanted {
                // SAFETY: a NUL-terminated name in the object's string table.
                return Some(unsafe { CStr::from_ptr((strtab + name as usize) as *const c_char) });
            }
            a += anext as usize;
        }
        if next == 0 {
            break;
        }
        need += next as usize;
    }
    None
}

/// A GOT entry that names a symbol, as [`Object::relocations`] gives it.
pub(crate) struct Relocation<'a> {
    /// The entry's run-time address.
    pub(crate) address: usize,
    /// The symbol's name (the loader's mapped string table).
    pub(crate) name: &'a CStr,
    /// The version the object requires of it, if any.
    pub(crate) version: Option<&'a CStr>,
    /// The symbol is a function (`STT_FUNC` or `STT_GNU_IFUNC`).
    pub(crate) function: bool,
    /// `R_X86_64_JUMP_SLOT` (a PLT's entry, possibly bound lazily) rather than `GLOB_DAT`.
    pub(crate) jump_slot: bool,
}

/// Calls `f` with each object of the agent's namespace, inside `dl_iterate_phdr` (the loader's
/// list locked), until it returns `false`.
pub(crate) fn each_object(mut f: impl FnMut(Object<'_>) -> bool) {
    let mut f: &mut dyn FnMut(Object<'_>) -> bool = &mut f;
    let data = (&mut f as *mut &mut dyn FnMut(Object<'_>) -> bool).cast::<c_void>();
    // SAFETY: `visit` only reads the loader's program headers and calls `f`, which outlives the
    // call.
    unsafe { libc::dl_iterate_phdr(Some(visit), data) };
}

/// `dl_iterate_phdr` callback: one object, to the closure behind `data`.
unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: the loader passes a valid info, and `data` is `each_object`'s closure.
    let (info, f) = unsafe {
        (
            &*info,
            &mut *data.cast::<&mut dyn FnMut(Object<'_>) -> bool>(),
        )
    };
    let phdrs = if info.dlpi_phdr.is_null() {
        &[][..]
    } else {
        // SAFETY: the loader's program headers, `dlpi_phnum` of them.
        unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
    };
    let object = Object {
        base: info.dlpi_addr as usize,
        phdrs,
        adds: info.dlpi_adds,
        name: info.dlpi_name as usize,
    };
    c_int::from(!f(object))
}

#[cfg(test)]
mod tests {
    #![allow(non_snake_case)]
    use super::*;

    #[test]
    fn page_writable__stack_word_and_code__then_true_and_false() {
        let word = 0u64;
        assert!(page_writable(&word as *const u64 as usize));
        assert!(!page_writable(page_writable as *const () as usize));
    }

    #[test]
    fn each_object__this_process__then_the_executable_is_listed_with_its_segments() {
        let here = each_object__this_process__then_the_executable_is_listed_with_its_segments
            as *const () as usize;
        let mut found = false;
        each_object(|object| {
            found |= object.contains(here) && !object.writable(here);
            true
        });
        assert!(found);
    }

    #[test]
    fn relocated__link_time_and_run_time_values__then_told_apart() {
        let phdr = libc::Elf64_Phdr {
            p_type: libc::PT_LOAD,
            p_flags: 0,
            p_offset: 0,
            p_vaddr: 0,
            p_paddr: 0,
            p_filesz: 0x5000,
            p_memsz: 0x5000,
            p_align: 0x1000,
        };
        let object = Object {
            base: 0x7f00_0000_0000,
            phdrs: core::slice::from_ref(&phdr),
            adds: 1,
            name: 0,
        };
        assert!(!object.relocated(0));
        assert!(!object.relocated(0x1036)); // a PLT slot's link-time address
        assert!(object.relocated(0x7f00_0000_1036)); // the same, relocated (lazy binding)
        assert!(object.relocated(0x7f12_3456_7890)); // a resolved function
    }
}
