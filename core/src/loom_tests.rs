//! Model checks of the synchronization protocols this crate writes itself,
//! run with `RUSTFLAGS="--cfg loom -C overflow-checks=on" cargo test -p starling-core --release --lib loom`.
//!
//! loom runs every interleaving (and every permitted reordering) of the
//! threads below and fails on a data race, a deadlock or a failed assertion.
//! Raw event bytes are invisible to loom, so each segment carries a tracked
//! cell under loom that the tests write where the appender writes records and
//! read where consumers read them.

use std::ptr::NonNull;
use std::time::Duration;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;

use crate::bus::lanes::LaneOwner;
use crate::bus::queue::{DeliveryQueue, QueueShape};
use crate::lane::Lane;
use crate::log::SegmentPool;
use crate::log::segment::{RecordHeader, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::log::{BatchRelease, Closed, RecordRef, WriteError, channel};
use crate::ring::Ring;
use crate::signal::{Signal, SpaceSignal, current_thread_waker, publish_fence};
use crate::sync::ArrayQueue;

/// Writes one record with `holders` holds at the start of `segment`.
fn write_record(segment: NonNull<SegmentHeader>, holders: u32) -> NonNull<RecordHeader> {
    write_record_at(segment, 0, holders)
}

/// Writes record number `at` (of empty records) with `holders` holds.
fn write_record_at(
    segment: NonNull<SegmentHeader>,
    at: usize,
    holders: u32,
) -> NonNull<RecordHeader> {
    // SAFETY: the test owns the fresh segment; the data area starts after the
    // header and is large enough for a few record headers.
    unsafe {
        let record = segment
            .as_ptr()
            .cast::<u8>()
            .add(SEGMENT_HEADER_BYTES + at * size_of::<RecordHeader>())
            .cast::<RecordHeader>();
        record.write(RecordHeader::new(holders, 0, segment));
        NonNull::new_unchecked(record)
    }
}

/// Takes the pool's one segment and writes its (tracked) bytes.
fn fresh_segment(pool: &SegmentPool) -> NonNull<SegmentHeader> {
    let segment = pool.take(64).expect("one segment fits the budget");
    // SAFETY: the segment is fresh and ours; the cell stands for its bytes.
    unsafe { segment.as_ref() }
        .loom_bytes
        .with_mut(|bytes| unsafe { *bytes = 1 });
    segment
}

/// Waits for a hold on a record of `segment` and reads the segment's bytes
/// through it: they must be the ones written before the hold was handed out.
fn take_and_read(queue: &ArrayQueue<RecordRef>, segment: NonNull<SegmentHeader>) -> RecordRef {
    let hold = loop {
        match queue.pop() {
            Some(hold) => break hold,
            None => thread::yield_now(),
        }
    };
    // SAFETY: the hold keeps the segment alive and unwritten.
    let seen = unsafe { segment.as_ref() }
        .loom_bytes
        .with(|bytes| unsafe { *bytes });
    assert_eq!(seen, 1);
    hold
}

/// The writer's side once it sealed `segment`: waits for the pool to give
/// it back (every hold released) and writes over it.
fn overwrite_when_recycled(pool: &SegmentPool, segment: NonNull<SegmentHeader>) {
    let again = loop {
        match pool.take(64) {
            Some(segment) => break segment,
            None => thread::yield_now(),
        }
    };
    assert_eq!(again, segment, "the only segment came back");
    // SAFETY: the pool handed the segment out again: the writer owns it.
    unsafe { again.as_ref() }
        .loom_bytes
        .with_mut(|bytes| unsafe { *bytes = 2 });
    // SAFETY: as above; seal it empty so the pool can drop it cleanly.
    if unsafe { again.as_ref() }.seal(0) {
        SegmentPool::recycle(again);
    }
}

/// A writer fills a segment and hands one record to two readers through a
/// queue; the readers read and release; the writer seals the segment and, as
/// soon as the pool gives the segment back, writes over it. Every read must
/// happen-before the overwrite, whoever releases last.
#[test]
fn segment_protocol() {
    loom::model(|| {
        // Budget for exactly one segment: a second `take` succeeds only after
        // the first segment is recycled.
        let pool = SegmentPool::new(4096, 4096 + SEGMENT_HEADER_BYTES);
        let segment = fresh_segment(&pool);
        let record = write_record(segment, 2);

        let queue = Arc::new(ArrayQueue::new(2));
        for _ in 0..2 {
            // SAFETY: `holders` is 2 and exactly two holds are made.
            assert!(queue.push(unsafe { RecordRef::from_raw(record) }).is_ok());
        }
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let queue = queue.clone();
                thread::spawn(move || drop(take_and_read(&queue, segment)))
            })
            .collect();

        // SAFETY: the writer still owns the segment until it seals it.
        if unsafe { segment.as_ref() }.seal(1) {
            SegmentPool::recycle(segment);
        }
        overwrite_when_recycled(&pool, segment);
        readers.into_iter().for_each(|r| r.join().unwrap());
    });
}

