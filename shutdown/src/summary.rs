//! The shutdown summary printed on stderr: why, how long each phase took, what was kept and what
//! was dropped (by reason), and whether the accounting invariant holds.

use crate::phase::{PhaseStatus, Report};
use crate::request::{signal_name, Reason};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// What became of the traced program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetFate {
    /// It exited with this code.
    Exited {
        /// Its pid.
        pid: u32,
        /// Its exit code.
        code: i32,
    },
    /// A signal ended it (a crash, or the stop signal the tracer sent).
    Killed {
        /// Its pid.
        pid: u32,
        /// The signal number.
        signal: i32,
    },
    /// Attach mode: released and still running.
    Detached {
        /// Its pid.
        pid: u32,
    },
    /// Still running: it could not be stopped or released in time.
    StillRunning {
        /// Its pid.
        pid: u32,
    },
    /// Nothing is known (it was never started, say).
    Unknown,
}

/// The figures the tracer gathered from its parts, for the summary. Plain data: fill it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statistics {
    /// Events the target tried to record (all lanes).
    pub events_attempted: u64,
    /// Events in the files.
    pub events_persisted: u64,
    /// Events not recorded because the program made them after acceptance stopped (the
    /// manifest's `shutdown` reason): the stop working as intended, not a loss. Includes an event
    /// a thread was writing when it died (never published) or gave up waiting for ring space.
    pub after_stop: u64,
    /// Events lost, by reason name (`"ring full"`, `"not written"`...), in display order; those
    /// made after the stop are [`Statistics::after_stop`], not here.
    pub dropped: Vec<(String, u64)>,
    /// Bytes written to the trace files.
    pub bytes_written: u64,
    /// Times a traced thread found its rings full and waited for the drain (0: the drain kept
    /// up with every thread).
    pub ring_waits: u64,
    /// Files (and directories) fsynced.
    pub files_synced: u64,
    /// Threads whose rings were flushed.
    pub threads_flushed: u64,
    /// What became of the target.
    pub target: TargetFate,
    /// The signal the tracer sent the target to stop it, if any.
    pub stop_signal_sent: Option<i32>,
    /// Where the trace was written.
    pub output: Option<PathBuf>,
}

impl Default for Statistics {
    fn default() -> Self {
        Self {
            events_attempted: 0,
            events_persisted: 0,
            after_stop: 0,
            dropped: Vec::new(),
            bytes_written: 0,
            ring_waits: 0,
            files_synced: 0,
            threads_flushed: 0,
            target: TargetFate::Unknown,
            stop_signal_sent: None,
            output: None,
        }
    }
}

impl Statistics {
    /// Total lost, all reasons ([`Statistics::after_stop`] not included).
    pub fn events_dropped(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }

    /// `attempted == persisted + after the stop + dropped`.
    pub fn invariant_holds(&self) -> bool {
        self.events_persisted
            .checked_add(self.after_stop)
            .and_then(|n| n.checked_add(self.events_dropped()))
            == Some(self.events_attempted)
    }
}

/// The manager's report plus the pipeline's figures: everything the summary shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// What the manager did.
    pub report: Report,
    /// What the pipeline counted.
    pub stats: Statistics,
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn duration(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.3} s", d.as_secs_f64())
    } else {
        format!("{:.3} ms", d.as_secs_f64() * 1e3)
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{} B ({v:.1} {})", thousands(n), UNITS[unit])
}

