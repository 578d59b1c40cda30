//! The delivery contract on the local path (DESIGN §7), on both backends: a
//! subscriber that keeps up loses nothing however fast its publishers go; a
//! slow one slows its publishers down instead of losing events; a stuck one
//! holds its publishers back for at most `max_stall`, is then demoted, and is
//! told exactly what it missed; nobody else notices.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Node, Raw, SECOND, WAIT, backends, config, frame, node, node_with};
use starling_core::{BusConfig, Event, SlowConsumerPolicy, SubscribeOptions};
use starling_transport::client::{Client, ClientOptions, ClientSubscription};
use starling_transport::frame::control::{ErrorBody, Subscribe};
use starling_transport::frame::{ErrorCode, Kind};
use starling_transport::server::ServerConfig;

/// Receives exactly `count` events, failing if they do not all come within
/// `deadline`.
fn receive_exactly(subscription: &ClientSubscription, count: u64, deadline: Duration) -> u64 {
    let until = Instant::now() + deadline;
    let mut received = 0;
    while received < count {
        match subscription.recv_deadline(until) {
            Ok(_) => received += 1,
            Err(error) => panic!("{received} of {count} events, then {error:?}"),
        }
    }
    received
}

/// Flat out, healthy subscribers: pub/sub, fan-out, fan-in and a queue group
/// over TCP and the Unix socket each get every event, exactly.
#[test]
fn healthy_subscribers_get_every_event_flat_out() {
    const EVENTS: u64 = 30_000;
    for backend in backends() {
        let node = node(backend);
        for url in [&node.tcp, &node.uds] {
            let scenario = format!("{backend:?} {url}");
            let subscriber = Client::connect(url).unwrap();
            let one = subscriber.subscribe("flat.one").unwrap();
            let fanout: Vec<_> = (0..3)
                .map(|_| subscriber.subscribe("flat.fanout").unwrap())
                .collect();
            let fanin = subscriber.subscribe("flat.fanin.*").unwrap();
            let group: Vec<_> = (0..3)
                .map(|_| subscriber.queue_subscribe("flat.queue", "workers").unwrap())
                .collect();
            subscriber.flush().unwrap();

            let publish = |subject: String, count: u64| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let publisher = Client::connect_with(&url, patient()).unwrap();
                    let payload = [5u8; 128];
                    for _ in 0..count {
                        publisher.publish(&subject, &payload).unwrap();
                    }
                    publisher.flush().unwrap();
                })
            };
            let mut publishers = vec![
                publish("flat.one".into(), EVENTS),
                publish("flat.fanout".into(), EVENTS),
                publish("flat.queue".into(), EVENTS),
            ];
            for who in 0..4 {
                publishers.push(publish(format!("flat.fanin.{who}"), EVENTS / 4));
            }
            let deadline = 120 * SECOND;
            let mut receivers = vec![std::thread::spawn(move || {
                let count = receive_exactly(&one, EVENTS, deadline);
                (count, vec![one])
            })];
            for sub in fanout.into_iter().chain([fanin]) {
                receivers.push(std::thread::spawn(move || {
                    (receive_exactly(&sub, EVENTS, deadline), vec![sub])
                }));
            }
            receivers.push(std::thread::spawn(move || {
                let until = Instant::now() + deadline;
                let mut total = 0;
                while total < EVENTS {
                    let before = total;
                    for member in &group {
                        while member.try_recv().is_some() {
                            total += 1;
                        }
                    }
                    if total == before {
                        assert!(Instant::now() < until, "{total} of {EVENTS} group events");
                        std::thread::yield_now();
                    }
                }
                (total, group)
            }));
            let received: Vec<_> = receivers.into_iter().map(|r| r.join().unwrap()).collect();
            publishers.into_iter().for_each(|p| p.join().unwrap());
            for (count, subscriptions) in &received {
                assert_eq!(*count, EVENTS, "{scenario}");
                for subscription in subscriptions {
                    // Each publisher flushed (a round trip after its last
                    // event), so an extra delivery would be queued by now.
                    assert!(
                        subscription.try_recv().is_none(),
                        "{scenario}: nothing extra"
                    );
                    assert_eq!(subscription.dropped(), 0, "{scenario}");
                }
            }
            assert_eq!(
                subscriber.dropped_by_node(),
                0,
                "{scenario}: the node dropped nothing"
            );
        }
    }
}

