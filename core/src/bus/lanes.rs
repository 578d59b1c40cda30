//! The lanes of one delivery queue: a single-producer lane ([`Lane`]) for
//! each of up to [`LANES`] sources, so that a source that keeps publishing
//! to a consumer hands its events over without the multi-producer ring's
//! per-event cache-line traffic.
//!
//! A *source* is whatever must keep its order (an in-process publisher, one
//! client connection, one data stream of a mesh link); its [`Backlog`]
//! carries a [`LaneOwner`], the identity that lanes are claimed with. All of
//! a source's publishing goes through `&mut` of its backlog, so at most one
//! thread at a time pushes with that identity: that is what makes a claimed
//! lane single-producer.
//!
//! # Claiming, releasing, and order against the ring
//!
//! - A source's pushes into its lane become visible to the consumer when it
//!   publishes them ([`Lanes::publish`]), which every publish path does
//!   right before its wake-up fence: once per event, or once per batch.
//! - A source without a lane in a queue claims a free one (compare-and-swap
//!   of the lane's owner from 0 to its id) and keeps it until its backlog is
//!   dropped, which stores 0 back. The Release of that store pairs with the
//!   Acquire of the next owner's claim, so the next owner sees the lane's
//!   producer state (`tail`, its cached `head`) as the last one left it.
//! - The first owner allocates the lane and publishes the pointer (Release,
//!   paired with the consumer's Acquire load in [`Lanes::get`]); it stays
//!   until the queue goes, reused by later owners.
//! - When all lanes are taken, a source delivers through the queue's ring.
//!   It may claim a lane later only when the ring's consumer has claimed
//!   every ring position handed out so far (`Ring::is_all_claimed`), which
//!   includes every event this source put there: its ring events are then
//!   taken (in the consumer's program order) before it can see any of its
//!   lane events, so its order holds across the switch.
//! - Deliveries under `DropOldest` always go through the ring: making room
//!   takes from the head, which a lane's producer cannot do.
//!
//! [`Backlog`]: super::Backlog

use std::ptr;
use std::sync::{Arc, Weak};

use crossbeam_utils::CachePadded;

use super::queue::{Delivery, DeliveryQueue};
use crate::lane::Lane;
use crate::sync::{AtomicPtr, AtomicU64, Ordering};

/// Lanes per queue: sources beyond this many share the queue's ring.
#[cfg(not(loom))]
pub(crate) const LANES: usize = 8;
/// Under loom, few enough that the models' state spaces stay small (every
/// delivery and every batch looks at each lane).
#[cfg(loom)]
pub(crate) const LANES: usize = 2;

/// The lanes of one queue.
pub(crate) struct Lanes {
    /// The id of each lane's owner, 0 if free. One line, read on every
    /// delivery and written only when a source claims or releases a lane.
    owners: CachePadded<[AtomicU64; LANES]>,
    /// The lanes allocated so far (null until a first owner needs one).
    lanes: [AtomicPtr<Lane<Delivery>>; LANES],
    /// Capacity of each lane.
    capacity: usize,
}

