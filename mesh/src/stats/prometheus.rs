//! `/metrics`: the node's figures as Prometheus metrics.
//!
//! Each scrape reads the figures once (a [`Snapshot`]) and hands them to
//! `prometheus-client` as constant metrics, through a [`Collector`] made for
//! that scrape; the crate writes the exposition format (HELP and TYPE lines,
//! label encoding and escaping, number formatting), in the classic text
//! format or in OpenMetrics, whichever the scraper asks for. The figures
//! stay where the node keeps them: nothing here counts anything twice.
//!
//! Names, types and labels are a contract (dashboards and alerts use them):
//! each family is written below under the name a scraper sees, a counter's
//! `_total` included, and counters never fall (the per-pattern ones are kept
//! monotonic by [`PatternSeries`]).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use starling_transport::server::ConnectionTotals;

use super::Snapshot;
use super::pattern_series::PatternSeries;
use super::views::{NodeView, PatternView};
use crate::cluster::membership::MemberState;
use crate::cluster::view::{ClusterView, LinkView};

/// The exposition formats `/metrics` is served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsFormat {
    /// The classic text format (0.0.4): what `curl`, scripts and most tools
    /// read.
    Text,
    /// OpenMetrics 1.0 text, which Prometheus asks for first: the same
    /// samples, a counter's family named without `_total`, and `# EOF`.
    OpenMetrics,
}

impl MetricsFormat {
    /// The format a request's `Accept` header asks for: OpenMetrics if it
    /// names it (as Prometheus's does), else the classic text.
    pub fn accepted(accept: Option<&str>) -> MetricsFormat {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => {
                MetricsFormat::OpenMetrics
            }
            _ => MetricsFormat::Text,
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            MetricsFormat::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            MetricsFormat::OpenMetrics => {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            }
        }
    }

    /// What `registry` holds, in this format.
    fn encode(self, registry: &Registry) -> String {
        let mut text = String::new();
        let written = match self {
            MetricsFormat::Text => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
            }
            MetricsFormat::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut text, registry)
            }
        };
        written.expect("writing to a String does not fail, nor does encoding our families");
        text
    }
}

impl Snapshot {
    /// `/metrics`, in `format`; the per-pattern series come from
    /// `patterns`, which keeps them from scrape to scrape.
    pub fn prometheus(self, patterns: &mut PatternSeries, format: MetricsFormat) -> String {
        let patterns = patterns.update(&self.subscriptions);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape {
            snapshot: self,
            patterns,
        }));
        format.encode(&registry)
    }
}

/// One scrape's figures.
#[derive(Debug)]
struct Scrape {
    snapshot: Snapshot,
    /// The per-pattern series, updated for this scrape.
    patterns: Vec<PatternView>,
}

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut families = Families(encoder);
        if let Some(cluster) = &self.snapshot.cluster {
            mesh_metrics(&mut families, cluster)?;
        }
        node_metrics(&mut families, &self.snapshot.node)?;
        client_metrics(&mut families, &self.snapshot.totals)?;
        pattern_metrics(&mut families, &self.patterns)
    }
}

/// The mesh's figures: members and, per peer, its link's counters.
fn mesh_metrics(families: &mut Families<'_>, cluster: &ClusterView) -> fmt::Result {
    let up = cluster.links.iter().filter(|l| l.state == "up").count();
    families.gauge("starling_mesh_links_up", "Links to peers that are up.", up)?;
    families.gauge(
        "starling_mesh_members",
        "Members of the mesh known to this node, itself included, in any state.",
        cluster.members.len(),
    )?;
    membership_metrics(families, cluster)?;
    type Field = fn(&LinkView) -> u64;
    let counters: [(&str, &str, Field); 8] = [
        (
            "starling_link_events_out_total",
            "Events sent to the peer.",
            |l| l.events_out,
        ),
        (
            "starling_link_bytes_out_total",
            "Bytes sent to the peer.",
            |l| l.bytes_out,
        ),
        (
            "starling_link_events_in_total",
            "Events received from the peer.",
            |l| l.events_in,
        ),
        (
            "starling_link_bytes_in_total",
            "Bytes received from the peer.",
            |l| l.bytes_in,
        ),
        (
            "starling_link_dropped_out_total",
            "Events for the peer dropped: its queue stayed full too long, or it was forgotten.",
            |l| l.dropped_out,
        ),
        (
            "starling_link_lost_in_flight_total",
            "Events sent to the peer and not acknowledged when a link to it went down.",
            |l| l.lost_in_flight,
        ),
        (
            "starling_link_unroutable_out_total",
            "Events routed to interest the peer had just withdrawn.",
            |l| l.unroutable_out,
        ),
        (
            "starling_link_dropped_in_total",
            "Events from the peer that found no event memory here.",
            |l| l.dropped_in,
        ),
    ];
    for (name, help, field) in counters {
        let samples = cluster
            .links
            .iter()
            .map(|link| (peer_labels(&link.peer_name, &link.peer_id), field(link)));
        families.labelled_counters(name, help, samples)?;
    }
    Ok(())
}

