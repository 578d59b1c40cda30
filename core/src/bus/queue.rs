//! The delivery queue of one consumer: bounded lanes and a ring of holds on
//! records (see `bus::lanes`), the slow-consumer policies applied when it is
//! full, the memory it is charged
//! for, exact counters, and its two signals: "an event is here" (to the
//! consumer) and "there is room again" (to the sources it held back).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use super::lanes::{LANES, LaneOwner, Lanes};
use crate::lane::LaneRun;
use crate::log::RecordRef;
use crate::ring::{ClaimedRun, Ring};
use crate::signal::{Signal, SpaceSignal};
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// How long a `Block` subscriber may hold back a publisher per episode
/// unless it says otherwise. Long enough that a healthy consumer descheduled
/// on a loaded machine is never demoted; short enough that a stuck one
/// releases its publishers quickly.
pub const DEFAULT_MAX_STALL: Duration = Duration::from_secs(2);

/// What happens to an event that arrives when a consumer's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Lossless (the default): the event waits for room and the source that
    /// published it is held back — one in-process publisher, one client
    /// connection, one data stream of a mesh link; never a whole thread. A
    /// consumer that keeps up loses nothing. If the queue stays full for
    /// `max_stall` in one episode, the consumer is *demoted*: its events are
    /// dropped and counted until it drains below its low watermark, so a
    /// stuck consumer holds nobody back for longer than that.
    Block {
        /// Longest a publisher waits for this consumer per episode.
        max_stall: Duration,
    },
    /// Drop the arriving event. The publisher never waits.
    DropNewest,
    /// Drop the oldest queued event to make room. The publisher never waits;
    /// the consumer sees the most recent events.
    DropOldest,
}

impl Default for SlowConsumerPolicy {
    fn default() -> Self {
        SlowConsumerPolicy::Block {
            max_stall: DEFAULT_MAX_STALL,
        }
    }
}

impl SlowConsumerPolicy {
    /// The policy's name as the command line and the wire protocol spell it:
    /// `block`, `drop-newest` or `drop-oldest`.
    pub fn name(&self) -> &'static str {
        match self {
            SlowConsumerPolicy::Block { .. } => "block",
            SlowConsumerPolicy::DropNewest => "drop-newest",
            SlowConsumerPolicy::DropOldest => "drop-oldest",
        }
    }

    /// The policy named `name` (see [`SlowConsumerPolicy::name`]); `block`
    /// gets `max_stall`.
    pub fn from_name(name: &str, max_stall: Duration) -> Result<Self, UnknownPolicy> {
        match name {
            "block" => Ok(SlowConsumerPolicy::Block { max_stall }),
            "drop-newest" => Ok(SlowConsumerPolicy::DropNewest),
            "drop-oldest" => Ok(SlowConsumerPolicy::DropOldest),
            _ => Err(UnknownPolicy(name.into())),
        }
    }

    /// This policy with `max_stall` if it is `Block`.
    pub fn with_max_stall(self, max_stall: Duration) -> Self {
        match self {
            SlowConsumerPolicy::Block { .. } => SlowConsumerPolicy::Block { max_stall },
            other => other,
        }
    }
}

impl fmt::Display for SlowConsumerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SlowConsumerPolicy {
    type Err = UnknownPolicy;

    /// `block` (with [`DEFAULT_MAX_STALL`]), `drop-newest` or `drop-oldest`.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        SlowConsumerPolicy::from_name(name, DEFAULT_MAX_STALL)
    }
}

/// A policy name that is none of `block`, `drop-newest`, `drop-oldest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown slow-consumer policy {0:?}: expected block, drop-newest or drop-oldest")]
pub struct UnknownPolicy(String);

/// One delivery: a hold on a record, the tag of the subscription it matched,
/// and the bytes of event memory its queue was charged for it.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) record: RecordRef,
    pub(crate) tag: u64,
    /// A whole word, though a segment's size fits in 32 bits: a 4-byte
    /// store read back as part of an 8-byte copy (moving the delivery on)
    /// cannot be forwarded from the store buffer, and stalled every publish
    /// (measured with `perf`).
    pub(crate) charge: u64,
}

/// What became of a delivery.
#[derive(Debug)]
pub(crate) enum Outcome {
    Queued,
    Dropped,
    /// A `Block` queue had no room: the caller owes it this hold (see
    /// `Backlog`).
    Full(RecordRef),
}

