//! Embeds the agent library in the `tracer` binary, so that the binary works alone wherever it
//! is copied or installed (`cargo install --path cli`).
//!
//! The agent is a `cdylib`, which Cargo cannot hand to another crate as an artifact on stable, so
//! this script builds it with a nested `cargo build` of the `agent` package into its own target
//! directory under `OUT_DIR` (the outer build's target directory stays locked by the outer
//! Cargo), with the same profile, then copies `libagent.so` to `OUT_DIR` for `include_bytes!` and
//! passes a hash of its bytes as `TRACER_AGENT_HASH`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("cli sits in the workspace")
        .to_path_buf();
    let out = PathBuf::from(env("OUT_DIR"));
    let release = env("PROFILE") == "release";
    let target_dir = out.join("agent-target");

    for dir in [
        "agent",
        "registry",
        "ring",
        "event",
        "retstack",
        "patchsite",
        "quiesce",
        "modelsync",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    println!("cargo:rerun-if-changed=build.rs");

    let mut cargo = Command::new(env("CARGO"));
    cargo
        .arg("build")
        .arg("--lib")
        .arg("--manifest-path")
        .arg(root.join("agent").join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's target settings must not redirect or re-target the nested one, and
        // under `cargo clippy` the library is built, not linted a second time.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        // Anything on its standard output would be read as this script's instructions.
        .stdout(std::process::Stdio::null());
    if release {
        cargo.arg("--release");
    }
    let target = env("TARGET");
    let cross = target != env("HOST");
    if cross {
        cargo.arg("--target").arg(&target);
    }
    let status = cargo
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the agent: {e}"));
    assert!(status.success(), "building the agent library failed");

    let mut built = target_dir;
    if cross {
        built.push(&target);
    }
    built.push(if release { "release" } else { "debug" });
    built.push("libagent.so");
    let bytes = std::fs::read(&built)
        .unwrap_or_else(|e| panic!("{}: the agent library is missing: {e}", built.display()));
    let embedded = out.join("libagent.so");
    write_if_changed(&embedded, &bytes);
    println!("cargo:rustc-env=TRACER_AGENT_HASH={:016x}", fnv1a64(&bytes));
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

fn write_if_changed(path: &Path, bytes: &[u8]) {
    if std::fs::read(path).ok().as_deref() != Some(bytes) {
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// FNV-1a, 64 bits: names the agent's version in the cache (the content is compared in full).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
