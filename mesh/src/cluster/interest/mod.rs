//! Interest propagation, without I/O: which subscriptions each node needs from
//! every other node, kept in step across a full mesh.
//!
//! A node's *interest* is the set of (pattern, queue group) its local
//! subscriptions need, reference-counted: a change goes out only when a key's
//! count moves between zero and one. Every key gets an id, chosen by its
//! origin node and stable while the key lives, so that a forwarded event can
//! name the queue groups it is meant for.
//!
//! The mesh is full, so interest only ever travels from its origin straight
//! to each neighbour, never relayed:
//!
//! - a change goes to every linked peer at once as a [`Delta`](InterestMessage::Delta),
//!   numbered within the origin's *epoch* (random per start, so a restarted
//!   node's numbers are never mistaken for the old ones);
//! - a link that comes up starts with a [`Snapshot`](InterestMessage::Snapshot)
//!   each way;
//! - a delta that does not follow on (a gap, another epoch, before any
//!   snapshot) is not applied: the receiver asks for a snapshot instead;
//! - every `digest_interval` each node sends its (epoch, version, hash) to
//!   every peer, which asks for a snapshot if its copy differs: anything lost
//!   is repaired within one interval (anti-entropy);
//! - a peer whose link stays down longer than `withdraw_after` has its
//!   interest withdrawn, so nothing more is routed to it.
//!
//! The state machine takes inputs and the current time and queues
//! [`Output`]s: messages to send and changes to make to the local bus. The
//! node's runtime drives it over QUIC; the simulator in `mesh/tests/` drives
//! many in one thread with seeded delays, loss, reordering and link breaks.

mod message;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use starling_core::hash::Fnv1a;
use starling_core::subject::pattern_covers;

pub use self::message::{Change, InterestKey, InterestMessage, NodeId};

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a message to a peer on its link's control stream.
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        message: InterestMessage,
    },
    /// Route events matching `key` to `peer` (its entry `id`).
    Subscribe {
        /// The peer.
        peer: NodeId,
        /// The peer's id for the key.
        id: u64,
        /// The key.
        key: InterestKey,
    },
    /// Stop routing events for `peer`'s entry `id`.
    Unsubscribe {
        /// The peer.
        peer: NodeId,
        /// The peer's id for the key.
        id: u64,
    },
}

/// Timing of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterestConfig {
    /// How often each node sends its digest to every peer.
    pub digest_interval: Duration,
    /// How long a peer's link may stay down before its interest is withdrawn.
    pub withdraw_after: Duration,
}

impl Default for InterestConfig {
    fn default() -> Self {
        Self {
            digest_interval: Duration::from_secs(5),
            withdraw_after: Duration::from_secs(10),
        }
    }
}

/// One node's interest state.
#[derive(Debug)]
pub struct Interest {
    config: InterestConfig,
    epoch: u64,
    version: u64,
    /// Local subscriptions per key, as the bus reports them.
    held: BTreeMap<InterestKey, u32>,
    /// What this node advertises, with each key's id: every held key but the
    /// plain patterns that another held plain pattern covers.
    local: BTreeMap<InterestKey, u64>,
    next_id: u64,
    links: BTreeMap<NodeId, Link>,
    remote: BTreeMap<NodeId, RemoteTable>,
    outputs: VecDeque<Output>,
    next_digest: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Link {
    /// `None` while up; the time it went down otherwise.
    down_since: Option<Instant>,
}

/// What we know of one peer's interest.
#[derive(Debug, Default)]
struct RemoteTable {
    epoch: u64,
    version: u64,
    entries: BTreeMap<u64, InterestKey>,
    /// A snapshot was applied since the last inconsistency.
    synced: bool,
    /// A snapshot was asked for and has not come yet.
    requested: bool,
}

impl Interest {
    /// A node's state, starting a new epoch at `now`.
    pub fn new(epoch: u64, config: InterestConfig, now: Instant) -> Self {
        Self {
            config,
            epoch,
            version: 0,
            held: BTreeMap::new(),
            local: BTreeMap::new(),
            next_id: 1,
            links: BTreeMap::new(),
            remote: BTreeMap::new(),
            outputs: VecDeque::new(),
            next_digest: now + config.digest_interval,
        }
    }

    /// A local subscription with `key` was added.
    ///
    /// Plain interest is aggregated: a pattern another held plain pattern
    /// covers (`orders.eu.*` under `orders.>`) is not advertised, since the
    /// events it wants reach this node anyway. Queue groups are never
    /// aggregated: each must be chosen among its own members.
    pub fn local_added(&mut self, key: InterestKey) {
        let count = self.held.entry(key.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            return;
        }
        if key.group.is_some() {
            self.advertise(key);
            return;
        }
        if self.local.keys().any(|other| plain_covers(other, &key)) {
            return;
        }
        let covered: Vec<InterestKey> = self
            .local
            .keys()
            .filter(|other| plain_covers(&key, other))
            .cloned()
            .collect();
        // The new key first, so that peers never miss what it covers.
        self.advertise(key);
        for other in covered {
            self.withdraw_local(&other);
        }
    }

