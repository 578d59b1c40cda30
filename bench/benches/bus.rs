//! The in-process bus against the obvious alternative, measured in the same
//! run: a bounded crossbeam channel carrying owned `(String, Vec<u8>)`
//! messages, as an application would build a broker out of channels.
//!
//! Both sides get the same bound (4096 events per consumer) and block when
//! full, so neither wins by dropping. Consumer threads are persistent; each
//! batch is timed from the first publish until the consumers have counted
//! every delivery.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use crossbeam_channel::{Receiver, Sender, bounded};
use starling_bench::consumers::{Consumers, POLL};
use starling_core::clock::{self, WallClock};
use starling_core::{
    Bus, BusConfig, Message, Publisher, SlowConsumerPolicy, SubscribeOptions, Subscription,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CAPACITY: usize = 4096;
const BATCH: u64 = 256;
const SUBJECT: &str = "orders.eu.created";

type Owned = (String, Vec<u8>);

fn blocking() -> SubscribeOptions {
    SubscribeOptions {
        capacity: CAPACITY,
        policy: SlowConsumerPolicy::Block {
            max_stall: Duration::from_secs(60),
        },
        ..SubscribeOptions::default()
    }
}

fn receive_subscription(sub: &mut Subscription) -> u64 {
    match sub.recv_timeout(POLL) {
        Ok(event) => {
            black_box(event.payload().len());
            drop(event);
            let mut taken = 1;
            while taken < BATCH {
                match sub.try_recv() {
                    Some(event) => black_box(event.payload().len()),
                    None => break,
                };
                taken += 1;
            }
            taken
        }
        Err(_) => 0,
    }
}

/// The batch consumer: waits for the first event, then takes what is there
/// (up to [`BATCH`]) in one claim.
fn receive_subscription_batch(sub: &mut Subscription) -> u64 {
    sub.recv_batch_timeout(BATCH as usize, POLL, |event| {
        black_box(event.payload().len());
    })
    .map_or(0, |taken| taken as u64)
}

/// Publishes `count` events with `publish_batch`, [`BATCH`] at a time.
fn publish_in_batches(publisher: &mut Publisher, count: u64, payload: &[u8]) {
    let batch = [Message::new(SUBJECT, payload); BATCH as usize];
    let mut left = count;
    while left > 0 {
        let now = left.min(BATCH);
        publisher.publish_batch(&batch[..now as usize]).unwrap();
        left -= now;
    }
}

fn receive_channel(rx: &mut Receiver<Owned>) -> u64 {
    match rx.recv_timeout(POLL) {
        Ok(message) => {
            black_box(message.1.len());
            let mut taken = 1;
            while taken < BATCH {
                match rx.try_recv() {
                    Ok(message) => black_box(message.1.len()),
                    Err(_) => break,
                };
                taken += 1;
            }
            taken
        }
        Err(_) => 0,
    }
}

/// One publisher thread (the bench thread) to `subscribers` plain subscribers.
fn fan_out(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    subscribers: usize,
    payload: &[u8],
    (variant, clock): (&str, WallClock),
) {
    let with_baseline = variant == "starling";
    let name = format!("1_to_{subscribers}/{}B", payload.len());
    let bus = Bus::new(BusConfig {
        clock,
        ..BusConfig::default()
    });
    let subs: Vec<_> = (0..subscribers)
        .map(|_| bus.subscribe_with(SUBJECT, None, blocking()).unwrap())
        .collect();
    let mut publisher = bus.publisher();
    publisher.publish(SUBJECT, payload).unwrap();
    for sub in &subs {
        assert_eq!(
            sub.try_recv().unwrap().payload(),
            payload,
            "check before timing"
        );
    }
    let consumers = Consumers::spawn(subs, receive_subscription);
    group.bench_function(format!("{variant}/{name}"), |b| {
        b.iter_custom(|iters| {
            let target = consumers.total() + iters * subscribers as u64;
            let started = Instant::now();
            for _ in 0..iters {
                publisher.publish(SUBJECT, payload).unwrap();
            }
            consumers.wait_for(target);
            started.elapsed()
        })
    });
    drop(consumers);
    if !with_baseline {
        return;
    }

    let subs: Vec<_> = (0..subscribers)
        .map(|_| bus.subscribe_with(SUBJECT, None, blocking()).unwrap())
        .collect();
    let consumers = Consumers::spawn(subs, receive_subscription_batch);
    group.bench_function(format!("starling_batch/{name}"), |b| {
        b.iter_custom(|iters| {
            let target = consumers.total() + iters * subscribers as u64;
            let started = Instant::now();
            publish_in_batches(&mut publisher, iters, payload);
            consumers.wait_for(target);
            started.elapsed()
        })
    });
    drop(consumers);

    let (senders, receivers): (Vec<Sender<Owned>>, Vec<Receiver<Owned>>) =
        (0..subscribers).map(|_| bounded(CAPACITY)).unzip();
    let consumers = Consumers::spawn(receivers, receive_channel);
    group.bench_function(format!("baseline_crossbeam/{name}"), |b| {
        b.iter_custom(|iters| {
            let target = consumers.total() + iters * subscribers as u64;
            let started = Instant::now();
            for _ in 0..iters {
                for tx in &senders {
                    tx.send((SUBJECT.to_string(), payload.to_vec())).unwrap();
                }
            }
            consumers.wait_for(target);
            started.elapsed()
        })
    });
}

/// Four publisher threads to one subscriber.
fn fan_in(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, payload: &[u8]) {
    const PUBLISHERS: u64 = 4;
    let name = format!("4_to_1/{}B", payload.len());
    let bus = Bus::default();
    let sub = bus.subscribe_with(SUBJECT, None, blocking()).unwrap();
    let consumers = Consumers::spawn(vec![sub], receive_subscription);
    group.bench_function(format!("starling/{name}"), |b| {
        b.iter_custom(|iters| {
            let per_publisher = iters.div_ceil(PUBLISHERS);
            let target = consumers.total() + per_publisher * PUBLISHERS;
            let started = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..PUBLISHERS {
                    let bus = &bus;
                    scope.spawn(move || {
                        for _ in 0..per_publisher {
                            bus.publish(SUBJECT, payload).unwrap();
                        }
                    });
                }
            });
            consumers.wait_for(target);
            started.elapsed()
        })
    });
    drop(consumers);

    let sub = bus.subscribe_with(SUBJECT, None, blocking()).unwrap();
    let consumers = Consumers::spawn(vec![sub], receive_subscription_batch);
    let mut publishers: Vec<_> = (0..PUBLISHERS).map(|_| bus.publisher()).collect();
    group.bench_function(format!("starling_batch/{name}"), |b| {
        b.iter_custom(|iters| {
            let per_publisher = iters.div_ceil(PUBLISHERS);
            let target = consumers.total() + per_publisher * PUBLISHERS;
            let started = Instant::now();
            std::thread::scope(|scope| {
                for publisher in &mut publishers {
                    scope.spawn(move || publish_in_batches(publisher, per_publisher, payload));
                }
            });
            consumers.wait_for(target);
            started.elapsed()
        })
    });
    drop(consumers);

    let (tx, rx) = bounded::<Owned>(CAPACITY);
    let consumers = Consumers::spawn(vec![rx], receive_channel);
    group.bench_function(format!("baseline_crossbeam/{name}"), |b| {
        b.iter_custom(|iters| {
            let per_publisher = iters.div_ceil(PUBLISHERS);
            let target = consumers.total() + per_publisher * PUBLISHERS;
            let started = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..PUBLISHERS {
                    let tx = tx.clone();
                    scope.spawn(move || {
                        for _ in 0..per_publisher {
                            tx.send((SUBJECT.to_string(), payload.to_vec())).unwrap();
                        }
                    });
                }
            });
            consumers.wait_for(target);
            started.elapsed()
        })
    });
}

