//! The in-process bus as its users see it: routing, queue groups, order, the
//! slow-consumer policies and their counters, request/reply, closing, async
//! receive, mailboxes and archived ingress.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use starling_core::bus::{
    Backlog, EventRef, PublishError, Publisher, RecvError, RequestError, SubscribeError,
};
use starling_core::event::{self, EncodeError, Event};
use starling_core::subject::SubjectError;
use starling_core::{Bus, BusConfig, Header, Message, SlowConsumerPolicy, SubscribeOptions};

const SECOND: Duration = Duration::from_secs(1);

fn options(capacity: usize, policy: SlowConsumerPolicy) -> SubscribeOptions {
    SubscribeOptions {
        capacity,
        policy,
        ..SubscribeOptions::default()
    }
}

#[test]
fn delivers_to_every_matching_subscription_and_only_those() {
    let bus = Bus::default();
    let exact = bus.subscribe("orders.eu.created").unwrap();
    let star = bus.subscribe("orders.*.created").unwrap();
    let tail = bus.subscribe("orders.>").unwrap();
    let other = bus.subscribe("payments.>").unwrap();
    bus.publish("orders.eu.created", b"1").unwrap();
    bus.publish("orders.us.shipped", b"2").unwrap();
    for sub in [&exact, &star, &tail] {
        let event = sub.recv_timeout(SECOND).unwrap();
        assert_eq!(
            (event.subject(), event.payload()),
            ("orders.eu.created", &b"1"[..])
        );
    }
    assert_eq!(tail.recv_timeout(SECOND).unwrap().payload(), b"2");
    assert!(exact.try_recv().is_none());
    assert!(star.try_recv().is_none());
    assert!(other.try_recv().is_none());
}

#[test]
fn headers_reply_subject_id_and_time_travel_with_the_event() {
    let bus = Bus::default();
    let sub = bus.subscribe("a").unwrap();
    let headers = [Header("ce-type", b"t"), Header("ce-source", b"s")];
    let message = Message {
        reply_to: Some("replies.here"),
        headers: &headers,
        ..Message::new("a", b"x")
    };
    assert_eq!(bus.publish_message(&message).unwrap(), 1);
    bus.publish("a", b"y").unwrap();
    let first = sub.recv_timeout(SECOND).unwrap();
    assert_eq!(first.reply_to(), Some("replies.here"));
    assert_eq!(first.header("ce-source"), Some(&b"s"[..]));
    assert_eq!(first.headers().len(), 2);
    assert!(first.time_unix_nanos() > 1_600_000_000_000_000_000);
    let first_id = first.id();
    drop(first);
    assert_ne!(
        sub.recv_timeout(SECOND).unwrap().id(),
        first_id,
        "ids are unique"
    );
}

#[test]
fn refuses_invalid_subjects_and_oversized_events_saying_why() {
    let bus = Bus::new(BusConfig {
        limits: starling_core::EventLimits {
            payload_bytes_max: 8,
            ..Default::default()
        },
        ..BusConfig::default()
    });
    assert_eq!(
        bus.publish("orders.*", b""),
        Err(PublishError::Invalid(EncodeError::Subject(
            SubjectError::WildcardInSubject {
                index: 1,
                wildcard: '*'
            }
        )))
    );
    assert_eq!(
        bus.subscribe("orders..x").unwrap_err(),
        SubscribeError::Pattern(SubjectError::EmptyToken { index: 1 })
    );
    assert_eq!(
        bus.queue_subscribe("a", "has space").unwrap_err(),
        SubscribeError::QueueGroup
    );
    let error = bus.publish("a", b"123456789").unwrap_err();
    assert!(error.to_string().contains("9 bytes"), "{error}");
}

