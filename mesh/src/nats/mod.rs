//! The node's NATS listener: every NATS client, in any language, publishes
//! and subscribes on the node's bus, next to Starling's own clients and
//! across the mesh.
//!
//! The protocol (parser, encoder, per-connection state) is
//! `starling_transport::nats`, without I/O; this module drives it over
//! tokio sockets. Why tokio rather than the local server's io_uring loop:
//! the NATS protocol is text, parsed and encoded per message anyway (no
//! archive to send in place), the node already runs tokio for HTTP and the
//! mesh, and one task per connection keeps a slow or hostile client's
//! state apart from everyone else's with no shared lock on the data path.
//! The listener has a runtime of its own (one worker per core), so its load
//! never delays the mesh's or the HTTP endpoint's.
//!
//! One task per connection ([`connection`]) reads, parses and publishes
//! into the bus, pulls the connection's bus mailbox into MSG/HMSG frames
//! written in batches, pings idle clients and closes stale ones.
//!
//! With TLS ([`NatsListenerConfig::tls`]), as nats-server: INFO goes out in
//! plain text saying `tls_required`, then the client starts TLS. The task
//! hands its TCP connection to a `starling_transport::tls::Terminator`
//! (one thread for every TLS connection, the local server's design) and
//! serves the plaintext end of a socket pair in its place ([`socket`]).

mod connection;
mod monitor;
mod socket;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use starling_core::{Bus, SubscribeOptions};
use starling_transport::auth::Authentication;
use starling_transport::budget::Budget;
use starling_transport::nats::{
    ConnectionStats, MAX_CONTROL_LINE, NATS_VERSION, NatsConfig, ServerInfo, proto,
};
use starling_transport::tls::{ServerTls, Terminator, TerminatorConfig};
use tokio::sync::watch;

/// Default address of the NATS listener of `starling node`.
pub const DEFAULT_NATS_LISTEN: &str = "127.0.0.1:4222";

/// How a NATS listener is set up.
#[derive(Debug, Clone)]
pub struct NatsListenerConfig {
    /// `HOST:PORT` to listen on.
    pub listen: String,
    /// The node's name (INFO's `server_name`).
    pub server_name: String,
    /// Who may connect (the node's users and token; neither: anyone) and
    /// what each may do; after a reload, call [`NatsServer::users_reloaded`].
    pub auth: Arc<Authentication>,
    /// Largest payload (INFO's `max_payload`).
    pub max_payload: usize,
    /// Most NATS connections.
    pub connections_max: usize,
    /// Most subscriptions per connection.
    pub subscriptions_max: usize,
    /// The node's subscriptions, of every client of both protocols (the
    /// local server's [`Server::subscriptions`]).
    ///
    /// [`Server::subscriptions`]: starling_transport::server::Server::subscriptions
    pub node_subscriptions: Arc<Budget>,
    /// Events queued for one connection (its bus mailbox).
    pub pending_events_max: usize,
    /// How often an idle client is pinged (nats-server: 2 minutes).
    pub ping_interval: Duration,
    /// Unanswered pings before a client is stale (nats-server: 2).
    pub max_pings_out: u32,
    /// Time a client has to authenticate (nats-server: 2 s).
    pub auth_timeout: Duration,
    /// Time a client may leave written bytes unread before it is closed as
    /// a slow consumer (nats-server's `write_deadline`: 10 s).
    pub write_deadline: Duration,
    /// TLS: with it, clients must speak TLS (after INFO), and present a
    /// certificate if its settings require one.
    pub tls: Option<ServerTls>,
}

impl Default for NatsListenerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_NATS_LISTEN.into(),
            server_name: "starling".into(),
            auth: Arc::default(),
            max_payload: 1 << 20,
            connections_max: 10_000,
            subscriptions_max: 10_000,
            node_subscriptions: Arc::new(Budget::new(1_000_000)),
            pending_events_max: 16_384,
            ping_interval: Duration::from_secs(120),
            max_pings_out: 2,
            auth_timeout: Duration::from_secs(2),
            write_deadline: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// What the listener is doing; every connection task watches it. It is
/// also marked changed, unchanged, when the node's users are reloaded: each
/// connection then checks it may stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Running,
    /// Lame duck: no new connections; clients are told to move.
    LameDuck,
    /// Close every connection after writing what it has.
    Stopping,
}

