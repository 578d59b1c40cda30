//! Segments and records: the memory layout and the reference-counting protocol
//! that decides when a segment's bytes may be written again.
//!
//! ```text
//! Segment: one allocation, 128-byte aligned
//!  0          128             256
//!  +----------+---------------+--------+--------+--------+---------------------+
//!  | live     | capacity,     | record | record | record |  free               |
//!  | (alone)  | pool, ...     |        |        |        |                     |
//!  +----------+---------------+--------+--------+--------+---------------------+
//!
//! Record: 16-byte aligned, so the archive after its header is 16-byte aligned
//!  0         4         8                  16
//!  +---------+---------+------------------+---------------------------+------+
//!  | holders | len     | segment pointer  | rkyv archive (len bytes)  | pad  |
//!  +---------+---------+------------------+---------------------------+------+
//! ```
//!
//! # The protocol
//!
//! A record has `holders`: one per delivery that still references it. A
//! segment has `live`: the records in it that still have holders, plus
//! [`WRITER_BIAS`] while a writer is still appending to it. The bias keeps
//! `live` from reaching zero while records may still be added.
//!
//! - The writer fills a record with plain stores, sets `holders`, and hands
//!   out the record through a consumer queue, whose push is a release and whose
//!   pop is an acquire.
//! - A holder lets go with [`RecordHeader::release`]: the last holder of a
//!   record decrements the segment's `live`; whoever brings `live` to zero
//!   recycles the segment.
//! - The writer, moving on, [`SegmentHeader::seal`]s the segment by removing
//!   the bias minus the records it wrote; if every record was already released,
//!   the writer recycles the segment itself.
//! - A recycled segment goes back to the pool's free list (push: release) and
//!   a writer takes it out again (pop: acquire) before writing over it.
//!
//! Every read of a record's bytes therefore happens-before the next write to
//! those bytes: reads → holder's release decrement → (acquire fence of the last
//! decrement) → `live` release decrement → (acquire fence) → free-list push →
//! free-list pop → writer's stores. The loom test `segment_protocol` checks this
//! chain with the bytes replaced by a tracked cell.

use std::ptr::NonNull;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU32, Ordering, fence};

/// Added to a segment's `live` count while a writer may still append to it.
pub(crate) const WRITER_BIAS: u32 = 1 << 31;

/// Bytes from the start of a segment to its first record.
pub(crate) const SEGMENT_HEADER_BYTES: usize =
    size_of::<SegmentHeader>().next_multiple_of(SEGMENT_ALIGN);

/// Bytes from the start of a record to its archive.
pub(crate) const RECORD_HEADER_BYTES: usize =
    size_of::<RecordHeader>().next_multiple_of(crate::event::ARCHIVE_ALIGN);

/// Alignment of segments: two cache lines, so that the header's counter never
/// shares a line (or an adjacent-line prefetch pair) with record bytes.
pub(crate) const SEGMENT_ALIGN: usize = 128;

/// The start of every segment.
#[repr(C, align(128))]
pub(crate) struct SegmentHeader {
    /// Records not yet fully released, plus [`WRITER_BIAS`] while a writer
    /// appends. In `0 ..= WRITER_BIAS`. Alone on its cache line: consumers
    /// decrement it on every release, and nothing on the hot path reads the
    /// fields below.
    live: CachePadded<AtomicU32>,
    /// Bytes available for records after the header.
    pub(crate) capacity: usize,
    /// Made for one event larger than a regular segment; freed, not recycled.
    pub(crate) oversized: bool,
    /// The pool this segment returns to. The pool outlives every segment: each
    /// holder of a record keeps the pool alive (see `log::pool`).
    pub(crate) pool: NonNull<super::pool::SegmentPool>,
    /// Stands in for the record bytes under loom, which cannot see raw memory.
    #[cfg(loom)]
    pub(crate) loom_bytes: loom::cell::UnsafeCell<u64>,
}

const _: () = assert!(SEGMENT_HEADER_BYTES == 256 || cfg!(loom));

impl SegmentHeader {
    pub(crate) fn new(
        capacity: usize,
        oversized: bool,
        pool: NonNull<super::pool::SegmentPool>,
    ) -> Self {
        Self {
            live: CachePadded::new(AtomicU32::new(0)),
            capacity,
            oversized,
            pool,
            #[cfg(loom)]
            loom_bytes: loom::cell::UnsafeCell::new(0),
        }
    }

