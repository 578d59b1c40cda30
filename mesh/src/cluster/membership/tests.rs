//! Unit tests: a few nodes on a perfect network, and damaged packets.

use super::*;
use crate::cluster::interest::NodeId;

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

/// A link that timed out suspects its member at once (only the start the
/// link was with); a member still alive hears of it and refutes.
#[test]
fn an_unreachable_member_is_suspected_at_once_and_a_live_one_refutes() {
    let mut nodes = Nodes::new(3);
    nodes.run(Duration::from_secs(1));
    let silent = nodes.node(2).identity().clone();
    let now = nodes.now;
    let observer = nodes.nodes[0].as_mut().unwrap();
    let address = Nodes::address(2);
    observer
        .unreachable(&address, Some(silent.id() + 1), now)
        .unwrap();
    assert_eq!(
        nodes.state_seen(0, 2),
        Some((silent.id(), MemberState::Alive)),
        "another start at the address is not suspected"
    );
    let observer = nodes.nodes[0].as_mut().unwrap();
    observer
        .unreachable(&address, Some(silent.id()), now)
        .unwrap();
    assert_eq!(
        nodes.state_seen(0, 2),
        Some((silent.id(), MemberState::Suspect))
    );
    nodes.run(Duration::from_secs(1));
    assert!(nodes.reports[0].contains(&Output::Suspect(silent.clone())));
    assert_eq!(
        nodes.state_seen(0, 2),
        Some((silent.id(), MemberState::Alive)),
        "it refuted"
    );
    assert!(!nodes.reports[0].contains(&Output::Dead(silent)));
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
