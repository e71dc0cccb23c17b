//! The simulated world: the shared region on heap memory, the target's producer threads doing
//! what the agent's hook does, and each thread's own ledger of what happened to its events.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use modelsync::Shuttle;
use ring::HeapRegion;

use registry::{Clock, Handshake, LaneConfig, OrphanReason, RegionConfig, Registry, RegistryError};

use crate::clock;
use crate::scenario::Scenario;

/// What a producer saw happen to one of its events (from the return values of the real API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Written into the index lane.
    Accepted,
    /// Every ring full after the bounded wait.
    RingFull,
    /// Acceptance had stopped (at `begin`, or while waiting for ring space).
    Shutdown,
    /// The thread held no slot.
    Orphan(OrphanReason),
}

/// One thread's own record of its events, kept outside the system under test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// The fate of event `seq`, in order.
    pub fates: Vec<Fate>,
    /// Sequence numbers of the detail records written into the detail lane.
    pub details: Vec<u32>,
    /// Detail records dropped because every detail ring was full.
    pub detail_full: u64,
    /// Detail records followed at once by a mark of their window: they must be persisted.
    pub marked: Vec<u32>,
}

/// The region, on heap memory, shared by the simulated threads.
pub(crate) struct Shared {
    region: HeapRegion,
    /// Threads that died inside a write section (their tids), as the kernel would report them.
    pub(crate) dead: std::sync::Mutex<Vec<u32>>,
}

impl Shared {
    pub(crate) fn new(scenario: &Scenario) -> Self {
        let config = RegionConfig {
            capacity: scenario.capacity,
            index: LaneConfig {
                rings: 2,
                ring_capacity: 256,
            },
            detail: LaneConfig {
                rings: 2,
                ring_capacity: 256,
            },
            detail_enabled: true,
            handshake: Handshake::Fence,
            ..RegionConfig::default()
        };
        // The layout size under the model backend differs from production's: ask `init` for it.
        let probe = HeapRegion::new(1);
        // SAFETY: `init` checks the size before writing anything; this memory is too small.
        let len = match unsafe {
            Registry::<Shuttle>::init(probe.as_non_null(), &config, &Clock::boottime())
        } {
            Err(RegistryError::TooSmall { needed, .. }) => needed,
            other => panic!("sizing the region: {other:?}"),
        };
        let region = HeapRegion::new(len);
        // SAFETY: fresh, page-aligned memory of the size the layout needs, used by nobody else.
        unsafe { Registry::<Shuttle>::init(region.as_non_null(), &config, &Clock::boottime()) }
            .expect("initialising the simulated region");
        Shared {
            region,
            dead: Default::default(),
        }
    }

    pub(crate) fn view(&self) -> Registry<'_, Shuttle> {
        // SAFETY: initialised in `new` with this backend; the view borrows `self`.
        unsafe { Registry::attach(self.region.as_non_null()) }.expect("attaching to the region")
    }
}

/// An index event carrying the thread and its per-thread sequence number.
fn event(tid: u32, seq: u32) -> [u8; 32] {
    let mut ev = [0u8; 32];
    // Timestamp: monotonic per thread. The region's clock is `CLOCK_BOOTTIME`, whose readings are
    // nanoseconds: the drain's conversion leaves it as written.
    ev[0..8].copy_from_slice(&u64::from(seq).to_le_bytes());
    ev[8..16].copy_from_slice(&u64::from(seq).to_le_bytes());
    ev[16..20].copy_from_slice(&tid.to_le_bytes());
    ev[20..24].copy_from_slice(&1u32.to_le_bytes());
    ev[28..32].copy_from_slice(&atf::NO_DETAIL.to_le_bytes());
    ev
}

/// A detail record (24-byte header, 8-byte payload) linked to index event `seq`.
fn detail(tid: u32, seq: u32) -> [u8; 32] {
    let mut rec = [0u8; 32];
    rec[0..4].copy_from_slice(&32u32.to_le_bytes());
    rec[4..6].copy_from_slice(&atf::DETAIL_CALL.to_le_bytes());
    rec[8..12].copy_from_slice(&seq.to_le_bytes());
    rec[12..16].copy_from_slice(&tid.to_le_bytes());
    rec[16..24].copy_from_slice(&u64::from(seq).to_le_bytes());
    rec
}

/// The tid of life `life` of producer `p`.
pub(crate) fn tid_of(p: u32, life: u32) -> u32 {
    1000 + p * 100 + life
}

/// One target thread, doing what the agent's hook does per event, until it is done or `killed`
/// (checked before each event, as the tracer's stop signal ends the target between two).
pub(crate) fn producer(
    shared: &Shared,
    scenario: &Scenario,
    tid: u32,
    progress: &AtomicU64,
    killed: &std::sync::atomic::AtomicBool,
    die_at: Option<u32>,
) -> Ledger {
    let reg = shared.view();
    let mut ledger = Ledger::default();
    let mut me = None;
    for seq in 0..scenario.events {
        // Not shuttle atomics: bookkeeping for the stopper's and the injector's choices and the
        // kill, not scheduling points.
        if killed.load(Relaxed) {
            return ledger;
        }
        progress.fetch_add(1, Relaxed);
        clock::advance(clock::EVENT_TIME);
        if me.is_none() {
            // No slot yet: try to claim one; on failure this event is an orphan drop and the
            // next event tries again (the agent's behaviour).
            match reg.register(1, tid) {
                Ok(r) => me = Some(r),
                Err(RegistryError::RegistryFull { .. }) => {
                    reg.count_orphan(OrphanReason::RegistryFull);
                    ledger.fates.push(Fate::Orphan(OrphanReason::RegistryFull));
                    continue;
                }
                Err(RegistryError::RegistrationsClosed) => {
                    reg.count_orphan(OrphanReason::Shutdown);
                    ledger.fates.push(Fate::Orphan(OrphanReason::Shutdown));
                    continue;
                }
                Err(e) => panic!("thread {tid}: registration failed: {e}"),
            }
        }
        let Some(r) = me.as_ref() else { continue };
        // SAFETY: this thread is the only producer of its slot's lanes while it holds the slot.
        let (mut index, mut details) =
            unsafe { (r.lanes.index.producer(), r.lanes.detail.producer()) };
        let writer = &r.writer;
        if !writer.begin() {
            ledger.fates.push(Fate::Shutdown);
            continue;
        }
        if scenario.detail_every > 0 && seq % scenario.detail_every == 0 {
            if details.push(&detail(tid, seq)).is_ok() {
                ledger.details.push(seq);
                let nth = ledger.details.len() as u32;
                if scenario.mark_every > 0 && nth % scenario.mark_every == 0 {
                    details.mark_active();
                    ledger.marked.push(seq);
                }
            } else {
                ledger.detail_full += 1;
            }
        }
        let fate = match index.push_unless(&event(tid, seq), || !writer.still_accepting()) {
            Ok(()) => Fate::Accepted,
            Err(ring::PushError::Abandoned) => {
                writer.drop_for_shutdown();
                Fate::Shutdown
            }
            Err(ring::PushError::Full) => Fate::RingFull,
        };
        if die_at == Some(seq) {
            // Killed here, inside the section: no `end`, no `exit`. The kernel reports the death
            // only after the thread's last store.
            ledger.fates.push(fate);
            shared.dead.lock().expect("dead lock").push(tid);
            return ledger;
        }
        writer.end();
        ledger.fates.push(fate);
    }
    if let Some(r) = me {
        reg.exit(r.slot);
    }
    ledger
}
