//! Deterministic sessions for the readers' tests, written with the `atf` writers in a temp dir.

use std::io::{self, Write};

use atf::{
    ClockInfo, ClockType, Counts, EventKind, IndexEvent, Manifest, Module, SessionLayout, Symbol,
    TargetFate, ThreadEntry, NO_DETAIL,
};

use crate::args::SessionArg;

pub(crate) const MAIN: u64 = 0x40_1000;
pub(crate) const FOO: u64 = 0x40_1100;
pub(crate) const BAR: u64 = 0x40_1200;
pub(crate) const FIB: u64 = 0x40_1300;
pub(crate) const WORK: u64 = 0x40_1400;
pub(crate) const WAIT: u64 = 0x40_1500;
/// An address inside `libx.so` with no symbol.
pub(crate) const IN_LIBX: u64 = 0x7f00_0000_0040;
/// An address nothing names.
pub(crate) const NOWHERE: u64 = 0x1234;

/// `(kind, function, timestamp)` of one event.
pub(crate) type Ev = (EventKind, u64, u64);

/// `main` [t, t+10 us] calling `foo` [t+1, t+3 us] and `bar` [t+4, t+9 us].
pub(crate) fn simple_tree(t: u64) -> Vec<Ev> {
    use EventKind::{Call, Return};
    vec![
        (Call, MAIN, t),
        (Call, FOO, t + 1_000),
        (Return, FOO, t + 3_000),
        (Call, BAR, t + 4_000),
        (Return, BAR, t + 9_000),
        (Return, MAIN, t + 10_000),
    ]
}

/// A stream joined mid-flight and cut mid-call: `wait` returns first (its call precedes the
/// recording), `bar` runs, then `work` calls `foo` and never returns.
pub(crate) fn joined_stream() -> Vec<Ev> {
    use EventKind::{Call, Return};
    vec![
        (Return, WAIT, 100),
        (Call, BAR, 200),
        (Return, BAR, 300),
        (Call, WORK, 500),
        (Call, FOO, 600),
        (Return, FOO, 900),
    ]
}

/// A session on disk; the directory lives as long as this value.
pub(crate) struct TestSession {
    pub dir: tempfile::TempDir,
    pub layout: SessionLayout,
}

impl TestSession {
    /// A session with these threads. `finished = false` leaves every index file unfinished (with a
    /// partial trailing event) and the manifest not final, as after a SIGKILL.
    pub fn build(threads: &[(u32, Vec<Ev>)], finished: bool) -> Self {
        Self::with(threads, finished, |_| {})
    }

    /// As [`build`](Self::build), with `edit` applied to the manifest before it is written.
    pub fn with(
        threads: &[(u32, Vec<Ev>)],
        finished: bool,
        edit: impl FnOnce(&mut Manifest),
    ) -> Self {
        Self::with_detail(threads, finished, &[], edit)
    }

