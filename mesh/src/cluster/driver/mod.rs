//! The mesh's driver: one task that owns the membership and interest state
//! machines and the links, and turns what happens (local subscriptions,
//! handshakes, datagrams, control messages, closed connections, timers) into
//! what must be done (packets and messages to peers, routes on the bus,
//! dials).
//!
//! **Joining.** A node dials its seeds; once a seed's link is up, it joins
//! the seed's SWIM cluster ([`super::membership`]) and learns every member
//! from it. Every member learned of gets a link: the one with the lower
//! node id dials, and a membership packet for a member without a link dials
//! it too (that is how the two sides of a healed partition find each
//! other). Seeds are redialed for as long as the node runs; other members,
//! by the lower id, for as long as membership holds them alive; one that
//! left on purpose is not dialed again until a new start of it is alive.
//!
//! **Deaths.** A member that membership reports departed is forgotten at
//! once: its link closes and its interest goes. One declared dead has its
//! link closed, and is then kept like a peer whose link went down: its
//! interest, and the events queued for it, wait out the grace period (the
//! interest machine withdraws the interest then, and the peer is forgotten
//! unless membership holds it alive again). A node that was only paused
//! (stopped, starved) renews itself after the wrong verdict and gets what
//! was published meanwhile; what could not wait is dropped and counted.
//! A link that goes silent (it times out) or a dial that gets no answer
//! makes membership suspect the member at once, rather than waiting for
//! SWIM's probes to come round to it: when many members die at once, each
//! survivor suspects all of them within the idle timeout.
//!
//! **Warnings.** A lost link, a dead member and a peer that cannot be
//! reached are warned about; a peer that stops on purpose is not: it closes
//! its connections with `SHUTDOWN` and a reason, and a dial or handshake
//! that fails on that close, or a dial of the address of a member that left,
//! is logged at debug level.
//!
//! **Duplicates.** If two nodes dial each other at once, both keep the
//! connection dialed by the lower node id and retire the other: the rule
//! gives the same answer on both sides, whatever the order of events, but
//! the two sides may see the connections arrive in different orders, and
//! one may have sent events on the connection that loses before it learns
//! so. A retired connection is therefore served until both sides are done
//! with it: each finishes its streams, and its control stream once the peer
//! has acknowledged every forward; it closes when both control streams have
//! ended ([`link::retire`]). Nothing in flight is lost to the swap.
//!
//! **Restarts.** A node that comes back on the same address has a new id; a
//! link from it, or membership's news of it, makes its peers forget the old
//! id at once.
//!
//! **Names.** A peer that claims the name of a live member is refused; a
//! node whose own name stays refused gives up ([`names`]).

