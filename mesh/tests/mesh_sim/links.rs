//! Links between nodes, as the runtime keeps them: dials, handshakes,
//! backoff, one link per pair, closing; datagrams and control messages on
//! them.

use std::time::Duration;

use rand::RngExt;
use starling_mesh::cluster::interest::{InterestMessage, NodeId};
use starling_mesh::cluster::membership::PACKET_BYTES_MAX;

use crate::model::{EventKind, Link, pair};
use crate::{HANDSHAKE_TIMEOUT, KIND_DEPARTURE, REDIAL_FIRST, REDIAL_MOST, Sim};

impl Sim {
    pub(crate) fn dial(&mut self, slot: usize, to: usize) {
        let start = self.slots[slot].start;
        if !self.node_mut(slot).dialing.insert(to) {
            return;
        }
        let round_trip = self.delay() * 2;
        let began = self.elapsed;
        self.push(
            began + round_trip,
            EventKind::DialArrives {
                from: slot,
                start,
                to,
                began,
            },
        );
    }

    pub(crate) fn dial_arrives(&mut self, from: usize, start: u32, to: usize, began: Duration) {
        if !self.running(from, start) {
            return;
        }
        if self.slots[to].node.is_none() || !self.reachable(from, to) {
            self.counters.dials_failed += 1;
            self.push(
                began + HANDSHAKE_TIMEOUT,
                EventKind::DialTimesOut { from, start, to },
            );
            return;
        }
        let node = self.node_mut(from);
        node.dialing.remove(&to);
        node.backoff.remove(&to);
        let seed = node.seeds.contains(&to);
        self.establish(from, to, seed);
    }

    pub(crate) fn dial_times_out(&mut self, from: usize, start: u32, to: usize) {
        if !self.running(from, start) {
            return;
        }
        self.node_mut(from).dialing.remove(&to);
        self.schedule_redial(from, to);
    }

    pub(crate) fn schedule_redial(&mut self, slot: usize, to: usize) {
        let start = self.slots[slot].start;
        let node = self.node_mut(slot);
        if !node.dialing.insert(to) {
            return;
        }
        let wait = node.backoff.get(&to).copied().unwrap_or(REDIAL_FIRST);
        node.backoff.insert(to, (wait * 2).min(REDIAL_MOST));
        self.push(
            self.elapsed + wait,
            EventKind::Redial {
                from: slot,
                start,
                to,
            },
        );
    }

    pub(crate) fn redial(&mut self, from: usize, start: u32, to: usize) {
        if !self.running(from, start) {
            return;
        }
        self.node_mut(from).dialing.remove(&to);
        if self.wanted(from, to) {
            self.dial(from, to);
        }
    }

    /// Whether the node at `slot` should (re)dial `to`: a seed not linked,
    /// or a peer there without a link whose id is higher.
    pub(crate) fn wanted(&self, slot: usize, to: usize) -> bool {
        let node = self.node(slot);
        if node.seeds.contains(&to) {
            let linked = node
                .seed_peers
                .get(&to)
                .and_then(|id| node.peers.get(id))
                .is_some_and(|peer| peer.link.is_some());
            return !linked;
        }
        node.peers_at(to)
            .any(|id| node.id < id && node.peers[&id].link.is_none())
    }

    /// A dial from `dialer` got through: both ends take the link, unless one
    /// exists already (the runtime keeps one link per pair).
    pub(crate) fn establish(&mut self, dialer: usize, accepter: usize, seed: bool) {
        let (dialer_id, accepter_id) = (self.node(dialer).id, self.node(accepter).id);
        if self.links.contains_key(&pair(dialer, accepter)) {
            if seed {
                self.node_mut(dialer)
                    .seed_peers
                    .insert(accepter, accepter_id);
            }
            return;
        }
        self.generation += 1;
        self.counters.links_made += 1;
        let generation = self.generation;
        let mut ends = [(dialer, dialer_id), (accepter, accepter_id)];
        ends.sort_unstable();
        self.links.insert(
            pair(dialer, accepter),
            Link {
                generation,
                ends,
                last_arrival: [Duration::ZERO; 2],
            },
        );
        let line = format!(
            "link {} - {} up",
            self.who(dialer_id),
            self.who(accepter_id)
        );
        self.note(line);
        self.take_link(dialer, accepter, accepter_id, generation, seed);
        self.take_link(accepter, dialer, dialer_id, generation, false);
    }

