//! Starling's node and command line.
//!
//! - [`node`]: a [`Node`] is a bus, the local server in front of it and the
//!   HTTP endpoint; embed one with [`Node::start`] and use [`Node::bus`];
//! - [`config`]: flags, `STARLING_*` variables and a TOML file;
//! - [`stats`]: what `/metrics` and `/v1/...` report, per pattern included;
//! - [`http`]: the HTTP endpoint;
//! - [`cli`]: `starling node | pub | sub | req | reply`.
//!
//! The QUIC mesh (peer links, interest propagation, membership) comes next.

#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod http;
pub mod node;
pub mod stats;

pub use config::NodeConfig;
pub use node::Node;
