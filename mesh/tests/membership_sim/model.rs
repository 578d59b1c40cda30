//! What the simulator keeps of the world: each address and whoever runs
//! there, the events it schedules, and partitions.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use starling_mesh::cluster::interest::NodeId;
use starling_mesh::cluster::membership::{Identity, Membership};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    Live,
    Crashed,
    /// Left on purpose; `heard_by` the nodes (slot, id of that start) its
    /// farewell packets were sent to through the network. It must be held
    /// left while one of them runs on (it took the notice in, or will);
    /// if none does, dead is right too: a node cut off by a partition, or
    /// whose only listeners crashed before passing the news on, has told
    /// nobody.
    Left {
        heard_by: Vec<(usize, NodeId)>,
    },
}

/// One address and whoever runs there.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) address: String,
    pub(crate) node: Option<Membership>,
    /// The identity of the latest start here.
    pub(crate) identity: Identity,
    pub(crate) fate: Fate,
    /// The live members as the runtime would know them, from this node's
    /// notifications alone.
    pub(crate) notified: HashMap<NodeId, Identity>,
    /// The wake-up scheduled for this node, if any.
    pub(crate) wake: Option<Duration>,
}

#[derive(Debug)]
pub(crate) enum EventKind {
    Deliver {
        slot: usize,
        packet: Vec<u8>,
    },
    Wake {
        slot: usize,
    },
    /// The link from the node at `slot` (while it runs the start
    /// `observer`) to the start `silent` at `address` timed out.
    LinkSilent {
        slot: usize,
        observer: NodeId,
        address: String,
        silent: NodeId,
    },
}

#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) at: Duration,
    pub(crate) sequence: u64,
    pub(crate) kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Event {}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Event {
    /// Earliest first in a max-heap; ties in the order scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}

/// Which datagrams a partition drops: those from one side to the other
/// (both ways unless `one_way`).
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) cut_off: HashSet<usize>,
    pub(crate) one_way: bool,
}
