//! Overhead of the agent per call+return pair, end to end: a C program built with
//! `-finstrument-functions` making 10 M calls (1 and 4 threads), run untraced, with glibc's no-op
//! hooks, and under the agent (index lane only; with detail records; with the fenced handshake);
//! the same program built with `-pg`, `-pg -mfentry` and `-fpatchable-function-entry=5`, without
//! and with the agent, while this process drains the rings like the tracer does. The "nested
//! caller" rows call a traced function that calls the leaf twice, so two of every three pairs are
//! made from inside a traced call (an entry-only hook's shadow stack is two deep there). The
//! "library call" rows have the leaf in a shared library, called through the program's PLT,
//! and traced through the agent's GOT stubs. The program measures its own threads'
//! CPU time around the loop, so the drain's CPU is not counted (it is reported separately by the
//! wall time).
//!
//! `cargo bench -p benches --bench agent_overhead` (full run); `cargo test --benches` runs a
//! 100 k-call pass.
//!
//! `cargo bench -p benches --bench agent_overhead -- instructions` counts instructions instead,
//! steadier than times on a shared machine: each program under `valgrind --tool=callgrind`, one
//! thread, run with 120 k and 240 k calls; the difference of the whole process's counts over
//! 120 k is the instructions per call+return pair (start-up and exit cancel out). With
//! `AGENT_OVERHEAD_PROFILES=<dir>`, the 200 k-call profiles are kept there, one per program and
//! mode, for `callgrind_annotate --inclusive=yes <file>`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use registry::{Handshake, LaneConfig, RegionConfig, SharedRegion};

fn cc(dir: &Path, name: &str, instrument: bool) -> PathBuf {
    benches::build_c(dir, name, benches::OVERHEAD_C, instrument)
}

/// [`benches::OVERHEAD_C`] compiled with `flags`, linked without them.
fn compiled_with(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let object = dir.join(format!("{name}.o"));
    let mut flags = flags.to_vec();
    flags.extend(["-c", "-o", object.to_str().unwrap()]);
    // Compiles into `object` (the `-o` given last wins).
    benches::build_c_with(dir, &format!("{name}_compile"), benches::OVERHEAD_C, &flags);
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-pthread", "-o"])
        .arg(&out)
        .arg(&object)
        .status()
        .unwrap();
    assert!(status.success(), "linking {name}");
    out
}

/// libagent.so, next to this benchmark's deps (built as a dependency of the benches crate).
fn agent_so() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for p in [
        deps.join("libagent.so"),
        deps.parent().unwrap().join("libagent.so"),
    ] {
        if p.exists() {
            return p;
        }
    }
    panic!("libagent.so not found next to {}", deps.display());
}

/// One row: its name, the program, the agent's region (none: untraced), and whether the loop
/// calls the nested caller (see [`benches::OVERHEAD_C`]).
type Row<'a> = (&'a str, &'a Path, Option<&'a RegionConfig>, bool);

