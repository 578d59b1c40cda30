//! The node's open-files limit: every connection is a descriptor, and the
//! soft limit a shell hands a process (often 1,024) is far below what a
//! node's connection limits allow. As nats-server (through Go's runtime)
//! and most servers do, `starling node` raises its soft limit to the hard
//! limit at start, and says so; if even that is too low for its limits, it
//! warns.

use starling_transport::descriptors;

use crate::config::NodeConfig;

/// Descriptors a node needs besides its client connections: listeners,
/// the io_uring ring and eventfd, the mesh's sockets, logs.
const RESERVED: u64 = 64;

/// Raises the soft open-files limit to the hard limit, logging what it did,
/// and warns if the limit is below what `config`'s connection limits need.
pub(super) fn raise_limit(config: &NodeConfig) {
    let limit = match descriptors::raise_limit() {
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
             accepting; raise the hard limit (ulimit -Hn, LimitNOFILE= in a systemd unit)",
            limit.now
        );
    }
}

/// Descriptors for every connection `config`'s limits allow at once: the
/// client port's and the NATS listener's (each up to `connections_max`),
/// the HTTP endpoint's, and [`RESERVED`].
fn needed(config: &NodeConfig) -> u64 {
    let client_ports = 1 + u64::from(config.nats.is_some());
    let limits = &config.limits;
    limits.connections_max as u64 * client_ports + limits.http_connections_max as u64 + RESERVED
}
