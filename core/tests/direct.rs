//! Delivering through inlets (`Mailbox::inlet`, `DirectSource`): events
//! matched elsewhere reach one mailbox without the index, under the same
//! policies, counters, order and close semantics as a subscription's.

mod common;

use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;
use starling_core::event::{self, ARCHIVE_ALIGN};
use starling_core::{
    Bus, DirectSource, Event, EventLimits, Inlet, Mailbox, RecvError, SlowConsumerPolicy,
    SubscribeOptions,
};

const SECOND: Duration = Duration::from_secs(1);

/// The archive of an event on `subject` whose payload is `sequence`.
fn archive(subject: &str, sequence: u64) -> AlignedVec<ARCHIVE_ALIGN> {
    Event {
        id: u128::from(sequence),
        subject: subject.into(),
        payload: sequence.to_le_bytes().to_vec(),
        ..Event::default()
    }
    .to_archive()
}

/// Validates and delivers event `sequence` through `inlet`.
fn deliver(source: &mut DirectSource, inlet: &Inlet, sequence: u64) {
    let bytes = archive("direct.test", sequence);
    let checked = event::check(&bytes, &EventLimits::default()).expect("a valid archive");
    source.deliver(inlet, checked).expect("memory to spare");
}

fn sequence_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload.try_into().expect("an 8-byte payload"))
}

/// A mailbox of `capacity` events with an inlet under `policy`.
fn mailbox(bus: &Bus, capacity: usize, policy: SlowConsumerPolicy) -> (Mailbox, Inlet) {
    let mailbox = bus.mailbox(SubscribeOptions {
        capacity,
        policy,
        ..SubscribeOptions::default()
    });
    let inlet = mailbox.inlet(7, policy);
    (mailbox, inlet)
}

#[test]
fn events_arrive_in_order_with_the_inlets_tag_and_nothing_in_the_index() {
    let bus = Bus::default();
    let (mailbox, inlet) = mailbox(&bus, 64, SlowConsumerPolicy::default());
    let mut source = bus.direct_source();
    for sequence in 0..40 {
        deliver(&mut source, &inlet, sequence);
    }
    source.wake();
    let mut seen = Vec::new();
    let taken = mailbox.try_recv_batch(64, |event| {
        assert_eq!(event.tag(), 7);
        assert_eq!(event.subject(), "direct.test");
        seen.push(sequence_of(event.payload()));
    });
    assert_eq!(taken, 40);
    assert_eq!(seen, (0..40).collect::<Vec<_>>());
    assert_eq!((mailbox.received(), mailbox.dropped()), (40, 0));
    // An inlet is not a subscription: a publish on the same subject finds
    // nobody.
    assert_eq!(bus.stats().subscriptions, 0);
    assert_eq!(
        bus.publish_message(&starling_core::Message::new("direct.test", b"x"))
            .unwrap(),
        0
    );
}

/// Delivers events 0..100 through a 16-event mailbox under `policy`;
/// returns the sequences it keeps, after checking that it counts the other
/// 84 as dropped.
fn kept_of_a_hundred(policy: SlowConsumerPolicy) -> Vec<u64> {
    let bus = Bus::default();
    let (mailbox, inlet) = mailbox(&bus, 16, policy);
    let mut source = bus.direct_source();
    for sequence in 0..100 {
        deliver(&mut source, &inlet, sequence);
    }
    source.wake();
    assert_eq!((mailbox.pending(), mailbox.dropped()), (16, 84));
    let mut kept = Vec::new();
    mailbox.try_recv_batch(100, |event| kept.push(sequence_of(event.payload())));
    kept
}

#[test]
fn drop_newest_keeps_the_first_and_counts_each_drop() {
    assert_eq!(
        kept_of_a_hundred(SlowConsumerPolicy::DropNewest),
        (0..16).collect::<Vec<_>>()
    );
}

#[test]
fn drop_oldest_keeps_the_last_and_counts_each_eviction() {
    assert_eq!(
        kept_of_a_hundred(SlowConsumerPolicy::DropOldest),
        (84..100).collect::<Vec<_>>()
    );
}

