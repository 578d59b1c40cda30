//! Starling's transport: bytes on the wire between applications and their
//! local node.
//!
//! - [`frame`]: the wire format: 16-byte headers, 16-byte-aligned bodies,
//!   control bodies, and a decoder that reassembles frames from any chunking;
//! - [`server`]: the node's local server over Unix sockets and TCP, driven by
//!   io_uring or, where io_uring cannot start, epoll;
//! - [`client`]: the client library, blocking and async;
//! - [`nats`]: the NATS client protocol, for NATS clients of the node;
//! - [`auth`]: users, passwords and tokens, and what each client may publish
//!   and subscribe to, for both protocols;
//! - [`tls`]: TLS on the server's TCP port and for `tls://` clients;
//! - [`url`]: `tcp://HOST:PORT`, `tls://HOST:PORT` and `unix:///path` addresses;
//! - [`budget`]: node-wide allowances connections share;
//! - [`process`]: what a server sets for its whole process at start (the
//!   open-files limit, no transparent huge pages).

pub mod auth;
pub mod budget;
pub mod client;
pub mod frame;
pub mod nats;
pub mod process;
mod read_buffer;
mod secret;
pub mod server;
mod stream;
pub mod tls;
pub mod url;
