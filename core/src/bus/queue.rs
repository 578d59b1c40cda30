//! The delivery queue of one consumer: a bounded ring of holds on records, the
//! slow-consumer policy applied when it is full, exact counters, and the
//! wake-up signal.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::log::RecordRef;
use crate::ring::Ring;
use crate::signal::Signal;
use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// How long a publisher blocked on a full queue yields before it sleeps.
const BLOCK_YIELD: Duration = Duration::from_millis(1);
/// How long it then sleeps between tries.
const BLOCK_SLEEP: Duration = Duration::from_micros(50);

/// What happens to an event that arrives when a consumer's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Drop the arriving event (the default). The publisher never waits.
    #[default]
    DropNewest,
    /// Drop the oldest queued event to make room. The publisher never waits;
    /// the consumer sees the most recent events.
    DropOldest,
    /// Make the publisher wait up to `timeout` for room, then drop the
    /// arriving event. Only for in-process consumers that must not lose events
    /// under short bursts; a stuck consumer still cannot stall publishers for
    /// longer than the timeout per event.
    Block {
        /// Longest wait per event.
        timeout: Duration,
    },
}

/// One delivery: a hold on a record, and the tag of the subscription it matched.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) record: RecordRef,
    pub(crate) tag: u64,
}

/// Whether a delivery went into the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Queued,
    Dropped,
}

/// A consumer's queue.
pub(crate) struct DeliveryQueue {
    /// Unique within the bus; names the queue (a mailbox) in listings.
    pub(crate) id: u64,
    ring: Ring<Delivery>,
    policy: SlowConsumerPolicy,
    pub(crate) signal: Signal,
    /// Events this consumer missed. Written by publishers.
    dropped: CachePadded<AtomicU64>,
    /// Events this consumer took out. Written by the consumer only.
    received: CachePadded<AtomicU64>,
    closed: AtomicBool,
    spin: Duration,
}

impl DeliveryQueue {
    pub(crate) fn new(
        id: u64,
        capacity: usize,
        policy: SlowConsumerPolicy,
        spin: Duration,
    ) -> Self {
        assert!(capacity > 0, "a delivery queue needs room for one event");
        Self {
            id,
            ring: Ring::new(capacity),
            policy,
            signal: Signal::default(),
            dropped: CachePadded::new(AtomicU64::new(0)),
            received: CachePadded::new(AtomicU64::new(0)),
            closed: AtomicBool::new(false),
            spin,
        }
    }

    /// Publisher side: queues `delivery` under the policy. The caller then
    /// runs [`crate::signal::publish_fence`] and [`Signal::wake_if_sleeping`].
    pub(crate) fn deliver(&self, delivery: Delivery) -> Outcome {
        match self.policy {
            SlowConsumerPolicy::DropNewest => self.offer(delivery),
            SlowConsumerPolicy::DropOldest => {
                self.ring.force_push(delivery, |evicted| {
                    self.count_dropped();
                    drop(evicted);
                });
                Outcome::Queued
            }
            SlowConsumerPolicy::Block { timeout } => self.deliver_within(delivery, timeout),
        }
    }

    /// Queues `delivery` if there is room, else drops it and counts it.
    pub(crate) fn offer(&self, delivery: Delivery) -> Outcome {
        match self.try_offer(delivery) {
            Ok(()) => Outcome::Queued,
            Err(rejected) => {
                self.count_dropped();
                drop(rejected);
                Outcome::Dropped
            }
        }
    }

    /// Queues `delivery` if there is room; hands it back otherwise, uncounted.
    pub(crate) fn try_offer(&self, delivery: Delivery) -> Result<(), Delivery> {
        self.ring.push(delivery)
    }

    fn deliver_within(&self, mut delivery: Delivery, timeout: Duration) -> Outcome {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut attempt = 0u32;
        loop {
            match self.ring.push(delivery) {
                Ok(()) => return Outcome::Queued,
                Err(rejected) => delivery = rejected,
            }
            if self.closed.load(Ordering::Relaxed) {
                return self.offer(delivery);
            }
            // Back off without being woken (so consumers pay nothing for
            // blocked publishers): spin a little, then yield for the first
            // millisecond (on two cores the consumer often needs this very
            // core), then sleep in short steps until the deadline.
            attempt += 1;
            if attempt <= 64 {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return self.offer(delivery);
            }
            if now - started < BLOCK_YIELD {
                std::thread::yield_now();
            } else {
                std::thread::sleep(BLOCK_SLEEP.min(deadline - now));
            }
        }
    }

    /// Counts one event this consumer will never see.
    pub(crate) fn count_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Consumer side: the next delivery, if any.
    pub(crate) fn try_take(&self) -> Option<Delivery> {
        let delivery = self.ring.pop()?;
        // A single writer: a load and a store are enough, and cheaper than an
        // atomic add. Relaxed: the counter orders nothing.
        let received = self.received.load(Ordering::Relaxed);
        self.received.store(received + 1, Ordering::Relaxed);
        Some(delivery)
    }

    /// Consumer side: waits for a delivery until `deadline` (forever if
    /// `None`). `None` on timeout, or when closed and drained.
    pub(crate) fn take_blocking(&self, deadline: Option<Instant>) -> Option<Delivery> {
        loop {
            if let Some(delivery) = self.try_take() {
                return Some(delivery);
            }
            if self.is_closed() {
                return None;
            }
            let ready = self.signal.wait(self.spin, deadline, || {
                !self.ring.is_empty() || self.is_closed()
            });
            if !ready {
                return self.try_take();
            }
        }
    }

    /// Consumer side, async: the next delivery, or `Ready(None)` when closed
    /// and drained.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        if let Some(delivery) = self.try_take() {
            return Poll::Ready(Some(delivery));
        }
        if self.is_closed() {
            return Poll::Ready(None);
        }
        self.signal.prepare_to_sleep(cx.waker());
        if !self.ring.is_empty() || self.is_closed() {
            self.signal.awake();
            return match self.try_take() {
                Some(delivery) => Poll::Ready(Some(delivery)),
                None if self.is_closed() => Poll::Ready(None),
                None => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            };
        }
        Poll::Pending
    }

    /// No more deliveries will come: wakes the consumer so that it drains and stops.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.signal.wake();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub(crate) fn pending(&self) -> usize {
        self.ring.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.ring.capacity()
    }
}

impl std::fmt::Debug for DeliveryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryQueue")
            .field("pending", &self.pending())
            .field("capacity", &self.capacity())
            .field("policy", &self.policy)
            .field("received", &self.received())
            .field("dropped", &self.dropped())
            .finish()
    }
}
