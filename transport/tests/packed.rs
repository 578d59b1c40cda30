//! `PACKED_PUB` (protocol 4) at a running server, on both backends: records
//! become exactly the archives a `PUB` would carry, bad events in a frame get
//! the `PUB`'s errors while the rest go on, a frame held back part-way keeps
//! its order, a version-3 client keeps working, and a small event costs half
//! the bytes. (Malformed frames are in `bad_input.rs`, with its bystanders.)

mod common;

use std::time::{Duration, Instant};

use common::{Raw, SECOND, WAIT, backends, config, node, node_with};
use rkyv::util::AlignedVec;
use starling_core::{BusConfig, Event, EventLimits, SlowConsumerPolicy, SubscribeOptions};
use starling_transport::client::{Client, ClientOptions};
use starling_transport::frame::control::{ErrorBody, Subscribe};
use starling_transport::frame::packed::{self, Record};
use starling_transport::frame::{ErrorCode, FRAME_ALIGN, Kind};

fn record(event: &Event) -> Record<'_> {
    Record {
        id: event.id,
        time_unix_nanos: event.time_unix_nanos,
        subject: event.subject.as_bytes(),
        reply_to: event.reply_to.as_deref().map(str::as_bytes),
        payload: &event.payload,
    }
}

fn packed_frame(records: &[Record<'_>]) -> AlignedVec<FRAME_ALIGN> {
    let mut frame = AlignedVec::new();
    packed::push_frame(&mut frame, records);
    frame
}

fn packed_events(events: &[Event]) -> AlignedVec<FRAME_ALIGN> {
    packed_frame(&events.iter().map(record).collect::<Vec<_>>())
}

/// A seeded xorshift: a failing case replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An event a client could pack: subjects inline and out of line, a reply
/// subject or none, payloads from empty to the packing limit.
fn random_event(rng: &mut Rng) -> Event {
    const SUBJECTS: [&str; 4] = [
        "a",
        "orders.eu",
        "x.y.z.w",
        "a.very.long.subject.with.many.tokens",
    ];
    let subject = SUBJECTS[rng.below(4) as usize].to_owned();
    let reply_to = match rng.below(3) {
        0 => None,
        1 => Some("r".to_owned()),
        _ => Some(format!("_INBOX.{:x}.{}", rng.next(), rng.below(1000))),
    };
    let len = match rng.below(4) {
        0 => 0,
        1 => 16,
        2 => rng.below(64) as usize,
        _ => rng.below(packed::PACKED_PAYLOAD_BYTES_MAX as u64 + 1) as usize,
    };
    Event {
        id: (u128::from(rng.next()) << 64) | u128::from(rng.next()),
        time_unix_nanos: rng.next(),
        subject,
        reply_to,
        headers: Vec::new(),
        payload: (0..len).map(|_| rng.next() as u8).collect(),
    }
}

/// Subscribes `raw` to `pattern` as `sid` and waits for the `OK`.
fn subscribe(raw: &mut Raw, sid: u64, pattern: &str) {
    raw.send(Kind::Sub, sid, &Subscribe::new(pattern, None).encode());
    assert_eq!(
        raw.next_frame(WAIT).map(|f| (f.0, f.1)),
        Some((Kind::Ok, sid))
    );
}

/// The next frame, which must be a `MSG` for `sid`; its body.
fn next_message(raw: &mut Raw, sid: u64) -> Vec<u8> {
    let (kind, tag, body) = raw.next_frame(5 * SECOND).expect("a MSG");
    assert_eq!(
        (kind, tag),
        (Kind::Msg, sid),
        "{:?}",
        ErrorBody::decode(&body)
    );
    body
}

#[test]
fn packed_records_arrive_as_the_archives_a_pub_would_carry() {
    for backend in backends() {
        let node = node(backend);
        // The subscriber speaks protocol 3: what it receives is unchanged.
        let (mut subscriber, version) = Raw::hello_as(&node, 3);
        assert_eq!(version, 3, "answered with its own version");
        subscribe(&mut subscriber, 1, ">");
        let (mut publisher, version) = Raw::hello_as(&node, 4);
        assert_eq!(version, 4);
        let mut rng = Rng(0x5EED_0012);
        for round in 0..12 {
            let count = 1 + rng.below(40) as usize;
            let events: Vec<Event> = (0..count).map(|_| random_event(&mut rng)).collect();
            publisher.write(&packed_events(&events));
            for (i, event) in events.iter().enumerate() {
                let body = next_message(&mut subscriber, 1);
                assert!(
                    body == event.to_archive().as_slice(),
                    "{backend:?} round {round}, event {i}: {event:?} is not rkyv's archive"
                );
            }
        }
    }
}

#[test]
fn bad_events_in_a_packed_frame_get_the_errors_of_a_pub_and_the_rest_go_on() {
    let limits = EventLimits {
        payload_bytes_max: 100,
        ..EventLimits::default()
    };
    for backend in backends() {
        let node = node_with(
            backend,
            config(),
            BusConfig {
                limits,
                ..BusConfig::default()
            },
        );
        let mut subscriber = Raw::hello(&node);
        subscribe(&mut subscriber, 1, "p.*");
        let mut publisher = Raw::hello(&node);
        let event = |subject: &str, reply: Option<&str>, payload: usize| Event {
            id: 7,
            time_unix_nanos: 9,
            subject: subject.into(),
            reply_to: reply.map(Into::into),
            headers: Vec::new(),
            payload: vec![1; payload],
        };
        let bad = [
            event("p..x", None, 1),
            event("$SYS.x", None, 1),
            event("p.big", None, 200),
            event("p.r", Some("bad reply"), 1),
            event("p.*", None, 1),
        ];
        // What each gets as a PUB with tag 0: code and reason.
        let mut as_pub = Vec::new();
        for event in &bad {
            publisher.send(Kind::Pub, 0, &event.to_archive());
            as_pub.push(next_error(&mut publisher));
        }
        let first = event("p.1", None, 3);
        let last = event("p.2", Some("r.s"), 4);
        let mut records = vec![record(&first)];
        records.extend(bad.iter().map(record));
        records.push(Record {
            subject: b"p.\xFF",
            ..record(&first)
        });
        records.push(record(&last));
        publisher.write(&packed_frame(&records));
        let as_packed: Vec<_> = (0..bad.len()).map(|_| next_error(&mut publisher)).collect();
        assert_eq!(as_packed, as_pub, "{backend:?}: the same codes and reasons");
        let (code, reason) = next_error(&mut publisher);
        assert_eq!(code, ErrorCode::InvalidEvent);
        assert!(reason.contains("not UTF-8"), "{reason}");
        assert_eq!(
            next_message(&mut subscriber, 1),
            first.to_archive().as_slice()
        );
        assert_eq!(
            next_message(&mut subscriber, 1),
            last.to_archive().as_slice()
        );
        // The connection is still open, and nothing else was delivered.
        let marker = event("p.marker", None, 0);
        publisher.write(&packed_events(std::slice::from_ref(&marker)));
        assert_eq!(
            next_message(&mut subscriber, 1),
            marker.to_archive().as_slice()
        );
    }
}

/// The next frame, which must be an `ERR` with tag 0: its code and reason.
fn next_error(raw: &mut Raw) -> (ErrorCode, String) {
    let (kind, tag, body) = raw.next_frame(5 * SECOND).expect("an ERR");
    assert_eq!((kind, tag), (Kind::Err, 0));
    let error = ErrorBody::decode(&body).expect("an ERR body");
    (error.code, error.reason)
}

#[test]
fn a_packed_frame_held_back_part_way_delivers_everything_in_order() {
    for backend in backends() {
        let node = node(backend);
        // Room for four: the frame's fifth record waits for the test to
        // take the first, and the frames after it wait their turn.
        let slow = node
            .bus
            .subscribe_with(
                "q.*",
                None,
                SubscribeOptions {
                    capacity: 4,
                    policy: SlowConsumerPolicy::Block {
                        max_stall: Duration::from_secs(60),
                    },
                    ..SubscribeOptions::default()
                },
            )
            .unwrap();
        let numbered = |n: u64| Event {
            id: u128::from(n) * 1_000_003,
            time_unix_nanos: 1_000_000 - n,
            subject: format!("q.{}", n % 3),
            payload: n.to_le_bytes().to_vec(),
            ..Event::default()
        };
        let first: Vec<Event> = (0..300).map(numbered).collect();
        let last: Vec<Event> = (301..400).map(numbered).collect();
        let mut stream = packed_events(&first).to_vec();
        stream.extend(common::frame(Kind::Pub, 0, &numbered(300).to_archive()));
        stream.extend_from_slice(&packed_events(&last));
        let mut publisher = Raw::hello(&node);
        publisher.write(&stream);
        for n in 0..400u64 {
            let event = slow
                .recv_timeout(5 * SECOND)
                .unwrap_or_else(|e| panic!("{backend:?}: event {n}: {e:?}"));
            assert_eq!(
                event.archive(),
                numbered(n).to_archive().as_slice(),
                "{backend:?}: event {n}"
            );
        }
        assert!(slow.try_recv().is_none());
    }
}

#[test]
fn a_version_3_client_keeps_working_and_may_not_send_packed_frames() {
    for backend in backends() {
        let node = node(backend);
        let (mut old, version) = Raw::hello_as(&node, 3);
        assert_eq!(version, 3);
        subscribe(&mut old, 5, "v3.*");
        let event = Event {
            subject: "v3.a".into(),
            payload: b"old".to_vec(),
            ..Event::default()
        };
        old.send(Kind::Pub, 0, &event.to_archive());
        assert_eq!(next_message(&mut old, 5), event.to_archive().as_slice());
        old.write(&packed_events(std::slice::from_ref(&event)));
        let (kind, tag, body) = old.next_frame(5 * SECOND).expect("an ERR");
        assert_eq!((kind, tag), (Kind::Err, 0));
        let error = ErrorBody::decode(&body).unwrap();
        assert_eq!(error.code, ErrorCode::Framing);
        assert!(error.reason.contains("protocol 4"), "{}", error.reason);
        assert!(old.closed_within(WAIT));
        for version in [2, 5] {
            let mut raw = Raw::connect(&node);
            let hello = starling_transport::frame::control::Hello {
                version,
                ..starling_transport::frame::control::Hello::ours("other", "")
            };
            raw.send(Kind::Hello, 0, &hello.encode());
            assert_eq!(
                raw.expect_error().0,
                ErrorCode::Incompatible,
                "version {version}"
            );
        }
    }
}

/// A packing client's writer joins the one-record frames that wait
/// together into frames of many records: two threads publish flat out,
/// and a subscriber gets every event whole, each thread's in order.
#[test]
fn a_packing_clients_frames_may_be_joined_and_every_event_arrives_in_order() {
    const PER_THREAD: u32 = 20_000;
    // Payloads of 4 to 43 bytes: records of many sizes.
    let payload = |number: u32| -> Vec<u8> {
        number
            .to_le_bytes()
            .into_iter()
            .cycle()
            .take(4 + (number % 40) as usize)
            .collect()
    };
    // What the events cost as one frame each (48 to 88 bytes): the bytes
    // the node would count if the writer joined nothing.
    let unjoined_bytes: usize = (0..2u32)
        .flat_map(|thread| (0..PER_THREAD).map(move |number| (thread, number)))
        .map(|(thread, number)| {
            let subject = format!("joined.{thread}");
            let payload = payload(number);
            let alone = Record {
                id: 0,
                time_unix_nanos: 0,
                subject: subject.as_bytes(),
                reply_to: None,
                payload: &payload,
            };
            packed_frame(&[alone]).len()
        })
        .sum();
    for backend in backends() {
        let node = node(backend);
        let subscriber = Client::connect(&node.tcp).unwrap();
        let subscription = subscriber.subscribe("joined.*").unwrap();
        let name = format!("joining-{backend:?}");
        let publisher = Client::connect_with(
            &node.tcp,
            ClientOptions {
                name: name.clone(),
                pack_small_events: true,
                ..ClientOptions::default()
            },
        )
        .unwrap();
        std::thread::scope(|scope| {
            for thread in 0..2u32 {
                let publisher = &publisher;
                scope.spawn(move || {
                    let subject = format!("joined.{thread}");
                    for number in 0..PER_THREAD {
                        publisher.publish(&subject, &payload(number)).unwrap();
                    }
                });
            }
        });
        publisher.flush().unwrap();
        let mut next = [0u32; 2];
        for _ in 0..2 * PER_THREAD {
            let event = subscription
                .recv_timeout(10 * SECOND)
                .unwrap_or_else(|error| {
                    panic!("{backend:?}: after {next:?}: {error}");
                });
            let thread: usize = event.subject()["joined.".len()..].parse().unwrap();
            let number = next[thread];
            assert_eq!(
                event.payload(),
                payload(number),
                "{backend:?}: thread {thread}'s event {number}"
            );
            next[thread] += 1;
        }
        let connection = node
            .server
            .connections()
            .into_iter()
            .find(|c| c.client_name == name)
            .unwrap();
        assert_eq!(connection.events_in, 2 * u64::from(PER_THREAD));
        // How much the writer joins depends on how many frames wait for it,
        // which the scheduler decides (60 to 98% of the bytes of a frame
        // each in CI and here), so the figure is printed, not checked; once
        // CI counted 1.026 on io_uring, which is not explained yet. Joining
        // itself is checked where it is deterministic, on `packed::join`.
        println!(
            "{backend:?}: {:.1} bytes per event, {:.1} a frame each",
            connection.bytes_in as f64 / connection.events_in as f64,
            unjoined_bytes as f64 / connection.events_in as f64,
        );
        publisher.close();
        subscriber.close();
    }
}

/// Issue 12's figure: bytes on the wire per 16-byte event on a short
/// subject (the bench's), as the node counts them for a client's
/// connection: a client that packs small events, and one of the defaults,
/// which does not.
#[test]
fn a_small_event_costs_less_than_60_percent_of_the_bytes_of_a_pub() {
    let pub_frame = common::frame(
        Kind::Pub,
        0,
        &Event {
            subject: "bench.pubsub".into(),
            payload: vec![0; 16],
            ..Event::default()
        }
        .to_archive(),
    );
    assert_eq!(pub_frame.len(), 112, "what protocol 3 sends");
    let node = node(backends()[0]);
    let packing = ClientOptions {
        pack_small_events: true,
        ..ClientOptions::default()
    };
    let per_event = bytes_per_small_event(&node, packing);
    println!("bytes on the wire per 16-byte event: {per_event:.1} (PUB: 112)");
    // At most one packed frame each (64 bytes; fewer bytes where the writer
    // joined frames that waited together), plus the HELLO, SUB and PING.
    assert!(per_event <= 64.5, "{per_event} bytes per event");
    let not_packing = ClientOptions {
        pack_small_events: false,
        ..ClientOptions::default()
    };
    let per_event = bytes_per_small_event(&node, not_packing);
    assert!(
        (112.0..112.5).contains(&per_event),
        "{per_event} bytes per event: a client that does not pack sends PUBs"
    );
}

/// Bytes the node received per event from a client with `options` that
/// published 10,000 16-byte events on `bench.pubsub`.
fn bytes_per_small_event(node: &common::Node, options: ClientOptions) -> f64 {
    const EVENTS: u64 = 10_000;
    let name = format!("bytes-packing-{}", options.pack_small_events);
    let client = Client::connect_with(
        &node.tcp,
        ClientOptions {
            name: name.clone(),
            ..options
        },
    )
    .unwrap();
    for _ in 0..EVENTS {
        client.publish("bench.pubsub", &[0; 16]).unwrap();
    }
    client.flush().unwrap();
    let deadline = Instant::now() + 10 * SECOND;
    let connection = loop {
        let connections = node.server.connections();
        if let Some(c) = connections
            .into_iter()
            .find(|c| c.client_name == name && c.events_in == EVENTS)
        {
            break c;
        }
        assert!(Instant::now() < deadline, "{EVENTS} events never arrived");
        std::thread::sleep(Duration::from_millis(10));
    };
    client.close();
    connection.bytes_in as f64 / EVENTS as f64
}

/// A node of protocol 3 only (the build before this one), played by hand:
/// it refuses the new client's version 4 as that build does; the client
/// connects again with 3 and then publishes `PUB` frames, never packed.
#[test]
fn a_new_client_falls_back_to_protocol_3_with_an_old_node() {
    use starling_transport::frame::control::Hello;
    use starling_transport::frame::{Decoder, HEADER_BYTES, Header};
    use std::io::{Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    let old_node = std::thread::spawn(move || {
        let mut versions = Vec::new();
        loop {
            let (mut socket, _) = listener.accept().unwrap();
            socket.set_read_timeout(Some(5 * SECOND)).unwrap();
            let mut header = [0; HEADER_BYTES];
            socket.read_exact(&mut header).unwrap();
            let header = Header::decode(&header, 1 << 16).unwrap();
            let mut body = vec![0; header.frame_bytes() - HEADER_BYTES];
            socket.read_exact(&mut body).unwrap();
            let version = Hello::version_of(&body).unwrap();
            versions.push(version);
            if version != 3 {
                let refusal = ErrorBody::new(
                    ErrorCode::Incompatible,
                    format!("protocol version {version} is not 3"),
                );
                socket
                    .write_all(&common::frame(Kind::Err, 0, &refusal.encode()))
                    .unwrap();
                continue;
            }
            let hello = Hello {
                version: 3,
                ..Hello::ours("old-node", "")
            };
            socket
                .write_all(&common::frame(Kind::Hello, 0, &hello.encode()))
                .unwrap();
            // The client's frames until its publish: the inbox's SUB, then
            // the event, as a PUB.
            let mut decoder = Decoder::new(1 << 20);
            let mut kinds = Vec::new();
            let mut buffer = AlignedVec::<16>::with_capacity(4096);
            buffer.resize(4096, 0);
            while !kinds.contains(&Kind::Pub) && !kinds.contains(&Kind::PackedPub) {
                let n = socket.read(&mut buffer).unwrap();
                assert!(n > 0, "the client closed early");
                decoder
                    .feed::<()>(&buffer[..n], |frame| {
                        kinds.push(frame.header.kind);
                        Ok(())
                    })
                    .unwrap();
            }
            return (versions, kinds);
        }
    });
    let client = Client::connect(&url).unwrap();
    client.publish("a.b", b"small").unwrap();
    let (versions, kinds) = old_node.join().unwrap();
    assert_eq!(versions, [4, 3]);
    assert_eq!(kinds.last(), Some(&Kind::Pub), "{kinds:?}");
    client.close();
}
