//! `starling node`: runs a node until SIGINT or SIGTERM, then drains and
//! stops.

use std::error::Error;
use std::process::ExitCode;

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
        token: args.token,
        cluster_listen: args.cluster_listen,
        cluster_advertise: args.cluster_advertise,
        seeds: args.seeds,
        cluster_name: args.cluster_name,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_ca: args.tls_ca,
        insecure_dev_tls: args.insecure_dev_tls,
    };
    let config = NodeConfig::load(args.config.as_deref(), overrides)?;
    // Embedded nodes may go without a local server; a node run on its own is
    // there to serve clients.
    if config.listen.is_none() && config.uds.is_none() {
        return Err("nothing to listen on: give --listen or --uds".into());
    }
    // Before anything is printed: a script may signal the node as soon as it
    // has read the addresses, and an uncaught SIGTERM would kill it undrained.
    let signals = StopSignals::install()?;
    let node = Node::start(config)?;
    // One line per fact, for people and for scripts that start nodes.
    println!("starling node {} is up", node.name());
    if let Some(addr) = node.tcp_addr() {
        println!("local tcp://{addr}");
    }
    if let Some(path) = node.uds_path() {
        println!("local unix://{}", path.display());
    }
    if let Some(addr) = node.http_addr() {
        println!("http http://{addr}");
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
    signals.wait();
    println!("stopping: draining connections");
    node.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, caught from the moment of [`StopSignals::install`].
struct StopSignals {
    runtime: tokio::runtime::Runtime,
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (interrupt, terminate) = {
            let _context = runtime.enter();
            (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            )
        };
        Ok(StopSignals {
            runtime,
            interrupt,
            terminate,
        })
    }

    /// Blocks until either signal has arrived (or had arrived since
    /// `install`).
    fn wait(mut self) {
        self.runtime.block_on(async {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        });
    }
}
