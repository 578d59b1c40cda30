//! A deterministic simulator for a node's whole mesh logic: the SWIM
//! membership and the interest state machines of every node, driven together
//! in one thread the way the runtime (`cluster/driver`) drives them, over a
//! simulated network in virtual time. `membership_sim.rs` and
//! `interest_sim.rs` each drive one machine alone; this one checks what the
//! two do to each other.
//!
//! What it models, per node, like the runtime:
//!
//! - membership packets are datagrams: seeded loss, delay (and so
//!   reordering), dropped by partitions, symmetric or one-way;
//! - interest messages travel on links, one per pair of nodes: ordered and
//!   reliable while the link lives, lost with it. The node with the lower id
//!   dials a member that membership reports alive; a node dials its seeds and
//!   joins through each once linked; the dialed side `meet`s the dialer. A
//!   dial to a stopped node or across a partition times out and is retried
//!   with backoff while still wanted. A partition or a crash breaks the links
//!   across it (`link_down` on the ends that live on); a link made again
//!   starts with `link_up` on both ends;
//! - membership's verdicts drive the rest: `Dead` and `Left` forget the
//!   member (its link closes, its interest goes), `Restarted` forgets the
//!   previous start, and a peer whose link stays down past the grace period
//!   is forgotten unless membership holds it alive;
//! - every node has random local subscriptions (plain patterns that cover
//!   one another, and queue groups). A crash loses them; a restart comes back
//!   on the same address with a new id, a later start time, a new interest
//!   epoch and fresh subscriptions. A node that leaves sends its departure
//!   notices, then closes its links as stopping, and its peers forget it.
//!
//! Simpler than the runtime: membership datagrams need no link (the runtime
//! sends them on links, dialing an address for them if need be), and of two
//! dials that cross, the first link made stays (the runtime keeps the one
//! the lower id dialed, and both ends start it over with `link_up`).
//!
//! Each run bootstraps a mesh, lets faults happen for a while (datagram loss
//! and delay, partitions, crashes, restarts, leaves, newcomers, subscriptions
//! coming and going), stops them and heals the network, and runs until the
//! mesh converges within a bound, then a while longer to see that it stays
//! converged. Converged means:
//!
//! 1. membership: every live node sees exactly the live nodes alive, under
//!    their current ids; a crashed node dead, a departed one left (or dead,
//!    if every node that took in its notices has stopped since), and no
//!    earlier start alive; its runtime holds a link to each live node and to
//!    nothing else;
//! 2. interest: every live node's copy of every other live node's interest
//!    is what that node's subscriptions make it advertise (wildcard
//!    aggregation included), the routes it was told to make are exactly that
//!    copy, and no interest or route of a stopped node or an earlier start
//!    remains anywhere;
//! 3. no event would be delivered twice, or missed: for sample subjects
//!    published on each live node, every other live node with a matching
//!    plain subscription is sent the event exactly once however many of its
//!    patterns match, and each queue group chooses its one member among
//!    exactly the live nodes that have a matching member of the group (with
//!    at most one route per peer and key).
//!
//! A failure prints its seed and the last events. Replay one run with
//! `STARLING_SIM_SEED=<seed> cargo test -p starling-mesh --test mesh_sim -- --nocapture`;
//! run more seeds with `STARLING_SIM_SEEDS=<count>`, and a long soak (300 and
//! a thousand nodes, in a release build: half an hour) with
//! `STARLING_SIM_SOAK=1 cargo test --release -p starling-mesh --test mesh_sim -- --nocapture`.

mod sim;

use sim::{CALM, LOSSY, Network, advertised, local_keys, seeds, soak};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use starling_core::subject::pattern_matches;
use starling_mesh::cluster::interest::{
    self, Interest, InterestConfig, InterestKey, InterestMessage, NodeId,
};
use starling_mesh::cluster::membership::{
    self, Identity, MemberState, Membership, MembershipConfig, MembershipError, PACKET_BYTES_MAX,
};

/// Production timing for both machines: virtual time costs nothing, and the
/// convergence times then mean what they say.
fn membership_config() -> MembershipConfig {
    MembershipConfig::lan()
}

fn interest_config() -> InterestConfig {
    InterestConfig::default()
}

/// What the runtime waits for a QUIC handshake before giving a dial up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The runtime's redial backoff: the first wait, doubled up to the most.
const REDIAL_FIRST: Duration = Duration::from_millis(100);
const REDIAL_MOST: Duration = Duration::from_secs(2);

/// How often each node looks for peers past their grace period.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_millis(500);

/// How often convergence is checked, in virtual time: the resolution of the
/// convergence times printed.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a converged mesh must stay converged: past a digest round and the
/// interest grace period, so that late repairs or withdrawals would show.
const QUIET: Duration = Duration::from_secs(15);
/// How long a fresh mesh may take to form.
const BOOTSTRAP_BOUND: Duration = Duration::from_secs(120);

/// The first byte of a departure notice (`cluster/membership/wire.rs`; a
/// wire constant, frozen).
const KIND_DEPARTURE: u8 = 0x4C;

/// Lines of trace kept, and shown with a failure.
const TRACE_KEPT: usize = 400;
const TRACE_SHOWN: usize = 60;