/// One publisher to a queue group of four: each event to exactly one member.
fn queue_group(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, payload: &[u8]) {
    const MEMBERS: usize = 4;
    let name = format!("queue_group_4/{}B", payload.len());
    let bus = Bus::default();
    let members: Vec<_> = (0..MEMBERS)
        .map(|_| {
            bus.subscribe_with(SUBJECT, Some("workers"), blocking())
                .unwrap()
        })
        .collect();
    let mut publisher = bus.publisher();
    let consumers = Consumers::spawn(members, receive_subscription);
    group.bench_function(format!("starling/{name}"), |b| {
        b.iter_custom(|iters| {
            let target = consumers.total() + iters;
            let started = Instant::now();
            for _ in 0..iters {
                publisher.publish(SUBJECT, payload).unwrap();
            }
            consumers.wait_for(target);
            started.elapsed()
        })
    });
    drop(consumers);

    // A crossbeam channel is multi-consumer: each message goes to one receiver.
    let (tx, rx) = bounded::<Owned>(CAPACITY);
    let consumers = Consumers::spawn(vec![rx; MEMBERS], receive_channel);
    group.bench_function(format!("baseline_crossbeam/{name}"), |b| {
        b.iter_custom(|iters| {
            let target = consumers.total() + iters;
            let started = Instant::now();
            for _ in 0..iters {
                tx.send((SUBJECT.to_string(), payload.to_vec())).unwrap();
            }
            consumers.wait_for(target);
            started.elapsed()
        })
    });
}