/// One client shared by several publishing threads, with a write buffer of
/// a few frames (so they keep finding it full and waiting for room): the
/// subscriber gets every event exactly once, each thread's in the order it
/// published them.
#[test]
fn threads_sharing_a_client_lose_duplicate_and_reorder_nothing() {
    const THREADS: u64 = 4;
    const EVENTS: u64 = 20_000;
    for backend in backends() {
        let node = node(backend);
        let subscriber = Client::connect(&node.tcp).unwrap();
        let events = subscriber.subscribe("shared.>").unwrap();
        subscriber.flush().unwrap();
        let publisher = Client::connect_with(
            &node.tcp,
            ClientOptions {
                write_buffer_bytes_max: 4 << 10,
                ..patient()
            },
        )
        .unwrap();
        let threads: Vec<_> = (0..THREADS)
            .map(|thread| {
                let publisher = publisher.clone();
                std::thread::spawn(move || {
                    let subject = format!("shared.{thread}");
                    for number in 0..EVENTS {
                        publisher.publish(&subject, &number.to_le_bytes()).unwrap();
                    }
                    publisher.flush().unwrap();
                })
            })
            .collect();
        let until = Instant::now() + 60 * SECOND;
        let mut next = [0u64; THREADS as usize];
        for received in 0..THREADS * EVENTS {
            let event = events
                .recv_deadline(until)
                .unwrap_or_else(|error| panic!("{backend:?}: {received} events, then {error:?}"));
            let thread: usize = event.subject()["shared.".len()..].parse().unwrap();
            let number = u64::from_le_bytes(event.payload().try_into().unwrap());
            assert_eq!(number, next[thread], "{backend:?}: thread {thread}");
            next[thread] += 1;
        }
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(next, [EVENTS; THREADS as usize], "{backend:?}");
        // Nothing more: a marker published after everything comes next.
        publisher.publish("shared.marker", b"end").unwrap();
        let marker = events.recv_deadline(until).unwrap();
        assert_eq!(marker.subject(), "shared.marker", "{backend:?}");
    }
}

/// A subscriber that takes a millisecond per event: nothing is lost, and the
/// publisher is slowed to the subscriber's pace.
#[test]
fn a_slow_subscriber_slows_its_publisher_and_loses_nothing() {
    // Socket buffers on loopback autotune to several MiB each way: with
    // the client's write buffer and the node's queue, ~1,000 of these
    // events may be on the way at once on a machine that allows it. Enough
    // events that most must still wait for the subscriber.
    const EVENTS: u64 = 3000;
    const PAUSE: Duration = Duration::from_millis(1);
    for backend in backends() {
        let node = small_queues(backend);
        let subscriber = Client::connect_with(&node.tcp, small_client()).unwrap();
        let sub = subscriber
            .subscribe_with(
                "slow",
                None,
                SlowConsumerPolicy::Block {
                    max_stall: 60 * SECOND,
                },
            )
            .unwrap();
        subscriber.flush().unwrap();
        let consumer = std::thread::spawn(move || {
            for _ in 0..EVENTS {
                sub.recv_timeout(30 * SECOND).expect("no event lost");
                std::thread::sleep(PAUSE);
            }
            sub.dropped()
        });
        let publisher = Client::connect_with(&node.tcp, small_client()).unwrap();
        // Large events, so that socket buffers hold few of them: the
        // publisher must wait for the subscriber most of the way.
        let payload = vec![1u8; 32 << 10];
        let started = Instant::now();
        for _ in 0..EVENTS {
            publisher.publish("slow", &payload).unwrap();
        }
        publisher.flush().unwrap();
        let publishing = started.elapsed();
        assert_eq!(consumer.join().unwrap(), 0, "{backend:?}");
        assert_eq!(subscriber.dropped_by_node(), 0, "{backend:?}");
        // At most ~1,000 events fit in the buffers on the way (see above);
        // the rest went at the subscriber's pace (at least a millisecond
        // each).
        assert!(
            publishing >= PAUSE * (EVENTS as u32 / 2),
            "{backend:?}: the publisher was not slowed: {publishing:?}"
        );
    }
}

