//! Shared pieces of Starling's benchmarks.
//!
//! Benchmarks compare, they do not assert: every Starling figure is measured
//! next to a baseline in the same run (a crossbeam channel carrying owned
//! messages for the bus, a crossbeam `ArrayQueue<u64>` for the rings), and
//! each checks that the thing it times works before timing it.
//!
//! - [`consumers`]: persistent consumer threads with per-thread counters, for
//!   criterion's `iter_custom`, so that thread start-up is never timed;
//! - [`workload`]: subscription patterns and subjects for the index benches;
//! - [`harness`]: the load harness of the `starling-bench` binary: Starling
//!   in process, through a node and through meshes of nodes, against
//!   `nats-server` alone and in clusters, in the same run.

pub mod consumers;
pub mod harness;
pub mod workload;
