//! Delivery lanes under stress, against a simple model of what each
//! subscriber must see.
//!
//! More sources than a queue has lanes publish at once, and each source
//! comes and goes (a new `Publisher` per round, the old one dropped), so
//! lanes are claimed, given back, claimed again by other sources, and
//! sources without one use the ring and later switch to a freed lane. The
//! model: every source's events arrive in the order published, none twice;
//! a `block` subscriber gets every event, a `drop-newest` one gets or counts
//! every event.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use starling_core::{Bus, BusConfig, Message, SlowConsumerPolicy, SubscribeOptions};

/// Publishing threads: more than the 8 lanes of a queue.
const THREADS: u8 = 12;
/// Sources per thread, one after the other.
const ROUNDS: u8 = 4;
/// Events per source.
const PER_SOURCE: u32 = if cfg!(debug_assertions) {
    1_500
} else {
    10_000
};

/// What one subscriber saw of each source: the next sequence number
/// expected, and events received.
#[derive(Default)]
struct Seen {
    next: HashMap<(u8, u8), u32>,
    received: u64,
}

impl Seen {
    /// Checks one event against the model: from a known source, after the
    /// last one seen of that source (contiguous if `lossless`).
    fn event(&mut self, payload: &[u8], lossless: bool) {
        let source = (payload[0], payload[1]);
        let seq = u32::from_le_bytes(payload[2..6].try_into().unwrap());
        assert!(source.0 < THREADS && source.1 < ROUNDS, "a known source");
        assert_eq!(&payload[6..], &filler(seq)[..], "payload intact");
        let next = self.next.entry(source).or_default();
        if lossless {
            assert_eq!(seq, *next, "source {source:?}: every event, in order");
        } else {
            assert!(seq >= *next, "source {source:?}: in order, none twice");
        }
        *next = seq + 1;
        self.received += 1;
    }
}

fn filler(seq: u32) -> Vec<u8> {
    (0..seq % 40).map(|i| (seq + i) as u8).collect()
}

#[test]
fn more_sources_than_lanes_coming_and_going_keep_order_and_lose_nothing() {
    let total = u64::from(THREADS) * u64::from(ROUNDS) * u64::from(PER_SOURCE);
    let bus = Bus::new(BusConfig {
        segment_bytes: 4096,
        ..BusConfig::default()
    });
    let options = |policy| SubscribeOptions {
        capacity: 16,
        policy,
        ..SubscribeOptions::default()
    };
    let block = SlowConsumerPolicy::Block {
        max_stall: Duration::from_secs(60),
    };
    let subscribers: Vec<_> = [block, SlowConsumerPolicy::DropNewest]
        .into_iter()
        .map(|policy| {
            let sub = bus.subscribe_with("s.*", None, options(policy)).unwrap();
            let lossless = matches!(policy, SlowConsumerPolicy::Block { .. });
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let deadline = Instant::now() + Duration::from_secs(120);
                while seen.received + sub.dropped() < total {
                    assert!(Instant::now() < deadline, "{policy:?}: every event in time");
                    // Batches and single receives, as consumers mix them.
                    if seen.received % 3 == 0 {
                        let _ = sub.recv_timeout(Duration::from_millis(10)).map(|event| {
                            seen.event(event.payload(), lossless);
                        });
                    } else {
                        let _ = sub.recv_batch_timeout(7, Duration::from_millis(10), |event| {
                            seen.event(event.payload(), lossless)
                        });
                    }
                }
                (policy, seen, sub.dropped())
            })
        })
        .collect();
    let publishers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    // A new source each round; the last one's lanes go back.
                    let mut publisher = bus.publisher();
                    let subject = format!("s.{thread}");
                    let mut seq = 0;
                    let mut batches = 0u32;
                    while seq < PER_SOURCE {
                        // Some batches longer than a queue (16) and than
                        // a batch's chunk of one subject (64): a lane fills
                        // part way through a chunk.
                        let len = if batches.is_multiple_of(3) { 90 } else { 5 };
                        let payloads: Vec<Vec<u8>> = (seq..PER_SOURCE.min(seq + len))
                            .map(|seq| {
                                let mut bytes = vec![thread, round];
                                bytes.extend_from_slice(&seq.to_le_bytes());
                                bytes.extend_from_slice(&filler(seq));
                                bytes
                            })
                            .collect();
                        batches += 1;
                        if batches.is_multiple_of(2) {
                            let batch: Vec<_> = payloads
                                .iter()
                                .map(|bytes| Message::new(&subject, bytes))
                                .collect();
                            publisher.publish_batch(&batch).unwrap();
                        } else {
                            for bytes in &payloads {
                                publisher.publish(&subject, bytes).unwrap();
                            }
                        }
                        seq += payloads.len() as u32;
                    }
                }
            })
        })
        .collect();
    publishers.into_iter().for_each(|p| p.join().unwrap());
    for subscriber in subscribers {
        let (policy, seen, dropped) = subscriber.join().unwrap();
        assert_eq!(
            seen.received + dropped,
            total,
            "{policy:?}: every event received or counted"
        );
        if matches!(policy, SlowConsumerPolicy::Block { .. }) {
            assert_eq!(dropped, 0, "block never drops within its max_stall");
            assert_eq!(
                seen.next.len(),
                usize::from(THREADS) * usize::from(ROUNDS),
                "every source seen"
            );
        }
    }
}

/// A source that delivered through the ring (every lane taken) moves to a
/// lane freed later only once the consumer has taken what it put in the
/// ring: its events arrive in order whatever the consumer visits first.
#[test]
fn a_source_moving_from_the_ring_to_a_freed_lane_keeps_its_order() {
    const LANES: usize = 8;
    let bus = Bus::default();
    let sub = bus.subscribe("s").unwrap();
    let mut holders: Vec<_> = (0..LANES).map(|_| bus.publisher()).collect();
    for (who, holder) in holders.iter_mut().enumerate() {
        holder.publish("s", &[who as u8, 0]).unwrap();
    }
    let mut late = bus.publisher();
    for seq in 0..3 {
        late.publish("s", &[u8::MAX, seq]).unwrap();
    }
    // A lane comes free, its event still in it; the late source goes on.
    drop(holders.remove(0));
    for seq in 3..6 {
        late.publish("s", &[u8::MAX, seq]).unwrap();
    }
    // One at a time: each receive starts its look at the next lane (or the
    // ring), so some start at the freed lane before the ring.
    let mut late_seen = Vec::new();
    let mut others = 0;
    while let Some(event) = sub.try_recv() {
        match event.payload() {
            [u8::MAX, seq] => late_seen.push(*seq),
            _ => others += 1,
        }
    }
    assert_eq!(others, LANES);
    assert_eq!(late_seen, [0, 1, 2, 3, 4, 5], "in the order published");
}
