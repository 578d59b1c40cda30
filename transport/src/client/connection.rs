//! The client's machinery: the socket, the write buffer and its flusher
//! thread, the reader thread that dispatches the node's frames, the timer
//! thread that ends waits for answers that did not come, and reconnecting.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;
use starling_core::event::{self, EventParts, Header as EventHeader};
use starling_core::subject::{self, INBOX_PREFIX};
use starling_core::{
    Bus, BusConfig, Event, Publisher, SlowConsumerPolicy, SubscribeOptions, Subscription,
};

use super::completion::Completion;
use super::{ClientError, ClientOptions};
use crate::frame::control::{ErrorBody, Hello, Subscribe};
use crate::frame::{
    DecodeError, Decoder, ErrorCode, FRAME_ALIGN, Frame, HEADER_BYTES, Header, Kind, padded,
};
use crate::read_buffer::ReadBuffer;
use crate::stream::Stream;
use crate::url::ServerUrl;

/// The subscription id of the client's reply inbox.
const INBOX_SID: u64 = u64::MAX;
/// How often the reader wakes to see whether the client was closed.
const READ_TICK: Duration = Duration::from_millis(50);
/// Bytes per read.
const READ_BYTES: usize = 64 << 10;

/// An answer someone waits for, and until when.
#[derive(Debug)]
struct Pending<T> {
    completion: Arc<Completion<T>>,
    deadline: Instant,
}

/// A request in flight.
pub(crate) struct PendingRequest {
    tag: u64,
    pub(crate) completion: Arc<Completion<Result<Event, ClientError>>>,
}

impl PendingRequest {
    pub(crate) fn wait_until(&self, deadline: Instant) -> Option<Result<Event, ClientError>> {
        self.completion.wait_until(deadline)
    }
}

#[derive(Debug, Default)]
struct Control {
    /// Live subscriptions, sent again after a reconnect.
    subscriptions: BTreeMap<u64, Subscribe>,
    acks: HashMap<u64, Pending<Result<(), ClientError>>>,
    requests: HashMap<u64, Pending<Result<Event, ClientError>>>,
    pongs: HashMap<u64, Pending<Result<(), ClientError>>>,
    /// When the timer thread will wake next, if it will.
    timer_wakes_at: Option<Instant>,
}

impl Control {
    /// The earliest deadline of any answer still awaited.
    fn next_deadline(&self) -> Option<Instant> {
        let acks = self.acks.values().map(|p| p.deadline);
        let requests = self.requests.values().map(|p| p.deadline);
        let pongs = self.pongs.values().map(|p| p.deadline);
        acks.chain(requests).chain(pongs).min()
    }
}

#[derive(Debug)]
struct WriteState {
    stream: Option<Arc<Stream>>,
    /// Frames waiting for the flusher; 16-byte aligned, frames back to back.
    buffer: AlignedVec<FRAME_ALIGN>,
    /// The flusher sleeps on `write_ready`.
    flusher_waiting: bool,
    /// Publishers sleep on `write_ready` for room.
    publishers_waiting: usize,
}

/// How long a frame may wait for room in a full write buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Room {
    /// As long as it takes (a blocking publish).
    Wait,
    /// Until then, then `ClientError::Timeout` (requests, flushes,
    /// subscribes: they have an answer deadline anyway).
    Until(Instant),
    /// Not at all: `ClientError::WouldBlock` (`try_publish`, and the reader
    /// answering a PING).
    Now,
}

