//! `tracer info`: what a session holds — target, recording times, stop reason, threads, the
//! accounting invariant (attempted = persisted + dropped) per thread and in total, and the files.
//! Besides the manifest and the file headers it reads only what opening a session verifies (every
//! file's checksum and events, see `docs/format.md`); its warnings list what that found.

use std::io::{self, Write};
use std::path::Path;

use atf::{Counts, Drops, TargetFate};

use super::text::clean;
use super::time::{bytes, short, wall, Duration};
use super::time_span;

/// Writes the description of `session`.
pub(crate) fn write(session: &atf::Session, out: &mut dyn Write) -> io::Result<()> {
    let m = &session.manifest;
    let unknown = "not recorded";
    writeln!(
        out,
        "Session       {}",
        clean(&session.dir.to_string_lossy())
    )?;
    let mut target = if m.executable.is_empty() {
        unknown.to_owned()
    } else {
        m.executable.clone()
    };
    for arg in m.argv.iter().skip(1) {
        target.push(' ');
        target.push_str(arg);
    }
    writeln!(out, "Target        {target}")?;
    writeln!(out, "Process id    {}", m.target_pid)?;
    match (m.wall_start_unix_ns, m.wall_end_unix_ns) {
        (0, _) => writeln!(out, "Recorded      {unknown}")?,
        (start, Some(end)) => writeln!(
            out,
            "Recorded      {} to {} ({})",
            wall(start),
            wall(end),
            short(end.saturating_sub(start))
        )?,
        (start, None) => writeln!(out, "Recorded      from {} (no end recorded)", wall(start))?,
    }
    let (first, last) = time_span(session);
    let clock = match &m.clock {
        Some(c) => format!("{}, stamped with {}", c.name, c.source),
        None => match atf::ClockType::from_raw(m.clock_type) {
            Some(atf::ClockType::Boottime) => "CLOCK_BOOTTIME".to_owned(),
            Some(other) => format!("{other:?}"),
            None => format!("unknown clock type {}", m.clock_type),
        },
    };
    writeln!(
        out,
        "Events span   {} (first to last event)",
        short(last - first)
    )?;
    writeln!(out, "Clock         {clock}")?;
    writeln!(
        out,
        "Stopped by    {}",
        m.stop_reason.as_deref().unwrap_or(unknown)
    )?;
    writeln!(out, "Target fate   {}", fate(m.target_fate.as_ref()))?;
    writeln!(
        out,
        "Finished      {}",
        if m.finished {
            "yes"
        } else {
            "no: the tracer was killed or is still recording; complete events were recovered"
        }
    )?;
    if !m.tracer_version.is_empty() {
        writeln!(out, "Tracer        {}", m.tracer_version)?;
    }

    if !session.warnings.is_empty() {
        writeln!(out, "\nWarnings ({})", session.warnings.len())?;
        for w in super::warnings(session) {
            writeln!(out, "  ! {w}")?;
        }
    }

    writeln!(out, "\nThreads ({})", session.threads.len())?;
    writeln!(
        out,
        "  {:>8}  {:>12}  {:>14}  {:>10}",
        "TID", "Events", "Detail records", "Span"
    )?;
    for t in &session.threads {
        let (s, e) = t.index.time_range();
        writeln!(
            out,
            "  {:>8}  {:>12}  {:>14}  {}",
            t.id,
            t.index.event_count(),
            t.detail.as_ref().map_or(0, |d| d.record_count()),
            Duration(e.saturating_sub(s))
        )?;
    }

    let totals_of_threads = m.thread_totals();
    for (lane, total, threads_total, of) in [
        (
            "index events",
            &m.accounting.index,
            &totals_of_threads.index,
            (|t: &atf::ThreadEntry| &t.index) as fn(&atf::ThreadEntry) -> &Counts,
        ),
        (
            "detail records",
            &m.accounting.detail,
            &totals_of_threads.detail,
            |t: &atf::ThreadEntry| &t.detail,
        ),
    ] {
        if lane == "detail records" && total.attempted == 0 && threads_total.attempted == 0 {
            continue;
        }
        writeln!(
            out,
            "\nAccounting of {lane} (attempted = persisted + dropped)"
        )?;
        writeln!(
            out,
            "  {:>8}  {:>12}  {:>12}  {:>12}  {:<10}  Dropped by reason",
            "TID", "Attempted", "Persisted", "Dropped", "Check"
        )?;
        let mut unbalanced = Vec::new();
        for t in &m.threads {
            counts_row(out, &t.id.to_string(), of(t), &mut unbalanced)?;
        }
        counts_row(out, "total", total, &mut unbalanced)?;
        if unbalanced.is_empty() {
            writeln!(out, "  \u{2713} balanced for every thread and in total")?;
        }
        if total.dropped.shutdown > 0 {
            writeln!(
                out,
                "  shutdown: not recorded, made after acceptance stopped (not a loss); every other \
                 reason is a loss"
            )?;
        }
        for line in unbalanced {
            writeln!(out, "  UNBALANCED: {line}")?;
        }
        if total != threads_total {
            writeln!(
                out,
                "  note: the total differs from the sum of the threads ({} attempted, {} persisted)",
                threads_total.attempted, threads_total.persisted
            )?;
        }
        if lane == "index events" {
            for t in &session.threads {
                let listed = m.threads.iter().find(|e| e.id == t.id);
                let persisted = listed.map_or(0, |e| e.index.persisted);
                if listed.is_some() && persisted != t.index.event_count() {
                    writeln!(
                        out,
                        "  note: thread {}: its file holds {} events, the manifest says {} persisted{}",
                        t.id,
                        t.index.event_count(),
                        persisted,
                        if m.finished {
                            ""
                        } else {
                            " (the manifest is not final)"
                        }
                    )?;
                }
            }
        }
    }

    let files = list_files(&session.dir);
    let total: u64 = files.iter().map(|f| f.1).sum();
    writeln!(out, "\nFiles ({}, {})", files.len(), bytes(total))?;
    for (name, size) in &files {
        let name = clean(name);
        writeln!(out, "  {name:<28} {size:>14}  {}", bytes(*size))?;
    }
    Ok(())
}