impl Lanes {
    /// No lanes yet; each will hold `capacity` deliveries.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            owners: CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))),
            lanes: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            capacity,
        }
    }

    /// The lane `owner` holds in this queue, if any.
    #[inline]
    pub(crate) fn owned_by(&self, owner: &LaneOwner) -> Option<&Lane<Delivery>> {
        if owner.id == 0 {
            return None;
        }
        // Relaxed: an owner word equals our id only by our own claim, which
        // this thread (or the one before it in the source's order) made.
        let index = self
            .owners
            .iter()
            .position(|word| word.load(Ordering::Relaxed) == owner.id)?;
        self.get(index)
    }

    /// Claims a free lane for `owner` if there is one and `may_claim()`
    /// agrees (asked only when a lane is free), allocating it on first use;
    /// `on_allocate` is told the slots of a new lane.
    pub(crate) fn claim(
        &self,
        owner: &mut LaneOwner,
        may_claim: impl FnOnce() -> bool,
        on_allocate: impl FnOnce(usize),
    ) -> Option<&Lane<Delivery>> {
        let index = self
            .owners
            .iter()
            .position(|word| word.load(Ordering::Relaxed) == 0)?;
        if !may_claim() {
            return None;
        }
        let id = owner.id();
        // SYNC POINT (lane-owner): Acquire pairs with the Release in
        // `release`: the previous owner's pushes happen-before ours.
        self.owners[index]
            .compare_exchange(0, id, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        if let Some(lane) = self.get(index) {
            return Some(lane);
        }
        let lane = Box::into_raw(Box::new(Lane::new(self.capacity)));
        // SAFETY: just allocated, not shared yet.
        on_allocate(unsafe { &*lane }.slot_count());
        // SYNC POINT (lane-alloc): Release pairs with the Acquire in `get`:
        // whoever finds the pointer finds the lane initialized.
        self.lanes[index].store(lane, Ordering::Release);
        // SAFETY: stays allocated until the queue (and so `self`) is dropped.
        Some(unsafe { &*lane })
    }

    /// Makes what `owner` pushed into its lane visible to the consumer.
    pub(crate) fn publish(&self, owner: &LaneOwner) {
        if let Some(lane) = self.owned_by(owner) {
            // SAFETY: the lane is `owner`'s, whose use is exclusive (see the
            // module docs).
            unsafe { lane.publish() };
        }
    }

    /// Gives `owner`'s lane back, if it holds one.
    fn release(&self, owner: &LaneOwner) {
        if let Some(index) = self
            .owners
            .iter()
            .position(|word| word.load(Ordering::Relaxed) == owner.id)
        {
            self.publish(owner);
            let word = &self.owners[index];
            // SYNC POINT (lane-owner): Release pairs with the Acquire in
            // `claim`: our pushes happen-before the next owner's.
            word.store(0, Ordering::Release);
        }
    }

    /// Lane number `index`, if allocated.
    pub(crate) fn get(&self, index: usize) -> Option<&Lane<Delivery>> {
        // SYNC POINT (lane-alloc): Acquire pairs with the Release in `claim`.
        let lane = self.lanes[index].load(Ordering::Acquire);
        // SAFETY: a non-null pointer is a lane allocated in `claim`, freed
        // only when `self` is dropped.
        unsafe { lane.as_ref() }
    }

    /// The allocated lanes.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Lane<Delivery>> {
        (0..LANES).filter_map(|index| self.get(index))
    }

    /// Slots of all allocated lanes.
    pub(crate) fn slot_count(&self) -> usize {
        self.iter().map(Lane::slot_count).sum()
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        for lane in &self.lanes {
            // Relaxed: `&mut self`, nothing else refers to the lanes now.
            let lane = lane.load(Ordering::Relaxed);
            if !lane.is_null() {
                // SAFETY: allocated with `Box::into_raw` in `claim`; `&mut
                // self`, so nothing refers to it any more.
                drop(unsafe { Box::from_raw(lane) });
            }
        }
    }
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A source's identity for lanes and the queues where it holds one; gives
/// them back when dropped. Cheap to make: the id is drawn on the first claim.
#[derive(Debug, Default)]
pub(crate) struct LaneOwner {
    /// Unique per process; 0 until the first claim (0 marks a free lane).
    id: u64,
    /// Queues where this source holds a lane. Weak: a lane does not keep a
    /// departed consumer's queue alive.
    held: Vec<Weak<DeliveryQueue>>,
}

impl LaneOwner {
    fn id(&mut self) -> u64 {
        // std's atomic even under loom: ids are not part of any protocol.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        if self.id == 0 {
            self.id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.id
    }

    /// Notes a lane claimed in `queue`.
    pub(crate) fn holds(&mut self, queue: &Arc<DeliveryQueue>) {
        // Claims are rare (a source's first delivery to a queue): forget
        // queues that are gone now, so the list does not grow without bound.
        self.held.retain(|held| held.strong_count() > 0);
        self.held.push(Arc::downgrade(queue));
    }
}

impl Drop for LaneOwner {
    fn drop(&mut self) {
        let held = std::mem::take(&mut self.held);
        for queue in held.iter().filter_map(Weak::upgrade) {
            queue.lanes.release(self);
        }
    }
}
