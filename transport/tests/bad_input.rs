//! Bad input at the local server, against both backends, at its plain and
//! its TLS port. Each case gets an `ERR` frame (or a TLS alert) and/or a
//! close; the node never panics, its memory stays bounded, and a
//! well-behaved pair of clients running at the same time keeps every event
//! (checked in each case by [`Bystanders`]).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::tls::{Authority, tls_node};
use common::{LATE, Node, Raw, SECOND, WAIT, backends, config, eventually, frame, node, node_with};
use starling_core::{BusConfig, Event};
use starling_transport::client::{Client, ClientOptions};
use starling_transport::frame::control::{ErrorBody, Hello, Subscribe};
use starling_transport::frame::{ErrorCode, Header, Kind};
use starling_transport::server::BackendChoice;

/// How long the bystanders may take: for their first event to arrive, for
/// each answer from the node, and for the rest of their events once they
/// stop. Generous, because they check that nothing is lost, not how fast it
/// goes (a burst of thousands of connections keeps the node's one I/O thread
/// busy for seconds on a loaded debug build); a lost event fails at this
/// deadline instead of hanging.
const BYSTANDERS_DEADLINE: Duration = Duration::from_secs(30);

/// A publisher and a subscriber on a subject of their own, running while the
/// bad input arrives: at the end every event must have arrived, in order.
struct Bystanders {
    stop: Arc<AtomicBool>,
    /// Events the subscriber received so far, in order.
    received: Arc<AtomicU64>,
    /// What the publisher sent, set once it has stopped: the subscriber's
    /// exact goal.
    sent: Arc<OnceLock<u64>>,
    publisher: Option<JoinHandle<u64>>,
    subscriber: Option<JoinHandle<u64>>,
}

impl Bystanders {
    fn start(node: &Node) -> Bystanders {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(OnceLock::new());
        let options = || ClientOptions {
            answer_timeout: BYSTANDERS_DEADLINE,
            tls: node.client_tls.clone(),
            ..ClientOptions::default()
        };
        let receiver = Client::connect_with(&node.uds, options()).unwrap();
        let sub = receiver.subscribe("bystanders").unwrap();
        let sender = Client::connect_with(&node.tcp, options()).unwrap();
        let publisher = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let flush = |n: u64| {
                    sender
                        .flush()
                        .unwrap_or_else(|error| panic!("bystander flush after {n} events: {error}"))
                };
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    sender.publish("bystanders", &n.to_le_bytes()).unwrap();
                    n += 1;
                    if n.is_multiple_of(100) {
                        flush(n);
                    }
                }
                flush(n);
                n
            })
        };
        let subscriber = {
            let (received, sent) = (received.clone(), sent.clone());
            std::thread::spawn(move || {
                let _keep = receiver;
                let mut next = 0u64;
                let mut deadline = None;
                loop {
                    if let Some(&sent) = sent.get() {
                        if next == sent {
                            return next;
                        }
                        let deadline: Instant =
                            *deadline.get_or_insert_with(|| Instant::now() + BYSTANDERS_DEADLINE);
                        if Instant::now() >= deadline {
                            return next;
                        }
                    }
                    // The timeout only bounds how long the goal goes unchecked.
                    if let Ok(event) = sub.recv_timeout(Duration::from_millis(100)) {
                        assert_eq!(
                            u64::from_le_bytes(event.payload().try_into().unwrap()),
                            next,
                            "in order, none lost"
                        );
                        next += 1;
                        received.store(next, Ordering::Relaxed);
                    }
                }
            })
        };
        Bystanders {
            stop,
            received,
            sent,
            publisher: Some(publisher),
            subscriber: Some(subscriber),
        }
    }

    /// Stops them and checks every event arrived.
    fn finish(mut self) {
        assert!(
            eventually(BYSTANDERS_DEADLINE, || self
                .received
                .load(Ordering::Relaxed)
                > 0),
            "the bystanders got no event through in {BYSTANDERS_DEADLINE:?}"
        );
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.publisher.take().unwrap().join().unwrap();
        self.sent.set(sent).unwrap();
        let received = self.subscriber.take().unwrap().join().unwrap();
        assert_eq!(
            received, sent,
            "the bystanders lost events: {received} of {sent} arrived within \
             {BYSTANDERS_DEADLINE:?} of the last"
        );
    }
}

