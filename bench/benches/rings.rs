//! The rings: one write into segment memory, read in place by consumers that
//! then release it. SPSC through the log's own channel (records published
//! and released per batch), fan-out 1 → 4 with one hold per consumer handed
//! through a bounded queue each; each beside the ceiling of moving a bare
//! `u64` through a crossbeam `ArrayQueue` in the same run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};
use crossbeam_queue::ArrayQueue;
use starling_bench::consumers::Consumers;
use starling_core::Event;
use starling_core::log::{Appender, LogReader, LogWriter, RecordRef, SegmentPool, WriteError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const QUEUE: usize = 4096;
const BATCH: u64 = 256;

fn push_spinning<T>(queue: &ArrayQueue<T>, mut value: T) {
    while let Err(rejected) = queue.push(value) {
        value = rejected;
        std::hint::spin_loop();
    }
}

fn drain<T>(queue: &ArrayQueue<T>, read: impl Fn(T)) -> u64 {
    let mut taken = 0;
    while taken < BATCH {
        match queue.pop() {
            Some(value) => {
                read(value);
                taken += 1;
            }
            None => break,
        }
    }
    if taken == 0 {
        std::hint::spin_loop();
    }
    taken
}

fn write_spinning(writer: &mut LogWriter, archive: &[u8]) {
    while let Err(error) = writer.write_archive(archive) {
        assert_eq!(error, WriteError::Full, "the pool's budget covers the lane");
        std::hint::spin_loop();
    }
}

fn read_batch(reader: &mut LogReader) -> u64 {
    let taken = reader
        .read(BATCH as usize, |archive| {
            black_box(archive.len());
        })
        .unwrap_or(0);
    if taken == 0 {
        std::hint::spin_loop();
    }
    taken as u64
}

/// Starling 1 → 1: the writer appends each record and publishes every
/// [`BATCH`]; the reader reads a batch in place and releases it at once.
fn log_spsc(group: &mut BenchmarkGroup<'_, WallTime>, archive: &[u8]) {
    let pool = SegmentPool::new(64 << 10, 1 << 30);
    let (mut writer, mut reader) = starling_core::log::channel(pool, QUEUE);
    // Check before timing: the reader reads the bytes that were written.
    writer.write_archive(archive).unwrap();
    writer.publish();
    let mut read = Vec::new();
    assert_eq!(reader.read(1, |bytes| read.extend_from_slice(bytes)), Ok(1));
    assert_eq!(read, archive);
    let consumers = Consumers::spawn(vec![reader], read_batch);
    group.bench_function("starling_log/spsc", |b| {
        b.iter_custom(|iters| {
            let target = consumers.total() + iters;
            let started = Instant::now();
            for i in 1..=iters {
                write_spinning(&mut writer, archive);
                if i % BATCH == 0 {
                    writer.publish();
                }
            }
            writer.publish();
            consumers.wait_for(target);
            started.elapsed()
        })
    });
}

/// Starling 1 → `fanout`: write once, one hold per consumer, each through a
/// queue of its own.
fn log_fanout(group: &mut BenchmarkGroup<'_, WallTime>, archive: &[u8], fanout: usize) {
    let queues: Vec<_> = (0..fanout)
        .map(|_| Arc::new(ArrayQueue::<RecordRef>::new(QUEUE)))
        .collect();
    let pool = SegmentPool::new(64 << 10, 1 << 30);
    let mut appender = Appender::new(pool);
    // Check before timing: each consumer reads the bytes that were written.
    let mut holds = appender.append_archive(archive, fanout as u32).unwrap();
    for queue in &queues {
        queue.push(holds.next().unwrap()).unwrap();
        assert_eq!(queue.pop().unwrap().archive(), archive);
    }
    let consumers = Consumers::spawn(queues.clone(), |queue: &mut Arc<ArrayQueue<RecordRef>>| {
        drain(queue, |record| {
            black_box(record.archive().len());
        })
    });
    group.bench_function(format!("starling_log/fanout_1_to_{fanout}"), |b| {
        b.iter_custom(|iters| {
            let target = consumers.total() + iters * fanout as u64;
            let started = Instant::now();
            for _ in 0..iters {
                let holds = appender.append_archive(archive, fanout as u32).unwrap();
                for (queue, record) in queues.iter().zip(holds) {
                    push_spinning(queue, record);
                }
            }
            consumers.wait_for(target);
            started.elapsed()
        })
    });
}

/// Ceiling: a bare u64 through each of `fanout` queues.
fn ceiling(group: &mut BenchmarkGroup<'_, WallTime>, fanout: usize, name: &str) {
    let queues: Vec<_> = (0..fanout)
        .map(|_| Arc::new(ArrayQueue::<u64>::new(QUEUE)))
        .collect();
    let consumers = Consumers::spawn(queues.clone(), |queue: &mut Arc<ArrayQueue<u64>>| {
        drain(queue, |value| {
            black_box(value);
        })
    });
    group.bench_function(format!("ceiling_arrayqueue_u64/{name}"), |b| {
        b.iter_custom(|iters| {
            let target = consumers.total() + iters * fanout as u64;
            let started = Instant::now();
            for i in 0..iters {
                for queue in &queues {
                    push_spinning(queue, i);
                }
            }
            consumers.wait_for(target);
            started.elapsed()
        })
    });
}

fn rings(c: &mut Criterion) {
    let mut group = c.benchmark_group("rings");
    group.sample_size(20).sampling_mode(SamplingMode::Linear);
    group.throughput(Throughput::Elements(1));
    let archive = Event {
        subject: "orders.eu.created".into(),
        payload: vec![1; 16],
        ..Event::default()
    }
    .to_archive();
    log_spsc(&mut group, &archive);
    ceiling(&mut group, 1, "spsc");
    log_fanout(&mut group, &archive, 4);
    ceiling(&mut group, 4, "fanout_1_to_4");
    group.finish();
}

criterion_group!(benches, rings);
criterion_main!(benches);