#[test]
fn a_queue_group_gets_each_event_exactly_once_across_threads() {
    const EVENTS: u64 = 10_000;
    const MEMBERS: u64 = 3;
    // Published before any member's thread starts, so before any member
    // has waited: none is asleep, and the group takes turns. Once the
    // threads run, an event goes to a member that is awake first (see
    // `deliver_to_group` in bus/route.rs), and which are awake is the
    // scheduler's choice: one member may rightly take every later event
    // while the others sleep.
    const TURNS: u64 = 100 * MEMBERS;
    let bus = Bus::default();
    let watcher = bus
        .subscribe_with(
            "jobs.>",
            None,
            options(EVENTS as usize, SlowConsumerPolicy::DropNewest),
        )
        .unwrap();
    let members: Vec<_> = (0..MEMBERS)
        .map(|_| {
            bus.subscribe_with(
                "jobs.*",
                Some("workers"),
                options(EVENTS as usize, SlowConsumerPolicy::DropNewest),
            )
            .unwrap()
        })
        .collect();
    let mut publisher = bus.publisher();
    for i in 0..TURNS {
        publisher.publish("jobs.x", &i.to_le_bytes()).unwrap();
    }
    let taken = Arc::new(AtomicU64::new(0));
    let members: Vec<_> = members
        .into_iter()
        .map(|member| {
            let taken = taken.clone();
            std::thread::spawn(move || {
                // Until the members together have taken every event, which
                // must not take 30 s.
                let mut seen = Vec::new();
                let deadline = Instant::now() + 30 * SECOND;
                while taken.load(Ordering::Relaxed) < EVENTS {
                    if let Ok(event) = member.recv_timeout(Duration::from_millis(10)) {
                        seen.push(u64::from_le_bytes(event.payload().try_into().unwrap()));
                        taken.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert!(Instant::now() < deadline, "every event taken in time");
                    }
                }
                assert_eq!(member.dropped(), 0);
                seen
            })
        })
        .collect();
    for i in TURNS..EVENTS {
        publisher.publish("jobs.x", &i.to_le_bytes()).unwrap();
    }
    let mut all = Vec::new();
    for (index, member) in members.into_iter().enumerate() {
        let seen = member.join().unwrap();
        let turns = seen.iter().filter(|&&number| number < TURNS).count() as u64;
        assert_eq!(
            turns,
            TURNS / MEMBERS,
            "member {index}: round robin gives each awake member its turn"
        );
        all.extend(seen);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (0..EVENTS).collect::<Vec<_>>(),
        "every event once, none twice"
    );
    assert_eq!(
        watcher.pending(),
        EVENTS as usize,
        "plain subscribers still get everything"
    );
}

#[test]
fn each_publishers_order_is_preserved() {
    const PER_PUBLISHER: u32 = 20_000;
    let bus = Bus::default();
    let sub = bus
        .subscribe_with(
            "seq",
            None,
            options(
                64,
                SlowConsumerPolicy::Block {
                    max_stall: 10 * SECOND,
                },
            ),
        )
        .unwrap();
    let publishers: Vec<_> = (0..2u32)
        .map(|who| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..PER_PUBLISHER {
                    let mut payload = [0u8; 8];
                    payload[..4].copy_from_slice(&who.to_le_bytes());
                    payload[4..].copy_from_slice(&i.to_le_bytes());
                    bus.publish("seq", &payload).unwrap();
                }
            })
        })
        .collect();
    let mut next = [0u32; 2];
    for _ in 0..2 * PER_PUBLISHER {
        let event = sub.recv_timeout(10 * SECOND).unwrap();
        let who = u32::from_le_bytes(event.payload()[..4].try_into().unwrap()) as usize;
        let i = u32::from_le_bytes(event.payload()[4..].try_into().unwrap());
        assert_eq!(i, next[who], "publisher {who} out of order");
        next[who] += 1;
    }
    publishers.into_iter().for_each(|p| p.join().unwrap());
    assert_eq!(sub.dropped(), 0);
}

