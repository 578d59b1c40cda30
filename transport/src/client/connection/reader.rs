//! The reader thread: reads the node's frames and dispatches them (events to
//! their subscriptions' queues, answers to whoever awaits them), and when
//! the connection breaks, reconnects or gives up.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use starling_core::Publisher;
use starling_core::event;

use super::{Connection, INBOX_SID, push_routing_subject};
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

impl Connection {
    /// The reader thread, until the client is closed or the connection is
    /// lost for good.
    pub(super) fn read_loop(self: Arc<Self>, mut stream: Arc<Stream>, mut decoder: Decoder) {
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
            Kind::Hello | Kind::Sub | Kind::Unsub | Kind::Pub | Kind::Forward => {}
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
