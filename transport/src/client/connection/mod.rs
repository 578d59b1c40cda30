//! [`Connection`]: one client's connection to its node, shared by the
//! client's handles and its three threads: the reader (`reader.rs`, which
//! also reconnects, `reconnect.rs`), the flusher ([`Writer`]) and the timer
//! ([`Answers`]).

mod reader;
mod reconnect;
mod routes;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;
use starling_core::event::{self, EventParts, Header as EventHeader};
use starling_core::subject::{self, INBOX_PREFIX};
use starling_core::{Bus, BusConfig, Event, Mailbox, SlowConsumerPolicy, SubscribeOptions};

use self::routes::{Subscribed, Subscriptions};
use super::answers::{Answers, PendingRequest};
use super::completion::Completion;
use super::handshake;
use super::writer::{Room, Writer, push_frame};
use super::{ClientError, ClientOptions};
use crate::frame::control::Subscribe;
use crate::frame::packed::{self, PACKED_PAYLOAD_BYTES_MAX, Record};
use crate::frame::{FRAME_ALIGN, HEADER_BYTES, Header, Kind, PACKED_SINCE, padded};
use crate::url::ServerUrl;

/// The subscription id of the client's reply inbox.
const INBOX_SID: u64 = u64::MAX;

/// What a client's handles and threads share: the connection's settings,
/// its write buffer, the answers it awaits, its subscriptions and its state.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) url: ServerUrl,
    pub(crate) options: ClientOptions,
    /// The event memory and queues of this client's subscriptions: the
    /// reader hands each received event to its subscription's queue
    /// directly (see `routes`), never through this bus's index.
    local: Bus,
    inbox_prefix: String,
    /// Tags of requests and pings, subscription ids, event id low halves.
    /// Relaxed: only uniqueness matters, which `fetch_add` gives alone.
    next_tag: AtomicU64,
    /// Random per client: the high half of its event ids and its inbox name.
    connection_id: u64,
    writer: Writer,
    answers: Answers,
    /// Live subscriptions: sent again after a reconnect, and where the
    /// reader delivers their events.
    subscriptions: Subscriptions,
    /// For `is_connected` only; orders nothing (Relaxed).
    connected: AtomicBool,
    /// The options ask for packing and the node agreed on protocol 4:
    /// small events go as `PACKED_PUB` records ([`packs`]). Set at each (re)connect; a hint for the frame to write,
    /// ordering nothing (Relaxed). Frames buffered across a reconnect to a
    /// node that speaks only 3 are refused by it (not expected: a node
    /// replaced by an older build under a running client).
    packed: AtomicBool,
    /// Set when the client closes or the connection is lost for good.
    /// Relaxed: a thread that sleeps checks it under the lock it sleeps
    /// with (a publisher waiting for room, the answers'), and whoever sets it
    /// takes that lock before notifying (`Writer::close`, `Writer::wake_all`,
    /// `Answers::stop_timer`, `Answers::fail_all`): the lock orders it. The
    /// flusher parks, and they unpark it after setting this (an unpark is
    /// never lost: see `Writer::wake_flusher`). The reader looks again at
    /// least every `READ_TICK`.
    closed: AtomicBool,
    /// The node's last count of events it dropped for us; a report only
    /// (Relaxed).
    dropped_by_node: AtomicU64,
    /// A report only (Relaxed).
    reconnects: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Connection {
    /// Connects, shakes hands, subscribes the reply inbox and starts the
    /// reader, flusher and timer threads.
    pub(crate) fn connect(
        url: ServerUrl,
        options: ClientOptions,
    ) -> Result<Arc<Connection>, ClientError> {
        let (stream, decoder, version) = handshake::open(&url, &options)?;
        let packed = packs(&options, version);
        let connection_id = starling_core::random_u64();
        let nuid = format!("{connection_id:016x}");
        let local = Bus::new(BusConfig {
            subscription: options.subscription,
            ..BusConfig::default()
        });
        // The largest frame a publish can make: any control frame is smaller.
        let frame_bytes_max = HEADER_BYTES + padded(local.config().limits.archive_bytes_max());
        let connection = Arc::new(Connection {
            connection_id,
            url,
            local,
            writer: Writer::new(
                stream.clone(),
                options.write_buffer_bytes_max,
                frame_bytes_max,
                options.pack_small_events,
            ),
            options,
            inbox_prefix: format!("{INBOX_PREFIX}{nuid}."),
            next_tag: AtomicU64::new(1),
            answers: Answers::new(),
            subscriptions: Subscriptions::default(),
            connected: AtomicBool::new(true),
            packed: AtomicBool::new(packed),
            closed: AtomicBool::new(false),
            dropped_by_node: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        connection.enqueue(Room::Wait, |buffer| connection.push_inbox_subscribe(buffer))?;
        let reader = connection.spawn("reader", move |c| c.read_loop(stream, decoder))?;
        let flusher = connection.spawn("flusher", |c| c.writer.flush_loop(&c.closed))?;
        let timer = connection.spawn("timer", |c| c.answers.timer_loop(&c.closed))?;
        connection
            .threads
            .lock()
            .expect("threads lock")
            .extend([reader, flusher, timer]);
        Ok(connection)
    }

    /// Starts one of the client's threads, `starling-client-{role}`.
    fn spawn(
        self: &Arc<Self>,
        role: &str,
        run: impl FnOnce(Arc<Connection>) + Send + 'static,
    ) -> Result<JoinHandle<()>, ClientError> {
        let connection = self.clone();
        std::thread::Builder::new()
            .name(format!("starling-client-{role}"))
            .spawn(move || run(connection))
            .map_err(|source| ClientError::Connect {
                url: self.url.to_string(),
                source,
            })
    }

    /// Appends the `SUB` of the reply inbox, sent first on every connection.
    fn push_inbox_subscribe(&self, buffer: &mut AlignedVec<FRAME_ALIGN>) {
        // Replies never hold a responder back: only the first is used.
        let inbox = Subscribe {
            pattern: format!("{}*", self.inbox_prefix),
            queue_group: None,
            policy: SlowConsumerPolicy::DropNewest,
        };
        push_frame(buffer, Kind::Sub, INBOX_SID, &inbox.encode());
    }

    pub(crate) fn publish(
        &self,
        room: Room,
        subject: &str,
        reply_to: Option<&str>,
        headers: &[EventHeader<'_>],
        payload: &[u8],
        tag: u64,
    ) -> Result<(), ClientError> {
        let parts = EventParts {
            // Unique across processes without a random number per event.
            id: (u128::from(self.connection_id) << 64)
                | u128::from(self.next_tag.fetch_add(1, Ordering::Relaxed)),
            time_unix_nanos: starling_core::clock::system(),
            subject,
            reply_to,
            headers,
            payload,
        };
        event::check_parts(&parts, &self.local.config().limits)?;
        // Only what a `PUB` with tag 0 would carry, and small: a request
        // (a tag asks for NoResponders) or an event with headers goes as
        // a `PUB`, and so does a payload whose archive dwarfs the root.
        if tag == 0
            && headers.is_empty()
            && payload.len() <= PACKED_PAYLOAD_BYTES_MAX
            && self.packed.load(Ordering::Relaxed)
        {
            let record = Record {
                id: parts.id,
                time_unix_nanos: parts.time_unix_nanos,
                subject: subject.as_bytes(),
                reply_to: reply_to.map(str::as_bytes),
                payload,
            };
            return self.enqueue(room, |buffer| packed::push_frame(buffer, &[record]));
        }
        self.enqueue(room, |buffer| {
            let start = buffer.len();
            let bound = parts.archive_bytes_bound();
            buffer.resize(start + HEADER_BYTES + padded(bound), 0);
            let body = &mut buffer[start + HEADER_BYTES..];
            let len = event::encode_into(&parts, body).expect("the bound leaves room");
            buffer[start..start + HEADER_BYTES]
                .copy_from_slice(&Header::new(Kind::Pub, tag, len).encode());
            buffer.resize(start + HEADER_BYTES + padded(len), 0);
        })
    }

    /// Subscribes at the node with `policy`, which also governs the local
    /// queue: under `Block` a full local queue stops the reader, so the
    /// connection, then the node, then the publishers are held back.
    pub(crate) fn subscribe(
        &self,
        pattern: &str,
        group: Option<&str>,
        policy: SlowConsumerPolicy,
    ) -> Result<(u64, Mailbox), ClientError> {
        subject::validate_pattern(pattern, &self.local.config().limits.subject)?;
        let sid = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let local = self.local.mailbox(SubscribeOptions {
            policy,
            ..self.options.subscription
        });
        let request = Subscribe {
            pattern: pattern.to_owned(),
            queue_group: group.map(str::to_owned),
            policy,
        };
        // Known to the reader before the node can send an event for it.
        self.subscriptions.insert(
            sid,
            Subscribed {
                request: request.clone(),
                inlet: local.inlet(0, policy),
            },
        );
        let completion = self.answers.expect_ack(sid, self.options.answer_timeout);
        let deadline = Room::Until(Instant::now() + self.options.answer_timeout);
        let sent = self.enqueue(deadline, |buffer| {
            push_frame(buffer, Kind::Sub, sid, &request.encode())
        });
        let answer = sent.and_then(|()| {
            completion
                .wait_until(Instant::now() + self.options.answer_timeout)
                .unwrap_or(Err(ClientError::Timeout))
        });
        match answer {
            Ok(()) => Ok((sid, local)),
            Err(error) => {
                self.subscriptions.remove(sid);
                self.answers.forget_ack(sid);
                Err(error)
            }
        }
    }

    pub(crate) fn unsubscribe(&self, sid: u64) {
        let known = self.subscriptions.remove(sid);
        if known && !self.closed.load(Ordering::Relaxed) {
            let deadline = Room::Until(Instant::now() + self.options.answer_timeout);
            let _ = self.enqueue(deadline, |buffer| push_frame(buffer, Kind::Unsub, sid, &[]));
        }
    }

    pub(crate) fn send_request(
        &self,
        subject: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<PendingRequest, ClientError> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let reply_to = format!("{}{tag}", self.inbox_prefix);
        let completion = self.answers.expect_reply(tag, timeout);
        let room = Room::Until(Instant::now() + timeout);
        if let Err(error) = self.publish(room, subject, Some(&reply_to), &[], payload, tag) {
            self.answers.forget_request(tag);
            return Err(error);
        }
        Ok(PendingRequest { tag, completion })
    }

    pub(crate) fn finish_request(
        &self,
        pending: &PendingRequest,
        outcome: Option<Result<Event, ClientError>>,
    ) -> Result<Event, ClientError> {
        self.answers.forget_request(pending.tag);
        outcome.unwrap_or(Err(ClientError::Timeout))
    }

    pub(crate) fn send_ping(
        &self,
    ) -> Result<Arc<Completion<Result<(), ClientError>>>, ClientError> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let completion = self.answers.expect_pong(tag, self.options.answer_timeout);
        let room = Room::Until(Instant::now() + self.options.answer_timeout);
        self.enqueue(room, |buffer| push_frame(buffer, Kind::Ping, tag, &[]))?;
        Ok(completion)
    }

    /// The first publish the node refused since the last call.
    pub(crate) fn take_publish_error(&self) -> Option<ClientError> {
        self.answers.take_refused_publish()
    }

    pub(crate) fn dropped_by_node(&self) -> u64 {
        self.dropped_by_node.load(Ordering::Relaxed)
    }

    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Closes the socket, stops the threads and waits for them (but for the
    /// one calling, if it is one of them).
    pub(crate) fn close(&self) {
        // The swap lets one caller through; what it must order, the locks
        // order (see `closed`).
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.writer.close();
        self.answers.stop_timer();
        // A reader held back by a full `Block` queue stops waiting.
        self.subscriptions.close_mailboxes();
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        let current = std::thread::current().id();
        for thread in threads {
            if thread.thread().id() != current {
                let _ = thread.join();
            }
        }
    }

    /// The connection is gone for good: every waiter gets an answer.
    fn fail_everything(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.writer.wake_all();
        // `closed` is set: the timer stops.
        self.answers.fail_all();
    }

    /// Appends frames to the write buffer (see [`Writer::enqueue`]).
    fn enqueue(
        &self,
        room: Room,
        write: impl FnOnce(&mut AlignedVec<FRAME_ALIGN>),
    ) -> Result<(), ClientError> {
        self.writer.enqueue(&self.closed, room, write)
    }
}

/// True if a connection that agreed on protocol `version` sends small events
/// as `PACKED_PUB` records: only when the options ask for it.
fn packs(options: &ClientOptions, version: u32) -> bool {
    options.pack_small_events && version >= PACKED_SINCE
}
