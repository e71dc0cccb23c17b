//! What the tracer needs from one ELF file: its load segments, interpreter, build id, whether it
//! imports the instrumentation hook, and its function symbols.
//!
//! Files are read through a [`ReadCache`]: only the headers and the sections we use are read (a
//! library's code and data never are), and each section is read once, in one piece.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, SectionTable, Sym};
use object::read::{ReadCache, ReadRef, SectionIndex, StringTable};
use object::Endianness;

use super::SymbolError;

type Header = elf::FileHeader64<Endianness>;
type Sym64 = elf::Sym64<Endianness>;

/// The entry hooks of the build modes the agent serves: `-finstrument-functions`, `-pg`
/// (`mcount`, or `_mcount`) and `-pg -mfentry` (`__fentry__`). Importing one makes an object
/// instrumented.
pub(super) const HOOKS: [&[u8]; 4] = [
    b"__cyg_profile_func_enter",
    b"mcount",
    b"_mcount",
    b"__fentry__",
];

fn is_hook(name: &[u8]) -> bool {
    HOOKS.contains(&name)
}

/// What the first bytes of a file say it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Magic {
    /// A 64-bit little-endian x86-64 ELF.
    ElfX86_64,
    /// An ELF for another machine or class.
    ElfOther {
        /// 32 or 64.
        class_bits: u8,
        /// `e_machine`.
        machine: u16,
    },
    /// `#!interpreter args`.
    Script { interpreter: String, args: String },
    /// Anything else.
    Other,
}

/// Classifies a file from its first bytes (at least 20 for an ELF, the first line for a script).
pub(super) fn magic(head: &[u8]) -> Magic {
    if head.len() >= 20 && head[..4] == elf::ELFMAG {
        // e_ident: EI_CLASS at 4, EI_DATA at 5; e_machine at 18.
        let class_bits = if head[4] == elf::ELFCLASS64 { 64 } else { 32 };
        let machine = if head[5] == elf::ELFDATA2MSB {
            u16::from_be_bytes([head[18], head[19]])
        } else {
            u16::from_le_bytes([head[18], head[19]])
        };
        if class_bits == 64 && head[5] == elf::ELFDATA2LSB && machine == elf::EM_X86_64 {
            return Magic::ElfX86_64;
        }
        return Magic::ElfOther {
            class_bits,
            machine,
        };
    }
    if let Some(rest) = head.strip_prefix(b"#!") {
        let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let line = line.trim();
        let (interpreter, args) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        return Magic::Script {
            interpreter: interpreter.to_owned(),
            args: args.trim().to_owned(),
        };
    }
    Magic::Other
}

/// Reads the first `n` bytes of `path` (fewer if the file is shorter).
pub(super) fn head(path: &Path, n: usize) -> Result<Vec<u8>, SymbolError> {
    let file = File::open(path).map_err(|e| SymbolError::open(path, e))?;
    let mut buf = Vec::with_capacity(n);
    file.take(n as u64)
        .read_to_end(&mut buf)
        .map_err(|e| SymbolError::open(path, e))?;
    Ok(buf)
}

/// One `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Load {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub executable: bool,
}

/// A function symbol as the file has it (link-time address, mangled name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RawFunction {
    pub value: u64,
    pub size: u64,
    pub index: u32,
    pub bind: u8,
    pub name: String,
}

/// The parts of an x86-64 ELF file the tracer uses.
#[derive(Clone, Debug, Default)]
pub(super) struct ElfObject {
    /// `e_type` (`ET_EXEC`, `ET_DYN`, ...).
    pub e_type: u16,
    pub loads: Vec<Load>,
    /// `PT_INTERP`, i.e. dynamically linked.
    pub interpreter: Option<String>,
    /// GNU build id, lowercase hex; empty if absent.
    pub build_id: String,
    /// `.dynsym` has an undefined entry hook (its calls go through the dynamic linker, so a
    /// preloaded agent receives them), or the object lists patchable function entries (which
    /// the agent patches): the object is instrumented.
    pub imports_hook: bool,
    /// Any symbol table names `__cyg_profile_func_enter` (defined or not): instrumented code is
    /// present even if the hook is linked in statically.
    pub mentions_hook: bool,
    /// Function symbols in address order, the preferred name first among aliases (only if
    /// asked for).
    pub functions: Vec<RawFunction>,
    /// Canonical PLT entries: undefined `.dynsym` functions with a nonzero value. A non-PIC
    /// executable that takes the address of a library function gets one, and the dynamic linker
    /// then makes it *the* address of that function everywhere, so an instrumented library
    /// reports its function's `this_fn` at the executable's PLT entry.
    pub canonical_plt: Vec<RawFunction>,
    /// GOT entries of functions (`R_X86_64_JUMP_SLOT`, `R_X86_64_GLOB_DAT`): the agent records a
    /// library call under its entry's address, named by the symbol (8-byte "functions").
    pub got_entries: Vec<RawFunction>,
}