/// Everything a client's handles and threads share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) url: ServerUrl,
    pub(crate) options: ClientOptions,
    /// Delivers received events to subscriptions' queues.
    local: Bus,
    inbox_prefix: String,
    next_tag: AtomicU64,
    /// Random per client: the high half of its event ids and its inbox name.
    connection_id: u64,
    write: Mutex<WriteState>,
    write_ready: Condvar,
    control: Mutex<Control>,
    /// The timer thread sleeps on it (with `control`) until the next
    /// deadline.
    answer_due: Condvar,
    connected: AtomicBool,
    closed: AtomicBool,
    dropped_by_node: AtomicU64,
    reconnects: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    pub(crate) fn connect(
        url: ServerUrl,
        options: ClientOptions,
    ) -> Result<Arc<Shared>, ClientError> {
        let (stream, decoder) = open(&url, &options)?;
        let connection_id = starling_core::random_u64();
        let nuid = format!("{connection_id:016x}");
        let shared = Arc::new(Shared {
            connection_id,
            url,
            local: Bus::new(BusConfig {
                subscription: options.subscription,
                ..BusConfig::default()
            }),
            options,
            inbox_prefix: format!("{INBOX_PREFIX}{nuid}."),
            next_tag: AtomicU64::new(1),
            write: Mutex::new(WriteState {
                stream: Some(stream.clone()),
                buffer: AlignedVec::new(),
                flusher_waiting: false,
                publishers_waiting: 0,
            }),
            write_ready: Condvar::new(),
            control: Mutex::new(Control::default()),
            answer_due: Condvar::new(),
            connected: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            dropped_by_node: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        // Replies never hold a responder back: only the first is used.
        let inbox = Subscribe {
            pattern: format!("{}*", shared.inbox_prefix),
            queue_group: None,
            policy: SlowConsumerPolicy::DropNewest,
        };
        shared.enqueue(Room::Wait, |buffer| {
            push_frame(buffer, Kind::Sub, INBOX_SID, &inbox.encode())
        })?;
        let spawn_error = |source| ClientError::Connect {
            url: shared.url.to_string(),
            source,
        };
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("starling-client-reader".into())
                .spawn(move || shared.read_loop(stream, decoder))
                .map_err(spawn_error)?
        };
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("starling-client-flusher".into())
                .spawn(move || shared.flush_loop())
                .map_err(spawn_error)?
        };
        let timer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("starling-client-timer".into())
                .spawn(move || shared.timer_loop())
                .map_err(spawn_error)?
        };
        shared
            .threads
            .lock()
            .expect("threads lock")
            .extend([reader, flusher, timer]);
        Ok(shared)
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
    ) -> Result<(u64, Subscription), ClientError> {
        subject::validate_pattern(pattern, &self.local.config().limits.subject)?;
        let sid = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let options = SubscribeOptions {
            policy,
            ..self.options.subscription
        };
        let local = self
            .local
            .subscribe_with(&routing_subject(sid), None, options)
            .map_err(|_| ClientError::Closed)?;
        let request = Subscribe {
            pattern: pattern.to_owned(),
            queue_group: group.map(str::to_owned),
            policy,
        };
        self.control
            .lock()
            .expect("control lock")
            .subscriptions
            .insert(sid, request.clone());
        let completion = self.expect_answer(
            |control| &mut control.acks,
            sid,
            self.options.answer_timeout,
        );
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
                let mut control = self.control.lock().expect("control lock");
                control.subscriptions.remove(&sid);
                control.acks.remove(&sid);
                Err(error)
            }
        }
    }

    pub(crate) fn unsubscribe(&self, sid: u64) {
        let known = self
            .control
            .lock()
            .expect("control lock")
            .subscriptions
            .remove(&sid)
            .is_some();
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
        let completion = self.expect_answer(|control| &mut control.requests, tag, timeout);
        let room = Room::Until(Instant::now() + timeout);
        if let Err(error) = self.publish(room, subject, Some(&reply_to), &[], payload, tag) {
            self.control
                .lock()
                .expect("control lock")
                .requests
                .remove(&tag);
            return Err(error);
        }
        Ok(PendingRequest { tag, completion })
    }

    pub(crate) fn finish_request(
        &self,
        pending: &PendingRequest,
        outcome: Option<Result<Event, ClientError>>,
    ) -> Result<Event, ClientError> {
        self.control
            .lock()
            .expect("control lock")
            .requests
            .remove(&pending.tag);
        outcome.unwrap_or(Err(ClientError::Timeout))
    }

    pub(crate) fn send_ping(
        &self,
    ) -> Result<Arc<Completion<Result<(), ClientError>>>, ClientError> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let completion = self.expect_answer(
            |control| &mut control.pongs,
            tag,
            self.options.answer_timeout,
        );
        let room = Room::Until(Instant::now() + self.options.answer_timeout);
        self.enqueue(room, |buffer| push_frame(buffer, Kind::Ping, tag, &[]))?;
        Ok(completion)
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

    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut write = self.write.lock().expect("write lock");
            if let Some(stream) = write.stream.take() {
                stream.shutdown();
            }
        }
        self.write_ready.notify_all();
        {
            // Taken so that the timer is either before its check of
            // `closed` or asleep, and cannot miss this wake-up.
            let _control = self.control.lock().expect("control lock");
            self.answer_due.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        let current = std::thread::current().id();
        for thread in threads {
            if thread.thread().id() != current {
                let _ = thread.join();
            }
        }
    }

    /// Appends frames to the write buffer with `write`, waiting for room as
    /// `room` allows if it is full (or failing if disconnected), and wakes
    /// the flusher. The buffer is full when the node holds this connection
    /// back (a `Block` subscriber somewhere has no room): that is how a
    /// publisher is slowed to its subscribers' pace.
    fn enqueue(
        &self,
        room: Room,
        write: impl FnOnce(&mut AlignedVec<FRAME_ALIGN>),
    ) -> Result<(), ClientError> {
        let mut state = self.write.lock().expect("write lock");
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return Err(ClientError::Closed);
            }
            if state.buffer.len() < self.options.write_buffer_bytes_max {
                break;
            }
            if state.stream.is_none() {
                return Err(ClientError::Disconnected);
            }
            state.publishers_waiting += 1;
            state = match room {
                Room::Wait => self.write_ready.wait(state).expect("write lock"),
                Room::Until(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        state.publishers_waiting -= 1;
                        return Err(ClientError::Timeout);
                    }
                    self.write_ready
                        .wait_timeout(state, left)
                        .expect("write lock")
                        .0
                }
                Room::Now => {
                    state.publishers_waiting -= 1;
                    return Err(ClientError::WouldBlock);
                }
            };
            state.publishers_waiting -= 1;
        }
        write(&mut state.buffer);
        if state.flusher_waiting {
            self.write_ready.notify_all();
        }
        Ok(())
    }

    /// The flusher thread: writes the buffer out whenever it has frames.
    fn flush_loop(&self) {
        let mut sending = AlignedVec::<FRAME_ALIGN>::new();
        loop {
            let stream = {
                let mut state = self.write.lock().expect("write lock");
                loop {
                    if self.closed.load(Ordering::Relaxed) {
                        return;
                    }
                    if !state.buffer.is_empty() && state.stream.is_some() {
                        break;
                    }
                    state.flusher_waiting = true;
                    state = self.write_ready.wait(state).expect("write lock");
                    state.flusher_waiting = false;
                }
                std::mem::swap(&mut state.buffer, &mut sending);
                if state.publishers_waiting > 0 {
                    self.write_ready.notify_all();
                }
                state.stream.clone().expect("checked above")
            };
            // A failed write means the connection broke: the reader notices
            // and reconnects; what was in this buffer is lost in flight.
            let _ = (&*stream).write_all(&sending);
            sending.clear();
        }
    }

    /// The reader thread: dispatches frames, reconnects.
    fn read_loop(self: Arc<Self>, mut stream: Arc<Stream>, mut decoder: Decoder) {
        let mut publisher = self.local.publisher();
        let mut buffer = ReadBuffer::new(READ_BYTES);
        let mut routing = String::new();
        let _ = stream.set_read_timeout(Some(READ_TICK));
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return;
            }
            let bytes = buffer.bytes_mut();
            match (&*stream).read(bytes) {
                Ok(0) => {}
                Ok(n) => {
                    let result = decoder.feed(&bytes[..n], |frame| {
                        self.dispatch(frame, &mut publisher, &mut routing);
                        Ok::<(), ()>(())
                    });
                    if result.is_ok() {
                        continue;
                    }
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {}
            }
            // End of stream, an error, or bad framing: the connection is gone.
            self.connected.store(false, Ordering::Relaxed);
            self.write.lock().expect("write lock").stream = None;
            if self.closed.load(Ordering::Relaxed) || !self.options.reconnect {
                self.fail_everything();
                return;
            }
            match self.reconnect() {
                Some((next, next_decoder)) => {
                    stream = next;
                    decoder = next_decoder;
                    let _ = stream.set_read_timeout(Some(READ_TICK));
                }
                None => {
                    self.fail_everything();
                    return;
                }
            }
        }
    }

    fn dispatch(&self, frame: Frame<'_>, publisher: &mut Publisher, routing: &mut String) {
        let tag = frame.header.tag;
        match frame.header.kind {
            Kind::Msg if tag == INBOX_SID => self.reply(frame.body),
            Kind::Msg => {
                routing.clear();
                push_routing_subject(routing, tag);
                // The local queues apply their own policy and count drops; a
                // malformed event from the node is dropped.
                let _ = publisher.publish_archive_to(routing, frame.body);
            }
            Kind::Ok => self.answer_ack(tag, Ok(())),
            Kind::Err => {
                let Ok(error) = ErrorBody::decode(frame.body) else {
                    return;
                };
                match error.code {
                    ErrorCode::SlowConsumer => self.dropped_by_node.store(tag, Ordering::Relaxed),
                    ErrorCode::NoResponders => {
                        self.answer_request(tag, Err(ClientError::NoResponders))
                    }
                    code => {
                        let failure = || ClientError::Server {
                            code,
                            reason: error.reason.clone(),
                        };
                        self.answer_ack(tag, Err(failure()));
                        self.answer_request(tag, Err(failure()));
                    }
                }
            }
            Kind::Pong => {
                if let Some(pending) = self
                    .control
                    .lock()
                    .expect("control lock")
                    .pongs
                    .remove(&tag)
                {
                    pending.completion.complete(Ok(()));
                }
            }
            Kind::Ping => {
                // Never wait here: the reader must keep reading, or a node
                // holding this connection back could never drain to it. A
                // full buffer means the connection is far from idle anyway.
                let _ = self.enqueue(Room::Now, |buffer| push_frame(buffer, Kind::Pong, tag, &[]));
            }
            Kind::Hello | Kind::Sub | Kind::Unsub | Kind::Pub | Kind::Forward => {}
        }
    }

    fn reply(&self, body: &[u8]) {
        let Ok(archived) = event::validate(body, &self.local.config().limits) else {
            return;
        };
        let Some(tag) = archived
            .subject()
            .strip_prefix(self.inbox_prefix.as_str())
            .and_then(|rest| rest.parse::<u64>().ok())
        else {
            return;
        };
        self.answer_request(tag, Ok(archived.to_event()));
    }

    fn answer_ack(&self, tag: u64, answer: Result<(), ClientError>) {
        if let Some(pending) = self.control.lock().expect("control lock").acks.remove(&tag) {
            pending.completion.complete(answer);
        }
    }

    fn answer_request(&self, tag: u64, answer: Result<Event, ClientError>) {
        if let Some(pending) = self
            .control
            .lock()
            .expect("control lock")
            .requests
            .remove(&tag)
        {
            pending.completion.complete(answer);
        }
    }

    /// Awaits the answer filed under `tag` in `table`: the reader completes
    /// it when the answer comes, the timer with a timeout once `wait` has
    /// passed.
    fn expect_answer<T>(
        &self,
        table: fn(&mut Control) -> &mut HashMap<u64, Pending<T>>,
        tag: u64,
        wait: Duration,
    ) -> Arc<Completion<T>> {
        let completion = Completion::new();
        let deadline = Instant::now() + wait;
        let mut control = self.control.lock().expect("control lock");
        table(&mut control).insert(
            tag,
            Pending {
                completion: completion.clone(),
                deadline,
            },
        );
        // Deadlines mostly come in order, so the timer seldom has to be
        // woken early.
        if control.timer_wakes_at.is_none_or(|at| deadline < at) {
            control.timer_wakes_at = Some(deadline);
            self.answer_due.notify_one();
        }
        completion
    }

    /// The timer thread: completes answers whose time is up with a timeout.
    /// A thread of its own because the reader cannot be relied on for it:
    /// a steady stream of frames keeps its reads from ever timing out, and
    /// reconnecting can take it seconds.
    fn timer_loop(&self) {
        let mut control = self.control.lock().expect("control lock");
        while !self.closed.load(Ordering::Relaxed) {
            let now = Instant::now();
            control
                .acks
                .retain(|_, p| keep_or(p, now, || Err(ClientError::Timeout)));
            control
                .requests
                .retain(|_, p| keep_or(p, now, || Err(ClientError::Timeout)));
            control
                .pongs
                .retain(|_, p| keep_or(p, now, || Err(ClientError::Timeout)));
            control.timer_wakes_at = control.next_deadline();
            control = match control.timer_wakes_at {
                Some(at) => {
                    self.answer_due
                        .wait_timeout(control, at.saturating_duration_since(now))
                        .expect("control lock")
                        .0
                }
                None => self.answer_due.wait(control).expect("control lock"),
            };
        }
    }

    /// The connection is gone for good: every waiter gets an answer.
    fn fail_everything(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.write_ready.notify_all();
        let mut control = self.control.lock().expect("control lock");
        // `closed` is set: the timer stops.
        self.answer_due.notify_all();
        for (_, pending) in control.acks.drain() {
            pending.completion.complete(Err(ClientError::Closed));
        }
        for (_, pending) in control.requests.drain() {
            pending.completion.complete(Err(ClientError::Closed));
        }
        for (_, pending) in control.pongs.drain() {
            pending.completion.complete(Err(ClientError::Closed));
        }
    }

    /// Tries to connect again, with doubling waits; on success puts the new
    /// socket in place and subscribes again ahead of any buffered frames.
    fn reconnect(&self) -> Option<(Arc<Stream>, Decoder)> {
        let mut delay = Duration::from_millis(50);
        while !self.closed.load(Ordering::Relaxed) {
            std::thread::sleep(delay);
            delay = (delay * 2).min(self.options.reconnect_delay_max);
            let Ok((stream, decoder)) = open(&self.url, &self.options) else {
                continue;
            };
            let mut frames = AlignedVec::<FRAME_ALIGN>::new();
            let inbox = Subscribe {
                pattern: format!("{}*", self.inbox_prefix),
                queue_group: None,
                policy: Default::default(),
            };
            push_frame(&mut frames, Kind::Sub, INBOX_SID, &inbox.encode());
            for (sid, subscription) in &self.control.lock().expect("control lock").subscriptions {
                push_frame(&mut frames, Kind::Sub, *sid, &subscription.encode());
            }
            let mut state = self.write.lock().expect("write lock");
            frames.extend_from_slice(&state.buffer);
            state.buffer = frames;
            state.stream = Some(stream.clone());
            drop(state);
            self.write_ready.notify_all();
            self.connected.store(true, Ordering::Relaxed);
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            return Some((stream, decoder));
        }
        None
    }
}

