//! The local server: applications on the same host reach their node over a
//! Unix domain socket or TCP.
//!
//! ```text
//!  listener ──accept──► worker thread (one I/O loop: io_uring, or epoll)
//!                          │  Session per connection (sans-IO, session.rs)
//!   client bytes ─recv──►  │  frames → PUB: worker's Publisher → Bus
//!                          │           SUB: the session's Mailbox subscribes
//!   client ◄──send──────   │  Mailbox deliveries → Outbox → gathered send,
//!                          │  archives read in place from event memory
//!   Bus delivery ──wake──► ready queue + eventfd → the worker pulls the session
//! ```
//!
//! Two backends drive the same sessions: io_uring (multishot accept,
//! multishot receive into a registered buffer ring, gathered sends straight
//! from event memory) and a portable epoll loop. The node probes io_uring at
//! start and falls back to epoll on any failure, saying why once.

mod backend;
mod epoll;
mod outbox;
mod session;
#[cfg(target_os = "linux")]
mod uring;
mod wake;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use session::SessionConfig;

use starling_core::{Bus, QueueCounters};

use crate::frame;
use crate::stream::Stream;

/// Which I/O backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// io_uring if it works here, else epoll.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll.
    Epoll,
}

/// The backend a server runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// io_uring.
    Uring,
    /// epoll, and why (`--io-backend epoll`, or why io_uring could not start).
    Epoll {
        /// Why epoll was chosen.
        reason: String,
    },
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Uring => write!(f, "io_uring"),
            Backend::Epoll { reason } => write!(f, "epoll ({reason})"),
        }
    }
}

/// How a local server is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP address to listen on (port 0 picks a free port).
    pub tcp: Option<String>,
    /// Unix socket path to listen on; an existing socket file is replaced.
    pub uds: Option<PathBuf>,
    /// The I/O backend.
    pub backend: BackendChoice,
    /// Most connections at once; more are refused with an `ERR` frame.
    pub connections_max: usize,
    /// Per-connection protocol settings and limits.
    pub session: SessionConfig,
    /// How long shutdown waits for queued frames to be written.
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            tcp: Some("127.0.0.1:7400".into()),
            uds: None,
            backend: BackendChoice::Auto,
            connections_max: 10_000,
            session: SessionConfig::default(),
            drain_timeout: Duration::from_secs(1),
        }
    }
}

/// A running local server.
#[derive(Debug)]
pub struct Server {
    backend: Backend,
    tcp_addr: Option<SocketAddr>,
    uds_path: Option<PathBuf>,
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// What the server's threads and its owner share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) bus: Bus,
    pub(crate) config: ServerConfig,
    pub(crate) session: Arc<SessionConfig>,
    pub(crate) connections: Connections,
    pub(crate) stopping: AtomicBool,
    /// Set by the backend once it runs: how to wake its loop from any thread.
    pub(crate) waker: OnceLock<Arc<dyn wake::WakeLoop>>,
}

/// The listening sockets, bound before the worker starts so that errors such
/// as "address in use" reach the caller.
#[derive(Debug)]
pub(crate) struct Listeners {
    pub(crate) tcp: Option<std::net::TcpListener>,
    pub(crate) uds: Option<UnixListener>,
}

impl Server {
    /// Binds the listeners and starts the I/O loop on its own thread.
    pub fn start(bus: Bus, config: ServerConfig) -> io::Result<Server> {
        let listeners = bind(&config)?;
        let tcp_addr = listeners.tcp.as_ref().map(|l| l.local_addr()).transpose()?;
        let uds_path = config.uds.clone();
        let choice = config.backend;
        let shared = Arc::new(Shared {
            session: Arc::new(config.session.clone()),
            bus,
            config,
            connections: Connections::default(),
            stopping: AtomicBool::new(false),
            waker: OnceLock::new(),
        });
        // The I/O thread sets its backend up itself (an io_uring ring belongs
        // to the thread that submits to it) and reports which it runs.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("starling-io".into())
                .spawn(move || backend::run(choice, listeners, &shared, &started_tx))?
        };
        let backend = match started_rx.recv() {
            Ok(Ok(backend)) => backend,
            Ok(Err(error)) => {
                let _ = worker.join();
                return Err(error);
            }
            Err(_) => return Err(io::Error::other("the I/O thread exited during start-up")),
        };
        Ok(Server {
            backend,
            tcp_addr,
            uds_path,
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The TCP address listened on, with the actual port.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The Unix socket listened on.
    pub fn uds_path(&self) -> Option<&Path> {
        self.uds_path.as_deref()
    }

    /// The open connections.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared.connections.snapshot()
    }

    /// Counters over every connection so far, open or closed.
    pub fn totals(&self) -> ConnectionTotals {
        let open = self.shared.connections.snapshot();
        self.shared.connections.totals(&open)
    }

    /// Stops accepting, tells every client the node is shutting down, writes
    /// what is queued (for up to the drain timeout), closes every connection
    /// and waits for the I/O thread.
    /// Idempotent; also done on drop.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(waker) = self.shared.waker.get() {
            waker.wake_loop();
        }
        let worker = self.worker.lock().expect("worker lock").take();
        if let Some(worker) = worker {
            let _ = worker.join();
            if let Some(path) = &self.uds_path {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn bind(config: &ServerConfig) -> io::Result<Listeners> {
    if config.tcp.is_none() && config.uds.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "nothing to listen on: give a TCP address or a Unix socket path",
        ));
    }
    let tcp = match &config.tcp {
        Some(address) => {
            let listener = std::net::TcpListener::bind(address.as_str()).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot listen on tcp://{address}: {error}"),
                )
            })?;
            listener.set_nonblocking(true)?;
            Some(listener)
        }
        None => None,
    };
    let uds = match &config.uds {
        Some(path) => {
            remove_stale_socket(path)?;
            let listener = UnixListener::bind(path).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot listen on unix://{}: {error}", path.display()),
                )
            })?;
            listener.set_nonblocking(true)?;
            Some(listener)
        }
        None => None,
    };
    Ok(Listeners { tcp, uds })
}