#[test]
fn a_subscriber_that_never_reads_neither_stalls_publishers_nor_grows_memory() {
    const EVENTS: u64 = 200_000;
    let bus = Bus::default();
    let idle = bus
        .subscribe_with("t", None, options(100, SlowConsumerPolicy::DropNewest))
        .unwrap();
    let reader = bus
        .subscribe_with(
            "t",
            None,
            options(
                1024,
                SlowConsumerPolicy::Block {
                    max_stall: 10 * SECOND,
                },
            ),
        )
        .unwrap();
    let consumer = std::thread::spawn(move || {
        let mut count = 0u64;
        while count < EVENTS {
            reader.recv_timeout(10 * SECOND).unwrap();
            count += 1;
        }
        reader.dropped()
    });
    let started = Instant::now();
    let mut publisher = bus.publisher();
    let payload = [7u8; 128];
    for _ in 0..EVENTS {
        publisher.publish("t", &payload).unwrap();
    }
    assert_eq!(
        consumer.join().unwrap(),
        0,
        "the reading subscriber lost nothing"
    );
    assert!(started.elapsed() < 30 * SECOND);
    assert_eq!(idle.pending(), 100);
    assert_eq!(idle.dropped(), EVENTS - 100, "every miss is counted");
    let memory = bus.stats().memory;
    assert!(
        memory.bytes_allocated <= 8 * ((64 << 10) + 128),
        "memory stays bounded: {memory:?}"
    );
    // The idle subscriber still has the first events it was given, intact.
    assert_eq!(idle.recv_timeout(SECOND).unwrap().payload(), &payload);
}

#[test]
fn drop_oldest_keeps_the_newest_events() {
    let bus = Bus::default();
    let sub = bus
        .subscribe_with("t", None, options(4, SlowConsumerPolicy::DropOldest))
        .unwrap();
    for i in 0u8..10 {
        bus.publish("t", &[i]).unwrap();
    }
    let kept: Vec<u8> = std::iter::from_fn(|| sub.try_recv().map(|e| e.payload()[0])).collect();
    assert_eq!(kept, vec![6, 7, 8, 9]);
    assert_eq!(sub.dropped(), 6);
}

#[test]
fn block_waits_for_room_then_drops_and_counts() {
    let bus = Bus::default();
    let timeout = Duration::from_millis(50);
    let sub = bus
        .subscribe_with(
            "t",
            None,
            options(1, SlowConsumerPolicy::Block { max_stall: timeout }),
        )
        .unwrap();
    bus.publish("t", b"1").unwrap();
    let started = Instant::now();
    bus.publish("t", b"2").unwrap();
    assert!(
        started.elapsed() >= timeout,
        "the publisher waited for room"
    );
    assert_eq!(sub.dropped(), 1);
    assert_eq!(sub.recv_timeout(SECOND).unwrap().payload(), b"1");
}

#[test]
fn running_out_of_event_memory_is_an_error_counted_by_every_subscriber() {
    let bus = Bus::new(BusConfig {
        segment_bytes: 4096,
        memory_bytes_max: 4 * (4096 + 128),
        ..BusConfig::default()
    });
    let hoarder = bus
        .subscribe_with("t", None, options(100_000, SlowConsumerPolicy::DropNewest))
        .unwrap();
    let payload = [1u8; 512];
    let mut published = 0u64;
    let error = loop {
        match bus.publish("t", &payload) {
            Ok(()) => published += 1,
            Err(error) => break error,
        }
        assert!(published < 1000, "the budget must run out");
    };
    assert_eq!(error, PublishError::OutOfMemory(1));
    assert_eq!(hoarder.dropped(), 1);
    // Reading frees the memory, and publishing works again.
    while hoarder.try_recv().is_some() {}
    bus.publish("t", &payload).unwrap();
    assert_eq!(hoarder.recv_timeout(SECOND).unwrap().payload(), &payload);
}

#[test]
fn unsubscribes_on_drop() {
    let bus = Bus::default();
    let sub = bus.subscribe("a.>").unwrap();
    assert_eq!(bus.publish_message(&Message::new("a.b", b"")).unwrap(), 1);
    assert_eq!(bus.subscriptions().len(), 1);
    drop(sub);
    assert_eq!(bus.publish_message(&Message::new("a.b", b"")).unwrap(), 0);
    assert!(bus.subscriptions().is_empty());
}

