//! [`Appender`]: the single writer of a sequence of segments.
//!
//! Each publishing thread (or engine worker) owns one appender, so appending is
//! a bump of a private offset and plain stores: no atomic read-modify-write, no
//! lock. Records go one after the other in the current segment; when one does
//! not fit, the appender seals the segment and takes the next from the pool.

use std::ptr::NonNull;
use std::sync::Arc;

use thiserror::Error;

use super::pool::SegmentPool;
use super::record::RecordRef;
use super::segment::{
    RECORD_HEADER_BYTES, RecordHeader, SEGMENT_HEADER_BYTES, SegmentHeader, record_bytes,
};
use crate::event::{self, EventParts, Template};

/// Why a record could not be appended. Nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AppendError {
    /// The pool's memory budget is spent: consumers hold every segment.
    #[error("the event memory budget is spent: slow consumers hold all segments")]
    OutOfMemory,
}

/// Writes records into segments taken from a pool.
pub struct Appender {
    pool: Arc<SegmentPool>,
    current: Option<NonNull<SegmentHeader>>,
    /// Record space of the current segment. A private copy: the segment
    /// header's cache line holds the `live` count that consumers decrement on
    /// every release, so reading the header on every append would bounce that
    /// line between the cores (measured: 3x slower cross-thread).
    capacity: usize,
    /// Next free byte of the current segment's record space.
    offset: usize,
    /// Records written to the current segment.
    records: u32,
}

// SAFETY: the appender is the only writer of its current segment and moves
// with it; nothing in it is tied to a thread.
unsafe impl Send for Appender {}

impl Appender {
    /// An appender drawing segments from `pool`.
    pub fn new(pool: Arc<SegmentPool>) -> Self {
        Self {
            pool,
            current: None,
            capacity: 0,
            offset: 0,
            records: 0,
        }
    }

    /// Archives `parts` into a new record with `holders` holds (at least one),
    /// and returns them. The parts must already be checked against the limits
    /// ([`crate::event::check_parts`]).
    pub fn append(&mut self, parts: &EventParts<'_>, holders: u32) -> Result<Holds, AppendError> {
        self.write_record(parts.archive_bytes_bound(), holders, |space| {
            event::encode_into(parts, space).expect("the bound leaves room for the archive")
        })
    }

    /// Like [`Appender::append`], for an event that `template` fits, with
    /// `payload` and the id of `id_words` (see [`Template::stamp`]): stamped
    /// from the template rather than encoded.
    #[inline]
    pub(crate) fn append_stamped(
        &mut self,
        template: &Template<'_>,
        (id_words, payload): ((u64, u64), &[u8]),
        holders: u32,
    ) -> Result<Holds, AppendError> {
        self.write_record(template.len(), holders, |space| {
            template.stamp(id_words, payload, space)
        })
    }

    /// Copies bytes into a new record with `holders` holds, as they are. (The
    /// bus calls this only with archives [`crate::event::validate`] accepted,
    /// since its consumers read records without checking them again.)
    pub fn append_archive(&mut self, archive: &[u8], holders: u32) -> Result<Holds, AppendError> {
        self.write_record(archive.len(), holders, |space| {
            space[..archive.len()].copy_from_slice(archive);
            archive.len()
        })
    }

    /// Inlined: a call per event took the stamped path's id and payload
    /// through memory.
    #[inline]
    fn write_record(
        &mut self,
        archive_bytes_max: usize,
        holders: u32,
        write: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<Holds, AppendError> {
        let needed = record_bytes(archive_bytes_max);
        let segment = self.segment_with_room(needed)?;
        let capacity = self.capacity;
        // SAFETY: `offset + needed <= capacity` (checked by segment_with_room),
        // so the record lies inside the allocation; the space after `offset`
        // is written by no one else and is initialized memory (zeroed when the
        // segment was allocated, or earlier records). The record offset is a
        // multiple of 16, so the archive is 16-byte aligned.
        let (record, space) = unsafe {
            let base = segment.as_ptr().cast::<u8>().add(SEGMENT_HEADER_BYTES);
            let record = base.add(self.offset);
            let space = std::slice::from_raw_parts_mut(
                record.add(RECORD_HEADER_BYTES),
                capacity - self.offset - RECORD_HEADER_BYTES,
            );
            (record.cast::<RecordHeader>(), space)
        };
        let len = write(space);
        debug_assert!(record_bytes(len) <= needed);
        let header = RecordHeader::new(holders, len as u32, segment);
        // SAFETY: `record` is inside this appender's unwritten space and aligned.
        unsafe { record.write(header) };
        self.offset += record_bytes(len);
        self.records += 1;
        Ok(Holds {
            // SAFETY: derived from the segment's non-null pointer.
            record: unsafe { NonNull::new_unchecked(record) },
            remaining: holders,
        })
    }

    /// The current segment if `needed` bytes fit, else a fresh one.
    fn segment_with_room(&mut self, needed: usize) -> Result<NonNull<SegmentHeader>, AppendError> {
        if let Some(segment) = self.current {
            if self.offset + needed <= self.capacity {
                return Ok(segment);
            }
            self.seal();
        }
        let segment = self.pool.take(needed).ok_or(AppendError::OutOfMemory)?;
        self.current = Some(segment);
        // SAFETY: the segment was just taken from the pool: it is ours.
        self.capacity = unsafe { segment.as_ref() }.capacity;
        self.offset = 0;
        self.records = 0;
        Ok(segment)
    }

    /// Stops writing the current segment and lets it go back to the pool once
    /// its records are released.
    fn seal(&mut self) {
        if let Some(segment) = self.current.take() {
            // SAFETY: the segment stays allocated at least until sealed.
            if unsafe { segment.as_ref() }.seal(self.records) {
                SegmentPool::recycle(segment);
            }
        }
    }
}

/// The holds on a freshly written record, handed out one by one (it is an
/// iterator of [`RecordRef`]). Holds not
/// taken are released when this is dropped, so the count always balances.
#[derive(Debug)]
pub struct Holds {
    record: NonNull<RecordHeader>,
    remaining: u32,
}

impl Iterator for Holds {
    type Item = RecordRef;

    fn next(&mut self) -> Option<RecordRef> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // SAFETY: the record's `holders` was set to the number of holds this
        // iterator yields, and each is yielded once.
        Some(unsafe { RecordRef::from_raw(self.record) })
    }
}

impl Drop for Holds {
    fn drop(&mut self) {
        self.by_ref().for_each(drop);
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.seal();
    }
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender")
            .field("offset", &self.offset)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}
