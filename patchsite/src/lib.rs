//! The NOP sleds of `-fpatchable-function-entry=N[,M]` builds: where an object lists them, what
//! a sled looks like, and how one becomes a 5-byte `call` (and back) while other threads may be
//! executing it. The agent patches sleds in its own process; the tracer reads the same sleds from
//! a target's memory to choose where to stop a thread before the agent is loaded.
//!
//! # Contract
//! - [`find_section`] finds `__patchable_function_entries` in an ELF64 file's section headers
//!   (the section is loaded; after relocation each 8-byte word is the run-time address of a
//!   sled's first byte).
//! - [`classify`] reads a sled from its first bytes: gcc writes `N` one-byte NOPs (`0x90`), `M`
//!   of them before the function's entry; LLVM (clang, rustc) writes one multi-byte NOP. The call
//!   goes at the end of the sled ([`Sled::call_at`]), which every entry executes whatever `M`
//!   was, as long as at least 5 bytes follow the entry.
//! - A call's displacement is one of [`DISPLACEMENTS`]: each of its four bytes is a one-byte
//!   instruction that changes nothing a function's entry depends on (`cld`, `clc`, `stc`, `cmc`,
//!   `nop`: at a call the flags are dead and the direction flag is clear). So, for a run of
//!   `0x90`, [`Step`]s that write the four displacement bytes first and the opcode last never
//!   leave a thread anywhere in the sled with anything but harmless one-byte instructions or the
//!   complete call ahead of it, whatever it had executed when preempted, in whichever order the
//!   byte stores become visible; restoring writes the opcode back first. Between the two
//!   phases the caller serialises every CPU that may run the code (`membarrier`
//!   `SYNC_CORE`), so no CPU decodes a new opcode with displacement bytes it fetched earlier.
//!   A multi-byte NOP is one instruction, so no thread can be inside it: it is replaced whole,
//!   by one aligned 8-byte store ([`Sled::atomic_word`]); one that straddles an 8-byte word is
//!   left alone.
//! - The protocol is a contract with the CPU's instruction fetch, not between threads' memory
//!   operations, so it has no loom model: the test
//!   `steps__patch_and_restore_every_displacement__then_every_state_from_every_offset_is_safe`
//!   walks every intermediate state of the site (any subset of a phase's stores visible) from
//!   every offset a preempted thread can resume at.
//! - The call lands at `call_at + 5 + displacement`, below the object's code: the caller maps a
//!   page there per object that jumps on to its entry hook (the displacement is chosen so that
//!   region is free).
//!
//! # Example
//! ```
//! use patchsite::{classify, call_bytes, Kind, DISPLACEMENTS};
//! let sled = [0x90; 5];
//! let s = classify(&sled).unwrap();
//! assert_eq!((s.call_at, s.kind), (0, Kind::OneByteNops));
//! let call = call_bytes(DISPLACEMENTS[0]);
//! assert_eq!(call[0], 0xe8);
//! ```

#![no_std]

/// The section that lists the sleds.
pub const SECTION: &[u8] = b"__patchable_function_entries";

/// The longest sled [`classify`] looks at.
pub const MAX_SLED: usize = 64;

/// The bytes of the call instruction.
pub const CALL_LEN: usize = 5;

/// One-byte instructions harmless at a function's entry, usable as displacement bytes.
pub const HARMLESS: [u8; 5] = [0xfc, 0xf9, 0xf8, 0xf5, 0x90];

/// Call displacements whose four bytes are all [`HARMLESS`], nearest first (all negative: the
/// target region lies 64 MiB to 1.8 GiB below the sled). The caller tries them in turn until the
/// region they need is free.
pub const DISPLACEMENTS: [i32; 10] = [
    i32::from_le_bytes([0xfc, 0xfc, 0xfc, 0xfc]),
    i32::from_le_bytes([0x90, 0x90, 0x90, 0xfc]),
    i32::from_le_bytes([0xfc, 0xfc, 0xfc, 0xf9]),
    i32::from_le_bytes([0xfc, 0xfc, 0xfc, 0xf8]),
    i32::from_le_bytes([0xfc, 0xfc, 0xfc, 0xf5]),
    i32::from_le_bytes([0xfc, 0xfc, 0xfc, 0x90]),
    i32::from_le_bytes([0x90, 0x90, 0x90, 0xf9]),
    i32::from_le_bytes([0x90, 0x90, 0x90, 0xf8]),
    i32::from_le_bytes([0x90, 0x90, 0x90, 0xf5]),
    i32::from_le_bytes([0x90, 0x90, 0x90, 0x90]),
];

/// What a sled is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A run of `0x90` (gcc); patched byte by byte, see [`steps`].
    OneByteNops,
    /// One 5-byte NOP `0f 1f 44 00 xx` (LLVM); replaced by one 8-byte store.
    FiveByteNop,
}

