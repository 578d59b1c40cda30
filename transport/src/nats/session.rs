//! [`Session`]: one NATS client connection's protocol, without I/O.
//!
//! A driver (the node's NATS listener) feeds it the bytes it reads, sends
//! the bytes it writes into `out`, hands it the bus's events for the
//! connection, and publishes what the client publishes. Calling order:
//!
//! 1. [`Session::greeting`] once, before reading: the INFO line.
//! 2. [`Session::handle_input`] with the unused input, until it says
//!    [`Input::Incomplete`]: a control operation is handled in place; a
//!    publish is handed back as [`Input::Publish`] for the driver to publish
//!    (so that a publish that must wait for room can wait in the driver,
//!    asynchronously, without the session knowing), after which the driver
//!    calls [`Session::published`] with the outcome.
//! 3. [`Session::deliver`] for each event from [`Session::mailbox`].
//! 4. [`Session::handle_ping_timer`] every ping interval;
//!    [`Session::enter_lame_duck`] when the node is about to stop.
//!
//! Every method that can end the connection returns `Err(Close)` after
//! writing what nats-server would write in that case (an `-ERR`, or
//! nothing); the driver flushes `out` and closes. Nothing here panics on
//! input.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use starling_core::bus::{PublishError, RecvError, SubscribeError};
use starling_core::subject::{self, SYSTEM_PREFIX};
use starling_core::{Bus, EventRef, Header, Mailbox, Message, SubscribeOptions};

use super::parser::{ClientOp, ParseError, Parsed, Parser};
use super::proto::{self, ConnectOptions, ServerInfo};
use crate::auth::{
    Access, AuthError, Authentication, Begin, Credentials, DeliveryFilter, Verification,
};
use crate::budget::Budget;

/// What every NATS session of a listener shares.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The INFO sent to each client (its `client_id` and `client_ip` are
    /// filled in per connection).
    pub info: ServerInfo,
    /// Who may connect and what each may do: a CONNECT must carry a user's
    /// `user` and `pass`, or a token (`auth_token`, or `pass` alone), when
    /// the node has users or a token. Replaceable while the listener runs:
    /// see [`Session::recheck_auth`].
    pub auth: Arc<Authentication>,
    /// Longest control line.
    pub max_control_line: usize,
    /// Most subscriptions one connection may hold.
    pub subscriptions_max: usize,
    /// The node's subscriptions, of every client of both protocols: one
    /// unit per subscription, taken at SUB, given back when it goes.
    pub node_subscriptions: Arc<Budget>,
    /// The connection's mailbox: events queued for it before its policy
    /// applies.
    pub mailbox: SubscribeOptions,
    /// Pings the client may leave unanswered before it is stale.
    pub max_pings_out: u32,
}

/// Why the connection must close. What the client should be told is
/// already in `out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// For the log.
    pub reason: &'static str,
}

/// What [`Session::handle_input`] did with the input.
#[derive(Debug)]
pub enum Input<'a> {
    /// A control operation, handled; it took `used` bytes.
    Handled {
        /// Bytes of input used.
        used: usize,
    },
    /// A message to publish; it took `used` bytes. Publish it, then call
    /// [`Session::published`].
    Publish {
        /// Bytes of input used.
        used: usize,
        /// The message.
        publish: Publish<'a>,
    },
    /// A CONNECT whose password is being verified (on a verifier thread);
    /// it took `used` bytes. Await the verification, then call
    /// [`Session::verified`]; handle no more input meanwhile.
    Verifying {
        /// Bytes of input used.
        used: usize,
        /// The answer, when it comes.
        verification: Arc<Verification>,
    },
    /// No whole operation yet: read until the input holds `needed` bytes.
    Incomplete {
        /// Bytes of input needed for the next operation (a lower bound).
        needed: usize,
    },
}

/// A message a client published, borrowed from the input.
#[derive(Debug)]
pub struct Publish<'a> {
    subject: &'a str,
    reply: Option<&'a str>,
    headers: Vec<Header<'a>>,
    payload: &'a [u8],
}

impl Publish<'_> {
    /// As the bus takes it.
    pub fn message(&self) -> Message<'_> {
        Message {
            subject: self.subject,
            reply_to: self.reply,
            headers: &self.headers,
            payload: self.payload,
        }
    }
}