/// Membership's view and traffic, and how far interest has spread.
fn membership_metrics(families: &mut Families<'_>, cluster: &ClusterView) -> fmt::Result {
    let states = [
        ("alive", MemberState::Alive),
        ("suspect", MemberState::Suspect),
        ("dead", MemberState::Dead),
        ("left", MemberState::Left),
    ];
    families.labelled_gauges(
        "starling_mesh_members_by_state",
        "Members of the mesh by state as membership has it, this node included.",
        states.iter().map(|(label, state)| {
            let count = cluster.members.iter().filter(|m| m.state == *state).count();
            ([("state", *label)], count)
        }),
    )?;
    let figures = &cluster.membership;
    let counters: [(&str, &str, u64); 7] = [
        (
            "starling_membership_packets_out_total",
            "Membership packets (QUIC datagrams) sent.",
            figures.packets_out,
        ),
        (
            "starling_membership_bytes_out_total",
            "Bytes of membership packets sent.",
            figures.bytes_out,
        ),
        (
            "starling_membership_packets_in_total",
            "Membership packets received.",
            figures.packets_in,
        ),
        (
            "starling_membership_bytes_in_total",
            "Bytes of membership packets received.",
            figures.bytes_in,
        ),
        (
            "starling_membership_rejected_in_total",
            "Membership packets received and dropped as malformed.",
            figures.rejected_in,
        ),
        (
            "starling_membership_unsent_out_total",
            "Membership packets not sent: no link could be made, or the path refused them.",
            figures.unsent_out,
        ),
        (
            "starling_membership_changes_total",
            "Member state changes seen: joins, suspicions, verdicts, departures, restarts.",
            figures.changes,
        ),
    ];
    for (name, help, value) in counters {
        families.counter(name, help, value)?;
    }
    families.gauge(
        "starling_membership_stable_seconds",
        "Seconds since the last member state change.",
        figures.since_change_ms as f64 / 1000.0,
    )?;
    families.gauge(
        "starling_mesh_interest_version",
        "This node's interest version (changes in its epoch): peers that hold the same for it have converged.",
        cluster.interest.version,
    )?;
    families.labelled_gauges(
        "starling_mesh_peer_interest_version",
        "Each peer's interest version as known here.",
        cluster
            .interest
            .peers
            .iter()
            .filter_map(|peer| Some((peer_labels(&peer.peer_name, &peer.peer_id), peer.version?))),
    )
}

/// The node itself: what it is, its connections and queues, its memory.
fn node_metrics(families: &mut Families<'_>, node: &NodeView) -> fmt::Result {
    let info = [
        ("name", node.name.as_str()),
        ("version", node.version),
        ("io_backend", node.io_backend.as_str()),
    ];
    families.labelled_gauges(
        "starling_info",
        "The node's name, version and I/O backend.",
        [(info, 1u64)],
    )?;
    families.gauge(
        "starling_uptime_seconds",
        "Seconds since the node started.",
        node.uptime_seconds,
    )?;
    families.gauge(
        "starling_connections",
        "Open local connections.",
        node.connections,
    )?;
    families.gauge(
        "starling_subscriptions",
        "Live subscriptions.",
        node.subscriptions,
    )?;
    families.gauge(
        "starling_queues",
        "Delivery queues not freed yet (subscriptions', connections', peers').",
        node.queues,
    )?;
    families.gauge(
        "starling_queue_slots",
        "Slots of the delivery queues not freed yet.",
        node.queue_slots,
    )?;
    families.gauge(
        "starling_memory_bytes",
        "Event memory allocated.",
        node.memory.bytes_allocated,
    )?;
    families.gauge(
        "starling_memory_bytes_max",
        "The event memory budget.",
        node.memory.bytes_max,
    )?;
    families.counter(
        "starling_memory_exhausted_total",
        "Events refused because the memory budget was spent.",
        node.memory.exhausted,
    )
}

/// What the node's client connections moved, all of them together.
fn client_metrics(families: &mut Families<'_>, totals: &ConnectionTotals) -> fmt::Result {
    let counters = [
        (
            "starling_client_connections_total",
            "Client connections accepted.",
            totals.connections,
        ),
        (
            "starling_client_events_in_total",
            "Events published by clients.",
            totals.events_in,
        ),
        (
            "starling_client_events_out_total",
            "Events delivered to clients.",
            totals.events_out,
        ),
        (
            "starling_client_dropped_total",
            "Events dropped for clients that read too slowly.",
            totals.dropped,
        ),
        (
            "starling_client_bytes_in_total",
            "Bytes received from clients.",
            totals.bytes_in,
        ),
        (
            "starling_client_bytes_out_total",
            "Bytes sent to clients.",
            totals.bytes_out,
        ),
        (
            "starling_client_errors_total",
            "Error frames sent to clients.",
            totals.errors,
        ),
    ];
    for (name, help, value) in counters {
        families.counter(name, help, value)?;
    }
    Ok(())
}