/// A consumer with nothing to do goes to sleep while a publisher makes an item
/// available: the consumer must always wake up.
#[test]
fn signal_never_loses_a_wakeup() {
    loom::model(|| {
        let signal = Arc::new(Signal::default());
        let item = Arc::new(AtomicBool::new(false));
        let consumer = {
            let (signal, item) = (signal.clone(), item.clone());
            thread::spawn(move || {
                signal.wait(Duration::ZERO, None, || item.load(Ordering::Relaxed))
            })
        };
        item.store(true, Ordering::Relaxed);
        publish_fence();
        signal.wake_if_sleeping();
        assert!(consumer.join().unwrap());
    });
}

/// Two producers push into a ring of two slots while the consumer pops, and
/// one producer, finding it full, evicts the oldest (as a drop-oldest publish
/// does). Every value must come out exactly once, in each producer's order,
/// with its write visible to whoever reads it.
#[test]
fn ring_hands_over_every_value_once() {
    loom::model(|| {
        let ring = Arc::new(Ring::new(2));
        let producers: Vec<_> = (0..2u32)
            .map(|who| {
                let ring = ring.clone();
                thread::spawn(move || {
                    let mut evicted = Vec::new();
                    for i in 0..2u32 {
                        let value = Box::new(who * 10 + i);
                        if who == 0 {
                            // Drop-oldest: take out the oldest until it fits.
                            let mut value = value;
                            while let Err(rejected) = ring.push(value) {
                                value = rejected;
                                if let Some(old) = ring.pop() {
                                    evicted.push(*old);
                                }
                            }
                        } else if let Err(value) = ring.push(value) {
                            evicted.push(*value);
                        }
                    }
                    evicted
                })
            })
            .collect();
        let mut seen = Vec::new();
        for _ in 0..2 {
            if let Some(value) = ring.pop() {
                seen.push(*value);
            }
        }
        for producer in producers {
            seen.extend(producer.join().unwrap());
        }
        while let Some(value) = ring.pop() {
            seen.push(*value);
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 10, 11]);
    });
}

/// The same with the consumer claiming runs ([`Ring::claim`]) while a
/// producer evicts from the head: each value must come out exactly once,
/// in order, whoever claims it.
#[test]
fn ring_runs_hand_over_every_value_once() {
    loom::model(|| {
        let ring = Arc::new(Ring::new(2));
        assert!(ring.push(Box::new(10)).is_ok());
        let evictor = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut evicted = Vec::new();
                for i in 0..2u32 {
                    let mut value = Box::new(i);
                    while let Err(rejected) = ring.push(value) {
                        value = rejected;
                        if let Some(old) = ring.pop() {
                            evicted.push(*old);
                        }
                    }
                }
                evicted
            })
        };
        let mut seen: Vec<u32> = ring.claim(2).map(|value| *value).collect();
        let evicted = evictor.join().unwrap();
        seen.extend(ring.claim(4).map(|value| *value));
        let mut all: Vec<u32> = seen.iter().chain(&evicted).copied().collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 10]);
        let ours: Vec<u32> = seen.into_iter().filter(|value| *value < 10).collect();
        assert!(ours.windows(2).all(|pair| pair[0] < pair[1]), "in order");
    });
}

