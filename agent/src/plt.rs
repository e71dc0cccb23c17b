//! Library calls: the calls a program makes into shared libraries, recorded without rebuilding it.
//!
//! Every call from an object into another goes through one of its GOT entries: a PLT stub jumps
//! through its `R_X86_64_JUMP_SLOT` entry, a `-fno-plt` call goes through an
//! `R_X86_64_GLOB_DAT` entry directly. For each such entry of a function in the objects the
//! region's scope names (`registry::LibraryCalls`: the main executable, or every object but the
//! agent and the dynamic loader) the agent makes a 32-byte stub, `mov r11, &target; jmp
//! [r11]`, and points the entry at it. The target's first word names the common entry that suits
//! the function, chosen once when the stub is made (see [`entry_for`]): [`plt_entry`] saves the
//! argument registers, records the call and hooks its return through the thread's shadow stack
//! (the same `retstack` return interception the `-pg` hooks use, see `entry`), and goes on to the
//! real function with every register and the stack as the caller left them, by a `call` from the
//! agent's second return trampoline, so that the function's return and the trampoline's are both
//! predicted (the caller's `call` is still on the processor's return predictor: a stub is reached
//! by `jmp`); [`plt_entry_jump`] does the same but goes on by a `jmp` (a function that does not
//! return through, see [`returns_through`]); [`plt_entry_slow`] records without the fast path
//! (functions that return twice or never). So the fast path tests nothing about the function.
//!
//! - **Names.** A call's function id is the GOT entry's address: the tracer reads the object's
//!   relocations from disk and names the entry by its symbol (`getpid`), whatever the entry points
//!   to (an IFUNC's chosen implementation, an alias).
//! - **Targets.** An entry that is bound already holds the target (for an IFUNC, the implementation
//!   its resolver chose); a lazily bound entry still points into its own PLT, so the target is
//!   looked up as the loader would, by name and required version (`dlvsym`), which runs an
//!   IFUNC's resolver. The loader never writes the entry again: the call goes to the stub, not
//!   to the PLT's resolver.
//! - **Functions that return twice or share the stack** (`setjmp` and kin, `vfork`): the call and
//!   its return are recorded at the entry and the return is not hooked (the second return, or the
//!   `vfork` child returning on its parent's stack, would find no frame). **Functions that never
//!   return** (`exit`, `pthread_exit`, `abort`, ...): the call is recorded, the return not hooked
//!   (what runs inside them, `atexit` handlers, key destructors, nests under them). `longjmp` and
//!   exceptions are hooked like any call: `retstack` pops the frames they skip.
//! - **Left alone:** entries of the agent's own hooks and stand-ins, and entries bound to the agent
//!   itself; `__libc_start_main` (the whole program would nest under it), `__cxa_finalize`,
//!   `__tls_get_addr`; weak entries still 0.
//! - **Stubs are never freed.** A stub is made once per GOT entry address and kept (a thread may
//!   be in it at any time), reused when the same entry is redirected again (a later attach):
//!   attach/detach rounds do not grow the agent's memory.
//! - **Restore** (attach mode, at the stop): every entry still pointing at its stub gets the value
//!   it had back; a call in flight returns through the shadow stack as usual.

use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicU8, AtomicUsize};
use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::sync::Mutex;

use registry::LibraryCalls;

use crate::attach::got::{self, Object, PAGE};
use crate::entry::{integer_arguments, vector_arguments, vectors_in_debug};
use crate::hook::{event, CALL, FAST_DECLINED, RETURN};

/// How a library function's return is handled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Hooked through the shadow stack.
    Returns = 0,
    /// Returns twice (`setjmp`) or returns in a child sharing the stack (`vfork`): call and return
    /// recorded at the entry.
    ReturnsTwice = 1,
    /// Never returns: the call is recorded, nothing hooked.
    NoReturn = 2,
}

