//! A node's configuration: command-line flags, `STARLING_*` environment
//! variables and a TOML file, in that order of precedence, over built-in
//! defaults.
//!
//! ```toml
//! name = "node-a"
//! listen = "127.0.0.1:7400"        # local clients over TCP; "" for none
//! uds = "/run/starling.sock"       # local clients over a Unix socket
//! http = "127.0.0.1:7402"          # /healthz, /metrics, /v1/...; "" for none
//! io_backend = "auto"              # auto | uring | epoll
//! io_threads = 0                   # I/O threads sharing the client connections; 0: one per core
//! token = "..."                    # clients must present it (no permissions: may do anything)
//! allow_anonymous = false          # needed to serve clients on a non-loopback address
//!                                  # without users, a token or client certificates
//! client_tls_cert = "node-a.pem"   # the TCP client port (and NATS) speak TLS only ...
//! client_tls_key = "node-a-key.pem"
//! client_tls_ca = "clients-ca.pem" # ... and every client must present a certificate from
//!                                  # this CA (optional)
//!
//! [[users]]                        # one table per user; clients give --user and --password
//! name = "alice"
//! password = "$argon2id$v=19$..."  # a PHC hash: `starling passwd` reads the password on stdin
//! publish = ["orders.>"]           # allow-lists of patterns; absent: everything
//! publish_deny = ["orders.us.>"]   # deny-lists, over the allow-lists
//! subscribe = ["orders.>", "inventory.*"]
//! subscribe_deny = []
//!
//! [[users]]
//! name = "billing"
//! token = "..."                    # a token user: the client gives --token
//! subscribe = ["orders.*.paid"]
//!
//! [nats]                           # NATS clients (any NATS client library)
//! listen = "127.0.0.1:4222"        # "" for none
//!
//! [cluster]                        # the mesh; on when listen or seeds is set
//! listen = "127.0.0.1:7401"        # UDP, QUIC
//! advertise = "10.0.0.5:7401"      # what peers dial; the bound address if unset
//! seeds = ["127.0.0.1:7411"]
//! name = "starling"                # nodes of other clusters are refused
//! tls_cert = "node-a.pem"          # mutual TLS (see `starling cert`) ...
//! tls_key = "node-a-key.pem"
//! tls_ca = "ca.pem"
//! insecure_dev_tls = false         # ... or, for development only, none of it
//! digest_interval_ms = 5000        # anti-entropy
//! grace_ms = 10000                 # a peer's interest outlives its link this long
//! probe_interval_ms = 1000         # membership: each node probes one member this often;
//!                                  # a dead member is declared so within ~5-8 probes
//! data_streams = 8
//! peer_queue_events = 65536
//! peer_max_stall_ms = 2000         # a full peer queue holds publishers back this long at most,
//!                                  # then the peer's events are dropped (counted) until it drains
//!
//! [limits]
//! connections_max = 10000
//! subscriptions_per_connection_max = 10000
//! pending_events_per_connection_max = 16384
//! pending_bytes_per_connection_max = 67108864
//! payload_bytes_max = 1048576
//! memory_bytes_max = 1073741824
//! http_connections_max = 256          # HTTP endpoint: more are closed at once
//! http_header_timeout_ms = 5000       # a request's head must arrive within this
//! metrics_patterns_max = 100          # /metrics: per-pattern series; the rest as "(other)"
//! handshake_timeout_ms = 5000         # a client connection must say HELLO within this
//! ping_interval_ms = 120000           # a client quiet this long is pinged ...
//! ping_stale_max = 2                  # ... and closed after this many pings unanswered
//! partial_frame_bytes_max = 67108864  # half-received frames, all client connections together
//! subscriptions_max = 1000000         # subscriptions of all client connections together
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use starling_transport::auth::{self, Permissions, SubjectRules, User, UserSecret};
use starling_transport::server::BackendChoice;

use crate::cluster::tls::TlsSource;
use crate::cluster::{ClusterConfig, DEFAULT_CLUSTER_LISTEN};

