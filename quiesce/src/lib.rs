//! Knowing when memory that threads reach through a published pointer can be unmapped. A
//! [`Quiesce`] owns one presence marker per thread (a *seat*: a cache line of its own, claimed once
//! per thread and handed on when the thread ends) and a short list of retired tokens. Code that
//! may touch the memory marks its thread inside ([`Quiesce::enter`]) *before* it reads the
//! published pointer, and out again ([`Quiesce::leave`]) after its last access. The owner of the
//! memory unpublishes the pointer, then [`Quiesce::retire`]s a token for it behind a barrier; the
//! token comes back through [`Quiesce::reclaim`] once no thread that could have read the pointer is
//! still inside, and only then is the memory unmapped. The agent uses it to unmap each attach's
//! region and thread array at the detach while the program's threads keep calling its hooks.
//!
//! Contract:
//! - **Marking is cheap.** `enter`/`leave` on a seat are two plain stores to the thread's own cache
//!   line and compiler barriers: no atomic read-modify-write, no fence, no system call. Threads that
//!   found no free seat share one counter ([`Seat::SHARED`]), updated with a fenced read-modify-write.
//! - **The barrier is the retirer's.** The hot path's ordering (marker store before the load of the
//!   published pointer) is made good by the `barrier` passed to `retire`, which must run a full
//!   memory barrier on every thread that may enter (in the agent: `membarrier(2)`; the same
//!   asymmetric argument as the registry's stop handshake). `retire` runs it twice: after the
//!   unpublishing (so every thread either is seen inside, or sees the pointer gone), and after the
//!   token is listed (so a thread that leaves either sees the token waiting, or is seen out). A
//!   `barrier` that cannot run refuses the retirement: the memory then stays mapped.
//! - **Reclaimed once, only when safe.** `reclaim` hands out each listed token exactly once, and only
//!   after a scan (behind a fence) found every seat and the shared counter out, after the token's
//!   barrier. Tokens must not repeat while one of the same value may still be listed (tag them).
//! - **Last one out.** `leave` says when the thread left its outermost section while a token waits:
//!   the caller then calls `reclaim`. With the retirer's own `reclaim` after `retire`, the token is
//!   reclaimed once every thread that was inside has left (a thread stopped inside for ever keeps
//!   it listed; the next `reclaim` anyone calls tries again).
//! - **Nesting.** A thread may enter again while inside (a signal handler, an entry point calling
//!   another); only the outermost `leave` marks it out.
//!
//! The models (`cargo test -p quiesce --features loom --release --lib`) run this code on loom's
//! atomics, with a fence standing for the retirer's barrier on the marking side, and check that no
//! reclaimed memory is read after its unmapping, that every retired token is reclaimed once the
//! threads have left, and (negative controls) that a marker without its barrier, or a retirement
//! before the unpublishing, is caught.
//!
//! # Example
//!
//! ```
//! use quiesce::{Quiesce, Seat};
//! use std::sync::atomic::{AtomicUsize, Ordering::{Acquire, Release}};
//!
//! static Q: Quiesce<64> = Quiesce::new();
//! static LIVE: AtomicUsize = AtomicUsize::new(0);
//! let memory = Box::into_raw(Box::new(7u64));
//! LIVE.store(memory as usize, Release);
//!
//! // A thread using the memory.
//! let seat = Q.claim();
//! Q.enter(seat);
//! let p = LIVE.load(Acquire) as *const u64;
//! if !p.is_null() {
//!     // SAFETY: published and not reclaimed while this thread is inside.
//!     assert_eq!(unsafe { *p }, 7);
//! }
//! if Q.leave(seat) {
//!     Q.reclaim(|token| drop(unsafe { Box::from_raw(token as *mut u64) }));
//! }
//!
//! // The owner: unpublish, retire behind a barrier, reclaim once everyone is out.
//! LIVE.store(0, Release);
//! let barrier = || { std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst); true };
//! Q.retire(memory as u64, barrier).unwrap();
//! // SAFETY: the token is the box's address, reclaimed once.
//! let freed = Q.reclaim(|token| drop(unsafe { Box::from_raw(token as *mut u64) }));
//! assert_eq!(freed, 1);
//! Q.release(seat);
//! ```