/// What a stub hands to its common entry: where to go and what to record.
#[repr(C)]
pub(crate) struct Target {
    /// The common entry the stub jumps to (`jmp [r11]`: the first word), see [`entry_for`].
    entry: AtomicUsize,
    /// The real function.
    real: AtomicUsize,
    /// The function id recorded: the GOT entry's address.
    id: u64,
    /// A [`Kind`].
    kind: AtomicU8,
}

/// The common entry for a function of `kind` whose return goes through `entry::library_return`
/// (`through`, see [`returns_through`]) or not.
fn entry_for(kind: Kind, through: bool) -> usize {
    match (kind, through) {
        (Kind::Returns, true) => plt_entry as *const () as usize,
        (Kind::Returns, false) => plt_entry_jump as *const () as usize,
        _ => plt_entry_slow as *const () as usize,
    }
}

/// Bytes per stub.
const STUB: usize = 32;

/// Stubs made so far, by GOT entry address; the pages with room left.
struct Stubs {
    by_entry: HashMap<usize, (usize, &'static Target)>,
    /// The page being filled and its next free byte.
    page: usize,
    used: usize,
}

static STUBS: Mutex<Option<Stubs>> = Mutex::new(None);

/// One redirected entry, for the restore.
struct Patch {
    address: usize,
    original: usize,
    stub: usize,
}

static PATCHES: Mutex<Vec<Patch>> = Mutex::new(Vec::new());

/// The names whose entries are never redirected (see the module doc).
fn left_alone(name: &[u8]) -> bool {
    matches!(
        name,
        b"__cyg_profile_func_enter"
            | b"__cyg_profile_func_exit"
            | b"mcount"
            | b"_mcount"
            | b"__fentry__"
            | b"_Unwind_RaiseException"
            | b"_Unwind_Resume"
            | b"__cxa_begin_catch"
            | b"_Unwind_DeleteException"
            | b"dlopen"
            | b"dlmopen"
            | b"__libc_start_main"
            | b"__cxa_finalize"
            | b"__tls_get_addr"
            | b"__gmon_start__"
            | b"_ITM_registerTMCloneTable"
            | b"_ITM_deregisterTMCloneTable"
    )
}

/// How `name`'s return is handled.
pub(crate) fn kind_of(name: &[u8]) -> Kind {
    match name {
        b"setjmp" | b"_setjmp" | b"sigsetjmp" | b"__sigsetjmp" | b"savectx" | b"getcontext"
        | b"vfork" | b"__vfork" => Kind::ReturnsTwice,
        b"exit"
        | b"_exit"
        | b"_Exit"
        | b"quick_exit"
        | b"abort"
        | b"pthread_exit"
        | b"__assert_fail"
        | b"__assert_perror_fail"
        | b"__stack_chk_fail"
        | b"__chk_fail"
        | b"__fortify_fail"
        | b"err"
        | b"errx"
        | b"verr"
        | b"verrx"
        | b"__cxa_bad_cast"
        | b"__cxa_bad_typeid"
        | b"__cxa_call_unexpected"
        | b"__cxa_pure_virtual" => Kind::NoReturn,
        _ => Kind::Returns,
    }
}

/// An entry a pass may redirect, found under the loader's lock.
struct Candidate {
    /// The object's base and name address (which tell it apart at the store).
    base: usize,
    object_name: usize,
    address: usize,
    value: usize,
    /// The entry is bound lazily (still points into its own PLT): the target is looked up.
    lazy: bool,
    name: CString,
    version: Option<CString>,
}

/// Redirects the GOT entries of the objects in `scope` that are not redirected yet. Returns how
/// many entries point at stubs afterwards. Called at the agent's start (spawn), at an attach, and
/// after a load.
pub(crate) fn redirect(scope: LibraryCalls) -> usize {
    if scope == LibraryCalls::None {
        return 0;
    }
    SCOPE.store(scope as u8, Relaxed);
    let own = own_range();
    let loader = loader_base();
    // The stubs made so far (an entry pointing at one is redirected already).
    let mut existing: Vec<usize> = STUBS
        .lock()
        .ok()
        .and_then(|s| {
            s.as_ref()
                .map(|s| s.by_entry.values().map(|v| v.0).collect())
        })
        .unwrap_or_default();
    existing.sort_unstable();
    // 1. Under the loader's lock: the candidates.
    let mut found: Vec<Candidate> = Vec::new();
    let mut first = true;
    got::each_object(|object| {
        let main = first;
        first = false;
        let in_scope = match scope {
            LibraryCalls::None => false,
            LibraryCalls::Main => main,
            LibraryCalls::All => {
                object.base != own_base() && object.base != loader && (main || named(&object))
            }
        };
        if in_scope {
            collect(&object, own, &existing, &mut found);
        }
        scope == LibraryCalls::All
    });
    if found.is_empty() {
        return held();
    }
    // 2. Outside it (a lookup takes the loader's other lock): the targets of lazy entries.
    let targets: Vec<usize> = found.iter().map(resolve).collect();
    // 3. The stubs, then the stores, under the loader's lock again (the objects stay mapped).
    let Ok(mut stubs) = STUBS.lock() else {
        return 0;
    };
    let stubs = stubs.get_or_insert_with(|| Stubs {
        by_entry: HashMap::new(),
        page: 0,
        used: PAGE,
    });
    let mut planned: Vec<(&Candidate, usize)> = Vec::new();
    for (c, &real) in found.iter().zip(&targets) {
        if real == 0 || in_agent(real, own) {
            continue;
        }
        let kind = kind_of(c.name.to_bytes());
        let Some((stub, target)) = stubs.get(c.address, kind) else {
            break;
        };
        // Relaxed: the stub is not reachable until the entry is stored below, after this (x86-64
        // makes stores visible in program order).
        target.real.store(real, Relaxed);
        target.kind.store(kind as u8, Relaxed);
        target
            .entry
            .store(entry_for(kind, returns_through(real)), Relaxed);
        planned.push((c, stub));
    }
    stubs.seal();
    let Ok(mut patches) = PATCHES.lock() else {
        return 0;
    };
    got::each_object(|object| {
        for &(c, stub) in &planned {
            if object.base != c.base || object.name != c.object_name {
                continue;
            }
            // SAFETY: an entry of `object`, listed now, so mapped for the call.
            if unsafe { store(&object, c.address, c.value, stub) } {
                patches.retain(|p| p.address != c.address);
                patches.push(Patch {
                    address: c.address,
                    original: c.value,
                    stub,
                });
            }
        }
        true
    });
    patches.len()
}

/// Entries that point at stubs now.
fn held() -> usize {
    PATCHES.lock().map_or(0, |p| p.len())
}

/// The scope of the last [`redirect`] (a `LibraryCalls` as u8; 0: none yet).
static SCOPE: AtomicU8 = AtomicU8::new(0);

/// After a load: redirects the new objects' entries, if entries are redirected (the scope is
/// every object; the main executable's are all redirected already).
pub(crate) fn after_load() {
    // Relaxed: a hint; `redirect` decides under its locks.
    if SCOPE.load(Relaxed) == LibraryCalls::All as u8 && held() != 0 {
        redirect(LibraryCalls::All);
    }
}

/// The detach callback: the entries go back if `agent` is the newest attachment (a later one
/// keeps them). `errno` is left as it was (this runs inside a hook).
pub(crate) fn restore_at_detach(agent: &crate::state::Agent) {
    if agent.generation < crate::live::newest() {
        return;
    }
    // SAFETY: this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    restore();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Puts every redirected entry of the objects still loaded back to what it held before.
pub(crate) fn restore() {
    let Ok(mut patches) = PATCHES.lock() else {
        return;
    };
    if patches.is_empty() {
        return;
    }
    got::each_object(|object| {
        for p in patches.iter() {
            if object.writable(p.address) {
                // SAFETY: an entry of `object`, listed now, so mapped for the call.
                unsafe { store(&object, p.address, p.stub, p.original) };
            }
        }
        true
    });
    patches.clear();
    SCOPE.store(0, Relaxed);
}

/// Whether an object has a file name (not the vDSO).
fn named(object: &Object<'_>) -> bool {
    // SAFETY: the loader's NUL-terminated name, valid during the callback.
    object.name != 0 && unsafe { *(object.name as *const u8) } == b'/'
}

/// The candidates of `object`.
fn collect(object: &Object<'_>, own: (usize, usize), existing: &[usize], out: &mut Vec<Candidate>) {
    object.relocations(|r| {
        if !r.function || left_alone(r.name.to_bytes()) {
            return;
        }
        // SAFETY: an entry of `object`, mapped during the callback.
        let value = unsafe { got::slot(r.address) }.load(Relaxed);
        if value == 0 || existing.binary_search(&value).is_ok() || in_agent(value, own) {
            return;
        }
        if !object.relocated(value) {
            return; // still being loaded: the next pass takes it
        }
        out.push(Candidate {
            base: object.base,
            object_name: object.name,
            address: r.address,
            value,
            lazy: r.jump_slot && object.contains(value),
            name: r.name.to_owned(),
            version: r.version.map(CStr::to_owned),
        });
    });
}

/// The function a candidate's calls go to (0: unknown, the entry is left alone).
fn resolve(c: &Candidate) -> usize {
    if !c.lazy {
        return c.value;
    }
    // SAFETY: NUL-terminated names; RTLD_DEFAULT searches the global scope, as the loader does for
    // the executable (and first for any object). An IFUNC's resolver runs here.
    let f = unsafe {
        match &c.version {
            Some(v) => libc::dlvsym(libc::RTLD_DEFAULT, c.name.as_ptr(), v.as_ptr()),
            None => libc::dlsym(libc::RTLD_DEFAULT, c.name.as_ptr()),
        }
    };
    f as usize
}

/// Stores `to` into the entry at `address` if it holds `from`, opening a sealed RELRO page around
/// the store. Whether it stored.
///
/// # Safety
/// `address` is an 8-byte aligned GOT entry of `object`, which stays mapped for the call.
unsafe fn store(object: &Object<'_>, address: usize, from: usize, to: usize) -> bool {
    let sealed = object.in_relro(address) && !got::page_writable(address);
    let page = (address & !(PAGE - 1)) as *mut c_void;
    // SAFETY: the page holds the entry, sealed by the loader; only its protection changes (what
    // the loader does before it seals).
    if sealed && unsafe { libc::mprotect(page, PAGE, libc::PROT_READ | libc::PROT_WRITE) } != 0 {
        return false;
    }
    // Relaxed: the program reads the entry with plain loads; what it points to (the stub, its
    // target) was written before.
    // SAFETY: a mapped, aligned word (the caller's contract), writable now.
    let stored = unsafe { got::slot(address) }
        .compare_exchange(from, to, Relaxed, Relaxed)
        .is_ok();
    if sealed {
        // SAFETY: as above; the page was sealed read-only.
        unsafe { libc::mprotect(page, PAGE, libc::PROT_READ) };
    }
    stored
}

impl Stubs {
    /// The stub of the entry at `address` (made if new) and its target.
    fn get(&mut self, address: usize, kind: Kind) -> Option<(usize, &'static Target)> {
        if let Some(&s) = self.by_entry.get(&address) {
            return Some(s);
        }
        if self.used + STUB > PAGE {
            self.seal();
            // SAFETY: a fresh private anonymous mapping; nothing else is affected.
            let page = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if page == libc::MAP_FAILED {
                return None;
            }
            self.page = page as usize;
            self.used = 0;
        }
        let target: &'static Target = Box::leak(Box::new(Target {
            entry: AtomicUsize::new(entry_for(kind, false)),
            real: AtomicUsize::new(0),
            id: address as u64,
            kind: AtomicU8::new(kind as u8),
        }));
        let stub = self.page + self.used;
        self.used += STUB;
        let mut code = [0xccu8; STUB];
        // mov r11, imm64
        code[0] = 0x49;
        code[1] = 0xbb;
        code[2..10].copy_from_slice(&(target as *const Target as u64).to_le_bytes());
        // jmp [r11]: the target's first word, its common entry
        code[10..13].copy_from_slice(&[0x41, 0xff, 0x23]);
        // SAFETY: the stub's bytes in a page of ours, still writable (sealed by `seal`).
        unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), stub as *mut u8, STUB) };
        self.by_entry.insert(address, (stub, target));
        Some((stub, target))
    }

    /// Makes the page being filled executable (and no longer writable). Stubs are written before
    /// any entry points at them; a page is never written again once sealed (a new one is taken).
    fn seal(&mut self) {
        if self.page != 0 && self.used != 0 {
            // SAFETY: our own page; only its protection changes, before any entry points into it.
            unsafe {
                libc::mprotect(
                    self.page as *mut c_void,
                    PAGE,
                    libc::PROT_READ | libc::PROT_EXEC,
                )
            };
            self.used = PAGE; // full: the next stub takes a new page
        }
    }
}

