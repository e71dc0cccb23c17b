//! Pairing calls with returns in one thread's event stream, wherever the recording started or stopped.
//!
//! A return closes the innermost open frame of its function. Frames above that one never saw their
//! return (longjmp, an exception, a lost event) and are closed as [`End::Unwound`] at the same
//! instant. A return with no open frame of its function belongs to a call made before the recording
//! joined: it is an [`Step::Orphan`], and since that function was the caller of everything still open,
//! those frames are unwound first. At the end of the stream, open frames end as [`End::Unfinished`].
//! An event of another process image (its function id carries another image tag: the thread's
//! process called `exec`) ends every frame still open as [`End::Exec`] at that event's instant: the
//! old program's calls never return, and the new program starts at depth 0.
//! The result is always well nested.

use std::io;

use atf::{EventKind, IndexEvent};

/// An open call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The function.
    pub function: u64,
    /// Timestamp of the call.
    pub start: u64,
    /// Time spent in direct callees that have ended so far.
    pub children_ns: u64,
}

/// How a frame ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Its return (or exception unwind) was recorded.
    Returned,
    /// A caller returned first; its own return was not recorded.
    Unwound,
    /// The stream ended before it returned.
    Unfinished,
    /// The process replaced its program (`exec`) while the call was open.
    Exec,
}

/// What one event (or the end of the stream) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A call at `depth` (0 = outermost recorded frame).
    Enter {
        /// The function.
        function: u64,
        /// Timestamp.
        at: u64,
        /// Depth of the new frame.
        depth: usize,
    },
    /// A frame ended at `end`.
    Exit {
        /// The frame, with the time its callees took.
        frame: Frame,
        /// Timestamp of the end.
        end: u64,
        /// Depth of the frame.
        depth: usize,
        /// How it ended.
        how: End,
    },
    /// A return whose call precedes the recording.
    Orphan {
        /// The function.
        function: u64,
        /// Timestamp of the return.
        at: u64,
    },
}

impl Step {
    /// Duration of an `Exit` (0 for other steps); never negative, even on a clock going backwards.
    pub fn duration(&self) -> u64 {
        match self {
            Step::Exit { frame, end, .. } => end.saturating_sub(frame.start),
            _ => 0,
        }
    }
}

/// The open call stack of one thread.
#[derive(Debug, Default)]
pub(crate) struct Walker {
    stack: Vec<Frame>,
    last: u64,
    /// The image tag of the last call or return (see `registry::image_tag`).
    image: u64,
}

impl Walker {
    /// A walker with nothing open.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one event; `sink` receives what it means, in order.
    #[inline(always)]
    pub fn event<F>(&mut self, ev: &IndexEvent, sink: &mut F) -> io::Result<()>
    where
        F: FnMut(Step) -> io::Result<()>,
    {
        self.last = ev.timestamp_ns;
        let image = ev.function_id - registry::untagged(ev.function_id);
        if image != self.image && matches!(ev.kind, EventKind::Call | EventKind::Return) {
            // A new program in this thread (exec): the old one's open calls end here.
            while !self.stack.is_empty() {
                self.pop(ev.timestamp_ns, End::Exec, sink)?;
            }
            self.image = image;
        }
        match ev.kind {
            EventKind::Call => {
                let depth = self.stack.len();
                self.stack.push(Frame {
                    function: ev.function_id,
                    start: ev.timestamp_ns,
                    children_ns: 0,
                });
                sink(Step::Enter {
                    function: ev.function_id,
                    at: ev.timestamp_ns,
                    depth,
                })
            }
            EventKind::Return | EventKind::Exception => {
                let at = ev.timestamp_ns;
                let found = match self.stack.last() {
                    Some(top) if top.function == ev.function_id => Some(self.stack.len() - 1),
                    _ => self
                        .stack
                        .iter()
                        .rposition(|f| f.function == ev.function_id),
                };
                match found {
                    Some(i) => {
                        while self.stack.len() > i + 1 {
                            self.pop(at, End::Unwound, sink)?;
                        }
                        self.pop(at, End::Returned, sink)
                    }
                    None => {
                        while !self.stack.is_empty() {
                            self.pop(at, End::Unwound, sink)?;
                        }
                        sink(Step::Orphan {
                            function: ev.function_id,
                            at,
                        })
                    }
                }
            }
            EventKind::Other(_) => Ok(()),
        }
    }

    /// Ends the stream at `end`: every open frame ends there, innermost first.
    pub fn finish<F>(&mut self, end: u64, sink: &mut F) -> io::Result<()>
    where
        F: FnMut(Step) -> io::Result<()>,
    {
        let end = end.max(self.last);
        while !self.stack.is_empty() {
            self.pop(end, End::Unfinished, sink)?;
        }
        Ok(())
    }

