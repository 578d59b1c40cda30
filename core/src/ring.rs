//! [`Ring`]: the bounded queue of holds in front of each consumer.
//!
//! The algorithm is Dmitry Vyukov's bounded MPMC queue (per-slot sequence
//! numbers; <https://www.1024cores.net/home/lock-free-algorithms/queues/bounded-mpmc-queue>),
//! the one crossbeam's `ArrayQueue` implements, with one change that matters
//! on the data path: an empty check looks only at the next slot, never at the
//! producers' `tail`. A consumer that keeps up with its publishers polls an
//! empty queue most of the time; `ArrayQueue` reads `tail` on every empty
//! `pop`, which pulls the line the publisher is about to compare-and-swap into
//! the consumer's cache and makes every publish miss (measured with `perf`:
//! the `tail` CAS was the hottest instruction of the 1 → 1 bench).
//!
//! # Positions and stamps
//!
//! A position is a lap number and a slot index packed in one word:
//! `lap * one_lap + index`, where `one_lap` is the smallest power of two above
//! the capacity (so any capacity, not only powers of two, and capacity one
//! works). `tail` and `head` are positions; each slot's `stamp` says what may
//! happen to it next:
//!
//! - `stamp == p`: empty, and the producer that claims position `p` may write it;
//! - `stamp == p + 1`: written at `p`, and the consumer that claims `p` may read it;
//! - after the read the consumer sets `stamp` to the same index one lap later:
//!   empty again.
//!
//! A producer claims a position by advancing `tail` with a CAS, so exactly one
//! producer writes a slot per lap; consumers claim positions by advancing `head`
//! the same way (the bus has one consumer per queue, but a publisher evicting
//! the oldest event for a drop-oldest consumer takes from the head too).

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicUsize, Ordering, UnsafeCell, spin_loop};

/// A bounded multi-producer queue, read in order.
pub(crate) struct Ring<T> {
    /// Next position a producer will claim. Touched only by producers.
    tail: CachePadded<AtomicUsize>,
    /// Next position a consumer will take. Touched by consumers, and read by
    /// producers only to count the length.
    head: CachePadded<AtomicUsize>,
    slots: Box<[Slot<T>]>,
    /// Position increment of one lap: a power of two above the capacity.
    one_lap: usize,
}

struct Slot<T> {
    /// The slot's stamp (see the module docs) minus its index, so that a
    /// fresh ring is all zeros: it comes from zeroed memory, and the pages of
    /// a large, little-used ring are never touched (a node has one ring per
    /// connection, sized for bursts).
    stamp_from_index: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

impl<T> Slot<T> {
    /// `capacity` empty slots for lap zero.
    #[cfg(not(loom))]
    fn empty_slots(capacity: usize) -> Box<[Slot<T>]> {
        let slots = Box::<[Slot<T>]>::new_zeroed_slice(capacity);
        // SAFETY: an all-zero Slot is valid and means "empty, lap zero": a
        // zero atomic (stamp == index) and an uninitialized value cell.
        unsafe { slots.assume_init() }
    }

    /// Under loom the cells must be made by loom, so no zeroed memory.
    #[cfg(loom)]
    fn empty_slots(capacity: usize) -> Box<[Slot<T>]> {
        (0..capacity)
            .map(|_| Slot {
                stamp_from_index: AtomicUsize::new(0),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect()
    }

    fn stamp(&self, index: usize, order: Ordering) -> usize {
        self.stamp_from_index.load(order).wrapping_add(index)
    }

    fn set_stamp(&self, index: usize, stamp: usize, order: Ordering) {
        self.stamp_from_index
            .store(stamp.wrapping_sub(index), order);
    }
}

// SAFETY: values move in and out through the stamp protocol, which gives each
// slot exactly one accessor at a time; `T: Send` suffices to move them between
// threads.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    /// A ring of exactly `capacity` slots.
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a ring needs at least one slot");
        let one_lap = (capacity + 1).next_power_of_two();
        Self {
            tail: CachePadded::new(AtomicUsize::new(0)),
            head: CachePadded::new(AtomicUsize::new(0)),
            slots: Slot::empty_slots(capacity),
            one_lap,
        }
    }

    /// Number of slots.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The position after `position`.
    fn next(&self, position: usize) -> usize {
        let index = position & (self.one_lap - 1);
        if index + 1 < self.slots.len() {
            position + 1
        } else {
            (position & !(self.one_lap - 1)).wrapping_add(self.one_lap)
        }
    }

