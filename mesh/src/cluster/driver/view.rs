//! The driver's report: members, links and interest, for `/v1/` and
//! `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::Driver;
use crate::cluster::interest::InterestKey;
use crate::cluster::view::{
    ClusterView, InterestEntryView, InterestView, LinkView, MemberView, PeerInterestView, hex_id,
};

impl Driver {
    pub(super) fn view(&self) -> ClusterView {
        let members = self
            .gossip
            .members()
            .into_iter()
            .map(|(member, name)| {
                let this_node = member.id == self.our_id();
                let name = match name {
                    _ if this_node => self.local.hello.name.clone(),
                    Some(name) => name.to_owned(),
                    None => member.advertise.clone(),
                };
                MemberView {
                    id: hex_id(member.id),
                    name,
                    linked: self
                        .peers
                        .get(&member.id)
                        .is_some_and(|peer| peer.link.is_some()),
                    advertise: member.advertise,
                    state: member.state,
                    incarnation: member.incarnation,
                    this_node,
                }
            })
            .collect();
        let links = self
            .peers
            .iter()
            .filter_map(|(id, peer)| {
                let egress = peer.egress.as_ref()?;
                let state = if peer.link.is_some() { "up" } else { "down" };
                let (name, address) = (peer.name.clone(), peer.advertise.clone());
                let mut view = LinkView::new(hex_id(*id), name, address, state, &egress.counters);
                if let Some(link) = &peer.link {
                    view.dialed = link.dialer == self.our_id();
                    view.rtt_us = Some(link.connection.rtt().as_micros() as u64);
                }
                view.dropped_out += egress.queue.dropped();
                let held = egress.counters.held_out.load(Ordering::Relaxed) as usize;
                view.pending_out = egress.queue.pending() + held;
                view.interest_entries = self.interest.remote_entries(*id).len();
                Some(view)
            })
            .chain(self.gone.iter().map(|(id, gone)| {
                let (name, address) = (gone.name.clone(), gone.advertise.clone());
                LinkView::new(hex_id(*id), name, address, "gone", &gone.counters)
            }))
            .collect();
        let entries = |list: Vec<(u64, InterestKey)>| {
            list.into_iter()
                .map(|(id, key)| InterestEntryView {
                    id,
                    pattern: key.pattern,
                    queue_group: key.group,
                })
                .collect::<Vec<_>>()
        };
        let versions: HashMap<_, _> = self
            .interest
            .peer_versions()
            .into_iter()
            // Epoch 0: no snapshot from the peer yet.
            .filter(|(_, epoch, _)| *epoch != 0)
            .map(|(peer, epoch, version)| (peer, (epoch, version)))
            .collect();
        let (epoch, version) = self.interest.version();
        let interest = InterestView {
            epoch: hex_id(epoch),
            version,
            local: entries(self.interest.local_entries()),
            peers: self
                .peers
                .iter()
                .map(|(id, peer)| PeerInterestView {
                    peer_id: hex_id(*id),
                    peer_name: peer.name.clone(),
                    epoch: versions.get(id).map(|(epoch, _)| hex_id(*epoch)),
                    version: versions.get(id).map(|(_, version)| *version),
                    entries: entries(self.interest.remote_entries(*id)),
                })
                .collect(),
        };
        ClusterView {
            node_id: hex_id(self.our_id()),
            cluster: self.local.hello.cluster.clone(),
            cluster_addr: self.local.hello.advertise.clone(),
            authenticated: self.local.authenticated,
            members,
            membership: self.gossip.figures(),
            links,
            interest,
        }
    }
}