impl Drop for Bystanders {
    /// Stops the publisher if the case failed before [`Bystanders::finish`].
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn each_backend(case: impl Fn(&Node)) {
    each_node(node, case);
}

/// Runs `case` against a node of each backend made by `node`, with
/// bystanders, and checks that the bad connections are gone after.
fn each_node(node: impl Fn(BackendChoice) -> Node, case: impl Fn(&Node)) {
    for backend in backends() {
        let node = node(backend);
        let bystanders = Bystanders::start(&node);
        case(&node);
        bystanders.finish();
        // Only the bystanders' two connections are left, once the node has
        // seen every bad one close.
        assert!(
            eventually(10 * SECOND, || node.server.connections().len() <= 2),
            "{backend:?}: bad connections are gone: {:?}",
            node.server.connections()
        );
    }
}

#[test]
fn random_bytes_get_an_error_and_a_close() {
    each_backend(|node| {
        let mut rng = 0x1234_5678_u64;
        for round in 0..20 {
            let mut raw = Raw::connect(node);
            let garbage: Vec<u8> = (0..200 + round * 37)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect();
            raw.write(&garbage);
            assert!(raw.closed_within(WAIT), "round {round}: closed");
        }
    });
}

/// Random bytes at the TLS port: as they come (mostly not TLS: answered
/// with a plain `ERR`), after a ClientHello's record header (rustls parses
/// garbage), and after a real ClientHello (garbage records mid-handshake).
#[test]
fn random_bytes_at_the_tls_port_get_an_alert_or_an_error_and_a_close() {
    let ca = Authority::new("bad input CA");
    let client_hello = {
        let config =
            rustls::ClientConfig::builder_with_provider(starling_transport::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(starling_transport::tls::roots(&ca.cert).unwrap())
                .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut hello = Vec::new();
        connection.write_tls(&mut hello).unwrap();
        hello
    };
    each_node(
        |backend| tls_node(backend, &ca, None, config()),
        |node| {
            let mut rng = 0x9E37_79B9_u64;
            for round in 0..30 {
                let garbage: Vec<u8> = (0..200 + round * 37)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng as u8
                    })
                    .collect();
                let mut bytes = match round % 3 {
                    0 => Vec::new(),
                    1 => vec![22, 3, 1, (garbage.len() >> 8) as u8, garbage.len() as u8, 1],
                    _ => client_hello.clone(),
                };
                bytes.extend_from_slice(&garbage);
                let mut raw = Raw::connect(node);
                raw.write(&bytes);
                assert!(raw.closed_within(WAIT), "round {round}: closed");
            }
        },
    );
}

#[test]
fn a_truncated_frame_then_a_close_is_harmless() {
    each_backend(|node| {
        let mut raw = Raw::hello(node);
        let whole = frame(
            Kind::Sub,
            1,
            &Subscribe {
                pattern: "a".into(),
                queue_group: None,
                policy: Default::default(),
            }
            .encode(),
        );
        raw.write(&whole[..whole.len() / 2]);
        drop(raw);
        let mut raw = Raw::connect(node);
        raw.write(&Header::new(Kind::Hello, 0, 40).encode()[..7]);
        drop(raw);
    });
}