    /// Adds `value` at the tail, or hands it back if the ring is full.
    pub(crate) fn push(&self, value: T) -> Result<(), T> {
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            let index = tail & (self.one_lap - 1);
            let slot = &self.slots[index];
            // SYNC POINT (slot-free): Acquire pairs with the consumer's Release
            // in `pop`: its read of the old value happens-before our write.
            let stamp = slot.stamp(index, Ordering::Acquire);
            if stamp == tail {
                // Relaxed: the claim orders nothing; the slot's stamp does.
                match self.tail.compare_exchange_weak(
                    tail,
                    self.next(tail),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: winning the CAS for `tail` while the slot's
                        // stamp equals it makes this thread its only writer.
                        slot.value.with_mut(|cell| unsafe { (*cell).write(value) });
                        // SYNC POINT (slot-full): Release publishes the value to
                        // the consumer's Acquire in `pop`.
                        slot.set_stamp(index, tail.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(current) => tail = current,
                }
            } else if stamp.wrapping_add(self.one_lap) == tail.wrapping_add(1) {
                // The slot still holds the value from the previous lap: full.
                return Err(value);
            } else {
                // Another producer took this position; move on.
                spin_loop();
                tail = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Takes the value at the head, if one is there.
    pub(crate) fn pop(&self) -> Option<T> {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            let index = head & (self.one_lap - 1);
            let slot = &self.slots[index];
            // SYNC POINT (slot-full): Acquire pairs with the producer's Release
            // in `push`: its write of the value happens-before our read.
            let stamp = slot.stamp(index, Ordering::Acquire);
            if stamp == head.wrapping_add(1) {
                match self.head.compare_exchange_weak(
                    head,
                    self.next(head),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: winning the CAS for `head` while the slot's
                        // stamp is `head + 1` makes this thread the only reader
                        // of the value written at `head`.
                        let value = slot
                            .value
                            .with_mut(|cell| unsafe { (*cell).assume_init_read() });
                        // SYNC POINT (slot-free): Release pairs with the Acquire
                        // in `push` on the next lap.
                        slot.set_stamp(index, head.wrapping_add(self.one_lap), Ordering::Release);
                        return Some(value);
                    }
                    Err(current) => head = current,
                }
            } else if stamp == head {
                // Not written yet: empty (or a producer is mid-write, and will
                // signal when done). Deliberately no look at `tail`.
                return None;
            } else {
                // Another consumer took this position; move on.
                spin_loop();
                head = self.head.load(Ordering::Relaxed);
            }
        }
    }

    /// Claims up to `max` values at the head with a single move of `head`
    /// (one compare-and-swap for the whole run instead of one per value),
    /// and returns them as an iterator, in order; empty if the ring is.
    ///
    /// Each slot is freed (its stamp advanced a lap) as its value is read
    /// out. Dropping the run reads out and drops what is left of it, so the
    /// ring stays consistent whatever the caller does with the values.
    pub(crate) fn claim(&self, max: usize) -> ClaimedRun<'_, T> {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // The run of written slots from `head`, up to `max`.
            let mut end = head;
            let mut count = 0;
            while count < max {
                let index = end & (self.one_lap - 1);
                // SYNC POINT (slot-full): Acquire pairs with the producer's
                // Release in `push`: its write of the value happens-before
                // our read in `ClaimedRun::next`.
                if self.slots[index].stamp(index, Ordering::Acquire) != end.wrapping_add(1) {
                    break;
                }
                count += 1;
                end = self.next(end);
            }
            if count == 0 {
                let index = head & (self.one_lap - 1);
                if max == 0 || self.slots[index].stamp(index, Ordering::Relaxed) == head {
                    // Not written yet: empty (see `pop`).
                    return ClaimedRun {
                        ring: self,
                        position: head,
                        remaining: 0,
                    };
                }
                // Another consumer took this position (or a producer just
                // wrote it); look again.
                spin_loop();
                head = self.head.load(Ordering::Relaxed);
                continue;
            }
            // Relaxed: the claim orders nothing; the slots' stamps do.
            match self
                .head
                .compare_exchange_weak(head, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return ClaimedRun {
                        ring: self,
                        position: head,
                        remaining: count,
                    };
                }
                Err(current) => head = current,
            }
        }
    }

    /// True if the next slot to read holds nothing yet. Reads only that slot.
    pub(crate) fn is_empty(&self) -> bool {
        let head = self.head.load(Ordering::Relaxed);
        let index = head & (self.one_lap - 1);
        // Acquire: a consumer that sees the value here will read it next.
        self.slots[index].stamp(index, Ordering::Acquire) != head.wrapping_add(1)
    }

    /// True if consumers have claimed every position producers claimed so
    /// far: every value pushed before this call (by this thread, or by one
    /// whose push happens-before it) is taken out or being taken out.
    pub(crate) fn is_all_claimed(&self) -> bool {
        // Relaxed: `tail` is at least this thread's own pushes (coherence),
        // and a `head` that reached it was moved by a consumer claim that,
        // since we read its value, does not come after what this thread
        // does next (see `bus::lanes` for the use).
        let tail = self.tail.load(Ordering::Relaxed);
        // Positions only grow: `head` may have passed the `tail` read above.
        self.head.load(Ordering::Relaxed).wrapping_sub(tail) as isize >= 0
    }

    /// Values in the ring; approximate while producers or consumers run.
    pub(crate) fn len(&self) -> usize {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Relaxed);
        let (tail_index, head_index) = (tail & (self.one_lap - 1), head & (self.one_lap - 1));
        if head_index < tail_index {
            tail_index - head_index
        } else if head_index > tail_index {
            self.capacity() - head_index + tail_index
        } else if tail == head {
            0
        } else {
            self.capacity()
        }
    }
}

