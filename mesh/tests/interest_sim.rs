//! A deterministic simulator for interest propagation: several nodes' state
//! machines driven in one thread over a simulated network with seeded delays,
//! loss, reordering, link breaks and node restarts and crashes.
//!
//! Each run does random work for a while, then heals the network and checks
//! that the mesh converged within a bound: every node's copy of every live
//! peer's interest equals that peer's own, the routes each node was told to
//! make are exactly that copy, and a crashed peer's interest is withdrawn.
//!
//! A failure prints its seed. Replay one run with
//! `STARLING_SIM_SEED=<seed> cargo test -p starling-mesh --test interest_sim -- --nocapture`;
//! run more seeds with `STARLING_SIM_SEEDS=<count>`.

mod sim;

use sim::{advertised, local_keys, seeds};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use starling_mesh::cluster::interest::{
    Interest, InterestConfig, InterestKey, InterestMessage, NodeId, Output,
};

const CONFIG: InterestConfig = InterestConfig {
    digest_interval: Duration::from_millis(500),
    withdraw_after: Duration::from_secs(2),
};
const TICK: Duration = Duration::from_millis(1);
const CHAOS_PHASE: Duration = Duration::from_secs(8);
const PATTERNS: [&str; 6] = [
    "orders.>",
    "orders.*.paid",
    "kitchen.ready",
    "*.audit",
    ">",
    "eta.eu.*",
];
const GROUPS: [Option<&str>; 3] = [None, Some("couriers"), Some("billing")];

/// How the simulated network misbehaves during the chaos phase.
#[derive(Debug, Clone, Copy)]
struct Network {
    /// Most a message waits before it arrives.
    delay_max: Duration,
    /// Chance that a message is lost.
    loss: f64,
    /// Whether messages on one link may overtake each other. QUIC's control
    /// stream never reorders; the protocol must converge even if it did.
    reorder: bool,
}

/// The network profiles every seed runs under.
const NETWORKS: [Network; 3] = [
    // What a QUIC control stream gives: ordered, reliable while the link lives.
    Network {
        delay_max: Duration::from_millis(20),
        loss: 0.0,
        reorder: false,
    },
    Network {
        delay_max: Duration::from_millis(50),
        loss: 0.05,
        reorder: false,
    },
    Network {
        delay_max: Duration::from_millis(80),
        loss: 0.15,
        reorder: true,
    },
];

/// SplitMix64: the whole run follows from the seed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[derive(Debug)]
struct SimNode {
    interest: Interest,
    alive: bool,
    /// The local subscriptions, one element each (keys repeat).
    subscriptions: Vec<InterestKey>,
    /// The routes the state machine asked for: (peer, peer's id) → key.
    routes: BTreeMap<(NodeId, u64), InterestKey>,
}

#[derive(Debug, Clone, Copy)]
struct LinkState {
    up: bool,
    /// Bumped on every break and heal: a message from an older connection
    /// never arrives, as a QUIC stream dies with its connection.
    generation: u64,
    /// Latest arrival time scheduled on this link, for in-order delivery.
    last_arrival: Duration,
}

#[derive(Debug)]
struct Packet {
    arrival: Duration,
    sequence: u64,
    from: usize,
    to: usize,
    generation: u64,
    message: InterestMessage,
}

struct Sim {
    seed: u64,
    rng: Rng,
    base: Instant,
    elapsed: Duration,
    network: Network,
    nodes: Vec<SimNode>,
    /// Symmetric: `links[i][j]` and `links[j][i]` are kept equal.
    links: Vec<Vec<LinkState>>,
    in_flight: Vec<Packet>,
    sequence: u64,
    next_epoch: u64,
    crashed_for_good_at: Option<Duration>,
    log: Vec<String>,
}

fn node_id(index: usize) -> NodeId {
    index as NodeId + 1
}

fn index_of(id: NodeId) -> usize {
    id as usize - 1
}

