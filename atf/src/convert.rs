//! Rewriting a recorded session with its events in another [`EventFormat`]: an ATC session as
//! ATF v2 for readers of that format, or the other way round. Events and detail records are
//! copied one for one, so positions (which detail records link to) and every field are kept;
//! the manifest is copied as it is.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::session::{Session, SessionLayout};
use crate::{ClockType, EventFormat, EVENT_SIZE};

/// What [`convert_session`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Converted {
    /// The new session's directory (`session_...`).
    pub session_dir: PathBuf,
    /// Its `pid_<pid>` directories, one per process converted, in the order given.
    pub pid_dirs: Vec<PathBuf>,
    /// Threads written, over all processes.
    pub threads: usize,
    /// Events written, over all threads.
    pub events: u64,
}

/// Events converted per append: large writes, bounded memory.
const BATCH_EVENTS: usize = 64 << 10;

/// Writes the processes of one recording (`sessions`: each process's [`Session`], as opened from
/// its `pid_<pid>` directory) again under `output`, as one new `session_<date>_<time>/` holding a
/// `pid_<pid>/` per process (see [`SessionLayout::create`]), with every thread's events in
/// `format`. Every file is finished and fsynced. A thread's events that cannot be read (a damaged
/// ATC chunk, a file that shrank) fail the conversion with the reader's error, naming the file: a
/// copy never drops events silently. A session opened with [`Session::open_deferred`] has its
/// events verified as they are copied, and its verification finished
/// ([`Session::finish_verification`]) once its process is written, so its warnings are then
/// complete.
///
/// ```
/// # fn main() -> atf::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let layout = atf::SessionLayout::create(dir.path(), 7)?;
/// # let mut m = atf::Manifest::new(atf::ClockType::Boottime);
/// # layout.write_manifest(&mut m)?;
/// let session = atf::Session::open(layout.pid_dir())?;
/// let mut sessions = [session];
/// let out = atf::convert_session(&mut sessions, dir.path().join("v2"), atf::EventFormat::Atf2)?;
/// assert_eq!((out.pid_dirs.len(), out.events), (1, 0));
/// # Ok(())
/// # }
/// ```
pub fn convert_session(
    sessions: &mut [Session],
    output: impl AsRef<Path>,
    format: EventFormat,
) -> Result<Converted> {
    let Some(first) = sessions.first() else {
        return Err(crate::Error::invalid(
            output.as_ref(),
            "no process to convert".to_owned(),
        ));
    };
    let first = SessionLayout::create(output, first.manifest.target_pid)?.with_format(format);
    let mut out = Converted {
        session_dir: first.session_dir().to_path_buf(),
        pid_dirs: Vec::new(),
        threads: 0,
        events: 0,
    };
    for (i, session) in sessions.iter_mut().enumerate() {
        let layout = if i == 0 {
            first.clone()
        } else {
            first.process(session.manifest.target_pid)?
        };
        out.events += convert_process(session, &layout)?;
        out.threads += session.threads.len();
        out.pid_dirs.push(layout.pid_dir().to_path_buf());
    }
    Ok(out)
}

