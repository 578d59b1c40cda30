//! The write side of the bus: a publisher owns an appender (its own segments)
//! and an index reader (its own match cache), so publishing takes no lock and
//! shares no written cache line with other publishers.

use std::cell::RefCell;
use std::sync::Arc;

use super::backlog::Backlog;
use super::route::{Scope, route};
use super::wakes::{Wakes, Waking};
use super::{Bus, BusInner, PublishBatchError, PublishError, Target};
use crate::clock::WallClock;
use crate::event::{
    self, Checked, CheckedParts, EncodeError, EventLimits, EventParts, Header, Template,
};
use crate::log::{AppendError, Appender, Holds};
use crate::subject::INBOX_PREFIX;
use crate::sublist::{IndexReader, ResultStamp};

/// An event to publish: everything but the id and the time, which the
/// publisher fills in.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The subject; no wildcards.
    pub subject: &'a str,
    /// Where replies should go.
    pub reply_to: Option<&'a str>,
    /// Headers, in order.
    pub headers: &'a [Header<'a>],
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// A message with no headers and no reply subject.
    pub fn new(subject: &'a str, payload: &'a [u8]) -> Self {
        Self {
            subject,
            reply_to: None,
            headers: &[],
            payload,
        }
    }
}

/// A publisher for one thread. Faster than [`Bus::publish`] in a loop, since it
/// skips the thread-local lookup; `Send`, so it can move between threads, but
/// not `Sync`.
#[derive(Debug)]
pub struct Publisher {
    core: PublisherCore,
    // Keeps the bus open while this publisher exists.
    _bus: Bus,
}

impl Publisher {
    pub(super) fn new(bus: Bus) -> Self {
        Self {
            core: PublisherCore::new(bus.inner()),
            _bus: bus,
        }
    }

    /// Publishes `payload` on `subject`.
    pub fn publish(&mut self, subject: &str, payload: &[u8]) -> Result<(), PublishError> {
        self.core
            .publish(&Message::new(subject, payload))
            .map(|_| ())
    }

    /// Publishes a message; returns the number of deliveries made.
    pub fn publish_message(&mut self, message: &Message<'_>) -> Result<usize, PublishError> {
        self.core.publish(message)
    }

