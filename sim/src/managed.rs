//! One simulated recording stopped by the real shutdown manager, and the checks run on every
//! schedule.
//!
//! Threads, besides the producers: the drain (passes until the phases command it), a manager that
//! starts the duration timer (`timer::Timer` on [`Shuttle`], a random duration in virtual time, or
//! none), waits for a request ([`Shutdown::wait`]), cancels the timer and runs
//! [`Shutdown::execute`] over `SimPipeline` (on [`Shuttle`]), and a signal injector calling
//! [`Shutdown::notify_signal`] (the handler's body) zero to three times at random points: after a
//! few steps, after some events, or once the shutdown has reached a given phase. The last producer
//! to end requests [`Reason::TargetExited`]. Budgets are generous or, in one schedule in four, a
//! few milliseconds, so phases overrun or give up and the shutdown turns forced; the drain's fsync
//! is sometimes slow.
//!
//! With [`Scenario::dies_mid_write`] ([`Scenario::managed_dying`]), one thread is killed inside a
//! write section at a random event (the target dying of a terminal's Ctrl-C): it never leaves
//! the section, the other threads stop before their next event, and the target's crash requests
//! the shutdown. Stopping acceptance asks a watch whether each thread it waits for still lives,
//! as `tracer record` does, so the dead thread's section is not waited for and the full
//! invariants hold: every event published before the death is persisted.
//!
//! The phases do what `tracer record`'s do (`cli/src/record.rs`): stopping acceptance stops the
//! drain's passes, then runs the registry's stop handshake until no thread is inside a write or the
//! budget is spent (an error: the shutdown turns forced); closing registrations likewise. These
//! waits poll, so a second signal cuts them short as [`PhaseContext::should_stop`] asks (`tracer
//! record` waits the remaining budget in one call). Flushing is one drain pass and the final drain
//! the drain's final drain, each waited for within the budget; syncing has the drain write the
//! final manifest and sync ([`drain::Drain::finish`]), waited for without bound; cleanup stops the
//! target (its threads stop before their next event).
//!
//! # What a forced shutdown guarantees
//!
//! When a graceful phase fails or overruns, or a second signal arrives once the phases have begun,
//! the remaining graceful phases are skipped and syncing and cleanup run, as in `tracer record`:
//! the drain writes the final manifest without a final drain, possibly before acceptance stopped
//! (the target still writing). Then, checked on every such schedule: the manifest is finished and
//! balanced per thread and in total (`attempted = persisted + dropped by reason`, accepted events
//! left in the lanes named `not_written`); every index file is readable and holds a prefix of its
//! thread's accepted events, in order, each once; the manifest's `persisted` is what the reader
//! finds; no thread is counted for more events than it attempted; if the stop handshake
//! completed, every drop the manifest counts is one its thread saw. Not guaranteed: that accepted
//! events are persisted, nor that events attempted after the manifest's snapshot are counted, nor,
//! when the handshake did not complete, that drops have their true reason: `Drain::finish` takes an
//! attempt in flight at its snapshot for a shutdown drop even if the thread then accepts it (seen
//! before syncing stopped acceptance first; its replay now passes, and 4 000 schedules with
//! [`Scenario::strict_forced_drops`] passed, but the campaigns do not check it by default: a
//! thread still inside a write when the zero-wait stop is taken may accept its event after it).
//! Found this way and fixed in `ring`: an index file after a forced shutdown that was not a
//! prefix (a reused ring's events written before an earlier ring's; pinned by a replay test).
//! When every graceful phase returned (in time or late), the recording's full invariants hold:
//! every accepted event persisted, once, in order, and the manifest agrees with each thread.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shuttle::rand::Rng;
use shuttle::sync::mpsc;
use shuttle::thread;

use registry::RegistryError;
use shutdown::{
    Budgets, ForceCause, Outcome as Request, Phase, PhaseContext, PhaseStatus, Pipeline, Reason,
    Report, Shutdown, State,
};
use timer::Timer;

use crate::checks;
use crate::clock;
use crate::scenario::Scenario;
use crate::world::{self, Fate, Ledger, Shared};
use modelsync::Shuttle;

/// A phase's bounded waits poll this often (virtual time).
const POLL: Duration = Duration::from_millis(1);
/// The most signals the injector sends.
const MAX_SIGNALS: u32 = 3;
/// The tight budget of one schedule in four.
const TIGHT: Duration = Duration::from_millis(4);

type Ctx<'a> = PhaseContext<'a, Shuttle>;

