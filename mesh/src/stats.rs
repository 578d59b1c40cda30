//! What the node reports about itself: the JSON views of `/v1/...` and the
//! Prometheus text of `/metrics`, both built from one snapshot.
//!
//! Per subject pattern (and queue group), across every subscription with it:
//!
//! - `delivered`: events handed to the subscriber (for a client connection,
//!   moved to its socket's send queue; in process, received);
//! - `dropped`: events its queues dropped because the subscriber fell behind,
//!   or the memory budget was spent; exact;
//! - `pending`: events waiting in in-process queues (a connection's pending
//!   events are reported per connection);
//! - `published`: events published on subjects the pattern matches, since its
//!   oldest current subscription was made: for plain subscriptions the largest
//!   `delivered + dropped + pending` among them (each gets every event), for a
//!   queue group their sum (each event goes to one member).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use serde::Serialize;
use starling_core::{SlowConsumerPolicy, SubscriptionInfo};
use starling_transport::server::{ConnectionInfo, ConnectionTotals, Server};

use crate::cluster::stats::ClusterView;
use crate::node::NodeState;

/// `/v1/node`.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// Starling's version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// Start time, nanoseconds since the Unix epoch.
    pub started_unix_nanos: u64,
    /// The local server's I/O backend, and why if epoll.
    pub io_backend: String,
    /// `tcp://...`, if listening on TCP.
    pub tcp: Option<String>,
    /// `unix://...`, if listening on a Unix socket.
    pub uds: Option<String>,
    /// Open local connections.
    pub connections: usize,
    /// Live subscriptions (clients' and in-process).
    pub subscriptions: usize,
    /// Event memory.
    pub memory: MemoryView,
}

/// Event memory figures.
#[derive(Debug, Serialize)]
pub struct MemoryView {
    /// Bytes allocated.
    pub bytes_allocated: usize,
    /// The budget.
    pub bytes_max: usize,
    /// Times an event could not be stored because the budget was spent.
    pub exhausted: u64,
}

/// One entry of `/v1/connections`.
#[derive(Debug, Serialize)]
pub struct ConnectionView {
    /// Connection id.
    pub id: u64,
    /// `tcp` or `unix`.
    pub transport: &'static str,
    /// Peer address (TCP).
    pub remote: String,
    /// The client's name.
    pub client_name: String,
    /// Connect time, nanoseconds since the Unix epoch.
    pub connected_unix_nanos: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Events the client published.
    pub events_in: u64,
    /// Events delivered to the client.
    pub events_out: u64,
    /// Its subscriptions.
    pub subscriptions: u64,
    /// Events dropped because it read too slowly.
    pub dropped: u64,
    /// Error frames sent to it.
    pub errors: u64,
}

/// One entry of `/v1/subscriptions`' `subscriptions`.
#[derive(Debug, Serialize)]
pub struct SubscriptionView {
    /// The subscription's id in the bus.
    pub id: u64,
    /// Its pattern.
    pub pattern: String,
    /// Its queue group.
    pub queue_group: Option<String>,
    /// The connection it belongs to, if a client's.
    pub connection: Option<u64>,
    /// Events delivered.
    pub delivered: u64,
    /// Events dropped.
    pub dropped: u64,
    /// Events waiting (in-process subscriptions).
    pub pending: u64,
    /// `block`, `drop-newest` or `drop-oldest`.
    pub policy: &'static str,
    /// How long a `block` subscription holds its publishers back per
    /// episode, in milliseconds.
    pub max_stall_ms: Option<u64>,
    /// Its queue (its connection's, for a client) is demoted: its `block`
    /// events are dropped until it drains.
    pub demoted: bool,
    /// Times its queue was demoted.
    pub demotions: u64,
}

/// One entry of `/v1/subscriptions`' `patterns`.
#[derive(Debug, Serialize, Default)]
pub struct PatternView {
    /// The pattern.
    pub pattern: String,
    /// The queue group, if the entry is a group.
    pub queue_group: Option<String>,
    /// Subscriptions with this pattern and group.
    pub subscriptions: u64,
    /// See the module docs.
    pub published: u64,
    /// See the module docs.
    pub delivered: u64,
    /// See the module docs.
    pub dropped: u64,
    /// See the module docs.
    pub pending: u64,
    /// Demotions of the queues of its subscriptions.
    pub demotions: u64,
}

/// `/v1/subscriptions`.
#[derive(Debug, Serialize)]
pub struct SubscriptionsView {
    /// Every subscription.
    pub subscriptions: Vec<SubscriptionView>,
    /// Totals per pattern and queue group.
    pub patterns: Vec<PatternView>,
}

/// Everything a report needs, read once.
#[derive(Debug)]
pub struct Snapshot {
    node: NodeView,
    totals: ConnectionTotals,
    connections: Vec<ConnectionInfo>,
    subscriptions: Vec<SubscriptionView>,
    cluster: Option<ClusterView>,
}

impl Snapshot {
    /// Reads the node's state; `cluster` is the mesh's report, if any (see
    /// [`crate::cluster::Cluster::view`]).
    pub fn take(state: &NodeState, cluster: Option<ClusterView>) -> Snapshot {
        let server = state.server.as_ref();
        let connections = server.map(Server::connections).unwrap_or_default();
        let bus_subscriptions = state.bus.subscriptions();
        let memory = state.bus.stats().memory;
        let node = NodeView {
            name: state.config.name.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: state.started.elapsed().as_secs_f64(),
            started_unix_nanos: state.started_unix_nanos,
            io_backend: server.map_or_else(|| "none".to_owned(), |s| s.backend().to_string()),
            tcp: server
                .and_then(Server::tcp_addr)
                .map(|a| format!("tcp://{a}")),
            uds: server
                .and_then(Server::uds_path)
                .map(|p| format!("unix://{}", p.display())),
            connections: connections.len(),
            subscriptions: bus_subscriptions.len(),
            memory: MemoryView {
                bytes_allocated: memory.bytes_allocated,
                bytes_max: memory.bytes_max,
                exhausted: memory.exhausted,
            },
        };
        let subscriptions = subscription_views(&bus_subscriptions, &connections);
        Snapshot {
            node,
            totals: server.map(Server::totals).unwrap_or_default(),
            connections,
            subscriptions,
            cluster,
        }
    }

    /// `/v1/node`.
    pub fn node(&self) -> &NodeView {
        &self.node
    }

    /// `/v1/connections`.
    pub fn connections(&self) -> Vec<ConnectionView> {
        self.connections
            .iter()
            .map(|c| ConnectionView {
                id: c.id,
                transport: c.transport,
                remote: c.remote.clone(),
                client_name: c.client_name.clone(),
                connected_unix_nanos: c.connected_unix_nanos,
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                events_in: c.events_in,
                events_out: c.events_out,
                subscriptions: c.subscriptions,
                dropped: c.dropped,
                errors: c.errors,
            })
            .collect()
    }

    /// `/v1/subscriptions`.
    pub fn subscriptions(self) -> SubscriptionsView {
        let patterns = patterns(&self.subscriptions);
        SubscriptionsView {
            subscriptions: self.subscriptions,
            patterns,
        }
    }

    /// `/metrics`, in the Prometheus text format.
    pub fn prometheus(&self) -> String {
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
        let patterns = patterns(&self.subscriptions);
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

fn subscription_views(
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

fn patterns(subscriptions: &[SubscriptionView]) -> Vec<PatternView> {
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
    type Field = fn(&crate::cluster::stats::LinkView) -> u64;
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
    use crate::cluster::membership::MemberState;
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
