//! The mesh: nodes linked over QUIC, each learning the others' interest.
//!
//! - [`interest`]: interest propagation as a state machine without I/O.

pub mod interest;