/// The agent's own load base.
fn own_base() -> usize {
    // SAFETY: all-zero is a valid Dl_info.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: a valid out-parameter and an address inside the agent.
    if unsafe { libc::dladdr(own_base as *const c_void, &mut info) } == 0 {
        return usize::MAX;
    }
    info.dli_fbase as usize
}

/// Whether `address` lies in the agent (an entry bound to one of its exports).
fn in_agent(address: usize, own: (usize, usize)) -> bool {
    (own.0..own.1).contains(&address)
}

/// The agent's own address range, found once.
fn own_range() -> (usize, usize) {
    static RANGE: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *RANGE.get_or_init(|| {
        let own = own_base();
        let mut range = (0, 0);
        got::each_object(|object| {
            if object.base == own {
                range = object.span();
                return false;
            }
            true
        });
        range
    })
}

/// The dynamic loader's load base (`AT_BASE`).
fn loader_base() -> usize {
    // SAFETY: getauxval has no preconditions.
    unsafe { libc::getauxval(libc::AT_BASE) as usize }
}

/// Defines a common entry of the stubs (`$name`, reached by `jmp [r11]` with `r11` the stub's
/// [`Target`]): saves the integer argument registers (`rdi`..`r9`, `rax` for variadic calls,
/// `r10`) and, with `fast = 1`, calls [`plt_fast`] with the return-address word's address (the
/// slot) and the target; unless it answers `FAST_DONE` (or with `fast = 0`, always), saves
/// `xmm0`-`xmm7` too and calls [`plt_slow`]. Then it restores them and goes to the real function
/// with the stack as the caller left it:
/// - `through = 1` and the return hooked (after the fast path, always; after the slow one, when
///   the slot holds the hooks' trampoline): through `entry::library_return`, which drops the
///   slot and `call`s the function, so the slot gets that trampoline's entry instead, at the same
///   address, and both the function's return and the trampoline's own are predicted (see
///   `retstack::return_trampoline!`);
/// - else (not hooked: a full shadow stack, the agent not ready; or `through = 0`): a `jmp`, the
///   return address as the hook left it.
macro_rules! plt_entry {
    ($(#[$meta:meta])* $name:ident, fast = $fast:literal, through = $through:literal) => {
        $(#[$meta])*
        ///
        /// # Safety
        /// Only reached from a stub, at a called function's entry, with `r11` the stub's
        /// [`Target`].
        #[unsafe(naked)]
        unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                // The fast path's frame: the argument registers, the stub's target above them,
                // then the return-address word (the slot). Called with the ABI's alignment, the
                // call below is aligned; the fast path relies on none (see `entry::HOOK_FRAME`).
                "push r11",
                "sub rsp, 64",
                integer_arguments!(store),
                ".if {fast}",
                "lea rdi, [rsp + 72]",
                "mov rsi, r11",
                // Unoptimised builds: see `entry::SAVE_VECTORS_ALWAYS`.
                vectors_in_debug!(save),
                "call {fast_path}",
                vectors_in_debug!(restore),
                "test rdx, rdx",
                "jnz 4f",
                // Done: the return is hooked.
                "mov r11, rax",
                integer_arguments!(load),
                ".if {through}",
                "add rsp, 80",
                "jmp {call}",
                ".else",
                "add rsp, 72",
                "jmp r11",
                ".endif",
                ".else",
                "xor eax, eax",
                "mov edx, {declined}",
                ".endif",
                // The fast path's answer (rax, rdx) for the slow one, on an aligned frame above
                // the fast path's (r11).
                "4:",
                "mov r11, rsp",
                "and rsp, -16",
                "sub rsp, 208",
                "mov [rsp + 192], r11",
                vector_arguments!(store),
                "lea rdi, [r11 + 72]",
                "mov rsi, [r11 + 64]",
                "mov rcx, rax",
                "call {slow}",
                vector_arguments!(load),
                "mov rsp, [rsp + 192]",
                "mov r11, rax",
                ".if {through}",
                // Hooked (the slot holds the trampoline): the call.
                "lea rdi, [rip + {hooked}]",
                "cmp [rsp + 72], rdi",
                "jne 6f",
                integer_arguments!(load),
                "add rsp, 80",
                "jmp {call}",
                "6:",
                ".endif",
                integer_arguments!(load),
                "add rsp, 72",
                "jmp r11",
                fast_path = sym plt_fast,
                slow = sym plt_slow,
                hooked = sym crate::entry::tracer_return_hook,
                call = sym crate::entry::library_return,
                declined = const FAST_DECLINED,
                fast = const $fast,
                through = const $through,
                always = const crate::entry::SAVE_VECTORS_ALWAYS,
            )
        }
    };
}