/// What a consumer is charged for, and up to how much.
///
/// A hold pins its record's whole segment, so a consumer is charged whole
/// segments: a delivery whose record lies in another segment than the one
/// delivered before it is charged a segment, the others nothing. That
/// over-counts when publishers interleave (never under-counts by more than
/// the segment at the head), and it is what makes a stuck consumer of a rare
/// subject — one event per segment — full after a few segments instead of
/// pinning the node's whole event memory.
struct Charges {
    /// Bytes charged for the deliveries in the queue. Added by publishers,
    /// taken off by the consumer. Relaxed: a limit, it orders nothing.
    pending_bytes: AtomicU64,
    /// The segment of the last charged delivery (its address). Relaxed: a
    /// racing publisher at worst charges a segment twice.
    last_segment: AtomicUsize,
}

/// The delivery queues of one bus that are not freed yet, and their slots.
/// A queue counts until its memory goes (the last hold on it dropped), not
/// until its consumer does, so that a queue something keeps alive by mistake
/// shows (issue 15: departed peers' queues, 65,536 slots each, were kept).
///
/// std's atomics, not loom's, and Relaxed everywhere: figures for reports,
/// nothing is ordered through them.
#[derive(Debug, Default)]
pub(crate) struct QueueCensus {
    queues: std::sync::atomic::AtomicUsize,
    slots: std::sync::atomic::AtomicUsize,
}