/// (CPU ns per pair, wall ns per pair).
fn measure(program: &Path, threads: u32, calls: u64, row: Row) -> (f64, f64) {
    let (_, _, region, nested) = row;
    let (out, _) = run(
        Command::new(program),
        program,
        threads,
        calls,
        region,
        nested,
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Instructions the whole process executes with `calls` pairs on one thread, under callgrind.
/// The profile goes to `profile`, or nowhere.
fn instructions(program: &Path, calls: u64, row: Row, profile: Option<PathBuf>) -> u64 {
    let (_, _, region, nested) = row;
    let mut cmd = Command::new("valgrind");
    let profile = profile.unwrap_or_else(|| PathBuf::from("/dev/null"));
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", profile.display()))
        .arg(program);
    let (out, _) = run(cmd, program, 1, calls, region, nested);
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| {
            l.split_once("Collected :")
                .map(|(_, n)| n.trim().parse().ok())
        })
        .flatten()
        .unwrap_or_else(|| panic!("no instruction count from callgrind:\n{text}"))
}

/// Runs `cmd` (the workload `program`, or a tool in front of it) with the workload's arguments
/// (`nested`: its loop calls the nested caller), preloading the agent and draining its rings when
/// `region` is given. Returns its output and the records drained.
fn run(
    mut cmd: Command,
    program: &Path,
    threads: u32,
    calls: u64,
    region: Option<&RegionConfig>,
    nested: bool,
) -> (std::process::Output, Option<u64>) {
    // A `-pg` program writes gmon.out into its working directory.
    cmd.current_dir(program.parent().unwrap());
    cmd.args([threads.to_string(), calls.to_string()])
        .args(nested.then_some("nested"))
        .stdout(Stdio::piped())
        .env_remove("LD_PRELOAD");
    let region = region.map(|c| SharedRegion::create(c).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let mut drain = None;
    if let Some(region) = &region {
        let fd = region.inheritable_fd().unwrap();
        cmd.env("LD_PRELOAD", agent_so())
            .env(registry::ENV_REGION_FD, fd.to_string());
        let memory = SharedRegion::open_fd(fd).unwrap();
        let stop = stop.clone();
        drain = Some(std::thread::spawn(move || {
            let reg = memory.registry().unwrap();
            let mut consumers = std::collections::HashMap::new();
            let mut records = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                for s in reg.slots() {
                    let (i, d) = consumers.entry((s.index, s.serial)).or_insert_with(|| {
                        let lanes = reg.lanes(s.index).unwrap();
                        // SAFETY: this thread is the only consumer.
                        unsafe { (lanes.index.consumer(), lanes.detail.consumer()) }
                    });
                    let stats = i.drain(true, |c| -> Result<(), ()> {
                        records += c.bytes.len() as u64 / 32;
                        Ok(())
                    });
                    idle &= stats.map(|s| s.bytes == 0).unwrap_or(true);
                    let _ = d.drain(false, |_| -> Result<(), ()> { Ok(()) });
                }
                if idle {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            records
        }));
    }
    let out = cmd.output().unwrap();
    stop.store(true, Ordering::Relaxed);
    let records = drain.map(|d| d.join().unwrap());
    assert!(
        out.status.success(),
        "{} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(records) = records {
        // Not every record is drained before the stop (no final drain here); most are.
        assert!(records > 0);
    }
    (out, records)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let calls: u64 = if full { 10_000_000 } else { 100_000 };
    let thread_counts: &[u32] = if full { &[1, 4] } else { &[1] };
    let dir = tempfile::tempdir().unwrap();
    let plain = cc(dir.path(), "plain", false);
    let instrumented = cc(dir.path(), "instrumented", true);
    // Entry-only hooks: the return goes through the agent's return trampoline. (`-pg` calls the
    // hook from every function, but only `leaf` is called in the loop.)
    let pg = benches::build_c_with(dir.path(), "pg", benches::OVERHEAD_C, &["-pg"]);
    let fentry = benches::build_c_with(
        dir.path(),
        "fentry",
        benches::OVERHEAD_C,
        &["-pg", "-mfentry"],
    );
    // NOP sleds: untouched when untraced, calls of the agent's entry hook under it.
    let patchable = benches::build_c_with(
        dir.path(),
        "patchable",
        benches::OVERHEAD_C,
        &["-fpatchable-function-entry=5"],
    );
    // The leaf in a shared library, called through the program's PLT: a library call, traced
    // through the agent's GOT stubs (`--library-calls main`).
    let leaf_line = "__attribute__((noinline)) int leaf(int x) { __asm__ volatile(\"\" ::: \"memory\"); return x + 1; }";
    assert!(
        benches::OVERHEAD_C.contains(leaf_line),
        "the workload's leaf moved"
    );
    benches::build_c_with(dir.path(), "libleaf.so", leaf_line, &["-shared", "-fPIC"]);
    let libcall = benches::build_c_with(
        dir.path(),
        "libcall",
        &benches::OVERHEAD_C.replace(leaf_line, "int leaf(int x);"),
        &[
            &format!("-L{}", dir.path().display()),
            "-lleaf",
            &format!("-Wl,-rpath,{}", dir.path().display()),
        ],
    );
    let lanes = LaneConfig {
        rings: 4,
        ring_capacity: 64 << 10,
    };
    let base = RegionConfig {
        capacity: 64,
        index: lanes,
        detail: lanes,
        detail_enabled: false,
        ..RegionConfig::default()
    };
    let fenced = RegionConfig {
        handshake: Handshake::Fence,
        ..base.clone()
    };
    let detail = RegionConfig {
        detail_enabled: true,
        ..base.clone()
    };
    let library_calls = RegionConfig {
        library_calls: registry::LibraryCalls::Main,
        ..base.clone()
    };
    let runs: [Row; 17] = [
        ("untraced (no -finstrument-functions)", &plain, None, false),
        ("glibc no-op hooks", &instrumented, None, false),
        ("agent, index lane", &instrumented, Some(&base), false),
        (
            "agent, index lane, fenced handshake",
            &instrumented,
            Some(&fenced),
            false,
        ),
        (
            "agent, index + detail (128 stack bytes)",
            &instrumented,
            Some(&detail),
            false,
        ),
        (
            "agent, index lane, nested caller",
            &instrumented,
            Some(&base),
            true,
        ),
        ("-pg, glibc's mcount", &pg, None, false),
        (
            "-pg, agent (mcount + return trampoline)",
            &pg,
            Some(&base),
            false,
        ),
        ("-pg, agent, nested caller", &pg, Some(&base), true),
        ("-pg -mfentry, glibc's __fentry__", &fentry, None, false),
        (
            "-pg -mfentry, agent (__fentry__ + trampoline)",
            &fentry,
            Some(&base),
            false,
        ),
        (
            "-pg -mfentry, agent, nested caller",
            &fentry,
            Some(&base),
            true,
        ),
        (
            "patchable entries, untraced (NOPs)",
            &patchable,
            None,
            false,
        ),
        (
            "patchable entries, agent (patched + trampoline)",
            &patchable,
            Some(&base),
            false,
        ),
        (
            "patchable entries, agent, nested caller",
            &patchable,
            Some(&base),
            true,
        ),
        ("library call, untraced", &libcall, None, false),
        (
            "library call, agent (GOT stub + call-through)",
            &libcall,
            Some(&library_calls),
            false,
        ),
    ];
    if std::env::args().any(|a| a == "instructions") {
        // `-pg` compiled but linked without it: gmon's profiling timer (SIGPROF) kills a program
        // under valgrind. The hooks are called all the same.
        let pg = compiled_with(dir.path(), "pg_nogmon", &["-pg"]);
        let fentry = compiled_with(dir.path(), "fentry_nogmon", &["-pg", "-mfentry"]);
        let runs = runs.map(|(name, program, region, nested)| match name {
            n if n.starts_with("-pg -mfentry") => (name, fentry.as_path(), region, nested),
            n if n.starts_with("-pg") => (name, pg.as_path(), region, nested),
            _ => (name, program, region, nested),
        });
        // 120 k more pairs than the first run: the difference over them is per pair (both
        // multiples of 3, which the nested caller makes its pairs in).
        let (n, more) = (120_000u64, 240_000u64);
        println!(
            "agent_overhead: instructions per call+return pair, whole process, 1 thread \
             (callgrind, {more} minus {n} calls, over {})",
            more - n
        );
        let profiles = std::env::var_os("AGENT_OVERHEAD_PROFILES").map(PathBuf::from);
        for (i, row) in runs.into_iter().enumerate() {
            let (name, program, _, _) = row;
            if name.starts_with("patchable entries, agent") {
                // Under valgrind no free address range lies near the code for the sleds' calls
                // to land in: the agent leaves them unpatched.
                println!("    {name:<48} {:>8}", "-");
                continue;
            }
            let profile = profiles.as_ref().map(|d| {
                let program = program.file_name().unwrap().to_string_lossy();
                d.join(format!("callgrind.{i:02}.{program}"))
            });
            let a = instructions(program, n, row, None);
            let b = instructions(program, more, row, profile);
            println!(
                "    {name:<48} {:8.1}",
                (b as f64 - a as f64) / (more - n) as f64
            );
        }
        return;
    }
    println!(
        "agent_overhead: {calls} calls per thread, ns per call+return pair (thread CPU | wall)"
    );
    for &threads in thread_counts {
        let noop = measure(&instrumented, threads, calls, runs[1]).0;
        println!("  {threads} thread(s):");
        for row in runs {
            let (name, program, _, _) = row;
            let (cpu, wall) = measure(program, threads, calls, row);
            println!(
                "    {name:<48} {cpu:7.2} | {wall:7.2}   ({:.1}x no-op hooks)",
                cpu / noop
            );
        }
    }
}
