//! The client's receive path: each event the node sends is validated once
//! and handed to its subscription's local queue (no second bus), under that
//! subscription's policy, in order, with every loss counted; unsubscribing
//! stops delivery; closing the client closes its subscriptions once they
//! are drained; and no body the node sends can panic or stop the client.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{eventually, frame, node};
use rkyv::util::AlignedVec;
use starling_core::event::{self, ARCHIVE_ALIGN};
use starling_core::{Event, EventLimits, RecvError, SlowConsumerPolicy, SubscribeOptions};
use starling_transport::client::{Client, ClientOptions, ClientSubscription};
use starling_transport::frame::control::Hello;
use starling_transport::frame::{Decoder, Kind};
use starling_transport::server::BackendChoice;

/// How long a test waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(20);

fn sequence_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload.try_into().expect("an 8-byte payload"))
}

/// Receives from `subscription` until `until` says stop, checking that the
/// sequence numbers count up from `next` without a gap; returns the next
/// one expected.
fn receive_in_order(
    subscription: &ClientSubscription,
    mut next: u64,
    mut until: impl FnMut(u64) -> bool,
) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    while !until(next) {
        let event = subscription
            .recv_deadline(deadline)
            .unwrap_or_else(|error| panic!("waiting for event {next}: {error}"));
        assert_eq!(sequence_of(event.payload()), next, "in order, none lost");
        next += 1;
    }
    next
}

#[test]
fn two_subscriptions_with_different_policies_get_every_event_in_order() {
    const CHUNKS: u64 = 20;
    const CHUNK: u64 = 1_000;
    let node = node(BackendChoice::Epoll);
    let subscriber = Client::connect(&node.tcp).unwrap();
    let publisher = Client::connect(&node.tcp).unwrap();
    let consumers: Vec<(Arc<AtomicU64>, JoinHandle<ClientSubscription>)> = [
        SlowConsumerPolicy::default(),
        SlowConsumerPolicy::DropNewest,
    ]
    .into_iter()
    .map(|policy| {
        let subscription = subscriber.subscribe_with("ticks", None, policy).unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let progress = received.clone();
        let thread = std::thread::spawn(move || {
            receive_in_order(&subscription, 0, |next| {
                progress.store(next, Ordering::Relaxed);
                next == CHUNKS * CHUNK
            });
            subscription
        });
        (received, thread)
    })
    .collect();
    // In chunks that both queues (and the node's) hold whole: a drop-newest
    // subscription that keeps up loses nothing either.
    for chunk in 0..CHUNKS {
        for sequence in chunk * CHUNK..(chunk + 1) * CHUNK {
            publisher.publish("ticks", &sequence.to_le_bytes()).unwrap();
        }
        publisher.flush().unwrap();
        let caught_up = || {
            consumers
                .iter()
                .all(|(received, _)| received.load(Ordering::Relaxed) >= (chunk + 1) * CHUNK - 1)
        };
        assert!(
            eventually(PATIENCE, caught_up),
            "chunk {chunk} never arrived"
        );
    }
    for (_, consumer) in consumers {
        let subscription = consumer.join().unwrap();
        assert_eq!(subscription.dropped(), 0);
        assert_eq!(subscription.received(), CHUNKS * CHUNK);
    }
    assert_eq!(subscriber.dropped_by_node(), 0);
    subscriber.close();
    publisher.close();
}