/// Issue 15: the subscription index kept what removed subscriptions
/// pointed to, and with it every departed peer's queue (65,536 slots each):
/// a node's memory grew with every peer that came and went.
#[test]
fn a_mailboxs_queue_is_freed_once_the_mailbox_goes() {
    let bus = Bus::default();
    let baseline = bus.stats();
    for cycle in 0..300 {
        let mut peer = bus.peer_mailbox(options(65_536, SlowConsumerPolicy::default()));
        peer.subscribe(1, "orders.>", None).unwrap();
        peer.subscribe(2, &format!("_INBOX.peer{cycle}.>"), None)
            .unwrap();
        assert_eq!(bus.stats().queues, baseline.queues + 1);
        assert_eq!(bus.stats().queue_slots, baseline.queue_slots + 65_536);
        // This thread's publisher caches the match, holding the queue...
        bus.publish("orders.new", b"for the peer").unwrap();
        drop(peer);
        // ... until its next lookup brings its cache up to date.
        bus.publish("anything.else", b"").unwrap();
        let stats = bus.stats();
        assert_eq!(stats.queues, baseline.queues, "cycle {cycle}");
        assert_eq!(stats.queue_slots, baseline.queue_slots, "cycle {cycle}");
    }
}

#[test]
fn lists_subscriptions_with_their_counters() {
    let bus = Bus::default();
    let sub = bus.queue_subscribe("orders.>", "workers").unwrap();
    bus.publish("orders.1", b"").unwrap();
    sub.recv_timeout(SECOND).unwrap();
    let list = bus.subscriptions();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].pattern, "orders.>");
    assert_eq!(list[0].queue_group.as_deref(), Some("workers"));
    assert_eq!(list[0].dropped, 0);
    assert_eq!((list[0].queue.received, list[0].queue.pending), (1, 0));
    assert_eq!(
        (sub.pattern(), sub.queue_group()),
        ("orders.>", Some("workers"))
    );
}

#[test]
fn request_gets_the_first_reply_and_fails_fast_without_responders() {
    let bus = Bus::default();
    let service = bus.subscribe("svc.echo").unwrap();
    let responder = bus.clone();
    const REQUESTS: u32 = 100;
    let server = std::thread::spawn(move || {
        for _ in 0..REQUESTS {
            let request = service.recv_timeout(10 * SECOND).expect("a request");
            let reply_to = request.reply_to().unwrap();
            assert!(
                reply_to.starts_with(&responder.inbox_prefix()),
                "{reply_to}"
            );
            responder.publish(reply_to, request.payload()).unwrap();
        }
    });
    for i in 0..REQUESTS {
        let reply = bus
            .request("svc.echo", &i.to_le_bytes(), 10 * SECOND)
            .unwrap();
        assert_eq!(reply.payload(), i.to_le_bytes());
    }
    // The refusal is an answer: it comes well before the timeout, which is
    // long so that a starved thread cannot be taken for one that waited.
    let timeout = 60 * SECOND;
    let started = Instant::now();
    assert_eq!(
        bus.request("nobody.home", b"", timeout).unwrap_err(),
        RequestError::NoResponders
    );
    assert!(
        started.elapsed() < timeout / 2,
        "no waiting for the timeout: {:?}",
        started.elapsed()
    );
    server.join().unwrap();
}

#[test]
fn a_late_reply_is_not_taken_for_the_next_one() {
    let bus = Bus::default();
    let service = bus.subscribe("svc.slow").unwrap();
    let timeout = Duration::from_millis(50);
    assert_eq!(
        bus.request("svc.slow", b"first", timeout).unwrap_err(),
        RequestError::Timeout
    );
    // Answer the first request only now, after it timed out.
    let first = service.recv_timeout(SECOND).unwrap();
    bus.publish(first.reply_to().unwrap(), b"late").unwrap();
    let responder = bus.clone();
    let answer_second = std::thread::spawn(move || {
        let second = service.recv_timeout(10 * SECOND).unwrap();
        responder
            .publish(second.reply_to().unwrap(), b"fresh")
            .unwrap();
    });
    let reply = bus.request("svc.slow", b"second", 10 * SECOND).unwrap();
    assert_eq!(reply.payload(), b"fresh");
    answer_second.join().unwrap();
}

#[test]
fn closing_the_bus_wakes_a_blocked_receiver_after_it_drains() {
    let bus = Bus::default();
    let sub = bus.subscribe("a").unwrap();
    bus.publish("a", b"last").unwrap();
    let receiver = std::thread::spawn(move || {
        let last = sub.recv().map(|e| e.payload().to_vec());
        (last, sub.recv().map(|_| ()))
    });
    std::thread::sleep(Duration::from_millis(20));
    drop(bus);
    let (last, after) = receiver.join().unwrap();
    assert_eq!(last.unwrap(), b"last");
    assert_eq!(after, Err(RecvError::Closed));
}