/// Subscription patterns, overlapping on purpose: plain ones cover one
/// another (`>` over `orders.>` over `orders.*.paid` over `orders.eu.paid`),
/// so aggregation happens all the time.
const PATTERNS: [&str; 8] = [
    "orders.>",
    "orders.*.paid",
    "orders.eu.paid",
    "kitchen.*",
    "*.audit",
    "eta.>",
    "eta.eu.*",
    ">",
];
const GROUPS: [&str; 2] = ["couriers", "billing"];
/// Subjects the delivery check publishes on each node.
const SUBJECTS: [&str; 8] = [
    "orders.eu.paid",
    "orders.us.paid",
    "orders.eu.created",
    "kitchen.ready",
    "kitchen.audit",
    "orders.audit",
    "eta.eu.lyon",
    "billing",
];

/// What happens during a run's fault phase.
#[derive(Debug, Clone, Copy)]
struct Faults {
    network: Network,
    duration: Duration,
    /// Mean time between two node or partition events.
    event_interval: Duration,
    /// Mean time between two subscription changes, mesh-wide.
    churn_interval: Duration,
    partitions: bool,
}

const HEAVY: Faults = Faults {
    network: LOSSY,
    duration: Duration::from_secs(40),
    event_interval: Duration::from_millis(700),
    churn_interval: Duration::from_millis(50),
    partitions: true,
};

/// For small meshes: worse loss, longer delays, events more often.
const STORMY: Faults = Faults {
    network: Network {
        loss: 0.20,
        delay_min: Duration::from_millis(1),
        delay_max: Duration::from_millis(100),
    },
    duration: Duration::from_secs(30),
    event_interval: Duration::from_millis(400),
    churn_interval: Duration::from_millis(20),
    partitions: true,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Live,
    Crashed,
    /// Left on purpose. Held left where the news of it survives (see
    /// `Sim::farewells`), else dead, which is fine too.
    Left,
}

/// One address, and whoever runs there.
struct Slot {
    address: String,
    node: Option<Node>,
    fate: Fate,
    /// The id of the latest start here.
    last_id: NodeId,
    /// Counts starts: events meant for an earlier start are dropped.
    start: u32,
    /// The wake-up scheduled for the node, if any.
    wake: Option<Duration>,
}

/// A running node: both state machines and what the runtime keeps around
/// them.
struct Node {
    id: NodeId,
    membership: Membership,
    interest: Interest,
    /// One element per local subscription (keys repeat).
    subscriptions: Vec<InterestKey>,
    /// The routes interest told this node to make: (peer, its entry id).
    routes: BTreeMap<(NodeId, u64), InterestKey>,
    /// The runtime's peers: members learned alive, and nodes linked to.
    peers: BTreeMap<NodeId, Peer>,
    /// The ids of the peers at each address (two for a while after a
    /// restart): a thousand nodes relinking ask this for every link.
    peers_by_slot: BTreeMap<usize, BTreeSet<NodeId>>,
    seeds: Vec<usize>,
    /// The peer each seed's link led to.
    seed_peers: BTreeMap<usize, NodeId>,
    /// Addresses (slots) with a dial under way or scheduled.
    dialing: BTreeSet<usize>,
    backoff: BTreeMap<usize, Duration>,
    /// `interest.poll_timeout()`, kept: it scans every link, and a thousand
    /// nodes relinking after a partition would rescan for every link. Its
    /// timers are the periodic digest, which only its own timeout moves, and
    /// the withdrawal of each link down, `withdraw_after` after it went down.
    /// So a link down brings the kept deadline forward; a link up, a forgotten
    /// peer, a message or a local subscription can only put the real one off,
    /// and waking before it is harmless (the timeout does nothing, and the
    /// deadline is read again). Checked while converging: see
    /// `Sim::kept_deadline_divergence`.
    interest_deadline: Option<Instant>,
    /// `membership.poll_timeout()`, kept until membership is next called
    /// (only `Sim::membership_call` calls it): it scans every suspicion, and
    /// in a partition of a thousand nodes each holds hundreds.
    membership_deadline: Option<Option<Instant>>,
    /// When to look for expired peers next: the runtime looks on every
    /// timer, which costs a scan of the members each time here while a
    /// peer past its grace is kept; twice a second decides the same.
    next_expiry_check: Duration,
}

impl Node {
    /// The peer `id` at `slot`, made if new (without a link).
    fn peer_entry(&mut self, id: NodeId, slot: usize) -> &mut Peer {
        self.peers_by_slot.entry(slot).or_default().insert(id);
        self.peers.entry(id).or_insert(Peer {
            slot,
            link: None,
            down_since: None,
        })
    }

    fn remove_peer(&mut self, id: NodeId) -> Option<Peer> {
        let peer = self.peers.remove(&id)?;
        if let Some(ids) = self.peers_by_slot.get_mut(&peer.slot) {
            ids.remove(&id);
            if ids.is_empty() {
                self.peers_by_slot.remove(&peer.slot);
            }
        }
        Some(peer)
    }

    fn peers_at(&self, slot: usize) -> impl Iterator<Item = NodeId> + '_ {
        self.peers_by_slot.get(&slot).into_iter().flatten().copied()
    }

    fn link_down(&mut self, peer: NodeId, now: Instant) {
        self.interest.link_down(peer, now);
        let withdrawal = now + interest_config().withdraw_after;
        if let Some(kept) = &mut self.interest_deadline {
            *kept = (*kept).min(withdrawal);
        }
    }

    fn interest_timeout(&mut self, now: Instant) {
        self.interest.handle_timeout(now);
        self.interest_deadline = None;
    }
}

struct Peer {
    slot: usize,
    /// The generation of the link to it, while up.
    link: Option<u64>,
    /// Since when it has been without a link.
    down_since: Option<Duration>,
}

/// A link between two running nodes: in the map while up.
struct Link {
    generation: u64,
    /// Each end's (slot, id), the lower slot first.
    ends: [(usize, NodeId); 2],
    /// The latest arrival scheduled each way (lower slot to higher first),
    /// so that messages keep their order.
    last_arrival: [Duration; 2],
}

