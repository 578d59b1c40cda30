//! Starling's node, its mesh and the command line.
//!
//! - [`node`]: a [`Node`] is a bus, the local server in front of it, the
//!   HTTP endpoint and, if configured, its part of the mesh; embed one with
//!   [`Node::start`] and use [`Node::bus`];
//! - [`cluster`]: the mesh: QUIC links with mutual TLS, interest propagation,
//!   forwarding of events to the peers that want them;
//! - [`config`]: flags, `STARLING_*` variables and a TOML file;
//! - [`stats`]: what `/metrics` and `/v1/...` report, per pattern included;
//! - [`http`]: the HTTP endpoint (with nats-server's `/varz`, `/connz`,
//!   `/subsz` for the NATS listener);
//! - [`nats`]: the NATS listener: any NATS client library works with a node;
//! - [`demo`]: `starling demo`, a food-ordering system on a 3-node mesh;
//! - [`cli`]: `starling node | pub | sub | req | reply | cert | demo`.
//!
//! To embed a node, depend on this crate with `default-features = false`:
//! the default `mimalloc` feature is for the `starling` binary, which sets
//! mimalloc as its global allocator; the library sets none.
//!
//! Two nodes in one process, meshed over loopback; a subscription on one
//! receives what the other publishes:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use starling_mesh::{Node, NodeConfig, cluster::ClusterConfig, cluster::tls::TlsSource};
//!
//! fn mesh_node(name: &str, seeds: Vec<String>) -> Result<Node, starling_mesh::node::NodeError> {
//!     Node::start(NodeConfig {
//!         name: name.into(),
//!         listen: None, // no local server: the bus is used directly
//!         http: None,
//!         cluster: Some(ClusterConfig {
//!             node_name: name.into(),
//!             listen: "127.0.0.1:0".into(),
//!             seeds,
//!             // Development only: encrypted, but any peer is accepted. The
//!             // default (`TlsSource::Unset`) refuses to start.
//!             tls: TlsSource::InsecureDev,
//!             ..ClusterConfig::default()
//!         }),
//!         ..NodeConfig::default()
//!     })
//! }
//!
//! let a = mesh_node("a", vec![])?;
//! let b = mesh_node("b", vec![a.cluster().unwrap().local_addr().to_string()])?;
//! let orders = b.bus().subscribe("orders.>")?;
//! // The subscription reaches `a` asynchronously: publish until it has.
//! let deadline = Instant::now() + Duration::from_secs(10);
//! let event = loop {
//!     a.bus().publish("orders.eu.created", b"hello")?;
//!     if let Ok(event) = orders.recv_timeout(Duration::from_millis(10)) {
//!         break event;
//!     }
//!     assert!(Instant::now() < deadline, "the mesh formed in time");
//! };
//! assert_eq!(event.payload(), b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod http;
pub mod nats;
pub mod node;
mod node_state;
pub mod stats;

pub use config::NodeConfig;
pub use node::Node;
