//! The `starling` command line. Every flag can also come from a `STARLING_*`
//! environment variable; `starling node` also reads a TOML file (`--config`).

mod cert;
mod client;
mod demo;
mod health;
mod node;
mod passwd;
mod process;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use starling_transport::url::DEFAULT_URL;

/// Starling: an event mesh. Run a node, publish, subscribe, request, reply.
#[derive(Debug, Parser)]
#[command(name = "starling", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a node: a local server for clients (TCP, Unix socket) and an
    /// HTTP endpoint.
    // Boxed: its many flags make it much larger than the other variants.
    Node(Box<NodeArgs>),
    /// Publishes events.
    Pub(PubArgs),
    /// Subscribes and prints one line per event: the subject, a space, the
    /// payload as UTF-8.
    Sub(SubArgs),
    /// Sends a request and prints the reply's payload.
    Req(ReqArgs),
    /// Answers each request on a subject with its own payload.
    Reply(ReplyArgs),
    /// Makes a development CA and node certificates (for mesh links, and
    /// for the TLS client port).
    Cert(CertArgs),
    /// Reads a password on standard input and prints its argon2id hash (a
    /// PHC string) for a `[[users]]` table's `password`.
    Passwd,
    /// Exits 0 when a node's /healthz answers, 1 otherwise (for container
    /// health checks and probes).
    Health(HealthArgs),
    /// Runs a food-ordering system on a 3-node mesh in this process, prints
    /// a live summary, and exits 0 if every order was processed exactly once.
    Demo(DemoArgs),
}

/// `starling demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many seconds orders are published.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Orders per second.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
}

/// `starling health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The node's HTTP endpoint, HOST:PORT or http://HOST:PORT; an address
    /// on every interface (0.0.0.0) is checked on loopback.
    #[arg(long, env = "STARLING_HTTP", default_value = crate::config::DEFAULT_HTTP)]
    http: String,
    /// How long the check may take, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout: u64,
}

/// `starling cert`.
#[derive(Debug, Args)]
pub struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Writes a new CA: DIR/ca.pem and DIR/ca-key.pem.
    Ca {
        /// Where to write.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
    /// Writes a certificate for node NAME signed by the CA in DIR:
    /// DIR/NAME.pem and DIR/NAME-key.pem.
    Node {
        /// The node's name (as given to `starling node --name`).
        name: String,
        /// Where the CA is, and where to write.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Also valid for these DNS names and IP addresses, comma-separated:
        /// where clients dial the node's TLS client port (tls://HOST:PORT
        /// checks HOST against them).
        #[arg(long, value_delimiter = ',', value_name = "HOST,...")]
        san: Vec<String>,
    },
    /// Writes the CA if DIR has none, and a certificate for each NAME that
    /// has none; keeps every file that exists, so it may run at every start
    /// (as a one-shot container before the nodes).
    Cluster {
        /// The nodes' names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Where to write.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

/// `starling node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// A TOML configuration file.
    #[arg(long, env = "STARLING_CONFIG")]
    config: Option<PathBuf>,
    /// The node's name [default: the host name].
    #[arg(long, env = "STARLING_NAME")]
    name: Option<String>,
    /// TCP address for local clients; "" for none [default: 127.0.0.1:7400].
    #[arg(long, env = "STARLING_LISTEN")]
    listen: Option<String>,
    /// Unix socket path for local clients.
    #[arg(long, env = "STARLING_UDS")]
    uds: Option<PathBuf>,
    /// Address of the HTTP endpoint; "" for none [default: 127.0.0.1:7402].
    #[arg(long, env = "STARLING_HTTP")]
    http: Option<String>,
    /// The local server's I/O backend: auto, uring or epoll [default: auto].
    #[arg(long, env = "STARLING_IO_BACKEND")]
    io_backend: Option<String>,
    /// I/O threads sharing the local server's connections (each connection
    /// stays on one); 0: one per core [default: 0].
    #[arg(long, env = "STARLING_IO_THREADS", value_name = "N")]
    io_threads: Option<usize>,
    /// A token clients must present.
    #[arg(long, env = "STARLING_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve clients on a non-loopback address without users or a token
    /// (anyone who reaches it may do anything); without it, such a node
    /// refuses to start.
    #[arg(long, env = "STARLING_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
    /// TCP address for NATS clients (any NATS client library); "" for none
    /// [default: 127.0.0.1:4222].
    #[arg(long, env = "STARLING_NATS_LISTEN")]
    nats_listen: Option<String>,
    /// UDP address of the cluster port (QUIC) [default, with --seed: 127.0.0.1:7401].
    #[arg(long, env = "STARLING_CLUSTER_LISTEN")]
    cluster_listen: Option<String>,
    /// The address peers dial this node at [default: the bound address].
    #[arg(long, env = "STARLING_CLUSTER_ADVERTISE")]
    cluster_advertise: Option<String>,
    /// A node to join through, HOST:PORT; repeatable.
    #[arg(long = "seed", env = "STARLING_SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    /// The cluster's name; nodes of other clusters are refused [default: starling].
    #[arg(long, env = "STARLING_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// This node's certificate for mesh links (PEM).
    #[arg(long, env = "STARLING_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "STARLING_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The cluster CA every peer's certificate must chain to (PEM).
    #[arg(long, env = "STARLING_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Development only: encrypt mesh links with throwaway certificates and
    /// accept any peer, authenticating nobody.
    #[arg(long, env = "STARLING_INSECURE_DEV_TLS")]
    insecure_dev_tls: bool,
    /// Serve the TCP client port (and the NATS port) with TLS only, with
    /// this certificate (PEM; `starling cert node NAME --san HOST` makes
    /// one); the Unix socket stays plain.
    #[arg(long, env = "STARLING_CLIENT_TLS_CERT")]
    client_tls_cert: Option<PathBuf>,
    /// The client port certificate's private key (PEM).
    #[arg(long, env = "STARLING_CLIENT_TLS_KEY")]
    client_tls_key: Option<PathBuf>,
    /// Require of every TLS client a certificate signed by this CA (PEM):
    /// authentication, as users or a token are.
    #[arg(long, env = "STARLING_CLIENT_TLS_CA")]
    client_tls_ca: Option<PathBuf>,
}

/// Where a client command connects.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The node: tcp://HOST:PORT, tls://HOST:PORT (with --ca) or
    /// unix:///path; tcp://USER:PASSWORD@HOST:PORT gives credentials too.
    #[arg(long, env = "STARLING_URL", default_value = DEFAULT_URL)]
    server: String,
    /// For tls:// URLs: the CA that signed the node's certificate (PEM).
    #[arg(long, env = "STARLING_CA")]
    ca: Option<PathBuf>,
    /// For a node that requires client certificates: this client's
    /// certificate (PEM), signed by the node's client CA.
    #[arg(long, env = "STARLING_CLIENT_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "STARLING_CLIENT_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The user to connect as (a `[[users]]` name of the node).
    #[arg(long, env = "STARLING_USER", default_value = "")]
    user: String,
    /// The user's password.
    #[arg(
        long,
        env = "STARLING_PASSWORD",
        hide_env_values = true,
        default_value = ""
    )]
    password: String,
    /// The node's token, if it requires one.
    #[arg(
        long,
        env = "STARLING_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
}

