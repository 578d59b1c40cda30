//! [`Writer`]: the client's write buffer (a [`FrameRing`] that publishers
//! append to without a lock) and the flusher thread that empties it into the
//! socket, so that many publishes share one system call.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;

use super::ClientError;
use super::ring::FrameRing;
use crate::frame::{FRAME_ALIGN, Header, Kind, PADDING, padded};
use crate::stream::Stream;

/// How long the flusher looks for more frames before it parks: waking a
/// parked thread costs 20–25 µs here (research/limits.md), so under a steady
/// stream of publishes it should rarely park.
const FLUSHER_SPIN: Duration = Duration::from_micros(50);

/// Scratch bytes above which a thread's frame buffer is given back after use
/// (a large event), so that a thread keeps at most this much.
const SCRATCH_KEPT_BYTES: usize = 64 << 10;

thread_local! {
    /// Where a thread builds its next frame before copying it into the ring
    /// (an event's archive length is known only once encoded). Reused: no
    /// allocation per publish.
    static SCRATCH: RefCell<AlignedVec<FRAME_ALIGN>> = RefCell::new(AlignedVec::new());
}

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

/// Frames on their way to the node: the ring publishers append to, and the
/// socket the flusher writes it to.
#[derive(Debug)]
pub(super) struct Writer {
    ring: FrameRing,
    /// The socket, and frames to send ahead of the ring after a reconnect.
    /// Locked by the flusher once per write, never by a publish that fits.
    link: Mutex<Link>,
    /// The flusher thread, to unpark; set when it starts.
    flusher: OnceLock<Thread>,
    /// Publishers waiting for room, and the lock they wait with on `room`.
    /// Only taken by a publisher that found the ring full, and by the
    /// flusher when it sees such a publisher.
    waiting_for_room: AtomicUsize,
    room_lock: Mutex<()>,
    room: Condvar,
}

#[derive(Debug)]
struct Link {
    /// None while disconnected.
    stream: Option<Arc<Stream>>,
    /// A new connection's subscriptions, sent before whatever the ring holds.
    first: Option<AlignedVec<FRAME_ALIGN>>,
}

impl Writer {
    pub(super) fn new(stream: Arc<Stream>, bytes_max: usize, frame_bytes_max: usize) -> Self {
        Self {
            ring: FrameRing::new(bytes_max, frame_bytes_max),
            link: Mutex::new(Link {
                stream: Some(stream),
                first: None,
            }),
            flusher: OnceLock::new(),
            waiting_for_room: AtomicUsize::new(0),
            room_lock: Mutex::new(()),
            room: Condvar::new(),
        }
    }