/// A subscriber that never reads: its publisher is held back for at most
/// `max_stall`, then goes on at full speed; another subscriber of the same
/// events loses none; a subscriber of another publisher never notices; node
/// memory stays bounded; and the stuck subscriber learns exactly how many
/// events it missed.
#[test]
fn a_stuck_subscriber_holds_its_publisher_back_only_for_max_stall() {
    const EVENTS: u64 = 20_000;
    // Long, so that "a bystander waited for the stall" (at least this long)
    // cannot be mistaken for scheduling noise on a loaded machine.
    const MAX_STALL: Duration = Duration::from_secs(3);
    for backend in backends() {
        eprintln!("backend {backend:?}");
        let node = small_queues(backend);
        let mut stuck = block_subscriber(&node, "stuck", MAX_STALL);

        let healthy_client = Client::connect(&node.tcp).unwrap();
        let healthy = healthy_client.subscribe("stuck").unwrap();
        healthy_client.flush().unwrap();
        let healthy = std::thread::spawn(move || {
            receive_exactly(&healthy, EVENTS, 60 * SECOND);
            healthy.dropped()
        });

        // Another publisher and subscriber on the same node and I/O thread:
        // a round trip every 2 ms must never wait for the stall.
        let bystander = Bystander::start(&node);

        let publisher = Client::connect_with(&node.tcp, patient()).unwrap();
        let payload = [2u8; 1024];
        let started = Instant::now();
        for _ in 0..EVENTS {
            publisher.publish("stuck", &payload).unwrap();
        }
        publisher.flush().unwrap();
        let publishing = started.elapsed();

        assert_eq!(
            healthy.join().unwrap(),
            0,
            "{backend:?}: the healthy one lost nothing"
        );
        let worst = bystander.stop();
        assert!(
            worst < MAX_STALL / 2,
            "{backend:?}: a bystander's round trip took {worst:?} during the stall"
        );
        // One episode of at most MAX_STALL: once demoted, the stuck queue
        // drops until it drains, which it never does.
        assert!(
            publishing < MAX_STALL + 20 * SECOND,
            "{backend:?}: publishing took {publishing:?}"
        );
        let memory = node.bus.stats().memory;
        assert!(
            memory.bytes_allocated <= 48 << 20,
            "{backend:?}: node memory stays bounded: {memory:?}"
        );

        // Now the stuck one reads: what it had, then the exact count of
        // what it missed.
        let mut received = 0u64;
        let mut missed = 0u64;
        let until = Instant::now() + 30 * SECOND;
        while received + missed < EVENTS {
            assert!(
                Instant::now() < until,
                "{received} received, {missed} missed"
            );
            match stuck.next_frame(SECOND) {
                Some((Kind::Msg, 1, _)) => received += 1,
                Some((Kind::Err, total, body)) => {
                    let error = ErrorBody::decode(&body).unwrap();
                    assert_eq!(error.code, ErrorCode::SlowConsumer);
                    missed = total;
                }
                Some(other) => panic!("unexpected frame {:?}", other.0),
                None => {}
            }
        }
        assert_eq!(
            received + missed,
            EVENTS,
            "{backend:?}: every event accounted for"
        );
        assert!(missed > 0, "{backend:?}: the stuck subscriber was demoted");
    }
}

/// A stuck subscriber of a rare subject, while lots of other traffic flows:
/// it pins a segment per event it holds, but only up to its connection's
/// byte limit, so no publish fails for lack of memory and nobody else loses
/// an event.
#[test]
fn a_stuck_subscriber_of_a_rare_subject_cannot_spend_the_nodes_memory() {
    const BULK: u64 = 60_000;
    const RARE_EVERY: u64 = 100;
    for backend in backends() {
        let node = node_with(
            backend,
            ServerConfig {
                session: starling_transport::server::SessionConfig {
                    pending_bytes_max: 2 << 20,
                    ..Default::default()
                },
                ..config()
            },
            BusConfig {
                // 600 rare events pinning a 64 KiB segment each would need
                // 37 MiB; the budget is 16.
                memory_bytes_max: 16 << 20,
                ..BusConfig::default()
            },
        );
        let _stuck = block_subscriber(&node, "rare", Duration::from_millis(200));
        let subscriber = Client::connect(&node.tcp).unwrap();
        let bulk = subscriber.subscribe("bulk").unwrap();
        subscriber.flush().unwrap();
        let receiver = std::thread::spawn(move || {
            receive_exactly(&bulk, BULK, 120 * SECOND);
            bulk.dropped()
        });
        let publisher = Client::connect_with(&node.tcp, patient()).unwrap();
        let payload = [3u8; 1024];
        for i in 0..BULK {
            publisher.publish("bulk", &payload).unwrap();
            if i % RARE_EVERY == 0 {
                publisher.publish("rare", b"r").unwrap();
            }
        }
        publisher.flush().unwrap();
        assert_eq!(receiver.join().unwrap(), 0, "{backend:?}");
        assert_eq!(subscriber.dropped_by_node(), 0, "{backend:?}");
        let memory = node.bus.stats().memory;
        assert_eq!(
            memory.exhausted, 0,
            "{backend:?}: no publish found the memory spent: {memory:?}"
        );
    }
}

