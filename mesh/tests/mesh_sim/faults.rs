//! The run's phases: bootstrap, then faults (crashes, restarts, leaves,
//! newcomers, partitions, subscription churn) until calm.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::RngExt;

use crate::model::{Fate, Partition};
use crate::sim::CALM;
use crate::{BOOTSTRAP_BOUND, Faults, Sim, heal_bound};

impl Sim {
    pub(crate) fn pick(&mut self, among: &[usize]) -> usize {
        among[self.rng.random_range(0..among.len())]
    }

    /// Up to three live nodes to join through, as a runtime is configured
    /// with a few seeds.
    pub(crate) fn seeds_for(&mut self, slot: usize, live: &[usize]) -> Vec<usize> {
        let mut seeds: Vec<usize> = (0..3).map(|_| self.pick(live)).collect();
        seeds.sort_unstable();
        seeds.dedup();
        seeds.retain(|&seed| seed != slot);
        seeds
    }

    pub(crate) fn toggle_partition(&mut self, live: &[usize]) {
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
    pub(crate) fn fault(&mut self, faults: &Faults, floor: usize) {
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
    pub(crate) fn churn(&mut self) {
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
    pub(crate) fn bootstrap(&mut self, count: usize) -> Result<Duration, String> {
        self.add_node(Vec::new());
        for _ in 1..count {
            self.add_node(vec![0]);
        }
        self.converge(BOOTSTRAP_BOUND, "the bootstrap")
    }

    /// Faults for `faults.duration`, then calm and healed; returns how long
    /// the mesh took to converge once they stopped.
    pub(crate) fn run_faults(&mut self, faults: &Faults) -> Result<Duration, String> {
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
}