/// A connection's figures, read by monitoring (`/connz`) on other threads.
/// Every counter is `Relaxed`: each is a number on its own, read for a
/// report; nothing else is published through it.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Messages received from the client.
    pub in_msgs: AtomicU64,
    /// Payload bytes received from the client.
    pub in_bytes: AtomicU64,
    /// Messages sent to the client.
    pub out_msgs: AtomicU64,
    /// Payload bytes sent to the client.
    pub out_bytes: AtomicU64,
    /// Live subscriptions.
    pub subscriptions: AtomicUsize,
    /// What the client said about itself in CONNECT.
    pub client: OnceLock<ClientInfo>,
}

/// What a client says about itself.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// `name`.
    pub name: String,
    /// `lang`.
    pub lang: String,
    /// `version`.
    pub version: String,
}

/// One subscription of the client.
#[derive(Debug)]
struct Sub {
    sid: Box<[u8]>,
    subject: Box<str>,
    /// Unsubscribe once `delivered` reaches it.
    max: Option<u64>,
    delivered: u64,
    /// What its events are checked for before they go out.
    filter: DeliveryFilter,
}

/// One connection's state.
#[derive(Debug)]
pub struct Session {
    config: Arc<NatsConfig>,
    info: ServerInfo,
    parser: Parser,
    mailbox: Mailbox,
    /// The CONNECT, once accepted.
    connect: Option<ConnectOptions>,
    /// Let in: by its CONNECT's credentials, or from the start by a node
    /// that asks for none.
    admitted: bool,
    /// A CONNECT whose password is being verified.
    verifying: Option<ConnectOptions>,
    /// The client's address, for the failed-login throttle.
    peer: IpAddr,
    /// What the client may do, as its CONNECT's credentials say.
    access: Access,
    /// By mailbox tag; tags are never reused, so an event queued for a
    /// subscription since removed finds nothing and is skipped.
    subs: HashMap<u64, Sub>,
    tags: HashMap<Box<[u8]>, u64>,
    next_tag: u64,
    pings_out: u32,
    header_scratch: Vec<u8>,
    stats: Arc<ConnectionStats>,
}

impl Session {
    /// A session for connection `client_id` from `peer`.
    pub fn new(config: Arc<NatsConfig>, bus: &Bus, client_id: u64, peer: IpAddr) -> Self {
        // A node that asks for no credentials lets the client in before
        // its CONNECT (if it sends one at all), under the current users:
        // a reload that adds some revokes it.
        let (admitted, access) = match config.auth.begin(Credentials::default(), None) {
            Begin::Done(Ok(access)) => (true, access),
            Begin::Done(Err(_)) | Begin::Verifying(_) => (false, Access::unrestricted()),
        };
        let info = ServerInfo {
            client_id,
            client_ip: peer.to_string(),
            auth_required: !admitted,
            ..config.info.clone()
        };
        Self {
            parser: Parser::new(config.max_control_line, info.max_payload),
            mailbox: bus.mailbox(config.mailbox),
            info,
            config,
            connect: None,
            admitted,
            verifying: None,
            peer,
            access,
            subs: HashMap::new(),
            tags: HashMap::new(),
            next_tag: 1,
            pings_out: 0,
            header_scratch: Vec::new(),
            stats: Arc::default(),
        }
    }

    /// The connection's figures.
    pub fn stats(&self) -> &Arc<ConnectionStats> {
        &self.stats
    }

    /// Where the bus queues events for this connection.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// Polls the mailbox for its next event, for an async driver. Takes
    /// `&mut self` so that a future polling it stays `Send` (the mailbox
    /// is not `Sync`, so a shared borrow of it held across an `.await`
    /// would pin the task to one thread).
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<EventRef, RecvError>> {
        self.mailbox.poll_recv(cx)
    }

    /// The client must still send CONNECT with its credentials.
    pub fn awaiting_auth(&self) -> bool {
        !self.admitted
    }

