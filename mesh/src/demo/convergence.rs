//! How long a new subscription takes to become effective across the mesh,
//! measured end to end: from the moment it is made on one node to the first
//! event from each other node delivered to it. Interest reaches the other
//! nodes asynchronously (eventual consistency); before it does, their events
//! for the pattern are not forwarded, so the first delivery from a node marks
//! the moment that node knew.

use std::time::{Duration, Instant};

use starling_core::{Bus, PublishError, SubscribeError, Subscription};

/// How often each publishing node sends a probe while waiting, and how often
/// the subscription is checked: the measurement's resolution. The measuring
/// thread sleeps in between rather than spinning, so that it does not take
/// CPU from the mesh threads whose work is being timed.
pub const PROBE_INTERVAL: Duration = Duration::from_micros(50);

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvergenceError {
    /// The subscription could not be made.
    #[error("subscribing: {0}")]
    Subscribe(#[from] SubscribeError),
    /// A probe could not be published.
    #[error("publishing a probe: {0}")]
    Publish(#[from] PublishError),
    /// Some node's probes never arrived.
    #[error("no probe from {0} arrived within {1:?}")]
    Timeout(String, Duration),
}

/// A node that publishes probes.
#[derive(Debug, Clone, Copy)]
pub struct Prober<'a> {
    /// Its name, for reports.
    pub name: &'a str,
    /// Its bus.
    pub bus: &'a Bus,
}

/// Subscribes to `prefix.>` on `subscriber`, then has every prober publish
/// `prefix.<index>` every [`PROBE_INTERVAL`] until one of its probes is
/// delivered. Returns the subscription (still live) and, per prober, the
/// time from subscribing to its first delivered probe.
pub fn measure(
    subscriber: &Bus,
    prefix: &str,
    probers: &[Prober<'_>],
    timeout: Duration,
) -> Result<(Subscription, Vec<Duration>), ConvergenceError> {
    let subjects: Vec<String> = (0..probers.len())
        .map(|index| format!("{prefix}.{index}"))
        .collect();
    let subscribed = Instant::now();
    let subscription = subscriber.subscribe(&format!("{prefix}.>"))?;
    let mut arrived: Vec<Option<Duration>> = vec![None; probers.len()];
    let mut next_probe = subscribed;
    while arrived.iter().any(Option::is_none) {
        let now = Instant::now();
        if now >= next_probe {
            for ((prober, subject), arrival) in probers.iter().zip(&subjects).zip(&arrived) {
                if arrival.is_none() {
                    prober.bus.publish(subject, b"probe")?;
                }
            }
            next_probe = now + PROBE_INTERVAL;
        }
        while let Some(event) = subscription.try_recv() {
            let index = subjects
                .iter()
                .position(|subject| subject == event.subject());
            if let Some(arrival) = index.and_then(|index| arrived.get_mut(index)) {
                arrival.get_or_insert_with(|| subscribed.elapsed());
            }
        }
        if subscribed.elapsed() > timeout {
            let missing = probers
                .iter()
                .zip(&arrived)
                .find(|(_, arrival)| arrival.is_none())
                .map_or_else(String::new, |(prober, _)| prober.name.to_owned());
            return Err(ConvergenceError::Timeout(missing, timeout));
        }
        std::thread::sleep(next_probe.saturating_duration_since(Instant::now()));
    }
    Ok((subscription, arrived.into_iter().flatten().collect()))
}