/// A sled as [`classify`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sled {
    /// Where the call goes, from the sled's first byte.
    pub call_at: usize,
    /// Its length.
    pub len: usize,
    /// What it is made of.
    pub kind: Kind,
}

impl Sled {
    /// Where a thread that is about to run this function's body can be stopped: a byte every
    /// entry executes and that is an instruction's first (the last NOP of a run; the NOP itself).
    pub fn stop_at(&self) -> usize {
        match self.kind {
            Kind::OneByteNops => self.len - 1,
            Kind::FiveByteNop => self.call_at,
        }
    }

    /// For a [`Kind::FiveByteNop`] whose first byte is at run-time address `at`: the aligned
    /// 8-byte word holding it all, and the call's offset in that word. `None` if it straddles.
    pub fn atomic_word(&self, at: u64) -> Option<(u64, usize)> {
        let call = at + self.call_at as u64;
        let word = call & !7;
        let offset = (call - word) as usize;
        (offset + CALL_LEN <= 8).then_some((word, offset))
    }
}

/// Reads the sled starting with `bytes` (up to [`MAX_SLED`] of them). `None`: not a sled this
/// crate patches (already patched, too short for a call, or another NOP form).
pub fn classify(bytes: &[u8]) -> Option<Sled> {
    let bytes = &bytes[..bytes.len().min(MAX_SLED)];
    let run = bytes.iter().take_while(|&&b| b == 0x90).count();
    if run >= CALL_LEN {
        return Some(Sled {
            call_at: run - CALL_LEN,
            len: run,
            kind: Kind::OneByteNops,
        });
    }
    if run == 0 && bytes.len() >= CALL_LEN && bytes[..4] == [0x0f, 0x1f, 0x44, 0x00] {
        return Some(Sled {
            call_at: 0,
            len: CALL_LEN,
            kind: Kind::FiveByteNop,
        });
    }
    None
}

/// The call instruction with displacement `disp`.
pub fn call_bytes(disp: i32) -> [u8; CALL_LEN] {
    let d = disp.to_le_bytes();
    [0xe8, d[0], d[1], d[2], d[3]]
}

/// The bytes written at a [`Kind::OneByteNops`] call site, in order: a phase is a set of
/// `(offset, byte)` stores in any order; the caller serialises every CPU between phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Stores of the phase, as `(offset from call_at, byte)`.
    pub stores: [(usize, u8); 4],
    /// How many of `stores` are used.
    pub count: usize,
}

impl Step {
    /// The stores of this phase.
    pub fn stores(&self) -> &[(usize, u8)] {
        &self.stores[..self.count]
    }
}

/// The two phases that turn `from` into `to` at a one-byte-NOP site (`from` or `to` is five
/// `0x90`): the displacement bytes first when patching, the opcode first when restoring.
pub fn steps(from: [u8; CALL_LEN], to: [u8; CALL_LEN]) -> [Step; 2] {
    let tail = Step {
        stores: [(1, to[1]), (2, to[2]), (3, to[3]), (4, to[4])],
        count: 4,
    };
    let head = Step {
        stores: [(0, to[0]), (0, 0), (0, 0), (0, 0)],
        count: 1,
    };
    if from[0] == 0x90 {
        [tail, head]
    } else {
        [head, tail]
    }
}

