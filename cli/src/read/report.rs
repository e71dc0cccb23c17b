//! `tracer report`: one row per function with calls, total time, self time and average, like
//! `uftrace report`.
//!
//! Total time counts only the outermost active frame of a function, so recursion is not counted
//! twice; self time is each frame's duration minus its direct callees'. Frames whose return was not
//! recorded count up to the instant they were closed (their caller's return, or the end of the
//! recording); returns whose call precedes the recording are left out. Both are footnoted.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::io::{self, Write};

use atf::IndexEvent;

use super::frames::{End, Step, Walker};
use super::names::Names;
use super::pass::{Found, ThreadEvents};
use super::time::{plural, Duration};
use super::{selected, time_span};
use crate::args::SortKey;

/// One function's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Row {
    /// The function id.
    pub function: u64,
    /// Frames that ended.
    pub calls: u64,
    /// Time in the outermost active frames, callees included.
    pub total_ns: u64,
    /// Time in the function itself.
    pub self_ns: u64,
    /// Frames of it open right now (while walking).
    active: u32,
}

impl Row {
    /// Average total time per call.
    pub fn average_ns(&self) -> u64 {
        self.total_ns.checked_div(self.calls).unwrap_or(0)
    }
}

/// Figures of a whole session (or the selected threads).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// One row per function, in first-seen order.
    pub rows: Vec<Row>,
    /// Frames closed without their return.
    pub unreturned: u64,
    /// Returns without their call.
    pub orphans: u64,
    /// Events read.
    pub events: u64,
}

/// Walks the selected threads and computes the rows. A thread whose events are unverified (a
/// session opened with [`atf::Session::open_deferred`]) is verified in the same pass, and the
/// session's verification is finished at the end, so its warnings are complete.
pub(crate) fn compute(session: &mut atf::Session, tids: &[u32]) -> io::Result<Stats> {
    let (_, end) = time_span(session);
    let mut stats = Stats::default();
    let mut index: HashMap<u64, usize, BuildFunctionHasher> = HashMap::default();
    let mut open: Vec<usize> = Vec::new();
    let mut found = Found::default();
    for thread in session.threads.iter().filter(|t| selected(tids, t.id)) {
        let mut walker = Walker::new();
        let mut sink = |step: Step| -> io::Result<()> {
            match step {
                Step::Enter { function, .. } => {
                    let rows = &mut stats.rows;
                    let i = *index.entry(function).or_insert_with(|| {
                        rows.push(Row {
                            function,
                            ..Row::default()
                        });
                        rows.len() - 1
                    });
                    rows[i].active += 1;
                    open.push(i);
                }
                Step::Exit { frame, how, .. } => {
                    let Some(i) = open.pop() else { return Ok(()) };
                    let duration = step.duration();
                    let row = &mut stats.rows[i];
                    row.calls += 1;
                    row.active -= 1;
                    row.self_ns += duration.saturating_sub(frame.children_ns);
                    if row.active == 0 {
                        row.total_ns += duration;
                    }
                    // A call the program's exec ended did end (the process moved on).
                    if !matches!(how, End::Returned | End::Exec) {
                        stats.unreturned += 1;
                    }
                }
                Step::Orphan { .. } => stats.orphans += 1,
            }
            Ok(())
        };
        let mut events = ThreadEvents::of(session, thread)?;
        events.try_each(|event: IndexEvent| walker.event(&event, &mut sink))?;
        found.end(thread.id, events)?;
        walker.finish(end, &mut sink)?;
        stats.events += thread.index.event_count();
    }
    found.report(session);
    Ok(stats)
}

/// Hashes function ids for the row table: one multiply (function ids are addresses, already
/// well spread; nothing here is chosen by an adversary), instead of the default SipHash, which
/// took a fifth of `report`'s time.
#[derive(Default)]
struct FunctionHasher(u64);

impl std::hash::Hasher for FunctionHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        // Fibonacci hashing: the high bits, which a table's index takes, depend on every bit.
        self.0 = (self.0 ^ v)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(26);
    }
}

type BuildFunctionHasher = std::hash::BuildHasherDefault<FunctionHasher>;

/// Sorts `rows` by `key`, largest first (names alphabetically); ties by name.
pub(crate) fn sort(rows: &mut [(String, Row)], key: SortKey) {
    match key {
        SortKey::Total => {
            rows.sort_by(|a, b| (Reverse(a.1.total_ns), &a.0).cmp(&(Reverse(b.1.total_ns), &b.0)))
        }
        SortKey::SelfTime => {
            rows.sort_by(|a, b| (Reverse(a.1.self_ns), &a.0).cmp(&(Reverse(b.1.self_ns), &b.0)))
        }
        SortKey::Calls => {
            rows.sort_by(|a, b| (Reverse(a.1.calls), &a.0).cmp(&(Reverse(b.1.calls), &b.0)))
        }
        SortKey::Avg => rows.sort_by(|a, b| {
            (Reverse(a.1.average_ns()), &a.0).cmp(&(Reverse(b.1.average_ns()), &b.0))
        }),
        SortKey::Name => rows.sort_by(|a, b| (&a.0, a.1.function).cmp(&(&b.0, b.1.function))),
    }
}

