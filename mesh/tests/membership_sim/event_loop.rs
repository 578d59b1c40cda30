//! The simulator's clock and event loop: datagrams through the network,
//! each node's timer, and every node's outputs carried out.

use std::time::{Duration, Instant};

use rand::RngExt;
use starling_mesh::cluster::membership::{Membership, MembershipError, Output};

use crate::Sim;
use crate::model::{Event, EventKind, Fate};

impl Sim {
    pub(crate) fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    pub(crate) fn note(&mut self, what: String) {
        self.log
            .push(format!("{:>9.3}s {what}", self.elapsed.as_secs_f64()));
    }

    pub(crate) fn failure(&self, what: &str) -> String {
        let mut report = format!(
            "seed {}: {what}\nreplay: STARLING_SIM_SEED={} cargo test -p starling-mesh --test membership_sim -- --nocapture\nlast events, newest first:\n",
            self.seed, self.seed
        );
        for line in self.log.iter().rev().take(60) {
            report.push_str(line);
            report.push('\n');
        }
        report
    }

    /// Calls into a node, then carries out what it asked for.
    pub(crate) fn with_node(
        &mut self,
        slot: usize,
        call: impl FnOnce(&mut Membership, Instant) -> Result<(), MembershipError>,
    ) -> Result<(), String> {
        let now = self.now();
        let node = self.slots[slot].node.as_mut().expect("a live node");
        let result = call(node, now);
        self.drain(slot);
        match result {
            // Datagrams meant for an earlier start at the same address, or
            // from a member this node holds dead, are refused by foca:
            // expected. A damaged packet is not: nothing here damages them.
            Err(error @ (MembershipError::Malformed(_) | MembershipError::TooBig(_))) => {
                Err(self.failure(&format!("node {slot}: {error}")))
            }
            Err(MembershipError::Protocol(error)) => {
                self.note(format!("node {slot}: {error}"));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn drain(&mut self, slot: usize) {
        while let Some(output) = self.slots[slot]
            .node
            .as_mut()
            .and_then(Membership::poll_output)
        {
            let notified = &mut self.slots[slot].notified;
            match output {
                Output::Send { to, packet } => self.send(slot, to.advertise(), packet),
                Output::Alive(member) | Output::Suspect(member) => {
                    notified.insert(member.id(), member);
                }
                Output::Dead(member) | Output::Left(member) => {
                    notified.remove(&member.id());
                }
                Output::Restarted { old, .. } => {
                    notified.remove(&old.id());
                }
            }
        }
        self.schedule_wake(slot);
    }

    pub(crate) fn schedule_wake(&mut self, slot: usize) {
        let Some(deadline) = self.slots[slot]
            .node
            .as_ref()
            .and_then(Membership::poll_timeout)
        else {
            return;
        };
        let at = (deadline - self.base).max(self.elapsed);
        if self.slots[slot].wake.is_none_or(|wake| at < wake) {
            self.slots[slot].wake = Some(at);
            self.push(at, EventKind::Wake { slot });
        }
    }

    pub(crate) fn push(&mut self, at: Duration, kind: EventKind) {
        self.sequence += 1;
        self.events.push(Event {
            at,
            sequence: self.sequence,
            kind,
        });
    }

    pub(crate) fn send(&mut self, from: usize, to: &str, packet: Vec<u8>) {
        assert!(packet.len() <= starling_mesh::cluster::membership::PACKET_BYTES_MAX);
        self.bytes_sent += packet.len() as u64;
        let Some(&to) = self.by_address.get(to) else {
            return;
        };
        if let Some(partition) = &self.partition {
            let (source, target) = (
                partition.cut_off.contains(&from),
                partition.cut_off.contains(&to),
            );
            if source != target && (!partition.one_way || source) {
                return;
            }
        }
        if self.rng.random_bool(self.network.loss) {
            return;
        }
        if let Some(receivers) = &mut self.farewell_receivers {
            receivers.push(to);
        }
        let spread = self.network.delay_max - self.network.delay_min;
        let delay = self.network.delay_min + spread.mul_f64(self.rng.random());
        self.push(
            self.elapsed + delay,
            EventKind::Deliver { slot: to, packet },
        );
    }

    /// Runs every event up to `elapsed + time`.
    pub(crate) fn run_for(&mut self, time: Duration) -> Result<(), String> {
        let end = self.elapsed + time;
        while self.events.peek().is_some_and(|event| event.at <= end) {
            let event = self.events.pop().expect("peeked");
            self.elapsed = event.at;
            match event.kind {
                EventKind::Deliver { slot, packet } => {
                    if self.slots[slot].node.is_some() {
                        self.with_node(slot, |node, now| node.handle_packet(&packet, now))?;
                    }
                }
                EventKind::Wake { slot } => {
                    if self.slots[slot].wake == Some(event.at) {
                        self.slots[slot].wake = None;
                        self.with_node(slot, |node, now| node.handle_timeout(now))?;
                    }
                }
                EventKind::LinkSilent {
                    slot,
                    observer,
                    address,
                    silent,
                } => {
                    // A node that restarted since has new links.
                    if self.slots[slot].node.is_some() && self.slots[slot].identity.id() == observer
                    {
                        self.with_node(slot, |node, now| {
                            node.unreachable(&address, Some(silent), now)
                        })?;
                    }
                }
            }
        }
        self.elapsed = end;
        Ok(())
    }

    pub(crate) fn live(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&slot| self.slots[slot].fate == Fate::Live)
            .collect()
    }
}
