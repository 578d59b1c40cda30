//! [`Writer`]: the client's write buffer and the flusher thread that empties
//! it into the socket, so that many publishes share one system call.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use rkyv::util::AlignedVec;

use super::ClientError;
use crate::frame::{FRAME_ALIGN, Header, Kind, PADDING, padded};
use crate::stream::Stream;

/// How long a frame may wait for room in a full write buffer.
#[derive(Debug, Clone, Copy)]
pub(super) enum Room {
    /// As long as it takes (a blocking publish).
    Wait,
    /// Until then, then `ClientError::Timeout` (requests, flushes,
    /// subscribes: they have an answer deadline anyway).
    Until(Instant),
    /// Not at all: `ClientError::WouldBlock` (`try_publish`, and the reader
    /// answering a PING).
    Now,
}

/// Frames on their way to the node: the buffer publishers append to, and
/// the socket the flusher writes it to.
#[derive(Debug)]
pub(super) struct Writer {
    state: Mutex<WriteState>,
    /// The flusher sleeps on it for frames, publishers for room.
    ready: Condvar,
    /// Buffered bytes beyond which publishers wait (or, while disconnected,
    /// fail).
    bytes_max: usize,
}

#[derive(Debug)]
struct WriteState {
    /// None while disconnected.
    stream: Option<Arc<Stream>>,
    /// Frames waiting for the flusher; 16-byte aligned, frames back to back.
    buffer: AlignedVec<FRAME_ALIGN>,
    /// The flusher sleeps on `ready`.
    flusher_waiting: bool,
    /// Publishers sleep on `ready` for room.
    publishers_waiting: usize,
}

impl Writer {
    pub(super) fn new(stream: Arc<Stream>, bytes_max: usize) -> Self {
        Self {
            state: Mutex::new(WriteState {
                stream: Some(stream),
                buffer: AlignedVec::new(),
                flusher_waiting: false,
                publishers_waiting: 0,
            }),
            ready: Condvar::new(),
            bytes_max,
        }
    }

    /// Appends frames to the write buffer with `write`, waiting for room as
    /// `room` allows if it is full (or failing if disconnected), and wakes
    /// the flusher. The buffer is full when the node holds this connection
    /// back (a `Block` subscriber somewhere has no room): that is how a
    /// publisher is slowed to its subscribers' pace.
    pub(super) fn enqueue(
        &self,
        closed: &AtomicBool,
        room: Room,
        write: impl FnOnce(&mut AlignedVec<FRAME_ALIGN>),
    ) -> Result<(), ClientError> {
        let mut state = self.state.lock().expect("write lock");
        loop {
            if closed.load(Ordering::Relaxed) {
                return Err(ClientError::Closed);
            }
            if state.buffer.len() < self.bytes_max {
                break;
            }
            if state.stream.is_none() {
                return Err(ClientError::Disconnected);
            }
            state.publishers_waiting += 1;
            state = match room {
                Room::Wait => self.ready.wait(state).expect("write lock"),
                Room::Until(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        state.publishers_waiting -= 1;
                        return Err(ClientError::Timeout);
                    }
                    self.ready.wait_timeout(state, left).expect("write lock").0
                }
                Room::Now => {
                    state.publishers_waiting -= 1;
                    return Err(ClientError::WouldBlock);
                }
            };
            state.publishers_waiting -= 1;
        }
        write(&mut state.buffer);
        if state.flusher_waiting {
            self.ready.notify_all();
        }
        Ok(())
    }

    /// The flusher thread: writes the buffer out whenever it has frames,
    /// until `closed`.
    pub(super) fn flush_loop(&self, closed: &AtomicBool) {
        let mut sending = AlignedVec::<FRAME_ALIGN>::new();
        loop {
            let stream = {
                let mut state = self.state.lock().expect("write lock");
                loop {
                    if closed.load(Ordering::Relaxed) {
                        return;
                    }
                    if !state.buffer.is_empty() && state.stream.is_some() {
                        break;
                    }
                    state.flusher_waiting = true;
                    state = self.ready.wait(state).expect("write lock");
                    state.flusher_waiting = false;
                }
                std::mem::swap(&mut state.buffer, &mut sending);
                if state.publishers_waiting > 0 {
                    self.ready.notify_all();
                }
                state.stream.clone().expect("checked above")
            };
            // A failed write means the connection broke: the reader notices
            // and reconnects; what was in this buffer is lost in flight.
            let _ = (&*stream).write_all(&sending);
            sending.clear();
        }
    }

    /// The connection broke: frames stay buffered for the next one, and
    /// publishers fail instead of waiting once the buffer is full.
    pub(super) fn disconnected(&self) {
        self.state.lock().expect("write lock").stream = None;
    }

    /// A new connection: `first` (its subscriptions) goes out ahead of what
    /// was buffered meanwhile.
    pub(super) fn reconnected(&self, stream: Arc<Stream>, mut first: AlignedVec<FRAME_ALIGN>) {
        let mut state = self.state.lock().expect("write lock");
        first.extend_from_slice(&state.buffer);
        state.buffer = first;
        state.stream = Some(stream);
        drop(state);
        self.ready.notify_all();
    }

    /// The client is closing (`closed` is set): shuts the socket down, which
    /// ends the reader's wait, and wakes the flusher and every publisher.
    pub(super) fn close(&self) {
        if let Some(stream) = self.state.lock().expect("write lock").stream.take() {
            stream.shutdown();
        }
        self.ready.notify_all();
    }

    /// The connection is gone for good (`closed` is set): wakes the flusher
    /// and every publisher to see it.
    pub(super) fn wake_all(&self) {
        // Taken so that each waiter is either before its check of `closed`
        // or asleep, and cannot miss this wake-up.
        let _state = self.state.lock().expect("write lock");
        self.ready.notify_all();
    }
}

/// Appends a whole frame (header, body, padding).
pub(super) fn push_frame(buffer: &mut AlignedVec<FRAME_ALIGN>, kind: Kind, tag: u64, body: &[u8]) {
    buffer.extend_from_slice(&Header::new(kind, tag, body.len()).encode());
    buffer.extend_from_slice(body);
    buffer.extend_from_slice(&PADDING[..padded(body.len()) - body.len()]);
}
