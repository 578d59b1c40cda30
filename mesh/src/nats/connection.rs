//! One NATS connection's task: the I/O around a
//! [`starling_transport::nats::Session`].
//!
//! One task does everything for its connection, in a `select!` over: the
//! socket readable, the socket writable (while output waits), the bus
//! mailbox (while the output batch has room), the ping timer, the
//! authentication and write deadlines, and the listener's mode. So the
//! session needs no lock, and a client that stops reading stops only its
//! own task: its output stops being pulled from its mailbox, the mailbox's
//! slow-consumer policy applies, and after the write deadline the
//! connection is closed.
//!
//! A connection is one *source* of events ([`Source`]): a message that meets
//! a subscriber's full `Block` queue is owed to it, and the task reads
//! nothing more from its client until it is handed over (or the subscriber
//! is demoted after its `max_stall`), so TCP flow control holds the client
//! back, and only it. The task waits without blocking its thread: a thread
//! of the listener's runtime serves many connections, the full subscriber's
//! among them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rkyv::util::AlignedVec;
use starling_core::bus::{Backlog, PublishError};
use starling_core::event::{self, EventParts};
use starling_core::{Bus, Message, Publisher};
use starling_transport::nats::proto;
use starling_transport::nats::{Close, Input, Session};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};

use super::socket::Socket;
use super::{ListenerState, Mode};

/// Bytes asked of the socket per read, at least.
const READ_CHUNK: usize = 32 << 10;
/// A read shorter than this is a quiet connection's: once its input is
/// used up, its read buffer is given back, so that an idle connection costs
/// a few hundred bytes rather than a [`READ_CHUNK`]. A busy connection's
/// reads are longer and keep theirs.
const SMALL_READ: usize = 4 << 10;
/// Deliveries are pulled from the mailbox while the output holds less than
/// this: one write's worth, so a busy subscriber gets large writes.
const OUT_BATCH: usize = 64 << 10;
/// Input is not handled while the output holds more than this: a client
/// that sends PINGs (or verbose PUBs) without reading the answers is slowed
/// down, not buffered for without end.
const OUT_HIGH: usize = 1 << 20;
/// On close, how long what is left to write may take.
const FLUSH_TIME: Duration = Duration::from_secs(1);
/// On close, how long the input is drained after our last words, so that
/// unread input does not make the kernel reset the connection before the
/// client has read them.
const LINGER_TIME: Duration = Duration::from_millis(500);

/// Serves one client until it leaves, misbehaves, or the listener stops.
pub(super) async fn serve(
    stream: TcpStream,
    addr: SocketAddr,
    state: Arc<ListenerState>,
    mode: watch::Receiver<Mode>,
) {
    // Small frames (PONG, replies) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let cid = state.next_cid.fetch_add(1, Ordering::Relaxed);
    let mut session = Session::new(state.session.clone(), &state.bus, cid, addr.ip());
    let mut greeting = Vec::new();
    session.greeting(&mut greeting);
    let stream = match &state.terminator {
        None => Socket::Tcp(stream),
        Some(terminator) => {
            // As nats-server: INFO goes out in plain text, and says TLS is
            // required; the client starts it then.
            match start_tls(stream, &greeting, terminator).await {
                Ok(plain) => {
                    greeting.clear();
                    Socket::Tls(plain)
                }
                Err(error) => {
                    tracing::debug!(cid, %addr, %error, "NATS connection closed before TLS");
                    return;
                }
            }
        }
    };
    let mut connection = Connection {
        stream,
        input: Vec::new(),
        start: 0,
        needed: 0,
        last_read_len: 0,
        out: greeting,
        written: 0,
        blocked_since: None,
        source: Source::default(),
    };
    if !state.register(cid, addr, session.stats().clone()) {
        connection.out.extend_from_slice(proto::ERR_MAX_CONNECTIONS);
        connection.close().await;
        return;
    }
    let reason = connection.run(&mut session, &state, mode).await;
    tracing::debug!(cid, %addr, reason, "NATS connection closed");
    connection.close().await;
    state.unregister(cid);
}

/// Writes `greeting` on `tcp`, then hands it to `terminator`: what follows
/// is TLS; returns the plaintext end.
async fn start_tls(
    mut tcp: TcpStream,
    greeting: &[u8],
    terminator: &starling_transport::tls::Terminator,
) -> std::io::Result<tokio::net::UnixStream> {
    timeout(FLUSH_TIME, tcp.write_all(greeting)).await??;
    let plain = terminator.terminate(tcp.into_std()?)?;
    tokio::net::UnixStream::from_std(plain)
}

struct Connection {
    stream: Socket,
    /// Bytes read; those before `start` are used.
    input: Vec<u8>,
    start: usize,
    /// The session needs this many unused bytes before it can go on.
    needed: usize,
    /// Bytes the last read got.
    last_read_len: usize,
    /// Bytes to write; those before `written` are written.
    out: Vec<u8>,
    written: usize,
    /// Since when output has been waiting on a full socket.
    blocked_since: Option<Instant>,
    /// What the client publishes goes through here.
    source: Source,
}

