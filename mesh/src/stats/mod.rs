//! What the node reports about itself: the JSON views of `/v1/...` and the
//! Prometheus text of `/metrics`, both built from one [`Snapshot`].
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
//!
//! Files: `views` (the JSON views), `patterns` (each subscription's
//! figures and their sums per pattern), `pattern_series` (the per-pattern
//! series of `/metrics`: monotonic, bounded in number), `prometheus` (the
//! `/metrics` families, encoded by `prometheus-client`).

mod pattern_series;
mod patterns;
mod prometheus;
mod views;

use starling_transport::server::{ConnectionInfo, ConnectionTotals, Server};

pub use self::pattern_series::PatternSeries;
use self::patterns::{patterns, subscription_views};
pub use self::prometheus::MetricsFormat;
pub use self::views::{
    ConnectionView, MemoryView, NodeView, PatternView, SubscriptionView, SubscriptionsView,
};
use crate::cluster::view::ClusterView;
use crate::node_state::NodeState;

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
        let node = node_view(state, connections.len(), bus_subscriptions.len());
        let subscriptions = subscription_views(&bus_subscriptions, &connections);
        Snapshot {
            node,
            totals: server.map(Server::totals).unwrap_or_default(),
            connections,
            subscriptions,
            cluster,
        }
    }

    /// `/v1/node` alone, without listing every connection (the server
    /// keeps their count).
    pub fn node_only(state: &NodeState) -> NodeView {
        let connections = state.server.as_ref().map_or(0, Server::connection_count);
        node_view(state, connections, state.bus.subscriptions().len())
    }

    /// `/v1/connections`.
    pub fn connections(&self) -> Vec<ConnectionView> {
        self.connections
            .iter()
            .map(|c| ConnectionView {
                id: c.id,
                transport: c.transport,
                remote: c.remote.clone(),
                io_thread: c.io_thread,
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
}

/// `/v1/node`, with `connections` open and `subscriptions` live.
fn node_view(state: &NodeState, connections: usize, subscriptions: usize) -> NodeView {
    let server = state.server.as_ref();
    let bus = state.bus.stats();
    NodeView {
        name: state.config.name.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        started_unix_nanos: state.started_unix_nanos,
        io_backend: server.map_or_else(|| "none".to_owned(), |s| s.backend().to_string()),
        io_threads: server.map_or(0, Server::io_threads),
        tcp: server
            .and_then(Server::tcp_addr)
            .map(|a| format!("tcp://{a}")),
        uds: server
            .and_then(Server::uds_path)
            .map(|p| format!("unix://{}", p.display())),
        connections,
        subscriptions,
        queues: bus.queues,
        queue_slots: bus.queue_slots,
        memory: MemoryView {
            bytes_allocated: bus.memory.bytes_allocated,
            bytes_max: bus.memory.bytes_max,
            exhausted: bus.memory.exhausted,
        },
    }
}
