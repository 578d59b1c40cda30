//! The way out to one peer: its mailbox on the bus, and the task that drains
//! it onto the link's data streams.
//!
//! The mailbox's subscriptions are the peer's interest (made by the driver
//! itself as the peer tells it, so that what the node reports as the peer's
//! interest is already routed: see [`route`]), so the bus routes to it
//! exactly what the peer wants:
//! plain interest once per event ([`PLAIN_TAG`]) and each queue group the peer
//! was chosen for (tagged with the peer's id for that entry). One publish that
//! goes to the peer both ways arrives here as adjacent deliveries of the same
//! record; they leave as one frame.
//!
//! Events go out in batches: the first event wakes the task, and whatever
//! queued meanwhile (up to a batch) goes with it, one write per data stream.
//! The batch is taken from the mailbox with one claim of its queue (one
//! release of the queue's slots, one look at its space signal) and its
//! events' memory released once per run, not per event; the claim is sized
//! by the room the buffers have left, and the few events a claim brings past
//! that room are held, in order, and go out first next time.
//! Streams are chosen by subject, so the events of one subject keep their
//! order, and each is written as far as QUIC takes it, independently of the
//! others: a stream the peer stopped reading (its consumers are full) does
//! not hold back what is already encoded for the rest. Once a stream has a
//! backlog of its own, no more events are taken from the mailbox (the next
//! might be for that stream); the mailbox fills, and, being `Block`, holds
//! back the publishers of events for the peer, each for at most
//! `peer_max_stall` per episode, after which the peer's events are dropped
//! and counted until its queue drains to half. The same holds while the
//! link is down: the mailbox keeps what arrives and sends it when the link
//! is back.
//!
//! **A link replaced by another** (two nodes dialed each other: both keep
//! the connection the lower id dialed) is *retired*, not cut: its streams
//! are written out and finished, and the task takes nothing more from the
//! mailbox until the peer has acknowledged every forward sent on them. Only
//! then do events go out on the new link: nothing is lost to the swap, and
//! the events of a subject keep their order across it.
//!
//! **Accounting.** The peer acknowledges, per stream, the forwards it has
//! handed to its bus; when a link goes down, what was taken for it and not
//! acknowledged is counted as lost in flight. When the peer is forgotten,
//! what is still queued for it is counted as dropped.
//!
//! **Replies.** A request that arrives from the peer names a reply subject
//! in one of the peer's inboxes; the subscription waiting there may not have
//! reached this node as interest yet (interest and events travel on
//! different streams). So before such a request is delivered here, the
//! peer's inbox space gets a route to the peer ([`ReplyRoutes`]): the answer
//! always finds its way back.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream};
use starling_core::bus::PLAIN_TAG;
use starling_core::hash::fnv1a;
use starling_core::subject::INBOX_PREFIX;
use starling_core::{EventRef, Mailbox, RecvError};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use super::counters::LinkCounters;
use super::interest::InterestKey;
use super::wire::{ACK_BYTES, FRAME_GROUPS_MAX, WireError, check_ack, close, encode_forward};

/// The tag of the routes for replies to the peer's request inboxes (interest
/// ids start at 1, and plain deliveries are tagged `PLAIN_TAG` anyway).
const REPLY_ROUTE_TAG: u64 = 0;

/// Reply routes one peer may have before they are all dropped and learned
/// anew (each is one subscription on the bus).
const REPLY_ROUTES_MAX: usize = 4096;

/// Most events taken from the mailbox for one round of writes.
const BATCH_EVENTS: usize = 1024;
/// Most bytes encoded for one round of writes.
const BATCH_BYTES: usize = 1 << 20;
/// Bytes encoded for one stream that QUIC has not taken yet (its window is
/// spent: the peer is not reading it), past which no more events are taken
/// from the mailbox: the next one might be for that stream.
const STREAM_BUFFER_MAX: usize = 256 << 10;

/// What the driver tells a peer's egress task.
#[derive(Debug)]
pub(crate) enum EgressCommand {
    /// Events for the peer's entry `id` (of queue group `group`, if any) are
    /// routed to the mailbox now (see [`route`]).
    Routed { id: u64, group: Option<Arc<str>> },
    /// The peer's entry `id` is no longer routed (see [`unroute`]).
    Unrouted { id: u64 },
    /// The link is (back) up on `connection`. If the task still has
    /// streams on a link that is not broken, that link was replaced: its
    /// streams retire first, and `retired` fires once they have (every
    /// forward on them acknowledged, or the link gone); it fires at once
    /// if there is nothing to retire.
    Connect {
        connection: Connection,
        retired: oneshot::Sender<()>,
    },
    /// The link is down.
    Disconnect,
}

