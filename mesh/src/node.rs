//! [`Node`]: a bus, the local server in front of it, the NATS listener, and
//! the HTTP endpoint, started together and stopped together. The `starling
//! node` command runs one; an application can embed one and use its bus
//! directly.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use starling_core::{Bus, BusConfig, EventLimits};
use starling_transport::auth::{Authentication, Authenticator, User};
use starling_transport::budget::Budget;
use starling_transport::server::{Backend, Server, ServerConfig, SessionConfig};
use starling_transport::tls::{ServerTls, TlsError};

use crate::cluster::{Cluster, ClusterError};
use crate::config::NodeConfig;
use crate::http::{HttpLimits, HttpServer};
use crate::nats::{NatsListenerConfig, NatsServer};
pub use crate::node_state::NodeState;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listener or thread could not be set up.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The mesh could not start.
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    /// The client port's TLS files could not be used.
    #[error("client TLS: {0}")]
    ClientTls(#[from] TlsError),
    /// Clients could reach the node from other hosts, and nothing would
    /// say who they are.
    #[error(
        "refusing to serve clients on {0} without users or a token: anyone who can reach it \
         could publish and subscribe to everything. Add [[users]] (see `starling passwd`) or a \
         token, require client certificates (--client-tls-ca), listen on a loopback address, or \
         give --allow-anonymous if that is what you want"
    )]
    Anonymous(String),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    state: Arc<NodeState>,
    http: Option<HttpServer>,
    /// The users in force, shared by both client protocols' sessions.
    auth: Arc<Authentication>,
}

impl Node {
    /// Starts a node: binds every listener first, so that an address in use
    /// is reported before anything runs.
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let authenticator = Authenticator::new(config.token.clone(), config.users.clone());
        check_exposure(&config, &authenticator)?;
        let auth = Arc::new(Authentication::new(authenticator));
        let client_tls = match &config.client_tls {
            Some(files) => Some(ServerTls::from_files(
                &files.cert,
                &files.key,
                files.ca.as_deref(),
            )?),
            None => None,
        };
        let limits = EventLimits {
            payload_bytes_max: config.limits.payload_bytes_max,
            ..EventLimits::default()
        };
        let bus = Bus::new(BusConfig {
            limits,
            memory_bytes_max: config.limits.memory_bytes_max,
            ..BusConfig::default()
        });
        let listens = config.listen.is_some() || config.uds.is_some();
        let server = listens.then(|| {
            Server::start(
                bus.clone(),
                ServerConfig {
                    tcp: config.listen.clone(),
                    uds: config.uds.clone(),
                    backend: config.io_backend,
                    io_threads: config.io_threads,
                    connections_max: config.limits.connections_max,
                    partial_frame_bytes_max: config.limits.partial_frame_bytes_max,
                    subscriptions_max: config.limits.subscriptions_max,
                    tls: client_tls.clone(),
                    session: SessionConfig {
                        server_name: config.name.clone(),
                        auth: auth.clone(),
                        subscriptions_max: config.limits.subscriptions_per_connection_max,
                        body_bytes_max: limits.archive_bytes_max(),
                        pending_events_max: config.limits.pending_events_per_connection_max,
                        pending_bytes_max: config.limits.pending_bytes_per_connection_max,
                        handshake_timeout: Duration::from_millis(
                            config.limits.handshake_timeout_ms,
                        ),
                        ping_interval: Duration::from_millis(config.limits.ping_interval_ms),
                        ping_stale_max: config.limits.ping_stale_max,
                        ..SessionConfig::default()
                    },
                    ..ServerConfig::default()
                },
            )
        });
        let server = server.transpose()?;
        // One subscription limit for the clients of both protocols.
        let node_subscriptions = match &server {
            Some(server) => server.subscriptions().clone(),
            None => Arc::new(Budget::new(config.limits.subscriptions_max)),
        };
        let nats = match &config.nats {
            Some(listen) => Some(NatsServer::start(
                bus.clone(),
                NatsListenerConfig {
                    listen: listen.clone(),
                    server_name: config.name.clone(),
                    auth: auth.clone(),
                    max_payload: limits.payload_bytes_max,
                    connections_max: config.limits.connections_max,
                    subscriptions_max: config.limits.subscriptions_per_connection_max,
                    node_subscriptions,
                    pending_events_max: config.limits.pending_events_per_connection_max,
                    tls: client_tls,
                    ..NatsListenerConfig::default()
                },
            )?),
            None => None,
        };
        let cluster = match &config.cluster {
            Some(cluster) => Some(Cluster::start(bus.clone(), cluster.clone())?),
            None => None,
        };
        let state = Arc::new(NodeState {
            config,
            bus,
            server,
            cluster,
            nats,
            started: Instant::now(),
            started_unix_nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        });
        let http = match &state.config.http {
            Some(address) => {
                let limits = HttpLimits {
                    connections_max: state.config.limits.http_connections_max,
                    header_read_timeout: Duration::from_millis(
                        state.config.limits.http_header_timeout_ms,
                    ),
                    ..HttpLimits::default()
                };
                Some(HttpServer::start(address, limits, state.clone())?)
            }
            None => None,
        };
        match &state.server {
            Some(server) => {
                tracing::info!(name = %state.config.name, backend = %server.backend(), "node started");
            }
            None => {
                tracing::info!(name = %state.config.name, "node started, without a local server")
            }
        }
        Ok(Node { state, http, auth })
    }

    /// Puts new users and shared token in force (`starling node` does this
    /// on SIGHUP): new connections use them at once; every open connection
    /// of either protocol whose user was removed, or whose password, token
    /// or permissions changed, is closed, telling it why (within a second
    /// for an idle Starling connection, at once for a NATS one). Refused,
    /// with the old users kept, if the node would then serve other hosts
    /// without credentials (as at start).
    pub fn reload_users(&self, token: Option<String>, users: Vec<User>) -> Result<(), NodeError> {
        let authenticator = Authenticator::new(token, users);
        check_exposure(&self.state.config, &authenticator)?;
        self.auth.replace(authenticator);
        if let Some(nats) = &self.state.nats {
            nats.users_reloaded();
        }
        Ok(())
    }

    /// The node's bus: publish, subscribe and request in process, as part of
    /// the node.
    pub fn bus(&self) -> &Bus {
        &self.state.bus
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.state.config.name
    }

    /// The TCP address local clients connect to.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.state.server.as_ref()?.tcp_addr()
    }

    /// The Unix socket local clients connect to.
    pub fn uds_path(&self) -> Option<&Path> {
        self.state.server.as_ref()?.uds_path()
    }

    /// The HTTP endpoint's address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::addr)
    }

    /// The address NATS clients connect to.
    pub fn nats_addr(&self) -> Option<SocketAddr> {
        self.state.nats.as_ref().map(NatsServer::addr)
    }

    /// Lame-duck mode, as nats-server's: the NATS listener stops accepting
    /// and tells its clients (an INFO with `ldm`) to move to another node
    /// before this one stops.
    pub fn enter_lame_duck(&self) {
        if let Some(nats) = &self.state.nats {
            nats.enter_lame_duck();
        }
    }

    /// The node's part of the mesh, if it joined one.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.state.cluster.as_ref()
    }

    /// The local server's I/O backend; `None` without a local server.
    pub fn backend(&self) -> Option<&Backend> {
        self.state.server.as_ref().map(Server::backend)
    }

    /// Stops: the HTTP endpoint, then the local server (clients are told and
    /// what is queued for them is written, within the drain time).
    /// Also done on drop.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(http) = self.http.take() {
            http.shutdown();
        }
        // NATS clients get what is queued for them, within a grace period.
        if let Some(nats) = &self.state.nats {
            nats.shutdown(Duration::from_secs(2));
        }
        if let Some(server) = &self.state.server {
            server.shutdown();
        }
        tracing::info!(name = %self.state.config.name, "node stopped");
    }
}

