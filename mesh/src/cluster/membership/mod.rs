//! Membership, without I/O: which nodes are in the mesh and whether each is
//! alive, suspected, dead or gone on purpose, kept by SWIM.
//!
//! SWIM (Das, Gupta, Motivala 2002) splits the job in two. *Failure
//! detection*: every `probe_period` each node pings one member in turn; if
//! no ack comes within `probe_rtt` it asks a few others to ping it, and if
//! none succeeds the member becomes *suspect*. *Dissemination*: news (joins,
//! suspicions, verdicts) rides on those probes and on a little periodic
//! gossip, each item a bounded number of times, so it reaches every node in
//! O(log N) rounds at a constant cost per node. A suspect that hears of the
//! suspicion refutes it by raising its *incarnation*; one that does not is
//! declared *dead* after a timeout that grows with log N.
//!
//! The engine is [`foca`] (2.x), sans-IO like the rest of `cluster/`; this
//! module adds what the mesh needs around it:
//!
//! - an [`Identity`]: node id (random per start), advertise address, start
//!   time and a renewal count. foca keeps one member per address: a node
//!   that restarts on the same address replaces its old identity at once
//!   (the newer start wins), which keeps the member list bounded (foca#31)
//!   and makes its peers forget the old id ([`Output::Restarted`]). A node
//!   wrongly declared dead renews itself (same node id, renewal + 1) and
//!   rejoins instead of staying out (foca#25);
//! - *left* apart from *dead*: SWIM only knows "down". A node that leaves
//!   sends a departure notice to a few members directly, and they spread it
//!   like any other news; a member that went down with a departure on
//!   record is reported [`Output::Left`]. (A node that leaves while cut off
//!   cannot tell anyone, and is declared dead);
//! - every node times out the suspicions it hears of, as memberlist does,
//!   not only the node whose probe failed (see
//!   `Membership::expire_suspicions`);
//! - suspicion and its refutation as outputs: foca does not notify them, so
//!   the wrapper watches what passes through the codec and compares foca's
//!   state with what it last reported;
//! - joining by pulling a seed's whole view (memberlist's "push/pull"): with
//!   foca's own join a newcomer learns about 30 members and must wait for
//!   random announces to find the rest;
//! - anti-entropy: SWIM spreads each piece of news a bounded number of
//!   times, so now and then one misses a node (a renewal, a departure). Every
//!   `sync_interval` each node sends a random member a digest of its view;
//!   if they differ, the two swap whole views;
//! - a node left with no live member keeps asking its seeds (foca#15);
//! - timing that follows the cluster's size: updates are resent
//!   `4·log10(n+1)` times and a suspect has `4·max(1, log10 n)` probe periods
//!   to refute (memberlist's LAN rules), re-derived as the cluster grows.
//!
//! Packets are at most [`PACKET_BYTES_MAX`] bytes, to fit in one QUIC
//! datagram. The runtime feeds packets and time in and drains
//! [`Output`]s; the simulator in `mesh/tests/membership_sim/` drives up to
//! a thousand instances in one thread with seeded loss, delay, partitions,
//! crashes, restarts and leaves.
//!
//! # Driving it (what `cluster/driver` does)
//!
//! - Start: `Identity::new(node_id, advertise, wall-clock ms of the start)`,
//!   then `Membership::new(identity, MembershipConfig::lan(), random seed, now)`.
//! - A link to a seed is up: `join(hello.advertise, now)`, with the address
//!   the seed advertises in its handshake (joins match by address, so an
//!   alias of it would not do).
//! - A datagram arrived: `handle_packet(bytes, now)`. An error means only
//!   that the packet was dropped: log it, never close the link for it.
//! - Timers: sleep until `poll_timeout()`, then `handle_timeout(now)`.
//! - A link to any other node is up: `meet(hello.advertise, now)`; it pulls
//!   the node's view if membership does not know the node yet.
//! - A link went silent (it timed out: nothing, not even a keep-alive, came
//!   for the idle timeout), or a dial got no answer: `unreachable(advertise,
//!   peer id if known, now)`. Any other end of a link: nothing to call.
//! - Shutdown: `leave(now)`, send every queued `Send`, then close the links.
//! - After every call, drain `poll_output()`: `Send` goes as one datagram on
//!   the link to `to.advertise()` (dial it if needed; route by address, as a
//!   seed known only by address has id 0); `Alive` links to the member if not
//!   linked; `Suspect` keeps link and interest for now; `Dead` and `Left`
//!   drop the link and withdraw the member's interest everywhere (`Left` may
//!   follow `Dead` when a departure notice comes late); `Restarted { old,
//!   new }` forgets `old` at once, and an `Alive(new)` follows.
//! - `/v1/members`: `members()`, with names and this node added by the
//!   runtime; `incarnation` is `renewal * 65536 + foca's incarnation`, so it
//!   only grows.
//!
//! # Files
//!
//! This file holds the wrapper's state and its entry points; around it:
//!
//! - `identity`: who a member is, and which of two on one address wins;
//! - `timing`: [`MembershipConfig`] and the foca settings it derives;
//! - `journal`: what foca's hooks saw, departures included;
//! - `wire`: the datagrams, and foca's codec and broadcast handler;
//! - `effects`: what foca asks of its runtime, and the timer heap;
//! - `anti_entropy`: view pulls and digests;
//! - `report`: foca's state compared with what was last reported;
//! - `status`: [`MemberState`] and the rows of [`Membership::members`].

