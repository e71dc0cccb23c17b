//! The manager over a fake pipeline: phase order, forced fallback, escalation, the summary.
#![allow(non_snake_case)]

mod support;

use shutdown::{
    Budgets, Error, ForceCause, Phase, PhaseStatus, Reason, Shutdown, State, Statistics, Summary,
    TargetFate,
};
use std::time::Duration;
use support::{Act, FakePipeline};

fn run(shutdown: &Shutdown, pipeline: &mut FakePipeline, budgets: &Budgets) -> shutdown::Report {
    shutdown
        .execute_with_notices(pipeline, budgets, &mut |_| {})
        .unwrap()
}

fn statuses(report: &shutdown::Report) -> Vec<(Phase, PhaseStatus)> {
    report
        .phases
        .iter()
        .map(|p| (p.phase, p.status.clone()))
        .collect()
}

#[test]
fn shutdown_mgr__execute__then_phases_in_order() {
    let s = Shutdown::new().unwrap();
    let mut p = FakePipeline::new(4, 10);
    let report = run(&s, &mut p, &Budgets::default());
    assert_eq!(p.calls, Phase::ALL.to_vec());
    assert!(report.clean(), "{report:?}");
    assert_eq!(
        report.reason,
        Reason::Manual,
        "unrequested shutdown is manual"
    );
    assert_eq!(s.state(), State::Done);
    assert_eq!(report.ignored_requests, 0);
    assert!(report.phases.iter().all(|ph| ph.elapsed <= report.total));
}

#[test]
fn shutdown_mgr__stop_threads__then_accepting_false() {
    let s = Shutdown::new().unwrap();
    let mut p = FakePipeline::new(2, 1);
    run(&s, &mut p, &Budgets::default());
    assert!(!p.accepting.load(std::sync::atomic::Ordering::SeqCst));
    assert!(!p.registrations_open);
}

#[test]
fn shutdown_mgr__flush_request__then_buffers_empty() {
    let s = Shutdown::new().unwrap();
    s.request(Reason::Signal(libc::SIGINT));
    let mut p = FakePipeline::new(64, 1000);
    let report = run(&s, &mut p, &Budgets::default());
    assert!(
        p.buffers.iter().all(|&b| b == 0),
        "a thread kept unflushed events"
    );
    assert_eq!(
        (p.submitted, p.persisted),
        (0, 64_000),
        "flushed events were not drained"
    );
    assert!(p.synced && p.cleaned);
    assert_eq!(report.reason, Reason::Signal(libc::SIGINT));
}

#[test]
fn shutdown_mgr__phase_fails__then_forced_fallback_syncs_and_cleans() {
    let s = Shutdown::new().unwrap();
    let mut p = FakePipeline::new(1, 1).with(Phase::Flush, Act::Fail("thread 3 did not answer"));
    let mut notices = Vec::new();
    let report = s
        .execute_with_notices(&mut p, &Budgets::default(), &mut |n| {
            notices.push(n.to_string())
        })
        .unwrap();
    assert_eq!(report.forced, Some(ForceCause::Failed(Phase::Flush)));
    assert_eq!(
        p.calls,
        [
            Phase::StopAcceptance,
            Phase::CloseRegistrations,
            Phase::Flush,
            Phase::Sync,
            Phase::Cleanup
        ]
    );
    assert_eq!(report.skipped().collect::<Vec<_>>(), [Phase::FinalDrain]);
    assert_eq!(
        report.phases[2].status,
        PhaseStatus::Failed("thread 3 did not answer".into())
    );
    assert!(p.synced && p.cleaned);
    assert_eq!(notices, report.notices);
    assert!(
        notices[0].contains("flushing failed: thread 3 did not answer"),
        "{notices:?}"
    );
    assert!(
        notices[1].contains("skipping to syncing and cleanup"),
        "{notices:?}"
    );
}

