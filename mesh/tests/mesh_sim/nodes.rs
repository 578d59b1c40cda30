//! Nodes come and go: new addresses, boots under a new identity, crashes,
//! stops and leaves, and the subscriptions each node makes and drops.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::RngExt;
use starling_mesh::cluster::interest::{Interest, InterestKey, NodeId};
use starling_mesh::cluster::membership::{Identity, Membership};

use crate::model::{Fate, Node, Slot};
use crate::{GROUPS, PATTERNS, Sim, interest_config, membership_config};

impl Sim {
    pub(crate) fn fresh_identity(&mut self, address: &str) -> Identity {
        // Milliseconds since the run began stand in for the wall clock, kept
        // increasing: of two starts on one address, the later must win.
        self.started_ms = (self.elapsed.as_millis() as u64 + 1).max(self.started_ms + 1);
        // Never 0: that id means "known by address only" (a seed).
        let id = loop {
            let id: NodeId = self.rng.random();
            if id != 0 && !self.owner.contains_key(&id) {
                break id;
            }
        };
        Identity::new(id, address, self.started_ms).expect("a short address")
    }

    /// A node on a new address, joining through the nodes at `seeds`.
    pub(crate) fn add_node(&mut self, seeds: Vec<usize>) -> usize {
        let slot = self.slots.len();
        let address = format!("10.{}.{}.7:7401", slot / 250, slot % 250);
        self.by_address.insert(address.clone(), slot);
        self.slots.push(Slot {
            address,
            node: None,
            fate: Fate::Crashed,
            last_id: 0,
            start: 0,
            wake: None,
        });
        self.boot(slot, seeds);
        slot
    }

    /// Starts the stopped node at `slot` under a new identity, with a new
    /// interest epoch and fresh subscriptions, and dials its seeds.
    pub(crate) fn boot(&mut self, slot: usize, seeds: Vec<usize>) {
        let address = self.slots[slot].address.clone();
        let identity = self.fresh_identity(&address);
        let id = identity.id();
        let now = self.now();
        let membership = Membership::new(identity, membership_config(), self.rng.random(), now);
        let interest = Interest::new(self.rng.random(), interest_config(), now);
        self.owner.insert(id, slot);
        let target = &mut self.slots[slot];
        assert!(target.node.is_none(), "only a stopped node starts");
        target.start += 1;
        target.fate = Fate::Live;
        target.last_id = id;
        target.wake = None;
        target.node = Some(Node {
            id,
            membership,
            interest,
            subscriptions: Vec::new(),
            routes: BTreeMap::new(),
            peers: BTreeMap::new(),
            peers_by_slot: BTreeMap::new(),
            seeds: seeds.clone(),
            seed_peers: BTreeMap::new(),
            dialing: BTreeSet::new(),
            backoff: BTreeMap::new(),
            interest_deadline: None,
            membership_deadline: None,
            next_expiry_check: Duration::ZERO,
        });
        self.note(format!("node {} starts, seeds {seeds:?}", self.who(id)));
        for _ in 0..self.rng.random_range(0..=3) {
            self.subscribe(slot);
        }
        for seed in seeds {
            self.dial(slot, seed);
        }
        self.dirty.insert(slot);
        self.settle();
    }

    /// The node at `slot` stops: its links close, as stopping if it left.
    pub(crate) fn stop(&mut self, slot: usize, departed: bool) {
        let node = self.slots[slot].node.take().expect("a running node");
        self.slots[slot].wake = None;
        for peer in node.peers.values() {
            if peer.link.is_some() {
                self.drop_link(slot, peer.slot, departed);
            }
        }
        self.settle();
    }

    pub(crate) fn crash(&mut self, slot: usize) {
        self.note(format!(
            "node {} crashes",
            self.who(self.slots[slot].last_id)
        ));
        self.stop(slot, false);
        self.slots[slot].fate = Fate::Crashed;
    }

    /// Leaves as the runtime shuts down: `leave`, every packet it queues
    /// sent, then the links closed as stopping.
    pub(crate) fn leave(&mut self, slot: usize) {
        let id = self.slots[slot].last_id;
        self.note(format!("node {} leaves", self.who(id)));
        self.leaving = Some(id);
        self.membership_call(slot, "leave", |membership, now| membership.leave(now));
        self.drain(slot);
        self.leaving = None;
        self.stop(slot, true);
        self.slots[slot].fate = Fate::Left;
    }

    // ----- Subscriptions -----

    pub(crate) fn random_key(&mut self) -> InterestKey {
        let pattern = PATTERNS[self.rng.random_range(0..PATTERNS.len())].to_owned();
        let group = if self.rng.random_bool(0.6) {
            None
        } else {
            Some(GROUPS[self.rng.random_range(0..GROUPS.len())].to_owned())
        };
        InterestKey { pattern, group }
    }

    pub(crate) fn subscribe(&mut self, slot: usize) {
        let key = self.random_key();
        let node = self.node_mut(slot);
        node.subscriptions.push(key.clone());
        node.interest.local_added(key);
        self.dirty.insert(slot);
    }

    pub(crate) fn unsubscribe(&mut self, slot: usize) {
        let held = self.node(slot).subscriptions.len();
        if held == 0 {
            return;
        }
        let at = self.rng.random_range(0..held);
        let node = self.node_mut(slot);
        let key = node.subscriptions.swap_remove(at);
        node.interest.local_removed(&key);
        self.dirty.insert(slot);
    }

    // ----- Carrying out outputs -----
}
