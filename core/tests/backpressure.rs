//! The delivery contract in process (DESIGN §7): `Block` is the default; a
//! subscriber that keeps up loses nothing and a slow one slows its
//! publisher; a stuck one holds it back for at most its `max_stall` per
//! episode, is then demoted (its events dropped and counted) until it
//! drains, and cannot pin the bus's memory.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use starling_core::bus::{Backlog, PublishError};
use starling_core::{Bus, BusConfig, Message, SlowConsumerPolicy, SubscribeOptions};

const SECOND: Duration = Duration::from_secs(1);

fn block(capacity: usize, max_stall: Duration) -> SubscribeOptions {
    SubscribeOptions {
        capacity,
        policy: SlowConsumerPolicy::Block { max_stall },
        ..SubscribeOptions::default()
    }
}

#[test]
fn block_is_the_default_policy() {
    assert!(matches!(
        SubscribeOptions::default().policy,
        SlowConsumerPolicy::Block { max_stall } if max_stall == starling_core::bus::DEFAULT_MAX_STALL
    ));
    assert_eq!(
        "drop-oldest".parse::<SlowConsumerPolicy>().unwrap(),
        SlowConsumerPolicy::DropOldest
    );
    assert!("sometimes".parse::<SlowConsumerPolicy>().is_err());
}

#[test]
fn a_slow_subscriber_slows_its_publisher_and_loses_nothing() {
    const EVENTS: u32 = 400;
    let bus = Bus::default();
    let sub = bus
        .subscribe_with("slow", None, block(8, 60 * SECOND))
        .unwrap();
    let consumer = std::thread::spawn(move || {
        for i in 0..EVENTS {
            let event = sub.recv_timeout(10 * SECOND).expect("no event lost");
            assert_eq!(event.payload(), i.to_le_bytes());
            std::thread::sleep(Duration::from_millis(1));
        }
        (sub.dropped(), sub.demotions())
    });
    let started = Instant::now();
    for i in 0..EVENTS {
        bus.publish("slow", &i.to_le_bytes()).unwrap();
    }
    let publishing = started.elapsed();
    assert_eq!(consumer.join().unwrap(), (0, 0));
    // Only the queue's 8 events can be ahead of the consumer: the rest went
    // at its pace, a millisecond or more each.
    assert!(
        publishing >= Duration::from_millis(u64::from(EVENTS) / 2),
        "the publisher was not slowed: {publishing:?}"
    );
}

#[test]
fn a_waiting_publisher_is_woken_by_room_not_by_its_deadline() {
    let bus = Bus::default();
    let sub = bus
        .subscribe_with("t", None, block(4, 60 * SECOND))
        .unwrap();
    for i in 0u8..4 {
        bus.publish("t", &[i]).unwrap();
    }
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let seen: Vec<u8> = (0..5)
            .map(|_| sub.recv_timeout(10 * SECOND).unwrap().payload()[0])
            .collect();
        (seen, sub.dropped())
    });
    let started = Instant::now();
    bus.publish("t", &[4]).unwrap();
    let waited = started.elapsed();
    assert!(waited < 10 * SECOND, "woken by room, not after {waited:?}");
    assert_eq!(reader.join().unwrap(), (vec![0, 1, 2, 3, 4], 0));
}

#[test]
fn a_stuck_subscriber_is_demoted_after_max_stall_and_every_miss_is_counted() {
    const EVENTS: u64 = 10_000;
    const MAX_STALL: Duration = Duration::from_millis(200);
    let bus = Bus::default();
    let stuck = bus.subscribe_with("t", None, block(8, MAX_STALL)).unwrap();
    let healthy = bus
        .subscribe_with("t", None, block(64, 60 * SECOND))
        .unwrap();
    let reader = std::thread::spawn(move || {
        for i in 0..EVENTS {
            let event = healthy.recv_timeout(30 * SECOND).expect("no event lost");
            assert_eq!(event.payload(), i.to_le_bytes());
        }
        healthy.dropped()
    });
    let mut publisher = bus.publisher();
    let started = Instant::now();
    for i in 0..EVENTS {
        publisher.publish("t", &i.to_le_bytes()).unwrap();
    }
    let publishing = started.elapsed();
    assert_eq!(
        reader.join().unwrap(),
        0,
        "the healthy subscriber lost nothing"
    );
    assert!(publishing >= MAX_STALL, "the publisher waited one episode");
    assert!(
        publishing < MAX_STALL + 20 * SECOND,
        "and only one: {publishing:?}"
    );
    assert_eq!(stuck.demotions(), 1);
    assert_eq!(stuck.pending(), 8, "it keeps what it had");
    assert_eq!(stuck.dropped(), EVENTS - 8, "every miss counted, exactly");
    // It drains below its low watermark, and is lossless again.
    for i in 0..8u64 {
        assert_eq!(stuck.try_recv().unwrap().payload(), i.to_le_bytes());
    }
    publisher.publish("t", b"again").unwrap();
    assert_eq!(stuck.try_recv().unwrap().payload(), b"again");
    assert_eq!(stuck.dropped(), EVENTS - 8);
}