#[test]
fn shutdown_mgr__phase_overruns__then_skips_to_sync() {
    let s = Shutdown::new().unwrap();
    let budgets = Budgets::default().with(Phase::StopAcceptance, Duration::ZERO);
    let mut p = FakePipeline::new(1, 1).with(Phase::StopAcceptance, Act::Overrun);
    let report = run(&s, &mut p, &budgets);
    assert_eq!(
        report.forced,
        Some(ForceCause::Overran(Phase::StopAcceptance))
    );
    assert_eq!(report.phases[0].status, PhaseStatus::Overran);
    assert_eq!(
        p.calls,
        [Phase::StopAcceptance, Phase::Sync, Phase::Cleanup]
    );
    assert_eq!(report.skipped().count(), 3);
}

#[test]
fn shutdown_mgr__essential_phase_fails__then_cleanup_still_runs() {
    let s = Shutdown::new().unwrap();
    let mut p = FakePipeline::new(1, 1).with(Phase::Sync, Act::Fail("fsync: EIO"));
    let report = run(&s, &mut p, &Budgets::default());
    assert!(p.cleaned);
    assert_eq!(report.forced, None, "nothing was left to skip");
    assert!(!report.clean());
    assert_eq!(
        statuses(&report)[4],
        (Phase::Sync, PhaseStatus::Failed("fsync: EIO".into()))
    );
}

#[test]
fn shutdown_mgr__second_signal__then_forced_fast_exit() {
    let s = Shutdown::new().unwrap();
    s.notify_signal(libc::SIGINT);
    let mut p = FakePipeline::new(1, 1)
        .with(Phase::CloseRegistrations, Act::Signal(libc::SIGINT))
        .signalling(&s);
    let mut notices = Vec::new();
    let report = s
        .execute_with_notices(&mut p, &Budgets::default(), &mut |n| {
            notices.push(n.to_string())
        })
        .unwrap();
    assert_eq!(report.forced, Some(ForceCause::SecondSignal));
    assert_eq!(
        p.calls,
        [
            Phase::StopAcceptance,
            Phase::CloseRegistrations,
            Phase::Sync,
            Phase::Cleanup
        ]
    );
    assert_eq!(
        p.forced_seen,
        [
            (Phase::StopAcceptance, false),
            (Phase::CloseRegistrations, true),
            (Phase::Sync, true),
            (Phase::Cleanup, true)
        ],
        "the phase in progress must see the force flag at once"
    );
    assert_eq!(report.reason, Reason::Signal(libc::SIGINT));
    assert_eq!(report.signals_received, 2);
    assert!(
        notices[0].contains("second signal received: forcing a fast exit"),
        "{notices:?}"
    );
}

/// A phase that stops waiting because a second signal forced the shutdown fails, but the cause
/// the report gives is the signal (found by the simulation: it blamed the phase).
#[test]
fn shutdown_mgr__second_signal_while_phase_waits__then_forced_by_the_signal() {
    let s = Shutdown::new().unwrap();
    s.notify_signal(libc::SIGINT);
    let mut p = FakePipeline::new(1, 1)
        .with(Phase::StopAcceptance, Act::SignalThenGiveUp(libc::SIGTERM))
        .signalling(&s);
    let report = run(&s, &mut p, &Budgets::default());
    assert_eq!(report.forced, Some(ForceCause::SecondSignal));
    assert!(matches!(report.phases[0].status, PhaseStatus::Failed(_)));
    assert_eq!(
        report.skipped().collect::<Vec<_>>(),
        [Phase::CloseRegistrations, Phase::Flush, Phase::FinalDrain]
    );
    assert!(
        report
            .notices
            .iter()
            .any(|n| n.starts_with("second signal received")),
        "{:?}",
        report.notices
    );
}

#[test]
fn shutdown_mgr__request_during_shutdown__then_ignored() {
    let s = Shutdown::new().unwrap();
    s.request(Reason::TargetExited(0));
    let mut p = FakePipeline::new(1, 1);
    let report = run(&s, &mut p, &Budgets::default());
    assert_eq!(s.request(Reason::Timer), shutdown::Outcome::Ignored);
    assert_eq!(report.reason, Reason::TargetExited(0));
    assert!(!s.force_requested(), "only signals escalate");
}

