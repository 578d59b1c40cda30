//! The driver's side of membership: SWIM packets as QUIC datagrams on the
//! links, and what membership's verdicts do to peers.
//!
//! Packets are routed by address (a seed is known by its address alone).
//! A packet for an address with no link is held (a few per address) and
//! the address is dialed; the packets go once the link is up, and are
//! dropped and counted if the dial fails; a packet for a member that left
//! on purpose is dropped and counted at once, without a dial. SWIM takes a
//! lost packet for a slow member, never for a wrong one, so nothing else is
//! retried here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, SendDatagramError};

use super::{Driver, Peer};
use crate::cluster::interest::NodeId;
use crate::cluster::membership::{
    Identity, MemberState, MemberStatus, Membership, MembershipConfig, Output, PACKET_BYTES_MAX,
};
use crate::cluster::view::{MembershipFigures, hex_id};

/// Packets held for one address while it is dialed: enough for a join (a
/// state request and a probe or two); SWIM resends what matters.
const HELD_PER_ADDRESS: usize = 8;

/// How often a rejected packet is logged at warning level, at most.
const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A membership timer that runs this much later than it was due says this
/// node itself was paused (SIGSTOP, a VM freeze) or starved.
const LATE_BY: Duration = Duration::from_secs(1);
/// After such a pause, silent links are this node's doing, not its peers':
/// for this long they do not make anyone suspect (plain SWIM probes still
/// run). Covers the links' idle timeouts that fire as the node resumes.
const AFTER_A_PAUSE: Duration = Duration::from_secs(10);

/// Membership, with what the runtime keeps around it.
pub(super) struct Gossip {
    membership: Membership,
    /// Names from handshakes: membership knows members by id and address.
    names: HashMap<NodeId, String>,
    /// Packets for addresses being dialed.
    held: HashMap<String, Vec<Bytes>>,
    figures: MembershipFigures,
    last_change: Instant,
    rejection_logged: Option<Instant>,
    small_path_logged: bool,
    /// Until when silent links suspect no one: this node was paused.
    paused_until: Option<Instant>,
}

impl Gossip {
    /// Membership for the node `identity`.
    pub fn new(identity: Identity, config: MembershipConfig, now: Instant) -> Self {
        Self {
            membership: Membership::new(identity, config, starling_core::random_u64(), now),
            names: HashMap::new(),
            held: HashMap::new(),
            figures: MembershipFigures::default(),
            last_change: now,
            rejection_logged: None,
            small_path_logged: false,
            paused_until: None,
        }
    }

    /// A link is up to the node that advertises itself at `advertise`:
    /// join its cluster if it is a seed, else make sure membership knows
    /// it.
    pub fn linked(&mut self, advertise: &str, seed: bool) {
        let now = Instant::now();
        let result = if seed {
            self.membership.join(advertise, now)
        } else {
            self.membership.meet(advertise, now)
        };
        if let Err(error) = result {
            tracing::warn!(peer = %advertise, "membership cannot use this peer: {error}");
        }
    }

    /// A datagram from `peer`: bad ones are dropped and counted, and the
    /// link stays.
    pub fn received(&mut self, peer: NodeId, packet: &[u8]) {
        self.figures.packets_in += 1;
        self.figures.bytes_in += packet.len() as u64;
        let Err(error) = self.membership.handle_packet(packet, Instant::now()) else {
            return;
        };
        self.figures.rejected_in += 1;
        let now = Instant::now();
        if self
            .rejection_logged
            .is_none_or(|at| now.duration_since(at) >= REJECTION_LOG_INTERVAL)
        {
            self.rejection_logged = Some(now);
            tracing::warn!(peer = %hex_id(peer), "dropped a membership packet: {error}");
        } else {
            tracing::debug!(peer = %hex_id(peer), "dropped a membership packet: {error}");
        }
    }

