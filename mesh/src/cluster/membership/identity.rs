//! Who a member is: a node id, the address peers reach it at, when it
//! started and how often it renewed itself, and the rules foca uses to
//! tell two identities on one address apart.

use std::sync::Arc;

use starling_core::hash::fnv1a;

use super::MembershipError;
use crate::cluster::interest::NodeId;

/// Longest advertise address, so that its length fits in one byte on the
/// wire.
pub(super) const ADVERTISE_BYTES_MAX: usize = u8::MAX as usize;

/// Who a member is. Two starts of a node are two identities; so are two
/// renewals of one start.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub(super) id: NodeId,
    pub(super) advertise: Arc<str>,
    pub(super) started_ms: u64,
    pub(super) renewal: u16,
    /// `advertise` hashed: foca compares addresses in linear scans over
    /// the members for every update, so they must be cheap to copy and
    /// compare. 64 bits: two of a thousand addresses collide with odds
    /// about 3·10⁻¹⁴.
    pub(super) address_key: u64,
}

impl Identity {
    /// The identity of a node `id` that peers reach at `advertise` and that
    /// started at `started_ms` (wall clock, milliseconds since the Unix
    /// epoch: of two starts on one address, the later one wins).
    pub fn new(id: NodeId, advertise: &str, started_ms: u64) -> Result<Self, MembershipError> {
        if advertise.is_empty() || advertise.len() > ADVERTISE_BYTES_MAX {
            return Err(MembershipError::BadAdvertise(advertise.len()));
        }
        Ok(Self {
            id,
            advertise: advertise.into(),
            started_ms,
            renewal: 0,
            address_key: fnv1a(advertise.as_bytes()),
        })
    }

    /// The node id (random per start).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Where peers reach the node.
    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    pub(super) fn renewed_to(self, renewal: u16) -> Self {
        Self { renewal, ..self }
    }

    /// Which of two identities on one address is newer.
    fn precedence(&self) -> (u64, u16, NodeId) {
        (self.started_ms, self.renewal, self.id)
    }
}

impl foca::Identity for Identity {
    type Addr = u64;

    /// Declared dead while alive (a partition, a long pause): come back as
    /// the same node, one renewal later. Same node id: the runtime's links,
    /// handshakes and interest epochs stay valid.
    fn renew(&self) -> Option<Self> {
        let renewal = self.renewal.checked_add(1)?;
        Some(self.clone().renewed_to(renewal))
    }

    fn addr(&self) -> u64 {
        self.address_key
    }

    /// The later start wins, then the later renewal. This fails only if the
    /// clock went back across a restart; the old identity is then declared
    /// dead by probes and the new one waits for `forget_dead_after`.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.precedence() > adversary.precedence()
    }
}
