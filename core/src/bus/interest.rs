//! Watching a bus's local interest: what a node must ask its peers for.
//!
//! A mesh node propagates the (pattern, queue group) of every subscription
//! made on its bus by a local consumer, but not of the subscriptions that
//! stand for its peers' interest (peer mailboxes): those came from the mesh
//! and must not echo back into it.

use std::sync::Arc;

/// A change of the bus's local interest, one per local subscription added or
/// removed (the watcher counts references itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterestChange {
    /// A local subscription was added.
    Added {
        /// Its pattern.
        pattern: Arc<str>,
        /// Its queue group.
        group: Option<Arc<str>>,
    },
    /// A local subscription was removed.
    Removed {
        /// Its pattern.
        pattern: Arc<str>,
        /// Its queue group.
        group: Option<Arc<str>>,
    },
}

/// Called with every change, under the bus's control-plane lock (so in the
/// order the index changed): it must be quick and must not subscribe or
/// unsubscribe on the same bus. Sending into a channel is the intended use.
pub type InterestWatcher = Box<dyn FnMut(InterestChange) + Send>;
