//! The reader thread: reads the node's frames and dispatches them (events to
//! their subscriptions' queues, answers to whoever awaits them), and when
//! the connection breaks, reconnects or gives up.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use starling_core::DirectSource;
use starling_core::event;

use super::routes::Routes;
use super::{Connection, INBOX_SID};
use crate::client::ClientError;
use crate::client::writer::{Room, push_frame};
use crate::frame::control::ErrorBody;
use crate::frame::{Decoder, ErrorCode, Frame, Kind};
use crate::read_buffer::ReadBuffer;
use crate::stream::Stream;

/// How often the reader wakes to see whether the client was closed.
const READ_TICK: Duration = Duration::from_millis(50);
/// Bytes per read.
const READ_BYTES: usize = 64 << 10;

/// What the reader delivers events with.
struct Delivery {
    /// Writes each event into the client's event memory and hands it to its
    /// subscription's queue.
    source: DirectSource,
    /// Each subscription's queue, by id.
    routes: Routes,
    /// A malformed event was reported in the log already (each one is
    /// counted as dropped by its subscription; the log says it once).
    malformed_reported: bool,
}

impl Connection {
    /// The reader thread, until the client is closed or the connection is
    /// lost for good.
    pub(super) fn read_loop(self: Arc<Self>, stream: Arc<Stream>, decoder: Decoder) {
        self.read_until_gone(stream, decoder);
        // No more events will come: each subscription's queue drains, then
        // says it is closed.
        self.subscriptions.close_mailboxes();
    }

    fn read_until_gone(&self, mut stream: Arc<Stream>, mut decoder: Decoder) {
        let mut delivery = Delivery {
            source: self.local.direct_source(),
            routes: Routes::default(),
            malformed_reported: false,
        };
        let mut buffer = ReadBuffer::new(READ_BYTES);
        let _ = stream.set_read_timeout(Some(READ_TICK));
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return;
            }
            let bytes = buffer.bytes_mut();
            match (&*stream).read(bytes) {
                Ok(0) => {}
                Ok(n) => {
                    delivery.routes.refresh(&self.subscriptions);
                    let result = decoder.feed(&bytes[..n], |frame| {
                        self.dispatch(frame, &mut delivery);
                        Ok::<(), ()>(())
                    });
                    // The consumers see this read's events now: one fence
                    // for them all.
                    delivery.source.wake();
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
            self.writer.disconnected();
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

    fn dispatch(&self, frame: Frame<'_>, delivery: &mut Delivery) {
        let tag = frame.header.tag;
        match frame.header.kind {
            Kind::Msg if tag == INBOX_SID => self.reply(frame.body),
            Kind::Msg => self.deliver(tag, frame.body, delivery),
            Kind::Ok => self.answers.answer_ack(tag, Ok(())),
            Kind::Err => {
                let Ok(error) = ErrorBody::decode(frame.body) else {
                    return;
                };
                match error.code {
                    ErrorCode::SlowConsumer => self.dropped_by_node.store(tag, Ordering::Relaxed),
                    ErrorCode::NoResponders => self
                        .answers
                        .answer_request(tag, Err(ClientError::NoResponders)),
                    code => {
                        let failure = || ClientError::Server {
                            code,
                            reason: error.reason.clone(),
                        };
                        self.answers.answer_ack(tag, Err(failure()));
                        self.answers.answer_request(tag, Err(failure()));
                        // A node going away says so with tag 0 too, on
                        // the connection that is ending: that refused no
                        // publish (the reconnect resends what was buffered).
                        if tag == 0 && code != ErrorCode::ShuttingDown {
                            self.answers.refused_publish(failure());
                        }
                    }
                }
            }
            Kind::Pong => self.answers.answer_pong(tag),
            Kind::Ping => {
                // Never wait here: the reader must keep reading, or a node
                // holding this connection back could never drain to it. A
                // full buffer means the connection is far from idle anyway.
                let _ = self.enqueue(Room::Now, |buffer| push_frame(buffer, Kind::Pong, tag, &[]));
            }
            Kind::Hello | Kind::Sub | Kind::Unsub | Kind::Pub | Kind::PackedPub | Kind::Forward => {
            }
        }
    }

    /// An event the node matched for subscription `sid`: validated once,
    /// then handed to that subscription's queue, which applies its policy
    /// and counts what it drops.
    fn deliver(&self, sid: u64, body: &[u8], delivery: &mut Delivery) {
        // None: a subscription that has just ended (the node sent the event
        // before it had our `UNSUB`).
        let Some(inlet) = delivery.routes.get(sid, &self.subscriptions) else {
            return;
        };
        match event::check(body, &self.local.config().limits) {
            Ok(checked) => {
                // Out of event memory: counted as dropped by the subscription.
                let _ = delivery.source.deliver(inlet, checked);
            }
            Err(error) => {
                // The node validated it when it was published: the bytes
                // were damaged on the way, or the node is not what it
                // claims. The event is lost, and counted.
                inlet.count_dropped();
                if !delivery.malformed_reported {
                    delivery.malformed_reported = true;
                    tracing::warn!(url = %self.url, sid, "the node sent a malformed event, dropped and counted by its subscription (later ones are counted, not logged): {error}");
                }
            }
        }
    }

    /// A reply on the inbox: the answer to the request its subject names.
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
        self.answers.answer_request(tag, Ok(archived.to_event()));
    }
}
