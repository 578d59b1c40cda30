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
//! [`Output`]s; the simulator in `mesh/tests/membership_sim.rs` drives up to
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
//! - A link went down: nothing to call; failure detection decides.
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

mod wire;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foca::{Foca, Identity as _, Member, Notification, PeriodicParams, Runtime, State, Timer};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Serialize, Serializer};
use thiserror::Error;

pub use self::wire::WireError;
use self::wire::{
    Claim, DepartureHandler, KIND_DEPARTURE, KIND_DIGEST, KIND_STATE, KIND_STATE_REQUEST,
    KIND_SWIM, SharedJournal, WireCodec,
};
use super::interest::NodeId;

/// Largest packet sent or accepted: fits one QUIC datagram on a path with
/// the minimum 1280-byte IPv6 MTU, after QUIC's own headers.
pub const PACKET_BYTES_MAX: usize = 1150;

/// Who a member is. Two starts of a node are two identities; so are two
/// renewals of one start.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    id: NodeId,
    advertise: Arc<str>,
    started_ms: u64,
    renewal: u16,
    /// `advertise` hashed: foca compares addresses in linear scans over
    /// the members for every update, so they must be cheap to copy and
    /// compare. 64 bits: two of a thousand addresses collide with odds
    /// about 3·10⁻¹⁴.
    address_key: u64,
}

impl Identity {
    /// The identity of a node `id` that peers reach at `advertise` and that
    /// started at `started_ms` (wall clock, milliseconds since the Unix
    /// epoch: of two starts on one address, the later one wins).
    pub fn new(id: NodeId, advertise: &str, started_ms: u64) -> Result<Self, MembershipError> {
        if advertise.is_empty() || advertise.len() > wire::ADVERTISE_BYTES_MAX {
            return Err(MembershipError::BadAdvertise(advertise.len()));
        }
        Ok(Self {
            id,
            advertise: advertise.into(),
            started_ms,
            renewal: 0,
            address_key: fnv1a(advertise.as_bytes()),
        })
    }

    /// The node id (random per start).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Where peers reach the node.
    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    fn renewed_to(self, renewal: u16) -> Self {
        Self { renewal, ..self }
    }

    /// Which of two identities on one address is newer.
    fn precedence(&self) -> (u64, u16, NodeId) {
        (self.started_ms, self.renewal, self.id)
    }
}

impl foca::Identity for Identity {
    type Addr = u64;

    /// Declared dead while alive (a partition, a long pause): come back as
    /// the same node, one renewal later. Same node id: the runtime's links,
    /// handshakes and interest epochs stay valid.
    fn renew(&self) -> Option<Self> {
        let renewal = self.renewal.checked_add(1)?;
        Some(self.clone().renewed_to(renewal))
    }

    fn addr(&self) -> u64 {
        self.address_key
    }

    /// The later start wins, then the later renewal. This fails only if the
    /// clock went back across a restart; the old identity is then declared
    /// dead by probes and the new one waits for `forget_dead_after`.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.precedence() > adversary.precedence()
    }
}

/// Timing of the protocol. [`MembershipConfig::lan`] suits a handful to a
/// thousand nodes on one network; [`MembershipConfig::accelerated`] keeps
/// the ratios and shortens everything, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often each node probes one member.
    pub probe_period: Duration,
    /// How long a direct probe may take before others are asked to try.
    pub probe_rtt: Duration,
    /// How many others are asked to probe a silent member.
    pub indirect_probes: usize,
    /// Each update is sent `retransmit_multiplier · log10(n + 1)` times
    /// (n members), rounded down, at least once.
    pub retransmit_multiplier: u32,
    /// A suspect has `suspicion_multiplier · max(1, log10 n)` probe periods
    /// to refute before it is declared dead.
    pub suspicion_multiplier: u32,
    /// How often pending updates are pushed, besides riding on probes.
    pub gossip_interval: Duration,
    /// How many members each push goes to.
    pub gossip_fanout: usize,
    /// How often a node compares views with a random member (a digest,
    /// one small packet); whole views travel only if they differ.
    pub sync_interval: Duration,
    /// How often a node knocks on two dead members' doors: after a
    /// partition, each side holds the other dead, and this reconnects them.
    pub dead_announce_interval: Duration,
    /// How often a node with no live member asks its seeds again.
    pub rejoin_interval: Duration,
    /// How long a dead or departed member is remembered (and shown).
    pub forget_dead_after: Duration,
}

