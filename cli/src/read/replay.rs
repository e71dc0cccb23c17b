//! `tracer replay`: each thread's call tree with durations, like `uftrace replay`.
//!
//! ```text
//! # DURATION      TID     FUNCTION
//!             [    7] | main() {
//!    2.000 us [    7] |   foo();
//!   10.000 us [    7] | } /* main */
//! ```
//!
//! A call is printed once the next event is known, so a call followed by its own return is one
//! line (`foo();`). A return whose call precedes the recording is printed as `} /* name */` at depth
//! 0 without a duration; frames without a recorded return are closed with a comment saying so.
//! Past a depth of 32 the indentation stops growing and each line says its depth
//! (`[depth 40000] leaf();`), so the output grows with the number of events, not with the
//! square of the depth.

use std::io::{self, Write};

use atf::DetailRecord;

use super::detail::{Code, Details};
use super::frames::{End, Step, Walker};
use super::names::Names;
use super::pass::{Found, ThreadEvents};
use super::time::{plural, Duration};
use super::{selected, time_span};

/// What to show.
#[derive(Debug)]
pub(crate) struct Options<'a> {
    /// Only these threads (empty = all).
    pub tids: &'a [u32],
    /// Only calls of functions whose name contains this, and their callees.
    pub filter: Option<&'a str>,
    /// Only frames shallower than this (relative to the filtered call, if any).
    pub depth: Option<usize>,
    /// Whole signatures instead of short names.
    pub full_names: bool,
    /// Detail records (registers, stack bytes) under their events.
    pub details: bool,
}

/// Writes the session's warnings and the call trees of the selected threads. A thread whose
/// events are unverified (a session opened with [`atf::Session::open_deferred`]) is verified as
/// its tree is written: the warnings known before are printed before the trees, those its pass
/// finds (and any that come after them) after, so that they read in the order
/// [`atf::Session::open`] gives.
///
/// Returns how many warnings follow the trees.
pub(crate) fn write(
    session: &mut atf::Session,
    options: &Options<'_>,
    out: &mut dyn Write,
) -> io::Result<usize> {
    let settled = session.settled_warnings();
    for warning in super::warnings(session).take(settled) {
        writeln!(out, "# warning: {warning}")?;
    }
    write_trees(session, options, out)?;
    let mut after = 0;
    for warning in super::warnings(session).skip(settled) {
        writeln!(out, "# warning: {warning}")?;
        after += 1;
    }
    Ok(after)
}

/// Writes the call trees of the selected threads, verifying the events of those not verified
/// yet, and finishes the session's verification.
fn write_trees(
    session: &mut atf::Session,
    options: &Options<'_>,
    out: &mut dyn Write,
) -> io::Result<()> {
    let (_, end) = time_span(session);
    let mut names = Names::new(&session.manifest, options.full_names);
    let code = Code::new(&session.manifest);
    let mut found = Found::default();
    writeln!(out, "# DURATION      TID     FUNCTION")?;
    let mut first = true;
    for thread in session
        .threads
        .iter()
        .filter(|t| selected(options.tids, t.id))
    {
        if !first {
            writeln!(out)?;
        }
        first = false;
        let details = if options.details {
            Details::new(thread, &session.manifest.detail_windows, &code)
        } else {
            None
        };
        let mut printer = Printer {
            out: &mut *out,
            names: &mut names,
            options,
            tid: thread.id,
            pending: None,
            filter_base: None,
            orphans: 0,
            details,
            current: Vec::new(),
        };
        let mut walker = Walker::new();
        // Past a damaged chunk (reported with the warnings): its events are missing, the
        // positions of the others stay right, so detail records stay with their events.
        let mut events = ThreadEvents::of(session, thread)?;
        while let Some(event) = events.next() {
            let event = event?;
            let seq = events.next_seq() - 1;
            if let Some(details) = printer.details.as_mut() {
                printer.current = details.take(seq)?;
            }
            walker.event(&event, &mut |step: Step| printer.step(step))?;
        }
        found.end(thread.id, events)?;
        printer.current.clear();
        walker.finish(end, &mut |step: Step| printer.step(step))?;
        let orphans = printer.orphans;
        let unmatched = printer.details.as_mut().map_or(0, |d| d.rest());
        if unmatched > 0 {
            writeln!(
                out,
                "# thread {}: {} of no event in the index file, not shown",
                thread.id,
                plural(unmatched, "detail record", "detail records")
            )?;
        }
        if orphans > 0 {
            writeln!(
                out,
                "# thread {}: {} {}, shown at depth 0 without a duration",
                thread.id,
                plural(orphans, "return of a call", "returns of calls"),
                super::orphan_origin(&session.manifest)
            )?;
        }
    }
    if let Some(note) = names.unnamed_note() {
        writeln!(out, "# {note}")?;
    }
    found.report(session);
    Ok(())
}

