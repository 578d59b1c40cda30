//! The protocol's timing: [`MembershipConfig`], and the foca settings it
//! derives for a cluster of a given size (updates resent
//! `4·log10(n+1)` times, suspects given `4·max(1, log10 n)` probe periods,
//! memberlist's LAN rules).

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::PeriodicParams;

use super::PACKET_BYTES_MAX;

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
    pub(super) fn foca_config(&self, members: usize) -> foca::Config {
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
