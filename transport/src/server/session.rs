//! [`Session`]: one client connection's protocol, without I/O.
//!
//! The I/O backends (io_uring, epoll) hand a session the bytes they receive
//! and send what its [`Outbox`] holds; everything in between is here and is
//! the same for both: the handshake, subscriptions, publishing into the bus,
//! delivering the bus's events, limits, and errors. A session never panics on
//! input: bad bytes become an `ERR` frame, and bad framing also closes the
//! connection once the `ERR` is written. Other connections are not affected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;
use starling_core::bus::{Backlog, PublishError, SubscribeError};
use starling_core::event::{self, ValidationError};
use starling_core::subject::SYSTEM_PREFIX;
use starling_core::{Bus, EventLimits, Mailbox, Publisher, SubscribeOptions};

use super::counters::{ConnectionStats, SubscriptionStats};
use super::outbox::{Full, Outbox};
use crate::auth::{Access, Authentication, DeliveryFilter};
use crate::budget::Budget;
use crate::frame::control::{ErrorBody, Subscribe};
use crate::frame::packed::Records;
use crate::frame::{
    DecodeError, Decoder, ErrorCode, FRAME_ALIGN, Frame, HEADER_BYTES, Header, Kind, PACKED_SINCE,
    PADDING, padded,
};

/// The largest body a connection's first frame, its `HELLO`, may have: its
/// strings are at most `control::STRING_BYTES_MAX` (1 KiB) each, so this is
/// ample, and a stranger who has not said who it is cannot make the node hold
/// a large frame for it.
const HELLO_BODY_BYTES_MAX: usize = 16 << 10;

/// The reason of the `ERR` (shutting-down) every connection gets when the
/// node stops: served ones from their session, and those still waiting for
/// their I/O thread (`threads.rs`).
pub(crate) const SHUTTING_DOWN: &str = "the node is shutting down";

/// What every session of a server shares.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The node's name, sent in its `HELLO`.
    pub server_name: String,
    /// Who may connect (users, or a shared token; neither: anyone) and what
    /// each may do; replaceable while the server runs.
    pub auth: Arc<Authentication>,
    /// Most subscriptions one connection may hold.
    pub subscriptions_max: usize,
    /// Largest frame body accepted.
    pub body_bytes_max: usize,
    /// Deliveries a connection may have queued (read from the bus but not yet
    /// written to its socket) before further events for it are dropped and
    /// counted: the per-connection pending limit.
    pub pending_events_max: usize,
    /// Bytes of event memory a connection's queued deliveries may pin
    /// (whole segments) before its `Block` subscriptions hold publishers
    /// back and its drop subscriptions drop.
    pub pending_bytes_max: usize,
    /// Frames gathered into one send.
    pub outbox_entries: usize,
    /// How long a new connection has to complete its `HELLO`; then it is
    /// closed, and its slot freed for others.
    pub handshake_timeout: Duration,
    /// A connection the node has heard nothing from for this long is sent
    /// a `PING`.
    pub ping_interval: Duration,
    /// Unanswered pings after which a connection is stale and closed (as
    /// nats-server's `ping_max`).
    pub ping_stale_max: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            server_name: "starling".into(),
            auth: Arc::default(),
            subscriptions_max: 10_000,
            body_bytes_max: starling_core::EventLimits::default().archive_bytes_max(),
            pending_events_max: 16_384,
            pending_bytes_max: 64 << 20,
            outbox_entries: 1024,
            handshake_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(120),
            ping_stale_max: 2,
        }
    }
}

/// One connection's protocol state.
#[derive(Debug)]
pub(crate) struct Session {
    decoder: Decoder,
    protocol: Protocol,
}

