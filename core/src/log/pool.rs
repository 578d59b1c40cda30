//! The segment pool: every byte of event memory a bus may use, bounded by a
//! budget, allocated on first need and recycled after that.
//!
//! Segments are allocated lazily, up to `bytes_max`, and never given back to
//! the system while the pool lives: a freed segment goes onto a bounded
//! lock-free free list (`ArrayQueue`) and the next writer takes it from there.
//! In steady state the data path therefore allocates nothing. Events larger
//! than a regular segment get a segment of their own, counted against the
//! same budget and freed (not recycled) when released.
//!
//! The pool outlives its segments: every segment out of the free list (being
//! written, or pinned by records someone still holds) counts as one strong
//! reference to the pool's `Arc`, taken in [`SegmentPool::take`] and given back
//! in [`SegmentPool::recycle`]. So a held record keeps its memory valid after
//! the bus, its subscriptions and its publishers are gone, and the pool frees
//! everything when the last of them goes. This costs one atomic increment per
//! segment (64 KiB of events), not per event.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::Arc;

use super::segment::{SEGMENT_ALIGN, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::sync::{ArrayQueue, AtomicU64, AtomicUsize, Ordering};

/// Where event bytes come from.
pub struct SegmentPool {
    free: ArrayQueue<SegmentPtr>,
    segment_bytes: usize,
    bytes_max: usize,
    /// Bytes currently allocated, regular and oversized segments together.
    bytes_allocated: AtomicUsize,
    /// Times a writer found the budget spent.
    exhausted: AtomicU64,
}

/// A segment on the free list.
struct SegmentPtr(NonNull<SegmentHeader>);

// SAFETY: a segment on the free list is owned by the list alone; whoever pops
// it becomes its only writer.
unsafe impl Send for SegmentPtr {}

// SAFETY: the pool's shared state is atomics and a concurrent queue; segments
// are handed to one writer at a time.
unsafe impl Send for SegmentPool {}
// SAFETY: as above.
unsafe impl Sync for SegmentPool {}

/// Figures about a pool's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes allocated now.
    pub bytes_allocated: usize,
    /// The budget.
    pub bytes_max: usize,
    /// Segments on the free list.
    pub segments_free: usize,
    /// Times an event could not be stored because the budget was spent.
    pub exhausted: u64,
}

impl SegmentPool {
    /// A pool of segments with `segment_bytes` of record space each, using at
    /// most `bytes_max` bytes in all. In an `Arc` because every segment points
    /// back to its pool, which must therefore not move.
    pub fn new(segment_bytes: usize, bytes_max: usize) -> Arc<Self> {
        assert!(
            segment_bytes >= 4096,
            "segments smaller than a page make no sense"
        );
        assert!(
            bytes_max >= segment_bytes,
            "the budget must hold one segment"
        );
        let segments_max = bytes_max / Self::allocation_bytes(segment_bytes);
        Arc::new(Self {
            free: ArrayQueue::new(segments_max.max(1)),
            segment_bytes: segment_bytes.next_multiple_of(crate::event::ARCHIVE_ALIGN),
            bytes_max,
            bytes_allocated: AtomicUsize::new(0),
            exhausted: AtomicU64::new(0),
        })
    }

    /// Record space in each regular segment.
    pub fn segment_bytes(&self) -> usize {
        self.segment_bytes
    }

