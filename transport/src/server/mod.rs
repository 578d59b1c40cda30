//! The local server: applications on the same host reach their node over a
//! Unix domain socket or TCP.
//!
//! ```text
//!  listener ──accept──► I/O thread 0 ──hands over──► I/O thread k (each: one
//!                          │  loop, io_uring or epoll; N threads, default
//!                          │  one per core; a connection stays on its thread)
//!                          │  Session per connection (sans-IO, session.rs)
//!   client bytes ─recv──►  │  frames → PUB: worker's Publisher → Bus
//!                          │           SUB: the session's Mailbox subscribes
//!   client ◄──send──────   │  Mailbox deliveries → Outbox → gathered send,
//!                          │  archives read in place from event memory
//!   Bus delivery ──wake──► ready queue (+ eventfd, from another thread) → the
//!                          worker pulls the session
//! ```
//!
//! Thread 0 accepts and places each connection on the thread with the
//! fewest (`threads.rs`).
//!
//! Two backends drive the same sessions: io_uring (multishot accept,
//! multishot receive into a registered buffer ring, gathered sends straight
//! from event memory) and a portable epoll loop. The node probes io_uring at
//! start (on every I/O thread: a ring belongs to its thread) and falls back
//! to epoll, on every thread, on any failure, saying why once.
//!
//! With TLS settings ([`ServerConfig::tls`]) the TCP port speaks TLS only:
//! the I/O thread hands each TCP connection it accepts to a TLS
//! [`Terminator`] thread and serves the plaintext end of a socket pair
//! instead (why in `crate::tls`); the Unix socket stays plain.
//!
//! Here: the server's lifecycle (start, shutdown) and what its I/O threads
//! share with it. `listeners.rs` binds; `backend.rs` chooses the backend and
//! starts the threads, `threads.rs` spreads the connections over them,
//! `uring/` and `epoll.rs` drive the sessions; `registry.rs` keeps the open
//! connections and the totals, `counters.rs` what each connection did.

mod accept;
mod backend;
mod counters;
mod epoll;
mod listeners;
mod outbox;
mod registry;
mod reply_poll;
mod session;
mod threads;
#[cfg(target_os = "linux")]
mod uring;
mod wake;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use backend::{Backend, BackendChoice};
pub use counters::{ConnectionStats, SubscriptionStats};
pub use listeners::listen_tcp;
pub use registry::{ConnectionInfo, ConnectionTotals, SubscriptionDelivered};
pub use session::SessionConfig;

use starling_core::Bus;

use crate::budget::Budget;
use crate::frame::{ErrorCode, error_frame};
use crate::stream::Stream;
use crate::tls::{ServerTls, Terminator, TerminatorConfig, TlsPlain};

use registry::ConnectionRegistry;

/// What the TLS port tells a client that speaks plain Starling to it.
const REQUIRES_TLS: &str = "this port requires TLS: connect with tls://HOST:PORT (and --ca)";

/// How a local server is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP address to listen on (port 0 picks a free port).
    pub tcp: Option<String>,
    /// Unix socket path to listen on; an existing socket file is replaced.
    pub uds: Option<PathBuf>,
    /// The I/O backend.
    pub backend: BackendChoice,
    /// I/O threads sharing the connections; 0: one per core
    /// (`std::thread::available_parallelism`).
    pub io_threads: usize,
    /// Most connections at once; more are refused with an `ERR` frame.
    pub connections_max: usize,
    /// Per-connection protocol settings and limits.
    pub session: SessionConfig,
    /// How long shutdown waits for queued frames to be written.
    pub drain_timeout: Duration,
    /// Bytes of half-received frames the node holds for all its connections
    /// together; a connection whose frame would need more is closed with an
    /// `ERR` (limit).
    pub partial_frame_bytes_max: usize,
    /// Most subscriptions of all connections together; more are refused
    /// with an `ERR` (limit).
    pub subscriptions_max: usize,
    /// TLS for the TCP port: with it, the port speaks TLS only. The Unix
    /// socket stays plain (local; its file's permissions guard it).
    pub tls: Option<ServerTls>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            tcp: Some("127.0.0.1:7400".into()),
            uds: None,
            backend: BackendChoice::Auto,
            io_threads: 0,
            connections_max: 10_000,
            session: SessionConfig::default(),
            drain_timeout: Duration::from_secs(1),
            partial_frame_bytes_max: 64 << 20,
            subscriptions_max: 1_000_000,
            tls: None,
        }
    }
}

/// A running local server.
#[derive(Debug)]
pub struct Server {
    backend: Backend,
    tcp_addr: Option<SocketAddr>,
    uds_path: Option<PathBuf>,
    state: Arc<ServerState>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// What the I/O threads and the server's owner share: the bus, the settings,
/// the registry of connections, the stop signal and the threads' inboxes
/// and wakers.
#[derive(Debug)]
struct ServerState {
    bus: Bus,
    config: ServerConfig,
    session: Arc<SessionConfig>,
    connections: ConnectionRegistry,
    /// What the sessions' decoders hold of half-received frames.
    partial_frames: Arc<Budget>,
    /// The subscriptions of every session.
    subscriptions: Arc<Budget>,
    /// Set once, by `shutdown`. SYNC POINT (server-stop): the Release store
    /// pairs with the Acquire load each I/O loop makes every turn; its
    /// waker (in `threads`) makes it take that turn at once.
    stopping: AtomicBool,
    /// The I/O threads: their inboxes, connection counts and wakers.
    threads: threads::IoThreads,
    /// With TLS: the thread that speaks it for the TCP connections.
    terminator: Option<Terminator>,
}

impl ServerState {
    /// The session of a new connection from `peer`, whose counters are
    /// `stats`.
    fn new_session(&self, peer: Option<IpAddr>, stats: Arc<ConnectionStats>) -> session::Session {
        session::Session::new(
            &self.bus,
            self.session.clone(),
            peer,
            stats,
            self.partial_frames.clone(),
            self.subscriptions.clone(),
        )
    }