mod anti_entropy;
mod effects;
mod identity;
mod journal;
mod report;
mod status;
#[cfg(test)]
mod tests;
mod timing;
mod wire;

use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::num::NonZeroU8;
use std::time::{Duration, Instant};

use foca::{Foca, Identity as _, Member, State, Timer};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use thiserror::Error;

use self::effects::{Effects, Scheduled};
pub use self::identity::Identity;
use self::journal::{Claim, SharedJournal};
use self::report::Reported;
pub use self::status::{MemberState, MemberStatus};
pub use self::timing::MembershipConfig;
pub use self::wire::WireError;
use self::wire::{
    DepartureHandler, KIND_DEPARTURE, KIND_DIGEST, KIND_STATE, KIND_STATE_REQUEST, KIND_SWIM,
    WireCodec,
};
use super::interest::NodeId;

/// Largest packet sent or accepted: fits one QUIC datagram on a path with
/// the minimum 1280-byte IPv6 MTU, after QUIC's own headers.
pub const PACKET_BYTES_MAX: usize = 1150;

/// What the runtime must do, or should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `packet` as one datagram to the node at `to.advertise()` (its
    /// id may be 0 when only the address is known: a seed).
    Send {
        /// The receiver.
        to: Identity,
        /// The datagram, at most [`PACKET_BYTES_MAX`] bytes.
        packet: Vec<u8>,
    },
    /// A member is alive: new, back after being declared dead, or cleared
    /// of suspicion. Link to it if not linked.
    Alive(Identity),
    /// A member missed its probes and will be declared dead unless it
    /// refutes. Keep its link and interest for now.
    Suspect(Identity),
    /// A member was declared dead: drop its link and its interest.
    Dead(Identity),
    /// A member left on purpose: drop its link and its interest. May follow
    /// [`Output::Dead`] for the same member when its departure notice
    /// arrives after the verdict.
    Left(Identity),
    /// The node at an address restarted: forget `old` (link, interest) at
    /// once. An [`Output::Alive`] for `new` follows when it is alive.
    Restarted {
        /// The identity of the previous start.
        old: Identity,
        /// The identity of the new start.
        new: Identity,
    },
}