/// Default address for local clients.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
/// Default address of the HTTP endpoint.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7402";

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's name (in `HELLO`, logs and `/v1/node`).
    pub name: String,
    /// TCP address for local clients.
    pub listen: Option<String>,
    /// Unix socket for local clients.
    pub uds: Option<PathBuf>,
    /// Address of the HTTP endpoint.
    pub http: Option<String>,
    /// The I/O backend of the local server.
    pub io_backend: BackendChoice,
    /// The local server's I/O threads; 0: one per core.
    pub io_threads: usize,
    /// A token clients must present.
    pub token: Option<String>,
    /// The users clients authenticate as, with their permissions. With
    /// users (or a token), a client without valid credentials is refused.
    pub users: Vec<User>,
    /// Serve clients on a non-loopback address without users, a token or
    /// client certificates; without it such a node refuses to start.
    pub allow_anonymous: bool,
    /// TLS on the TCP client port (and the NATS port), if given.
    pub client_tls: Option<ClientTlsFiles>,
    /// TCP address for NATS clients (`starling node` listens on
    /// [`crate::nats::DEFAULT_NATS_LISTEN`] unless told otherwise; an
    /// embedded node, by default, does not).
    pub nats: Option<String>,
    /// Limits.
    pub limits: Limits,
    /// The mesh, if this node joins one.
    pub cluster: Option<ClusterConfig>,
}

/// The TLS client port's certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The node's certificate (chain), PEM: it must name what clients dial.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// The CA every client's certificate must chain to; without it,
    /// clients present none.
    pub ca: Option<PathBuf>,
}

/// Node limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most local connections.
    pub connections_max: usize,
    /// Most subscriptions per connection.
    pub subscriptions_per_connection_max: usize,
    /// Events queued for one connection before its `block` subscriptions
    /// hold their publishers back (and its drop subscriptions drop).
    pub pending_events_per_connection_max: usize,
    /// Bytes of event memory one connection's queued events may pin (whole
    /// 64 KiB segments) before the same happens: what keeps a stuck client
    /// from holding the node's memory.
    pub pending_bytes_per_connection_max: usize,
    /// Largest payload.
    pub payload_bytes_max: usize,
    /// Event memory budget.
    pub memory_bytes_max: usize,
    /// Most connections to the HTTP endpoint at once; more are closed at
    /// once.
    pub http_connections_max: usize,
    /// Longest wait for an HTTP request's head; a slower client is cut.
    pub http_header_timeout_ms: u64,
    /// Longest wait for a local client's `HELLO`; then its connection is
    /// closed and its slot freed.
    pub handshake_timeout_ms: u64,
    /// A local client the node has heard nothing from for this long is sent
    /// a `PING`.
    pub ping_interval_ms: u64,
    /// Unanswered pings after which a local client's connection is stale and
    /// closed.
    pub ping_stale_max: u32,
    /// (pattern, queue group) pairs with `/metrics` series of their own;
    /// later ones are added up in one series (pattern "(other)").
    pub metrics_patterns_max: usize,
    /// Bytes of half-received frames the node holds for all its local
    /// clients together; a client whose frame would need more is closed
    /// with an `ERR` (limit).
    pub partial_frame_bytes_max: usize,
    /// Most subscriptions of all clients together, of both protocols; more
    /// are refused with an `ERR` (limit; NATS: `-ERR 'maximum subscriptions
    /// exceeded'`).
    pub subscriptions_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_max: 10_000,
            subscriptions_per_connection_max: 10_000,
            pending_events_per_connection_max: 16_384,
            pending_bytes_per_connection_max: 64 << 20,
            payload_bytes_max: 1 << 20,
            memory_bytes_max: 1 << 30,
            http_connections_max: 256,
            http_header_timeout_ms: 5_000,
            metrics_patterns_max: 100,
            handshake_timeout_ms: 5_000,
            ping_interval_ms: 120_000,
            ping_stale_max: 2,
            partial_frame_bytes_max: 64 << 20,
            subscriptions_max: 1_000_000,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: default_name(),
            listen: Some(DEFAULT_LISTEN.into()),
            uds: None,
            http: Some(DEFAULT_HTTP.into()),
            io_backend: BackendChoice::Auto,
            io_threads: 0,
            token: None,
            users: Vec::new(),
            allow_anonymous: false,
            client_tls: None,
            nats: None,
            limits: Limits::default(),
            cluster: None,
        }
    }
}

/// The TOML file's shape; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    name: Option<String>,
    listen: Option<String>,
    uds: Option<PathBuf>,
    http: Option<String>,
    io_backend: Option<String>,
    io_threads: Option<usize>,
    token: Option<String>,
    allow_anonymous: Option<bool>,
    client_tls_cert: Option<PathBuf>,
    client_tls_key: Option<PathBuf>,
    client_tls_ca: Option<PathBuf>,
    users: Vec<FileUser>,
    limits: Option<Limits>,
    cluster: Option<FileCluster>,
    nats: Option<FileNats>,
}

