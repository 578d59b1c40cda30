//! Starling's transport: bytes on the wire.
//!
//! This crate will hold the frame codec, the local server (io_uring with an epoll
//! fallback), the client library and the QUIC peer links. It depends only on
//! `starling-core`.