    /// Publishes `messages` in order, as [`Publisher::publish_message`] would
    /// one by one, and returns the number of deliveries made. Faster: the
    /// clock is read once (every event of the batch carries the same time),
    /// and consumers are woken once for the whole batch, after one fence,
    /// instead of once per event. A consumer that sleeps sees the batch only
    /// when it is all published (or when the publisher waits for a full
    /// `Block` consumer, which is woken first so that it makes room).
    ///
    /// Stops at the first message that fails: the messages before it are
    /// published, the rest are not tried
    /// ([`PublishBatchError::published`]).
    ///
    /// ```
    /// use starling_core::{Bus, Message};
    ///
    /// let bus = Bus::default();
    /// let trades = bus.subscribe("trades.*")?;
    /// let mut publisher = bus.publisher();
    /// let batch = [
    ///     Message::new("trades.eur", b"1"),
    ///     Message::new("trades.usd", b"2"),
    ///     Message::new("trades.eur", b"3"),
    /// ];
    /// assert_eq!(publisher.publish_batch(&batch)?, 3);
    /// let mut payloads = Vec::new();
    /// trades.try_recv_batch(16, |event| payloads.push(event.payload().to_vec()));
    /// assert_eq!(payloads, [b"1", b"2", b"3"]);
    ///
    /// let error = publisher
    ///     .publish_batch(&[Message::new("trades.chf", b"4"), Message::new("bad..subject", b"")])
    ///     .unwrap_err();
    /// assert_eq!(error.published, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn publish_batch(&mut self, messages: &[Message<'_>]) -> Result<usize, PublishBatchError> {
        self.core.publish_batch(messages)
    }

    /// Publishes an event that arrived already archived (from a client or a
    /// peer): validates it against the bus's limits, then copies it once into
    /// event memory, keeping its id and time. Returns the number of deliveries.
    pub fn publish_archive(&mut self, archive: &[u8]) -> Result<usize, PublishError> {
        let checked = event::check(archive, &self.core.limits)?;
        self.core
            .publish_checked(checked, checked.event().subject(), Scope::Local)
    }

    /// Publishes an archive already validated with [`event::check`].
    pub fn publish_checked(&mut self, archive: Checked<'_>) -> Result<usize, PublishError> {
        self.core
            .publish_checked(archive, archive.event().subject(), Scope::Local)
    }

    /// Publishes an event a peer node forwarded: to local consumers only
    /// (never to another peer: the mesh is full, one hop), and only those the
    /// peer chose it for: plain subscriptions if `plain`, and one local member
    /// of each queue group in `groups`. Returns the number of deliveries.
    pub fn publish_forwarded(
        &mut self,
        archive: Checked<'_>,
        plain: bool,
        groups: &[&str],
    ) -> Result<usize, PublishError> {
        let subject = archive.event().subject();
        self.core
            .publish_checked(archive, subject, Scope::Forwarded { plain, groups })
    }

    /// Like [`Publisher::publish_checked`], without waiting: deliveries to
    /// full `Block` queues are owed in `backlog`, which must be empty when
    /// called. The caller — an I/O loop publishing for one connection, say —
    /// stops reading that source until [`Backlog::poll_flush`] is ready, so
    /// that the source alone is held back and its order kept.
    pub fn publish_checked_into(
        &mut self,
        archive: Checked<'_>,
        backlog: &mut Backlog,
    ) -> Result<usize, PublishError> {
        let subject = archive.event().subject();
        self.core
            .publish_checked_into(archive, subject, Scope::Local, backlog)
    }

    /// Like [`Publisher::publish_checked_into`], but without waking, as
    /// [`Publisher::publish_forwarded_noted`] does: the consumers see the
    /// event, and are woken, at the next [`Publisher::wake_noted`] with the
    /// same `backlog`. A client connection's session publishes the events
    /// of one receive so: one fence for them all.
    pub fn publish_checked_noted(
        &mut self,
        archive: Checked<'_>,
        backlog: &mut Backlog,
    ) -> Result<usize, PublishError> {
        let subject = archive.event().subject();
        self.core.route_checked(
            subject,
            Scope::Local,
            backlog,
            Wake::Noted,
            |appender, holders| appender.append_archive(archive.bytes(), holders),
        )
    }

    /// Like [`Publisher::publish_checked_noted`], for an event that arrived
    /// as parts (a client's compact record) rather than an archive: it is
    /// archived once, straight into event memory, keeping its id and time.
    pub fn publish_parts_noted(
        &mut self,
        parts: CheckedParts<'_>,
        backlog: &mut Backlog,
    ) -> Result<usize, PublishError> {
        let parts = parts.parts();
        self.core.route_checked(
            parts.subject,
            Scope::Local,
            backlog,
            Wake::Noted,
            |appender, holders| appender.append(parts, holders),
        )
    }

    /// Like [`Publisher::publish_forwarded`], without waiting (deliveries
    /// to full `Block` queues are owed in `backlog`, as
    /// [`Publisher::publish_checked_into`] does), and without waking: the
    /// event is only noted for its consumers, who see it, and are woken, at
    /// the next [`Publisher::wake_noted`] with the same `backlog`. A source
    /// that hands over a run of events (a link's data stream) pays one
    /// fence for the run instead of one per event, as
    /// [`Publisher::publish_batch`] does. The caller must call `wake_noted`
    /// before it waits for anything (its source, or `backlog`'s flush: a
    /// consumer asleep makes no room) and before it drops `backlog`.
    pub fn publish_forwarded_noted(
        &mut self,
        archive: Checked<'_>,
        plain: bool,
        groups: &[&str],
        backlog: &mut Backlog,
    ) -> Result<usize, PublishError> {
        let subject = archive.event().subject();
        self.core.route_checked(
            subject,
            Scope::Forwarded { plain, groups },
            backlog,
            Wake::Noted,
            |appender, holders| appender.append_archive(archive.bytes(), holders),
        )
    }

    /// Publishes to their consumers the events noted (by
    /// [`Publisher::publish_forwarded_noted`], `publish_checked_noted` or
    /// `publish_parts_noted`) with `backlog` since the last call, fences
    /// once and wakes those consumers that sleep (the batch protocol of
    /// `loom_tests::a_batch_fenced_once_never_leaves_its_consumer_asleep`).
    pub fn wake_noted(&mut self, backlog: &mut Backlog) {
        self.core.noted.wake_all(backlog.lanes());
    }
}