/// Positions a consumer claimed with one move of `head` ([`Ring::claim`]),
/// read out one by one.
pub(crate) struct ClaimedRun<'a, T> {
    ring: &'a Ring<T>,
    position: usize,
    remaining: usize,
}

impl<T> Iterator for ClaimedRun<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.remaining == 0 {
            return None;
        }
        let ring = self.ring;
        let index = self.position & (ring.one_lap - 1);
        let slot = &ring.slots[index];
        // SAFETY: moving `head` past this position while its stamp was
        // `position + 1` (checked before the claim, and only the claimer of a
        // position changes a full slot's stamp) makes this thread the only
        // reader of the value written there.
        let value = slot
            .value
            .with_mut(|cell| unsafe { (*cell).assume_init_read() });
        // SYNC POINT (slot-free): Release pairs with the Acquire in `push` on
        // the next lap.
        slot.set_stamp(
            index,
            self.position.wrapping_add(ring.one_lap),
            Ordering::Release,
        );
        self.position = ring.next(self.position);
        self.remaining -= 1;
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<T> ExactSizeIterator for ClaimedRun<'_, T> {}

impl<T> Drop for ClaimedRun<'_, T> {
    fn drop(&mut self) {
        // Head has moved past the whole run: its slots must be freed, or
        // producers would find them full a lap later.
        self.for_each(drop);
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

impl<T> std::fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
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
    fn pops_and_claimed_runs_behave_like_a_bounded_vecdeque_through_many_laps() {
        for capacity in [1, 2, 3, 4, 7] {
            laps_against_a_model(capacity);
        }
    }

    fn laps_against_a_model(capacity: usize) {
        let ring = Ring::new(capacity);
        let mut model = VecDeque::new();
        let mut next = 0u64;
        for step in 0..10_000u64 {
            if step % 3 != 2 {
                let pushed = ring.push(next).is_ok();
                assert_eq!(pushed, model.len() < capacity);
                if pushed {
                    model.push_back(next);
                }
                next += 1;
            } else if step % 2 == 0 {
                assert_eq!(ring.pop(), model.pop_front());
            } else {
                // A claimed run takes what draining the model takes.
                let max = (step % 7) as usize;
                let expected: Vec<_> = (0..max).map_while(|_| model.pop_front()).collect();
                let run = ring.claim(max);
                assert_eq!(run.len(), expected.len());
                assert_eq!(run.collect::<Vec<_>>(), expected);
            }
            assert_eq!(ring.len(), model.len());
            assert_eq!(ring.is_empty(), model.is_empty());
        }
    }

    #[test]
    fn a_run_dropped_part_way_frees_the_rest_of_its_slots() {
        let marker = Arc::new(());
        let ring = Ring::new(4);
        for _ in 0..4 {
            ring.push(marker.clone()).unwrap();
        }
        let mut run = ring.claim(3);
        drop(run.next());
        drop(run);
        assert_eq!(Arc::strong_count(&marker), 2, "three taken out, one left");
        for _ in 0..3 {
            ring.push(marker.clone())
                .expect("the run's slots are free again");
        }
        assert_eq!(ring.len(), 4);
    }

    #[test]
    fn drops_what_it_still_holds() {
        let marker = Arc::new(());
        let ring = Ring::new(8);
        for _ in 0..5 {
            ring.push(marker.clone()).unwrap();
        }
        drop(ring);
        assert_eq!(Arc::strong_count(&marker), 1);
    }

    #[test]
    fn many_producers_one_consumer_lose_nothing_and_keep_each_producers_order() {
        const PER_PRODUCER: u64 = 100_000;
        let ring = Arc::new(Ring::new(64));
        let producers: Vec<_> = (0..3u64)
            .map(|who| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_PRODUCER {
                        let mut value = (who << 32) | i;
                        while let Err(rejected) = ring.push(value) {
                            value = rejected;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u64; 3];
        let mut received = 0;
        while received < 3 * PER_PRODUCER {
            match ring.pop() {
                Some(value) => {
                    let who = (value >> 32) as usize;
                    assert_eq!(
                        value & 0xFFFF_FFFF,
                        next[who],
                        "producer {who} out of order"
                    );
                    next[who] += 1;
                    received += 1;
                }
                None => std::hint::spin_loop(),
            }
        }
        producers.into_iter().for_each(|p| p.join().unwrap());
        assert!(ring.pop().is_none());
    }
}
