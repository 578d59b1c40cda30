//! [`Writer`]: the client's write buffer (a [`FrameRing`] that publishers
//! append to without a lock) and the flusher thread that empties it into the
//! socket, so that many publishes share one system call. A publisher that
//! finds nobody draining the ring, and nothing written by a publisher for a
//! while, writes the ring out itself instead of waking the flusher: sparse
//! publishes (a request, its reply) go out without a thread hand-off.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;

use super::ClientError;
use super::ring::{Drainer, FrameRing};
use crate::frame::{FRAME_ALIGN, Header, Kind, PADDING, packed, padded};
use crate::stream::Stream;

/// How long the flusher looks for more frames before it parks: waking a
/// parked thread costs 20–25 µs here (research/limits.md), so under a steady
/// stream of publishes it should rarely park.
const FLUSHER_SPIN: Duration = Duration::from_micros(50);

/// How long after a publisher last wrote the ring out itself the next one
/// wakes the flusher instead: publishes closer together than this are a
/// stream, which the flusher batches into fewer system calls; sparser ones
/// would find the flusher parked (it spins as long) and pay its wake-up.
const PUBLISHER_WRITES_EVERY: Duration = FLUSHER_SPIN;

/// Scratch bytes above which a thread's frame buffer is given back after use
/// (a large event), so that a thread keeps at most this much.
const SCRATCH_KEPT_BYTES: usize = 64 << 10;

/// Bytes of joined frames a drainer writes at a time (see `write_frames`).
const JOINED_WRITE_BYTES: usize = 64 << 10;