#[test]
fn an_event_outlives_its_subscription_and_its_bus() {
    let bus = Bus::default();
    let sub = bus.subscribe("a").unwrap();
    bus.publish("a", b"still here").unwrap();
    let event = sub.recv_timeout(SECOND).unwrap();
    drop(sub);
    drop(bus);
    assert_eq!(event.payload(), b"still here");
}

#[test]
fn each_subscription_of_a_mailbox_counts_its_own_drops() {
    let bus = Bus::default();
    let mut mailbox = bus.mailbox(options(2, SlowConsumerPolicy::DropNewest));
    mailbox.subscribe(1, "x.*", None).unwrap();
    mailbox.subscribe(2, "x.b", None).unwrap();
    bus.publish("x.a", b"").unwrap();
    bus.publish("x.b", b"").unwrap();
    let list = bus.subscriptions();
    let by_tag = |tag| list.iter().find(|s| s.tag == tag).unwrap();
    assert_eq!(
        by_tag(1).dropped + by_tag(2).dropped,
        1,
        "the queue of 2 was full for the third delivery, whichever it was"
    );
    assert_eq!(by_tag(1).queue, by_tag(2).queue, "one shared queue");
    assert_eq!((by_tag(1).queue.pending, by_tag(1).queue.dropped), (2, 1));
}

#[test]
fn mailboxes_tag_deliveries_by_subscription() {
    let bus = Bus::default();
    let mut mailbox = bus.mailbox(SubscribeOptions::default());
    mailbox.subscribe(1, "a.*", None).unwrap();
    mailbox.subscribe(2, "a.b", None).unwrap();
    bus.publish("a.b", b"").unwrap();
    let mut tags = vec![
        mailbox.try_recv().unwrap().tag(),
        mailbox.try_recv().unwrap().tag(),
    ];
    tags.sort_unstable();
    assert_eq!(tags, vec![1, 2], "one delivery per matching subscription");
    assert_eq!(mailbox.unsubscribe(1), 1);
    bus.publish("a.b", b"").unwrap();
    assert_eq!(mailbox.try_recv().unwrap().tag(), 2);
    assert!(mailbox.try_recv().is_none());
}

#[test]
fn archived_events_are_validated_and_keep_their_identity() {
    let bus = Bus::default();
    let sub = bus.subscribe("in.>").unwrap();
    let mut publisher = bus.publisher();
    let event = Event {
        id: 77,
        time_unix_nanos: 5,
        subject: "in.x".into(),
        payload: b"p".to_vec(),
        ..Event::default()
    };
    assert_eq!(publisher.publish_archive(&event.to_archive()).unwrap(), 1);
    let got = sub.recv_timeout(SECOND).unwrap();
    assert_eq!(
        (got.id(), got.time_unix_nanos(), got.payload()),
        (77, 5, &b"p"[..])
    );
    assert_eq!(
        got.archive(),
        &event.to_archive()[..],
        "the bytes are forwarded unchanged"
    );
    let mut garbage = rkyv::util::AlignedVec::<16>::new();
    garbage.extend_from_slice(&[0xFF; 96]);
    let error = publisher.publish_archive(&garbage).unwrap_err();
    assert!(matches!(error, PublishError::Malformed { .. }), "{error}");
}

#[test]
fn async_receive_wakes_the_task() {
    let bus = Bus::default();
    let sub = bus.subscribe("a").unwrap();
    let publisher = bus.clone();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        publisher.publish("a", b"async").unwrap();
    });
    let payload =
        common::block_on(async { sub.recv_async().await.map(|event| event.payload().to_vec()) });
    assert_eq!(payload.unwrap(), b"async");
    sender.join().unwrap();
}

#[test]
fn many_subscribers_share_one_copy_of_the_payload() {
    let bus = Bus::default();
    let subs: Vec<_> = (0..4).map(|_| bus.subscribe("fan").unwrap()).collect();
    bus.publish("fan", &[9u8; 1000]).unwrap();
    let events: Vec<_> = subs
        .iter()
        .map(|s| s.recv_timeout(SECOND).unwrap())
        .collect();
    let addresses: HashSet<usize> = events
        .iter()
        .map(|e| e.payload().as_ptr() as usize)
        .collect();
    assert_eq!(addresses.len(), 1, "all four read the same bytes in place");
}