/// One accounting row; an unbalanced one is also described in `unbalanced`.
fn counts_row(
    out: &mut dyn Write,
    who: &str,
    c: &Counts,
    unbalanced: &mut Vec<String>,
) -> io::Result<()> {
    let dropped = c.dropped.total();
    let mark = if c.balanced() {
        "\u{2713}"
    } else {
        "UNBALANCED"
    };
    writeln!(
        out,
        "  {who:>8}  {:>12}  {:>12}  {dropped:>12}  {mark:<10}  {}",
        c.attempted,
        c.persisted,
        reasons(&c.dropped)
    )?;
    if !c.balanced() {
        let missing = i128::from(c.attempted) - i128::from(c.persisted) - i128::from(dropped);
        unbalanced.push(format!(
            "{who}: attempted {} != persisted {} + dropped {dropped} ({} {})",
            c.attempted,
            c.persisted,
            missing.abs(),
            if missing > 0 {
                "events unaccounted for"
            } else {
                "more than attempted"
            }
        ));
    }
    Ok(())
}

/// `ring_full 3, shutdown 1`, or `-`.
fn reasons(d: &Drops) -> String {
    let mut parts: Vec<String> = [
        ("ring_full", d.ring_full),
        ("shutdown", d.shutdown),
        ("registry_full", d.registry_full),
        ("agent_setup", d.agent_setup),
        ("reentrant", d.reentrant),
        ("thread_teardown", d.thread_teardown),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(r, n)| format!("{r} {n}"))
    .collect();
    parts.extend(
        d.other
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} {n}")),
    );
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

fn fate(f: Option<&TargetFate>) -> String {
    match f {
        None => "not recorded".to_owned(),
        Some(TargetFate::Exited { code }) => format!("exited with status {code}"),
        Some(TargetFate::Signaled {
            signal,
            core_dumped,
        }) => format!(
            "killed by signal {signal}{}{}",
            Some(shutdown::signal_name(*signal))
                .filter(|n| n.starts_with("SIG"))
                .map_or(String::new(), |n| format!(" ({n})")),
            if *core_dumped { ", core dumped" } else { "" }
        ),
        Some(TargetFate::Running) => "still running (the tracer detached)".to_owned(),
        Some(TargetFate::Unknown) => "unknown".to_owned(),
    }
}

/// Files of the pid directory and of its subdirectories, as `(relative path, size)`, sorted.
fn list_files(dir: &Path) -> Vec<(String, u64)> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let Ok(inner) = std::fs::read_dir(entry.path()) else {
                continue;
            };
            for f in inner.flatten() {
                if let Ok(m) = f.metadata() {
                    if m.is_file() {
                        files.push((
                            format!("{name}/{}", f.file_name().to_string_lossy()),
                            m.len(),
                        ));
                    }
                }
            }
        } else if meta.is_file() {
            files.push((name, meta.len()));
        }
    }
    files.sort();
    files
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn info_text(s: &TestSession) -> String {
        let mut out = Vec::new();
        write(&s.open(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn info__finished_session__then_snapshot() {
        let s = TestSession::with(
            &[(7, simple_tree(1_000)), (4242, joined_stream())],
            true,
            |m| {
                m.threads[0].index.dropped.ring_full = 1;
                m.threads[0].index.attempted += 1;
                m.threads[1].detail.attempted = 3;
                m.threads[1].detail.persisted = 3;
                m.accounting = m.thread_totals();
            },
        );
        let text = info_text(&s);
        assert!(text.contains("\u{2713} balanced"), "{text}");
        insta::with_settings!({filters => path_filters()}, {
            insta::assert_snapshot!("info_finished", text);
        });
    }

    #[test]
    fn info__killed_session_with_corrupt_thread__then_warnings_unbalanced_and_no_panic() {
        let s = TestSession::with(&[(7, joined_stream())], false, |m| {
            m.threads[0].index.attempted = 10;
            m.accounting = m.thread_totals();
            m.target_fate = Some(TargetFate::Signaled {
                signal: libc::SIGSEGV,
                core_dumped: true,
            });
        });
        std::fs::create_dir(s.layout.thread_dir(9)).unwrap();
        std::fs::write(s.layout.index_path(9), [0xffu8; 100]).unwrap();
        let text = info_text(&s);
        assert!(text.contains("UNBALANCED: 7: attempted 10"), "{text}");
        assert!(text.contains("not an ATC event file"), "{text}");
        assert!(text.contains("SIGSEGV"), "{text}");
        insta::with_settings!({filters => path_filters()}, {
            insta::assert_snapshot!("info_killed", text);
        });
    }
}