/// Prints one thread's steps.
struct Printer<'a, 'o> {
    out: &'a mut dyn Write,
    names: &'a mut Names,
    options: &'a Options<'o>,
    tid: u32,
    /// A visible call not printed yet: `(function, display depth, its detail records)`.
    pending: Option<(u64, usize, Vec<DetailRecord>)>,
    /// Walker depth of the frame that matched `--filter`, while one is open.
    filter_base: Option<usize>,
    orphans: u64,
    /// The thread's detail records, if shown.
    details: Option<Details<'a>>,
    /// Detail records of the event being walked.
    current: Vec<DetailRecord>,
}

impl Printer<'_, '_> {
    fn step(&mut self, step: Step) -> io::Result<()> {
        match step {
            Step::Enter {
                function, depth, ..
            } => {
                if let Some(filter) = self.options.filter {
                    if self.filter_base.is_none() {
                        if !self.names.peek(function).contains(filter) {
                            return Ok(());
                        }
                        self.filter_base = Some(depth);
                    }
                }
                let Some(shown) = self.visible(depth) else {
                    return Ok(());
                };
                self.flush_pending()?;
                self.pending = Some((function, shown, std::mem::take(&mut self.current)));
                Ok(())
            }
            Step::Exit {
                frame, depth, how, ..
            } => {
                if self.options.filter.is_some() && self.filter_base.is_none() {
                    return Ok(());
                }
                let Some(shown) = self.visible(depth) else {
                    return Ok(());
                };
                if self.filter_base == Some(depth) {
                    self.filter_base = None;
                }
                let duration = match how {
                    End::Returned => Some(Duration(step.duration())),
                    End::Unwound | End::Unfinished => None,
                    // It lasted until the program was replaced.
                    End::Exec => Some(Duration(step.duration())),
                };
                let note = match how {
                    End::Returned => "",
                    End::Unwound => ": return not recorded",
                    End::Unfinished => ": unfinished",
                    End::Exec => ": ended by exec",
                };
                let returned = if how == End::Returned {
                    std::mem::take(&mut self.current)
                } else {
                    Vec::new()
                };
                if let Some((_, _, call_records)) = self.pending.take() {
                    let name = self.names.get(frame.function);
                    let call = called(name, self.options.full_names);
                    let text = if note.is_empty() {
                        format!("{call};")
                    } else {
                        format!("{call}; /* {} */", &note[2..])
                    };
                    line(self.out, duration, self.tid, shown, &text)?;
                    self.detail_lines(call_records, shown + 1)?;
                } else {
                    let name = self.names.get(frame.function);
                    let text = format!("}} /* {name}{note} */");
                    line(self.out, duration, self.tid, shown, &text)?;
                }
                self.detail_lines(returned, shown + 1)
            }
            Step::Orphan { function, .. } => {
                let name = self.names.get(function);
                if let Some(filter) = self.options.filter {
                    if !name.contains(filter) {
                        return Ok(());
                    }
                }
                self.orphans += 1;
                let text = format!("}} /* {name} */");
                line(self.out, None, self.tid, 0, &text)?;
                let returned = std::mem::take(&mut self.current);
                self.detail_lines(returned, 1)
            }
        }
    }

    /// The display depth of a frame at walker depth `depth`, if it is shown.
    fn visible(&self, depth: usize) -> Option<usize> {
        let shown = depth - self.filter_base.unwrap_or(0).min(depth);
        match self.options.depth {
            Some(limit) if shown >= limit => None,
            _ => Some(shown),
        }
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        if let Some((function, shown, records)) = self.pending.take() {
            let full = self.options.full_names;
            let text = format!("{} {{", called(self.names.get(function), full));
            line(self.out, None, self.tid, shown, &text)?;
            self.detail_lines(records, shown + 1)?;
        }
        Ok(())
    }

