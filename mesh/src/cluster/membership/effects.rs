//! What foca asks of its runtime during one call (packets to send, timers
//! to set, members that changed), and the timers waiting for their
//! deadlines.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use foca::{Identity as _, Notification, Runtime, Timer};

use super::identity::Identity;
use super::wire::KIND_SWIM;

/// What foca asked for during one call: foca's [`Runtime`].
#[derive(Debug, Default)]
pub(super) struct Effects {
    pub sends: Vec<(Identity, Vec<u8>)>,
    pub timers: Vec<(Duration, Timer<Identity>)>,
    /// Addresses of members foca said went up, down or were renamed.
    pub changed: Vec<u64>,
}

impl Runtime<Identity> for Effects {
    fn notify(&mut self, notification: Notification<'_, Identity>) {
        match notification {
            Notification::MemberUp(member) | Notification::MemberDown(member) => {
                self.changed.push(member.addr());
            }
            Notification::Rename(_, new) => self.changed.push(new.addr()),
            // About this node itself: nothing for the runtime to do; a
            // renewal keeps the node id, and being alone is handled here.
            Notification::Active
            | Notification::Idle
            | Notification::Defunct
            | Notification::Rejoin(_) => {}
        }
    }

    fn send_to(&mut self, to: Identity, data: &[u8]) {
        let mut packet = Vec::with_capacity(data.len() + 1);
        packet.push(KIND_SWIM);
        packet.extend_from_slice(data);
        self.sends.push((to, packet));
    }

    fn submit_after(&mut self, timer: Timer<Identity>, after: Duration) {
        self.timers.push((after, timer));
    }
}

/// A foca timer waiting for its deadline; the heap pops the earliest
/// first, and of equal deadlines the earliest set.
#[derive(Debug)]
pub(super) struct Scheduled {
    pub deadline: Instant,
    pub sequence: u64,
    pub timer: Timer<Identity>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.sequence).cmp(&(self.deadline, self.sequence))
    }
}
