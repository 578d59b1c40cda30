//! [`Lane`]: a bounded single-producer, single-consumer queue, the fast way
//! into a consumer's delivery queue for one source (see `bus::lanes`).
//!
//! The multi-producer [`crate::ring::Ring`] pays for its generality on every
//! item: each slot carries a stamp that the producer writes and the consumer
//! writes back, so the slot's cache line crosses between the cores about once
//! per item (the `push` store was the hottest instruction of the 1 → 1 bench,
//! and a cross-core transfer costs 100–200 ns on the target VMs). A lane has
//! one producer and one consumer, so it needs no stamps and no
//! compare-and-swap:
//!
//! - the producer writes slots with plain stores and publishes them with one
//!   Release store of `tail` when its publish is done ([`Lane::publish`]: per
//!   event, or once for a whole batch); it reads the consumer's `head` only
//!   when its private copy of it (`cached_head`) says the lane is full;
//! - the consumer reads `tail` once per batch, reads the slots in place and
//!   gives them back with one Release store of `head` per batch.
//!
//! So the lines that cross between the cores are the slots themselves (four
//! or so items per line, read once) and `tail` and `head` once per batch, not
//! per item. Positions are plain counters; a slot's index is its position
//! modulo the slot count, a power of two at least the capacity.
//!
//! # Who may call what
//!
//! Exactly one producer at a time: the source that owns the lane (ownership
//! passes between sources with a Release/Acquire pair, see `bus::lanes`), and
//! exactly one consumer at a time: the mailbox's (a `Mailbox` is not `Sync`).
//! The methods that require this are `unsafe` and say so.

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicUsize, Ordering, UnsafeCell};

/// Most items a producer writes before it publishes them on its own (see
/// [`Lane::push`]): a store of `tail` per this many items keeps its line
/// from crossing cores per item, and the consumer from idling through a
/// long batch.
const PUBLISH_EVERY: usize = 64;

/// A bounded SPSC queue of `T`.
pub(crate) struct Lane<T> {
    /// Positions before it are published to the consumer. Written by the
    /// producer once per publish, read by the consumer once per batch (and
    /// while it waits).
    tail: CachePadded<AtomicUsize>,
    /// What only the producer touches, on a line of its own: the consumer's
    /// reads of `tail` must not take it from the producer's cache (they did,
    /// and the producer's next push stalled on it, seen with `perf`).
    producer: CachePadded<ProducerSide>,
    /// Next position the consumer takes. Written by the consumer once per
    /// batch; read by the producer only when its copy says the lane is full.
    head: CachePadded<AtomicUsize>,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    /// Slot count minus one (the slot count is a power of two).
    mask: usize,
    /// Most items in the lane at once.
    capacity: usize,
}

struct ProducerSide {
    /// The next position the producer writes: `tail` plus what it wrote
    /// but has not published yet.
    next: UnsafeCell<usize>,
    /// The producer's copy of `tail`.
    published: UnsafeCell<usize>,
    /// The last `head` the producer read: the consumer has taken at least
    /// this far. Only the producer touches it.
    cached_head: UnsafeCell<usize>,
}

// SAFETY: items move in and out through the head/tail protocol, which gives
// each slot exactly one accessor at a time; `T: Send` suffices to move them
// between threads. The producer-only and consumer-only methods are `unsafe`
// and leave one producer and one consumer to their callers.
unsafe impl<T: Send> Send for Lane<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Lane<T> {}

