//! What the drain's integration tests share: producer threads doing what the agent does.

use atf::{EventKind, IndexEvent, NO_DETAIL};
use registry::{Clock, RegionConfig, Registry, SharedRegion};

/// A region for `config` on the `CLOCK_BOOTTIME` clock: its readings are nanoseconds, so the
/// timestamps the producers here write (1, 2, ...) reach the files as written (the drain's
/// conversion is the identity). A calibrated TSC clock would map them, all below its `tsc_base`,
/// to one time.
#[allow(dead_code)]
pub fn region(config: &RegionConfig) -> SharedRegion {
    SharedRegion::create_with_clock(config, &Clock::boottime()).unwrap()
}

/// Detail records each producer thread marks (the first three events).
pub const DETAIL_PER_THREAD: u64 = 3;

/// Producer threads write `per_thread` index events each, timestamps 1, 2, ..., and a marked
/// detail window of three records, as the agent would, then exit their slots.
pub fn produce(registry: Registry<'_>, threads: u32, per_thread: u64) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let tid = 10_000 + t;
                let me = registry.register(std::process::id(), tid).expect("a slot");
                // SAFETY: this thread is the slot's only producer.
                let mut index = unsafe { me.lanes.index.producer() };
                // SAFETY: as above.
                let mut detail = unsafe { me.lanes.detail.producer() };
                for seq in 0..per_thread {
                    let event = IndexEvent {
                        timestamp_ns: seq + 1,
                        function_id: u64::from(t),
                        thread_id: tid,
                        kind: if seq % 2 == 0 {
                            EventKind::Call
                        } else {
                            EventKind::Return
                        },
                        call_depth: 0,
                        detail_seq: NO_DETAIL,
                    };
                    if me.writer.begin() {
                        let _ = index.push(&event.encode());
                        if seq < DETAIL_PER_THREAD {
                            let header = atf::DetailRecordHeader::for_payload(
                                atf::DETAIL_CALL,
                                seq as u32,
                                tid,
                                seq + 1,
                                8,
                            );
                            let mut record = header.to_bytes().to_vec();
                            record.extend_from_slice(&[0xab; 8]);
                            let _ = detail.push(&record);
                            detail.mark_active();
                        }
                        me.writer.end();
                    }
                }
                registry.exit(me.slot);
            });
        }
    });
}

/// The stop's first two phases as the tracer runs them, with every producer done: acceptance
/// stops with no thread left inside a write, then registrations close.
pub fn stop_producers(registry: Registry<'_>) {
    let stopped = registry.stop_accepting(std::time::Duration::from_secs(5));
    assert!(
        stopped.stragglers.is_empty(),
        "no thread stays inside a write"
    );
    registry
        .close_registrations(std::time::Duration::from_secs(5))
        .unwrap();
}

/// The timestamps of a thread's index events, in file order.
#[allow(dead_code)]
pub fn event_times(thread: &atf::SessionThread) -> Vec<u64> {
    thread
        .index
        .events()
        .map(|e| e.unwrap().timestamp_ns)
        .collect()
}
