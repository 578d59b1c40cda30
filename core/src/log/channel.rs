//! [`channel`]: one writer hands records to one reader, a batch at a time,
//! for programs that link the core as a library and want the log without the
//! bus (no subjects, no matching: bytes in, the same bytes out, in order).
//!
//! Composed from what the bus already uses on its fast path:
//!
//! - the writer appends each record once into segment memory (an
//!   [`Appender`] of its own) and pushes its single hold into a [`Lane`],
//!   whose `tail` it stores once per [`LogWriter::publish`] (or every 64
//!   records on its own), not per record;
//! - the reader claims a run of the lane, reads every archive in place and
//!   lets go of the holds through a [`BatchRelease`]: one decrement of a
//!   segment's `live` per run of records in that segment, and one store of
//!   the lane's `head` per batch.
//!
//! So no read-modify-write and no cross-core hand-over is paid per record,
//! only per batch. The names follow `std::sync::mpsc::channel`: a pair of
//! ends, made together; "writer" and "reader" because what goes through is
//! a log's records, written once and read in place.
//!
//! One producer and one consumer by construction: neither end is `Clone`,
//! and everything that touches the lane takes `&mut self`. Either end may
//! move to another thread.
//!
//! # Closing
//!
//! Dropping the writer publishes what it wrote; the reader reads it all and
//! then gets [`Closed`]. Dropping the reader releases every record published
//! by then; the writer's next write fails with [`WriteError::Closed`].
//! Records the writer pushed after the reader's last look are released when
//! the writer is dropped too: no hold outlives the pair.

use std::sync::Arc;

use thiserror::Error;

use super::appender::{AppendError, Appender, Holds};
use super::pool::SegmentPool;
use super::record::{BatchRelease, RecordRef};
use crate::event::EventParts;
use crate::lane::Lane;
use crate::sync::{AtomicBool, Ordering};

/// A writer and a reader joined by a lane of `capacity` records, whose
/// records are written into segments from `pool`.
///
/// ```
/// use starling_core::Event;
/// use starling_core::log::{SegmentPool, channel};
///
/// // 64 KiB segments, at most 16 MiB of records in flight.
/// let (mut writer, mut reader) = channel(SegmentPool::new(64 << 10, 16 << 20), 1024);
/// let archive = Event { subject: "ticks".into(), payload: vec![7; 16], ..Event::default() }
///     .to_archive();
/// for _ in 0..3 {
///     writer.write_archive(&archive).expect("room for three");
/// }
/// writer.publish(); // one store hands the three over
/// let mut read = 0;
/// let taken = reader.read(256, |bytes| {
///     assert_eq!(bytes, &archive[..]); // in place, not copied
///     read += 1;
/// });
/// assert_eq!((taken, read), (Ok(3), 3));
/// ```
pub fn channel(pool: Arc<SegmentPool>, capacity: usize) -> (LogWriter, LogReader) {
    let shared = Arc::new(Shared {
        lane: Lane::new(capacity),
        writer_gone: AtomicBool::new(false),
        reader_gone: AtomicBool::new(false),
    });
    let writer = LogWriter {
        appender: Appender::new(pool),
        shared: shared.clone(),
    };
    (writer, LogReader { shared })
}

/// What the two ends share. The lane drops the records still in it when the
/// last end goes.
struct Shared {
    lane: Lane<RecordRef>,
    /// Set once by the writer's drop, after its last publish.
    writer_gone: AtomicBool,
    /// Set once by the reader's drop.
    reader_gone: AtomicBool,
}

/// Why a record was not written. Nothing was appended; the writer published
/// what it had written before, so that its reader can make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WriteError {
    /// The lane holds `capacity` records the reader has not taken yet.
    #[error("the reader has not made room for another record yet")]
    Full,
    /// The pool's memory budget is spent (records held elsewhere, or by
    /// this channel's reader, pin every segment).
    #[error(transparent)]
    Append(#[from] AppendError),
    /// The reader is gone: nothing written now would be read.
    #[error("the reader is gone")]
    Closed,
}

/// The writer is gone and the reader has read everything it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the writer is gone and every record was read")]
pub struct Closed;