/// Each subscription's bound is its own: a patient subscriber is not
/// demoted because an impatient one held the same publisher back.
#[test]
fn a_patient_subscriber_is_not_demoted_with_an_impatient_one() {
    const EVENTS: u32 = 300;
    let bus = Bus::default();
    let impatient = bus
        .subscribe_with("t", None, block(4, Duration::from_millis(50)))
        .unwrap();
    let patient = bus
        .subscribe_with("t", None, block(4, 60 * SECOND))
        .unwrap();
    let reader = std::thread::spawn(move || {
        for i in 0..EVENTS {
            let event = patient.recv_timeout(30 * SECOND).expect("no event lost");
            assert_eq!(event.payload(), i.to_le_bytes());
            std::thread::sleep(Duration::from_micros(300));
        }
        (patient.dropped(), patient.demotions())
    });
    for i in 0..EVENTS {
        bus.publish("t", &i.to_le_bytes()).unwrap();
    }
    assert_eq!(reader.join().unwrap(), (0, 0));
    assert_eq!(impatient.demotions(), 1);
}

/// A stuck subscriber of a rare subject pins a segment per event it holds,
/// but only up to its byte limit: no publish fails for lack of memory and
/// the reader of everything else loses nothing.
#[test]
fn a_stuck_subscriber_of_a_rare_subject_cannot_pin_the_bus_memory() {
    const BULK: u32 = 200_000;
    let bus = Bus::new(BusConfig {
        segment_bytes: 64 << 10,
        memory_bytes_max: 8 << 20,
        ..BusConfig::default()
    });
    let stuck = bus
        .subscribe_with(
            "rare",
            None,
            SubscribeOptions {
                capacity: 100_000,
                pending_bytes_max: 1 << 20,
                policy: SlowConsumerPolicy::Block {
                    max_stall: Duration::from_millis(50),
                },
            },
        )
        .unwrap();
    let bulk = bus
        .subscribe_with("bulk", None, block(1024, 60 * SECOND))
        .unwrap();
    let reader = std::thread::spawn(move || {
        for _ in 0..BULK {
            bulk.recv_timeout(30 * SECOND).expect("no event lost");
        }
        bulk.dropped()
    });
    let mut publisher = bus.publisher();
    let payload = [6u8; 512];
    for i in 0..BULK {
        publisher.publish("bulk", &payload).unwrap();
        if i % 500 == 0 {
            match publisher.publish("rare", b"r") {
                Ok(()) => {}
                Err(PublishError::OutOfMemory(_)) => panic!("event memory spent at {i}"),
                Err(error) => panic!("{error}"),
            }
        }
    }
    assert_eq!(reader.join().unwrap(), 0);
    // 1 MiB of 64 KiB segments: at most 16 held, then demoted.
    assert!(stuck.pending() <= 17, "{} pending", stuck.pending());
    assert!(stuck.pending_bytes() <= 1 << 20);
    assert!(stuck.dropped() > 0);
    assert_eq!(bus.stats().memory.exhausted, 0);
}

/// An application that publishes from inside its handler to a subject it
/// subscribes to goes on; at worst it waits one `max_stall`.
#[test]
fn publishing_from_inside_a_handler_does_not_deadlock() {
    let bus = Bus::default();
    let sub = bus
        .subscribe_with("loop", None, block(4, Duration::from_millis(100)))
        .unwrap();
    for _ in 0..4 {
        bus.publish("loop", b"seed").unwrap();
    }
    let started = Instant::now();
    for _ in 0..1000 {
        let _event = sub.recv_timeout(10 * SECOND).unwrap();
        // Twice per event: the queue overflows, and this thread is the one
        // that would have to drain it.
        bus.publish("loop", b"a").unwrap();
        bus.publish("loop", b"b").unwrap();
    }
    assert!(started.elapsed() < 60 * SECOND);
    assert!(sub.demotions() >= 1, "it held itself back, then gave way");
    assert!(sub.dropped() > 0, "and the misses are counted");
}

/// Async consumers drain as well as threads: a publisher held back by a
/// subscriber read through `recv_async` is woken when it reads.
#[test]
fn an_async_consumer_releases_its_publisher() {
    const EVENTS: u32 = 2000;
    let bus = Bus::default();
    let sub = bus
        .subscribe_with("a", None, block(16, 60 * SECOND))
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut received = 0u32;
            while received < EVENTS {
                let event = common::block_on(sub.recv_async()).unwrap();
                assert_eq!(event.payload(), received.to_le_bytes());
                received += 1;
            }
            done.store(true, Ordering::Relaxed);
            sub.dropped()
        })
    };
    for i in 0..EVENTS {
        bus.publish("a", &i.to_le_bytes()).unwrap();
    }
    assert_eq!(consumer.join().unwrap(), 0);
    assert!(done.load(Ordering::Relaxed));
}

/// A publisher held back by a subscription that is then dropped is released
/// at once (not after `max_stall`), and the event it owed is counted.
#[test]
fn dropping_a_subscription_releases_its_publisher_and_counts_what_was_owed() {
    let bus = Bus::default();
    let sub = bus
        .subscribe_with("t", None, block(1, 60 * SECOND))
        .unwrap();
    let counters = sub.counters();
    // One source fills the queue (capacity counts per source: see
    // `SubscribeOptions::capacity`).
    let mut backlog = Backlog::new();
    bus.publish_message_into(&Message::new("t", b"1"), &mut backlog)
        .unwrap();
    assert!(backlog.is_empty());
    bus.publish_message_into(&Message::new("t", b"2"), &mut backlog)
        .unwrap();
    assert_eq!(backlog.len(), 1, "the queue is full: the delivery is owed");
    drop(sub);
    let started = Instant::now();
    backlog.flush_blocking();
    assert!(
        started.elapsed() < 30 * SECOND,
        "released at once, not at max_stall: {:?}",
        started.elapsed()
    );
    assert!(backlog.is_empty());
    assert_eq!(counters.dropped(), 1, "what it owed is counted");
}