impl Link {
    fn id_at(&self, slot: usize) -> NodeId {
        if self.ends[0].0 == slot {
            self.ends[0].1
        } else {
            self.ends[1].1
        }
    }
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

enum EventKind {
    Datagram {
        to: usize,
        packet: Vec<u8>,
        /// The id of the node that left, if this is its departure notice.
        farewell: Option<NodeId>,
    },
    Control {
        from: usize,
        to: usize,
        generation: u64,
        message: InterestMessage,
    },
    Wake {
        slot: usize,
        start: u32,
    },
    /// A dial from `from` gets to `to` (or does not) a round trip after it
    /// began.
    DialArrives {
        from: usize,
        start: u32,
        to: usize,
        began: Duration,
    },
    /// An unanswered dial gives up.
    DialTimesOut {
        from: usize,
        start: u32,
        to: usize,
    },
    Redial {
        from: usize,
        start: u32,
        to: usize,
    },
}

/// Which traffic a partition stops: from one side to the other, both ways
/// unless `one_way` (then only from the cut-off side). Links need both ways.
struct Partition {
    cut_off: BTreeSet<usize>,
    one_way: bool,
}

impl Partition {
    fn blocks(&self, from: usize, to: usize) -> bool {
        let (source, target) = (self.cut_off.contains(&from), self.cut_off.contains(&to));
        source != target && (source || !self.one_way)
    }
}

#[derive(Debug, Default)]
struct Counters {
    datagrams_sent: u64,
    datagrams_through: u64,
    control_messages: u64,
    links_made: u64,
    dials_failed: u64,
    refused_by_foca: u64,
}

struct Sim {
    seed: u64,
    /// The test whose run this is, for the replay line.
    test: &'static str,
    rng: SmallRng,
    base: Instant,
    elapsed: Duration,
    network: Network,
    partition: Option<Partition>,
    slots: Vec<Slot>,
    by_address: BTreeMap<String, usize>,
    /// The slot of every id any start ever had.
    owner: BTreeMap<NodeId, usize>,
    /// Pending events, earliest first; ties in the order scheduled.
    events: BTreeMap<(Duration, u64), EventKind>,
    sequence: u64,
    links: BTreeMap<(usize, usize), Link>,
    generation: u64,
    /// Nodes whose outputs wait to be carried out.
    dirty: BTreeSet<usize>,
    started_ms: u64,
    /// The node now leaving, while its last packets go out.
    leaving: Option<NodeId>,
    /// Who took in each departed node's notices: (slot, start). If one
    /// of them still runs, the departure must end up known everywhere (the
    /// views it swaps carry it); if all have stopped, the news may have died
    /// with them, e.g. when the node left from inside a partition and SWIM
    /// spent its few retransmissions there.
    farewells: BTreeMap<NodeId, Vec<(usize, u32)>>,
    counters: Counters,
    /// The first thing found wrong while running.
    problem: Option<String>,
    trace: VecDeque<String>,
}

impl Sim {
    fn new(seed: u64, test: &'static str) -> Self {
        Self {
            seed,
            test,
            rng: SmallRng::seed_from_u64(seed),
            base: Instant::now(),
            elapsed: Duration::ZERO,
            network: CALM,
            partition: None,
            slots: Vec::new(),
            by_address: BTreeMap::new(),
            owner: BTreeMap::new(),
            events: BTreeMap::new(),
            sequence: 0,
            links: BTreeMap::new(),
            generation: 0,
            dirty: BTreeSet::new(),
            started_ms: 0,
            leaving: None,
            farewells: BTreeMap::new(),
            counters: Counters::default(),
            problem: None,
            trace: VecDeque::new(),
        }
    }

    fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    fn note(&mut self, what: String) {
        if self.trace.len() == TRACE_KEPT {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>9.3}s {what}", self.elapsed.as_secs_f64()));
    }

    fn fail(&mut self, what: String) {
        self.note(format!("FAILED: {what}"));
        self.problem.get_or_insert(what);
    }

    fn failure(&self, what: &str) -> String {
        let mut report = format!(
            "seed {}: {what}\nreplay: STARLING_SIM_SEED={} cargo test -p starling-mesh --test mesh_sim {} -- --nocapture\nlast events, newest first:\n",
            self.seed, self.seed, self.test
        );
        for line in self.trace.iter().rev().take(TRACE_SHOWN) {
            report.push_str(line);
            report.push('\n');
        }
        report
    }

    /// A node id as the trace shows it: its slot and the top of the id.
    fn who(&self, id: NodeId) -> String {
        match self.owner.get(&id) {
            Some(slot) => format!("{slot}/{:04x}", id >> 48),
            None => format!("?/{id:x}"),
        }
    }

    fn node(&self, slot: usize) -> &Node {
        self.slots[slot].node.as_ref().expect("a running node")
    }

    fn node_mut(&mut self, slot: usize) -> &mut Node {
        self.slots[slot].node.as_mut().expect("a running node")
    }

    fn running(&self, slot: usize, start: u32) -> bool {
        self.slots[slot].start == start && self.slots[slot].node.is_some()
    }

    /// The slot whose current start has `id`, if any.
    fn current(&self, id: NodeId) -> Option<usize> {
        let slot = *self.owner.get(&id)?;
        let node = self.slots[slot].node.as_ref()?;
        (node.id == id).then_some(slot)
    }

