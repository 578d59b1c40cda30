//! One QUIC connection to a peer: the handshake that makes it a link, its
//! control stream, and the data streams it receives.
//!
//! A link is up only once both `HELLO`s are exchanged and agree (cluster,
//! protocol, event format, distinct node ids, and, with mutual TLS, a
//! certificate valid for the name the peer claims), and the driver lets the
//! peer have its name (no live member holds it: the driver's `names`). A
//! refusal is logged on both sides with its reason. Bad bytes from a peer close that link alone,
//! with the reason as the QUIC close reason.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use rkyv::util::AlignedVec;
use starling_core::bus::Backlog;
use starling_core::event::{self, EventLimits};
use starling_core::{Bus, PublishError, Publisher};
use starling_transport::frame::{FRAME_ALIGN, Frame, FrameError, HEADER_BYTES, Header};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use super::counters::LinkCounters;
use super::egress::ReplyRoutes;
use super::interest::NodeId;
use super::tls::{LINK_SERVER_NAME, peer_holds_name};
use super::wire::{Control, FRAME_GROUPS_MAX, Hello, WireError, close, decode_forward};

/// How long a handshake may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from a data stream at a time (more for a larger frame).
const READ_CHUNK: usize = 64 << 10;

/// Largest control message before a link is up: a HELLO or a REFUSE is a
/// few names and addresses, and a connection not yet known to be a peer
/// gets no more (the configured `control_bytes_max` is for interest
/// snapshots, between peers that shook hands).
const HANDSHAKE_BYTES_MAX: usize = 16 << 10;

/// What a link's readers hand to the driver (which wraps it in its own
/// event type: the readers take any channel whose items convert from it).
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// A datagram (a membership packet) on a connection from `peer`.
    Datagram { peer: NodeId, packet: Bytes },
    /// A message on the control stream of `peer`'s connection `link`.
    Control {
        peer: NodeId,
        link: usize,
        message: Control,
    },
    /// `peer`'s connection `link` is gone, and how.
    Closed {
        peer: NodeId,
        link: usize,
        reason: String,
        end: LinkEnd,
    },
}

/// How a link ended, as far as membership is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkEnd {
    /// The peer said it is stopping: it left the mesh.
    Departed,
    /// Nothing more came from the peer, not even a keep-alive, for the idle
    /// timeout (or its address answered with a stateless reset: whoever
    /// runs there now lost the connection's state). What a peer whose
    /// process died or whose host went away looks like.
    Silent,
    /// Closed on purpose by either side, or on bad data.
    Closed,
}

/// A connection whose handshake succeeded.
#[derive(Debug)]
pub(crate) struct Established {
    pub connection: Connection,
    pub hello: Hello,
    /// The address dialed, if this node dialed.
    pub dialed: Option<String>,
    pub control_send: SendStream,
    pub control_recv: RecvStream,
}

/// What a handshake needs to know about this node.
#[derive(Debug, Clone)]
pub(crate) struct Local {
    pub hello: Hello,
    pub authenticated: bool,
    pub control_bytes_max: usize,
}

/// Why a dial failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DialError {
    /// The address's host name does not resolve: in containers and on
    /// Kubernetes, a peer's name exists only while the peer runs.
    Unresolved(String),
    /// Nothing answered within the handshake timeout: no process at the
    /// address, or no route to it.
    NoAnswer(String),
    /// The peer refused the link because a live member holds this node's
    /// name (the reason says which).
    NameTaken(String),
    /// The peer closed the connection because it is stopping.
    Stopping(String),
    /// The peer could not be reached, or the handshake failed.
    Link(String),
}

/// What went wrong in a dial's handshake, past the connection.
impl From<String> for DialError {
    fn from(why: String) -> Self {
        DialError::Link(why)
    }
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Unresolved(why) => write!(f, "cannot resolve: {why}"),
            DialError::NoAnswer(why)
            | DialError::NameTaken(why)
            | DialError::Stopping(why)
            | DialError::Link(why) => f.write_str(why),
        }
    }
}

