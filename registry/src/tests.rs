#![allow(non_snake_case)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn small(capacity: u32) -> RegionConfig {
    RegionConfig {
        capacity,
        index: LaneConfig {
            rings: 2,
            ring_capacity: 1024,
        },
        detail: LaneConfig {
            rings: 2,
            ring_capacity: 1024,
        },
        ..RegionConfig::default()
    }
}

fn region(capacity: u32) -> SharedRegion {
    SharedRegion::create_with_clock(&small(capacity), &Clock::boottime()).unwrap()
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn region__create_then_open_fd__then_same_config_and_memory() {
    let tracer = region(64);
    let fd = tracer.inheritable_fd().unwrap();
    let agent = SharedRegion::open_fd(fd).unwrap();
    let (t, a) = (tracer.registry().unwrap(), agent.registry().unwrap());
    assert_eq!(t.config(), a.config());
    assert_eq!(a.clock(), Clock::boottime());
    a.register(1, 2).unwrap();
    assert_eq!(t.slots().count(), 1);
}

#[test]
fn region__created__then_memfd_is_the_owners_alone() {
    use std::os::fd::AsRawFd;
    let tracer = region(64);
    let fd = tracer.fd().unwrap().as_raw_fd();
    // SAFETY: a zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fstat on the region's own open fd, writing into `st`.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    assert_eq!(rc, 0);
    assert_eq!(st.st_mode & 0o777, 0o600);
}

#[test]
fn region_config__fit_to_file_size_limits__then_largest_that_fits_or_none() {
    let full = RegionConfig {
        capacity: 1024,
        ..RegionConfig::default()
    };
    let size = |c: &RegionConfig| layout_size(c).unwrap() as u64;
    assert_eq!(full.fit_to(size(&full)), Some(full.clone()));
    // Fewer slots first, as many as fit.
    let limit = size(&full) / 3;
    let fitted = full.fit_to(limit).unwrap();
    assert!(size(&fitted) <= limit);
    assert!(fitted.capacity < 1024 && fitted.capacity >= MIN_CAPACITY);
    assert_eq!(fitted.index, full.index);
    let one_more = RegionConfig {
        capacity: fitted.capacity + 1,
        ..fitted.clone()
    };
    assert!(size(&one_more) > limit);
    // Then smaller and fewer rings: `ulimit -f 2048` still records.
    let fitted = full.fit_to(2048 << 10).unwrap();
    assert!(size(&fitted) <= 2048 << 10);
    assert!(fitted.index.ring_capacity < full.index.ring_capacity);
    SharedRegion::create_with_clock(&fitted, &Clock::boottime()).unwrap();
    assert_eq!(full.fit_to(64 << 10), None);
}

#[test]
fn region__capacity_below_floor__then_bad_config_names_the_minimum() {
    let err = SharedRegion::create_with_clock(&small(8), &Clock::boottime()).unwrap_err();
    assert!(err.to_string().contains("at least 64"), "{err}");
}

#[test]
fn region__bad_magic__then_error_names_the_problem() {
    let tracer = region(64);
    let fd = tracer.fd().unwrap();
    // SAFETY: overwriting the first 4 bytes of our own memfd.
    unsafe {
        libc::pwrite(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            b"XXXX".as_ptr().cast(),
            4,
            0,
        )
    };
    let err = SharedRegion::open_fd(std::os::fd::AsRawFd::as_raw_fd(&fd)).unwrap_err();
    assert!(matches!(err, RegistryError::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains("not a tracer region"));
}

#[test]
fn region__bad_version__then_error_says_use_matching_agent() {
    let tracer = region(64);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tracer.fd().unwrap());
    // SAFETY: overwriting the version field of our own memfd.
    unsafe { libc::pwrite(fd, 99u32.to_le_bytes().as_ptr().cast(), 4, 4) };
    let err = SharedRegion::open_fd(fd).unwrap_err();
    assert!(err.to_string().contains("version 99"), "{err}");
}

#[test]
fn region__clock_shift_of_64__then_layout_error_names_the_shift() {
    let tracer = region(64);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tracer.fd().unwrap());
    let at = core::mem::offset_of!(crate::layout::ControlBlock<ring::StdBackend>, clock_shift);
    // SAFETY: overwriting the clock shift field of our own memfd.
    unsafe {
        libc::pwrite(
            fd,
            64u32.to_le_bytes().as_ptr().cast(),
            4,
            at as libc::off_t,
        )
    };
    let err = SharedRegion::open_fd(fd).unwrap_err();
    assert!(matches!(err, RegistryError::BadLayout(_)), "{err}");
    assert!(err.to_string().contains("clock shift 64"), "{err}");
}

