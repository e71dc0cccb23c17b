//! The entry hooks' fast paths, as the compiler built them: the naked hooks (`mcount`,
//! `__fentry__`, the patched sleds' entry, the library-call stubs' entry, the return trampoline)
//! save the vector registers only when the fast path declines, so the fast paths must never touch
//! one, nor call anything that might. A compiler change that starts copying a record through
//! `xmm0`, or stops inlining a helper, would silently corrupt a traced program's floating-point
//! arguments; this test catches it.
//!
//! It builds the agent as shipped (release), disassembles it with `objdump` and reads each fast
//! path's instructions. Without `objdump` it says so and passes.

#![allow(non_snake_case)]

use std::path::PathBuf;
use std::process::Command;

/// The fast paths (demangled names, without the hash).
const FAST_PATHS: [&str; 3] = [
    "agent::entry::entry_fast",
    "agent::entry::return_fast",
    "agent::plt::plt_fast",
];

/// Builds the release agent into this test's own target directory (the outer build's is locked).
fn release_agent() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hot-path-agent");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "--lib", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the release agent failed");
    target.join("release").join("libagent.so")
}

/// Each function's instructions (one line each, `objdump -d -C -M intel` text), by name.
fn functions(listing: &str) -> std::collections::HashMap<String, Vec<String>> {
    let mut out = std::collections::HashMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in listing.lines() {
        if let Some(name) = line
            .split_once(" <")
            .filter(|(addr, rest)| {
                rest.ends_with(">:") && addr.chars().all(|c| c.is_ascii_hexdigit())
            })
            .map(|(_, rest)| rest.trim_end_matches(">:").to_string())
        {
            if let Some((n, body)) = current.take() {
                out.insert(n, body);
            }
            current = Some((name, Vec::new()));
        } else if let Some((_, body)) = current.as_mut() {
            if line.contains(":\t") {
                body.push(line.to_string());
            }
        }
    }
    if let Some((n, body)) = current {
        out.insert(n, body);
    }
    out
}

#[test]
fn hot_path__disassembled__then_no_vector_register_and_no_call() {
    if Command::new("objdump").arg("--version").output().is_err() {
        println!("skipped: objdump (binutils) is not installed");
        return;
    }
    let agent = release_agent();
    let out = Command::new("objdump")
        .args(["-d", "-C", "--no-show-raw-insn", "-M", "intel"])
        .arg(&agent)
        .output()
        .expect("objdump runs");
    assert!(
        out.status.success(),
        "objdump failed on {}",
        agent.display()
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    let functions = functions(&listing);
    // The control: a slow-path function that copies a buffer is seen using vector registers.
    let control = &functions["agent::hook::write_detail"];
    assert!(
        control.iter().any(|l| l.contains("xmm")),
        "the listing is read wrong: write_detail shows no vector register"
    );
    for name in FAST_PATHS {
        let body = functions
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the agent (renamed, or inlined away?)"));
        assert!(body.len() > 20, "{name} is too short to be the fast path");
        for line in body {
            let code = line.split_once(":\t").map_or(line.as_str(), |(_, c)| c);
            assert!(
                !["xmm", "ymm", "zmm"].iter().any(|r| code.contains(r)),
                "{name} uses a vector register, which its naked hook does not save:\n{line}"
            );
            let mnemonic = code.split_whitespace().next().unwrap_or("");
            assert!(
                mnemonic != "call",
                "{name} calls out, and the callee may use the vector registers:\n{line}"
            );
            // A jump leaves the function only as a tail call.
            if mnemonic.starts_with('j') {
                if let Some((_, target)) = code.split_once('<') {
                    assert!(
                        target.starts_with(name),
                        "{name} jumps into another function:\n{line}"
                    );
                }
            }
        }
    }
}

#[test]
fn functions__objdump_listing__then_bodies_by_name() {
    let listing = "\n0000000000024410 <agent::entry::entry_fast>:\n   24410:\tpush   rbp\n   \
                   24411:\tret\n\n0000000000024420 <other>:\n   24420:\tret\n";
    let f = functions(listing);
    assert_eq!(f["agent::entry::entry_fast"].len(), 2);
    assert_eq!(f["other"].len(), 1);
}