/// A thread answering requests until dropped.
struct Responder {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Responder {
    fn spawn(serve: impl Fn() + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                serve();
            }
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn request_reply(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, payload: &[u8]) {
    let name = format!("request_reply/{}B", payload.len());
    let bus = Bus::default();
    let service = bus.subscribe("svc.echo").unwrap();
    let responder_bus = bus.clone();
    let responder = Responder::spawn(move || {
        if let Ok(request) = service.recv_timeout(POLL) {
            responder_bus
                .publish(request.reply_to().unwrap(), request.payload())
                .unwrap();
        }
    });
    assert_eq!(
        bus.request("svc.echo", payload, Duration::from_secs(1))
            .unwrap()
            .payload(),
        payload
    );
    group.bench_function(format!("starling/{name}"), |b| {
        b.iter(|| {
            bus.request("svc.echo", payload, Duration::from_secs(5))
                .unwrap()
                .payload()
                .len()
        })
    });
    drop(responder);

    let (request_tx, request_rx) = bounded::<Owned>(1);
    let (reply_tx, reply_rx) = bounded::<Owned>(1);
    let responder = Responder::spawn(move || {
        if let Ok((_, payload)) = request_rx.recv_timeout(POLL) {
            reply_tx
                .send(("_INBOX.reply".to_string(), payload))
                .unwrap();
        }
    });
    group.bench_function(format!("baseline_crossbeam/{name}"), |b| {
        b.iter(|| {
            request_tx
                .send(("svc.echo".to_string(), payload.to_vec()))
                .unwrap();
            reply_rx.recv().unwrap().1.len()
        })
    });
    drop(responder);
}

fn bus(c: &mut Criterion) {
    let mut group = c.benchmark_group("bus");
    group.sample_size(20).sampling_mode(SamplingMode::Linear);
    group.throughput(Throughput::Elements(1));
    let precise: (&str, WallClock) = ("starling", clock::system);
    let coarse: (&str, WallClock) = ("starling_coarse_clock", clock::coarse);
    fan_out(&mut group, 1, &[1; 16], precise);
    fan_out(&mut group, 1, &[1; 16], coarse);
    fan_out(&mut group, 1, &[1; 128], precise);
    fan_out(&mut group, 4, &[1; 16], precise);
    fan_in(&mut group, &[1; 16]);
    queue_group(&mut group, &[1; 16]);
    group.sampling_mode(SamplingMode::Auto);
    request_reply(&mut group, &[1; 16]);
    group.finish();
}

criterion_group!(benches, bus);
criterion_main!(benches);
