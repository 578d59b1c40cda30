//! [`Backlog`]: what one source owes to consumers that had no room.
//!
//! A source is whatever publishes events in an order that must be kept: an
//! in-process publisher, one client connection, one data stream of a mesh
//! link. When an event it publishes meets a full `Block` queue, the
//! deliveries that did not fit are kept here, and the source publishes
//! nothing more until they are handed over — so its order is kept and only
//! it is held back. A thread waits for that ([`Backlog::flush_blocking`]); an
//! I/O loop or a task stops reading the source and polls
//! ([`Backlog::poll_flush`]), woken by the queue's space signal.
//!
//! The wait is bounded per episode: once the owed deliveries have waited
//! `max_stall` (the strictest of their subscriptions'), each queue still
//! full is demoted and the delivery dropped and counted there.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::Target;
use super::lanes::LaneOwner;
use super::queue::{DeliveryQueue, Outcome, SlowConsumerPolicy};
use crate::log::RecordRef;
use crate::signal::publish_fence;

/// Deliveries a source owes to full `Block` queues, and the source's
/// identity for the lanes it delivers through (see `bus::lanes`): every
/// delivery of a source, owed or not, goes through its backlog. Reused across
/// episodes: its lists keep their capacity, so a stalled source allocates
/// nothing in steady state. Dropping it gives its lanes back.
#[derive(Debug, Default)]
pub struct Backlog {
    lanes: LaneOwner,
    owed: Vec<Owed>,
    /// The same list's spare half: a pass moves what is still owed here.
    still_owed: Vec<Owed>,
    /// Queues found full during a pass: later deliveries to them wait too,
    /// so that each queue gets a source's events in order.
    full: Vec<Arc<DeliveryQueue>>,
    /// When the current episode began: the first delivery that did not fit.
    since: Option<Instant>,
    /// Times a queue was demoted because it held this source back too long.
    demotions: u64,
}

#[derive(Debug)]
struct Owed {
    target: Target,
    record: RecordRef,
    tag: u64,
}

impl Backlog {
    /// An empty backlog.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when nothing is owed: the source may publish again.
    pub fn is_empty(&self) -> bool {
        self.owed.is_empty()
    }

    /// Deliveries owed.
    pub fn len(&self) -> usize {
        self.owed.len()
    }

    /// Queues this source has demoted, in all.
    pub fn demotions(&self) -> u64 {
        self.demotions
    }

    /// When the current episode ends by demotion, if anything is owed.
    pub fn deadline(&self) -> Option<Instant> {
        let since = self.since?;
        let max_stall = self.owed.iter().map(|owed| owed.target.max_stall()).min()?;
        Some(since + max_stall)
    }

    /// The source's identity for lanes.
    pub(crate) fn lanes(&mut self) -> &mut LaneOwner {
        &mut self.lanes
    }

    /// Keeps a delivery (a hold on `record`, tagged `tag`) that met a full
    /// queue.
    pub(crate) fn owe(&mut self, target: &Target, record: RecordRef, tag: u64) {
        if self.owed.is_empty() {
            self.since = Some(Instant::now());
        }
        self.owed.push(Owed {
            target: target.clone(),
            record,
            tag,
        });
    }

    /// Hands over what now fits. `Ready` once nothing is owed; otherwise
    /// `cx`'s waker is registered with every queue still full and woken when
    /// one drains (or is demoted or closed). Past the episode's deadline,
    /// queues still full are demoted and their deliveries dropped, counted.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.owed.is_empty() {
            return Poll::Ready(());
        }
        let now = Instant::now();
        self.pass(Some(now));
        if self.owed.is_empty() {
            return Poll::Ready(());
        }
        for queue in &self.full {
            queue.space.register(cx.waker());
        }
        // Room may have come between the pass and the registration: look
        // again now that a consumer that frees room will see us waiting.
        self.pass(None);
        if self.owed.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits on this thread until nothing is owed (at most the episode's
    /// `max_stall`).
    pub fn flush_blocking(&mut self) {
        // Every publish one at a time ends here, mostly owing nothing: the
        // thread's waker is a clone of an `Arc`, two atomic read-modify-writes
        // per publish that a send on a channel does not pay.
        if self.is_empty() {
            return;
        }
        let waker = crate::signal::current_thread_waker();
        let mut cx = Context::from_waker(&waker);
        while self.poll_flush(&mut cx).is_pending() {
            let Some(deadline) = self.deadline() else {
                return;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            // A wake-up may be spurious (another queue drained, or a stale
            // registration): the loop looks again either way.
            crate::signal::park_for(left.max(Duration::from_micros(1)));
        }
    }

    /// One pass over what is owed, in order: deliver what fits, drop what a
    /// demoted queue refuses, and demote a queue still full once its own
    /// subscription's `max_stall` has passed since the episode began (as of
    /// `now`; never if `None`). Each subscription's bound is its own: a
    /// patient one is not demoted because an impatient one was.
    fn pass(&mut self, now: Option<Instant>) {
        let since = self.since;
        let expired = |target: &Target| match (now, since) {
            (Some(now), Some(since)) => now >= since + target.max_stall(),
            _ => false,
        };
        self.full.clear();
        for Owed {
            target,
            record,
            tag,
        } in self.owed.drain(..)
        {
            let queue = &target.queue;
            if self.full.iter().any(|full| Arc::ptr_eq(full, queue)) {
                self.still_owed.push(Owed {
                    target,
                    record,
                    tag,
                });
                continue;
            }
            match queue.deliver_or_owe(record, tag, &mut self.lanes) {
                Outcome::Queued => {
                    // Owed deliveries are few (one per full queue an event
                    // met): a fence each costs nothing next to the wait.
                    queue.lanes.publish(&self.lanes);
                    publish_fence();
                    queue.signal.wake_if_sleeping();
                }
                Outcome::Dropped => target.count_dropped(),
                Outcome::Full(record) if expired(&target) => {
                    queue.demote();
                    self.demotions += 1;
                    drop(record);
                    queue.count_dropped();
                    target.count_dropped();
                }
                Outcome::Full(record) => {
                    self.full.push(queue.clone());
                    self.still_owed.push(Owed {
                        target,
                        record,
                        tag,
                    });
                }
            }
        }
        std::mem::swap(&mut self.owed, &mut self.still_owed);
        if self.owed.is_empty() {
            self.since = None;
            self.full.clear();
        }
    }
}

impl Target {
    /// The episode bound of this subscription's policy.
    pub(crate) fn max_stall(&self) -> Duration {
        match self.policy {
            SlowConsumerPolicy::Block { max_stall } => max_stall,
            // Only `Block` deliveries are ever owed.
            SlowConsumerPolicy::DropNewest | SlowConsumerPolicy::DropOldest => Duration::ZERO,
        }
    }
}
