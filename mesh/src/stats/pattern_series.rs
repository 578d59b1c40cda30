//! The per-pattern series of `/metrics`: counters that never go down, in a
//! bounded number of series.
//!
//! A pattern's figures in `/v1/subscriptions` are sums over its current
//! subscriptions, so they fall when one of them ends, and Prometheus reads a
//! fall as a counter reset. Here each series instead adds up what its
//! subscriptions added between two scrapes (for `published`: what the widest
//! plain subscription saw, or a queue group's sum, as in the `stats` docs).
//! What a subscription added after the last scrape before it ended is not
//! counted, nor is one that came and went between two scrapes: the series
//! may undercount; they never overcount and never fall.
//!
//! The first `series_max` (pattern, queue group) pairs seen get series of
//! their own for the node's life; every later pair adds to one series whose
//! pattern is [`OTHER`]; request inboxes, a pattern per requester, share
//! one series, [`INBOXES`]. A client that subscribes to 50,000 patterns makes
//! `series_max + 1` series, not 50,000.

use std::collections::{BTreeMap, HashMap};

use starling_core::subject::INBOX_PREFIX;

use super::views::{PatternView, SubscriptionView};

/// The pattern label of the series that aggregates the pairs past the cap.
pub const OTHER: &str = "(other)";

/// The pattern label of the series of every request inbox.
pub const INBOXES: &str = "_INBOX.>";

/// (pattern, queue group).
type Key = (String, Option<String>);

/// The per-pattern series, kept from scrape to scrape.
#[derive(Debug)]
pub struct PatternSeries {
    series_max: usize,
    /// The last figures read of each subscription still alive.
    seen: HashMap<u64, Figures>,
    /// The series of their own, in first-seen order of their keys.
    own: BTreeMap<Key, PatternView>,
    /// The series of every pair past the cap; `None` until one came.
    other: Option<PatternView>,
}

/// What one subscription had been offered and what became of it.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    offered: u64,
    delivered: u64,
    dropped: u64,
    demotions: u64,
}

impl Figures {
    fn of(subscription: &SubscriptionView) -> Figures {
        Figures {
            offered: subscription.delivered + subscription.dropped + subscription.pending,
            delivered: subscription.delivered,
            dropped: subscription.dropped,
            demotions: subscription.demotions,
        }
    }

    /// What was added since `before` (a counter read twice never falls; a
    /// saturating difference keeps a series from falling if one ever did).
    fn since(self, before: Figures) -> Figures {
        Figures {
            offered: self.offered.saturating_sub(before.offered),
            delivered: self.delivered.saturating_sub(before.delivered),
            dropped: self.dropped.saturating_sub(before.dropped),
            demotions: self.demotions.saturating_sub(before.demotions),
        }
    }
}

impl PatternSeries {
    /// At most `series_max` pairs get series of their own.
    pub fn new(series_max: usize) -> PatternSeries {
        PatternSeries {
            series_max,
            seen: HashMap::new(),
            own: BTreeMap::new(),
            other: None,
        }
    }

    /// Folds in the current `subscriptions` and returns every series: the
    /// counters (`published`, `delivered`, `dropped`, `demotions`) with what
    /// was added since the last call, the gauges (`subscriptions`,
    /// `pending`) as they are now.
    pub fn update(&mut self, subscriptions: &[SubscriptionView]) -> Vec<PatternView> {
        for series in self.own.values_mut().chain(self.other.as_mut()) {
            series.subscriptions = 0;
            series.pending = 0;
        }
        // What the widest plain subscription of each series was offered
        // since the last call: every plain subscription of a pattern is
        // offered every event, so the widest saw all that was published.
        let mut widest: HashMap<Option<Key>, u64> = HashMap::new();
        let mut alive = HashMap::with_capacity(subscriptions.len());
        for subscription in subscriptions {
            let now = Figures::of(subscription);
            let before = self.seen.get(&subscription.id).copied().unwrap_or_default();
            alive.insert(subscription.id, now);
            let added = now.since(before);
            let key = self.key_for(subscription);
            let series = self.series(&key);
            series.subscriptions += 1;
            series.pending += subscription.pending;
            series.delivered += added.delivered;
            series.dropped += added.dropped;
            series.demotions += added.demotions;
            if subscription.queue_group.is_some() {
                // A group's members share its events: their offers add up.
                series.published += added.offered;
            } else {
                let widest = widest.entry(key).or_default();
                *widest = (*widest).max(added.offered);
            }
        }
        for (key, offered) in widest {
            self.series(&key).published += offered;
        }
        // Subscriptions that ended are forgotten; their series stay.
        self.seen = alive;
        self.own
            .values()
            .chain(self.other.as_ref())
            .cloned()
            .collect()
    }