    #[inline]
    fn pop<F>(&mut self, end: u64, how: End, sink: &mut F) -> io::Result<()>
    where
        F: FnMut(Step) -> io::Result<()>,
    {
        let Some(frame) = self.stack.pop() else {
            return Ok(());
        };
        if let Some(parent) = self.stack.last_mut() {
            parent.children_ns += end.saturating_sub(frame.start);
        }
        sink(Step::Exit {
            frame,
            end,
            depth: self.stack.len(),
            how,
        })
    }
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use atf::NO_DETAIL;

    fn ev(kind: EventKind, function: u64, ts: u64) -> IndexEvent {
        IndexEvent {
            timestamp_ns: ts,
            function_id: function,
            thread_id: 1,
            kind,
            call_depth: 0,
            detail_seq: NO_DETAIL,
        }
    }

    fn walk(events: &[IndexEvent], end: u64) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut w = Walker::new();
        let mut sink = |s: Step| {
            steps.push(s);
            Ok(())
        };
        for e in events {
            w.event(e, &mut sink).unwrap();
        }
        w.finish(end, &mut sink).unwrap();
        steps
    }

    fn exits(steps: &[Step]) -> Vec<(u64, u64, u64, usize, End)> {
        steps
            .iter()
            .filter_map(|s| match *s {
                Step::Exit {
                    frame, depth, how, ..
                } => Some((frame.function, s.duration(), frame.children_ns, depth, how)),
                _ => None,
            })
            .collect()
    }

    use EventKind::{Call, Exception, Return};

    /// Events written `c1@0 r1@20`: `c` a call, `r` a return, `x` an exception, of function 1
    /// at 0 and 20 ns.
    fn evs(script: &str) -> Vec<IndexEvent> {
        script
            .split_whitespace()
            .map(|e| {
                let kind = match &e[..1] {
                    "c" => Call,
                    "r" => Return,
                    _ => Exception,
                };
                let (function, ts) = e[1..].split_once('@').unwrap();
                ev(kind, function.parse().unwrap(), ts.parse().unwrap())
            })
            .collect()
    }

    /// The exits the walker reports for the events of `script` ended at `end`.
    fn exits_of(script: &str, end: u64) -> Vec<(u64, u64, u64, usize, End)> {
        exits(&walk(&evs(script), end))
    }

    #[test]
    fn walker__nested_calls__then_exits_with_children_time() {
        let got = exits_of("c1@0 c2@10 r2@30 c3@40 x3@45 r1@100", 100);
        let want = [
            (2, 20, 0, 1, End::Returned),
            (3, 5, 0, 1, End::Returned),
            (1, 100, 25, 0, End::Returned),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn walker__return_first__then_orphan_at_depth_zero() {
        let steps = walk(&evs("r9@5 c1@10 r1@20"), 20);
        assert_eq!(steps[0], Step::Orphan { function: 9, at: 5 });
        assert_eq!(exits(&steps), [(1, 10, 0, 0, End::Returned)]);
    }

    #[test]
    fn walker__caller_returns_while_callees_open__then_callees_unwound_and_nesting_kept() {
        let got = exits_of("c1@0 c2@10 c3@20 r1@50", 60);
        let want = [
            (3, 30, 0, 2, End::Unwound),
            (2, 40, 30, 1, End::Unwound),
            (1, 50, 40, 0, End::Returned),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn walker__orphan_return_with_frames_open__then_frames_unwound_first() {
        let steps = walk(&evs("c1@0 r9@50"), 60);
        assert_eq!(exits(&steps), [(1, 50, 0, 0, End::Unwound)]);
        let orphan = Step::Orphan {
            function: 9,
            at: 50,
        };
        assert_eq!(steps.last(), Some(&orphan));
    }

    #[test]
    fn walker__stream_ends_mid_call__then_unfinished_at_the_end() {
        let got = exits_of("c1@0 c2@10", 100);
        let want = [
            (2, 90, 0, 1, End::Unfinished),
            (1, 100, 90, 0, End::Unfinished),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn walker__recursion__then_innermost_frame_closed_first() {
        let got = exits_of("c1@0 c1@10 r1@20 r1@40", 40);
        assert_eq!(
            got,
            [(1, 10, 0, 1, End::Returned), (1, 40, 10, 0, End::Returned)]
        );
    }

    #[test]
    fn walker__another_image_mid_stream__then_open_calls_end_by_exec_and_the_new_program_at_depth_0(
    ) {
        let tagged = |f: u64| f | registry::image_tag(1);
        let steps = walk(
            &[
                ev(Call, 1, 0),
                ev(Call, 2, 10),
                ev(Call, tagged(1), 30),
                ev(Return, tagged(1), 40),
            ],
            50,
        );
        assert_eq!(
            exits(&steps),
            [
                (2, 20, 0, 1, End::Exec),
                (1, 30, 20, 0, End::Exec),
                (tagged(1), 10, 0, 0, End::Returned)
            ]
        );
    }

    #[test]
    fn walker__unknown_kind__then_ignored() {
        let steps = walk(&[ev(EventKind::Other(77), 1, 0)], 0);
        assert!(steps.is_empty());
    }
}
