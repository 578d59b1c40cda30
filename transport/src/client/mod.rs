//! The client library: how applications talk to their local node.
//!
//! ```no_run
//! use std::time::Duration;
//! use starling_transport::client::Client;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("tcp://127.0.0.1:7400")?;
//! let orders = client.subscribe("orders.>")?;
//! client.publish("orders.eu.created", b"hello")?;
//! client.flush()?;
//! let event = orders.recv_timeout(Duration::from_secs(1))?;
//! assert_eq!(event.payload(), b"hello");
//! # Ok(()) }
//! ```
//!
//! A `Client` is cheap to clone and safe to share. Publishing appends the
//! frame to a write buffer, a ring that any number of threads append to
//! without a lock, which a flusher thread writes out (so many publishes
//! share one system call, and a publisher wakes the flusher only when it
//! has parked); [`Client::flush`] waits until the node has
//! processed everything published before it. A reader thread takes the node's
//! frames and hands each delivered event to its subscription's queue (the
//! same queues as the in-process bus: blocking, timed, async receive, and a
//! `dropped()` count). A timer thread ends each wait for an answer (a
//! subscription's acknowledgement, a reply, a flush) at its deadline. If the
//! connection breaks, the reader reconnects with backoff and subscribes
//! again; events published meanwhile are buffered up to a limit.

mod answers;
mod completion;
mod connection;
mod handshake;
mod ring;
mod writer;

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_core::event::{EncodeError, Event, Header as EventHeader};
use starling_core::subject::SubjectError;
use starling_core::{SlowConsumerPolicy, SubscribeOptions};
use thiserror::Error;

use self::connection::Connection;
use self::writer::Room;
use crate::frame::ErrorCode;
use crate::tls::ClientTls;
use crate::url::{ServerUrl, UrlError};

/// How a client connects and behaves. Its `Debug` leaves the token and the
/// password out.
#[derive(Clone)]
pub struct ClientOptions {
    /// The name sent to the node.
    pub name: String,
    /// The node's token (or a token user's), if it requires one.
    pub token: String,
    /// The user to connect as; empty for none. A URL's
    /// `tcp://USER:PASSWORD@HOST:PORT` fills this and [`Self::password`]
    /// when they are empty.
    pub user: String,
    /// The user's password.
    pub password: String,
    /// How long connecting (and the handshake) may take.
    pub connect_timeout: Duration,
    /// How long a subscribe or flush waits for the node's answer.
    pub answer_timeout: Duration,
    /// Reconnect after the connection breaks.
    pub reconnect: bool,
    /// Longest wait between reconnect attempts (waits double up to this).
    pub reconnect_delay_max: Duration,
    /// Bytes of outgoing frames buffered before publishers wait (or, while
    /// disconnected, fail).
    pub write_buffer_bytes_max: usize,
    /// Queue size and policy of each subscription's local queue.
    pub subscription: SubscribeOptions,
    /// Send small events (no headers, no reply asked of `NoResponders`,
    /// payload up to 1 KiB) as compact `PACKED_PUB` records to a node that
    /// speaks protocol 4, the records that wait together joined into one
    /// frame: about 30% of a `PUB`'s bytes on the wire in a stream, for the
    /// same node CPU per event (BENCHMARKS.md, "packed frames pay for
    /// themselves"). Off by default: on the same host the saved bytes have
    /// not been shown to buy events/s.
    pub pack_small_events: bool,
    /// TLS, for `tls://` URLs (others ignore it): the CA the node's
    /// certificate must chain to, and this client's certificate if the node
    /// requires one.
    pub tls: Option<ClientTls>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("connect_timeout", &self.connect_timeout)
            .field("answer_timeout", &self.answer_timeout)
            .field("reconnect", &self.reconnect)
            .field("reconnect_delay_max", &self.reconnect_delay_max)
            .field("write_buffer_bytes_max", &self.write_buffer_bytes_max)
            .field("subscription", &self.subscription)
            .field("pack_small_events", &self.pack_small_events)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            name: format!("starling-client-{}", std::process::id()),
            token: String::new(),
            user: String::new(),
            password: String::new(),
            connect_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(5),
            reconnect: true,
            reconnect_delay_max: Duration::from_secs(2),
            write_buffer_bytes_max: 8 << 20,
            subscription: SubscribeOptions {
                capacity: 65_536,
                ..SubscribeOptions::default()
            },
            tls: None,
            pack_small_events: false,
        }
    }
}

