//! How this node sees each member: the states it reports, and the rows
//! the runtime turns into `/v1/members`.

use std::collections::HashMap;

use foca::{Identity as _, Member, State};
use serde::Serialize;

use super::Membership;
use super::identity::Identity;
use crate::cluster::interest::NodeId;

/// How this node sees a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; dead unless it refutes in time. Still linked to.
    Suspect,
    /// Declared dead by the cluster.
    Dead,
    /// Left on purpose.
    Left,
}

/// One member as this node sees it, for `/v1/members` (the runtime adds
/// names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its node id.
    pub id: NodeId,
    /// Where it is reached.
    pub advertise: String,
    /// Its state.
    pub state: MemberState,
    /// Grows every time it refutes a suspicion or renews itself:
    /// `renewal · 65536 + foca's incarnation`.
    pub incarnation: u64,
}

impl Membership {
    /// Every member this node knows of, itself excluded, in no order.
    pub fn members(&self) -> Vec<MemberStatus> {
        let journal = self.journal.lock();
        self.others()
            .map(|member| {
                let identity = member.id();
                MemberStatus {
                    id: identity.id,
                    advertise: identity.advertise.to_string(),
                    state: state_of(member, &journal.departed),
                    incarnation: incarnation(identity, member.incarnation()),
                }
            })
            .collect()
    }

    /// This node as its members see it: alive, at its latest incarnation
    /// (as of the last packet it sent).
    pub fn own_status(&self) -> MemberStatus {
        let identity = self.identity();
        MemberStatus {
            id: identity.id,
            advertise: identity.advertise.to_string(),
            state: if self.left {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            incarnation: incarnation(identity, self.journal.lock().own_incarnation),
        }
    }
}

pub(super) fn state_of(
    member: &Member<Identity>,
    departed: &HashMap<u64, Identity>,
) -> MemberState {
    match member.state() {
        State::Alive => MemberState::Alive,
        State::Suspect => MemberState::Suspect,
        State::Down if departed.get(&member.id().addr()) == Some(member.id()) => MemberState::Left,
        State::Down => MemberState::Dead,
    }
}

/// The incarnation reported for a member: `renewal · 65536 + foca's
/// incarnation`, so that it only grows.
fn incarnation(identity: &Identity, foca_incarnation: u16) -> u64 {
    (u64::from(identity.renewal) << 16) | u64::from(foca_incarnation)
}