    /// The key of `subscription`'s own series, or `None` for [`OTHER`]'s.
    fn key_for(&mut self, subscription: &SubscriptionView) -> Option<Key> {
        // Each requester's inbox has a pattern of its own, a new one per
        // connection: they share one series, or they would use up the cap.
        let pattern = if subscription.pattern.starts_with(INBOX_PREFIX) {
            INBOXES.to_owned()
        } else {
            subscription.pattern.clone()
        };
        let key = (pattern, subscription.queue_group.clone());
        if self.own.contains_key(&key) {
            return Some(key);
        }
        // A pattern spelled like the aggregate's label joins it, so that no
        // two series carry the same labels.
        let is_other = key.0 == OTHER && key.1.is_none();
        if is_other || self.own.len() >= self.series_max {
            return None;
        }
        self.own.insert(
            key.clone(),
            PatternView {
                pattern: key.0.clone(),
                queue_group: key.1.clone(),
                ..PatternView::default()
            },
        );
        Some(key)
    }

    fn series(&mut self, key: &Option<Key>) -> &mut PatternView {
        match key {
            Some(key) => self.own.get_mut(key).expect("made by key_for"),
            None => self.other.get_or_insert_with(|| PatternView {
                pattern: OTHER.to_owned(),
                ..PatternView::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(
        id: u64,
        pattern: &str,
        group: Option<&str>,
        delivered: u64,
    ) -> SubscriptionView {
        SubscriptionView {
            id,
            pattern: pattern.into(),
            queue_group: group.map(Into::into),
            connection: None,
            delivered,
            dropped: 0,
            pending: 0,
            policy: "block",
            max_stall_ms: Some(2000),
            demoted: false,
            demotions: 0,
        }
    }

    fn find<'a>(series: &'a [PatternView], pattern: &str) -> &'a PatternView {
        series
            .iter()
            .find(|s| s.pattern == pattern)
            .unwrap_or_else(|| panic!("a series for {pattern}"))
    }

    #[test]
    fn counters_keep_what_an_ended_subscription_added() {
        let mut series = PatternSeries::new(10);
        let first = series.update(&[
            subscription(1, "orders.>", None, 10),
            subscription(2, "orders.>", None, 4),
        ]);
        let orders = find(&first, "orders.>");
        assert_eq!(
            (orders.published, orders.delivered, orders.subscriptions),
            (10, 14, 2)
        );
        // The widest subscription ends; the other goes on to 7.
        let second = series.update(&[subscription(2, "orders.>", None, 7)]);
        let orders = find(&second, "orders.>");
        assert_eq!(
            (orders.published, orders.delivered, orders.subscriptions),
            (13, 17, 1),
            "published and delivered only grow; the gauge falls"
        );
        // Every subscription ended: the series stays, its gauge at zero.
        let third = series.update(&[]);
        let orders = find(&third, "orders.>");
        assert_eq!(
            (orders.published, orders.delivered, orders.subscriptions),
            (13, 17, 0)
        );
    }

    #[test]
    fn request_inboxes_share_one_series() {
        let mut series = PatternSeries::new(1);
        let figures = series.update(&[
            subscription(1, "_INBOX.1111111111111111.*", None, 3),
            subscription(2, "_INBOX.2222222222222222.*", None, 5),
            subscription(3, "orders.>", None, 1),
        ]);
        assert_eq!(figures.len(), 2, "{figures:?}");
        assert_eq!(find(&figures, INBOXES).delivered, 8);
        assert_eq!(find(&figures, OTHER).delivered, 1);
    }

    #[test]
    fn a_queue_groups_members_add_up() {
        let mut series = PatternSeries::new(10);
        let figures = series.update(&[
            subscription(1, "jobs", Some("workers"), 3),
            subscription(2, "jobs", Some("workers"), 5),
        ]);
        assert_eq!(find(&figures, "jobs").published, 8);
    }

    #[test]
    fn pairs_past_the_cap_share_one_series() {
        let mut series = PatternSeries::new(2);
        let subscriptions: Vec<SubscriptionView> = (0..1000)
            .map(|id| subscription(id, &format!("p.{id}"), None, 1))
            .collect();
        let figures = series.update(&subscriptions);
        assert_eq!(figures.len(), 3, "two of their own and the rest together");
        let other = find(&figures, OTHER);
        assert_eq!((other.subscriptions, other.delivered), (998, 998));
        // A pattern named like the aggregate's label joins it.
        let figures = series.update(&[subscription(5000, OTHER, None, 2)]);
        assert_eq!(figures.len(), 3);
        assert_eq!(find(&figures, OTHER).delivered, 1000);
    }
}