/// What went wrong. Each variant says what happened to state.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The URL is not `tcp://HOST:PORT`, `tls://HOST:PORT` or `unix:///path`.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// TLS with the node failed (its certificate, ours, or the node does
    /// not speak TLS there); nothing was set up.
    #[error("cannot connect to {url}: {reason}")]
    Tls {
        /// Where.
        url: String,
        /// What failed, and often what to do.
        reason: String,
    },
    /// Could not connect; nothing was set up.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        source: std::io::Error,
    },
    /// The node refused the connection or an operation.
    #[error("the node said {}: {reason}", code.name())]
    Server {
        /// The node's error code.
        code: ErrorCode,
        /// The node's reason.
        reason: String,
    },
    /// The subject or pattern is invalid; nothing was sent.
    #[error("invalid subject: {0}")]
    Subject(#[from] SubjectError),
    /// The event breaks a limit; nothing was sent.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// No answer in time; the operation may still complete on the node.
    #[error("no answer from the node in time")]
    Timeout,
    /// A request matched no subscriber anywhere; reported at once.
    #[error("no responders for this subject")]
    NoResponders,
    /// The write buffer is full (the node is holding this connection back)
    /// and the call was not to wait; nothing was sent.
    #[error("the write buffer is full: the node is holding this publisher back")]
    WouldBlock,
    /// Disconnected and the write buffer is full; the event was not sent.
    #[error("disconnected, and the write buffer is full")]
    Disconnected,
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

/// A connection to a node. Cheap to clone; every clone is the same connection.
/// When the last clone and the last [`ClientSubscription`] are dropped, the
/// client flushes what it buffered (waiting at most
/// [`ClientOptions::answer_timeout`]), closes the connection and stops its
/// threads, as [`Client::close`] does; if it is disconnected at that moment,
/// it closes at once and what it buffered is not sent (call
/// [`Client::flush`] first to know it arrived).
#[derive(Clone)]
pub struct Client {
    connection: Arc<Handle>,
}

/// What keeps a connection open: every [`Client`] clone and every
/// [`ClientSubscription`] holds one, the client's own threads do not (they
/// hold the [`Connection`] itself, so it could never be dropped while they
/// run). Dropping the last closes the connection.
#[derive(Debug)]
struct Handle(Arc<Connection>);

impl std::ops::Deref for Handle {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl Handle {
    /// [`Client::flush`]: a `PING`/`PONG` round trip, then the first publish
    /// error the node reported since the last flush.
    fn flush(&self) -> Result<(), ClientError> {
        let completion = self.send_ping()?;
        completion
            .wait_until(Instant::now() + self.options.answer_timeout)
            .unwrap_or(Err(ClientError::Timeout))?;
        self.take_publish_error().map_or(Ok(()), Err)
    }

    /// [`Client::close`]: flush, then close.
    fn close(&self) {
        let _ = self.flush();
        self.0.close();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A flush while disconnected would wait out the whole timeout for a
        // node that may never come back; a drop does not wait for that. A
        // client closed already answers the flush with `Closed` at once.
        if self.is_connected() {
            let _ = self.flush();
        }
        self.0.close();
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.connection.url.to_string())
            .finish_non_exhaustive()
    }
}

/// A subscription through a client. Receive with the methods of the local
/// queue it dereferences to (`recv`, `recv_timeout`, `try_recv`,
/// `recv_async`, `dropped`, ...). Unsubscribes when dropped.
#[derive(Debug)]
pub struct ClientSubscription {
    sid: u64,
    local: starling_core::Mailbox,
    connection: Arc<Handle>,
}

impl Client {
    /// Connects with default options.
    pub fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, ClientOptions::default())
    }

    /// Connects with `options`.
    pub fn connect_with(url: &str, mut options: ClientOptions) -> Result<Client, ClientError> {
        let (url, credentials) = ServerUrl::parse_with_credentials(url)?;
        if let Some(credentials) = credentials
            && options.user.is_empty()
        {
            options.user = credentials.user;
            options.password = credentials.password;
        }
        Ok(Client {
            connection: Arc::new(Handle(Connection::connect(url, options)?)),
        })
    }

    /// Publishes `payload` on `subject`. Waits while the write buffer is
    /// full: the node is holding this connection back because a subscriber
    /// of what it publishes has no room (see the delivery contract).
    pub fn publish(&self, subject: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.connection
            .publish(Room::Wait, subject, None, &[], payload, 0)
    }

    /// Like [`Client::publish`], but never waits: if the write buffer is
    /// full, returns [`ClientError::WouldBlock`] and sends nothing.
    pub fn try_publish(&self, subject: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.connection
            .publish(Room::Now, subject, None, &[], payload, 0)
    }

    /// Publishes with headers.
    pub fn publish_with_headers(
        &self,
        subject: &str,
        headers: &[EventHeader<'_>],
        payload: &[u8],
    ) -> Result<(), ClientError> {
        self.connection
            .publish(Room::Wait, subject, None, headers, payload, 0)
    }

    /// Subscribes to `pattern` with the client's default policy
    /// ([`ClientOptions::subscription`]; lossless `block` unless changed).
    pub fn subscribe(&self, pattern: &str) -> Result<ClientSubscription, ClientError> {
        self.subscribe_with(pattern, None, self.connection.options.subscription.policy)
    }

    /// Joins queue group `group` on `pattern`.
    pub fn queue_subscribe(
        &self,
        pattern: &str,
        group: &str,
    ) -> Result<ClientSubscription, ClientError> {
        self.subscribe_with(
            pattern,
            Some(group),
            self.connection.options.subscription.policy,
        )
    }

    /// Subscribes to `pattern` (in queue group `group`) with `policy`: what
    /// happens to its events, at the node and in the local queue, when this
    /// client cannot take them yet. `Block` holds their publishers back (up
    /// to `max_stall` per episode, then drops and counts until the
    /// subscription catches up); the drop policies never hold anyone back.
    pub fn subscribe_with(
        &self,
        pattern: &str,
        group: Option<&str>,
        policy: SlowConsumerPolicy,
    ) -> Result<ClientSubscription, ClientError> {
        let (sid, local) = self.connection.subscribe(pattern, group, policy)?;
        Ok(ClientSubscription {
            sid,
            local,
            connection: self.connection.clone(),
        })
    }

    /// Sends a request and waits up to `timeout` for the first reply. Fails at
    /// once with [`ClientError::NoResponders`] if no subscriber anywhere
    /// matches `subject`.
    pub fn request(
        &self,
        subject: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Event, ClientError> {
        let deadline = Instant::now() + timeout;
        let pending = self.connection.send_request(subject, payload, timeout)?;
        let outcome = pending.wait_until(deadline);
        self.connection.finish_request(&pending, outcome)
    }

    /// Like [`Client::request`], for async code: fails with
    /// [`ClientError::Timeout`] once `timeout` has passed, whatever else the
    /// connection is receiving meanwhile (the client's timer thread wakes the
    /// task, so it works on any executor).
    pub async fn request_async(
        &self,
        subject: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Event, ClientError> {
        let pending = self.connection.send_request(subject, payload, timeout)?;
        let outcome = pending.completion.wait_async().await;
        self.connection.finish_request(&pending, Some(outcome))
    }

    /// Writes everything published so far and waits until the node has
    /// processed it (a `PING`/`PONG` round trip). If the node refused a
    /// publish since the last flush (a permission, an invalid event), the
    /// first such error is returned: publishing does not wait to hear it.
    pub fn flush(&self) -> Result<(), ClientError> {
        self.connection.flush()
    }

    /// Like [`Client::flush`], for async code, with the same bound: fails
    /// with [`ClientError::Timeout`] if the node has not answered within
    /// [`ClientOptions::answer_timeout`].
    pub async fn flush_async(&self) -> Result<(), ClientError> {
        let completion = self.connection.send_ping()?;
        completion.wait_async().await?;
        self.connection.take_publish_error().map_or(Ok(()), Err)
    }

    /// Events the node dropped for this connection because it read too
    /// slowly, as the node last reported.
    pub fn dropped_by_node(&self) -> u64 {
        self.connection.dropped_by_node()
    }

    /// Times the connection was re-established.
    pub fn reconnects(&self) -> u64 {
        self.connection.reconnects()
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        self.connection.is_connected()
    }

    /// Flushes, then closes the connection and stops the client's threads.
    /// Subscriptions report closed once drained.
    pub fn close(&self) {
        self.connection.close();
    }
}

impl ClientSubscription {
    /// The subscription id on this connection.
    pub fn id(&self) -> u64 {
        self.sid
    }
}

impl Deref for ClientSubscription {
    type Target = starling_core::Mailbox;

    fn deref(&self) -> &starling_core::Mailbox {
        &self.local
    }
}

impl Drop for ClientSubscription {
    fn drop(&mut self) {
        self.connection.unsubscribe(self.sid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_never_show_secrets_in_a_log() {
        let options = ClientOptions {
            token: "t0ken-secret".into(),
            user: "alice".into(),
            password: "pass-secret".into(),
            ..ClientOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