    /// A local subscription with `key` was removed.
    pub fn local_removed(&mut self, key: &InterestKey) {
        let Some(count) = self.held.get_mut(key) else {
            debug_assert!(false, "removing interest that was never added");
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.held.remove(key);
        if !self.local.contains_key(key) {
            // It was covered by another pattern, which stays.
            return;
        }
        if key.group.is_none() {
            // What it covered and nothing else covers now stands for itself,
            // advertised before the key goes.
            let uncovered: Vec<InterestKey> = self
                .held
                .keys()
                .filter(|held| {
                    plain_covers(key, held)
                        && !self.held.keys().any(|other| plain_covers(other, held))
                })
                .cloned()
                .collect();
            for held in uncovered {
                self.advertise(held);
            }
        }
        self.withdraw_local(key);
    }

    fn advertise(&mut self, key: InterestKey) {
        let id = self.next_id;
        self.next_id += 1;
        self.local.insert(key.clone(), id);
        self.broadcast_change(Change::Add { id, key });
    }

    fn withdraw_local(&mut self, key: &InterestKey) {
        if let Some(id) = self.local.remove(key) {
            self.broadcast_change(Change::Remove { id });
        }
    }

    /// A link to `peer` is up (its handshake done): each side sends its
    /// snapshot.
    pub fn link_up(&mut self, peer: NodeId) {
        self.links.insert(peer, Link { down_since: None });
        let snapshot = self.snapshot();
        self.send(peer, snapshot);
    }

    /// The link to `peer` went down at `now`. Its interest stays until
    /// `withdraw_after` has passed without the link coming back.
    pub fn link_down(&mut self, peer: NodeId, now: Instant) {
        // Deltas in flight are lost with the link; the snapshot each side
        // sends when it comes back up makes up for them.
        if let Some(link) = self.links.get_mut(&peer) {
            link.down_since.get_or_insert(now);
        }
    }

    /// Forgets `peer` at once (it left the mesh): its interest is withdrawn.
    pub fn forget(&mut self, peer: NodeId) {
        self.links.remove(&peer);
        self.withdraw(peer);
    }

    /// A message from `peer`.
    pub fn handle(&mut self, peer: NodeId, message: InterestMessage) {
        match message {
            InterestMessage::Snapshot {
                epoch,
                version,
                entries,
            } => self.apply_snapshot(peer, epoch, version, entries),
            InterestMessage::Delta {
                epoch,
                version,
                change,
            } => self.apply_delta(peer, epoch, version, change),
            InterestMessage::Digest {
                epoch,
                version,
                hash,
            } => {
                let table = self.remote.entry(peer).or_default();
                let same = table.synced
                    && table.epoch == epoch
                    && table.version == version
                    && hash_of(&table.entries) == hash;
                if !same {
                    // Ask again even if asked before: a request can be lost
                    // with a link, and digests come once per interval.
                    table.requested = false;
                    self.request_snapshot(peer);
                }
            }
            InterestMessage::SnapshotRequest => {
                let snapshot = self.snapshot();
                self.send(peer, snapshot);
            }
        }
    }

    /// Time passed: sends digests when due and withdraws the interest of
    /// peers whose links stayed down too long.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_digest {
            self.next_digest = now + self.config.digest_interval;
            let digest = InterestMessage::Digest {
                epoch: self.epoch,
                version: self.version,
                hash: hash_of(
                    &self
                        .local
                        .iter()
                        .map(|(key, id)| (*id, key.clone()))
                        .collect(),
                ),
            };
            for peer in self.up_peers() {
                self.send(peer, digest.clone());
            }
        }
        let expired: Vec<NodeId> = self
            .links
            .iter()
            .filter(|(_, link)| {
                link.down_since
                    .is_some_and(|since| now >= since + self.config.withdraw_after)
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in expired {
            self.links.remove(&peer);
            self.withdraw(peer);
        }
    }

    /// When [`Interest::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Instant {
        let withdraw = self
            .links
            .values()
            .filter_map(|link| {
                link.down_since
                    .map(|since| since + self.config.withdraw_after)
            })
            .min();
        withdraw.map_or(self.next_digest, |w| w.min(self.next_digest))
    }

    /// The next thing the runtime must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// This node's interest: every key with its id.
    pub fn local_entries(&self) -> Vec<(u64, InterestKey)> {
        self.local
            .iter()
            .map(|(key, id)| (*id, key.clone()))
            .collect()
    }

