//! Live counters of a connection and of each of its subscriptions, written
//! by the I/O thread and read by listings (see `registry.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use starling_core::QueueCounters;

use crate::frame;

/// Counters of one connection, updated by the I/O thread. Relaxed
/// throughout: they are read for listings and order nothing.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    pub(super) events_in: AtomicU64,
    pub(super) events_out: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) client_name: OnceLock<String>,
    /// The connection's mailbox, read for its drop count: a blocked
    /// connection is not pulled, so only the mailbox knows.
    pub(super) mailbox: OnceLock<QueueCounters>,
    /// The connection's subscriptions (control plane: changed on subscribe
    /// and unsubscribe, read by listings).
    pub(super) subscriptions: Mutex<HashMap<u64, Arc<SubscriptionStats>>>,
}

/// One subscription of a connection, with what was delivered for it.
#[derive(Debug)]
pub struct SubscriptionStats {
    /// The pattern.
    pub pattern: String,
    /// The queue group.
    pub queue_group: Option<String>,
    /// Events delivered for it (moved to the connection's send queue).
    /// Written by the I/O thread only.
    pub(super) delivered: AtomicU64,
}

impl SubscriptionStats {
    pub(super) fn new(request: frame::control::Subscribe) -> Self {
        Self {
            pattern: request.pattern,
            queue_group: request.queue_group,
            delivered: AtomicU64::new(0),
        }
    }

    /// One more event delivered. A single writer, so no atomic add.
    pub(super) fn delivered(&self) {
        let delivered = self.delivered.load(Ordering::Relaxed);
        self.delivered.store(delivered + 1, Ordering::Relaxed);
    }
}

impl ConnectionStats {
    pub(super) fn set_client_name(&self, name: &str) {
        let _ = self.client_name.set(name.to_owned());
    }

    pub(super) fn set_mailbox(&self, counters: QueueCounters) {
        let _ = self.mailbox.set(counters);
    }

    pub(super) fn add_subscription(&self, sid: u64, stats: Arc<SubscriptionStats>) {
        self.subscriptions
            .lock()
            .expect("subscriptions lock")
            .insert(sid, stats);
    }

    pub(super) fn remove_subscription(&self, sid: u64) {
        self.subscriptions
            .lock()
            .expect("subscriptions lock")
            .remove(&sid);
    }
}