plt_entry!(
    /// The common entry of a function whose return goes through `entry::library_return`.
    plt_entry, fast = 1, through = 1
);
plt_entry!(
    /// The common entry of a function that returns normally but not through
    /// `entry::library_return` (see [`returns_through`]): the return is hooked, the function
    /// reached by a `jmp`.
    plt_entry_jump, fast = 1, through = 0
);
plt_entry!(
    /// The common entry of a function that returns twice or never (see [`Kind`]): recorded on
    /// the slow path, reached by a `jmp`.
    plt_entry_slow, fast = 0, through = 0
);

/// Whether calls of `function` return through `entry::library_return`. Yes, unless the function
/// enters the kernel at once (a `syscall` instruction in its first [`SCAN`] bytes: `getpid`,
/// `read`) on a kernel whose own returns leave the processor's return predictor full of stale
/// entries ([`syscalls_clobber_return_prediction`]): after such a call the function's `ret` is
/// mispredicted whatever the agent does, and a `ret`-ending trampoline would add a second
/// misprediction where a `jmp` is predicted.
fn returns_through(function: usize) -> bool {
    // SAFETY: `function` is a resolved library function (a bound GOT entry's value, or what the
    // loader's lookup found): a loaded object's code.
    !(syscalls_clobber_return_prediction() && unsafe { enters_kernel(function) })
}