#[test]
fn region__truncated__then_too_small_or_layout_error() {
    let tracer = region(64);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tracer.fd().unwrap());
    // SAFETY: shrinking our own memfd (the tracer mapping is not touched past this point).
    unsafe { libc::ftruncate(fd, 8192) };
    let err = SharedRegion::open_fd(fd).unwrap_err();
    assert!(matches!(err, RegistryError::TooSmall { .. }), "{err}");
}

#[test]
fn region__not_open_fd__then_error_names_the_fd() {
    let err = SharedRegion::open_fd(987).unwrap_err();
    assert!(err.to_string().contains("fd 987"), "{err}");
}

#[test]
fn registry__register_exit_recycle__then_slot_reused_with_new_serial() {
    let r = region(64);
    let reg = r.registry().unwrap();
    let a = reg.register(10, 5).unwrap();
    assert_eq!(reg.slot_info(a.slot).unwrap().state, SlotState::Active);
    assert!(
        reg.recycle(a.slot).is_err(),
        "active slots are not recycled"
    );
    reg.exit(a.slot);
    assert_eq!(reg.slot_info(a.slot).unwrap().state, SlotState::Exited);
    reg.recycle(a.slot).unwrap();
    assert_eq!(reg.recycled_count(), 1);
    let b = reg.register(10, 5).unwrap();
    assert_eq!(b.slot, a.slot);
    assert_ne!(b.serial, a.serial);
}

#[test]
fn registry__capacity_plus_one__then_registry_full_until_a_slot_is_recycled() {
    let r = region(64);
    let reg = r.registry().unwrap();
    let slots: Vec<u32> = (0..64).map(|t| reg.register(1, t).unwrap().slot).collect();
    assert_eq!(slots.iter().collect::<HashSet<_>>().len(), 64);
    assert!(matches!(
        reg.register(1, 64),
        Err(RegistryError::RegistryFull { capacity: 64 })
    ));
    reg.count_orphan(OrphanReason::RegistryFull);
    reg.exit(slots[3]);
    reg.recycle(slots[3]).unwrap();
    assert_eq!(reg.register(1, 64).unwrap().slot, slots[3]);
    let o = reg.orphan_counts();
    assert_eq!((o.attempted, o.registry_full), (1, 1));
    assert!(o.balanced());
}

#[test]
fn registry__orphan_during_agent_setup__then_counted_apart_from_registry_full() {
    let r = region(64);
    let reg = r.registry().unwrap();
    reg.count_orphan(OrphanReason::AgentSetup);
    reg.count_orphan(OrphanReason::AgentSetup);
    let o = reg.orphan_counts();
    assert_eq!((o.attempted, o.agent_setup, o.registry_full), (2, 2, 0));
    assert!(o.balanced());
}

#[test]
fn registry__1024_threads_race_to_register__then_every_slot_unique() {
    let r = SharedRegion::create_with_clock(&small(1024), &Clock::boottime()).unwrap();
    let r = Arc::new(r);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                let reg = r.registry().unwrap();
                (0..128)
                    .map(|i| reg.register(1, t * 128 + i).unwrap().slot)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<u32> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 1024);
    let reg = r.registry().unwrap();
    assert_eq!(reg.slots().count(), 1024);
    assert!(reg.register(1, 5000).is_err());
}

#[test]
fn registry__close_registrations__then_register_refused() {
    let r = region(64);
    let reg = r.registry().unwrap();
    reg.close_registrations(SECOND).unwrap();
    assert!(matches!(
        reg.register(1, 1),
        Err(RegistryError::RegistrationsClosed)
    ));
    assert_eq!(reg.slots().count(), 0);
}