/// The writing end of a [`channel`].
pub struct LogWriter {
    appender: Appender,
    shared: Arc<Shared>,
}

impl LogWriter {
    /// Copies `archive` into a new record for the reader, as it is (the
    /// reader gets these bytes back, not a checked event). The reader sees
    /// it after the next [`LogWriter::publish`], or sooner when the writer
    /// publishes on its own (every 64 records).
    pub fn write_archive(&mut self, archive: &[u8]) -> Result<(), WriteError> {
        self.write_with(|appender| appender.append_archive(archive, 1))
    }

    /// Archives `parts` into a new record for the reader, as
    /// [`LogWriter::write_archive`] does with a finished archive. The parts
    /// must already be checked against the limits
    /// ([`crate::event::check_parts`]).
    pub fn write_parts(&mut self, parts: &EventParts<'_>) -> Result<(), WriteError> {
        self.write_with(|appender| appender.append(parts, 1))
    }

    /// Makes every record written so far visible to the reader: one store,
    /// however many records, and none if nothing is new.
    pub fn publish(&mut self) {
        // SAFETY: this writer is the lane's only producer: it is not
        // `Clone`, and each of its calls has `&mut self`.
        unsafe { self.shared.lane.publish() };
    }

    /// True once the reader is gone.
    pub fn is_closed(&self) -> bool {
        // Relaxed: the flag carries no data; the records left in the lane
        // are the lane's to drop, not this writer's.
        self.shared.reader_gone.load(Ordering::Relaxed)
    }

    fn write_with(
        &mut self,
        append: impl FnOnce(&mut Appender) -> Result<Holds, AppendError>,
    ) -> Result<(), WriteError> {
        if self.is_closed() {
            return Err(WriteError::Closed);
        }
        // SAFETY: as in `publish`, this writer is the only producer.
        if !unsafe { self.shared.lane.has_room() } {
            self.publish();
            return Err(WriteError::Full);
        }
        let record = match append(&mut self.appender) {
            Ok(mut holds) => holds.next().expect("appended with one hold"),
            Err(error) => {
                // The reader may be holding the segments back only because
                // it has not seen the records that would let it free them.
                self.publish();
                return Err(error.into());
            }
        };
        // SAFETY: as above; `has_room` said the push finds room, and only
        // this writer fills the lane.
        unsafe { self.shared.lane.push(record) }.expect("the lane had room");
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.publish();
        // SYNC POINT (log-channel-closed): Release pairs with the reader's
        // Acquire load in `LogReader::read`: the publish above (its store
        // of `tail`) happens-before the reader's next claim, so a reader
        // that sees the flag sees every record.
        self.shared.writer_gone.store(true, Ordering::Release);
    }
}