#![cfg_attr(not(any(feature = "loom", test)), no_std)]

#[cfg(all(test, feature = "loom"))]
mod models;
mod sync;

use sync::{fence, light_barrier, AtomicU32, AtomicU64};

use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};

/// A thread's place in a [`Quiesce`]: one of its seats, or the counter shared by threads that
/// found none free.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Seat(u32);

impl Seat {
    /// The shared counter: always available, each mark a fenced read-modify-write.
    pub const SHARED: Seat = Seat(u32::MAX);

    /// Whether this is the shared counter rather than a seat of its own.
    pub fn is_shared(self) -> bool {
        self == Seat::SHARED
    }

    /// The seat as a number (to keep in thread-local storage): its index, or `u32::MAX` for
    /// [`Seat::SHARED`].
    pub fn to_raw(self) -> u32 {
        self.0
    }

    /// The seat [`Seat::to_raw`] gave. A number that names no seat of the [`Quiesce`] it is used
    /// with marks through the shared counter.
    pub fn from_raw(raw: u32) -> Seat {
        Seat(raw)
    }
}

/// A seat's own marker, looked up once ([`Quiesce::marker`]): [`Quiesce::enter_marked`] and
/// [`Quiesce::leave_marked`] mark through it without finding the seat again, for a hot path that
/// keeps it (in thread-local storage, say: `Option<Marker>` is one pointer, null for `None`). It
/// is valid for as long as the seat is held.
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct Marker<'a> {
    depth: &'a AtomicU32,
}

/// One thread's marker, on a cache line of its own (threads mark on every call).
#[cfg_attr(not(feature = "loom"), repr(align(64)))]
struct Node {
    /// 1 while a thread holds the seat.
    owner: AtomicU32,
    /// How deep the holder is inside (0: out). Written by the holder only.
    depth: AtomicU32,
}

impl Node {
    #[cfg(not(feature = "loom"))]
    const fn new() -> Node {
        Node {
            owner: AtomicU32::new(0),
            depth: AtomicU32::new(0),
        }
    }

    #[cfg(feature = "loom")]
    fn new() -> Node {
        Node {
            owner: AtomicU32::new(0),
            depth: AtomicU32::new(0),
        }
    }
}

/// Why [`Quiesce::retire`] refused a token (the memory must stay mapped).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Refused {
    /// The barrier could not run.
    NoBarrier,
    /// `PENDING` tokens are waiting already.
    Full,
}

/// Presence markers for up to `SEATS` threads (more share one counter) and up to `PENDING`
/// retired tokens waiting to be reclaimed. See the crate documentation.
pub struct Quiesce<const SEATS: usize, const PENDING: usize = 8> {
    nodes: [Node; SEATS],
    /// Threads inside without a seat.
    shared: AtomicU32,
    /// Retired tokens not reclaimed yet (0: a free entry).
    pending: [AtomicU64; PENDING],
    /// How many entries of `pending` hold a token (what `leave` looks at).
    waiting: AtomicU32,
}

impl<const SEATS: usize, const PENDING: usize> Default for Quiesce<SEATS, PENDING> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const SEATS: usize, const PENDING: usize> Quiesce<SEATS, PENDING> {
    /// Every seat free, no token waiting.
    #[cfg(not(feature = "loom"))]
    pub const fn new() -> Self {
        Quiesce {
            nodes: [const { Node::new() }; SEATS],
            shared: AtomicU32::new(0),
            pending: [const { AtomicU64::new(0) }; PENDING],
            waiting: AtomicU32::new(0),
        }
    }

    /// Every seat free, no token waiting.
    #[cfg(feature = "loom")]
    pub fn new() -> Self {
        Quiesce {
            nodes: core::array::from_fn(|_| Node::new()),
            shared: AtomicU32::new(0),
            pending: core::array::from_fn(|_| AtomicU64::new(0)),
            waiting: AtomicU32::new(0),
        }
    }