impl<T> Lane<T> {
    /// A lane that holds up to `capacity` items.
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a lane needs room for one item");
        let slots = capacity.next_power_of_two();
        Self {
            tail: CachePadded::new(AtomicUsize::new(0)),
            producer: CachePadded::new(ProducerSide {
                next: UnsafeCell::new(0),
                published: UnsafeCell::new(0),
                cached_head: UnsafeCell::new(0),
            }),
            head: CachePadded::new(AtomicUsize::new(0)),
            slots: (0..slots)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
            mask: slots - 1,
            capacity,
        }
    }

    /// Most items the lane holds.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots allocated (a power of two at least the capacity).
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Writes `value` after the last item, or hands it back if the lane is
    /// full. The consumer sees it once the producer calls [`Lane::publish`].
    ///
    /// # Safety
    ///
    /// The caller is the lane's only producer: no other thread calls `push`
    /// or `publish` until a Release/Acquire edge orders this call before it.
    #[inline]
    pub(crate) unsafe fn push(&self, value: T) -> Result<(), T> {
        // SAFETY: the caller's contract is `push_with`'s.
        unsafe { self.push_with(value, |value| value) }
    }

    /// Like [`Lane::push`], making the item from `input` with `make` in its
    /// slot, only if there is room; hands `input` back otherwise. For an
    /// item larger than its input: the compiler builds it in place instead
    /// of on the stack and copying it, whose read-back of just-written stack
    /// words stalled the publish path (store forwarding, seen with `perf`).
    ///
    /// # Safety
    ///
    /// As for [`Lane::push`].
    #[inline]
    pub(crate) unsafe fn push_with<I>(&self, input: I, make: impl FnOnce(I) -> T) -> Result<(), I> {
        // SAFETY: the caller's contract is `reserve`'s.
        unsafe { self.reserve(1) }.push_with(input, make)
    }

    /// True if the next [`Lane::push`] will find room. Reads the consumer's
    /// `head` only when the producer's copy of it says the lane is full, as
    /// `push` does: a producer that must do work before it can push (the
    /// log channel appends a record) asks first, and the push after it finds
    /// the same room without another look.
    ///
    /// # Safety
    ///
    /// As for [`Lane::push`].
    #[inline]
    pub(crate) unsafe fn has_room(&self) -> bool {
        // SAFETY: the caller's contract is `room`'s.
        unsafe { self.room(1) }.1 == 1
    }

    /// Reserves room for up to `wanted` items after the last one: the
    /// returned writer fills it with plain stores and hands the lane back
    /// when dropped (publishing, as [`Lane::push`] does, once
    /// `PUBLISH_EVERY` items are unpublished). A run of items pays for one
    /// look at the room and one store of the producer's position, not one
    /// each (a batch publish writes a run of deliveries per consumer).
    ///
    /// # Safety
    ///
    /// As for [`Lane::push`]; and no other `push`, `reserve` or `publish` of
    /// this lane while the writer lives.
    #[inline]
    pub(crate) unsafe fn reserve(&self, wanted: usize) -> LaneWriter<'_, T> {
        // SAFETY: the caller's contract is `room`'s.
        let (tail, room) = unsafe { self.room(wanted) };
        LaneWriter {
            lane: self,
            next: tail,
            end: tail.wrapping_add(room),
        }
    }

    /// The producer's next position and how many of `wanted` items fit
    /// after it. Reads the consumer's `head` only when the producer's copy
    /// of it says fewer fit.
    ///
    /// # Safety
    ///
    /// As for [`Lane::push`].
    #[inline]
    unsafe fn room(&self, wanted: usize) -> (usize, usize) {
        let side = &*self.producer;
        // SAFETY: only the producer touches `next` and `cached_head`
        // (caller's contract).
        let tail = side.next.with_mut(|next| unsafe { *next });
        // SAFETY: as above.
        let mut head = side.cached_head.with_mut(|head| unsafe { *head });
        if tail.wrapping_sub(head).saturating_add(wanted) > self.capacity {
            // SYNC POINT (lane-free): Acquire pairs with the consumer's
            // Release store of `head` in `LaneRun::drop`: its reads of the
            // slots it gave back happen-before our writes to them.
            head = self.head.load(Ordering::Acquire);
            // SAFETY: as above.
            side.cached_head
                .with_mut(|cached| unsafe { *cached = head });
        }
        // At most `capacity` items are ever in the lane: `tail - head` is
        // at most that.
        (tail, (self.capacity - tail.wrapping_sub(head)).min(wanted))
    }

    /// Makes every item pushed so far visible to the consumer: one store,
    /// however many items, and none if there is nothing new.
    ///
    /// # Safety
    ///
    /// As for [`Lane::push`].
    pub(crate) unsafe fn publish(&self) {
        let side = &*self.producer;
        // SAFETY: only the producer touches `next` and `published` (caller's
        // contract).
        let next = side.next.with_mut(|next| unsafe { *next });
        side.published.with_mut(|published| {
            // SAFETY: as above.
            if unsafe { *published } != next {
                // SYNC POINT (lane-full): Release publishes the slots written
                // before it to the consumer's Acquire load of `tail` in
                // `claim`.
                self.tail.store(next, Ordering::Release);
                // SAFETY: as above.
                unsafe { *published = next };
            }
        });
    }

    /// Claims up to `max` items at the head, read out one by one by the
    /// returned run; the slots go back to the producer, all at once, when
    /// the run is dropped.
    ///
    /// # Safety
    ///
    /// The caller is the lane's only consumer, and holds at most one run of
    /// it at a time.
    pub(crate) unsafe fn claim(&self, max: usize) -> LaneRun<'_, T> {
        // Relaxed: only the consumer writes `head`.
        let head = self.head.load(Ordering::Relaxed);
        // SYNC POINT (lane-full): Acquire pairs with the producer's Release
        // store in `push`: its writes of every slot before `tail` are visible.
        let tail = self.tail.load(Ordering::Acquire);
        let count = tail.wrapping_sub(head).min(max);
        LaneRun {
            lane: self,
            start: head,
            position: head,
            end: head.wrapping_add(count),
        }
    }

    /// True if nothing is queued (as far as the caller can see now).
    pub(crate) fn is_empty(&self) -> bool {
        // Acquire: a consumer that sees an item here will read it next (see
        // `claim`).
        self.tail.load(Ordering::Acquire) == self.head.load(Ordering::Relaxed)
    }

    /// Items in the lane; approximate while its producer or consumer runs.
    pub(crate) fn len(&self) -> usize {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        // Relaxed loads of two counters from a third thread may see `tail`
        // behind `head` (say empty) or far ahead of it (say full).
        let items = tail.wrapping_sub(head);
        if items > isize::MAX as usize {
            0
        } else {
            items.min(self.capacity)
        }
    }
}

