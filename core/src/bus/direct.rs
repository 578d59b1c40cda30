//! Delivering without the index: [`Inlet`]s into mailboxes and the
//! [`DirectSource`] that feeds them.
//!
//! Some events arrive already matched to one consumer: a client library's
//! deliveries, each of which its node matched for one subscription and
//! tagged with its id. Publishing them on the bus again would look a
//! subject up in the index (and validate it) for a decision already made.
//! Instead, the client keeps an inlet per subscription, finds it by the id
//! the event came with, and hands the event, validated once, to that
//! mailbox's queue:
//!
//! ```text
//!  frame body ── event::check (once) ──► DirectSource::deliver(inlet, checked)
//!     copy into event memory → the queue's policy (block / drop-newest /
//!     drop-oldest, max_stall, counters) → the mailbox's consumer: recv(),
//!     recv_timeout(), recv_async(), recv_batch() as for any subscription
//! ```
//!
//! Everything past the index is the bus's own: the record is written by an
//! [`Appender`] as a publisher writes it, and delivered through the same
//! `Target::deliver` (lanes, policy, byte charges, drop counters) and the
//! same [`Backlog`] (a full `Block` queue holds this source back, up to
//! `max_stall`, then is demoted). Wake-ups are deferred to
//! [`DirectSource::wake`], once per batch (and every `WAKE_EVERY`
//! deliveries), as a batch publish defers them (see `bus::wakes`): no new
//! concurrency protocol.

use std::sync::Arc;

use super::backlog::Backlog;
use super::queue::Outcome;
use super::wakes::{Wakes, Waking};
use super::{SlowConsumerPolicy, Target};
use crate::event::Checked;
use crate::log::{AppendError, Appender, SegmentPool};

/// A way into one mailbox's queue that bypasses the subscription index: what
/// a [`DirectSource`] delivers through it goes to that mailbox alone, under
/// the inlet's policy, carrying the inlet's tag. Cheap to clone; it keeps
/// the queue's memory (not its consumer) alive.
///
/// Made with [`Mailbox::inlet`](super::Mailbox::inlet).
#[derive(Debug, Clone)]
pub struct Inlet {
    target: Target,
}

impl Inlet {
    pub(super) fn new(target: Target) -> Self {
        Self { target }
    }

    /// The policy its deliveries are under.
    pub fn policy(&self) -> SlowConsumerPolicy {
        self.target.policy
    }

    /// Counts an event meant for this mailbox that will never reach it (it
    /// arrived malformed, say): [`Mailbox::dropped`](super::Mailbox::dropped)
    /// says so, as it says every other loss.
    pub fn count_dropped(&self) {
        self.target.miss();
    }

    /// No more events will come through this mailbox's queue, from any
    /// source: its consumer receives what is queued, then
    /// [`RecvError::Closed`](super::RecvError::Closed), as when a bus shuts
    /// down; a `Block` delivery owed to it is dropped and counted.
    pub fn close_mailbox(&self) {
        self.target.queue.close();
    }
}

/// One source of events delivered through [`Inlet`]s: a client
/// connection's reader, say. Like a [`Publisher`](super::Publisher) it
/// writes events into its own segments of event memory and keeps its order
/// per consumer, and a full `Block` consumer holds it (and only it) back;
/// unlike one, it never looks at the subscription index.
///
/// `Send`, not `Sync`: one thread delivers at a time.
#[derive(Debug)]
pub struct DirectSource {
    appender: Appender,
    /// What this source owes full `Block` queues, and its lanes.
    backlog: Backlog,
    /// Queues delivered to since the last wake-up.
    wakes: Wakes,
    /// Deliveries queued since the last wake-up.
    unwoken: usize,
}

/// Most deliveries a [`DirectSource`] queues before it makes them visible
/// and wakes their consumers, even within a batch: a batch of hundreds
/// would otherwise keep an awake consumer idle while its queue fills (and a
/// small drop-policy queue dropping what it could have taken), and a fence
/// per 32 events costs next to nothing.
const WAKE_EVERY: usize = 32;

impl DirectSource {
    pub(super) fn new(pool: Arc<SegmentPool>) -> Self {
        Self {
            appender: Appender::new(pool),
            backlog: Backlog::new(),
            wakes: Wakes::default(),
            unwoken: 0,
        }
    }

    /// Copies `archive` once into event memory and hands it to `inlet`'s
    /// queue under its policy. Under `Block`, a full queue holds this call
    /// until there is room (at most `max_stall` per episode; then the queue
    /// is demoted and the event dropped and counted there); the drop
    /// policies drop and count without waiting.
    ///
    /// An event for a mailbox that is gone (its queue closed) is dropped
    /// and counted there, as a `Block` delivery owed to it would be.
    ///
    /// Consumers are woken only every 32 deliveries: call
    /// [`DirectSource::wake`] after a batch of them (before this thread waits
    /// for anything else), or the last ones stay invisible to a consumer
    /// that sleeps. (One that must make room for a held delivery is woken
    /// first.)
    ///
    /// Fails only when the bus's event memory is spent: the event is then
    /// not stored, and the mailbox counts it as dropped.
    pub fn deliver(&mut self, inlet: &Inlet, archive: Checked<'_>) -> Result<(), AppendError> {
        let target = &inlet.target;
        if target.queue.is_closed() {
            target.miss();
            return Ok(());
        }
        let mut holds = match self.appender.append_archive(archive.bytes(), 1) {
            Ok(holds) => holds,
            Err(error) => {
                target.miss();
                return Err(error);
            }
        };
        let record = holds.next().expect("one hold was asked for");
        match target.deliver(record, self.backlog.lanes()) {
            Outcome::Queued => {
                let mut waking = Waking::Deferred {
                    wakes: &mut self.wakes,
                    result: None,
                };
                waking.delivered_to(target, self.backlog.lanes());
                self.unwoken += 1;
                if self.unwoken == WAKE_EVERY {
                    self.wake();
                }
            }
            Outcome::Dropped => {}
            Outcome::Full(record) => {
                self.backlog.owe(target, record, target.tag);
                // The consumer may be asleep, not yet woken for this batch,
                // and must be awake to make room.
                self.wake();
                self.backlog.flush_blocking();
            }
        }
        Ok(())
    }

    /// Makes every delivery since the last call visible and wakes the
    /// consumers that sleep: one fence for them all.
    pub fn wake(&mut self) {
        self.unwoken = 0;
        self.wakes.wake_all(self.backlog.lanes());
    }

    /// Queues this source has demoted because they held it back for their
    /// whole `max_stall`, in all.
    pub fn demotions(&self) -> u64 {
        self.backlog.demotions()
    }
}

impl Drop for DirectSource {
    fn drop(&mut self) {
        // Nothing delivered may stay invisible to a consumer that sleeps.
        self.wake();
    }
}

impl super::Bus {
    /// A source that delivers through [`Inlet`]s, writing into this bus's
    /// event memory (see [`DirectSource`]).
    pub fn direct_source(&self) -> DirectSource {
        DirectSource::new(self.inner().pool.clone())
    }
}