/// Dials `address` and shakes hands. A name is resolved anew at every dial:
/// a peer that restarts may come back at another address under its name.
pub(crate) async fn dial(
    endpoint: quinn::Endpoint,
    address: String,
    local: Arc<Local>,
) -> Result<Established, DialError> {
    let ipv4 = endpoint.local_addr().is_ok_and(|local| local.is_ipv4());
    let target = tokio::time::timeout(HANDSHAKE_TIMEOUT, resolve(&address, ipv4))
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
        .map_err(DialError::Unresolved)?;
    let attempt = async {
        let connecting = endpoint
            .connect(target, LINK_SERVER_NAME)
            .map_err(|error| format!("cannot dial: {error}"))?;
        let connection = connecting.await.map_err(|error| {
            let why = format!("cannot connect: {error}");
            match error {
                quinn::ConnectionError::TimedOut => DialError::NoAnswer(why),
                closed if close::is_shutdown(&closed) => {
                    DialError::Stopping(closed_reason(&closed))
                }
                _ => DialError::Link(why),
            }
        })?;
        let handshake = async {
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|error| format!("cannot open the control stream: {error}"))?;
            write_control(&mut send, &Control::Hello(local.hello.clone())).await?;
            match read_control(&mut recv, handshake_bytes_max(&local)).await? {
                Control::Hello(theirs) => {
                    if let Some(why) = check_peer(&local, &connection, &theirs) {
                        connection.close(close::REFUSED, why.as_bytes());
                        return Err(DialError::Link(format!(
                            "refused {} ({}): {why}",
                            theirs.name, theirs.advertise
                        )));
                    }
                    Ok(Established {
                        connection: connection.clone(),
                        hello: theirs,
                        dialed: Some(address.clone()),
                        control_send: send,
                        control_recv: recv,
                    })
                }
                Control::Refuse(reason) => Err(DialError::Link(format!(
                    "the peer refused the link: {reason}"
                ))),
                Control::NameTaken(reason) => Err(DialError::NameTaken(reason)),
                other => Err(DialError::Link(format!(
                    "the peer answered HELLO with {}",
                    control_name(&other)
                ))),
            }
        };
        handshake.await.map_err(|error| match error {
            DialError::Link(_) => match stopping(&connection) {
                Some(why) => DialError::Stopping(why),
                None => error,
            },
            error => error,
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(DialError::NoAnswer("handshake timed out".into())))
}

/// Why an incoming connection did not become a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AcceptError {
    /// It claims the name of a live member: its operator must act.
    NameTaken(String),
    /// The peer closed the connection because it is stopping.
    Stopping(String),
    /// The connection or the handshake failed, or the peer was refused for
    /// another reason.
    Failed(String),
}

impl From<String> for AcceptError {
    fn from(why: String) -> Self {
        AcceptError::Failed(why)
    }
}

impl std::fmt::Display for AcceptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcceptError::NameTaken(why) | AcceptError::Stopping(why) | AcceptError::Failed(why) => {
                f.write_str(why)
            }
        }
    }
}

/// Accepts an incoming connection and shakes hands. `vet_name` says why
/// the peer may not take the name it claims, if it may not (see the
/// driver's **Names**), given its HELLO and the address it connects from.
pub(crate) async fn accept<Vet>(
    incoming: quinn::Incoming,
    local: Arc<Local>,
    vet_name: impl FnOnce(Hello, SocketAddr) -> Vet,
) -> Result<Established, (SocketAddr, AcceptError)>
where
    Vet: Future<Output = Option<String>>,
{
    let remote = incoming.remote_address();
    let attempt = async {
        let connection = incoming.await.map_err(|error| {
            if close::is_shutdown(&error) {
                AcceptError::Stopping(closed_reason(&error))
            } else {
                AcceptError::Failed(format!("connection failed: {error}"))
            }
        })?;
        let handshake = async {
            let (mut send, mut recv) = connection
                .accept_bi()
                .await
                .map_err(|error| format!("no control stream: {error}"))?;
            let theirs = match read_control(&mut recv, handshake_bytes_max(&local)).await? {
                Control::Hello(theirs) => theirs,
                other => {
                    let why = format!(
                        "the first message must be HELLO, not {}",
                        control_name(&other)
                    );
                    connection.close(close::PROTOCOL, why.as_bytes());
                    return Err(why.into());
                }
            };
            let refused =
                |why: &str| format!("refused {} ({}): {why}", theirs.name, theirs.advertise);
            if let Some(why) = check_peer(&local, &connection, &theirs) {
                refuse(&connection, &mut send, &why, Control::Refuse).await;
                return Err(AcceptError::Failed(refused(&why)));
            }
            if let Some(why) = vet_name(theirs.clone(), remote).await {
                refuse(&connection, &mut send, &why, Control::NameTaken).await;
                return Err(AcceptError::NameTaken(refused(&why)));
            }
            write_control(&mut send, &Control::Hello(local.hello.clone())).await?;
            Ok(Established {
                connection: connection.clone(),
                hello: theirs,
                dialed: None,
                control_send: send,
                control_recv: recv,
            })
        };
        handshake.await.map_err(|error| match error {
            AcceptError::Failed(_) => match stopping(&connection) {
                Some(why) => AcceptError::Stopping(why),
                None => error,
            },
            error => error,
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(String::from("handshake timed out").into()))
        .map_err(|error| (remote, error))
}

/// Tells the dialer why it is refused, in a `message`, then closes once it
/// has read it (or soon).
async fn refuse(
    connection: &Connection,
    send: &mut SendStream,
    why: &str,
    message: fn(String) -> Control,
) {
    let _ = write_control(send, &message(why.to_owned())).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), connection.closed()).await;
    connection.close(close::REFUSED, why.as_bytes());
}

