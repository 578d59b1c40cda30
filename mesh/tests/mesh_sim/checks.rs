//! What "converged" means, checked: membership and links, every copy of
//! every node's interest and its routes, and where each event would go.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use starling_core::subject::pattern_matches;
use starling_mesh::cluster::interest::{InterestKey, NodeId};
use starling_mesh::cluster::membership::MemberState;

use crate::model::Fate;
use crate::sim::{advertised, local_keys};
use crate::{CHECK_EVERY, GROUPS, SUBJECTS, Sim};

impl Sim {
    /// Runs until the mesh converges, checking every `CHECK_EVERY`; fails
    /// after `bound`.
    pub(crate) fn converge(&mut self, bound: Duration, since: &str) -> Result<Duration, String> {
        let from = self.elapsed;
        loop {
            let took = self.elapsed - from;
            if let Some(what) = self.kept_deadline_divergence() {
                return Err(self.failure(&what));
            }
            match self.quick_divergence().or_else(|| self.divergence()) {
                None => return Ok(took),
                Some(what) if took > bound => {
                    return Err(
                        self.failure(&format!("not converged {took:?} after {since}: {what}"))
                    );
                }
                Some(_) => self.run_until(self.elapsed + CHECK_EVERY)?,
            }
        }
    }

    /// Runs on, calm, and checks that nothing undoes the convergence.
    pub(crate) fn stays_converged(&mut self, time: Duration) -> Result<(), String> {
        self.run_until(self.elapsed + time)?;
        match self.quick_divergence().or_else(|| self.divergence()) {
            None => Ok(()),
            Some(what) => {
                Err(self.failure(&format!("converged, then diverged within {time:?}: {what}")))
            }
        }
    }

    // ----- Checks -----

    /// A kept interest deadline later than the real one would make a node
    /// miss its timer: the simulator's shortcut would be wrong.
    pub(crate) fn kept_deadline_divergence(&self) -> Option<String> {
        self.live().into_iter().find_map(|slot| {
            let node = self.node(slot);
            let kept = node.interest_deadline?;
            let real = node.interest.poll_timeout();
            (kept > real).then(|| {
                format!("node {slot} kept interest's deadline {kept:?}, later than {real:?}")
            })
        })
    }

    /// What is visibly unfinished, cheaply: counts of members and links,
    /// and the interest versions each node holds of the others.
    pub(crate) fn quick_divergence(&self) -> Option<String> {
        let live = self.live();
        let others = live.len() - 1;
        for &slot in &live {
            let node = self.node(slot);
            let known = node.membership.live_count();
            if known != others {
                return Some(format!(
                    "node {slot} holds {known} members live of {others}"
                ));
            }
            let linked = node
                .peers
                .values()
                .filter(|peer| peer.link.is_some())
                .count();
            if node.peers.len() != others || linked != others {
                return Some(format!(
                    "node {slot} has {} peers, {linked} linked, of {others}",
                    node.peers.len()
                ));
            }
        }
        for &slot in &live {
            let versions: BTreeMap<NodeId, (u64, u64)> = self
                .node(slot)
                .interest
                .peer_versions()
                .into_iter()
                .map(|(peer, epoch, version)| (peer, (epoch, version)))
                .collect();
            for &other in live.iter().filter(|&&other| other != slot) {
                let peer = self.node(other);
                let held = versions.get(&peer.id).copied();
                if held != Some(peer.interest.version()) {
                    return Some(format!(
                        "node {slot} holds version {held:?} of node {other}'s interest, which is at {:?}",
                        peer.interest.version()
                    ));
                }
            }
        }
        None
    }

    pub(crate) fn divergence(&self) -> Option<String> {
        self.membership_divergence()
            .or_else(|| self.interest_divergence())
            .or_else(|| self.delivery_divergence())
    }

    /// Check 1: membership and links.
    pub(crate) fn membership_divergence(&self) -> Option<String> {
        let live = self.live();
        for &slot in &live {
            let node = self.node(slot);
            let mut alive = BTreeSet::new();
            for member in node.membership.members() {
                let Some(&of) = self.by_address.get(&member.advertise) else {
                    return Some(format!("node {slot} knows an unknown address: {member:?}"));
                };
                let target = &self.slots[of];
                let latest = member.id == target.last_id;
                let gone = matches!(member.state, MemberState::Dead | MemberState::Left);
                let wrong = match target.fate {
                    Fate::Live if !latest => Some("live, but under an earlier id"),
                    Fate::Live if member.state != MemberState::Alive => Some("live"),
                    Fate::Live => {
                        alive.insert(member.id);
                        None
                    }
                    _ if !gone => Some("stopped"),
                    Fate::Crashed if latest && member.state != MemberState::Dead => Some("crashed"),
                    Fate::Left if latest && member.state != MemberState::Left && self.heard(of) => {
                        Some("departed, and a node that heard it runs")
                    }
                    _ => None,
                };
                if let Some(what) = wrong {
                    return Some(format!("node {slot} sees node {of} ({what}) as {member:?}"));
                }
            }
            let expected: BTreeSet<NodeId> = live
                .iter()
                .filter(|&&other| other != slot)
                .map(|&other| self.node(other).id)
                .collect();
            if alive != expected {
                let missing: Vec<String> = expected
                    .difference(&alive)
                    .map(|&id| self.who(id))
                    .collect();
                return Some(format!("node {slot} does not hold alive {missing:?}"));
            }
            let linked: BTreeSet<NodeId> = node
                .peers
                .iter()
                .filter(|(_, peer)| peer.link.is_some())
                .map(|(id, _)| *id)
                .collect();
            if node.peers.len() != linked.len() || linked != expected {
                let peers: Vec<(String, bool)> = node
                    .peers
                    .iter()
                    .map(|(id, peer)| (self.who(*id), peer.link.is_some()))
                    .collect();
                return Some(format!(
                    "node {slot}'s peers (linked?) are {peers:?}, not the {} live nodes",
                    expected.len()
                ));
            }
        }
        None
    }

