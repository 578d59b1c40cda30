//! `/metrics`: the node's figures in the Prometheus text format.

use std::fmt::Write;

use super::Snapshot;
use super::pattern_series::PatternSeries;
use super::views::PatternView;
use crate::cluster::membership::MemberState;
use crate::cluster::view::{ClusterView, LinkView};

impl Snapshot {
    /// `/metrics`, in the Prometheus text format; the per-pattern series
    /// come from `patterns`, which keeps them from scrape to scrape.
    pub fn prometheus(&self, patterns: &mut PatternSeries) -> String {
        let mut out = String::new();
        if let Some(cluster) = &self.cluster {
            mesh_metrics(&mut out, cluster);
        }
        let node = &self.node;
        let info = [
            ("name", node.name.as_str()),
            ("version", node.version),
            ("io_backend", node.io_backend.as_str()),
        ];
        gauge(
            &mut out,
            "starling_info",
            "The node's name, version and I/O backend.",
            &[(&info, 1)],
        );
        gauge(
            &mut out,
            "starling_uptime_seconds",
            "Seconds since the node started.",
            &[(&[], node.uptime_seconds)],
        );
        gauge(
            &mut out,
            "starling_connections",
            "Open local connections.",
            &[(&[], node.connections)],
        );
        gauge(
            &mut out,
            "starling_subscriptions",
            "Live subscriptions.",
            &[(&[], node.subscriptions)],
        );
        gauge(
            &mut out,
            "starling_queues",
            "Delivery queues not freed yet (subscriptions', connections', peers').",
            &[(&[], node.queues)],
        );
        gauge(
            &mut out,
            "starling_queue_slots",
            "Slots of the delivery queues not freed yet.",
            &[(&[], node.queue_slots)],
        );
        gauge(
            &mut out,
            "starling_memory_bytes",
            "Event memory allocated.",
            &[(&[], node.memory.bytes_allocated)],
        );
        gauge(
            &mut out,
            "starling_memory_bytes_max",
            "The event memory budget.",
            &[(&[], node.memory.bytes_max)],
        );
        counter(
            &mut out,
            "starling_memory_exhausted_total",
            "Events refused because the memory budget was spent.",
            &[(&[], node.memory.exhausted)],
        );
        let totals = &self.totals;
        counter(
            &mut out,
            "starling_client_connections_total",
            "Client connections accepted.",
            &[(&[], totals.connections)],
        );
        counter(
            &mut out,
            "starling_client_events_in_total",
            "Events published by clients.",
            &[(&[], totals.events_in)],
        );
        counter(
            &mut out,
            "starling_client_events_out_total",
            "Events delivered to clients.",
            &[(&[], totals.events_out)],
        );
        counter(
            &mut out,
            "starling_client_dropped_total",
            "Events dropped for clients that read too slowly.",
            &[(&[], totals.dropped)],
        );
        counter(
            &mut out,
            "starling_client_bytes_in_total",
            "Bytes received from clients.",
            &[(&[], totals.bytes_in)],
        );
        counter(
            &mut out,
            "starling_client_bytes_out_total",
            "Bytes sent to clients.",
            &[(&[], totals.bytes_out)],
        );
        counter(
            &mut out,
            "starling_client_errors_total",
            "Error frames sent to clients.",
            &[(&[], totals.errors)],
        );
        let patterns = patterns.update(&self.subscriptions);
        type Field = fn(&PatternView) -> u64;
        let series: [(&str, &str, Field, bool); 6] = [
            (
                "starling_pattern_subscriptions",
                "Subscriptions per pattern and queue group.",
                |p| p.subscriptions,
                false,
            ),
            (
                "starling_pattern_published_total",
                "Events published on subjects the pattern matches.",
                |p| p.published,
                true,
            ),
            (
                "starling_pattern_delivered_total",
                "Events delivered to the pattern's subscribers.",
                |p| p.delivered,
                true,
            ),
            (
                "starling_pattern_dropped_total",
                "Events dropped for the pattern's slow subscribers.",
                |p| p.dropped,
                true,
            ),
            (
                "starling_pattern_pending",
                "Events waiting in the pattern's in-process queues.",
                |p| p.pending,
                false,
            ),
            (
                "starling_pattern_demotions_total",
                "Times a queue of the pattern's subscribers held its publishers back for its whole max stall and was demoted (its events dropped until it drained).",
                |p| p.demotions,
                true,
            ),
        ];
        for (name, help, field, is_counter) in series {
            let samples: Vec<(Vec<(&str, &str)>, u64)> = patterns
                .iter()
                .map(|p| {
                    let labels = vec![
                        ("pattern", p.pattern.as_str()),
                        ("queue_group", p.queue_group.as_deref().unwrap_or("")),
                    ];
                    (labels, field(p))
                })
                .collect();
            let samples: Vec<(&[(&str, &str)], u64)> =
                samples.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
            if is_counter {
                counter(&mut out, name, help, &samples);
            } else {
                gauge(&mut out, name, help, &samples);
            }
        }
        out
    }
}