/// A request someone made, what became of it, and the state the requester saw right after.
#[derive(Debug, Clone)]
struct Made {
    reason: Reason,
    outcome: Request,
    after: State,
}

/// What the threads saw, for the checks. A std mutex, held only between scheduling points.
#[derive(Debug, Default)]
struct Log {
    requests: Vec<Made>,
    /// When the timer's callback ran (virtual time).
    fired_at: Option<Instant>,
}

type SharedLog = Arc<Mutex<Log>>;

fn record(log: &SharedLog, made: Made) {
    log.lock().expect("log lock").requests.push(made);
}

/// What the manager asks of the drain thread.
#[derive(Debug)]
enum Command {
    /// Stop the passes (the drain thread stays, serving commands).
    Pause,
    /// One pass (flushing).
    Pass,
    /// The final drain.
    Final,
    /// The final manifest and sync, with this stop reason; the drain thread then ends.
    Finish(String),
}

/// The drain thread's answers, one per command.
#[derive(Debug)]
enum Reply {
    Paused,
    Passed(Result<(), String>),
    Drained(Result<(), String>),
    Finished(Result<Box<drain::Report>, String>),
}

/// The drain thread's side of the conversation with the manager.
struct DrainLine {
    commands: mpsc::Receiver<Command>,
    replies: mpsc::Sender<Reply>,
    /// What the final fsync costs in virtual time.
    slow_fsync: Duration,
    /// The faulty file system the drain writes through, if any.
    fs: Option<Arc<atf::fault::FaultyFs>>,
}

/// The drain thread: passes (with the scenario's pauses) until paused, then one command at a time.
/// A failed pass requests the shutdown with the error and stops the passes, as `tracer record`'s
/// drain thread does. Returns every error the drain returned.
fn drain_thread(
    shared: &Shared,
    scenario: &Scenario,
    out: &Path,
    line: DrainLine,
    shutdown: &Shutdown<Shuttle>,
    log: &SharedLog,
) -> Vec<drain::DrainError> {
    let DrainLine {
        commands,
        replies,
        slow_fsync,
        fs,
    } = line;
    let mut errors = Vec::new();
    let mut keep = |r: Result<(), drain::DrainError>| {
        r.map_err(|e| {
            // What the tracer shows: the error and its causes, on one line.
            let text = shutdown::error_chain(&e);
            errors.push(e);
            text
        })
    };
    let reg = shared.view();
    let mut layout = atf::SessionLayout::create(out, 1).expect("creating the session");
    if let Some(fs) = fs {
        layout = layout.with_fs(fs);
    }
    let mut drain = drain::Drain::new(reg, layout, atf::Manifest::new(atf::ClockType::Boottime))
        .expect("starting the drain");
    let mut passing = true;
    loop {
        let command = if passing {
            match commands.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => break,
            }
        } else {
            match commands.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            }
        };
        let reply = match command {
            None => {
                if let Err(e) = keep(drain.pass().map(drop)) {
                    request_logged(shutdown, log, Reason::Error(e));
                    passing = false;
                }
                let pause = shuttle::rand::thread_rng().gen_range(0..=scenario.drain_pause);
                for _ in 0..pause {
                    thread::yield_now();
                }
                thread::yield_now();
                continue;
            }
            Some(Command::Pause) => {
                passing = false;
                Reply::Paused
            }
            Some(Command::Pass) => Reply::Passed(keep(drain.pass().map(drop))),
            Some(Command::Final) => Reply::Drained(keep(drain.final_drain(false))),
            Some(Command::Finish(stop_reason)) => {
                clock::advance(slow_fsync);
                let outcome = drain::Outcome {
                    stop_reason,
                    ..drain::Outcome::default()
                };
                let finished = match drain.finish(&outcome) {
                    Ok(report) => Ok(Box::new(report)),
                    Err(e) => Err(keep(Err(e)).unwrap_err()),
                };
                let _ = replies.send(Reply::Finished(finished));
                break;
            }
        };
        if replies.send(reply).is_err() {
            break;
        }
    }
    errors
}

/// The recording's parts as the shutdown phases drive them (see the module documentation).
struct SimPipeline {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    replies: mpsc::Receiver<Reply>,
    /// Set by cleanup: the target's threads stop before their next event.
    killed: Arc<AtomicBool>,
    /// Calls per phase, in [`Phase::ALL`] order.
    calls: [u32; 6],
    /// What the drain's finish returned.
    finished: Option<Result<drain::Report, String>>,
    /// Why the shutdown came, for the manifest (set by the manager, as `tracer record` does).
    reason: Option<Reason>,
    /// A graceful phase gave up waiting because the shutdown was forced (a second signal).
    gave_up_forced: bool,
    /// A phase stopped waiting for the drain's reply (its error, if any, reaches nobody).
    abandoned_reply: bool,
}