/// Refuses a node that would serve clients on a non-loopback address
/// without credentials, unless told to allow anonymous clients. Mandatory
/// client certificates are credentials, as users or a token are; TLS
/// without them only encrypts.
fn check_exposure(config: &NodeConfig, authenticator: &Authenticator) -> Result<(), NodeError> {
    let certified = config
        .client_tls
        .as_ref()
        .is_some_and(|tls| tls.ca.is_some());
    if authenticator.required() || certified || config.allow_anonymous {
        return Ok(());
    }
    let exposed = [&config.listen, &config.nats]
        .into_iter()
        .flatten()
        .find(|address| !is_loopback(address));
    match exposed {
        Some(address) => Err(NodeError::Anonymous(address.clone())),
        None => Ok(()),
    }
}

/// Is `address` (`HOST:PORT`) reachable only from this host? A name other
/// than `localhost` is taken as reachable from elsewhere.
fn is_loopback(address: &str) -> bool {
    match address.parse::<SocketAddr>() {
        Ok(address) => address.ip().is_loopback(),
        Err(_) => address
            .rsplit_once(':')
            .is_some_and(|(host, _)| host == "localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exposed_node_without_credentials_refuses_to_start() {
        for (listen, nats) in [("0.0.0.0:0", "127.0.0.1:0"), ("127.0.0.1:0", "[::]:0")] {
            let config = NodeConfig {
                listen: Some(listen.into()),
                nats: Some(nats.into()),
                http: None,
                ..NodeConfig::default()
            };
            let error = Node::start(config.clone()).unwrap_err();
            assert!(matches!(error, NodeError::Anonymous(_)), "{error}");
            assert!(error.to_string().contains("--allow-anonymous"), "{error}");
            let opted_in = NodeConfig {
                allow_anonymous: true,
                ..config.clone()
            };
            Node::start(opted_in).unwrap().shutdown();
            let with_token = NodeConfig {
                token: Some("t".into()),
                ..config
            };
            Node::start(with_token).unwrap().shutdown();
        }
        assert!(is_loopback("localhost:7400"));
        assert!(is_loopback("[::1]:7400"));
        assert!(!is_loopback("node-a:7400"));
    }

    #[test]
    fn mandatory_client_certificates_are_credentials_tls_alone_is_not() {
        let dir = std::env::temp_dir().join(format!(
            "starling-node-tls-{:016x}",
            starling_core::random_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = crate::cluster::tls::write_ca(&dir).unwrap();
        let pair = crate::cluster::tls::write_node_certificate(&dir, "n", &[]).unwrap();
        let exposed = |ca: Option<&Path>| NodeConfig {
            listen: Some("0.0.0.0:0".into()),
            nats: None,
            http: None,
            client_tls: Some(crate::config::ClientTlsFiles {
                cert: pair.cert.clone(),
                key: pair.key.clone(),
                ca: ca.map(Path::to_owned),
            }),
            ..NodeConfig::default()
        };
        let error = Node::start(exposed(None)).unwrap_err();
        assert!(matches!(error, NodeError::Anonymous(_)), "{error}");
        assert!(error.to_string().contains("--client-tls-ca"), "{error}");
        Node::start(exposed(Some(&ca.cert))).unwrap().shutdown();
        // They hold for the NATS port too.
        let with_nats = NodeConfig {
            nats: Some("0.0.0.0:0".into()),
            ..exposed(Some(&ca.cert))
        };
        Node::start(with_nats).unwrap().shutdown();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