/// Which symbol tables to read beyond the dynamic one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Want {
    /// Only what decides instrumentation (`.dynsym`).
    Headers,
    /// `.symtab` as well, to decide instrumentation of a static executable.
    AllTables,
    /// Headers, and the function symbols if the object imports the hook.
    FunctionsIfInstrumented,
}

fn malformed(path: &Path, what: &str) -> SymbolError {
    SymbolError::Malformed {
        path: path.to_path_buf(),
        reason: what.to_owned(),
    }
}

/// The ELF header of `data` (read from `path`) and its byte order.
fn parse_header<'data, R: ReadRef<'data>>(
    path: &Path,
    data: R,
) -> Result<(&'data Header, Endianness), SymbolError> {
    let header = Header::parse(data).map_err(|e| malformed(path, &e.to_string()))?;
    let endian = header
        .endian()
        .map_err(|e| malformed(path, &e.to_string()))?;
    Ok((header, endian))
}

/// Parses the x86-64 ELF `file` (opened from `path`, which names it in errors).
pub(super) fn read(path: &Path, file: &File, want: Want) -> Result<ElfObject, SymbolError> {
    let cache = ReadCache::new(file);
    let data = &cache;
    let (header, endian) = parse_header(path, data)?;
    if header.e_machine(endian) != elf::EM_X86_64 {
        return Err(malformed(path, "not an x86-64 object"));
    }
    let mut out = ElfObject {
        e_type: header.e_type(endian),
        ..ElfObject::default()
    };
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| malformed(path, &e.to_string()))?;
    for ph in phdrs {
        match ph.p_type(endian) {
            elf::PT_LOAD => out.loads.push(Load {
                vaddr: ph.p_vaddr(endian),
                memsz: ph.p_memsz(endian),
                offset: ph.p_offset(endian),
                executable: ph.p_flags(endian) & elf::PF_X != 0,
            }),
            elf::PT_INTERP => {
                let bytes = ph
                    .data(endian, data)
                    .map_err(|()| malformed(path, "PT_INTERP out of the file"))?;
                let bytes = bytes.split(|&b| b == 0).next().unwrap_or_default();
                out.interpreter = Some(String::from_utf8_lossy(bytes).into_owned());
            }
            elf::PT_NOTE if out.build_id.is_empty() => {
                if let Ok(Some(mut notes)) = ph.notes(endian, data) {
                    while let Ok(Some(note)) = notes.next() {
                        if note.name() == elf::ELF_NOTE_GNU
                            && note.n_type(endian) == elf::NT_GNU_BUILD_ID
                        {
                            out.build_id = note.desc().iter().map(|b| format!("{b:02x}")).collect();
                        }
                    }
                }
            }
            _ => {}
        }
    }

    let sections = header
        .sections(endian, data)
        .map_err(|e| malformed(path, &e.to_string()))?;
    if sections
        .section_by_name(endian, patchsite::SECTION)
        .is_some()
    {
        out.imports_hook = true;
        out.mentions_hook = true;
    }
    let dynsym = table(path, &sections, endian, data, elf::SHT_DYNSYM)?;
    if let Some((syms, strings)) = &dynsym {
        for (index, sym) in syms.iter().enumerate() {
            let undefined = sym.st_shndx(endian) == elf::SHN_UNDEF;
            let name = strings.get(sym.st_name(endian)).unwrap_or_default();
            if is_hook(name) {
                out.mentions_hook = true;
                out.imports_hook |= undefined;
            } else if undefined
                && sym.st_type() == elf::STT_FUNC
                && sym.st_value(endian) != 0
                && !name.is_empty()
            {
                out.canonical_plt.push(RawFunction {
                    value: sym.st_value(endian),
                    // An x86-64 PLT entry is 16 bytes.
                    size: sym.st_size(endian).max(16),
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    bind: sym.st_bind(),
                    name: String::from_utf8_lossy(name).into_owned(),
                });
            }
        }
    }
    if let Some((syms, strings)) = &dynsym {
        out.got_entries = got_entries(path, &sections, endian, data, syms, strings)?;
    }
    let want_symtab = match want {
        Want::Headers => false,
        Want::AllTables => true,
        Want::FunctionsIfInstrumented => out.imports_hook,
    };
    if !want_symtab {
        return Ok(out);
    }
    let symtab = table(path, &sections, endian, data, elf::SHT_SYMTAB)?;
    if let Some((syms, strings)) = &symtab {
        out.mentions_hook |= syms
            .iter()
            .any(|s| strings.get(s.st_name(endian)).is_ok_and(is_hook));
    }
    if want == Want::FunctionsIfInstrumented {
        // `.symtab` has the static functions too; a stripped object keeps only `.dynsym`.
        let best = symtab.filter(|(syms, _)| syms.len() > 1).or(dynsym);
        if let Some((syms, strings)) = best {
            out.functions = functions(endian, syms, &strings);
        }
    }
    Ok(out)
}