/// The `(address, size)` of section `name` in the ELF64 little-endian file that `read(offset,
/// buf)` reads (`false`: the bytes are not there). `None` if the file has no such section or is
/// not such a file.
pub fn find_section(
    mut read: impl FnMut(u64, &mut [u8]) -> bool,
    name: &[u8],
) -> Option<(u64, u64)> {
    let mut eh = [0u8; 64];
    if !read(0, &mut eh) || eh[..4] != *b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let shoff = u64_at(&eh, 0x28);
    let shentsize = u64::from(u16_at(&eh, 0x3a));
    let shnum = u64::from(u16_at(&eh, 0x3c));
    let shstrndx = u64::from(u16_at(&eh, 0x3e));
    if shoff == 0 || shentsize < 64 || shstrndx >= shnum {
        return None;
    }
    let header = |read: &mut dyn FnMut(u64, &mut [u8]) -> bool, i: u64| {
        let mut sh = [0u8; 64];
        read(shoff + i * shentsize, &mut sh).then_some(sh)
    };
    let strtab = header(&mut read, shstrndx)?;
    let (str_off, str_size) = (u64_at(&strtab, 24), u64_at(&strtab, 32));
    let mut want = [0u8; 64];
    let n = name.len();
    if n + 1 > want.len() {
        return None;
    }
    for i in 0..shnum {
        let sh = header(&mut read, i)?;
        let name_off = u64::from(u32_at(&sh, 0));
        if name_off + n as u64 + 1 > str_size {
            continue;
        }
        if !read(str_off + name_off, &mut want[..n + 1]) {
            continue;
        }
        if &want[..n] == name && want[n] == 0 {
            return Some((u64_at(&sh, 16), u64_at(&sh, 32)));
        }
    }
    None
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Executes, from offset `start`, the 5 bytes of a call site as a CPU would: one-byte
    /// [`HARMLESS`] instructions one by one, or the complete call from offset 0. `Ok(true)`: the
    /// call ran (with its displacement), `Ok(false)`: only harmless instructions up to the end.
    fn run(bytes: [u8; 5], start: usize, disp: i32) -> Result<bool, usize> {
        let mut at = start;
        while at < 5 {
            if at == 0 && bytes[0] == 0xe8 {
                return if bytes == call_bytes(disp) {
                    Ok(true)
                } else {
                    Err(0)
                };
            }
            if !HARMLESS.contains(&bytes[at]) {
                return Err(at);
            }
            at += 1;
        }
        Ok(false)
    }

    /// Every state the site passes through while `steps(from, to)` runs: all stores of earlier
    /// phases done, any subset of the current phase's.
    fn states(from: [u8; 5], to: [u8; 5]) -> Vec<[u8; 5]> {
        let mut out = Vec::new();
        let mut base = from;
        for step in steps(from, to) {
            let stores = step.stores();
            for mask in 0..1u32 << stores.len() {
                let mut s = base;
                for (i, &(o, b)) in stores.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        s[o] = b;
                    }
                }
                out.push(s);
            }
            for &(o, b) in stores {
                base[o] = b;
            }
        }
        assert_eq!(base, to);
        out
    }

    #[test]
    fn steps__patch_and_restore_every_displacement__then_every_state_from_every_offset_is_safe() {
        for disp in DISPLACEMENTS {
            let call = call_bytes(disp);
            for (from, to) in [([0x90; 5], call), (call, [0x90; 5])] {
                for s in states(from, to) {
                    // A thread preempted inside the sled resumes at an instruction boundary of
                    // the code it was running (`from`, one-byte instructions) or at 0.
                    for start in 0..5 {
                        let r = run(s, start, disp);
                        assert!(r.is_ok(), "{disp:#x}: state {s:02x?} from {start}: {r:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn displacements__every_byte_harmless_and_all_distinct() {
        for (i, d) in DISPLACEMENTS.iter().enumerate() {
            assert!(
                d.to_le_bytes().iter().all(|b| HARMLESS.contains(b)),
                "{d:#x}"
            );
            assert!(*d < 0);
            assert!(!DISPLACEMENTS[..i].contains(d));
        }
    }

    #[test]
    fn classify__gcc_llvm_and_others__then_call_at_the_end_or_none() {
        let s = classify(&[0x90; 16]).unwrap();
        assert_eq!(
            (s.call_at, s.len, s.kind, s.stop_at()),
            (11, 16, Kind::OneByteNops, 15)
        );
        let mut gcc = [0u8; 12];
        gcc[..7].fill(0x90);
        gcc[7] = 0x55;
        assert_eq!(classify(&gcc).unwrap().call_at, 2);
        let s = classify(&[0x0f, 0x1f, 0x44, 0x00, 0x08, 0x41]).unwrap();
        assert_eq!((s.call_at, s.kind, s.stop_at()), (0, Kind::FiveByteNop, 0));
        assert_eq!(classify(&[0x90; 4]), None, "too short for a call");
        assert_eq!(
            classify(&call_bytes(DISPLACEMENTS[0])),
            None,
            "patched already"
        );
        assert_eq!(classify(&[0x55, 0x48, 0x89, 0xe5, 0x90]), None);
    }

    #[test]
    fn atomic_word__inside_or_straddling__then_word_or_none() {
        let s = classify(&[0x0f, 0x1f, 0x44, 0x00, 0x00]).unwrap();
        assert_eq!(s.atomic_word(0x1000), Some((0x1000, 0)));
        assert_eq!(s.atomic_word(0x1003), Some((0x1000, 3)));
        assert_eq!(s.atomic_word(0x1004), None);
    }

    #[test]
    fn find_section__this_test_binary_and_garbage__then_found_or_none() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let read = |o: u64, b: &mut [u8]| {
            let o = o as usize;
            exe.get(o..o + b.len())
                .map(|s| b.copy_from_slice(s))
                .is_some()
        };
        let text = find_section(read, b".text").expect("a .text section");
        assert!(text.0 > 0 && text.1 > 0);
        assert_eq!(find_section(read, SECTION), None);
        assert_eq!(find_section(|_, _| false, b".text"), None);
        let junk = [7u8; 100];
        let read_junk = |o: u64, b: &mut [u8]| {
            let o = o as usize;
            junk.get(o..o + b.len())
                .map(|s| b.copy_from_slice(s))
                .is_some()
        };
        assert_eq!(find_section(read_junk, b".text"), None);
    }
}
