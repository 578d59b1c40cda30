//! Routing between local consumers and peer nodes' links (peer mailboxes):
//! once per peer for plain interest, one member mesh-wide per queue group with
//! local members first, and forwarded events stay local, as the sender chose.

use starling_core::bus::PLAIN_TAG;
use starling_core::event;
use starling_core::{Bus, Event, EventLimits, SubscribeOptions};

fn archive(subject: &str) -> rkyv::util::AlignedVec<16> {
    Event {
        subject: subject.into(),
        payload: b"x".to_vec(),
        ..Event::default()
    }
    .to_archive()
}

fn tags(mailbox: &starling_core::Mailbox) -> Vec<u64> {
    std::iter::from_fn(|| mailbox.try_recv().map(|e| e.tag())).collect()
}

#[test]
fn a_peer_gets_an_event_once_however_many_of_its_patterns_match() {
    let bus = Bus::default();
    let mut peer = bus.peer_mailbox(SubscribeOptions::default());
    peer.subscribe(1, "orders.>", None).unwrap();
    peer.subscribe(2, "orders.*.created", None).unwrap();
    let local = bus.subscribe("orders.>").unwrap();
    assert_eq!(
        bus.publish_message(&starling_core::Message::new("orders.eu.created", b""))
            .unwrap(),
        2
    );
    assert_eq!(tags(&peer), vec![PLAIN_TAG]);
    assert!(local.try_recv().is_some());
}

#[test]
fn queue_groups_prefer_local_members_and_fall_back_to_peers() {
    let bus = Bus::default();
    let mut peer = bus.peer_mailbox(SubscribeOptions::default());
    peer.subscribe(7, "jobs.>", Some("workers")).unwrap();
    for _ in 0..10 {
        bus.publish("jobs.a", b"").unwrap();
    }
    assert_eq!(
        tags(&peer),
        vec![7; 10],
        "no local member: the peer serves the group"
    );
    let local = bus
        .subscribe_with("jobs.>", Some("workers"), SubscribeOptions::default())
        .unwrap();
    for _ in 0..10 {
        bus.publish("jobs.a", b"").unwrap();
    }
    assert!(
        tags(&peer).is_empty(),
        "a local member with room comes first"
    );
    assert_eq!(std::iter::from_fn(|| local.try_recv()).count(), 10);
}

#[test]
fn forwarded_events_stay_local_and_go_where_the_sender_chose() {
    let bus = Bus::default();
    let mut peer = bus.peer_mailbox(SubscribeOptions::default());
    peer.subscribe(1, ">", None).unwrap();
    peer.subscribe(2, ">", Some("workers")).unwrap();
    let plain = bus.subscribe("orders.>").unwrap();
    let member = bus.queue_subscribe("orders.>", "workers").unwrap();
    let audit = bus.queue_subscribe("orders.>", "audit").unwrap();
    let mut publisher = bus.publisher();
    let bytes = archive("orders.eu");
    let checked = event::check(&bytes, &EventLimits::default()).unwrap();

    assert_eq!(
        publisher
            .publish_forwarded(checked, true, &["workers"])
            .unwrap(),
        2
    );
    assert!(plain.try_recv().is_some());
    assert!(member.try_recv().is_some());
    assert!(audit.try_recv().is_none(), "not a group the sender named");
    assert!(tags(&peer).is_empty(), "one hop: never back out to a peer");

    assert_eq!(
        publisher
            .publish_forwarded(checked, false, &["audit"])
            .unwrap(),
        1
    );
    assert!(plain.try_recv().is_none(), "plain not chosen");
    assert!(audit.try_recv().is_some());
    assert!(tags(&peer).is_empty());
}

#[test]
fn a_request_with_only_remote_interest_is_sent_not_refused() {
    let bus = Bus::default();
    let mut peer = bus.peer_mailbox(SubscribeOptions::default());
    peer.subscribe(1, "svc.remote", None).unwrap();
    let error = bus
        .request("svc.remote", b"", std::time::Duration::from_millis(50))
        .unwrap_err();
    assert_eq!(
        error,
        starling_core::RequestError::Timeout,
        "it went to the peer; nobody answered"
    );
    let request = peer.try_recv().unwrap();
    assert_eq!(request.tag(), PLAIN_TAG);
    assert!(request.reply_to().is_some());
}