impl QueueCensus {
    /// Queues not freed yet.
    pub(crate) fn queues(&self) -> usize {
        self.queues.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Their slots, in all.
    pub(crate) fn slots(&self) -> usize {
        self.slots.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count(&self, slots: usize) {
        self.queues
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.add_slots(slots);
    }

    fn add_slots(&self, slots: usize) {
        self.slots
            .fetch_add(slots, std::sync::atomic::Ordering::Relaxed);
    }

    fn uncount(&self, slots: usize) {
        self.queues
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.slots
            .fetch_sub(slots, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A consumer's queue.
pub(crate) struct DeliveryQueue {
    /// Unique within the bus; names the queue (a mailbox) in listings.
    pub(crate) id: u64,
    /// A lane for each of the first few sources that deliver here.
    pub(crate) lanes: Lanes,
    /// For the sources without a lane, and for `DropOldest` deliveries.
    ring: Ring<Delivery>,
    /// Waking the consumer.
    pub(crate) signal: Signal,
    /// Waking sources held back by this queue.
    pub(crate) space: SpaceSignal,
    charges: CachePadded<Charges>,
    /// What one segment change is charged.
    segment_bytes: u64,
    /// Most bytes the queue may be charged for.
    pending_bytes_max: u64,
    /// True while demoted: `Block` deliveries are dropped (and counted) until
    /// the queue drains to its low watermark. Read by publishers only when a
    /// delivery does not fit, or the queue is demoted; written rarely.
    demoted: AtomicBool,
    /// Times the queue was demoted.
    demotions: AtomicU64,
    /// Events this consumer missed. Written by publishers.
    dropped: CachePadded<AtomicU64>,
    /// Written by the consumer only.
    consumer: CachePadded<ConsumerSide>,
    closed: AtomicBool,
    spin: Duration,
    /// Where this queue is counted until it is freed.
    census: Arc<QueueCensus>,
}

/// What only the consumer writes.
struct ConsumerSide {
    /// Events taken out.
    received: AtomicU64,
    /// Where the next batch starts among the ring and the lanes, rotated so
    /// that none of them waits behind the others for long.
    rotation: AtomicUsize,
}

/// How a queue is made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueShape {
    pub(crate) capacity: usize,
    pub(crate) pending_bytes_max: usize,
    pub(crate) segment_bytes: usize,
    pub(crate) spin: Duration,
}

impl DeliveryQueue {
    /// A queue counted in `census` until it is dropped.
    pub(crate) fn new(id: u64, shape: QueueShape, census: Arc<QueueCensus>) -> Self {
        assert!(
            shape.capacity > 0,
            "a delivery queue needs room for one event"
        );
        census.count(shape.capacity);
        Self {
            id,
            lanes: Lanes::new(shape.capacity),
            ring: Ring::new(shape.capacity),
            signal: Signal::default(),
            space: SpaceSignal::default(),
            charges: CachePadded::new(Charges {
                pending_bytes: AtomicU64::new(0),
                last_segment: AtomicUsize::new(0),
            }),
            segment_bytes: shape.segment_bytes as u64,
            // Room for at least one segment, or nothing could ever be queued.
            pending_bytes_max: (shape.pending_bytes_max as u64).max(shape.segment_bytes as u64),
            demoted: AtomicBool::new(false),
            demotions: AtomicU64::new(0),
            dropped: CachePadded::new(AtomicU64::new(0)),
            consumer: CachePadded::new(ConsumerSide {
                received: AtomicU64::new(0),
                rotation: AtomicUsize::new(0),
            }),
            closed: AtomicBool::new(false),
            spin: shape.spin,
            census,
        }
    }

    /// Publisher side: queues a hold on `record`, tagged `tag`, from the
    /// source `owner` under `policy`. The caller then runs
    /// [`crate::signal::publish_fence`] and [`Signal::wake_if_sleeping`].
    ///
    /// Holds go in and out as bare `RecordRef`s (a pointer, returned in a
    /// register), the `Delivery` made only where it is stored: handing a
    /// 24-byte delivery back and forth through the layers below cost a
    /// store-forwarding stall per call (measured with `perf`).
    #[inline]
    pub(crate) fn deliver(
        self: &Arc<Self>,
        (record, tag): (RecordRef, u64),
        policy: SlowConsumerPolicy,
        owner: &mut LaneOwner,
    ) -> Outcome {
        match policy {
            SlowConsumerPolicy::DropNewest => self.offer(record, tag, owner),
            SlowConsumerPolicy::DropOldest => {
                self.push_evicting(record, tag);
                Outcome::Queued
            }
            SlowConsumerPolicy::Block { .. } => self.deliver_or_owe(record, tag, owner),
        }
    }

    /// `Block`: queues the hold, drops it while demoted, or hands it back to
    /// be owed.
    #[inline]
    pub(crate) fn deliver_or_owe(
        self: &Arc<Self>,
        record: RecordRef,
        tag: u64,
        owner: &mut LaneOwner,
    ) -> Outcome {
        if self.demoted.load(Ordering::Relaxed) && !self.promote_if_drained() {
            self.count_dropped();
            return Outcome::Dropped;
        }
        if self.is_closed() {
            // Its consumer is gone: what is owed to it is lost, and counted.
            self.count_dropped();
            return Outcome::Dropped;
        }
        match self.try_offer(record, tag, Some(owner)) {
            Ok(()) => Outcome::Queued,
            Err(rejected) => Outcome::Full(rejected),
        }
    }

    /// Queues the hold if there is room, else drops it and counts it.
    fn offer(self: &Arc<Self>, record: RecordRef, tag: u64, owner: &mut LaneOwner) -> Outcome {
        match self.try_offer(record, tag, Some(owner)) {
            Ok(()) => Outcome::Queued,
            Err(rejected) => {
                self.count_dropped();
                drop(rejected);
                Outcome::Dropped
            }
        }
    }

    /// Queues a hold on `record`, tagged `tag`, if there is room (in
    /// `owner`'s lane, or the ring if it has none or is `None`, and in the
    /// queue's byte charge); hands it back otherwise, uncounted.
    #[inline]
    pub(crate) fn try_offer(
        self: &Arc<Self>,
        record: RecordRef,
        tag: u64,
        owner: Option<&mut LaneOwner>,
    ) -> Result<(), RecordRef> {
        let Some((charge, segment)) = self.charge_within_limit(&record) else {
            return Err(record);
        };
        self.push(record, tag, charge, owner)?;
        self.commit_charge(charge, segment);
        Ok(())
    }

    /// Publisher side: queues holds on `records`, in order, tagged `tag`,
    /// into `owner`'s lane here, each charged as [`DeliveryQueue::try_offer`]
    /// charges it, with one look at the lane's room and one store of its
    /// producer's position for them all. Stops at the first that does not
    /// fit (the lane's room, the byte charge), or at once if `owner` has no
    /// lane here, and hands that one back, the rest left in `records`.
    #[inline]
    pub(crate) fn offer_run(
        &self,
        tag: u64,
        records: &mut impl ExactSizeIterator<Item = RecordRef>,
        owner: &LaneOwner,
    ) -> Option<RecordRef> {
        let Some(lane) = self.lanes.owned_by(owner) else {
            return records.next();
        };
        // SAFETY: the lane is `owner`'s, borrowed for this call, and a
        // source's deliveries all go through `&mut` of its backlog (see
        // `bus::lanes`): this is the lane's only producer, and the writer is
        // gone before anything else of the source's can push.
        let mut writer = unsafe { lane.reserve(records.len()) };
        for record in records {
            let Some((charge, segment)) = self.charge_within_limit(&record) else {
                return Some(record);
            };
            let make = |record| Delivery {
                record,
                tag,
                charge,
            };
            if let Err(record) = writer.push_with(record, make) {
                return Some(record);
            }
            self.commit_charge(charge, segment);
        }
        None
    }

    /// What queueing a hold on `record` is charged and the segment it lies
    /// in, or `None` if the charge would take the queue past its limit.
    #[inline]
    fn charge_within_limit(&self, record: &RecordRef) -> Option<(u64, usize)> {
        let segment = record.segment_key();
        let charge = self.charge_for(record, segment);
        if charge > 0
            && self.charges.pending_bytes.load(Ordering::Relaxed) + charge > self.pending_bytes_max
        {
            return None;
        }
        Some((charge, segment))
    }

    /// Adds a queued delivery's `charge` (for a record in `segment`).
    #[inline]
    fn commit_charge(&self, charge: u64, segment: usize) {
        if charge > 0 {
            self.charges.last_segment.store(segment, Ordering::Relaxed);
            self.charges
                .pending_bytes
                .fetch_add(charge, Ordering::Relaxed);
        }
    }

    /// Pushes a delivery into `owner`'s lane, claiming one if it has none
    /// here and one is free (see `bus::lanes` on order); into the ring
    /// otherwise.
    #[inline]
    fn push(
        self: &Arc<Self>,
        record: RecordRef,
        tag: u64,
        charge: u64,
        owner: Option<&mut LaneOwner>,
    ) -> Result<(), RecordRef> {
        let make = |record| Delivery {
            record,
            tag,
            charge,
        };
        if let Some(owner) = owner {
            if let Some(lane) = self.lanes.owned_by(owner) {
                // SAFETY: the lane is `owner`'s, and pushes with an owner
                // are made through `&mut` of it: this is the lane's only
                // producer.
                return unsafe { lane.push_with(record, make) };
            }
            return self
                .push_claiming(make(record), owner)
                .map_err(|rejected| rejected.record);
        }
        self.ring
            .push(make(record))
            .map_err(|rejected| rejected.record)
    }

    /// [`DeliveryQueue::push`] for a source without a lane here: claims one
    /// if it may, else pushes into the ring.
    #[cold]
    fn push_claiming(
        self: &Arc<Self>,
        delivery: Delivery,
        owner: &mut LaneOwner,
    ) -> Result<(), Delivery> {
        let claimed = self.lanes.claim(
            owner,
            || self.ring.is_all_claimed(),
            |slots| self.census.add_slots(slots),
        );
        match claimed {
            Some(lane) => {
                owner.holds(self);
                // SAFETY: as in `push`; claimed just now.
                unsafe { lane.push(delivery) }
            }
            None => self.ring.push(delivery),
        }
    }

    /// What queueing a hold on `record` (in `segment`) would be charged: a
    /// segment if its record lies in another segment than the last charged
    /// delivery's.
    fn charge_for(&self, record: &RecordRef, segment: usize) -> u64 {
        if self.charges.last_segment.load(Ordering::Relaxed) == segment {
            0
        } else {
            self.segment_bytes.max(record.archive().len() as u64)
        }
    }

    /// `DropOldest`: takes out the oldest deliveries (counting each) until
    /// this one fits.
    fn push_evicting(self: &Arc<Self>, mut record: RecordRef, tag: u64) {
        loop {
            match self.try_offer(record, tag, None) {
                Ok(()) => return,
                Err(rejected) => record = rejected,
            }
            match self.ring.pop() {
                Some(evicted) => {
                    self.release_charge(&evicted);
                    self.count_dropped();
                }
                // Empty yet refused: the event alone is larger than the
                // queue's byte limit.
                None => {
                    self.count_dropped();
                    return;
                }
            }
        }
    }

    /// Demotes the queue (its `Block` deliveries are dropped until it drains)
    /// and wakes every source waiting for it.
    pub(crate) fn demote(&self) {
        if !self.demoted.swap(true, Ordering::Relaxed) {
            self.demotions.fetch_add(1, Ordering::Relaxed);
        }
        self.space.notify_all();
    }

    /// A demoted queue that has drained to its low watermark is lossless
    /// again. Returns true if the queue is (now) not demoted.
    fn promote_if_drained(&self) -> bool {
        if self.is_drained() {
            self.demoted.store(false, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// At or below the low watermark: the ring and every lane at most half
    /// full, half the byte limit.
    fn is_drained(&self) -> bool {
        self.ring.len() <= self.ring.capacity() / 2
            && self
                .lanes
                .iter()
                .all(|lane| lane.len() <= lane.capacity() / 2)
            && self.charges.pending_bytes.load(Ordering::Relaxed) <= self.pending_bytes_max / 2
    }

    /// Counts one event this consumer will never see.
    pub(crate) fn count_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn release_charge(&self, delivery: &Delivery) {
        if delivery.charge > 0 {
            self.charges
                .pending_bytes
                .fetch_sub(delivery.charge, Ordering::Relaxed);
        }
    }

    /// Consumer side: the next delivery, if any.
    pub(crate) fn try_take(&self) -> Option<Delivery> {
        self.take_batch(1).next()
    }

    /// Consumer side: takes up to `max` deliveries at once: one claim of the
    /// ring's head and of each lane's, one update of the received counter
    /// and one look at the space signal for the whole batch. Each source's
    /// deliveries come in its order; the sources take turns being first.
    pub(crate) fn take_batch(&self, max: usize) -> TakenBatch<'_> {
        let consumer = &*self.consumer;
        // A single writer: a load and a store are enough, and cheaper than an
        // atomic add. Relaxed: the consumer's own counters order nothing.
        let first = consumer.rotation.load(Ordering::Relaxed);
        consumer
            .rotation
            .store(first.wrapping_add(1), Ordering::Relaxed);
        let mut runs: [Option<Run<'_>>; LANES + 1] = std::array::from_fn(|_| None);
        let mut claimed = 0;
        let mut taken = 0;
        for turn in 0..=LANES {
            if taken == max {
                break;
            }
            // Source `LANES` is the ring.
            let run = match (first + turn) % (LANES + 1) {
                LANES => Run::Ring(self.ring.claim(max - taken)),
                lane => match self.lanes.get(lane) {
                    // SAFETY: this is the queue's only consumer (a mailbox is
                    // not `Sync`), and the batch's runs are one per lane.
                    Some(lane) => Run::Lane(unsafe { lane.claim(max - taken) }),
                    None => continue,
                },
            };
            if run.len() > 0 {
                taken += run.len();
                runs[claimed] = Some(run);
                claimed += 1;
            }
        }
        let received = consumer.received.load(Ordering::Relaxed);
        consumer
            .received
            .store(received + taken as u64, Ordering::Relaxed);
        TakenBatch {
            queue: self,
            taken,
            runs,
            current: 0,
        }
    }

    /// True if no delivery is queued, as far as this thread can see.
    fn is_empty(&self) -> bool {
        self.ring.is_empty() && self.lanes.iter().all(|lane| lane.is_empty())
    }

    /// Consumer side: waits until a delivery is queued or the queue is
    /// closed, or until `deadline`. True if one is queued.
    pub(crate) fn wait_for_delivery(&self, deadline: Option<Instant>) -> bool {
        loop {
            if !self.is_empty() {
                return true;
            }
            if self.is_closed() {
                // Closed after the look above: a delivery queued before the
                // close is visible now (see `close`).
                return !self.is_empty();
            }
            let ready = self
                .signal
                .wait(self.spin, deadline, || !self.is_empty() || self.is_closed());
            if !ready {
                return !self.is_empty();
            }
        }
    }

    /// Consumer side: waits for a delivery until `deadline` (forever if
    /// `None`). `None` on timeout, or when closed and drained.
    pub(crate) fn take_blocking(&self, deadline: Option<Instant>) -> Option<Delivery> {
        loop {
            if let Some(delivery) = self.try_take() {
                return Some(delivery);
            }
            if !self.wait_for_delivery(deadline) {
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
        if self.poll_ready(cx).is_pending() {
            return Poll::Pending;
        }
        match self.try_take() {
            Some(delivery) => Poll::Ready(Some(delivery)),
            None if self.is_closed() => Poll::Ready(None),
            None => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    /// Consumer side, async: `Ready` once a delivery is queued or the queue
    /// is closed (take it then: a delivery queued before the close is
    /// visible once the close is); otherwise `cx`'s waker is registered and
    /// woken when one is.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.is_empty() || self.is_closed() {
            return Poll::Ready(());
        }
        self.signal.prepare_to_sleep(cx.waker());
        // SYNC POINT (park): look again after the registration's fence: a
        // delivery whose publisher fenced earlier is seen here; a later
        // one's publisher sees `sleeping` and wakes `cx`.
        if !self.is_empty() || self.is_closed() {
            self.signal.awake();
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// No more deliveries will come: wakes the consumer so that it drains and
    /// stops, and the sources waiting for it so that they stop waiting.
    pub(crate) fn close(&self) {
        // SYNC POINT (close): Release pairs with the Acquire in `is_closed`:
        // a consumer that sees the queue closed also sees every delivery
        // pushed before the close, so "closed and drained" is never said
        // while one is still queued.
        self.closed.store(true, Ordering::Release);
        self.signal.wake();
        self.space.notify_all();
    }

    pub(crate) fn is_closed(&self) -> bool {
        // SYNC POINT (close): see `close`.
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn received(&self) -> u64 {
        self.consumer.received.load(Ordering::Relaxed)
    }

    pub(crate) fn pending(&self) -> usize {
        self.ring.len() + self.lanes.iter().map(|lane| lane.len()).sum::<usize>()
    }

    pub(crate) fn pending_bytes(&self) -> u64 {
        self.charges.pending_bytes.load(Ordering::Relaxed)
    }

    /// Deliveries the queue holds from each source with a lane, and from
    /// the sources without one together.
    pub(crate) fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    pub(crate) fn is_demoted(&self) -> bool {
        self.demoted.load(Ordering::Relaxed)
    }

    pub(crate) fn demotions(&self) -> u64 {
        self.demotions.load(Ordering::Relaxed)
    }
}

impl Drop for DeliveryQueue {
    fn drop(&mut self) {
        self.census
            .uncount(self.ring.capacity() + self.lanes.slot_count());
    }
}

/// Deliveries a consumer took at once ([`DeliveryQueue::take_batch`]).
/// Dropping it takes out (and drops) what the consumer did not, and tells
/// waiting sources if the queue has drained.
pub(crate) struct TakenBatch<'a> {
    queue: &'a DeliveryQueue,
    /// Deliveries in the batch, taken out or not.
    taken: usize,
    /// The runs claimed, in the order they were claimed (the order they are
    /// read in, which keeps each source's order across ring and lane: see
    /// `bus::lanes`).
    runs: [Option<Run<'a>>; LANES + 1],
    /// The run being read.
    current: usize,
}

/// Deliveries claimed from the ring or from one lane.
enum Run<'a> {
    Ring(ClaimedRun<'a, Delivery>),
    Lane(LaneRun<'a, Delivery>),
}

impl Run<'_> {
    fn len(&self) -> usize {
        match self {
            Run::Ring(run) => run.len(),
            Run::Lane(run) => run.len(),
        }
    }

    fn next(&mut self) -> Option<Delivery> {
        match self {
            Run::Ring(run) => run.next(),
            Run::Lane(run) => run.next(),
        }
    }
}

impl TakenBatch<'_> {
    /// Deliveries in the batch.
    pub(crate) fn taken(&self) -> usize {
        self.taken
    }
}

impl Iterator for TakenBatch<'_> {
    type Item = Delivery;

    fn next(&mut self) -> Option<Delivery> {
        let delivery = loop {
            let run = self.runs.get_mut(self.current)?.as_mut()?;
            match run.next() {
                Some(delivery) => break delivery,
                None => self.current += 1,
            }
        };
        self.queue.release_charge(&delivery);
        Some(delivery)
    }
}

impl Drop for TakenBatch<'_> {
    fn drop(&mut self) {
        self.by_ref().for_each(drop);
        // The runs give their slots back now (a lane's run with one store of
        // its head), before the space signal's fence below: a source that
        // waits for room either sees it or is seen waiting.
        self.runs = std::array::from_fn(|_| None);
        if self.taken > 0 {
            let queue = self.queue;
            queue.space.notify_if_drained(|| queue.is_drained());
        }
    }
}

impl fmt::Debug for DeliveryQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryQueue")
            .field("pending", &self.pending())
            .field("pending_bytes", &self.pending_bytes())
            .field("capacity", &self.capacity())
            .field("received", &self.received())
            .field("dropped", &self.dropped())
            .field("demoted", &self.is_demoted())
            .finish()
    }
}
