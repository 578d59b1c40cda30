//! Starling benchmarks.