/// A phase's failure: an error value (kept with its causes) or a message.
fn phase_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> shutdown::Error {
    shutdown::Error::phase(e)
}

impl SimPipeline {
    fn send(&self, command: Command) -> Result<(), shutdown::Error> {
        self.commands
            .send(command)
            .map_err(|_| phase_error("the drain thread ended abnormally"))
    }

    /// The reply `wanted` picks, skipping replies to commands whose wait gave up; within `ctx`'s
    /// budget when given (`None` once it is spent), else for as long as it takes.
    fn reply<T>(&self, ctx: Option<&Ctx<'_>>, wanted: impl Fn(Reply) -> Option<T>) -> Option<T> {
        loop {
            let reply = match ctx {
                None => self.replies.recv().ok()?,
                Some(ctx) => match self.replies.try_recv() {
                    Ok(r) => r,
                    Err(mpsc::TryRecvError::Disconnected) => return None,
                    Err(mpsc::TryRecvError::Empty) => {
                        if ctx.should_stop() {
                            return None;
                        }
                        clock::pause(POLL);
                        continue;
                    }
                },
            };
            if let Some(r) = wanted(reply) {
                return Some(r);
            }
        }
    }

    /// One drain step of the phases: sends `command` and waits for its reply (`wanted`); a reply
    /// that does not come before the phase's budget is `late` and gives up.
    fn drain_step(
        &mut self,
        ctx: &Ctx<'_>,
        command: Command,
        late: &'static str,
        wanted: impl Fn(Reply) -> Option<Result<(), String>>,
    ) -> Result<(), shutdown::Error> {
        self.called(ctx);
        self.send(command)?;
        match self.reply(Some(ctx), wanted) {
            Some(r) => r.map_err(phase_error),
            None => {
                self.abandoned_reply = true;
                Err(self.gave_up(ctx, late))
            }
        }
    }

    /// The phase's error after it stopped waiting: forced, or out of budget.
    fn gave_up(
        &mut self,
        ctx: &Ctx<'_>,
        what: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> shutdown::Error {
        if ctx.forced() {
            self.gave_up_forced = true;
        }

        phase_error(what)
    }

    fn called(&mut self, ctx: &Ctx<'_>) {
        let i = Phase::ALL
            .iter()
            .position(|&p| p == ctx.phase())
            .expect("a known phase");
        self.calls[i] += 1;
    }
}

impl Pipeline<Shuttle> for SimPipeline {
    fn stop_acceptance(&mut self, ctx: &Ctx<'_>) -> Result<(), shutdown::Error> {
        self.called(ctx);
        // As `tracer record`: the drain's passes stop first (it ends its current pass).
        self.send(Command::Pause)?;
        self.reply(None, |r| matches!(r, Reply::Paused).then_some(()))
            .ok_or_else(|| phase_error("the drain thread ended abnormally"))?;
        let reg = self.shared.view();
        loop {
            // As `tracer record`, a thread that died inside its write section is not waited for.
            let report = reg.stop_accepting_with(
                POLL,
                &mut DeathWatch {
                    shared: &self.shared,
                },
            );
            if report.stragglers.is_empty() {
                return Ok(());
            }
            if ctx.should_stop() {
                let n = report.stragglers.len();
                return Err(self.gave_up(ctx, format!("{n} thread(s) stayed inside a write")));
            }
            clock::pause(POLL);
        }
    }

    fn close_registrations(&mut self, ctx: &Ctx<'_>) -> Result<(), shutdown::Error> {
        self.called(ctx);
        let reg = self.shared.view();
        loop {
            match reg.close_registrations(POLL) {
                Ok(()) => return Ok(()),
                Err(RegistryError::ClaimInFlight { .. }) if !ctx.should_stop() => {
                    clock::pause(POLL)
                }
                Err(e @ RegistryError::ClaimInFlight { .. }) => return Err(self.gave_up(ctx, e)),
                Err(e) => return Err(phase_error(e)),
            }
        }
    }

    fn flush(&mut self, ctx: &Ctx<'_>) -> Result<(), shutdown::Error> {
        self.drain_step(
            ctx,
            Command::Pass,
            "the drain's pass did not end in time",
            |r| match r {
                Reply::Passed(r) => Some(r),
                _ => None,
            },
        )
    }