/// The per-pattern series: bounded in number, counters that never fall.
fn pattern_metrics(families: &mut Families<'_>, patterns: &[PatternView]) -> fmt::Result {
    type Field = fn(&PatternView) -> u64;
    let labelled = |field: Field| {
        patterns.iter().map(move |p| {
            let labels = [
                ("pattern", p.pattern.as_str()),
                ("queue_group", p.queue_group.as_deref().unwrap_or("")),
            ];
            (labels, field(p))
        })
    };
    families.labelled_gauges(
        "starling_pattern_subscriptions",
        "Subscriptions per pattern and queue group.",
        labelled(|p| p.subscriptions),
    )?;
    families.labelled_counters(
        "starling_pattern_published_total",
        "Events published on subjects the pattern matches.",
        labelled(|p| p.published),
    )?;
    families.labelled_counters(
        "starling_pattern_delivered_total",
        "Events delivered to the pattern's subscribers.",
        labelled(|p| p.delivered),
    )?;
    families.labelled_counters(
        "starling_pattern_dropped_total",
        "Events dropped for the pattern's slow subscribers.",
        labelled(|p| p.dropped),
    )?;
    families.labelled_gauges(
        "starling_pattern_pending",
        "Events waiting in the pattern's in-process queues.",
        labelled(|p| p.pending),
    )?;
    families.labelled_counters(
        "starling_pattern_demotions_total",
        "Times a queue of the pattern's subscribers held its publishers back for its whole max stall and was demoted (its events dropped until it drained).",
        labelled(|p| p.demotions),
    )
}

/// The labels of a per-peer sample.
fn peer_labels<'a>(name: &'a str, id: &'a str) -> [(&'static str, &'a str); 2] {
    [("peer", name), ("peer_id", id)]
}

/// Writes metric families, each with its samples, into a scrape.
struct Families<'a>(DescriptorEncoder<'a>);

impl Families<'_> {
    /// A gauge without labels.
    fn gauge<V: EncodeGaugeValue>(&mut self, name: &str, help: &str, value: V) -> fmt::Result {
        self.unlabelled(name, help, ConstGauge::new(value))
    }

    /// A gauge with a sample per label set.
    fn labelled_gauges<L, V>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) -> fmt::Result
    where
        L: EncodeLabelSet,
        V: EncodeGaugeValue,
    {
        let samples = samples
            .into_iter()
            .map(|(labels, value)| (labels, ConstGauge::new(value)));
        self.labelled(name, help, samples)
    }

    /// A counter without labels; `name` is the exposed one, `_total`
    /// included.
    fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        self.unlabelled(counter_family(name), help, ConstCounter::new(value))
    }

    /// A counter with a sample per label set; `name` as for
    /// [`Families::counter`].
    fn labelled_counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let samples = samples
            .into_iter()
            .map(|(labels, value)| (labels, ConstCounter::new(value)));
        self.labelled(counter_family(name), help, samples)
    }

    fn unlabelled<M: EncodeMetric + TypedMetric>(
        &mut self,
        name: &str,
        help: &str,
        metric: M,
    ) -> fmt::Result {
        metric.encode(self.0.encode_descriptor(name, help, None, M::TYPE)?)
    }

    fn labelled<L, M>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, M)>,
    ) -> fmt::Result
    where
        L: EncodeLabelSet,
        M: EncodeMetric + TypedMetric,
    {
        let mut family = self.0.encode_descriptor(name, help, None, M::TYPE)?;
        for (labels, metric) in samples {
            metric.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A counter's family name without the `_total` its samples carry: the
/// encoders add it back (and in OpenMetrics, the family has no `_total`).
fn counter_family(exposed: &str) -> &str {
    exposed
        .strip_suffix("_total")
        .expect("a counter's exposed name ends in _total")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One family, `write`n by itself, in `format`.
    fn encoded(format: MetricsFormat, write: fn(&mut Families<'_>) -> fmt::Result) -> String {
        #[derive(Debug)]
        struct One(fn(&mut Families<'_>) -> fmt::Result);
        impl Collector for One {
            fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
                (self.0)(&mut Families(encoder))
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(One(write)));
        format.encode(&registry)
    }

    fn pattern_counter(families: &mut Families<'_>) -> fmt::Result {
        families.labelled_counters("x_total", "help", [([("pattern", "a\"b\\c\nd.>")], 3)])
    }

    #[test]
    fn counters_keep_their_exposed_names_and_label_values_are_escaped() {
        assert_eq!(
            encoded(MetricsFormat::Text, pattern_counter),
            "# HELP x_total help\n\
             # TYPE x_total counter\n\
             x_total{pattern=\"a\\\"b\\\\c\\nd.>\"} 3\n"
        );
        // OpenMetrics names the family without `_total`; the sample keeps it.
        assert_eq!(
            encoded(MetricsFormat::OpenMetrics, pattern_counter),
            "# HELP x help\n\
             # TYPE x counter\n\
             x_total{pattern=\"a\\\"b\\\\c\\nd.>\"} 3\n\
             # EOF\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_classic_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            MetricsFormat::accepted(Some(prometheus)),
            MetricsFormat::OpenMetrics
        );
        assert_eq!(MetricsFormat::accepted(Some("*/*")), MetricsFormat::Text);
        assert_eq!(MetricsFormat::accepted(None), MetricsFormat::Text);
    }
}
