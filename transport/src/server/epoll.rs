//! The portable backend: an epoll loop (through `mio`) per I/O thread,
//! driving the thread's sessions.
//!
//! Edge-triggered: on readable, read until the socket would block (or the
//! connection's turn is up, or its session stalls); on writable, or whenever
//! a session has output, write (gathered, up to [`SLICES_MAX`] slices per
//! call) until the socket would block. Sessions woken by deliveries are
//! pulled at the end of every turn.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UnixListener};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use super::ServerState;
use super::accept::AcceptPause;
use super::listeners::Listeners;
use super::reply_poll::ReplyPoll;
use super::session::{Session, Tick, earliest, tick_interval};
use super::threads::Accepted;
use super::wake::{ReadyQueue, SessionWaker, WakeLoop};
use crate::read_buffer::ReadBuffer;
use crate::stream::Stream;

/// Most slices gathered into one `writev`.
const SLICES_MAX: usize = 256;
/// Bytes read per `read` call.
const READ_BYTES: usize = 64 << 10;
/// Reads of one connection per turn of the loop. Readiness is edge-triggered,
/// so a connection not read until it would block is remembered and read
/// again on the next turn, after every other ready connection had its turn:
/// one fast publisher cannot starve the rest of the thread.
const READS_PER_TURN: usize = 4;
/// Connections accepted from one listener per turn of the loop: a flood of
/// new connections does not keep the open ones waiting.
const ACCEPTS_PER_TURN: usize = 64;

const WAKE: Token = Token(0);
const LISTEN_TCP: Token = Token(1);
const LISTEN_UDS: Token = Token(2);
const FIRST_CONNECTION: usize = 3;

#[derive(Debug)]
struct MioWaker(mio::Waker);

impl WakeLoop for MioWaker {
    fn wake_loop(&self) {
        // A failure means the loop is gone; nothing is left to wake.
        let _ = self.0.wake();
    }
}

struct Connection {
    id: u64,
    stream: Stream,
    session: Session,
    waker: Arc<SessionWaker>,
    /// The session's waker as a `Waker`, made once.
    task_waker: Waker,
    /// The socket said it would block on the last write.
    write_blocked: bool,
    /// Not read to the end (its turn was up, or its session stalled): read
    /// again without waiting for readiness, which will not come again for
    /// bytes already there.
    unread: bool,
}

