//! `tracer export --format chrome`: the Chrome trace-event JSON that ui.perfetto.dev and
//! chrome://tracing open.
//!
//! `{"traceEvents":[...],"displayTimeUnit":"ns","metadata":{...}}` with one track per thread
//! (`pid` = target pid, `tid` = thread id, named by `process_name`/`thread_name` metadata events) and
//! one complete event (`"ph":"X"`) per frame, written as soon as the frame ends, so memory stays
//! bounded by the call depth. `ts` and `dur` are microseconds with three decimals (exact
//! nanoseconds), `ts` counted from the session's first event (`metadata.time_origin_ns`). Frames with
//! no recorded return end at their caller's return or at the end of the recording; a return whose call
//! precedes the recording starts at the beginning of the recording. Both carry an `args.note`.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};

use super::frames::{End, Step, Walker};
use super::names::Names;
use super::pass::{Found, ThreadEvents};
use super::time_span;

/// Microseconds with three decimals, from nanoseconds.
struct Micros(u64);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1_000, self.0 % 1_000)
    }
}

/// Writes the whole document for one process; returns the number of complete events.
#[cfg(test)]
pub(crate) fn write(
    session: &mut atf::Session,
    full_names: bool,
    out: &mut dyn Write,
) -> io::Result<u64> {
    write_all(std::slice::from_mut(session), full_names, out)
}

/// Writes the whole document for the processes of a session (the target first), each its own
/// `pid` with its own names, on one time axis; returns the number of complete events. Events not
/// verified yet (sessions opened with [`atf::Session::open_deferred`]) are verified as they are
/// written, so the sessions' warnings, which the document's metadata lists at its end, are
/// complete once it is written.
pub(crate) fn write_all(
    sessions: &mut [atf::Session],
    full_names: bool,
    out: &mut dyn Write,
) -> io::Result<u64> {
    let spans: Vec<(u64, u64)> = sessions.iter().map(time_span).collect();
    let origin = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.1).max().unwrap_or(0);
    out.write_all(b"{\"traceEvents\":[\n")?;
    let mut count = 0u64;
    for (n, session) in sessions.iter_mut().enumerate() {
        if n > 0 {
            out.write_all(b",\n")?;
        }
        let (written, found) = write_process(session, full_names, (origin, end), out)?;
        count += written;
        found.report(session);
    }
    let Some(session) = sessions.first() else {
        return out.write_all(b"]}\n").map(|()| 0);
    };
    let m = &session.manifest;
    let pid = pid_of(session);
    let metadata = serde_json::json!({
        "tracer_version": m.tracer_version,
        "executable": m.executable,
        "argv": m.argv,
        "target_pid": pid,
        "processes": sessions.iter().map(pid_of).collect::<Vec<_>>(),
        "stop_reason": m.stop_reason,
        "target_fate": m.target_fate,
        "finished": m.finished,
        "clock": m.clock.as_ref().map(|c| c.name.as_str()).unwrap_or("CLOCK_BOOTTIME"),
        "time_origin_ns": origin,
        "wall_start_unix_ns": m.wall_start_unix_ns,
        "warnings": sessions.iter().flat_map(super::warnings).collect::<Vec<_>>(),
    });
    write!(
        out,
        "\n],\n\"displayTimeUnit\":\"ns\",\n\"metadata\":{metadata}}}\n"
    )?;
    Ok(count)
}

/// The pid of a process's directory (the manifest's, else the directory name's).
fn pid_of(session: &atf::Session) -> u32 {
    match session.manifest.target_pid {
        0 => pid_of_dir(&session.dir).unwrap_or(0),
        pid => pid,
    }
}