#[test]
fn shutdown_mgr__execute_twice__then_error() {
    let s = Shutdown::new().unwrap();
    let mut p = FakePipeline::new(1, 1);
    run(&s, &mut p, &Budgets::default());
    let again = s
        .clone()
        .execute_with_notices(&mut p, &Budgets::default(), &mut |_| {});
    assert!(matches!(again, Err(Error::AlreadyExecuted)));
    assert_eq!(p.calls.len(), 6, "a second shutdown ran phases");
}

fn redacted(text: &str) -> insta::Settings {
    let _ = text;
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r" *\d+\.\d{3} m?s", " [duration]");
    settings.add_filter(r"pid \d+", "pid [pid]");
    settings.add_filter(
        &regex_escape(&std::env::temp_dir().display().to_string()),
        "[tmp]",
    );
    settings
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '/' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

fn stats(pipeline: &FakePipeline) -> Statistics {
    Statistics {
        events_attempted: pipeline.persisted + 15,
        events_persisted: pipeline.persisted,
        after_stop: 12,
        dropped: vec![("ring full".into(), 3), ("registry full".into(), 0)],
        bytes_written: pipeline.persisted * 32 + 4096,
        ring_waits: 0,
        files_synced: 3,
        threads_flushed: pipeline.buffers.len() as u64,
        target: TargetFate::Exited {
            pid: std::process::id(),
            code: 0,
        },
        stop_signal_sent: Some(libc::SIGTERM),
        output: Some(std::env::temp_dir().join("trace-1")),
    }
}

#[test]
fn shutdown_summary__print__then_correct_format() {
    let s = Shutdown::new().unwrap();
    s.notify_signal(libc::SIGINT);
    s.notify_signal(libc::SIGINT); // coalesced: arrived before the phases began
    let mut p = FakePipeline::new(64, 40_000);
    let report = run(&s, &mut p, &Budgets::default());
    let text = Summary {
        stats: stats(&p),
        report,
    }
    .render();
    redacted(&text).bind(|| insta::assert_snapshot!("summary_clean", text));
}

#[test]
fn shutdown_summary__forced__then_says_what_was_skipped() {
    let s = Shutdown::new().unwrap();
    s.request(Reason::Timer);
    let budgets = Budgets::default().with(Phase::Flush, Duration::ZERO);
    let mut p = FakePipeline::new(8, 5).with(Phase::Flush, Act::Overrun);
    let report = run(&s, &mut p, &budgets);
    let mut st = stats(&p);
    // The 40 flushed events never reached the skipped final drain: unaccounted for.
    st.events_attempted = st.events_persisted + st.events_dropped() + p.submitted;
    st.target = TargetFate::Killed {
        pid: 4242,
        signal: libc::SIGTERM,
    };
    let text = Summary { stats: st, report }.render();
    redacted(&text).bind(|| insta::assert_snapshot!("summary_forced", text));
}

#[test]
fn shutdown_summary__stats__then_accurate() {
    let s = Shutdown::new().unwrap();
    s.request(Reason::TargetCrashed(libc::SIGSEGV));
    let mut p = FakePipeline::new(2, 500_000);
    let report = run(&s, &mut p, &Budgets::default());
    let mut st = stats(&p);
    st.target = TargetFate::Killed {
        pid: 77,
        signal: libc::SIGSEGV,
    };
    st.stop_signal_sent = None;
    let text = Summary { stats: st, report }.render();
    assert!(
        text.starts_with("tracer: shutdown complete: target killed by SIGSEGV\n"),
        "{text}"
    );
    assert!(
        text.contains("persisted                  1,000,000\n"),
        "{text}"
    );
    assert!(
        text.contains("after the stop                    12  not recorded"),
        "{text}"
    );
    assert!(text.contains("(ring full: 3)"), "{text}");
    assert!(
        text.contains(
            "attempted                  1,000,015  = persisted + after the stop + dropped: holds"
        ),
        "{text}"
    );
    assert!(
        text.contains("bytes written          32,004,096 B (30.5 MiB)"),
        "{text}"
    );
    assert!(text.contains("threads flushed        2\n"), "{text}");
    assert!(
        text.contains("target                 pid 77 killed by SIGSEGV\n"),
        "{text}"
    );
    assert!(
        !text.contains("registry full"),
        "zero-count reasons are noise: {text}"
    );
}