impl Sim {
    fn new(seed: u64, network: Network) -> Self {
        let mut rng = Rng(seed);
        let count = 3 + rng.below(4);
        let base = Instant::now();
        let mut sim = Self {
            seed,
            rng,
            base,
            elapsed: Duration::ZERO,
            network,
            nodes: Vec::new(),
            links: vec![
                vec![
                    LinkState {
                        up: false,
                        generation: 0,
                        last_arrival: Duration::ZERO,
                    };
                    count
                ];
                count
            ],
            in_flight: Vec::new(),
            sequence: 0,
            next_epoch: seed.wrapping_mul(1000),
            crashed_for_good_at: None,
            log: Vec::new(),
        };
        for _ in 0..count {
            let interest = sim.fresh_interest();
            sim.nodes.push(SimNode {
                interest,
                alive: true,
                subscriptions: Vec::new(),
                routes: BTreeMap::new(),
            });
        }
        for i in 0..count {
            for j in i + 1..count {
                sim.heal(i, j);
            }
        }
        sim
    }

    fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    fn fresh_interest(&mut self) -> Interest {
        self.next_epoch += 1;
        Interest::new(self.next_epoch, CONFIG, self.now())
    }

    fn note(&mut self, what: String) {
        self.log
            .push(format!("{:>6}ms {what}", self.elapsed.as_millis()));
    }

    fn heal(&mut self, i: usize, j: usize) {
        let link = &mut self.links[i][j];
        link.up = true;
        link.generation += 1;
        self.links[j][i] = self.links[i][j];
        self.note(format!("link {i}-{j} up"));
        self.nodes[i].interest.link_up(node_id(j));
        self.nodes[j].interest.link_up(node_id(i));
    }

    fn break_link(&mut self, i: usize, j: usize) {
        let link = &mut self.links[i][j];
        link.up = false;
        link.generation += 1;
        self.links[j][i] = self.links[i][j];
        self.note(format!("link {i}-{j} down"));
        let now = self.now();
        self.nodes[i].interest.link_down(node_id(j), now);
        self.nodes[j].interest.link_down(node_id(i), now);
    }

    /// Node `i` stops: its links break; if `restart`, it comes back at once
    /// with a new epoch and no subscriptions, its links still down.
    fn crash(&mut self, i: usize, restart: bool) {
        for j in 0..self.nodes.len() {
            if j != i && self.links[i][j].up {
                self.break_link(i, j);
            }
        }
        let interest = self.fresh_interest();
        let node = &mut self.nodes[i];
        node.interest = interest;
        node.subscriptions.clear();
        node.routes.clear();
        node.alive = restart;
        if !restart {
            self.crashed_for_good_at = Some(self.elapsed);
        }
        self.note(format!(
            "node {i} {}",
            if restart {
                "restarted"
            } else {
                "crashed for good"
            }
        ));
    }

    fn random_op(&mut self) {
        let count = self.nodes.len();
        let i = self.rng.below(count);
        if !self.nodes[i].alive {
            return;
        }
        match self.rng.below(100) {
            0..=44 => {
                let key = InterestKey {
                    pattern: PATTERNS[self.rng.below(PATTERNS.len())].to_string(),
                    group: GROUPS[self.rng.below(GROUPS.len())].map(str::to_string),
                };
                self.nodes[i].subscriptions.push(key.clone());
                self.nodes[i].interest.local_added(key);
            }
            45..=84 => {
                let node = &mut self.nodes[i];
                if !node.subscriptions.is_empty() {
                    let at = self.rng.below(node.subscriptions.len());
                    let key = node.subscriptions.swap_remove(at);
                    node.interest.local_removed(&key);
                }
            }
            85..=92 => {
                let j = self.rng.below(count);
                if j != i && self.nodes[j].alive {
                    if self.links[i][j].up {
                        self.break_link(i, j);
                    } else {
                        self.heal(i, j);
                    }
                }
            }
            93..=97 => {}
            98 => self.crash(i, true),
            _ => {
                // At most one node crashes for good, and never the last two.
                let alive = self.nodes.iter().filter(|n| n.alive).count();
                if alive == count && count > 3 {
                    self.crash(i, false);
                }
            }
        }
    }