/// An application that publishes from inside its own handler, to a subject
/// it subscribes to, keeps going: its connection is both the stalled source
/// and the consumer, and the node still writes to it while it is stalled.
#[test]
fn publishing_from_inside_a_handler_never_deadlocks() {
    const ROUNDS: u64 = 20_000;
    for backend in backends() {
        let node = node(backend);
        let client = Client::connect(&node.tcp).unwrap();
        let echo = client.subscribe("echo").unwrap();
        client.flush().unwrap();
        // Many events in flight at once, each answered by one more.
        for _ in 0..256 {
            client.publish("echo", &[0u8; 256]).unwrap();
        }
        let until = Instant::now() + 60 * SECOND;
        for round in 0..ROUNDS {
            echo.recv_deadline(until)
                .unwrap_or_else(|error| panic!("{backend:?}: round {round}: {error:?}"));
            client.publish("echo", &[0u8; 256]).unwrap();
        }
        assert_eq!(echo.dropped() + client.dropped_by_node(), 0, "{backend:?}");
    }
}

/// Requests still get their replies at once while a subscriber is stuck and
/// a publisher is held back by it.
#[test]
fn request_reply_goes_on_while_a_subscriber_is_stuck() {
    // The stuck subscriber holds the flooding publisher back for longer
    // than the test takes, so that every request is made while it does;
    // a request held back with it would wait out its own timeout, which is
    // a fraction of this. (With the default 2 s stall, a request had to
    // beat 1 s instead: a bound a loaded machine missed by chance.)
    const MAX_STALL: Duration = Duration::from_secs(120);
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    for backend in backends() {
        let node = small_queues(backend);
        let stuck = block_subscriber(&node, "stuck", MAX_STALL);
        let stop = Arc::new(AtomicBool::new(false));
        let flooding = {
            let (url, stop) = (node.tcp.clone(), stop.clone());
            std::thread::spawn(move || {
                let publisher = Client::connect(&url).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    publisher.publish("stuck", &[0u8; 1024]).unwrap();
                }
            })
        };
        let responder_client = Client::connect(&node.tcp).unwrap();
        let service = responder_client.subscribe("service").unwrap();
        responder_client.flush().unwrap();
        let responder = std::thread::spawn(move || {
            for _ in 0..50 {
                let request = service.recv_timeout(10 * SECOND).unwrap();
                let reply_to = request.reply_to().expect("a request").to_owned();
                responder_client.publish(&reply_to, b"pong").unwrap();
            }
        });
        let requester = Client::connect(&node.tcp).unwrap();
        for round in 0..50 {
            let reply = requester
                .request("service", b"ping", REQUEST_TIMEOUT)
                .unwrap_or_else(|error| {
                    panic!("{backend:?}: request {round}, not held back: {error}")
                });
            assert_eq!(reply.payload, b"pong");
        }
        responder.join().unwrap();
        // Its subscription gone, the stuck one holds the publisher no more.
        drop(stuck);
        stop.store(true, Ordering::Relaxed);
        flooding.join().unwrap();
    }
}