    /// A seat for the calling thread: a free one, or [`Seat::SHARED`] when all are taken. The
    /// thread keeps it until [`Quiesce::release`].
    pub fn claim(&self) -> Seat {
        for (i, node) in self.nodes.iter().enumerate() {
            // Acquire on success: pairs with the Release in `release` (the previous holder's last
            // marks come before this holder's).
            if node.owner.load(Relaxed) == 0
                && node.owner.compare_exchange(0, 1, Acquire, Relaxed).is_ok()
            {
                return Seat(i as u32);
            }
        }
        Seat::SHARED
    }

    /// Gives `seat` back (the thread is out and marks no more through it).
    pub fn release(&self, seat: Seat) {
        if let Some(node) = self.nodes.get(seat.0 as usize) {
            // Release: pairs with the Acquire in `claim`.
            node.owner.store(0, Release);
        }
    }

    /// `seat`'s own marker; `None` for the shared counter.
    #[inline(always)]
    pub fn marker(&self, seat: Seat) -> Option<Marker<'_>> {
        self.nodes
            .get(seat.0 as usize)
            .map(|node| Marker { depth: &node.depth })
    }

    /// [`Quiesce::enter`] through a seat's own marker (its holder only, while it holds the seat).
    #[inline(always)]
    pub fn enter_marked(&self, marker: Marker<'_>) {
        // Relaxed: only this thread writes its depth; the barrier below (with the retirer's)
        // orders the store before the caller's load of the pointer.
        let depth = marker.depth.load(Relaxed);
        marker.depth.store(depth + 1, Relaxed);
        light_barrier();
    }

    /// [`Quiesce::leave`] through a seat's own marker (its holder only, while it holds the seat).
    #[inline(always)]
    #[must_use]
    pub fn leave_marked(&self, marker: Marker<'_>) -> bool {
        let depth = marker.depth.load(Relaxed);
        // A plain decrement: the holder leaves only sections it entered (`after_fork` keeps the
        // caller's depth), so the depth is at least 1 here.
        debug_assert!(depth > 0, "a leave without its enter");
        // Release: pairs with the Acquire loads in `reclaim`: every access this thread made
        // inside happens before a reclaim that sees it out.
        marker.depth.store(depth.wrapping_sub(1), Release);
        light_barrier();
        // Relaxed: a hint; a retirement this misses runs its own reclaim after its second
        // barrier, which sees this thread out. Loaded after the store above, never before (a
        // retirement between the two would see this thread inside and be missed by it too: see
        // the models). Tested first, and the depth loaded again only then (Relaxed: this thread's
        // own store): nearly always 0, so the hot path is the decrement and one test.
        if self.waiting.load(Relaxed) != 0 {
            // Only while a retirement waits: laid out away from the leave's straight line.
            cold();
            marker.depth.load(Relaxed) == 0
        } else {
            false
        }
    }

    /// As [`Quiesce::leave_marked`], with the look at `waiting` before the marker's store (the
    /// models' negative control).
    #[cfg(all(test, feature = "loom"))]
    pub(crate) fn leave_looking_first(&self, seat: Seat) -> bool {
        let node = &self.nodes[seat.0 as usize];
        let waiting = self.waiting.load(Relaxed) != 0;
        light_barrier();
        let depth = node.depth.load(Relaxed);
        node.depth.store(depth - 1, Release);
        light_barrier();
        waiting && depth <= 1
    }

    /// Marks the calling thread inside. Call it before reading the pointer to the memory, and
    /// [`Quiesce::leave`] after the last access.
    #[inline(always)]
    pub fn enter(&self, seat: Seat) {
        match self.marker(seat) {
            Some(marker) => self.enter_marked(marker),
            None => {
                self.shared.fetch_add(1, Relaxed);
                // SeqCst: pairs with the fence in `reclaim` and the retirer's barrier: the count
                // is visible before the caller reads the pointer.
                fence(SeqCst);
            }
        }
    }

    /// As [`Quiesce::enter`], without the barrier (the models' negative control).
    #[cfg(all(test, feature = "loom"))]
    pub(crate) fn enter_without_barrier(&self, seat: Seat) {
        let node = &self.nodes[seat.0 as usize];
        let depth = node.depth.load(Relaxed);
        node.depth.store(depth + 1, Relaxed);
    }

    /// Marks the calling thread out of one section. `true`: it left its outermost section while a
    /// retired token waits; call [`Quiesce::reclaim`] (outside every section).
    #[inline(always)]
    #[must_use]
    pub fn leave(&self, seat: Seat) -> bool {
        match self.marker(seat) {
            Some(marker) => self.leave_marked(marker),
            None => {
                let mut now = self.shared.load(Relaxed);
                // Release: as above. Saturating: a fork child's reset may have cleared the count.
                while now > 0 {
                    match self.shared.compare_exchange(now, now - 1, Release, Relaxed) {
                        Ok(_) => break,
                        Err(seen) => now = seen,
                    }
                }
                fence(SeqCst);
                self.waiting.load(Relaxed) != 0
            }
        }
    }

    /// Lists `token` (non-zero, not listed already) for reclaiming, once the caller has made the
    /// memory unreachable for threads that enter from now on. `barrier` runs a full memory barrier
    /// on every thread that may enter (it runs twice); `false` means it could not.
    pub fn retire(&self, token: u64, mut barrier: impl FnMut() -> bool) -> Result<(), Refused> {
        assert_ne!(token, 0, "a retired token is non-zero");
        // Every thread that read the pointer before it was unpublished is now seen inside.
        if !barrier() {
            return Err(Refused::NoBarrier);
        }
        // Release: pairs with the Acquire in `reclaim`: the barrier above happened before.
        let listed = self
            .pending
            .iter()
            .any(|p| p.compare_exchange(0, token, Release, Relaxed).is_ok());
        if !listed {
            return Err(Refused::Full);
        }
        // Relaxed: the second barrier orders it before every thread's next look.
        self.waiting.fetch_add(1, Relaxed);
        // A thread leaving from now on sees the token waiting, or was seen out.
        barrier();
        Ok(())
    }

    /// Hands every listed token to `free` if no thread is inside now; returns how many. Call it
    /// outside every section (the caller's own mark would keep the memory in use).
    pub fn reclaim(&self, mut free: impl FnMut(u64)) -> usize {
        let mut listed = [0u64; PENDING];
        let mut any = false;
        for (slot, seen) in self.pending.iter().zip(listed.iter_mut()) {
            // Acquire: pairs with the Release in `retire`: the token's barriers came before.
            *seen = slot.load(Acquire);
            any |= *seen != 0;
        }
        if !any {
            return 0;
        }
        // SeqCst: the scan below reads markers stored before this point by threads that left.
        fence(SeqCst);
        if !self.quiet() {
            return 0;
        }
        let mut freed = 0;
        for (slot, &token) in self.pending.iter().zip(listed.iter()) {
            // AcqRel: one reclaimer wins each token.
            if token != 0 && slot.compare_exchange(token, 0, AcqRel, Relaxed).is_ok() {
                self.waiting.fetch_sub(1, Relaxed);
                free(token);
                freed += 1;
            }
        }
        freed
    }

    /// Whether no thread is inside (every seat and the shared counter out).
    pub fn quiet(&self) -> bool {
        // Acquire: pairs with the Release stores in `leave`.
        self.nodes.iter().all(|n| n.depth.load(Acquire) == 0) && self.shared.load(Acquire) == 0
    }

    /// How many retired tokens wait to be reclaimed.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Relaxed)
    }

    /// In a fork child, whose only thread is the caller (holding `keep`): every other seat is
    /// freed and out, and the shared counter cleared (their threads do not exist here).
    pub fn after_fork(&self, keep: Seat) {
        for (i, node) in self.nodes.iter().enumerate() {
            if i as u32 != keep.0 {
                node.depth.store(0, Relaxed);
                node.owner.store(0, Relaxed);
            }
        }
        self.shared.store(0, Relaxed);
        fence(SeqCst);
    }
}