/// Drains `mailbox` to the peer until the driver lets go of `commands`;
/// then counts what it leaves behind as dropped.
pub(crate) async fn run(
    mailbox: Rc<RefCell<Mailbox>>,
    mut commands: UnboundedReceiver<EgressCommand>,
    data_streams: usize,
    counters: Arc<LinkCounters>,
) {
    let mut egress = Egress {
        entries: HashMap::new(),
        connection: None,
        streams: Vec::new(),
        retiring: Vec::new(),
        pending: None,
        pending_groups: Vec::new(),
        held: VecDeque::new(),
        event_bytes_mean: 0,
        last_stream: LastStream::default(),
        counters,
    };
    while let Some(command) = poll_fn(|cx| egress.poll(cx, &mailbox, &mut commands)).await {
        egress.command(command, data_streams).await;
    }
    egress.retire(&mut mailbox.borrow_mut());
}

struct Egress {
    /// The peer's interest entries routed here, by id, with the queue group
    /// of each group entry.
    entries: HashMap<u64, Option<Arc<str>>>,
    /// The link's connection; `None` while it is down.
    connection: Option<Connection>,
    /// The link's data streams; empty while it is down.
    streams: Vec<DataStream>,
    /// Links replaced by another whose streams are still being written out
    /// and acknowledged; nothing is taken from the mailbox meanwhile.
    retiring: Vec<Retiring>,
    /// The last event taken, held back in case the next delivery is the same
    /// record for another of the peer's groups.
    pending: Option<Pending>,
    /// The queue groups the held-back event is for (kept to reuse its room).
    pending_groups: Vec<Arc<str>>,
    /// Events of a batch taken after its round's room was used up, in
    /// order; they go out before anything more is taken from the mailbox.
    /// Kept to reuse its room.
    held: VecDeque<EventRef>,
    /// Bytes per event encoded in the last round that encoded any: what
    /// batches are sized by.
    event_bytes_mean: usize,
    /// The stream the last event encoded went to, by its subject.
    last_stream: LastStream,
    counters: Arc<LinkCounters>,
}

struct Pending {
    event: EventRef,
    plain: bool,
}

/// A replaced link's streams, written out and awaiting acknowledgement.
struct Retiring {
    connection: Connection,
    streams: Vec<DataStream>,
    /// Dropped with the rest once the last stream is done: the driver's
    /// retirement of the link waits for that ([`EgressCommand::Connect`]).
    _retired: oneshot::Sender<()>,
}

/// One data stream of the link, written on its own: a stream whose peer
/// stopped reading holds back only what is for it.
struct DataStream {
    send: SendStream,
    /// The peer's acknowledgements.
    acks: RecvStream,
    /// Frames encoded for the stream since they were last handed to QUIC.
    buffer: Vec<u8>,
    /// Frames handed to QUIC that it has not taken all of (its window is
    /// spent). Handed over as owned bytes, which QUIC keeps until they are
    /// acknowledged instead of copying them: one copy less per event.
    handing: Bytes,
    /// Forward frames encoded for the stream, and acknowledged by the peer.
    sent: u64,
    acked: u64,
    /// Acknowledgement bytes read, whole or not.
    ack_bytes: [u8; 8 * ACK_BYTES],
    ack_len: usize,
    /// The peer finished its side: no more acknowledgements.
    acks_over: bool,
    /// This side finished the stream (it is retiring).
    finished: bool,
}

/// Why a link's streams were given up.
enum Broken {
    /// The connection is gone (the driver hears why).
    Lost,
    /// The peer acknowledged what it cannot have.
    Protocol(WireError),
}

impl DataStream {
    fn new(send: SendStream, acks: RecvStream) -> Self {
        DataStream {
            send,
            acks,
            buffer: Vec::with_capacity(64 << 10),
            handing: Bytes::new(),
            sent: 0,
            acked: 0,
            ack_bytes: [0; 8 * ACK_BYTES],
            ack_len: 0,
            acks_over: false,
            finished: false,
        }
    }

    fn unwritten(&self) -> usize {
        self.buffer.len() + self.handing.len()
    }

    /// Forwards sent that the peer has not acknowledged.
    fn unacknowledged(&self) -> u64 {
        self.sent - self.acked
    }

    /// Drives a retiring stream: writes what is left, then finishes it.
    /// Done (`Ready`) once the peer has acknowledged every forward, or
    /// will acknowledge no more (it finished its side, or the link broke):
    /// what it had not acknowledged is then counted as lost in flight.
    fn poll_retire(
        &mut self,
        cx: &mut Context<'_>,
        counters: &LinkCounters,
    ) -> Poll<Result<(), WireError>> {
        let broken = match self.poll(cx, counters) {
            Ok(()) => None,
            Err(Broken::Lost) => Some(Ok(())),
            Err(Broken::Protocol(error)) => Some(Err(error)),
        };
        if broken.is_none() && self.unwritten() == 0 && !self.finished {
            // The peer acknowledges what is left when it reads the end.
            let _ = self.send.finish();
            self.finished = true;
        }
        let acknowledged = self.unwritten() == 0 && self.unacknowledged() == 0;
        if acknowledged {
            return Poll::Ready(Ok(()));
        }
        if broken.is_some() || self.acks_over {
            counters
                .lost_in_flight
                .fetch_add(self.unacknowledged(), Ordering::Relaxed);
            return Poll::Ready(broken.unwrap_or(Ok(())));
        }
        Poll::Pending
    }

