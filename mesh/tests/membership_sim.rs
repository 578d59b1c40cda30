//! A deterministic simulator for SWIM membership: hundreds of `Membership`
//! state machines in one thread, on a simulated datagram network with
//! virtual time, seeded loss, delay (and so reordering), symmetric and
//! one-way partitions, crashes, restarts (new id, same address), graceful
//! leaves and newcomers.
//!
//! Each run builds a cluster, lets faults happen for a while, then stops
//! them and checks that membership converged within a bound: every live
//! node sees exactly the live nodes as alive (under their current ids
//! only), every crashed node as dead or forgotten, every departed node as
//! left or forgotten, and the notifications each node gave its runtime add
//! up to the same live set.
//!
//! A failure prints its seed. Replay one run with
//! `STARLING_SIM_SEED=<seed> cargo test -p starling-mesh --test membership_sim -- --nocapture`;
//! run more seeds with `STARLING_SIM_SEEDS=<count>`, and a long soak (a
//! thousand nodes under heavy faults, in a release build for speed) with
//! `STARLING_SIM_SOAK=1 cargo test --release -p starling-mesh --test membership_sim -- --nocapture`.

mod sim;

use sim::{CALM, LOSSY, Network, seeds, soak};

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use starling_mesh::cluster::ClusterConfig;
use starling_mesh::cluster::interest::NodeId;
use starling_mesh::cluster::membership::{
    Identity, MemberState, Membership, MembershipConfig, MembershipError, Output,
};

/// The production timing: virtual time costs nothing, and the figures then
/// mean what they say.
fn config() -> MembershipConfig {
    MembershipConfig::lan()
}

/// How long a link to a crashed node takes to time out: the runtime's
/// QUIC idle timeout.
fn idle_timeout() -> Duration {
    ClusterConfig::default().idle_timeout
}

/// What happens during a run's fault phase.
#[derive(Debug, Clone, Copy)]
struct Faults {
    network: Network,
    /// How long faults go on.
    duration: Duration,
    /// Mean time between two fault events (crash, restart, leave, newcomer,
    /// partition or heal).
    event_interval: Duration,
    /// Whether partitions (symmetric, one-way, one node cut off) happen.
    partitions: bool,
}

/// A hundred nodes get this.
const HEAVY: Faults = Faults {
    network: LOSSY,
    duration: Duration::from_secs(40),
    event_interval: Duration::from_millis(700),
    partitions: true,
};

/// Every size gets this, up to a thousand nodes.
const LIGHT: Faults = Faults {
    network: Network {
        loss: 0.01,
        delay_min: Duration::from_micros(200),
        delay_max: Duration::from_millis(5),
    },
    duration: Duration::from_secs(10),
    event_interval: Duration::from_secs(2),
    partitions: false,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    Live,
    Crashed,
    /// Left on purpose; `heard_by` the nodes (slot, id of that start) its
    /// farewell packets were sent to through the network. It must be held
    /// left while one of them runs on (it took the notice in, or will);
    /// if none does, dead is right too: a node cut off by a partition, or
    /// whose only listeners crashed before passing the news on, has told
    /// nobody.
    Left {
        heard_by: Vec<(usize, NodeId)>,
    },
}

/// One address and whoever runs there.
#[derive(Debug)]
struct Slot {
    address: String,
    node: Option<Membership>,
    /// The identity of the latest start here.
    identity: Identity,
    fate: Fate,
    /// The live members as the runtime would know them, from this node's
    /// notifications alone.
    notified: HashMap<NodeId, Identity>,
    /// The wake-up scheduled for this node, if any.
    wake: Option<Duration>,
}

#[derive(Debug)]
enum EventKind {
    Deliver {
        slot: usize,
        packet: Vec<u8>,
    },
    Wake {
        slot: usize,
    },
    /// The link from the node at `slot` (while it runs the start
    /// `observer`) to the start `silent` at `address` timed out.
    LinkSilent {
        slot: usize,
        observer: NodeId,
        address: String,
        silent: NodeId,
    },
}