    fn final_drain(&mut self, ctx: &Ctx<'_>) -> Result<(), shutdown::Error> {
        self.drain_step(
            ctx,
            Command::Final,
            "the final drain did not end in time",
            |r| match r {
                Reply::Drained(r) => Some(r),
                _ => None,
            },
        )
    }

    fn sync(&mut self, ctx: &Ctx<'_>) -> Result<(), shutdown::Error> {
        self.called(ctx);
        let reason = self
            .reason
            .as_ref()
            .map_or_else(|| "stopped".to_string(), Reason::to_string);
        // As `tracer record`: a shutdown forced before its stop handshake stops acceptance now,
        // without waiting, so the final count snapshot is taken after the stop.
        let reg = self.shared.view();
        if reg.is_accepting() {
            let _ = reg.stop_accepting(Duration::ZERO);
        }
        self.send(Command::Finish(reason))?;
        let finished = self
            .reply(None, |r| match r {
                Reply::Finished(r) => Some(r),
                _ => None,
            })
            .ok_or_else(|| phase_error("the drain thread ended abnormally"))?;
        let result = finished
            .as_ref()
            .map(drop)
            .map_err(|e| phase_error(e.as_str()));
        self.finished = Some(finished.map(|r| *r));
        result
    }

    fn cleanup(&mut self, ctx: &Ctx<'_>) -> Result<(), shutdown::Error> {
        self.called(ctx);
        self.killed.store(true, Relaxed);
        Ok(())
    }
}

/// The target ended (`reason`): the virtual clock learns it, the shutdown is requested as
/// `tracer record` requests it on the target's exit, and the request is logged.
fn target_ended(shutdown: &Shutdown<Shuttle>, log: &SharedLog, reason: Reason) {
    clock::target_ended();
    request_logged(shutdown, log, reason);
}

/// Requests the shutdown for `reason` and logs the request, its outcome and the state after it.
fn request_logged(shutdown: &Shutdown<Shuttle>, log: &SharedLog, reason: Reason) {
    let outcome = shutdown.request(reason.clone());
    let after = shutdown.state();
    record(
        log,
        Made {
            reason,
            outcome,
            after,
        },
    );
}

/// Schedules in which a thread died inside a write section (all tests of the process).
pub(crate) static DEATHS: AtomicU64 = AtomicU64::new(0);
/// Of those, schedules whose stop handshake completed.
pub(crate) static STOPPED_AFTER_DEATH: AtomicU64 = AtomicU64::new(0);

/// The stop handshake's view of the simulated target: a thread is dead once it said so (the
/// kernel's exit comes after the thread's last store); never cancelled (the phase polls).
struct DeathWatch<'a> {
    shared: &'a Shared,
}

impl registry::StopWatch for DeathWatch<'_> {
    fn owner_alive(&mut self, slot: &registry::SlotInfo) -> bool {
        !self
            .shared
            .dead
            .lock()
            .expect("dead lock")
            .contains(&slot.tid)
    }

    fn cancelled(&mut self) -> bool {
        false
    }
}

/// What the manager thread hands back.
struct ManagerEnd {
    woke: Reason,
    /// The timer's deadline and what its cancel returned.
    timer: Option<(Instant, timer::Outcome)>,
    report: Report,
    calls: [u32; 6],
    finished: Option<Result<drain::Report, String>>,
    gave_up_forced: bool,
    abandoned_reply: bool,
}

