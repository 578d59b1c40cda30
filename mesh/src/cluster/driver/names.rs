//! One live node per name. A node's name is how operators, logs, metrics
//! and certificates know it; two live nodes under one name would look like
//! one member to them while membership, interest and queue groups (which
//! pick one member node per event) counted two. So a node refuses a link
//! from a peer that claims the name of a live member, whichever side dials:
//!
//! - the member is this node itself, or a peer whose link is up (QUIC
//!   keep-alives still answered within the idle timeout);
//! - unless the newcomer connects from the very UDP address (IP and port)
//!   that member's link runs to: no two live processes hold one socket, so
//!   that is the member restarted, not a second node. A node that restarts
//!   where it was is so taken back at once, as before; one that comes back
//!   elsewhere is refused until its old self's links go silent (within the
//!   idle timeout, if its process is gone), then taken in.
//!
//! An accepting node answers such a HELLO with NAME_TAKEN (instead of its
//! own HELLO) and logs an error; a dialing node closes the link, and logs
//! an error. A node refused by the same address for longer than twice the
//! idle timeout (past any old self's link) takes the refusal as final: it
//! logs it, and [`crate::cluster::Cluster::name_refused`] says so, for
//! `starling node` to exit non-zero.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Driver;
use crate::cluster::wire::Hello;

impl Driver {
    /// Why the peer that sent `hello`, connecting from `remote`, may not
    /// take the name it claims, if it may not (see the module's doc).
    pub(super) fn name_taken(&self, hello: &Hello, remote: SocketAddr) -> Option<String> {
        let ours = &self.local.hello;
        let holder = if hello.name == ours.name {
            // A HELLO with this node's id is refused before this.
            Some(ours.advertise.as_str())
        } else {
            self.peers
                .iter()
                .filter(|(id, peer)| **id != hello.node_id && peer.name == hello.name)
                .find_map(|(_, peer)| {
                    let link = peer.link.as_ref()?;
                    let restarted = same_socket(link.connection.remote_address(), remote);
                    (!restarted).then_some(peer.advertise.as_str())
                })
        }?;
        Some(format!(
            "a live node named '{}' (address {holder}) is already a member of cluster '{}'",
            hello.name, ours.cluster
        ))
    }
}

/// Whether two addresses are one socket (an IPv4 address and its
/// IPv4-mapped IPv6 form are one).
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
}

/// Refusals of this node's own name, by the addresses it dialed.
pub(super) struct NameRefusals {
    /// When each address began refusing the name, in its current run of
    /// refusals.
    since: HashMap<String, Instant>,
    /// How long an address may refuse before the refusal is final.
    patience: Duration,
    /// The final refusal, for whoever runs the node.
    verdict: watch::Sender<Option<String>>,
}

impl NameRefusals {
    /// Refusals become final after `patience`, and are then sent on
    /// `verdict`.
    pub fn new(patience: Duration, verdict: watch::Sender<Option<String>>) -> Self {
        Self {
            since: HashMap::new(),
            patience,
            verdict,
        }
    }

    /// The node at `address` refused this node's name, saying `why`.
    pub fn refused(&mut self, address: &str, why: &str, now: Instant) {
        let since = *self.since.entry(address.to_owned()).or_insert(now);
        if self.verdict.borrow().is_some() {
            tracing::debug!(%address, "{why}");
        } else if now.duration_since(since) >= self.patience {
            tracing::error!(
                %address,
                "{why}: this node cannot join under its name; stop the other node or give this one another --name"
            );
            self.verdict.send_replace(Some(why.to_owned()));
        } else if since == now {
            tracing::error!(
                %address,
                "{why}; trying again for {} s, in case that is this node's previous run, not yet found gone",
                self.patience.as_secs()
            );
        } else {
            tracing::debug!(%address, "{why}");
        }
    }

    /// A link to `address` is up: the name was not refused there.
    pub fn accepted(&mut self, address: &str) {
        self.since.remove(address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_final_once_one_address_kept_it_up_past_the_patience() {
        let (verdict, mut final_refusal) = watch::channel(None);
        let mut refusals = NameRefusals::new(Duration::from_secs(10), verdict);
        let start = Instant::now();
        refusals.refused("seed:1", "taken", start);
        refusals.refused("seed:2", "taken", start + Duration::from_secs(6));
        refusals.refused("seed:1", "taken", start + Duration::from_secs(9));
        assert!(!final_refusal.has_changed().unwrap());
        // The first address lets the node in, then refuses it again: a new
        // run of refusals.
        refusals.accepted("seed:1");
        refusals.refused("seed:1", "taken", start + Duration::from_secs(11));
        assert!(!final_refusal.has_changed().unwrap());
        refusals.refused("seed:2", "taken by n", start + Duration::from_secs(16));
        assert!(final_refusal.has_changed().unwrap());
        assert_eq!(
            final_refusal.borrow_and_update().as_deref(),
            Some("taken by n")
        );
    }

    #[test]
    fn one_socket_in_either_ip_family() {
        let v4: SocketAddr = "127.0.0.1:7401".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:7401".parse().unwrap();
        let other_port: SocketAddr = "127.0.0.1:7402".parse().unwrap();
        assert!(same_socket(v4, mapped));
        assert!(!same_socket(v4, other_port));
    }
}
