//! What the simulator keeps of the world: each slot and the node running
//! there, its peers and links, the events it schedules, partitions, and
//! its counters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use starling_mesh::cluster::interest::{Interest, InterestKey, InterestMessage, NodeId};
use starling_mesh::cluster::membership::Membership;

use crate::interest_config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Live,
    Crashed,
    /// Left on purpose. Held left where the news of it survives (see
    /// `Sim::farewells`), else dead, which is fine too.
    Left,
}

/// One address, and whoever runs there.
pub(crate) struct Slot {
    pub(crate) address: String,
    pub(crate) node: Option<Node>,
    pub(crate) fate: Fate,
    /// The id of the latest start here.
    pub(crate) last_id: NodeId,
    /// Counts starts: events meant for an earlier start are dropped.
    pub(crate) start: u32,
    /// The wake-up scheduled for the node, if any.
    pub(crate) wake: Option<Duration>,
}

/// A running node: both state machines and what the runtime keeps around
/// them.
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) membership: Membership,
    pub(crate) interest: Interest,
    /// One element per local subscription (keys repeat).
    pub(crate) subscriptions: Vec<InterestKey>,
    /// The routes interest told this node to make: (peer, its entry id).
    pub(crate) routes: BTreeMap<(NodeId, u64), InterestKey>,
    /// The runtime's peers: members learned alive, and nodes linked to.
    pub(crate) peers: BTreeMap<NodeId, Peer>,
    /// The ids of the peers at each address (two for a while after a
    /// restart): a thousand nodes relinking ask this for every link.
    pub(crate) peers_by_slot: BTreeMap<usize, BTreeSet<NodeId>>,
    pub(crate) seeds: Vec<usize>,
    /// The peer each seed's link led to.
    pub(crate) seed_peers: BTreeMap<usize, NodeId>,
    /// Addresses (slots) with a dial under way or scheduled.
    pub(crate) dialing: BTreeSet<usize>,
    pub(crate) backoff: BTreeMap<usize, Duration>,
    /// `interest.poll_timeout()`, kept: it scans every link, and a thousand
    /// nodes relinking after a partition would rescan for every link. Its
    /// timers are the periodic digest, which only its own timeout moves, and
    /// the withdrawal of each link down, `withdraw_after` after it went down.
    /// So a link down brings the kept deadline forward; a link up, a forgotten
    /// peer, a message or a local subscription can only put the real one off,
    /// and waking before it is harmless (the timeout does nothing, and the
    /// deadline is read again). Checked while converging: see
    /// `Sim::kept_deadline_divergence`.
    pub(crate) interest_deadline: Option<Instant>,
    /// `membership.poll_timeout()`, kept until membership is next called
    /// (only `Sim::membership_call` calls it): it scans every suspicion, and
    /// in a partition of a thousand nodes each holds hundreds.
    pub(crate) membership_deadline: Option<Option<Instant>>,
    /// When to look for expired peers next: the runtime looks on every
    /// timer, which costs a scan of the members each time here while a
    /// peer past its grace is kept; twice a second decides the same.
    pub(crate) next_expiry_check: Duration,
}

impl Node {
    /// The peer `id` at `slot`, made if new (without a link).
    pub(crate) fn peer_entry(&mut self, id: NodeId, slot: usize) -> &mut Peer {
        self.peers_by_slot.entry(slot).or_default().insert(id);
        self.peers.entry(id).or_insert(Peer {
            slot,
            link: None,
            down_since: None,
        })
    }

    pub(crate) fn remove_peer(&mut self, id: NodeId) -> Option<Peer> {
        let peer = self.peers.remove(&id)?;
        if let Some(ids) = self.peers_by_slot.get_mut(&peer.slot) {
            ids.remove(&id);
            if ids.is_empty() {
                self.peers_by_slot.remove(&peer.slot);
            }
        }
        Some(peer)
    }

    pub(crate) fn peers_at(&self, slot: usize) -> impl Iterator<Item = NodeId> + '_ {
        self.peers_by_slot.get(&slot).into_iter().flatten().copied()
    }

    pub(crate) fn link_down(&mut self, peer: NodeId, now: Instant) {
        self.interest.link_down(peer, now);
        let withdrawal = now + interest_config().withdraw_after;
        if let Some(kept) = &mut self.interest_deadline {
            *kept = (*kept).min(withdrawal);
        }
    }

    pub(crate) fn interest_timeout(&mut self, now: Instant) {
        self.interest.handle_timeout(now);
        self.interest_deadline = None;
    }
}

pub(crate) struct Peer {
    pub(crate) slot: usize,
    /// The generation of the link to it, while up.
    pub(crate) link: Option<u64>,
    /// Since when it has been without a link.
    pub(crate) down_since: Option<Duration>,
}

/// A link between two running nodes: in the map while up.
pub(crate) struct Link {
    pub(crate) generation: u64,
    /// Each end's (slot, id), the lower slot first.
    pub(crate) ends: [(usize, NodeId); 2],
    /// The latest arrival scheduled each way (lower slot to higher first),
    /// so that messages keep their order.
    pub(crate) last_arrival: [Duration; 2],
}

impl Link {
    pub(crate) fn id_at(&self, slot: usize) -> NodeId {
        if self.ends[0].0 == slot {
            self.ends[0].1
        } else {
            self.ends[1].1
        }
    }
}

pub(crate) fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

pub(crate) enum EventKind {
    Datagram {
        to: usize,
        packet: Vec<u8>,
        /// The id of the node that left, if this is its departure notice.
        farewell: Option<NodeId>,
    },
    Control {
        from: usize,
        to: usize,
        generation: u64,
        message: InterestMessage,
    },
    Wake {
        slot: usize,
        start: u32,
    },
    /// A dial from `from` gets to `to` (or does not) a round trip after it
    /// began.
    DialArrives {
        from: usize,
        start: u32,
        to: usize,
        began: Duration,
    },
    /// An unanswered dial gives up.
    DialTimesOut {
        from: usize,
        start: u32,
        to: usize,
    },
    Redial {
        from: usize,
        start: u32,
        to: usize,
    },
}

/// Which traffic a partition stops: from one side to the other, both ways
/// unless `one_way` (then only from the cut-off side). Links need both ways.
pub(crate) struct Partition {
    pub(crate) cut_off: BTreeSet<usize>,
    pub(crate) one_way: bool,
}

impl Partition {
    pub(crate) fn blocks(&self, from: usize, to: usize) -> bool {
        let (source, target) = (self.cut_off.contains(&from), self.cut_off.contains(&to));
        source != target && (source || !self.one_way)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) datagrams_sent: u64,
    pub(crate) datagrams_through: u64,
    pub(crate) control_messages: u64,
    pub(crate) links_made: u64,
    pub(crate) dials_failed: u64,
    pub(crate) refused_by_foca: u64,
}
