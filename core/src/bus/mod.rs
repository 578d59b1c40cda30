//! The in-process bus: publish from any thread, subscribe with patterns and
//! queue groups, request/reply, and the router a node is built around.
//!
//! ```text
//!  publish(subject, payload)
//!    │  thread's Publisher: check limits → index lookup (own cache) →
//!    │  archive once into its segment → one hold per matching consumer
//!    ├──► DeliveryQueue of subscription A ──► recv() → EventRef (in place)
//!    ├──► DeliveryQueue of subscription B ──► ...
//!    └──► one member of each queue group
//! ```
//!
//! No lock and no allocation on that path in steady state: the index is read
//! through a left-right handle with a private cache, records are bump-allocated
//! in recycled segments, queues are fixed-size rings. Subscribing and
//! unsubscribing (the control plane) take a lock; publishers never wait for it.

mod backlog;
mod direct;
mod error;
mod event_ref;
mod interest;
pub(crate) mod lanes;
mod mailbox;
mod publisher;
pub(crate) mod queue;
mod request;
pub mod route;
mod subscription;
mod wakes;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub use backlog::Backlog;
pub use direct::{DirectSource, Inlet};
pub use error::{PublishBatchError, PublishError, RecvError, RequestError, SubscribeError};
pub use event_ref::EventRef;
pub use interest::{InterestChange, InterestWatcher};
pub use mailbox::Recv;
pub use mailbox::{Mailbox, QueueCounters};
pub use publisher::{Message, Publisher};
pub use queue::{DEFAULT_MAX_STALL, SlowConsumerPolicy, UnknownPolicy};
pub use request::Reply;
pub use route::{PLAIN_TAG, Scope};
pub use subscription::Subscription;

use self::lanes::LaneOwner;
use self::queue::{DeliveryQueue, Outcome, QueueCensus};
use self::request::Inbox;
use crate::event::{EventLimits, Header};
use crate::log::RecordRef;
use crate::log::{PoolStats, SegmentPool};
use crate::subject::{self, INBOX_PREFIX};
use crate::sublist::{IndexReaders, IndexWriter, index};
use crate::sync::{ArrayQueue, AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// How a bus is set up. `Default` gives sane values for an application.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Limits on subjects, headers and payloads.
    pub limits: EventLimits,
    /// Record space per segment. Events larger than this get a segment of
    /// their own (and an allocation). A record still held pins its segment,
    /// so smaller segments bound what a stuck consumer can pin.
    pub segment_bytes: usize,
    /// Most bytes of event memory the bus may use, in all.
    pub memory_bytes_max: usize,
    /// Queue size and slow-consumer policy of subscriptions made without
    /// explicit options.
    pub subscription: SubscribeOptions,
    /// How long a waiting consumer spins before it parks. Waking a parked
    /// thread costs 20–25 µs on a VM; spinning sees an event in under 1 µs.
    pub spin: Duration,
    /// Subjects each publisher keeps in its match cache.
    pub match_cache_capacity: usize,
    /// The clock publishers stamp events with ([`crate::clock::system`] by
    /// default; [`crate::clock::coarse`] is cheaper and tick-grained).
    pub clock: crate::clock::WallClock,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            limits: EventLimits::default(),
            segment_bytes: 64 << 10,
            memory_bytes_max: 1 << 30,
            subscription: SubscribeOptions::default(),
            spin: Duration::from_micros(20),
            match_cache_capacity: 1024,
            clock: crate::clock::system,
        }
    }
}

/// Per-subscription settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Events a subscription (or a mailbox) can hold from one source before
    /// the policy applies. A source is a publisher, a client connection or a
    /// data stream of a mesh link; the first few sources to deliver get a
    /// lane of this size each (the fast path), the others share one more
    /// queue of this size. `pending_bytes_max` bounds the memory they pin
    /// together.
    pub capacity: usize,
    /// Bytes of event memory its queued events may pin before the policy
    /// applies. A queued event pins its record's whole segment, so this
    /// counts segments (see `BusConfig::segment_bytes`): it is what keeps a
    /// stuck consumer from holding the bus's memory.
    pub pending_bytes_max: usize,
    /// What happens when it is full: wait (`Block`, the default), or drop.
    pub policy: SlowConsumerPolicy,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            capacity: 4096,
            pending_bytes_max: 64 << 20,
            policy: SlowConsumerPolicy::default(),
        }
    }
}