thread_local! {
    /// Where a thread builds its next frame before copying it into the ring
    /// (an event's archive length is known only once encoded). Reused: no
    /// allocation per publish.
    static SCRATCH: RefCell<AlignedVec<FRAME_ALIGN>> = RefCell::new(AlignedVec::new());
    /// Where a thread holding the drain role joins `PACKED_PUB` frames
    /// before writing them (see `write_frames`). Reused: no allocation per
    /// write once it has grown to `JOINED_WRITE_BYTES` and a frame.
    static JOINED: RefCell<AlignedVec<FRAME_ALIGN>> = RefCell::new(AlignedVec::new());
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
/// socket the drainer (the flusher, or a publisher) writes it to.
#[derive(Debug)]
pub(super) struct Writer {
    ring: FrameRing,
    /// The socket, and frames to send ahead of the ring after a reconnect.
    /// Locked by the drain role's holder once per write: by the flusher, and
    /// by a sparse publisher writing the ring out itself (uncontended: the
    /// reader takes it only to report a broken connection).
    link: Mutex<Link>,
    /// The flusher thread, to unpark; set when it starts.
    flusher: OnceLock<Thread>,
    /// Whether publishers may write `PACKED_PUB` frames, which a drainer
    /// joins (`write_frames`); without, the frames are not even looked at.
    joins_packed: bool,
    /// True while `link.first` holds frames: work for the drainer like a
    /// committed frame, looked at when it gives the role up.
    first_pending: AtomicBool,
    /// When a publisher last wrote the ring out itself, in nanoseconds
    /// since `epoch` (a hint: Relaxed, orders nothing).
    publisher_wrote_at: AtomicU64,
    epoch: Instant,
    /// Publishers waiting for room, and the lock they wait with on `room`.
    /// Only taken by a publisher that found the ring full, and by the
    /// drainer when it sees such a publisher.
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
    /// A writer to `stream`; `joins_packed` if the client packs small
    /// events (`ClientOptions::pack_small_events`).
    pub(super) fn new(
        stream: Arc<Stream>,
        bytes_max: usize,
        frame_bytes_max: usize,
        joins_packed: bool,
    ) -> Self {
        Self {
            ring: FrameRing::new(bytes_max, frame_bytes_max),
            link: Mutex::new(Link {
                stream: Some(stream),
                first: None,
            }),
            flusher: OnceLock::new(),
            joins_packed,
            first_pending: AtomicBool::new(false),
            publisher_wrote_at: AtomicU64::new(0),
            epoch: Instant::now(),
            waiting_for_room: AtomicUsize::new(0),
            room_lock: Mutex::new(()),
            room: Condvar::new(),
        }
    }

    /// Appends frames written by `write` (into a per-thread scratch buffer)
    /// to the ring, waiting for room as `room` allows if it is full (or
    /// failing if disconnected), and writes them out itself or wakes the
    /// flusher if nobody is draining the ring (see [`Writer::committed`]). The
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
        self.committed(room);
        Ok(())
    }

    /// A publisher committed frames: if nobody drains the ring, it takes the
    /// drain role and writes the ring out itself when publishes are sparse
    /// and it may wait (not for `Room::Now`: `try_publish`, the reader's
    /// `PONG`), or else hands the role to the flusher and wakes it.
    fn committed(&self, room: Room) {
        if !self.ring.drainer_idle() {
            return;
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        let last = self.publisher_wrote_at.load(Ordering::Relaxed);
        let sparse = now.saturating_sub(last) >= PUBLISHER_WRITES_EVERY.as_nanos() as u64;
        if sparse && !matches!(room, Room::Now) && self.ring.claim(Drainer::Publisher) {
            self.publisher_wrote_at.store(now, Ordering::Relaxed);
            self.drain_here();
        } else if self.ring.claim(Drainer::Flusher) {
            self.unpark_flusher();
        }
    }

    /// A publisher holding the drain role: writes what the ring holds, then
    /// gives the role up; frames committed meanwhile go to the flusher (a
    /// stream has begun).
    fn drain_here(&self) {
        if self.drain() == Drained::Disconnected {
            // The flusher waits for the next connection, holding the role.
            self.ring.hand_to(Drainer::Flusher);
            self.unpark_flusher();
        } else if self.give_up_role(Drainer::Flusher) {
            self.unpark_flusher();
        }
    }

    /// Gives the drain role up, and claims it again for `next` if there is
    /// work left (true: the caller must see that `next` drains it).
    fn give_up_role(&self, next: Drainer) -> bool {
        self.ring.release_role();
        // Relaxed: ordered by `release_role`'s fence, which pairs with the
        // one in `drainer_idle` that `reconnected` calls after its store.
        let work =
            self.first_pending.load(Ordering::Relaxed) || self.ring.has_committed(self.ring.head());
        work && self.ring.claim(next)
    }

    /// The drain role's holder: writes a new connection's first frames and
    /// the frames committed at the ring's head into the socket.
    fn drain(&self) -> Drained {
        let (stream, first) = {
            let mut link = self.link.lock().expect("link lock");
            // Relaxed: only looked at by a drainer, which takes this lock
            // before it writes; see `give_up_role` for the re-check.
            self.first_pending.store(false, Ordering::Relaxed);
            (link.stream.clone(), link.first.take())
        };
        let Some(stream) = stream else {
            return Drained::Disconnected;
        };
        // A failed write means the connection broke: the reader notices
        // and reconnects; what was being written is lost in flight.
        if let Some(first) = first {
            let _ = (&*stream).write_all(&first);
        }
        let head = self.ring.head();
        let committed = self.ring.committed(head);
        if committed.to == head {
            return Drained::Nothing;
        }
        let [first, wrapped] = self.ring.slices(committed);
        if self.joins_packed {
            write_frames(&stream, first);
        } else {
            let _ = (&*stream).write_all(first);
        }
        if !wrapped.is_empty() {
            let _ = (&*stream).write_all(wrapped);
        }
        self.ring.release(committed.to);
        self.gave_room();
        Drained::Wrote
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
            // it, either this try sees the drainer's new `head`, or the
            // drainer sees this waiter and notifies under `room_lock`, which
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

    /// The flusher thread: writes committed frames out whenever it holds the
    /// drain role, until `closed`.
    pub(super) fn flush_loop(&self, closed: &AtomicBool) {
        let _ = self.flusher.set(std::thread::current());
        // SYNC POINT (flusher start): pairs with the fence in
        // `wake_flusher`: either this thread sees `closed` below, or a
        // closer sees it registered and unparks it.
        fence(Ordering::SeqCst);
        loop {
            if closed.load(Ordering::Relaxed) {
                return;
            }
            if self.ring.holder() != Drainer::Flusher {
                // Whoever hands it the role (a publisher, `reconnected`)
                // unparks it, and so do `close` and `wake_all`. An unpark
                // before the park makes the park return at once.
                std::thread::park();
                continue;
            }
            match self.drain() {
                Drained::Wrote => {}
                // Holding the role until `reconnected` unparks it.
                Drained::Disconnected => std::thread::park(),
                Drained::Nothing => self.wait_for_frames(),
            }
        }
    }

    /// The flusher found nothing to write: spins a little, then gives the
    /// drain role up unless work came meanwhile.
    fn wait_for_frames(&self) {
        let spin_until = Instant::now() + FLUSHER_SPIN;
        while Instant::now() < spin_until {
            if self.ring.has_committed(self.ring.head()) {
                return;
            }
            std::hint::spin_loop();
        }
        // Claimed back: the loop goes on draining.
        let _ = self.give_up_role(Drainer::Flusher);
    }

    /// A drainer gave room back: wakes publishers waiting for it.
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
            // Relaxed: `drainer_idle`'s fence below orders it before the
            // look at the role; see `give_up_role`.
            self.first_pending.store(true, Ordering::Relaxed);
        }
        // The flusher writes `first` now if nobody drains; a holder other
        // than the flusher sees `first_pending` when it gives the role up.
        // The flusher may be parked holding the role (disconnected): the
        // unpark in `wake_flusher` is for that case.
        if self.ring.drainer_idle() {
            let _ = self.ring.claim(Drainer::Flusher);
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
        self.unpark_flusher();
    }

    /// An unpark before the flusher parks makes that park return at once:
    /// the flusher cannot miss it. Before the flusher has started, there is
    /// nothing to unpark, and its loop looks at the role first.
    fn unpark_flusher(&self) {
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

/// What a [`Writer::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// Wrote frames out (and maybe a new connection's first frames).
    Wrote,
    /// Found nothing committed (but maybe wrote the first frames).
    Nothing,
    /// Found no connection: everything stays buffered.
    Disconnected,
}

/// Writes `frames` (committed frames, the last maybe cut by the ring's end:
/// its rest follows) into `stream`. Consecutive `PACKED_PUB` frames, each a
/// publish's one record, are joined into frames of many records first
/// (`packed::join`): a copy here, on the client, that saves the node a
/// frame's handling per event. Without two in a row, the ring's bytes are
/// written as they are.
fn write_frames(stream: &Stream, frames: &[u8]) {
    if !packed::has_run(frames) {
        let _ = (&*stream).write_all(frames);
        return;
    }
    JOINED.with_borrow_mut(|joined| {
        let mut at = 0;
        loop {
            joined.clear();
            at += packed::join(&frames[at..], joined, JOINED_WRITE_BYTES);
            if joined.is_empty() {
                break;
            }
            let _ = (&*stream).write_all(joined);
        }
        // The frame cut by the ring's end, whose rest the caller writes.
        let _ = (&*stream).write_all(&frames[at..]);
    });
}

/// Appends a whole frame (header, body, padding).
pub(super) fn push_frame(buffer: &mut AlignedVec<FRAME_ALIGN>, kind: Kind, tag: u64, body: &[u8]) {
    buffer.extend_from_slice(&Header::new(kind, tag, body.len()).encode());
    buffer.extend_from_slice(body);
    buffer.extend_from_slice(&PADDING[..padded(body.len()) - body.len()]);
}
