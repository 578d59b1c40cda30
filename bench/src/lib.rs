//! Shared pieces of Starling's benchmarks.
//!
//! Benchmarks compare, they do not assert: every Starling figure is measured
//! next to a baseline in the same run (a crossbeam channel carrying owned
//! messages for the bus, a crossbeam `ArrayQueue<u64>` for the rings), and
//! each checks that the thing it times works before timing it.
//!
//! - [`consumers`]: persistent consumer threads with per-thread counters, for
//!   criterion's `iter_custom`, so that thread start-up is never timed;
//! - [`workload`]: subscription patterns and subjects for the index benches.

pub mod consumers;
pub mod workload;