mod membership;
mod names;
mod view;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use starling_core::{
    Bus, InterestChange, Mailbox, QueueCounters, SlowConsumerPolicy, SubscribeOptions,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{oneshot, watch};

use self::membership::Gossip;
use self::names::NameRefusals;
use super::ClusterConfig;
use super::counters::LinkCounters;
use super::egress::{self, EgressCommand, ReplyRoutes};
use super::interest::{Interest, InterestKey, NodeId, Output};
use super::link::{self, AcceptError, DialError, Established, LinkEnd, LinkEvent, Local};
use super::membership::Identity;
use super::view::{ClusterView, hex_id};
use super::wire::{Control, Hello, close};

/// The first wait before redialing; it doubles up to the configured most.
const REDIAL_FIRST: Duration = Duration::from_millis(100);

/// How long a stopping node lets its departure notices go out before it
/// closes its links.
const LEAVE_FLUSH: Duration = Duration::from_millis(20);

/// What the driver hears.
#[derive(Debug)]
pub(crate) enum Event {
    /// A local subscription came or went.
    Local(InterestChange),
    /// A peer's connection finished its handshake, or failed it.
    Accepted(Result<Established, (SocketAddr, AcceptError)>),
    /// A handshake asks whether the peer that sent `hello` from `remote`
    /// may take the name it claims: `answer` gets why not, if not.
    VetName {
        hello: Hello,
        remote: SocketAddr,
        answer: oneshot::Sender<Option<String>>,
    },
    /// A dial finished.
    Dialed {
        address: String,
        result: Result<Established, DialError>,
    },
    /// Time to dial `address` again.
    Redial { address: String },
    /// A link's reader heard something.
    Link(LinkEvent),
    /// A report is wanted.
    View(oneshot::Sender<ClusterView>),
    /// Stop.
    Shutdown,
}

impl From<LinkEvent> for Event {
    fn from(event: LinkEvent) -> Self {
        Event::Link(event)
    }
}

pub(crate) struct Driver {
    local: Arc<Local>,
    config: ClusterConfig,
    bus: Bus,
    endpoint: Endpoint,
    events: UnboundedSender<Event>,
    interest: Interest,
    gossip: Gossip,
    /// Shutting down: no more dials.
    stopping: bool,
    peers: BTreeMap<NodeId, Peer>,
    /// Addresses with a dial under way or scheduled.
    dialing: HashSet<String>,
    /// The next wait before redialing each address that failed.
    backoff: HashMap<String, Duration>,
    /// The peer each seed address led to.
    seed_peers: HashMap<String, NodeId>,
    /// When a failed handshake from each address was last logged.
    refusals_logged: HashMap<SocketAddr, Instant>,
    /// Peers forgotten lately, oldest first, kept for their figures (and
    /// taken back if one returns under the same id).
    gone: VecDeque<(NodeId, Gone)>,
    /// Dials refused because this node's name is taken.
    name_refusals: NameRefusals,
    /// Links that lost to a duplicate and are being retired, by stable id:
    /// each is told when the peer's side of it ends ([`link::retire`]).
    retiring: HashMap<usize, oneshot::Sender<()>>,
}

/// Forgotten peers whose figures are kept.
const GONE_MAX: usize = 64;

/// A forgotten peer's figures.
struct Gone {
    name: String,
    advertise: String,
    counters: Arc<LinkCounters>,
}

struct Peer {
    name: String,
    advertise: String,
    link: Option<LinkState>,
    /// When the link went down (or the peer was learned of without one).
    down_since: Option<Instant>,
    egress: Option<PeerEgress>,
}

struct LinkState {
    connection: Connection,
    /// The node that dialed this connection.
    dialer: NodeId,
    control: UnboundedSender<Control>,
}

struct PeerEgress {
    /// The peer's mailbox on the bus; the driver routes the peer's interest
    /// to it itself ([`egress::route`]).
    mailbox: Rc<RefCell<Mailbox>>,
    commands: UnboundedSender<EgressCommand>,
    counters: Arc<LinkCounters>,
    queue: QueueCounters,
    replies: Rc<RefCell<ReplyRoutes>>,
}

impl Driver {
    /// A driver for the node `local` describes. Must be made on the mesh
    /// thread: peers' mailboxes stay on it.
    pub(crate) fn new(
        local: Arc<Local>,
        config: ClusterConfig,
        bus: Bus,
        endpoint: Endpoint,
        events: UnboundedSender<Event>,
        identity: Identity,
        name_verdict: watch::Sender<Option<String>>,
    ) -> Self {
        let now = Instant::now();
        // Past one idle timeout, the links of a previous run of this node
        // have gone silent; the second covers redials and their backoff.
        let name_patience = 2 * config.idle_timeout;
        Self {
            name_refusals: NameRefusals::new(name_patience, name_verdict),
            interest: Interest::new(starling_core::random_u64(), config.interest, now),
            gossip: Gossip::new(identity, config.membership.clone(), now),
            stopping: false,
            local,
            config,
            bus,
            endpoint,
            events,
            peers: BTreeMap::new(),
            dialing: HashSet::new(),
            backoff: HashMap::new(),
            seed_peers: HashMap::new(),
            refusals_logged: HashMap::new(),
            gone: VecDeque::new(),
            retiring: HashMap::new(),
        }
    }

    fn our_id(&self) -> NodeId {
        self.local.hello.node_id
    }