/// The manager: starts the timer, waits for a request, cancels the timer, runs the phases once.
fn manager(
    shutdown: Shutdown<Shuttle>,
    mut pipeline: SimPipeline,
    budgets: Budgets,
    timer: Option<Duration>,
    log: SharedLog,
) -> ManagerEnd {
    let timer = timer.map(|d| {
        let (s, log) = (shutdown.clone(), log.clone());
        Timer::<Shuttle>::start_on(d, move || {
            let at = clock::now();
            let outcome = s.request(Reason::Timer);
            let after = s.state();
            let mut log = log.lock().expect("log lock");
            log.fired_at = Some(at);
            log.requests.push(Made {
                reason: Reason::Timer,
                outcome,
                after,
            });
        })
        .expect("starting the timer")
    });
    let woke = shutdown
        .wait(None)
        .expect("waiting for a request")
        .expect("woken without a request");
    pipeline.reason = Some(woke.clone());
    let timer_end = timer.as_ref().map(|t| {
        let outcome = t.cancel();
        // Fired means the callback finished: its record is there now.
        let fired_at = log.lock().expect("log lock").fired_at;
        assert_eq!(
            fired_at.is_some(),
            outcome == timer::Outcome::Fired,
            "the timer's cancel returned {outcome:?}, its callback ran: {fired_at:?}"
        );
        (t.deadline(), outcome)
    });
    let report = shutdown
        .execute_with_notices(&mut pipeline, &budgets, &mut |_| {})
        .expect("the phases ran");
    let again = shutdown.execute_with_notices(&mut pipeline, &budgets, &mut |_| {});
    assert!(
        matches!(again, Err(shutdown::Error::AlreadyExecuted)),
        "a second execute ran: {again:?}"
    );
    drop(timer); // joins the timer thread
    ManagerEnd {
        woke,
        timer: timer_end,
        report,
        calls: pipeline.calls,
        finished: pipeline.finished.take(),
        gave_up_forced: pipeline.gave_up_forced,
        abandoned_reply: pipeline.abandoned_reply,
    }
}

/// The signal injector: up to [`MAX_SIGNALS`] SIGINT/SIGTERM, each after a random wait.
fn injector(
    shutdown: Shutdown<Shuttle>,
    progress: Arc<AtomicU64>,
    target_done: Arc<AtomicBool>,
    total: u64,
    log: SharedLog,
) {
    let mut rng = shuttle::rand::thread_rng();
    for _ in 0..rng.gen_range(0..=MAX_SIGNALS) {
        match rng.gen_range(0..3) {
            0 => {
                for _ in 0..rng.gen_range(0..=64) {
                    thread::yield_now();
                }
            }
            1 => {
                let events = rng.gen_range(0..=total);
                while progress.load(Relaxed) < events && !target_done.load(Relaxed) {
                    thread::yield_now();
                }
            }
            _ => {
                // During the shutdown: once it has reached this state (Done comes in the end).
                let state = rng.gen_range(State::StoppingAcceptance as u8..=State::Done as u8);
                while (shutdown.state() as u8) < state {
                    thread::yield_now();
                }
            }
        }
        let signo = if rng.gen() {
            libc::SIGINT
        } else {
            libc::SIGTERM
        };
        let outcome = shutdown.notify_signal(signo);
        let after = shutdown.state();
        record(
            &log,
            Made {
                reason: Reason::Signal(signo),
                outcome,
                after,
            },
        );
    }
}

/// How often each path was taken by the managed schedules run on the calling thread (the checks
/// hold on all; these say the schedules reach what they are meant to).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// Schedules run.
    pub schedules: u64,
    /// Shutdowns started by a signal.
    pub by_signal: u64,
    /// Shutdowns started by the timer.
    pub by_timer: u64,
    /// Shutdowns started by the target's exit.
    pub by_exit: u64,
    /// Shutdowns started by a drain error.
    pub by_error: u64,
    /// Signals that escalated.
    pub escalated: u64,
    /// Requests ignored (made once the shutdown had begun, not escalating).
    pub ignored: u64,
    /// Shutdowns forced by a second signal.
    pub forced_by_signal: u64,
    /// Shutdowns forced by a graceful phase that failed or overran.
    pub forced_by_budget: u64,
    /// Shutdowns checked with the recording's full invariants.
    pub complete: u64,
    /// Timers cancelled before expiry.
    pub timer_cancelled: u64,
    /// Timers that fired.
    pub timer_fired: u64,
}

std::thread_local! {
    /// shuttle runs a test's schedules on the test's thread: this is that test's tally.
    static COVERAGE: std::cell::Cell<Coverage> = std::cell::Cell::new(Coverage::default());
}

/// The [`Coverage`] of the managed schedules run on this thread so far.
pub fn coverage() -> Coverage {
    COVERAGE.with(std::cell::Cell::get)
}

