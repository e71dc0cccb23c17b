//! The writeback helper: a thread that starts the disk writes of the trace files' new bytes and
//! waits for the oldest, so the drain thread never stalls on the disk.
//!
//! `sync_file_range` is a hint that can block for milliseconds (block allocation of a fresh
//! range, a congested disk queue), and a lane holds ~140 µs of a thread calling non-stop: called
//! on the drain thread, every writeback made busy producers wait for ring space. Here the drain
//! only sends the ranges ([`Writeback::submit`]); the helper starts each and, past
//! [`DIRTY_BUDGET`](crate::DIRTY_BUDGET) bytes started and not seen finished, waits for the
//! oldest. The drain waits only when the disk is more than twice the budget behind
//! ([`Writeback::throttle`]), so the dirty backlog stays bounded and the final fsync short.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Release};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use atf::FileSink;

use crate::DIRTY_BUDGET;

/// One range of one file to write back, with its own handle on the file.
struct Job {
    file: Box<dyn FileSink>,
    offset: u64,
    len: u64,
}

/// The helper thread and the drain's side of it.
pub(crate) struct Writeback {
    jobs: Option<Sender<Job>>,
    /// Bytes submitted and not yet seen written back (or given up).
    backlog: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Writeback {
    /// Starts the helper thread (named `writeback`).
    pub(crate) fn start() -> std::io::Result<Self> {
        let (jobs, queue) = channel();
        let backlog = Arc::new(AtomicU64::new(0));
        let shared = backlog.clone();
        let thread = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || run(queue, &shared))?;
        Ok(Writeback {
            jobs: Some(jobs),
            backlog,
            thread: Some(thread),
        })
    }

    /// Hands a range to the helper. Returns the job back if the helper is gone (the caller
    /// then writes it back itself).
    pub(crate) fn submit(
        &self,
        file: Box<dyn FileSink>,
        offset: u64,
        len: u64,
    ) -> Result<(), Box<dyn FileSink>> {
        // Release: pairs with the Acquire in `throttle` and `run`; a count, nothing published.
        self.backlog.fetch_add(len, Release);
        let job = Job { file, offset, len };
        match self.jobs.as_ref().map(|j| j.send(job)) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                self.backlog.fetch_sub(len, Release);
                Err(e.0.file)
            }
            None => unreachable!("jobs is only taken on drop"),
        }
    }

    /// Waits while more than twice [`DIRTY_BUDGET`] bytes are submitted and not written back:
    /// the disk sets the pace (producers wait for ring space, losing nothing), and the dirty
    /// backlog stays bounded whatever the recording's length.
    pub(crate) fn throttle(&self) {
        // Acquire: pairs with the helper's Release as it finishes a range.
        while self.backlog.load(Acquire) > 2 * DIRTY_BUDGET
            && self.thread.as_ref().is_some_and(|t| !t.is_finished())
        {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        // Closing the queue ends the helper after the job it is on; ranges it started and did
        // not wait for are left to the kernel (the final fsync covers them).
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The helper's loop: start each range, wait for the oldest past the budget.
fn run(queue: Receiver<Job>, backlog: &AtomicU64) {
    let mut in_flight: VecDeque<Job> = VecDeque::new();
    let mut in_flight_bytes = 0;
    while let Ok(mut job) = queue.recv() {
        job.file.writeback(job.offset, job.len, false);
        in_flight_bytes += job.len;
        in_flight.push_back(job);
        while in_flight_bytes > DIRTY_BUDGET {
            let Some(mut oldest) = in_flight.pop_front() else {
                break;
            };
            oldest.file.writeback(oldest.offset, oldest.len, true);
            in_flight_bytes -= oldest.len;
            // Release: pairs with the Acquire in `throttle`; a count, nothing published.
            backlog.fetch_sub(oldest.len, Release);
        }
    }
}