/// Bytes of a function's start searched for a `syscall` instruction.
const SCAN: usize = 64;

/// Whether the first [`SCAN`] bytes at `function` hold `0f 05` (a `syscall`, or, harmlessly,
/// those bytes inside another instruction). Reads no further than the end of `function`'s page,
/// which is mapped (the next one may not be), and makes no system call (a program may have
/// forbidden some by the time a library is loaded).
///
/// # Safety
/// `function`'s first byte is mapped and readable (a loaded object's code).
unsafe fn enters_kernel(function: usize) -> bool {
    let n = SCAN.min(PAGE - function % PAGE);
    // SAFETY: `[function, function + n)` lies in the page of `function`'s first byte, mapped and
    // readable (the caller's contract).
    let code = unsafe { core::slice::from_raw_parts(function as *const u8, n) };
    code.windows(2).any(|w| w == [0x0f, 0x05])
}

/// Whether this kernel returns from its own functions through a sequence that leaves the return
/// predictor unbalanced, so that a program's returns after a system call are mispredicted: the
/// AMD "speculative return stack overflow" mitigations (`Safe RET`, `IBPB` on kernel entry), as
/// the kernel reports them. Read once.
fn syscalls_clobber_return_prediction() -> bool {
    static CLOBBERS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CLOBBERS.get_or_init(|| {
        std::fs::read_to_string("/sys/devices/system/cpu/vulnerabilities/spec_rstack_overflow")
            .is_ok_and(|s| clobbering_mitigation(&s))
    })
}