/// A function an object's dynamic symbol table defines: its link-time address and its first
/// bytes (what a caller compares with the target's memory before calling it there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Definition {
    pub address: u64,
    pub code: Vec<u8>,
}

/// Each of `names` as the ELF `file` (opened from `path`) defines it in `.dynsym`, with its
/// first `code_len` bytes; `None` where it is not defined there. Reads the headers, `.dynsym` and
/// those bytes only.
pub(crate) fn dynamic_definitions(
    path: &Path,
    file: &File,
    names: &[&str],
    code_len: u64,
) -> Result<Vec<Option<Definition>>, SymbolError> {
    let cache = ReadCache::new(file);
    let data = &cache;
    let (header, endian) = parse_header(path, data)?;
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| malformed(path, &e.to_string()))?;
    let sections = header
        .sections(endian, data)
        .map_err(|e| malformed(path, &e.to_string()))?;
    let Some((syms, strings)) = table(path, &sections, endian, data, elf::SHT_DYNSYM)? else {
        return Ok(vec![None; names.len()]);
    };
    let code_at = |address: u64| -> Vec<u8> {
        phdrs
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
            .find(|ph| {
                let lo = ph.p_vaddr(endian);
                address >= lo && address + code_len <= lo + ph.p_filesz(endian)
            })
            .and_then(|ph| {
                let offset = address - ph.p_vaddr(endian) + ph.p_offset(endian);
                data.read_bytes_at(offset, code_len).ok()
            })
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    };
    Ok(names
        .iter()
        .map(|name| {
            syms.iter()
                .find(|s| {
                    s.st_shndx(endian) != elf::SHN_UNDEF
                        && s.st_value(endian) != 0
                        && strings.get(s.st_name(endian)) == Ok(name.as_bytes())
                })
                .map(|s| Definition {
                    address: s.st_value(endian),
                    code: code_at(s.st_value(endian)),
                })
        })
        .collect())
}

/// Bytes per x86-64 PLT entry.
const PLT_ENTRY: u64 = 16;

/// The link-time addresses of the PLT entries of the ELF `file` (opened from `path`) through which
/// its code calls out (`.plt.sec` with IBT, else `.plt` but its first, resolver entry), and the
/// lowest address a `PT_LOAD` segment starts at (to place them in a process). No PLT
/// (`-fno-plt`): none.
pub(crate) fn plt_entries(path: &Path, file: &File) -> Result<(u64, Vec<u64>), SymbolError> {
    let cache = ReadCache::new(file);
    let data = &cache;
    let (header, endian) = parse_header(path, data)?;
    let lowest = header
        .program_headers(endian, data)
        .map_err(|e| malformed(path, &e.to_string()))?
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .map(|ph| ph.p_vaddr(endian))
        .min()
        .unwrap_or(0);
    let sections = header
        .sections(endian, data)
        .map_err(|e| malformed(path, &e.to_string()))?;
    let (section, skip) = match sections.section_by_name(endian, b".plt.sec") {
        Some((_, s)) => (s, 0),
        None => match sections.section_by_name(endian, b".plt") {
            Some((_, s)) => (s, PLT_ENTRY),
            None => return Ok((lowest, Vec::new())),
        },
    };
    let (start, size) = (section.sh_addr(endian), section.sh_size(endian));
    Ok((
        lowest,
        (start + skip..start + size)
            .step_by(PLT_ENTRY as usize)
            .collect(),
    ))
}