#[test]
fn a_four_gigabyte_length_is_refused_at_once() {
    each_backend(|node| {
        let mut raw = Raw::hello(node);
        let mut header = Header::new(Kind::Pub, 0, 0).encode();
        header[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let started = Instant::now();
        raw.write(&header);
        assert_eq!(raw.expect_error().0, ErrorCode::Framing);
        assert!(raw.closed_within(WAIT));
        // Waiting for the body, the node would hold the connection for
        // good.
        assert!(
            started.elapsed() < LATE,
            "refused without waiting for the body: {:?}",
            started.elapsed()
        );
    });
}

#[test]
fn unknown_frame_kinds_are_refused() {
    each_backend(|node| {
        let mut raw = Raw::hello(node);
        let mut header = Header::new(Kind::Ping, 0, 0).encode();
        header[4] = 0xEE;
        raw.write(&header);
        assert_eq!(raw.expect_error().0, ErrorCode::Framing);
        assert!(raw.closed_within(WAIT));
    });
}

#[test]
fn frames_before_the_handshake_are_refused() {
    each_backend(|node| {
        let mut raw = Raw::connect(node);
        raw.send(
            Kind::Sub,
            1,
            &Subscribe {
                pattern: "a".into(),
                queue_group: None,
                policy: Default::default(),
            }
            .encode(),
        );
        assert_eq!(raw.expect_error().0, ErrorCode::Handshake);
        assert!(raw.closed_within(WAIT));
        // A handshake with another archive format is refused too.
        let mut raw = Raw::connect(node);
        let mut hello = Hello::ours("wrong", "");
        hello.fingerprint ^= 1;
        raw.send(Kind::Hello, 0, &hello.encode());
        assert_eq!(raw.expect_error().0, ErrorCode::Incompatible);
        assert!(raw.closed_within(WAIT));
    });
}

#[test]
fn invalid_subjects_and_events_get_errors_but_keep_the_connection() {
    each_backend(|node| {
        let mut raw = Raw::hello(node);
        raw.send(
            Kind::Sub,
            7,
            &Subscribe {
                pattern: "a..b".into(),
                queue_group: None,
                policy: Default::default(),
            }
            .encode(),
        );
        assert_eq!(raw.expect_error(), (ErrorCode::InvalidSubject, 7));
        let wildcard = Event {
            subject: "a.*".into(),
            ..Event::default()
        };
        raw.send(Kind::Pub, 8, &wildcard.to_archive());
        assert_eq!(raw.expect_error(), (ErrorCode::InvalidEvent, 8));
        raw.send(Kind::Pub, 9, &[0xAB; 64]);
        assert_eq!(raw.expect_error(), (ErrorCode::InvalidEvent, 9));
        let system = Event {
            subject: "$SYS.x".into(),
            ..Event::default()
        };
        raw.send(Kind::Pub, 10, &system.to_archive());
        assert_eq!(raw.expect_error(), (ErrorCode::InvalidSubject, 10));
        // Still open: a ping is answered.
        raw.send(Kind::Ping, 11, &[]);
        assert_eq!(
            raw.next_frame(WAIT).map(|f| (f.0, f.1)),
            Some((Kind::Pong, 11))
        );
    });
}

#[test]
fn ten_thousand_connections_opened_and_dropped() {
    each_backend(|node| {
        // Over the Unix socket: on loopback TCP, each new connection costs
        // the client's kernel a search past thousands of TIME_WAIT ports
        // (about 4 ms here), which would time the kernel, not the node. A
        // few hundred go over TCP as well.
        for i in 0..10_300 {
            let raw = if i < 10_000 {
                Raw::connect_uds(node)
            } else {
                Raw::connect(node)
            };
            if i % 2 == 0 {
                drop(raw);
            } else {
                let mut raw = raw;
                raw.send(Kind::Hello, 0, &Hello::ours("churn", "").encode());
            }
        }
        assert!(
            eventually(10 * SECOND, || node.server.connections().len() <= 2),
            "every dropped connection is cleaned up"
        );
    });
}

#[test]
fn a_subscriber_that_never_reads_does_not_hold_anyone_up() {
    for backend in backends() {
        let config = starling_transport::server::ServerConfig {
            session: starling_transport::server::SessionConfig {
                pending_events_max: 4096,
                ..Default::default()
            },
            ..common::config()
        };
        let node = node_with(backend, config, BusConfig::default());
        let bystanders = Bystanders::start(&node);
        // Subscribes, then never reads a byte.
        let mut stuck = Raw::hello(&node);
        stuck.send(
            Kind::Sub,
            1,
            &Subscribe {
                pattern: "flood".into(),
                queue_group: None,
                policy: Default::default(),
            }
            .encode(),
        );
        assert_eq!(stuck.next_frame(WAIT).map(|f| f.0), Some(Kind::Ok));
        let flooder = Client::connect(&node.tcp).unwrap();
        let started = Instant::now();
        let payload = vec![9u8; 1024];
        for _ in 0..100_000 {
            flooder.publish("flood", &payload).unwrap();
        }
        flooder.flush().unwrap();
        assert!(
            started.elapsed() < 30 * SECOND,
            "{backend:?}: the publisher was not stalled"
        );
        let stuck_info = node
            .server
            .connections()
            .into_iter()
            .find(|c| c.client_name == "raw")
            .expect("the stuck connection is still there");
        assert!(
            stuck_info.dropped > 0,
            "{backend:?}: its misses are counted"
        );
        let memory = node.bus.stats().memory;
        assert!(
            memory.bytes_allocated < 64 << 20,
            "{backend:?}: memory stays bounded: {memory:?}"
        );
        bystanders.finish();
        drop(stuck);
    }
}

/// A valid record, "packed.a" with an empty payload and zero deltas, that
/// starts each malformed `PACKED_PUB` body below: the frame is refused whole,
/// so it must never be delivered.
const VALID_RECORD: &[u8] = &[
    0, 8, b'p', b'a', b'c', b'k', b'e', b'd', b'.', b'a', 0, 0, 0,
];

fn after_valid(rest: &[u8]) -> Vec<u8> {
    [VALID_RECORD, rest].concat()
}

#[test]
fn malformed_packed_frames_are_refused_whole_and_close_only_their_connection() {
    let mut too_long_time = after_valid(&[0, 1, b'a', 0, 0]);
    too_long_time.extend([0xFF; 9]);
    too_long_time.push(0x02);
    let mut bad_padding = frame(Kind::PackedPub, 0, VALID_RECORD);
    *bad_padding.last_mut().unwrap() = 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "truncated record",
            frame(Kind::PackedPub, 0, &after_valid(&[0, 8, b'p', b'a', b'c'])),
        ),
        (
            "length past the body",
            frame(Kind::PackedPub, 0, &after_valid(&[0, 0x7F, b'a'])),
        ),
        (
            "overlong varint",
            frame(
                Kind::PackedPub,
                0,
                &after_valid(&[0, 0x81, 0x00, b'a', 0, 0, 0]),
            ),
        ),
        (
            "reserved flags",
            frame(Kind::PackedPub, 0, &after_valid(&[4, 1, b'a', 0, 0, 0])),
        ),
        ("varint overflow", frame(Kind::PackedPub, 0, &too_long_time)),
        ("no records", frame(Kind::PackedPub, 0, &[])),
        ("padding not zero", bad_padding),
    ];
    each_backend(|node| {
        let mut watcher = Raw::hello(node);
        watcher.send(Kind::Sub, 1, &Subscribe::new("packed.*", None).encode());
        assert_eq!(watcher.next_frame(WAIT).map(|f| f.0), Some(Kind::Ok));
        for (name, bytes) in &cases {
            let mut raw = Raw::hello(node);
            raw.write(bytes);
            assert_eq!(raw.expect_error().0, ErrorCode::Framing, "{name}");
            assert!(raw.closed_within(WAIT), "{name}: closed");
        }
        // A marker sent after them all is the first thing the watcher gets.
        let mut good = Raw::hello(node);
        let marker = Event {
            subject: "packed.marker".into(),
            ..Event::default()
        };
        good.send(Kind::Pub, 0, &marker.to_archive());
        let (kind, _, body) = watcher.next_frame(5 * SECOND).expect("the marker");
        assert_eq!(kind, Kind::Msg);
        assert_eq!(body, marker.to_archive().as_slice(), "nothing before it");
    });
}

