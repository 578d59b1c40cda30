//! The journal that foca's codec and broadcast handler share with the
//! `Membership` wrapper: foca owns both hooks and has no getters for them,
//! so what they see goes here. What passed through the codec (to find state
//! changes foca does not notify, such as suspicion), which members announced
//! a graceful leave, and this node's own incarnation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use foca::{Identity as _, State};

use super::identity::Identity;

/// What one membership instance's codec and broadcast handler tell it.
#[derive(Debug, Default)]
pub(super) struct Journal {
    /// News about members that passed through the codec since the wrapper
    /// last looked, as foca applies (or generates) them.
    pub claims: Vec<Claim>,
    /// The newest identity known to have left, per address key.
    pub departed: HashMap<u64, Identity>,
    /// Departures learned since the wrapper last looked.
    pub new_departures: Vec<Identity>,
    /// This node's incarnation, as of the last packet it sent (foca keeps
    /// it to itself; every probe carries it).
    pub own_incarnation: u16,
}

/// One piece of news about a member.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    pub identity: Identity,
    pub incarnation: u16,
    pub state: State,
}

/// A handle on a [`Journal`] shared by the wrapper, its codec and its
/// broadcast handler. A mutex rather than a `RefCell` keeps `Membership`
/// `Send`; it is never contended (one owner drives all three).
#[derive(Debug, Clone, Default)]
pub(super) struct SharedJournal(Arc<Mutex<Journal>>);

impl SharedJournal {
    pub fn lock(&self) -> MutexGuard<'_, Journal> {
        self.0
            .lock()
            .expect("the journal is only locked briefly, never across a panic")
    }
}

impl Journal {
    /// Records that `identity` left; false if that was known already (or
    /// a newer identity on its address is known to have left).
    pub fn record_departure(&mut self, identity: Identity) -> bool {
        if let Some(known) = self.departed.get(&identity.addr())
            && (known == &identity || known.win_addr_conflict(&identity))
        {
            return false;
        }
        self.departed.insert(identity.addr(), identity.clone());
        self.new_departures.push(identity);
        true
    }
}
