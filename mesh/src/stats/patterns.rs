//! Each subscription's figures, and what they add up to per subject pattern
//! and queue group (the figures are defined in the `stats` module docs).

use std::collections::{BTreeMap, HashMap};

use starling_core::{SlowConsumerPolicy, SubscriptionInfo};
use starling_transport::server::ConnectionInfo;

use super::views::{PatternView, SubscriptionView};

pub(super) fn subscription_views(
    bus: &[SubscriptionInfo],
    connections: &[ConnectionInfo],
) -> Vec<SubscriptionView> {
    // Which mailbox is which connection's, and what each of its
    // subscriptions got.
    let mut by_mailbox: HashMap<u64, (u64, HashMap<u64, u64>)> = HashMap::new();
    for connection in connections {
        let delivered = connection
            .delivered
            .iter()
            .map(|d| (d.sid, d.delivered))
            .collect();
        by_mailbox.insert(connection.mailbox, (connection.id, delivered));
    }
    bus.iter()
        .map(|s| {
            let (connection, delivered, pending) = match by_mailbox.get(&s.queue.id) {
                Some((id, delivered)) => {
                    (Some(*id), delivered.get(&s.tag).copied().unwrap_or(0), 0)
                }
                None => (None, s.queue.received, s.queue.pending as u64),
            };
            SubscriptionView {
                id: s.id,
                pattern: s.pattern.clone(),
                queue_group: s.queue_group.clone(),
                connection,
                delivered,
                dropped: s.dropped,
                pending,
                policy: s.policy.name(),
                max_stall_ms: match s.policy {
                    SlowConsumerPolicy::Block { max_stall } => Some(max_stall.as_millis() as u64),
                    SlowConsumerPolicy::DropNewest | SlowConsumerPolicy::DropOldest => None,
                },
                demoted: s.queue.demoted,
                demotions: s.queue.demotions,
            }
        })
        .collect()
}

pub(super) fn patterns(subscriptions: &[SubscriptionView]) -> Vec<PatternView> {
    let mut by_key: BTreeMap<(String, Option<String>), PatternView> = BTreeMap::new();
    for s in subscriptions {
        let entry = by_key
            .entry((s.pattern.clone(), s.queue_group.clone()))
            .or_insert_with(|| PatternView {
                pattern: s.pattern.clone(),
                queue_group: s.queue_group.clone(),
                ..PatternView::default()
            });
        let offered = s.delivered + s.dropped + s.pending;
        entry.subscriptions += 1;
        entry.delivered += s.delivered;
        entry.dropped += s.dropped;
        entry.pending += s.pending;
        entry.demotions += s.demotions;
        entry.published = if s.queue_group.is_some() {
            entry.published + offered
        } else {
            entry.published.max(offered)
        };
    }
    by_key.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(
        pattern: &str,
        group: Option<&str>,
        delivered: u64,
        dropped: u64,
        pending: u64,
    ) -> SubscriptionView {
        SubscriptionView {
            id: 0,
            pattern: pattern.into(),
            queue_group: group.map(Into::into),
            connection: None,
            delivered,
            dropped,
            pending,
            policy: "block",
            max_stall_ms: Some(2000),
            demoted: false,
            demotions: 0,
        }
    }

    #[test]
    fn patterns_sum_groups_and_take_the_widest_plain_subscription() {
        let subs = [
            view("orders.>", None, 10, 2, 0),
            view("orders.>", None, 5, 0, 1),
            view("orders.>", Some("workers"), 4, 0, 0),
            view("orders.>", Some("workers"), 3, 1, 0),
        ];
        let patterns = patterns(&subs);
        assert_eq!(patterns.len(), 2);
        let plain = &patterns[0];
        assert_eq!(
            (
                plain.subscriptions,
                plain.published,
                plain.delivered,
                plain.dropped
            ),
            (2, 12, 15, 2)
        );
        let group = &patterns[1];
        assert_eq!(
            (
                group.subscriptions,
                group.published,
                group.delivered,
                group.dropped
            ),
            (2, 8, 7, 1)
        );
    }
}
