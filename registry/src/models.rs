//! loom models of the registry's contracts (`cargo test -p registry --features loom --release
//! --lib`): slot claim/release/reuse, registration closing, the stop handshake.
//!
//! Each model runs the production protocol code (`Registry` over the ring crate's `Backend`) on
//! loom's atomics, over heap memory, with two or three threads. The models use
//! [`Handshake::Fence`]: [`Handshake::Membarrier`] is the same protocol with the producer's fence
//! moved to the stopper's side by the kernel, which loom cannot express.

#![allow(non_snake_case)]

use loom::sync::Arc;
use loom::thread;
use modelsync::Loom;
use ring::HeapRegion;
use std::time::Duration;

use crate::{Clock, Handshake, LaneConfig, RegionConfig, Registry, RegistryError, SlotState};

struct Shared {
    region: HeapRegion,
}

impl Shared {
    fn new(capacity: u32) -> Arc<Self> {
        let config = RegionConfig {
            capacity,
            index: LaneConfig {
                rings: 2,
                ring_capacity: 256,
            },
            detail: LaneConfig {
                rings: 2,
                ring_capacity: 256,
            },
            handshake: Handshake::Fence,
            ..RegionConfig::default()
        };
        let len = crate::layout::geometry::<Loom>(&config)
            .unwrap()
            .layout_size;
        let region = HeapRegion::new(len);
        // SAFETY: fresh, page-aligned, exclusive memory of the right size.
        unsafe { Registry::<Loom>::init(region.as_non_null(), &config, &Clock::boottime()) }
            .unwrap();
        Arc::new(Shared { region })
    }

    fn view(&self) -> Registry<'_, Loom> {
        // SAFETY: initialised above; lives as long as `self`.
        unsafe { Registry::attach(self.region.as_non_null()) }.unwrap()
    }
}

const TIMEOUT: Duration = Duration::from_millis(1);

/// Two threads race for the two slots of a region while a third finds it full: every claim is
/// unique, and the loser of a full registry is told so.
#[test]
fn slot__concurrent_claims__then_each_slot_claimed_once() {
    loom::model(|| {
        let shared = Shared::new(2);
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let s = shared.clone();
                thread::spawn(move || s.view().register(1, t).map(|r| r.slot).ok())
            })
            .collect();
        let reg = shared.view();
        let mine = reg.register(1, 2).map(|r| r.slot).ok();
        let mut got: Vec<u32> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .chain(mine)
            .collect();
        assert_eq!(got.len(), 2, "two slots, three claimants: exactly two win");
        got.sort();
        assert_eq!(got, vec![0, 1]);
    });
}