/// One process's metadata and complete events, `(origin, end)` being the document's span; returns
/// how many complete events it wrote and what verifying its events found.
fn write_process(
    session: &atf::Session,
    full_names: bool,
    (origin, end): (u64, u64),
    out: &mut dyn Write,
) -> io::Result<(u64, Found)> {
    let m = &session.manifest;
    let pid = pid_of(session);
    let process = m
        .executable
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("target");
    write!(
        out,
        "{{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":{pid},\"tid\":{pid},\"args\":{{\"name\":{}}}}}",
        json(&format!("{process} (pid {pid})"))
    )?;
    for thread in &session.threads {
        write!(
            out,
            ",\n{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":{pid},\"tid\":{tid},\"args\":{{\"name\":\"thread {tid}\"}}}}",
            tid = thread.id
        )?;
    }

    let mut names = Names::new(m, full_names);
    let mut escaped: HashMap<u64, String> = HashMap::new();
    let mut count = 0u64;
    let mut found = Found::default();
    for thread in &session.threads {
        let tid = thread.id;
        let mut walker = Walker::new();
        let mut sink = |step: Step| -> io::Result<()> {
            let (function, start, dur, note) = match step {
                Step::Enter { .. } => return Ok(()),
                Step::Exit {
                    frame, end, how, ..
                } => {
                    let note = match how {
                        End::Returned => None,
                        End::Unwound => Some("return not recorded; ends at its caller's return"),
                        End::Unfinished => Some("unfinished; ends at the end of the recording"),
                        End::Exec => Some("ended by exec: the process replaced its program"),
                    };
                    (
                        frame.function,
                        frame.start,
                        end.saturating_sub(frame.start),
                        note,
                    )
                }
                Step::Orphan { function, at } => (
                    function,
                    origin,
                    at.saturating_sub(origin),
                    Some(if session.manifest.followed_from.is_some() {
                        "called in the parent before the fork"
                    } else {
                        "called before the recording started"
                    }),
                ),
            };
            let name = escaped
                .entry(function)
                .or_insert_with(|| json(names.get(function)));
            write!(
                out,
                ",\n{{\"name\":{name},\"cat\":\"function\",\"ph\":\"X\",\"pid\":{pid},\"tid\":{tid},\"ts\":{},\"dur\":{}",
                Micros(start.saturating_sub(origin)),
                Micros(dur)
            )?;
            match note {
                Some(note) => write!(out, ",\"args\":{{\"note\":\"{note}\"}}}}")?,
                None => out.write_all(b"}")?,
            }
            count += 1;
            Ok(())
        };
        let mut events = ThreadEvents::of(session, thread)?;
        events.try_each(|event| walker.event(&event, &mut sink))?;
        found.end(tid, events)?;
        walker.finish(end, &mut sink)?;
    }
    Ok((count, found))
}

