//! What `starling node` sets for its own process at start (see
//! `starling_transport::process`): its open-files limit raised to the hard
//! limit, as nats-server (through Go's runtime) and most servers do, with a
//! warning if even that is too low for its connection limits; and no
//! transparent huge pages, which made every idle connection's buffers
//! resident.

use starling_transport::process;

use crate::config::NodeConfig;

/// Descriptors a node needs besides its client connections: listeners,
/// the io_uring ring and eventfd, the mesh's sockets, logs.
const RESERVED: u64 = 64;

/// Makes the process settings, logging what it did and what failed.
pub(super) fn prepare(config: &NodeConfig) {
    if let Err(error) = process::disable_transparent_huge_pages() {
        // Only memory is at stake: idle connections cost more.
        tracing::info!("transparent huge pages stay on: {error}");
    }
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