fn keep_or<T>(pending: &Pending<T>, now: Instant, expired: impl FnOnce() -> T) -> bool {
    if pending.deadline > now {
        return true;
    }
    pending.completion.complete(expired());
    false
}

/// Connects to the node at `url`, trying each address a host name resolves to.
fn connect(url: &ServerUrl, timeout: Duration) -> io::Result<Stream> {
    match url {
        ServerUrl::Tcp(address) => {
            let mut last = io::Error::new(
                io::ErrorKind::NotFound,
                "the host name resolved to no address",
            );
            for addr in address.to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(stream) => {
                        stream.set_nodelay(true)?;
                        return Ok(Stream::Tcp(stream));
                    }
                    Err(error) => last = error,
                }
            }
            Err(last)
        }
        ServerUrl::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path)?)),
    }
}

/// Connects and shakes hands: sends our `HELLO`, waits for the node's.
fn open(url: &ServerUrl, options: &ClientOptions) -> Result<(Arc<Stream>, Decoder), ClientError> {
    let connect_error = |source| ClientError::Connect {
        url: url.to_string(),
        source,
    };
    let stream = connect(url, options.connect_timeout).map_err(connect_error)?;
    let mut hello = AlignedVec::<FRAME_ALIGN>::new();
    push_frame(
        &mut hello,
        Kind::Hello,
        0,
        &Hello::ours(&options.name, &options.token).encode(),
    );
    (&stream).write_all(&hello).map_err(connect_error)?;
    stream
        .set_read_timeout(Some(options.connect_timeout))
        .map_err(connect_error)?;
    let mut decoder = Decoder::new(starling_core::EventLimits::default().archive_bytes_max());
    let mut buffer = ReadBuffer::new(16 << 10);
    loop {
        let n = (&stream).read(buffer.bytes_mut()).map_err(connect_error)?;
        if n == 0 {
            return Err(connect_error(io::ErrorKind::UnexpectedEof.into()));
        }
        let mut answer = None;
        let fed = decoder.feed(&buffer.bytes_mut()[..n], |frame| {
            if answer.is_some() {
                // Frames after the node's HELLO belong to the reader; none
                // come before our first request, so there is none to keep.
                return Ok(());
            }
            answer = Some(match frame.header.kind {
                Kind::Hello => {
                    Hello::decode(frame.body)
                        .map(|_| ())
                        .map_err(|e| ClientError::Server {
                            code: ErrorCode::Framing,
                            reason: e.to_string(),
                        })
                }
                Kind::Err => {
                    let body = ErrorBody::decode(frame.body).map_err(|_| ClientError::Closed)?;
                    Err(ClientError::Server {
                        code: body.code,
                        reason: body.reason,
                    })
                }
                _ => Err(ClientError::Closed),
            });
            Ok::<(), ClientError>(())
        });
        if let Err(DecodeError::Frame(error)) = fed {
            return Err(ClientError::Server {
                code: ErrorCode::Framing,
                reason: error.to_string(),
            });
        }
        match answer {
            Some(Ok(())) => return Ok((Arc::new(stream), decoder)),
            Some(Err(error)) => return Err(error),
            None => continue,
        }
    }
}

/// Appends a whole frame (header, body, padding).
fn push_frame(buffer: &mut AlignedVec<FRAME_ALIGN>, kind: Kind, tag: u64, body: &[u8]) {
    buffer.extend_from_slice(&Header::new(kind, tag, body.len()).encode());
    buffer.extend_from_slice(body);
    buffer.extend_from_slice(&crate::frame::PADDING[..padded(body.len()) - body.len()]);
}

/// The local subject a subscription's events are routed on.
fn routing_subject(sid: u64) -> String {
    let mut subject = String::new();
    push_routing_subject(&mut subject, sid);
    subject
}

/// Appends [`routing_subject`] to `out`, without allocating once `out` has
/// grown: the reader does this for every event it receives.
fn push_routing_subject(out: &mut String, sid: u64) {
    use std::fmt::Write as _;
    let _ = write!(out, "_SID.{sid}");
}