/// Whether the kernel's report of its SRSO mitigation names one that clobbers the user's return
/// predictor across system calls.
fn clobbering_mitigation(report: &str) -> bool {
    (report.contains("Safe RET") || report.contains("IBPB")) && !report.contains("VMEXIT")
}

/// The fast path of a call of a function that returns normally (the common entries with
/// `fast = 1`, see [`entry_for`]; see `entry::enter_fast`): the real function, and `FAST_DONE`
/// when the call is recorded and its return hooked. It needs no test of the agent's readiness
/// ([`enter`]'s first): it records only for a thread registered in the live attachment, which
/// exists once the agent is published, and stubs are made after that.
extern "C" fn plt_fast(slot: *mut u64, target: &Target) -> retstack::FastReturn {
    let code = crate::entry::enter_fast(slot, target.id);
    // Loaded after the record: a register held across it would be moved around `rdtsc`'s.
    retstack::FastReturn {
        ret: target.real.load(Relaxed) as u64,
        code,
    }
}

/// A library call's slow path, after [`plt_fast`] answered `code`; returns the real function.
extern "C" fn plt_slow(slot: *mut u64, target: &Target, code: u64, real: usize) -> usize {
    crate::hook::after_fast(code, real, || enter(slot, target))
}

/// Records a library call entered with its return address at `slot`; returns the real function.
extern "C" fn enter(slot: *mut u64, target: &Target) -> usize {
    let real = target.real.load(Relaxed);
    // Stubs exist once the agent is built, but the agent may call through one before it is
    // published: a non-PIE executable's canonical PLT entry (the address of a library function it
    // takes) is what every object, the agent too, binds that function to, and that entry jumps
    // through the executable's GOT. Such a call runs untraced (never waits for the
    // initialisation it is part of).
    if !crate::live::is_ready() {
        return real;
    }
    match target.kind.load(Relaxed) {
        0 => crate::entry::enter(slot, target.id, core::ptr::null()),
        1 => {
            event(CALL, target.id, core::ptr::null());
            event(RETURN, target.id, core::ptr::null());
        }
        _ => event(CALL, target.id, core::ptr::null()),
    }
    real
}

