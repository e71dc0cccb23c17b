//! Rust programs built with nightly `-Z instrument-mcount` or `-Z patchable-function-entry`:
//! exact counts of a recursion in every thread, demangled names (v0 and legacy mangling), and panics caught with `catch_unwind` through
//! hooked frames. Skipped, saying why, when no nightly toolchain is installed.
#![allow(non_snake_case)]

mod common;

use common::*;

/// `fib <threads>`: each thread computes `fib::calc(15)` (1973 calls); then the main thread
/// catches 10 panics raised 6 hooked `boom` frames deep, and prints `done <sum> <caught>`.
const FIB_RS: &str = r#"
mod fib {
    #[inline(never)]
    pub fn calc(n: u64) -> u64 { if n < 2 { n } else { calc(n - 1) + calc(n - 2) } }
}
#[inline(never)]
fn boom(n: u32) -> u32 { if n == 0 { panic!("boom") } boom(n - 1) + 1 }
fn main() {
    let threads: usize = std::env::args().nth(1).map_or(2, |a| a.parse().unwrap());
    let hs: Vec<_> = (0..threads).map(|_| std::thread::spawn(|| fib::calc(15))).collect();
    let s: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    std::panic::set_hook(Box::new(|_| {}));
    let mut caught = 0;
    for _ in 0..10 { if std::panic::catch_unwind(|| boom(5)).is_err() { caught += 1; } }
    println!("done {s} {caught}");
}
"#;

/// The instrumentation flags.
const MCOUNT: &str = "instrument-mcount";
const PATCHABLE: &str = "patchable-function-entry=5";

/// Builds FIB_RS with nightly, `-Z <instrument>` and `mangling`, or says why not.
fn build_rust(instrument: &str, mangling: &str) -> Option<std::path::PathBuf> {
    let dir = workdir();
    let stem = format!(
        "fib_{}_{mangling}",
        instrument.split('-').next().unwrap_or("")
    );
    let src = dir.join(format!("{stem}.rs"));
    std::fs::write(&src, FIB_RS).unwrap();
    let exe = dir.join(&stem);
    let out = std::process::Command::new("rustc")
        .args([
            "+nightly",
            "--crate-name",
            "fib",
            "-Z",
            instrument,
            "-Z",
            "unstable-options",
        ])
        .arg(format!("-Csymbol-mangling-version={mangling}"))
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(exe),
        Ok(o) => {
            eprintln!(
                "skipped: no nightly Rust toolchain (`rustc +nightly` failed: {})",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            );
            None
        }
        Err(e) => {
            eprintln!("skipped: rustc not found ({e})");
            None
        }
    }
}

fn check(instrument: &str, mangling: &str) {
    let Some(exe) = build_rust(instrument, mangling) else {
        return;
    };
    let (out, tmp) = spawn_in_fresh_dir(&exe, &["4"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done 2440 10");
    let dir = session_dir(tmp.path());
    let (session, traces) = check_session(&dir);
    assert_eq!(session.manifest.accounting.index.dropped.total(), 0);
    // Each computing thread: the same recursion, 1973 calls to one function.
    let mut computing = 0;
    for t in &traces {
        if t.by_name.values().any(|&n| n == 1973) {
            computing += 1;
        }
        assert_eq!(t.calls, t.returns, "thread {}: {t:?}", t.tid);
    }
    assert_eq!(computing, 4, "{traces:?}");
    // Names as a reader shows them, demangled.
    let report = tracer().arg("report").arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    let calls_of = |name: &str| {
        text.lines()
            .find(|l| l.trim_end().ends_with(name))
            .and_then(|l| l.split_whitespace().nth(6))
            .and_then(|n| n.parse::<u64>().ok())
    };
    assert_eq!(calls_of("fib::fib::calc"), Some(4 * 1973), "{text}");
    assert_eq!(calls_of("fib::boom"), Some(60), "{text}");
}

#[test]
fn rust__instrument_mcount_v0_names__then_exact_counts_names_and_caught_panics() {
    check(MCOUNT, "v0");
}

#[test]
fn rust__instrument_mcount_legacy_names__then_exact_counts_names_and_caught_panics() {
    check(MCOUNT, "legacy");
}

#[test]
fn rust__patchable_function_entry_v0_names__then_exact_counts_names_and_caught_panics() {
    check(PATCHABLE, "v0");
}

#[test]
fn rust__patchable_function_entry_legacy_names__then_exact_counts_names_and_caught_panics() {
    check(PATCHABLE, "legacy");
}
