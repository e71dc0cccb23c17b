//! Detail records shown next to their events: for each record, why its window was kept (a
//! trigger or a crash), the registers and the stack bytes, as a comment block under the call or
//! return it belongs to.
//!
//! ```text
//!             [     7] |   handle_error() {
//!             [     7] |     /* detail of the call (trigger:handle_error)
//!             [     7] |      *   rdi 0000000000000001  rsi 00007ffd4a3c1e58  rdx ...
//!             [     7] |      *   stack: 64 bytes from rsp 0x7ffd4a3c1d40
//!             [     7] |      *   7ffd4a3c1d40  48 8b 05 00 00 00 00 00  ...  |H.......|
//!             [     7] |      */
//! ```
//!
//! Records are matched to events by their `index_seq` (the event's position in the thread's
//! index file), walking both files once, in order.

use std::fmt::Write as _;
use std::io;

use atf::{DetailRecord, DetailWindow, Records};
use event::{DetailPayload, DETAIL_REGISTERS, DETAIL_STACK_CLAMPED};

use super::input_error;

/// A window's reason in words.
fn why(reason: &str) -> String {
    match reason {
        "marked" => "window kept by a trigger".to_owned(),
        "final" => "the window open when the recording ended".to_owned(),
        "crash" => "window kept at the crash".to_owned(),
        other => match other.strip_prefix("trigger:") {
            Some(symbol) => format!("window kept by the trigger {}", super::clean(symbol)),
            None => format!("window kept: {}", super::clean(other)),
        },
    }
}

/// Code addresses to `function+0xoffset`, from the manifest's symbols.
pub(crate) struct Code {
    /// `(address, short name)`, sorted by address.
    symbols: Vec<(u64, String)>,
}

impl Code {
    /// The symbols of `manifest` (already cleaned of control characters).
    pub fn new(manifest: &atf::Manifest) -> Self {
        let mut symbols: Vec<(u64, String)> = manifest
            .symbols
            .iter()
            .filter_map(|s| Some((s.function_id()?, symname::short_name(&s.name))))
            .collect();
        symbols.sort();
        symbols.dedup_by_key(|s| s.0);
        Code { symbols }
    }

    /// `name` or `name+0x1d` for an address inside a named function (within 64 KiB of its
    /// start, the symbols carrying no sizes), else the address in hex.
    /// Whether `address` is a function's first byte.
    fn starts_function(&self, address: u64) -> bool {
        self.symbols.binary_search_by_key(&address, |s| s.0).is_ok()
    }

    fn describe(&self, address: u64) -> String {
        let i = self.symbols.partition_point(|s| s.0 <= address);
        match i.checked_sub(1).map(|i| &self.symbols[i]) {
            Some((start, name)) if address == *start => name.clone(),
            Some((start, name)) if address - start < 0x1_0000 => {
                format!("{name}+{:#x}", address - start)
            }
            _ => format!("{address:#x}"),
        }
    }
}

/// One thread's detail records, handed out with the events they belong to.
pub(crate) struct Details<'a> {
    records: std::iter::Peekable<Records<'a>>,
    windows: Vec<&'a DetailWindow>,
    code: &'a Code,
    /// Records whose event was never reached (their `index_seq` lies past the index, or they
    /// are out of order).
    pub unmatched: u64,
}

impl<'a> Details<'a> {
    /// The records of `thread`, with the windows the manifest lists for it.
    pub fn new(
        thread: &'a atf::SessionThread,
        windows: &'a [DetailWindow],
        code: &'a Code,
    ) -> Option<Self> {
        let detail = thread.detail.as_ref()?;
        Some(Details {
            records: detail.records().peekable(),
            windows: windows
                .iter()
                .filter(|w| w.thread_id == thread.id)
                .collect(),
            code,
            unmatched: 0,
        })
    }

