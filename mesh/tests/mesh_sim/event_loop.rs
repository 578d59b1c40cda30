//! The simulator's clock and event loop: events in time order, each node's
//! timer, and the outputs of both machines carried out until none is left.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use starling_mesh::cluster::interest::NodeId;

use crate::model::{Counters, EventKind, Fate, Node};
use crate::sim::CALM;
use crate::{EXPIRY_CHECK_EVERY, Sim, TRACE_KEPT, TRACE_SHOWN};

impl Sim {
    pub(crate) fn new(seed: u64, test: &'static str) -> Self {
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

    pub(crate) fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    pub(crate) fn note(&mut self, what: String) {
        if self.trace.len() == TRACE_KEPT {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>9.3}s {what}", self.elapsed.as_secs_f64()));
    }

    pub(crate) fn fail(&mut self, what: String) {
        self.note(format!("FAILED: {what}"));
        self.problem.get_or_insert(what);
    }

    pub(crate) fn failure(&self, what: &str) -> String {
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
    pub(crate) fn who(&self, id: NodeId) -> String {
        match self.owner.get(&id) {
            Some(slot) => format!("{slot}/{:04x}", id >> 48),
            None => format!("?/{id:x}"),
        }
    }

    pub(crate) fn node(&self, slot: usize) -> &Node {
        self.slots[slot].node.as_ref().expect("a running node")
    }

    pub(crate) fn node_mut(&mut self, slot: usize) -> &mut Node {
        self.slots[slot].node.as_mut().expect("a running node")
    }

    pub(crate) fn running(&self, slot: usize, start: u32) -> bool {
        self.slots[slot].start == start && self.slots[slot].node.is_some()
    }

    /// The slot whose current start has `id`, if any.
    pub(crate) fn current(&self, id: NodeId) -> Option<usize> {
        let slot = *self.owner.get(&id)?;
        let node = self.slots[slot].node.as_ref()?;
        (node.id == id).then_some(slot)
    }

    /// Whether a node that took in a departure notice of the node that left
    /// `slot` still runs (the same start).
    pub(crate) fn heard(&self, slot: usize) -> bool {
        self.farewells
            .get(&self.slots[slot].last_id)
            .is_some_and(|hearers| hearers.iter().any(|&(at, start)| self.running(at, start)))
    }

    pub(crate) fn live(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&slot| self.slots[slot].fate == Fate::Live)
            .collect()
    }

    pub(crate) fn push(&mut self, at: Duration, kind: EventKind) {
        self.sequence += 1;
        self.events.insert((at, self.sequence), kind);
    }

    pub(crate) fn delay(&mut self) -> Duration {
        let spread = self.network.delay_max - self.network.delay_min;
        self.network.delay_min + spread.mul_f64(self.rng.random())
    }

    pub(crate) fn blocked(&self, from: usize, to: usize) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|partition| partition.blocks(from, to))
    }

    pub(crate) fn reachable(&self, a: usize, b: usize) -> bool {
        !self.blocked(a, b) && !self.blocked(b, a)
    }

    // ----- Nodes starting and stopping -----

    /// Carries out what every node with pending outputs asked for, and
    /// what that makes other nodes ask for.
    pub(crate) fn settle(&mut self) {
        while let Some(slot) = self.dirty.pop_first() {
            self.drain(slot);
        }
    }

    /// Membership's outputs first, as the runtime does: a verdict withdraws
    /// interest before anything is routed by it.
    pub(crate) fn drain(&mut self, slot: usize) {
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

    pub(crate) fn schedule_wake(&mut self, slot: usize) {
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
    pub(crate) fn wake(&mut self, slot: usize) {
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

    pub(crate) fn handle(&mut self, event: EventKind) {
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
    pub(crate) fn run_until(&mut self, end: Duration) -> Result<(), String> {
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
}
