//! Modules and function names of the traced process, for the manifest and for `--trigger`.
//!
//! The agent records a function as its runtime address (`this_fn` of `__cyg_profile_func_enter`).
//! [`capture`] reads `/proc/<pid>/maps`, finds every mapped ELF object, computes its load bias and
//! turns the function symbols of the *instrumented* objects (those importing
//! `__cyg_profile_func_enter`) into runtime addresses with demangled names. Every object is listed
//! as a module; only instrumented ones contribute symbols, which keeps the manifest small (libc is
//! never instrumented). [`Capture::rescan`] adds objects loaded later (`dlopen`) and keeps those
//! already seen, so the names survive the target's exit. [`inspect_executable`] says, without
//! running a program, whether tracing it can record anything.
//!
//! ```ignore
//! let mut capture = symbols::capture(pid)?;        // once the target runs
//! capture.rescan()?;                               // later: new threads, periodically, at stop
//! capture.fill_manifest(&mut manifest);            // modules + symbols, function_id = address
//! let addresses = capture.resolve("ns::bar(int)"); // for --trigger symbol=ns::bar(int)
//! ```

mod elf;
mod images;
pub(crate) mod maps;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use self::elf::{Magic, Want};
pub use self::images::Images;
pub use symname::{demangle, short_name};

/// A failure to read a process's mappings or an executable, as one line naming the thing and the
/// fix.
#[derive(Debug)]
pub enum SymbolError {
    /// `/proc/<pid>` does not exist.
    NoProcess {
        /// The process asked for.
        pid: u32,
    },
    /// `/proc/<pid>/maps` exists but cannot be read.
    Proc {
        /// The process asked for.
        pid: u32,
        /// Why.
        source: io::Error,
    },
    /// A file cannot be opened or read.
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file starts like an x86-64 ELF but its headers or symbol tables are broken.
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, as the ELF parser said it.
        reason: String,
    },
}

impl SymbolError {
    fn open(path: &Path, source: io::Error) -> Self {
        SymbolError::Open {
            path: path.to_path_buf(),
            source,
        }
    }

    fn proc(pid: u32, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::NotFound => SymbolError::NoProcess { pid },
            _ if source.raw_os_error() == Some(libc::ESRCH) => SymbolError::NoProcess { pid },
            _ => SymbolError::Proc { pid, source },
        }
    }

    /// What to do about it, said after the cause (the other variants say it in their message).
    pub fn fix(&self) -> Option<&'static str> {
        match self {
            SymbolError::Proc { source, .. }
                if source.kind() == io::ErrorKind::PermissionDenied =>
            {
                Some("trace a process of your own user (or run the tracer as that user)")
            }
            SymbolError::Proc { .. } => Some("is /proc mounted and the process alive?"),
            SymbolError::Open { source, .. } => Some(match source.kind() {
                io::ErrorKind::NotFound => "check the path",
                io::ErrorKind::PermissionDenied => "make it readable by your user",
                _ => "check that it is a readable regular file",
            }),
            SymbolError::NoProcess { .. } | SymbolError::Malformed { .. } => None,
        }
    }

    /// Whether the user named something that cannot work (a missing or unreadable file, a pid
    /// that does not exist), as opposed to a failure while running.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            SymbolError::NoProcess { .. }
                | SymbolError::Open { .. }
                | SymbolError::Malformed { .. }
        )
    }
}