/// Removes a socket file left by a node that did not stop cleanly, but never
/// a live socket (another node listening) or a file that is not a socket.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another process is listening on {}", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

/// The whole `ERR` frame for a connection refused for being over the limit.
fn refusal_frame(limit: usize) -> Vec<u8> {
    let body = frame::control::ErrorBody::new(
        frame::ErrorCode::Limit,
        format!("the node accepts at most {limit} connections"),
    )
    .encode();
    let mut bytes = frame::Header::new(frame::Kind::Err, 0, body.len())
        .encode()
        .to_vec();
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&frame::PADDING[..frame::padded(body.len()) - body.len()]);
    bytes
}

/// Tells a connection over the limit why it is closed, if it can take the
/// bytes at once (without blocking the loop), and leaves it to be dropped.
pub(crate) fn refuse(stream: &Stream, limit: usize) {
    if stream.set_nonblocking(true).is_ok() {
        let _ = (&*stream).write(&refusal_frame(limit));
    }
}

/// Counters of one connection, updated by the I/O thread.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) events_in: AtomicU64,
    pub(crate) events_out: AtomicU64,
    pub(crate) errors: AtomicU64,
    client_name: OnceLock<String>,
    /// The connection's mailbox, read for its drop count: a blocked
    /// connection is not pulled, so only the mailbox knows.
    mailbox: OnceLock<QueueCounters>,
    /// The connection's subscriptions (control plane: changed on subscribe
    /// and unsubscribe, read by listings).
    subscriptions: Mutex<HashMap<u64, Arc<SubscriptionStats>>>,
}

/// One subscription of a connection, with what was delivered for it.
#[derive(Debug)]
pub struct SubscriptionStats {
    /// The pattern.
    pub pattern: String,
    /// The queue group.
    pub queue_group: Option<String>,
    /// Events delivered for it (moved to the connection's send queue).
    /// Written by the I/O thread only.
    delivered: AtomicU64,
}

impl SubscriptionStats {
    pub(crate) fn new(request: frame::control::Subscribe) -> Self {
        Self {
            pattern: request.pattern,
            queue_group: request.queue_group,
            delivered: AtomicU64::new(0),
        }
    }

    /// One more event delivered. A single writer, so no atomic add.
    pub(crate) fn delivered(&self) {
        let delivered = self.delivered.load(Ordering::Relaxed);
        self.delivered.store(delivered + 1, Ordering::Relaxed);
    }
}

impl ConnectionStats {
    pub(crate) fn set_client_name(&self, name: &str) {
        let _ = self.client_name.set(name.to_owned());
    }

    pub(crate) fn set_mailbox(&self, counters: QueueCounters) {
        let _ = self.mailbox.set(counters);
    }

    pub(crate) fn add_subscription(&self, sid: u64, stats: Arc<SubscriptionStats>) {
        self.subscriptions
            .lock()
            .expect("subscriptions lock")
            .insert(sid, stats);
    }

    pub(crate) fn remove_subscription(&self, sid: u64) {
        self.subscriptions
            .lock()
            .expect("subscriptions lock")
            .remove(&sid);
    }
}

/// One connection, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The connection's id, unique within the server.
    pub id: u64,
    /// `tcp` or `unix`.
    pub transport: &'static str,
    /// The peer's address, for TCP.
    pub remote: String,
    /// The name the client gave in its `HELLO`.
    pub client_name: String,
    /// When it connected, nanoseconds since the Unix epoch.
    pub connected_unix_nanos: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Events published by the client.
    pub events_in: u64,
    /// Events delivered to the client.
    pub events_out: u64,
    /// Live subscriptions.
    pub subscriptions: u64,
    /// The id of the connection's mailbox in the bus (see
    /// `starling_core::QueueInfo::id`).
    pub mailbox: u64,
    /// Per subscription: id, pattern, queue group, events delivered.
    pub delivered: Vec<SubscriptionDelivered>,
    /// Events dropped because the client read too slowly.
    pub dropped: u64,
    /// Error frames sent.
    pub errors: u64,
}