#[test]
fn registry__stop_accepting__then_later_events_counted_as_shutdown() {
    let r = region(64);
    let reg = r.registry().unwrap();
    let me = reg.register(1, 1).unwrap();
    // SAFETY: the only producer of this slot.
    let mut tx = unsafe { me.lanes.index.producer() };
    assert!(me.writer.begin());
    tx.push(&[1; 32]).unwrap();
    me.writer.end();
    assert!(reg.stop_accepting(SECOND).stragglers.is_empty());
    assert!(!me.writer.begin());
    me.writer.count_reentrant();
    let c = reg.counts(me.slot).unwrap();
    assert_eq!(
        (c.attempted, c.accepted, c.shutdown, c.reentrant),
        (3, 1, 1, 1)
    );
    assert!(c.balanced());
}

/// The events a slot attempted are counted by its write-section sequence: each section once,
/// whether it published, was refused, or was left open by an image that exec'd (and closed by
/// `retire_pid`, which adds nothing for a slot whose sections were all closed).
#[test]
fn counts__sections_published_refused_and_left_open__then_each_attempted_once() {
    let r = region(64);
    let reg = r.registry().unwrap();
    let mut me = reg.register(7, 7).unwrap();
    // SAFETY: the only producer of this slot.
    let mut tx = unsafe { me.lanes.index.producer() };
    for _ in 0..3 {
        let section = me.writer.open(|| false).expect("accepting");
        tx.push(&[1; 32]).unwrap();
        me.writer.close(section);
    }
    assert_eq!(reg.counts(me.slot).unwrap().attempted, 3);
    // An exec with every section closed: nothing added.
    assert_eq!(reg.retire_pid(7), 1);
    assert_eq!(reg.counts(me.slot).unwrap().attempted, 3);

    let mut other = reg.register(8, 8).unwrap();
    // The old image dies inside its second section: counted, and still counted once closed.
    assert!(other.writer.begin());
    other.writer.end();
    // Never closed, as by a thread that dies inside it.
    let _open = other.writer.open(|| false).expect("accepting");
    assert_eq!(reg.counts(other.slot).unwrap().attempted, 2);
    assert_eq!(reg.retire_pid(8), 1);
    assert_eq!(reg.counts(other.slot).unwrap().attempted, 2);

    let third = reg.register(9, 9).unwrap();
    assert!(reg.stop_accepting(SECOND).stragglers.is_empty());
    assert!(!third.writer.begin());
    let c = reg.counts(third.slot).unwrap();
    assert_eq!((c.attempted, c.shutdown), (1, 1));
}

#[test]
fn writer__open_and_close__then_counted_and_seen_by_the_stopper() {
    let r = region(64);
    let reg = r.registry().unwrap();
    let mut me = reg.register(1, 1).unwrap();
    // SAFETY: the only producer of this slot.
    let mut tx = unsafe { me.lanes.index.producer() };
    // Unfenced: the refresh is not asked.
    me.writer.set_fenced(false);
    let section = me
        .writer
        .open(|| unreachable!("asked while unfenced"))
        .unwrap();
    tx.push(&[1; 32]).unwrap();
    me.writer.close(section);
    // Fenced, and told to keep it: still fenced; told not to: unfenced for good.
    me.writer.set_fenced(true);
    let section = me.writer.open(|| true).unwrap();
    tx.push(&[2; 32]).unwrap();
    me.writer.close(section);
    assert!(me.writer.fenced());
    let section = me.writer.open(|| false).unwrap();
    tx.push(&[3; 32]).unwrap();
    assert!(!me.writer.fenced());
    // Left open: the stopper sees this section and reports it once the wait times out.
    let report = reg.stop_accepting(Duration::from_millis(5));
    assert_eq!(report.stragglers.len(), 1);
    me.writer.close(section);
    // Closed sections leave the sequence even: a refused open leaves nothing open.
    assert!(me.writer.open(|| true).is_none());
    assert!(reg.stop_now().is_empty());
    let c = reg.counts(me.slot).unwrap();
    assert_eq!((c.attempted, c.accepted, c.shutdown), (4, 3, 1));
    assert!(c.balanced(), "{c:?}");
}