fn tally(end: &ManagerEnd, log: &Log) {
    let mut c = coverage();
    c.schedules += 1;
    match end.report.reason {
        Reason::Signal(_) => c.by_signal += 1,
        Reason::Timer => c.by_timer += 1,
        Reason::TargetExited(_) => c.by_exit += 1,
        Reason::Error(_) => c.by_error += 1,
        _ => {}
    }
    let count = |o: Request| log.requests.iter().filter(|m| m.outcome == o).count() as u64;
    c.escalated += count(Request::Escalated);
    c.ignored += count(Request::Ignored);
    match end.report.forced {
        Some(ForceCause::SecondSignal) => c.forced_by_signal += 1,
        Some(_) => c.forced_by_budget += 1,
        None => {}
    }
    if end.report.phases[..4]
        .iter()
        .all(|p| matches!(p.status, PhaseStatus::Completed | PhaseStatus::Overran))
    {
        c.complete += 1;
    }
    match end.timer {
        Some((_, timer::Outcome::Fired)) => c.timer_fired += 1,
        Some((_, timer::Outcome::Cancelled)) => c.timer_cancelled += 1,
        None => {}
    }
    COVERAGE.with(|cell| cell.set(c));
}

/// Runs one managed recording under the current shuttle schedule and checks every invariant.
pub(crate) fn run(scenario: &Scenario, out: &Path) {
    clock::reset();
    let mut rng = shuttle::rand::thread_rng();
    let total = u64::from(scenario.producers * scenario.lives * scenario.events);
    let budgets = if rng.gen_range(0..4) == 0 {
        Budgets::uniform(TIGHT)
    } else {
        Budgets::default()
    };
    // A duration within the recording (1 ms per event) or past its end; or no timer.
    let timer = (rng.gen_range(0..2) == 0)
        .then(|| Duration::from_millis(rng.gen_range(1..=total + total / 4)));
    let slow_fsync = match rng.gen_range(0..8) {
        0 => budgets.get(Phase::Sync) + POLL,
        _ => Duration::ZERO,
    };

    let shared = Arc::new(Shared::new(scenario));
    let shutdown = Shutdown::<Shuttle>::on_backend().expect("a model wake");
    let log: SharedLog = Arc::default();
    let ledgers = Arc::new(Mutex::new(BTreeMap::new()));
    let progress = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let target_done = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(AtomicU32::new(scenario.producers));
    let drawn = scenario
        .fs_faults
        .then(|| crate::faults::draw_for(scenario));

    let producers: Vec<_> = (0..scenario.producers)
        .map(|p| {
            let (shared, ledgers, scenario) = (shared.clone(), ledgers.clone(), *scenario);
            let (progress, killed, target_done) =
                (progress.clone(), killed.clone(), target_done.clone());
            let (alive, shutdown, log) = (alive.clone(), shutdown.clone(), log.clone());
            thread::spawn(move || {
                // The dying scenario: the first producer's first thread is killed inside the
                // write section of an event drawn at random.
                let die_at = (scenario.dies_mid_write && p == 0)
                    .then(|| shuttle::rand::thread_rng().gen_range(0..scenario.events));
                for life in 0..scenario.lives {
                    if killed.load(Relaxed) {
                        break;
                    }
                    let tid = world::tid_of(p, life);
                    let die = die_at.filter(|_| life == 0);
                    let ledger = world::producer(&shared, &scenario, tid, &progress, &killed, die);
                    let died = shared.dead.lock().expect("dead lock").contains(&tid);
                    ledgers.lock().expect("ledger lock").insert(tid, ledger);
                    if died {
                        // The signal kills the whole target: the other threads stop before their
                        // next event, and the tracer learns of it.
                        killed.store(true, Relaxed);
                        target_ended(&shutdown, &log, Reason::TargetCrashed(libc::SIGINT));
                        break;
                    }
                }
                // The target exits with its last thread (`tracer record` reaps it).
                if alive.fetch_sub(1, Relaxed) == 1 {
                    target_done.store(true, Relaxed);
                    target_ended(&shutdown, &log, Reason::TargetExited(0));
                }
            })
        })
        .collect();
    let (commands, command_rx) = mpsc::channel();
    let (reply_tx, replies) = mpsc::channel();
    let drainer = {
        let (shared, out, scenario, shutdown) =
            (shared.clone(), out.to_owned(), *scenario, shutdown.clone());
        let log = log.clone();
        let line = DrainLine {
            commands: command_rx,
            replies: reply_tx,
            slow_fsync,
            fs: drawn.as_ref().map(|d| d.fs.clone()),
        };
        thread::spawn(move || drain_thread(&shared, &scenario, &out, line, &shutdown, &log))
    };
    let signals = {
        let (shutdown, log) = (shutdown.clone(), log.clone());
        let (progress, target_done) = (progress.clone(), target_done.clone());
        thread::spawn(move || injector(shutdown, progress, target_done, total, log))
    };
    let managing = {
        let pipeline = SimPipeline {
            shared: shared.clone(),
            commands,
            replies,
            killed: killed.clone(),
            calls: [0; 6],
            finished: None,
            reason: None,
            gave_up_forced: false,
            abandoned_reply: false,
        };
        let (shutdown, log) = (shutdown.clone(), log.clone());
        thread::spawn(move || manager(shutdown, pipeline, budgets, timer, log))
    };
    let end = managing.join().expect("the manager panicked");
    signals.join().expect("the injector panicked");
    let errors = drainer.join().expect("the drain panicked");
    for p in producers {
        p.join().expect("a producer panicked");
    }
    let ledgers = std::mem::take(&mut *ledgers.lock().expect("ledger lock"));
    let log = std::mem::take(&mut *log.lock().expect("log lock"));
    check_requests(&shutdown, &end, &log);
    if let Some(drawn) = &drawn {
        check_errors_reported(drawn, &end, &errors, &log);
    }
    check_recording(&end, &errors, &ledgers, scenario, drawn.is_some(), out);
    if !shared.dead.lock().expect("dead lock").is_empty() {
        DEATHS.fetch_add(1, Relaxed);
        if matches!(end.report.phases[0].status, PhaseStatus::Completed) {
            STOPPED_AFTER_DEATH.fetch_add(1, Relaxed);
        }
    }
    tally(&end, &log);
    if let Some(drawn) = &drawn {
        crate::faults::count(drawn);
    }
}