/// What was delivered for one subscription of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionDelivered {
    /// The subscription id the client chose.
    pub sid: u64,
    /// Its pattern.
    pub pattern: String,
    /// Its queue group.
    pub queue_group: Option<String>,
    /// Events delivered for it.
    pub delivered: u64,
}

/// The registry of open connections (control plane: a lock, taken on
/// connect, disconnect and listing only).
#[derive(Debug, Default)]
pub(crate) struct Connections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Registered>>,
    /// Counters of connections that have closed, so that totals never go
    /// down when a client leaves.
    closed: ClosedTotals,
}

/// Sums over closed connections.
#[derive(Debug, Default)]
struct ClosedTotals {
    connections: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    events_in: AtomicU64,
    events_out: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
}

/// Counters summed over every connection the server ever had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTotals {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Events clients published.
    pub events_in: u64,
    /// Events delivered to clients.
    pub events_out: u64,
    /// Events dropped for clients that read too slowly.
    pub dropped: u64,
    /// Error frames sent.
    pub errors: u64,
}

#[derive(Debug)]
struct Registered {
    transport: &'static str,
    remote: String,
    connected_unix_nanos: u64,
    stats: Arc<ConnectionStats>,
}

impl Connections {
    /// Registers a new connection; returns its id and counters.
    pub(crate) fn open(
        &self,
        transport: &'static str,
        remote: String,
    ) -> (u64, Arc<ConnectionStats>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let stats = Arc::new(ConnectionStats::default());
        let connected_unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let registered = Registered {
            transport,
            remote,
            connected_unix_nanos,
            stats: stats.clone(),
        };
        self.open
            .lock()
            .expect("connections lock")
            .insert(id, registered);
        (id, stats)
    }

    pub(crate) fn close(&self, id: u64) {
        let Some(closed) = self.open.lock().expect("connections lock").remove(&id) else {
            return;
        };
        let add = |total: &AtomicU64, value: u64| total.fetch_add(value, Ordering::Relaxed);
        let stats = &closed.stats;
        add(&self.closed.connections, 1);
        add(
            &self.closed.bytes_in,
            stats.bytes_in.load(Ordering::Relaxed),
        );
        add(
            &self.closed.bytes_out,
            stats.bytes_out.load(Ordering::Relaxed),
        );
        add(
            &self.closed.events_in,
            stats.events_in.load(Ordering::Relaxed),
        );
        add(
            &self.closed.events_out,
            stats.events_out.load(Ordering::Relaxed),
        );
        add(
            &self.closed.dropped,
            stats.mailbox.get().map_or(0, QueueCounters::dropped),
        );
        add(&self.closed.errors, stats.errors.load(Ordering::Relaxed));
    }

    fn totals(&self, open: &[ConnectionInfo]) -> ConnectionTotals {
        let closed = |total: &AtomicU64| total.load(Ordering::Relaxed);
        let sum = |field: fn(&ConnectionInfo) -> u64| open.iter().map(field).sum::<u64>();
        ConnectionTotals {
            connections: closed(&self.closed.connections) + open.len() as u64,
            bytes_in: closed(&self.closed.bytes_in) + sum(|c| c.bytes_in),
            bytes_out: closed(&self.closed.bytes_out) + sum(|c| c.bytes_out),
            events_in: closed(&self.closed.events_in) + sum(|c| c.events_in),
            events_out: closed(&self.closed.events_out) + sum(|c| c.events_out),
            dropped: closed(&self.closed.dropped) + sum(|c| c.dropped),
            errors: closed(&self.closed.errors) + sum(|c| c.errors),
        }
    }

    fn snapshot(&self) -> Vec<ConnectionInfo> {
        let open = self.open.lock().expect("connections lock");
        let mut list: Vec<ConnectionInfo> = open
            .iter()
            .map(|(id, c)| {
                let subscriptions = c.stats.subscriptions.lock().expect("subscriptions lock");
                let delivered = subscriptions
                    .iter()
                    .map(|(sid, s)| SubscriptionDelivered {
                        sid: *sid,
                        pattern: s.pattern.clone(),
                        queue_group: s.queue_group.clone(),
                        delivered: s.delivered.load(Ordering::Relaxed),
                    })
                    .collect();
                ConnectionInfo {
                    id: *id,
                    transport: c.transport,
                    remote: c.remote.clone(),
                    client_name: c.stats.client_name.get().cloned().unwrap_or_default(),
                    connected_unix_nanos: c.connected_unix_nanos,
                    bytes_in: c.stats.bytes_in.load(Ordering::Relaxed),
                    bytes_out: c.stats.bytes_out.load(Ordering::Relaxed),
                    events_in: c.stats.events_in.load(Ordering::Relaxed),
                    events_out: c.stats.events_out.load(Ordering::Relaxed),
                    subscriptions: subscriptions.len() as u64,
                    mailbox: c.stats.mailbox.get().map_or(0, QueueCounters::id),
                    delivered,
                    dropped: c.stats.mailbox.get().map_or(0, QueueCounters::dropped),
                    errors: c.stats.errors.load(Ordering::Relaxed),
                }
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }
}
