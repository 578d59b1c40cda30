//! What "converged" means, checked, and what membership costs an idle
//! cluster.

use std::collections::HashSet;
use std::time::Duration;

use starling_mesh::cluster::interest::NodeId;
use starling_mesh::cluster::membership::MemberState;

use crate::Sim;
use crate::model::Fate;

impl Sim {
    /// Whether every live node knows as many live members as there are:
    /// cheap, checked before [`Sim::divergence`].
    pub(crate) fn counts_agree(&self) -> bool {
        let live = self.live();
        live.iter().all(|&slot| {
            self.slots[slot]
                .node
                .as_ref()
                .is_some_and(|node| node.live_count() == live.len() - 1)
        })
    }

    /// What is wrong with the membership now, if anything.
    pub(crate) fn divergence(&self) -> Option<String> {
        let live = self.live();
        for &slot in &live {
            let node = self.slots[slot].node.as_ref()?;
            let mut alive = HashSet::new();
            for member in node.members() {
                let Some(&of) = self.by_address.get(&member.advertise) else {
                    return Some(format!("node {slot} knows an unknown address {member:?}"));
                };
                let target = &self.slots[of];
                let current = member.id == target.identity.id();
                let gone = matches!(member.state, MemberState::Dead | MemberState::Left);
                let wrong = match &target.fate {
                    Fate::Live if !current => Some("live, under an earlier id"),
                    Fate::Live => (member.state != MemberState::Alive).then_some("live"),
                    // An earlier start (the latest may have died unnoticed)
                    // must be gone too.
                    Fate::Crashed | Fate::Left { .. } if !current => {
                        (!gone).then_some("stopped, under an earlier id")
                    }
                    Fate::Crashed => (member.state != MemberState::Dead).then_some("crashed"),
                    Fate::Left { heard_by } if self.still_listening(heard_by) => {
                        (member.state != MemberState::Left).then_some("departed")
                    }
                    Fate::Left { .. } => (!gone).then_some("departed unheard"),
                };
                if let Some(what) = wrong {
                    return Some(format!("node {slot} sees node {of} ({what}) as {member:?}"));
                }
                if member.state == MemberState::Alive {
                    alive.insert(member.id);
                }
            }
            if alive.len() != live.len() - 1 {
                let unseen: Vec<usize> = live
                    .iter()
                    .copied()
                    .filter(|&of| of != slot && !alive.contains(&self.slots[of].identity.id()))
                    .collect();
                return Some(format!("node {slot} does not know live nodes {unseen:?}"));
            }
            let notified: HashSet<NodeId> = self.slots[slot].notified.keys().copied().collect();
            if notified != alive {
                return Some(format!(
                    "node {slot} notified {} live members but sees {} alive",
                    notified.len(),
                    alive.len()
                ));
            }
        }
        None
    }

    /// Live nodes that do not hold the node at `slot` alive, and live
    /// nodes it does not hold alive.
    pub(crate) fn unaware_of(&self, slot: usize) -> usize {
        let holds_alive = |observer: usize, of: usize| {
            let id = self.slots[of].identity.id();
            self.slots[observer].node.as_ref().is_some_and(|node| {
                node.members()
                    .iter()
                    .any(|member| member.id == id && member.state == MemberState::Alive)
            })
        };
        self.live()
            .into_iter()
            .filter(|&other| other != slot)
            .map(|other| {
                usize::from(!holds_alive(other, slot)) + usize::from(!holds_alive(slot, other))
            })
            .sum()
    }

    /// Runs until the membership converges, checking every 50 ms of
    /// virtual time; fails after `bound`.
    pub(crate) fn converge(&mut self, bound: Duration) -> Result<Duration, String> {
        let start = self.elapsed;
        loop {
            if self.counts_agree() && self.divergence().is_none() {
                return Ok(self.elapsed - start);
            }
            if self.elapsed - start > bound {
                let what = self
                    .divergence()
                    .unwrap_or_else(|| "live member counts differ".into());
                return Err(self.failure(&format!(
                    "not converged {:?} after the last change: {what}",
                    self.elapsed - start
                )));
            }
            self.run_for(Duration::from_millis(50))?;
        }
    }

    /// Bytes sent per live node per second over `time`, with no faults.
    pub(crate) fn idle_bytes_per_node_second(&mut self, time: Duration) -> Result<f64, String> {
        let before = self.bytes_sent;
        self.run_for(time)?;
        let sent = (self.bytes_sent - before) as f64;
        Ok(sent / self.live().len() as f64 / time.as_secs_f64())
    }
}