#[test]
fn a_slow_drop_newest_subscriber_keeps_the_first_and_counts_every_drop() {
    const EVENTS: u64 = 1_000;
    const CAPACITY: usize = 64;
    let node = node(BackendChoice::Epoll);
    let options = ClientOptions {
        subscription: SubscribeOptions {
            capacity: CAPACITY,
            ..SubscribeOptions::default()
        },
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&node.tcp, options).unwrap();
    let slow = client
        .subscribe_with("data", None, SlowConsumerPolicy::DropNewest)
        .unwrap();
    let marker = client.subscribe("marker").unwrap();
    // One in-process publisher: the node sends its events in its order, so
    // the marker comes after every data event.
    let mut publisher = node.bus.publisher();
    for sequence in 0..EVENTS {
        publisher.publish("data", &sequence.to_le_bytes()).unwrap();
    }
    publisher.publish("marker", b"end").unwrap();
    let end = marker.recv_timeout(PATIENCE).expect("the marker");
    assert_eq!(end.payload(), b"end");
    assert_eq!(
        client.dropped_by_node(),
        0,
        "the node's queue held them all"
    );
    assert_eq!(slow.pending(), CAPACITY);
    assert_eq!(slow.dropped(), EVENTS - CAPACITY as u64);
    let mut seen = Vec::new();
    slow.try_recv_batch(EVENTS as usize, |event| {
        seen.push(sequence_of(event.payload()));
    });
    assert_eq!(seen, (0..CAPACITY as u64).collect::<Vec<_>>());
    client.close();
}

#[test]
fn unsubscribing_while_events_flow_stops_delivery() {
    let node = node(BackendChoice::Epoll);
    let client = Client::connect(&node.tcp).unwrap();
    let leaving = client.subscribe("flow").unwrap();
    let staying = client.subscribe("flow").unwrap();
    client.flush().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let flow = {
        let (bus, stop, published) = (node.bus.clone(), stop.clone(), published.clone());
        std::thread::spawn(move || {
            let mut publisher = bus.publisher();
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..50 {
                    publisher.publish("flow", &sequence.to_le_bytes()).unwrap();
                    sequence += 1;
                }
                published.store(sequence, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    receive_in_order(&leaving, 0, |next| next == 1_000);
    let counters = leaving.counters();
    drop(leaving);
    // The reader finishes what it was delivering when the subscription left
    // before it reads the flush's answer. (The node may still send events
    // it had queued for the subscription: they are dropped, and counted,
    // never queued.)
    client.flush().unwrap();
    let after_unsubscribe = (counters.received(), counters.pending());
    // Events published from now on reach the other subscription, and must
    // reach it before this test looks again.
    let marker = published.load(Ordering::Relaxed) + 500;
    receive_in_order(&staying, 0, |next| next > marker);
    stop.store(true, Ordering::Relaxed);
    flow.join().unwrap();
    assert_eq!(
        (counters.received(), counters.pending()),
        after_unsubscribe,
        "nothing reached the queue of the subscription that left"
    );
    assert_eq!(counters.received(), 1_000);
    client.close();
}

#[test]
fn closing_the_client_closes_its_subscriptions_once_drained() {
    let node = node(BackendChoice::Epoll);
    let client = Client::connect(&node.tcp).unwrap();
    let subscription = client.subscribe("last").unwrap();
    client.flush().unwrap();
    for sequence in 0..10u64 {
        node.bus.publish("last", &sequence.to_le_bytes()).unwrap();
    }
    assert!(
        eventually(PATIENCE, || subscription.pending() == 10),
        "{} of 10 events arrived",
        subscription.pending()
    );
    client.close();
    receive_in_order(&subscription, 0, |next| next == 10);
    let started = Instant::now();
    assert!(matches!(
        subscription.recv_timeout(PATIENCE),
        Err(RecvError::Closed)
    ));
    assert!(started.elapsed() < PATIENCE / 2, "closed, not timed out");
}

/// A deterministic stream of numbers for the bodies below (xorshift64*).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// `MSG` bodies a broken or hostile node could send: random bytes of random
/// lengths, and valid archives with a few bytes changed (some of which are
/// still valid events).
fn damaged_bodies(seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut random = Random(seed);
    let valid = Event {
        id: 42,
        subject: "fuzz.target".into(),
        reply_to: Some("fuzz.reply".into()),
        headers: vec![("ce-type".into(), b"fuzz".to_vec())],
        payload: b"fuzz-payload".to_vec(),
        ..Event::default()
    }
    .to_archive();
    (0..count)
        .map(|_| {
            if random.below(2) == 0 {
                let len = random.below(400) as usize;
                (0..len).map(|_| random.next() as u8).collect()
            } else {
                let mut body = valid.to_vec();
                for _ in 0..=random.below(4) {
                    let at = random.below(body.len() as u64) as usize;
                    body[at] = random.next() as u8;
                }
                body
            }
        })
        .collect()
}

fn is_valid(body: &[u8]) -> bool {
    let mut aligned = AlignedVec::<ARCHIVE_ALIGN>::new();
    aligned.extend_from_slice(body);
    event::validate(&aligned, &EventLimits::default()).is_ok()
}

/// A node played by hand: it shakes hands, acknowledges every `SUB`,
/// answers every `PING`, and after acknowledging the first subscription
/// other than the reply inbox, sends `frames` as they are. Stops when the
/// client goes away.
fn scripted_node(frames: Vec<u8>) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let hello = frame(Kind::Hello, 0, &Hello::ours("scripted", "").encode());
        if stream.write_all(&hello).is_err() {
            return;
        }
        let mut decoder = Decoder::new(1 << 20);
        let mut script = Some(frames);
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            let n = match stream.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut answers = Vec::new();
            let fed = decoder.feed(&buffer[..n], |frame| {
                let tag = frame.header.tag;
                match frame.header.kind {
                    Kind::Sub => {
                        answers.extend(common::frame(Kind::Ok, tag, &[]));
                        if tag != u64::MAX
                            && let Some(script) = script.take()
                        {
                            answers.extend(script);
                        }
                    }
                    Kind::Ping => answers.extend(common::frame(Kind::Pong, tag, &[])),
                    _ => {}
                }
                Ok::<(), ()>(())
            });
            if fed.is_err() || stream.write_all(&answers).is_err() {
                return;
            }
        }
    });
    (url, thread)
}

