//! `starling node`: runs a node until SIGINT or SIGTERM, then drains and
//! stops. SIGUSR2 puts it in lame-duck mode first, as nats-server: NATS
//! clients are told to move, and the node stops after a grace period. A
//! node whose name the mesh refuses (a live member holds it) stops too, and
//! exits non-zero. SIGHUP reloads the users and token from `--config` (see
//! [`Reload`]).

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::NodeArgs;
use crate::config::{NodeConfig, Overrides};
use crate::node::Node;

pub(super) fn run(args: NodeArgs) -> Result<ExitCode, Box<dyn Error>> {
    let overrides = Overrides {
        name: args.name,
        listen: args.listen,
        uds: args.uds,
        http: args.http,
        io_backend: args.io_backend,
        io_threads: args.io_threads,
        token: args.token,
        allow_anonymous: args.allow_anonymous,
        nats_listen: args.nats_listen,
        cluster_listen: args.cluster_listen,
        cluster_advertise: args.cluster_advertise,
        seeds: args.seeds,
        cluster_name: args.cluster_name,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_ca: args.tls_ca,
        insecure_dev_tls: args.insecure_dev_tls,
        client_tls_cert: args.client_tls_cert,
        client_tls_key: args.client_tls_key,
        client_tls_ca: args.client_tls_ca,
    };
    let config = NodeConfig::load(args.config.as_deref(), overrides.clone())?;
    super::process::prepare(&config);
    let reload = Reload {
        path: args.config,
        overrides,
        started_with: config.clone(),
    };
    // Embedded nodes may go without a local server; a node run on its own is
    // there to serve clients.
    if config.listen.is_none() && config.uds.is_none() {
        return Err("nothing to listen on: give --listen or --uds".into());
    }
    // Before anything is printed: a script may signal the node as soon as it
    // has read the addresses, and an uncaught SIGTERM would kill it undrained.
    let signals = StopSignals::install()?;
    let tcp_scheme = if config.client_tls.is_some() {
        "tls"
    } else {
        "tcp"
    };
    let node = Node::start(config)?;
    // One line per fact, for people and for scripts that start nodes.
    println!("starling node {} is up", node.name());
    if let Some(addr) = node.tcp_addr() {
        println!("local {tcp_scheme}://{addr}");
    }
    if let Some(path) = node.uds_path() {
        println!("local unix://{}", path.display());
    }
    if let Some(addr) = node.http_addr() {
        println!("http http://{addr}");
    }
    if let Some(addr) = node.nats_addr() {
        println!("nats nats://{addr}");
    }
    if let Some(cluster) = node.cluster() {
        println!(
            "cluster quic://{} node id {:016x}",
            cluster.local_addr(),
            cluster.node_id()
        );
    }
    if let Some(backend) = node.backend() {
        // Last: scripts may read up to this line.
        println!("io backend {backend}");
        if let starling_transport::server::Backend::Epoll { reason } = backend {
            tracing::warn!("io_uring is not used: {reason}");
        }
    }
    let refused = signals.wait(&node, &reload);
    println!("stopping: draining connections");
    node.shutdown();
    match refused {
        Some(why) => Err(format!("the mesh refused this node: {why}").into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// How long a node in lame-duck mode (SIGUSR2) keeps serving before it
/// stops, so that NATS clients move elsewhere first.
const LAME_DUCK_GRACE: Duration = Duration::from_secs(30);

/// Before a node stops on SIGTERM, how long its NATS clients have to take
/// in the lame-duck notice.
const LAME_DUCK_NOTICE: Duration = Duration::from_millis(200);

/// What SIGHUP reloads: the `[[users]]` and `token` of the config file
/// (flags and variables still win over the file, as at start). The rest of
/// the configuration is read at start only; a change to it is reported, not
/// applied. A file that does not load is refused, and the users in force
/// stay.
struct Reload {
    path: Option<PathBuf>,
    overrides: Overrides,
    started_with: NodeConfig,
}

impl Reload {
    fn run(&self, node: &Node) {
        let Some(path) = &self.path else {
            tracing::warn!("SIGHUP: no --config file to reload users from; nothing changed");
            return;
        };
        let file = path.display();
        let loaded = match NodeConfig::load(Some(path), self.overrides.clone()) {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::error!("SIGHUP: reload refused, the users in force stay: {error}");
                return;
            }
        };
        let users = loaded.users.len();
        let token = loaded.token.is_some();
        let rest = |config: &NodeConfig| NodeConfig {
            users: Vec::new(),
            token: None,
            ..config.clone()
        };
        if rest(&loaded) != rest(&self.started_with) {
            tracing::warn!(
                "SIGHUP: {file} changed more than [[users]] and token; only those are reloaded, \
                 the rest takes effect at the next start"
            );
        }
        match node.reload_users(loaded.token, loaded.users) {
            Ok(()) => tracing::warn!(
                "SIGHUP: reloaded {users} users (shared token {}) from {file}; connections they no \
                 longer admit are closed",
                if token { "set" } else { "unset" }
            ),
            Err(error) => {
                tracing::error!("SIGHUP: reload refused, the users in force stay: {error}");
            }
        }
    }
}

/// SIGINT, SIGTERM, SIGUSR2 and SIGHUP, caught from the moment of
/// [`StopSignals::install`].
struct StopSignals {
    runtime: tokio::runtime::Runtime,
    interrupt: Signal,
    terminate: Signal,
    lame_duck: Signal,
    hangup: Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (interrupt, terminate, lame_duck, hangup) = {
            let _context = runtime.enter();
            (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::user_defined2())?,
                signal(SignalKind::hangup())?,
            )
        };
        Ok(StopSignals {
            runtime,
            interrupt,
            terminate,
            lame_duck,
            hangup,
        })
    }

    /// Blocks until the node is to stop: SIGINT at once; SIGTERM after
    /// telling NATS clients (lame duck) for a moment; SIGUSR2 after
    /// [`LAME_DUCK_GRACE`], or sooner on SIGINT or SIGTERM; at once when
    /// the mesh refuses the node's name, returning why. Each SIGHUP
    /// meanwhile reloads the users.
    fn wait(mut self, node: &Node, reload: &Reload) -> Option<String> {
        let name_refused = async {
            match node.cluster() {
                Some(cluster) => cluster.name_refused().await,
                None => std::future::pending().await,
            }
        };
        self.runtime.block_on(async {
            tokio::pin!(name_refused);
            let grace = loop {
                tokio::select! {
                    why = &mut name_refused => return Some(why),
                    _ = self.interrupt.recv() => return None,
                    _ = self.terminate.recv() => break LAME_DUCK_NOTICE,
                    _ = self.lame_duck.recv() => {
                        println!("lame duck: NATS clients are told to move; stopping in {} s", LAME_DUCK_GRACE.as_secs());
                        break LAME_DUCK_GRACE;
                    }
                    _ = self.hangup.recv() => reload.run(node),
                }
            };
            node.enter_lame_duck();
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
            None
        })
    }
}
