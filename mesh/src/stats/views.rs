//! The JSON views of `/v1/node`, `/v1/connections` and
//! `/v1/subscriptions`.

use serde::Serialize;

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
    /// The local server's I/O threads (0 without a local server).
    pub io_threads: usize,
    /// `tcp://...`, if listening on TCP.
    pub tcp: Option<String>,
    /// `unix://...`, if listening on a Unix socket.
    pub uds: Option<String>,
    /// Open local connections.
    pub connections: usize,
    /// Live subscriptions (clients' and in-process).
    pub subscriptions: usize,
    /// Delivery queues not freed yet: one per in-process subscription,
    /// client connection and peer node, each counted until nothing holds
    /// it (a departed peer's must go).
    pub queues: usize,
    /// Their slots, in all (events they can hold; a peer's has 65,536 by
    /// default).
    pub queue_slots: usize,
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
    /// The I/O thread serving it (0 to the node's `io_threads` - 1).
    pub io_thread: usize,
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
#[derive(Debug, Clone, Serialize, Default)]
pub struct PatternView {
    /// The pattern.
    pub pattern: String,
    /// The queue group, if the entry is a group.
    pub queue_group: Option<String>,
    /// Subscriptions with this pattern and group.
    pub subscriptions: u64,
    /// See the [`crate::stats`] docs.
    pub published: u64,
    /// See the [`crate::stats`] docs.
    pub delivered: u64,
    /// See the [`crate::stats`] docs.
    pub dropped: u64,
    /// See the [`crate::stats`] docs.
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