/// A handle to a bus. Cheap to clone; all clones are the same bus. When the
/// last handle (and the last [`Publisher`]) is dropped, the bus closes: every
/// subscription drains what it has and then reports [`RecvError::Closed`].
#[derive(Debug)]
pub struct Bus {
    inner: Arc<BusInner>,
}

/// What a subscription looks like from the outside, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// The subscription's id, unique within the bus.
    pub id: u64,
    /// Its pattern.
    pub pattern: String,
    /// Its queue group.
    pub queue_group: Option<String>,
    /// The tag its deliveries carry (see [`Mailbox::subscribe`]).
    pub tag: u64,
    /// Events for it that were dropped because its queue was full or the
    /// memory budget spent. Exact, except that with `DropOldest` an eviction
    /// is counted on the subscription whose event arrived. (A subscription of
    /// its own queue was offered `queue.received + queue.pending + dropped`
    /// events; a mailbox's consumer counts per tag what it received.)
    pub dropped: u64,
    /// What a full queue means for its events.
    pub policy: SlowConsumerPolicy,
    /// The queue it feeds, shared by all subscriptions of one mailbox.
    pub queue: QueueInfo,
}

/// A consumer's queue, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue's id, unique within the bus (see [`QueueCounters::id`]).
    pub id: u64,
    /// Events taken out by the consumer.
    pub received: u64,
    /// Events the queue dropped, for all its subscriptions.
    pub dropped: u64,
    /// Events waiting in it.
    pub pending: usize,
    /// Bytes of event memory the waiting events are charged for.
    pub pending_bytes: u64,
    /// Most events it holds.
    pub capacity: usize,
    /// True while demoted: it held a publisher back for a whole `max_stall`,
    /// and its `block` events are dropped until it drains.
    pub demoted: bool,
    /// Times it was demoted.
    pub demotions: u64,
}

/// Figures about a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusStats {
    /// Live subscriptions.
    pub subscriptions: usize,
    /// Delivery queues not freed yet: one per mailbox (a subscription's, a
    /// client connection's, a peer node's), counted until the last hold on
    /// it goes.
    pub queues: usize,
    /// Their slots, in all: each queue's capacity in events.
    pub queue_slots: usize,
    /// Event memory.
    pub memory: PoolStats,
}

/// One entry of the subscription index: a subscription, the queue it feeds and
/// the tag its deliveries carry. Equal by subscription id.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) id: u64,
    pub(crate) queue: Arc<DeliveryQueue>,
    pub(crate) tag: u64,
    /// A peer node's interest rather than a local consumer (see `route`).
    pub(crate) remote: bool,
    /// What a full queue means for this subscription's events.
    pub(crate) policy: SlowConsumerPolicy,
    pub(crate) stats: Arc<TargetStats>,
}

/// Per-subscription counters, kept by publishers on the drop path only: a
/// counter bumped on every delivery was measured at 12% of the 1 → 1 cost
/// (its locked add waits for the event's stores to reach the other core).
#[derive(Debug, Default)]
pub(crate) struct TargetStats {
    /// Events for this subscription that were dropped.
    dropped: AtomicU64,
}

impl Target {
    /// Offers a record from the source `owner` to this subscription's queue
    /// under its policy.
    pub(crate) fn deliver(&self, record: RecordRef, owner: &mut LaneOwner) -> Outcome {
        self.deliver_tagged(record, self.tag, owner)
    }

    /// Like [`Target::deliver`], with the delivery carrying `tag`.
    #[inline]
    pub(crate) fn deliver_tagged(
        &self,
        record: RecordRef,
        tag: u64,
        owner: &mut LaneOwner,
    ) -> Outcome {
        let outcome = self.queue.deliver((record, tag), self.policy, owner);
        if matches!(outcome, Outcome::Dropped) {
            self.count_dropped();
        }
        outcome
    }

    /// Offers holds on a run of records from the source of `backlog`, in
    /// order, each carrying `tag`, as [`Target::deliver_tagged`] would one by
    /// one, owing to `backlog` what a full `Block` queue cannot take: with
    /// one look at the source's lane and its room for the whole run. Once
    /// one is owed, the rest are owed after it without a try, so that the
    /// queue gets them in order.
    pub(crate) fn deliver_run(
        &self,
        tag: u64,
        mut records: impl ExactSizeIterator<Item = RecordRef>,
        backlog: &mut Backlog,
    ) {
        let through_lane = match self.policy {
            SlowConsumerPolicy::Block { .. } => !self.queue.is_demoted() && !self.queue.is_closed(),
            SlowConsumerPolicy::DropNewest => true,
            // Making room takes from the head: the ring's (see `lanes`).
            SlowConsumerPolicy::DropOldest => false,
        };
        let mut next = if through_lane {
            self.queue.offer_run(tag, &mut records, backlog.lanes())
        } else {
            records.next()
        };
        while let Some(record) = next {
            if let Outcome::Full(record) = self.deliver_tagged(record, tag, backlog.lanes()) {
                backlog.owe(self, record, tag);
                records.for_each(|record| backlog.owe(self, record, tag));
                return;
            }
            next = records.next();
        }
    }