    pub(crate) async fn run(mut self, mut events: UnboundedReceiver<Event>) {
        for seed in self.config.seeds.clone() {
            self.dial(seed);
        }
        loop {
            let deadline = self.interest.poll_timeout().min(self.gossip.poll_timeout());
            tokio::select! {
                event = events.recv() => match event {
                    None | Some(Event::Shutdown) => break,
                    Some(event) => self.handle(event),
                },
                () = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    self.interest.handle_timeout(now);
                    self.gossip.handle_timeout(now);
                    self.expire_peers(now);
                }
            }
            self.apply_outputs();
        }
        self.shutdown().await;
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Local(change) => self.local_change(change),
            Event::Accepted(Ok(established)) => {
                let advertise = established.hello.advertise.clone();
                if self.established(established) {
                    self.gossip.linked(&advertise, false);
                }
            }
            Event::Accepted(Err((remote, error))) => {
                // A misconfigured node retries every few seconds: say it once
                // a minute per address, not every time.
                let now = Instant::now();
                if self.refusals_logged.len() > 1024 {
                    self.refusals_logged.clear();
                }
                let last = self.refusals_logged.insert(remote, now);
                let recent =
                    last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(60));
                if recent || matches!(error, AcceptError::Stopping(_)) {
                    tracing::debug!("link from {remote}: {error}");
                } else if let AcceptError::NameTaken(_) = error {
                    tracing::error!("link from {remote}: {error}");
                } else {
                    tracing::warn!("link from {remote}: {error}");
                }
            }
            Event::VetName {
                hello,
                remote,
                answer,
            } => {
                let _ = answer.send(self.name_taken(&hello, remote));
            }
            Event::Dialed { address, result } => {
                self.dialing.remove(&address);
                match result {
                    Ok(established) => {
                        self.backoff.remove(&address);
                        self.name_refusals.accepted(&address);
                        let seed = self.is_seed(&address);
                        if seed {
                            self.seed_peers.insert(address, established.hello.node_id);
                        }
                        let advertise = established.hello.advertise.clone();
                        if self.established(established) {
                            self.gossip.linked(&advertise, seed);
                        }
                    }
                    Err(error) => {
                        self.gossip.unreachable(&address);
                        if let DialError::NoAnswer(_) = error {
                            self.gossip.silent(&address, None);
                        }
                        // Said once per run of failures; the redials go on
                        // quietly, with backoff, until one succeeds. A peer
                        // that stopped on purpose is not news: it said so.
                        let first = !self.backoff.contains_key(&address)
                            && !matches!(error, DialError::Stopping(_))
                            && !self.gossip.left(&address);
                        match &error {
                            DialError::NameTaken(why) => {
                                self.name_refusals.refused(&address, why, Instant::now())
                            }
                            DialError::Unresolved(_) if first => tracing::warn!(
                                %address,
                                "{error}; the name may not exist yet (a peer starting): \
                                 retrying with backoff"
                            ),
                            _ if first => {
                                tracing::warn!(%address, "link failed: {error}; retrying")
                            }
                            _ => tracing::debug!(%address, "link failed: {error}"),
                        }
                        self.schedule_redial(address);
                    }
                }
            }
            Event::Redial { address } => {
                self.dialing.remove(&address);
                // Membership packets held for it want it dialed too.
                if self.wanted(&address) || self.gossip.holds(&address) {
                    self.dial(address);
                }
            }
            Event::Link(LinkEvent::Datagram { peer, packet }) => {
                self.gossip.received(peer, &packet)
            }
            Event::Link(LinkEvent::Control {
                peer,
                link,
                message,
            }) => {
                if !self.is_current(peer, link) {
                    return;
                }
                match message {
                    Control::Interest(message) => self.interest.handle(peer, message),
                    Control::Hello(_) | Control::Refuse(_) | Control::NameTaken(_) => {}
                }
            }
            Event::Link(LinkEvent::Closed {
                peer,
                link,
                reason,
                end,
            }) => match self.retiring.remove(&link) {
                // The peer is done with a retiring link (or it is gone).
                Some(finished) => {
                    let _ = finished.send(());
                }
                None => self.link_closed(peer, link, reason, end),
            },
            Event::View(reply) => {
                let _ = reply.send(self.view());
            }
            Event::Shutdown => {}
        }
    }

    fn local_change(&mut self, change: InterestChange) {
        let (added, pattern, group) = match change {
            InterestChange::Added { pattern, group } => (true, pattern, group),
            InterestChange::Removed { pattern, group } => (false, pattern, group),
        };
        // The bus's own request inboxes reach every peer through the inbox
        // route each link sets up at once (see `established`).
        if pattern.starts_with(&self.local.hello.inbox_prefix) {
            return;
        }
        let key = InterestKey {
            pattern: pattern.to_string(),
            group: group.map(|g| g.to_string()),
        };
        if added {
            self.interest.local_added(key);
        } else {
            self.interest.local_removed(&key);
        }
    }

    fn is_current(&self, peer: NodeId, link: usize) -> bool {
        self.peers
            .get(&peer)
            .and_then(|p| p.link.as_ref())
            .is_some_and(|l| l.connection.stable_id() == link)
    }

    /// Makes a handshaken connection the peer's link, unless a better one
    /// exists. Returns whether it was kept.
    fn established(&mut self, established: Established) -> bool {
        let Established {
            connection,
            hello,
            dialed,
            control_send,
            control_recv,
        } = established;
        let id = hello.node_id;
        // Checked again on an accepted link: another node may have taken
        // the name since its handshake asked.
        if let Some(why) = self.name_taken(&hello, connection.remote_address()) {
            tracing::error!(peer = %hello.name, address = %hello.advertise, "link refused: {why}");
            link::close_with(&connection, close::REFUSED, &why);
            return false;
        }
        let restarted: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(other, peer)| **other != id && peer.advertise == hello.advertise)
            .map(|(other, _)| *other)
            .collect();
        for old in restarted {
            self.forget(old, "it restarted with a new id");
        }
        self.gossip.name(id, &hello.name);
        let dialer = if dialed.is_some() { self.our_id() } else { id };
        let peer = self.peers.entry(id).or_insert_with(|| Peer {
            name: hello.name.clone(),
            advertise: hello.advertise.clone(),
            link: None,
            down_since: None,
            egress: None,
        });
        // Learned of by membership first, it may have been named by address.
        peer.name.clone_from(&hello.name);
        let egress = peer.egress.get_or_insert_with(|| {
            // A peer forgotten and back under its id (it was stopped, not
            // restarted) goes on with its figures.
            let counters = match self.gone.iter().position(|(gone, _)| *gone == id) {
                Some(at) => self.gone.remove(at).expect("found").1.counters,
                None => Arc::default(),
            };
            start_egress(&self.bus, &self.config, &hello.inbox_prefix, counters)
        });
        let (counters, replies) = (egress.counters.clone(), egress.replies.clone());
        let commands = egress.commands.clone();
        // Two connections to one peer: both sides keep the one the lower id
        // dialed; on a tie, the older one. The other is retired, not cut:
        // the peer may have seen the two arrive in the other order and sent
        // on the one that loses, so it is read until the peer is done.
        let loses = peer
            .link
            .as_ref()
            .is_some_and(|existing| dialer >= existing.dialer);
        let control = self.serve_link(
            id,
            &connection,
            control_send,
            control_recv,
            counters,
            replies,
        );
        if loses {
            self.retire_link(connection, control, None, "a link to this node exists");
            return false;
        }
        tokio::spawn(link::datagrams(connection.clone(), id, self.events.clone()));
        let (retired, replaced_retired) = oneshot::channel();
        let _ = commands.send(EgressCommand::Connect {
            connection: connection.clone(),
            retired,
        });
        tracing::info!(
            peer = %hello.name,
            address = %hello.advertise,
            id = %hex_id(id),
            dialed = dialed.is_some(),
            "link up"
        );
        self.gossip
            .link_up(&connection, &hello.advertise, dialed.as_deref());
        let peer = self.peers.get_mut(&id).expect("added above");
        let replaced = peer.link.replace(LinkState {
            connection,
            dialer,
            control,
        });
        peer.down_since = None;
        self.interest.link_up(id);
        if let Some(replaced) = replaced {
            self.retire_link(
                replaced.connection,
                replaced.control,
                Some(replaced_retired),
                "replaced by the link the lower node id dialed",
            );
        }
        true
    }

    /// Starts the tasks that serve a link's streams: the control stream
    /// both ways, and the peer's data streams into the bus (counted in
    /// `counters`; requests on them teach `replies`). Returns the queue of
    /// the control stream.
    fn serve_link(
        &self,
        peer: NodeId,
        connection: &Connection,
        control_send: SendStream,
        control_recv: RecvStream,
        counters: Arc<LinkCounters>,
        replies: Rc<RefCell<ReplyRoutes>>,
    ) -> UnboundedSender<Control> {
        let (control, control_queue) = unbounded_channel();
        tokio::spawn(link::control_writer(control_send, control_queue));
        tokio::spawn(link::control_reader(
            control_recv,
            connection.clone(),
            peer,
            self.local.control_bytes_max,
            self.events.clone(),
        ));
        tokio::task::spawn_local(link::ingress(
            connection.clone(),
            self.bus.clone(),
            counters,
            replies,
        ));
        control
    }

    /// Closes a link that lost to a duplicate once neither side loses
    /// anything by it ([`link::retire`]); `ours_acknowledged` fires once
    /// this node's forwards on it are acknowledged (`None`: it sent none).
    fn retire_link(
        &mut self,
        connection: Connection,
        control: UnboundedSender<Control>,
        ours_acknowledged: Option<oneshot::Receiver<()>>,
        reason: &'static str,
    ) {
        let (finished, theirs_finished) = oneshot::channel();
        self.retiring.insert(connection.stable_id(), finished);
        tokio::spawn(link::retire(
            connection,
            control,
            ours_acknowledged,
            theirs_finished,
            self.config.idle_timeout,
            reason,
        ));
    }

    fn link_closed(&mut self, id: NodeId, link: usize, reason: String, end: LinkEnd) {
        if !self.is_current(id, link) {
            return;
        }
        if end == LinkEnd::Departed {
            // It left the mesh: nothing to wait for.
            self.forget(id, &reason);
            return;
        }
        let now = Instant::now();
        let peer = self.peers.get_mut(&id).expect("current links have peers");
        peer.link = None;
        peer.down_since = Some(now);
        if let Some(egress) = &peer.egress {
            let _ = egress.commands.send(EgressCommand::Disconnect);
        }
        tracing::warn!(peer = %peer.name, address = %peer.advertise, "link down: {reason}");
        let address = peer.advertise.clone();
        self.interest.link_down(id, now);
        if end == LinkEnd::Silent {
            self.gossip.silent(&address, Some(id));
        }
        self.backoff.remove(&address);
        if self.wanted(&address) {
            self.schedule_redial(address);
        }
    }

    /// A member declared dead: its link closes, and the peer waits out the
    /// grace period as after any link loss (see the module's doc).
    pub(super) fn declared_dead(&mut self, id: NodeId) {
        let link = self
            .peers
            .get(&id)
            .and_then(|peer| peer.link.as_ref())
            .map(|link| link.connection.clone());
        if let Some(connection) = link {
            link::close_with(&connection, close::GONE, "declared dead");
            let link = connection.stable_id();
            self.link_closed(id, link, "declared dead".into(), LinkEnd::Closed);
        }
    }

    /// Forgets a peer at once: its link closes and its interest goes.
    fn forget(&mut self, id: NodeId, why: &str) {
        if let Some(peer) = self.peers.remove(&id) {
            tracing::info!(peer = %peer.name, address = %peer.advertise, "forgetting a peer: {why}");
            if let Some(link) = peer.link {
                link::close_with(&link.connection, close::GONE, why);
            }
            // Its egress counts what it leaves behind as it stops.
            if let Some(egress) = peer.egress {
                if self.gone.len() == GONE_MAX {
                    self.gone.pop_front();
                }
                let gone = Gone {
                    name: peer.name,
                    advertise: peer.advertise,
                    counters: egress.counters,
                };
                self.gone.push_back((id, gone));
            }
        }
        self.interest.forget(id);
    }

    /// Peers whose link stayed down past the grace period, and that
    /// membership does not hold alive, are forgotten (the interest machine
    /// has withdrawn their interest already). Those it holds alive are
    /// kept, and redialed: a link can fail where probes pass.
    fn expire_peers(&mut self, now: Instant) {
        let grace = self.config.interest.withdraw_after;
        let expired: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.link.is_none() && p.down_since.is_some_and(|since| now >= since + grace)
            })
            .map(|(id, _)| *id)
            .filter(|id| !self.gossip.is_live(*id))
            .collect();
        for id in expired {
            self.forget(id, "its link stayed down past the grace period");
        }
    }

    /// Whether `address` is one of this node's seeds.
    fn is_seed(&self, address: &str) -> bool {
        self.config.seeds.iter().any(|seed| seed == address)
    }

    /// Whether this node should (re)dial `address`.
    fn wanted(&self, address: &str) -> bool {
        if self.is_seed(address) {
            let linked = self
                .seed_peers
                .get(address)
                .and_then(|id| self.peers.get(id))
                .is_some_and(|peer| peer.link.is_some());
            return !linked;
        }
        self.peers.iter().any(|(id, peer)| {
            peer.advertise == address && peer.link.is_none() && self.our_id() < *id
        })
    }

    fn dial(&mut self, address: String) {
        if !self.dialing.insert(address.clone()) {
            return;
        }
        tracing::debug!(%address, "dialing");
        let endpoint = self.endpoint.clone();
        let local = self.local.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let result = link::dial(endpoint, address.clone(), local).await;
            let _ = events.send(Event::Dialed { address, result });
        });
    }

    fn schedule_redial(&mut self, address: String) {
        if !self.dialing.insert(address.clone()) {
            return;
        }
        let most = self.config.redial_backoff_max;
        let wait = self.backoff.entry(address.clone()).or_insert(REDIAL_FIRST);
        let delay = *wait;
        *wait = (*wait * 2).min(most);
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::Redial { address });
        });
    }

    fn send(&self, to: NodeId, message: Control) {
        if let Some(link) = self.peers.get(&to).and_then(|p| p.link.as_ref()) {
            let _ = link.control.send(message);
        }
    }

    fn apply_outputs(&mut self) {
        // Membership first: a verdict withdraws interest.
        self.apply_membership();
        while let Some(output) = self.interest.poll_output() {
            match output {
                Output::Send { to, message } => self.send(to, Control::Interest(message)),
                // Routed here, before the next event (a report of the
                // peer's interest among them) is handled.
                Output::Subscribe { peer, id, key } => {
                    if let Some(egress) = self.egress(peer) {
                        egress::route(&egress.mailbox, &egress.commands, id, key);
                    }
                }
                Output::Unsubscribe { peer, id } => {
                    if let Some(egress) = self.egress(peer) {
                        egress::unroute(&egress.mailbox, &egress.commands, id);
                    }
                }
            }
        }
    }

    fn egress(&self, peer: NodeId) -> Option<&PeerEgress> {
        self.peers.get(&peer).and_then(|p| p.egress.as_ref())
    }

    async fn shutdown(&mut self) {
        self.stopping = true;
        if self.leave() {
            // quinn sends datagrams from its connection tasks: let them run
            // before the links close.
            tokio::time::sleep(LEAVE_FLUSH).await;
        }
        for peer in self.peers.values() {
            if let Some(link) = &peer.link {
                link::close_with(&link.connection, close::SHUTDOWN, close::SHUTDOWN_REASON);
            }
        }
        self.peers.clear();
        self.endpoint
            .close(close::SHUTDOWN, close::SHUTDOWN_REASON.as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// A peer's mailbox on the bus and the task that drains it. Its first route
/// carries replies to the peer's own request inboxes.
fn start_egress(
    bus: &Bus,
    config: &ClusterConfig,
    inbox_prefix: &str,
    counters: Arc<LinkCounters>,
) -> PeerEgress {
    let mailbox = bus.peer_mailbox(SubscribeOptions {
        capacity: config.peer_queue_events,
        policy: SlowConsumerPolicy::Block {
            max_stall: config.peer_max_stall,
        },
        ..SubscribeOptions::default()
    });
    let queue = mailbox.counters();
    // One mailbox, one thread: the egress task drains it, the driver routes
    // the peer's interest to it, and the link's ingress tasks add reply
    // routes to it, all on the mesh thread.
    let mailbox = Rc::new(RefCell::new(mailbox));
    let replies = Rc::new(RefCell::new(ReplyRoutes::new(
        mailbox.clone(),
        inbox_prefix,
    )));
    let (commands, receiver) = unbounded_channel();
    tokio::task::spawn_local(egress::run(
        mailbox.clone(),
        receiver,
        config.data_streams.clamp(1, super::DATA_STREAMS_MAX),
        counters.clone(),
    ));
    PeerEgress {
        mailbox,
        commands,
        counters,
        queue,
        replies,
    }
}

/// Asks the driver on `events` whether the peer that sent `hello` from
/// `remote` may take the name it claims (for a handshake being accepted):
/// why not, if not.
pub(crate) async fn vet_name(
    events: UnboundedSender<Event>,
    hello: Hello,
    remote: SocketAddr,
) -> Option<String> {
    let (answer, answered) = oneshot::channel();
    events
        .send(Event::VetName {
            hello,
            remote,
            answer,
        })
        .ok()?;
    answered.await.ok().flatten()
}