#[derive(Debug)]
struct Protocol {
    config: Arc<SessionConfig>,
    limits: EventLimits,
    stats: Arc<ConnectionStats>,
    state: State,
    /// The connection's queue of deliveries, made at its first `SUB`: a
    /// queue holds `pending_events_max` slots, zeroed, and most connections
    /// of a crowded node (idle ones, publishers) never subscribe.
    mailbox: Option<Mailbox>,
    bus: Bus,
    /// This connection's subscriptions by id, with their delivery counters.
    subscriptions: HashMap<u64, Subscription>,
    /// The node's subscriptions, all connections together: one unit per
    /// entry of `subscriptions`, given back when it goes.
    node_subscriptions: Arc<Budget>,
    /// What the client may do; unrestricted until the handshake says who
    /// it is (nothing but `HELLO` is handled before).
    access: Access,
    /// The client's address, for the failed-login throttle (none on a Unix
    /// socket).
    peer: Option<IpAddr>,
    /// The handshake's password, being verified on a verifier thread: the
    /// session is stalled until the answer comes (see `Session::resume`).
    verifying: Option<handshake::Verifying>,
    outbox: Outbox,
    /// The mailbox's drop count last reported to the client.
    dropped_reported: u64,
    /// Deliveries of this connection's last event that met full queues.
    backlog: Backlog,
    /// Whole frames that arrived while stalled, in order, to handle once
    /// the backlog is flushed: those before `spill_at` are handled.
    spill: AlignedVec<FRAME_ALIGN>,
    spill_at: usize,
    /// Bytes arrived since the last [`Session::tick`].
    heard_from: bool,
    /// When the handshake must be done by (while in `Handshake`), the next
    /// ping is due (in `Ready`), or the connection is closed even if its
    /// last words are not all written (in `Closing`).
    deadline: Instant,
    /// Pings sent since the node last heard from the client.
    pings_unanswered: u32,
    /// The protocol version agreed in the handshake (the client's).
    version: u32,
    /// An event asking for a reply reached a subscriber since the I/O loop
    /// last looked (`Session::take_published_request`): the reply is likely
    /// to come back to this connection soon.
    published_request: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the client's `HELLO`.
    Handshake,
    /// Open.
    Ready,
    /// A fatal error was reported: write what is queued, then close.
    Closing,
}

impl Session {
    /// A session for a new connection from `peer`; what it holds of
    /// half-received frames is charged to `partial_frames`, its
    /// subscriptions to the node's `subscriptions`.
    pub(crate) fn new(
        bus: &Bus,
        config: Arc<SessionConfig>,
        peer: Option<IpAddr>,
        stats: Arc<ConnectionStats>,
        partial_frames: Arc<Budget>,
        subscriptions: Arc<Budget>,
    ) -> Self {
        let handshake_deadline = Instant::now() + config.handshake_timeout;
        Self {
            decoder: Decoder::for_server(
                HELLO_BODY_BYTES_MAX,
                config.body_bytes_max,
                partial_frames,
            ),
            protocol: Protocol {
                limits: bus.config().limits,
                outbox: Outbox::new(config.outbox_entries),
                config,
                stats,
                state: State::Handshake,
                mailbox: None,
                bus: bus.clone(),
                subscriptions: HashMap::new(),
                node_subscriptions: subscriptions,
                access: Access::unrestricted(),
                peer,
                verifying: None,
                dropped_reported: 0,
                backlog: Backlog::new(),
                spill: AlignedVec::new(),
                spill_at: 0,
                heard_from: false,
                deadline: handshake_deadline,
                pings_unanswered: 0,
                version: 0,
                published_request: false,
            },
        }
    }

    /// True while the connection must not be read: an event it published
    /// waits for room, or its answers wait for room in the outbox, or its
    /// password is being verified, and the frames that came meanwhile wait
    /// their turn.
    pub(crate) fn stalled(&self) -> bool {
        !self.protocol.backlog.is_empty()
            || self.protocol.spill_at < self.protocol.spill.len()
            || self.protocol.verifying.is_some()
    }

    /// True if the session is stalled only for room in its outbox, and has
    /// some now (something was sent): call [`Session::resume`].
    pub(crate) fn outbox_has_room_again(&self) -> bool {
        self.stalled()
            && self.protocol.backlog.is_empty()
            && self.protocol.verifying.is_none()
            && self.protocol.outbox.has_room_for_control()
    }

