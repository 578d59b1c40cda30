//! The mesh: nodes linked over QUIC, each learning the others' interest.
//!
//! - [`interest`]: interest propagation as a state machine without I/O;
//! - [`wire`]: the link protocol's messages and frames.

pub mod interest;
pub mod tls;
pub mod wire;