/// A thread exits, the tracer recycles its slot while another thread tries to claim it: the
/// claimer gets the slot only once it is FREE, with fresh lanes and a new serial, and its event
/// reaches a consumer made after the claim.
#[test]
fn slot__exit_recycle_reuse__then_reused_only_after_recycle() {
    loom::model(|| {
        let shared = Shared::new(1);
        let first = shared.view().register(1, 1).unwrap();
        shared.view().exit(first.slot);
        let s2 = shared.clone();
        let tracer = thread::spawn(move || s2.view().recycle(0).unwrap());
        let reg = shared.view();
        let second = loop {
            match reg.register(1, 2) {
                Ok(r) => break r,
                Err(RegistryError::RegistryFull { .. }) => thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        tracer.join().unwrap();
        assert_eq!(second.slot, 0);
        assert_ne!(second.serial, first.serial);
        let info = reg.slot_info(0).unwrap();
        assert_eq!((info.state, info.tid), (SlotState::Active, 2));
        // SAFETY: the only producer and consumer of the fresh lanes.
        let (mut tx, mut rx) = unsafe {
            (
                second.lanes.index.producer(),
                reg.lanes(0).unwrap().index.consumer(),
            )
        };
        tx.push(&[9; 32]).unwrap();
        let mut n = 0;
        rx.drain(true, |c| -> Result<(), ()> {
            n += c.bytes.len();
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 32);
    });
}

/// Registration closing races a claim: once `close_registrations` returns Ok, the set of active
/// slots is final (a claim either completed before, or is refused).
#[test]
fn registry__close_races_claim__then_no_slot_activates_after_close() {
    loom::model(|| {
        let shared = Shared::new(1);
        let s2 = shared.clone();
        let claimer = thread::spawn(move || s2.view().register(1, 1).is_ok());
        let reg = shared.view();
        let closed = reg.close_registrations(TIMEOUT).is_ok();
        let seen_at_close = reg.slots().count();
        let registered = claimer.join().unwrap();
        if closed {
            assert_eq!(
                reg.slots().count(),
                seen_at_close,
                "a slot became active after registrations closed"
            );
        }
        assert_eq!(reg.slots().count(), usize::from(registered));
    });
}

/// Drains every slot the tracer sees; returns the events taken.
fn final_drain(reg: &Registry<'_, Loom>) -> u64 {
    let mut drained = 0u64;
    for info in reg.slots() {
        // SAFETY: the only consumer.
        let mut rx = unsafe { reg.lanes(info.index).unwrap().index.consumer() };
        rx.drain(true, |c| -> Result<(), ()> {
            drained += c.bytes.len() as u64 / 32;
            Ok(())
        })
        .unwrap();
    }
    drained
}

/// The stop handshake: a producer registers and writes two events while the stopper stops acceptance and, if no
/// producer is reported inside a write, drains. Every accepted event is in that final drain, and
/// attempted = accepted + shutdown.
fn stop_handshake(fenced: bool) {
    loom::model(move || {
        let shared = Shared::new(1);
        let reg = shared.view();
        let slot = 0;
        let s2 = shared.clone();
        let producer = thread::spawn(move || {
            let reg = s2.view();
            let me = reg.register(1, 1).unwrap();
            let mut writer = me.writer;
            writer.set_fenced(fenced);
            // SAFETY: the only producer of the slot's index lane.
            let mut tx = unsafe { me.lanes.index.producer() };
            // The first event through `begin`/`end`, the second through `open`/`close` (the
            // agent's hot path: the fence kept, as `still_fenced` says).
            if writer.begin() {
                tx.push(&[0; 32]).unwrap();
                writer.end();
            }
            if let Some(section) = writer.open(|| fenced) {
                tx.push(&[1; 32]).unwrap();
                writer.close(section);
            }
        });
        let report = reg.stop_accepting(TIMEOUT);
        // The final drain covers the slots the tracer sees; a slot registered after the stop
        // must not have accepted anything.
        let drained = if report.complete() {
            final_drain(&reg)
        } else {
            0
        };
        producer.join().unwrap();
        let counts = reg.counts(slot).unwrap();
        assert!(counts.balanced(), "{counts:?}");
        assert_eq!(counts.attempted, 2);
        if report.stragglers.is_empty() {
            assert_eq!(
                drained, counts.accepted,
                "an event was published after the stopper saw every producer out"
            );
        }
    });
}

#[test]
fn handshake__stop_races_producer__then_final_drain_has_every_accepted_event() {
    stop_handshake(true);
}

/// Negative control: without the producer's fence (and no membarrier, which loom cannot run), loom
/// finds the schedule where the producer publishes after the stopper saw it out.
#[test]
#[should_panic(expected = "published after the stopper")]
fn handshake__producer_without_barrier__then_model_catches_late_publish() {
    stop_handshake(false);
}

/// A watch over loom's atomics: the owner is dead once it said so (the kernel's view of its exit,
/// which comes after its last store), and the wait is never cancelled.
struct DeathWatch(Arc<loom::sync::atomic::AtomicBool>);

impl crate::StopWatch for DeathWatch {
    fn owner_alive(&mut self, _slot: &crate::SlotInfo) -> bool {
        // Acquire: pairs with the Release store of the producer's death, as the kernel's exit
        // orders a dead thread's stores before anyone can see it dead.
        !self.0.load(loom::sync::atomic::Ordering::Acquire)
    }

    fn cancelled(&mut self) -> bool {
        false
    }
}

/// The target dies mid-write: a producer publishes an event, enters its next write section,
/// publishes that event too and dies before leaving the section, while the stopper stops
/// acceptance. If the stop completes, the final drain holds every event the producer published,
/// and a section it left open is reported dead, not waited for.
#[test]
fn handshake__producer_dies_inside_section__then_stop_completes_with_every_published_event() {
    loom::model(|| {
        let shared = Shared::new(1);
        let died = Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let (s2, d2) = (shared.clone(), died.clone());
        let producer = thread::spawn(move || {
            let reg = s2.view();
            let registration = reg.register(1, 1).unwrap();
            let mut writer = registration.writer;
            writer.set_fenced(true);
            // SAFETY: the only producer of the slot's index lane.
            let mut tx = unsafe { registration.lanes.index.producer() };
            if writer.begin() {
                tx.push(&[0; 32]).unwrap();
                writer.end();
            }
            if writer.begin() {
                tx.push(&[1; 32]).unwrap();
                // Killed here: no `end`.
            }
            d2.store(true, loom::sync::atomic::Ordering::Release);
        });
        let reg = shared.view();
        let report = reg.stop_accepting_with(TIMEOUT, &mut DeathWatch(died.clone()));
        let drained = if report.complete() {
            final_drain(&reg)
        } else {
            0
        };
        producer.join().unwrap();
        let counts = reg.counts(0).unwrap();
        if report.complete() {
            // A slot registered after the stop accepted nothing, and its lane is empty.
            assert_eq!(
                drained, counts.accepted,
                "an event published before the death is missing from the final drain"
            );
        }
    });
}
fn report<'p>(pid: u32, flags: u32, path: &'p [u8]) -> crate::ModuleReport<'p> {
    crate::ModuleReport {
        pid,
        image: 0,
        flags,
        bias: u64::from(pid) << 12,
        dev: 1,
        ino: u64::from(pid),
        mtime_ns: 7,
        path,
    }
}

/// Two processes' agents append to the module log while the tracer reads it: claims are unique,
/// and an entry the tracer sees published has every field as its writer wrote it.
#[test]
fn module_log__two_writers_and_a_reader__then_published_entries_are_whole() {
    loom::model(|| {
        let shared = Shared::new(1);
        let writers: Vec<_> = [(1u32, &b"/bin/one"[..]), (2, &b"/lib/two.so"[..])]
            .into_iter()
            .map(|(pid, path)| {
                let s = shared.clone();
                thread::spawn(move || s.view().report_module(&report(pid, 0, path)))
            })
            .collect();
        let reg = shared.view();
        let check = |e: &crate::ModuleRecord| {
            let want: &[u8] = if e.pid == 1 {
                b"/bin/one"
            } else {
                b"/lib/two.so"
            };
            assert_eq!(e.path, want, "path of pid {}", e.pid);
            assert_eq!(
                (e.bias, e.ino, e.mtime_ns),
                (u64::from(e.pid) << 12, u64::from(e.pid), 7)
            );
        };
        for i in 0..reg.modules_claimed() {
            if let Some(e) = reg.module(i) {
                check(&e);
            }
        }
        let mut at: Vec<u32> = writers
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect();
        at.sort();
        assert_eq!(at, vec![0, 1], "each claim is its own entry");
        for i in at {
            check(&reg.module(i).expect("published after join"));
        }
    });
}

/// The acknowledgement: an agent that reported its objects and saw the tracer acknowledge them
/// sees the trigger addresses the tracer published before acknowledging.
#[test]
fn module_log__ack_after_triggers__then_agent_sees_the_triggers() {
    loom::model(|| {
        let shared = Shared::new(1);
        shared.view().set_module_wait(true);
        let s2 = shared.clone();
        let agent = thread::spawn(move || {
            let reg = s2.view();
            let at = reg
                .report_module(&report(1, crate::MODULE_LAST, b"/bin/app"))
                .unwrap();
            if reg.wait_module_ack(at, 1_000) {
                assert_eq!(reg.trigger_count(), 1, "acknowledged before the trigger");
                assert_eq!(reg.trigger(0), 0x1234);
            }
        });
        let reg = shared.view();
        let mut step = 0;
        loop {
            if reg.module(0).is_some() {
                reg.set_triggers(&[0x1234]).unwrap();
                reg.ack_modules(1);
                break;
            }
            if step > 2 {
                break;
            }
            step += 1;
            thread::yield_now();
        }
        agent.join().unwrap();
    });
}
