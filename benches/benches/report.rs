//! Session readers over a large session: `cargo bench -p benches --bench report`.
//!
//! Builds one session of 10 M index events once per event format (4 threads × 2.5 M, call trees up
//! to 12 deep over 256 named functions, in a temporary directory), then times, each over the whole
//! session, for `<format>` = `atc` (the default) and `atf2`:
//! - `read_10M/<format>/report`: `tracer report` (sort by total), output discarded;
//! - `read_10M/<format>/replay`: `tracer replay`, output discarded;
//! - `read_10M/<format>/export_chrome`: `tracer export --format chrome`, output discarded.
//!
//! `cargo test --benches` runs each once on 100 k events. `READ_BENCH_EVENTS=<n>` sets the size;
//! `READ_BENCH_KEEP=<dir>` writes the session under `<dir>` and keeps it (to run the binary on it).
//!
//! The `tracer` binary has no library target, so its reader modules are compiled in here from
//! their source files.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

#[allow(dead_code, unused_imports)]
#[path = "../../cli/src/args.rs"]
mod args;
#[allow(dead_code, unused_imports)]
#[path = "../../cli/src/error.rs"]
mod error;
#[allow(dead_code, unused_imports)]
#[path = "../../cli/src/read/mod.rs"]
mod read;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atf::{
    ClockType, EventFormat, EventKind, IndexEvent, Manifest, SessionLayout, Symbol, ThreadEntry,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const THREADS: u32 = 4;
const FUNCTIONS: u64 = 256;
const MAX_DEPTH: u32 = 12;
const BASE_ADDRESS: u64 = 0x40_0000;

/// Writes a session of about `events` events under `out` in `format`; returns its pid directory.
fn build_session(out: &Path, events: u64, format: EventFormat) -> PathBuf {
    let layout = SessionLayout::create(out, 4242)
        .unwrap()
        .with_format(format);
    let mut m = Manifest::new(ClockType::Boottime);
    m.target_pid = 4242;
    m.executable = "/usr/bin/bench_app".into();
    m.symbols = (0..FUNCTIONS)
        .map(|i| Symbol {
            function_id: format!("{:#018x}", BASE_ADDRESS + i * 0x40),
            module_id: 1,
            symbol_index: i as u32,
            name: format!("namespace::function_{i}"),
            size: 0x40,
        })
        .collect();
    let per_thread = (events / u64::from(THREADS)) & !1;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        // xorshift64*: deterministic and cheap.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for t in 0..THREADS {
        let tid = 1000 + t;
        let mut w = layout.create_index(tid, ClockType::Boottime).unwrap();
        let mut stack: Vec<u64> = Vec::new();
        let mut ts = 1_000_000u64;
        let mut batch = Vec::with_capacity(64 * 1024);
        let mut written = 0u64;
        while written < per_thread {
            let r = next();
            ts += 10 + (r & 63);
            let remaining = per_thread - written;
            // Room for this call and the returns of every open frame.
            let can_call = (stack.len() as u64) + 1 < remaining;
            let call =
                can_call && (stack.is_empty() || (stack.len() < MAX_DEPTH as usize && r & 1 == 0));
            // The agent's depths: a call at depth d (the frames open below it) returns at d.
            let (kind, function, depth) = if call {
                let f = BASE_ADDRESS + ((r >> 32) % FUNCTIONS) * 0x40;
                stack.push(f);
                (EventKind::Call, f, stack.len() - 1)
            } else {
                let f = stack.pop().unwrap();
                (EventKind::Return, f, stack.len())
            };
            batch.extend_from_slice(
                &IndexEvent {
                    timestamp_ns: ts,
                    function_id: function,
                    thread_id: tid,
                    kind,
                    call_depth: depth as u32,
                    detail_seq: atf::NO_DETAIL,
                }
                .encode(),
            );
            written += 1;
            if batch.len() >= 64 * 1024 {
                w.append(&batch).unwrap();
                batch.clear();
            }
        }
        w.append(&batch).unwrap();
        w.finish().unwrap();
        let mut entry = ThreadEntry {
            id: tid,
            ..ThreadEntry::default()
        };
        entry.index.attempted = written;
        entry.index.persisted = written;
        m.threads.push(entry);
    }
    m.accounting = m.thread_totals();
    m.finished = true;
    layout.write_manifest(&mut m).unwrap();
    layout.pid_dir().to_path_buf()
}

fn session_arg(dir: &Path) -> args::SessionArg {
    args::SessionArg {
        session: dir.to_path_buf(),
    }
}

fn readers(c: &mut Criterion) {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let events: u64 = std::env::var("READ_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench_mode { 10_000_000 } else { 100_000 });
    let temp = tempfile::tempdir().unwrap();
    let out = std::env::var_os("READ_BENCH_KEEP")
        .map(PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    for format in EventFormat::ALL {
        let dir = build_session(&out.join(format.name()), events, format);
        let label = if events % 1_000_000 == 0 {
            format!("read_{}M/{}", events / 1_000_000, format.name())
        } else {
            format!("read_{}k/{}", events / 1_000, format.name())
        };
        read_group(c, &label, &dir, events);
    }
}

fn read_group(c: &mut Criterion, label: &str, dir: &Path, events: u64) {
    let mut group = c.benchmark_group(label);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(events));
    group.bench_function("report", |b| {
        let a = args::ReportArgs {
            session: session_arg(dir),
            sort: args::SortKey::Total,
            tids: vec![],
            names: Default::default(),
        };
        b.iter(|| read::report(&a, &mut io::sink()).unwrap())
    });
    group.bench_function("replay", |b| {
        let a = args::ReplayArgs {
            session: session_arg(dir),
            tids: vec![],
            filter: None,
            depth: None,
            no_detail: false,
            names: Default::default(),
        };
        b.iter(|| read::replay(&a, &mut io::sink()).unwrap())
    });
    group.bench_function("export_chrome", |b| {
        let a = args::ExportArgs {
            session: session_arg(dir),
            format: args::ExportFormat::Chrome,
            output: None,
            names: Default::default(),
        };
        b.iter(|| read::export(&a, &mut io::sink()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, readers);
criterion_main!(benches);