    /// Reads the acknowledgements that arrived and writes what QUIC takes;
    /// registers `cx` for more of both.
    fn poll(&mut self, cx: &mut Context<'_>, counters: &LinkCounters) -> Result<(), Broken> {
        while !self.acks_over {
            match self.acks.poll_read(cx, &mut self.ack_bytes[self.ack_len..]) {
                Poll::Ready(Ok(0)) => self.acks_over = true,
                Poll::Ready(Ok(read)) => {
                    self.ack_len += read;
                    let whole = self.ack_len - self.ack_len % ACK_BYTES;
                    for ack in self.ack_bytes[..whole].chunks_exact(ACK_BYTES) {
                        let ack = ack.try_into().expect("whole acknowledgements");
                        self.acked =
                            check_ack(ack, self.acked, self.sent).map_err(Broken::Protocol)?;
                    }
                    self.ack_bytes.copy_within(whole..self.ack_len, 0);
                    self.ack_len -= whole;
                }
                Poll::Ready(Err(_)) => return Err(Broken::Lost),
                Poll::Pending => break,
            }
        }
        loop {
            if self.handing.is_empty() {
                if self.buffer.is_empty() {
                    break;
                }
                // A fresh buffer as large as the last: QUIC frees the old
                // one once the peer has acknowledged it.
                let fresh = Vec::with_capacity(self.buffer.capacity());
                self.handing = Bytes::from(std::mem::replace(&mut self.buffer, fresh));
            }
            // Takes what the windows allow at once, from the front of
            // `handing`, or registers `cx` for more credit; the future holds
            // no state of its own, so dropping it pending loses nothing.
            let write = pin!(
                self.send
                    .write_chunks(std::slice::from_mut(&mut self.handing))
            );
            match write.poll(cx) {
                Poll::Ready(Ok(written)) => {
                    counters
                        .bytes_out
                        .fetch_add(written.bytes as u64, Ordering::Relaxed);
                }
                Poll::Ready(Err(_)) => return Err(Broken::Lost),
                Poll::Pending => break,
            }
        }
        Ok(())
    }
}