/// Room a producer reserved at the tail of a lane ([`Lane::reserve`]).
pub(crate) struct LaneWriter<'a, T> {
    lane: &'a Lane<T>,
    /// The next position to write.
    next: usize,
    /// The end of the reserved room.
    end: usize,
}

impl<T> LaneWriter<'_, T> {
    /// Writes the item `make` makes from `input` in the next reserved slot;
    /// hands `input` back if the room is used up.
    #[inline]
    pub(crate) fn push_with<I>(&mut self, input: I, make: impl FnOnce(I) -> T) -> Result<(), I> {
        if self.next == self.end {
            return Err(input);
        }
        let slot = &self.lane.slots[self.next & self.lane.mask];
        // SAFETY: positions `head .. head + capacity` belong to the producer
        // until it publishes them, and the reserved room lies among them
        // (see `reserve`): the consumer reads this slot only after `publish`
        // stores a tail past it.
        slot.with_mut(|cell| unsafe { (*cell).write(make(input)) });
        self.next = self.next.wrapping_add(1);
        Ok(())
    }
}

impl<T> Drop for LaneWriter<'_, T> {
    #[inline]
    fn drop(&mut self) {
        let lane = self.lane;
        let side = &*lane.producer;
        let next = self.next;
        // SAFETY: the writer stands for the lane's only producer (the
        // contract of `reserve`), which alone touches `next` and `published`.
        side.next.with_mut(|cell| unsafe { *cell = next });
        // SAFETY: as above.
        let published = side.published.with_mut(|published| unsafe { *published });
        if next.wrapping_sub(published) >= PUBLISH_EVERY {
            // A long batch shows its first items early, so that its consumer
            // works on them instead of waiting (or parking) for its end.
            // SAFETY: as above: the writer is gone once this returns.
            unsafe { lane.publish() };
        }
    }
}

/// Items a consumer claimed at the head of a lane ([`Lane::claim`]), read
/// out one by one. Dropping the run reads out (and drops) what is left of
/// it, then gives every slot of the run back to the producer with one store.
pub(crate) struct LaneRun<'a, T> {
    lane: &'a Lane<T>,
    start: usize,
    position: usize,
    end: usize,
}

impl<T> LaneRun<'_, T> {
    /// Items left in the run.
    pub(crate) fn remaining(&self) -> usize {
        self.end.wrapping_sub(self.position)
    }
}