#[test]
fn a_watcher_sees_local_interest_but_not_peers() {
    use starling_core::InterestChange;
    let bus = Bus::default();
    let before = bus.subscribe("orders.>").unwrap();
    let (changes, seen) = std::sync::mpsc::channel();
    bus.watch_local_interest(Box::new(move |change| {
        let _ = changes.send(change);
    }));
    let mut peer = bus.peer_mailbox(SubscribeOptions::default());
    peer.subscribe(1, "kitchen.>", None).unwrap();
    let group = bus.queue_subscribe("orders.*.paid", "billing").unwrap();
    drop(before);
    peer.unsubscribe(1);
    drop(group);
    let added = |pattern: &str, group: Option<&str>| InterestChange::Added {
        pattern: pattern.into(),
        group: group.map(Into::into),
    };
    let removed = |pattern: &str, group: Option<&str>| InterestChange::Removed {
        pattern: pattern.into(),
        group: group.map(Into::into),
    };
    assert_eq!(
        seen.try_iter().collect::<Vec<_>>(),
        vec![
            added("orders.>", None),
            added("orders.*.paid", Some("billing")),
            removed("orders.>", None),
            removed("orders.*.paid", Some("billing")),
        ]
    );
    drop(bus);
    assert!(
        seen.recv().is_err(),
        "closing the bus drops the watcher, ending its channel"
    );
}

#[test]
fn a_batch_larger_than_a_block_queue_waits_for_room_and_loses_nothing() {
    const EVENTS: u32 = 1000;
    let bus = Bus::default();
    let sub = bus
        .subscribe_with(
            "batch.x",
            None,
            options(
                8,
                SlowConsumerPolicy::Block {
                    max_stall: Duration::from_secs(30),
                },
            ),
        )
        .unwrap();
    // The consumer parks between batches; the publisher must wake it before
    // it waits for room, or it would wait out `max_stall` and demote it.
    let consumer = std::thread::spawn(move || {
        let mut next = 0u32;
        while next < EVENTS {
            sub.recv_batch_timeout(3, 10 * SECOND, |event| {
                assert_eq!(event.payload(), next.to_le_bytes(), "in order");
                next += 1;
            })
            .expect("every event comes");
        }
        (sub.dropped(), sub.demotions())
    });
    let payloads: Vec<[u8; 4]> = (0..EVENTS).map(u32::to_le_bytes).collect();
    let batch: Vec<_> = payloads
        .iter()
        .map(|payload| Message::new("batch.x", payload))
        .collect();
    let mut publisher = bus.publisher();
    assert_eq!(publisher.publish_batch(&batch).unwrap(), EVENTS as usize);
    assert_eq!(
        consumer.join().unwrap(),
        (0, 0),
        "nothing dropped or demoted"
    );
}

