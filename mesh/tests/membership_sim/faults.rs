//! The run's phases: bootstrap, then faults (crashes, restarts, leaves,
//! newcomers, partitions) until calm.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::model::{Fate, Partition};
use crate::sim::CALM;
use crate::{Faults, Sim, heal_bound};

impl Sim {
    /// `count` nodes that all join through node 0 at once, as a cluster's
    /// first start does, then pull node 0's view once more when it knows
    /// everyone (a restarting runtime would do the same by rejoining).
    /// Runs until they converge and returns the time that took.
    pub(crate) fn bootstrap(seed: u64, count: usize) -> Result<(Self, Duration), String> {
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

    /// Seeds for the node at `slot`, as a runtime is configured with a few:
    /// up to three random live nodes. It joins through whichever answers.
    pub(crate) fn seeds_for(&mut self, slot: usize, live: &[usize]) -> Vec<usize> {
        let mut seeds: Vec<usize> = (0..3).map(|_| self.random_slot(live)).collect();
        seeds.retain(|&seed| seed != slot);
        seeds.sort_unstable();
        seeds.dedup();
        seeds
    }

    pub(crate) fn random_slot(&mut self, among: &[usize]) -> usize {
        among[self.rng.random_range(0..among.len())]
    }

    /// One random fault event.
    pub(crate) fn fault(&mut self, faults: &Faults, initial: usize) -> Result<(), String> {
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
    pub(crate) fn run_faults(&mut self, faults: &Faults) -> Result<Duration, String> {
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
}