    /// As [`with`](Self::with), plus detail records: for a thread, `(index_seq, event type)` of
    /// each, with the function in `rdi`, a call site in `main` in `rsi`, the other registers
    /// numbered 0x33.. and 40 stack bytes, in one window whose reason
    /// is `trigger:foo`.
    pub fn with_detail(
        threads: &[(u32, Vec<Ev>)],
        finished: bool,
        detail: &[(u32, Vec<(u32, u16)>)],
        edit: impl FnOnce(&mut Manifest),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let layout = SessionLayout::create(dir.path(), 4242).unwrap();
        let mut m = Manifest::new(ClockType::Boottime);
        m.target_pid = 4242;
        m.executable = "/usr/bin/app".into();
        m.argv = vec!["app".into(), "--fast".into()];
        m.tracer_version = "0.1.0".into();
        m.wall_start_unix_ns = 1_700_000_000_000_000_000;
        m.clock = Some(ClockInfo::boottime());
        for (name, id) in [
            ("main", MAIN),
            ("foo", FOO),
            ("bar", BAR),
            ("fib", FIB),
            ("work", WORK),
            ("wait", WAIT),
        ] {
            m.symbols.push(Symbol {
                function_id: format!("{id:#018x}"),
                module_id: atf::module_id("/usr/bin/app"),
                symbol_index: (id & 0xfff) as u32,
                name: name.into(),
                size: 0,
            });
        }
        m.modules.push(Module {
            module_id: atf::module_id("/usr/lib/libx.so"),
            path: "/usr/lib/libx.so".into(),
            base_address: 0x7f00_0000_0000,
            size: 0x10_0000,
            uuid: String::new(),
        });
        let (mut start, mut end) = (u64::MAX, 0);
        for (tid, events) in threads {
            let mut w = layout.create_index(*tid, ClockType::Boottime).unwrap();
            for &(kind, function_id, ts) in events {
                start = start.min(ts);
                end = end.max(ts);
                w.append_event(&IndexEvent {
                    timestamp_ns: ts,
                    function_id,
                    thread_id: *tid,
                    kind,
                    call_depth: 0,
                    detail_seq: NO_DETAIL,
                })
                .unwrap();
            }
            let records = detail.iter().find(|(t, _)| t == tid).map(|(_, r)| r);
            if let Some(records) = records {
                let mut d = layout.create_detail(*tid).unwrap();
                for &(seq, event_type) in records {
                    let mut payload = Vec::new();
                    // rdi: the function; rsi: a call site in main; the others numbered.
                    let function = events.get(seq as usize).map_or(NOWHERE, |e| e.1);
                    for r in 0..17u64 {
                        let value = match r {
                            0 => function,
                            1 => MAIN + 0x1d,
                            _ => 0x11 * (r + 1),
                        };
                        payload.extend_from_slice(&value.to_le_bytes());
                    }
                    payload.extend_from_slice(&40u32.to_le_bytes());
                    payload.extend_from_slice(&0u32.to_le_bytes());
                    payload.extend(b"stack: \x01\x02 hello, detail! ".iter().cycle().take(40));
                    let ts = events.get(seq as usize).map_or(0, |e| e.2);
                    let header = atf::DetailRecordHeader::for_payload(
                        event_type,
                        seq,
                        *tid,
                        ts,
                        payload.len(),
                    );
                    d.append_record(&header, &payload).unwrap();
                }
                d.finish().unwrap();
                w.set_has_detail(true).unwrap();
                m.detail_windows.push(atf::DetailWindow {
                    thread_id: *tid,
                    reason: "trigger:foo".into(),
                    index_seq_start: records.first().map_or(0, |r| r.0.into()),
                    index_seq_end: records.last().map_or(0, |r| r.0.into()),
                    records: records.len() as u64,
                });
            }
            let n = events.len() as u64;
            let mut index = Counts {
                attempted: n + 2,
                persisted: n,
                ..Counts::default()
            };
            index.dropped.shutdown = 2;
            m.threads.push(ThreadEntry {
                id: *tid,
                has_detail: records.is_some(),
                index,
                detail: Counts::default(),
            });
            if finished {
                w.finish().unwrap();
            } else {
                w.flush().unwrap();
                let path = w.path().to_path_buf();
                std::mem::forget(w);
                let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                f.write_all(&[0xAB; 10]).unwrap();
            }
        }
        m.accounting = m.thread_totals();
        if finished {
            m.finished = true;
            m.time_start_ns = start.min(end);
            m.time_end_ns = end;
            m.wall_end_unix_ns = Some(m.wall_start_unix_ns + 2_500_000_000);
            m.stop_reason = Some("target_exited".into());
            m.target_fate = Some(TargetFate::Exited { code: 0 });
        }
        edit(&mut m);
        layout.write_manifest(&mut m).unwrap();
        TestSession { dir, layout }
    }

    /// The session directory as the user would pass it.
    pub fn arg(&self) -> SessionArg {
        SessionArg {
            session: self.layout.session_dir().to_path_buf(),
        }
    }

    /// The opened session.
    pub fn open(&self) -> atf::Session {
        atf::Session::open(self.layout.session_dir()).unwrap()
    }
}

/// insta filters for paths and wall-clock times.
pub(crate) fn path_filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"[^\s:]*/session_\d{8}_\d{6}(_\d+)?", "[SESSION]"),
        (
            r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} [+-]\d{4}",
            "[WALL TIME]",
        ),
    ]
}

/// A standard output whose reader went away: every write fails with `BrokenPipe`.
#[derive(Default)]
pub(crate) struct ClosedPipe {
    pub writes: usize,
}

impl Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        Err(io::ErrorKind::BrokenPipe.into())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