    /// Current figures.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            bytes_allocated: self.bytes_allocated.load(Ordering::Relaxed),
            bytes_max: self.bytes_max,
            segments_free: self.free.len(),
            exhausted: self.exhausted.load(Ordering::Relaxed),
        }
    }

    /// A segment for a writer, with at least `bytes` of record space: a
    /// recycled or new regular one, or an oversized one if `bytes` exceeds the
    /// regular size. `None` if the budget is spent. The segment is marked as
    /// being written (see [`SegmentHeader::begin`]).
    pub(crate) fn take(&self, bytes: usize) -> Option<NonNull<SegmentHeader>> {
        let segment = if bytes > self.segment_bytes {
            self.allocate(bytes.next_multiple_of(crate::event::ARCHIVE_ALIGN), true)
        } else {
            // SYNC POINT (segment-free): the pop acquires the push in `recycle`.
            self.free
                .pop()
                .map(|free| free.0)
                .or_else(|| self.allocate(self.segment_bytes, false))
        };
        match segment {
            Some(segment) => {
                // SAFETY: the segment was just taken from the free list or
                // allocated: this thread is its only user.
                unsafe { segment.as_ref() }.begin();
                // SAFETY: pools only exist inside an `Arc` (see `new`); the
                // count is given back in `recycle`.
                unsafe { Arc::increment_strong_count(self as *const Self) };
                Some(segment)
            }
            None => {
                self.exhausted.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Returns a segment whose records are all released to its pool, and
    /// gives back the pool reference the segment held.
    pub(crate) fn recycle(segment: NonNull<SegmentHeader>) {
        // SAFETY: the caller saw `live` reach zero, so nobody else uses the
        // segment; its pool is alive because the segment holds a reference.
        let (pool, oversized) = unsafe {
            let header = segment.as_ref();
            (header.pool, header.oversized)
        };
        {
            // SAFETY: as above, the pool is alive until the decrement below.
            let pool = unsafe { pool.as_ref() };
            if oversized {
                pool.free_segment(segment);
            } else if let Err(rejected) = pool.free.push(SegmentPtr(segment)) {
                // SYNC POINT (segment-free): the push releases to the pop in
                // `take`. The list holds every regular segment the budget
                // allows, so a full list is an accounting bug; freeing is
                // still safe.
                debug_assert!(false, "segment free list overflow");
                pool.free_segment(rejected.0);
            }
        }
        // SAFETY: gives back the reference `take` took for this segment; the
        // pool may be dropped here, and nothing touches it afterwards.
        unsafe { Arc::decrement_strong_count(pool.as_ptr().cast_const()) };
    }

    fn allocate(&self, capacity: usize, oversized: bool) -> Option<NonNull<SegmentHeader>> {
        let bytes = Self::allocation_bytes(capacity);
        // Reserve the bytes first so that concurrent writers cannot overshoot.
        let reserved =
            self.bytes_allocated
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |allocated| {
                    (allocated + bytes <= self.bytes_max).then_some(allocated + bytes)
                });
        if reserved.is_err() {
            return None;
        }
        let layout = Layout::from_size_align(bytes, SEGMENT_ALIGN).expect("segment layout");
        // SAFETY: the layout has a non-zero size. Zeroed, so that the record
        // space is initialized memory from the start and can be handed to the
        // encoder as `&mut [u8]`.
        let raw = unsafe { alloc_zeroed(layout) }.cast::<SegmentHeader>();
        let Some(segment) = NonNull::new(raw) else {
            self.bytes_allocated.fetch_sub(bytes, Ordering::Relaxed);
            return None;
        };
        let header = SegmentHeader::new(capacity, oversized, NonNull::from(self));
        // SAFETY: freshly allocated, aligned for the header, and large enough.
        unsafe { segment.as_ptr().write(header) };
        Some(segment)
    }

    fn free_segment(&self, segment: NonNull<SegmentHeader>) {
        // SAFETY: the segment is unused (see callers) and was made by `allocate`.
        let capacity = unsafe { segment.as_ref() }.capacity;
        let bytes = Self::allocation_bytes(capacity);
        let layout = Layout::from_size_align(bytes, SEGMENT_ALIGN).expect("segment layout");
        // SAFETY: drop the header in place (it may own loom state), then free
        // the allocation with the layout it was made with.
        unsafe {
            segment.as_ptr().drop_in_place();
            dealloc(segment.as_ptr().cast(), layout);
        }
        self.bytes_allocated.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn allocation_bytes(capacity: usize) -> usize {
        SEGMENT_HEADER_BYTES + capacity
    }
}

impl Drop for SegmentPool {
    fn drop(&mut self) {
        while let Some(free) = self.free.pop() {
            self.free_segment(free.0);
        }
        // Every writer and holder keeps the pool alive, so by now every segment
        // has come back: anything still allocated is a leak in the protocol.
        debug_assert_eq!(
            self.bytes_allocated.load(Ordering::Relaxed),
            0,
            "segments leaked: a record was never released or a segment never sealed"
        );
    }
}

impl std::fmt::Debug for SegmentPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentPool")
            .field("segment_bytes", &self.segment_bytes)
            .field("stats", &self.stats())
            .finish()
    }
}