    /// When the current stall ends by demoting the full queues, if stalled.
    pub(crate) fn stall_deadline(&self) -> Option<Instant> {
        self.protocol.backlog.deadline()
    }

    /// Takes the answer of the password verification, then hands over what
    /// the stalled event owes, then handles the frames that came meanwhile,
    /// until one stalls again. Returns true if still stalled; then `cx`'s
    /// waker is registered with the verification or every queue it waits
    /// for (call again on wake-up, or at [`Session::stall_deadline`]), or the
    /// outbox is full (call again once something was sent).
    pub(crate) fn resume(&mut self, cx: &mut Context<'_>, publisher: &mut Publisher) -> bool {
        if let Some(verifying) = &self.protocol.verifying {
            let Poll::Ready(result) = verifying.verification.poll(cx) else {
                return true;
            };
            let verifying = self.protocol.verifying.take().expect("checked above");
            // A refusal starts closing: the frames spilled meanwhile are
            // then ignored.
            let _ = self.protocol.authenticated(result, &verifying.client_name);
        }
        loop {
            // Registers the waker for whatever is owed now, including what a
            // spilled frame handled below has just come to owe.
            if self.protocol.backlog.poll_flush(cx).is_pending() {
                return true;
            }
            if self.protocol.spill_at == self.protocol.spill.len() {
                self.protocol.spill.clear();
                self.protocol.spill_at = 0;
                return false;
            }
            if !self.protocol.outbox.has_room_for_control() {
                return true;
            }
            self.protocol.handle_spilled(publisher);
            // Before the backlog is waited on: a full queue's consumer makes
            // room only once it sees what this source gave it before.
            publisher.wake_noted(&mut self.protocol.backlog);
        }
    }

    /// Bytes arrived from the client. Frames are handled as they complete;
    /// after a fatal error the rest is ignored.
    pub(crate) fn receive(&mut self, bytes: &[u8], publisher: &mut Publisher) {
        if self.protocol.state == State::Closing {
            return;
        }
        self.protocol.heard_from = true;
        self.protocol
            .stats
            .bytes_in
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let protocol = &mut self.protocol;
        let result = self
            .decoder
            .feed(bytes, |frame| protocol.handle(frame, publisher));
        // The receive's events were published noted (`Protocol::publish`):
        // their consumers see them all now, after one fence.
        publisher.wake_noted(&mut self.protocol.backlog);
        match result {
            Ok(()) | Err(DecodeError::Handler(Fatal)) => {}
            Err(DecodeError::Frame(error)) => {
                self.protocol.fail(error.code(), 0, error.to_string());
            }
        }
    }

    /// True once after the client published a request (an event with a
    /// reply subject) that reached a subscriber: the I/O loop then polls for
    /// the reply for a moment instead of sleeping (`ReplyPoll`).
    pub(crate) fn take_published_request(&mut self) -> bool {
        std::mem::take(&mut self.protocol.published_request)
    }

