//! When the consumers of a publish are woken: at once, after one fence per
//! event ([`Waking::Now`]), or once for a whole batch ([`Wakes`]).
//!
//! The publisher's half of the park handshake (see `crate::signal`) is a
//! SeqCst fence after its deliveries and a look at each consumer's
//! `sleeping` flag after the fence. Nothing requires one fence per event:
//! every delivery of a batch comes before the one fence in program order
//! (published into its lane right before the fence, with one store per lane),
//! so a consumer that announced sleep before it is seen sleeping, and one
//! that announced it after sees every delivery of the batch in its re-check.
//! A batch therefore fences once and looks at each consumer it delivered to
//! once. It also notes a match result's plain consumers once per run of
//! events routed with that result (the same [`ResultStamp`]), not once per
//! event: noting them per event was 8.7% of a batch 1 → 1 publisher's
//! samples (`perf`).

use std::sync::Arc;

use super::Target;
use super::lanes::LaneOwner;
use super::queue::DeliveryQueue;
use crate::signal::publish_fence;
use crate::sublist::ResultStamp;

/// When the consumers an event is delivered to are woken.
#[derive(Debug)]
pub(crate) enum Waking<'a> {
    /// After this event: one fence, then each consumer that sleeps.
    Now,
    /// After the batch: the consumers are noted in `wakes`, and
    /// [`Wakes::wake_all`] fences once for them all.
    Deferred {
        wakes: &'a mut Wakes,
        /// The stamp of the match result the event is routed with, if the
        /// index reader memoized it.
        result: Option<ResultStamp>,
    },
}

impl Waking<'_> {
    /// The event was delivered to the plain targets of its match result,
    /// `targets`, by the source `owner`.
    pub(crate) fn delivered_to_plain(&mut self, targets: &[Target], owner: &LaneOwner) {
        match self {
            Waking::Now => wake_now(targets, owner),
            Waking::Deferred { wakes, result } => {
                if result.is_none() || wakes.noted_plain != *result {
                    targets.iter().for_each(|target| wakes.add(&target.queue));
                    wakes.noted_plain = *result;
                }
            }
        }
    }

    /// The event was delivered to `target` by the source `owner`.
    pub(crate) fn delivered_to(&mut self, target: &Target, owner: &LaneOwner) {
        match self {
            Waking::Now => wake_now(std::slice::from_ref(target), owner),
            Waking::Deferred { wakes, .. } => wakes.add(&target.queue),
        }
    }
}

/// Publishes `owner`'s lane in each of `targets`' queues, fences once and
/// wakes each target whose consumer sleeps.
fn wake_now(targets: &[Target], owner: &LaneOwner) {
    for target in targets {
        target.queue.lanes.publish(owner);
    }
    publish_fence();
    for target in targets {
        target.queue.signal.wake_if_sleeping();
    }
}

/// The consumers a batch of publishes delivered to, to be woken after it.
/// Keeps its capacity, so a publisher allocates for it only while its
/// batches grow.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    queues: Vec<Arc<DeliveryQueue>>,
    /// The match result whose plain targets are all in `queues` (noted since
    /// the last wake), if it was memoized.
    noted_plain: Option<ResultStamp>,
}

/// How many of the latest noted queues a new one is compared with: a batch
/// mostly goes to the same few consumers, and a queue noted twice is only
/// looked at twice (waking is idempotent), so a full search is not worth
/// its cost on batches to many consumers.
const RECENT: usize = 4;

impl Wakes {
    /// Notes a queue delivered to.
    fn add(&mut self, queue: &Arc<DeliveryQueue>) {
        let recent = &self.queues[self.queues.len().saturating_sub(RECENT)..];
        if !recent.iter().any(|known| Arc::ptr_eq(known, queue)) {
            self.queues.push(queue.clone());
        }
    }

    /// Publishes what the source `owner` pushed into each noted queue's
    /// lane, fences once and wakes each noted consumer that sleeps.
    pub(crate) fn wake_all(&mut self, owner: &LaneOwner) {
        self.noted_plain = None;
        if self.queues.is_empty() {
            return;
        }
        for queue in &self.queues {
            queue.lanes.publish(owner);
        }
        publish_fence();
        for queue in self.queues.drain(..) {
            queue.signal.wake_if_sleeping();
        }
    }
}
