//! The phases of a shutdown, the [`Pipeline`] they drive, and the manager that runs them.
//!
//! `running → stopping acceptance → closing registrations → flushing → final drain → syncing →
//! cleanup → done`. Each phase gets a budget and a deadline and is timed. If a graceful phase
//! fails or overruns its budget, or a second signal arrives, the shutdown turns *forced*: the
//! remaining graceful phases are skipped, and the essential ones (syncing, cleanup) still run so the
//! files that exist are readable. The [`Report`] says what ran, what overran and what was skipped.

use crate::request::{Reason, Shutdown};
pub use crate::state::State;
use crate::Error;
use modelsync::{Backend, Clock, StdBackend};
use std::fmt;
use std::time::{Duration, Instant};

/// One shutdown phase, in execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Producers stop publishing; later events count as dropped under "shutdown".
    StopAcceptance,
    /// No new thread registers.
    CloseRegistrations,
    /// Every thread's partly filled rings are submitted.
    Flush,
    /// The drain writes everything submitted and stops.
    FinalDrain,
    /// Files and directories are fsynced. Essential: runs even when forced.
    Sync,
    /// Resources released, the target stopped or released. Essential: runs even when forced.
    Cleanup,
}

impl Phase {
    /// All phases, in order.
    pub const ALL: [Phase; 6] = [
        Phase::StopAcceptance,
        Phase::CloseRegistrations,
        Phase::Flush,
        Phase::FinalDrain,
        Phase::Sync,
        Phase::Cleanup,
    ];

    /// `true` for the phases that run even in a forced shutdown (they leave the files readable).
    pub fn is_essential(self) -> bool {
        matches!(self, Phase::Sync | Phase::Cleanup)
    }

    /// The state while this phase runs.
    pub fn state(self) -> State {
        match self {
            Phase::StopAcceptance => State::StoppingAcceptance,
            Phase::CloseRegistrations => State::ClosingRegistrations,
            Phase::Flush => State::Flushing,
            Phase::FinalDrain => State::FinalDrain,
            Phase::Sync => State::Syncing,
            Phase::Cleanup => State::Cleanup,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::StopAcceptance => "stopping acceptance",
            Phase::CloseRegistrations => "closing registrations",
            Phase::Flush => "flushing",
            Phase::FinalDrain => "final drain",
            Phase::Sync => "syncing",
            Phase::Cleanup => "cleanup",
        })
    }
}

/// The time each phase may take before the shutdown turns forced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budgets {
    per_phase: [Duration; 6],
}

impl Default for Budgets {
    /// Generous safety nets (the targets are far lower: under 100 ms in all): stop acceptance and
    /// close registrations 200 ms each, flush 1 s, final drain 5 s, sync 5 s, cleanup 1 s.
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            per_phase: [ms(200), ms(200), ms(1000), ms(5000), ms(5000), ms(1000)],
        }
    }
}

impl Budgets {
    /// The same budget for every phase.
    pub fn uniform(budget: Duration) -> Self {
        Self {
            per_phase: [budget; 6],
        }
    }

    /// This phase's budget.
    pub fn get(&self, phase: Phase) -> Duration {
        self.per_phase[phase.index()]
    }

    /// Sets one phase's budget.
    pub fn with(mut self, phase: Phase, budget: Duration) -> Self {
        self.per_phase[phase.index()] = budget;
        self
    }
}

/// What a phase implementation is given: its deadline and a way to see a forced shutdown. Times
/// come from the backend's clock (virtual in a model).
#[derive(Debug)]
pub struct PhaseContext<'a, B: Backend = StdBackend> {
    phase: Phase,
    budget: Duration,
    deadline: Instant,
    shutdown: &'a Shutdown<B>,
}

impl<B: Backend> PhaseContext<'_, B> {
    /// The phase being run.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The phase's budget.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// When the phase's budget runs out; block no later than this.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(B::Clock::now())
    }

    /// `true` once a second signal forced the shutdown: write what can be written, return fast.
    pub fn forced(&self) -> bool {
        self.shutdown.force_requested()
    }

    /// `true` if the phase should stop waiting: forced, or past its deadline.
    pub fn should_stop(&self) -> bool {
        self.forced() || B::Clock::now() >= self.deadline
    }
}

