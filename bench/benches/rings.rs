//! The rings: one write into segment memory, holds on the record handed
//! through bounded queues to consumers that read in place and release. SPSC
//! and fan-out 1 → 4, each beside the ceiling of moving a bare `u64` through
//! a crossbeam `ArrayQueue` in the same run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use starling_bench::consumers::Consumers;
use starling_core::Event;
use starling_core::log::{Appender, RecordRef, SegmentPool};

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

    for fanout in [1usize, 4] {
        let name = if fanout == 1 { "spsc" } else { "fanout_1_to_4" };
        // Starling: write once, one hold per consumer.
        let queues: Vec<_> = (0..fanout)
            .map(|_| Arc::new(ArrayQueue::<RecordRef>::new(QUEUE)))
            .collect();
        let pool = SegmentPool::new(64 << 10, 1 << 30);
        let mut appender = Appender::new(pool);
        // Check before timing: each consumer reads the bytes that were written.
        let mut holds = appender.append_archive(&archive, fanout as u32).unwrap();
        for queue in &queues {
            queue.push(holds.next().unwrap()).unwrap();
            assert_eq!(queue.pop().unwrap().archive(), &archive[..]);
        }
        let consumers = Consumers::spawn(queues.clone(), |queue: &Arc<ArrayQueue<RecordRef>>| {
            drain(queue, |record| {
                black_box(record.archive().len());
            })
        });
        group.bench_function(format!("starling_log/{name}"), |b| {
            b.iter_custom(|iters| {
                let target = consumers.total() + iters * fanout as u64;
                let started = Instant::now();
                for _ in 0..iters {
                    let holds = appender.append_archive(&archive, fanout as u32).unwrap();
                    for (queue, record) in queues.iter().zip(holds) {
                        push_spinning(queue, record);
                    }
                }
                consumers.wait_for(target);
                started.elapsed()
            })
        });
        drop(consumers);

        // Ceiling: a bare u64 through each queue.
        let queues: Vec<_> = (0..fanout)
            .map(|_| Arc::new(ArrayQueue::<u64>::new(QUEUE)))
            .collect();
        let consumers = Consumers::spawn(queues.clone(), |queue: &Arc<ArrayQueue<u64>>| {
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
    group.finish();
}

criterion_group!(benches, rings);
criterion_main!(benches);