#[cfg(test)]
mod tests {
    #![allow(non_snake_case)]
    use super::*;

    #[test]
    fn kind_of__setjmp_vfork_exit_and_read__then_each_handled_its_way() {
        assert_eq!(kind_of(b"_setjmp"), Kind::ReturnsTwice);
        assert_eq!(kind_of(b"vfork"), Kind::ReturnsTwice);
        assert_eq!(kind_of(b"exit"), Kind::NoReturn);
        assert_eq!(kind_of(b"pthread_exit"), Kind::NoReturn);
        assert_eq!(kind_of(b"longjmp"), Kind::Returns);
        assert_eq!(kind_of(b"read"), Kind::Returns);
    }

    #[test]
    fn clobbering_mitigation__kernel_reports__then_safe_ret_and_ibpb_on_entry_only() {
        assert!(clobbering_mitigation(
            "Vulnerable: Safe RET, no microcode\n"
        ));
        assert!(clobbering_mitigation("Mitigation: Safe RET\n"));
        assert!(clobbering_mitigation("Mitigation: IBPB\n"));
        assert!(!clobbering_mitigation("Mitigation: IBPB on VMEXIT only\n"));
        assert!(!clobbering_mitigation("Not affected\n"));
    }

    #[test]
    fn enters_kernel__a_syscall_wrapper_and_a_plain_function__then_told_apart() {
        // SAFETY: getpid's code, and our own buffers below: mapped and readable.
        unsafe {
            assert!(enters_kernel(libc::getpid as *const () as usize));
            // getpid's own code, and a function that only returns.
            let mut wrapper = [0xccu8; SCAN];
            wrapper[..8].copy_from_slice(&[0xb8, 0x27, 0, 0, 0, 0x0f, 0x05, 0xc3]);
            assert!(enters_kernel(wrapper.as_ptr() as usize));
            assert!(!enters_kernel([0xc3u8; SCAN].as_ptr() as usize));
        }
    }

