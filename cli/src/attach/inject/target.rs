//! Before anything is stopped: where the functions the injection needs are in the target. libc's
//! hook stubs (the breakpoints), `dlopen` and `dlsym` come from the file libc is mapped from (the
//! target's own view of it), the agent's functions from the agent file, each read with the
//! tracer's ELF reader (`crate::symbols`: headers and `.dynsym` only) and placed at the load
//! addresses the maps parser finds.

use std::path::{Path, PathBuf};

use crate::symbols::{self, SymbolError};

use super::{InjectError, Result};

/// The addresses the injection uses in the target.
pub(super) struct TargetSymbols {
    /// Where to put breakpoints: glibc's hook stubs, and the agent's hooks if it is loaded.
    pub(super) hooks: Vec<u64>,
    pub(super) dlopen: u64,
    pub(super) dlsym: u64,
    /// `tracer_agent_attach` in the agent file: its address relative to the load base, and its
    /// first bytes (to check an address computed in the target before calling it).
    pub(super) attach_offset: u64,
    pub(super) attach_code: Vec<u8>,
    /// `tracer_agent_attach`'s address if this agent file is loaded already (an earlier attach).
    pub(super) attach_loaded: Option<u64>,
}

/// The entry-only hooks (`-pg`, `-pg -mfentry`, patched sleds) a thread may be stopped at.
const ENTRY_ONLY_HOOKS: [&str; 3] = ["mcount", "__fentry__", "tracer_patch_entry"];

/// Bytes of a function's code compared before calling it at a computed address.
pub(super) const CODE_CHECK: u64 = 16;

/// Where libc is mapped in `pid`, the addresses of the functions the injection needs, and the
/// agent's hooks and attach function if `agent` is mapped already.
pub(super) fn target_symbols(pid: i32, agent: &Path) -> Result<TargetSymbols> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let (libc_base, libc_path) = module(&maps, |name, _, _| {
        name.starts_with("libc.so") || name.starts_with("libc-")
    })
    .ok_or(InjectError::NoLibc)?;
    // The target's own view of the file (it may live in another mount namespace).
    let in_root = Path::new(&format!("/proc/{pid}/root"))
        .join(libc_path.strip_prefix("/").unwrap_or(&libc_path));
    let libc_file = if in_root.exists() {
        in_root
    } else {
        libc_path.clone()
    };
    let mut wanted = vec!["__cyg_profile_func_enter", "dlopen", "dlsym"];
    wanted.extend(ENTRY_ONLY_HOOKS);
    let libc = definitions(&libc_file, &wanted)?;
    let required = |i: usize| {
        libc[i]
            .as_ref()
            .map(|d| libc_base + d.address)
            .ok_or_else(|| InjectError::LibcLacks {
                library: libc_path.clone(),
                name: wanted[i],
            })
    };
    let mut hooks = vec![required(0)?];
    // The entry hooks of `-pg` and `-pg -mfentry` builds are safe points too (glibc defines
    // them; another libc may not).
    hooks.extend(libc[3..].iter().flatten().map(|d| libc_base + d.address));
    let (dlopen, dlsym) = (required(1)?, required(2)?);

    let mut wanted = vec![
        "tracer_agent_attach",
        "__cyg_profile_func_enter",
        "__cyg_profile_func_exit",
    ];
    wanted.extend(ENTRY_ONLY_HOOKS);
    let ours = definitions(agent, &wanted)?;
    let [Some(attach), Some(enter), Some(exit)] = [&ours[0], &ours[1], &ours[2]] else {
        return Err(InjectError::AgentIncomplete(agent.to_path_buf()));
    };
    // Loaded already if the same file (same inode) is mapped: an earlier attach loaded it.
    let agent_path = std::fs::canonicalize(agent).unwrap_or_else(|_| agent.to_path_buf());
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(agent)?);
    let mut attach_loaded = None;
    if let Some((base, _)) = module(&maps, |_, path, ino| {
        Path::new(path) == agent_path && ino == inode
    }) {
        hooks.extend([base + enter.address, base + exit.address]);
        hooks.extend(ours[3..].iter().flatten().map(|d| base + d.address));
        attach_loaded = Some(base + attach.address);
    }
    Ok(TargetSymbols {
        hooks,
        dlopen,
        dlsym,
        attach_offset: attach.address,
        attach_code: attach.code.clone(),
        attach_loaded,
    })
}

/// The run-time addresses of the executable's PLT entries (`.plt.sec` with IBT, else `.plt` but
/// its first, resolver entry); none if it cannot be read or has no PLT (`-fno-plt`).
pub(super) fn plt_entries(pid: i32, maps: &str) -> Vec<u64> {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return Vec::new();
    };
    let Some((start, _)) = module(maps, |_, path, _| Path::new(path) == exe) else {
        return Vec::new();
    };
    let Ok((lowest, entries)) = symbols::plt_entries(Path::new(&format!("/proc/{pid}/exe"))) else {
        return Vec::new();
    };
    // The first mapping (file offset 0) holds the lowest segment.
    let bias = start.wrapping_sub(lowest & !0xfff);
    entries.iter().map(|a| a.wrapping_add(bias)).collect()
}

/// What `path` defines of `names`, as the tracer's ELF reader reads it.
fn definitions(path: &Path, names: &[&str]) -> Result<Vec<Option<symbols::Definition>>> {
    symbols::dynamic_definitions(path, names, CODE_CHECK).map_err(|e| match e {
        SymbolError::Open { source, .. } => InjectError::from(source),
        other => InjectError::Symbols(other),
    })
}

/// The load address and path of the first module in `maps` that `wanted(file name, path, inode)`
/// picks. The maps parser of `symbols` reads the path as the rest of the line, so a path with
/// spaces is kept whole.
fn module(maps: &str, wanted: impl Fn(&str, &str, u64) -> bool) -> Option<(u64, PathBuf)> {
    symbols::maps::parse(maps).into_iter().find_map(|m| {
        let name = Path::new(&m.path).file_name()?.to_str()?;
        (m.offset == 0 && wanted(name, &m.path, m.inode)).then(|| (m.start, PathBuf::from(&m.path)))
    })
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn module__library_path_with_spaces__then_whole_path_found() {
        let maps =
            "7f0000000000-7f0000001000 r-xp 00000000 08:01 1234   /opt/my libs/libagent.so\n";
        let found = module(maps, |name, _, _| name == "libagent.so");
        assert_eq!(
            found,
            Some((0x7f00_0000_0000, PathBuf::from("/opt/my libs/libagent.so")))
        );
    }

    #[test]
    fn target_symbols__this_process__then_libc_functions_and_their_code_found() {
        // This test binary is not traced: the agent file is libc itself here, which defines
        // none of the agent's functions, so the lookup stops there, after finding libc's.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let (_, libc) = module(&maps, |name, _, _| name.starts_with("libc.so")).unwrap();
        let found = definitions(&libc, &["dlopen", "dlsym", "no_such_function"]).unwrap();
        let dlopen = found[0].as_ref().expect("libc defines dlopen");
        assert_eq!(dlopen.code.len() as u64, CODE_CHECK);
        assert!(found[1].is_some());
        assert!(found[2].is_none());
        let refused = target_symbols(std::process::id() as i32, &libc);
        assert!(matches!(refused, Err(InjectError::AgentIncomplete(_))));
    }
}
