//! Where each subscription's events go: the live subscriptions by id, which
//! subscribing and unsubscribing change under a lock (the control plane),
//! and the reader's own copy of their inlets, which it reads for every event
//! without a lock and copies again only after a change.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use starling_core::Inlet;

use crate::frame::control::Subscribe;

/// One live subscription.
#[derive(Debug)]
pub(super) struct Subscribed {
    /// What the node is sent again after a reconnect.
    pub(super) request: Subscribe,
    /// The way into its local queue.
    pub(super) inlet: Inlet,
}

/// The live subscriptions, by id.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    by_sid: Mutex<BTreeMap<u64, Subscribed>>,
    /// Counts the changes to `by_sid`; bumped under its lock.
    version: AtomicU64,
}

impl Subscriptions {
    pub(super) fn insert(&self, sid: u64, subscribed: Subscribed) {
        let mut by_sid = self.lock();
        by_sid.insert(sid, subscribed);
        self.changed();
    }

    /// Removes subscription `sid`; true if it was there.
    pub(super) fn remove(&self, sid: u64) -> bool {
        let mut by_sid = self.lock();
        let removed = by_sid.remove(&sid).is_some();
        if removed {
            self.changed();
        }
        removed
    }

    /// Calls `each` with every live subscription's id and request, in id order.
    pub(super) fn for_each_request(&self, mut each: impl FnMut(u64, &Subscribe)) {
        for (sid, subscribed) in self.lock().iter() {
            each(*sid, &subscribed.request);
        }
    }

    /// No more events will come for any subscription: each local queue
    /// drains, then says it is closed.
    pub(super) fn close_mailboxes(&self) {
        for subscribed in self.lock().values() {
            subscribed.inlet.close_mailbox();
        }
    }

    fn changed(&self) {
        // SYNC POINT (routes-version): Release pairs with the Acquire in
        // `Routes::refresh`. Bumped after the change, before the lock is
        // let go and before the node is told of the change, so a reader that
        // gets an event of a new subscription finds the bump (and copies the
        // map under the lock, which orders the copy after the change).
        self.version.fetch_add(1, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Subscribed>> {
        self.by_sid.lock().expect("subscriptions lock")
    }
}

/// The reader's copy of the subscriptions' inlets, sorted by id.
#[derive(Debug, Default)]
pub(super) struct Routes {
    /// The version of `Subscriptions` copied last.
    version: u64,
    by_sid: Vec<(u64, Inlet)>,
}

impl Routes {
    /// Copies the inlets again if the subscriptions changed since the last
    /// copy; true if it did. One atomic load when nothing changed; the copy
    /// reuses this list's memory, so it allocates only when the
    /// subscriptions outgrow every earlier count.
    pub(super) fn refresh(&mut self, shared: &Subscriptions) -> bool {
        // SYNC POINT (routes-version): see `Subscriptions::changed`.
        if shared.version.load(Ordering::Acquire) == self.version {
            return false;
        }
        let by_sid = shared.lock();
        self.by_sid.clear();
        self.by_sid.extend(
            by_sid
                .iter()
                .map(|(sid, subscribed)| (*sid, subscribed.inlet.clone())),
        );
        // Bumps happen under the lock held here: this is the version copied.
        self.version = shared.version.load(Ordering::Relaxed);
        true
    }

    /// The inlet of subscription `sid`. An id not in the copy may be a
    /// subscription made after it, whose first event came in the read the
    /// copy was refreshed for: the copy is refreshed then, if anything
    /// changed, and looked at again. (An event of a subscription that has
    /// just ended costs one atomic load.)
    pub(super) fn get(&mut self, sid: u64, shared: &Subscriptions) -> Option<&Inlet> {
        let mut found = self.position(sid);
        if found.is_none() && self.refresh(shared) {
            found = self.position(sid);
        }
        found.map(|index| &self.by_sid[index].1)
    }

    fn position(&self, sid: u64) -> Option<usize> {
        self.by_sid
            .binary_search_by_key(&sid, |(known, _)| *known)
            .ok()
    }
}