/// Why `connection` closed, if it closed because the peer is stopping: a
/// handshake that fails for that is no fault of either node's.
fn stopping(connection: &Connection) -> Option<String> {
    connection
        .close_reason()
        .filter(close::is_shutdown)
        .map(|closed| closed_reason(&closed))
}

fn check_peer(local: &Local, connection: &Connection, theirs: &Hello) -> Option<String> {
    if let Some(why) = local.hello.incompatibility(theirs) {
        return Some(why);
    }
    if !peer_holds_name(connection, local.authenticated, &theirs.name) {
        return Some(format!(
            "its certificate is not valid for the node name '{}' it claims",
            theirs.name
        ));
    }
    None
}

/// The address a name stands for now. An endpoint bound to IPv4 cannot reach
/// an IPv6 address: of a name with both (`localhost`, a container's name on
/// a network with IPv6), it takes an IPv4 one.
async fn resolve(address: &str, ipv4: bool) -> Result<SocketAddr, String> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .map_err(|error| error.to_string())?
        .collect();
    addresses
        .iter()
        .find(|candidate| !ipv4 || candidate.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| "resolves to no address".into())
}

fn control_name(message: &Control) -> &'static str {
    match message {
        Control::Hello(_) => "HELLO",
        Control::Refuse(_) => "REFUSE",
        Control::NameTaken(_) => "NAME_TAKEN",
        Control::Interest(_) => "INTEREST",
    }
}

async fn write_control(send: &mut SendStream, message: &Control) -> Result<(), String> {
    let mut bytes = Vec::new();
    message.encode(&mut bytes);
    send.write_all(&bytes)
        .await
        .map_err(|error| format!("control stream: {error}"))
}

fn handshake_bytes_max(local: &Local) -> usize {
    HANDSHAKE_BYTES_MAX.min(local.control_bytes_max)
}

/// Reads one control message, checking its announced length first.
///
/// The buffer grows with the bytes that arrive, at most a chunk ahead of
/// them: an announced length is a claim, not memory to set aside, so a peer
/// that announces the largest message and sends nothing pins a chunk.
async fn read_control(recv: &mut RecvStream, max: usize) -> Result<Control, String> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|error| format!("control stream: {error}"))?;
    let length = Control::announced_length(prefix, max).map_err(|error| error.to_string())?;
    let mut message = Vec::with_capacity(length.min(READ_CHUNK));
    while message.len() < length {
        let start = message.len();
        message.resize(start + (length - start).min(READ_CHUNK), 0);
        recv.read_exact(&mut message[start..])
            .await
            .map_err(|error| format!("control stream: {error}"))?;
    }
    Control::decode(&message).map_err(|error| error.to_string())
}

/// Writes what the driver queues for this link to its control stream,
/// several messages per write when they queue up.
pub(crate) async fn control_writer(mut send: SendStream, mut queue: UnboundedReceiver<Control>) {
    let mut bytes = Vec::new();
    while let Some(message) = queue.recv().await {
        bytes.clear();
        message.encode(&mut bytes);
        while let Ok(more) = queue.try_recv() {
            more.encode(&mut bytes);
        }
        if send.write_all(&bytes).await.is_err() {
            // The connection is gone; its reader reports why.
            return;
        }
    }
    let _ = send.finish();
}