/// Random damage to valid `PACKED_PUB` frames: a frame whose structure
/// breaks closes its connection with a framing error; any other keeps it
/// open (its events published or refused one by one), which a `PING` then
/// shows.
#[test]
fn randomly_damaged_packed_frames_close_exactly_when_their_structure_breaks() {
    use starling_transport::frame::packed::{self, Record, Records};
    each_backend(|node| {
        let mut rng = 0x0DD5_EED5_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..40 {
            let records: Vec<Record<'_>> = (0..1 + next() % 5)
                .map(|i| Record {
                    id: u128::from(next()) << (next() % 64),
                    time_unix_nanos: next(),
                    subject: b"damaged.subject",
                    reply_to: (i % 2 == 1).then_some(b"reply.to".as_slice()),
                    payload: &[7; 40][..(next() % 40) as usize],
                })
                .collect();
            let mut frame_bytes = rkyv::util::AlignedVec::<16>::new();
            packed::push_frame(&mut frame_bytes, &records);
            let length = u32::from_le_bytes(frame_bytes[..4].try_into().unwrap()) as usize;
            let tag = u64::from_le_bytes(frame_bytes[8..16].try_into().unwrap());
            for _ in 0..1 + next() % 3 {
                let at = 16 + (next() as usize % length);
                frame_bytes[at] = next() as u8;
            }
            let broken = Records::check(tag, &frame_bytes[16..16 + length]).is_err();
            let mut raw = Raw::hello(node);
            raw.write(&frame_bytes);
            raw.send(Kind::Ping, 99, &[]);
            let mut answer = None;
            while let Some((kind, tag, body)) = raw.next_frame(WAIT) {
                match kind {
                    Kind::Pong => {
                        answer = Some(Ok(tag));
                        break;
                    }
                    Kind::Err => {
                        let error = ErrorBody::decode(&body).unwrap();
                        if error.code == ErrorCode::Framing {
                            answer = Some(Err(error.reason));
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if broken {
                assert!(matches!(answer, Some(Err(_))), "round {round}: {answer:?}");
                assert!(raw.closed_within(WAIT), "round {round}: closed");
            } else {
                assert_eq!(answer, Some(Ok(99)), "round {round}: still open");
            }
        }
    });
}