impl Connection {
    fn pending_out(&self) -> usize {
        self.out.len() - self.written
    }

    /// The connection's loop; returns why it ended (what the client should
    /// be told is in `out`).
    async fn run(
        &mut self,
        session: &mut Session,
        state: &ListenerState,
        mut mode: watch::Receiver<Mode>,
    ) -> &'static str {
        let settings = &state.settings;
        let auth_deadline = Instant::now() + settings.auth_timeout;
        let mut next_ping = Instant::now() + settings.ping_interval;
        let mut last_read = Instant::now();
        loop {
            if let Err(Close { reason }) = self.handle_input(session, &state.bus).await {
                return reason;
            }
            let room_to_read = self.pending_out() < OUT_HIGH;
            let room_to_deliver = self.pending_out() < OUT_BATCH;
            let write_deadline = self
                .blocked_since
                .map(|since| since + settings.write_deadline);
            tokio::select! {
                changed = mode.changed() => {
                    let now = if changed.is_ok() { *mode.borrow_and_update() } else { Mode::Stopping };
                    // Marked changed by a reload of the node's users, too.
                    if let Err(Close { reason }) = session.recheck_auth(&mut self.out) {
                        return reason;
                    }
                    match now {
                        Mode::Running => {}
                        Mode::LameDuck => session.enter_lame_duck(&mut self.out),
                        Mode::Stopping => return "the node is stopping",
                    }
                }
                ready = self.stream.writable(), if self.pending_out() > 0 => {
                    if ready.is_err() || self.write().is_err() {
                        return "write error";
                    }
                }
                ready = self.stream.readable(), if room_to_read => {
                    if ready.is_err() {
                        return "read error";
                    }
                    self.input.reserve(READ_CHUNK.max(self.needed));
                    match self.stream.try_read_buf(&mut self.input) {
                        Ok(0) => return "closed by the client",
                        Ok(read) => {
                            last_read = Instant::now();
                            self.last_read_len = read;
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return "read error",
                    }
                }
                event = std::future::poll_fn(|cx| session.poll_event(cx)), if room_to_deliver => {
                    let Ok(event) = event else {
                        return "the bus closed";
                    };
                    session.deliver(&event, &mut self.out);
                    drop(event);
                    while self.pending_out() < OUT_BATCH {
                        let Some(event) = session.mailbox().try_recv() else {
                            break;
                        };
                        session.deliver(&event, &mut self.out);
                    }
                }
                () = sleep_until(next_ping) => {
                    // As nats-server: a client heard from within the
                    // interval is alive; only a quiet one is pinged.
                    if last_read.elapsed() < settings.ping_interval {
                        session.handle_activity();
                    } else if let Err(Close { reason }) = session.handle_ping_timer(&mut self.out) {
                        return reason;
                    }
                    next_ping = Instant::now() + settings.ping_interval;
                }
                () = sleep_until(auth_deadline), if session.awaiting_auth() => {
                    self.out.extend_from_slice(proto::ERR_AUTH_TIMEOUT);
                    return "authentication timeout";
                }
                () = sleep_until(write_deadline.unwrap_or(auth_deadline)), if write_deadline.is_some() => {
                    state.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    self.out.extend_from_slice(proto::ERR_SLOW_CONSUMER);
                    return "slow consumer: written bytes left unread past the write deadline";
                }
            }
        }
    }

    /// Handles every whole operation read so far, while the output has room;
    /// the events published meanwhile reach their consumers with one wake
    /// when it returns, however it returns (a message published before an
    /// error is delivered all the same).
    async fn handle_input(&mut self, session: &mut Session, bus: &Bus) -> Result<(), Close> {
        let handled = self.handle_operations(session, bus).await;
        self.source.wake_noted();
        handled
    }

    async fn handle_operations(&mut self, session: &mut Session, bus: &Bus) -> Result<(), Close> {
        while self.pending_out() < OUT_HIGH {
            let input = &self.input[self.start..];
            if input.is_empty() || input.len() < self.needed {
                break;
            }
            match session.handle_input(input, &mut self.out)? {
                Input::Handled { used } => self.start += used,
                Input::Publish { used, publish } => {
                    let outcome = self.source.publish_one(bus, &publish.message());
                    session.published(&publish, outcome, &mut self.out)?;
                    self.start += used;
                    if !self.source.backlog.is_empty() {
                        // A full consumer makes room only once it sees what
                        // came before.
                        self.source.wake_noted();
                        self.wait_for_room(session).await?;
                    }
                }
                Input::Verifying { used, verification } => {
                    self.source.wake_noted();
                    // Nothing else comes from this client meanwhile: the
                    // handshake waits for its answer (a verifier thread's;
                    // this task's thread serves others).
                    let result = std::future::poll_fn(|cx| verification.poll(cx)).await;
                    session.verified(result, &mut self.out)?;
                    self.start += used;
                }
                Input::Incomplete { needed } => {
                    self.needed = needed;
                    break;
                }
            }
            self.needed = 0;
        }
        // Keep only the unused bytes (at most one partial operation), at
        // the front.
        if self.start == self.input.len() {
            if self.last_read_len < SMALL_READ {
                self.input = Vec::new();
            } else {
                self.input.clear();
            }
        } else {
            self.input.drain(..self.start);
        }
        self.start = 0;
        Ok(())
    }