/// A running NATS listener.
#[derive(Debug)]
pub struct NatsServer {
    addr: SocketAddr,
    state: Arc<ListenerState>,
    mode: watch::Sender<Mode>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// What the listener and its connection tasks share.
#[derive(Debug)]
struct ListenerState {
    bus: Bus,
    settings: NatsListenerConfig,
    session: Arc<NatsConfig>,
    /// Control plane only: changed when a connection opens or closes, read
    /// by monitoring.
    connections: Mutex<HashMap<u64, Connection>>,
    /// Counters of connections since closed, so that totals survive them.
    /// Every counter here is `Relaxed`: each is a figure on its own, read
    /// for reports; nothing else is published through it.
    closed: ConnectionStats,
    next_cid: AtomicU64,
    slow_consumers: AtomicU64,
    started: SystemTime,
    started_at: Instant,
    /// With TLS: the thread that speaks it for every connection.
    terminator: Option<Terminator>,
}

/// One live connection, for monitoring.
#[derive(Debug, Clone)]
struct Connection {
    addr: SocketAddr,
    started: SystemTime,
    stats: Arc<ConnectionStats>,
}

impl NatsServer {
    /// Binds `config.listen` and serves NATS clients on `bus` from a runtime
    /// of its own.
    pub fn start(bus: Bus, config: NatsListenerConfig) -> io::Result<NatsServer> {
        let listener = starling_transport::server::listen_tcp(&config.listen).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot serve NATS on {}: {error}", config.listen),
            )
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("starling-nats")
            .enable_all()
            .build()?;
        let session = Arc::new(NatsConfig {
            info: ServerInfo {
                server_id: format!("{:016X}", starling_core::random_u64()),
                server_name: config.server_name.clone(),
                version: NATS_VERSION.into(),
                go: concat!("starling ", env!("CARGO_PKG_VERSION")).into(),
                host: addr.ip().to_string(),
                port: addr.port(),
                headers: true,
                auth_required: config.auth.required(),
                tls_required: config.tls.is_some(),
                tls_verify: config.tls.as_ref().is_some_and(ServerTls::verifies_clients),
                max_payload: config.max_payload,
                proto: 1,
                client_id: 0,
                client_ip: String::new(),
                ldm: false,
            },
            auth: config.auth.clone(),
            max_control_line: MAX_CONTROL_LINE,
            subscriptions_max: config.subscriptions_max,
            node_subscriptions: config.node_subscriptions.clone(),
            mailbox: SubscribeOptions {
                capacity: config.pending_events_max.max(1),
                ..bus.config().subscription
            },
            max_pings_out: config.max_pings_out,
        });
        let terminator = match &config.tls {
            Some(tls) => Some(Terminator::start(TerminatorConfig {
                tls: tls.clone(),
                // The TLS handshake is part of authenticating.
                handshake_timeout: config.auth_timeout,
                // Room for connections refused over `connections_max`, whose
                // `-ERR` goes out once their handshake is done.
                pumps_max: config.connections_max.saturating_mul(2),
                refusal: proto::ERR_TLS_REQUIRED.to_vec(),
                drain_timeout: Duration::from_secs(1),
            })?),
            None => None,
        };
        let state = Arc::new(ListenerState {
            bus,
            settings: config,
            session,
            connections: Mutex::default(),
            closed: ConnectionStats::default(),
            next_cid: AtomicU64::new(1),
            slow_consumers: AtomicU64::new(0),
            started: SystemTime::now(),
            started_at: Instant::now(),
            terminator,
        });
        let (mode, watching) = watch::channel(Mode::Running);
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        runtime.spawn(accept(listener, state.clone(), watching));
        Ok(NatsServer {
            addr,
            state,
            mode,
            runtime: Some(runtime),
        })
    }

    /// The address served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lame-duck mode: stop accepting, and tell every client (an INFO with
    /// `ldm`) so that it reconnects elsewhere before the node stops.
    pub fn enter_lame_duck(&self) {
        self.mode.send_if_modified(|mode| {
            let running = *mode == Mode::Running;
            if running {
                *mode = Mode::LameDuck;
            }
            running
        });
    }

    /// The node's users were reloaded: every connection checks at once
    /// that it may stay, and is closed if not.
    pub fn users_reloaded(&self) {
        self.mode.send_modify(|_| {});
    }

    /// Closes every connection after writing what it has, waiting up to
    /// `grace` for them. The runtime stops when the server is dropped.
    pub fn shutdown(&self, grace: Duration) {
        self.mode.send_replace(Mode::Stopping);
        let deadline = Instant::now() + grace;
        while self.state.connection_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `/varz`.
    pub fn varz(&self) -> serde_json::Value {
        monitor::varz(&self.state)
    }

    /// `/connz`.
    pub fn connz(&self) -> serde_json::Value {
        monitor::connz(&self.state)
    }

    /// `/subsz`.
    pub fn subsz(&self) -> serde_json::Value {
        monitor::subsz(&self.state)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Stopping);
        // In the background: the server may be dropped inside another
        // runtime, where waiting for this one's threads is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        // Here rather than where the last task lets go of the state: that
        // may be a runtime thread, which must not wait.
        if let Some(terminator) = &self.state.terminator {
            terminator.finish();
        }
    }
}

impl ListenerState {
    fn connection_count(&self) -> usize {
        self.connections.lock().expect("connections lock").len()
    }

    /// Registers a connection, unless the node has its maximum already.
    fn register(&self, cid: u64, addr: SocketAddr, stats: Arc<ConnectionStats>) -> bool {
        let mut connections = self.connections.lock().expect("connections lock");
        if connections.len() >= self.settings.connections_max {
            return false;
        }
        let started = SystemTime::now();
        connections.insert(
            cid,
            Connection {
                addr,
                started,
                stats,
            },
        );
        true
    }

    /// Forgets a connection; its counters go to the totals of the closed.
    fn unregister(&self, cid: u64) {
        let removed = self
            .connections
            .lock()
            .expect("connections lock")
            .remove(&cid);
        if let Some(connection) = removed {
            let (from, to) = (&connection.stats, &self.closed);
            for (from, to) in [
                (&from.in_msgs, &to.in_msgs),
                (&from.in_bytes, &to.in_bytes),
                (&from.out_msgs, &to.out_msgs),
                (&from.out_bytes, &to.out_bytes),
            ] {
                to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }
}

/// Accepts connections until the listener leaves [`Mode::Running`].
async fn accept(
    listener: tokio::net::TcpListener,
    state: Arc<ListenerState>,
    mut mode: watch::Receiver<Mode>,
) {
    loop {
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow_and_update() != Mode::Running {
                    return;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    tokio::spawn(connection::serve(stream, addr, state.clone(), mode.clone()));
                }
                Err(error) => {
                    // Out of file descriptors, most likely: back off rather
                    // than spin, and resume.
                    tracing::warn!(%error, "NATS listener cannot accept; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}
