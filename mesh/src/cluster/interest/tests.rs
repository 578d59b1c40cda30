//! Unit tests: one node's interest, and what it says to its peers.

use super::*;

fn key(pattern: &str) -> InterestKey {
    InterestKey {
        pattern: pattern.into(),
        group: None,
    }
}

fn drain(node: &mut Interest) -> Vec<Output> {
    std::iter::from_fn(|| node.poll_output()).collect()
}

#[test]
fn only_the_first_and_last_subscription_of_a_key_travel() {
    let now = Instant::now();
    let mut a = Interest::new(1, InterestConfig::default(), now);
    a.link_up(2);
    drain(&mut a);
    a.local_added(key("orders.>"));
    a.local_added(key("orders.>"));
    a.local_removed(&key("orders.>"));
    let out = drain(&mut a);
    assert_eq!(out.len(), 1, "{out:?}");
    a.local_removed(&key("orders.>"));
    assert!(matches!(
        &drain(&mut a)[..],
        [Output::Send {
            message: InterestMessage::Delta {
                change: Change::Remove { .. },
                ..
            },
            ..
        }]
    ));
}

/// The changes a node sent, in order, as (added?, pattern) with ids
/// resolved.
fn sent_changes(node: &mut Interest, ids: &mut BTreeMap<u64, String>) -> Vec<(bool, String)> {
    drain(node)
        .into_iter()
        .filter_map(|output| match output {
            Output::Send {
                message: InterestMessage::Delta { change, .. },
                ..
            } => Some(change),
            _ => None,
        })
        .map(|change| match change {
            Change::Add { id, key } => {
                ids.insert(id, key.pattern.clone());
                (true, key.pattern)
            }
            Change::Remove { id } => (false, ids[&id].clone()),
        })
        .collect()
}

#[test]
fn a_covered_plain_pattern_is_not_advertised_until_its_cover_goes() {
    let now = Instant::now();
    let mut a = Interest::new(1, InterestConfig::default(), now);
    a.link_up(2);
    drain(&mut a);
    let mut ids = BTreeMap::new();
    let change = |added: bool, pattern: &str| (added, pattern.to_owned());
    a.local_added(key("orders.eu.*"));
    a.local_added(key("orders.>"));
    assert_eq!(
        sent_changes(&mut a, &mut ids),
        [
            change(true, "orders.eu.*"),
            change(true, "orders.>"),
            change(false, "orders.eu.*")
        ],
        "the cover goes out before what it covers is withdrawn"
    );
    a.local_added(key("orders.*.created"));
    a.local_added(key("orders.eu.*"));
    let grouped = InterestKey {
        pattern: "orders.eu.*".into(),
        group: Some("billing".into()),
    };
    a.local_added(grouped.clone());
    assert_eq!(
        sent_changes(&mut a, &mut ids),
        [change(true, "orders.eu.*")],
        "only the queue group travels: groups are never aggregated"
    );
    a.local_removed(&key("orders.>"));
    let mut uncovered = sent_changes(&mut a, &mut ids);
    assert_eq!(uncovered.pop(), Some(change(false, "orders.>")));
    uncovered.sort();
    assert_eq!(
        uncovered,
        [
            change(true, "orders.*.created"),
            change(true, "orders.eu.*")
        ]
    );
    let mut advertised: Vec<InterestKey> =
        a.local_entries().into_iter().map(|(_, key)| key).collect();
    advertised.sort();
    assert_eq!(
        advertised,
        [key("orders.*.created"), key("orders.eu.*"), grouped]
    );
}

#[test]
fn a_gap_asks_for_a_snapshot_instead_of_applying() {
    let now = Instant::now();
    let mut b = Interest::new(2, InterestConfig::default(), now);
    b.handle(
        1,
        InterestMessage::Snapshot {
            epoch: 9,
            version: 3,
            entries: vec![(1, key("a"))],
        },
    );
    assert!(matches!(
        &drain(&mut b)[..],
        [Output::Subscribe { peer: 1, id: 1, .. }]
    ));
    b.handle(
        1,
        InterestMessage::Delta {
            epoch: 9,
            version: 5,
            change: Change::Add {
                id: 2,
                key: key("b"),
            },
        },
    );
    assert_eq!(
        drain(&mut b),
        vec![Output::Send {
            to: 1,
            message: InterestMessage::SnapshotRequest
        }]
    );
    assert_eq!(
        b.remote_entries(1).len(),
        1,
        "the out-of-order delta was not applied"
    );
}

#[test]
fn a_snapshot_overtaken_by_deltas_is_ignored() {
    let now = Instant::now();
    let mut b = Interest::new(2, InterestConfig::default(), now);
    b.handle(
        1,
        InterestMessage::Snapshot {
            epoch: 9,
            version: 1,
            entries: vec![(1, key("a"))],
        },
    );
    b.handle(
        1,
        InterestMessage::Delta {
            epoch: 9,
            version: 2,
            change: Change::Add {
                id: 2,
                key: key("b"),
            },
        },
    );
    drain(&mut b);
    b.handle(
        1,
        InterestMessage::Snapshot {
            epoch: 9,
            version: 1,
            entries: vec![(1, key("a"))],
        },
    );
    assert!(drain(&mut b).is_empty());
    assert_eq!(b.remote_entries(1), vec![(1, key("a")), (2, key("b"))]);
}

#[test]
fn a_delta_from_a_new_epoch_asks_for_a_snapshot() {
    let now = Instant::now();
    let mut b = Interest::new(2, InterestConfig::default(), now);
    b.handle(
        1,
        InterestMessage::Snapshot {
            epoch: 9,
            version: 4,
            entries: vec![(1, key("a"))],
        },
    );
    drain(&mut b);
    // The peer restarted: its version 5 follows on numerically only.
    b.handle(
        1,
        InterestMessage::Delta {
            epoch: 10,
            version: 5,
            change: Change::Add {
                id: 1,
                key: key("z"),
            },
        },
    );
    assert_eq!(
        drain(&mut b),
        vec![Output::Send {
            to: 1,
            message: InterestMessage::SnapshotRequest
        }]
    );
    assert_eq!(b.remote_entries(1), vec![(1, key("a"))]);
}

#[test]
fn a_peer_down_too_long_is_withdrawn() {
    let now = Instant::now();
    let config = InterestConfig {
        withdraw_after: Duration::from_secs(3),
        ..InterestConfig::default()
    };
    let mut b = Interest::new(2, config, now);
    b.link_up(1);
    b.handle(
        1,
        InterestMessage::Snapshot {
            epoch: 9,
            version: 1,
            entries: vec![(1, key("a"))],
        },
    );
    drain(&mut b);
    b.link_down(1, now);
    b.handle_timeout(now + Duration::from_secs(2));
    assert!(drain(&mut b).is_empty(), "still within the grace period");
    b.handle_timeout(now + Duration::from_secs(3));
    assert_eq!(drain(&mut b), vec![Output::Unsubscribe { peer: 1, id: 1 }]);
}
