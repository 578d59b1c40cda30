//! A deterministic simulator for a node's whole mesh logic: the SWIM
//! membership and the interest state machines of every node, driven together
//! in one thread the way the runtime (`cluster/driver`) drives them, over a
//! simulated network in virtual time. `membership_sim` and
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
//!
//! This file holds the timing, the scenarios and the tests; around it:
//! `model` (slots, nodes, peers, links, events), `event_loop` (time, timers,
//! outputs carried out), `nodes` (boots, crashes, leaves, subscriptions),
//! `runtime` (what the runtime does with each output), `links` (dials,
//! handshakes, datagrams, control messages), `faults` (the run's phases),
//! `checks` (what converged means). The network, expected interest and soak
//! switches are shared with the other simulators (`tests/sim/`).

#[path = "../sim/mod.rs"]
mod sim;

mod checks;
mod event_loop;
mod faults;
mod links;
mod model;
mod nodes;
mod runtime;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use starling_mesh::cluster::interest::{InterestConfig, NodeId};
use starling_mesh::cluster::membership::MembershipConfig;

use crate::model::{Counters, EventKind, Link, Partition, Slot};
use crate::sim::{LOSSY, Network, seeds, soak};

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

/// How long convergence may take once faults stop. Membership first: a
/// partition's two sides find each other again by knocking on dead members'
/// doors every `dead_announce_interval`, those wrongly declared dead renew,
/// and news that missed a node is repaired by the digest exchange every
/// `sync_interval` (as `membership_sim` bounds it). Then links: a dial
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
/// ones (as `membership_sim` soaks), about half an hour per seed on one
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