    /// Moves deliveries from the bus into the outbox while it has room.
    /// Returns true if it moved any. When the mailbox runs dry, `cx`'s waker
    /// is registered and woken when the next delivery arrives.
    pub(crate) fn pull(&mut self, cx: &mut Context<'_>) -> bool {
        let protocol = &mut self.protocol;
        if protocol.state == State::Ready && protocol.authorized().is_err() {
            return false;
        }
        let Some(mailbox) = &protocol.mailbox else {
            return false;
        };
        let mut moved = 0u64;
        // The last subscription looked up: a run of deliveries is mostly for
        // one, and the map's (flood-proof, so slower) hash is then skipped.
        let mut last: Option<(u64, Option<&Subscription>)> = None;
        // In batches as large as the outbox surely has room for: one claim
        // of the queue, one look at its space signal (a fence) and one
        // release of event memory per run, instead of one of each per event.
        loop {
            let room = protocol.outbox.message_room();
            if room == 0 {
                break;
            }
            let polled = mailbox.poll_recv_batch(cx, room, |event| {
                let sid = event.tag();
                let subscription = match last {
                    Some((last_sid, subscription)) if last_sid == sid => subscription,
                    _ => {
                        let subscription = protocol.subscriptions.get(&sid);
                        last = Some((sid, subscription));
                        subscription
                    }
                };
                // A subscription removed with events still queued has no
                // counter left; its last events still go out (it was
                // allowed, and its filter is gone with it: none to ask).
                if let Some(subscription) = subscription {
                    let admitted = protocol.access.admits(
                        subscription.filter,
                        event.subject(),
                        event.reply_to(),
                    );
                    if !admitted {
                        return Some(event);
                    }
                    subscription.stats.delivered();
                }
                moved += 1;
                protocol.outbox.push_message(sid, event)
            });
            if !matches!(polled, Poll::Ready(Ok(_))) {
                break;
            }
        }
        if moved > 0 {
            protocol
                .stats
                .events_out
                .fetch_add(moved, Ordering::Relaxed);
        }
        protocol.report_drops();
        moved > 0
    }

    /// What is waiting to be written.
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.protocol.outbox
    }

    /// `written` bytes of the outbox went out.
    pub(crate) fn sent(&mut self, written: usize) {
        let protocol = &mut self.protocol;
        protocol
            .stats
            .bytes_out
            .fetch_add(written as u64, Ordering::Relaxed);
        protocol.outbox.advance(written);
        if protocol.mailbox.is_none() {
            // Without a subscription it is sent only answers, now and then
            // (its HELLO, a PONG): it need not keep room for a whole outbox
            // of deliveries (~48 KiB at 1,024 entries) while it idles, as
            // most connections of a crowded node do.
            protocol.outbox.release_memory();
        }
    }

    /// True once the connection should close: a fatal error was reported and
    /// everything queued has been written.
    pub(crate) fn finished(&self) -> bool {
        self.protocol.state == State::Closing && self.protocol.outbox.is_empty()
    }

    /// True after a fatal error.
    pub(crate) fn closing(&self) -> bool {
        self.protocol.state == State::Closing
    }

    /// Keeps time, every so often (see [`tick_interval`]): ends a handshake
    /// that took too long, pings a client gone quiet and gives up on one that
    /// does not answer, lets go of a quiet connection's spare memory, and
    /// closes one whose last words could not be written in time.
    pub(crate) fn tick(&mut self, now: Instant) -> Tick {
        let protocol = &mut self.protocol;
        let heard_from = std::mem::take(&mut protocol.heard_from);
        // An idle connection, too, is closed soon after a reload revoked it.
        if protocol.state == State::Ready && protocol.authorized().is_err() {
            return Tick::Write;
        }
        match protocol.state {
            State::Handshake if now >= protocol.deadline => {
                let reason = format!(
                    "no HELLO within {} ms",
                    protocol.config.handshake_timeout.as_millis()
                );
                protocol.fail(ErrorCode::Handshake, 0, reason);
                Tick::Write
            }
            State::Handshake => Tick::Idle,
            State::Closing if now >= protocol.deadline => Tick::Close,
            State::Closing => Tick::Idle,
            State::Ready if heard_from => {
                protocol.pings_unanswered = 0;
                protocol.deadline = now + protocol.config.ping_interval;
                Tick::Idle
            }
            State::Ready if now < protocol.deadline => Tick::Idle,
            State::Ready if protocol.pings_unanswered >= protocol.config.ping_stale_max => {
                let reason = format!(
                    "stale connection: {} pings unanswered",
                    protocol.pings_unanswered
                );
                protocol.fail(ErrorCode::Limit, 0, reason);
                Tick::Write
            }
            State::Ready => {
                // Quiet for a whole interval: its spare memory can go.
                protocol.outbox.release_memory();
                self.decoder.release_memory();
                protocol.pings_unanswered += 1;
                protocol.deadline = now + protocol.config.ping_interval;
                // No room means it reads nothing: the ping counts anyway.
                if protocol.outbox.has_room_for_control() {
                    let _ = protocol.reply(Kind::Ping, u64::from(protocol.pings_unanswered), &[]);
                }
                Tick::Write
            }
        }
    }

    /// Tells the client the node is going away.
    pub(crate) fn shut_down(&mut self) {
        self.protocol
            .fail(ErrorCode::ShuttingDown, 0, SHUTTING_DOWN.into());
    }
}