    /// Offers a record only if the queue has room; hands it back otherwise,
    /// uncounted.
    pub(crate) fn try_deliver(
        &self,
        record: RecordRef,
        owner: &mut LaneOwner,
    ) -> Result<(), RecordRef> {
        let owner = match self.policy {
            // Making room takes from the head: the ring's (see `lanes`).
            SlowConsumerPolicy::DropOldest => None,
            _ => Some(owner),
        };
        self.queue.try_offer(record, self.tag, owner)
    }

    /// Counts a dropped event against this subscription (its queue counts
    /// it separately).
    pub(crate) fn count_dropped(&self) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// An event for this subscription could not be stored at all.
    pub(crate) fn miss(&self) {
        self.count_dropped();
        self.queue.count_dropped();
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

pub(crate) struct BusInner {
    /// Random, so that reply subjects of different buses (and nodes) differ.
    pub(crate) nuid: u64,
    pub(crate) config: BusConfig,
    pub(crate) pool: Arc<SegmentPool>,
    pub(crate) readers: IndexReaders<Target>,
    /// Every mailbox's queue is counted here until it is freed.
    pub(crate) queue_census: Arc<QueueCensus>,
    control: Mutex<Control>,
    /// Idle request inboxes, reused so that a request costs no subscribe.
    pub(crate) inboxes: ArrayQueue<Inbox>,
    next_id: AtomicU64,
    /// Live `Bus` and `Publisher` handles.
    handles: AtomicUsize,
    closed: AtomicBool,
}

/// The control plane: changes to the index and the registry of consumers.
struct Control {
    index: IndexWriter<Target>,
    subscriptions: HashMap<u64, Registered>,
    /// Told of every change of local interest (see [`Bus::watch_local_interest`]).
    watcher: Option<InterestWatcher>,
}

struct Registered {
    pattern: Arc<str>,
    group: Option<Arc<str>>,
    tag: u64,
    remote: bool,
    policy: SlowConsumerPolicy,
    stats: Arc<TargetStats>,
    queue: Weak<DeliveryQueue>,
}

impl Bus {
    /// A new, empty bus.
    pub fn new(config: BusConfig) -> Self {
        assert!(
            config.subscription.capacity > 0,
            "subscriptions need room for one event"
        );
        assert!(
            config.match_cache_capacity > 0,
            "the match cache needs room for one subject"
        );
        let (index, readers) = index::new();
        let pool = SegmentPool::new(config.segment_bytes, config.memory_bytes_max);
        let inner = BusInner {
            nuid: random_u64(),
            pool,
            readers,
            queue_census: Arc::default(),
            control: Mutex::new(Control {
                index,
                subscriptions: HashMap::new(),
                watcher: None,
            }),
            inboxes: ArrayQueue::new(64),
            next_id: AtomicU64::new(1),
            handles: AtomicUsize::new(1),
            closed: AtomicBool::new(false),
            config,
        };
        Bus {
            inner: Arc::new(inner),
        }
    }

    /// The configuration the bus was made with.
    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    /// Publishes `payload` on `subject`, from any thread.
    ///
    /// Uses a publisher owned by the calling thread (made on its first
    /// publish). For a hot loop on one thread, [`Bus::publisher`] avoids the
    /// thread-local lookup.
    pub fn publish(&self, subject: &str, payload: &[u8]) -> Result<(), PublishError> {
        self.publish_message(&Message::new(subject, payload))
            .map(|_| ())
    }

    /// Publishes a message with headers or a reply subject. Returns how many
    /// deliveries it made: one per matching subscription, one per matching
    /// queue group.
    pub fn publish_message(&self, message: &Message<'_>) -> Result<usize, PublishError> {
        publisher::with_thread_publisher(&self.inner, |publisher| publisher.publish(message))
    }

    /// Like [`Bus::publish_message`], without waiting: deliveries to full
    /// `Block` queues are owed in `backlog` (which must be empty), and the
    /// caller — a task publishing for one connection, say — publishes
    /// nothing more from that source until [`Backlog::poll_flush`] is ready.
    /// This is how an async source is held back without blocking its thread.
    pub fn publish_message_into(
        &self,
        message: &Message<'_>,
        backlog: &mut Backlog,
    ) -> Result<usize, PublishError> {
        publisher::with_thread_publisher(&self.inner, |publisher| {
            publisher.publish_into(message, backlog)
        })
    }

    /// Subscribes to `pattern` with the bus's default options.
    pub fn subscribe(&self, pattern: &str) -> Result<Subscription, SubscribeError> {
        self.subscribe_with(pattern, None, self.inner.config.subscription)
    }

    /// Joins the queue group `group` on `pattern`: each matching event goes to
    /// exactly one member of the group.
    pub fn queue_subscribe(
        &self,
        pattern: &str,
        group: &str,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_with(pattern, Some(group), self.inner.config.subscription)
    }

    /// Subscribes with explicit options.
    pub fn subscribe_with(
        &self,
        pattern: &str,
        group: Option<&str>,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let mut mailbox = self.mailbox(options);
        mailbox.subscribe(0, pattern, group)?;
        Ok(Subscription::new(mailbox))
    }

    /// A mailbox: one queue that any number of subscriptions feed, each
    /// delivery tagged with the subscription's tag. This is how a client
    /// session consumes from the bus.
    pub fn mailbox(&self, options: SubscribeOptions) -> Mailbox {
        Mailbox::new(self.inner.clone(), options, false)
    }

    /// A mailbox for a peer node's link: its subscriptions stand for the
    /// peer's interest. Events reach it at most once per publish for plain
    /// interest (tagged [`route::PLAIN_TAG`]) and once per queue group the
    /// peer is chosen for (tagged with that subscription's tag); events that
    /// came from a peer never reach it (see [`Publisher::publish_forwarded`]).
    pub fn peer_mailbox(&self, options: SubscribeOptions) -> Mailbox {
        Mailbox::new(self.inner.clone(), options, true)
    }

    /// A publisher for one thread's hot loop.
    pub fn publisher(&self) -> Publisher {
        self.inner.handles.fetch_add(1, Ordering::Relaxed);
        Publisher::new(Bus {
            inner: self.inner.clone(),
        })
    }

    /// Sends a request and waits up to `timeout` for the first reply. Fails at
    /// once with [`RequestError::NoResponders`] if nobody subscribes to
    /// `subject`.
    pub fn request(
        &self,
        subject: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        request::request(self, &Message::new(subject, payload), timeout)
    }

    /// Like [`Bus::request`], with headers.
    pub fn request_with_headers(
        &self,
        subject: &str,
        headers: &[Header<'_>],
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let message = Message {
            headers,
            ..Message::new(subject, payload)
        };
        request::request(self, &message, timeout)
    }

    /// Every live subscription with its counters.
    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        let control = self.inner.control.lock().expect("control plane lock");
        let mut list: Vec<SubscriptionInfo> = control
            .subscriptions
            .iter()
            .filter_map(|(id, registered)| {
                let queue = registered.queue.upgrade()?;
                Some(SubscriptionInfo {
                    id: *id,
                    pattern: registered.pattern.to_string(),
                    queue_group: registered.group.as_deref().map(String::from),
                    tag: registered.tag,
                    dropped: registered.stats.dropped.load(Ordering::Relaxed),
                    policy: registered.policy,
                    queue: QueueInfo {
                        id: queue.id,
                        received: queue.received(),
                        dropped: queue.dropped(),
                        pending: queue.pending(),
                        pending_bytes: queue.pending_bytes(),
                        capacity: queue.capacity(),
                        demoted: queue.is_demoted(),
                        demotions: queue.demotions(),
                    },
                })
            })
            .collect();
        list.sort_by_key(|info| info.id);
        list
    }

    /// The prefix of this bus's request inboxes (`_INBOX.<bus nuid>.`): every
    /// reply to a request made here is published on a subject under it. A
    /// mesh routes such subjects to this node without propagating each inbox.
    pub fn inbox_prefix(&self) -> String {
        format!("{INBOX_PREFIX}{:016x}.", self.inner.nuid)
    }

    /// Calls `watcher` with every change of local interest: first an
    /// [`InterestChange::Added`] for each local subscription already there,
    /// then every change as it happens, in order, until the bus closes.
    /// Subscriptions of peer mailboxes are not local interest and are left
    /// out. A bus has one watcher; a second replaces the first.
    pub fn watch_local_interest(&self, mut watcher: InterestWatcher) {
        let mut control = self.inner.control.lock().expect("control plane lock");
        let mut existing: Vec<(&u64, &Registered)> = control
            .subscriptions
            .iter()
            .filter(|(_, registered)| !registered.remote)
            .collect();
        existing.sort_by_key(|(id, _)| **id);
        for (_, registered) in existing {
            watcher(InterestChange::Added {
                pattern: registered.pattern.clone(),
                group: registered.group.clone(),
            });
        }
        control.watcher = Some(watcher);
    }

    /// Current figures.
    pub fn stats(&self) -> BusStats {
        let control = self.inner.control.lock().expect("control plane lock");
        BusStats {
            subscriptions: control.subscriptions.len(),
            queues: self.inner.queue_census.queues(),
            queue_slots: self.inner.queue_census.slots(),
            memory: self.inner.pool.stats(),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<BusInner> {
        &self.inner
    }
}

impl Clone for Bus {
    fn clone(&self) -> Self {
        self.inner.handles.fetch_add(1, Ordering::Relaxed);
        Bus {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        // AcqRel: the last handle's shutdown sees everything the others did.
        if self.inner.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.shutdown();
        }
    }
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new(BusConfig::default())
    }
}

impl BusInner {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Adds a subscription to the index. Control plane: takes the lock.
    pub(crate) fn add_subscription(
        &self,
        pattern: &str,
        group: Option<&str>,
        target: Target,
    ) -> Result<(Arc<str>, Option<Arc<str>>), SubscribeError> {
        if self.is_closed() {
            return Err(SubscribeError::Closed);
        }
        subject::validate_pattern(pattern, &self.config.limits.subject)?;
        if let Some(group) = group {
            validate_group(group)?;
        }
        let pattern: Arc<str> = pattern.into();
        let group: Option<Arc<str>> = group.map(Into::into);
        let mut control = self.control.lock().expect("control plane lock");
        control.subscriptions.insert(
            target.id,
            Registered {
                pattern: pattern.clone(),
                group: group.clone(),
                tag: target.tag,
                remote: target.remote,
                policy: target.policy,
                stats: target.stats.clone(),
                queue: Arc::downgrade(&target.queue),
            },
        );
        let remote = target.remote;
        control.index.insert(pattern.clone(), group.clone(), target);
        if let Some(watcher) = control.watcher.as_mut().filter(|_| !remote) {
            watcher(InterestChange::Added {
                pattern: pattern.clone(),
                group: group.clone(),
            });
        }
        Ok((pattern, group))
    }

    /// Removes a subscription from the index. Control plane: takes the lock.
    pub(crate) fn remove_subscription(
        &self,
        pattern: Arc<str>,
        group: Option<Arc<str>>,
        target: Target,
    ) {
        let mut control = self.control.lock().expect("control plane lock");
        control.subscriptions.remove(&target.id);
        let remote = target.remote;
        control.index.remove(pattern.clone(), group.clone(), target);
        if let Some(watcher) = control.watcher.as_mut().filter(|_| !remote) {
            watcher(InterestChange::Removed { pattern, group });
        }
    }

    fn shutdown(&self) {
        self.closed.store(true, Ordering::Relaxed);
        // Idle inboxes hold subscriptions, which hold this bus: drop them to
        // break the cycle.
        while let Some(inbox) = self.inboxes.pop() {
            drop(inbox);
        }
        let mut control = self.control.lock().expect("control plane lock");
        // The watcher's end of its channel learns that the bus is gone.
        control.watcher = None;
        for registered in control.subscriptions.values() {
            if let Some(queue) = registered.queue.upgrade() {
                queue.close();
            }
        }
    }
}

impl std::fmt::Debug for BusInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusInner")
            .field("nuid", &format_args!("{:016x}", self.nuid))
            .field("memory", &self.pool.stats())
            .finish_non_exhaustive()
    }
}

fn validate_group(group: &str) -> Result<(), SubscribeError> {
    let valid = (1..=256).contains(&group.len())
        && !group.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(SubscribeError::QueueGroup)
    }
}

/// A random 64-bit number from the standard library's per-process random
/// hash keys, mixed with the clock and a counter: for ids that must not
/// collide across processes (reply inboxes, event ids). Not for cryptography.
pub fn random_u64() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.finish()
}