    /// What this node knows of `peer`'s interest.
    pub fn remote_entries(&self, peer: NodeId) -> Vec<(u64, InterestKey)> {
        self.remote
            .get(&peer)
            .map(|t| {
                t.entries
                    .iter()
                    .map(|(id, key)| (*id, key.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// This node's epoch and version.
    pub fn version(&self) -> (u64, u64) {
        (self.epoch, self.version)
    }

    /// (epoch, version) known for each peer.
    pub fn peer_versions(&self) -> Vec<(NodeId, u64, u64)> {
        self.remote
            .iter()
            .map(|(peer, t)| (*peer, t.epoch, t.version))
            .collect()
    }

    fn snapshot(&self) -> InterestMessage {
        InterestMessage::Snapshot {
            epoch: self.epoch,
            version: self.version,
            entries: self.local_entries(),
        }
    }

    fn broadcast_change(&mut self, change: Change) {
        self.version += 1;
        let delta = InterestMessage::Delta {
            epoch: self.epoch,
            version: self.version,
            change,
        };
        for peer in self.up_peers() {
            self.send(peer, delta.clone());
        }
    }

    fn up_peers(&self) -> Vec<NodeId> {
        self.links
            .iter()
            .filter(|(_, link)| link.down_since.is_none())
            .map(|(peer, _)| *peer)
            .collect()
    }

    fn send(&mut self, to: NodeId, message: InterestMessage) {
        self.outputs.push_back(Output::Send { to, message });
    }

    fn request_snapshot(&mut self, peer: NodeId) {
        let table = self.remote.entry(peer).or_default();
        if !table.requested {
            table.requested = true;
            self.send(peer, InterestMessage::SnapshotRequest);
        }
    }

    fn apply_snapshot(
        &mut self,
        peer: NodeId,
        epoch: u64,
        version: u64,
        entries: Vec<(u64, InterestKey)>,
    ) {
        let table = self.remote.entry(peer).or_default();
        if table.synced && table.epoch == epoch && version < table.version {
            // Overtaken by deltas already applied: applying it would go back.
            return;
        }
        let new: BTreeMap<u64, InterestKey> = entries.into_iter().collect();
        for (id, key) in &table.entries {
            if new.get(id) != Some(key) {
                self.outputs
                    .push_back(Output::Unsubscribe { peer, id: *id });
            }
        }
        for (id, key) in &new {
            if table.entries.get(id) != Some(key) {
                self.outputs.push_back(Output::Subscribe {
                    peer,
                    id: *id,
                    key: key.clone(),
                });
            }
        }
        *table = RemoteTable {
            epoch,
            version,
            entries: new,
            synced: true,
            requested: false,
        };
    }

    fn apply_delta(&mut self, peer: NodeId, epoch: u64, version: u64, change: Change) {
        let table = self.remote.entry(peer).or_default();
        let follows = table.synced && table.epoch == epoch && version == table.version + 1;
        if !follows {
            // A gap, a new epoch, or no snapshot yet: only a snapshot is safe.
            table.synced = false;
            self.request_snapshot(peer);
            return;
        }
        table.version = version;
        match change {
            Change::Add { id, key } => {
                if let Some(old) = table.entries.insert(id, key.clone()) {
                    debug_assert!(false, "id {id} reused while live: {old:?}");
                    self.outputs.push_back(Output::Unsubscribe { peer, id });
                }
                self.outputs.push_back(Output::Subscribe { peer, id, key });
            }
            Change::Remove { id } => {
                if table.entries.remove(&id).is_some() {
                    self.outputs.push_back(Output::Unsubscribe { peer, id });
                }
            }
        }
    }

    fn withdraw(&mut self, peer: NodeId) {
        if let Some(table) = self.remote.remove(&peer) {
            for id in table.entries.keys() {
                self.outputs
                    .push_back(Output::Unsubscribe { peer, id: *id });
            }
        }
    }
}

/// Does plain key `general` cover another plain key `specific`?
fn plain_covers(general: &InterestKey, specific: &InterestKey) -> bool {
    general.group.is_none()
        && specific.group.is_none()
        && general != specific
        && pattern_covers(&general.pattern, &specific.pattern)
}

/// FNV-1a over the entries in id order: equal sets hash equal everywhere.
fn hash_of(entries: &BTreeMap<u64, InterestKey>) -> u64 {
    let mut hash = Fnv1a::new();
    for (id, key) in entries {
        hash.write(&id.to_le_bytes())
            .write(key.pattern.as_bytes())
            .write(&[0xFF])
            .write(key.group.as_deref().unwrap_or("").as_bytes())
            .write(&[0xFE]);
    }
    hash.finish()
}