    /// The INFO line a server sends first.
    pub fn greeting(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.info.encode());
    }

    /// Handles the first operation in `input` (what was read and not used
    /// yet).
    pub fn handle_input<'a>(
        &mut self,
        input: &'a [u8],
        out: &mut Vec<u8>,
    ) -> Result<Input<'a>, Close> {
        // As nats-server: before an authenticating CONNECT, anything else
        // is refused on its first byte, without waiting for the rest.
        if self.awaiting_auth()
            && let Some(first) = input.first()
            && !first.eq_ignore_ascii_case(&b'C')
        {
            return Err(authorization_violation(out));
        }
        self.recheck_auth(out)?;
        let (op, used) = match self.parser.parse(input) {
            Ok(Parsed::Op(op, used)) => (op, used),
            Ok(Parsed::Incomplete { needed }) => return Ok(Input::Incomplete { needed }),
            Err(error) => return Err(parse_failure(error, out)),
        };
        match op {
            ClientOp::Connect(json) => {
                if let Some(verification) = self.handle_connect(json, out)? {
                    return Ok(Input::Verifying { used, verification });
                }
            }
            ClientOp::Ping => {
                // A client's flush is a PING: what was published before it
                // (its own messages to its own subscriptions included, as
                // nats-server writes them while handling each PUB) goes out
                // before the PONG.
                self.deliver_queued(out);
                out.extend_from_slice(proto::PONG);
            }
            ClientOp::Pong => self.pings_out = 0,
            ClientOp::Sub {
                subject,
                queue,
                sid,
            } => self.handle_sub(subject, queue, sid, out)?,
            ClientOp::Unsub { sid, max } => {
                self.handle_unsub(sid, max, out);
                self.ok(out);
            }
            ClientOp::Pub(publish) => {
                self.stats.in_msgs.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .in_bytes
                    .fetch_add(publish.payload.len() as u64, Ordering::Relaxed);
                let subject = std::str::from_utf8(publish.subject).ok();
                let reply = publish.reply.map(std::str::from_utf8);
                let mut headers = Vec::new();
                let headers_ok = publish
                    .headers
                    .is_none_or(|block| proto::parse_headers(block, &mut headers).is_ok());
                match (subject, reply) {
                    (Some(subject), None | Some(Ok(_)))
                        if headers_ok && !subject.starts_with(SYSTEM_PREFIX) =>
                    {
                        let reply = reply.and_then(Result::ok);
                        if self.access.check_publish(subject, reply).is_err() {
                            proto::encode_publish_violation(out, subject);
                            return Ok(Input::Handled { used });
                        }
                        let publish = Publish {
                            subject,
                            reply,
                            headers,
                            payload: publish.payload,
                        };
                        return Ok(Input::Publish { used, publish });
                    }
                    _ => self.refuse_publish(out),
                }
            }
        }
        Ok(Input::Handled { used })
    }

    /// What became of a message [`Input::Publish`] handed out.
    pub fn published(
        &mut self,
        publish: &Publish<'_>,
        outcome: Result<usize, PublishError>,
        out: &mut Vec<u8>,
    ) -> Result<(), Close> {
        match outcome {
            Ok(deliveries) => {
                if deliveries == 0
                    && let Some(reply) = publish.reply
                {
                    self.no_responders(reply, out);
                }
                self.ok(out);
            }
            // Counted by the bus for every subscriber it was for; a NATS
            // client has no way to be told, and nats-server would not.
            Err(PublishError::OutOfMemory(_)) => self.ok(out),
            Err(PublishError::Closed) => {
                return Err(Close {
                    reason: "the bus closed",
                });
            }
            Err(PublishError::Invalid(_) | PublishError::Malformed { .. }) => {
                self.refuse_publish(out)
            }
        }
        Ok(())
    }

    /// Writes an event the mailbox delivered, as MSG or (with headers, to
    /// a client that takes them) HMSG; drops the subscription if that was
    /// its last message.
    pub fn deliver(&mut self, event: &EventRef, out: &mut Vec<u8>) {
        let tag = event.tag();
        let Some(sub) = self.subs.get_mut(&tag) else {
            return;
        };
        if !self
            .access
            .admits(sub.filter, event.subject(), event.reply_to())
        {
            return;
        }
        let headers_wanted = self.connect.as_ref().is_some_and(|c| c.headers);
        self.header_scratch.clear();
        let headers = (headers_wanted
            && proto::encode_headers(&mut self.header_scratch, event.headers()))
        .then_some(&self.header_scratch[..]);
        proto::encode_msg(
            out,
            event.subject(),
            &sub.sid,
            event.reply_to(),
            headers,
            event.payload(),
        );
        self.stats.out_msgs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .out_bytes
            .fetch_add(event.payload().len() as u64, Ordering::Relaxed);
        sub.delivered += 1;
        if sub.max.is_some_and(|max| sub.delivered >= max) {
            self.remove(tag);
        }
    }

    /// The ping interval passed without traffic from the client: ping it,
    /// or give up on it if it left too many pings unanswered.
    pub fn handle_ping_timer(&mut self, out: &mut Vec<u8>) -> Result<(), Close> {
        if self.pings_out >= self.config.max_pings_out {
            out.extend_from_slice(proto::ERR_STALE);
            return Err(Close {
                reason: "stale connection",
            });
        }
        self.pings_out += 1;
        out.extend_from_slice(proto::PING);
        Ok(())
    }

    /// Traffic from the client shows it is alive, as a PONG would.
    pub fn handle_activity(&mut self) {
        self.pings_out = 0;
    }

    /// Tells the client that the node will stop soon: an INFO with `ldm`,
    /// on which clients reconnect elsewhere.
    pub fn enter_lame_duck(&mut self, out: &mut Vec<u8>) {
        self.info.ldm = true;
        self.greeting(out);
    }

    /// After the node's users were reloaded: closes the connection (with
    /// nats-server's `-ERR 'Authorization Violation'`) if they no longer
    /// let it in. An atomic load otherwise; called for every operation, and
    /// by the driver when told of a reload.
    pub fn recheck_auth(&mut self, out: &mut Vec<u8>) -> Result<(), Close> {
        if !self.admitted {
            return Ok(());
        }
        match self.config.auth.check(&mut self.access) {
            Ok(()) => Ok(()),
            Err(revoked) => {
                tracing::info!(
                    client_id = self.info.client_id,
                    "closing a NATS connection: {revoked}"
                );
                out.extend_from_slice(proto::ERR_AUTHORIZATION);
                Err(Close {
                    reason: "authorization revoked",
                })
            }
        }
    }

    /// The answer to the password verification [`Input::Verifying`] handed
    /// out: the connection is let in, or refused (and must close).
    pub fn verified(
        &mut self,
        result: Result<Access, AuthError>,
        out: &mut Vec<u8>,
    ) -> Result<(), Close> {
        let connect = self.verifying.take().expect("a CONNECT was being verified");
        self.authenticated(connect, result, out)
    }

    /// Handles a CONNECT; returns the verification to await if its
    /// password must be verified first.
    fn handle_connect(
        &mut self,
        json: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Arc<Verification>>, Close> {
        // A CONNECT that is not JSON: nats-server closes without a word.
        let connect: ConnectOptions = serde_json::from_slice(json).map_err(|_| Close {
            reason: "malformed CONNECT",
        })?;
        let user = connect.user.as_deref().unwrap_or_default();
        let password = connect.pass.as_deref().unwrap_or_default();
        // Without a user, a password alone is taken as a token (as a
        // client given only a token in its URL sends it).
        let token = match (&connect.auth_token, user.is_empty()) {
            (Some(token), _) => token.as_str(),
            (None, true) => password,
            (None, false) => "",
        };
        let credentials = Credentials {
            user,
            password,
            token,
        };
        match self.config.auth.begin(credentials, Some(self.peer)) {
            Begin::Done(result) => self.authenticated(connect, result, out).map(|()| None),
            Begin::Verifying(verification) => {
                self.verifying = Some(connect);
                Ok(Some(verification))
            }
        }
    }

    fn authenticated(
        &mut self,
        connect: ConnectOptions,
        result: Result<Access, AuthError>,
        out: &mut Vec<u8>,
    ) -> Result<(), Close> {
        self.access = match result {
            Ok(access) => access,
            Err(error) if error.is_retry() => {
                out.extend_from_slice(proto::ERR_AUTH_BUSY);
                return Err(Close {
                    reason: "busy checking passwords",
                });
            }
            Err(_) => return Err(authorization_violation(out)),
        };
        self.admitted = true;
        let _ = self.stats.client.set(ClientInfo {
            name: connect.name.clone().unwrap_or_default(),
            lang: connect.lang.clone().unwrap_or_default(),
            version: connect.version.clone().unwrap_or_default(),
        });
        self.connect = Some(connect);
        self.ok(out);
        Ok(())
    }

    fn handle_sub(
        &mut self,
        subject: &[u8],
        queue: Option<&[u8]>,
        sid: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Close> {
        // A sid in use: nats-server keeps the first subscription.
        if self.tags.contains_key(sid) {
            self.ok(out);
            return Ok(());
        }
        if self.subs.len() >= self.config.subscriptions_max {
            out.extend_from_slice(proto::ERR_MAX_SUBSCRIPTIONS);
            return Ok(());
        }
        let (Ok(subject), Ok(queue)) = (
            std::str::from_utf8(subject),
            queue.map(std::str::from_utf8).transpose(),
        ) else {
            out.extend_from_slice(proto::ERR_INVALID_SUBJECT);
            return Ok(());
        };
        let filter = match self.access.check_subscribe(subject) {
            Ok(filter) => filter,
            Err(_) => {
                proto::encode_subscription_violation(out, subject, queue);
                return Ok(());
            }
        };
        if !self.config.node_subscriptions.try_take(1) {
            out.extend_from_slice(proto::ERR_MAX_SUBSCRIPTIONS);
            return Ok(());
        }
        let tag = self.next_tag;
        let subscribed = self.mailbox.subscribe(tag, subject, queue);
        if subscribed.is_err() {
            self.config.node_subscriptions.give_back(1);
        }
        match subscribed {
            Ok(()) => {}
            Err(SubscribeError::Pattern(_) | SubscribeError::QueueGroup) => {
                out.extend_from_slice(proto::ERR_INVALID_SUBJECT);
                return Ok(());
            }
            Err(SubscribeError::Closed) => {
                return Err(Close {
                    reason: "the bus closed",
                });
            }
        }
        self.next_tag += 1;
        self.tags.insert(sid.into(), tag);
        self.subs.insert(
            tag,
            Sub {
                sid: sid.into(),
                subject: subject.into(),
                max: None,
                delivered: 0,
                filter,
            },
        );
        self.stats
            .subscriptions
            .store(self.subs.len(), Ordering::Relaxed);
        self.ok(out);
        Ok(())
    }

    fn handle_unsub(&mut self, sid: &[u8], max: Option<u64>, out: &mut Vec<u8>) {
        let Some(&tag) = self.tags.get(sid) else {
            return;
        };
        // What the mailbox holds was published before the UNSUB arrived;
        // nats-server would have written it to the client already, so it
        // goes out first (and counts towards `max`).
        self.deliver_queued(out);
        match (max, self.subs.get_mut(&tag)) {
            (Some(max), Some(sub)) if sub.delivered < max => sub.max = Some(max),
            _ => self.remove(tag),
        }
    }

    /// Writes every event the mailbox holds now.
    fn deliver_queued(&mut self, out: &mut Vec<u8>) {
        while let Some(event) = self.mailbox.try_recv() {
            self.deliver(&event, out);
        }
    }

    fn remove(&mut self, tag: u64) {
        if let Some(sub) = self.subs.remove(&tag) {
            self.tags.remove(&sub.sid);
            self.mailbox.unsubscribe(tag);
            self.config.node_subscriptions.give_back(1);
        }
        self.stats
            .subscriptions
            .store(self.subs.len(), Ordering::Relaxed);
    }

    /// A request nobody subscribes to: a 503 status to the client's own
    /// subscription on the reply subject, if it asked for that; of several
    /// that match, the oldest (the lowest tag: `subs` is a `HashMap`, whose
    /// order is no answer, and the same stream must get the same reply).
    fn no_responders(&mut self, reply: &str, out: &mut Vec<u8>) {
        let wanted = self
            .connect
            .as_ref()
            .is_some_and(|c| c.headers && c.no_responders);
        if !wanted {
            return;
        }
        if let Some((_, sub)) = self
            .subs
            .iter()
            .filter(|(_, sub)| subject::pattern_matches(&sub.subject, reply))
            .min_by_key(|(tag, _)| **tag)
        {
            proto::encode_msg(out, reply, &sub.sid, None, Some(proto::NO_RESPONDERS), b"");
            self.stats.out_msgs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A message that cannot be published (invalid subject, reply or
    /// headers, or a mesh subject) is dropped; as nats-server, only a
    /// pedantic client is told.
    fn refuse_publish(&self, out: &mut Vec<u8>) {
        if self.connect.as_ref().is_some_and(|c| c.pedantic) {
            out.extend_from_slice(proto::ERR_INVALID_PUBLISH_SUBJECT);
        }
    }

    fn ok(&self, out: &mut Vec<u8>) {
        if self.connect.as_ref().is_some_and(|c| c.verbose) {
            out.extend_from_slice(proto::OK);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.config.node_subscriptions.give_back(self.subs.len());
    }
}

fn authorization_violation(out: &mut Vec<u8>) -> Close {
    out.extend_from_slice(proto::ERR_AUTHORIZATION);
    Close {
        reason: "authorization violation",
    }
}

/// What nats-server says on each parse error before it closes.
fn parse_failure(error: ParseError, out: &mut Vec<u8>) -> Close {
    let (text, reason): (&[u8], _) = match error {
        ParseError::UnknownOperation => (proto::ERR_UNKNOWN_OPERATION, "unknown operation"),
        ParseError::ControlLineTooLong => (proto::ERR_CONTROL_LINE, "control line too long"),
        ParseError::PayloadTooLarge { .. } => (proto::ERR_MAX_PAYLOAD, "payload too large"),
        // nats-server closes on malformed arguments without an -ERR.
        ParseError::BadArguments(_) => (b"", "malformed arguments"),
    };
    out.extend_from_slice(text);
    Close { reason }
}
