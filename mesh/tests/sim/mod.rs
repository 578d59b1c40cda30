//! What the deterministic simulators share: which seeds a run uses, the
//! datagram network they simulate, and the interest a node must advertise.

#![allow(dead_code)] // Each simulator uses its own part of this.

use std::time::Duration;

use starling_core::subject::pattern_covers;
use starling_mesh::cluster::interest::{Interest, InterestKey};

/// The seeds to run: `STARLING_SIM_SEED` alone if set (to replay a failure
/// exactly), else `STARLING_SIM_SEEDS` (or `default_count`) seeds that differ
/// on every run, so that runs together find more; a failure prints its own.
pub fn seeds(default_count: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("STARLING_SIM_SEED") {
        return vec![seed.parse().expect("STARLING_SIM_SEED is a u64")];
    }
    let count: u64 = std::env::var("STARLING_SIM_SEEDS").map_or(default_count, |n| {
        n.parse().expect("STARLING_SIM_SEEDS is a count")
    });
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    (0..count)
        .map(|k| start.wrapping_add(k.wrapping_mul(7919)))
        .collect()
}

/// Whether `STARLING_SIM_SOAK=1` asks for the long runs.
pub fn soak() -> bool {
    std::env::var("STARLING_SIM_SOAK").is_ok_and(|value| value == "1")
}

/// How the simulated network carries datagrams.
#[derive(Debug, Clone, Copy)]
pub struct Network {
    /// Chance that a datagram is lost.
    pub loss: f64,
    /// Least one-way delay.
    pub delay_min: Duration,
    /// Most one-way delay; datagrams overtake each other within the spread.
    pub delay_max: Duration,
}

/// A LAN on a good day.
pub const CALM: Network = Network {
    loss: 0.0,
    delay_min: Duration::from_micros(200),
    delay_max: Duration::from_millis(2),
};

/// A bad day: one datagram in ten lost, delays up to 40 ms.
pub const LOSSY: Network = Network {
    loss: 0.10,
    delay_min: Duration::from_micros(200),
    delay_max: Duration::from_millis(40),
};

/// What a node whose local subscriptions are `subscriptions` advertises:
/// each distinct key once, less the plain patterns another plain pattern
/// covers (wildcard aggregation; queue groups are never folded).
pub fn advertised(subscriptions: &[InterestKey]) -> Vec<InterestKey> {
    let mut keys: Vec<InterestKey> = subscriptions.to_vec();
    keys.sort();
    keys.dedup();
    let plain_cover = |general: &InterestKey, specific: &InterestKey| {
        general != specific
            && general.group.is_none()
            && specific.group.is_none()
            && pattern_covers(&general.pattern, &specific.pattern)
    };
    keys.iter()
        .filter(|key| !keys.iter().any(|other| plain_cover(other, key)))
        .cloned()
        .collect()
}

/// The keys an interest machine advertises now, in order.
pub fn local_keys(interest: &Interest) -> Vec<InterestKey> {
    interest
        .local_entries()
        .into_iter()
        .map(|(_, key)| key)
        .collect()
}
