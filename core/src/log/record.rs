//! [`RecordRef`]: one holder's reference to a record, released on drop.

use std::ptr::NonNull;

use super::segment::{RECORD_HEADER_BYTES, RecordHeader, SegmentHeader};

/// One delivery's hold on a record. Gives read access to the archive in place;
/// dropping it releases the hold (and recycles the segment if it was the last
/// hold on the segment's last record).
///
/// Not `Clone`: the writer creates exactly as many as it counted holders.
pub struct RecordRef(NonNull<RecordHeader>);

// SAFETY: a RecordRef only reads the record's archive, which nobody writes
// while any hold exists, and releases through atomics.
unsafe impl Send for RecordRef {}
// SAFETY: as above; shared access is read-only.
unsafe impl Sync for RecordRef {}

impl RecordRef {
    /// Creates one hold.
    ///
    /// # Safety
    ///
    /// `record` points to a written record whose `holders` count includes this
    /// hold, and no other `RecordRef` stands for the same hold.
    pub(crate) unsafe fn from_raw(record: NonNull<RecordHeader>) -> Self {
        Self(record)
    }

    /// Identifies the segment the record lies in (its address): holds with
    /// the same key pin the same segment.
    pub(crate) fn segment_key(&self) -> usize {
        // SAFETY: this hold keeps the record alive; its header is not written
        // while holds exist.
        unsafe { self.0.as_ref() }.segment_key()
    }

    /// The archive bytes, in place, 16-byte aligned.
    pub fn archive(&self) -> &[u8] {
        // SAFETY: this hold keeps the record alive and unchanged; the archive
        // starts right after the 16-byte header and is `len` bytes long.
        unsafe {
            let header = self.0.as_ref();
            let start = self.0.as_ptr().cast::<u8>().add(RECORD_HEADER_BYTES);
            std::slice::from_raw_parts(start, header.len())
        }
    }
}

impl Drop for RecordRef {
    fn drop(&mut self) {
        // SAFETY: this hold keeps the record (and its segment) alive until now.
        let header = unsafe { self.0.as_ref() };
        if let Some(segment) = header.release() {
            super::SegmentPool::recycle(segment);
        }
    }
}

/// Releases many holds with one decrement of a segment's `live` count per
/// run of records in that segment, instead of one per record: a consumer
/// draining a batch published by one publisher finds its records side by
/// side in one segment, and the segment header's line is written once per
/// run instead of bouncing to the writer's core per event.
///
/// The decrement owed for a run is paid when a record of another segment
/// comes, or when the batch ends ([`BatchRelease::finish`], or on drop).
/// Until then the run's segment stays allocated: its `live` count still
/// counts the run's records.
#[derive(Debug, Default)]
pub(crate) struct BatchRelease {
    /// The segment of the current run, and its records with no holds left.
    run: Option<(NonNull<SegmentHeader>, u32)>,
}

impl BatchRelease {
    /// Lets go of `record`'s hold.
    pub(crate) fn release(&mut self, record: RecordRef) {
        let record = std::mem::ManuallyDrop::new(record);
        // SAFETY: this hold keeps the record alive until `release_holder`;
        // `ManuallyDrop` keeps it from being released a second time.
        let header = unsafe { record.0.as_ref() };
        let Some(segment) = header.release_holder() else {
            return;
        };
        match &mut self.run {
            Some((current, records)) if *current == segment => *records += 1,
            _ => {
                self.finish();
                self.run = Some((segment, 1));
            }
        }
    }

    /// Pays the decrement owed for the current run.
    pub(crate) fn finish(&mut self) {
        if let Some((segment, records)) = self.run.take() {
            // SAFETY: the segment's `live` still counts this run's records,
            // so it is allocated until the decrement below.
            if unsafe { segment.as_ref() }.release_records(records) {
                super::SegmentPool::recycle(segment);
            }
        }
    }
}

impl Drop for BatchRelease {
    fn drop(&mut self) {
        self.finish();
    }
}

impl std::fmt::Debug for RecordRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordRef")
            .field("len", &self.archive().len())
            .finish()
    }
}