    /// When [`Gossip::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Instant {
        self.membership
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.notice_a_pause(now);
        if let Err(error) = self.membership.handle_timeout(now) {
            tracing::debug!("membership timer: {error}");
        }
    }

    /// Remembers a peer's name, from its handshake.
    pub fn name(&mut self, id: NodeId, name: &str) {
        if self.names.len() > 2 * self.membership.live_count() + 64 {
            let known: std::collections::HashSet<NodeId> =
                self.membership.members().iter().map(|m| m.id).collect();
            self.names.retain(|id, _| known.contains(id));
        }
        self.names.insert(id, name.to_owned());
    }

    /// A link is up to the node at `advertise` (dialed as `dialed`): what
    /// was held for it goes now.
    pub fn link_up(&mut self, connection: &Connection, advertise: &str, dialed: Option<&str>) {
        if !self.small_path_logged
            && connection
                .max_datagram_size()
                .is_some_and(|size| size < PACKET_BYTES_MAX)
        {
            self.small_path_logged = true;
            tracing::warn!(
                peer = %advertise,
                "the path to this peer carries datagrams of at most {:?} bytes; \
                 membership packets of up to {PACKET_BYTES_MAX} bytes will be lost",
                connection.max_datagram_size()
            );
        }
        for address in std::iter::once(advertise).chain(dialed) {
            for packet in self.held.remove(address).unwrap_or_default() {
                self.send_on(connection, packet);
            }
        }
    }

    /// A dial of `address` failed: what was held for it is lost.
    pub fn unreachable(&mut self, address: &str) {
        if let Some(held) = self.held.remove(address) {
            self.figures.unsent_out += held.len() as u64;
        }
    }

    /// Nothing came from the node at `address` (`id`, if known) for the
    /// idle timeout: its link timed out, or a dial got no answer.
    /// Membership suspects it at once (see `Membership::unreachable`).
    pub fn silent(&mut self, address: &str, id: Option<NodeId>) {
        let now = Instant::now();
        // A node that was itself paused finds every link timed out as it
        // resumes: suspecting them all at once would spread false deaths.
        if self.notice_a_pause(now) {
            tracing::debug!(peer = %address, "link went silent while this node was paused");
            return;
        }
        if let Err(error) = self.membership.unreachable(address, id, now) {
            tracing::debug!(peer = %address, "membership cannot take this address: {error}");
        }
    }

    /// Whether this node was paused lately: its membership timer is (or
    /// was, within [`AFTER_A_PAUSE`]) overdue by more than [`LATE_BY`].
    fn notice_a_pause(&mut self, now: Instant) -> bool {
        let due = self.membership.poll_timeout();
        if due.is_some_and(|due| now.saturating_duration_since(due) > LATE_BY) {
            self.paused_until = Some(now + AFTER_A_PAUSE);
        }
        self.paused_until.is_some_and(|until| now < until)
    }

    fn send_on(&mut self, connection: &Connection, packet: Bytes) {
        let length = packet.len() as u64;
        match connection.send_datagram(packet) {
            Ok(()) => {
                self.figures.packets_out += 1;
                self.figures.bytes_out += length;
            }
            Err(error) => {
                self.figures.unsent_out += 1;
                if matches!(error, SendDatagramError::TooLarge) {
                    tracing::debug!("a membership packet of {length} bytes does not fit the path");
                }
            }
        }
    }

    /// Whether packets wait for a link to `address`.
    pub fn holds(&self, address: &str) -> bool {
        self.held.contains_key(address)
    }

    fn hold(&mut self, address: &str, packet: Bytes) {
        let held = self.held.entry(address.to_owned()).or_default();
        if held.len() < HELD_PER_ADDRESS {
            held.push(packet);
        } else {
            self.figures.unsent_out += 1;
        }
    }

    /// Whether membership holds the member `id` alive or suspect.
    pub fn is_live(&self, id: NodeId) -> bool {
        self.membership.members().iter().any(|member| {
            member.id == id && matches!(member.state, MemberState::Alive | MemberState::Suspect)
        })
    }

    /// Whether the node at `address` left the mesh on purpose (and no live
    /// member is there now): failing to reach it says nothing new.
    pub fn left(&self, address: &str) -> bool {
        let members = self.membership.members();
        let at_address = || members.iter().filter(|member| member.advertise == address);
        at_address().any(|member| member.state == MemberState::Left)
            && !at_address()
                .any(|member| matches!(member.state, MemberState::Alive | MemberState::Suspect))
    }

    /// Every member, this node first, with its name where known.
    pub fn members(&self) -> Vec<(MemberStatus, Option<&str>)> {
        let mut members = vec![(self.membership.own_status(), None)];
        members.extend(self.membership.members().into_iter().map(|member| {
            let name = self.names.get(&member.id).map(String::as_str);
            (member, name)
        }));
        members
    }

    pub fn figures(&self) -> MembershipFigures {
        MembershipFigures {
            since_change_ms: self.last_change.elapsed().as_millis() as u64,
            ..self.figures.clone()
        }
    }

    fn changed(&mut self) {
        self.figures.changes += 1;
        self.last_change = Instant::now();
    }
}