/// Closes a link that lost to a duplicate (two nodes dialed each other)
/// once closing it loses nothing, for either side. Each side finishes its
/// control stream on the link once its own forwards on it are acknowledged
/// (`ours_acknowledged` fires or is dropped; `None`: it sent none); the
/// link closes when the peer's control stream has ended too
/// (`theirs_finished`, fired by the driver when the link's reader stops),
/// or when `patience` runs out (what is unacknowledged then is counted as
/// lost in flight). The peer may still be sending on the link: it may have
/// seen the two connections arrive in the other order, and not yet know
/// that this one lost.
pub(crate) async fn retire(
    connection: Connection,
    control: UnboundedSender<Control>,
    ours_acknowledged: Option<oneshot::Receiver<()>>,
    theirs_finished: oneshot::Receiver<()>,
    patience: Duration,
    reason: &'static str,
) {
    let deadline = tokio::time::Instant::now() + patience;
    let ours_done = match ours_acknowledged {
        Some(acknowledged) => tokio::time::timeout_at(deadline, acknowledged)
            .await
            .is_ok(),
        None => true,
    };
    // The control writer finishes the stream once its queue is closed.
    drop(control);
    let theirs_done = tokio::time::timeout_at(deadline, theirs_finished)
        .await
        .is_ok();
    let peer = connection.remote_address();
    if ours_done && theirs_done {
        tracing::debug!(%peer, "a duplicate link retired: {reason}");
    } else {
        tracing::warn!(
            %peer,
            ours_done,
            theirs_done,
            "a duplicate link is closed before both sides were done with it \
             ({patience:?}): what it had in flight is counted as lost"
        );
    }
    close_with(&connection, close::DUPLICATE, reason);
}

/// Hands each control message from the peer to the driver; reports the
/// link closed when the stream ends or breaks.
pub(crate) async fn control_reader<E: From<LinkEvent>>(
    mut recv: RecvStream,
    connection: Connection,
    peer: NodeId,
    control_bytes_max: usize,
    driver: UnboundedSender<E>,
) {
    let (reason, end) = loop {
        match read_control(&mut recv, control_bytes_max).await {
            Ok(Control::Hello(_)) => {
                let why = "HELLO was already received";
                connection.close(close::PROTOCOL, why.as_bytes());
                break (why.to_string(), LinkEnd::Closed);
            }
            Ok(message) => {
                let link = connection.stable_id();
                if driver
                    .send(
                        LinkEvent::Control {
                            peer,
                            link,
                            message,
                        }
                        .into(),
                    )
                    .is_err()
                {
                    return;
                }
            }
            Err(error) => {
                if let Some(closed) = connection.close_reason() {
                    let end = match &closed {
                        closed if close::is_shutdown(closed) => LinkEnd::Departed,
                        quinn::ConnectionError::TimedOut | quinn::ConnectionError::Reset => {
                            LinkEnd::Silent
                        }
                        _ => LinkEnd::Closed,
                    };
                    break (closed_reason(&closed), end);
                }
                if !error.contains("control stream") {
                    // Bad bytes, not a broken connection.
                    connection.close(close::PROTOCOL, error.as_bytes());
                }
                break (error, LinkEnd::Closed);
            }
        }
    };
    let link = connection.stable_id();
    let _ = driver.send(
        LinkEvent::Closed {
            peer,
            link,
            reason,
            end,
        }
        .into(),
    );
}

/// Hands each datagram from the peer (membership packets) to the driver,
/// until the connection closes. Their content is checked there: a bad one
/// is dropped, and the link stays.
pub(crate) async fn datagrams<E: From<LinkEvent>>(
    connection: Connection,
    peer: NodeId,
    driver: UnboundedSender<E>,
) {
    while let Ok(packet) = connection.read_datagram().await {
        if driver
            .send(LinkEvent::Datagram { peer, packet }.into())
            .is_err()
        {
            return;
        }
    }
}

/// Accepts the peer's data streams and reads each.
pub(crate) async fn ingress(
    connection: Connection,
    bus: Bus,
    counters: Arc<LinkCounters>,
    replies: Rc<RefCell<ReplyRoutes>>,
) {
    while let Ok((acks, stream)) = connection.accept_bi().await {
        tokio::task::spawn_local(read_data_stream(
            acks,
            stream,
            connection.clone(),
            bus.clone(),
            counters.clone(),
            replies.clone(),
        ));
    }
}