impl Egress {
    /// Runs the link until the driver has a command (`Some`) or there is
    /// nothing more to do (`None`): writes each stream as far as QUIC takes
    /// it, and takes a batch of events from the mailbox while every stream
    /// has room. Yields after each batch, so that the thread's other tasks
    /// run. Commands come first: no event is taken while one is queued (an
    /// event may be for an entry that a queued `Routed` names).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mailbox: &RefCell<Mailbox>,
        commands: &mut UnboundedReceiver<EgressCommand>,
    ) -> Poll<Option<EgressCommand>> {
        if let Poll::Ready(command) = commands.poll_recv(cx) {
            return Poll::Ready(command);
        }
        // A replaced link still retiring, down, broken, or a stream with a
        // backlog: nothing is taken.
        if !self.poll_retiring(cx)
            || self.streams.is_empty()
            || !self.poll_streams(cx)
            || self
                .streams
                .iter()
                .any(|s| s.unwritten() >= STREAM_BUFFER_MAX)
        {
            return Poll::Pending;
        }
        let mut round = Round::default();
        // What an earlier round held back goes first, as if it were still
        // at the front of the mailbox. Released one by one, as batches do
        // not: held are what a batch brought past its round's room, which
        // sizing batches by the room left makes rare unless event sizes
        // vary widely.
        while let Some(event) = self.held.pop_front() {
            if !self.has_room_for(&event, &round) {
                self.held.push_front(event);
                break;
            }
            drop(self.take(event, &mut round));
        }
        // With the room used up, batches of one until a delivery of another
        // record comes (it is held): a round never ends between two
        // deliveries of one record, which would leave as two forwards.
        while self.held.is_empty() && (round.has_room() || self.pending.is_some()) {
            let max = self.batch_size(&round);
            let first = round.events == 0;
            // The batch is claimed whole: what comes after the round's room
            // is used up is held, in order, for the next round. The room,
            // once used up, stays so for the round. After the first event
            // held, every event is held, even a delivery of the record
            // before it: merged into that record's forward, it would leave
            // ahead of the held event that came before it in the mailbox.
            let mut each = |event| {
                if self.held.is_empty() && self.has_room_for(&event, &round) {
                    self.take(event, &mut round)
                } else {
                    self.held.push_back(event);
                    None
                }
            };
            let mailbox = mailbox.borrow();
            if !first {
                // The round ends with a wake of its own: an empty mailbox
                // need not be asked to wake the task as well (publishers
                // would then wake it too).
                if mailbox.try_take_batch(max, each) == 0 {
                    break;
                }
                continue;
            }
            match mailbox.poll_recv_batch(cx, max, &mut each) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(RecvError::Closed)) => return Poll::Ready(None),
                Poll::Ready(Err(RecvError::Timeout)) | Poll::Pending => break,
            }
        }
        self.counters
            .held_out
            .store(self.held.len() as u64, Ordering::Relaxed);
        if round.events == 0 {
            return Poll::Pending;
        }
        drop(self.flush_pending(&mut round));
        if round.events_out > 0 {
            self.event_bytes_mean = round.bytes / round.events_out as usize;
            self.counters
                .events_out
                .fetch_add(round.events_out, Ordering::Relaxed);
        }
        self.poll_streams(cx);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// True if `event` may be taken in this round: the round has room, or
    /// `event` is the held-back record again (merged into its forward, it
    /// adds no frame).
    fn has_room_for(&self, event: &EventRef, round: &Round) -> bool {
        round.has_room() || self.is_pending_record(event)
    }

    /// True if `event` is a delivery of the record held back in `pending`.
    fn is_pending_record(&self, event: &EventRef) -> bool {
        // Both holds are alive, so equal addresses are one record.
        self.pending
            .as_ref()
            .is_some_and(|pending| std::ptr::eq(pending.event.archive(), event.archive()))
    }

    /// How many events to claim next: as many events of the last round's
    /// mean size as the round's room still takes (a batch is claimed whole,
    /// and what does not fit is held), at least one, within the round's
    /// count.
    fn batch_size(&self, round: &Round) -> usize {
        if !round.has_room() {
            return 1;
        }
        let fullest = self.streams.iter().map(DataStream::unwritten).max();
        let room = BATCH_BYTES
            .saturating_sub(round.bytes)
            .min(STREAM_BUFFER_MAX.saturating_sub(fullest.unwrap_or(0)));
        (room / self.event_bytes_mean.max(1)).clamp(1, BATCH_EVENTS - round.events)
    }

    /// Drives the retiring links; true once there are none.
    fn poll_retiring(&mut self, cx: &mut Context<'_>) -> bool {
        let counters = &self.counters;
        self.retiring.retain_mut(|link| {
            link.streams
                .retain_mut(|stream| match stream.poll_retire(cx, counters) {
                    Poll::Pending => true,
                    Poll::Ready(Ok(())) => false,
                    Poll::Ready(Err(error)) => {
                        close_bad_link(&link.connection, &error);
                        false
                    }
                });
            // Dropping the link drops `retired`: the driver hears it.
            !link.streams.is_empty()
        });
        self.retiring.is_empty()
    }

    /// Polls every stream; false if the link broke (then it is down here).
    fn poll_streams(&mut self, cx: &mut Context<'_>) -> bool {
        let mut broken = None;
        for stream in &mut self.streams {
            if let Err(why) = stream.poll(cx, &self.counters) {
                broken = Some(why);
                break;
            }
        }
        match broken {
            None => true,
            Some(why) => {
                if let (Broken::Protocol(error), Some(connection)) = (&why, &self.connection) {
                    close_bad_link(connection, error);
                }
                self.link_down();
                false
            }
        }
    }

    /// The link is gone: what the peer had not acknowledged is lost in
    /// flight, as far as this node can tell.
    fn link_down(&mut self) {
        let lost: u64 = self.streams.iter().map(DataStream::unacknowledged).sum();
        self.counters
            .lost_in_flight
            .fetch_add(lost, Ordering::Relaxed);
        self.streams.clear();
        self.connection = None;
    }

    /// The peer is forgotten (or the node stops): its routes go, and what
    /// is left for it is counted as dropped.
    fn retire(&mut self, mailbox: &mut Mailbox) {
        self.link_down();
        let retiring = self.retiring.drain(..).flat_map(|link| link.streams);
        let lost: u64 = retiring.map(|s| s.unacknowledged()).sum();
        self.counters
            .lost_in_flight
            .fetch_add(lost, Ordering::Relaxed);
        for id in self.entries.keys() {
            mailbox.unsubscribe(*id);
        }
        mailbox.unsubscribe(REPLY_ROUTE_TAG);
        let mut left = mailbox.dropped() + self.held.len() as u64;
        self.held.clear();
        self.counters.held_out.store(0, Ordering::Relaxed);
        while mailbox.try_recv().is_some() {
            left += 1;
        }
        self.counters.dropped_out.fetch_add(left, Ordering::Relaxed);
    }

    async fn command(&mut self, command: EgressCommand, data_streams: usize) {
        match command {
            EgressCommand::Routed { id, group } => {
                self.entries.insert(id, group);
            }
            EgressCommand::Unrouted { id } => {
                self.entries.remove(&id);
            }
            EgressCommand::Connect {
                connection,
                retired,
            } => {
                match self.connection.take() {
                    Some(replaced) if replaced.close_reason().is_none() => {
                        self.retiring.push(Retiring {
                            connection: replaced,
                            streams: std::mem::take(&mut self.streams),
                            _retired: retired,
                        });
                    }
                    // Down or broken: nothing more will be acknowledged.
                    _ => self.link_down(),
                }
                for _ in 0..data_streams {
                    match connection.open_bi().await {
                        Ok((send, acks)) => self.streams.push(DataStream::new(send, acks)),
                        Err(_) => {
                            // Closed already; the driver hears of it.
                            self.streams.clear();
                            return;
                        }
                    }
                }
                self.connection = Some(connection);
            }
            EgressCommand::Disconnect => self.link_down(),
        }
    }

    /// Takes one delivery: holds it back (in case the next delivery is the
    /// same record for another of the peer's groups) and encodes the one
    /// held back before, or merges it into that one if it is the same
    /// record. Returns the hold it is done with: the event itself if
    /// merged, else the one it encoded (if any), for the batch to release.
    fn take(&mut self, event: EventRef, round: &mut Round) -> Option<EventRef> {
        round.events += 1;
        let tag = event.tag();
        let done = if self.is_pending_record(&event) {
            Some(event)
        } else {
            let encoded = self.flush_pending(round);
            self.pending = Some(Pending {
                event,
                plain: false,
            });
            encoded
        };
        let pending = self.pending.as_mut().expect("set above");
        if tag == PLAIN_TAG {
            pending.plain = true;
        } else if let Some(Some(group)) = self.entries.get(&tag) {
            self.pending_groups.push(group.clone());
        } else {
            // The entry was withdrawn after the event was routed to it.
            self.counters.unroutable_out.fetch_add(1, Ordering::Relaxed);
        }
        done
    }

    /// Encodes the held-back event, if any, for its subject's stream, and
    /// counts it in `round`; returns it.
    fn flush_pending(&mut self, round: &mut Round) -> Option<EventRef> {
        let pending = self.pending.take()?;
        let index = self
            .last_stream
            .choose(pending.event.subject(), self.streams.len());
        let stream = &mut self.streams[index];
        let buffer = &mut stream.buffer;
        let before = buffer.len();
        let archive = pending.event.archive();
        let mut names = [""; FRAME_GROUPS_MAX];
        let mut plain = pending.plain;
        for chunk in self.pending_groups.chunks(FRAME_GROUPS_MAX) {
            for (name, group) in names.iter_mut().zip(chunk) {
                *name = group;
            }
            encode_forward(buffer, plain, &names[..chunk.len()], archive);
            stream.sent += 1;
            plain = false;
        }
        if plain {
            encode_forward(buffer, true, &[], archive);
            stream.sent += 1;
        }
        self.pending_groups.clear();
        let written = buffer.len() - before;
        if written > 0 {
            round.events_out += 1;
            round.bytes += written;
            round.filled |= stream.unwritten() >= STREAM_BUFFER_MAX;
        }
        Some(pending.event)
    }
}

