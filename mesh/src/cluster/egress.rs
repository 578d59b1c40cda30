//! The way out to one peer: its mailbox on the bus, and the task that drains
//! it onto the link's data streams.
//!
//! The mailbox's subscriptions are the peer's interest (set by the driver as
//! the peer tells it), so the bus routes to it exactly what the peer wants:
//! plain interest once per event ([`PLAIN_TAG`]) and each queue group the peer
//! was chosen for (tagged with the peer's id for that entry). One publish that
//! goes to the peer both ways arrives here as adjacent deliveries of the same
//! record; they leave as one frame.
//!
//! Events go out in batches: the first event wakes the task, and whatever
//! queued meanwhile (up to a batch) goes with it, one write per data stream.
//! Streams are chosen by subject, so the events of one subject keep their
//! order. While the link is down the mailbox keeps what arrives, up to its
//! capacity (then it drops and counts), and sends it when the link is back.
//!
//! **Replies.** A request that arrives from the peer names a reply subject
//! in one of the peer's inboxes; the subscription waiting there may not have
//! reached this node as interest yet (interest and events travel on
//! different streams). So before such a request is delivered here, the
//! peer's inbox space gets a route to the peer ([`ReplyRoutes`]): the answer
//! always finds its way back.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use quinn::{Connection, SendStream};
use starling_core::bus::PLAIN_TAG;
use starling_core::subject::INBOX_PREFIX;
use starling_core::{EventRef, Mailbox, RecvError};
use tokio::sync::mpsc::UnboundedReceiver;

use super::interest::InterestKey;
use super::stats::LinkCounters;
use super::wire::{FRAME_GROUPS_MAX, encode_forward};

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

/// What the driver tells a peer's egress task.
#[derive(Debug)]
pub(crate) enum EgressCommand {
    /// Route events matching `key` to the peer, for its entry `id`.
    Subscribe { id: u64, key: InterestKey },
    /// Stop routing for the peer's entry `id`.
    Unsubscribe { id: u64 },
    /// The link is (back) up on this connection.
    Connect(Connection),
    /// The link is down.
    Disconnect,
}

/// Drains `mailbox` to the peer until the driver lets go of `commands`.
pub(crate) async fn run(
    mailbox: Rc<RefCell<Mailbox>>,
    mut commands: UnboundedReceiver<EgressCommand>,
    data_streams: usize,
    counters: Arc<LinkCounters>,
) {
    let mut egress = Egress {
        groups: HashMap::new(),
        streams: Vec::new(),
        buffers: (0..data_streams)
            .map(|_| Vec::with_capacity(64 << 10))
            .collect(),
        pending: None,
        pending_groups: Vec::new(),
        counters,
    };
    loop {
        let linked = !egress.streams.is_empty();
        let next = poll_fn(|cx| {
            if let Poll::Ready(command) = commands.poll_recv(cx) {
                return Poll::Ready(Next::Command(command));
            }
            if linked && let Poll::Ready(event) = mailbox.borrow().poll_recv(cx) {
                return Poll::Ready(Next::Event(event));
            }
            Poll::Pending
        })
        .await;
        match next {
            Next::Command(None) | Next::Event(Err(RecvError::Closed)) => return,
            Next::Command(Some(command)) => egress.command(&mailbox, command, data_streams).await,
            Next::Event(Ok(first)) => {
                egress.take(first);
                let mut bytes = 0;
                for _ in 1..BATCH_EVENTS {
                    let Some(event) = mailbox.borrow().try_recv() else {
                        break;
                    };
                    bytes += egress.take(event);
                    if bytes >= BATCH_BYTES {
                        break;
                    }
                }
                egress.flush_pending();
                egress.write().await;
            }
            Next::Event(Err(_)) => {}
        }
    }
}

enum Next {
    Command(Option<EgressCommand>),
    Event(Result<EventRef, RecvError>),
}

struct Egress {
    /// Queue group of each of the peer's group entries, by id.
    groups: HashMap<u64, Arc<str>>,
    /// The link's data streams; empty while it is down.
    streams: Vec<SendStream>,
    /// Frames encoded for each stream, written once per batch.
    buffers: Vec<Vec<u8>>,
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

impl Egress {
    async fn command(
        &mut self,
        mailbox: &RefCell<Mailbox>,
        command: EgressCommand,
        data_streams: usize,
    ) {
        match command {
            EgressCommand::Subscribe { id, key } => {
                let subscribed =
                    mailbox
                        .borrow_mut()
                        .subscribe(id, &key.pattern, key.group.as_deref());
                if let Err(error) = subscribed {
                    // The peer validated it too; a difference in limits
                    // between builds is all that can get here.
                    tracing::warn!(pattern = %key.pattern, %error, "a peer's interest cannot be routed");
                    return;
                }
                if let Some(group) = key.group {
                    self.groups.insert(id, group.into());
                }
            }
            EgressCommand::Unsubscribe { id } => {
                mailbox.borrow_mut().unsubscribe(id);
                self.groups.remove(&id);
            }
            EgressCommand::Connect(connection) => {
                self.streams.clear();
                for _ in 0..data_streams {
                    match connection.open_uni().await {
                        Ok(stream) => self.streams.push(stream),
                        Err(_) => {
                            // Closed already; the driver hears of it.
                            self.streams.clear();
                            return;
                        }
                    }
                }
            }
            EgressCommand::Disconnect => self.streams.clear(),
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
        } else if let Some(group) = self.groups.get(&tag) {
            self.pending_groups.push(group.clone());
        } else {
            // The entry was withdrawn after the event was routed to it.
            self.counters.unroutable_out.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    /// Encodes the held-back event, if any; returns the bytes added.
    fn flush_pending(&mut self) -> usize {
        let Some(pending) = self.pending.take() else {
            return 0;
        };
        let buffer = &mut self.buffers[shard(pending.event.subject(), self.streams.len().max(1))];
        let before = buffer.len();
        let archive = pending.event.archive();
        let mut names = [""; FRAME_GROUPS_MAX];
        let mut plain = pending.plain;
        for chunk in self.pending_groups.chunks(FRAME_GROUPS_MAX) {
            for (name, group) in names.iter_mut().zip(chunk) {
                *name = group;
            }
            encode_forward(buffer, plain, &names[..chunk.len()], archive);
            plain = false;
        }
        if plain {
            encode_forward(buffer, true, &[], archive);
        }
        self.pending_groups.clear();
        let written = buffer.len() - before;
        if written > 0 {
            self.counters.events_out.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    async fn write(&mut self) {
        for (stream, buffer) in self.streams.iter_mut().zip(&mut self.buffers) {
            if buffer.is_empty() {
                continue;
            }
            if stream.write_all(buffer).await.is_ok() {
                self.counters
                    .bytes_out
                    .fetch_add(buffer.len() as u64, Ordering::Relaxed);
            }
            buffer.clear();
        }
    }
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