/// When the consumers an event was delivered to are woken.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// Right after the event.
    Now,
    /// At the publisher's next `wake_noted`.
    Noted,
}

/// The state of one publisher.
pub(crate) struct PublisherCore {
    /// The bus's nuid: identifies it for the thread-local lookup.
    bus: u64,
    limits: EventLimits,
    clock: WallClock,
    appender: Appender,
    reader: IndexReader<Target>,
    /// High half of every event id: random per publisher.
    id_high: u64,
    /// Low half: counts this publisher's events.
    sequence: u64,
    /// Picks the next queue-group member; per publisher, so no shared counter.
    round_robin: usize,
    /// What this publisher's thread owes full `Block` queues; flushed (the
    /// thread waits) before a publish returns. Taken out while a publish
    /// runs (see `take_backlog`): boxed, so that is a move of a pointer, not
    /// of the backlog and a default one made and dropped in its place (8% of
    /// a one-at-a-time publisher's samples in `perf`).
    backlog: Option<Box<Backlog>>,
    /// The consumers a batch delivered to, woken at its end.
    wakes: Wakes,
    /// The consumers `publish_forwarded_noted` delivered to, woken by
    /// `wake_noted`; apart from `wakes`, whose queues a batch wakes through
    /// its own lanes, not the noting source's.
    noted: Wakes,
}

impl PublisherCore {
    pub(crate) fn new(inner: &Arc<BusInner>) -> Self {
        Self {
            bus: inner.nuid,
            limits: inner.config.limits,
            clock: inner.config.clock,
            appender: Appender::new(inner.pool.clone()),
            reader: inner.readers.reader(inner.config.match_cache_capacity),
            id_high: super::random_u64(),
            sequence: 0,
            round_robin: 0,
            backlog: Some(Box::default()),
            wakes: Wakes::default(),
            noted: Wakes::default(),
        }
    }

    /// Publishes `message`, waiting for room in full `Block` queues.
    pub(crate) fn publish(&mut self, message: &Message<'_>) -> Result<usize, PublishError> {
        self.waiting(|core, backlog| core.publish_into(message, backlog))
    }

    /// Runs a publish that owes into this thread's backlog, then waits on
    /// this thread until what it owes is handed over (or demoted).
    fn waiting(
        &mut self,
        publish: impl FnOnce(&mut Self, &mut Backlog) -> Result<usize, PublishError>,
    ) -> Result<usize, PublishError> {
        let mut backlog = self.take_backlog();
        let routed = publish(self, &mut backlog);
        backlog.flush_blocking();
        self.backlog = Some(backlog);
        routed
    }

    /// The backlog, out of `self` until it is put back; a new one if a
    /// panic while publishing left it out.
    fn take_backlog(&mut self) -> Box<Backlog> {
        self.backlog.take().unwrap_or_default()
    }