/// What one round of [`Egress::poll`] took and encoded.
#[derive(Debug, Default)]
struct Round {
    /// Events taken, from the mailbox or from those held back; at most
    /// [`BATCH_EVENTS`] (and the deliveries of the last one's record).
    events: usize,
    /// Events encoded, for [`LinkCounters::events_out`].
    events_out: u64,
    /// Bytes encoded.
    bytes: usize,
    /// A stream's buffer reached [`STREAM_BUFFER_MAX`]: the next event
    /// might be for it.
    filled: bool,
}

impl Round {
    /// True while another record may be taken in this round.
    fn has_room(&self) -> bool {
        self.events < BATCH_EVENTS && self.bytes < BATCH_BYTES && !self.filled
    }
}

/// Routes events matching `key` to the peer whose mailbox is `mailbox`, for
/// its entry `id`, and tells its egress task (on `commands`) the entry's
/// queue group. Called by the driver as it learns the entry, so the route is
/// in force before the entry shows in any report: a client that waits for
/// the peer's interest in `/v1/interest` and then publishes reaches the peer.
///
/// The route is on the bus at once, and the task learns of the entry later,
/// when it runs; no event is lost in between: the task reads every command
/// queued before it takes any event from the mailbox ([`Egress::poll`]), and
/// both calls here happen before it runs again (one thread).
pub(crate) fn route(
    mailbox: &RefCell<Mailbox>,
    commands: &UnboundedSender<EgressCommand>,
    id: u64,
    key: InterestKey,
) {
    let subscribed = mailbox
        .borrow_mut()
        .subscribe(id, &key.pattern, key.group.as_deref());
    if let Err(error) = subscribed {
        // The peer validated it too; a difference in limits between builds
        // is all that can get here.
        tracing::warn!(pattern = %key.pattern, %error, "a peer's interest cannot be routed");
        return;
    }
    let group = key.group.map(Arc::from);
    let _ = commands.send(EgressCommand::Routed { id, group });
}