/// Writes the report.
pub(crate) fn write(
    session: &mut atf::Session,
    tids: &[u32],
    key: SortKey,
    full_names: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    let stats = compute(session, tids)?;
    let session = &*session;
    let mut names = Names::new(&session.manifest, full_names);
    let mut rows: Vec<(String, Row)> = stats
        .rows
        .into_iter()
        .map(|r| (names.get(r.function).to_owned(), r))
        .collect();
    sort(&mut rows, key);

    for warning in super::warnings(session) {
        writeln!(out, "# warning: {warning}")?;
    }
    writeln!(
        out,
        "  {:>10}  {:>10}  {:>10}  {:>10}  Function",
        "Total time", "Self time", "Average", "Calls"
    )?;
    let rule = "==========";
    writeln!(
        out,
        "  {rule}  {rule}  {rule}  {rule}  ===================="
    )?;
    for (name, row) in &rows {
        writeln!(
            out,
            "  {}  {}  {}  {:>10}  {name}",
            Duration(row.total_ns),
            Duration(row.self_ns),
            Duration(row.average_ns()),
            row.calls
        )?;
    }
    if rows.is_empty() {
        writeln!(out, "# no calls recorded")?;
    }
    if stats.unreturned > 0 {
        writeln!(
            out,
            "# {} no recorded return; each counts up to its caller's return or the end of the \
             recording",
            plural(stats.unreturned, "call had", "calls had")
        )?;
    }
    if let Some(note) = names.unnamed_note() {
        writeln!(out, "# {note}")?;
    }
    if stats.orphans > 0 {
        writeln!(
            out,
            "# left out: {} {}",
            plural(stats.orphans, "return of a call", "returns of calls"),
            super::orphan_origin(&session.manifest)
        )?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use atf::EventKind::{Call, Return};

    fn report_text(s: &TestSession, tids: &[u32], key: SortKey) -> String {
        let mut session = s.open();
        let mut out = Vec::new();
        write(&mut session, tids, key, false, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn row(stats: &Stats, function: u64) -> &Row {
        stats.rows.iter().find(|r| r.function == function).unwrap()
    }

    #[test]
    fn report__nested_tree__then_total_self_and_calls() {
        let s = TestSession::build(&[(7, simple_tree(1_000))], true);
        let stats = compute(&mut s.open(), &[]).unwrap();
        // main [1000, 11000] calls foo [2000, 4000] and bar [5000, 10000].
        assert_eq!(
            (row(&stats, MAIN).total_ns, row(&stats, MAIN).self_ns),
            (10_000, 3_000)
        );
        assert_eq!(
            (row(&stats, FOO).total_ns, row(&stats, FOO).calls),
            (2_000, 1)
        );
        assert_eq!(row(&stats, BAR).self_ns, 5_000);
        assert_eq!((stats.unreturned, stats.orphans), (0, 0));
    }

    #[test]
    fn report__recursion__then_total_counted_once_and_self_split() {
        // fib [0, 100] -> fib [10, 60] -> fib [20, 30]
        let events = [
            (Call, FIB, 0),
            (Call, FIB, 10),
            (Call, FIB, 20),
            (Return, FIB, 30),
            (Return, FIB, 60),
            (Return, FIB, 100),
        ];
        let s = TestSession::build(&[(7, events.to_vec())], true);
        let stats = compute(&mut s.open(), &[]).unwrap();
        let fib = row(&stats, FIB);
        assert_eq!(fib.calls, 3);
        assert_eq!(fib.total_ns, 100, "only the outermost frame counts");
        assert_eq!(
            fib.self_ns, 100,
            "self times add up to the outermost duration"
        );
        assert_eq!(fib.average_ns(), 33);
    }

    #[test]
    fn report__joined_stream__then_orphan_left_out_and_unfinished_counted_to_the_end() {
        let s = TestSession::build(&[(7, joined_stream())], false);
        let stats = compute(&mut s.open(), &[]).unwrap();
        assert_eq!(stats.orphans, 1);
        assert_eq!(stats.unreturned, 1);
        // The unfinished `work` call at 500 counts to the last event at 900.
        assert_eq!(row(&stats, WORK).total_ns, 400);
        assert!(
            stats.rows.iter().all(|r| r.function != WAIT),
            "the orphan `wait` is left out"
        );
    }

    #[test]
    fn report__tid_filter__then_only_that_thread() {
        let s = TestSession::build(&[(7, simple_tree(1_000)), (8, simple_tree(50_000))], true);
        assert_eq!(row(&compute(&mut s.open(), &[]).unwrap(), MAIN).calls, 2);
        assert_eq!(row(&compute(&mut s.open(), &[8]).unwrap(), MAIN).calls, 1);
    }

    #[test]
    fn report__each_sort_key__then_snapshot() {
        let mut events = simple_tree(1_000);
        events.extend([(Call, FOO, 20_000), (Return, FOO, 20_100)]);
        let s = TestSession::build(&[(7, events)], true);
        insta::assert_snapshot!("report_total", report_text(&s, &[], SortKey::Total));
        for (key, name) in [
            (SortKey::SelfTime, "self"),
            (SortKey::Calls, "calls"),
            (SortKey::Avg, "avg"),
            (SortKey::Name, "name"),
        ] {
            let text = report_text(&s, &[], key);
            let order: Vec<&str> = text
                .lines()
                .skip(2)
                .map(|l| l.rsplit("  ").next().unwrap())
                .collect();
            let expected: &[&str] = match key {
                SortKey::SelfTime => &["bar", "main", "foo"],
                SortKey::Calls => &["foo", "bar", "main"],
                SortKey::Avg => &["main", "bar", "foo"],
                _ => &["bar", "foo", "main"],
            };
            assert_eq!(order, expected, "sort by {name}");
        }
    }

    #[test]
    fn report__unfinished_session__then_warnings_and_footnotes_snapshot() {
        let s = TestSession::build(&[(7, joined_stream())], false);
        let text = report_text(&s, &[], SortKey::Total);
        insta::with_settings!({filters => path_filters()}, {
            insta::assert_snapshot!("report_joined", text);
        });
    }
}