/// The parts a shutdown drives. The tracer implements it over its real parts; tests over fakes; the
/// simulation over simulated ones on a model backend `B`. Each call must respect `ctx.deadline()`
/// (the manager cannot pre-empt it) and may return early with an error when `ctx.forced()`.
pub trait Pipeline<B: Backend = StdBackend> {
    /// Stop producers from publishing (the stop handshake).
    fn stop_acceptance(&mut self, ctx: &PhaseContext<'_, B>) -> Result<(), Error>;
    /// Refuse new thread registrations.
    fn close_registrations(&mut self, ctx: &PhaseContext<'_, B>) -> Result<(), Error>;
    /// Submit every thread's partly filled rings.
    fn flush(&mut self, ctx: &PhaseContext<'_, B>) -> Result<(), Error>;
    /// Let the drain write everything submitted, then stop it.
    fn final_drain(&mut self, ctx: &PhaseContext<'_, B>) -> Result<(), Error>;
    /// fsync files and directories. Runs even when forced.
    fn sync(&mut self, ctx: &PhaseContext<'_, B>) -> Result<(), Error>;
    /// Release resources and deal with the target. Runs even when forced.
    fn cleanup(&mut self, ctx: &PhaseContext<'_, B>) -> Result<(), Error>;
}

/// How one phase ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseStatus {
    /// Ran within its budget.
    Completed,
    /// Finished, but after its budget.
    Overran,
    /// Returned an error (its text).
    Failed(String),
    /// Not run: the shutdown was forced before it.
    Skipped,
}

/// One phase's line in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseReport {
    /// Which phase.
    pub phase: Phase,
    /// How it ended.
    pub status: PhaseStatus,
    /// Time spent in it (zero when skipped).
    pub elapsed: Duration,
    /// Its budget.
    pub budget: Duration,
}

/// Why a shutdown turned forced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceCause {
    /// A second SIGINT/SIGTERM (or [`Shutdown::force`]) during the shutdown.
    SecondSignal,
    /// A graceful phase overran its budget.
    Overran(Phase),
    /// A graceful phase failed.
    Failed(Phase),
}

impl fmt::Display for ForceCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForceCause::SecondSignal => f.write_str("a second signal during the shutdown"),
            ForceCause::Overran(p) => write!(f, "{p} overran its budget"),
            ForceCause::Failed(p) => write!(f, "{p} failed"),
        }
    }
}

/// What the manager did: the reason, every phase with its time and status, the total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The request that started the shutdown.
    pub reason: Reason,
    /// Every phase in order (skipped ones included).
    pub phases: Vec<PhaseReport>,
    /// From the start of the first phase to the end of the last.
    pub total: Duration,
    /// Set when the shutdown turned forced.
    pub forced: Option<ForceCause>,
    /// Signals received (the first one included).
    pub signals_received: u32,
    /// Requests ignored because one was already under way.
    pub ignored_requests: u32,
    /// The messages also printed on stderr while it ran.
    pub notices: Vec<String>,
}

impl Report {
    /// The phases that did not run.
    pub fn skipped(&self) -> impl Iterator<Item = Phase> + '_ {
        self.phases
            .iter()
            .filter(|p| p.status == PhaseStatus::Skipped)
            .map(|p| p.phase)
    }

    /// `true` if every phase completed within its budget.
    pub fn clean(&self) -> bool {
        self.forced.is_none()
            && self
                .phases
                .iter()
                .all(|p| p.status == PhaseStatus::Completed)
    }
}

/// The notice of a shutdown forced by a second signal.
const SECOND_SIGNAL: &str = "second signal received: forcing a fast exit, writing what can be \
                             written (syncing and cleanup still run)";

