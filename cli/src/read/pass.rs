//! One pass over a thread's events that also verifies them when the session left that to the
//! reader ([`atf::Session::open_deferred`]): `report`, `replay` and `export --format chrome` read
//! every event anyway, so they check each as they read it instead of reading the files twice,
//! and hand what they found back to the session at the end ([`Found::report`]), which then holds
//! the warnings [`atf::Session::open`] gives, in the same order.

use std::io;

use atf::{Damage, IndexEvent};

use super::input_error;

/// A thread's events, past damaged chunks (reported as warnings, not shown), checked as they are
/// read if the session has not verified them yet.
pub(super) enum ThreadEvents<'a> {
    /// Verified in this pass.
    Checked(atf::CheckedEvents<'a>),
    /// Verified when the session was opened.
    Verified(atf::Events<'a>),
}

impl<'a> ThreadEvents<'a> {
    /// The events of `thread`, a thread of `session`.
    pub(super) fn of(session: &atf::Session, thread: &'a atf::SessionThread) -> io::Result<Self> {
        Ok(if session.unverified(thread.id) {
            let checked = thread.index.events_checked(thread.id);
            ThreadEvents::Checked(checked.map_err(input_error)?)
        } else {
            ThreadEvents::Verified(thread.index.events_past_damage())
        })
    }

    /// The next event; `None` at the end.
    #[inline]
    pub(super) fn next(&mut self) -> Option<io::Result<IndexEvent>> {
        let next = match self {
            ThreadEvents::Checked(events) => events.next(),
            ThreadEvents::Verified(events) => events.next(),
        };
        next.map(|event| event.map_err(input_error))
    }

    /// The stream position of the next event returned.
    pub(super) fn next_seq(&self) -> u64 {
        match self {
            ThreadEvents::Checked(events) => events.next_seq(),
            ThreadEvents::Verified(events) => events.next_seq(),
        }
    }

    /// Passes every event left to `f`, in order; stops at the first error, `f`'s or the file's.
    #[inline]
    pub(super) fn try_each(
        &mut self,
        f: impl FnMut(IndexEvent) -> io::Result<()>,
    ) -> io::Result<()> {
        match self {
            ThreadEvents::Checked(events) => events.try_each(f),
            ThreadEvents::Verified(events) => events.try_each(f),
        }
    }
}

/// What the passes over a session's threads found, kept until the session can take it.
#[derive(Default)]
pub(super) struct Found(Vec<(u32, Vec<Damage>)>);

impl Found {
    /// Ends the pass over thread `thread_id` (reading what is left of a checked one) and keeps
    /// what it found.
    pub(super) fn end(&mut self, thread_id: u32, events: ThreadEvents<'_>) -> io::Result<()> {
        if let ThreadEvents::Checked(events) = events {
            let damage = events.finish().map_err(input_error)?;
            self.0.push((thread_id, damage));
        }
        Ok(())
    }

    /// Hands everything found to `session` and finishes its verification (the threads no pass
    /// read are verified now), so that its warnings are complete.
    pub(super) fn report(self, session: &mut atf::Session) {
        for (thread_id, damage) in self.0 {
            session.report_damage(thread_id, damage);
        }
        session.finish_verification();
    }
}
