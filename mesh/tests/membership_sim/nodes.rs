//! Nodes come and go: new addresses, boots and restarts under a new
//! identity, crashes (their links time out at the others) and leaves.

use std::collections::HashMap;

use rand::RngExt;
use starling_mesh::cluster::interest::NodeId;
use starling_mesh::cluster::membership::{Identity, Membership};

use crate::model::{EventKind, Fate, Slot};
use crate::{Sim, config, idle_timeout};

impl Sim {
    pub(crate) fn fresh_identity(&mut self, address: &str) -> Identity {
        // Milliseconds since the run's start stand in for the wall clock,
        // kept increasing so that a restart within the same millisecond is
        // still the newer start.
        self.started_ms = (self.elapsed.as_millis() as u64 + 1).max(self.started_ms + 1);
        // Not 0: that id stands for "unknown" (a seed known by address).
        let id = self.rng.random::<u64>() | 1;
        Identity::new(id, address, self.started_ms).expect("short address")
    }

    /// A new node on a new address, joining through the nodes at `seeds`.
    pub(crate) fn add_slot(&mut self, seeds: &[usize]) -> usize {
        let slot = self.slots.len();
        let address = format!("10.{}.{}.1:7401", slot / 250, slot % 250);
        let identity = self.fresh_identity(&address);
        self.by_address.insert(address.clone(), slot);
        self.slots.push(Slot {
            address,
            node: None,
            identity: identity.clone(),
            // Until `boot`, just below.
            fate: Fate::Crashed,
            notified: HashMap::new(),
            wake: None,
        });
        self.boot(slot, identity, seeds);
        slot
    }

    /// Starts the stopped node at `slot` again, under a new identity.
    pub(crate) fn restart(&mut self, slot: usize, seeds: &[usize]) {
        let address = self.slots[slot].address.clone();
        let identity = self.fresh_identity(&address);
        self.boot(slot, identity, seeds);
    }

    pub(crate) fn boot(&mut self, slot: usize, identity: Identity, seeds: &[usize]) {
        assert!(self.slots[slot].node.is_none(), "only stopped nodes start");
        let node = Membership::new(identity.clone(), config(), self.rng.random(), self.now());
        let target = &mut self.slots[slot];
        target.node = Some(node);
        target.identity = identity.clone();
        target.fate = Fate::Live;
        target.notified.clear();
        target.wake = None;
        self.note(format!(
            "node {slot} starts as {:x}, joining through {seeds:?}",
            identity.id()
        ));
        self.drain(slot);
        for &seed in seeds {
            let seed_address = self.slots[seed].address.clone();
            self.with_node(slot, |node, now| node.join(&seed_address, now))
                .expect("a well-formed address");
        }
    }

    /// Whether a node that took in (or will take in) a departure notice
    /// still runs the start that did.
    pub(crate) fn still_listening(&self, heard_by: &[(usize, NodeId)]) -> bool {
        heard_by.iter().any(|&(slot, id)| {
            self.slots[slot].node.is_some() && self.slots[slot].identity.id() == id
        })
    }

    /// The node at `slot` stops without a word. Every node runs a link to
    /// every member (as the runtime does); each of them times out one idle
    /// timeout later, and its node is told (`Membership::unreachable`).
    pub(crate) fn crash(&mut self, slot: usize) {
        self.slots[slot].node = None;
        self.slots[slot].wake = None;
        self.slots[slot].fate = Fate::Crashed;
        self.note(format!("node {slot} crashes"));
        let (address, silent) = (
            self.slots[slot].address.clone(),
            self.slots[slot].identity.id(),
        );
        for observer in self.live() {
            let kind = EventKind::LinkSilent {
                slot: observer,
                observer: self.slots[observer].identity.id(),
                address: address.clone(),
                silent,
            };
            self.push(self.elapsed + idle_timeout(), kind);
        }
    }

    pub(crate) fn leave(&mut self, slot: usize) -> Result<(), String> {
        self.farewell_receivers = Some(Vec::new());
        self.with_node(slot, |node, now| node.leave(now))?;
        let heard_by: Vec<(usize, NodeId)> = self
            .farewell_receivers
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|to| (to, self.slots[to].identity.id()))
            .collect();
        let heard = !heard_by.is_empty();
        self.slots[slot].node = None;
        self.slots[slot].wake = None;
        self.slots[slot].fate = Fate::Left { heard_by };
        self.note(format!("node {slot} leaves (heard: {heard})"));
        Ok(())
    }
}