    /// Marks the segment as being written. Called by the writer that just took
    /// it from the pool, before any of its records is handed out.
    pub(crate) fn begin(&self) {
        debug_assert_eq!(
            self.live.load(Ordering::Relaxed),
            0,
            "a segment is reused only when free"
        );
        // Relaxed: holders only touch `live` after receiving a record through a
        // queue push (release) that is sequenced after this store.
        self.live.store(WRITER_BIAS, Ordering::Relaxed);
    }

    /// The writer appended `records` records and will append no more. Returns
    /// true if all of them were already released: the caller recycles it.
    pub(crate) fn seal(&self, records: u32) -> bool {
        assert!(
            records < WRITER_BIAS,
            "record count overflows the writer bias"
        );
        // SYNC POINT (segment-free): AcqRel. Acquire: if this brings `live` to
        // zero, the holders' release decrements happen-before the recycle done
        // by this thread. Release: if a holder brings it to zero later, the
        // writer's record stores happen-before that holder's recycle.
        let previous = self.live.fetch_sub(WRITER_BIAS - records, Ordering::AcqRel);
        debug_assert!(previous >= WRITER_BIAS - records);
        previous == WRITER_BIAS - records
    }

    /// `records` records of this segment have no holders left (a consumer
    /// releasing a batch counts a run of records in one segment at once).
    /// Returns true if the segment is now free: the caller recycles it.
    pub(crate) fn release_records(&self, records: u32) -> bool {
        debug_assert!(records > 0);
        // SYNC POINT (segment-free): Release pairs with the Acquire fence below
        // in whichever thread takes `live` to zero (or with `seal`'s AcqRel).
        // It publishes this thread's reads of all `records` records, and of
        // other holders' reads taken in by `RecordHeader::release_holder`.
        let previous = self.live.fetch_sub(records, Ordering::Release);
        debug_assert!(previous >= records, "more records released than live");
        if previous == records {
            fence(Ordering::Acquire);
            return true;
        }
        false
    }
}

/// The start of every record.
#[repr(C, align(16))]
pub(crate) struct RecordHeader {
    /// Deliveries that still reference this record.
    holders: AtomicU32,
    /// Length of the archive that follows, in bytes.
    len: u32,
    /// The segment this record lives in.
    segment: NonNull<SegmentHeader>,
}

// Loom's atomics are larger; the layout stays consistent, just not 16 bytes.
const _: () = assert!(RECORD_HEADER_BYTES == 16 || cfg!(loom));
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(crate::event::ARCHIVE_ALIGN));
const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(crate::event::ARCHIVE_ALIGN));

impl RecordHeader {
    pub(crate) fn new(holders: u32, len: u32, segment: NonNull<SegmentHeader>) -> Self {
        assert!(
            holders > 0,
            "a record is written only for at least one delivery"
        );
        Self {
            holders: AtomicU32::new(holders),
            len,
            segment,
        }
    }

    /// One holder lets go. Returns the segment if it became free and must be
    /// recycled by the caller.
    pub(crate) fn release(&self) -> Option<NonNull<SegmentHeader>> {
        let segment = self.release_holder()?;
        // SAFETY: the segment outlives its records: it is recycled only when
        // `live` reaches zero, which needs this record's release first.
        unsafe { segment.as_ref() }
            .release_records(1)
            .then_some(segment)
    }

    /// One holder lets go of the record itself. Returns its segment if that
    /// was the last hold: the caller then owes the segment this record's
    /// release ([`SegmentHeader::release_records`]), and until it pays, the
    /// segment stays allocated (its `live` still counts the record).
    pub(crate) fn release_holder(&self) -> Option<NonNull<SegmentHeader>> {
        // A sole holder needs no read-modify-write: nobody else holds the
        // record, so nobody else can change the count. Acquire pairs with the
        // Release decrements of any holders that left before us.
        if self.holders.load(Ordering::Acquire) != 1 {
            // SYNC POINT (record-free): Release publishes this holder's reads
            // to the last holder, whose Acquire fence below takes them in.
            if self.holders.fetch_sub(1, Ordering::Release) != 1 {
                return None;
            }
            fence(Ordering::Acquire);
        }
        Some(self.segment)
    }

    /// The address of the segment this record lies in.
    pub(crate) fn segment_key(&self) -> usize {
        self.segment.as_ptr() as usize
    }

    /// Length of the archive in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }
}

/// Bytes a record with an archive of `archive_len` bytes takes in a segment.
pub(crate) fn record_bytes(archive_len: usize) -> usize {
    RECORD_HEADER_BYTES + archive_len.next_multiple_of(crate::event::ARCHIVE_ALIGN)
}