impl Driver {
    /// Carries out what membership asked for.
    pub(super) fn apply_membership(&mut self) {
        while let Some(output) = self.gossip.membership.poll_output() {
            match output {
                Output::Send { to, packet } => self.send_packet(to.advertise(), packet.into()),
                Output::Alive(member) => {
                    self.gossip.changed();
                    self.member_alive(&member);
                }
                Output::Suspect(member) => {
                    self.gossip.changed();
                    tracing::info!(peer = %self.name_of(&member), "member suspected");
                }
                Output::Dead(member) => {
                    self.gossip.changed();
                    tracing::warn!(peer = %self.name_of(&member), "member declared dead");
                    self.declared_dead(member.id());
                }
                Output::Left(member) => {
                    self.gossip.changed();
                    tracing::info!(peer = %self.name_of(&member), "member left");
                    self.forget(member.id(), "it left");
                }
                Output::Restarted { old, .. } => {
                    self.gossip.changed();
                    self.forget(old.id(), "it restarted with a new id");
                }
            }
        }
    }

    /// Leaves the cluster: the departure goes to a few members on the links
    /// still up. Returns whether any packet was sent.
    pub(super) fn leave(&mut self) -> bool {
        if let Err(error) = self.gossip.membership.leave(Instant::now()) {
            tracing::debug!("leaving: {error}");
        }
        let before = self.gossip.figures.packets_out;
        self.apply_membership();
        self.gossip.figures.packets_out > before
    }

    fn send_packet(&mut self, address: &str, packet: Bytes) {
        let link = self
            .peers
            .values()
            .filter(|peer| peer.advertise == address)
            .find_map(|peer| peer.link.as_ref());
        match link {
            Some(link) => {
                let connection = link.connection.clone();
                self.gossip.send_on(&connection, packet);
            }
            None if self.stopping => self.gossip.figures.unsent_out += 1,
            // Not dialed for it: a member that left on purpose (foca
            // answers its departure notice at once), until a new start of
            // it is alive there. A seed is, as always (see `Driver::wanted`).
            None if self.gossip.left(address) && !self.is_seed(address) => {
                self.gossip.figures.unsent_out += 1;
            }
            None => {
                self.gossip.hold(address, packet);
                self.dial(address.to_owned());
            }
        }
    }

