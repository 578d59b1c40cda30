use super::*;
use crate::frame::control::Hello;
use proptest::prelude::*;

fn session(bus: &Bus) -> Session {
    let config = Arc::new(SessionConfig {
        outbox_entries: 64,
        subscriptions_max: 8,
        ..SessionConfig::default()
    });
    Session::new(
        bus,
        config,
        None,
        Arc::new(ConnectionStats::default()),
        Arc::new(Budget::new(1 << 20)),
        Arc::new(Budget::new(1 << 20)),
    )
}

fn frame(kind: u8, tag: u64, body: &[u8]) -> Vec<u8> {
    let mut bytes = Header::new(Kind::Ping, tag, body.len()).encode().to_vec();
    bytes[4] = kind;
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(&PADDING[..padded(body.len()) - body.len()]);
    bytes
}

fn hello() -> Vec<u8> {
    frame(Kind::Hello as u8, 0, &Hello::ours("test", "").encode())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random well-framed input of every kind, with random bodies, after
    /// a valid handshake or not: the session never panics, its outbox
    /// stays within bounds, and once closing it ignores everything.
    #[test]
    fn random_frames_never_panic(
        handshake in any::<bool>(),
        frames in prop::collection::vec((0u8..12, 0u64..4, prop::collection::vec(any::<u8>(), 0..120)), 0..40),
    ) {
        let bus = Bus::default();
        let mut publisher = bus.publisher();
        let mut session = session(&bus);
        if handshake {
            session.receive(&aligned(&hello()), &mut publisher);
            prop_assert!(!session.closing());
        }
        for (kind, tag, body) in frames {
            session.receive(&aligned(&frame(kind, tag, &body)), &mut publisher);
            let mut slices = 0;
            session.outbox().for_each_slice(|_| { slices += 1; true });
            prop_assert!(slices <= 3 * 64);
        }
    }
}

fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
    let mut buffer = rkyv::util::AlignedVec::<16>::new();
    buffer.extend_from_slice(bytes);
    buffer
}

#[test]
fn a_client_cannot_speak_for_a_peer_node() {
    let bus = Bus::default();
    let mut publisher = bus.publisher();
    let mut session = session(&bus);
    session.receive(&aligned(&hello()), &mut publisher);
    assert!(!session.closing());
    session.receive(
        &aligned(&frame(Kind::Forward as u8, 1, &[0; 32])),
        &mut publisher,
    );
    assert!(
        session.closing(),
        "a FORWARD frame from a client is a protocol error"
    );
}

#[test]
fn subscriptions_are_limited_per_connection() {
    let bus = Bus::default();
    let mut publisher = bus.publisher();
    let mut session = session(&bus);
    session.receive(&aligned(&hello()), &mut publisher);
    for sid in 0..10u64 {
        let body = Subscribe {
            pattern: format!("s.{sid}"),
            queue_group: None,
            policy: Default::default(),
        }
        .encode();
        session.receive(
            &aligned(&frame(Kind::Sub as u8, sid, &body)),
            &mut publisher,
        );
    }
    assert_eq!(bus.subscriptions().len(), 8, "the limit is 8");
    assert!(!session.closing(), "going over the limit is not fatal");
}

/// Writes everything the session's outbox holds, as a socket taking it all.
fn write_all(session: &mut Session) {
    let mut bytes = 0;
    session.outbox().for_each_slice(|slice| {
        bytes += slice.len();
        true
    });
    session.sent(bytes);
}

#[test]
fn a_connection_without_subscriptions_keeps_no_outbox_once_answered() {
    let bus = Bus::default();
    let mut publisher = bus.publisher();
    let mut session = session(&bus);
    session.receive(&aligned(&hello()), &mut publisher);
    assert!(session.outbox().capacity() >= 64, "room for its HELLO");
    write_all(&mut session);
    assert_eq!(
        session.outbox().capacity(),
        0,
        "an idle client that never subscribed holds no outbox"
    );
    let body = Subscribe::new("a", None).encode();
    session.receive(&aligned(&frame(Kind::Sub as u8, 1, &body)), &mut publisher);
    write_all(&mut session);
    assert!(
        session.outbox().capacity() >= 64,
        "a subscriber keeps room for its deliveries until it goes quiet"
    );
}