    /// Waits until what the last message owes full queues is handed over
    /// (or their subscribers demoted). Meanwhile the client is not read, but
    /// it is still written to: its own subscriptions may be the full ones.
    async fn wait_for_room(&mut self, session: &mut Session) -> Result<(), Close> {
        while !self.source.backlog.is_empty() {
            // `poll_flush` demotes what is still full once the episode's
            // deadline has passed, so it is polled again then.
            let deadline = self.source.backlog.deadline().map(Instant::from_std);
            let room_to_deliver = self.pending_out() < OUT_HIGH;
            tokio::select! {
                () = std::future::poll_fn(|cx| self.source.backlog.poll_flush(cx)) => {}
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                event = std::future::poll_fn(|cx| session.poll_event(cx)), if room_to_deliver => {
                    let Ok(event) = event else {
                        return Err(Close { reason: "the bus closed" });
                    };
                    session.deliver(&event, &mut self.out);
                }
                ready = self.stream.writable(), if self.pending_out() > 0 => {
                    if ready.is_err() || self.write().is_err() {
                        return Err(Close { reason: "write error" });
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes what the socket takes now.
    fn write(&mut self) -> std::io::Result<()> {
        match self.stream.try_write(&self.out[self.written..]) {
            Ok(n) => self.written += n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
        if self.written == self.out.len() {
            // A burst's buffer is not kept for good.
            if self.out.capacity() > 2 * OUT_BATCH {
                self.out = Vec::new();
            } else {
                self.out.clear();
            }
            self.written = 0;
            self.blocked_since = None;
        } else {
            self.blocked_since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// Writes what is left (within [`FLUSH_TIME`]), ends the sending side,
    /// and drains the input for a moment so that the client reads our last
    /// words rather than a reset.
    async fn close(&mut self) {
        let pending = &self.out[self.written..];
        let _ = timeout(FLUSH_TIME, self.stream.write_all(pending)).await;
        let _ = self.stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = timeout(LINGER_TIME, async {
            while let Ok(1..) = self.stream.read(&mut sink).await {}
        })
        .await;
    }
}

/// One connection as a source of events: its own publisher, and what its
/// last message still owes to full `Block` queues.
///
/// A publisher of its own rather than the thread's: the thread's would wait
/// for room by blocking the thread, which here serves other connections,
/// possibly the very subscriber being waited for. It is made at the
/// connection's first message, so connections that only subscribe pin no
/// event memory; one that publishes pins one segment of it.
#[derive(Debug, Default)]
struct Source {
    publisher: Option<Publisher>,
    backlog: Backlog,
    /// The message archived, to be validated and copied in by the publisher.
    scratch: AlignedVec<16>,
    /// Event ids: random high half per connection, a count in the low half.
    id_high: u64,
    sequence: u64,
}

/// Scratch space kept between messages; a larger message's is given back.
const SCRATCH_KEPT: usize = 64 << 10;

impl Source {
    /// Publishes one message from the client into the bus, returning the
    /// number of deliveries. Never waits: what full `Block` queues cannot
    /// take yet is owed in `backlog`, which must be flushed before the next
    /// message ([`Connection::wait_for_room`]). Nor wakes: its consumers see
    /// it at the next [`Source::wake_noted`], once per read's operations
    /// rather than once per message.
    ///
    /// This is the one place where a NATS connection hands an event to the
    /// bus. The message is archived here, as a client library would, and
    /// published as an archive: that is the bus's non-waiting publish, at
    /// the cost of one validation pass over bytes just written.
    fn publish_one(&mut self, bus: &Bus, message: &Message<'_>) -> Result<usize, PublishError> {
        if self.id_high == 0 {
            self.id_high = starling_core::random_u64() | 1;
        }
        self.sequence += 1;
        let parts = EventParts {
            id: (u128::from(self.id_high) << 64) | u128::from(self.sequence),
            time_unix_nanos: (bus.config().clock)(),
            subject: message.subject,
            reply_to: message.reply_to,
            headers: message.headers,
            payload: message.payload,
        };
        if self.scratch.capacity() > SCRATCH_KEPT {
            self.scratch = AlignedVec::new();
        }
        self.scratch.clear();
        self.scratch.resize(parts.archive_bytes_bound(), 0);
        let len = event::encode_into(&parts, &mut self.scratch)?;
        let checked = event::check(&self.scratch[..len], &bus.config().limits)?;
        self.publisher
            .get_or_insert_with(|| bus.publisher())
            .publish_checked_noted(checked, &mut self.backlog)
    }

    /// Hands what [`Source::publish_one`] published since the last call to
    /// its consumers: one fence, and a wake-up for each that sleeps.
    fn wake_noted(&mut self) {
        if let Some(publisher) = &mut self.publisher {
            publisher.wake_noted(&mut self.backlog);
        }
    }
}