#[derive(Debug)]
struct Event {
    at: Duration,
    sequence: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Event {}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Event {
    /// Earliest first in a max-heap; ties in the order scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}

/// Which datagrams a partition drops: those from one side to the other
/// (both ways unless `one_way`).
#[derive(Debug)]
struct Partition {
    cut_off: HashSet<usize>,
    one_way: bool,
}

struct Sim {
    seed: u64,
    rng: SmallRng,
    base: Instant,
    elapsed: Duration,
    network: Network,
    partition: Option<Partition>,
    slots: Vec<Slot>,
    by_address: HashMap<String, usize>,
    events: BinaryHeap<Event>,
    sequence: u64,
    bytes_sent: u64,
    /// Packets not dropped by the network.
    /// While a node leaves: where its packets went through the network.
    farewell_receivers: Option<Vec<usize>>,
    /// The latest start time given out.
    started_ms: u64,
    log: Vec<String>,
}

impl Sim {
    /// `count` nodes that all join through node 0 at once, as a cluster's
    /// first start does, then pull node 0's view once more when it knows
    /// everyone (a restarting runtime would do the same by rejoining).
    /// Runs until they converge and returns the time that took.
    fn bootstrap(seed: u64, count: usize) -> Result<(Self, Duration), String> {
        let mut sim = Self {
            seed,
            rng: SmallRng::seed_from_u64(seed),
            base: Instant::now(),
            elapsed: Duration::ZERO,
            network: CALM,
            partition: None,
            slots: Vec::new(),
            by_address: HashMap::new(),
            events: BinaryHeap::new(),
            sequence: 0,
            bytes_sent: 0,
            farewell_receivers: None,
            started_ms: 0,
            log: Vec::new(),
        };
        for slot in 0..count {
            let seeds: &[usize] = if slot == 0 { &[] } else { &[0] };
            sim.add_slot(seeds);
        }
        sim.run_for(Duration::from_millis(50))?;
        let seed_address = sim.slots[0].address.clone();
        for slot in 1..count {
            sim.with_node(slot, |node, now| node.join(&seed_address, now))?;
        }
        let took = sim.converge(Duration::from_secs(60))?;
        Ok((sim, took))
    }

    fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    fn note(&mut self, what: String) {
        self.log
            .push(format!("{:>9.3}s {what}", self.elapsed.as_secs_f64()));
    }

    fn failure(&self, what: &str) -> String {
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

    fn fresh_identity(&mut self, address: &str) -> Identity {
        // Milliseconds since the run's start stand in for the wall clock,
        // kept increasing so that a restart within the same millisecond is
        // still the newer start.
        self.started_ms = (self.elapsed.as_millis() as u64 + 1).max(self.started_ms + 1);
        // Not 0: that id stands for "unknown" (a seed known by address).
        let id = self.rng.random::<u64>() | 1;
        Identity::new(id, address, self.started_ms).expect("short address")
    }

    /// A new node on a new address, joining through the nodes at `seeds`.
    fn add_slot(&mut self, seeds: &[usize]) -> usize {
        let slot = self.slots.len();
        let address = format!("10.{}.{}.1:7401", slot / 250, slot % 250);
        let identity = self.fresh_identity(&address);
        self.by_address.insert(address.clone(), slot);
        self.slots.push(Slot {
            address,
            node: None,
            identity: identity.clone(),
            // Until `boot`, just below.
            fate: Fate::Crashed,
            notified: HashMap::new(),
            wake: None,
        });
        self.boot(slot, identity, seeds);
        slot
    }

    /// Starts the stopped node at `slot` again, under a new identity.
    fn restart(&mut self, slot: usize, seeds: &[usize]) {
        let address = self.slots[slot].address.clone();
        let identity = self.fresh_identity(&address);
        self.boot(slot, identity, seeds);
    }

    fn boot(&mut self, slot: usize, identity: Identity, seeds: &[usize]) {
        assert!(self.slots[slot].node.is_none(), "only stopped nodes start");
        let node = Membership::new(identity.clone(), config(), self.rng.random(), self.now());
        let target = &mut self.slots[slot];
        target.node = Some(node);
        target.identity = identity.clone();
        target.fate = Fate::Live;
        target.notified.clear();
        target.wake = None;
        self.note(format!(
            "node {slot} starts as {:x}, joining through {seeds:?}",
            identity.id()
        ));
        self.drain(slot);
        for &seed in seeds {
            let seed_address = self.slots[seed].address.clone();
            self.with_node(slot, |node, now| node.join(&seed_address, now))
                .expect("a well-formed address");
        }
    }

    /// Whether a node that took in (or will take in) a departure notice
    /// still runs the start that did.
    fn still_listening(&self, heard_by: &[(usize, NodeId)]) -> bool {
        heard_by.iter().any(|&(slot, id)| {
            self.slots[slot].node.is_some() && self.slots[slot].identity.id() == id
        })
    }

    /// The node at `slot` stops without a word. Every node runs a link to
    /// every member (as the runtime does); each of them times out one idle
    /// timeout later, and its node is told (`Membership::unreachable`).
    fn crash(&mut self, slot: usize) {
        self.slots[slot].node = None;
        self.slots[slot].wake = None;
        self.slots[slot].fate = Fate::Crashed;
        self.note(format!("node {slot} crashes"));
        let (address, silent) = (
            self.slots[slot].address.clone(),
            self.slots[slot].identity.id(),
        );
        for observer in self.live() {
            let kind = EventKind::LinkSilent {
                slot: observer,
                observer: self.slots[observer].identity.id(),
                address: address.clone(),
                silent,
            };
            self.push(self.elapsed + idle_timeout(), kind);
        }
    }

    fn leave(&mut self, slot: usize) -> Result<(), String> {
        self.farewell_receivers = Some(Vec::new());
        self.with_node(slot, |node, now| node.leave(now))?;
        let heard_by: Vec<(usize, NodeId)> = self
            .farewell_receivers
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|to| (to, self.slots[to].identity.id()))
            .collect();
        let heard = !heard_by.is_empty();
        self.slots[slot].node = None;
        self.slots[slot].wake = None;
        self.slots[slot].fate = Fate::Left { heard_by };
        self.note(format!("node {slot} leaves (heard: {heard})"));
        Ok(())
    }

    /// Calls into a node, then carries out what it asked for.
    fn with_node(
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

    fn drain(&mut self, slot: usize) {
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

    fn schedule_wake(&mut self, slot: usize) {
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

    fn push(&mut self, at: Duration, kind: EventKind) {
        self.sequence += 1;
        self.events.push(Event {
            at,
            sequence: self.sequence,
            kind,
        });
    }

    fn send(&mut self, from: usize, to: &str, packet: Vec<u8>) {
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
    fn run_for(&mut self, time: Duration) -> Result<(), String> {
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

    fn live(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&slot| self.slots[slot].fate == Fate::Live)
            .collect()
    }

    /// Whether every live node knows as many live members as there are:
    /// cheap, checked before [`Sim::divergence`].
    fn counts_agree(&self) -> bool {
        let live = self.live();
        live.iter().all(|&slot| {
            self.slots[slot]
                .node
                .as_ref()
                .is_some_and(|node| node.live_count() == live.len() - 1)
        })
    }

    /// What is wrong with the membership now, if anything.
    fn divergence(&self) -> Option<String> {
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
    fn unaware_of(&self, slot: usize) -> usize {
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
    fn converge(&mut self, bound: Duration) -> Result<Duration, String> {
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

    /// Seeds for the node at `slot`, as a runtime is configured with a few:
    /// up to three random live nodes. It joins through whichever answers.
    fn seeds_for(&mut self, slot: usize, live: &[usize]) -> Vec<usize> {
        let mut seeds: Vec<usize> = (0..3).map(|_| self.random_slot(live)).collect();
        seeds.retain(|&seed| seed != slot);
        seeds.sort_unstable();
        seeds.dedup();
        seeds
    }

    fn random_slot(&mut self, among: &[usize]) -> usize {
        among[self.rng.random_range(0..among.len())]
    }

    /// One random fault event.
    fn fault(&mut self, faults: &Faults, initial: usize) -> Result<(), String> {
        let live = self.live();
        let stopped: Vec<usize> = (0..self.slots.len())
            .filter(|&slot| self.slots[slot].fate != Fate::Live)
            .collect();
        let can_shrink = live.len() > initial * 2 / 3;
        match self.rng.random_range(0..6) {
            0 if can_shrink => {
                let slot = self.random_slot(&live);
                self.crash(slot);
            }
            1 => {
                // A restart: of a live node (a quick restart its peers may
                // never notice) or a stopped one, through any live node.
                let slot = if stopped.is_empty() || self.rng.random_bool(0.5) {
                    let slot = self.random_slot(&live);
                    self.crash(slot);
                    slot
                } else {
                    self.random_slot(&stopped)
                };
                let seeds = self.seeds_for(slot, &live);
                self.restart(slot, &seeds);
            }
            2 if can_shrink => {
                let slot = self.random_slot(&live);
                self.leave(slot)?;
            }
            3 => {
                let seeds = self.seeds_for(self.slots.len(), &live);
                let slot = self.add_slot(&seeds);
                self.note(format!("node {slot} is new"));
            }
            4 | 5 if faults.partitions => {
                if self.partition.take().is_some() {
                    self.note("partition heals".into());
                } else {
                    let one_way = self.rng.random_bool(0.3);
                    let cut_off: HashSet<usize> = if self.rng.random_bool(0.3) {
                        HashSet::from([self.random_slot(&live)])
                    } else {
                        let share = self.rng.random_range(0.1..0.5);
                        live.iter()
                            .copied()
                            .filter(|_| self.rng.random_bool(share))
                            .collect()
                    };
                    self.note(format!(
                        "partition: {} nodes cut off{}",
                        cut_off.len(),
                        if one_way { ", one way" } else { "" }
                    ));
                    self.partition = Some(Partition { cut_off, one_way });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Faults for `faults.duration`, then calm; returns how long the
    /// membership took to converge once they stopped.
    fn run_faults(&mut self, faults: &Faults) -> Result<Duration, String> {
        let initial = self.live().len();
        self.network = faults.network;
        let end = self.elapsed + faults.duration;
        while self.elapsed < end {
            let pause = faults
                .event_interval
                .mul_f64(self.rng.random_range(0.0..2.0));
            self.run_for(pause)?;
            self.fault(faults, initial)?;
        }
        self.network = CALM;
        if self.partition.take().is_some() {
            self.note("partition heals".into());
        }
        self.note("faults stop".into());
        self.converge(heal_bound())
    }

    /// Bytes sent per live node per second over `time`, with no faults.
    fn idle_bytes_per_node_second(&mut self, time: Duration) -> Result<f64, String> {
        let before = self.bytes_sent;
        self.run_for(time)?;
        let sent = (self.bytes_sent - before) as f64;
        Ok(sent / self.live().len() as f64 / time.as_secs_f64())
    }
}

/// How long convergence may take once faults stop. The slowest repair is
/// a partition's: each side holds the other dead, and they find each other
/// again by knocking on dead members' doors every `dead_announce_interval`;
/// every node wrongly declared dead then renews itself, and each renewal
/// spreads. News that missed a node (SWIM spreads each item a bounded
/// number of times) is repaired by the digest exchange, every
/// `sync_interval` (±50%).
fn heal_bound() -> Duration {
    let config = config();
    config.dead_announce_interval * 3 + config.sync_interval * 3 + config.probe_period * 10
}

/// How soon after a crash every node must hold the crashed node dead, in a
/// cluster of up to `members` nodes: its links time out (the idle
/// timeout), which makes every node suspect it at once; the suspicion
/// times out (`suspicion_multiplier · max(1, log10 n)` probe periods, one
/// more for the deadline every node keeps); a probe period for the verdict
/// to be reported. README states it: 11 s up to 10 members, 15 s up to
/// 100, 19 s up to 1000, however many crash at once.
fn death_bound(members: usize) -> Duration {
    let config = config();
    let suspicion = f64::from(config.suspicion_multiplier) * (members as f64).log10().max(1.0);
    idle_timeout() + config.probe_period.mul_f64(suspicion) + config.probe_period * 2
}

fn run_or_panic<T>(result: Result<T, String>) -> T {
    result.unwrap_or_else(|report| panic!("{report}"))
}

#[test]
fn a_hundred_nodes_converge_after_heavy_faults() {
    let (count, faults) = if soak() {
        (
            1000,
            Faults {
                duration: Duration::from_secs(120),
                event_interval: Duration::from_millis(300),
                ..HEAVY
            },
        )
    } else {
        (100, HEAVY)
    };
    let mut slowest = Duration::ZERO;
    for seed in seeds(if soak() { 5 } else { 2 }) {
        let (mut sim, _) = run_or_panic(Sim::bootstrap(seed, count));
        let took = run_or_panic(sim.run_faults(&faults));
        println!(
            "seed {seed}: converged {:.1} s after faults stopped",
            took.as_secs_f64()
        );
        slowest = slowest.max(took);
    }
    println!(
        "{count} nodes, heavy faults: slowest convergence {:.1} s after they stopped",
        slowest.as_secs_f64()
    );
}

/// Issue 15: 148 short-lived nodes, each with a new address, joined a
/// 3-node mesh and were killed 200 ms later, one after another; 30 s after
/// the last kill a survivor still held 83 of them alive. SWIM probes one
/// member per period, so three survivors found about three of them a
/// second. Every node has a link to every member, and its timing out
/// suspects the member at once: all of them are dead within the bound.
#[test]
fn short_lived_nodes_killed_after_joining_are_all_dead_within_the_bound() {
    const VISITORS: usize = 148;
    for seed in seeds(2) {
        let (mut sim, _) = run_or_panic(Sim::bootstrap(seed, 3));
        let survivors = sim.live();
        for _ in 0..VISITORS {
            let seeds = vec![sim.random_slot(&survivors)];
            let visitor = sim.add_slot(&seeds);
            run_or_panic(sim.run_for(Duration::from_millis(200)));
            sim.crash(visitor);
        }
        let bound = death_bound(survivors.len() + VISITORS);
        let took = run_or_panic(sim.converge(bound));
        println!(
            "seed {seed}: {VISITORS} visitors killed 200 ms after joining; all dead {:.1} s after the last kill (bound {:.1} s)",
            took.as_secs_f64(),
            bound.as_secs_f64()
        );
    }
}

/// Convergence after one change in a converged cluster of `count` nodes.
#[derive(Debug)]
struct Figures {
    count: usize,
    /// All nodes joining through one seed at once.
    bootstrap: Duration,
    /// A newcomer: until every node knows it and it knows every node.
    join: Duration,
    /// Nodes that did not know the newcomer (or that it did not know)
    /// after `LOG_ROUNDS_PER_DOUBLING · log2 N` gossip rounds.
    join_missed: usize,
    /// A graceful leave: until every node holds the node left.
    leave: Duration,
    /// A crash: until every node holds the node dead (probing, the
    /// suspicion timeout, then spreading the verdict).
    crash: Duration,
}

fn measure(seed: u64, count: usize) -> Result<(Sim, Figures), String> {
    let bound = Duration::from_secs(120);
    let (mut sim, bootstrap) = Sim::bootstrap(seed, count)?;
    let live = sim.live();
    let seeds = sim.seeds_for(sim.slots.len(), &live);
    let newcomer = sim.add_slot(&seeds);
    let started = sim.elapsed;
    let join_missed = match sim.converge(dissemination_bound(count)) {
        Ok(_) => 0,
        Err(_) => {
            let missed = sim.unaware_of(newcomer);
            sim.converge(bound)?;
            missed
        }
    };
    let join = sim.elapsed - started;
    let leaving = sim.random_slot(&live);
    sim.leave(leaving)?;
    let leave = sim.converge(bound)?;
    let live = sim.live();
    let crashing = sim.random_slot(&live);
    sim.crash(crashing);
    let crash = sim.converge(bound)?;
    sim.note(format!("measured with newcomer {newcomer}"));
    Ok((
        sim,
        Figures {
            count,
            bootstrap,
            join,
            join_missed,
            leave,
            crash,
        },
    ))
}

/// The figures for BENCHMARKS.md, the log N check, then light faults at
/// every size (a thousand nodes is too many for heavy faults in a debug
/// build: each event costs O(N²) work, foca scanning its member list per
/// update).
#[test]
fn convergence_grows_like_log_n_and_survives_light_faults() {
    let seed = seeds(1)[0];
    let round = config().gossip_interval;
    let rounds = |time: Duration| time.as_secs_f64() / round.as_secs_f64();
    println!(
        "convergence, virtual time (gossip rounds of {} ms), seed {seed}:",
        round.as_millis()
    );
    println!("    N  bootstrap        join             leave            crash");
    for count in [10, 100, 1000] {
        let (mut sim, figures) = run_or_panic(measure(seed, count));
        println!(
            "{:>5}  {:>5.2} s ({:>4.1})  {:>5.2} s ({:>4.1})  {:>5.2} s ({:>4.1})  {:>5.2} s ({:>4.1})",
            figures.count,
            figures.bootstrap.as_secs_f64(),
            rounds(figures.bootstrap),
            figures.join.as_secs_f64(),
            rounds(figures.join),
            figures.leave.as_secs_f64(),
            rounds(figures.leave),
            figures.crash.as_secs_f64(),
            rounds(figures.crash),
        );
        // News spreads like an epidemic: O(log N) rounds, with high
        // probability. A newcomer's arrival is pure dissemination (a crash
        // waits for a probe and the suspicion timeout, which grows with
        // log N by design), but every node passes a piece of news on a
        // bounded number of times (`retransmit_multiplier · log10 n`), so
        // now and then a node misses it (seed 1796528165180542120: one of
        // 100 nodes, which learned of the newcomer 4 s later), as in any
        // SWIM. The digest exchange repairs that: all but a node in a
        // hundred within c·log2 N rounds, and every node within one more
        // sync interval (jittered up to 1.5 times).
        let missed_max = (count / 100).max(1);
        assert!(
            figures.join_missed <= missed_max,
            "{}",
            sim.failure(&format!(
                "after {LOG_ROUNDS_PER_DOUBLING}·log2 N rounds, {} of {count} nodes missed a join (at most {missed_max})",
                figures.join_missed
            ))
        );
        let bound = dissemination_bound(count) * 2 + config().sync_interval.mul_f64(1.5);
        assert!(
            figures.join <= bound,
            "{}",
            sim.failure(&format!(
                "a join took {:.1} rounds with {count} nodes, more than {:.1}",
                rounds(figures.join),
                rounds(bound)
            ))
        );
        if count == 1000 {
            let idle = run_or_panic(sim.idle_bytes_per_node_second(Duration::from_secs(20)));
            println!("idle gossip with {count} nodes: {idle:.0} bytes sent per node per second");
        }
        let healed = run_or_panic(sim.run_faults(&LIGHT));
        println!(
            "{count} nodes, light faults: converged {:.1} s after they stopped",
            healed.as_secs_f64()
        );
    }
}

/// The `c` of the `c·log2 N` bound on dissemination rounds.
const LOG_ROUNDS_PER_DOUBLING: f64 = 2.0;

/// `LOG_ROUNDS_PER_DOUBLING · log2 N` gossip rounds.
fn dissemination_bound(count: usize) -> Duration {
    config()
        .gossip_interval
        .mul_f64(LOG_ROUNDS_PER_DOUBLING * (count as f64).log2())
}
