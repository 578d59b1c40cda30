//! Publish → deliver → receive allocates nothing in steady state.
//!
//! A counting global allocator counts every allocation made by any thread
//! while the measured window is open. Each scenario warms up first (segments,
//! thread-local publishers and match caches are made on first use), then runs
//! many events through the same path and requires the count to be zero.
//!
//! The scenarios run one after the other in a single test, since the counter is
//! process-wide and the test harness would otherwise run them concurrently.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use starling_core::event::{self, Event, EventLimits};
use starling_core::{Bus, BusConfig, Header, Message, SlowConsumerPolicy, SubscribeOptions};

struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Rounds of a workload before the counted ones.
const WARM_UP_ROUNDS: usize = 2;

/// Counted rounds, at most, to see one that allocates nothing. How many
/// segments are in flight at once depends on scheduling: on a loaded
/// machine a counted round could still grow the segment pool to a new high
/// mark once (seen in CI and under a load average of 10). That growth is
/// bounded; an allocation per event or per batch shows in every round.
const COUNTED_ROUNDS: usize = 3;

/// Runs `body` [`WARM_UP_ROUNDS`] times to warm up, then counting, until a
/// round allocates nothing or [`COUNTED_ROUNDS`] have run. Returns the
/// last round's count.
fn allocations_in_steady_state(mut body: impl FnMut()) -> usize {
    for _ in 0..WARM_UP_ROUNDS {
        body();
    }
    let mut count = 0;
    for _ in 0..COUNTED_ROUNDS {
        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        body();
        COUNTING.store(false, Ordering::Relaxed);
        count = ALLOCATIONS.load(Ordering::Relaxed);
        if count == 0 {
            break;
        }
    }
    count
}

const EVENTS: usize = 50_000;

#[test]
fn publish_to_deliver_allocates_nothing_in_steady_state() {
    one_to_one_on_one_thread();
    fan_out_queue_group_and_headers();
    across_threads_with_parking();
    request_reply();
    many_distinct_subjects_and_batches();
    direct_delivery_through_inlets();
}

fn one_to_one_on_one_thread() {
    let bus = Bus::default();
    let sub = bus.subscribe("orders.*.created").unwrap();
    let mut publisher = bus.publisher();
    let count = allocations_in_steady_state(|| {
        for _ in 0..EVENTS {
            publisher.publish("orders.eu.created", &[1; 16]).unwrap();
            assert_eq!(sub.try_recv().unwrap().payload().len(), 16);
        }
    });
    assert_eq!(count, 0, "1 → 1 with an explicit publisher");

    // The same through `Bus::publish` and its thread-local publisher.
    let count = allocations_in_steady_state(|| {
        for _ in 0..EVENTS {
            bus.publish("orders.us.created", &[2; 128]).unwrap();
            assert_eq!(sub.try_recv().unwrap().payload()[0], 2);
        }
    });
    assert_eq!(count, 0, "1 → 1 through Bus::publish");
}

fn fan_out_queue_group_and_headers() {
    let bus = Bus::default();
    let subs: Vec<_> = (0..4).map(|_| bus.subscribe("fan.>").unwrap()).collect();
    let group: Vec<_> = (0..3)
        .map(|_| bus.queue_subscribe("fan.*", "g").unwrap())
        .collect();
    let headers = [Header("ce-type", b"fan.out")];
    let message = Message {
        headers: &headers,
        reply_to: Some("fan.replies"),
        ..Message::new("fan.x", &[3; 64])
    };
    let count = allocations_in_steady_state(|| {
        for _ in 0..EVENTS {
            assert_eq!(bus.publish_message(&message).unwrap(), 5);
            for sub in &subs {
                assert_eq!(
                    sub.try_recv().unwrap().header("ce-type"),
                    Some(&b"fan.out"[..])
                );
            }
            let taken = group.iter().filter_map(|member| member.try_recv()).count();
            assert_eq!(taken, 1);
        }
    });
    assert_eq!(count, 0, "1 → 4 plus a queue group, with headers");
}

