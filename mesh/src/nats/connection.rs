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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use starling_core::bus::PublishError;
use starling_core::{Bus, Message};
use starling_transport::nats::proto;
use starling_transport::nats::{Close, Input, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};

use super::{Mode, Shared};

/// Bytes asked of the socket per read, at least.
const READ_CHUNK: usize = 32 << 10;
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
    shared: Arc<Shared>,
    mode: watch::Receiver<Mode>,
) {
    // Small frames (PONG, replies) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let cid = shared.next_cid.fetch_add(1, Ordering::Relaxed);
    let mut session = Session::new(
        shared.session.clone(),
        &shared.bus,
        cid,
        addr.ip().to_string(),
    );
    let mut connection = Connection {
        stream,
        input: Vec::new(),
        start: 0,
        needed: 0,
        out: Vec::new(),
        written: 0,
        blocked_since: None,
    };
    if !shared.register(cid, addr, session.stats().clone()) {
        connection.out.extend_from_slice(proto::ERR_MAX_CONNECTIONS);
        connection.close().await;
        return;
    }
    let reason = connection.run(&mut session, &shared, mode).await;
    tracing::debug!(cid, %addr, reason, "NATS connection closed");
    connection.close().await;
    shared.unregister(cid);
}

struct Connection {
    stream: TcpStream,
    /// Bytes read; those before `start` are used.
    input: Vec<u8>,
    start: usize,
    /// The session needs this many unused bytes before it can go on.
    needed: usize,
    /// Bytes to write; those before `written` are written.
    out: Vec<u8>,
    written: usize,
    /// Since when output has been waiting on a full socket.
    blocked_since: Option<Instant>,
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
        shared: &Shared,
        mut mode: watch::Receiver<Mode>,
    ) -> &'static str {
        let settings = &shared.settings;
        session.greeting(&mut self.out);
        let auth_deadline = Instant::now() + settings.auth_timeout;
        let mut next_ping = Instant::now() + settings.ping_interval;
        let mut last_read = Instant::now();
        loop {
            if let Err(Close { reason }) = self.handle_input(session, &shared.bus).await {
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
                        Ok(_) => last_read = Instant::now(),
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
                    shared.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    self.out.extend_from_slice(proto::ERR_SLOW_CONSUMER);
                    return "slow consumer: written bytes left unread past the write deadline";
                }
            }
        }
    }

    /// Handles every whole operation read so far, while the output has room.
    async fn handle_input(&mut self, session: &mut Session, bus: &Bus) -> Result<(), Close> {
        while self.pending_out() < OUT_HIGH {
            let input = &self.input[self.start..];
            if input.is_empty() || input.len() < self.needed {
                break;
            }
            match session.handle_input(input, &mut self.out)? {
                Input::Handled { used } => self.start += used,
                Input::Publish { used, publish } => {
                    let outcome = publish_one(bus, &publish.message()).await;
                    session.published(&publish, outcome, &mut self.out)?;
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
            self.input.clear();
        } else {
            self.input.drain(..self.start);
        }
        self.start = 0;
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
            self.out.clear();
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

/// Publishes one message from a NATS client into the bus, returning the
/// number of deliveries.
///
/// This is the one place where a NATS connection hands an event to the
/// bus, and the place for the bus's back-pressure: when a subscriber's
/// queue is full under the blocking slow-consumer policy, this is where the
/// connection's task is to wait, asynchronously, for room (bounded by the
/// policy's `max_stall`). While it waits, the task reads nothing more from
/// its socket, so TCP flow control carries the pressure back to the
/// publishing client, and no other connection or thread waits. Until the
/// bus offers an asynchronous wait, the publish is the bus's own and never
/// waits.
async fn publish_one(bus: &Bus, message: &Message<'_>) -> Result<usize, PublishError> {
    // The thread's publisher (one per runtime worker) rather than one per
    // connection: a publisher owns a segment of event memory, and ten
    // thousand idle connections must not pin ten thousand segments. The
    // publish completes before it returns, so a connection's messages stay
    // in order even when its task moves between workers.
    bus.publish_message(message)
}