    /// Publishes `messages` in order, a chunk at a time (see
    /// `publish_chunk`), waiting for room in full `Block` queues after each
    /// chunk that met one; wakes consumers once.
    pub(crate) fn publish_batch(
        &mut self,
        messages: &[Message<'_>],
    ) -> Result<usize, PublishBatchError> {
        let time_unix_nanos = (self.clock)();
        let mut backlog = self.take_backlog();
        let mut wakes = std::mem::take(&mut self.wakes);
        let mut delivered = 0;
        let mut outcome = Ok(());
        let mut published = 0;
        // The previous chunk's subject and the stamp of its match result.
        let mut previous: Option<(&str, ResultStamp)> = None;
        while published < messages.len() {
            let chunk = same_subject_chunk(&messages[published..]);
            let subject = chunk[0].subject;
            // The same bytes (the batch is borrowed for the whole call): the
            // subject needs no compare with the reader's memo.
            let again = previous
                .filter(|(previous, _)| std::ptr::eq(*previous, subject))
                .map(|(_, stamp)| stamp);
            let routed =
                self.publish_chunk(chunk, (time_unix_nanos, again), &mut wakes, &mut backlog);
            delivered += routed.delivered;
            published += routed.published;
            if let Err(error) = routed.outcome {
                outcome = Err(PublishBatchError { published, error });
                break;
            }
            previous = routed.stamp.map(|stamp| (subject, stamp));
            if !backlog.is_empty() {
                // A full `Block` queue: its consumer may be asleep, not yet
                // woken for this batch, and must be awake to make room.
                wakes.wake_all(backlog.lanes());
                backlog.flush_blocking();
            }
        }
        wakes.wake_all(backlog.lanes());
        self.backlog = Some(backlog);
        self.wakes = wakes;
        outcome.map(|()| delivered)
    }

    /// Publishes messages from the start of `chunk`, which share a subject,
    /// at `time_unix_nanos`, noting the consumers to wake in `wakes` and
    /// owing what does not fit in `backlog`. The subject is checked and
    /// looked up once (`again`: the stamp of the previous chunk's result, if
    /// it had the very same subject bytes). When the match result has only
    /// local plain targets, the chunk is archived first and each target is
    /// then handed its run of deliveries at once ([`Target::deliver_run`]);
    /// otherwise each message is routed in turn, and the chunk ends early at
    /// one that met a full `Block` queue (the caller waits for room before
    /// the next).
    fn publish_chunk(
        &mut self,
        chunk: &[Message<'_>],
        (time_unix_nanos, again): (u64, Option<ResultStamp>),
        wakes: &mut Wakes,
        backlog: &mut Backlog,
    ) -> Chunk {
        let mut routed = Chunk::default();
        // The first message is checked before its subject, as a message
        // published alone is.
        if let Err(error) = check_message(&chunk[0], &self.limits) {
            return routed.failed(error.into());
        }
        let subject = chunk[0].subject;
        let limits = &self.limits;
        let looked_up = self
            .reader
            .lookup_stamped(subject, is_cacheable(subject), again, || {
                event::check_subject(subject, limits)
            });
        let (result, stamp) = match looked_up {
            Ok(Some(found)) => found,
            Ok(None) => return routed.failed(PublishError::Closed),
            Err(error) => return routed.failed(error.into()),
        };
        routed.stamp = stamp;
        let mut waking = Waking::Deferred {
            wakes,
            result: stamp,
        };
        let targets = result.plain.len();
        let plain_local = result.groups.is_empty() && result.plain.iter().all(|t| !t.remote);
        let mut appended: [Option<Holds>; CHUNK_MAX] = [const { None }; CHUNK_MAX];
        // Made from the chunk's first event: the others mostly differ from
        // it only in id and payload bytes.
        let mut template = Template::default();
        // The id's words in registers, out of `self` until the loop ends:
        // the template's 16-byte copy of them from memory, just after the
        // sequence's 8-byte store, stalled every event (store forwarding).
        let id_high = self.id_high;
        let mut sequence = self.sequence;
        for (at, message) in chunk.iter().enumerate() {
            if at > 0
                && let Err(error) = check_message(message, &self.limits)
            {
                // What is appended so far is still delivered below.
                routed.outcome = Err(error.into());
                break;
            }
            let parts = next_parts(id_high, &mut sequence, message, time_unix_nanos);
            if !plain_local {
                let deliveries = route(
                    result,
                    &mut self.round_robin,
                    Scope::Local,
                    (backlog, &mut waking),
                    |holders| self.appender.append(&parts, holders),
                );
                match deliveries {
                    Ok(deliveries) => routed.delivered += deliveries,
                    Err(error) => {
                        routed.outcome = Err(error);
                        break;
                    }
                }
                routed.published += 1;
                if !backlog.is_empty() {
                    break;
                }
                continue;
            }
            if targets > 0 {
                if at == 0 {
                    template.make(&parts);
                }
                let written = if template.fits(&parts) {
                    self.appender.append_stamped(
                        &template,
                        ((sequence, id_high), parts.payload),
                        targets as u32,
                    )
                } else {
                    self.appender.append(&parts, targets as u32)
                };
                match written {
                    Ok(holds) => appended[at] = Some(holds),
                    Err(AppendError::OutOfMemory) => {
                        // No silent loss: every consumer this event was for
                        // counts it.
                        result.plain.iter().for_each(Target::miss);
                        routed.outcome = Err(PublishError::OutOfMemory(targets));
                        break;
                    }
                }
            }
            routed.published += 1;
        }
        self.sequence = sequence;
        let appended = &mut appended[..routed.published];
        if !plain_local || targets == 0 || appended.is_empty() {
            return routed;
        }
        for target in &result.plain {
            let records = appended.iter_mut().map(|holds| {
                let holds = holds.as_mut().expect("each message published is appended");
                holds.next().expect("one hold per target")
            });
            target.deliver_run(target.tag, records, backlog);
        }
        waking.delivered_to_plain(&result.plain, backlog.lanes());
        routed.delivered = appended.len() * targets;
        routed
    }

    /// Publishes `message`, owing what does not fit in `backlog`.
    pub(crate) fn publish_into(
        &mut self,
        message: &Message<'_>,
        backlog: &mut Backlog,
    ) -> Result<usize, PublishError> {
        check_message(message, &self.limits)?;
        let parts = next_parts(self.id_high, &mut self.sequence, message, (self.clock)());
        self.publish_parts_into(&parts, backlog)
    }

    /// Routes an archive that passed validation by `subject` (its own, or
    /// another the caller routes it by) and copies it once into event memory;
    /// waits for room in full `Block` queues.
    pub(crate) fn publish_checked(
        &mut self,
        archive: Checked<'_>,
        subject: &str,
        scope: Scope<'_>,
    ) -> Result<usize, PublishError> {
        self.waiting(|core, backlog| core.publish_checked_into(archive, subject, scope, backlog))
    }

    /// Like `publish_checked`, owing what does not fit in `backlog`.
    pub(crate) fn publish_checked_into(
        &mut self,
        archive: Checked<'_>,
        subject: &str,
        scope: Scope<'_>,
        backlog: &mut Backlog,
    ) -> Result<usize, PublishError> {
        self.route_checked(subject, scope, backlog, Wake::Now, |appender, holders| {
            appender.append_archive(archive.bytes(), holders)
        })
    }

    /// Like `publish_checked_into` with `Scope::Local`, for checked parts:
    /// archived by `append` into event memory (one copy, no scratch).
    pub(crate) fn publish_parts_into(
        &mut self,
        parts: &EventParts<'_>,
        backlog: &mut Backlog,
    ) -> Result<usize, PublishError> {
        self.route_checked(
            parts.subject,
            Scope::Local,
            backlog,
            Wake::Now,
            |appender, holders| appender.append(parts, holders),
        )
    }

    /// Routes an event already checked against the limits by `subject` and
    /// writes it into event memory with `append`, owing what does not fit in
    /// `backlog`; its consumers are woken as `wake` says.
    fn route_checked(
        &mut self,
        subject: &str,
        scope: Scope<'_>,
        backlog: &mut Backlog,
        wake: Wake,
        append: impl FnOnce(&mut Appender, u32) -> Result<Holds, AppendError>,
    ) -> Result<usize, PublishError> {
        debug_assert!(
            backlog.is_empty(),
            "a source publishes again only once its backlog is flushed"
        );
        let limits = &self.limits;
        let looked_up = self
            .reader
            .lookup_checked(subject, is_cacheable(subject), || {
                event::check_subject(subject, limits)
            })?;
        let Some(result) = looked_up else {
            return Err(PublishError::Closed);
        };
        let mut waking = match wake {
            Wake::Now => Waking::Now,
            Wake::Noted => Waking::Deferred {
                wakes: &mut self.noted,
                result: None,
            },
        };
        let appender = &mut self.appender;
        route(
            result,
            &mut self.round_robin,
            scope,
            (backlog, &mut waking),
            |holders| append(appender, holders),
        )
    }

    /// True once the bus this publisher writes to is gone.
    fn is_stale(&self) -> bool {
        self.reader.is_closed()
    }
}

/// Most messages of a batch published as one chunk (see
/// `PublisherCore::publish_chunk`): a lane publishes itself every 64
/// deliveries anyway, so that a consumer sees a long batch early.
const CHUNK_MAX: usize = 64;

/// What a chunk of a batch came to.
struct Chunk {
    /// Messages published, from the start of the chunk.
    published: usize,
    /// Deliveries made (or owed).
    delivered: usize,
    /// The stamp of the chunk's match result, if memoized.
    stamp: Option<ResultStamp>,
    /// Why the message after the published ones failed, if one did.
    outcome: Result<(), PublishError>,
}

impl Default for Chunk {
    fn default() -> Self {
        Self {
            published: 0,
            delivered: 0,
            stamp: None,
            outcome: Ok(()),
        }
    }
}

impl Chunk {
    fn failed(self, error: PublishError) -> Self {
        Self {
            outcome: Err(error),
            ..self
        }
    }
}

/// The longest start of `messages` (not empty), up to [`CHUNK_MAX`], whose
/// messages have the first one's subject.
fn same_subject_chunk<'b, 'm>(messages: &'b [Message<'m>]) -> &'b [Message<'m>] {
    let subject = messages[0].subject;
    let len = messages
        .iter()
        .take(CHUNK_MAX)
        .position(|message| !std::ptr::eq(message.subject, subject) && message.subject != subject)
        .unwrap_or(messages.len().min(CHUNK_MAX));
    &messages[..len]
}

