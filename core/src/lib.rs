//! Starling's core: no I/O at all.
pub mod event;
pub mod subject;
pub mod sublist;