#[test]
fn a_slow_block_consumer_holds_the_source_back_and_loses_nothing() {
    const EVENTS: u64 = 5_000;
    let bus = Bus::default();
    let (mailbox, inlet) = mailbox(&bus, 8, SlowConsumerPolicy::default());
    let consumer = std::thread::spawn(move || {
        let mut next = 0;
        while next < EVENTS {
            let event = mailbox.recv_timeout(10 * SECOND).expect("every event");
            assert_eq!(sequence_of(event.payload()), next, "in order");
            next += 1;
            if next % 500 == 0 {
                // Slower than the source now and then: it must wait.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        mailbox.dropped()
    });
    let mut source = bus.direct_source();
    for sequence in 0..EVENTS {
        deliver(&mut source, &inlet, sequence);
    }
    source.wake();
    assert_eq!(consumer.join().unwrap(), 0);
    assert_eq!(source.demotions(), 0);
}

#[test]
fn a_stuck_block_consumer_is_demoted_after_max_stall_and_counts_its_drops() {
    let max_stall = Duration::from_millis(100);
    let bus = Bus::default();
    let (mailbox, inlet) = mailbox(&bus, 4, SlowConsumerPolicy::Block { max_stall });
    let mut source = bus.direct_source();
    let started = Instant::now();
    for sequence in 0..10 {
        deliver(&mut source, &inlet, sequence);
    }
    source.wake();
    let held = started.elapsed();
    assert!(held >= max_stall, "held back only {held:?}");
    // Once, not for ever: a stall per event would be counted as demotions
    // below, so the bound needs no tighter margin than a starved thread's.
    assert!(held < max_stall + 10 * SECOND, "held back {held:?}");
    assert_eq!(source.demotions(), 1);
    assert_eq!(mailbox.demotions(), 1);
    // The first four fit; the fifth waited out max_stall and was dropped,
    // the rest met a demoted queue.
    assert_eq!((mailbox.pending(), mailbox.dropped()), (4, 6));
}

#[test]
fn a_consumer_asleep_in_recv_is_woken() {
    let bus = Bus::default();
    let (mailbox, inlet) = mailbox(&bus, 64, SlowConsumerPolicy::default());
    let (asleep_tx, asleep) = std::sync::mpsc::channel();
    let consumer = std::thread::spawn(move || {
        asleep_tx.send(()).unwrap();
        let first = mailbox
            .recv_timeout(10 * SECOND)
            .map(|e| sequence_of(e.payload()));
        let second = mailbox
            .recv_timeout(10 * SECOND)
            .map(|e| sequence_of(e.payload()));
        (first, second)
    });
    asleep.recv().unwrap();
    let mut source = bus.direct_source();
    deliver(&mut source, &inlet, 1);
    source.wake();
    deliver(&mut source, &inlet, 2);
    // Dropping the source wakes for what it delivered last.
    drop(source);
    let (first, second) = consumer.join().unwrap();
    assert_eq!((first.unwrap(), second.unwrap()), (1, 2));
}

#[test]
fn a_closed_mailbox_drains_then_says_closed_and_takes_nothing_more() {
    let bus = Bus::default();
    let (mailbox, inlet) = mailbox(&bus, 64, SlowConsumerPolicy::DropNewest);
    let mut source = bus.direct_source();
    for sequence in 0..3 {
        deliver(&mut source, &inlet, sequence);
    }
    source.wake();
    inlet.close_mailbox();
    deliver(&mut source, &inlet, 3);
    source.wake();
    for sequence in 0..3 {
        let event = mailbox
            .recv_timeout(SECOND)
            .expect("queued before the close");
        assert_eq!(sequence_of(event.payload()), sequence);
    }
    assert!(matches!(
        mailbox.recv_timeout(SECOND),
        Err(RecvError::Closed)
    ));
    assert_eq!(mailbox.dropped(), 1, "the event after the close is counted");
}

#[test]
fn events_for_a_dropped_mailbox_are_counted_not_kept() {
    let bus = Bus::default();
    let (mailbox, inlet) = mailbox(&bus, 64, SlowConsumerPolicy::DropNewest);
    let counters = mailbox.counters();
    drop(mailbox);
    let mut source = bus.direct_source();
    for sequence in 0..5 {
        deliver(&mut source, &inlet, sequence);
    }
    source.wake();
    assert_eq!((counters.pending(), counters.dropped()), (0, 5));
}

#[test]
fn a_lost_event_counts_as_dropped() {
    let bus = Bus::default();
    let (mailbox, inlet) = mailbox(&bus, 64, SlowConsumerPolicy::default());
    inlet.count_dropped();
    assert_eq!((mailbox.pending(), mailbox.dropped()), (0, 1));
}

#[test]
fn async_receive_sees_direct_deliveries() {
    let bus = Bus::default();
    let (mailbox, inlet) = mailbox(&bus, 64, SlowConsumerPolicy::default());
    let mut source = bus.direct_source();
    deliver(&mut source, &inlet, 5);
    source.wake();
    let event = common::block_on(mailbox.recv_async()).unwrap();
    assert_eq!(sequence_of(event.payload()), 5);
}
