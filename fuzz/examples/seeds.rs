//! Writes the seed inputs of every fuzz target into `corpus/<target>/`,
//! made by the encoders themselves, as the randomized tests make their
//! valid inputs (`transport/tests/frame_fuzz.rs`, the `wire.rs` unit
//! tests): well-formed inputs take libFuzzer past the first length and kind
//! checks at once. Deterministic, so rewriting them changes nothing:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use starling_core::{Event, SlowConsumerPolicy};
use starling_fuzz::{SWIM_ADVERTISE, SwimRecord, swim_node};
use starling_mesh::cluster::interest::{Change, InterestKey, InterestMessage};
use starling_mesh::cluster::membership::{Identity, Membership, MembershipConfig, Output};
use starling_mesh::cluster::wire::{self, Control, MESH_PROTOCOL_VERSION};
use starling_transport::frame::control::{ErrorBody, Hello, Subscribe};
use starling_transport::frame::packed::{self, Record};
use starling_transport::frame::{ErrorCode, Header, Kind, PADDING, padded};

/// A seed input: its name, and its bytes.
type Seed = (&'static str, Vec<u8>);

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let seeds: [(&str, Vec<Seed>); 8] = [
        ("frames", frames()),
        ("packed", packed_bodies()),
        ("control_bodies", control_bodies()),
        (
            "event",
            events()
                .into_iter()
                .map(|(n, e)| (n, e.to_archive().to_vec()))
                .collect(),
        ),
        (
            "event_layout",
            events()
                .into_iter()
                .chain(layout_events())
                .map(|(n, e)| (n, e.to_archive().to_vec()))
                .collect(),
        ),
        ("mesh_control", mesh_control()),
        ("forward", forward()),
        ("swim", swim()),
    ];
    for (target, inputs) in seeds {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in inputs {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
    }
    Ok(())
}

fn events() -> Vec<(&'static str, Event)> {
    let plain = Event {
        id: 1,
        time_unix_nanos: 2,
        subject: "orders.eu.created".into(),
        reply_to: None,
        headers: vec![],
        payload: b"x".to_vec(),
    };
    let full = Event {
        id: u128::MAX,
        time_unix_nanos: u64::MAX,
        subject: "a.b".into(),
        reply_to: Some("_INBOX.00ff.1".into()),
        headers: vec![
            ("ce-type".into(), b"order.created".to_vec()),
            ("ce-source".into(), vec![0; 40]),
        ],
        payload: vec![7; 100],
    };
    vec![("plain", plain), ("full", full)]
}

/// More shapes for the layout check: strings inline and out of line
/// (8 and 9 bytes), padding before the header array, empty values.
fn layout_events() -> Vec<(&'static str, Event)> {
    let inline = Event {
        subject: "orders.1".into(),
        reply_to: Some("r".into()),
        ..Event::default()
    };
    let padded = Event {
        subject: "orders.eu".into(),
        reply_to: Some("_INBOX.x.1".into()),
        headers: vec![
            ("h".into(), vec![]),
            ("a-long-header-name".into(), vec![1; 9]),
        ],
        payload: vec![3; 3],
        ..Event::default()
    };
    vec![("inline", inline), ("padded", padded)]
}

fn frame(kind: Kind, tag: u64, body: &[u8]) -> Vec<u8> {
    let mut bytes = Header::new(kind, tag, body.len()).encode().to_vec();
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(&PADDING[..padded(body.len()) - body.len()]);
    bytes
}

/// `PACKED_PUB` bodies, each after its frame's tag: one record, and several
/// with reply subjects, out-of-line strings and large id and time steps.
fn packed_bodies() -> Vec<Seed> {
    let one = [Record {
        id: (0xC0FFEE << 64) | 1,
        time_unix_nanos: 1_765_000_000_000_000_000,
        subject: b"bench.pubsub",
        reply_to: None,
        payload: &[0xAB; 16],
    }];
    let several = [
        one[0],
        Record {
            id: 7,
            time_unix_nanos: 3,
            reply_to: Some(b"_INBOX.0123456789abcdef.9"),
            ..one[0]
        },
        Record {
            id: u128::MAX,
            subject: b"a",
            payload: &[],
            ..one[0]
        },
    ];
    [("one", &one[..]), ("several", &several[..])]
        .into_iter()
        .map(|(name, records)| {
            let mut frame = rkyv::util::AlignedVec::<16>::new();
            packed::push_frame(&mut frame, records);
            let length = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
            let mut input = frame[8..16].to_vec();
            input.extend_from_slice(&frame[16..16 + length]);
            (name, input)
        })
        .collect()
}

/// Hello, Subscribe, Error and event bodies, one of each kind.
fn control_bodies() -> Vec<Seed> {
    vec![
        ("hello", Hello::ours("client-1", "secret").encode()),
        (
            "subscribe-group",
            Subscribe::new("orders.>", Some("workers")).encode(),
        ),
        (
            "subscribe-drop",
            Subscribe {
                policy: SlowConsumerPolicy::DropOldest,
                ..Subscribe::new("a.*", None)
            }
            .encode(),
        ),
        (
            "error",
            ErrorBody::new(ErrorCode::NoResponders, "nobody").encode(),
        ),
    ]
}

/// Streams of every kind of frame; the first two bytes are the target's
/// chunking parameters.
fn frames() -> Vec<Seed> {
    let mut session = vec![3, 41];
    session.extend(frame(Kind::Hello, 0, &Hello::ours("c", "").encode()));
    session.extend(frame(Kind::Sub, 1, &control_bodies()[1].1));
    for (_, event) in events() {
        session.extend(frame(Kind::Pub, 0, &event.to_archive()));
        session.extend(frame(Kind::Msg, 1, &event.to_archive()));
    }
    session.extend(frame(Kind::Ping, 9, b""));
    session.extend(frame(Kind::Pong, 9, b""));
    session.extend(frame(Kind::Unsub, 1, b""));
    session.extend(frame(Kind::Ok, 1, b""));
    session.extend(frame(Kind::Err, 2, &control_bodies()[3].1));
    let mut too_large = vec![0, 1];
    too_large.extend(Header::new(Kind::Pub, 0, 1 << 20).encode());
    vec![("session", session), ("too-large", too_large)]
}

fn hello() -> wire::Hello {
    wire::Hello {
        protocol: MESH_PROTOCOL_VERSION,
        fingerprint: starling_core::event::format_fingerprint(),
        node_id: 2,
        cluster: "fuzz".into(),
        name: "n2".into(),
        advertise: "10.0.0.2:7401".into(),
        inbox_prefix: "_INBOX.02.".into(),
    }
}

/// A link's control stream: HELLO, then interest of every kind; and a
/// refusal on its own.
fn mesh_control() -> Vec<Seed> {
    let key = |pattern: &str, group: Option<&str>| InterestKey {
        pattern: pattern.into(),
        group: group.map(Into::into),
    };
    let mut link = Vec::new();
    for message in [
        Control::Hello(hello()),
        Control::Interest(InterestMessage::Snapshot {
            epoch: 1,
            version: 2,
            entries: vec![
                (1, key("orders.>", None)),
                (2, key("jobs.*", Some("workers"))),
            ],
        }),
        Control::Interest(InterestMessage::Delta {
            epoch: 1,
            version: 3,
            change: Change::Add {
                id: 3,
                key: key("a.b", None),
            },
        }),
        Control::Interest(InterestMessage::Delta {
            epoch: 1,
            version: 4,
            change: Change::Remove { id: 1 },
        }),
        Control::Interest(InterestMessage::Digest {
            epoch: 1,
            version: 4,
            hash: 0xfeed,
        }),
        Control::Interest(InterestMessage::SnapshotRequest),
    ] {
        message.encode(&mut link);
    }
    let mut refuse = Vec::new();
    Control::Refuse("cluster 'x' is not ours ('y')".into()).encode(&mut refuse);
    vec![("link", link), ("refuse", refuse)]
}

/// FORWARD frames for plain subscribers, for groups, and for both.
fn forward() -> Vec<Seed> {
    let mut stream = Vec::new();
    for (plain, groups) in [
        (true, &[][..]),
        (false, &["billing"][..]),
        (true, &["a", "couriers"][..]),
    ] {
        for (_, event) in events() {
            wire::encode_forward(&mut stream, plain, groups, &event.to_archive());
        }
    }
    vec![("stream", stream)]
}

/// A live exchange recorded from the side of the target's node: a second
/// and a third node form a cluster, the target's node joins it through the
/// second (and so gets its view); they probe and gossip; the third leaves. Every datagram addressed to the target's
/// node is a record, with the time since the one before.
fn swim() -> Vec<Seed> {
    const STEP: Duration = Duration::from_millis(10);
    let start = Instant::now();
    let peer = |id: u64, seed: u64| {
        let advertise = format!("10.0.0.{id}:7401");
        let identity = Identity::new(id, &advertise, id * 1_000).expect("a valid address");
        (
            advertise,
            Membership::new(identity, MembershipConfig::lan(), seed, start),
        )
    };
    let mut nodes: BTreeMap<String, Membership> = BTreeMap::from([
        (SWIM_ADVERTISE.to_owned(), swim_node(start)),
        peer(2, 8),
        peer(3, 9),
    ]);
    let node = |nodes: &mut BTreeMap<String, Membership>, advertise: &str| {
        nodes.remove(advertise).expect("a node of the exchange")
    };
    let mut third = node(&mut nodes, "10.0.0.3:7401");
    third.join("10.0.0.2:7401", start).expect("a valid address");
    nodes.insert("10.0.0.3:7401".into(), third);

    let mut records = Vec::new();
    let mut kinds: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let mut last = start;
    let mut now = start;
    for step in 0..1_000 {
        now += STEP;
        if step == 100 {
            let mut first = node(&mut nodes, SWIM_ADVERTISE);
            first.join("10.0.0.2:7401", now).expect("a valid address");
            nodes.insert(SWIM_ADVERTISE.into(), first);
        }
        if step == 700 {
            nodes
                .get_mut("10.0.0.3:7401")
                .expect("the third node")
                .leave(now)
                .expect("leaving works");
        }
        let mut sent = Vec::new();
        for member in nodes.values_mut() {
            if member
                .poll_timeout()
                .is_some_and(|deadline| deadline <= now)
            {
                member.handle_timeout(now).expect("timers run");
            }
            while let Some(output) = member.poll_output() {
                if let Output::Send { to, packet } = output {
                    sent.push((to.advertise().to_owned(), packet));
                }
            }
        }
        for (to, packet) in sent {
            if to == SWIM_ADVERTISE {
                SwimRecord {
                    delay: now - last,
                    packet: &packet,
                }
                .write(&mut records);
                last = now;
                kinds.entry(packet[0]).or_insert_with(|| {
                    let mut single = Vec::new();
                    SwimRecord {
                        delay: Duration::ZERO,
                        packet: &packet,
                    }
                    .write(&mut single);
                    single
                });
            }
            if let Some(receiver) = nodes.get_mut(&to) {
                let _ = receiver.handle_packet(&packet, now);
            }
        }
    }
    let mut seeds = vec![("exchange", records)];
    seeds.extend(kinds.into_iter().map(|(kind, single)| {
        let name: &'static str = match kind {
            0x53 => "swim",
            0x51 => "state-request",
            0x56 => "state",
            0x44 => "digest",
            0x4C => "departure",
            _ => "other",
        };
        (name, single)
    }));
    seeds
}