/// Runs of `PUB` frames written together, so that one receive of the node
/// holds many publishes (woken once, at its end), to two `Block`
/// subscribers, one of which reads nothing until the publisher has had to
/// wait for it (its queue and socket hold far fewer bytes than are sent),
/// with a frame the node refuses in each run: both get every event, in
/// order; the refused frames are answered by tag, in order; every event is
/// counted once in and once out per subscriber.
#[test]
fn runs_of_publishes_in_one_receive_reach_block_subscribers_in_order() {
    const RUNS: u32 = 64;
    const PER_RUN: u32 = 64;
    const EVENTS: u32 = RUNS * PER_RUN;
    // 4,096 events of 8 KiB: 32 MiB, several times what the late reader's
    // queue (4 MiB of event memory), outbox and socket buffers hold.
    let payload = |i: u32| {
        let mut payload = vec![0u8; 8 << 10];
        payload[..4].copy_from_slice(&i.to_le_bytes());
        payload
    };
    let archive = |subject: &str, i: u32| {
        Event {
            subject: subject.into(),
            payload: payload(i),
            ..Event::default()
        }
        .to_archive()
    };
    let block = SlowConsumerPolicy::Block {
        max_stall: 120 * SECOND,
    };
    for backend in backends() {
        // Queues of fewer events than a run, so that one receive (or one
        // resumed spill) can fill a queue with events its consumer has not
        // been shown yet: unless they are shown before the session waits
        // for room, nobody makes any.
        let node = node_with(
            backend,
            ServerConfig {
                session: starling_transport::server::SessionConfig {
                    pending_events_max: 16,
                    pending_bytes_max: 4 << 20,
                    ..Default::default()
                },
                ..config()
            },
            BusConfig::default(),
        );
        let mut late = Raw::hello(&node);
        let subscribe = Subscribe {
            policy: block,
            ..Subscribe::new("run", None)
        };
        late.send(Kind::Sub, 1, &subscribe.encode());
        assert_eq!(late.next_frame(WAIT).map(|f| f.0), Some(Kind::Ok));
        let prompt_client = Client::connect_with(&node.tcp, small_client()).unwrap();
        let prompt = prompt_client.subscribe_with("run", None, block).unwrap();
        prompt_client.flush().unwrap();
        let prompt = std::thread::spawn(move || {
            let until = Instant::now() + 120 * SECOND;
            for i in 0..EVENTS {
                let event = prompt.recv_deadline(until).expect("every event");
                assert_eq!(event.payload()[..4], i.to_le_bytes(), "in order");
            }
            prompt.dropped()
        });

        let runs_written = Arc::new(AtomicU64::new(0));
        let publisher = {
            let runs_written = runs_written.clone();
            let mut raw = Raw::hello(&node);
            let runs: Vec<Vec<u8>> = (0..RUNS)
                .map(|run| {
                    let mut bytes = Vec::new();
                    for at in 0..PER_RUN {
                        let i = run * PER_RUN + at;
                        bytes.extend(frame(Kind::Pub, 0, &archive("run", i)));
                        if at == PER_RUN / 2 {
                            // Refused (a wildcard subject), answered by its tag.
                            let tag = u64::from(run) + 1;
                            bytes.extend(frame(Kind::Pub, tag, &archive("run.*", i)));
                        }
                    }
                    bytes
                })
                .collect();
            std::thread::spawn(move || {
                for run in &runs {
                    raw.write(run);
                    runs_written.fetch_add(1, Ordering::Relaxed);
                }
                raw.send(Kind::Ping, 0, &[]);
                let mut refused = Vec::new();
                loop {
                    match raw.next_frame(120 * SECOND) {
                        Some((Kind::Err, tag, body)) => {
                            let error = ErrorBody::decode(&body).unwrap();
                            assert_eq!(error.code, ErrorCode::InvalidEvent);
                            refused.push(tag);
                        }
                        Some((Kind::Pong, ..)) => return (refused, raw),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        };

        // The late subscriber reads once the publisher has written every
        // run, or (as it must, with 32 MiB sent) been held back by it.
        let until = Instant::now() + 3 * SECOND;
        while runs_written.load(Ordering::Relaxed) < u64::from(RUNS) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let until = Instant::now() + 120 * SECOND;
        let mut received = 0;
        while received < EVENTS {
            assert!(Instant::now() < until, "{received} of {EVENTS} events");
            match late.next_frame(SECOND) {
                Some((Kind::Msg, 1, body)) => {
                    // The archive as published, byte for byte.
                    assert_eq!(body, archive("run", received).as_slice(), "in order");
                    received += 1;
                }
                Some(other) => panic!("unexpected frame {:?}", other.0),
                None => {}
            }
        }

        // The publisher stays connected, so its counters are still listed.
        let (refused, _publisher) = publisher.join().unwrap();
        let tags: Vec<u64> = (1..=u64::from(RUNS)).collect();
        assert_eq!(
            refused, tags,
            "{backend:?}: each refusal answered, in order"
        );
        assert_eq!(prompt.join().unwrap(), 0, "{backend:?}");
        assert_eq!(prompt_client.dropped_by_node(), 0, "{backend:?}");
        let connections = node.server.connections();
        let events_in: u64 = connections.iter().map(|c| c.events_in).sum();
        let events_out: u64 = connections.iter().map(|c| c.events_out).sum();
        let sent = u64::from(EVENTS + RUNS);
        assert_eq!(events_in, sent, "{backend:?}: counted in, refused too");
        assert_eq!(events_out, 2 * u64::from(EVENTS), "{backend:?}");
    }
}

/// A raw connection subscribed to `subject` as sid 1 with the `Block`
/// policy and `max_stall`, which reads nothing unless the test does.
fn block_subscriber(node: &Node, subject: &str, max_stall: Duration) -> Raw {
    let mut raw = Raw::hello(node);
    let subscribe = Subscribe {
        policy: SlowConsumerPolicy::Block { max_stall },
        ..Subscribe::new(subject, None)
    };
    raw.send(Kind::Sub, 1, &subscribe.encode());
    assert_eq!(raw.next_frame(WAIT).map(|f| f.0), Some(Kind::Ok));
    raw
}

/// A node whose connections queue few events (so tests reach "full" fast).
fn small_queues(backend: starling_transport::server::BackendChoice) -> Node {
    node_with(
        backend,
        ServerConfig {
            session: starling_transport::server::SessionConfig {
                pending_events_max: 256,
                pending_bytes_max: 4 << 20,
                ..Default::default()
            },
            ..config()
        },
        BusConfig::default(),
    )
}

/// A client whose local queues hold few events.
fn small_client() -> ClientOptions {
    ClientOptions {
        subscription: SubscribeOptions {
            capacity: 64,
            ..SubscribeOptions::default()
        },
        ..patient()
    }
}

/// A client that waits long for answers: a flush answers once the node has
/// handled everything published before it, which under backpressure takes
/// as long as the subscribers take.
fn patient() -> ClientOptions {
    ClientOptions {
        answer_timeout: 120 * SECOND,
        ..ClientOptions::default()
    }
}

/// A publisher and a subscriber of their own subject, measuring the worst
/// round trip until stopped.
struct Bystander {
    stop: Arc<AtomicBool>,
    worst_micros: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Bystander {
    fn start(node: &Node) -> Bystander {
        let client = Client::connect(&node.tcp).unwrap();
        let sub = client.subscribe("bystander").unwrap();
        client.flush().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let worst_micros = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, worst) = (stop.clone(), worst_micros.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    client.publish("bystander", b"x").unwrap();
                    sub.recv_timeout(10 * SECOND)
                        .expect("the bystander's event");
                    let took = started.elapsed().as_micros() as u64;
                    worst.fetch_max(took, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Bystander {
            stop,
            worst_micros,
            thread,
        }
    }

    fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        Duration::from_micros(self.worst_micros.load(Ordering::Relaxed))
    }
}

/// `try_publish` never waits: once the node holds the connection back and
/// the write buffer is full, it says `WouldBlock` at once and sends nothing.
#[test]
fn try_publish_says_would_block_instead_of_waiting() {
    for backend in backends() {
        let node = small_queues(backend);
        let _stuck = block_subscriber(&node, "held", 120 * SECOND);
        let publisher = Client::connect_with(
            &node.tcp,
            ClientOptions {
                write_buffer_bytes_max: 64 << 10,
                ..patient()
            },
        )
        .unwrap();
        let payload = [4u8; 1024];
        let until = Instant::now() + 60 * SECOND;
        let mut accepted = 0u64;
        loop {
            let started = Instant::now();
            match publisher.try_publish("held", &payload) {
                Ok(()) => accepted += 1,
                Err(starling_transport::client::ClientError::WouldBlock) => break,
                Err(error) => panic!("{backend:?}: {error}"),
            }
            // Waiting, it would wait for the stuck subscriber: 120 s.
            assert!(
                started.elapsed() < WAIT,
                "{backend:?}: try_publish waited {:?}",
                started.elapsed()
            );
            assert!(Instant::now() < until, "{backend:?}: never held back");
        }
        assert!(accepted > 0, "{backend:?}");
    }
}
