//! Starling's mesh: the sans-IO membership and interest-propagation state
//! machines, the node that assembles core and transport, and the `starling`
//! binary.
#![forbid(unsafe_code)]