fn across_threads_with_parking() {
    let bus = Bus::default();
    let options = SubscribeOptions {
        capacity: 256,
        policy: SlowConsumerPolicy::Block {
            max_stall: Duration::from_secs(10),
        },
        ..SubscribeOptions::default()
    };
    let sub = bus.subscribe_with("x", None, options).unwrap();
    // Rounds are coordinated with atomics: std's channels allocate when a
    // side blocks, which would be counted against the bus.
    static ROUND_STARTED: AtomicUsize = AtomicUsize::new(0);
    static ROUND_DONE: AtomicUsize = AtomicUsize::new(0);
    static FINISHED: AtomicBool = AtomicBool::new(false);
    let wait_for = |counter: &AtomicUsize, round: usize| {
        while counter.load(Ordering::Acquire) < round {
            std::thread::yield_now();
        }
    };
    let consumer = std::thread::spawn(move || {
        // As many rounds as the publisher runs: the warm-up ones and the
        // counted ones, until it says it is finished.
        for round in 1.. {
            while ROUND_STARTED.load(Ordering::Acquire) < round {
                if FINISHED.load(Ordering::Acquire) {
                    // Handed back, not dropped here: unsubscribing
                    // allocates (the index is copy-on-write), and on a
                    // loaded machine this thread would get there before the
                    // publisher closes the counted window.
                    return sub;
                }
                std::thread::yield_now();
            }
            for _ in 0..EVENTS {
                sub.recv_timeout(Duration::from_secs(10)).unwrap();
            }
            ROUND_DONE.store(round, Ordering::Release);
        }
        unreachable!("rounds are counted in usize")
    });
    let mut publisher = bus.publisher();
    let mut round = 0;
    let count = allocations_in_steady_state(|| {
        round += 1;
        ROUND_STARTED.store(round, Ordering::Release);
        for i in 0..EVENTS {
            publisher.publish("x", &[4; 16]).unwrap();
            if i % 1000 == 0 {
                // Let the consumer drain and park now and then.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        wait_for(&ROUND_DONE, round);
    });
    FINISHED.store(true, Ordering::Release);
    drop(consumer.join().unwrap());
    assert_eq!(
        count, 0,
        "publisher and consumer on two threads, with parking"
    );
}

fn request_reply() {
    let bus = Bus::default();
    let service = bus.subscribe("svc.echo").unwrap();
    let responder = bus.clone();
    static STOP: AtomicBool = AtomicBool::new(false);
    let server = std::thread::spawn(move || {
        while !STOP.load(Ordering::Relaxed) {
            if let Ok(request) = service.recv_timeout(Duration::from_millis(10)) {
                responder
                    .publish(request.reply_to().unwrap(), request.payload())
                    .unwrap();
            }
        }
    });
    let count = allocations_in_steady_state(|| {
        for _ in 0..EVENTS / 10 {
            let reply = bus
                .request("svc.echo", &[5; 16], Duration::from_secs(10))
                .unwrap();
            assert_eq!(reply.payload(), [5; 16]);
        }
    });
    STOP.store(true, Ordering::Relaxed);
    server.join().unwrap();
    assert_eq!(
        count, 0,
        "request/reply, with one reply subject per request"
    );
}

/// Events published before the consumer takes them in the many-subjects
/// scenarios: well within a subscription's 4096 deliveries per source.
const CHUNK: usize = 1_000;

fn many_distinct_subjects_and_batches() {
    // Within the default match cache (1024 subjects).
    distinct_subjects(Bus::default(), 1_000);
    // Ten times more, with a match cache to hold them: a cache entry per
    // subject is made once, never again per round.
    distinct_subjects(
        Bus::new(BusConfig {
            match_cache_capacity: 16_384,
            ..BusConfig::default()
        }),
        10_000,
    );
}

/// Publishes on `count` distinct subjects, one by one and in batches, to
/// one subscriber, and requires no allocation per round once each subject
/// has been seen: a per-subject allocation would show in every round.
fn distinct_subjects(bus: Bus, count: usize) {
    let sub = bus.subscribe("orders.>").unwrap();
    let subjects: Vec<String> = (0..count).map(|i| format!("orders.{i}.created")).collect();
    let rounds = (EVENTS / count).max(2);
    let mut publisher = bus.publisher();
    let allocations = allocations_in_steady_state(|| {
        for _ in 0..rounds {
            for chunk in subjects.chunks(CHUNK) {
                for subject in chunk {
                    publisher.publish(subject, &[6; 16]).unwrap();
                }
                for subject in chunk {
                    assert_eq!(sub.try_recv().unwrap().subject(), subject);
                }
            }
        }
    });
    assert_eq!(allocations, 0, "1 → 1 on {count} distinct subjects");

    let batch: Vec<Message<'_>> = subjects
        .iter()
        .map(|subject| Message::new(subject, &[7; 16]))
        .collect();
    let allocations = allocations_in_steady_state(|| {
        for _ in 0..rounds {
            for (at, chunk) in batch.chunks(CHUNK).enumerate() {
                assert_eq!(publisher.publish_batch(chunk).unwrap(), chunk.len());
                let mut next = at * CHUNK;
                let end = next + chunk.len();
                while next < end {
                    sub.try_recv_batch(64, |event| {
                        assert_eq!(event.subject(), subjects[next].as_str());
                        next += 1;
                    });
                }
            }
        }
    });
    assert_eq!(
        allocations, 0,
        "publish_batch and try_recv_batch on {count} distinct subjects"
    );
}

/// A client's receive path: archives from outside, validated once and
/// handed to one of two mailboxes through their inlets (one `Block`, one
/// `DropNewest`), woken once per chunk as the client's reader does per read.
fn direct_delivery_through_inlets() {
    let bus = Bus::default();
    let lossless = bus.mailbox(SubscribeOptions::default());
    let dropping = bus.mailbox(SubscribeOptions::default());
    let inlets = [
        lossless.inlet(0, SlowConsumerPolicy::default()),
        dropping.inlet(0, SlowConsumerPolicy::DropNewest),
    ];
    let archive = Event {
        subject: "orders.eu.created".into(),
        payload: vec![8; 16],
        ..Event::default()
    }
    .to_archive();
    let limits = EventLimits::default();
    let mut source = bus.direct_source();
    let allocations = allocations_in_steady_state(|| {
        for _ in 0..EVENTS / CHUNK {
            for at in 0..CHUNK {
                let checked = event::check(&archive, &limits).unwrap();
                source.deliver(&inlets[at % 2], checked).unwrap();
            }
            source.wake();
            for mailbox in [&lossless, &dropping] {
                let mut taken = 0;
                while taken < CHUNK / 2 {
                    taken += mailbox.try_recv_batch(64, |event| {
                        assert_eq!(event.payload(), [8; 16]);
                    });
                }
            }
        }
    });
    assert_eq!(dropping.dropped(), 0);
    assert_eq!(allocations, 0, "direct delivery through two inlets");
}
