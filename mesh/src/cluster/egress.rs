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
use std::collections::{HashMap, HashSet};
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream};
use starling_core::bus::PLAIN_TAG;
use starling_core::subject::INBOX_PREFIX;
use starling_core::{EventRef, Mailbox, RecvError};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

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
    /// The link is (back) up on this connection.
    Connect(Connection),
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
        pending: None,
        pending_groups: Vec::new(),
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
    /// The last event taken, held back in case the next delivery is the same
    /// record for another of the peer's groups.
    pending: Option<Pending>,
    /// The queue groups the held-back event is for (kept to reuse its room).
    pending_groups: Vec<Arc<str>>,
    counters: Arc<LinkCounters>,
}

struct Pending {
    event: EventRef,
    plain: bool,
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
}

/// Why a link's streams were given up.
enum Broken {
    /// The connection is gone (the driver hears why).
    Lost,
    /// The peer acknowledged what it cannot have.
    Protocol(WireError),
}

impl DataStream {
    fn unwritten(&self) -> usize {
        self.buffer.len() + self.handing.len()
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
        // Down, broken, or a stream with a backlog: nothing is taken.
        if self.streams.is_empty()
            || !self.poll_streams(cx)
            || self
                .streams
                .iter()
                .any(|s| s.unwritten() >= STREAM_BUFFER_MAX)
        {
            return Poll::Pending;
        }
        let first = match mailbox.borrow().poll_recv(cx) {
            Poll::Ready(Ok(first)) => first,
            Poll::Ready(Err(RecvError::Closed)) => return Poll::Ready(None),
            Poll::Ready(Err(RecvError::Timeout)) | Poll::Pending => return Poll::Pending,
        };
        self.take(first);
        let mut bytes = 0;
        for _ in 1..BATCH_EVENTS {
            if bytes >= BATCH_BYTES
                || self
                    .streams
                    .iter()
                    .any(|s| s.unwritten() >= STREAM_BUFFER_MAX)
            {
                break;
            }
            let Some(event) = mailbox.borrow().try_recv() else {
                break;
            };
            bytes += self.take(event);
        }
        self.flush_pending();
        self.poll_streams(cx);
        cx.waker().wake_by_ref();
        Poll::Pending
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
                    let reason = error.to_string();
                    tracing::warn!(peer = %connection.remote_address(), %reason, "closing a link that sent bad data");
                    connection.close(close::PROTOCOL, reason.as_bytes());
                }
                self.link_down();
                false
            }
        }
    }

    /// The link is gone: what the peer had not acknowledged is lost in
    /// flight, as far as this node can tell.
    fn link_down(&mut self) {
        let lost: u64 = self.streams.iter().map(|s| s.sent - s.acked).sum();
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
        for id in self.entries.keys() {
            mailbox.unsubscribe(*id);
        }
        mailbox.unsubscribe(REPLY_ROUTE_TAG);
        let mut left = mailbox.dropped();
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
            EgressCommand::Connect(connection) => {
                self.link_down();
                for _ in 0..data_streams {
                    match connection.open_bi().await {
                        Ok((send, acks)) => self.streams.push(DataStream {
                            send,
                            acks,
                            buffer: Vec::with_capacity(64 << 10),
                            handing: Bytes::new(),
                            sent: 0,
                            acked: 0,
                            ack_bytes: [0; 8 * ACK_BYTES],
                            ack_len: 0,
                            acks_over: false,
                        }),
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

    /// Takes one delivery; returns the bytes it added to the buffers.
    fn take(&mut self, event: EventRef) -> usize {
        let tag = event.tag();
        let same_record = self
            .pending
            .as_ref()
            .is_some_and(|pending| std::ptr::eq(pending.event.archive(), event.archive()));
        let mut written = 0;
        if !same_record {
            written = self.flush_pending();
            self.pending = Some(Pending {
                event,
                plain: false,
            });
        }
        let pending = self.pending.as_mut().expect("set above");
        if tag == PLAIN_TAG {
            pending.plain = true;
        } else if let Some(Some(group)) = self.entries.get(&tag) {
            self.pending_groups.push(group.clone());
        } else {
            // The entry was withdrawn after the event was routed to it.
            self.counters.unroutable_out.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    /// Encodes the held-back event, if any, for its subject's stream;
    /// returns the bytes added.
    fn flush_pending(&mut self) -> usize {
        let Some(pending) = self.pending.take() else {
            return 0;
        };
        let index = shard(pending.event.subject(), self.streams.len());
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
            self.counters.events_out.fetch_add(1, Ordering::Relaxed);
        }
        written
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

/// The data stream for `subject`: FNV-1a, so every node agrees.
fn shard(subject: &str, streams: usize) -> usize {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &byte in subject.as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % streams as u64) as usize
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