/// Runs I/O thread `thread`'s loop until the server stops. Calls `started`
/// once it is ready.
pub(super) fn run(
    thread: usize,
    listeners: Listeners,
    server: &Arc<ServerState>,
    started: &dyn Fn(),
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let loop_waker = Arc::new(MioWaker(mio::Waker::new(poll.registry(), WAKE)?));
    server.threads.set_waker(thread, loop_waker.clone());
    let ready = ReadyQueue::new(server.config.connections_max, loop_waker);
    let _serving = ready.serve_on_this_thread();

    let mut tcp = listeners.tcp.map(TcpListener::from_std);
    let mut uds = listeners.uds.map(UnixListener::from_std);
    if let Some(listener) = tcp.as_mut() {
        poll.registry()
            .register(listener, LISTEN_TCP, Interest::READABLE)?;
    }
    if let Some(listener) = uds.as_mut() {
        poll.registry()
            .register(listener, LISTEN_UDS, Interest::READABLE)?;
    }
    started();

    let mut state = Loop {
        server,
        thread,
        publisher: server.bus.publisher(),
        connections: slab::Slab::new(),
        ready,
        buffer: ReadBuffer::new(READ_BYTES),
        turns: Vec::new(),
        stalled: Vec::new(),
        accept_pause: AcceptPause::default(),
        accept_again: false,
        reply_poll: ReplyPoll::default(),
    };
    let mut events = Events::with_capacity(1024);
    let mut drain_deadline: Option<Instant> = None;
    let tick_every = tick_interval(&server.session);
    let mut next_tick = Instant::now() + tick_every;
    loop {
        // The turn's last step, before anything that waits (see
        // `ReadyQueue::serve_on_this_thread`); it may leave connections
        // a turn to take.
        state.pull_ready(poll.registry());
        let wake_at = if state.turns.is_empty() && !state.accept_again {
            let deadlines = [
                drain_deadline,
                state.stall_deadline(),
                state.accept_pause.resume_at(),
            ];
            Some(earliest(&deadlines, next_tick))
        } else {
            // Connections wait for another turn: only look for readiness.
            None
        };
        wait(&mut poll, &mut events, wake_at, &mut state.reply_poll)?;
        for event in events.iter() {
            match event.token() {
                WAKE => {
                    // The sessions it was woken for are pulled at the end
                    // of the turn.
                    server.threads.woken(thread);
                    state.admit_handed_over(poll.registry());
                }
                LISTEN_TCP | LISTEN_UDS => {
                    state.accept(tcp.as_ref(), uds.as_ref(), poll.registry());
                }
                Token(token) => {
                    let index = token - FIRST_CONNECTION;
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        state.read(index, poll.registry());
                    }
                    if event.is_writable() {
                        state.write(index, poll.registry());
                    }
                }
            }
        }
        state.next_turns(poll.registry());
        state.expire_stalls(poll.registry());
        let now = Instant::now();
        if std::mem::take(&mut state.accept_again) || state.accept_pause.resumes(now) {
            state.accept(tcp.as_ref(), uds.as_ref(), poll.registry());
        }
        if now >= next_tick {
            state.tick(now, poll.registry());
            next_tick = now + tick_every;
        }
        if server.stopping.load(Ordering::Acquire) {
            match drain_deadline {
                None => {
                    // Stop accepting; tell every client; keep writing until
                    // every outbox is empty or the drain time is up.
                    drop(tcp.take());
                    drop(uds.take());
                    drain_deadline = Some(Instant::now() + server.config.drain_timeout);
                    let keys: Vec<usize> = state.connections.iter().map(|(key, _)| key).collect();
                    for index in keys {
                        state.connections[index].session.shut_down();
                        state.write(index, poll.registry());
                    }
                }
                Some(deadline) => {
                    if state.connections.is_empty() || Instant::now() >= deadline {
                        break;
                    }
                }
            }
            if state.connections.is_empty() {
                break;
            }
        }
    }
    let keys: Vec<usize> = state.connections.iter().map(|(key, _)| key).collect();
    for index in keys {
        state.close(index, poll.registry());
    }
    Ok(())
}

struct Loop<'a> {
    server: &'a Arc<ServerState>,
    /// This I/O thread's index.
    thread: usize,
    publisher: starling_core::Publisher,
    connections: slab::Slab<Connection>,
    ready: Arc<ReadyQueue>,
    buffer: ReadBuffer,
    /// Connections whose turn ended before they would block.
    turns: Vec<usize>,
    /// Connections whose session stalled, looked at again at their deadlines.
    stalled: Vec<usize>,
    accept_pause: AcceptPause,
    /// A listener had more connections waiting when its turn was up (its
    /// readiness, edge-triggered, will not come again for them).
    accept_again: bool,
    /// Polls instead of sleeping for a while after a request.
    reply_poll: ReplyPoll,
}

/// Waits for readiness until `wake_at` (`None`: only looks); after a
/// request, polls for a while before it sleeps (`ReplyPoll`).
fn wait(
    poll: &mut Poll,
    events: &mut Events,
    wake_at: Option<Instant>,
    reply_poll: &mut ReplyPoll,
) -> io::Result<()> {
    let Some(wake_at) = wake_at else {
        return look(poll, events, Duration::ZERO);
    };
    let polled = reply_poll.poll(wake_at, || {
        look(poll, events, Duration::ZERO)?;
        Ok(!events.is_empty())
    })?;
    if polled {
        return Ok(());
    }
    look(
        poll,
        events,
        wake_at.saturating_duration_since(Instant::now()),
    )
}

/// Waits up to `timeout` for readiness; an interrupted wait found none.
fn look(poll: &mut Poll, events: &mut Events, timeout: Duration) -> io::Result<()> {
    match poll.poll(events, Some(timeout)) {
        Err(error) if error.kind() != io::ErrorKind::Interrupted => Err(error),
        _ => Ok(()),
    }
}

