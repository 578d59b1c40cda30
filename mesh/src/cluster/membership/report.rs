//! Output diffing: foca notifies joins and verdicts but not suspicion or
//! its refutation, so after every call the wrapper compares foca's state
//! of each member that may have changed with what it last reported, and
//! reports the difference as [`Output`]s.

use std::collections::VecDeque;
use std::time::Instant;

use foca::{Identity as _, State};

use super::identity::Identity;
use super::journal::Claim;
use super::status::{MemberState, state_of};
use super::{Membership, Output, Suspicion};

#[derive(Debug)]
pub(super) struct Reported {
    identity: Identity,
    state: MemberState,
    incarnation: u16,
}

impl Membership {
    /// Compares foca's state of every member that may have changed with
    /// what was last reported, and reports the difference.
    pub(super) fn report_changes(&mut self, now: Instant) {
        let own = self.identity().addr();
        let mut candidates: Vec<u64> = std::mem::take(&mut self.effects.changed);
        let claims = std::mem::take(&mut self.journal.lock().claims);
        candidates.extend(
            claims
                .iter()
                .filter(|claim| claim.identity.addr() != own)
                .filter(|claim| may_change(self.reported.get(&claim.identity.addr()), claim))
                .map(|claim| claim.identity.addr()),
        );
        if candidates.is_empty() {
            return;
        }
        candidates.sort_unstable();
        candidates.dedup();
        let journal = self.journal.lock();
        let mut found = Vec::with_capacity(candidates.len());
        for member in self.foca.iter_membership_state() {
            let address = member.id().addr();
            if candidates.binary_search(&address).is_err() {
                continue;
            }
            found.push(address);
            let state = state_of(member, &journal.departed);
            if state == MemberState::Suspect {
                let timeout = self.tuned.1 + self.config.probe_period;
                let suspicion = self.suspicions.entry(address).or_insert(Suspicion {
                    member: member.clone(),
                    deadline: now + timeout,
                });
                // Suspected again at a newer incarnation: a new suspicion.
                if suspicion.member != *member {
                    suspicion.member = member.clone();
                    suspicion.deadline = now + timeout;
                }
            } else {
                self.suspicions.remove(&address);
            }
            let previous = self.reported.insert(
                address,
                Reported {
                    identity: member.id().clone(),
                    state,
                    incarnation: member.incarnation(),
                },
            );
            report(previous, member.id(), state, &mut self.outputs);
        }
        // Members foca forgot (`forget_dead_after`): reported dead or left
        // already.
        found.sort_unstable();
        for address in candidates {
            if found.binary_search(&address).is_err() {
                self.reported.remove(&address);
                self.suspicions.remove(&address);
            }
        }
    }
}

/// Whether `claim` may change foca's state of a member last reported as
/// `reported`: a cheap filter, so that the usual packet (a ping from a
/// member known alive) costs no scan of the member list.
fn may_change(reported: Option<&Reported>, claim: &Claim) -> bool {
    let Some(reported) = reported else {
        return true;
    };
    if reported.identity != claim.identity {
        return true;
    }
    match (reported.state, claim.state) {
        // Down is final for an identity.
        (MemberState::Dead | MemberState::Left, _) => false,
        (_, State::Down) => true,
        (_, State::Alive) => claim.incarnation > reported.incarnation,
        (MemberState::Alive, State::Suspect) => claim.incarnation >= reported.incarnation,
        (MemberState::Suspect, State::Suspect) => claim.incarnation > reported.incarnation,
    }
}

/// Queues what changed between `previous` and (`identity`, `state`).
fn report(
    previous: Option<Reported>,
    identity: &Identity,
    state: MemberState,
    outputs: &mut VecDeque<Output>,
) {
    let was = match previous {
        Some(previous) if previous.identity.id != identity.id => {
            outputs.push_back(Output::Restarted {
                old: previous.identity,
                new: identity.clone(),
            });
            None
        }
        Some(previous) => Some(previous.state),
        None => None,
    };
    let live = |state: Option<MemberState>| {
        matches!(state, Some(MemberState::Alive | MemberState::Suspect))
    };
    match state {
        MemberState::Alive if was != Some(MemberState::Alive) => {
            outputs.push_back(Output::Alive(identity.clone()));
        }
        MemberState::Suspect if was != Some(MemberState::Suspect) => {
            if !live(was) {
                // Never reported alive (or reported gone): link first.
                outputs.push_back(Output::Alive(identity.clone()));
            }
            outputs.push_back(Output::Suspect(identity.clone()));
        }
        // A member first heard of as gone was never linked: nothing to undo.
        MemberState::Dead if live(was) => outputs.push_back(Output::Dead(identity.clone())),
        MemberState::Left if was.is_some() && was != Some(MemberState::Left) => {
            outputs.push_back(Output::Left(identity.clone()));
        }
        _ => {}
    }
}
