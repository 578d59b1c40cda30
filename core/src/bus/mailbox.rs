//! [`Mailbox`]: the read side of the bus. One bounded queue, fed by any number
//! of subscriptions, read by one consumer at a time: a thread (blocking
//! receive), a task (async receive) or an I/O loop (poll with its own waker).

use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::direct::Inlet;
use super::event_ref::EventRef;
use super::queue::{DeliveryQueue, QueueShape};
use super::{BusInner, RecvError, SlowConsumerPolicy, SubscribeError, SubscribeOptions, Target};
use crate::log::BatchRelease;

/// A consumer of the bus with its own queue. Each subscription added to it
/// carries a tag, and every event it receives says which tag matched.
///
/// `Send` but not `Sync`: one consumer receives at a time. Dropping the mailbox
/// removes all its subscriptions.
pub struct Mailbox {
    inner: Arc<BusInner>,
    queue: Arc<DeliveryQueue>,
    /// Subscriptions stand for a peer's interest (see `Bus::peer_mailbox`).
    remote: bool,
    /// The policy of subscriptions added without one.
    policy: SlowConsumerPolicy,
    entries: Vec<Entry>,
    _single_consumer: PhantomData<Cell<()>>,
}

struct Entry {
    tag: u64,
    target: Target,
    pattern: Arc<str>,
    group: Option<Arc<str>>,
}

impl Mailbox {
    pub(super) fn new(inner: Arc<BusInner>, options: SubscribeOptions, remote: bool) -> Self {
        let queue = DeliveryQueue::new(
            inner.next_id(),
            QueueShape {
                capacity: options.capacity,
                pending_bytes_max: options.pending_bytes_max,
                segment_bytes: inner.config.segment_bytes,
                spin: inner.config.spin,
            },
            inner.queue_census.clone(),
        );
        Self {
            inner,
            remote,
            policy: options.policy,
            queue: Arc::new(queue),
            entries: Vec::new(),
            _single_consumer: PhantomData,
        }
    }

    /// Adds a subscription to `pattern` (in queue group `group`, if given)
    /// whose deliveries carry `tag`, with the mailbox's policy. Several
    /// subscriptions may share a tag.
    pub fn subscribe(
        &mut self,
        tag: u64,
        pattern: &str,
        group: Option<&str>,
    ) -> Result<(), SubscribeError> {
        self.subscribe_with_policy(tag, pattern, group, self.policy)
    }

    /// Like [`Mailbox::subscribe`], with this subscription's own policy for
    /// when the mailbox is full: its events wait (`Block`, holding back their
    /// publishers) or are dropped, whatever the mailbox's other
    /// subscriptions do.
    pub fn subscribe_with_policy(
        &mut self,
        tag: u64,
        pattern: &str,
        group: Option<&str>,
        policy: SlowConsumerPolicy,
    ) -> Result<(), SubscribeError> {
        let target = self.target(tag, policy);
        let (pattern, group) = self
            .inner
            .add_subscription(pattern, group, target.clone())?;
        self.entries.push(Entry {
            tag,
            target,
            pattern,
            group,
        });
        Ok(())
    }

    /// Removes every subscription with `tag`; returns how many there were.
    /// Events they already queued stay queued.
    pub fn unsubscribe(&mut self, tag: u64) -> usize {
        let before = self.entries.len();
        let mut kept = Vec::with_capacity(before);
        for entry in self.entries.drain(..) {
            if entry.tag == tag {
                self.inner
                    .remove_subscription(entry.pattern, entry.group, entry.target);
            } else {
                kept.push(entry);
            }
        }
        self.entries = kept;
        before - self.entries.len()
    }

    /// A way into this mailbox's queue that bypasses the subscription
    /// index (see [`Inlet`]): what a [`DirectSource`](super::DirectSource)
    /// delivers through it comes here alone, tagged `tag`, under `policy`.
    /// Inlets are not subscriptions: they are not counted or listed as such,
    /// and the mailbox's consumer cannot tell their events from others.
    pub fn inlet(&self, tag: u64, policy: SlowConsumerPolicy) -> Inlet {
        Inlet::new(self.target(tag, policy))
    }

    /// A new way into this mailbox's queue, with counters of its own.
    fn target(&self, tag: u64, policy: SlowConsumerPolicy) -> Target {
        Target {
            id: self.inner.next_id(),
            queue: self.queue.clone(),
            tag,
            remote: self.remote,
            policy,
            stats: Default::default(),
        }
    }

    /// Number of subscriptions feeding this mailbox.
    pub fn subscription_count(&self) -> usize {
        self.entries.len()
    }

    /// The next event, if one is queued.
    pub fn try_recv(&self) -> Option<EventRef> {
        self.queue.try_take().map(EventRef::new)
    }