/// Why a packet was refused or a timer misfired.
#[derive(Debug, Error)]
pub enum MembershipError {
    /// An advertise address must be 1 to 255 bytes long.
    #[error("an advertise address of {0} bytes (1 to 255 allowed)")]
    BadAdvertise(usize),
    /// A packet larger than any member sends. Dropped; no state changed.
    #[error("a packet of {0} bytes (at most {PACKET_BYTES_MAX})")]
    TooBig(usize),
    /// Not a membership packet, or a damaged one. Dropped; no state changed
    /// unless it was a foca packet whose tail was bad (see `Protocol`).
    #[error("malformed membership packet: {0}")]
    Malformed(#[from] WireError),
    /// foca refused a packet or a timer (see `foca::Error` for what each
    /// does to its state).
    #[error("membership protocol: {0}")]
    Protocol(#[from] foca::Error),
}

/// This node's membership state.
pub struct Membership {
    foca: Foca<Identity, WireCodec, SmallRng, DepartureHandler>,
    journal: SharedJournal,
    effects: Effects,
    config: MembershipConfig,
    /// The foca settings in force: (transmissions, suspicion), derived from
    /// the member count.
    tuned: (NonZeroU8, Duration),
    rng: SmallRng,
    timers: BinaryHeap<Scheduled>,
    timer_sequence: u64,
    /// What the runtime was last told about the member at each address.
    reported: HashMap<u64, Reported>,
    /// Suspects and when to declare them dead, by address: see
    /// [`Membership::expire_suspicions`]. Ordered: verdicts go to foca in
    /// the same order on every run of a simulation.
    suspicions: BTreeMap<u64, Suspicion>,
    outputs: VecDeque<Output>,
    /// Seeds given to [`Membership::join`], by address.
    seeds: Vec<Identity>,
    /// When to ask the seeds again, while no member is alive.
    next_rejoin: Option<Instant>,
    next_sync: Instant,
    left: bool,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // foca's own `Debug` needs its `tracing` feature.
        f.debug_struct("Membership")
            .field("identity", self.identity())
            .field("live", &self.live_count())
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Suspicion {
    member: Member<Identity>,
    deadline: Instant,
}

impl Membership {
    /// A node with `identity`, not yet in any cluster. `seed` seeds every
    /// random choice (the simulator replays runs from it).
    pub fn new(identity: Identity, config: MembershipConfig, seed: u64, now: Instant) -> Self {
        let journal = SharedJournal::default();
        let foca_config = config.foca_config(0);
        let tuned = (
            foca_config.max_transmissions,
            foca_config.suspect_to_down_after,
        );
        let foca = Foca::with_custom_broadcast(
            identity,
            foca_config,
            SmallRng::seed_from_u64(seed),
            WireCodec {
                journal: journal.clone(),
            },
            DepartureHandler {
                journal: journal.clone(),
            },
        );
        let next_sync = now + config.sync_interval;
        Self {
            foca,
            journal,
            effects: Effects::default(),
            config,
            tuned,
            rng: SmallRng::seed_from_u64(seed.rotate_left(32) ^ 0x5EED),
            timers: BinaryHeap::new(),
            timer_sequence: 0,
            reported: HashMap::new(),
            suspicions: BTreeMap::new(),
            outputs: VecDeque::new(),
            seeds: Vec::new(),
            next_rejoin: None,
            next_sync,
            left: false,
        }
    }

    /// This node's identity (its renewal changes if it is wrongly declared
    /// dead).
    pub fn identity(&self) -> &Identity {
        self.foca.identity()
    }

    /// Joins the cluster of the node advertised at `seed_advertise` (the
    /// address it advertises itself, as in its link handshake): pulls its
    /// view, which also makes this node known to it. Remembered: while this
    /// node has no live member, it asks its seeds again every
    /// `rejoin_interval`.
    pub fn join(&mut self, seed_advertise: &str, now: Instant) -> Result<(), MembershipError> {
        let seed = Identity::new(0, seed_advertise, 0)?;
        if seed.addr() == self.identity().addr() {
            return Ok(());
        }
        self.request_state(&seed);
        if !self.seeds.iter().any(|known| known.addr() == seed.addr()) {
            self.seeds.push(seed);
        }
        self.settle(now);
        Ok(())
    }

    /// A link is up to the node advertised at `advertise`: if this node
    /// does not hold it alive, it pulls that node's view, as on a join
    /// (which also makes this node known there). Links can come up before
    /// gossip has carried the news either way; this closes that window.
    /// Unlike a seed, the address is not asked again later.
    pub fn meet(&mut self, advertise: &str, now: Instant) -> Result<(), MembershipError> {
        let peer = Identity::new(0, advertise, 0)?;
        let known = self
            .foca
            .iter_members()
            .any(|member| member.id().addr() == peer.addr());
        if !known && peer.addr() != self.identity().addr() && !self.left {
            self.request_state(&peer);
            self.settle(now);
        }
        Ok(())
    }

    /// Nothing has come from the member at `advertise` for a while: its
    /// link timed out, or a dial got no answer. Suspects it at once, as a
    /// failed probe would, and spreads the suspicion: unless it refutes, it
    /// is declared dead when the suspicion times out. `id` is the node id
    /// the link was with, if it is known: a member that restarted on the
    /// address meanwhile is another start, and not suspected for the old
    /// one's silence. Does nothing for a member not held alive.
    ///
    /// Why: SWIM probes one member per probe period, so a node suspects at
    /// most one member per period by itself. When many fail at once, that
    /// is slow: 148 members killed at once, three survivors, and 30 s later
    /// one still held 83 of them alive. Every member here has a link to
    /// every other, and a link that timed out is the same evidence as a
    /// failed probe, for all the failed members at once (issue 15).
    pub fn unreachable(
        &mut self,
        advertise: &str,
        id: Option<NodeId>,
        now: Instant,
    ) -> Result<(), MembershipError> {
        let address = Identity::new(0, advertise, 0)?.addr();
        let alive = self
            .foca
            .iter_members()
            .find(|member| {
                member.id().addr() == address
                    && id.is_none_or(|id| member.id().id() == id)
                    && member.state() == State::Alive
            })
            .map(|member| Member::new(member.id().clone(), member.incarnation(), State::Suspect));
        let Some(suspect) = alive.filter(|_| !self.left) else {
            return Ok(());
        };
        // Applied outside the codec: `report_changes` must look at it.
        self.effects.changed.push(address);
        let result = self
            .foca
            .apply_many(std::iter::once(suspect), true, &mut self.effects);
        self.settle(now);
        result.map_err(MembershipError::from)
    }

    /// A datagram from a peer. An error means the packet was dropped (see
    /// [`MembershipError`]); never a reason to drop the link.
    pub fn handle_packet(&mut self, packet: &[u8], now: Instant) -> Result<(), MembershipError> {
        if packet.len() > PACKET_BYTES_MAX {
            return Err(MembershipError::TooBig(packet.len()));
        }
        if self.left {
            return Ok(());
        }
        let Some((&kind, body)) = packet.split_first() else {
            return Err(WireError::Truncated.into());
        };
        let result = match kind {
            KIND_SWIM => self
                .foca
                .handle_data(body, &mut self.effects)
                .map_err(MembershipError::from),
            KIND_STATE_REQUEST => wire::decode_state_request(body)
                .map_err(MembershipError::from)
                .and_then(|asker| self.answer_state_request(asker)),
            // Taken even from a member held dead (foca ignores what those
            // say), and spread from here like any departure notice.
            KIND_DEPARTURE => self
                .foca
                .add_broadcast(packet)
                .map(drop)
                .map_err(MembershipError::from),
            KIND_DIGEST => wire::decode_digest(body)
                .map_err(MembershipError::from)
                .and_then(|(asker, digest)| self.answer_digest(asker, digest)),
            KIND_STATE => wire::decode_state(body)
                .map_err(MembershipError::from)
                .and_then(|(members, departed)| {
                    // A departure news to this node is news to others too:
                    // spread it by gossip like a notice, not only by the
                    // next view exchanges (a node that alone heard a
                    // notice would otherwise tell the cluster one digest
                    // exchange at a time, ~log2 N sync intervals).
                    for identity in departed {
                        self.foca
                            .add_broadcast(&wire::encode_departure(&identity))?;
                    }
                    let mut journal = self.journal.lock();
                    // These bypass the codec: note them for `report_changes`.
                    journal.claims.extend(members.iter().map(|member| Claim {
                        identity: member.id().clone(),
                        incarnation: member.incarnation(),
                        state: member.state(),
                    }));
                    drop(journal);
                    // Someone else's view: apply it here, but do not spread
                    // it (it is not news to the cluster).
                    self.foca
                        .apply_many(members.into_iter(), false, &mut self.effects)
                        .map_err(MembershipError::from)
                }),
            kind => Err(WireError::UnknownTag(kind).into()),
        };
        // Even a failed foca packet may have changed state before the bad
        // part: settle in every case.
        self.settle(now);
        result
    }

    /// When [`Membership::handle_timeout`] should next run; `None` after
    /// [`Membership::leave`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.left {
            return None;
        }
        let timer = self.timers.peek().map(|scheduled| scheduled.deadline);
        let suspicion = self.suspicions.values().map(|s| s.deadline).min();
        [timer, suspicion, self.next_rejoin, Some(self.next_sync)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passed: runs every timer due by `now`. Errors are foca's
    /// integration sentinels (a timer delivered out of order, say): worth
    /// logging, and the protocol carries on.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), MembershipError> {
        if self.left {
            return Ok(());
        }
        let mut result = Ok(());
        while self
            .timers
            .peek()
            .is_some_and(|first| first.deadline <= now)
        {
            let timer = self.timers.pop().expect("peeked").timer;
            if let Timer::RemoveDown(forgotten) = &timer {
                self.effects.changed.push(forgotten.addr());
            }
            let handled = self.foca.handle_timer(timer, &mut self.effects);
            result = result.and(handled.map_err(MembershipError::from));
            // Timers foca just set may be due already (a late wake-up).
            self.schedule_timers(now);
        }
        result = result.and(self.expire_suspicions(now));
        if self.next_rejoin.is_some_and(|at| at <= now) {
            self.next_rejoin = Some(now + self.config.rejoin_interval);
            self.rejoin();
        }
        if self.next_sync <= now {
            // Jittered, so that nodes started together stay apart.
            let jitter = self.rng.random_range(0.5..1.5);
            self.next_sync = now + self.config.sync_interval.mul_f64(jitter);
            self.send_digest_to_random_member();
        }
        self.settle(now);
        result
    }

    /// Leaves the cluster on purpose (on shutdown): tells a few members,
    /// who spread it. Send the packets it queues before closing the links.
    /// The instance is inert afterwards.
    pub fn leave(&mut self, now: Instant) -> Result<(), MembershipError> {
        if self.left {
            return Ok(());
        }
        let notice = wire::encode_departure(self.identity());
        self.foca.add_broadcast(&notice)?;
        // Also straight to a few members: foca's packets carry news in
        // order of freshness, and when they are full of other news (churn)
        // the notice would not fit in the few it sends before going quiet.
        let mut members: Vec<Identity> = self.foca.iter_members().map(|m| m.id().clone()).collect();
        for chosen in 0..members.len().min(LEAVE_FANOUT) {
            let pick = self.rng.random_range(chosen..members.len());
            members.swap(chosen, pick);
            self.outputs.push_back(Output::Send {
                to: members[chosen].clone(),
                packet: notice.clone(),
            });
        }
        self.foca.leave_cluster(&mut self.effects)?;
        self.left = true;
        self.settle(now);
        self.timers.clear();
        self.next_rejoin = None;
        Ok(())
    }

    /// The next thing the runtime must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// How many members are alive or suspect, this node excluded.
    pub fn live_count(&self) -> usize {
        self.foca.num_members()
    }

    /// foca's members, less the previous starts of this node it learned
    /// of (it holds them dead, on this node's address): other nodes know
    /// only this start there.
    fn others(&self) -> impl Iterator<Item = &Member<Identity>> {
        let own = self.identity().addr();
        self.foca
            .iter_membership_state()
            .filter(move |member| member.id().addr() != own)
    }

    /// Declares dead the suspects whose time ran out. foca arms a suspicion
    /// timer only on the node whose probe failed, and drops it if that node
    /// renews its identity meanwhile; a suspicion heard of through gossip
    /// would then never end unless the suspect heard of it too. Like
    /// memberlist, every node times out the suspicions it knows of; this
    /// deadline runs one probe period behind foca's, which normally wins.
    fn expire_suspicions(&mut self, now: Instant) -> Result<(), MembershipError> {
        let expired: Vec<Member<Identity>> = self
            .suspicions
            .values()
            .filter(|suspicion| suspicion.deadline <= now)
            .map(|suspicion| suspicion.member.clone())
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        self.suspicions
            .retain(|_, suspicion| suspicion.deadline > now);
        let verdicts = expired
            .into_iter()
            .map(|member| Member::new(member.id().clone(), member.incarnation(), State::Down));
        self.foca.apply_many(verdicts, true, &mut self.effects)?;
        Ok(())
    }

    /// Turns what foca just did into outputs and timers, and reports the
    /// members whose state changed.
    fn settle(&mut self, now: Instant) {
        // A departure notice declares its member down here, whichever
        // arrives first, the notice or the verdict.
        let departures = std::mem::take(&mut self.journal.lock().new_departures);
        let own = self.identity().clone();
        let departed = departures
            .into_iter()
            .filter(|identity| identity.addr() != own.addr())
            .map(Member::down);
        if let Err(error) = self.foca.apply_many(departed, true, &mut self.effects) {
            debug_assert!(false, "our codec cannot fail to encode: {error}");
        }
        for (to, packet) in self.effects.sends.drain(..) {
            self.outputs.push_back(Output::Send { to, packet });
        }
        self.schedule_timers(now);
        self.report_changes(now);
        self.retune();
        if self.left || self.foca.num_members() > 0 {
            self.next_rejoin = None;
        } else if self.next_rejoin.is_none() {
            self.next_rejoin = Some(now + self.config.rejoin_interval);
        }
    }

    fn schedule_timers(&mut self, now: Instant) {
        for (after, timer) in self.effects.timers.drain(..) {
            self.timer_sequence += 1;
            self.timers.push(Scheduled {
                deadline: now + after,
                sequence: self.timer_sequence,
                timer,
            });
        }
    }

    fn retune(&mut self) {
        let config = self.config.foca_config(self.foca.num_members());
        let tuned = (config.max_transmissions, config.suspect_to_down_after);
        if tuned != self.tuned {
            self.tuned = tuned;
            if let Err(error) = self.foca.set_config(config) {
                debug_assert!(false, "only tunable settings change: {error}");
            }
        }
    }
}

/// How many members [`Membership::leave`] tells directly: with 10% loss,
/// all eight notices are lost once in 10⁸ leaves.
const LEAVE_FANOUT: usize = 8;
