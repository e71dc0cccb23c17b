//! A fake pipeline for the manager's tests: per-thread buffers, an accepting flag, scripted faults.
#![allow(dead_code)]

use shutdown::{Error, Phase, PhaseContext, Pipeline, Shutdown};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a fake phase does besides its work.
#[derive(Debug, Clone)]
pub enum Act {
    /// Returns this error.
    Fail(&'static str),
    /// Runs past its deadline (pair it with a tiny budget).
    Overrun,
    /// Delivers this signal to the shutdown, as a second Ctrl-C during the phase would.
    Signal(i32),
    /// Raises this real signal in the process (the handlers must be installed).
    Raise(i32),
    /// Delivers this signal, then fails as a phase that stops waiting once forced does.
    SignalThenGiveUp(i32),
}

/// Threads with unflushed events, a drain, files: enough to check the manager drives them in order.
#[derive(Debug)]
pub struct FakePipeline {
    pub calls: Vec<Phase>,
    pub forced_seen: Vec<(Phase, bool)>,
    pub accepting: AtomicBool,
    pub registrations_open: bool,
    /// Events sitting in each thread's active ring.
    pub buffers: Vec<u64>,
    pub submitted: u64,
    pub persisted: u64,
    pub synced: bool,
    pub cleaned: bool,
    pub acts: HashMap<Phase, Act>,
    pub shutdown: Option<Shutdown>,
}

impl FakePipeline {
    pub fn new(threads: usize, events_each: u64) -> Self {
        Self {
            calls: Vec::new(),
            forced_seen: Vec::new(),
            accepting: AtomicBool::new(true),
            registrations_open: true,
            buffers: vec![events_each; threads],
            submitted: 0,
            persisted: 0,
            synced: false,
            cleaned: false,
            acts: HashMap::new(),
            shutdown: None,
        }
    }

    pub fn with(mut self, phase: Phase, act: Act) -> Self {
        self.acts.insert(phase, act);
        self
    }

    pub fn signalling(mut self, shutdown: &Shutdown) -> Self {
        self.shutdown = Some(shutdown.clone());
        self
    }

    fn enter(&mut self, ctx: &PhaseContext<'_>) -> Result<(), Error> {
        self.calls.push(ctx.phase());
        match self.acts.get(&ctx.phase()).cloned() {
            None => {}
            Some(Act::Fail(msg)) => return Err(Error::phase(msg)),
            Some(Act::Overrun) => while Instant::now() <= ctx.deadline() {},
            Some(Act::Signal(signo)) => {
                self.shutdown
                    .as_ref()
                    .expect("signalling() not set")
                    .notify_signal(signo);
            }
            Some(Act::Raise(signo)) => {
                // SAFETY: raise has no memory-safety preconditions.
                unsafe { libc::raise(signo) };
            }
            Some(Act::SignalThenGiveUp(signo)) => {
                let s = self.shutdown.as_ref().expect("signalling() not set");
                s.notify_signal(signo);
                if ctx.should_stop() {
                    return Err(Error::phase("stopped waiting: the shutdown is forced"));
                }
            }
        }
        self.forced_seen.push((ctx.phase(), ctx.forced()));
        Ok(())
    }
}

impl Pipeline for FakePipeline {
    fn stop_acceptance(&mut self, ctx: &PhaseContext<'_>) -> Result<(), Error> {
        self.enter(ctx)?;
        self.accepting.store(false, Ordering::SeqCst);
        Ok(())
    }
    fn close_registrations(&mut self, ctx: &PhaseContext<'_>) -> Result<(), Error> {
        self.enter(ctx)?;
        self.registrations_open = false;
        Ok(())
    }
    fn flush(&mut self, ctx: &PhaseContext<'_>) -> Result<(), Error> {
        self.enter(ctx)?;
        for b in &mut self.buffers {
            self.submitted += std::mem::take(b);
        }
        Ok(())
    }
    fn final_drain(&mut self, ctx: &PhaseContext<'_>) -> Result<(), Error> {
        self.enter(ctx)?;
        self.persisted += std::mem::take(&mut self.submitted);
        Ok(())
    }
    fn sync(&mut self, ctx: &PhaseContext<'_>) -> Result<(), Error> {
        self.enter(ctx)?;
        self.synced = true;
        Ok(())
    }
    fn cleanup(&mut self, ctx: &PhaseContext<'_>) -> Result<(), Error> {
        self.enter(ctx)?;
        self.cleaned = true;
        Ok(())
    }
}