/// A writer hands two records of one segment to a consumer, which releases
/// them together with one decrement ([`BatchRelease`]), while the writer
/// seals the segment and writes over it as soon as the pool gives it back:
/// both reads must happen-before the overwrite.
#[test]
fn batch_release_frees_a_segment_only_after_its_reads() {
    loom::model(|| {
        let pool = SegmentPool::new(4096, 4096 + SEGMENT_HEADER_BYTES);
        let segment = fresh_segment(&pool);
        let queue = Arc::new(ArrayQueue::new(2));
        for at in 0..2 {
            let record = write_record_at(segment, at, 1);
            // SAFETY: `holders` is 1 and exactly one hold is made per record.
            assert!(queue.push(unsafe { RecordRef::from_raw(record) }).is_ok());
        }
        let consumer = {
            let queue = queue.clone();
            thread::spawn(move || {
                let mut release = BatchRelease::default();
                for _ in 0..2 {
                    release.release(take_and_read(&queue, segment));
                }
                release.finish();
            })
        };
        // SAFETY: the writer still owns the segment until it seals it.
        if unsafe { segment.as_ref() }.seal(2) {
            SegmentPool::recycle(segment);
        }
        overwrite_when_recycled(&pool, segment);
        consumer.join().unwrap();
    });
}

/// A publisher finds a one-slot ring full and waits for room while the
/// consumer takes the item and signals space: the publisher must always be
/// woken (or find the room itself), never park for good.
#[test]
fn space_signal_never_loses_a_wakeup() {
    loom::model(|| {
        let ring = Arc::new(Ring::new(1));
        let space = Arc::new(SpaceSignal::default());
        assert!(ring.push(0u32).is_ok());
        // The publisher parks in its own thread: the model thread only
        // consumes and joins (loom's join and an early unpark of the same
        // thread do not mix).
        let publisher = {
            let (ring, space) = (ring.clone(), space.clone());
            thread::spawn(move || {
                let waker = current_thread_waker();
                let mut value = 1u32;
                loop {
                    match ring.push(value) {
                        Ok(()) => return,
                        Err(rejected) => value = rejected,
                    }
                    space.register(&waker);
                    match ring.push(value) {
                        Ok(()) => return,
                        Err(rejected) => value = rejected,
                    }
                    thread::park();
                }
            })
        };
        let first = loop {
            if let Some(value) = ring.pop() {
                break value;
            }
            thread::yield_now();
        };
        // Drained: a one-slot ring is at its low watermark once empty.
        space.notify_if_drained(|| true);
        assert_eq!(first, 0);
        publisher.join().unwrap();
        assert_eq!(ring.pop(), Some(1));
    });
}

/// A delivery queued just before the queue closes: a consumer waiting for
/// it must get it, never "closed and drained" while it is still queued.
#[test]
fn closing_never_hides_a_queued_delivery() {
    loom::model(|| {
        let pool = SegmentPool::new(4096, 4096 + SEGMENT_HEADER_BYTES);
        let segment = pool.take(64).expect("one segment fits the budget");
        let record = write_record(segment, 1);
        let queue = std::sync::Arc::new(DeliveryQueue::new(
            1,
            QueueShape {
                capacity: 1,
                pending_bytes_max: 1 << 20,
                segment_bytes: 4096,
                spin: Duration::ZERO,
            },
            Default::default(),
        ));
        // The consumer parks in its own thread (see above on loom's join).
        let consumer = {
            let queue = queue.clone();
            thread::spawn(move || {
                let delivery = queue
                    .take_blocking(None)
                    .expect("the delivery, then closed");
                assert_eq!(delivery.tag, 7);
                drop(delivery);
                assert!(
                    queue.take_blocking(None).is_none(),
                    "then closed and drained"
                );
            })
        };
        // SAFETY: `holders` is 1 and exactly one hold is made.
        let hold = unsafe { RecordRef::from_raw(record) };
        // Through a lane, published as a publish does, then closed.
        let mut source = LaneOwner::default();
        assert!(queue.try_offer(hold, 7, Some(&mut source)).is_ok());
        queue.lanes.publish(&source);
        queue.close();
        consumer.join().unwrap();
        // SAFETY: the test still owns the segment as its writer; seal it with
        // its one record (released above) so the pool can drop it cleanly.
        if unsafe { segment.as_ref() }.seal(1) {
            SegmentPool::recycle(segment);
        }
    });
}