    /// Appends frames written by `write` (into a per-thread scratch buffer)
    /// to the ring, waiting for room as `room` allows if it is full (or
    /// failing if disconnected), and wakes the flusher if it sleeps. The
    /// ring is full when the node holds this connection back (a `Block`
    /// subscriber somewhere has no room): that is how a publisher is slowed
    /// to its subscribers' pace.
    pub(super) fn enqueue(
        &self,
        closed: &AtomicBool,
        room: Room,
        write: impl FnOnce(&mut AlignedVec<FRAME_ALIGN>),
    ) -> Result<(), ClientError> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            write(&mut scratch);
            let pushed = self.push(closed, room, &scratch);
            if scratch.capacity() > SCRATCH_KEPT_BYTES {
                *scratch = AlignedVec::new();
            }
            pushed
        })
    }

    fn push(&self, closed: &AtomicBool, room: Room, frames: &[u8]) -> Result<(), ClientError> {
        // Relaxed: see `Connection::closed`; a publisher that waits looks
        // again under `room_lock`, which `close` and `wake_all` take.
        if closed.load(Ordering::Relaxed) {
            return Err(ClientError::Closed);
        }
        if !self.ring.try_push(frames) {
            self.push_when_room(closed, room, frames)?;
        }
        if self.ring.wake_needed()
            && let Some(flusher) = self.flusher.get()
        {
            flusher.unpark();
        }
        Ok(())
    }

    /// The slow path of `push`: the ring is full.
    fn push_when_room(
        &self,
        closed: &AtomicBool,
        room: Room,
        frames: &[u8],
    ) -> Result<(), ClientError> {
        let mut guard = self.room_lock.lock().expect("room lock");
        loop {
            if closed.load(Ordering::Relaxed) {
                return Err(ClientError::Closed);
            }
            self.waiting_for_room.fetch_add(1, Ordering::Relaxed);
            // SYNC POINT (room): pairs with the fence in `gave_room`. After
            // it, either this try sees the flusher's new `head`, or the
            // flusher sees this waiter and notifies under `room_lock`, which
            // this thread holds until it waits.
            fence(Ordering::SeqCst);
            let pushed = self.ring.try_push(frames);
            if !pushed && self.link.lock().expect("link lock").stream.is_none() {
                self.waiting_for_room.fetch_sub(1, Ordering::Relaxed);
                return Err(ClientError::Disconnected);
            }
            if pushed {
                self.waiting_for_room.fetch_sub(1, Ordering::Relaxed);
                return Ok(());
            }
            guard = match room {
                Room::Wait => self.room.wait(guard).expect("room lock"),
                Room::Until(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.waiting_for_room.fetch_sub(1, Ordering::Relaxed);
                        return Err(ClientError::Timeout);
                    }
                    self.room.wait_timeout(guard, left).expect("room lock").0
                }
                Room::Now => {
                    self.waiting_for_room.fetch_sub(1, Ordering::Relaxed);
                    return Err(ClientError::WouldBlock);
                }
            };
            self.waiting_for_room.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The flusher thread: writes committed frames out as they come, until
    /// `closed`.
    pub(super) fn flush_loop(&self, closed: &AtomicBool) {
        let _ = self.flusher.set(std::thread::current());
        // SYNC POINT (flusher start): pairs with the fence in
        // `wake_flusher`: either this thread sees `closed` below, or a
        // closer sees it registered and unparks it.
        fence(Ordering::SeqCst);
        let mut head = 0u64;
        loop {
            if closed.load(Ordering::Relaxed) {
                return;
            }
            let (stream, first) = {
                let mut link = self.link.lock().expect("link lock");
                (link.stream.clone(), link.first.take())
            };
            let Some(stream) = stream else {
                // Disconnected: `reconnected` and `close` unpark.
                std::thread::park();
                continue;
            };
            // A failed write means the connection broke: the reader notices
            // and reconnects; what was being written is lost in flight.
            if let Some(first) = first {
                let _ = (&*stream).write_all(&first);
            }
            let committed = self.ring.committed(head);
            if committed.to == head {
                self.wait_for_frames(closed, head);
                continue;
            }
            for slice in self.ring.slices(committed) {
                if !slice.is_empty() {
                    let _ = (&*stream).write_all(slice);
                }
            }
            head = committed.to;
            self.ring.release(head);
            self.gave_room();
        }
    }

    /// The flusher found nothing at `head`: spins a little, then parks until
    /// a publisher commits a frame (or `close`, `reconnected` unpark).
    fn wait_for_frames(&self, closed: &AtomicBool, head: u64) {
        let spin_until = Instant::now() + FLUSHER_SPIN;
        while Instant::now() < spin_until {
            if self.ring.has_committed(head) {
                return;
            }
            std::hint::spin_loop();
        }
        self.ring.prepare_to_sleep();
        if !self.ring.has_committed(head) && !closed.load(Ordering::Relaxed) {
            std::thread::park();
        }
        self.ring.awake();
    }

    /// The flusher gave room back: wakes publishers waiting for it.
    fn gave_room(&self) {
        // SYNC POINT (room): pairs with the fence in `push_when_room`.
        fence(Ordering::SeqCst);
        if self.waiting_for_room.load(Ordering::Relaxed) > 0 {
            let _guard = self.room_lock.lock().expect("room lock");
            self.room.notify_all();
        }
    }

    /// The connection broke: frames stay buffered for the next one, and
    /// publishers fail instead of waiting once the buffer is full.
    pub(super) fn disconnected(&self) {
        self.link.lock().expect("link lock").stream = None;
    }

    /// A new connection: `first` (its subscriptions) goes out ahead of what
    /// was buffered meanwhile.
    pub(super) fn reconnected(&self, stream: Arc<Stream>, first: AlignedVec<FRAME_ALIGN>) {
        {
            let mut link = self.link.lock().expect("link lock");
            link.first = Some(first);
            link.stream = Some(stream);
        }
        self.wake_flusher();
        self.wake_publishers();
    }

    /// The client is closing (`closed` is set): shuts the socket down, which
    /// ends the reader's wait, and wakes the flusher and every publisher.
    pub(super) fn close(&self) {
        if let Some(stream) = self.link.lock().expect("link lock").stream.take() {
            stream.shutdown();
        }
        self.wake_all();
    }

    /// The connection is gone for good (`closed` is set): wakes the flusher
    /// and every publisher to see it.
    pub(super) fn wake_all(&self) {
        self.wake_flusher();
        self.wake_publishers();
    }

    fn wake_flusher(&self) {
        // SYNC POINT (flusher start): pairs with the fence in `flush_loop`.
        fence(Ordering::SeqCst);
        // An unpark before the flusher parks makes that park return at
        // once: the flusher cannot miss it.
        if let Some(flusher) = self.flusher.get() {
            flusher.unpark();
        }
    }

    fn wake_publishers(&self) {
        // Taken so that each waiter is either before its check of `closed`
        // (or of the link) or asleep, and cannot miss this wake-up.
        let _guard = self.room_lock.lock().expect("room lock");
        self.room.notify_all();
    }
}

/// Appends a whole frame (header, body, padding).
pub(super) fn push_frame(buffer: &mut AlignedVec<FRAME_ALIGN>, kind: Kind, tag: u64, body: &[u8]) {
    buffer.extend_from_slice(&Header::new(kind, tag, body.len()).encode());
    buffer.extend_from_slice(body);
    buffer.extend_from_slice(&PADDING[..padded(body.len()) - body.len()]);
}