impl fmt::Display for SymbolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SymbolError::NoProcess { pid } => write!(
                f,
                "no process with pid {pid} (it may have exited); check the pid with `ps`"
            ),
            SymbolError::Proc { pid, .. } => write!(f, "cannot read /proc/{pid}/maps"),
            SymbolError::Open { path, .. } => write!(f, "cannot read {}", path.display()),
            SymbolError::Malformed { path, reason } => write!(
                f,
                "{}: malformed ELF file ({reason}); it may be truncated or corrupt, rebuild it",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SymbolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SymbolError::Proc { source, .. } | SymbolError::Open { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<SymbolError> for crate::error::CliError {
    fn from(e: SymbolError) -> Self {
        let exit_code = if e.is_usage() { 2 } else { 1 };
        let fix = e.fix();
        let refusal = crate::error::Refusal::new(e, exit_code);
        crate::error::CliError::Refused(match fix {
            Some(fix) => refusal.with_fix(fix),
            None => refusal,
        })
    }
}

/// A function of an instrumented module, at its runtime address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Runtime address: what the agent records as the function id.
    pub address: u64,
    /// Size in bytes (`st_size`).
    pub size: u64,
    /// Index of the chosen symbol in `.symtab` (in `.dynsym` for a stripped object or a
    /// canonical PLT entry): the manifest's `symbol_index`.
    pub symbol_index: u32,
    /// Demangled name (C++ with its parameter list, Rust without the hash).
    pub name: String,
    /// Every symbol name at this address as in the file, the chosen one first (aliases follow).
    pub mangled: Vec<String>,
}

/// One loaded instance of an ELF object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedModule {
    /// Path as mapped.
    pub path: String,
    /// [`atf::module_id`] of `path`.
    pub module_id: u32,
    /// Lowest address of its segments.
    pub base: u64,
    /// Bytes its segments span from `base`.
    pub size: u64,
    /// Runtime address − link-time address (0 for a non-PIE executable).
    pub bias: u64,
    /// GNU build id (hex), or empty.
    pub build_id: String,
    /// It imports `__cyg_profile_func_enter`: built with `-finstrument-functions`.
    pub instrumented: bool,
    /// Its functions in address order: all of them if it is instrumented, plus any canonical
    /// PLT entries (a non-PIC executable's stand-ins for library functions whose address it
    /// takes; an instrumented library then reports those functions at these addresses).
    pub functions: Vec<Function>,
    /// Its GOT's function entries at runtime addresses, named by their symbols: the agent records
    /// a library call under the address of the entry it went through.
    pub got_entries: Vec<Function>,
}

/// An object seen in the mappings but not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Path as mapped.
    pub path: String,
    /// Why it was not read.
    pub reason: String,
}

/// The modules and functions of one process, accumulated over any number of scans.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// The process scanned.
    pub pid: u32,
    /// Modules in base-address order, each (path, base) once.
    pub modules: Vec<LoadedModule>,
    /// Mapped x86-64 ELF files that could not be read (replaced on disk, unreadable, malformed);
    /// their functions have no names in the manifest.
    pub skipped: Vec<Skipped>,
}

/// The link-time addresses of the PLT entries of the ELF file at `path` through which its code
/// calls out, and the lowest address its segments start at (see the attach's safe points).
pub(crate) fn plt_entries(path: &Path) -> Result<(u64, Vec<u64>), SymbolError> {
    let file = File::open(path).map_err(|e| SymbolError::open(path, e))?;
    elf::plt_entries(path, &file)
}

pub(crate) use elf::Definition;

/// Each of `names` as the ELF file at `path` defines it in its dynamic symbol table (`None`: not
/// defined there): its link-time address and first `code_len` bytes. Only the headers, `.dynsym`
/// and those bytes are read (the attach looks up a few functions of libc and of the agent).
pub(crate) fn dynamic_definitions(
    path: &Path,
    names: &[&str],
    code_len: u64,
) -> Result<Vec<Option<elf::Definition>>, SymbolError> {
    let file = File::open(path).map_err(|e| SymbolError::open(path, e))?;
    elf::dynamic_definitions(path, &file, names, code_len)
}

/// Reads `/proc/<pid>/maps` and every ELF object mapped in the process.
///
/// Cost: one read of the maps file, then for each object its headers and `.dynsym`, and for an
/// instrumented object its `.symtab` (a few reads per object; no file is read whole).
pub fn capture(pid: u32) -> Result<Capture, SymbolError> {
    let mut out = Capture {
        pid,
        ..Capture::default()
    };
    out.rescan()?;
    Ok(out)
}

impl Capture {
    /// Scans the process's mappings again and adds the objects not seen before (libraries loaded
    /// with `dlopen` since the last scan); objects already known are not read again, and modules
    /// since unloaded are kept. Returns how many modules were added.
    ///
    /// A library loaded and unloaded between two scans is missed: rescan when threads appear,
    /// periodically while recording, and once at stop.
    pub fn rescan(&mut self) -> Result<usize, SymbolError> {
        let path = format!("/proc/{}/maps", self.pid);
        let text = fs::read_to_string(&path).map_err(|e| SymbolError::proc(self.pid, e))?;
        let newer = scan(self.pid, &maps::parse(&text), |path, bias| {
            self.modules
                .iter()
                .any(|m| m.path == path && m.bias == bias)
        });
        let before = self.modules.len();
        self.merge(newer);
        Ok(self.modules.len() - before)
    }