/// Noted forwards reach their consumer only at `wake_noted`, all of them
/// and in order, also to a consumer asleep and through a full `Block`
/// queue (the source wakes its noted consumers before it waits for room).
#[test]
fn noted_forwards_are_handed_over_at_each_wake() {
    const EVENTS: u32 = 2_000;
    let bus = Bus::default();
    let limits = bus.config().limits;
    let sub = bus
        .subscribe_with(
            "fw.x",
            None,
            options(
                8,
                SlowConsumerPolicy::Block {
                    max_stall: Duration::from_secs(30),
                },
            ),
        )
        .unwrap();
    let archives: Vec<_> = (0..EVENTS)
        .map(|i| {
            Event {
                subject: "fw.x".into(),
                payload: i.to_le_bytes().to_vec(),
                ..Event::default()
            }
            .to_archive()
        })
        .collect();
    let mut publisher = bus.publisher();
    let mut backlog = Backlog::new();
    let publish = |publisher: &mut Publisher, backlog: &mut Backlog, i: u32| {
        let checked = event::check(&archives[i as usize], &limits).unwrap();
        assert_eq!(
            publisher
                .publish_forwarded_noted(checked, true, &[], backlog)
                .unwrap(),
            1
        );
    };
    fn in_order(next: &mut u32) -> impl FnMut(&EventRef) + '_ {
        |event| {
            assert_eq!(event.payload(), next.to_le_bytes(), "in order");
            *next += 1;
        }
    }
    for i in 0..3 {
        publish(&mut publisher, &mut backlog, i);
    }
    assert!(sub.try_recv().is_none(), "noted, not yet handed over");
    publisher.wake_noted(&mut backlog);
    let mut next = 0u32;
    assert_eq!(sub.try_recv_batch(16, in_order(&mut next)), 3);
    // The consumer parks between batches; runs of 10 are noted, then woken.
    let consumer = std::thread::spawn(move || {
        while next < EVENTS {
            sub.recv_batch_timeout(5, 10 * SECOND, in_order(&mut next))
                .expect("every event comes");
        }
        (sub.dropped(), sub.demotions())
    });
    for i in 3..EVENTS {
        publish(&mut publisher, &mut backlog, i);
        if !backlog.is_empty() {
            publisher.wake_noted(&mut backlog);
            backlog.flush_blocking();
        }
        if i % 10 == 0 {
            publisher.wake_noted(&mut backlog);
        }
    }
    publisher.wake_noted(&mut backlog);
    assert_eq!(
        consumer.join().unwrap(),
        (0, 0),
        "nothing dropped or demoted"
    );
}

#[test]
fn batch_receive_says_timeout_while_open_and_closed_once_drained() {
    let bus = Bus::default();
    let sub = bus.subscribe("batch.y").unwrap();
    let started = Instant::now();
    let waited = sub.recv_batch_timeout(16, Duration::from_millis(20), |_| {});
    assert_eq!(waited, Err(RecvError::Timeout));
    assert!(started.elapsed() >= Duration::from_millis(20));
    bus.publish("batch.y", b"last").unwrap();
    drop(bus);
    let mut payloads = Vec::new();
    assert_eq!(
        sub.recv_batch(16, |event| payloads.push(event.payload().to_vec())),
        Ok(1)
    );
    assert_eq!(payloads, [b"last"]);
    assert_eq!(sub.recv_batch(16, |_| {}), Err(RecvError::Closed));
    assert_eq!(sub.received(), 1);
}

/// A batch stops at its first bad message, whether the bad part is its
/// payload (on a subject the batch repeats: the lookup that skips the
/// subject compare must not skip the limits) or its subject; the messages
/// before it are delivered, in order, and none after it.
#[test]
fn a_batch_with_a_bad_message_in_the_middle_publishes_only_those_before_it() {
    let bus = Bus::new(BusConfig {
        limits: starling_core::EventLimits {
            payload_bytes_max: 8,
            ..Default::default()
        },
        ..BusConfig::default()
    });
    let sub = bus.subscribe("batch.>").unwrap();
    let mut publisher = bus.publisher();
    let subject = "batch.same";
    let too_large = [9u8; 9];
    let oversized = [
        Message::new(subject, b"0"),
        Message::new(subject, b"1"),
        Message::new(subject, &too_large),
        Message::new(subject, b"3"),
    ];
    let error = publisher.publish_batch(&oversized).unwrap_err();
    assert_eq!(error.published, 2);
    assert_eq!(
        error.error,
        PublishError::Invalid(EncodeError::PayloadTooLarge { len: 9, max: 8 })
    );
    let misspelt = [
        Message::new(subject, b"4"),
        Message::new("batch..bad", b"5"),
        Message::new(subject, b"6"),
    ];
    let error = publisher.publish_batch(&misspelt).unwrap_err();
    assert_eq!(error.published, 1);
    assert!(matches!(
        error.error,
        PublishError::Invalid(EncodeError::Subject(SubjectError::EmptyToken { .. }))
    ));
    publisher.publish(subject, b"end").unwrap();
    let mut payloads = Vec::new();
    sub.try_recv_batch(16, |event| payloads.push(event.payload().to_vec()));
    assert_eq!(payloads, [&b"0"[..], b"1", b"4", b"end"]);
}