    fn member_alive(&mut self, member: &Identity) {
        let id = member.id();
        if id == self.our_id() || self.peers.contains_key(&id) {
            return;
        }
        let address = member.advertise();
        let replaced: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.advertise == address)
            .map(|(other, _)| *other)
            .collect();
        for old in replaced {
            self.forget(old, "it restarted with a new id");
        }
        tracing::debug!(peer = %self.name_of(member), "member alive");
        self.peers.insert(
            id,
            Peer {
                name: self.name_of(member),
                advertise: address.to_owned(),
                link: None,
                down_since: Some(Instant::now()),
                egress: None,
            },
        );
        if self.our_id() < id {
            self.dial(address.to_owned());
        }
    }

    fn name_of(&self, member: &Identity) -> String {
        self.gossip
            .names
            .get(&member.id())
            .cloned()
            .unwrap_or_else(|| member.advertise().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};
    use starling_core::Bus;

    use crate::cluster::link::{self, Local};
    use crate::cluster::membership::PACKET_BYTES_MAX;
    use crate::cluster::tls::{LinkTls, TlsSource};
    use crate::cluster::view::ClusterView;
    use crate::cluster::wire::{Hello, MESH_PROTOCOL_VERSION};
    use crate::cluster::{Cluster, ClusterConfig, link_endpoint};

    fn start(name: &str, seeds: Vec<String>) -> (Bus, Cluster) {
        let bus = Bus::new(Default::default());
        let cluster = Cluster::start(
            bus.clone(),
            ClusterConfig {
                node_name: name.into(),
                listen: "127.0.0.1:0".into(),
                seeds,
                tls: TlsSource::InsecureDev,
                ..ClusterConfig::default()
            },
        )
        .unwrap();
        (bus, cluster)
    }

    fn wait_view(
        cluster: &Cluster,
        what: &str,
        done: impl Fn(&ClusterView) -> bool,
    ) -> ClusterView {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let view = cluster.view().unwrap();
            if done(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting: {what}: {view:#?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn link_up(view: &ClusterView, name: &str) -> bool {
        view.links
            .iter()
            .any(|link| link.peer_name == name && link.state == "up")
    }

    /// Links to the node at `target` as a node would, sends `packets`
    /// random datagrams (most with a real packet kind in front, to get past
    /// the first byte into each decoder), reports when all are on the wire,
    /// and keeps the link until `stop`. Returns why the link closed, if it
    /// did.
    fn rogue_peer(
        seed: u64,
        target: String,
        packets: u64,
        sent: std::sync::mpsc::Sender<()>,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> Option<String> {
        const KINDS: [u8; 5] = [0x53, 0x51, 0x56, 0x44, 0x4C];
        let mut rng = SmallRng::seed_from_u64(seed);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let advertise = socket.local_addr().unwrap().to_string();
        let tls = LinkTls::new(&TlsSource::InsecureDev, "rogue").unwrap();
        let endpoint = {
            let _runtime = runtime.enter();
            link_endpoint(socket, &tls, &ClusterConfig::default()).unwrap()
        };
        let local = Arc::new(Local {
            hello: Hello {
                protocol: MESH_PROTOCOL_VERSION,
                fingerprint: starling_core::event::format_fingerprint(),
                node_id: 7,
                cluster: crate::cluster::DEFAULT_CLUSTER_NAME.into(),
                name: "rogue".into(),
                advertise,
                inbox_prefix: "_INBOX.rogue.".into(),
            },
            authenticated: false,
            control_bytes_max: 1 << 20,
        });
        runtime.block_on(async move {
            let established = link::dial(endpoint, target, local).await.unwrap();
            let connection = &established.connection;
            let most = connection
                .max_datagram_size()
                .unwrap()
                .min(PACKET_BYTES_MAX + 20);
            for number in 0..packets {
                let length = rng.random_range(0..=most);
                let mut packet: Vec<u8> = (0..length).map(|_| rng.random()).collect();
                if let Some(kind) = packet.first_mut().filter(|_| number % 4 != 0) {
                    *kind = KINDS[rng.random_range(0..KINDS.len())];
                }
                connection.send_datagram(packet.into()).unwrap();
                if number % 16 == 0 {
                    // Paced, so that no buffer on the way drops any.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            while connection.stats().frame_tx.datagram < packets {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent.send(()).unwrap();
            let _ = stop.await;
            connection.close_reason().map(|reason| reason.to_string())
        })
    }

    /// A peer that shakes hands like a node, then sends random and damaged
    /// datagrams: each is dropped and counted, its link stays, and the node
    /// goes on serving its other peer.
    #[test]
    fn bad_membership_datagrams_are_counted_and_dropped_and_harm_nothing() {
        let seed = starling_core::random_u64();
        println!("seed {seed}");
        let (bus_a, a) = start("a", Vec::new());
        let (bus_b, b) = start("b", vec![a.local_addr().to_string()]);
        wait_view(&a, "a and b linked", |view| link_up(view, "b"));
        let on_a = bus_a.subscribe("still.>").unwrap();

        const PACKETS: u64 = 400;
        let before = a.view().unwrap().membership.rejected_in;
        let target = a.local_addr().to_string();
        let (sent_tx, sent) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rogue = std::thread::spawn(move || rogue_peer(seed, target, PACKETS, sent_tx, stopped));
        sent.recv_timeout(Duration::from_secs(10))
            .expect("the rogue linked and sent every datagram");
        let view = wait_view(&a, "every bad datagram counted", |view| {
            view.membership.rejected_in - before >= PACKETS
        });
        assert_eq!(view.membership.rejected_in - before, PACKETS, "seed {seed}");
        assert!(link_up(&view, "rogue"), "the sender's link stays up");
        stop.send(()).unwrap();
        assert_eq!(
            rogue.join().unwrap(),
            None,
            "the rogue's link was not closed"
        );

        // b is untouched: still alive and linked, and its events still
        // reach a.
        let b_alive = view.members.iter().any(|member| {
            member.name == "b" && member.state == crate::cluster::membership::MemberState::Alive
        });
        assert!(b_alive && link_up(&view, "b"), "{view:#?}");
        wait_view(&b, "b to know a's interest", |view| {
            view.interest
                .peers
                .iter()
                .any(|peer| peer.peer_name == "a" && !peer.entries.is_empty())
        });
        bus_b.publish("still.here", b"yes").unwrap();
        let event = on_a.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(event.payload(), b"yes");
    }
}