    /// Adds the modules of `newer` that `self` does not have (same path and base); keeps all of
    /// `self`'s, so names of unloaded libraries stay available.
    pub fn merge(&mut self, newer: Capture) {
        for m in newer.modules {
            if !self
                .modules
                .iter()
                .any(|k| k.path == m.path && k.base == m.base)
            {
                self.modules.push(m);
            }
        }
        self.modules.sort_by_key(|m| m.base);
        for s in newer.skipped {
            if !self.skipped.contains(&s) {
                self.skipped.push(s);
            }
        }
    }

    /// Whether any module is instrumented, i.e. whether the agent can record anything.
    pub fn instrumented(&self) -> bool {
        self.modules.iter().any(|m| m.instrumented)
    }

    /// The start addresses of [`resolve_ranges`](Self::resolve_ranges).
    #[cfg(test)]
    pub fn resolve(&self, name: &str) -> Vec<u64> {
        self.resolve_ranges(name).into_iter().map(|r| r.0).collect()
    }

    /// The code of the functions called `name`, each as its runtime `[start, end)` (one byte for a
    /// symbol without a size): the symbol as in the file (`_ZN2ns3barEi`, any alias), its
    /// demangled name (`ns::bar(int)`), or the demangled name without its parameter list
    /// (`ns::bar`, every overload), or its short name as the readers show it (`ns::Box::get` for
    /// `ns::Box<int>::get() const`). Sorted, without duplicates; empty if none.
    pub fn resolve_ranges(&self, name: &str) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = self
            .functions()
            .filter(|f| {
                f.name == name
                    || f.mangled.iter().any(|m| m == name)
                    || strip_params(&f.name) == Some(name)
                    || short_name(&f.name) == name
            })
            .map(|f| (f.address, f.address + f.size.max(1)))
            .collect();
        out.sort_unstable();
        out.dedup_by_key(|r| r.0);
        out
    }

    /// The function whose body contains `address` (the most recently loaded module wins if two
    /// were loaded at the same place).
    #[cfg(test)]
    pub fn function_at(&self, address: u64) -> Option<&Function> {
        self.modules
            .iter()
            .rev()
            .filter(|m| (m.base..m.base.saturating_add(m.size)).contains(&address))
            .find_map(|m| {
                let i = m.functions.partition_point(|f| f.address <= address);
                let f = m.functions.get(i.checked_sub(1)?)?;
                (address < f.address.saturating_add(f.size)).then_some(f)
            })
    }

    /// Every function of every module.
    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.modules.iter().flat_map(|m| m.functions.iter())
    }

    /// The manifest's `modules`.
    pub fn manifest_modules(&self) -> Vec<atf::Module> {
        self.modules
            .iter()
            .map(|m| atf::Module {
                module_id: m.module_id,
                path: m.path.clone(),
                base_address: m.base,
                size: m.size,
                uuid: m.build_id.clone(),
            })
            .collect()
    }

    /// The manifest's `symbols`: `function_id` is the runtime address (`0x%016x`), as recorded
    /// (a library call's is its GOT entry's). If a library was unloaded and another loaded at the
    /// same place between scans, both modules' names are listed and an address may carry two
    /// names.
    pub fn manifest_symbols(&self) -> Vec<atf::Symbol> {
        self.modules
            .iter()
            .flat_map(|m| {
                m.functions
                    .iter()
                    .chain(&m.got_entries)
                    .map(|f| atf::Symbol {
                        function_id: format!("{:#018x}", f.address),
                        module_id: m.module_id,
                        symbol_index: f.symbol_index,
                        name: f.name.clone(),
                        size: f.size,
                    })
            })
            .collect()
    }

    #[cfg(test)]
    /// Replaces `manifest.modules` and `manifest.symbols` with this capture's.
    pub fn fill_manifest(&self, manifest: &mut atf::Manifest) {
        manifest.modules = self.manifest_modules();
        manifest.symbols = self.manifest_symbols();
    }
}

/// `ns::bar` for `ns::bar(int)`; `None` if the name has no parameter list.
fn strip_params(name: &str) -> Option<&str> {
    if !name.ends_with(')') {
        return None;
    }
    // The parameter list opens at the `(` matching the final `)`.
    let mut depth = 0usize;
    for (i, c) in name.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&name[..i]).filter(|s| !s.is_empty());
                }
            }
            _ => {}
        }
    }
    None
}

/// The page size of this machine.
fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant; no pointer or memory is involved.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}