/// Marks the path that calls it as rarely taken, so the compiler lays that path out of the common
/// one's straight line (a call to a `#[cold]` function weighs its branch; inlined, it leaves no
/// code, so a path that must call nothing may use it).
#[cold]
#[inline]
fn cold() {}

#[cfg(all(test, not(feature = "loom")))]
#[allow(non_snake_case)]
mod tests {
    use super::*;

    fn fenced() -> bool {
        fence(SeqCst);
        true
    }

    #[test]
    fn claim__more_threads_than_seats__then_the_rest_share_and_a_released_seat_is_reused() {
        let q: Quiesce<2> = Quiesce::new();
        let (a, b) = (q.claim(), q.claim());
        assert_ne!(a, b);
        assert!(q.claim().is_shared());
        q.release(a);
        assert_eq!(q.claim(), a);
    }

    #[test]
    fn marker__own_seat_marked_through_it__then_seen_inside_and_last_out_told_to_reclaim() {
        let q: Quiesce<2> = Quiesce::new();
        let seat = q.claim();
        assert!(q.marker(Seat::SHARED).is_none());
        assert_eq!(
            core::mem::size_of::<Option<Marker<'_>>>(),
            core::mem::size_of::<usize>()
        );
        let marker = q.marker(seat).unwrap();
        q.enter_marked(marker);
        q.enter(seat); // the same seat, marked either way
        q.retire(0xB1, fenced).unwrap();
        assert_eq!(q.reclaim(|_| ()), 0, "inside");
        assert!(!q.leave_marked(marker), "still inside its outer section");
        assert!(q.leave(seat));
        assert_eq!(q.reclaim(|_| ()), 1);
    }