/// One `[[users]]` table of the TOML file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    name: String,
    password: Option<String>,
    token: Option<String>,
    publish: Option<Vec<String>>,
    #[serde(default)]
    publish_deny: Vec<String>,
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    subscribe_deny: Vec<String>,
}

/// The TOML file's `[nats]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileNats {
    listen: Option<String>,
}

/// The TOML file's `[cluster]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileCluster {
    listen: Option<String>,
    advertise: Option<String>,
    seeds: Vec<String>,
    name: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    insecure_dev_tls: Option<bool>,
    digest_interval_ms: Option<u64>,
    grace_ms: Option<u64>,
    probe_interval_ms: Option<u64>,
    data_streams: Option<usize>,
    peer_queue_events: Option<usize>,
    peer_max_stall_ms: Option<u64>,
}

/// Values given on the command line or in the environment (clap merges the
/// two, flags first); `None` means "not given".
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--name` / `STARLING_NAME`.
    pub name: Option<String>,
    /// `--listen` / `STARLING_LISTEN`.
    pub listen: Option<String>,
    /// `--uds` / `STARLING_UDS`.
    pub uds: Option<PathBuf>,
    /// `--http` / `STARLING_HTTP`.
    pub http: Option<String>,
    /// `--io-backend` / `STARLING_IO_BACKEND`.
    pub io_backend: Option<String>,
    /// `--io-threads` / `STARLING_IO_THREADS`.
    pub io_threads: Option<usize>,
    /// `--token` / `STARLING_TOKEN`.
    pub token: Option<String>,
    /// `--allow-anonymous` / `STARLING_ALLOW_ANONYMOUS`.
    pub allow_anonymous: bool,
    /// `--nats-listen` / `STARLING_NATS_LISTEN`.
    pub nats_listen: Option<String>,
    /// `--cluster-listen` / `STARLING_CLUSTER_LISTEN`.
    pub cluster_listen: Option<String>,
    /// `--cluster-advertise` / `STARLING_CLUSTER_ADVERTISE`.
    pub cluster_advertise: Option<String>,
    /// `--seed` (repeatable) / `STARLING_SEEDS` (comma-separated).
    pub seeds: Vec<String>,
    /// `--cluster-name` / `STARLING_CLUSTER_NAME`.
    pub cluster_name: Option<String>,
    /// `--tls-cert` / `STARLING_TLS_CERT`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key` / `STARLING_TLS_KEY`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-ca` / `STARLING_TLS_CA`.
    pub tls_ca: Option<PathBuf>,
    /// `--insecure-dev-tls` / `STARLING_INSECURE_DEV_TLS`.
    pub insecure_dev_tls: bool,
    /// `--client-tls-cert` / `STARLING_CLIENT_TLS_CERT`.
    pub client_tls_cert: Option<PathBuf>,
    /// `--client-tls-key` / `STARLING_CLIENT_TLS_KEY`.
    pub client_tls_key: Option<PathBuf>,
    /// `--client-tls-ca` / `STARLING_CLIENT_TLS_CA`.
    pub client_tls_ca: Option<PathBuf>,
}

/// Why a configuration could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid configuration in {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// An I/O backend name other than auto, uring or epoll.
    #[error("unknown I/O backend '{0}': use auto, uring or epoll")]
    Backend(String),
    /// The mesh settings do not fit together.
    #[error("{0}")]
    Cluster(String),
    /// A `[[users]]` table is wrong.
    #[error("[[users]]: {0}")]
    Users(String),
    /// The client TLS settings do not fit together.
    #[error("{0}")]
    ClientTls(String),
}

impl NodeConfig {
    /// Builds the configuration: `overrides` over the file at `path` (if
    /// any) over the defaults. An empty `listen`, `uds` or `http` turns that
    /// listener off.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<NodeConfig, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|error| ConfigError::Parse {
                    path: path.to_owned(),
                    message: error.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let cluster = cluster_config(&overrides, file.cluster.unwrap_or_default())?;
        let client_tls = client_tls(
            overrides.client_tls_cert.or(file.client_tls_cert),
            overrides.client_tls_key.or(file.client_tls_key),
            overrides.client_tls_ca.or(file.client_tls_ca),
        )?;
        let users = users(file.users)?;
        let defaults = NodeConfig::default();
        let io_backend = match overrides.io_backend.or(file.io_backend).as_deref() {
            None | Some("auto") => BackendChoice::Auto,
            Some("uring") | Some("io_uring") => BackendChoice::Uring,
            Some("epoll") => BackendChoice::Epoll,
            Some(other) => return Err(ConfigError::Backend(other.to_owned())),
        };
        Ok(NodeConfig {
            name: overrides.name.or(file.name).unwrap_or(defaults.name),
            listen: non_empty(overrides.listen.or(file.listen).or(defaults.listen)),
            uds: overrides
                .uds
                .or(file.uds)
                .filter(|path| !path.as_os_str().is_empty()),
            http: non_empty(overrides.http.or(file.http).or(defaults.http)),
            io_backend,
            io_threads: overrides
                .io_threads
                .or(file.io_threads)
                .unwrap_or(defaults.io_threads),
            token: non_empty(overrides.token.or(file.token)),
            users,
            allow_anonymous: overrides.allow_anonymous || file.allow_anonymous.unwrap_or(false),
            client_tls,
            nats: non_empty(
                overrides
                    .nats_listen
                    .or(file.nats.and_then(|nats| nats.listen))
                    .or(Some(crate::nats::DEFAULT_NATS_LISTEN.into())),
            ),
            limits: file.limits.unwrap_or_default(),
            cluster,
        })
        .map(|mut config| {
            if let Some(cluster) = &mut config.cluster {
                cluster.node_name = config.name.clone();
            }
            config
        })
    }
}

/// The client port's TLS files: a certificate and its key, or neither; a
/// client CA only with them.
fn client_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<ClientTlsFiles>, ConfigError> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), ca) => Ok(Some(ClientTlsFiles { cert, key, ca })),
        (cert, _, _) => Err(ConfigError::ClientTls(format!(
            "TLS on the client port needs --client-tls-cert and --client-tls-key together \
             (--client-tls-ca only with them): {} missing",
            if cert.is_none() {
                "--client-tls-cert"
            } else {
                "--client-tls-key"
            }
        ))),
    }
}

/// The `[[users]]` tables, checked: unique non-empty names, a password
/// hash or a token (not both), valid patterns.
fn users(tables: Vec<FileUser>) -> Result<Vec<User>, ConfigError> {
    let mut names = std::collections::HashSet::new();
    tables
        .into_iter()
        .map(|table| {
            let name = table.name;
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(ConfigError::Users(format!(
                    "user name '{name}' is empty or given twice"
                )));
            }
            let secret = match (table.password, table.token) {
                (Some(hash), None) => {
                    auth::check_password_hash(&hash)
                        .map_err(|error| ConfigError::Users(format!("user '{name}': {error}")))?;
                    UserSecret::PasswordHash(hash)
                }
                (None, Some(token)) if !token.is_empty() => UserSecret::Token(token),
                _ => {
                    return Err(ConfigError::Users(format!(
                        "user '{name}' needs either password (a hash from `starling passwd`) or \
                         a non-empty token"
                    )));
                }
            };
            let permissions = Permissions {
                publish: SubjectRules {
                    allow: table.publish,
                    deny: table.publish_deny,
                },
                subscribe: SubjectRules {
                    allow: table.subscribe,
                    deny: table.subscribe_deny,
                },
            };
            permissions
                .validate()
                .map_err(|error| ConfigError::Users(format!("user '{name}': {error}")))?;
            Ok(User {
                name,
                secret,
                permissions,
            })
        })
        .collect()
}

/// The mesh settings, if the node joins a mesh: flags over the file's
/// `[cluster]` table over the defaults.
fn cluster_config(
    overrides: &Overrides,
    file: FileCluster,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let listen = non_empty(overrides.cluster_listen.clone().or(file.listen));
    let seeds: Vec<String> = if overrides.seeds.is_empty() {
        file.seeds
    } else {
        overrides.seeds.clone()
    };
    let seeds: Vec<String> = seeds.into_iter().filter(|seed| !seed.is_empty()).collect();
    if listen.is_none() && seeds.is_empty() {
        return Ok(None);
    }
    let advertise = non_empty(overrides.cluster_advertise.clone().or(file.advertise));
    for seed in &seeds {
        check_host_port("--seed", seed)?;
    }
    if let Some(advertise) = &advertise {
        check_host_port("--cluster-advertise", advertise)?;
    } else if let Some(listen) = &listen {
        // Peers dial what a node advertises; 0.0.0.0 would send them to
        // themselves.
        let every_interface = listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|address| address.ip().is_unspecified());
        if every_interface {
            return Err(ConfigError::Cluster(format!(
                "--cluster-listen {listen} is every interface, which peers cannot dial: give \
                 --cluster-advertise HOST:PORT, the name or address they reach this node at"
            )));
        }
    }
    let insecure = overrides.insecure_dev_tls || file.insecure_dev_tls.unwrap_or(false);
    let files = (
        overrides.tls_cert.clone().or(file.tls_cert),
        overrides.tls_key.clone().or(file.tls_key),
        overrides.tls_ca.clone().or(file.tls_ca),
    );
    let tls = match (files, insecure) {
        ((None, None, None), true) => TlsSource::InsecureDev,
        ((Some(cert), Some(key), Some(ca)), false) => TlsSource::Files { cert, key, ca },
        ((None, None, None), false) => {
            return Err(ConfigError::Cluster(
                "the mesh needs TLS: give --tls-cert, --tls-key and --tls-ca (make them with \
                 `starling cert ca` and `starling cert node NAME`), or, for development only, \
                 --insecure-dev-tls"
                    .into(),
            ));
        }
        (_, true) => {
            return Err(ConfigError::Cluster(
                "--insecure-dev-tls and certificate files exclude each other: choose one".into(),
            ));
        }
        ((cert, key, ca), false) => {
            let missing: Vec<&str> = [
                ("--tls-cert", cert.is_none()),
                ("--tls-key", key.is_none()),
                ("--tls-ca", ca.is_none()),
            ]
            .into_iter()
            .filter_map(|(flag, missing)| missing.then_some(flag))
            .collect();
            return Err(ConfigError::Cluster(format!(
                "mutual TLS needs a certificate, its key and the cluster CA: {} missing",
                missing.join(", ")
            )));
        }
    };
    // One list of seeds for every node of a cluster (as in a compose file
    // or a StatefulSet) names each node too: a node does not dial itself.
    let seeds: Vec<String> = seeds
        .into_iter()
        .filter(|seed| Some(seed) != advertise.as_ref())
        .collect();
    let defaults = ClusterConfig::default();
    let mut interest = defaults.interest;
    if let Some(ms) = file.digest_interval_ms {
        interest.digest_interval = std::time::Duration::from_millis(ms.max(1));
    }
    if let Some(ms) = file.grace_ms {
        interest.withdraw_after = std::time::Duration::from_millis(ms);
    }
    let mut membership = defaults.membership.clone();
    if let Some(ms) = file.probe_interval_ms {
        if ms < 10 {
            return Err(ConfigError::Cluster(format!(
                "probe_interval_ms = {ms}: at least 10 ms (probes would flood the links)"
            )));
        }
        membership = membership.with_probe_period(std::time::Duration::from_millis(ms));
    }
    Ok(Some(ClusterConfig {
        cluster_name: overrides
            .cluster_name
            .clone()
            .or(file.name)
            .unwrap_or(defaults.cluster_name.clone()),
        listen: listen.unwrap_or_else(|| DEFAULT_CLUSTER_LISTEN.into()),
        advertise,
        seeds,
        tls,
        interest,
        membership,
        data_streams: file
            .data_streams
            .unwrap_or(defaults.data_streams)
            .clamp(1, 16),
        peer_queue_events: file
            .peer_queue_events
            .unwrap_or(defaults.peer_queue_events)
            .max(1),
        peer_max_stall: file
            .peer_max_stall_ms
            .map_or(defaults.peer_max_stall, std::time::Duration::from_millis),
        ..defaults
    }))
}

/// Checks that `value` is `HOST:PORT`, HOST a name or an address (IPv6 in
/// brackets). Names are resolved later, at every dial: one that does not
/// resolve yet is not an error here.
fn check_host_port(flag: &str, value: &str) -> Result<(), ConfigError> {
    let why = match value.rsplit_once(':') {
        None => Some("no port"),
        Some((_, port)) if !port.parse::<u16>().is_ok_and(|port| port != 0) => {
            Some("the port must be a number from 1 to 65535")
        }
        Some(("", _)) => Some("no host"),
        Some((host, _)) => match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => (v6.parse::<std::net::Ipv6Addr>().is_err())
                .then_some("not an IPv6 address in brackets"),
            None if host.contains(':') => Some("an IPv6 address needs brackets"),
            None => (!host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
            .then_some("the host is neither a name nor an address"),
        },
    };
    match why {
        None => Ok(()),
        Some(why) => Err(ConfigError::Cluster(format!(
            "{flag} '{value}': {why}; give HOST:PORT, e.g. node-a:7401 or 10.0.0.5:7401"
        ))),
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        format!("starling-{}", std::process::id())
    } else {
        host
    }
}

#[cfg(test)]
mod tests;