impl MembershipConfig {
    /// memberlist's LAN timing: probes every second, 500 ms to answer.
    pub fn lan() -> Self {
        Self {
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(500),
            indirect_probes: 3,
            retransmit_multiplier: 4,
            suspicion_multiplier: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            sync_interval: Duration::from_secs(5),
            dead_announce_interval: Duration::from_secs(10),
            rejoin_interval: Duration::from_secs(2),
            forget_dead_after: Duration::from_secs(24 * 60 * 60),
        }
    }

    /// Every duration divided by `factor`: the same protocol, faster.
    pub fn accelerated(self, factor: u32) -> Self {
        assert!(factor > 0, "a factor of zero would stop time");
        Self {
            probe_period: self.probe_period / factor,
            probe_rtt: self.probe_rtt / factor,
            gossip_interval: self.gossip_interval / factor,
            sync_interval: self.sync_interval / factor,
            dead_announce_interval: self.dead_announce_interval / factor,
            rejoin_interval: self.rejoin_interval / factor,
            forget_dead_after: self.forget_dead_after / factor,
            ..self
        }
    }

    /// The same protocol around another probe period: the other timings
    /// keep their ratio to it; how long the dead are remembered does not
    /// change.
    pub fn with_probe_period(self, probe_period: Duration) -> Self {
        assert!(!probe_period.is_zero(), "a probe period of zero would spin");
        let ratio = probe_period.as_secs_f64() / self.probe_period.as_secs_f64();
        Self {
            probe_period,
            probe_rtt: self.probe_rtt.mul_f64(ratio),
            gossip_interval: self.gossip_interval.mul_f64(ratio),
            sync_interval: self.sync_interval.mul_f64(ratio),
            dead_announce_interval: self.dead_announce_interval.mul_f64(ratio),
            rejoin_interval: self.rejoin_interval.mul_f64(ratio),
            ..self
        }
    }

    /// foca's configuration for a cluster of `members` (besides this node).
    fn foca_config(&self, members: usize) -> foca::Config {
        let n = (members + 1) as f64;
        let transmissions = (f64::from(self.retransmit_multiplier) * (n + 1.0).log10()).floor();
        let suspicion = f64::from(self.suspicion_multiplier) * n.log10().max(1.0);
        let mut config = foca::Config::simple();
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.num_indirect_probes = NonZeroUsize::new(self.indirect_probes.max(1)).expect("max 1");
        config.max_transmissions =
            NonZeroU8::new(transmissions.clamp(1.0, 255.0) as u8).expect("clamped to 1..=255");
        config.suspect_to_down_after = self.probe_period.mul_f64(suspicion);
        config.remove_down_after = Some(self.forget_dead_after);
        // One byte less: the kind byte goes in front of every foca packet.
        config.max_packet_size = NonZeroUsize::new(PACKET_BYTES_MAX - 1).expect("not zero");
        // Tell a member declared dead, so that it renews itself at once.
        config.notify_down_members = true;
        // Our pull on join and `sync_interval` replace foca's announces.
        config.periodic_announce = None;
        config.periodic_announce_to_down_members = Some(PeriodicParams {
            frequency: self.dead_announce_interval,
            num_members: NonZeroUsize::new(2).expect("not zero"),
        });
        config.periodic_gossip = Some(PeriodicParams {
            frequency: self.gossip_interval,
            num_members: NonZeroUsize::new(self.gossip_fanout.max(1)).expect("max 1"),
        });
        config
    }
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self::lan()
    }
}

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    /// Its node id (hex in JSON: JavaScript numbers cannot hold 64 bits).
    #[serde(serialize_with = "hex_id")]
    pub id: NodeId,
    /// Where it is reached.
    pub advertise: String,
    /// Its state.
    pub state: MemberState,
    /// Grows every time it refutes a suspicion or renews itself:
    /// `renewal · 65536 + foca's incarnation`.
    pub incarnation: u64,
}

fn hex_id<S: Serializer>(id: &NodeId, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&super::stats::hex_id(*id))
}

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

#[derive(Debug)]
struct Reported {
    identity: Identity,
    state: MemberState,
    incarnation: u16,
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

    fn request_state(&mut self, from: &Identity) {
        let request = wire::encode_state_request(self.foca.identity());
        self.outputs.push_back(Output::Send {
            to: from.clone(),
            packet: request,
        });
    }