/// Why a data stream was given up.
#[derive(Debug)]
enum Refusal {
    Frame(FrameError),
    Wire(WireError),
    Event(event::ValidationError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Frame(error) => write!(f, "{error}"),
            Refusal::Wire(error) => write!(f, "{error}"),
            Refusal::Event(error) => write!(f, "invalid event: {error}"),
        }
    }
}

/// Hands each event of one data stream to the bus, in order, its consumers
/// woken once per run of events ([`WAKE_EVERY`] at most, and before the
/// stream is read further or anything is waited for). When some of
/// its deliveries find a full `Block` queue, the stream is not read until
/// they are handed over (or the queue is demoted, after its `max_stall`):
/// QUIC flow control then holds the peer's sender back, and the link's
/// other streams go on. What was handled is acknowledged on the stream's
/// reverse direction: every [`ACK_EVERY`] forwards, and whenever the stream
/// has nothing more to read.
async fn read_data_stream(
    mut acks: SendStream,
    mut stream: RecvStream,
    connection: Connection,
    bus: Bus,
    counters: Arc<LinkCounters>,
    replies: Rc<RefCell<ReplyRoutes>>,
) {
    let limits: EventLimits = bus.config().limits;
    let mut publisher = bus.publisher();
    let mut inbound = Inbound::new(limits.archive_bytes_max() + 64 * 1024);
    let mut backlog = Backlog::new();
    let (mut handled, mut acked) = (0u64, 0u64);
    let refusal = loop {
        match inbound.next() {
            Ok(Some((frame, bytes))) => {
                let forwarded = forward(
                    frame,
                    &limits,
                    &mut publisher,
                    &mut backlog,
                    &counters,
                    &replies,
                );
                if let Err(refusal) = forwarded {
                    break refusal;
                }
                inbound.consume(bytes);
                handled += 1;
                if !backlog.is_empty() {
                    publisher.wake_noted(&mut backlog);
                    flush(&mut backlog).await;
                }
                if handled % WAKE_EVERY == 0 {
                    publisher.wake_noted(&mut backlog);
                }
                if handled - acked >= ACK_EVERY {
                    acked = acknowledge(&mut acks, handled).await;
                }
                continue;
            }
            Ok(None) => {}
            Err(error) => break Refusal::Frame(error),
        }
        // Every whole frame read so far is handed over before reading more.
        publisher.wake_noted(&mut backlog);
        let room = match inbound.room() {
            Ok(room) => room,
            Err(error) => break Refusal::Frame(error),
        };
        let read = match poll_fn(|cx| Poll::Ready(stream.poll_read(cx, room))).await {
            Poll::Ready(read) => read,
            Poll::Pending => {
                // Nothing more for now: say how far this stream got.
                if handled > acked {
                    acked = acknowledge(&mut acks, handled).await;
                }
                poll_fn(|cx| stream.poll_read(cx, room)).await
            }
        };
        match read {
            Ok(0) => {
                // The peer finished the stream (it is retiring the link): it
                // waits to hear that everything arrived.
                if handled > acked {
                    acknowledge(&mut acks, handled).await;
                }
                let _ = acks.finish();
                return;
            }
            Err(_) => return,
            Ok(read) => {
                counters.bytes_in.fetch_add(read as u64, Ordering::Relaxed);
                inbound.filled(read);
            }
        }
    };
    publisher.wake_noted(&mut backlog);
    let reason = refusal.to_string();
    tracing::warn!(peer = %connection.remote_address(), %reason, "closing a link that sent bad data");
    connection.close(close::PROTOCOL, reason.as_bytes());
}

/// Forwards handed over between two wake-ups of their consumers, at most,
/// while a stream keeps arriving: each wake-up is one fence, and the
/// consumers see a run of forwards at once, a bounded delay later.
const WAKE_EVERY: u64 = 64;

/// Forwards handled between two acknowledgements, at most, while a stream
/// keeps arriving.
const ACK_EVERY: u64 = 1024;

/// Tells the peer that `handled` forwards of a stream were handed to the
/// bus; returns it. A failure means the link is gone, and its reader says
/// so.
async fn acknowledge(acks: &mut SendStream, handled: u64) -> u64 {
    let _ = acks.write_all(&handled.to_le_bytes()).await;
    handled
}