    /// A connection of I/O thread `thread` closed (or was never admitted):
    /// unregisters it and frees its place under `connections_max`.
    fn closed(&self, thread: usize, id: u64) {
        self.connections.close(id);
        self.threads.closed(thread);
    }

    /// An accepted TCP connection as the I/O thread serves it: with TLS,
    /// the plaintext end of its terminator's socket pair. Fails when the
    /// terminator cannot take it: drop the connection.
    fn tcp_stream(&self, tcp: std::net::TcpStream) -> io::Result<Stream> {
        match &self.terminator {
            Some(terminator) => {
                let plain = terminator.terminate(tcp)?;
                Ok(Stream::Tls(TlsPlain::accepted(plain)))
            }
            None => Ok(Stream::Tcp(tcp)),
        }
    }
}

/// The client's address in a connection's `remote` (`IP:PORT`; empty for a
/// Unix socket).
fn peer_ip(remote: &str) -> Option<IpAddr> {
    remote
        .parse::<SocketAddr>()
        .ok()
        .map(|address| address.ip())
}

impl Server {
    /// Binds the listeners and starts the I/O threads
    /// ([`ServerConfig::io_threads`]), each running its own loop.
    pub fn start(bus: Bus, config: ServerConfig) -> io::Result<Server> {
        let listeners = listeners::bind(&config)?;
        let tcp_addr = listeners.tcp.as_ref().map(|l| l.local_addr()).transpose()?;
        let uds_path = config.uds.clone();
        let choice = config.backend;
        let io_threads = match config.io_threads {
            0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            count => count,
        };
        let terminator = match &config.tls {
            Some(tls) => Some(Terminator::start(TerminatorConfig {
                tls: tls.clone(),
                handshake_timeout: config.session.handshake_timeout,
                // Room for connections the I/O threads turn away over
                // `connections_max`: its `ERR` saying so reaches the
                // client once its handshake is done.
                pumps_max: config.connections_max.saturating_mul(2),
                refusal: error_frame(ErrorCode::Handshake, REQUIRES_TLS),
                drain_timeout: config.drain_timeout,
            })?),
            None => None,
        };
        let state = Arc::new(ServerState {
            session: Arc::new(config.session.clone()),
            partial_frames: Arc::new(Budget::new(config.partial_frame_bytes_max)),
            subscriptions: Arc::new(Budget::new(config.subscriptions_max)),
            threads: threads::IoThreads::new(io_threads, config.connections_max),
            bus,
            config,
            connections: ConnectionRegistry::default(),
            stopping: AtomicBool::new(false),
            terminator,
        });
        let (backend, workers) = backend::start(choice, listeners, &state)?;
        Ok(Server {
            backend,
            tcp_addr,
            uds_path,
            state,
            workers: Mutex::new(workers),
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// How many I/O threads share the connections.
    pub fn io_threads(&self) -> usize {
        self.state.threads.count()
    }

    /// How many times the I/O loops were woken through their eventfd (or
    /// mio waker) so far, all threads together: by deliveries for an idle
    /// connection from another thread (another I/O thread, the mesh, an
    /// in-process publisher), connections handed to a thread, shutdown.
    /// Deliveries from a connection on the same thread never wake it.
    pub fn loop_wakes(&self) -> u64 {
        self.state.threads.wakes()
    }

    /// The TCP address listened on, with the actual port.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The Unix socket listened on.
    pub fn uds_path(&self) -> Option<&Path> {
        self.uds_path.as_deref()
    }

    /// The node-wide subscription budget ([`ServerConfig::subscriptions_max`])
    /// its connections draw on; other listeners of the node (NATS) share it.
    pub fn subscriptions(&self) -> &Arc<Budget> {
        &self.state.subscriptions
    }

    /// How many connections are open: read from a counter, without
    /// walking (or locking) the registry of connections.
    pub fn connection_count(&self) -> usize {
        self.state.connections.count()
    }

    /// The open connections.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.state.connections.snapshot()
    }

    /// Counters over every connection so far, open or closed.
    pub fn totals(&self) -> ConnectionTotals {
        let open = self.state.connections.snapshot();
        self.state.connections.totals(&open)
    }

    /// Stops accepting, tells every client the node is shutting down, writes
    /// what is queued (for up to the drain timeout), closes every connection
    /// and waits for every I/O thread (and then, with TLS, for the TLS
    /// connections' last words, for up to the drain timeout again).
    /// Idempotent; also done on drop.
    pub fn shutdown(&self) {
        self.state.stopping.store(true, Ordering::Release);
        self.state.threads.wake_all();
        let workers = std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        if !workers.is_empty() {
            for worker in workers {
                let _ = worker.join();
            }
            self.state.threads.discard_waiting();
            if let Some(path) = &self.uds_path {
                let _ = std::fs::remove_file(path);
            }
        }
        if let Some(terminator) = &self.state.terminator {
            terminator.finish();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}