/// Writes one process's threads and manifest into `layout`, verifying the events not verified yet
/// as it reads them; returns the events written.
fn convert_process(session: &mut Session, layout: &SessionLayout) -> Result<u64> {
    let mut events = 0;
    let mut batch = Vec::with_capacity(BATCH_EVENTS * EVENT_SIZE);
    let mut found = Vec::new();
    for thread in &session.threads {
        let clock = thread.index.clock().unwrap_or(ClockType::Boottime);
        let mut index = layout.create_index(thread.id, clock)?;
        let mut checked = match session.unverified(thread.id) {
            true => Some(thread.index.events_checked(thread.id)?.stopping_at_damage()),
            false => None,
        };
        let mut plain = thread.index.events();
        let read: &mut dyn Iterator<Item = Result<crate::IndexEvent>> = match &mut checked {
            Some(checked) => checked,
            None => &mut plain,
        };
        for event in read {
            batch.extend_from_slice(&event?.encode());
            if batch.len() == BATCH_EVENTS * EVENT_SIZE {
                index.append(&batch)?;
                batch.clear();
            }
        }
        if let Some(checked) = checked {
            found.push((thread.id, checked.finish()?));
        }
        index.append(&batch)?;
        batch.clear();
        if let Some(detail) = &thread.detail {
            let mut out = layout.create_detail(thread.id)?;
            for record in detail.records() {
                let record = record?;
                out.append_record(&record.header, &record.payload)?;
            }
            out.finish()?;
        }
        index.set_has_detail(thread.index.has_detail())?;
        events += index.finish()?.event_count;
    }
    for (thread_id, damage) in found {
        session.report_damage(thread_id, damage);
    }
    session.finish_verification();
    let mut manifest = session.manifest.clone();
    layout.write_manifest(&mut manifest)?;
    layout.sync_dirs()?;
    Ok(events)
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use crate::{DetailRecordHeader, EventKind, IndexEvent, Manifest, ThreadEntry, DETAIL_CALL};

    fn event(tid: u32, i: u64) -> IndexEvent {
        IndexEvent {
            timestamp_ns: 1_000 + 10 * i,
            function_id: 0x1000 + (i / 2) % 3,
            thread_id: tid,
            kind: if i % 2 == 0 {
                EventKind::Call
            } else {
                EventKind::Return
            },
            call_depth: 0,
            detail_seq: if i == 4 { 0 } else { crate::NO_DETAIL },
        }
    }

    /// A finished session of two threads in `format`, thread 2 with one detail record.
    fn recorded(out: &Path, format: EventFormat) -> PathBuf {
        let layout = SessionLayout::create(out, 31).unwrap().with_format(format);
        let mut m = Manifest::new(ClockType::Boottime);
        m.target_pid = 31;
        for tid in [1u32, 2] {
            let mut w = layout.create_index(tid, ClockType::Boottime).unwrap();
            for i in 0..100_000 {
                w.append_event(&event(tid, i)).unwrap();
            }
            if tid == 2 {
                let mut d = layout.create_detail(tid).unwrap();
                let header = DetailRecordHeader::for_payload(
                    DETAIL_CALL,
                    4,
                    tid,
                    event(tid, 4).timestamp_ns,
                    8,
                );
                d.append_record(&header, &[7; 8]).unwrap();
                d.finish().unwrap();
                w.set_has_detail(true).unwrap();
            }
            w.finish().unwrap();
            let mut entry = ThreadEntry {
                id: tid,
                has_detail: tid == 2,
                index: Default::default(),
                detail: Default::default(),
            };
            entry.index.attempted = 100_000;
            entry.index.persisted = 100_000;
            entry.detail.attempted = u64::from(tid == 2);
            entry.detail.persisted = u64::from(tid == 2);
            m.threads.push(entry);
        }
        m.accounting = m.thread_totals();
        m.finished = true;
        layout.write_manifest(&mut m).unwrap();
        layout.pid_dir().to_path_buf()
    }

    #[test]
    fn convert_session__either_way__then_same_events_details_and_manifest_in_the_other_format() {
        for (from, to) in [
            (EventFormat::Atc, EventFormat::Atf2),
            (EventFormat::Atf2, EventFormat::Atc),
        ] {
            for deferred in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let recorded = recorded(dir.path(), from);
                let mut source = match deferred {
                    false => Session::open(recorded).unwrap(),
                    true => Session::open_deferred(recorded).unwrap(),
                };
                let out = convert_session(
                    std::slice::from_mut(&mut source),
                    dir.path().join("out"),
                    to,
                )
                .unwrap();
                assert_eq!((out.threads, out.events), (2, 200_000));
                assert!(!source.unverified(1) && !source.unverified(2));
                assert!(source.warnings.is_empty(), "{:?}", source.warnings);
                let copy = Session::open(&out.pid_dirs[0]).unwrap();
                assert!(copy.warnings.is_empty(), "{:?}", copy.warnings);
                assert_eq!(copy.manifest, source.manifest);
                for (a, b) in source.threads.iter().zip(&copy.threads) {
                    assert_eq!(a.index.format(), from);
                    assert_eq!(b.index.format(), to);
                    assert!(b.index.finished());
                    assert_eq!(a.index.has_detail(), b.index.has_detail());
                    let ea: Vec<_> = a.index.events().map(Result::unwrap).collect();
                    let eb: Vec<_> = b.index.events().map(Result::unwrap).collect();
                    assert_eq!(ea, eb);
                    let ra: Vec<_> = a
                        .detail
                        .iter()
                        .flat_map(|d| d.records())
                        .map(Result::unwrap)
                        .collect();
                    let rb: Vec<_> = b
                        .detail
                        .iter()
                        .flat_map(|d| d.records())
                        .map(Result::unwrap)
                        .collect();
                    assert_eq!(ra, rb);
                }
            }
        }
    }

    #[test]
    fn convert_session__opened_deferred_with_a_damaged_chunk__then_fails_naming_the_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let pid_dir = recorded(dir.path(), EventFormat::Atc);
        let path = pid_dir.join("thread_2").join("index.atc");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[atc::FILE_HEADER_SIZE + atc::CHUNK_HEADER_SIZE + 20] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let mut source = Session::open_deferred(&pid_dir).unwrap();
        let err = convert_session(
            std::slice::from_mut(&mut source),
            dir.path().join("out"),
            EventFormat::Atf2,
        )
        .unwrap_err();
        assert!(
            matches!(
                &err,
                crate::Error::Chunk {
                    damage: atc::DecodeError::Checksum { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("thread_2"), "{err}");
    }
}