    /// Check 2: every copy of every live node's interest, the routes made
    /// from it, and nothing left of anyone else.
    pub(crate) fn interest_divergence(&self) -> Option<String> {
        let live = self.live();
        for &slot in &live {
            let node = self.node(slot);
            let local = local_keys(&node.interest);
            let wanted = advertised(&node.subscriptions);
            if local != wanted {
                return Some(format!(
                    "node {slot} advertises {local:?}; its subscriptions need {wanted:?}"
                ));
            }
        }
        for &slot in &live {
            let node = self.node(slot);
            for &other in live.iter().filter(|&&other| other != slot) {
                let peer = self.node(other);
                let mut expected = peer.interest.local_entries();
                expected.sort_unstable();
                let known = node.interest.remote_entries(peer.id);
                if known != expected {
                    return Some(format!(
                        "node {slot} holds {known:?} of node {other}, which advertises {expected:?}"
                    ));
                }
                let routed: Vec<(u64, InterestKey)> = node
                    .routes
                    .range((peer.id, 0)..=(peer.id, u64::MAX))
                    .map(|((_, id), key)| (*id, key.clone()))
                    .collect();
                if routed != known {
                    return Some(format!(
                        "node {slot} routes {routed:?} to node {other} but holds {known:?}"
                    ));
                }
            }
            for (peer, epoch, version) in node.interest.peer_versions() {
                if self.current(peer).is_none() {
                    return Some(format!(
                        "node {slot} still holds interest of {} (epoch {epoch}, version {version}): {:?}",
                        self.who(peer),
                        node.interest.remote_entries(peer)
                    ));
                }
            }
            if let Some(((peer, id), key)) = node
                .routes
                .iter()
                .find(|((peer, _), _)| self.current(*peer).is_none())
            {
                return Some(format!(
                    "node {slot} still routes {}'s entry {id} ({key:?})",
                    self.who(*peer)
                ));
            }
        }
        None
    }

    /// Check 3: where an event published on each live node would go, from
    /// its routes as the bus uses them, against who subscribes.
    pub(crate) fn delivery_divergence(&self) -> Option<String> {
        let live = self.live();
        for &slot in &live {
            let node = self.node(slot);
            let mut routed_keys: BTreeSet<(NodeId, &InterestKey)> = BTreeSet::new();
            for ((peer, id), key) in &node.routes {
                if !routed_keys.insert((*peer, key)) {
                    return Some(format!(
                        "node {slot} has two routes to {} for {key:?} (one is {id})",
                        self.who(*peer)
                    ));
                }
            }
            for subject in SUBJECTS {
                // Plain interest: one delivery per peer whose routes match,
                // however many do; counted per node, so that two ids of one
                // node would show as a double delivery.
                let mut plain_peers: BTreeSet<NodeId> = BTreeSet::new();
                // Queue groups: the nodes the bus chooses one member among.
                let mut members: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
                for ((peer, _), key) in &node.routes {
                    if !pattern_matches(&key.pattern, subject) {
                        continue;
                    }
                    let Some(to) = self.current(*peer) else {
                        return Some(format!(
                            "node {slot} would send {subject} to {}, which is not running",
                            self.who(*peer)
                        ));
                    };
                    match &key.group {
                        None => {
                            plain_peers.insert(*peer);
                        }
                        Some(group) => {
                            members.entry(group).or_default().insert(to);
                        }
                    }
                }
                for key in &node.subscriptions {
                    if let Some(group) = &key.group
                        && pattern_matches(&key.pattern, subject)
                    {
                        members.entry(group).or_default().insert(slot);
                    }
                }
                let mut received: BTreeMap<usize, usize> = BTreeMap::new();
                for peer in &plain_peers {
                    let to = self.current(*peer).expect("checked above");
                    *received.entry(to).or_default() += 1;
                }
                for &other in live.iter().filter(|&&other| other != slot) {
                    let wants =
                        self.node(other).subscriptions.iter().any(|key| {
                            key.group.is_none() && pattern_matches(&key.pattern, subject)
                        });
                    let got = received.get(&other).copied().unwrap_or(0);
                    if got != usize::from(wants) {
                        return Some(format!(
                            "an event on {subject} published on node {slot} reaches node {other} {got} times (it subscribes: {wants})"
                        ));
                    }
                }
                for group in GROUPS {
                    let expected: BTreeSet<usize> = live
                        .iter()
                        .copied()
                        .filter(|&member| {
                            self.node(member).subscriptions.iter().any(|key| {
                                key.group.as_deref() == Some(group)
                                    && pattern_matches(&key.pattern, subject)
                            })
                        })
                        .collect();
                    let chosen_among = members.remove(group).unwrap_or_default();
                    if chosen_among != expected {
                        return Some(format!(
                            "node {slot} would choose the {group} member for {subject} among nodes {chosen_among:?}, not {expected:?}"
                        ));
                    }
                }
            }
        }
        None
    }
}