impl Summary {
    /// The summary as people read it (one item per line, two-space indents, no trailing blank).
    pub fn render(&self) -> String {
        let (r, s) = (&self.report, &self.stats);
        let mut out = String::new();
        let verdict = if r.forced.is_some() {
            "forced shutdown"
        } else if r.clean() {
            "shutdown complete"
        } else {
            "shutdown completed with errors"
        };
        let _ = writeln!(out, "tracer: {verdict}: {}", r.reason);
        let _ = writeln!(out, "  total                  {}", duration(r.total));
        out.push_str("  phases\n");
        for p in &r.phases {
            let status = match &p.status {
                PhaseStatus::Completed => "ok".to_string(),
                PhaseStatus::Overran => {
                    format!("overran its {} budget", duration(p.budget))
                }
                PhaseStatus::Failed(e) => format!("failed: {e}"),
                PhaseStatus::Skipped => "skipped".to_string(),
            };
            let time = if p.status == PhaseStatus::Skipped {
                "-".to_string()
            } else {
                duration(p.elapsed)
            };
            let _ = writeln!(out, "    {:<23}{:>12}  {status}", p.phase.to_string(), time);
        }
        if let Some(cause) = &r.forced {
            let skipped: Vec<String> = r.skipped().map(|p| p.to_string()).collect();
            if skipped.is_empty() {
                let _ = writeln!(out, "  forced by {cause}; nothing was left to skip");
            } else {
                let _ = writeln!(out, "  forced by {cause}; skipped: {}", skipped.join(", "));
            }
        }
        out.push_str("  events\n");
        let _ = writeln!(
            out,
            "    persisted            {:>15}",
            thousands(s.events_persisted)
        );
        if s.after_stop > 0 {
            let _ = writeln!(
                out,
                "    after the stop       {:>15}  not recorded: made after acceptance stopped",
                thousands(s.after_stop)
            );
        }
        let dropped = s.events_dropped();
        let by_reason: Vec<String> = s
            .dropped
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(why, n)| format!("{why}: {}", thousands(*n)))
            .collect();
        if by_reason.is_empty() {
            let _ = writeln!(out, "    dropped              {:>15}", thousands(dropped));
        } else {
            let _ = writeln!(
                out,
                "    dropped              {:>15}  ({})",
                thousands(dropped),
                by_reason.join(", ")
            );
        }
        let terms = if s.after_stop > 0 {
            "persisted + after the stop + dropped"
        } else {
            "persisted + dropped"
        };
        let check = if s.invariant_holds() {
            format!("= {terms}: holds")
        } else {
            let accounted =
                u128::from(s.events_persisted) + u128::from(s.after_stop) + u128::from(dropped);
            let diff = u128::from(s.events_attempted).abs_diff(accounted);
            let what = if accounted < u128::from(s.events_attempted) {
                "unaccounted for"
            } else {
                "counted twice"
            };
            format!("≠ {terms}: BROKEN, {diff} events {what}")
        };
        let _ = writeln!(
            out,
            "    attempted            {:>15}  {check}",
            thousands(s.events_attempted)
        );
        let _ = writeln!(out, "  bytes written          {}", bytes(s.bytes_written));
        let _ = writeln!(out, "  waits for ring space   {}", thousands(s.ring_waits));
        let _ = writeln!(
            out,
            "  files synced           {}",
            thousands(s.files_synced)
        );
        let _ = writeln!(
            out,
            "  threads flushed        {}",
            thousands(s.threads_flushed)
        );
        let sent = s
            .stop_signal_sent
            .map(|sig| format!(" (after {} from the tracer)", signal_name(sig)))
            .unwrap_or_default();
        let target = match &s.target {
            TargetFate::Exited { pid, code } => format!("pid {pid} exited with code {code}{sent}"),
            TargetFate::Killed { pid, signal } if s.stop_signal_sent == Some(*signal) => {
                format!(
                    "pid {pid} ended by {} from the tracer",
                    signal_name(*signal)
                )
            }
            TargetFate::Killed { pid, signal }
                if s.stop_signal_sent.is_none() && r.reason == Reason::Signal(*signal) =>
            {
                // The tracer did not send it: the signal reached the whole process group (a
                // terminal's Ctrl-C, `timeout`, `kill -- -PGID`).
                format!(
                    "pid {pid} killed by {}, which reached it too (sent to the process group)",
                    signal_name(*signal)
                )
            }
            TargetFate::Killed { pid, signal } => {
                format!("pid {pid} killed by {}{sent}", signal_name(*signal))
            }
            TargetFate::Detached { pid } => format!("pid {pid} released, still running"),
            TargetFate::StillRunning { pid } => {
                format!("pid {pid} still running: it could not be stopped{sent}")
            }
            TargetFate::Unknown => "unknown".to_string(),
        };
        let _ = writeln!(out, "  target                 {target}");
        if let Some(path) = &s.output {
            let _ = writeln!(out, "  output                 {}", path.display());
        }
        if r.signals_received > 0 || r.ignored_requests > 0 {
            let _ = writeln!(
                out,
                "  signals received       {} ({} later request{} ignored)",
                r.signals_received,
                r.ignored_requests,
                if r.ignored_requests == 1 { "" } else { "s" }
            );
        }
        out
    }

    /// Writes [`Summary::render`] to stderr in one write.
    pub fn print(&self) {
        use std::io::Write as _;
        let _ = std::io::stderr().lock().write_all(self.render().as_bytes());
    }
}

#[cfg(all(test, not(feature = "loom")))]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    #[test]
    fn thousands__groups__then_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn statistics__invariant__then_checked() {
        let mut s = Statistics {
            events_attempted: 10,
            events_persisted: 7,
            after_stop: 2,
            dropped: vec![("ring full".into(), 1)],
            ..Statistics::default()
        };
        assert!(s.invariant_holds());
        s.events_attempted = 11;
        assert!(!s.invariant_holds());
        s.events_persisted = u64::MAX;
        assert!(!s.invariant_holds(), "overflow must not pass");
    }
}
