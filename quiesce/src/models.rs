//! loom models of the presence protocol (`cargo test -p quiesce --features loom --release --lib`).
//! The "memory" is a loom cell that the reclaim writes (its unmapping): a read of it that the
//! reclaim is not ordered after is reported as a causality violation.

#![allow(non_snake_case)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{fence, AtomicU32, AtomicU64};
use loom::sync::Arc;
use loom::thread;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use crate::{Quiesce, Seat};

const TOKEN: u64 = 0x1000;

struct World {
    q: Quiesce<2, 2>,
    /// The published pointer: TOKEN while the memory may be used, 0 once unpublished.
    live: AtomicU64,
    /// The memory: read by users, overwritten by its unmapping.
    memory: UnsafeCell<u64>,
    /// How many times the memory was reclaimed.
    reclaimed: AtomicU32,
}

impl World {
    fn new() -> Arc<World> {
        Arc::new(World {
            q: Quiesce::new(),
            live: AtomicU64::new(TOKEN),
            memory: UnsafeCell::new(42),
            reclaimed: AtomicU32::new(0),
        })
    }

    fn unmap(&self, token: u64) {
        assert_eq!(token, TOKEN);
        self.memory.with_mut(|p| {
            // SAFETY: loom checks that no read races this write.
            unsafe { *p = 0xDEAD }
        });
        self.reclaimed.fetch_add(1, Relaxed);
    }

    /// A hook: marks, reads the pointer, uses the memory if published, leaves (and reclaims if it
    /// is the last one out).
    fn call(&self, seat: Seat, with_barrier: bool) {
        self.call_leaving(seat, with_barrier, false);
    }

    /// [`World::call`], with the leave looking for waiting tokens before its marker's store
    /// (`looking_first`) or after it (the protocol's order).
    fn call_leaving(&self, seat: Seat, with_barrier: bool, looking_first: bool) {
        if with_barrier {
            self.q.enter(seat);
        } else {
            self.q.enter_without_barrier(seat);
        }
        // Relaxed: the ordering is the protocol's (marker, barrier, load).
        if self.live.load(Relaxed) == TOKEN {
            let v = self.memory.with(|p| {
                // SAFETY: loom checks this read against the unmapping.
                unsafe { *p }
            });
            assert_eq!(v, 42, "read the memory after its unmapping");
        }
        let last = if looking_first {
            self.q.leave_looking_first(seat)
        } else {
            self.q.leave(seat)
        };
        if last {
            self.q.reclaim(|t| self.unmap(t));
        }
    }

    /// The detach: unpublish, retire, reclaim.
    fn detach(&self, unpublish_first: bool) {
        let barrier = || {
            fence(SeqCst);
            true
        };
        if unpublish_first {
            self.live.store(0, Release);
            self.q.retire(TOKEN, barrier).unwrap();
            self.q.reclaim(|t| self.unmap(t));
        } else {
            self.q.retire(TOKEN, barrier).unwrap();
            self.q.reclaim(|t| self.unmap(t));
            self.live.store(0, Release);
        }
    }
}

/// One hook call against the detach: safe, and reclaimed once both are done.
fn one_caller(with_barrier: bool, unpublish_first: bool) {
    loom::model(move || {
        let w = World::new();
        let seat = w.q.claim();
        let user = {
            let w = w.clone();
            thread::spawn(move || w.call(seat, with_barrier))
        };
        w.detach(unpublish_first);
        user.join().unwrap();
        assert_eq!(
            w.reclaimed.load(Acquire),
            1,
            "a retired token was never reclaimed"
        );
    });
}

#[test]
fn detach__one_caller__then_no_use_after_unmap_and_reclaimed_once() {
    one_caller(true, true);
}

#[test]
fn detach__two_calls_and_a_shared_caller__then_no_use_after_unmap_and_reclaimed_once() {
    loom::model(|| {
        let w = World::new();
        let seat = w.q.claim();
        let a = {
            let w = w.clone();
            thread::spawn(move || {
                w.call(seat, true);
                w.call(seat, true);
            })
        };
        let b = {
            let w = w.clone();
            thread::spawn(move || w.call(Seat::SHARED, true))
        };
        w.detach(true);
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(w.reclaimed.load(Acquire), 1);
    });
}

#[test]
fn detach__nested_call__then_only_the_outermost_leave_lets_it_go() {
    loom::model(|| {
        let w = World::new();
        let seat = w.q.claim();
        let user = {
            let w = w.clone();
            thread::spawn(move || {
                w.q.enter(seat);
                w.call(seat, true); // a signal handler's hook inside this one
                if w.live.load(Relaxed) == TOKEN {
                    // SAFETY: loom checks this read against the unmapping.
                    w.memory.with(|p| assert_eq!(unsafe { *p }, 42));
                }
                if w.q.leave(seat) {
                    w.q.reclaim(|t| w.unmap(t));
                }
            })
        };
        w.detach(true);
        user.join().unwrap();
        assert_eq!(w.reclaimed.load(Acquire), 1);
    });
}

/// Negative control: a marker without its barrier lets the caller read the old pointer while
/// the retirer reads the old marker.
#[test]
#[should_panic]
fn detach__marker_without_barrier__then_model_catches_use_after_unmap() {
    one_caller(false, true);
}

/// Negative control: retiring (and reclaiming) before unpublishing lets a caller enter after the
/// barrier and still find the memory published.
#[test]
#[should_panic]
fn detach__retired_before_unpublished__then_model_catches_use_after_unmap() {
    one_caller(true, false);
}

/// Negative control: a leave that looks for waiting tokens before its marker's store can miss a
/// retirement whose reclaim still saw it inside: the token is never reclaimed.
#[test]
#[should_panic(expected = "never reclaimed")]
fn detach__leave_looks_before_its_store__then_model_catches_the_token_left_listed() {
    loom::model(|| {
        let w = World::new();
        let seat = w.q.claim();
        let user = {
            let w = w.clone();
            thread::spawn(move || w.call_leaving(seat, true, true))
        };
        w.detach(true);
        user.join().unwrap();
        assert_eq!(
            w.reclaimed.load(Acquire),
            1,
            "a retired token was never reclaimed"
        );
    });
}
