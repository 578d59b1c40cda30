//! What nodes tell each other about their interest: the keys, the
//! messages and the changes they carry, archived with rkyv in `INTEREST`
//! control messages (`cluster/wire.rs`).

/// A node's id: random per start.
pub type NodeId = u64;

/// One unit of interest.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct InterestKey {
    /// The subject pattern.
    pub pattern: String,
    /// The queue group, if any.
    pub group: Option<String>,
}

/// What nodes tell each other about their interest.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum InterestMessage {
    /// The sender's whole interest.
    Snapshot {
        /// The sender's epoch.
        epoch: u64,
        /// Changes the sender's interest has had in this epoch.
        version: u64,
        /// Every key with its id.
        entries: Vec<(u64, InterestKey)>,
    },
    /// One change of the sender's interest: it comes right after `version - 1`.
    Delta {
        /// The sender's epoch.
        epoch: u64,
        /// The version this change makes.
        version: u64,
        /// The change.
        change: Change,
    },
    /// A summary of the sender's interest, to find drift.
    Digest {
        /// The sender's epoch.
        epoch: u64,
        /// The sender's version.
        version: u64,
        /// A hash of every (id, key).
        hash: u64,
    },
    /// Asks the receiver for a snapshot of its interest.
    SnapshotRequest,
}

/// One change of a node's interest.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Change {
    /// A key the node now needs.
    Add {
        /// Its id.
        id: u64,
        /// The key.
        key: InterestKey,
    },
    /// A key the node no longer needs.
    Remove {
        /// Its id.
        id: u64,
    },
}
