//! `/proc/<pid>/maps`: the file-backed mappings of a process, and the load bias of an ELF object
//! from its mappings.

use super::elf::Load;

/// One line of `/proc/<pid>/maps` that maps a file still present on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `x` in the permissions.
    pub executable: bool,
    /// File offset of `start`.
    pub offset: u64,
    pub inode: u64,
    pub path: String,
}

/// The file-backed mappings in `text` (the contents of a maps file), in address order. Anonymous
/// mappings, pseudo-files (`[vdso]`, `[stack]`, ...) and deleted files are left out.
pub(crate) fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    // `start-end perms offset dev inode   path`, the path being the rest of the line (it may
    // contain spaces).
    let mut rest = line;
    let mut field = || {
        rest = rest.trim_start();
        let end = rest.find(' ').unwrap_or(rest.len());
        let (f, r) = rest.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field();
    let offset = field();
    let _dev = field();
    let inode = field();
    let path = rest.trim_start();
    if !path.starts_with('/') || path.ends_with(" (deleted)") {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let inode: u64 = inode.parse().ok()?;
    if inode == 0 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode,
        path: path.to_owned(),
    })
}

/// The load biases (runtime address − link-time address) of the instances of an object whose
/// segments are `loads`, given the mappings of its file (usually one instance; `dlmopen` can load
/// a file twice).
///
/// A bias is `mapping start − page-aligned p_vaddr` for the executable `PT_LOAD` whose
/// page-aligned `p_offset` equals the mapping's offset. Only executable mappings count: the
/// function addresses live there, and the dynamic linker's `PROT_NONE` gaps, whose offsets are
/// arbitrary, can never match by accident.
pub(super) fn biases(loads: &[Load], mappings: &[&Mapping], page: u64) -> Vec<u64> {
    let mask = !(page - 1);
    let mut out: Vec<u64> = Vec::new();
    for m in mappings.iter().filter(|m| m.executable) {
        for load in loads.iter().filter(|l| l.executable) {
            if load.offset & mask == m.offset {
                let bias = m.start.wrapping_sub(load.vaddr & mask);
                if !out.contains(&bias) {
                    out.push(bias);
                }
            }
        }
    }
    out
}

/// The address range `[base, base + size)` the object's segments occupy at `bias`, page-aligned.
pub(super) fn extent(loads: &[Load], bias: u64, page: u64) -> (u64, u64) {
    let mask = !(page - 1);
    let low = loads.iter().map(|l| l.vaddr & mask).min().unwrap_or(0);
    let high = loads
        .iter()
        .map(|l| l.vaddr.saturating_add(l.memsz).saturating_add(page - 1) & mask)
        .max()
        .unwrap_or(low);
    (bias.wrapping_add(low), high - low)
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c6a00000-55d0c6a01000 r--p 00000000 08:01 1234                       /tmp/my app/prog
55d0c6a01000-55d0c6a02000 r-xp 00001000 08:01 1234                       /tmp/my app/prog
55d0c6a02000-55d0c6a03000 r--p 00002000 08:01 1234                       /tmp/my app/prog
55d0c7e1e000-55d0c7e3f000 rw-p 00000000 00:00 0                          [heap]
7f1e2a000000-7f1e2a028000 r--p 00000000 08:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2a028000-7f1e2a1bd000 r-xp 00028000 08:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2a1bd000-7f1e2a215000 ---p 001bd000 08:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2b000000-7f1e2b001000 rw-s 00000000 00:01 77                         /memfd:tracer-region (deleted)
7f1e2c000000-7f1e2c001000 r-xp 00000000 08:01 55                         /tmp/old.so (deleted)
7ffd5a5f0000-7ffd5a5f2000 r-xp 00000000 00:00 0                          [vdso]
7ffd5a5f3000-7ffd5a5f4000 rw-p 00000000 00:00 0
";

    #[test]
    fn parse__maps_text__then_only_files_present_on_disk_kept() {
        let maps = parse(MAPS);
        let paths: Vec<&str> = maps.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/tmp/my app/prog",
                "/tmp/my app/prog",
                "/tmp/my app/prog",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
            ]
        );
        assert_eq!(maps[1].start, 0x55d0_c6a0_1000);
        assert_eq!(maps[1].offset, 0x1000);
        assert!(maps[1].executable && !maps[0].executable);
        assert_eq!(maps[4].inode, 99);
    }

    #[test]
    fn biases__pie_and_gap_mappings__then_bias_from_the_executable_segment_only() {
        let loads = [
            Load {
                vaddr: 0,
                memsz: 0x628,
                offset: 0,
                executable: false,
            },
            Load {
                vaddr: 0x1000,
                memsz: 0x1d5,
                offset: 0x1000,
                executable: true,
            },
            Load {
                vaddr: 0x2000,
                memsz: 0x100,
                offset: 0x2000,
                executable: false,
            },
        ];
        let maps = parse(MAPS);
        let prog: Vec<&Mapping> = maps.iter().filter(|m| m.path.contains("prog")).collect();
        assert_eq!(biases(&loads, &prog, 4096), [0x55d0_c6a0_0000]);
        assert_eq!(
            extent(&loads, 0x55d0_c6a0_0000, 4096),
            (0x55d0_c6a0_0000, 0x3000)
        );
    }

    #[test]
    fn biases__non_pie_unaligned_segment__then_zero_bias() {
        // A -no-pie executable: segments at their link-time addresses, p_vaddr not page-aligned.
        let loads = [
            Load {
                vaddr: 0x40_0000,
                memsz: 0x500,
                offset: 0,
                executable: false,
            },
            Load {
                vaddr: 0x40_1000,
                memsz: 0x200,
                offset: 0x1000,
                executable: true,
            },
            Load {
                vaddr: 0x40_3e10,
                memsz: 0x230,
                offset: 0x2e10,
                executable: false,
            },
        ];
        let text = "00400000-00401000 r--p 00000000 08:01 7 /p\n\
                    00401000-00402000 r-xp 00001000 08:01 7 /p\n";
        let maps = parse(text);
        let refs: Vec<&Mapping> = maps.iter().collect();
        assert_eq!(biases(&loads, &refs, 4096), [0]);
        assert_eq!(extent(&loads, 0, 4096), (0x40_0000, 0x5000));
    }
}