    /// One end of a new link: the peer's earlier starts go, the peer is
    /// linked, interest starts with a snapshot each way, and membership
    /// joins through a seed or meets anyone else.
    pub(crate) fn take_link(
        &mut self,
        slot: usize,
        other: usize,
        id: NodeId,
        generation: u64,
        seed: bool,
    ) {
        let restarted: Vec<NodeId> = self
            .node(slot)
            .peers_at(other)
            .filter(|&known| known != id)
            .collect();
        for old in restarted {
            self.forget(slot, old);
        }
        let address = self.slots[other].address.clone();
        let node = self.node_mut(slot);
        let peer = node.peer_entry(id, other);
        peer.link = Some(generation);
        peer.down_since = None;
        node.interest.link_up(id);
        if seed {
            node.seed_peers.insert(other, id);
            self.membership_call(slot, "join", |membership, now| {
                membership.join(&address, now)
            });
        } else {
            self.membership_call(slot, "meet", |membership, now| {
                membership.meet(&address, now)
            });
        }
        self.dirty.insert(slot);
    }

    /// The link between `a` and `b` is gone; each end still running hears it
    /// close (as a departure if `departed`).
    pub(crate) fn drop_link(&mut self, a: usize, b: usize, departed: bool) {
        let Some(link) = self.links.remove(&pair(a, b)) else {
            return;
        };
        let [(low, low_id), (high, high_id)] = link.ends;
        let line = format!(
            "link {} - {} down{}",
            self.who(low_id),
            self.who(high_id),
            if departed { " (departed)" } else { "" }
        );
        self.note(line);
        self.link_closed(low, high_id, link.generation, departed);
        self.link_closed(high, low_id, link.generation, departed);
    }

    /// As the runtime's `link_closed`: only the current link of a known peer
    /// counts; a departure forgets the peer, anything else waits for it.
    pub(crate) fn link_closed(&mut self, slot: usize, id: NodeId, generation: u64, departed: bool) {
        let now = self.elapsed;
        let instant = self.now();
        let Some(node) = self.slots[slot].node.as_mut() else {
            return;
        };
        let Some(peer) = node.peers.get_mut(&id) else {
            return;
        };
        if peer.link != Some(generation) {
            return;
        }
        if departed {
            self.forget(slot, id);
            return;
        }
        peer.link = None;
        peer.down_since = Some(now);
        let other = peer.slot;
        node.link_down(id, instant);
        node.backoff.remove(&other);
        self.dirty.insert(slot);
        if self.wanted(slot, other) {
            self.schedule_redial(slot, other);
        }
    }

    pub(crate) fn send_datagram(&mut self, from: usize, to: &str, packet: Vec<u8>) {
        self.counters.datagrams_sent += 1;
        if packet.len() > PACKET_BYTES_MAX {
            self.fail(format!("node {from} sent {} bytes", packet.len()));
            return;
        }
        let Some(&to) = self.by_address.get(to) else {
            self.fail(format!("node {from} sent to an unknown address {to}"));
            return;
        };
        if self.blocked(from, to) || self.rng.random_bool(self.network.loss) {
            return;
        }
        self.counters.datagrams_through += 1;
        let delay = self.delay();
        // Only the departure notices: foca's own last packets carry the
        // notice only when they have room, and alone make the node dead.
        let farewell = self
            .leaving
            .filter(|_| packet.first() == Some(&KIND_DEPARTURE));
        self.push(
            self.elapsed + delay,
            EventKind::Datagram {
                to,
                packet,
                farewell,
            },
        );
    }

    /// Interest messages go on the peer's link, in order; with no link they
    /// are dropped, as the runtime drops them.
    pub(crate) fn send_control(&mut self, from: usize, to: NodeId, message: InterestMessage) {
        let Some(peer) = self.node(from).peers.get(&to) else {
            return;
        };
        let (Some(generation), to) = (peer.link, peer.slot) else {
            return;
        };
        let delay = self.delay();
        let link = self
            .links
            .get_mut(&pair(from, to))
            .expect("a linked peer's link is up");
        assert_eq!(link.generation, generation, "one link per pair");
        let lane = usize::from(from > to);
        let arrival = (self.elapsed + delay).max(link.last_arrival[lane]);
        link.last_arrival[lane] = arrival;
        self.counters.control_messages += 1;
        self.push(
            arrival,
            EventKind::Control {
                from,
                to,
                generation,
                message,
            },
        );
    }

    pub(crate) fn deliver_control(
        &mut self,
        from: usize,
        to: usize,
        generation: u64,
        message: InterestMessage,
    ) {
        let Some(link) = self.links.get(&pair(from, to)) else {
            return;
        };
        if link.generation != generation {
            return;
        }
        let sender = link.id_at(from);
        self.node_mut(to).interest.handle(sender, message);
        self.dirty.insert(to);
    }
}