    /// The records of the event at position `seq` (earlier records left behind are counted as
    /// unmatched).
    pub fn take(&mut self, seq: u64) -> io::Result<Vec<DetailRecord>> {
        let mut out = Vec::new();
        while let Some(next) = self.records.peek() {
            let at = match next {
                Ok(r) => u64::from(r.header.index_seq),
                Err(_) => {
                    let Some(Err(e)) = self.records.next() else {
                        unreachable!("peeked an error")
                    };
                    return Err(input_error(e));
                }
            };
            if at > seq {
                break;
            }
            let Some(Ok(record)) = self.records.next() else {
                unreachable!("peeked a record")
            };
            if at == seq {
                out.push(record);
            } else {
                self.unmatched += 1;
            }
        }
        Ok(out)
    }

    /// Records left after the last event.
    pub fn rest(&mut self) -> u64 {
        self.unmatched + self.records.by_ref().count() as u64
    }

    /// Why the window holding the record of event `seq` was kept.
    fn reason(&self, seq: u64) -> Option<&str> {
        self.windows
            .iter()
            .find(|w| (w.index_seq_start..=w.index_seq_end).contains(&seq))
            .map(|w| w.reason.as_str())
    }

    /// The comment block of `record`, one string per line.
    pub fn describe(&self, record: &DetailRecord) -> Vec<String> {
        let h = &record.header;
        let what = match h.event_type {
            atf::DETAIL_CALL => "the call".to_owned(),
            atf::DETAIL_RETURN => "the return".to_owned(),
            other => format!("an event of unknown type {other}"),
        };
        let mut lines = vec![match self.reason(u64::from(h.index_seq)) {
            Some(reason) => format!("/* detail of {what} ({})", why(reason)),
            None => format!("/* detail of {what}"),
        }];
        let Some(payload) = DetailPayload::parse(&record.payload) else {
            lines.push(format!(
                " *   {} payload bytes that do not hold the registers and stack of this tracer",
                record.payload.len()
            ));
            lines.push(" */".to_owned());
            return lines;
        };
        for row in DETAIL_REGISTERS
            .iter()
            .zip(payload.registers)
            .collect::<Vec<_>>()
            .chunks(4)
        {
            let mut line = " *  ".to_owned();
            for (name, value) in row {
                let _ = write!(line, " {name:>3} {value:016x} ");
            }
            lines.push(line.trim_end().to_owned());
        }
        let regs = &payload.registers;
        let ret = regs[DETAIL_REGISTERS.len() - 1];
        if self.code.starts_function(regs[0]) {
            // At a `-finstrument-functions` hook's entry rdi is the instrumented function, rsi
            // the call site in its caller.
            lines.push(format!(
                " *   in {}, called from {}",
                self.code.describe(regs[0]),
                self.code.describe(regs[1])
            ));
        } else if h.event_type == atf::DETAIL_RETURN {
            // An entry-only hook's return (the registers as the function returned).
            lines.push(format!(" *   returning to {}", self.code.describe(ret)));
        } else {
            // An entry-only hook (`-pg`, a patched sled): the registers hold the arguments, and
            // the hook returns into the function.
            lines.push(format!(" *   in {}", self.code.describe(ret)));
        }
        let rsp = payload.registers[DETAIL_REGISTERS.len() - 2];
        lines.push(format!(
            " *   stack: {} bytes from rsp {rsp:#x}{}",
            payload.stack.len(),
            if payload.flags & DETAIL_STACK_CLAMPED != 0 {
                " (cut at the top of the thread's stack)"
            } else {
                ""
            }
        ));
        for (i, chunk) in payload.stack.chunks(16).enumerate() {
            let mut line = format!(" *   {:012x} ", rsp.wrapping_add(16 * i as u64));
            for (j, b) in chunk.iter().enumerate() {
                if j == 8 {
                    line.push(' ');
                }
                let _ = write!(line, " {b:02x}");
            }
            for j in chunk.len()..16 {
                line.push_str(if j == 8 { "    " } else { "   " });
            }
            line.push_str("  |");
            line.extend(chunk.iter().map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            }));
            line.push('|');
            lines.push(line);
        }
        lines.push(" */".to_owned());
        lines
    }
}