/// A publisher queues two deliveries, then fences once and looks at the
/// consumer once (as a batch does), while the consumer, taking runs, goes to
/// sleep: it must wake and take both, whatever the interleaving.
#[test]
fn a_batch_fenced_once_never_leaves_its_consumer_asleep() {
    loom::model(|| {
        let pool = SegmentPool::new(4096, 4096 + SEGMENT_HEADER_BYTES);
        let segment = pool.take(64).expect("one segment fits the budget");
        let queue = std::sync::Arc::new(DeliveryQueue::new(
            1,
            QueueShape {
                capacity: 2,
                pending_bytes_max: 1 << 20,
                segment_bytes: 4096,
                spin: Duration::ZERO,
            },
            Default::default(),
        ));
        // The consumer parks in its own thread (see above on loom's join).
        let consumer = {
            let queue = queue.clone();
            thread::spawn(move || {
                let mut tags = Vec::new();
                while tags.len() < 2 {
                    assert!(queue.wait_for_delivery(None), "woken with a delivery");
                    tags.extend(queue.take_batch(2).map(|delivery| delivery.tag));
                }
                assert_eq!(tags, [0, 1]);
            })
        };
        // Into a lane, published once for the batch, as `Wakes` does.
        let mut source = LaneOwner::default();
        for tag in 0..2 {
            let record = write_record_at(segment, tag as usize, 1);
            // SAFETY: `holders` is 1 and exactly one hold is made per record.
            let hold = unsafe { RecordRef::from_raw(record) };
            assert!(queue.try_offer(hold, tag, Some(&mut source)).is_ok());
        }
        queue.lanes.publish(&source);
        publish_fence();
        queue.signal.wake_if_sleeping();
        consumer.join().unwrap();
        // SAFETY: the test still owns the segment as its writer; seal it with
        // its two records (released above) so the pool can drop it cleanly.
        if unsafe { segment.as_ref() }.seal(2) {
            SegmentPool::recycle(segment);
        }
    });
}

/// Claims runs of `lane` (as its only consumer) until three values came
/// out, and returns them in the order they did.
fn take_three(lane: &Lane<Box<u32>>) -> Vec<u32> {
    let mut seen = Vec::new();
    while seen.len() < 3 {
        // SAFETY: the caller's thread is the lane's only consumer.
        let run = unsafe { lane.claim(2) };
        if run.len() == 0 {
            thread::yield_now();
        }
        seen.extend(run.map(|value| *value));
    }
    seen
}

/// A lane of two slots: the producer pushes three values, publishing after
/// each pair (and when it finds the lane full), while the consumer claims
/// runs. Every value must come out once, in order, its write visible to the
/// read, and no slot written while it is read (loom tracks the cells).
#[test]
fn lane_hands_over_every_value_once_in_order() {
    loom::model(|| {
        let lane = Arc::new(Lane::new(2));
        let producer = {
            let lane = lane.clone();
            thread::spawn(move || {
                for i in 0..3u32 {
                    let mut value = Box::new(i);
                    // SAFETY: this thread is the lane's only producer.
                    while let Err(rejected) = unsafe { lane.push(value) } {
                        value = rejected;
                        // SAFETY: as above.
                        unsafe { lane.publish() };
                        thread::yield_now();
                    }
                    if i % 2 == 1 {
                        // SAFETY: as above.
                        unsafe { lane.publish() };
                    }
                }
                // SAFETY: as above.
                unsafe { lane.publish() };
            })
        };
        let seen = take_three(&lane);
        producer.join().unwrap();
        assert_eq!(seen, [0, 1, 2]);
    });
}