    /// The comment blocks of `records`, at display depth `depth`.
    fn detail_lines(&mut self, records: Vec<DetailRecord>, depth: usize) -> io::Result<()> {
        let Some(details) = self.details.as_ref() else {
            return Ok(());
        };
        for record in &records {
            for text in details.describe(record) {
                line(self.out, None, self.tid, depth, &text)?;
            }
        }
        Ok(())
    }
}

/// A call as shown: `name()`, but a full C++ signature as it is (it has its parameter list).
fn called(name: &str, full_names: bool) -> std::borrow::Cow<'_, str> {
    if full_names && name.contains('(') {
        name.into()
    } else {
        format!("{name}()").into()
    }
}

/// Nesting shown by indentation; deeper frames are indented as at this depth and carry their
/// depth as a number, so a line's length, and the output's, stays linear at any depth.
const MAX_INDENT_DEPTH: usize = 32;

fn line(
    out: &mut dyn Write,
    duration: Option<Duration>,
    tid: u32,
    depth: usize,
    text: &str,
) -> io::Result<()> {
    match duration {
        Some(d) => write!(out, "{d} ")?,
        None => out.write_all(b"           ")?,
    }
    write!(out, "[{tid:>6}] | ")?;
    let indent = depth.min(MAX_INDENT_DEPTH);
    for _ in 0..indent {
        out.write_all(b"  ")?;
    }
    if depth > MAX_INDENT_DEPTH {
        write!(out, "[depth {depth}] ")?;
    }
    writeln!(out, "{text}")
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use atf::EventKind::{Call, Return};

    fn replay_text(s: &TestSession, options: &Options<'_>) -> String {
        let mut out = Vec::new();
        write(&mut s.open(), options, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn all() -> Options<'static> {
        Options {
            tids: &[],
            filter: None,
            depth: None,
            full_names: false,
            details: true,
        }
    }

    /// main { foo; bar { fib { fib; } work; } } plus calls into libx and an unnamed address.
    fn deep_tree() -> Vec<Ev> {
        vec![
            (Call, MAIN, 1_000),
            (Call, FOO, 2_000),
            (Return, FOO, 2_500),
            (Call, BAR, 3_000),
            (Call, FIB, 3_100),
            (Call, FIB, 3_200),
            (Return, FIB, 3_300),
            (Return, FIB, 3_400),
            (Call, WORK, 4_000),
            (Return, WORK, 1_004_000),
            (Return, BAR, 1_005_000),
            (Call, IN_LIBX, 1_006_000),
            (Call, NOWHERE, 1_006_100),
            (Return, NOWHERE, 1_006_200),
            (Return, IN_LIBX, 1_007_000),
            (Return, MAIN, 2_501_001_000),
        ]
    }

    #[test]
    fn replay__two_threads__then_tree_per_thread_snapshot() {
        let s = TestSession::build(&[(7, deep_tree()), (8, simple_tree(500))], true);
        insta::assert_snapshot!("replay_two_threads", replay_text(&s, &all()));
    }

    #[test]
    fn replay__tid_filter__then_only_that_thread() {
        let s = TestSession::build(&[(7, deep_tree()), (8, simple_tree(500))], true);
        let text = replay_text(
            &s,
            &Options {
                tids: &[8],
                ..all()
            },
        );
        assert!(
            text.lines().skip(1).all(|l| l.contains("[     8]")),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1 + 4);
    }

    #[test]
    fn replay__function_filter__then_matching_calls_and_callees_from_depth_zero() {
        let s = TestSession::build(&[(7, deep_tree())], true);
        let text = replay_text(
            &s,
            &Options {
                filter: Some("ba"),
                ..all()
            },
        );
        insta::assert_snapshot!("replay_filter_bar", text);
    }

    #[test]
    fn replay__depth_limit__then_deeper_calls_hidden_and_boundary_calls_on_one_line() {
        let s = TestSession::build(&[(7, deep_tree())], true);
        let text = replay_text(
            &s,
            &Options {
                depth: Some(2),
                ..all()
            },
        );
        insta::assert_snapshot!("replay_depth_2", text);
        assert!(!text.contains("fib"));
        assert!(text.contains("  bar();"), "{text}");
    }

    #[test]
    fn replay__filter_and_depth__then_depth_counts_from_the_filtered_call() {
        let s = TestSession::build(&[(7, deep_tree())], true);
        let text = replay_text(
            &s,
            &Options {
                filter: Some("bar"),
                depth: Some(2),
                ..all()
            },
        );
        let calls: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split("| ").nth(1).unwrap())
            .collect();
        assert_eq!(calls, ["bar() {", "  fib();", "  work();", "} /* bar */"]);
    }

    #[test]
    fn replay__joined_and_cut_stream__then_orphan_at_depth_zero_and_unfinished_closed() {
        let s = TestSession::build(&[(7, joined_stream())], false);
        let text = replay_text(&s, &all());
        insta::with_settings!({filters => path_filters()}, {
            insta::assert_snapshot!("replay_joined", text);
        });
    }

    #[test]
    fn replay__caller_returns_over_open_callees__then_callees_closed_and_nesting_kept() {
        let events = vec![
            (Call, MAIN, 0),
            (Call, FOO, 10),
            (Call, BAR, 20),
            (Return, MAIN, 50),
        ];
        let s = TestSession::build(&[(7, events)], true);
        let text = replay_text(&s, &all());
        let calls: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split("| ").nth(1).unwrap())
            .collect();
        assert_eq!(
            calls,
            [
                "main() {",
                "  foo() {",
                "    bar(); /* return not recorded */",
                "  } /* foo: return not recorded */",
                "} /* main */"
            ]
        );
    }

    #[test]
    fn replay__recursion_40000_deep__then_no_panic_and_output_linear_in_events() {
        let depth = 40_000u64;
        let mut events: Vec<Ev> = (0..depth).map(|i| (Call, FIB, i)).collect();
        events.extend((0..depth).map(|i| (Return, FIB, depth + i)));
        let s = TestSession::build(&[(7, events)], true);
        let text = replay_text(&s, &all());
        // One line per call and per return, none longer than the capped indent plus the depth.
        assert_eq!(text.lines().count(), 1 + 2 * depth as usize - 1);
        let longest = text.lines().map(str::len).max().unwrap();
        assert!(longest < 140, "a line of {longest} bytes");
        assert!(
            text.contains("[depth 39999] fib();"),
            "the leaf shows its depth"
        );
        let deep = text
            .lines()
            .find(|l| l.contains("[depth 33] fib() {"))
            .unwrap();
        let deepest = text.lines().find(|l| l.contains("[depth 39999]")).unwrap();
        assert_eq!(
            deep.find("[depth"),
            deepest.find("[depth"),
            "the indent stops growing"
        );
        assert_eq!(
            deep.split("| ").nth(1).unwrap().find("[depth"),
            Some(2 * MAX_INDENT_DEPTH)
        );
    }

    #[test]
    fn replay__cpp_names__then_short_by_default_and_whole_signature_with_full_names() {
        let s = TestSession::with(&[(7, simple_tree(0))], true, |m| {
            m.symbols[1].name = "ns::Box<int>::get() const".into();
            m.symbols[2].name = "std::enable_if<true, void>::type ns::swap<int>(int&, int&)".into();
        });
        let short = replay_text(&s, &all());
        assert!(short.contains("|   ns::Box::get();"), "{short}");
        assert!(short.contains("|   ns::swap();"), "{short}");
        let full = replay_text(
            &s,
            &Options {
                full_names: true,
                ..all()
            },
        );
        assert!(full.contains("|   ns::Box<int>::get() const;"), "{full}");
        assert!(full.contains("ns::swap<int>(int&, int&);"), "{full}");
        assert!(full.contains("| main() {"), "{full}");
    }

    #[test]
    fn replay__detail_records__then_registers_and_stack_under_their_call_and_return_snapshot() {
        let detail = vec![
            (1, atf::DETAIL_CALL),
            (2, atf::DETAIL_RETURN),
            (3, atf::DETAIL_CALL),
            (40, atf::DETAIL_CALL),
        ];
        let s = TestSession::with_detail(&[(7, simple_tree(1_000))], true, &[(7, detail)], |_| {});
        let text = replay_text(&s, &all());
        insta::with_settings!({filters => path_filters()}, {
            insta::assert_snapshot!("replay_detail", text);
        });
        let hidden = replay_text(
            &s,
            &Options {
                details: false,
                ..all()
            },
        );
        assert!(!hidden.contains("/* detail of"), "{hidden}");
    }
}
