//! The NATS client protocol, without I/O: what lets every NATS client, in
//! every language, use a Starling node.
//!
//! - [`parser`]: the client's operations (CONNECT, PUB, HPUB, SUB, UNSUB,
//!   PING, PONG), parsed incrementally and in place, with nats-server's
//!   bounds;
//! - [`proto`]: what the server sends (INFO, MSG, HMSG, PING, PONG, +OK,
//!   `-ERR` with nats-server's texts), CONNECT's options, header blocks;
//! - [`session`]: one connection's state between the two: authentication,
//!   subscriptions as tags of one bus mailbox, auto-unsubscribe, pings,
//!   no-responders, lame duck.
//!
//! The node's listener (`starling_mesh::nats`) drives sessions over tokio
//! sockets. NATS subjects, queue groups and request/reply are the bus's own,
//! so NATS clients and Starling clients share them, across the mesh too.
//! A NATS header block maps to the event's header list and back.

pub mod parser;
pub mod proto;
pub mod session;

pub use parser::{ClientOp, MAX_CONTROL_LINE, ParseError, Parsed, Parser, Pub};
pub use proto::{ConnectOptions, ServerInfo};
pub use session::{ClientInfo, Close, ConnectionStats, Input, NatsConfig, Publish, Session};

/// The NATS server version a node presents in INFO. Clients check for a
/// 2.2+ server before they use headers and no-responders; 2.10 is the
/// version whose core protocol this implements.
pub const NATS_VERSION: &str = "2.10.0";

#[cfg(test)]
mod tests;