    /// Whether a node that took in a departure notice of the node that left
    /// `slot` still runs (the same start).
    fn heard(&self, slot: usize) -> bool {
        self.farewells
            .get(&self.slots[slot].last_id)
            .is_some_and(|hearers| hearers.iter().any(|&(at, start)| self.running(at, start)))
    }

    fn live(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&slot| self.slots[slot].fate == Fate::Live)
            .collect()
    }

    fn push(&mut self, at: Duration, kind: EventKind) {
        self.sequence += 1;
        self.events.insert((at, self.sequence), kind);
    }

    fn delay(&mut self) -> Duration {
        let spread = self.network.delay_max - self.network.delay_min;
        self.network.delay_min + spread.mul_f64(self.rng.random())
    }

    fn blocked(&self, from: usize, to: usize) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|partition| partition.blocks(from, to))
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        !self.blocked(a, b) && !self.blocked(b, a)
    }

    // ----- Nodes starting and stopping -----

    fn fresh_identity(&mut self, address: &str) -> Identity {
        // Milliseconds since the run began stand in for the wall clock, kept
        // increasing: of two starts on one address, the later must win.
        self.started_ms = (self.elapsed.as_millis() as u64 + 1).max(self.started_ms + 1);
        // Never 0: that id means "known by address only" (a seed).
        let id = loop {
            let id: NodeId = self.rng.random();
            if id != 0 && !self.owner.contains_key(&id) {
                break id;
            }
        };
        Identity::new(id, address, self.started_ms).expect("a short address")
    }

    /// A node on a new address, joining through the nodes at `seeds`.
    fn add_node(&mut self, seeds: Vec<usize>) -> usize {
        let slot = self.slots.len();
        let address = format!("10.{}.{}.7:7401", slot / 250, slot % 250);
        self.by_address.insert(address.clone(), slot);
        self.slots.push(Slot {
            address,
            node: None,
            fate: Fate::Crashed,
            last_id: 0,
            start: 0,
            wake: None,
        });
        self.boot(slot, seeds);
        slot
    }

    /// Starts the stopped node at `slot` under a new identity, with a new
    /// interest epoch and fresh subscriptions, and dials its seeds.
    fn boot(&mut self, slot: usize, seeds: Vec<usize>) {
        let address = self.slots[slot].address.clone();
        let identity = self.fresh_identity(&address);
        let id = identity.id();
        let now = self.now();
        let membership = Membership::new(identity, membership_config(), self.rng.random(), now);
        let interest = Interest::new(self.rng.random(), interest_config(), now);
        self.owner.insert(id, slot);
        let target = &mut self.slots[slot];
        assert!(target.node.is_none(), "only a stopped node starts");
        target.start += 1;
        target.fate = Fate::Live;
        target.last_id = id;
        target.wake = None;
        target.node = Some(Node {
            id,
            membership,
            interest,
            subscriptions: Vec::new(),
            routes: BTreeMap::new(),
            peers: BTreeMap::new(),
            peers_by_slot: BTreeMap::new(),
            seeds: seeds.clone(),
            seed_peers: BTreeMap::new(),
            dialing: BTreeSet::new(),
            backoff: BTreeMap::new(),
            interest_deadline: None,
            membership_deadline: None,
            next_expiry_check: Duration::ZERO,
        });
        self.note(format!("node {} starts, seeds {seeds:?}", self.who(id)));
        for _ in 0..self.rng.random_range(0..=3) {
            self.subscribe(slot);
        }
        for seed in seeds {
            self.dial(slot, seed);
        }
        self.dirty.insert(slot);
        self.settle();
    }

    /// The node at `slot` stops: its links close, as stopping if it left.
    fn stop(&mut self, slot: usize, departed: bool) {
        let node = self.slots[slot].node.take().expect("a running node");
        self.slots[slot].wake = None;
        for peer in node.peers.values() {
            if peer.link.is_some() {
                self.drop_link(slot, peer.slot, departed);
            }
        }
        self.settle();
    }

    fn crash(&mut self, slot: usize) {
        self.note(format!(
            "node {} crashes",
            self.who(self.slots[slot].last_id)
        ));
        self.stop(slot, false);
        self.slots[slot].fate = Fate::Crashed;
    }

    /// Leaves as the runtime shuts down: `leave`, every packet it queues
    /// sent, then the links closed as stopping.
    fn leave(&mut self, slot: usize) {
        let id = self.slots[slot].last_id;
        self.note(format!("node {} leaves", self.who(id)));
        self.leaving = Some(id);
        self.membership_call(slot, "leave", |membership, now| membership.leave(now));
        self.drain(slot);
        self.leaving = None;
        self.stop(slot, true);
        self.slots[slot].fate = Fate::Left;
    }

    // ----- Subscriptions -----

    fn random_key(&mut self) -> InterestKey {
        let pattern = PATTERNS[self.rng.random_range(0..PATTERNS.len())].to_owned();
        let group = if self.rng.random_bool(0.6) {
            None
        } else {
            Some(GROUPS[self.rng.random_range(0..GROUPS.len())].to_owned())
        };
        InterestKey { pattern, group }
    }

    fn subscribe(&mut self, slot: usize) {
        let key = self.random_key();
        let node = self.node_mut(slot);
        node.subscriptions.push(key.clone());
        node.interest.local_added(key);
        self.dirty.insert(slot);
    }

    fn unsubscribe(&mut self, slot: usize) {
        let held = self.node(slot).subscriptions.len();
        if held == 0 {
            return;
        }
        let at = self.rng.random_range(0..held);
        let node = self.node_mut(slot);
        let key = node.subscriptions.swap_remove(at);
        node.interest.local_removed(&key);
        self.dirty.insert(slot);
    }

    // ----- Carrying out outputs -----

    /// Carries out what every node with pending outputs asked for, and
    /// what that makes other nodes ask for.
    fn settle(&mut self) {
        while let Some(slot) = self.dirty.pop_first() {
            self.drain(slot);
        }
    }

    /// Membership's outputs first, as the runtime does: a verdict withdraws
    /// interest before anything is routed by it.
    fn drain(&mut self, slot: usize) {
        loop {
            let Some(node) = self.slots[slot].node.as_mut() else {
                return;
            };
            if let Some(output) = node.membership.poll_output() {
                self.apply_membership(slot, output);
            } else if let Some(output) = node.interest.poll_output() {
                self.apply_interest(slot, output);
            } else {
                break;
            }
        }
        self.schedule_wake(slot);
    }

    fn membership_call(
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

    fn apply_membership(&mut self, slot: usize, output: membership::Output) {
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

    fn apply_interest(&mut self, slot: usize, output: interest::Output) {
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
    fn member_alive(&mut self, slot: usize, member: &Identity) {
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
    fn forget(&mut self, slot: usize, id: NodeId) {
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

    fn dial(&mut self, slot: usize, to: usize) {
        let start = self.slots[slot].start;
        if !self.node_mut(slot).dialing.insert(to) {
            return;
        }
        let round_trip = self.delay() * 2;
        let began = self.elapsed;
        self.push(
            began + round_trip,
            EventKind::DialArrives {
                from: slot,
                start,
                to,
                began,
            },
        );
    }

    fn dial_arrives(&mut self, from: usize, start: u32, to: usize, began: Duration) {
        if !self.running(from, start) {
            return;
        }
        if self.slots[to].node.is_none() || !self.reachable(from, to) {
            self.counters.dials_failed += 1;
            self.push(
                began + HANDSHAKE_TIMEOUT,
                EventKind::DialTimesOut { from, start, to },
            );
            return;
        }
        let node = self.node_mut(from);
        node.dialing.remove(&to);
        node.backoff.remove(&to);
        let seed = node.seeds.contains(&to);
        self.establish(from, to, seed);
    }

    fn dial_times_out(&mut self, from: usize, start: u32, to: usize) {
        if !self.running(from, start) {
            return;
        }
        self.node_mut(from).dialing.remove(&to);
        self.schedule_redial(from, to);
    }

    fn schedule_redial(&mut self, slot: usize, to: usize) {
        let start = self.slots[slot].start;
        let node = self.node_mut(slot);
        if !node.dialing.insert(to) {
            return;
        }
        let wait = node.backoff.get(&to).copied().unwrap_or(REDIAL_FIRST);
        node.backoff.insert(to, (wait * 2).min(REDIAL_MOST));
        self.push(
            self.elapsed + wait,
            EventKind::Redial {
                from: slot,
                start,
                to,
            },
        );
    }

    fn redial(&mut self, from: usize, start: u32, to: usize) {
        if !self.running(from, start) {
            return;
        }
        self.node_mut(from).dialing.remove(&to);
        if self.wanted(from, to) {
            self.dial(from, to);
        }
    }

    /// Whether the node at `slot` should (re)dial `to`: a seed not linked,
    /// or a peer there without a link whose id is higher.
    fn wanted(&self, slot: usize, to: usize) -> bool {
        let node = self.node(slot);
        if node.seeds.contains(&to) {
            let linked = node
                .seed_peers
                .get(&to)
                .and_then(|id| node.peers.get(id))
                .is_some_and(|peer| peer.link.is_some());
            return !linked;
        }
        node.peers_at(to)
            .any(|id| node.id < id && node.peers[&id].link.is_none())
    }

    /// A dial from `dialer` got through: both ends take the link, unless one
    /// exists already (the runtime keeps one link per pair).
    fn establish(&mut self, dialer: usize, accepter: usize, seed: bool) {
        let (dialer_id, accepter_id) = (self.node(dialer).id, self.node(accepter).id);
        if self.links.contains_key(&pair(dialer, accepter)) {
            if seed {
                self.node_mut(dialer)
                    .seed_peers
                    .insert(accepter, accepter_id);
            }
            return;
        }
        self.generation += 1;
        self.counters.links_made += 1;
        let generation = self.generation;
        let mut ends = [(dialer, dialer_id), (accepter, accepter_id)];
        ends.sort_unstable();
        self.links.insert(
            pair(dialer, accepter),
            Link {
                generation,
                ends,
                last_arrival: [Duration::ZERO; 2],
            },
        );
        let line = format!(
            "link {} - {} up",
            self.who(dialer_id),
            self.who(accepter_id)
        );
        self.note(line);
        self.take_link(dialer, accepter, accepter_id, generation, seed);
        self.take_link(accepter, dialer, dialer_id, generation, false);
    }

    /// One end of a new link: the peer's earlier starts go, the peer is
    /// linked, interest starts with a snapshot each way, and membership
    /// joins through a seed or meets anyone else.
    fn take_link(&mut self, slot: usize, other: usize, id: NodeId, generation: u64, seed: bool) {
        let restarted: Vec<NodeId> = self
            .node(slot)
            .peers_at(other)
            .filter(|&known| known != id)
            .collect();
        for old in restarted {
            self.forget(slot, old);
        }
        let address = self.slots[other].address.clone();
        let node = self.node_mut(slot);
        let peer = node.peer_entry(id, other);
        peer.link = Some(generation);
        peer.down_since = None;
        node.interest.link_up(id);
        if seed {
            node.seed_peers.insert(other, id);
            self.membership_call(slot, "join", |membership, now| {
                membership.join(&address, now)
            });
        } else {
            self.membership_call(slot, "meet", |membership, now| {
                membership.meet(&address, now)
            });
        }
        self.dirty.insert(slot);
    }

    /// The link between `a` and `b` is gone; each end still running hears it
    /// close (as a departure if `departed`).
    fn drop_link(&mut self, a: usize, b: usize, departed: bool) {
        let Some(link) = self.links.remove(&pair(a, b)) else {
            return;
        };
        let [(low, low_id), (high, high_id)] = link.ends;
        let line = format!(
            "link {} - {} down{}",
            self.who(low_id),
            self.who(high_id),
            if departed { " (departed)" } else { "" }
        );
        self.note(line);
        self.link_closed(low, high_id, link.generation, departed);
        self.link_closed(high, low_id, link.generation, departed);
    }

    /// As the runtime's `link_closed`: only the current link of a known peer
    /// counts; a departure forgets the peer, anything else waits for it.
    fn link_closed(&mut self, slot: usize, id: NodeId, generation: u64, departed: bool) {
        let now = self.elapsed;
        let instant = self.now();
        let Some(node) = self.slots[slot].node.as_mut() else {
            return;
        };
        let Some(peer) = node.peers.get_mut(&id) else {
            return;
        };
        if peer.link != Some(generation) {
            return;
        }
        if departed {
            self.forget(slot, id);
            return;
        }
        peer.link = None;
        peer.down_since = Some(now);
        let other = peer.slot;
        node.link_down(id, instant);
        node.backoff.remove(&other);
        self.dirty.insert(slot);
        if self.wanted(slot, other) {
            self.schedule_redial(slot, other);
        }
    }

    /// Peers without a link past the grace period that membership does not
    /// hold alive are forgotten, as the runtime's `expire_peers` does.
    fn expire_peers(&mut self, slot: usize) {
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

    fn send_datagram(&mut self, from: usize, to: &str, packet: Vec<u8>) {
        self.counters.datagrams_sent += 1;
        if packet.len() > PACKET_BYTES_MAX {
            self.fail(format!("node {from} sent {} bytes", packet.len()));
            return;
        }
        let Some(&to) = self.by_address.get(to) else {
            self.fail(format!("node {from} sent to an unknown address {to}"));
            return;
        };
        if self.blocked(from, to) || self.rng.random_bool(self.network.loss) {
            return;
        }
        self.counters.datagrams_through += 1;
        let delay = self.delay();
        // Only the departure notices: foca's own last packets carry the
        // notice only when they have room, and alone make the node dead.
        let farewell = self
            .leaving
            .filter(|_| packet.first() == Some(&KIND_DEPARTURE));
        self.push(
            self.elapsed + delay,
            EventKind::Datagram {
                to,
                packet,
                farewell,
            },
        );
    }

    /// Interest messages go on the peer's link, in order; with no link they
    /// are dropped, as the runtime drops them.
    fn send_control(&mut self, from: usize, to: NodeId, message: InterestMessage) {
        let Some(peer) = self.node(from).peers.get(&to) else {
            return;
        };
        let (Some(generation), to) = (peer.link, peer.slot) else {
            return;
        };
        let delay = self.delay();
        let link = self
            .links
            .get_mut(&pair(from, to))
            .expect("a linked peer's link is up");
        assert_eq!(link.generation, generation, "one link per pair");
        let lane = usize::from(from > to);
        let arrival = (self.elapsed + delay).max(link.last_arrival[lane]);
        link.last_arrival[lane] = arrival;
        self.counters.control_messages += 1;
        self.push(
            arrival,
            EventKind::Control {
                from,
                to,
                generation,
                message,
            },
        );
    }

    fn deliver_control(
        &mut self,
        from: usize,
        to: usize,
        generation: u64,
        message: InterestMessage,
    ) {
        let Some(link) = self.links.get(&pair(from, to)) else {
            return;
        };
        if link.generation != generation {
            return;
        }
        let sender = link.id_at(from);
        self.node_mut(to).interest.handle(sender, message);
        self.dirty.insert(to);
    }

    fn schedule_wake(&mut self, slot: usize) {
        let Some(node) = self.slots[slot].node.as_mut() else {
            return;
        };
        let mut deadline = *node
            .interest_deadline
            .get_or_insert_with(|| node.interest.poll_timeout());
        let membership = *node
            .membership_deadline
            .get_or_insert_with(|| node.membership.poll_timeout());
        if let Some(membership) = membership {
            deadline = deadline.min(membership);
        }
        let at = deadline
            .saturating_duration_since(self.base)
            .max(self.elapsed);
        let start = self.slots[slot].start;
        if self.slots[slot].wake.is_none_or(|wake| at < wake) {
            self.slots[slot].wake = Some(at);
            self.push(at, EventKind::Wake { slot, start });
        }
    }

    /// The runtime's timer: both machines' timeouts, then its own peer
    /// expiry.
    fn wake(&mut self, slot: usize) {
        self.slots[slot].wake = None;
        let now = self.now();
        let node = self.node_mut(slot);
        // The runtime calls it on every timer; before its deadline it does
        // nothing, and calling it would throw the kept deadline away.
        if node
            .interest_deadline
            .is_none_or(|deadline| now >= deadline)
        {
            node.interest_timeout(now);
        }
        self.membership_call(slot, "timer", |membership, now| {
            membership.handle_timeout(now)
        });
        let elapsed = self.elapsed;
        let node = self.node_mut(slot);
        if elapsed >= node.next_expiry_check {
            node.next_expiry_check = elapsed + EXPIRY_CHECK_EVERY;
            self.expire_peers(slot);
        }
        self.dirty.insert(slot);
    }

    fn handle(&mut self, event: EventKind) {
        match event {
            EventKind::Datagram {
                to,
                packet,
                farewell,
            } => {
                if let Some(leaver) = farewell
                    && self.slots[to].node.is_some()
                {
                    let hearer = (to, self.slots[to].start);
                    self.farewells.entry(leaver).or_default().push(hearer);
                }
                self.membership_call(to, "packet", |membership, now| {
                    membership.handle_packet(&packet, now)
                });
            }
            EventKind::Control {
                from,
                to,
                generation,
                message,
            } => self.deliver_control(from, to, generation, message),
            EventKind::Wake { slot, start } => {
                if self.running(slot, start) && self.slots[slot].wake == Some(self.elapsed) {
                    self.wake(slot);
                }
            }
            EventKind::DialArrives {
                from,
                start,
                to,
                began,
            } => self.dial_arrives(from, start, to, began),
            EventKind::DialTimesOut { from, start, to } => self.dial_times_out(from, start, to),
            EventKind::Redial { from, start, to } => self.redial(from, start, to),
        }
    }

    /// Runs every event due by `end`.
    fn run_until(&mut self, end: Duration) -> Result<(), String> {
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > end {
                break;
            }
            let ((at, _), event) = entry.remove_entry();
            self.elapsed = at;
            self.handle(event);
            self.settle();
            if let Some(problem) = self.problem.take() {
                return Err(self.failure(&problem));
            }
        }
        self.elapsed = self.elapsed.max(end);
        Ok(())
    }

    // ----- Faults -----

    fn pick(&mut self, among: &[usize]) -> usize {
        among[self.rng.random_range(0..among.len())]
    }

    /// Up to three live nodes to join through, as a runtime is configured
    /// with a few seeds.
    fn seeds_for(&mut self, slot: usize, live: &[usize]) -> Vec<usize> {
        let mut seeds: Vec<usize> = (0..3).map(|_| self.pick(live)).collect();
        seeds.sort_unstable();
        seeds.dedup();
        seeds.retain(|&seed| seed != slot);
        seeds
    }

    fn toggle_partition(&mut self, live: &[usize]) {
        if self.partition.take().is_some() {
            self.note("partition heals".into());
            return;
        }
        let one_way = self.rng.random_bool(0.3);
        let cut_off: BTreeSet<usize> = if self.rng.random_bool(0.3) {
            BTreeSet::from([self.pick(live)])
        } else {
            let share = self.rng.random_range(0.1..0.5);
            live.iter()
                .copied()
                .filter(|_| self.rng.random_bool(share))
                .collect()
        };
        self.note(format!(
            "partition: {:?} cut off{}",
            cut_off,
            if one_way { ", one way" } else { "" }
        ));
        self.partition = Some(Partition { cut_off, one_way });
        let cut: Vec<(usize, usize)> = self
            .links
            .keys()
            .copied()
            .filter(|&(a, b)| !self.reachable(a, b))
            .collect();
        for (a, b) in cut {
            self.drop_link(a, b, false);
        }
        self.settle();
    }

    /// One node or network event. Never fewer live nodes than `floor`.
    fn fault(&mut self, faults: &Faults, floor: usize) {
        let live = self.live();
        let stopped: Vec<usize> = (0..self.slots.len())
            .filter(|&slot| self.slots[slot].fate != Fate::Live)
            .collect();
        let shrink = live.len() > floor;
        match self.rng.random_range(0..12) {
            0 | 1 if shrink => {
                let slot = self.pick(&live);
                self.crash(slot);
            }
            2 | 3 => {
                // A quick restart its peers may not notice, or a stopped
                // node coming back.
                let slot = if stopped.is_empty() || self.rng.random_bool(0.5) {
                    let slot = self.pick(&live);
                    self.crash(slot);
                    slot
                } else {
                    self.pick(&stopped)
                };
                let seeds = self.seeds_for(slot, &live);
                self.boot(slot, seeds);
            }
            4 | 5 if shrink => {
                let slot = self.pick(&live);
                self.leave(slot);
            }
            6 | 7 => {
                let seeds = self.seeds_for(self.slots.len(), &live);
                self.add_node(seeds);
            }
            8..=11 if faults.partitions => self.toggle_partition(&live),
            _ => {}
        }
    }

    /// A subscription comes or goes on a random live node.
    fn churn(&mut self) {
        let live = self.live();
        let slot = self.pick(&live);
        if self.rng.random_bool(0.55) {
            self.subscribe(slot);
        } else {
            self.unsubscribe(slot);
        }
        self.settle();
    }

    /// `count` nodes, each joining through node 0; runs until they converge.
    fn bootstrap(&mut self, count: usize) -> Result<Duration, String> {
        self.add_node(Vec::new());
        for _ in 1..count {
            self.add_node(vec![0]);
        }
        self.converge(BOOTSTRAP_BOUND, "the bootstrap")
    }

    /// Faults for `faults.duration`, then calm and healed; returns how long
    /// the mesh took to converge once they stopped.
    fn run_faults(&mut self, faults: &Faults) -> Result<Duration, String> {
        let floor = self.live().len() * 2 / 3;
        self.network = faults.network;
        let end = self.elapsed + faults.duration;
        let mut next_fault = self.elapsed
            + faults
                .event_interval
                .mul_f64(self.rng.random_range(0.0..2.0));
        let mut next_churn = self.elapsed
            + faults
                .churn_interval
                .mul_f64(self.rng.random_range(0.0..2.0));
        while self.elapsed < end {
            self.run_until(next_fault.min(next_churn).min(end))?;
            if self.elapsed >= next_fault && self.elapsed < end {
                self.fault(faults, floor);
                next_fault += faults
                    .event_interval
                    .mul_f64(self.rng.random_range(0.0..2.0));
            }
            if self.elapsed >= next_churn && self.elapsed < end {
                self.churn();
                next_churn += faults
                    .churn_interval
                    .mul_f64(self.rng.random_range(0.0..2.0));
            }
            if let Some(problem) = self.problem.take() {
                return Err(self.failure(&problem));
            }
        }
        self.network = CALM;
        if self.partition.take().is_some() {
            self.note("partition heals".into());
        }
        self.note("faults stop".into());
        self.converge(heal_bound(), "faults stopped")
    }

    /// Runs until the mesh converges, checking every `CHECK_EVERY`; fails
    /// after `bound`.
    fn converge(&mut self, bound: Duration, since: &str) -> Result<Duration, String> {
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
    fn stays_converged(&mut self, time: Duration) -> Result<(), String> {
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
    fn kept_deadline_divergence(&self) -> Option<String> {
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
    fn quick_divergence(&self) -> Option<String> {
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

    fn divergence(&self) -> Option<String> {
        self.membership_divergence()
            .or_else(|| self.interest_divergence())
            .or_else(|| self.delivery_divergence())
    }

    /// Check 1: membership and links.
    fn membership_divergence(&self) -> Option<String> {
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
    fn interest_divergence(&self) -> Option<String> {
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
    fn delivery_divergence(&self) -> Option<String> {
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

/// How long convergence may take once faults stop. Membership first: a
/// partition's two sides find each other again by knocking on dead members'
/// doors every `dead_announce_interval`, those wrongly declared dead renew,
/// and news that missed a node is repaired by the digest exchange every
/// `sync_interval` (as `membership_sim.rs` bounds it). Then links: a dial
/// begun before the heal may wait out its handshake timeout and the longest
/// backoff; once linked, snapshots go both ways at once, and whatever one
/// raced is repaired by the next interest digest.
fn heal_bound() -> Duration {
    let membership = membership_config();
    let membership_heals = membership.dead_announce_interval * 3
        + membership.sync_interval * 3
        + membership.probe_period * 10;
    membership_heals + HANDSHAKE_TIMEOUT + REDIAL_MOST + interest_config().digest_interval
}

/// One run: bootstrap `count` nodes, `faults`, convergence, quiet.
fn run(seed: u64, count: usize, faults: &Faults, test: &'static str) {
    let wall = Instant::now();
    let mut sim = Sim::new(seed, test);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let bootstrap = sim.bootstrap(count)?;
        if soak() {
            // A soak runs for minutes: say how far it got.
            println!(
                "seed {seed}, {count} nodes: formed in {:.1} s (virtual), {:.0} s wall so far; faults next",
                bootstrap.as_secs_f64(),
                wall.elapsed().as_secs_f64()
            );
        }
        let healed = sim.run_faults(faults)?;
        sim.stays_converged(QUIET)?;
        Ok::<_, String>((bootstrap, healed))
    }));
    let (bootstrap, healed) = match outcome {
        Ok(Ok(times)) => times,
        Ok(Err(report)) => panic!("{report}"),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            panic!("{}", sim.failure(&format!("panicked: {what}")));
        }
    };
    let live = sim.live();
    let subscriptions: usize = live
        .iter()
        .map(|&slot| sim.node(slot).subscriptions.len())
        .sum();
    let routes: usize = live.iter().map(|&slot| sim.node(slot).routes.len()).sum();
    let counters = &sim.counters;
    println!(
        "seed {seed}, {count} nodes: formed in {:.1} s; {} live of {} after faults; converged {:.1} s (virtual) after they stopped; \
         {subscriptions} subscriptions, {routes} routes; \
         {} links made, {} dials failed, {} datagrams ({} through), {} link messages, {} refused by foca; {:.1} s wall",
        bootstrap.as_secs_f64(),
        live.len(),
        sim.slots.len(),
        healed.as_secs_f64(),
        counters.links_made,
        counters.dials_failed,
        counters.datagrams_sent,
        counters.datagrams_through,
        counters.control_messages,
        counters.refused_by_foca,
        wall.elapsed().as_secs_f64(),
    );
}

/// A hundred nodes under heavy faults; in a soak, a thousand under heavier
/// ones (as `membership_sim.rs` soaks), about half an hour per seed on one
/// core of a release build.
#[test]
fn a_hundred_nodes_converge_after_heavy_faults() {
    let (count, runs, faults) = if soak() {
        (
            1000,
            1,
            Faults {
                duration: Duration::from_secs(120),
                event_interval: Duration::from_millis(300),
                ..HEAVY
            },
        )
    } else {
        (100, 1, HEAVY)
    };
    for seed in seeds(runs) {
        run(
            seed,
            count,
            &faults,
            "a_hundred_nodes_converge_after_heavy_faults",
        );
    }
}

/// Ten and thirty nodes under worse loss and more frequent events; in a
/// soak, three hundred under heavy faults (half a minute per seed).
#[test]
fn small_meshes_converge_after_stormy_faults() {
    let sizes: &[(usize, Faults)] = if soak() {
        &[(300, HEAVY)]
    } else {
        &[(10, STORMY), (30, STORMY)]
    };
    for seed in seeds(if soak() { 3 } else { 2 }) {
        for (count, faults) in sizes {
            run(
                seed,
                *count,
                faults,
                "small_meshes_converge_after_stormy_faults",
            );
        }
    }
}