/// Stops routing events for the peer's entry `id` (see [`route`]). A queue
/// group's events routed to it and still queued are counted as unroutable
/// as they are taken ([`Egress::take`]).
pub(crate) fn unroute(
    mailbox: &RefCell<Mailbox>,
    commands: &UnboundedSender<EgressCommand>,
    id: u64,
) {
    mailbox.borrow_mut().unsubscribe(id);
    let _ = commands.send(EgressCommand::Unrouted { id });
}

/// Closes a link whose peer sent what the protocol does not allow.
fn close_bad_link(connection: &Connection, error: &WireError) {
    let reason = error.to_string();
    tracing::warn!(peer = %connection.remote_address(), %reason, "closing a link that sent bad data");
    connection.close(close::PROTOCOL, reason.as_bytes());
}

/// The stream chosen for the last subject, kept because events in a row
/// mostly share their subject: comparing it with the last one's bytes is
/// cheaper than hashing it again (the hash, a multiply per byte and a
/// division, was about a third of `flush_pending`'s samples in `perf`).
#[derive(Debug, Default)]
struct LastStream {
    /// The last subject's bytes; its room is reused, so a steady flow of
    /// subjects no longer than the longest seen allocates nothing.
    subject: Vec<u8>,
    /// How many streams the choice was among (the link may come back with
    /// another count).
    streams: usize,
    index: usize,
}

impl LastStream {
    /// The stream for `subject` among `streams`: [`shard`]'s answer.
    fn choose(&mut self, subject: &str, streams: usize) -> usize {
        if streams != self.streams || subject.as_bytes() != self.subject.as_slice() {
            self.subject.clear();
            self.subject.extend_from_slice(subject.as_bytes());
            self.streams = streams;
            self.index = shard(subject, streams);
        }
        self.index
    }
}

/// The data stream for `subject`: FNV-1a, so every node agrees.
fn shard(subject: &str, streams: usize) -> usize {
    (fnv1a(subject.as_bytes()) % streams as u64) as usize
}

/// Routes to one peer for replies to its requests: `_INBOX.<x>.>` for each
/// inbox space `_INBOX.<x>.` its requests have named.
#[derive(Debug)]
pub(crate) struct ReplyRoutes {
    mailbox: Rc<RefCell<Mailbox>>,
    known: HashSet<Box<str>>,
}

impl ReplyRoutes {
    /// Routes for `peer_inbox_prefix` (the peer's own bus) from the start.
    pub(crate) fn new(mailbox: Rc<RefCell<Mailbox>>, peer_inbox_prefix: &str) -> Self {
        let mut routes = ReplyRoutes {
            mailbox,
            known: HashSet::new(),
        };
        routes.add(peer_inbox_prefix);
        routes
    }

    /// Makes sure a reply to `reply_to` reaches the peer. Does nothing (and
    /// allocates nothing) for an inbox space already routed or a reply
    /// subject outside `_INBOX.`.
    pub(crate) fn learn(&mut self, reply_to: &str) {
        let Some(rest) = reply_to.strip_prefix(INBOX_PREFIX) else {
            return;
        };
        let Some(end) = rest.find('.') else {
            return;
        };
        let prefix = &reply_to[..INBOX_PREFIX.len() + end + 1];
        if self.known.contains(prefix) {
            return;
        }
        if self.known.len() >= REPLY_ROUTES_MAX {
            self.mailbox.borrow_mut().unsubscribe(REPLY_ROUTE_TAG);
            self.known.clear();
        }
        self.add(prefix);
    }

