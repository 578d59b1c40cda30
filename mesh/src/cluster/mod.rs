//! The mesh: nodes linked over QUIC, each learning the others' interest, so
//! that a consumer on any node receives every matching event published on
//! any node.
//!
//! ```text
//!   local subscriptions ──watch──► driver ──INTEREST──► peers' drivers
//!                                    │                        │
//!                      routes for peers' interest       routes for ours
//!                                    ▼                        ▼
//!   publish ─► bus ─► peer mailbox ─► egress ══QUIC data streams══► ingress ─► bus (local only)
//! ```
//!
//! - [`interest`]: interest propagation as a state machine without I/O;
//! - [`wire`]: the link protocol's messages and frames;
//! - [`tls`]: mutual TLS from a cluster CA, development certificates;
//! - `link`: handshakes, control streams, receiving events;
//! - `egress`: sending events, from each peer's mailbox;
//! - [`membership`]: SWIM membership as a state machine without I/O;
//! - `driver`: the task that ties them together (membership packets as
//!   QUIC datagrams, verdicts, dialing);
//! - `counters`: per-link counters, kept by the tasks that move the events;
//! - [`view`]: what the mesh reports (members, links, interest).
//!
//! Everything runs on one thread (`starling-mesh`) with a single-threaded
//! tokio runtime: a link's work is I/O and copying, and one thread keeps the
//! other cores for publishers, consumers and the local server.

mod counters;
mod driver;
mod egress;
pub mod interest;
mod link;
pub mod membership;
pub mod tls;
pub mod view;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use starling_core::Bus;
use starling_core::bus::DEFAULT_MAX_STALL;
use thiserror::Error;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::sync::{oneshot, watch};

use self::driver::{Driver, Event, vet_name};
use self::interest::{InterestConfig, NodeId};
use self::link::Local;
use self::membership::{Identity, MembershipConfig, MembershipError};
use self::tls::{LinkTls, TlsError, TlsSource};
use self::view::ClusterView;
use self::wire::{Hello, MESH_PROTOCOL_VERSION};

/// The default cluster port address.
pub const DEFAULT_CLUSTER_LISTEN: &str = "127.0.0.1:7401";
/// The default cluster name.
pub const DEFAULT_CLUSTER_NAME: &str = "starling";

/// How a node takes part in the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's name (in handshakes; with mutual TLS, its certificate
    /// must be valid for it).
    pub node_name: String,
    /// The cluster's name: nodes of different clusters refuse each other.
    pub cluster_name: String,
    /// UDP address of the cluster port.
    pub listen: String,
    /// The address peers dial this node at; the bound address if `None`.
    pub advertise: Option<String>,
    /// Nodes to join through, `HOST:PORT`.
    pub seeds: Vec<String>,
    /// Link certificates.
    pub tls: TlsSource,
    /// Timing of interest propagation: the digest interval, and the grace
    /// period after which a peer whose link is down is forgotten.
    pub interest: InterestConfig,
    /// Timing of membership (SWIM): probes, suspicion, gossip.
    pub membership: MembershipConfig,
    /// Data streams per link and direction (1 to [`DATA_STREAMS_MAX`]);
    /// events are spread over them by subject, so each subject keeps its
    /// order. Each is written on its own: one that its receiver stopped
    /// reading holds back only what is for it.
    pub data_streams: usize,
    /// Events queued for one peer: what a slow or briefly-down link may
    /// owe. When it is full, publishers of events for the peer are held back
    /// (see `peer_max_stall`).
    pub peer_queue_events: usize,
    /// Longest a publisher is held back, per episode, by a peer whose queue
    /// is full (a slow link, a stalled or unreachable peer); after it, the
    /// peer's events are dropped and counted (`dropped_out`) until its
    /// queue drains to half.
    pub peer_max_stall: Duration,
    /// Largest control message (an interest snapshot is the largest).
    pub control_bytes_max: usize,
    /// QUIC keep-alive: also how soon a dead peer is noticed, with
    /// `idle_timeout`.
    pub keep_alive: Duration,
    /// A link with no packets for this long is closed.
    pub idle_timeout: Duration,
    /// The longest wait between two dials of an address.
    pub redial_backoff_max: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_name: "starling".into(),
            cluster_name: DEFAULT_CLUSTER_NAME.into(),
            listen: DEFAULT_CLUSTER_LISTEN.into(),
            advertise: None,
            seeds: Vec::new(),
            tls: TlsSource::Unset,
            interest: InterestConfig {
                digest_interval: Duration::from_secs(5),
                withdraw_after: Duration::from_secs(10),
            },
            membership: MembershipConfig::lan(),
            data_streams: 8,
            peer_queue_events: 65_536,
            peer_max_stall: DEFAULT_MAX_STALL,
            control_bytes_max: 64 << 20,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            redial_backoff_max: Duration::from_secs(2),
        }
    }
}

