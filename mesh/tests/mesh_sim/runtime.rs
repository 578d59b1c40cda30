//! What the runtime does with the machines' outputs: membership's verdicts
//! and packets, interest's messages and routes, peers made and forgotten.

use std::collections::BTreeSet;
use std::time::Instant;

use starling_mesh::cluster::interest::NodeId;
use starling_mesh::cluster::membership::{Identity, MemberState, Membership, MembershipError};
use starling_mesh::cluster::{interest, membership};

use crate::model::Peer;
use crate::{Sim, interest_config};

impl Sim {
    pub(crate) fn membership_call(
        &mut self,
        slot: usize,
        what: &str,
        call: impl FnOnce(&mut Membership, Instant) -> Result<(), MembershipError>,
    ) {
        let now = self.now();
        let Some(node) = self.slots[slot].node.as_mut() else {
            return;
        };
        let result = call(&mut node.membership, now);
        node.membership_deadline = None;
        self.dirty.insert(slot);
        match result {
            Ok(()) => {}
            // Packets for an earlier start on the address, or from a member
            // held dead: foca refuses them, as it should.
            Err(MembershipError::Protocol(_)) => self.counters.refused_by_foca += 1,
            // Nothing here damages packets or makes bad addresses.
            Err(error) => self.fail(format!("node {slot}, {what}: {error}")),
        }
    }

    pub(crate) fn apply_membership(&mut self, slot: usize, output: membership::Output) {
        let me = self.node(slot).id;
        match output {
            membership::Output::Send { to, packet } => {
                self.send_datagram(slot, to.advertise(), packet);
            }
            membership::Output::Alive(member) => self.member_alive(slot, &member),
            membership::Output::Suspect(_) => {}
            membership::Output::Dead(member) => {
                let line = format!("{} holds {} dead", self.who(me), self.who(member.id()));
                self.note(line);
                self.forget(slot, member.id());
            }
            membership::Output::Left(member) => {
                let line = format!("{} holds {} left", self.who(me), self.who(member.id()));
                self.note(line);
                self.forget(slot, member.id());
            }
            membership::Output::Restarted { old, new } => {
                let line = format!(
                    "{} sees {} restarted as {}",
                    self.who(me),
                    self.who(old.id()),
                    self.who(new.id())
                );
                self.note(line);
                self.forget(slot, old.id());
            }
        }
    }

    pub(crate) fn apply_interest(&mut self, slot: usize, output: interest::Output) {
        match output {
            interest::Output::Send { to, message } => self.send_control(slot, to, message),
            interest::Output::Subscribe { peer, id, key } => {
                // The runtime routes through the peer's egress, which lives
                // as long as it holds the peer: a route for anyone else would
                // be lost there.
                if !self.node(slot).peers.contains_key(&peer) {
                    let what = format!(
                        "node {slot} told to route to {}, which its runtime does not hold",
                        self.who(peer)
                    );
                    self.fail(what);
                }
                let routes = &mut self.node_mut(slot).routes;
                if let Some(old) = routes.insert((peer, id), key.clone()) {
                    let what = format!(
                        "node {slot} told to route {}'s entry {id} twice: {old:?}, then {key:?}",
                        self.who(peer)
                    );
                    self.fail(what);
                }
            }
            interest::Output::Unsubscribe { peer, id } => {
                if self.node_mut(slot).routes.remove(&(peer, id)).is_none() {
                    let what = format!(
                        "node {slot} told to unroute {}'s entry {id}, which had no route",
                        self.who(peer)
                    );
                    self.fail(what);
                }
            }
        }
    }

    /// A member is alive: the runtime makes it a peer (replacing an earlier
    /// start on its address) and the lower id dials.
    pub(crate) fn member_alive(&mut self, slot: usize, member: &Identity) {
        let id = member.id();
        let node = self.node(slot);
        if id == node.id || node.peers.contains_key(&id) {
            return;
        }
        let Some(&at) = self.by_address.get(member.advertise()) else {
            self.fail(format!("node {slot} told of an unknown address {member:?}"));
            return;
        };
        let replaced: Vec<NodeId> = node.peers_at(at).collect();
        for old in replaced {
            self.forget(slot, old);
        }
        let now = self.elapsed;
        let node = self.node_mut(slot);
        node.peer_entry(id, at).down_since = Some(now);
        if node.id < id {
            self.dial(slot, at);
        }
    }

    /// Forgets a peer at once: its link closes (the other end sees it close,
    /// not as a departure) and its interest goes.
    pub(crate) fn forget(&mut self, slot: usize, id: NodeId) {
        let node = self.node_mut(slot);
        let peer = node.remove_peer(id);
        node.interest.forget(id);
        self.dirty.insert(slot);
        if let Some(Peer {
            slot: other,
            link: Some(_),
            ..
        }) = peer
        {
            self.drop_link(slot, other, false);
        }
    }

    // ----- Links -----

    /// Peers without a link past the grace period that membership does not
    /// hold alive are forgotten, as the runtime's `expire_peers` does.
    pub(crate) fn expire_peers(&mut self, slot: usize) {
        let grace = interest_config().withdraw_after;
        let now = self.elapsed;
        let node = self.node(slot);
        let expired: Vec<NodeId> = node
            .peers
            .iter()
            .filter(|(_, peer)| {
                peer.link.is_none() && peer.down_since.is_some_and(|since| now >= since + grace)
            })
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return;
        }
        let live: BTreeSet<NodeId> = node
            .membership
            .members()
            .into_iter()
            .filter(|member| matches!(member.state, MemberState::Alive | MemberState::Suspect))
            .map(|member| member.id)
            .collect();
        for id in expired.into_iter().filter(|id| !live.contains(id)) {
            self.forget(slot, id);
        }
    }

    // ----- The network -----
}