    /// Carries out what node `i`'s state machine asked for.
    fn drain(&mut self, i: usize, chaos: bool) {
        while let Some(output) = self.nodes[i].interest.poll_output() {
            match output {
                Output::Send { to, message } => self.send(i, index_of(to), message, chaos),
                Output::Subscribe { peer, id, key } => {
                    let previous = self.nodes[i].routes.insert((peer, id), key.clone());
                    assert!(
                        previous.is_none(),
                        "node {i} subscribed twice to peer {peer}'s entry {id} ({key:?})"
                    );
                }
                Output::Unsubscribe { peer, id } => {
                    let previous = self.nodes[i].routes.remove(&(peer, id));
                    assert!(
                        previous.is_some(),
                        "node {i} unsubscribed peer {peer}'s entry {id}, which had no route"
                    );
                }
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, message: InterestMessage, chaos: bool) {
        let link = self.links[from][to];
        if !link.up || (chaos && self.rng.chance(self.network.loss)) {
            return;
        }
        let delay_max = if chaos {
            self.network.delay_max
        } else {
            Duration::from_millis(5)
        };
        let delay = Duration::from_micros(self.rng.next() % (delay_max.as_micros() as u64 + 1));
        let mut arrival = self.elapsed + delay;
        if !(chaos && self.network.reorder) {
            arrival = arrival.max(self.links[from][to].last_arrival);
            self.links[from][to].last_arrival = arrival;
        }
        self.sequence += 1;
        self.in_flight.push(Packet {
            arrival,
            sequence: self.sequence,
            from,
            to,
            generation: link.generation,
            message,
        });
    }

    fn step(&mut self, chaos: bool) {
        self.elapsed += TICK;
        if chaos && self.rng.chance(0.3) {
            self.random_op();
        }
        let now = self.elapsed;
        let mut due: Vec<Packet> = Vec::new();
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].arrival <= now {
                due.push(self.in_flight.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|p| (p.arrival, p.sequence));
        for packet in due {
            let link = self.links[packet.from][packet.to];
            if link.up && link.generation == packet.generation {
                self.nodes[packet.to]
                    .interest
                    .handle(node_id(packet.from), packet.message);
            }
        }
        let instant = self.now();
        for i in 0..self.nodes.len() {
            if self.nodes[i].alive {
                self.nodes[i].interest.handle_timeout(instant);
            }
            self.drain(i, chaos);
        }
    }

    /// What is wrong with the mesh now, if anything.
    fn divergence(&self) -> Option<String> {
        for (i, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            let wanted = advertised(&node.subscriptions);
            let local = local_keys(&node.interest);
            if local != wanted {
                return Some(format!(
                    "node {i}'s interest {local:?} is not what its subscriptions need: {wanted:?}"
                ));
            }
            for (j, peer) in self.nodes.iter().enumerate() {
                if j == i {
                    continue;
                }
                let mut expected = if peer.alive {
                    peer.interest.local_entries()
                } else {
                    Vec::new()
                };
                expected.sort();
                let known = node.interest.remote_entries(node_id(j));
                if known != expected {
                    return Some(format!(
                        "node {i} knows {known:?} of node {j}, which has {expected:?}"
                    ));
                }
                let routed: Vec<(u64, InterestKey)> = node
                    .routes
                    .iter()
                    .filter(|((p, _), _)| *p == node_id(j))
                    .map(|((_, id), key)| (*id, key.clone()))
                    .collect();
                if routed != known {
                    return Some(format!(
                        "node {i} routes {routed:?} to node {j} but knows {known:?}"
                    ));
                }
            }
        }
        None
    }

    fn failure(&self, what: &str) -> String {
        let tail: Vec<&String> = self.log.iter().rev().take(40).collect();
        let mut report = format!(
            "seed {} ({:?}): {what}\nreplay: STARLING_SIM_SEED={} cargo test -p starling-mesh --test interest_sim -- --nocapture\nlast events, newest first:\n",
            self.seed, self.network, self.seed
        );
        for line in tail {
            report.push_str(line);
            report.push('\n');
        }
        report
    }

    /// Runs the chaos phase, heals everything and returns how long the mesh
    /// took to converge after the heal.
    fn run(&mut self) -> Result<Duration, String> {
        let chaos_ticks = CHAOS_PHASE.as_millis() / TICK.as_millis();
        for _ in 0..chaos_ticks {
            self.step(true);
        }
        let count = self.nodes.len();
        for i in 0..count {
            for j in i + 1..count {
                if self.nodes[i].alive && self.nodes[j].alive && !self.links[i][j].up {
                    self.heal(i, j);
                }
            }
        }
        self.note("healed".into());
        let healed_at = self.elapsed;
        // Healed links exchange snapshots at once; anything else the chaos
        // phase lost is repaired by the next digest and the snapshot it asks
        // for (two short hops once the chaos is over), after the stragglers
        // of the chaos phase have landed. A crashed peer is withdrawn
        // `withdraw_after` from its crash.
        //
        // On links like QUIC's control stream (ordered, lossless while up)
        // nothing is ever lost without the link, so the link-up snapshots
        // alone must converge the mesh, long before any digest is due.
        let stragglers = self.network.delay_max + Duration::from_millis(20);
        let repair = if self.network.loss == 0.0 && !self.network.reorder {
            stragglers
        } else {
            CONFIG.digest_interval + stragglers
        };
        let withdrawal = self.crashed_for_good_at.map_or(Duration::ZERO, |at| {
            (at + CONFIG.withdraw_after).saturating_sub(healed_at) + TICK
        });
        let bound = repair.max(withdrawal);
        loop {
            self.step(false);
            let took = self.elapsed - healed_at;
            match self.divergence() {
                None => return Ok(took),
                Some(what) if took > bound => {
                    return Err(
                        self.failure(&format!("not converged {took:?} after healing: {what}"))
                    );
                }
                Some(_) => {}
            }
        }
    }
}

#[test]
fn interest_converges_after_any_faults() {
    let mut slowest = Duration::ZERO;
    let mut runs = 0;
    for seed in seeds(40) {
        for network in NETWORKS {
            let mut sim = Sim::new(seed, network);
            match sim.run() {
                Ok(took) => slowest = slowest.max(took),
                Err(report) => panic!("{report}"),
            }
            runs += 1;
        }
    }
    println!("{runs} runs converged; slowest took {slowest:?} after healing");
}

#[test]
fn a_quiet_mesh_converges_without_digests() {
    // Ordered, lossless links and no restarts: deltas and link-up snapshots
    // alone keep every copy exact, long before the first digest is due.
    let mut sim = Sim::new(7, NETWORKS[0]);
    for round in 0..200 {
        let i = round % sim.nodes.len();
        let key = InterestKey {
            pattern: PATTERNS[round % PATTERNS.len()].to_string(),
            group: GROUPS[round % GROUPS.len()].map(str::to_string),
        };
        sim.nodes[i].subscriptions.push(key.clone());
        sim.nodes[i].interest.local_added(key);
        if round % 3 == 0 {
            let key = sim.nodes[i].subscriptions.swap_remove(0);
            sim.nodes[i].interest.local_removed(&key);
        }
        sim.step(false);
    }
    for _ in 0..20 {
        sim.step(false);
    }
    assert!(sim.elapsed < CONFIG.digest_interval);
    if let Some(what) = sim.divergence() {
        panic!("{}", sim.failure(&what));
    }
}