/// Why the mesh could not start.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// TLS could not be set up.
    #[error("mesh TLS: {0}")]
    Tls(#[from] TlsError),
    /// The cluster port could not be opened.
    #[error("cannot listen for peers on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// This node cannot take part in membership as configured.
    #[error("mesh membership: {0}")]
    Membership(#[from] MembershipError),
    /// Something else the runtime needs failed.
    #[error("mesh runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// A node's part of the mesh, running on its own thread. Stops on drop.
#[derive(Debug)]
pub struct Cluster {
    node_id: NodeId,
    local_addr: SocketAddr,
    events: UnboundedSender<Event>,
    /// Why this node's name was refused for good, once it is.
    name_verdict: watch::Receiver<Option<String>>,
    thread: Option<JoinHandle<()>>,
}

impl Cluster {
    /// Opens the cluster port, starts dialing the seeds, and from then on
    /// keeps `bus` in the mesh: its local interest goes to every peer, and
    /// every peer's interest becomes routes on it.
    pub fn start(bus: Bus, config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let tls = LinkTls::new(&config.tls, &config.node_name)?;
        let socket =
            std::net::UdpSocket::bind(&config.listen).map_err(|source| ClusterError::Listen {
                address: config.listen.clone(),
                source,
            })?;
        let local_addr = socket.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let endpoint = {
            let _runtime = runtime.enter();
            link_endpoint(socket, &tls, &config)?
        };
        let node_id = loop {
            let id = starling_core::random_u64();
            if id != 0 {
                break id;
            }
        };
        let hello = Hello {
            protocol: MESH_PROTOCOL_VERSION,
            fingerprint: starling_core::event::format_fingerprint(),
            node_id,
            cluster: config.cluster_name.clone(),
            name: config.node_name.clone(),
            advertise: config
                .advertise
                .clone()
                .unwrap_or_else(|| local_addr.to_string()),
            inbox_prefix: bus.inbox_prefix(),
        };
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let identity = Identity::new(node_id, &hello.advertise, started_ms)?;
        if !tls.authenticated {
            tracing::warn!(
                "INSECURE: mesh links use --insecure-dev-tls: encrypted, but any peer is accepted \
                 and nobody is authenticated. For development only; make certificates with `starling cert`."
            );
        }
        let local = Arc::new(Local {
            hello,
            authenticated: tls.authenticated,
            control_bytes_max: config.control_bytes_max,
        });
        let (events, receiver) = unbounded_channel();
        let (name_verdict_sender, name_verdict) = watch::channel(None);
        let watcher = events.clone();
        bus.watch_local_interest(Box::new(move |change| {
            let _ = watcher.send(Event::Local(change));
        }));
        let accepted = events.clone();
        let (driver_local, driver_endpoint, driver_events) =
            (local.clone(), endpoint.clone(), events.clone());
        let thread = std::thread::Builder::new()
            .name("starling-mesh".into())
            .spawn(move || {
                // Local tasks: each peer's mailbox is drained by a task that must
                // not move between threads.
                tokio::task::LocalSet::new().block_on(&runtime, async move {
                    tokio::spawn(async move {
                        while let Some(incoming) = endpoint.accept().await {
                            let local = local.clone();
                            let accepted = accepted.clone();
                            tokio::spawn(async move {
                                let vet = |hello, remote| vet_name(accepted.clone(), hello, remote);
                                let result = link::accept(incoming, local, vet).await;
                                let _ = accepted.send(Event::Accepted(result));
                            });
                        }
                    });
                    // Built here: it holds each peer's mailbox, which stays on
                    // this thread.
                    let driver = Driver::new(
                        driver_local,
                        config,
                        bus,
                        driver_endpoint,
                        driver_events,
                        identity,
                        name_verdict_sender,
                    );
                    driver.run(receiver).await;
                });
            })?;
        Ok(Cluster {
            node_id,
            local_addr,
            events,
            name_verdict,
            thread: Some(thread),
        })
    }

    /// This node's id in the mesh (random per start).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The address the cluster port is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Members, links with their counters, and interest, as of now. `None`
    /// once stopped. Blocks: not for async code (see [`Cluster::view_async`]).
    pub fn view(&self) -> Option<ClusterView> {
        let (reply, view) = oneshot::channel();
        self.events.send(Event::View(reply)).ok()?;
        view.blocking_recv().ok()
    }

    /// Like [`Cluster::view`], for async code.
    pub async fn view_async(&self) -> Option<ClusterView> {
        let (reply, view) = oneshot::channel();
        self.events.send(Event::View(reply)).ok()?;
        view.await.ok()
    }

    /// Resolves, with the reason, once the mesh has refused this node's
    /// name for good: a live member holds it (a peer kept refusing it for
    /// twice the idle timeout, past any link of this node's previous run).
    /// Never resolves otherwise. `starling node` exits non-zero on it.
    pub async fn name_refused(&self) -> String {
        let mut verdict = self.name_verdict.clone();
        match verdict.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The mesh stopped without a verdict.
            Err(_) => std::future::pending().await,
        }
    }

    /// Leaves the mesh: links close (peers withdraw this node's interest at
    /// once) and the thread stops. Also done on drop.
    pub fn shutdown(self) {
        drop(self);
    }
}

/// Bytes a data stream's receiver takes in before the sender must wait:
/// ingress stops reading a stream whose events have no room here, and the
/// sender feels it after this much (a few thousand events), not after
/// megabytes.
const STREAM_WINDOW: u32 = 1 << 20;

/// A link's flow-control window: every data stream's, the control stream's,
/// and as much again to spare.
const CONNECTION_WINDOW: u32 = (DATA_STREAMS_MAX as u32 + 2) * STREAM_WINDOW;

/// Most data streams a link has per direction: what a node lets its peers
/// open, and sizes its connection window for, whatever its own
/// `data_streams`, so that nodes configured differently interoperate.
pub const DATA_STREAMS_MAX: usize = 16;

/// Largest UDP payload a link sends or takes: what MTU discovery searches up
/// to, and the `max_udp_payload_size` this node announces. Per-packet work
/// (header protection, AEAD, acknowledgements, loss bookkeeping, one UDP
/// segment in the kernel) dominates a link's CPU at 1452 bytes, QUIC's
/// default; a path that carries larger packets (loopback, jumbo frames)
/// now gets them, and one that does not keeps what discovery found (it
/// probes with single packets, and falls back on black holes). Not higher:
/// quinn sends up to 10 segments in one GSO call, and the kernel refuses a
/// call over 64 KiB.
pub(crate) const UDP_PAYLOAD_MAX: u16 = 6500;

/// Receive buffer asked for the cluster socket; the kernel grants at most
/// `net.core.rmem_max` (4 MiB on this project's machines; where it was left
/// at its default, ~208 KiB, nothing changes). At the default, a mesh
/// thread that is not scheduled for a moment (a loaded machine) lets the
/// socket overflow, and each datagram lost there stalls its streams until
/// QUIC's loss recovery resends it: one run of the backpressure tests on
/// loopback dropped 175-194 datagrams (1452-byte packets as well as 6500),
/// the queue at its 212 KB limit; with this, none, the queue peaking at
/// 805 KB.
pub(crate) const SOCKET_RECEIVE_BUFFER: usize = 8 << 20;

/// A QUIC endpoint on `socket` that accepts and dials links with `tls`,
/// with the transport settings links need (keep-alive, idle timeout,
/// flow-control windows). Must be called within a tokio runtime.
///
/// The connection window covers every data stream's window and the control
/// stream's, with room to spare: data streams that stopped being read (held
/// back by a full consumer) can never use up the credit the control stream
/// or the other streams need.
pub(crate) fn link_endpoint(
    socket: std::net::UdpSocket,
    tls: &LinkTls,
    config: &ClusterConfig,
) -> std::io::Result<quinn::Endpoint> {
    quinn::udp::UdpSocketState::new((&socket).into())?
        .set_recv_buffer_size((&socket).into(), SOCKET_RECEIVE_BUFFER)?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(config.keep_alive))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(config.idle_timeout)
                .expect("idle timeouts are far below QUIC's limit"),
        ))
        .initial_rtt(Duration::from_millis(10))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        // The control stream and the data streams.
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(DATA_STREAMS_MAX as u32 + 1))
        .stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW))
        .receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .mtu_discovery_config(Some({
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(UDP_PAYLOAD_MAX);
            mtu
        }));
    let transport = Arc::new(transport);
    let mut server = quinn::ServerConfig::with_crypto(tls.server.clone());
    server.transport_config(transport.clone());
    let mut client = quinn::ClientConfig::new(tls.client.clone());
    client.transport_config(transport);
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config
        .max_udp_payload_size(UDP_PAYLOAD_MAX)
        .expect("within QUIC's bounds");
    let mut endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