/// Consumers asleep when a batch starts are all woken by it, however its
/// subjects repeat (a result's consumers are noted once per run of it), and
/// a subscription made between two batches on one subject gets the second.
#[test]
fn a_batch_of_repeated_subjects_wakes_every_consumer_it_reaches() {
    let bus = Bus::default();
    let receive = |pattern: &str, expected: usize| {
        let sub = bus.subscribe(pattern).unwrap();
        std::thread::spawn(move || {
            let mut got = 0;
            while got < expected {
                // A consumer left asleep would see its events only at the
                // timeout: far later than the deadline below.
                got += sub
                    .recv_batch_timeout(64, 60 * SECOND, |_| {})
                    .expect("events come");
            }
            got
        })
    };
    let (only_a, only_b, both) = (receive("w.a", 4), receive("w.b", 3), receive("w.*", 7));
    let (a, b) = (String::from("w.a"), String::from("w.b"));
    // Equal subjects in different bytes, and the same bytes again.
    let batch = [
        Message::new(&a, b"1"),
        Message::new(&a, b"2"),
        Message::new("w.a", b"3"),
        Message::new(&b, b"4"),
        Message::new(&b, b"5"),
        Message::new(&a, b"6"),
        Message::new("w.b", b"7"),
    ];
    let mut publisher = bus.publisher();
    let published = Instant::now();
    assert_eq!(publisher.publish_batch(&batch).unwrap(), 14);
    for (consumer, expected) in [(only_a, 4), (only_b, 3), (both, 7)] {
        assert_eq!(consumer.join().unwrap(), expected);
    }
    assert!(
        published.elapsed() < 20 * SECOND,
        "every consumer was woken"
    );

    // The consumers' subscriptions went with their threads.
    let late = bus.subscribe("w.a").unwrap();
    assert_eq!(publisher.publish_batch(&batch[..2]).unwrap(), 2);
    assert_eq!(late.try_recv_batch(16, |_| {}), 2);
}

/// `poll_recv_batch`, as an I/O loop polls a mailbox: events come in order,
/// those given back are released with the batch while a kept one stays
/// readable, `max` bounds a batch; with none queued the waker is registered
/// and the next publish wakes it; once the bus is gone and the queue drained
/// the poll says so.
#[test]
fn a_polled_batch_hands_events_over_and_registers_for_the_next() {
    #[derive(Default)]
    struct Counting(AtomicU64);
    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let bus = Bus::default();
    let sub = bus.subscribe("polled").unwrap();
    for payload in [b"0", b"1", b"2", b"3"] {
        bus.publish("polled", payload).unwrap();
    }
    let woken = Arc::new(Counting::default());
    let waker = std::task::Waker::from(woken.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    let mut seen = Vec::new();
    let mut kept = None;
    let polled = sub.poll_recv_batch(&mut cx, 3, |event| {
        seen.push(event.payload().to_vec());
        if event.payload() == b"1" {
            kept = Some(event);
            None
        } else {
            Some(event)
        }
    });
    assert!(matches!(polled, std::task::Poll::Ready(Ok(3))));
    assert_eq!(seen, [b"0", b"1", b"2"]);
    assert_eq!(kept.expect("kept").payload(), b"1");
    let polled = sub.poll_recv_batch(&mut cx, 3, |event| {
        assert_eq!(event.payload(), b"3");
        Some(event)
    });
    assert!(matches!(polled, std::task::Poll::Ready(Ok(1))));
    let polled = sub.poll_recv_batch(&mut cx, 3, |_| unreachable!("none queued"));
    assert!(polled.is_pending());
    assert_eq!(woken.0.load(Ordering::Relaxed), 0);
    bus.publish("polled", b"4").unwrap();
    assert_eq!(woken.0.load(Ordering::Relaxed), 1, "the publish woke it");
    drop(bus);
    let mut last = Vec::new();
    let polled = sub.poll_recv_batch(&mut cx, 3, |event| {
        last.push(event.payload().to_vec());
        Some(event)
    });
    assert!(matches!(polled, std::task::Poll::Ready(Ok(1))));
    assert_eq!(last, [b"4"]);
    let polled = sub.poll_recv_batch(&mut cx, 3, |_| unreachable!("drained"));
    assert!(matches!(
        polled,
        std::task::Poll::Ready(Err(RecvError::Closed))
    ));
}