impl<B: Backend> Shutdown<B> {
    /// Runs the phases once, printing notices (forced exit, failed phase) on stderr as they happen.
    /// If nothing requested the shutdown yet, the reason is [`Reason::Manual`].
    pub fn execute<P: Pipeline<B> + ?Sized>(
        &self,
        pipeline: &mut P,
        budgets: &Budgets,
    ) -> Result<Report, Error> {
        self.execute_with_notices(pipeline, budgets, &mut |line| eprintln!("tracer: {line}"))
    }

    /// [`Shutdown::execute`], with notices sent to `notice` instead of stderr.
    pub fn execute_with_notices<P: Pipeline<B> + ?Sized>(
        &self,
        pipeline: &mut P,
        budgets: &Budgets,
        notice: &mut dyn FnMut(&str),
    ) -> Result<Report, Error> {
        self.shared.claim_if_running(Reason::Manual);
        if !self.shared.begin() {
            return Err(Error::AlreadyExecuted);
        }
        let reason = self.requested().unwrap_or(Reason::Manual);
        let start = B::Clock::now();
        let mut forced: Option<ForceCause> = None;
        let mut notices = Vec::new();
        let mut say = |line: String, notices: &mut Vec<String>| {
            notice(&line);
            notices.push(line);
        };
        let mut phases = Vec::with_capacity(Phase::ALL.len());
        for phase in Phase::ALL {
            if forced.is_none() && self.force_requested() {
                forced = Some(ForceCause::SecondSignal);
                say(SECOND_SIGNAL.to_string(), &mut notices);
            }
            let budget = budgets.get(phase);
            if forced.is_some() && !phase.is_essential() {
                phases.push(PhaseReport {
                    phase,
                    status: PhaseStatus::Skipped,
                    elapsed: Duration::ZERO,
                    budget,
                });
                continue;
            }
            self.shared.set_state(phase.state());
            let began = B::Clock::now();
            let ctx = PhaseContext {
                phase,
                budget,
                deadline: began + budget,
                shutdown: self,
            };
            let result = match phase {
                Phase::StopAcceptance => pipeline.stop_acceptance(&ctx),
                Phase::CloseRegistrations => pipeline.close_registrations(&ctx),
                Phase::Flush => pipeline.flush(&ctx),
                Phase::FinalDrain => pipeline.final_drain(&ctx),
                Phase::Sync => pipeline.sync(&ctx),
                Phase::Cleanup => pipeline.cleanup(&ctx),
            };
            let elapsed = B::Clock::now().saturating_duration_since(began);
            let status = match result {
                Err(e) => PhaseStatus::Failed(crate::error_chain(&e)),
                Ok(()) if elapsed > budget => PhaseStatus::Overran,
                Ok(()) => PhaseStatus::Completed,
            };
            match &status {
                PhaseStatus::Failed(e) => say(format!("{phase} failed: {e}"), &mut notices),
                PhaseStatus::Overran => say(
                    format!("{phase} overran its {} ms budget", budget.as_millis()),
                    &mut notices,
                ),
                _ => {}
            }
            if forced.is_none() && !phase.is_essential() && self.force_requested() {
                // A second signal during the phase: it is why the shutdown turns forced, even when
                // the phase then failed (it stopped waiting, as `PhaseContext::should_stop` asks).
                forced = Some(ForceCause::SecondSignal);
                say(SECOND_SIGNAL.to_string(), &mut notices);
            }
            if forced.is_none() && !phase.is_essential() {
                forced = match status {
                    PhaseStatus::Failed(_) => Some(ForceCause::Failed(phase)),
                    PhaseStatus::Overran => Some(ForceCause::Overran(phase)),
                    _ => None,
                };
                if forced.is_some() {
                    say(
                        "skipping to syncing and cleanup so the files written so far stay readable"
                            .to_string(),
                        &mut notices,
                    );
                }
            }
            phases.push(PhaseReport {
                phase,
                status,
                elapsed,
                budget,
            });
        }
        self.shared.set_state(State::Done);
        Ok(Report {
            reason,
            phases,
            total: B::Clock::now().saturating_duration_since(start),
            forced,
            signals_received: self.signals_received(),
            ignored_requests: self.ignored_requests(),
            notices,
        })
    }
}