#[test]
fn writer__open_unfenced__then_counted_and_seen_by_the_stopper_as_open() {
    let r = region(64);
    let reg = r.registry().unwrap();
    let mut me = reg.register(1, 1).unwrap();
    // SAFETY: the only producer of this slot.
    let mut tx = unsafe { me.lanes.index.producer() };
    me.writer.set_fenced(false);
    let section = me.writer.open_unfenced().unwrap();
    tx.push(&[1; 32]).unwrap();
    me.writer.close(section);
    let section = me.writer.open_unfenced().unwrap();
    tx.push(&[2; 32]).unwrap();
    // Left open: the stopper sees this section and reports it once the wait times out.
    let report = reg.stop_accepting(Duration::from_millis(5));
    assert_eq!(report.stragglers.len(), 1);
    me.writer.close(section);
    // Stopped: refused, counted, and nothing left open.
    assert!(me.writer.open_unfenced().is_none());
    assert!(reg.stop_now().is_empty());
    let c = reg.counts(me.slot).unwrap();
    assert_eq!((c.attempted, c.accepted, c.shutdown), (3, 2, 1));
    assert!(c.balanced(), "{c:?}");
}

#[test]
fn registry__writer_inside_section__then_stop_reports_straggler_after_timeout() {
    let r = region(64);
    let reg = r.registry().unwrap();
    let me = reg.register(1, 7).unwrap();
    assert!(me.writer.begin());
    let report = reg.stop_accepting(Duration::from_millis(5));
    assert_eq!(report.stragglers.len(), 1);
    assert_eq!(report.stragglers[0].tid, 7);
    me.writer.end();
}

/// A watch that says every owner is dead, or that the wait is cancelled.
struct Watch {
    alive: bool,
    cancelled: bool,
    asked: u32,
}

impl crate::StopWatch for Watch {
    fn owner_alive(&mut self, _slot: &crate::SlotInfo) -> bool {
        self.asked += 1;
        self.alive
    }

    fn cancelled(&mut self) -> bool {
        self.cancelled
    }
}

#[test]
fn registry__writer_died_inside_section__then_stop_completes_without_waiting() {
    let r = region(64);
    let reg = r.registry().unwrap();
    let me = reg.register(1, 7).unwrap();
    // SAFETY: the only producer of this slot.
    let mut tx = unsafe { me.lanes.index.producer() };
    assert!(me.writer.begin());
    tx.push(&[1; 32]).unwrap();
    me.writer.end();
    // Killed inside its next section: it never leaves it.
    assert!(me.writer.begin());
    let mut watch = Watch {
        alive: false,
        cancelled: false,
        asked: 0,
    };
    let report = reg.stop_accepting_with(Duration::from_secs(3600), &mut watch);
    assert!(report.complete(), "{report:?}");
    assert_eq!(report.dead.len(), 1);
    assert_eq!(report.dead[0].tid, 7);
    assert!(!report.cancelled);
    assert!(watch.asked >= 1);
}

#[test]
fn registry__wait_cancelled__then_open_sections_are_stragglers_at_once() {
    let r = region(64);
    let reg = r.registry().unwrap();
    let a = reg.register(1, 7).unwrap();
    let b = reg.register(1, 8).unwrap();
    assert!(a.writer.begin());
    assert!(b.writer.begin());
    let mut watch = Watch {
        alive: true,
        cancelled: true,
        asked: 0,
    };
    let report = reg.stop_accepting_with(Duration::from_secs(3600), &mut watch);
    assert!(report.cancelled);
    assert!(report.dead.is_empty());
    let mut tids: Vec<u32> = report.stragglers.iter().map(|s| s.tid).collect();
    tids.sort();
    assert_eq!(tids, vec![7, 8]);
    a.writer.end();
    b.writer.end();
}

#[test]
fn registry__triggers__then_published_in_order() {
    let r = region(64);
    let reg = r.registry().unwrap();
    reg.set_triggers(&[0x1000, 0x2000]).unwrap();
    assert_eq!(reg.trigger_count(), 2);
    assert_eq!((reg.trigger(0), reg.trigger(1)), (0x1000, 0x2000));
    assert!(reg.set_triggers(&[0; MAX_TRIGGERS + 1]).is_err());
    reg.set_trigger_ranges(&[(0x1000, 0x1040), (0x2000, 0x2010)])
        .unwrap();
    assert_eq!(reg.trigger_range_count(), 2);
    assert_eq!(reg.trigger_range(1), (0x2000, 0x2010));
    assert!(reg
        .set_trigger_ranges(&[(0, 0); MAX_TRIGGERS / 2 + 1])
        .is_err());
}