/// `s` as a JSON string literal.
fn json(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The pid in a `pid_<pid>` directory name.
fn pid_of_dir(dir: &std::path::Path) -> Option<u32> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("pid_")?
        .parse()
        .ok()
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use atf::EventKind::{Call, Return};
    use serde_json::Value;

    fn export(s: &TestSession) -> (Value, u64) {
        let mut out = Vec::new();
        let n = write(&mut s.open(), false, &mut out).unwrap();
        let doc: Value = serde_json::from_slice(&out).expect("the export is valid JSON");
        (doc, n)
    }

    fn complete(doc: &Value) -> Vec<&Value> {
        doc["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X")
            .collect()
    }

    #[test]
    fn chrome__two_threads__then_tracks_names_and_complete_events() {
        let s = TestSession::build(&[(7, simple_tree(1_000)), (8, simple_tree(1_500))], true);
        let (doc, n) = export(&s);
        assert_eq!(doc["displayTimeUnit"], "ns");
        assert_eq!(doc["metadata"]["target_pid"], 4242);
        assert_eq!(doc["metadata"]["time_origin_ns"], 1_000);
        let events = doc["traceEvents"].as_array().unwrap();
        let meta: Vec<(&str, u64)> = events
            .iter()
            .filter(|e| e["ph"] == "M")
            .map(|e| (e["name"].as_str().unwrap(), e["tid"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            meta,
            [
                ("process_name", 4242),
                ("thread_name", 7),
                ("thread_name", 8)
            ]
        );
        assert_eq!(events[0]["args"]["name"], "app (pid 4242)");
        let x = complete(&doc);
        assert_eq!(n, 6);
        assert_eq!(x.len(), 6);
        assert!(x.iter().all(|e| e["pid"] == 4242 && e["cat"] == "function"));
        let main8 = x
            .iter()
            .find(|e| e["tid"] == 8 && e["name"] == "main")
            .unwrap();
        assert_eq!(main8["ts"].as_f64(), Some(0.5));
        assert_eq!(main8["dur"].as_f64(), Some(10.0));
        let foo7 = x
            .iter()
            .find(|e| e["tid"] == 7 && e["name"] == "foo")
            .unwrap();
        assert_eq!(
            (foo7["ts"].as_f64(), foo7["dur"].as_f64()),
            (Some(1.0), Some(2.0))
        );
    }

    #[test]
    fn chrome__nanosecond_times__then_fractional_microseconds_exact() {
        let events = vec![
            (Call, MAIN, 100),
            (Call, FOO, 1_334),
            (Return, FOO, 2_335),
            (Return, MAIN, 9_999),
        ];
        let s = TestSession::build(&[(7, events)], true);
        let mut out = Vec::new();
        write(&mut s.open(), false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"ts\":1.234,\"dur\":1.001"), "{text}");
        assert!(text.contains("\"ts\":0.000,\"dur\":9.899"), "{text}");
    }

    #[test]
    fn chrome__every_thread__then_events_nest_per_track() {
        let s = TestSession::build(
            &[
                (7, simple_tree(0)),
                (8, joined_stream()),
                (9, vec![(Call, FIB, 10), (Call, FIB, 20), (Return, FIB, 30)]),
            ],
            true,
        );
        let (doc, _) = export(&s);
        for tid in [7, 8, 9] {
            let mut spans: Vec<(u64, u64)> = complete(&doc)
                .iter()
                .filter(|e| e["tid"] == tid)
                .map(|e| {
                    let ts = (e["ts"].as_f64().unwrap() * 1000.0).round() as u64;
                    let dur = (e["dur"].as_f64().unwrap() * 1000.0).round() as u64;
                    (ts, ts + dur)
                })
                .collect();
            // Sorted by start, longest first: each span must lie inside or after the previous ones.
            spans.sort_by_key(|&(s, e)| (s, std::cmp::Reverse(e)));
            let mut open: Vec<(u64, u64)> = Vec::new();
            for (s, e) in spans {
                while open.last().is_some_and(|&(_, oe)| oe <= s) {
                    open.pop();
                }
                if let Some(&(_, oe)) = open.last() {
                    assert!(e <= oe, "thread {tid}: [{s}, {e}] overlaps its parent");
                }
                open.push((s, e));
            }
        }
    }

    #[test]
    fn chrome__joined_and_cut_stream__then_orphan_from_start_and_unfinished_to_end_with_notes() {
        let s = TestSession::build(&[(7, joined_stream())], false);
        let (doc, n) = export(&s);
        assert_eq!(n, 4);
        let x = complete(&doc);
        let find = |name: &str| *x.iter().find(|e| e["name"] == name).unwrap();
        // `wait` returned at 100 ns: from the origin (100) to 100.
        assert_eq!(find("wait")["ts"].as_f64(), Some(0.0));
        assert!(find("wait")["args"]["note"]
            .as_str()
            .unwrap()
            .contains("before the recording"));
        // `work` [500, end of recording = 900].
        assert_eq!(find("work")["dur"].as_f64(), Some(0.4));
        assert!(find("work")["args"]["note"]
            .as_str()
            .unwrap()
            .contains("unfinished"));
        assert!(find("bar")["args"].is_null());
        assert_eq!(doc["metadata"]["finished"], false);
        assert!(!doc["metadata"]["warnings"].as_array().unwrap().is_empty());
    }

    #[test]
    fn chrome__names_needing_escapes__then_valid_json() {
        let s = TestSession::with(&[(7, simple_tree(0))], true, |m| {
            m.symbols[0].name = "operator\"()\\<\n>".into();
        });
        let (doc, _) = export(&s);
        assert!(complete(&doc)
            .iter()
            .any(|e| e["name"] == "operator\"()\\<\n>"));
    }
}