type Table<'data> = (&'data [Sym64], StringTable<'data, &'data [u8]>);

/// The first symbol table of type `sh_type` and its string table, each read in one piece.
fn table<'data, R: ReadRef<'data>>(
    path: &Path,
    sections: &SectionTable<'data, Header, R>,
    endian: Endianness,
    data: R,
    sh_type: u32,
) -> Result<Option<Table<'data>>, SymbolError> {
    let Some(sh) = sections.iter().find(|s| s.sh_type(endian) == sh_type) else {
        return Ok(None);
    };
    let syms: &[Sym64] = sh
        .data_as_array(endian, data)
        .map_err(|e| malformed(path, &e.to_string()))?;
    let strtab = sections
        .section(SectionIndex(sh.sh_link(endian) as usize))
        .and_then(|s| s.data(endian, data))
        .map_err(|e| malformed(path, &e.to_string()))?;
    Ok(Some((
        syms,
        StringTable::new(strtab, 0, strtab.len() as u64),
    )))
}

/// `STT_FUNC` symbols with a size, defined in this object, in address order; at one address
/// (aliases) a global name comes before a weak one, a weak one before a local one, then the name
/// with fewer leading underscores, then name order.
fn functions<'data>(
    endian: Endianness,
    syms: &[Sym64],
    strings: &StringTable<'data, &'data [u8]>,
) -> Vec<RawFunction> {
    let mut all: Vec<RawFunction> = syms
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.st_type() == elf::STT_FUNC
                && s.st_size(endian) > 0
                && s.st_shndx(endian) != elf::SHN_UNDEF
        })
        .filter_map(|(index, s)| {
            let name = strings.get(s.st_name(endian)).ok()?;
            if name.is_empty() {
                return None;
            }
            Some(RawFunction {
                value: s.st_value(endian),
                size: s.st_size(endian),
                index: u32::try_from(index).ok()?,
                bind: s.st_bind(),
                name: String::from_utf8_lossy(name).into_owned(),
            })
        })
        .collect();
    let rank = |f: &RawFunction| {
        let bind = match f.bind {
            elf::STB_GLOBAL => 0,
            elf::STB_WEAK => 1,
            _ => 2,
        };
        let underscores = f.name.bytes().take_while(|&b| b == b'_').count();
        (bind, underscores)
    };
    all.sort_by(|a, b| {
        a.value
            .cmp(&b.value)
            .then_with(|| rank(a).cmp(&rank(b)))
            .then_with(|| a.name.cmp(&b.name))
    });
    all
}

/// The function entries of the GOT: each `R_X86_64_JUMP_SLOT` and `R_X86_64_GLOB_DAT` relocation
/// of a function symbol (`STT_FUNC`, `STT_GNU_IFUNC`) in the dynamic relocation sections, at its
/// link-time address, in address order.
fn got_entries<'data, R: ReadRef<'data>>(
    path: &Path,
    sections: &SectionTable<'data, Header, R>,
    endian: Endianness,
    data: R,
    syms: &[Sym64],
    strings: &StringTable<'data, &'data [u8]>,
) -> Result<Vec<RawFunction>, SymbolError> {
    let mut out = Vec::new();
    for sh in sections.iter() {
        if sh.sh_type(endian) != elf::SHT_RELA {
            continue;
        }
        let relas: &[elf::Rela64<Endianness>] = sh
            .data_as_array(endian, data)
            .map_err(|e| malformed(path, &e.to_string()))?;
        for r in relas {
            let kind = r.r_type(endian, false);
            if kind != elf::R_X86_64_JUMP_SLOT && kind != elf::R_X86_64_GLOB_DAT {
                continue;
            }
            let index = r.r_sym(endian, false) as usize;
            let Some(sym) = syms.get(index) else {
                continue;
            };
            if !matches!(sym.st_type(), elf::STT_FUNC | elf::STT_GNU_IFUNC) {
                continue;
            }
            let Ok(name) = strings.get(sym.st_name(endian)) else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            out.push(RawFunction {
                value: r.r_offset.get(endian),
                size: 8,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                bind: sym.st_bind(),
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
    }
    out.sort_by_key(|f| f.value);
    out.dedup_by_key(|f| f.value);
    Ok(out)
}