/// Exactly one shutdown, started by the first request; every later one counted as ignored or,
/// for a signal during the phases, escalated; an escalation skips the graceful phases not begun;
/// syncing and cleanup always run, once; the timer never fires early.
fn check_requests(shutdown: &Shutdown<Shuttle>, end: &ManagerEnd, log: &Log) {
    let report = &end.report;
    let requests = &log.requests;
    let count = |o: Request| requests.iter().filter(|m| m.outcome == o).count();
    let accepted: Vec<&Made> = requests
        .iter()
        .filter(|m| m.outcome == Request::Accepted)
        .collect();
    assert_eq!(accepted.len(), 1, "not one accepted request: {requests:?}");
    assert_eq!(report.reason, accepted[0].reason, "{requests:?}");
    assert_eq!(
        end.woke, report.reason,
        "the manager woke for another reason"
    );
    assert_eq!(
        shutdown.ignored_requests() as usize,
        count(Request::Ignored),
        "{requests:?}"
    );
    let signals = requests
        .iter()
        .filter(|m| matches!(m.reason, Reason::Signal(_)))
        .count();
    assert_eq!(shutdown.signals_received() as usize, signals);
    assert_eq!(shutdown.state(), State::Done);
    for m in requests.iter().filter(|m| m.outcome == Request::Escalated) {
        assert!(
            matches!(m.reason, Reason::Signal(_)),
            "only a signal escalates: {m:?}"
        );
        // shuttle is sequentially consistent: the state read after the escalation names the
        // last phase begun, so each graceful phase after the next one checked for it first.
        let seen = m.after as usize;
        for (i, p) in report.phases.iter().enumerate() {
            if i > seen && !p.phase.is_essential() {
                assert_eq!(
                    p.status,
                    PhaseStatus::Skipped,
                    "{} ran after an escalation during {:?}: {report:?}",
                    p.phase,
                    m.after
                );
            }
        }
        if m.after as u8 <= State::FinalDrain as u8 {
            assert!(
                report.forced.is_some(),
                "escalated during {:?}, not forced: {report:?}",
                m.after
            );
        }
    }
    if report.forced == Some(ForceCause::SecondSignal) {
        assert!(count(Request::Escalated) > 0, "forced by no signal");
    }
    if end.gave_up_forced {
        assert_eq!(
            report.forced,
            Some(ForceCause::SecondSignal),
            "a phase gave up because a second signal forced the shutdown, the report blames it: \
             {report:?}"
        );
    }
    for (i, p) in report.phases.iter().enumerate() {
        assert_eq!(p.phase, Phase::ALL[i]);
        let ran = u32::from(p.status != PhaseStatus::Skipped);
        assert_eq!(
            end.calls[i], ran,
            "{} called {} times",
            p.phase, end.calls[i]
        );
        if p.phase.is_essential() {
            assert_eq!(ran, 1, "{} skipped", p.phase);
        }
    }
    let skipped: Vec<Phase> = report.skipped().collect();
    assert!(
        skipped.is_empty() || report.forced.is_some(),
        "phases skipped without a forced shutdown: {report:?}"
    );
    if let Some((deadline, outcome)) = end.timer {
        match (outcome, log.fired_at) {
            (timer::Outcome::Fired, Some(at)) => assert!(at >= deadline, "fired early"),
            (timer::Outcome::Cancelled, None) => {}
            (o, at) => panic!("the timer's cancel returned {o:?}, its callback ran at {at:?}"),
        }
    } else {
        assert!(log.fired_at.is_none());
    }
}