/// The mesh's figures: members and, per peer, its link's counters.
fn mesh_metrics(out: &mut String, cluster: &ClusterView) {
    let up = cluster.links.iter().filter(|l| l.state == "up").count();
    gauge(
        out,
        "starling_mesh_links_up",
        "Links to peers that are up.",
        &[(&[], up)],
    );
    gauge(
        out,
        "starling_mesh_members",
        "Members of the mesh known to this node, itself included, in any state.",
        &[(&[], cluster.members.len())],
    );
    membership_metrics(out, cluster);
    type Field = fn(&LinkView) -> u64;
    let families: [(&str, &str, Field); 8] = [
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
    for (name, help, field) in families {
        let labels: Vec<[(&str, &str); 2]> = cluster
            .links
            .iter()
            .map(|l| peer_labels(&l.peer_name, &l.peer_id))
            .collect();
        let samples: Vec<(&[(&str, &str)], u64)> = labels
            .iter()
            .zip(&cluster.links)
            .map(|(labels, link)| (&labels[..], field(link)))
            .collect();
        counter(out, name, help, &samples);
    }
}

/// Membership's view and traffic, and how far interest has spread.
fn membership_metrics(out: &mut String, cluster: &ClusterView) {
    let states = [
        ("alive", MemberState::Alive),
        ("suspect", MemberState::Suspect),
        ("dead", MemberState::Dead),
        ("left", MemberState::Left),
    ];
    let by_state: Vec<[(&str, &str); 1]> =
        states.iter().map(|(name, _)| [("state", *name)]).collect();
    let samples: Vec<(&[(&str, &str)], usize)> = by_state
        .iter()
        .zip(&states)
        .map(|(labels, (_, state))| {
            let count = cluster.members.iter().filter(|m| m.state == *state).count();
            (&labels[..], count)
        })
        .collect();
    gauge(
        out,
        "starling_mesh_members_by_state",
        "Members of the mesh by state as membership has it, this node included.",
        &samples,
    );
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
        counter(out, name, help, &[(&[], value)]);
    }
    gauge(
        out,
        "starling_membership_stable_seconds",
        "Seconds since the last member state change.",
        &[(&[], figures.since_change_ms as f64 / 1000.0)],
    );
    gauge(
        out,
        "starling_mesh_interest_version",
        "This node's interest version (changes in its epoch): peers that hold the same for it have converged.",
        &[(&[], cluster.interest.version)],
    );
    let labels: Vec<[(&str, &str); 2]> = cluster
        .interest
        .peers
        .iter()
        .map(|p| peer_labels(&p.peer_name, &p.peer_id))
        .collect();
    let samples: Vec<(&[(&str, &str)], u64)> = labels
        .iter()
        .zip(&cluster.interest.peers)
        .filter_map(|(labels, peer)| Some((&labels[..], peer.version?)))
        .collect();
    gauge(
        out,
        "starling_mesh_peer_interest_version",
        "Each peer's interest version as known here.",
        &samples,
    );
}

/// The labels of a per-peer sample.
fn peer_labels<'a>(name: &'a str, id: &'a str) -> [(&'static str, &'a str); 2] {
    [("peer", name), ("peer_id", id)]
}

fn gauge<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    samples: &[(&[(&str, &str)], V)],
) {
    family(out, name, help, "gauge", samples);
}

fn counter<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    samples: &[(&[(&str, &str)], V)],
) {
    family(out, name, help, "counter", samples);
}

fn family<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    samples: &[(&[(&str, &str)], V)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = write!(out, "{name}");
        if !labels.is_empty() {
            out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{key}=\"{}\"", escape(value));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut out = String::new();
        counter(
            &mut out,
            "x_total",
            "help",
            &[(&[("pattern", "a.>")], 3u64)],
        );
        assert!(out.contains("x_total{pattern=\"a.>\"} 3"), "{out}");
        assert!(out.contains("# TYPE x_total counter"));
    }
}
