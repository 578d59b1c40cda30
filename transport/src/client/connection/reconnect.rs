//! Reconnecting after the connection broke: with doubling waits, then the
//! subscriptions again, ahead of whatever was published meanwhile.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rkyv::util::AlignedVec;

use super::Connection;
use crate::client::writer::push_frame;
use crate::client::{ClientError, handshake};
use crate::frame::{Decoder, ErrorCode, FRAME_ALIGN, Kind};
use crate::stream::Stream;

/// The first wait before connecting again.
const FIRST_DELAY: Duration = Duration::from_millis(50);

impl Connection {
    /// Tries to connect again until it succeeds, the client is closed, or
    /// the node refuses its credentials; on success puts the new socket in place and subscribes again ahead of
    /// any buffered frames.
    pub(super) fn reconnect(&self) -> Option<(Arc<Stream>, Decoder)> {
        let mut delay = FIRST_DELAY;
        while !self.closed.load(Ordering::Relaxed) {
            std::thread::sleep(delay);
            delay = (delay * 2).min(self.options.reconnect_delay_max);
            let (stream, decoder, version) = match handshake::open(&self.url, &self.options) {
                Ok(opened) => opened,
                // The node refuses these credentials now (a reload revoked
                // the user, or changed its password): asking again would
                // never succeed, and only keep the node's password checks
                // busy. The client closes, as nats.go does after an
                // authorization error.
                Err(ClientError::Server {
                    code: ErrorCode::Unauthorized,
                    reason,
                }) => {
                    tracing::warn!(url = %self.url, "the node refused this client's credentials, not reconnecting: {reason}");
                    return None;
                }
                Err(_) => continue,
            };
            let mut frames = AlignedVec::<FRAME_ALIGN>::new();
            self.push_inbox_subscribe(&mut frames);
            self.subscriptions.for_each_request(|sid, request| {
                push_frame(&mut frames, Kind::Sub, sid, &request.encode());
            });
            self.packed
                .store(super::packs(&self.options, version), Ordering::Relaxed);
            self.writer.reconnected(stream.clone(), frames);
            self.connected.store(true, Ordering::Relaxed);
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            return Some((stream, decoder));
        }
        None
    }
}