    fn add(&mut self, prefix: &str) {
        let pattern = format!("{prefix}>");
        match self
            .mailbox
            .borrow_mut()
            .subscribe(REPLY_ROUTE_TAG, &pattern, None)
        {
            Ok(()) => {
                self.known.insert(prefix.into());
            }
            Err(error) => tracing::debug!(%pattern, %error, "no reply route"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use starling_core::{Bus, SlowConsumerPolicy, SubscribeOptions};
    use tokio::sync::mpsc::unbounded_channel;

    use super::*;
    use crate::cluster::link::{self, tests::endpoint};
    use crate::cluster::tls::LINK_SERVER_NAME;

    const EVENTS: u64 = 200_000;
    const SUBJECTS: u64 = 8;

    /// A second connection from `from` to `to`: (dialed end, accepted end).
    async fn connect(from: &quinn::Endpoint, to: &quinn::Endpoint) -> (Connection, Connection) {
        let address = to.local_addr().unwrap();
        let dialed = from.connect(address, LINK_SERVER_NAME).unwrap();
        let accepted = to.accept().await.unwrap().await.unwrap();
        (dialed.await.unwrap(), accepted)
    }

    /// Tells the egress that the link is up on `connection`; the receiver
    /// hears when the link it replaced (if any) has retired.
    fn connect_egress(
        commands: &UnboundedSender<EgressCommand>,
        connection: &Connection,
    ) -> oneshot::Receiver<()> {
        let (retired, heard) = oneshot::channel();
        let connection = connection.clone();
        commands
            .send(EgressCommand::Connect {
                connection,
                retired,
            })
            .unwrap();
        heard
    }

    /// Reads the `accepted` links into `receiving`, as a node's ingress
    /// does; returns their counters.
    fn spawn_ingress(
        receiving: &Bus,
        accepted: impl IntoIterator<Item = Connection>,
    ) -> Arc<LinkCounters> {
        let counters = Arc::new(LinkCounters::default());
        let replies = Rc::new(RefCell::new(ReplyRoutes::new(
            Rc::new(RefCell::new(receiving.peer_mailbox(Default::default()))),
            "_INBOX.sender.",
        )));
        for accepted in accepted {
            tokio::task::spawn_local(link::ingress(
                accepted,
                receiving.clone(),
                counters.clone(),
                replies.clone(),
            ));
        }
        counters
    }

    /// Options that hold a publisher back while the queue is full for as
    /// long as a test on a loaded machine may need, never dropping.
    fn lossless(capacity: usize) -> SubscribeOptions {
        SubscribeOptions {
            capacity,
            policy: SlowConsumerPolicy::Block {
                max_stall: Duration::from_secs(30),
            },
            ..SubscribeOptions::default()
        }
    }

    /// The swap after two nodes dialed each other: the egress moves to a
    /// new connection while the old one has forwards in flight. Every event
    /// arrives once, each subject's in order, nothing is counted lost, and
    /// the old link reports itself retired only after its forwards were
    /// acknowledged.
    #[tokio::test]
    async fn a_replaced_link_retires_without_losing_or_reordering_an_event() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (sender, receiver) = (endpoint(), endpoint());
                let (first, first_accepted) = connect(&sender, &receiver).await;
                let (second, second_accepted) = connect(&sender, &receiver).await;

                let receiving = Bus::new(Default::default());
                let subscription = receiving.subscribe("retire.>").unwrap();
                let counters_in = spawn_ingress(&receiving, [first_accepted, second_accepted]);

                let sending = Bus::new(Default::default());
                let mailbox = Rc::new(RefCell::new(sending.peer_mailbox(lossless(4096))));
                let (commands, queue) = unbounded_channel();
                let counters = Arc::new(LinkCounters::default());
                let key = InterestKey {
                    pattern: "retire.>".into(),
                    group: None,
                };
                route(&mailbox, &commands, 1, key);
                let egress = tokio::task::spawn_local(run(mailbox, queue, 4, counters.clone()));
                connect_egress(&commands, &first);

                // The bus stays: a mailbox whose bus is gone reports itself
                // closed, and the task stops.
                let mut publisher = sending.publisher();
                let publisher = std::thread::spawn(move || {
                    for sequence in 0..EVENTS {
                        let subject = format!("retire.{}", sequence % SUBJECTS);
                        publisher
                            .publish(&subject, &sequence.to_le_bytes())
                            .unwrap();
                    }
                });

                // Swap once a quarter has arrived, with the first link busy.
                let mut last: BTreeMap<String, u64> = BTreeMap::new();
                let mut received = 0u64;
                let mut replaced_retired = None;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while received < EVENTS {
                    let event = tokio::time::timeout_at(deadline, subscription.recv_async())
                        .await
                        .unwrap_or_else(|_| {
                            panic!(
                                "{received} of {EVENTS} arrived; {counters:?}; {:?}",
                                counters_in
                            )
                        })
                        .unwrap();
                    let sequence = u64::from_le_bytes(event.payload().try_into().unwrap());
                    let previous = last.insert(event.subject().to_string(), sequence);
                    assert!(
                        previous.is_none_or(|previous| previous + SUBJECTS == sequence),
                        "{}: {sequence} after {previous:?}",
                        event.subject()
                    );
                    received += 1;
                    if received == EVENTS / 4 {
                        replaced_retired = Some(connect_egress(&commands, &second));
                    }
                }
                publisher.join().unwrap();
                assert_eq!(
                    last.values().map(|sequence| sequence / SUBJECTS).max(),
                    Some((EVENTS - 1) / SUBJECTS),
                    "every subject's last event arrived"
                );
                // Retired, and only after what it carried was acknowledged.
                let heard = replaced_retired.expect("swapped");
                tokio::time::timeout(Duration::from_secs(10), heard)
                    .await
                    .expect("the first link retired")
                    .unwrap_err();
                assert_eq!(counters.lost_in_flight.load(Ordering::Relaxed), 0);
                assert_eq!(counters.events_out.load(Ordering::Relaxed), EVENTS);
                // Both links carried events: the swap happened mid-stream.
                let carried = |connection: &Connection| connection.stats().udp_tx.bytes;
                assert!(carried(&first) > 1 << 20 && carried(&second) > 1 << 20);
                drop(commands);
                egress.await.unwrap();
            })
            .await;
    }