/// One subscription of the connection.
#[derive(Debug)]
struct Subscription {
    stats: Arc<SubscriptionStats>,
    /// What its events are checked for before they go out.
    filter: DeliveryFilter,
}

/// How often the backends call [`Session::tick`]: often enough that a
/// handshake or ping deadline is kept to within a quarter of its length.
pub(crate) fn tick_interval(config: &SessionConfig) -> Duration {
    (config.handshake_timeout.min(config.ping_interval) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// The earliest of a loop's deadlines; one, the next tick, is always set.
pub(crate) fn earliest(deadlines: &[Option<Instant>], next_tick: Instant) -> Instant {
    deadlines
        .iter()
        .flatten()
        .fold(next_tick, |earliest, &at| earliest.min(at))
}

/// What a backend does with a connection after [`Session::tick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    /// Nothing.
    Idle,
    /// Write: a `PING` or a last `ERR` was queued.
    Write,
    /// Close now, written or not.
    Close,
}

/// The connection must close; the reason has been queued as an `ERR`.
#[derive(Debug)]
struct Fatal;

impl Drop for Protocol {
    fn drop(&mut self) {
        self.node_subscriptions.give_back(self.subscriptions.len());
    }
}

impl Protocol {
    /// Handles spilled frames in order until one stalls (or none is left).
    /// They were whole, valid frames when spilled.
    fn handle_spilled(&mut self, publisher: &mut Publisher) {
        let mut spill = std::mem::take(&mut self.spill);
        let mut at = self.spill_at;
        while at < spill.len() && self.backlog.is_empty() && self.outbox.has_room_for_control() {
            let bytes = spill[at..at + HEADER_BYTES]
                .try_into()
                .expect("the spill holds whole frames");
            let header = match Header::decode(bytes, self.config.body_bytes_max) {
                Ok(header) => header,
                Err(error) => {
                    self.fail(ErrorCode::Framing, 0, error.to_string());
                    at = spill.len();
                    break;
                }
            };
            let body = &spill[at + HEADER_BYTES..at + HEADER_BYTES + header.length as usize];
            at += header.frame_bytes();
            if self.handle(Frame { header, body }, publisher).is_err() {
                // Fatal: the connection is closing; the rest is ignored.
                at = spill.len();
            } else if !self.spill.is_empty() {
                // A `PACKED_PUB` stopped part-way (see `publish_packed`):
                // the records it left go before the frames after it.
                self.spill.extend_from_slice(&spill[at..]);
                spill = std::mem::take(&mut self.spill);
                at = 0;
            }
        }
        // Nothing else was spilled meanwhile: `handle` spills only while a
        // backlog is owed or the outbox is full, and the loop stops as soon
        // as either is.
        debug_assert!(self.spill.is_empty());
        self.spill = spill;
        self.spill_at = at;
    }

    fn handle(&mut self, frame: Frame<'_>, publisher: &mut Publisher) -> Result<(), Fatal> {
        // A frame gets at most one answer; without room for it, the frame
        // waits. So a burst of requests (a reconnect's thousands of SUBs, a
        // mass UNSUB) holds the client back until it reads its answers,
        // instead of overflowing the outbox.
        let stalled = !self.backlog.is_empty()
            || self.spill_at < self.spill.len()
            || self.verifying.is_some()
            || !self.outbox.has_room_for_control();
        if stalled && self.state != State::Closing {
            // Stalled: keep the frame, in order, for `Session::resume`.
            self.spill.extend_from_slice(&frame.header.encode());
            self.spill.extend_from_slice(frame.body);
            self.spill
                .extend_from_slice(&PADDING[..padded(frame.body.len()) - frame.body.len()]);
            return Ok(());
        }
        let tag = frame.header.tag;
        if self.state == State::Ready {
            self.authorized()?;
        }
        match (self.state, frame.header.kind) {
            (State::Closing, _) => Err(Fatal),
            (State::Handshake, Kind::Hello) => self.hello(frame.body),
            (State::Handshake, _) => Err(self.fail(
                ErrorCode::Handshake,
                tag,
                "the first frame must be HELLO".into(),
            )),
            (State::Ready, Kind::Hello) => Err(self.fail(
                ErrorCode::Handshake,
                tag,
                "HELLO was already received".into(),
            )),
            (State::Ready, Kind::Ping) => self.reply(Kind::Pong, tag, &[]),
            (State::Ready, Kind::Pong) => Ok(()),
            (State::Ready, Kind::Sub) => self.subscribe(tag, frame.body),
            (State::Ready, Kind::Unsub) => self.unsubscribe(tag),
            (State::Ready, Kind::Pub) => {
                self.stats.events_in.fetch_add(1, Ordering::Relaxed);
                self.publish(tag, frame.body, publisher)
            }
            (State::Ready, Kind::PackedPub) => self.publish_packed(tag, frame.body, publisher),
            (State::Ready, kind @ (Kind::Msg | Kind::Ok | Kind::Err)) => Err(self.fail(
                ErrorCode::Framing,
                tag,
                format!("{kind:?} frames go from the node to clients, not back"),
            )),
            (State::Ready, Kind::Forward) => Err(self.fail(
                ErrorCode::Framing,
                tag,
                "FORWARD frames travel between nodes, not on a client connection".into(),
            )),
        }
    }

    fn subscribe(&mut self, sid: u64, body: &[u8]) -> Result<(), Fatal> {
        let request = match Subscribe::decode(body) {
            Ok(request) => request,
            Err(error) => return Err(self.fail(ErrorCode::Framing, sid, error.to_string())),
        };
        if self.subscriptions.contains_key(&sid) {
            return self.error(
                ErrorCode::UnknownSubscription,
                sid,
                format!("subscription id {sid} is already in use"),
            );
        }
        let filter = match self.access.check_subscribe(&request.pattern) {
            Ok(filter) => filter,
            Err(error) => return self.error(ErrorCode::PermissionDenied, sid, error.to_string()),
        };
        if self.subscriptions.len() >= self.config.subscriptions_max {
            let reason = format!(
                "a connection may hold {} subscriptions",
                self.config.subscriptions_max
            );
            return self.error(ErrorCode::Limit, sid, reason);
        }
        if !self.node_subscriptions.try_take(1) {
            let reason = format!(
                "the node holds its limit of {} subscriptions",
                self.node_subscriptions.max()
            );
            return self.error(ErrorCode::Limit, sid, reason);
        }
        let subscribed = self.mailbox().subscribe_with_policy(
            sid,
            &request.pattern,
            request.queue_group.as_deref(),
            request.policy,
        );
        if subscribed.is_err() {
            self.node_subscriptions.give_back(1);
        }
        match subscribed {
            Ok(()) => {
                let stats = Arc::new(SubscriptionStats::new(request));
                self.stats.add_subscription(sid, stats.clone());
                self.subscriptions
                    .insert(sid, Subscription { stats, filter });
                self.reply(Kind::Ok, sid, &[])
            }
            Err(error @ (SubscribeError::Pattern(_) | SubscribeError::QueueGroup)) => {
                self.error(ErrorCode::InvalidSubject, sid, error.to_string())
            }
            Err(SubscribeError::Closed) => {
                Err(self.fail(ErrorCode::ShuttingDown, sid, SHUTTING_DOWN.into()))
            }
        }
    }

    fn unsubscribe(&mut self, sid: u64) -> Result<(), Fatal> {
        if self.subscriptions.remove(&sid).is_none() {
            return self.error(
                ErrorCode::UnknownSubscription,
                sid,
                format!("no subscription with id {sid}"),
            );
        }
        self.node_subscriptions.give_back(1);
        self.mailbox().unsubscribe(sid);
        self.stats.remove_subscription(sid);
        self.reply(Kind::Ok, sid, &[])
    }

    /// Publishes the archive a `PUB` carried. Its consumers are woken once
    /// for all the frames handled together, by `Session::receive` or
    /// `Session::resume` (`Publisher::publish_checked_noted`).
    fn publish(&mut self, tag: u64, body: &[u8], publisher: &mut Publisher) -> Result<(), Fatal> {
        let archive = match event::check(body, &self.limits) {
            Ok(archive) => archive,
            Err(error) => return self.refuse_event(tag, &error),
        };
        let event = archive.event();
        self.publish_admitted(tag, (event.subject(), event.reply_to()), |backlog| {
            publisher.publish_checked_noted(archive, backlog)
        })
    }

    /// Reports an event that failed its checks, with the same text whether it
    /// came as an archive or as parts.
    fn refuse_event(&mut self, tag: u64, error: &ValidationError) -> Result<(), Fatal> {
        let reason = format!("{}: {error}", error.code());
        self.error(ErrorCode::InvalidEvent, tag, reason)
    }

    /// Publishes a checked event with `publish` if this connection may
    /// publish on its `subject` (and name `reply_to`), and reports the
    /// outcome: the part of a publish that is the same for a `PUB`'s archive
    /// and a `PACKED_PUB`'s record.
    fn publish_admitted(
        &mut self,
        tag: u64,
        (subject, reply_to): (&str, Option<&str>),
        publish: impl FnOnce(&mut Backlog) -> Result<usize, PublishError>,
    ) -> Result<(), Fatal> {
        if subject.starts_with(SYSTEM_PREFIX) {
            let reason = format!("subjects under {SYSTEM_PREFIX} belong to the mesh");
            return self.error(ErrorCode::InvalidSubject, tag, reason);
        }
        if let Err(error) = self.access.check_publish(subject, reply_to) {
            return self.error(ErrorCode::PermissionDenied, tag, error.to_string());
        }
        let asks_reply = reply_to.is_some();
        match publish(&mut self.backlog) {
            Ok(0) if tag != 0 => self.error(
                ErrorCode::NoResponders,
                tag,
                "no subscriber for this subject".into(),
            ),
            Ok(delivered) => {
                self.published_request |= asks_reply && delivered > 0;
                Ok(())
            }
            Err(PublishError::OutOfMemory(_)) => self.error(
                ErrorCode::OutOfMemory,
                tag,
                "the node's event memory is spent".into(),
            ),
            Err(error @ (PublishError::Invalid(_) | PublishError::Malformed { .. })) => {
                self.error(ErrorCode::InvalidEvent, tag, error.to_string())
            }
            Err(PublishError::Closed) => {
                Err(self.fail(ErrorCode::ShuttingDown, tag, SHUTTING_DOWN.into()))
            }
        }
    }

    /// Publishes the records of a `PACKED_PUB`, each as the `PUB` with tag 0
    /// it stands for: its parts checked against the limits as `event::check`
    /// checks an archive (`event::checked_parts`: the same errors), then
    /// archived once, straight into event memory
    /// (`Publisher::publish_parts_noted`, woken as a `PUB`'s): no scratch
    /// copy, and the archive is not read back. A frame with a broken record
    /// is refused whole, before any is published. A record that must wait (a
    /// full `Block` queue, or no room for another answer) leaves the rest in
    /// the spill, as a frame of its own, for `Session::resume`.
    fn publish_packed(
        &mut self,
        tag: u64,
        body: &[u8],
        publisher: &mut Publisher,
    ) -> Result<(), Fatal> {
        if self.version < PACKED_SINCE {
            let reason = format!(
                "PACKED_PUB needs protocol {PACKED_SINCE}; this connection agreed on {}",
                self.version
            );
            return Err(self.fail(ErrorCode::Framing, tag, reason));
        }
        if let Err(error) = Records::check(tag, body) {
            return Err(self.fail(ErrorCode::Framing, tag, error.to_string()));
        }
        let mut records = Records::new(tag, body);
        let mut result = Ok(());
        // The records handled here are counted with one atomic add, not one
        // each: a frame carries up to a hundred or so small events.
        let mut handled = 0;
        while let Some(Ok(record)) = records.next() {
            handled += 1;
            result = match record.parts() {
                Ok(parts) => match event::checked_parts(parts, &self.limits) {
                    Ok(checked) => {
                        self.publish_admitted(0, (parts.subject, parts.reply_to), |backlog| {
                            publisher.publish_parts_noted(checked, backlog)
                        })
                    }
                    Err(error) => self.refuse_event(0, &error),
                },
                Err(reason) => {
                    self.error(ErrorCode::InvalidEvent, 0, format!("malformed: {reason}"))
                }
            };
            let must_wait = !self.backlog.is_empty() || !self.outbox.has_room_for_control();
            if result.is_err() || must_wait {
                break;
            }
        }
        self.stats.events_in.fetch_add(handled, Ordering::Relaxed);
        if result.is_ok() {
            records
                .push_rest(&mut self.spill)
                .expect("the frame's records were checked");
        }
        result
    }

    /// Queues a frame to the client. Every frame handled had room for its
    /// answer (see `handle`), so a full outbox here is a bug: the
    /// connection is cut, and says so in the log.
    fn reply(&mut self, kind: Kind, tag: u64, body: &[u8]) -> Result<(), Fatal> {
        match self.outbox.push_frame(kind, tag, body) {
            Ok(()) => Ok(()),
            Err(Full) => {
                tracing::warn!(
                    client = self.stats.client_name.get().map_or("", String::as_str),
                    "closing a connection: no room for a {kind:?} to it"
                );
                self.state = State::Closing;
                self.deadline = Instant::now();
                Err(Fatal)
            }
        }
    }

    /// Reports a non-fatal error about the frame with `tag`.
    fn error(&mut self, code: ErrorCode, tag: u64, reason: String) -> Result<(), Fatal> {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.reply(Kind::Err, tag, &ErrorBody::new(code, reason).encode())
    }

    /// Reports a fatal error and starts closing: the connection closes once
    /// the report is written, or at the latest a handshake timeout later.
    fn fail(&mut self, code: ErrorCode, tag: u64, reason: String) -> Fatal {
        if self.state != State::Closing {
            let _ = self.error(code, tag, reason);
            self.verifying = None;
            self.state = State::Closing;
            self.deadline = Instant::now() + self.config.handshake_timeout;
        }
        Fatal
    }

    /// The connection's mailbox, made now if this is its first use.
    fn mailbox(&mut self) -> &mut Mailbox {
        self.mailbox.get_or_insert_with(|| {
            let mailbox = self.bus.mailbox(SubscribeOptions {
                capacity: self.config.pending_events_max,
                pending_bytes_max: self.config.pending_bytes_max,
                ..SubscribeOptions::default()
            });
            self.stats.set_mailbox(mailbox.counters());
            mailbox
        })
    }

    /// Tells the client about events dropped for it since the last report.
    fn report_drops(&mut self) {
        let dropped = self.mailbox.as_ref().map_or(0, Mailbox::dropped);
        if dropped == self.dropped_reported
            || self.state == State::Closing
            || !self.outbox.has_room_for_control()
        {
            // Reported later, with the total so far.
            return;
        }
        let reason = format!(
            "{} events dropped for this connection because it reads too slowly ({dropped} in all)",
            dropped - self.dropped_reported
        );
        if self
            .reply(
                Kind::Err,
                dropped,
                &ErrorBody::new(ErrorCode::SlowConsumer, reason).encode(),
            )
            .is_ok()
        {
            self.dropped_reported = dropped;
        }
    }
}

mod handshake;
#[cfg(test)]
mod tests;
