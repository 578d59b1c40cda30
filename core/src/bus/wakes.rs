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
//! once.

use std::sync::Arc;

use super::Target;
use super::lanes::LaneOwner;
use super::queue::DeliveryQueue;
use crate::signal::publish_fence;

/// When the consumers an event is delivered to are woken.
#[derive(Debug)]
pub(crate) enum Waking<'a> {
    /// After this event: one fence, then each consumer that sleeps.
    Now,
    /// After the batch: the consumers are noted in `Wakes`, and
    /// [`Wakes::wake_all`] fences once for them all.
    Deferred(&'a mut Wakes),
}

impl Waking<'_> {
    /// The event was delivered to each of `targets` by the source `owner`.
    pub(crate) fn delivered_to_all(&mut self, targets: &[Target], owner: &LaneOwner) {
        match self {
            Waking::Now => {
                for target in targets {
                    target.queue.lanes.publish(owner);
                }
                publish_fence();
                for target in targets {
                    target.queue.signal.wake_if_sleeping();
                }
            }
            Waking::Deferred(wakes) => targets.iter().for_each(|target| wakes.add(&target.queue)),
        }
    }

    /// The event was delivered to `target` by the source `owner`.
    pub(crate) fn delivered_to(&mut self, target: &Target, owner: &LaneOwner) {
        self.delivered_to_all(std::slice::from_ref(target), owner);
    }
}

/// The consumers a batch of publishes delivered to, to be woken after it.
/// Keeps its capacity, so a publisher allocates for it only while its
/// batches grow.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    queues: Vec<Arc<DeliveryQueue>>,
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
