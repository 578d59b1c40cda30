//! [`NodeState`]: what a running node's parts share, below both the node
//! that assembles them and the HTTP endpoint and reports that read them.

use std::time::Instant;

use starling_core::Bus;
use starling_transport::server::Server;

use crate::cluster::Cluster;
use crate::config::NodeConfig;
use crate::nats::NatsServer;

/// What the node's parts share (the HTTP endpoint reads it).
#[derive(Debug)]
pub struct NodeState {
    /// The configuration the node started with.
    pub config: NodeConfig,
    /// The bus every client and in-process user shares.
    pub bus: Bus,
    /// The local server; `None` for a node embedded without one (no TCP
    /// address and no Unix socket configured), used through its bus only.
    pub server: Option<Server>,
    /// The node's part of the mesh, if it joined one.
    pub cluster: Option<Cluster>,
    /// The NATS listener, if configured.
    pub nats: Option<NatsServer>,
    pub(crate) started: Instant,
    pub(crate) started_unix_nanos: u64,
}
