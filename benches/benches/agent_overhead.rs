//! Overhead of the agent per call+return pair, end to end: a C program built with
//! `-finstrument-functions` making 10 M calls (1 and 4 threads), run untraced, with glibc's no-op
//! hooks, and under the agent (index lane only; with detail records; with the fenced handshake);
//! the same program built with `-pg`, `-pg -mfentry` and `-fpatchable-function-entry=5`, without
//! and with the agent,
//! while this process drains the rings like the tracer does. The program measures its own threads'
//! CPU time around the loop, so the drain's CPU is not counted (it is reported separately by the
//! wall time).
//!
//! `cargo bench -p benches --bench agent_overhead` (full run); `cargo test --benches` runs a
//! 100 k-call pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use registry::{Handshake, LaneConfig, RegionConfig, SharedRegion};

fn cc(dir: &Path, name: &str, instrument: bool) -> PathBuf {
    benches::build_c(dir, name, benches::OVERHEAD_C, instrument)
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

/// (CPU ns per pair, wall ns per pair).
fn measure(program: &Path, threads: u32, calls: u64, region: Option<&RegionConfig>) -> (f64, f64) {
    let mut cmd = Command::new(program);
    // A `-pg` program writes gmon.out into its working directory.
    cmd.current_dir(program.parent().unwrap());
    cmd.args([threads.to_string(), calls.to_string()])
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
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().unwrap());
    let (cpu, wall) = (it.next().unwrap(), it.next().unwrap());
    if let Some(records) = records {
        // Not every record is drained before the stop (no final drain here); most are.
        assert!(records > 0);
    }
    (cpu, wall)
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
    println!(
        "agent_overhead: {calls} calls per thread, ns per call+return pair (thread CPU | wall)"
    );
    for &threads in thread_counts {
        let runs: [(&str, &Path, Option<&RegionConfig>); 11] = [
            ("untraced (no -finstrument-functions)", &plain, None),
            ("glibc no-op hooks", &instrumented, None),
            ("agent, index lane", &instrumented, Some(&base)),
            (
                "agent, index lane, fenced handshake",
                &instrumented,
                Some(&fenced),
            ),
            (
                "agent, index + detail (128 stack bytes)",
                &instrumented,
                Some(&detail),
            ),
            ("-pg, glibc's mcount", &pg, None),
            ("-pg, agent (mcount + return trampoline)", &pg, Some(&base)),
            ("-pg -mfentry, glibc's __fentry__", &fentry, None),
            (
                "-pg -mfentry, agent (__fentry__ + trampoline)",
                &fentry,
                Some(&base),
            ),
            ("patchable entries, untraced (NOPs)", &patchable, None),
            (
                "patchable entries, agent (patched + trampoline)",
                &patchable,
                Some(&base),
            ),
        ];
        let noop = measure(&instrumented, threads, calls, None).0;
        println!("  {threads} thread(s):");
        for (name, program, region) in runs {
            let (cpu, wall) = measure(program, threads, calls, region);
            println!(
                "    {name:<42} {cpu:7.2} | {wall:7.2}   ({:.1}x no-op hooks)",
                cpu / noop
            );
        }
    }
}