/// A log channel's writer writes two records into a one-record lane (so it
/// finds the lane full and waits for room) and is dropped; the reader reads
/// until it is told the writer is gone. It must have read both records by
/// then (`log-channel-closed`: the flag is never seen before the last
/// publish), and the pool must get its segment back.
#[test]
fn a_log_channel_closes_only_after_its_last_record() {
    loom::model(|| {
        let pool = SegmentPool::new(4096, 4096 + SEGMENT_HEADER_BYTES);
        let (mut writer, mut reader) = channel(pool.clone(), 1);
        let producer = thread::spawn(move || {
            for byte in 1..=2u8 {
                while let Err(error) = writer.write_archive(&[byte]) {
                    assert_eq!(error, WriteError::Full);
                    thread::yield_now();
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            match reader.read(1, |archive| seen.extend_from_slice(archive)) {
                Ok(0) => thread::yield_now(),
                Ok(_) => {}
                Err(Closed) => break,
            }
        }
        assert_eq!(seen, [1, 2]);
        producer.join().unwrap();
        drop(reader);
        assert_every_segment_free(&pool);
    });
}

/// Every segment of `pool` (4096-byte ones, as the log channel models
/// make) is back on its free list: no record is still held.
fn assert_every_segment_free(pool: &SegmentPool) {
    let stats = pool.stats();
    assert_eq!(
        stats.bytes_allocated,
        stats.segments_free * (4096 + SEGMENT_HEADER_BYTES)
    );
}

/// A log channel's reader reads once and is dropped while its writer writes
/// three records: the writer must learn that the reader is gone (at the
/// latest when the lane is full), and every record must be released once
/// both ends are dropped.
#[test]
fn a_log_channel_reader_dropped_early_leaks_no_record() {
    loom::model(|| {
        let pool = SegmentPool::new(4096, 4096 + SEGMENT_HEADER_BYTES);
        let (mut writer, mut reader) = channel(pool.clone(), 2);
        let consumer = thread::spawn(move || {
            reader
                .read(2, |archive| assert_eq!(archive.len(), 1))
                .unwrap();
        });
        let mut written = 0;
        loop {
            match writer.write_archive(&[written]) {
                Ok(()) => written += 1,
                Err(WriteError::Full) => thread::yield_now(),
                Err(WriteError::Closed) => break,
                Err(error) => panic!("{error}"),
            }
            if written == 3 {
                break;
            }
        }
        consumer.join().unwrap();
        drop(writer);
        assert_every_segment_free(&pool);
    });
}

/// A lane of two slots filled through writers (`Lane::reserve`), as a
/// batch hands a consumer its run of deliveries: the producer reserves room
/// for what is left of three values, writes what fits, drops the writer and
/// publishes, while the consumer claims runs. Every value must come out
/// once, in order, its write visible to the read, and no slot written while
/// it is read.
#[test]
fn lane_writers_hand_over_every_value_once_in_order() {
    loom::model(|| {
        let lane = Arc::new(Lane::new(2));
        let producer = {
            let lane = lane.clone();
            thread::spawn(move || {
                let mut next = 0u32;
                while next < 3 {
                    // SAFETY: this thread is the lane's only producer, and
                    // the writer is dropped before it publishes.
                    let mut writer = unsafe { lane.reserve(3 - next as usize) };
                    while next < 3 && writer.push_with(Box::new(next), |value| value).is_ok() {
                        next += 1;
                    }
                    drop(writer);
                    // SAFETY: as above.
                    unsafe { lane.publish() };
                    if next < 3 {
                        thread::yield_now();
                    }
                }
            })
        };
        let seen = take_three(&lane);
        producer.join().unwrap();
        assert_eq!(seen, [0, 1, 2]);
    });
}

/// Two sources take turns with one queue's lane: the first pushes, publishes
/// and gives the lane back (its backlog dropped); the second claims a lane
/// and pushes. The second's producer state must be the first's as it left it
/// (no race on the producer's cells), and the consumer must get both
/// deliveries, each once.
#[test]
fn a_lane_passes_from_source_to_source_with_its_state() {
    loom::model(|| {
        let pool = SegmentPool::new(4096, 4096 + SEGMENT_HEADER_BYTES);
        let segment = pool.take(64).expect("one segment fits the budget");
        let queue = std::sync::Arc::new(DeliveryQueue::new(
            1,
            QueueShape {
                capacity: 2,
                pending_bytes_max: 1 << 20,
                segment_bytes: 4096,
                spin: Duration::ZERO,
            },
            Default::default(),
        ));
        let holds: Vec<_> = (0..2)
            .map(|at| {
                // SAFETY: `holders` is 1 and exactly one hold is made per record.
                unsafe { RecordRef::from_raw(write_record_at(segment, at, 1)) }
            })
            .collect();
        let (first, second) = {
            let mut holds = holds.into_iter();
            (holds.next().unwrap(), holds.next().unwrap())
        };
        let earlier = {
            let queue = queue.clone();
            thread::spawn(move || {
                let mut source = LaneOwner::default();
                assert!(queue.try_offer(first, 1, Some(&mut source)).is_ok());
                queue.lanes.publish(&source);
                // Dropped: the lane goes back.
            })
        };
        let later = {
            let queue = queue.clone();
            thread::spawn(move || {
                let mut source = LaneOwner::default();
                assert!(queue.try_offer(second, 2, Some(&mut source)).is_ok());
                queue.lanes.publish(&source);
            })
        };
        earlier.join().unwrap();
        later.join().unwrap();
        let mut tags: Vec<u64> = queue.take_batch(4).map(|delivery| delivery.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, [1, 2]);
        // SAFETY: the test still owns the segment as its writer; seal it with
        // its two records (released above) so the pool can drop it cleanly.
        if unsafe { segment.as_ref() }.seal(2) {
            SegmentPool::recycle(segment);
        }
    });
}

/// A source finds its lane full and waits for room (as `Backlog` does:
/// register, re-try, park) while the consumer takes a batch, which gives the
/// slot back with one store and then signals space: the source must always
/// be woken or find the room itself, and its delivery must arrive.
#[test]
fn a_source_waiting_on_its_full_lane_is_always_woken() {
    loom::model(|| {
        let pool = SegmentPool::new(4096, 4096 + SEGMENT_HEADER_BYTES);
        let segment = pool.take(64).expect("one segment fits the budget");
        let queue = std::sync::Arc::new(DeliveryQueue::new(
            1,
            QueueShape {
                capacity: 1,
                pending_bytes_max: 1 << 20,
                segment_bytes: 4096,
                spin: Duration::ZERO,
            },
            Default::default(),
        ));
        let mut holds = (0..2).map(|at| {
            // SAFETY: `holders` is 1 and exactly one hold is made per record.
            unsafe { RecordRef::from_raw(write_record_at(segment, at, 1)) }
        });
        let (first, second) = (holds.next().unwrap(), holds.next().unwrap());
        // The source parks in its own thread (see above on loom's join).
        let source = {
            let queue = queue.clone();
            thread::spawn(move || {
                let mut source = LaneOwner::default();
                assert!(queue.try_offer(first, 0, Some(&mut source)).is_ok());
                queue.lanes.publish(&source);
                let waker = current_thread_waker();
                let mut hold = second;
                loop {
                    match queue.try_offer(hold, 1, Some(&mut source)) {
                        Ok(()) => break,
                        Err(rejected) => hold = rejected,
                    }
                    queue.space.register(&waker);
                    match queue.try_offer(hold, 1, Some(&mut source)) {
                        Ok(()) => break,
                        Err(rejected) => hold = rejected,
                    }
                    thread::park();
                }
                queue.lanes.publish(&source);
            })
        };
        let mut tags = Vec::new();
        while tags.len() < 2 {
            // Dropping the batch gives its slots back, then signals space.
            tags.extend(queue.take_batch(1).map(|delivery| delivery.tag));
            thread::yield_now();
        }
        source.join().unwrap();
        assert_eq!(tags, [0, 1]);
        // SAFETY: the test still owns the segment as its writer; seal it with
        // its two records (released above) so the pool can drop it cleanly.
        if unsafe { segment.as_ref() }.seal(2) {
            SegmentPool::recycle(segment);
        }
    });
}