#[test]
fn registry__retire_pid__then_previous_image_slots_exited() {
    let r = region(64);
    let reg = r.registry().unwrap();
    let a = reg.register(77, 1).unwrap();
    let b = reg.register(78, 2).unwrap();
    assert_eq!(reg.retire_pid(77), 1);
    assert_eq!(reg.slot_info(a.slot).unwrap().state, SlotState::Exited);
    assert_eq!(reg.slot_info(b.slot).unwrap().state, SlotState::Active);
}

/// Four producers write while a drain thread drains; after the stop handshake and a final drain,
/// every thread's accounting is exact and the drained bytes equal the accepted events.
#[test]
fn registry__four_producers_and_a_drain__then_accounting_exact() {
    let r = Arc::new(region(64));
    let done = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..4)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                let reg = r.registry().unwrap();
                let me = reg.register(1, t).unwrap();
                // SAFETY: the only producer of this slot.
                let mut tx = unsafe { me.lanes.index.producer() };
                let mut n = 0u64;
                while me.writer.begin() {
                    let _ = tx.push(&[t as u8; 32]);
                    me.writer.end();
                    n += 1;
                    if n == 20_000 {
                        std::thread::yield_now();
                    }
                }
                (me.slot, n + 1)
            })
        })
        .collect();
    let reg = r.registry().unwrap();
    let mut drained = std::collections::HashMap::<u32, u64>::new();
    let mut consumers = std::collections::HashMap::new();
    let mut pass = |final_pass: bool| {
        for s in reg.slots() {
            let c = consumers.entry(s.index).or_insert_with(|| {
                // SAFETY: the test is the only consumer.
                unsafe { reg.lanes(s.index).unwrap().index.consumer() }
            });
            c.drain(final_pass, |chunk| -> Result<(), ()> {
                *drained.entry(s.index).or_default() += chunk.bytes.len() as u64 / 32;
                Ok(())
            })
            .unwrap();
        }
    };
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(100) {
        pass(false);
    }
    assert!(reg.stop_accepting(SECOND).stragglers.is_empty());
    done.store(true, Ordering::Relaxed);
    pass(true);
    for p in producers {
        let (slot, attempted) = p.join().unwrap();
        let c = reg.counts(slot).unwrap();
        assert_eq!(c.attempted, attempted);
        assert!(c.balanced(), "{c:?}");
        assert_eq!(c.shutdown, 1);
        assert_eq!(drained.get(&slot).copied().unwrap_or(0), c.accepted);
    }
}

#[test]
fn module_log__more_reports_than_entries__then_the_excess_is_counted_lost() {
    let region = region(64);
    let reg = region.registry().unwrap();
    let report = crate::ModuleReport {
        pid: 9,
        image: reg.new_image(),
        flags: crate::MODULE_MAIN,
        bias: 0x1000,
        dev: 1,
        ino: 2,
        mtime_ns: 3,
        path: &[b'x'; 300],
    };
    let first = reg.report_module(&report).unwrap();
    let e = reg.module(first).unwrap();
    assert_eq!(e.path.len(), crate::MODULE_PATH_MAX);
    assert_eq!(e.flags, crate::MODULE_MAIN | crate::MODULE_TRUNCATED);
    for _ in 1..crate::MODULE_LOG_CAPACITY {
        assert!(reg.report_module(&report).is_some());
    }
    assert_eq!(reg.modules_lost(), 0);
    assert!(reg.report_module(&report).is_none());
    assert_eq!(reg.modules_lost(), 1);
    assert_eq!(reg.modules_claimed() as usize, crate::MODULE_LOG_CAPACITY);
    assert_eq!(reg.new_image(), 1, "image serials count up from 0");
}

#[test]
fn module_log__no_wait_asked__then_wait_returns_at_once() {
    let region = region(64);
    let reg = region.registry().unwrap();
    assert!(reg.wait_module_ack(0, 10_000_000));
    reg.set_module_wait(true);
    assert!(
        !reg.wait_module_ack(0, 1_000),
        "nobody acknowledges: bounded"
    );
    reg.ack_modules(1);
    assert!(reg.wait_module_ack(0, 1_000));
}