    #[test]
    fn enters_kernel__function_at_a_page_end_before_an_unmapped_page__then_no_fault() {
        // SAFETY: a fresh private mapping of two pages, the second made inaccessible.
        let page = unsafe {
            let p = libc::mmap(
                core::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            libc::mprotect(p.cast::<u8>().add(PAGE).cast(), PAGE, libc::PROT_NONE);
            p as usize
        };
        let at = page + PAGE - 4;
        // SAFETY: the first page's last bytes, ours; then the scan stops at its end.
        unsafe {
            core::ptr::copy_nonoverlapping([0xc3u8, 0x90, 0x0f, 0x05].as_ptr(), at as *mut u8, 4);
            assert!(enters_kernel(at));
            (at as *mut u8).add(2).write(0x90);
            assert!(!enters_kernel(at));
            libc::munmap(page as *mut c_void, 2 * PAGE);
        }
    }

    /// What the stubs below call: every integer and vector argument register, mixed.
    extern "C" fn sum(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, x: f64, y: f64) -> f64 {
        (a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f) as f64 + x * 1000.0 + y * 10000.0
    }

    #[test]
    fn stub__each_common_entry_without_an_agent__then_the_function_gets_every_argument() {
        let mut stubs = Stubs {
            by_entry: HashMap::new(),
            page: 0,
            used: PAGE,
        };
        let entries = [
            (Kind::Returns, true),
            (Kind::Returns, false),
            (Kind::NoReturn, false),
        ];
        let mut made = Vec::new();
        for (i, &(kind, through)) in entries.iter().enumerate() {
            let (stub, target) = stubs.get(0x1000 + 8 * i, kind).unwrap();
            target.real.store(sum as *const () as usize, Relaxed);
            target.entry.store(entry_for(kind, through), Relaxed);
            made.push(stub);
        }
        stubs.seal();
        for stub in made {
            // SAFETY: a sealed stub of ours, whose target is `sum`: the stub has `sum`'s type.
            // No agent is running, so the entry's slow path finds it not ready and jumps.
            let f: extern "C" fn(u64, u64, u64, u64, u64, u64, f64, f64) -> f64 =
                unsafe { core::mem::transmute(stub) };
            assert_eq!(f(1, 2, 3, 4, 5, 6, 0.5, 0.25), 91.0 + 500.0 + 2500.0);
        }
    }

    #[test]
    fn left_alone__hooks_and_start__then_never_redirected() {
        assert!(left_alone(b"__libc_start_main"));
        assert!(left_alone(b"mcount"));
        assert!(!left_alone(b"getpid"));
    }
}
