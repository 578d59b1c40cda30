//! What the mesh reports: views of members, links and interest for `/v1/`
//! and `/metrics` (the driver fills them in, `driver/view.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::counters::LinkCounters;
use super::membership::MemberState;

/// One member of the mesh as this node sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberView {
    /// Its node id, hex.
    pub id: String,
    /// Its name, from its link's handshake; its address until a link was
    /// up.
    pub name: String,
    /// Where it is dialed.
    pub advertise: String,
    /// `alive`, `suspect`, `dead` or `left`, as membership has it.
    pub state: MemberState,
    /// Grows each time the member refutes a suspicion or renews itself
    /// after a wrong verdict; a restart starts a new member (new id).
    pub incarnation: u64,
    /// Whether a link to it is up.
    pub linked: bool,
    /// Whether it is this node.
    #[serde(rename = "self")]
    pub this_node: bool,
}

/// Membership's traffic and changes, since the node started.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MembershipFigures {
    /// Membership packets (QUIC datagrams) sent.
    pub packets_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Membership packets received.
    pub packets_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Packets received and dropped as malformed or unexpected.
    pub rejected_in: u64,
    /// Packets not sent: no link to the member could be made, or the
    /// path refused the datagram.
    pub unsent_out: u64,
    /// Changes of a member's state reported by membership (joins,
    /// suspicions, verdicts, departures, restarts).
    pub changes: u64,
    /// Milliseconds since the last of those changes: how long the view has
    /// been stable.
    pub since_change_ms: u64,
}

/// One link as this node sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LinkView {
    /// The peer's node id, hex.
    pub peer_id: String,
    /// The peer's name.
    pub peer_name: String,
    /// The peer's address.
    pub address: String,
    /// `up`, `down`, or `gone`: forgotten (dead or departed), kept here
    /// for its figures.
    pub state: &'static str,
    /// Whether this node dialed the link (else it accepted it).
    pub dialed: bool,
    /// Round-trip time, microseconds, while up.
    pub rtt_us: Option<u64>,
    /// Events sent.
    pub events_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Events received.
    pub events_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Events for the peer dropped here: its queue stayed full past
    /// `peer_max_stall` (a slow, stalled or long-down peer), or it was
    /// forgotten with events queued.
    pub dropped_out: u64,
    /// Events sent to the peer that it had not acknowledged when a link
    /// went down (see [`LinkCounters::lost_in_flight`]).
    pub lost_in_flight: u64,
    /// Events routed to an interest entry the peer had just withdrawn.
    pub unroutable_out: u64,
    /// Events from the peer that found no event memory here.
    pub dropped_in: u64,
    /// Events waiting to be sent: in the peer's queue, and those its egress
    /// took past a round's room to send first next round (at most a batch,
    /// 1,024 events, beyond the queue's capacity).
    pub pending_out: usize,
    /// Interest entries the peer has here.
    pub interest_entries: usize,
}

impl LinkView {
    /// A link's view with its figures from `counters`; what only a live
    /// link has (its round trip, its queue) is left for the caller.
    pub(crate) fn new(
        peer_id: String,
        peer_name: String,
        address: String,
        state: &'static str,
        counters: &LinkCounters,
    ) -> Self {
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Self {
            peer_id,
            peer_name,
            address,
            state,
            dialed: false,
            rtt_us: None,
            events_out: count(&counters.events_out),
            bytes_out: count(&counters.bytes_out),
            events_in: count(&counters.events_in),
            bytes_in: count(&counters.bytes_in),
            dropped_out: count(&counters.dropped_out),
            lost_in_flight: count(&counters.lost_in_flight),
            unroutable_out: count(&counters.unroutable_out),
            dropped_in: count(&counters.dropped_in),
            pending_out: 0,
            interest_entries: 0,
        }
    }
}

/// This node's interest and what it knows of each peer's.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InterestView {
    /// This node's epoch and version.
    pub epoch: String,
    /// Changes in this epoch.
    pub version: u64,
    /// This node's interest.
    pub local: Vec<InterestEntryView>,
    /// Each peer's interest as known here.
    pub peers: Vec<PeerInterestView>,
}

/// One interest entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InterestEntryView {
    /// The origin's id for it.
    pub id: u64,
    /// The pattern.
    pub pattern: String,
    /// The queue group.
    pub queue_group: Option<String>,
}

/// A peer's interest as known here.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerInterestView {
    /// The peer's node id, hex.
    pub peer_id: String,
    /// The peer's name.
    pub peer_name: String,
    /// The peer's interest epoch (per start), hex, as known here; `None`
    /// before its first snapshot.
    pub epoch: Option<String>,
    /// The peer's interest version in that epoch, as known here: equal to
    /// the peer's own `version` once converged.
    pub version: Option<u64>,
    /// The peer's entries.
    pub entries: Vec<InterestEntryView>,
}

/// Everything the mesh reports, taken at once.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterView {
    /// This node's id, hex.
    pub node_id: String,
    /// The cluster's name.
    pub cluster: String,
    /// The address of this node's cluster port.
    pub cluster_addr: String,
    /// Whether peers are authenticated by certificate.
    pub authenticated: bool,
    /// Every member known, this node first.
    pub members: Vec<MemberView>,
    /// Membership's traffic and changes.
    pub membership: MembershipFigures,
    /// Every link, up or down.
    pub links: Vec<LinkView>,
    /// Interest.
    pub interest: InterestView,
}

/// A node id as reports show it.
pub fn hex_id(id: u64) -> String {
    format!("{id:016x}")
}