/// Reads the objects in `mappings`, except instances for which `known(path, bias)` holds.
fn scan(pid: u32, mappings: &[maps::Mapping], known: impl Fn(&str, u64) -> bool) -> Capture {
    let page = page_size();
    let mut by_path: BTreeMap<&str, Vec<&maps::Mapping>> = BTreeMap::new();
    for m in mappings {
        by_path.entry(m.path.as_str()).or_default().push(m);
    }
    let mut out = Capture {
        pid,
        ..Capture::default()
    };
    for (path, maps) in by_path {
        // Cheap first: a mapped data file (locale archive, fonts, ...) is not an ELF.
        let Some(file) = open_mapped(pid, path, maps[0]) else {
            continue;
        };
        let file = match file {
            Ok(file) => file,
            Err(reason) => {
                out.skipped.push(Skipped {
                    path: path.to_owned(),
                    reason,
                });
                continue;
            }
        };
        let headers = match elf::read(Path::new(path), &file, Want::Headers) {
            Ok(h) => h,
            Err(e) => {
                out.skipped.push(Skipped {
                    path: path.to_owned(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let biases: Vec<u64> = maps::biases(&headers.loads, &maps, page)
            .into_iter()
            .filter(|&b| !known(path, b))
            .collect();
        if biases.is_empty() {
            continue;
        }
        match read_object(path, &file, headers, &biases, 0, page) {
            Ok(modules) => out.modules.extend(modules),
            Err(skipped) => out.skipped.push(skipped),
        }
    }
    out.modules.sort_by_key(|m| m.base);
    out
}

/// The instances of one object at `biases`, its addresses ORed with `tag` (a process image's tag,
/// see `registry::image_tag`). Reads the function symbols if the object is instrumented; the
/// headers are already read. `Err`: the symbols cannot be read.
fn read_object(
    path: &str,
    file: &File,
    headers: elf::ElfObject,
    biases: &[u64],
    tag: u64,
    page: u64,
) -> Result<Vec<LoadedModule>, Skipped> {
    let object = if headers.imports_hook {
        elf::read(Path::new(path), file, Want::FunctionsIfInstrumented).map_err(|e| Skipped {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
    } else {
        headers
    };
    let module_id = atf::module_id(path);
    Ok(biases
        .iter()
        .map(|&bias| {
            let (base, size) = maps::extent(&object.loads, bias, page);
            LoadedModule {
                path: path.to_owned(),
                module_id,
                base: base | tag,
                size,
                bias,
                build_id: object.build_id.clone(),
                instrumented: object.imports_hook,
                functions: functions_at(&object.functions, &object.canonical_plt, bias, tag),
                got_entries: functions_at(&object.got_entries, &[], bias, tag),
            }
        })
        .collect())
}

/// `functions` (sorted by address, preferred name first) and the canonical PLT entries at
/// runtime addresses (ORed with `tag`), one per address.
fn functions_at(
    functions: &[elf::RawFunction],
    canonical_plt: &[elf::RawFunction],
    bias: u64,
    tag: u64,
) -> Vec<Function> {
    let mut all: Vec<&elf::RawFunction> = functions.iter().chain(canonical_plt).collect();
    if !canonical_plt.is_empty() {
        // Stable: keeps the preferred-name order among aliases.
        all.sort_by_key(|f| f.value);
    }
    let mut out: Vec<Function> = Vec::new();
    for f in all {
        let address = f.value.wrapping_add(bias) | tag;
        match out.last_mut() {
            Some(last) if last.address == address => {
                if !last.mangled.contains(&f.name) {
                    last.mangled.push(f.name.clone());
                }
            }
            _ => out.push(Function {
                address,
                size: f.size,
                symbol_index: f.index,
                name: demangle(&f.name),
                mangled: vec![f.name.clone()],
            }),
        }
    }
    out
}

/// Opens the file behind `mapping` as an ELF candidate. `None`: not an x86-64 ELF (or not a
/// regular file), nothing to report. `Err`: an ELF that cannot be read, with the reason.
///
/// The path is checked against the mapping's inode: a file replaced on disk since it was mapped
/// (a rebuild) is read through `/proc/<pid>/map_files/` instead, which names the mapped file.
fn open_mapped(pid: u32, path: &str, mapping: &maps::Mapping) -> Option<Result<File, String>> {
    let by_path = File::open(path).ok().filter(|f| {
        f.metadata()
            .is_ok_and(|m| m.is_file() && m.ino() == mapping.inode)
    });
    let file = match by_path {
        Some(f) => f,
        None => {
            let alias = format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                mapping.start, mapping.end
            );
            match File::open(&alias) {
                Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
                Ok(_) => return None,
                Err(e) => {
                    return Some(Err(format!(
                        "the mapped file cannot be opened (replaced on disk or not readable: {e})"
                    )))
                }
            }
        }
    };
    let mut head = [0u8; 20];
    let n = io::Read::read(&mut &file, &mut head).ok()?;
    if elf::magic(&head[..n]) != Magic::ElfX86_64 {
        return None;
    }
    Some(Ok(file))
}

/// How an executable would fare under the tracer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExeInfo {
    /// The file inspected.
    pub path: PathBuf,
    /// What it is.
    pub kind: ExeKind,
}

/// What an executable file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExeKind {
    /// An x86-64 ELF.
    Elf {
        /// Its dynamic linker (`PT_INTERP`); `None` for a statically linked executable, which
        /// `LD_PRELOAD` cannot reach.
        interpreter: Option<String>,
        /// Position independent (`ET_DYN`).
        pie: bool,
        /// Built for call tracing (`-finstrument-functions`, `-pg`, `-pg -mfentry`): a dynamic
        /// executable imports one of their entry hooks; a static one has it in its symbol table.
        instrumented: bool,
        /// GNU build id (hex), or empty.
        build_id: String,
    },
    /// An ELF that is not an x86-64 executable: another machine or class, or an object file.
    OtherElf {
        /// 32 or 64.
        class_bits: u8,
        /// `e_machine`.
        machine: u16,
        /// `e_type` (`ET_REL` for an object file), when the machine is x86-64.
        e_type: Option<u16>,
    },
    /// A script: `#!interpreter args`. Tracing it traces the interpreter.
    Script {
        /// The interpreter's path as written.
        interpreter: String,
        /// The rest of the `#!` line.
        args: String,
    },
    /// Neither an ELF nor a script.
    Unknown,
}

/// The build modes the tracer records, as the fix in its messages.
pub const BUILD_MODES: &str = "`-finstrument-functions`, `-pg`, `-pg -mfentry` or \
                               `-fpatchable-function-entry=5` (gcc/clang), or \
                               `-Z instrument-mcount` (Rust nightly)";

impl ExeInfo {
    /// Whether the agent can record this program's calls: a dynamically linked x86-64 executable
    /// built with `-finstrument-functions`. (Its libraries may be instrumented even if it is not:
    /// after recording, prefer [`Capture::instrumented`].)
    pub fn traceable(&self) -> bool {
        matches!(
            self.kind,
            ExeKind::Elf {
                interpreter: Some(_),
                instrumented: true,
                ..
            }
        )
    }

    /// Whether this is a dynamically linked x86-64 executable not built for call tracing: the
    /// tracer can record its library calls only.
    pub fn library_calls_only(&self) -> bool {
        matches!(
            self.kind,
            ExeKind::Elf {
                interpreter: Some(_),
                instrumented: false,
                ..
            }
        )
    }

    /// Why the tracer cannot run this program at all, as one line naming the reason and the fix:
    /// an ELF for another machine or class ("32-bit x86 programs are not supported"), or an ELF
    /// that is not an executable. `None` for anything it can start (which may still record
    /// nothing: see [`problem`](Self::problem)).
    pub fn unsupported(&self) -> Option<String> {
        let exe = self.path.display();
        match &self.kind {
            ExeKind::OtherElf {
                e_type: Some(_), ..
            } => self.problem(),
            ExeKind::OtherElf {
                class_bits: 32,
                machine: object::elf::EM_386,
                ..
            } => Some(format!(
                "{exe}: 32-bit x86 programs are not supported; rebuild it for x86-64 (without \
                 -m32)"
            )),
            ExeKind::OtherElf {
                class_bits: 32,
                machine: object::elf::EM_X86_64,
                ..
            } => Some(format!(
                "{exe}: x32 programs (32-bit pointers on x86-64) are not supported; rebuild it \
                 for x86-64 (without -mx32)"
            )),
            ExeKind::OtherElf {
                class_bits,
                machine,
                ..
            } => Some(format!(
                "{exe}: {class_bits}-bit {} programs are not supported; the tracer records \
                 x86-64 programs only, rebuild it for x86-64",
                machine_name(*class_bits, *machine)
            )),
            _ => None,
        }
    }

    /// Why tracing this program records nothing, as one line naming the fix; `None` if it can
    /// be traced. Meant to follow "recorded no events: " or "warning: ".
    pub fn problem(&self) -> Option<String> {
        let exe = self.path.display();
        match &self.kind {
            ExeKind::Elf {
                interpreter: Some(_),
                instrumented: true,
                ..
            } => None,
            ExeKind::Elf {
                interpreter: Some(_),
                instrumented: false,
                ..
            } => Some(format!(
                "{exe} was not built for call tracing; rebuild it with {BUILD_MODES}"
            )),
            ExeKind::Elf {
                interpreter: None,
                instrumented,
                ..
            } => Some(format!(
                "{exe} is statically linked, so the tracer's agent cannot be loaded into it \
                 (LD_PRELOAD needs a dynamically linked program) and it calls no shared library \
                 whose calls could be recorded; rebuild it without `-static`{}",
                if *instrumented {
                    ""
                } else {
                    " and with `-finstrument-functions`, `-pg` or `-pg -mfentry` (gcc/clang)"
                }
            )),
            ExeKind::OtherElf {
                e_type: Some(t), ..
            } => Some(format!(
                "{exe} is not an executable ({}); link it into a program built with \
                 `-finstrument-functions`",
                match *t {
                    object::elf::ET_REL => "a relocatable object file".to_owned(),
                    object::elf::ET_CORE => "a core dump".to_owned(),
                    t => format!("ELF type {t}"),
                }
            )),
            ExeKind::OtherElf {
                class_bits,
                machine,
                ..
            } => Some(format!(
                "{exe} is a {class_bits}-bit ELF for {}, but the tracer records x86-64 programs \
                 only; rebuild it for x86-64",
                machine_name(*class_bits, *machine)
            )),
            ExeKind::Script { interpreter, args } => {
                let run_by = if args.is_empty() {
                    interpreter.clone()
                } else {
                    format!("{interpreter} {args}")
                };
                Some(format!(
                    "{exe} is a script run by `{run_by}`: the interpreter is what would be \
                     traced, not the script; trace a program built with `-finstrument-functions`"
                ))
            }
            ExeKind::Unknown => Some(format!(
                "{exe} is neither an ELF executable nor a `#!` script; give the tracer a program \
                 built with `-finstrument-functions`"
            )),
        }
    }
}

fn machine_name(class_bits: u8, machine: u16) -> String {
    use object::elf::*;
    match machine {
        EM_386 => "i386".to_owned(),
        EM_X86_64 if class_bits == 32 => "x32".to_owned(),
        EM_X86_64 => "x86-64".to_owned(),
        EM_AARCH64 => "arm64 (aarch64)".to_owned(),
        EM_ARM => "arm".to_owned(),
        EM_RISCV => "risc-v".to_owned(),
        EM_PPC64 => "ppc64".to_owned(),
        EM_S390 => "s390".to_owned(),
        m => format!("machine {m}"),
    }
}

/// Inspects an executable without running it: what it is, whether it is dynamically linked and
/// whether it was built with `-finstrument-functions`. Errors only if the file cannot be read or
/// is a broken x86-64 ELF; any other kind of file is described by [`ExeKind`].
pub fn inspect_executable(path: &Path) -> Result<ExeInfo, SymbolError> {
    let head = elf::head(path, 256)?;
    let kind = match elf::magic(&head) {
        Magic::ElfX86_64 => {
            let file = File::open(path).map_err(|e| SymbolError::open(path, e))?;
            let o = elf::read(path, &file, Want::AllTables)?;
            match o.e_type {
                object::elf::ET_EXEC | object::elf::ET_DYN => {
                    let instrumented = if o.interpreter.is_some() {
                        o.imports_hook
                    } else {
                        o.mentions_hook
                    };
                    ExeKind::Elf {
                        pie: o.e_type == object::elf::ET_DYN,
                        interpreter: o.interpreter,
                        instrumented,
                        build_id: o.build_id,
                    }
                }
                t => ExeKind::OtherElf {
                    class_bits: 64,
                    machine: object::elf::EM_X86_64,
                    e_type: Some(t),
                },
            }
        }
        Magic::ElfOther {
            class_bits,
            machine,
        } => ExeKind::OtherElf {
            class_bits,
            machine,
            e_type: None,
        },
        Magic::Script { interpreter, args } => ExeKind::Script { interpreter, args },
        Magic::Other => ExeKind::Unknown,
    };
    Ok(ExeInfo {
        path: path.to_path_buf(),
        kind,
    })
}
