//! Anti-entropy: pulling whole views. A node pulls a seed's view to join
//! (memberlist's "push/pull"), a newly linked node's if it does not know
//! it, its seeds' and a few dead members' while it has no live member, and
//! every `sync_interval` it sends a random member a digest of its view: if
//! the two differ, they swap whole views. SWIM spreads each piece of news a
//! bounded number of times; this catches what it missed.

use foca::{Identity as _, Member, State};
use rand::RngExt;
use starling_core::hash::fnv1a;

use super::identity::Identity;
use super::status::{MemberState, state_of};
use super::{Membership, MembershipError, Output, PACKET_BYTES_MAX, wire};

impl Membership {
    pub(super) fn request_state(&mut self, from: &Identity) {
        let request = wire::encode_state_request(self.foca.identity());
        self.outputs.push_back(Output::Send {
            to: from.clone(),
            packet: request,
        });
    }

    pub(super) fn answer_state_request(&mut self, asker: Identity) -> Result<(), MembershipError> {
        if asker.addr() == self.identity().addr() {
            return Err(foca::Error::DataFromOurselves.into());
        }
        // The asker is alive (it asked): learning it here is how a
        // newcomer becomes known, and this node spreads the news.
        self.foca.apply_many(
            std::iter::once(Member::alive(asker.clone())),
            true,
            &mut self.effects,
        )?;
        let packets = wire::encode_state(
            self.others().filter(|member| member.id() != &asker),
            &self.journal.lock().departed,
            PACKET_BYTES_MAX,
        );
        for packet in packets {
            self.outputs.push_back(Output::Send {
                to: asker.clone(),
                packet,
            });
        }
        Ok(())
    }

    pub(super) fn rejoin(&mut self) {
        for seed in self.seeds.clone() {
            self.request_state(&seed);
        }
        // A node that is its own cluster's seed (or whose seeds are all
        // gone) knocks on the doors of members it holds dead.
        let dead: Vec<Identity> = self
            .foca
            .iter_membership_state()
            .filter(|member| member.state() == State::Down)
            .map(|member| member.id().clone())
            .collect();
        for _ in 0..dead.len().min(2) {
            let pick = self.rng.random_range(0..dead.len());
            self.request_state(&dead[pick]);
        }
    }

    pub(super) fn send_digest_to_random_member(&mut self) {
        let live = self.foca.num_members();
        if live == 0 {
            return;
        }
        let pick = self.rng.random_range(0..live);
        let member = self.foca.iter_members().nth(pick).map(|m| m.id().clone());
        if let Some(member) = member {
            let packet = wire::encode_digest(self.identity(), self.digest());
            self.outputs.push_back(Output::Send { to: member, packet });
        }
    }

    /// A digest of who is in the cluster as this node sees it, itself
    /// included: equal on every node once membership has converged. Leaves
    /// out what differs while news is still spreading by design
    /// (incarnations, suspicion).
    fn digest(&self) -> u64 {
        let journal = self.journal.lock();
        let digest_of = |identity: &Identity, state: MemberState| {
            let class: u8 = match state {
                MemberState::Alive | MemberState::Suspect => 0,
                MemberState::Dead => 1,
                MemberState::Left => 2,
            };
            let mut bytes = [0u8; 27];
            bytes[..8].copy_from_slice(&identity.id.to_be_bytes());
            bytes[8..16].copy_from_slice(&identity.started_ms.to_be_bytes());
            bytes[16..18].copy_from_slice(&identity.renewal.to_be_bytes());
            bytes[18..26].copy_from_slice(&identity.address_key.to_be_bytes());
            bytes[26] = class;
            fnv1a(&bytes)
        };
        // A sum: the order of foca's list differs from node to node.
        self.others()
            .map(|member| digest_of(member.id(), state_of(member, &journal.departed)))
            .fold(
                digest_of(self.identity(), MemberState::Alive),
                u64::wrapping_add,
            )
    }

    pub(super) fn answer_digest(
        &mut self,
        asker: Identity,
        digest: u64,
    ) -> Result<(), MembershipError> {
        if asker.addr() == self.identity().addr() {
            return Err(foca::Error::DataFromOurselves.into());
        }
        if digest != self.digest() {
            // Either side may hold what the other lacks: swap views.
            self.request_state(&asker);
            self.answer_state_request(asker)?;
        }
        Ok(())
    }
}