impl Loop<'_> {
    /// Accepts what waits on both listeners, up to a turn's worth each,
    /// unless accepting is paused.
    fn accept(
        &mut self,
        tcp: Option<&TcpListener>,
        uds: Option<&UnixListener>,
        registry: &Registry,
    ) {
        if self.accept_pause.resume_at().is_some() {
            return;
        }
        if let Some(listener) = tcp {
            let server = self.server;
            self.accept_from(registry, || {
                let (stream, remote) = listener.accept()?;
                let _ = stream.set_nodelay(true);
                // A connection TLS cannot take fails like one reset before
                // it was accepted (or, out of descriptors, pauses accepting).
                Ok((server.tcp_stream(stream.into())?, remote.to_string()))
            });
        }
        if let Some(listener) = uds {
            self.accept_from(registry, || {
                listener
                    .accept()
                    .map(|(stream, _)| (Stream::Unix(stream.into()), String::new()))
            });
        }
    }

    fn accept_from(
        &mut self,
        registry: &Registry,
        mut accept: impl FnMut() -> io::Result<(Stream, String)>,
    ) {
        for _ in 0..ACCEPTS_PER_TURN {
            match accept() {
                Ok((stream, remote)) => {
                    self.accept_pause.accepted();
                    let accepted = Accepted { stream, remote };
                    if let Some(accepted) = self.server.threads.place(self.thread, accepted) {
                        self.admit(accepted, registry);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    let errno = error.raw_os_error().unwrap_or(0);
                    if !self.accept_pause.failed(errno, Instant::now()) {
                        // A connection reset before it was accepted: the
                        // next one may be fine.
                        self.accept_again = true;
                    }
                    return;
                }
            }
        }
        self.accept_again = true;
    }

    /// Admits the connections thread 0 handed to this thread.
    fn admit_handed_over(&mut self, registry: &Registry) {
        while let Some(accepted) = self.server.threads.take(self.thread) {
            self.admit(accepted, registry);
        }
    }

    /// Serves a connection placed on this thread.
    fn admit(&mut self, accepted: Accepted, registry: &Registry) {
        let Accepted { stream, remote } = accepted;
        let peer = super::peer_ip(&remote);
        let (id, stats) = self
            .server
            .connections
            .open(stream.transport(), remote, self.thread);
        let entry = self.connections.vacant_entry();
        let index = entry.key();
        let token = Token(FIRST_CONNECTION + index);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if registry
            .register(&mut SourceFd(&stream.as_raw_fd()), token, interest)
            .is_err()
        {
            self.server.closed(self.thread, id);
            return;
        }
        let waker = SessionWaker::new(index as u64, self.ready.clone());
        let task_waker = waker.waker();
        entry.insert(Connection {
            id,
            stream,
            session: self.server.new_session(peer, stats),
            waker,
            task_waker,
            write_blocked: false,
            unread: false,
        });
    }

    fn read(&mut self, index: usize, registry: &Registry) {
        let Some(connection) = self.connections.get_mut(index) else {
            return;
        };
        connection.unread = false;
        if connection.session.stalled() {
            let mut cx = Context::from_waker(&connection.task_waker);
            if connection.session.resume(&mut cx, &mut self.publisher) {
                // Not now: `resume` reads it once the session has caught up.
                connection.unread = true;
                self.write(index, registry);
                return;
            }
        }
        let buffer = self.buffer.bytes_mut();
        let mut eof = false;
        let mut reads = 0;
        loop {
            if reads == READS_PER_TURN {
                connection.unread = true;
                self.turns.push(index);
                break;
            }
            match (&connection.stream).read(buffer) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    reads += 1;
                    connection
                        .session
                        .receive(&buffer[..n], &mut self.publisher);
                    if connection.session.take_published_request() {
                        self.reply_poll.request_published();
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
            if connection.session.closing() {
                break;
            }
            if connection.session.stalled() {
                // Register for room (the queue may even have drained by now).
                let mut cx = Context::from_waker(&connection.task_waker);
                if connection.session.resume(&mut cx, &mut self.publisher) {
                    // Hold the client back: what it sends stays in the socket.
                    connection.unread = true;
                    self.stalled.push(index);
                    break;
                }
            }
        }
        if eof {
            self.close(index, registry);
            return;
        }
        self.write(index, registry);
    }

    /// Keeps every session's time (see `Session::tick`).
    fn tick(&mut self, now: Instant, registry: &Registry) {
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for index in keys {
            match self.connections[index].session.tick(now) {
                Tick::Idle => {}
                Tick::Write => self.write(index, registry),
                Tick::Close => {
                    // Its last words, if the socket takes them at once.
                    self.write(index, registry);
                    self.close(index, registry);
                }
            }
        }
    }

    /// Reads the connections whose turn ended early.
    fn next_turns(&mut self, registry: &Registry) {
        let mut turns = std::mem::take(&mut self.turns);
        for &index in &turns {
            // A connection closed meanwhile may have left its slot to a new
            // one: reading that one early finds nothing, or its bytes.
            self.read(index, registry);
        }
        turns.clear();
        if self.turns.is_empty() {
            self.turns = turns;
        }
    }

    /// The earliest deadline of a stalled session.
    fn stall_deadline(&mut self) -> Option<Instant> {
        let connections = &self.connections;
        self.stalled.retain(|&index| {
            connections
                .get(index)
                .is_some_and(|connection| connection.session.stalled())
        });
        self.stalled
            .iter()
            .filter_map(|&index| connections.get(index)?.session.stall_deadline())
            .min()
    }

    /// Resumes the stalled sessions whose deadline has passed: their full
    /// queues are demoted and they go on.
    fn expire_stalls(&mut self, registry: &Registry) {
        if self.stalled.is_empty() {
            return;
        }
        let now = Instant::now();
        let due: Vec<usize> = self
            .stalled
            .iter()
            .copied()
            .filter(|&index| {
                self.connections
                    .get(index)
                    .and_then(|connection| connection.session.stall_deadline())
                    .is_some_and(|deadline| deadline <= now)
            })
            .collect();
        for index in due {
            self.resume(index, registry);
        }
    }

    /// Hands a stalled session's backlog over and handles what it spilled;
    /// once it has caught up, reads the connection again.
    fn resume(&mut self, index: usize, registry: &Registry) {
        let Some(connection) = self.connections.get_mut(index) else {
            return;
        };
        if connection.session.stalled() {
            let mut cx = Context::from_waker(&connection.task_waker);
            if connection.session.resume(&mut cx, &mut self.publisher) {
                if !self.stalled.contains(&index) {
                    self.stalled.push(index);
                }
                self.write(index, registry);
                return;
            }
        }
        if connection.unread {
            self.read(index, registry);
        } else {
            self.write(index, registry);
        }
    }

    fn pull_ready(&mut self, registry: &Registry) {
        while let Some(key) = self.ready.pop() {
            let index = key as usize;
            if let Some(connection) = self.connections.get(index) {
                connection.waker.taken();
                self.resume(index, registry);
            }
        }
    }

    /// Pulls deliveries and writes until the outbox is empty and the mailbox
    /// dry, or the socket would block.
    fn write(&mut self, index: usize, registry: &Registry) {
        let Some(connection) = self.connections.get_mut(index) else {
            return;
        };
        connection.write_blocked = false;
        loop {
            if !connection.session.closing() {
                let mut cx = Context::from_waker(&connection.task_waker);
                connection.session.pull(&mut cx);
            }
            if connection.session.outbox().is_empty() {
                break;
            }
            match flush(connection) {
                Ok(true) => continue,
                Ok(false) => {
                    connection.write_blocked = true;
                    break;
                }
                Err(_) => {
                    self.close(index, registry);
                    return;
                }
            }
        }
        if connection.session.finished() {
            self.close(index, registry);
        } else if connection.session.outbox_has_room_again() && !self.turns.contains(&index) {
            // Its answers went out: handle the frames that waited for room,
            // and read on, next turn.
            self.turns.push(index);
        }
    }

    fn close(&mut self, index: usize, registry: &Registry) {
        if let Some(connection) = self.connections.try_remove(index) {
            // Fails only if it was never registered.
            let _ = registry.deregister(&mut SourceFd(&connection.stream.as_raw_fd()));
            self.server.closed(self.thread, connection.id);
        }
    }
}

/// Writes the outbox until it is empty (`Ok(true)`) or the socket would block
/// (`Ok(false)`).
fn flush(connection: &mut Connection) -> io::Result<bool> {
    while !connection.session.outbox().is_empty() {
        let mut slices = [IoSlice::new(&[]); SLICES_MAX];
        let mut count = 0;
        connection.session.outbox().for_each_slice(|slice| {
            slices[count] = IoSlice::new(slice);
            count += 1;
            count < SLICES_MAX
        });
        match (&connection.stream).write_vectored(&slices[..count]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => connection.session.sent(written),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}