    /// Records queued for the peer before its link is up, each for its
    /// plain interest and for its queue group (two deliveries), every tenth
    /// of 100 KiB: the first batch, 1,024 deliveries claimed at once, holds
    /// some 50 large events (5 MiB) where a round encodes 1 MiB, so most of
    /// each batch is held for later rounds. Each record leaves as one
    /// forward, and arrives once for each, each subject's in order.
    #[tokio::test]
    async fn a_batch_past_the_rounds_room_is_held_in_order_and_each_record_leaves_as_one_forward() {
        const RECORDS: u64 = 2000;
        const LARGE_EVERY: u64 = 10;
        const LARGE_BYTES: usize = 100 << 10;
        const PLAIN: u64 = 1;
        const GROUP: u64 = 2;
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (sender, receiver) = (endpoint(), endpoint());
                let (connection, accepted) = connect(&sender, &receiver).await;
                let receiving = Bus::new(Default::default());
                let mut received = receiving.mailbox(lossless(4096));
                received.subscribe(PLAIN, "held.>", None).unwrap();
                received
                    .subscribe(GROUP, "held.>", Some("workers"))
                    .unwrap();
                let counters_in = spawn_ingress(&receiving, [accepted]);

                let sending = Bus::new(Default::default());
                let queued = 2 * RECORDS as usize;
                let mailbox = Rc::new(RefCell::new(sending.peer_mailbox(lossless(queued))));
                let (commands, queue) = unbounded_channel();
                let counters = Arc::new(LinkCounters::default());
                for (id, group) in [(1, None), (2, Some("workers".into()))] {
                    let pattern = "held.>".into();
                    route(&mailbox, &commands, id, InterestKey { pattern, group });
                }
                let egress =
                    tokio::task::spawn_local(run(mailbox.clone(), queue, 4, counters.clone()));
                let mut publisher = sending.publisher();
                for sequence in 0..RECORDS {
                    let mut payload = sequence.to_le_bytes().to_vec();
                    if sequence % LARGE_EVERY == 0 {
                        payload.resize(LARGE_BYTES, 0);
                    }
                    let subject = format!("held.{}", sequence % SUBJECTS);
                    publisher.publish(&subject, &payload).unwrap();
                }
                assert_eq!(mailbox.borrow().pending(), queued, "all queued at once");
                connect_egress(&commands, &connection);

                let mut last: BTreeMap<(u64, String), u64> = BTreeMap::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                for arrived in 0..queued {
                    let event = tokio::time::timeout_at(deadline, received.recv_async())
                        .await
                        .unwrap_or_else(|_| {
                            panic!("{arrived} of {queued} arrived; {counters:?}; {counters_in:?}")
                        })
                        .unwrap();
                    let sequence = u64::from_le_bytes(event.payload()[..8].try_into().unwrap());
                    let large = sequence % LARGE_EVERY == 0;
                    assert_eq!(event.payload().len() == LARGE_BYTES, large, "{sequence}");
                    let key = (event.tag(), event.subject().to_string());
                    let previous = last.insert(key, sequence);
                    assert!(
                        previous.is_none_or(|previous| previous + SUBJECTS == sequence),
                        "{} (tag {}): {sequence} after {previous:?}",
                        event.subject(),
                        event.tag()
                    );
                }
                for tag in [PLAIN, GROUP] {
                    let lasts = last.iter().filter(|((of, _), _)| *of == tag);
                    let subjects_done = lasts
                        .filter(|(_, sequence)| **sequence + SUBJECTS >= RECORDS)
                        .count();
                    assert_eq!(subjects_done as u64, SUBJECTS, "tag {tag}");
                }
                assert_eq!(counters.events_out.load(Ordering::Relaxed), RECORDS);
                assert_eq!(counters_in.events_in.load(Ordering::Relaxed), RECORDS);
                assert_eq!(counters.unroutable_out.load(Ordering::Relaxed), 0);
                drop(commands);
                egress.await.unwrap();
            })
            .await;
    }

    #[test]
    fn the_last_stream_is_the_hashs_choice_whatever_came_before() {
        let mut last = LastStream::default();
        let subjects = [
            "orders.eu",
            "orders.eu",
            "orders.us",
            "orders.e",
            "",
            "orders.eu",
        ];
        for streams in [8, 8, 3, 1, 16, 8] {
            for subject in subjects {
                assert_eq!(
                    last.choose(subject, streams),
                    shard(subject, streams),
                    "{subject:?} among {streams}"
                );
            }
        }
    }
}
