//! The entry hooks' fast paths, as the compiler built them: the naked hooks (`mcount`,
//! `__fentry__`, the patched sleds' entry, the library-call stubs' entry, the return trampolines)
//! save the vector registers only when the fast path declines, so the fast paths must never touch
//! one, nor call anything that might. A compiler change that starts copying a record through
//! `xmm0`, or stops inlining a helper, would silently corrupt a traced program's floating-point
//! arguments; this test catches it.
//!
//! It builds the agent as shipped (release), disassembles it with `objdump` and reads each fast
//! path's instructions, and each naked hook's way to its fast exit (what every traced call pays:
//! one call, no vector register saved, no stack alignment). Without `objdump` it says so and
//! passes.

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

/// The release agent's functions, disassembled; `None` (said) without `objdump`.
fn release_functions() -> Option<std::collections::HashMap<String, Vec<String>>> {
    if Command::new("objdump").arg("--version").output().is_err() {
        println!("skipped: objdump (binutils) is not installed");
        return None;
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
    Some(functions(&String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn hot_path__disassembled__then_no_vector_register_and_no_call() {
    let Some(functions) = release_functions() else {
        return;
    };
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

/// The naked hooks whose fast path calls one of [`FAST_PATHS`]: the entry hooks and the return
/// trampoline.
const NAKED_HOOKS: [(&str, &str); 5] = [
    ("mcount", "agent::entry::entry_fast"),
    ("_mcount", "agent::entry::entry_fast"),
    ("__fentry__", "agent::entry::entry_fast"),
    ("tracer_patch_entry", "agent::entry::entry_fast"),
    (
        "agent::entry::tracer_return_hook",
        "agent::entry::return_fast",
    ),
];

/// What a traced call costs on the naked side: from a hook's first instruction to its fast exit
/// (the first `ret`, or the trampoline's `jmp r10`), one call (its fast path), no vector register
/// saved and no stack alignment (the fast path needs none; only the slow path, which saves the
/// vector registers, aligns).
#[test]
fn naked_hooks__disassembled__then_fast_exit_after_one_call_without_vectors_or_alignment() {
    let Some(functions) = release_functions() else {
        return;
    };
    for (name, fast) in NAKED_HOOKS {
        let body = functions
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the agent"));
        let code = |line: &String| {
            line.split_once(":\t")
                .map_or("", |(_, c)| c)
                .trim()
                .to_string()
        };
        let exit = body
            .iter()
            .position(|l| {
                let c = code(l);
                c == "ret" || c.split_whitespace().collect::<Vec<_>>() == ["jmp", "r10"]
            })
            .unwrap_or_else(|| panic!("{name} has no fast exit"));
        let fast_path: Vec<String> = body[..=exit].iter().map(code).collect();
        let calls: Vec<&String> = fast_path.iter().filter(|c| c.starts_with("call")).collect();
        assert!(
            calls.len() == 1 && calls[0].contains(&format!("<{fast}")),
            "{name}'s fast path calls {fast} once: {fast_path:#?}"
        );
        assert!(
            !fast_path
                .iter()
                .any(|c| c.contains("xmm") || c.starts_with("and ")),
            "{name}'s fast path saves vector registers or aligns the stack: {fast_path:#?}"
        );
        assert!(
            body[exit..].iter().any(|l| l.contains("xmm0")),
            "{name}'s slow path saves the vector registers"
        );
    }
}

/// The library-call stubs' return: `library_return` calls the function first (`call r11`), and
/// the address after that call, which hooked slots hold, is where the trampoline proper starts
/// (`retstack::CALL_THROUGH_BYTES` past the symbol); it ends with a `ret` (predicted: the
/// caller's own call is next on the return predictor), and the stubs' entry goes to it. Both
/// fast-path entries of the stubs (calling through, jumping) reach their exit after one call.
#[test]
fn library_return__disassembled__then_call_through_then_trampoline_at_call_through_bytes() {
    let Some(functions) = release_functions() else {
        return;
    };
    let body = &functions["agent::entry::library_return"];
    let address = |line: &str| {
        u64::from_str_radix(line.split_once(':').unwrap().0.trim(), 16).expect("an address")
    };
    let code = |line: &str| line.split_once(":\t").map_or("", |(_, c)| c).to_string();
    assert_eq!(
        code(&body[0]).split_whitespace().collect::<Vec<_>>(),
        ["call", "r11"]
    );
    assert_eq!(
        address(&body[1]) - address(&body[0]),
        3,
        "CALL_THROUGH_BYTES"
    );
    assert!(
        body.iter()
            .any(|l| code(l).split_whitespace().collect::<Vec<_>>() == ["push", "r10"]),
        "the trampoline pushes the original return address"
    );
    assert!(body.iter().any(|l| code(l).trim() == "ret"));
    assert!(
        functions["agent::plt::plt_entry"]
            .iter()
            .any(|l| l.contains("<agent::entry::library_return>")),
        "the stubs' entry goes to library_return"
    );
    // Both naked paths of a library call, to their fast exits: one call of their fast path, no
    // vector register, no stack alignment (as the entry hooks', see above).
    let stub_entry: Vec<String> = functions["agent::plt::plt_entry"]
        .iter()
        .map(|l| code(l).trim().to_string())
        .collect();
    let to_jump = stub_entry
        .iter()
        .position(|c| c.starts_with("jmp") && c.contains("library_return"))
        .expect("the call-through exit");
    let returned: Vec<String> = body[1..]
        .iter()
        .map(|l| code(l).trim().to_string())
        .collect();
    let to_ret = returned
        .iter()
        .position(|c| c == "ret")
        .expect("the fast exit");
    // The entry of functions that do not return through it: its fast exit jumps to the function.
    let jump_entry: Vec<String> = functions["agent::plt::plt_entry_jump"]
        .iter()
        .map(|l| code(l).trim().to_string())
        .collect();
    let to_function = jump_entry
        .iter()
        .position(|c| c.split_whitespace().collect::<Vec<_>>() == ["jmp", "r11"])
        .expect("the jumping exit");
    for (name, path, fast) in [
        ("plt_entry", &stub_entry[..=to_jump], "agent::plt::plt_fast"),
        (
            "plt_entry_jump",
            &jump_entry[..=to_function],
            "agent::plt::plt_fast",
        ),
        (
            "library_return",
            &returned[..=to_ret],
            "agent::entry::return_fast",
        ),
    ] {
        let calls: Vec<&String> = path.iter().filter(|c| c.starts_with("call")).collect();
        assert!(
            calls.len() == 1 && calls[0].contains(&format!("<{fast}")),
            "{name}'s fast path calls {fast} once: {path:#?}"
        );
        assert!(
            !path
                .iter()
                .any(|c| c.contains("xmm") || c.starts_with("and ")),
            "{name}'s fast path saves vector registers or aligns the stack: {path:#?}"
        );
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