impl<T> Iterator for LaneRun<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.position == self.end {
            return None;
        }
        let slot = &self.lane.slots[self.position & self.lane.mask];
        // SAFETY: the position is below the `tail` read (Acquire) in
        // `claim` and not yet given back: the producer wrote it and will not
        // touch it until `head` passes it, and this run is its only reader.
        let value = slot.with_mut(|cell| unsafe { (*cell).assume_init_read() });
        self.position = self.position.wrapping_add(1);
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining(), Some(self.remaining()))
    }
}

impl<T> ExactSizeIterator for LaneRun<'_, T> {}

impl<T> Drop for LaneRun<'_, T> {
    fn drop(&mut self) {
        self.for_each(drop);
        if self.end != self.start {
            // SYNC POINT (lane-free): Release pairs with the producer's
            // Acquire load of `head` in `room`: our reads of the run's slots
            // happen-before its next writes to them. One store per run.
            self.lane.head.store(self.end, Ordering::Release);
        }
    }
}

impl<T> Drop for Lane<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no producer or consumer is left. Published
        // first, so that what was pushed and never published is dropped too.
        unsafe {
            self.publish();
            self.claim(usize::MAX).for_each(drop);
        }
    }
}

impl<T> std::fmt::Debug for Lane<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Arc;

    #[test]
    fn pushes_and_runs_behave_like_a_bounded_vecdeque_through_many_laps() {
        for capacity in [1, 2, 3, 5, 8] {
            let lane = Lane::new(capacity);
            let mut model = VecDeque::new();
            let mut next = 0u64;
            for step in 0..5_000u64 {
                if step % 3 != 2 {
                    // SAFETY: this thread is the only producer and consumer.
                    let pushed = unsafe { lane.push(next) }.is_ok();
                    // SAFETY: as above.
                    unsafe { lane.publish() };
                    assert_eq!(pushed, model.len() < capacity);
                    if pushed {
                        model.push_back(next);
                    }
                    next += 1;
                } else {
                    let max = (step % 4) as usize;
                    // SAFETY: as above.
                    let run = unsafe { lane.claim(max) };
                    let expected: Vec<_> = (0..max).map_while(|_| model.pop_front()).collect();
                    assert_eq!(run.collect::<Vec<_>>(), expected);
                }
                assert_eq!(lane.len(), model.len());
                assert_eq!(lane.is_empty(), model.is_empty());
            }
        }
    }

    #[test]
    fn a_run_dropped_part_way_drops_the_rest_and_frees_its_slots() {
        let marker = Arc::new(());
        let lane = Lane::new(4);
        for _ in 0..4 {
            // SAFETY: one thread is the only producer and consumer.
            unsafe { lane.push(marker.clone()) }.unwrap();
        }
        // SAFETY: as above.
        unsafe { lane.publish() };
        // SAFETY: as above.
        let mut run = unsafe { lane.claim(3) };
        drop(run.next());
        drop(run);
        assert_eq!(Arc::strong_count(&marker), 2, "three taken out, one left");
        for _ in 0..3 {
            // SAFETY: as above.
            unsafe { lane.push(marker.clone()) }.expect("the run's slots are free");
        }
        drop(lane);
        assert_eq!(
            Arc::strong_count(&marker),
            1,
            "the lane drops what it holds"
        );
    }

    #[test]
    fn one_producer_one_consumer_lose_nothing_and_keep_order() {
        const ITEMS: u64 = 200_000;
        let lane = Arc::new(Lane::new(64));
        let producer = {
            let lane = lane.clone();
            std::thread::spawn(move || {
                for i in 0..ITEMS {
                    let mut value = i;
                    // SAFETY: this thread is the lane's only producer.
                    while let Err(rejected) = unsafe { lane.push(value) } {
                        value = rejected;
                        // SAFETY: as above.
                        unsafe { lane.publish() };
                        std::hint::spin_loop();
                    }
                    if i % 7 == 0 {
                        // Publishes in batches of 7, as a batch publish does.
                        // SAFETY: as above.
                        unsafe { lane.publish() };
                    }
                }
                // SAFETY: as above.
                unsafe { lane.publish() };
            })
        };
        let mut next = 0;
        while next < ITEMS {
            // SAFETY: this thread is the lane's only consumer.
            for value in unsafe { lane.claim(17) } {
                assert_eq!(value, next);
                next += 1;
            }
        }
        producer.join().unwrap();
        assert!(lane.is_empty());
    }
}