    #[test]
    fn reclaim__thread_inside__then_nothing_until_it_leaves_its_outermost_section() {
        let q: Quiesce<4> = Quiesce::new();
        let seat = q.claim();
        q.enter(seat);
        q.enter(seat); // nested
        q.retire(0xA1, fenced).unwrap();
        assert_eq!(q.reclaim(|_| panic!("reclaimed while inside")), 0);
        assert!(!q.leave(seat), "not the outermost section");
        assert!(q.leave(seat), "outermost: a token waits");
        let mut got = Vec::new();
        assert_eq!(q.reclaim(|t| got.push(t)), 1);
        assert_eq!(got, [0xA1]);
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.reclaim(|_| panic!("reclaimed twice")), 0);
    }

    #[test]
    fn reclaim__shared_seat_inside__then_waits_for_it() {
        let q: Quiesce<0> = Quiesce::new();
        let seat = q.claim();
        assert!(seat.is_shared());
        q.enter(seat);
        q.retire(7, fenced).unwrap();
        assert_eq!(q.reclaim(|_| ()), 0);
        assert!(q.leave(seat));
        assert_eq!(q.reclaim(|_| ()), 1);
    }

    #[test]
    fn retire__no_barrier_or_list_full__then_refused_and_nothing_listed() {
        let q: Quiesce<1, 2> = Quiesce::new();
        assert_eq!(q.retire(1, || false), Err(Refused::NoBarrier));
        assert_eq!(q.waiting(), 0);
        let seat = q.claim();
        q.enter(seat);
        q.retire(1, fenced).unwrap();
        q.retire(2, fenced).unwrap();
        assert_eq!(q.retire(3, fenced), Err(Refused::Full));
        let _ = q.leave(seat);
        let mut got = Vec::new();
        q.reclaim(|t| got.push(t));
        got.sort();
        assert_eq!(got, [1, 2]);
    }

    #[test]
    fn after_fork__other_threads_were_inside__then_the_child_reclaims() {
        let q: Quiesce<3> = Quiesce::new();
        let (mine, other) = (q.claim(), q.claim());
        q.enter(other);
        q.enter(Seat::SHARED);
        q.retire(5, fenced).unwrap();
        assert_eq!(q.reclaim(|_| ()), 0);
        q.after_fork(mine);
        assert_eq!(q.reclaim(|_| ()), 1);
        assert_eq!(
            q.claim(),
            other,
            "the other thread's seat is free in the child"
        );
    }
}
