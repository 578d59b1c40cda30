//! What `starling` sets for its own process at start (see
//! `starling_transport::process`): no transparent huge pages, for every
//! subcommand, unless `MIMALLOC_ALLOW_THP` says otherwise; and for `starling
//! node`, its open-files limit raised to the hard limit, as nats-server
//! (through Go's runtime) and most servers do, with a warning if even that
//! is too low for its connection limits.

use starling_transport::process::{self, HugePages};

use crate::config::NodeConfig;

/// Descriptors a node needs besides its client connections: listeners,
/// the io_uring ring and eventfd, the mesh's sockets, logs.
const RESERVED: u64 = 64;

/// Logs what `process::disable_transparent_huge_pages_by_default` did
/// before `main` (the binary runs it). Huge pages cost memory (every
/// idle connection's mostly untouched buffers resident 2 MiB at a time) and
/// latency (each first touch zeroes 2 MiB: 10-30 ms stalls over a fresh
/// node's first subscriptions), and bought no throughput that could be
/// measured (BENCHMARKS.md, interest convergence, 2026-12-06).
pub(super) fn huge_pages_logged() {
    match process::huge_pages_at_start() {
        Ok(HugePages::Off) => tracing::debug!("transparent huge pages off"),
        Ok(left) => tracing::info!("transparent huge pages {left}"),
        Err(error) => tracing::info!("transparent huge pages stay on: {error}"),
    }
}

/// Raises the open-files limit for a node, logging what it did and what
/// failed.
pub(super) fn prepare(config: &NodeConfig) {
    let limit = match process::raise_open_files_limit() {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!("cannot raise the open-files limit to the hard limit: {error}");
            return;
        }
    };
    if limit.now > limit.was {
        tracing::info!(
            "open-files limit raised from {} to {} (the hard limit)",
            limit.was,
            limit.now
        );
    }
    let needed = needed(config);
    if limit.now < needed {
        tracing::warn!(
            "the open-files limit ({}) is below the {needed} descriptors the connection limits \
             allow ([limits] connections_max, http_connections_max): past it, the node pauses \
             accepting; raise the hard limit (ulimit -Hn, LimitNOFILE= in a systemd unit) or \
             lower connections_max",
            limit.now
        );
    }
}

/// Descriptors for a client port full to `connections_max` while the HTTP
/// endpoint is full too, and [`RESERVED`]. (The NATS listener has a limit of
/// its own, but both ports full at once is not what limits are sized for.)
fn needed(config: &NodeConfig) -> u64 {
    let limits = &config.limits;
    limits.connections_max as u64 + limits.http_connections_max as u64 + RESERVED
}
