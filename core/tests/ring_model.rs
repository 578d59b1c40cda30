//! The logs and delivery rings against a `VecDeque` model.
//!
//! - A property test runs random publishes, receives, out-of-order releases of
//!   held events and policy changes against a model queue: every received
//!   event must be the one the model predicts, every held event must stay
//!   intact while segments are recycled under it, and the drop counts must be
//!   exact.
//! - A multi-threaded stress test runs several publishers and subscribers with
//!   tiny segments (so segments recycle constantly) and checks payload
//!   integrity, per-publisher order, and that received + dropped equals
//!   published for every subscriber.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use starling_core::{Bus, BusConfig, EventRef, SlowConsumerPolicy, SubscribeOptions};

/// Payload for event number `n`: its length and bytes both depend on `n`, so
/// a record overwritten by another shows up as a mismatch.
fn payload(n: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (n as usize * 31 + i) as u8).collect()
}

#[derive(Debug, Clone)]
enum Op {
    Publish { len: usize },
    Receive { hold: bool },
    ReleaseHeld { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..600).prop_map(|len| Op::Publish { len }),
        3 => any::<bool>().prop_map(|hold| Op::Receive { hold }),
        1 => any::<usize>().prop_map(|pick| Op::ReleaseHeld { pick }),
    ]
}

fn policy() -> impl Strategy<Value = SlowConsumerPolicy> {
    prop_oneof![
        Just(SlowConsumerPolicy::DropNewest),
        Just(SlowConsumerPolicy::DropOldest)
    ]
}

fn small_bus() -> Bus {
    Bus::new(BusConfig {
        segment_bytes: 4096,
        memory_bytes_max: 64 << 20,
        ..BusConfig::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn delivery_matches_a_vecdeque_model(
        capacity in 1usize..8,
        policy in policy(),
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let bus = small_bus();
        let sub = bus.subscribe_with("m", None, SubscribeOptions { capacity, policy, ..SubscribeOptions::default() }).unwrap();
        let mut publisher = bus.publisher();
        let mut model: VecDeque<(u64, usize)> = VecDeque::new();
        let mut dropped = 0u64;
        let mut held: Vec<(EventRef, u64, usize)> = Vec::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Publish { len } => {
                    publisher.publish("m", &payload(next, len)).unwrap();
                    if model.len() == capacity {
                        dropped += 1;
                        match policy {
                            SlowConsumerPolicy::DropNewest => {}
                            _ => {
                                model.pop_front();
                                model.push_back((next, len));
                            }
                        }
                    } else {
                        model.push_back((next, len));
                    }
                    next += 1;
                }
                Op::Receive { hold } => {
                    let got = sub.try_recv();
                    let want = model.pop_front();
                    prop_assert_eq!(got.is_some(), want.is_some());
                    if let (Some(event), Some((n, len))) = (got, want) {
                        prop_assert_eq!(event.payload(), &payload(n, len)[..]);
                        if hold {
                            held.push((event, n, len));
                        }
                    }
                }
                Op::ReleaseHeld { pick } => {
                    if !held.is_empty() {
                        held.swap_remove(pick % held.len());
                    }
                }
            }
            for (event, n, len) in &held {
                prop_assert_eq!(event.payload(), &payload(*n, *len)[..], "a held event changed under us");
            }
            prop_assert_eq!(sub.dropped(), dropped);
            prop_assert_eq!(sub.pending(), model.len());
        }
        drop(held);
        while sub.try_recv().is_some() {}
        let memory = bus.stats().memory;
        prop_assert!(memory.segments_free * (4096 + 128) <= memory.bytes_allocated);
    }
}

#[test]
fn many_publishers_and_subscribers_account_for_every_event() {
    const PUBLISHERS: u64 = 3;
    const PER_PUBLISHER: u64 = if cfg!(debug_assertions) {
        30_000
    } else {
        200_000
    };
    let bus = small_bus();
    let policies = [
        SlowConsumerPolicy::DropNewest,
        SlowConsumerPolicy::DropOldest,
        SlowConsumerPolicy::Block {
            max_stall: Duration::from_secs(30),
        },
    ];
    let subscribers: Vec<_> = policies
        .iter()
        .map(|&policy| {
            let sub = bus
                .subscribe_with(
                    "s.>",
                    None,
                    SubscribeOptions {
                        capacity: 64,
                        policy,
                        ..SubscribeOptions::default()
                    },
                )
                .unwrap();
            std::thread::spawn(move || {
                let mut last = [None::<u64>; PUBLISHERS as usize];
                let mut received = 0u64;
                // Every event is either received or counted as dropped when
                // published: take them until all are accounted for.
                let deadline = Instant::now() + Duration::from_secs(60);
                while received + sub.dropped() < PUBLISHERS * PER_PUBLISHER {
                    let Ok(event) = sub.recv_timeout(Duration::from_millis(10)) else {
                        assert!(Instant::now() < deadline, "{policy:?}: every event in time");
                        continue;
                    };
                    let who = event.payload()[0] as usize;
                    let seq = u64::from_le_bytes(event.payload()[1..9].try_into().unwrap());
                    assert_eq!(
                        &event.payload()[9..],
                        &payload(seq, event.payload().len() - 9)[..]
                    );
                    assert!(
                        last[who].is_none_or(|prev| prev < seq),
                        "publisher {who} out of order"
                    );
                    last[who] = Some(seq);
                    received += 1;
                }
                (policy, received, sub.dropped())
            })
        })
        .collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|who| {
            let mut publisher = bus.publisher();
            std::thread::spawn(move || {
                for seq in 0..PER_PUBLISHER {
                    let mut bytes = vec![who as u8];
                    bytes.extend_from_slice(&seq.to_le_bytes());
                    bytes.extend_from_slice(&payload(seq, (seq % 200) as usize));
                    publisher.publish("s.x", &bytes).unwrap();
                }
            })
        })
        .collect();
    publishers.into_iter().for_each(|p| p.join().unwrap());
    for subscriber in subscribers {
        let (policy, received, dropped) = subscriber.join().unwrap();
        assert_eq!(
            received + dropped,
            PUBLISHERS * PER_PUBLISHER,
            "{policy:?}: every event received or counted"
        );
        if matches!(policy, SlowConsumerPolicy::Block { .. }) {
            assert_eq!(dropped, 0, "block never drops within its timeout");
        }
    }
}