/// Hands one forward frame to the bus; deliveries that find a full `Block`
/// queue are owed in `backlog`.
fn forward(
    frame: Frame<'_>,
    limits: &EventLimits,
    publisher: &mut Publisher,
    backlog: &mut Backlog,
    counters: &LinkCounters,
    replies: &RefCell<ReplyRoutes>,
) -> Result<(), Refusal> {
    let forward = decode_forward(frame).map_err(Refusal::Wire)?;
    let checked = event::check(forward.archive, limits).map_err(Refusal::Event)?;
    if let Some(reply_to) = checked.event().reply_to() {
        replies.borrow_mut().learn(reply_to);
    }
    let mut room = [""; FRAME_GROUPS_MAX];
    let groups = forward.groups(&mut room);
    match publisher.publish_forwarded_noted(checked, forward.plain, groups, backlog) {
        Ok(_) => counters.events_in.fetch_add(1, Ordering::Relaxed),
        // Counted by the local consumers it was for.
        Err(PublishError::OutOfMemory(_)) => counters.dropped_in.fetch_add(1, Ordering::Relaxed),
        // The bus is shutting down.
        Err(_) => 0,
    };
    Ok(())
}

/// Waits until what `backlog` owes is handed over, or, once its episode's
/// `max_stall` is over, until the queues still full are demoted (those
/// deliveries dropped and counted there).
async fn flush(backlog: &mut Backlog) {
    while let Some(deadline) = backlog.deadline() {
        let expiry = tokio::time::sleep_until(deadline.into());
        tokio::pin!(expiry);
        let flushed = poll_fn(|cx| {
            if backlog.poll_flush(cx).is_ready() {
                return Poll::Ready(true);
            }
            expiry.as_mut().poll(cx).map(|()| false)
        })
        .await;
        if flushed {
            return;
        }
        // Past the deadline: the next poll demotes what is still full.
    }
}

/// The bytes read from one data stream, handed out a whole frame at a
/// time, so that reading can stop between any two. Frames are read in
/// place: each starts 16-byte aligned, at the buffer's start or where the
/// previous one ended.
struct Inbound {
    buffer: AlignedVec<FRAME_ALIGN>,
    /// Where the next frame starts.
    start: usize,
    /// Where the bytes read end.
    end: usize,
    body_bytes_max: usize,
}

impl Inbound {
    fn new(body_bytes_max: usize) -> Self {
        let mut buffer = AlignedVec::with_capacity(READ_CHUNK);
        buffer.resize(READ_CHUNK, 0);
        Self {
            buffer,
            start: 0,
            end: 0,
            body_bytes_max,
        }
    }

    /// The next frame and the bytes it takes, once it is whole. A header is
    /// checked as soon as it is whole, before anything waits for its body.
    fn next(&self) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
        let bytes = &self.buffer[self.start..self.end];
        let Some(header) = self.header()? else {
            return Ok(None);
        };
        let frame_bytes = header.frame_bytes();
        if bytes.len() < frame_bytes {
            return Ok(None);
        }
        let body = &bytes[HEADER_BYTES..HEADER_BYTES + header.length as usize];
        Ok(Some((Frame { header, body }, frame_bytes)))
    }

    fn header(&self) -> Result<Option<Header>, FrameError> {
        let bytes = &self.buffer[self.start..self.end];
        let Some(header) = bytes.first_chunk::<HEADER_BYTES>() else {
            return Ok(None);
        };
        Header::decode(header, self.body_bytes_max).map(Some)
    }

    fn consume(&mut self, bytes: usize) {
        self.start += bytes;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
    }

    /// Where to read more: after the bytes held, once an incomplete frame
    /// is moved to the start (and the buffer grown, if it is larger).
    fn room(&mut self) -> Result<&mut [u8], FrameError> {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.buffer.len() {
            // Full of one frame's start: its header was checked.
            let needed = self.header()?.map_or(READ_CHUNK, |h| h.frame_bytes());
            self.buffer.resize(needed.max(self.end + FRAME_ALIGN), 0);
        }
        Ok(&mut self.buffer[self.end..])
    }

    fn filled(&mut self, bytes: usize) {
        self.end += bytes;
    }
}