    fn answer_state_request(&mut self, asker: Identity) -> Result<(), MembershipError> {
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

    fn rejoin(&mut self) {
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

    fn send_digest_to_random_member(&mut self) {
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

    fn answer_digest(&mut self, asker: Identity, digest: u64) -> Result<(), MembershipError> {
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

    /// Compares foca's state of every member that may have changed with
    /// what was last reported, and reports the difference.
    fn report_changes(&mut self, now: Instant) {
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

/// Whether `claim` may change foca's state of a member last reported as
/// `reported`: a cheap filter, so that the usual packet (a ping from a
/// member known alive) costs no scan of the member list.
fn may_change(reported: Option<&Reported>, claim: &wire::Claim) -> bool {
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

fn state_of(member: &Member<Identity>, departed: &HashMap<u64, Identity>) -> MemberState {
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

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What foca asked for during one call: foca's [`Runtime`].
#[derive(Debug, Default)]
struct Effects {
    sends: Vec<(Identity, Vec<u8>)>,
    timers: Vec<(Duration, Timer<Identity>)>,
    /// Addresses of members foca said went up, down or were renamed.
    changed: Vec<u64>,
}

impl Runtime<Identity> for Effects {
    fn notify(&mut self, notification: Notification<'_, Identity>) {
        match notification {
            Notification::MemberUp(member) | Notification::MemberDown(member) => {
                self.changed.push(member.addr());
            }
            Notification::Rename(_, new) => self.changed.push(new.addr()),
            // About this node itself: nothing for the runtime to do; a
            // renewal keeps the node id, and being alone is handled here.
            Notification::Active
            | Notification::Idle
            | Notification::Defunct
            | Notification::Rejoin(_) => {}
        }
    }

    fn send_to(&mut self, to: Identity, data: &[u8]) {
        let mut packet = Vec::with_capacity(data.len() + 1);
        packet.push(KIND_SWIM);
        packet.extend_from_slice(data);
        self.sends.push((to, packet));
    }

    fn submit_after(&mut self, timer: Timer<Identity>, after: Duration) {
        self.timers.push((after, timer));
    }
}

/// A foca timer waiting for its deadline; the heap pops the earliest
/// first, and of equal deadlines the earliest set.
#[derive(Debug)]
struct Scheduled {
    deadline: Instant,
    sequence: u64,
    timer: Timer<Identity>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.sequence).cmp(&(self.deadline, self.sequence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Duration = Duration::from_millis(10);

    fn config() -> MembershipConfig {
        MembershipConfig::lan().accelerated(10)
    }

    /// A few nodes on a perfect network, `STEP` apart in time; what each
    /// one output besides packets is kept in `reports`.
    struct Nodes {
        now: Instant,
        nodes: Vec<Option<Membership>>,
        reports: Vec<Vec<Output>>,
        started: u64,
    }

    impl Nodes {
        fn new(count: usize) -> Self {
            let mut nodes = Self {
                now: Instant::now(),
                nodes: Vec::new(),
                reports: Vec::new(),
                started: 0,
            };
            for slot in 0..count {
                nodes.nodes.push(None);
                nodes.reports.push(Vec::new());
                nodes.start(slot);
            }
            nodes
        }

        fn address(slot: usize) -> String {
            format!("node-{slot}:7401")
        }

        /// Starts (or restarts) the node at `slot` with a new id, joining
        /// through slot 0 unless it is slot 0.
        fn start(&mut self, slot: usize) {
            self.started += 1;
            let identity =
                Identity::new(1000 + self.started, &Self::address(slot), self.started).unwrap();
            let mut node = Membership::new(identity, config(), self.started, self.now);
            if slot != 0 {
                node.join(&Self::address(0), self.now).unwrap();
            }
            self.nodes[slot] = Some(node);
        }

        fn run(&mut self, time: Duration) {
            let end = self.now + time;
            while self.now < end {
                self.now += STEP;
                let mut packets = Vec::new();
                for slot in 0..self.nodes.len() {
                    let Some(node) = self.nodes[slot].as_mut() else {
                        continue;
                    };
                    node.handle_timeout(self.now).unwrap();
                    while let Some(output) = node.poll_output() {
                        match output {
                            Output::Send { to, packet } => {
                                assert!(packet.len() <= PACKET_BYTES_MAX);
                                packets.push((to, packet));
                            }
                            report => self.reports[slot].push(report),
                        }
                    }
                }
                for (to, packet) in packets {
                    let slot = (0..self.nodes.len())
                        .find(|&slot| Self::address(slot) == to.advertise())
                        .unwrap();
                    if let Some(node) = self.nodes[slot].as_mut() {
                        node.handle_packet(&packet, self.now).unwrap();
                    }
                }
            }
        }

        fn node(&self, slot: usize) -> &Membership {
            self.nodes[slot].as_ref().unwrap()
        }

        fn state_seen(&self, by: usize, of: usize) -> Option<(NodeId, MemberState)> {
            let address = Self::address(of);
            let seen: Vec<_> = self
                .node(by)
                .members()
                .into_iter()
                .filter(|member| member.advertise == address)
                .map(|member| (member.id, member.state))
                .collect();
            assert!(seen.len() <= 1, "one member per address: {seen:?}");
            seen.first().copied()
        }
    }

    #[test]
    fn nodes_joining_through_one_seed_all_see_each_other_alive() {
        let mut nodes = Nodes::new(5);
        nodes.run(Duration::from_secs(1));
        for by in 0..5 {
            for of in (0..5).filter(|&of| of != by) {
                let id = nodes.node(of).identity().id();
                assert_eq!(nodes.state_seen(by, of), Some((id, MemberState::Alive)));
            }
            let alive = nodes.reports[by]
                .iter()
                .filter(|report| matches!(report, Output::Alive(_)))
                .count();
            assert_eq!(alive, 4, "node {by}: {:?}", nodes.reports[by]);
        }
    }

    #[test]
    fn a_crashed_node_is_suspected_then_declared_dead() {
        let mut nodes = Nodes::new(4);
        nodes.run(Duration::from_secs(1));
        let crashed = nodes.node(3).identity().clone();
        nodes.nodes[3] = None;
        nodes.run(Duration::from_secs(3));
        for by in 0..3 {
            assert_eq!(
                nodes.state_seen(by, 3),
                Some((crashed.id(), MemberState::Dead))
            );
            assert!(nodes.reports[by].contains(&Output::Dead(crashed.clone())));
            assert!(!nodes.reports[by].contains(&Output::Left(crashed.clone())));
        }
        // Whoever probed it first suspected it before the verdict.
        assert!((0..3).any(|by| nodes.reports[by].contains(&Output::Suspect(crashed.clone()))));
    }

    #[test]
    fn a_node_that_leaves_is_reported_left_not_dead() {
        let mut nodes = Nodes::new(4);
        nodes.run(Duration::from_secs(1));
        let leaving = nodes.node(3).identity().clone();
        nodes.nodes[3].as_mut().unwrap().leave(nodes.now).unwrap();
        assert_eq!(nodes.node(3).poll_timeout(), None);
        nodes.run(Duration::from_secs(3));
        for by in 0..3 {
            assert_eq!(
                nodes.state_seen(by, 3),
                Some((leaving.id(), MemberState::Left))
            );
            assert!(nodes.reports[by].contains(&Output::Left(leaving.clone())));
            assert!(!nodes.reports[by].contains(&Output::Dead(leaving.clone())));
        }
    }

    #[test]
    fn a_restarted_node_replaces_its_old_identity_at_once() {
        let mut nodes = Nodes::new(4);
        nodes.run(Duration::from_secs(1));
        let old = nodes.node(3).identity().clone();
        nodes.start(3);
        nodes.run(Duration::from_millis(500));
        let new = nodes.node(3).identity().clone();
        for by in 0..3 {
            assert_eq!(
                nodes.state_seen(by, 3),
                Some((new.id(), MemberState::Alive))
            );
            assert!(nodes.reports[by].contains(&Output::Restarted {
                old: old.clone(),
                new: new.clone()
            }));
            assert!(!nodes.reports[by].contains(&Output::Dead(old.clone())));
        }
    }

    #[test]
    fn meeting_a_linked_node_pulls_its_view_once_and_only_if_unknown() {
        let mut nodes = Nodes::new(2);
        // Node 2 is seeded nowhere: it knows nobody until it meets one.
        nodes.nodes.push(None);
        nodes.reports.push(Vec::new());
        nodes.started += 1;
        let identity = Identity::new(5000, &Nodes::address(2), nodes.started).unwrap();
        nodes.nodes[2] = Some(Membership::new(identity, config(), 7, nodes.now));
        nodes.run(Duration::from_millis(500));
        assert_eq!(nodes.node(2).live_count(), 0);

        let now = nodes.now;
        let met = nodes.nodes[2].as_mut().unwrap();
        met.meet(&Nodes::address(1), now).unwrap();
        let Some(Output::Send { to, packet }) = met.poll_output() else {
            panic!("meeting an unknown node asks it for its view");
        };
        assert_eq!(to.advertise(), Nodes::address(1));
        assert_eq!(packet[0], KIND_STATE_REQUEST);
        assert_eq!(met.poll_output(), None, "one request");
        nodes.nodes[1]
            .as_mut()
            .unwrap()
            .handle_packet(&packet, now)
            .unwrap();
        nodes.run(Duration::from_millis(500));
        for slot in 0..3 {
            assert_eq!(nodes.node(slot).live_count(), 2, "node {slot}");
        }

        // Known and alive: meeting it again sends nothing.
        let now = nodes.now;
        let met = nodes.nodes[2].as_mut().unwrap();
        met.meet(&Nodes::address(0), now).unwrap();
        assert_eq!(met.poll_output(), None);
    }

    #[test]
    fn a_node_left_alone_asks_its_seed_again() {
        let mut nodes = Nodes::new(2);
        // The seed is not there yet: the join goes nowhere.
        let seed = nodes.nodes[0].take();
        nodes.run(Duration::from_secs(1));
        assert_eq!(nodes.node(1).live_count(), 0);
        nodes.nodes[0] = seed;
        nodes.run(config().rejoin_interval + Duration::from_millis(100));
        assert_eq!(nodes.node(1).live_count(), 1);
        assert_eq!(nodes.node(0).live_count(), 1);
    }

    #[test]
    fn a_large_view_travels_in_packets_that_fit_a_datagram() {
        let now = Instant::now();
        let long = "x".repeat(200);
        let mut seed = Membership::new(
            Identity::new(1, &format!("{long}:0"), 1).unwrap(),
            config(),
            1,
            now,
        );
        for slot in 2..200u64 {
            let identity = Identity::new(slot, &format!("{long}:{slot}"), slot).unwrap();
            let request = wire::encode_state_request(&identity);
            seed.handle_packet(&request, now).unwrap();
        }
        let mut sizes = Vec::new();
        while let Some(output) = seed.poll_output() {
            if let Output::Send { packet, .. } = output {
                sizes.push(packet.len());
            }
        }
        assert!(
            sizes.iter().all(|&size| size <= PACKET_BYTES_MAX),
            "{sizes:?}"
        );
        assert!(
            sizes.iter().any(|&size| size > PACKET_BYTES_MAX - 300),
            "{sizes:?}"
        );
    }

    #[test]
    fn random_and_damaged_packets_are_refused_without_panicking() {
        let mut rng = SmallRng::seed_from_u64(0x5747);
        let mut nodes = Nodes::new(3);
        nodes.run(Duration::from_secs(1));
        // Real packets to damage.
        let mut samples: Vec<Vec<u8>> = Vec::new();
        let node = nodes.nodes[1].as_mut().unwrap();
        node.leave(nodes.now).unwrap();
        while let Some(output) = node.poll_output() {
            if let Output::Send { packet, .. } = output {
                samples.push(packet);
            }
        }
        let identity = nodes.node(2).identity().clone();
        samples.push(wire::encode_state_request(&identity));
        let target = nodes.nodes[0].as_mut().unwrap();
        let mut refused = 0;
        for round in 0..20_000 {
            let packet: Vec<u8> = if round % 2 == 0 {
                let length = rng.random_range(0..=PACKET_BYTES_MAX + 10);
                (0..length).map(|_| rng.random()).collect()
            } else {
                let mut packet = samples[round % samples.len()].clone();
                match rng.random_range(0..3) {
                    0 => packet.truncate(rng.random_range(0..packet.len())),
                    1 => {
                        let at = rng.random_range(0..packet.len());
                        packet[at] ^= 1 << rng.random_range(0..8);
                    }
                    _ => packet.push(rng.random()),
                }
                packet
            };
            let result = target.handle_packet(&packet, nodes.now);
            if round % 2 == 0 {
                assert!(result.is_err(), "random bytes accepted: {packet:?}");
            }
            refused += usize::from(result.is_err());
        }
        assert!(refused > 10_000, "only {refused} of 20000 refused");
    }
}