    /// Waits for the next event. Errors only when the bus is closed and the
    /// queue drained.
    pub fn recv(&self) -> Result<EventRef, RecvError> {
        self.receive(None)
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<EventRef, RecvError> {
        self.receive(Some(Instant::now() + timeout))
    }

    /// Waits until `deadline` for the next event.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<EventRef, RecvError> {
        self.receive(Some(deadline))
    }

    /// Takes up to `max` events that are queued now, without waiting, and
    /// lends each to `each`, in order. Returns how many it took.
    ///
    /// Faster than [`Mailbox::try_recv`] in a loop: the queue is claimed
    /// once for the whole batch, and the events' memory is released once per
    /// run of events that lie side by side (as a publisher's do) instead of
    /// once per event, so the consumer's core hands a cache line back to the
    /// publisher's per batch, not per event. The events are only lent: copy
    /// out whatever must outlive the call.
    ///
    /// ```
    /// use starling_core::Bus;
    ///
    /// let bus = Bus::default();
    /// let prices = bus.subscribe("prices.>")?;
    /// for price in [3u8, 4, 5] {
    ///     bus.publish("prices.eur", &[price])?;
    /// }
    /// let mut total = 0;
    /// let taken = prices.try_recv_batch(64, |event| total += u32::from(event.payload()[0]));
    /// assert_eq!((taken, total), (3, 12));
    /// assert_eq!(prices.try_recv_batch(64, |_| unreachable!()), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv_batch(&self, max: usize, mut each: impl FnMut(&EventRef)) -> usize {
        self.try_take_batch(max, |event| {
            each(&event);
            Some(event)
        })
    }

    /// Polls for a batch, for consumers that are neither threads nor tasks
    /// (an I/O loop): takes up to `max` queued events as
    /// [`Mailbox::try_recv_batch`] does, but hands each over. `each` keeps
    /// an event (returns `None`) or gives back one it is done with (this
    /// one, or one it kept before) to be released with the rest of the
    /// batch, once per run of events side by side. With
    /// none queued, registers `cx`'s waker, woken when one is. `Ready(Ok(n))`
    /// with `n > 0` unless `max` is 0; an error only when the bus is closed
    /// and the queue drained.
    pub fn poll_recv_batch(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        mut each: impl FnMut(EventRef) -> Option<EventRef>,
    ) -> Poll<Result<usize, RecvError>> {
        let taken = self.try_take_batch(max, &mut each);
        if taken > 0 || max == 0 {
            return Poll::Ready(Ok(taken));
        }
        if self.queue.poll_ready(cx).is_pending() {
            return Poll::Pending;
        }
        match self.try_take_batch(max, &mut each) {
            0 if self.queue.is_closed() => Poll::Ready(Err(RecvError::Closed)),
            0 => {
                // Seen, then taken by nobody else (one consumer): a stale
                // look. Poll again soon rather than sleep on it.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            taken => Poll::Ready(Ok(taken)),
        }
    }

    /// Takes up to `max` events that are queued now, without waiting or
    /// registering a waker, and hands each to `each`, which keeps it or
    /// gives back one to be released with the batch, as in
    /// [`Mailbox::poll_recv_batch`]. Returns how many it took. For a
    /// consumer that polls once for the first batch of a round and takes
    /// what else is queued without asking to be woken for more.
    ///
    /// ```
    /// use starling_core::Bus;
    ///
    /// let bus = Bus::default();
    /// let mut orders = bus.mailbox(Default::default());
    /// orders.subscribe(1, "orders.>", None)?;
    /// for order in [1u8, 2, 3] {
    ///     bus.publish("orders.new", &[order])?;
    /// }
    /// // Keeps the latest, and gives back the one it kept before.
    /// let mut latest = None;
    /// let taken = orders.try_take_batch(64, |event| latest.replace(event));
    /// assert_eq!(taken, 3);
    /// assert_eq!(latest.expect("kept").payload(), [3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_take_batch(
        &self,
        max: usize,
        mut each: impl FnMut(EventRef) -> Option<EventRef>,
    ) -> usize {
        let mut release = BatchRelease::default();
        let batch = self.queue.take_batch(max);
        let taken = batch.taken();
        for delivery in batch {
            if let Some(event) = each(EventRef::new(delivery)) {
                release.release(event.into_delivery().record);
            }
        }
        taken
    }

    /// Waits for at least one event, then takes up to `max` as
    /// [`Mailbox::try_recv_batch`] does. Errors only when the bus is closed
    /// and the queue drained.
    ///
    /// ```
    /// use std::time::Duration;
    /// use starling_core::Bus;
    ///
    /// let bus = Bus::default();
    /// let ticks = bus.subscribe("ticks")?;
    /// let publisher = {
    ///     let bus = bus.clone();
    ///     std::thread::spawn(move || bus.publish("ticks", b"t"))
    /// };
    /// let mut seen = 0;
    /// while seen < 1 {
    ///     seen += ticks.recv_batch_timeout(256, Duration::from_secs(5), |event| {
    ///         assert_eq!(event.subject(), "ticks");
    ///     })?;
    /// }
    /// publisher.join().unwrap()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_batch(&self, max: usize, each: impl FnMut(&EventRef)) -> Result<usize, RecvError> {
        self.receive_batch(None, max, each)
    }

    /// Like [`Mailbox::recv_batch`], waiting at most `timeout` for the first
    /// event.
    pub fn recv_batch_timeout(
        &self,
        max: usize,
        timeout: Duration,
        each: impl FnMut(&EventRef),
    ) -> Result<usize, RecvError> {
        self.receive_batch(Some(Instant::now() + timeout), max, each)
    }

    /// The next event, for async code.
    pub fn recv_async(&self) -> Recv<'_> {
        Recv { mailbox: self }
    }

    /// Polls for the next event; registers `cx`'s waker if there is none. For
    /// consumers that are neither threads nor tasks, such as an I/O loop that
    /// passes a waker that writes to its eventfd.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<EventRef, RecvError>> {
        self.queue
            .poll_take(cx)
            .map(|delivery| delivery.map(EventRef::new).ok_or(RecvError::Closed))
    }

    /// Events received so far.
    pub fn received(&self) -> u64 {
        self.queue.received()
    }

    /// Events this mailbox missed because it was full (or the bus's memory
    /// was spent). Exact.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Events waiting to be received.
    pub fn pending(&self) -> usize {
        self.queue.pending()
    }

    /// Bytes of event memory the waiting events are charged for (whole
    /// segments: see [`SubscribeOptions::pending_bytes_max`]).
    pub fn pending_bytes(&self) -> u64 {
        self.queue.pending_bytes()
    }

    /// Times this mailbox was demoted: it held a publisher back for its
    /// whole `max_stall`, and its events were dropped until it drained.
    pub fn demotions(&self) -> u64 {
        self.queue.demotions()
    }

    /// Most events the queue holds.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// A read-only handle on this mailbox's counters, for monitoring from
    /// other threads.
    pub fn counters(&self) -> QueueCounters {
        QueueCounters(self.queue.clone())
    }

    fn receive(&self, deadline: Option<Instant>) -> Result<EventRef, RecvError> {
        match self.queue.take_blocking(deadline) {
            Some(delivery) => Ok(EventRef::new(delivery)),
            None if self.queue.is_closed() => Err(RecvError::Closed),
            None => Err(RecvError::Timeout),
        }
    }

    fn receive_batch(
        &self,
        deadline: Option<Instant>,
        max: usize,
        mut each: impl FnMut(&EventRef),
    ) -> Result<usize, RecvError> {
        loop {
            let taken = self.try_recv_batch(max, &mut each);
            if taken > 0 || max == 0 {
                return Ok(taken);
            }
            if !self.queue.wait_for_delivery(deadline) {
                return match self.try_recv_batch(max, &mut each) {
                    0 if self.queue.is_closed() => Err(RecvError::Closed),
                    0 => Err(RecvError::Timeout),
                    taken => Ok(taken),
                };
            }
        }
    }

    pub(super) fn first_subscription(&self) -> Option<(&str, Option<&str>)> {
        self.entries
            .first()
            .map(|e| (&*e.pattern, e.group.as_deref()))
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        for entry in self.entries.drain(..) {
            self.inner
                .remove_subscription(entry.pattern, entry.group, entry.target);
        }
        // Nobody will read it again: publishers that still owe it a delivery
        // (they matched it before it left the index) drop and count it
        // instead of waiting for room that never comes.
        self.queue.close();
    }
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("subscriptions", &self.entries.len())
            .field("queue", &self.queue)
            .finish()
    }
}

/// Reads a mailbox's counters from any thread ([`Mailbox::counters`]).
#[derive(Debug, Clone)]
pub struct QueueCounters(Arc<DeliveryQueue>);

impl QueueCounters {
    /// The mailbox's id, as [`crate::QueueInfo::id`] shows it.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// See [`Mailbox::received`].
    pub fn received(&self) -> u64 {
        self.0.received()
    }

    /// See [`Mailbox::dropped`].
    pub fn dropped(&self) -> u64 {
        self.0.dropped()
    }

    /// See [`Mailbox::pending`].
    pub fn pending(&self) -> usize {
        self.0.pending()
    }

    /// See [`Mailbox::pending_bytes`].
    pub fn pending_bytes(&self) -> u64 {
        self.0.pending_bytes()
    }

    /// See [`Mailbox::demotions`].
    pub fn demotions(&self) -> u64 {
        self.0.demotions()
    }
}

/// The future of [`Mailbox::recv_async`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Recv<'a> {
    mailbox: &'a Mailbox,
}

impl<'a> Future for Recv<'a> {
    type Output = Result<EventRef, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.mailbox.poll_recv(cx)
    }
}