/// The reason a connection was closed, for logs.
pub(crate) fn closed_reason(error: &quinn::ConnectionError) -> String {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            let code = close.error_code;
            let what = match code {
                c if c == close::SHUTDOWN => "the peer is stopping",
                c if c == close::DUPLICATE => "a duplicate link was closed",
                c if c == close::REFUSED => "refused",
                c if c == close::PROTOCOL => "protocol error",
                c if c == close::GONE => "forgotten",
                _ => "closed",
            };
            if reason.is_empty() {
                what.to_string()
            } else {
                format!("{what}: {reason}")
            }
        }
        other => other.to_string(),
    }
}

/// Closes `connection` with `code` and a reason.
pub(crate) fn close_with(connection: &Connection, code: VarInt, reason: &str) {
    connection.close(code, reason.as_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::tls::{LinkTls, TlsSource};
    use crate::cluster::{ClusterConfig, link_endpoint};

    /// A link endpoint on loopback, with throwaway credentials.
    pub(crate) fn endpoint() -> quinn::Endpoint {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tls = LinkTls::new(&TlsSource::InsecureDev, "test").unwrap();
        link_endpoint(socket, &tls, &ClusterConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn the_cluster_socket_gets_as_large_a_receive_buffer_as_the_kernel_allows() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let same_socket = socket.try_clone().unwrap();
        let tls = LinkTls::new(&TlsSource::InsecureDev, "test").unwrap();
        let _endpoint = link_endpoint(socket, &tls, &ClusterConfig::default()).unwrap();
        let granted = quinn::udp::UdpSocketState::new((&same_socket).into())
            .unwrap()
            .recv_buffer_size((&same_socket).into())
            .unwrap();
        // Linux grants up to `rmem_max`, and reports twice what it granted
        // (the other half is its bookkeeping). Where `rmem_max` is the
        // default itself, there is nothing more to get.
        let allowed: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            granted >= 2 * crate::cluster::SOCKET_RECEIVE_BUFFER.min(allowed),
            "granted {granted} bytes, rmem_max {allowed}"
        );
    }

    #[tokio::test]
    async fn a_link_on_loopback_finds_packets_larger_than_quics_default() {
        let (acceptor, dialer) = (endpoint(), endpoint());
        let acceptor_address = acceptor.local_addr().unwrap();
        let accepted = tokio::spawn(async move { acceptor.accept().await.unwrap().await });
        let connection = dialer
            .connect(acceptor_address, LINK_SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let _accepted = accepted.await.unwrap().unwrap();
        // Discovery probes from the handshake on; loopback carries them all.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while connection.stats().path.current_mtu <= 1452 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "path MTU still {} after 5 s",
                connection.stats().path.current_mtu
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(connection.stats().path.current_mtu <= crate::cluster::UDP_PAYLOAD_MAX);
    }

    #[tokio::test]
    async fn a_handshake_announcing_more_than_a_hello_is_refused_before_it_is_read() {
        let acceptor = endpoint();
        let local = Arc::new(Local {
            hello: Hello {
                protocol: super::super::wire::MESH_PROTOCOL_VERSION,
                fingerprint: event::format_fingerprint(),
                node_id: 1,
                cluster: "test".into(),
                name: "acceptor".into(),
                advertise: acceptor.local_addr().unwrap().to_string(),
                inbox_prefix: "_INBOX.test".into(),
            },
            authenticated: false,
            control_bytes_max: 64 << 20,
        });
        let acceptor_address = acceptor.local_addr().unwrap();
        let accepted = tokio::spawn(async move {
            let incoming = acceptor.accept().await.unwrap();
            let started = std::time::Instant::now();
            let result = accept(incoming, local, |_, _| async { None }).await;
            (result, started.elapsed())
        });
        let dialer = endpoint();
        let connection = dialer
            .connect(acceptor_address, LINK_SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        // A stranger announces a 1 MiB first message (far within the
        // configured limit for snapshots) and sends nothing of it.
        send.write_all(&(1u32 << 20).to_le_bytes()).await.unwrap();
        let (result, took) = accepted.await.unwrap();
        let why = result.unwrap_err().1.to_string();
        assert!(
            why.contains(&format!("exceeds the limit of {HANDSHAKE_BYTES_MAX}")),
            "{why}"
        );
        assert!(
            took < HANDSHAKE_TIMEOUT / 2,
            "refused at once, not when the handshake times out"
        );
    }
}