/// The recording's invariants: the full ones when every graceful phase returned, what a forced
/// shutdown guarantees otherwise (see the module documentation), what a write fault guarantees
/// after one (see [`crate::checks`]).
fn check_recording(
    end: &ManagerEnd,
    errors: &[drain::DrainError],
    ledgers: &BTreeMap<u32, Ledger>,
    scenario: &Scenario,
    fs_faults: bool,
    out: &Path,
) {
    if !errors.is_empty() {
        assert!(
            scenario.faults || fs_faults,
            "the drain failed without a fault: {errors:?}"
        );
        for e in errors {
            checks::check_after_fault(e, ledgers, out);
        }
        // The final manifest (its stop reason is the error's text) may itself fail (a size
        // limit, a full disk, a failed fsync of its temporary file): the previous one is then
        // left as it was, readable, and the error says so.
        // `Drain::finish` is the drain's last call: its error, if any, is the last.
        let final_error = errors
            .last()
            .filter(|_| matches!(end.finished, Some(Err(_))));
        checks::check_manifest_after_errors(final_error, ledgers, out);
        return;
    }
    let finished = match &end.finished {
        Some(Ok(report)) => report,
        Some(Err(e)) => panic!("the drain failed without a fault: {e}"),
        None => panic!("syncing did not finish the drain: {:?}", end.report),
    };
    let graceful_returned = end.report.phases[..4]
        .iter()
        .all(|p| matches!(p.status, PhaseStatus::Completed | PhaseStatus::Overran));
    if graceful_returned {
        checks::check(finished, ledgers, scenario, false);
    } else {
        assert!(end.report.forced.is_some());
        checks::check_written_prefixes(ledgers, out);
        checks::check_accounted_as_written(ledgers, out);
        let totals = &finished.accounting.index;
        assert!(totals.balanced(), "totals unbalanced: {totals:?}");
        let stopped = matches!(
            end.report.phases[0].status,
            PhaseStatus::Completed | PhaseStatus::Overran
        );
        if stopped || scenario.strict_forced_drops {
            check_drops_seen(finished, ledgers);
        }
    }
}

/// Under a drawn fault: every drain error carries the injected errno (a kind that loses nothing
/// fails nothing), and is shown to whoever stopped the recording: it is the shutdown's reason, a
/// phase's failure or a notice of the report, or a request the drain made once the shutdown was
/// under way (ignored); unless a phase stopped waiting for the drain's reply.
fn check_errors_reported(
    drawn: &crate::faults::Drawn,
    end: &ManagerEnd,
    errors: &[drain::DrainError],
    log: &Log,
) {
    let report = &end.report;
    for e in errors {
        crate::faults::check_errno(drawn, e);
        let text = shutdown::error_chain(e);
        let shown = matches!(&report.reason, Reason::Error(r) if r.contains(&text))
            || report
                .phases
                .iter()
                .any(|p| matches!(&p.status, PhaseStatus::Failed(f) if f.contains(&text)))
            || report.notices.iter().any(|n| n.contains(&text))
            || log
                .requests
                .iter()
                .any(|m| matches!(&m.reason, Reason::Error(r) if r.contains(&text)));
        assert!(
            shown || end.abandoned_reply,
            "the drain's error is not reported: {text}\n{report:?}"
        );
    }
}

/// Every drop the manifest counts for a thread, by reason, is one the thread saw.
fn check_drops_seen(report: &drain::Report, ledgers: &BTreeMap<u32, Ledger>) {
    for entry in &report.threads {
        let Some(ledger) = ledgers.get(&entry.id) else {
            panic!("the manifest names thread {}, which never ran", entry.id)
        };
        let count = |f: Fate| ledger.fates.iter().filter(|&&x| x == f).count() as u64;
        let c = &entry.index;
        assert!(
            c.dropped.shutdown <= count(Fate::Shutdown)
                && c.dropped.ring_full <= count(Fate::RingFull),
            "thread {}: the manifest counts drops the thread did not see: {c:?}, fates {:?}",
            entry.id,
            ledger.fates
        );
    }
}