/// The parts of `message` as the next event of the publisher whose ids
/// start with `id_high` and whose last event was number `sequence`.
fn next_parts<'m>(
    id_high: u64,
    sequence: &mut u64,
    message: &Message<'m>,
    time_unix_nanos: u64,
) -> EventParts<'m> {
    *sequence += 1;
    EventParts {
        id: (u128::from(id_high) << 64) | u128::from(*sequence),
        time_unix_nanos,
        subject: message.subject,
        reply_to: message.reply_to,
        headers: message.headers,
        payload: message.payload,
    }
}

/// Checks everything about `message` but its subject against `limits`.
fn check_message(message: &Message<'_>, limits: &EventLimits) -> Result<(), EncodeError> {
    let parts = EventParts {
        subject: message.subject,
        reply_to: message.reply_to,
        headers: message.headers,
        payload: message.payload,
        ..EventParts::default()
    };
    event::check_parts_but_subject(&parts, limits)
}

/// Reply subjects are used once: matching them through the cache would
/// allocate an entry per request and evict the subjects that repeat.
fn is_cacheable(subject: &str) -> bool {
    !subject.starts_with(INBOX_PREFIX)
}

thread_local! {
    /// This thread's publishers, one per bus it has published to. Boxed: a
    /// publisher is taken out of the list and put back on every publish, a
    /// move of a pointer instead of the publisher's few hundred bytes (which
    /// were 46% of `Bus::publish`'s samples in `perf`, in `memmove`).
    #[allow(clippy::vec_box, reason = "moved out and back on every publish")]
    static THREAD_PUBLISHERS: RefCell<Vec<Box<PublisherCore>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `publish` with this thread's publisher for `inner`, making one on the
/// thread's first publish to that bus.
///
/// The publisher is taken out of the thread-local list while in use, so a
/// re-entrant publish (from a waker, say) gets a fresh publisher instead of a
/// borrow panic.
pub(super) fn with_thread_publisher<R>(
    inner: &Arc<BusInner>,
    publish: impl FnOnce(&mut PublisherCore) -> R,
) -> R {
    let key = inner.nuid;
    let taken = THREAD_PUBLISHERS.with_borrow_mut(|list| {
        let found = list
            .iter()
            .position(|core| core.bus == key)
            .map(|at| list.swap_remove(at));
        if found.is_none() {
            // A miss is rare (first publish to a bus): drop publishers of
            // buses that are gone, so their memory goes back.
            list.retain(|core| !core.is_stale());
        }
        found
    });
    let mut core = taken.unwrap_or_else(|| Box::new(PublisherCore::new(inner)));
    let result = publish(&mut core);
    // The list keeps its capacity, so putting the publisher back does not
    // allocate after the first time.
    THREAD_PUBLISHERS.with_borrow_mut(|list| list.push(core));
    result
}

impl std::fmt::Debug for PublisherCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherCore")
            .field("sequence", &self.sequence)
            .field("appender", &self.appender)
            .finish_non_exhaustive()
    }
}