/// `starling pub`.
#[derive(Debug, Args)]
pub struct PubArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The subject.
    subject: String,
    /// The payload [default: empty, or --size bytes].
    payload: Option<String>,
    /// How many events to publish.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Payload size in bytes, filled with a repeating pattern.
    #[arg(long)]
    size: Option<usize>,
    /// A header, NAME=VALUE; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
}

/// `starling sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The subject pattern (`*` one token, `>` the rest).
    pattern: String,
    /// Join this queue group.
    #[arg(long)]
    queue: Option<String>,
    /// Exit (0) after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds in all (exit 1 if --count was not reached).
    #[arg(long)]
    timeout: Option<f64>,
    /// What the node does when this subscriber cannot keep up: `block`
    /// holds the publishers back (lossless, up to --max-stall per episode,
    /// then drops and counts until it catches up); `drop-newest` and
    /// `drop-oldest` never hold anyone back.
    #[arg(long, default_value = "block", value_parser = ["block", "drop-newest", "drop-oldest"])]
    policy: String,
    /// Longest a `block` subscriber holds its publishers back per episode,
    /// in milliseconds.
    #[arg(long, default_value_t = starling_core::bus::DEFAULT_MAX_STALL.as_millis() as u64)]
    max_stall: u64,
}

/// `starling req`.
#[derive(Debug, Args)]
pub struct ReqArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The subject.
    subject: String,
    /// The payload.
    payload: Option<String>,
    /// How long to wait for the reply, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout: u64,
}

/// `starling reply`.
#[derive(Debug, Args)]
pub struct ReplyArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The subject (or pattern) to answer on.
    subject: String,
    /// Join this queue group.
    #[arg(long)]
    queue: Option<String>,
    /// Exit (0) after answering this many requests.
    #[arg(long)]
    count: Option<u64>,
}

/// Runs the command line; returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's report is its output; its nodes' routine logs would bury it.
    let default_level = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    init_logging(default_level);
    process::huge_pages_logged();
    let result = match cli.command {
        Command::Node(args) => node::run(*args),
        Command::Pub(args) => client::publish(args),
        Command::Sub(args) => client::subscribe_command(args),
        Command::Req(args) => client::request(args),
        Command::Reply(args) => client::reply(args),
        Command::Cert(args) => cert::run(args),
        Command::Passwd => passwd::run(),
        Command::Health(args) => health::run(args),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to standard error, filtered by `RUST_LOG` (default:
/// `default_level`).
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
