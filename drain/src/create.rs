//! The file-creation helper: a thread that makes each new thread's directory and event file, so
//! the drain thread never waits for the file system to allocate them.
//!
//! Making a directory and a file costs the file system two inode allocations, and on ext4 under
//! load that takes from ~0.2 ms to several milliseconds each (measured: 256 thread directories
//! with their files, 42–436 ms). Done on the drain thread when it first met a thread, every one of
//! them stopped the draining of every other lane: with hundreds of threads starting at once the
//! busy ones filled their rings and waited. Here the drain only asks ([`Creator::request`]) and
//! goes on with the lanes whose files exist; a new thread's lane is first drained in the pass
//! after its file is made ([`Creator::ready`]). The files are made exactly as the drain made them
//! (through the process directory's handle: `mkdirat`, then the file `O_EXCL | O_NOFOLLOW`), so a
//! crash at any point leaves what it left before: at worst a thread directory with an event file
//! holding only its header, which readers take as a thread with no events.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use atf::{IndexWriter, SessionLayout};

/// Which file: the process it belongs to (see `ProcKey`) and the thread id.
pub(crate) type FileKey = (u32, u32);

/// One file to make.
struct Job {
    key: FileKey,
    layout: SessionLayout,
}

/// A made (or failed) file.
pub(crate) type Made = (FileKey, atf::Result<IndexWriter>);

/// The helper thread and the drain's side of it.
pub(crate) struct Creator {
    jobs: Option<Sender<Job>>,
    made: Receiver<Made>,
    thread: Option<JoinHandle<()>>,
}

impl Creator {
    /// Starts the helper thread (named `drain-files`).
    pub(crate) fn start() -> std::io::Result<Self> {
        let (jobs, queue) = channel::<Job>();
        let (done, made) = channel();
        let thread = std::thread::Builder::new()
            .name("drain-files".into())
            .spawn(move || {
                crate::thread::raise_priority();
                for job in queue {
                    let file = job.layout.create_index(job.key.1, atf::ClockType::Boottime);
                    if done.send((job.key, file)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Creator {
            jobs: Some(jobs),
            made,
            thread: Some(thread),
        })
    }

    /// Asks for `key`'s event file in `layout`. Returns `false` if the helper is gone (the caller
    /// then makes the file itself).
    pub(crate) fn request(&self, key: FileKey, layout: &SessionLayout) -> bool {
        let job = Job {
            key,
            layout: layout.clone(),
        };
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok())
    }

    /// The files made since the last call, without waiting.
    pub(crate) fn ready(&self) -> impl Iterator<Item = Made> + '_ {
        self.made.try_iter()
    }

    /// The next file made, waiting for it; `None` if the helper is gone.
    pub(crate) fn next(&self) -> Option<Made> {
        self.made.recv().ok()
    }
}

impl Drop for Creator {
    fn drop(&mut self) {
        // Closing the queue ends the helper's loop after the jobs already queued.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