/// The reading end of a [`channel`].
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogReader {
    /// Calls `read` on the archive of each record published and not yet
    /// read, up to `max` of them, in the order written, in place; then lets
    /// go of them all (one release per segment they lie in) and gives their
    /// slots back to the writer at once. Returns how many were read: 0 if
    /// none is published yet; [`Closed`] once the writer is gone and every
    /// record was read.
    pub fn read(&mut self, max: usize, mut read: impl FnMut(&[u8])) -> Result<usize, Closed> {
        // SAFETY: this reader is the lane's only consumer (it is not
        // `Clone`, and `read` has `&mut self`), and each run is dropped
        // before the next claim.
        let mut run = unsafe { self.shared.lane.claim(max) };
        if run.remaining() == 0 {
            drop(run);
            // SYNC POINT (log-channel-closed): Acquire pairs with the
            // writer's Release store in its drop: the claim below sees its
            // last publish.
            if !self.shared.writer_gone.load(Ordering::Acquire) {
                return Ok(0);
            }
            // SAFETY: as above.
            run = unsafe { self.shared.lane.claim(max) };
            if run.remaining() == 0 {
                return Err(Closed);
            }
        }
        let count = run.remaining();
        let mut release = BatchRelease::default();
        for record in run {
            read(record.archive());
            release.release(record);
        }
        Ok(count)
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        // Relaxed: see `LogWriter::is_closed`. The writer stops at its
        // next write.
        self.shared.reader_gone.store(true, Ordering::Relaxed);
        // Lets go of what the writer published, so that it does not pin
        // segments while the writer lives; once, since a writer that goes
        // on writing until it sees the flag could keep a loop here going.
        // What it pushes after this is dropped with the lane.
        let _ = self.read(usize::MAX, |_| ());
    }
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("appender", &self.appender)
            .field("lane", &self.shared.lane)
            .finish()
    }
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("lane", &self.shared.lane)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::log::segment::SEGMENT_HEADER_BYTES;
    use proptest::prelude::*;

    /// True if every segment the pool allocated is back on its free list.
    fn every_segment_returned(pool: &SegmentPool) -> bool {
        let stats = pool.stats();
        stats.bytes_allocated == stats.segments_free * (SEGMENT_HEADER_BYTES + pool.segment_bytes())
    }

    fn read_all(reader: &mut LogReader, max: usize) -> Result<Vec<Vec<u8>>, Closed> {
        let mut out = Vec::new();
        reader.read(max, |archive| out.push(archive.to_vec()))?;
        Ok(out)
    }

    #[test]
    fn the_reader_gets_the_published_records_in_order_and_in_place() {
        let pool = SegmentPool::new(4096, 1 << 20);
        let (mut writer, mut reader) = channel(pool.clone(), 8);
        for byte in 1..=3u8 {
            writer.write_archive(&[byte; 5]).unwrap();
        }
        assert_eq!(read_all(&mut reader, 8), Ok(vec![]), "not published yet");
        writer.publish();
        assert_eq!(read_all(&mut reader, 2), Ok(vec![vec![1; 5], vec![2; 5]]));
        assert_eq!(read_all(&mut reader, 2), Ok(vec![vec![3; 5]]));
        let mut aligned = true;
        writer.write_archive(&[4; 40]).unwrap();
        writer.publish();
        reader
            .read(1, |archive| aligned = archive.as_ptr().addr() % 16 == 0)
            .unwrap();
        assert!(aligned, "archives are read in place, 16-byte aligned");
    }

    #[test]
    fn the_writer_publishes_on_its_own_every_64_records() {
        let pool = SegmentPool::new(4096, 1 << 20);
        let (mut writer, mut reader) = channel(pool, 128);
        for _ in 0..63 {
            writer.write_archive(b"x").unwrap();
        }
        assert_eq!(reader.read(128, |_| ()), Ok(0));
        writer.write_archive(b"x").unwrap();
        assert_eq!(reader.read(128, |_| ()), Ok(64));
    }

    #[test]
    fn a_full_lane_refuses_the_record_and_publishes_what_it_holds() {
        let pool = SegmentPool::new(4096, 1 << 20);
        let (mut writer, mut reader) = channel(pool, 2);
        writer.write_archive(b"a").unwrap();
        writer.write_archive(b"b").unwrap();
        assert_eq!(writer.write_archive(b"c"), Err(WriteError::Full));
        assert_eq!(read_all(&mut reader, 1), Ok(vec![b"a".to_vec()]));
        writer.write_archive(b"c").unwrap();
        writer.publish();
        assert_eq!(
            read_all(&mut reader, 9),
            Ok(vec![b"b".to_vec(), b"c".to_vec()])
        );
    }

    #[test]
    fn writing_event_parts_gives_the_archive_rkyv_would_write() {
        let event = crate::Event {
            subject: "orders.eu.created".into(),
            payload: vec![7; 16],
            ..crate::Event::default()
        };
        let pool = SegmentPool::new(4096, 1 << 20);
        let (mut writer, mut reader) = channel(pool, 2);
        let mut headers = Vec::new();
        writer.write_parts(&event.parts(&mut headers)).unwrap();
        writer.publish();
        assert_eq!(
            read_all(&mut reader, 1),
            Ok(vec![event.to_archive().to_vec()])
        );
    }

    #[test]
    fn a_spent_budget_refuses_the_record_and_publishes_what_it_holds() {
        let pool = SegmentPool::new(4096, 4096 + SEGMENT_HEADER_BYTES);
        let (mut writer, mut reader) = channel(pool.clone(), 64);
        writer.write_archive(&[1; 3000]).unwrap();
        assert_eq!(
            writer.write_archive(&[2; 3000]),
            Err(WriteError::Append(AppendError::OutOfMemory))
        );
        assert_eq!(reader.read(64, |_| ()), Ok(1), "published by the refusal");
        writer.write_archive(&[2; 3000]).unwrap();
        drop((writer, reader));
        assert!(every_segment_returned(&pool));
    }

    #[test]
    fn a_dropped_writer_leaves_its_records_to_read_then_closes() {
        let pool = SegmentPool::new(4096, 1 << 20);
        let (mut writer, mut reader) = channel(pool.clone(), 8);
        writer.write_archive(b"last words").unwrap();
        drop(writer);
        assert_eq!(read_all(&mut reader, 8), Ok(vec![b"last words".to_vec()]));
        assert_eq!(read_all(&mut reader, 8), Err(Closed));
        drop(reader);
        assert!(every_segment_returned(&pool));
    }

    #[test]
    fn a_dropped_reader_closes_the_writer_and_releases_every_record() {
        let pool = SegmentPool::new(4096, 1 << 20);
        let (mut writer, reader) = channel(pool.clone(), 8);
        for _ in 0..5 {
            writer.write_archive(&[9; 1000]).unwrap();
        }
        writer.publish();
        drop(reader);
        assert!(writer.is_closed());
        assert_eq!(writer.write_archive(b"x"), Err(WriteError::Closed));
        drop(writer);
        assert!(every_segment_returned(&pool));
    }

    #[test]
    fn records_left_unread_by_both_ends_are_released() {
        let pool = SegmentPool::new(4096, 1 << 20);
        let (mut writer, reader) = channel(pool.clone(), 8);
        writer.write_archive(&[1; 2000]).unwrap();
        writer.write_archive(&[2; 2000]).unwrap();
        drop(reader);
        drop(writer);
        assert!(every_segment_returned(&pool));
        assert!(pool.stats().segments_free > 0);
    }

    /// The archive the model writes as record `index`: its length varies
    /// from empty to larger than a segment (so segments change at random
    /// places and some records get one of their own), its bytes name it.
    fn archive_for(index: u64, seed: u64) -> Vec<u8> {
        let mixed = (index ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let len = match mixed % 101 {
            0 => 5000,
            n => (n as usize * 13) % 400,
        };
        (0..len).map(|at| (index as usize + at) as u8).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// A writer thread and a reader thread against a model: the reader
        /// sees exactly the archives written, in order, whatever the lane's
        /// size, the publish points and the batch sizes; the pool gets every
        /// segment back once both ends are dropped.
        #[test]
        fn every_archive_written_is_read_once_in_order(
            seed in any::<u64>(),
            capacity in 1usize..80,
            publish_every in 1u64..100,
            batches in proptest::collection::vec(1usize..300, 1..16),
            records in 1u64..3000,
        ) {
            let pool = SegmentPool::new(4096, 64 << 10);
            let (mut writer, mut reader) = channel(pool.clone(), capacity);
            let producer = std::thread::spawn(move || {
                for index in 0..records {
                    let archive = archive_for(index, seed);
                    loop {
                        match writer.write_archive(&archive) {
                            Ok(()) => break,
                            Err(WriteError::Full | WriteError::Append(_)) => std::thread::yield_now(),
                            Err(WriteError::Closed) => panic!("the reader is still there"),
                        }
                    }
                    if index % publish_every == 0 {
                        writer.publish();
                    }
                }
            });
            let mut next = 0u64;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            for max in batches.iter().cycle() {
                match reader.read(*max, |archive| {
                    assert_eq!(archive, archive_for(next, seed), "record {next}");
                    next += 1;
                }) {
                    Ok(read) => {
                        prop_assert!(read <= *max);
                        if read == 0 {
                            std::thread::yield_now();
                        }
                    }
                    Err(Closed) => break,
                }
                prop_assert!(std::time::Instant::now() < deadline, "read {next} of {records}");
            }
            producer.join().unwrap();
            prop_assert_eq!(next, records);
            drop(reader);
            prop_assert!(every_segment_returned(&pool));
        }
    }
}