#[test]
fn damaged_event_bodies_are_counted_and_skipped_and_never_stop_the_client() {
    const SEED: u64 = 0x5eed_c11e_47ec_0001;
    const SID: u64 = 1;
    let bodies = damaged_bodies(SEED, 2_000);
    let valid = bodies.iter().filter(|body| is_valid(body)).count();
    let damaged = bodies.len() - valid;
    assert!(
        valid > 0 && damaged > 1_000,
        "seed {SEED:#x}: {valid} valid"
    );
    let mut frames = Vec::new();
    for (at, body) in bodies.iter().enumerate() {
        // Most to the subscription, some to its reply inbox and to an id
        // nobody has: neither may disturb it.
        let sid = match at % 10 {
            0 => u64::MAX,
            1 => 999,
            _ => SID,
        };
        frames.extend(frame(Kind::Msg, sid, body));
    }
    let end = Event {
        subject: "fuzz.end".into(),
        payload: b"end".to_vec(),
        ..Event::default()
    }
    .to_archive();
    frames.extend(frame(Kind::Msg, SID, &end));
    let to_subscription = |wanted: bool| {
        bodies
            .iter()
            .enumerate()
            .filter(|(at, body)| at % 10 >= 2 && is_valid(body) == wanted)
            .count()
    };
    let (valid_here, damaged_here) = (to_subscription(true), to_subscription(false));

    let (url, node) = scripted_node(frames);
    let options = ClientOptions {
        reconnect: false,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&url, options).unwrap();
    // The client numbers subscriptions from 1: this is the id the script
    // sends to.
    let subscription = client.subscribe("fuzz.>").unwrap();
    assert_eq!(subscription.id(), SID, "seed {SEED:#x}");
    let mut received = 0;
    loop {
        let event = subscription
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|error| panic!("seed {SEED:#x}: after {received} events: {error}"));
        if event.subject() == "fuzz.end" {
            break;
        }
        received += 1;
    }
    assert_eq!(received, valid_here, "seed {SEED:#x}");
    assert_eq!(
        subscription.dropped(),
        damaged_here as u64,
        "seed {SEED:#x}: each damaged event counted once"
    );
    assert!(client.is_connected(), "seed {SEED:#x}");
    client.flush().expect("the connection still answers");
    drop(subscription);
    client.close();
    node.join().unwrap();
}
