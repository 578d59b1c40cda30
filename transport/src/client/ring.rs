//! [`FrameRing`]: the client's write buffer, a byte ring that any number of
//! publishing threads append whole frames to without a lock, and that the
//! flusher thread alone empties into the socket.
//!
//! A publisher reserves its frame's bytes by advancing `tail` (a
//! compare-and-swap: uncontended with one publishing thread), copies the
//! frame in, and then *commits* it by storing its length in the mark of the
//! slot where it starts (one mark per 16-byte slot; frames are 16-byte
//! aligned and padded). Reservations are contiguous, so the flusher walks
//! from `head` frame by frame through the marks and stops at the first frame
//! not yet committed: every frame goes out exactly once and in reservation
//! order, so each thread's frames keep their order. Once the bytes are
//! written, the flusher clears the marks it walked and advances `head`,
//! which gives the room back.
//!
//! One thread at a time empties the ring: the one holding the *drain role*
//! ([`Drainer`]): the flusher thread, or a publishing thread that found
//! nobody draining and writes the ring out itself (which spares a sleeping
//! flusher's wake-up, 20–25 µs on this machine, when publishes are sparse:
//! a request, its reply). The role is given up with the Dekker handshake of
//! core's `Signal`: the holder stores `Idle`, fences, and looks at the next
//! mark again (claiming the role back if a frame is there); a publisher
//! commits, fences, and claims the role if it reads `Idle`. At least one of
//! them sees the other's write, so a committed frame never waits for a
//! drainer that has gone. The loom models below (`loom_tests`) check the
//! commit protocol and the hand-over of the role.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

#[cfg(loom)]
use loom::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};

use crate::frame::FRAME_ALIGN;

/// Keeps the flusher's and the publishers' hot counters on separate cache
/// lines.
#[derive(Debug)]
#[repr(align(128))]
struct Padded<T>(T);

/// Who holds the drain role (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Drainer {
    /// Nobody: the next publisher to commit a frame claims the role.
    Idle = 0,
    /// The flusher thread.
    Flusher = 1,
    /// A publishing thread, writing the ring out itself.
    Publisher = 2,
}

impl Drainer {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Drainer::Flusher,
            2 => Drainer::Publisher,
            _ => Drainer::Idle,
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct FrameRing {
    /// `capacity` bytes, 16-byte aligned, allocated zeroed (pages are only
    /// made resident as the ring first reaches them).
    bytes: NonNull<u8>,
    capacity: usize,
    /// Committed frame lengths by starting slot (byte offset / 16); 0 for
    /// "nothing committed here".
    marks: Box<[AtomicU32]>,
    /// Bytes reserved since the start. Advanced by publishers only; nobody
    /// else reads it, so it orders nothing (Relaxed).
    tail: Padded<AtomicU64>,
    /// Bytes written out and given back since the start. Stored by the
    /// flusher (Release), loaded by publishers reserving room (Acquire).
    head: Padded<AtomicU64>,
    /// The [`Drainer`] holding the drain role; see the module documentation.
    drainer: Padded<AtomicU8>,
    /// Bytes buffered beyond which a reservation fails.
    bytes_max: usize,
}

// SAFETY: the bytes are only reached through the reservation protocol: a
// publisher writes only the bytes it reserved (exclusively its own between
// its reservation and its commit), and the flusher reads only committed
// bytes, which nobody writes again until `head` has passed them.
unsafe impl Send for FrameRing {}
// SAFETY: as for Send.
unsafe impl Sync for FrameRing {}

/// The bytes of committed frames the flusher may write out, as at most two
/// slices (the ring wraps once at most); see [`FrameRing::committed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Committed {
    /// Where they start (a `head` value).
    pub(crate) from: u64,
    /// Where they end, and `head` after [`FrameRing::release`].
    pub(crate) to: u64,
}

impl FrameRing {
    /// A ring that holds `bytes_max` buffered bytes plus one more frame of
    /// up to `frame_bytes_max`: whatever is buffered, a frame that is let in
    /// always fits.
    pub(crate) fn new(bytes_max: usize, frame_bytes_max: usize) -> Self {
        let capacity = (bytes_max + frame_bytes_max)
            .max(FRAME_ALIGN)
            .next_power_of_two();
        let layout = Layout::from_size_align(capacity, FRAME_ALIGN).expect("a valid ring layout");
        // SAFETY: the layout's size is at least FRAME_ALIGN, not zero.
        let bytes = NonNull::new(unsafe { alloc_zeroed(layout) })
            .unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self {
            bytes,
            capacity,
            marks: (0..capacity / FRAME_ALIGN)
                .map(|_| AtomicU32::new(0))
                .collect(),
            tail: Padded(AtomicU64::new(0)),
            head: Padded(AtomicU64::new(0)),
            drainer: Padded(AtomicU8::new(Drainer::Idle as u8)),
            bytes_max,
        }
    }

    /// Appends `frame` (whole frames, a multiple of 16 bytes long) and
    /// commits it, or returns false if `bytes_max` bytes are buffered. After
    /// a true, the caller must call [`FrameRing::drainer_idle`] and, if it
    /// is, [`FrameRing::claim`].
    pub(crate) fn try_push(&self, frame: &[u8]) -> bool {
        debug_assert!(frame.len().is_multiple_of(FRAME_ALIGN) && !frame.is_empty());
        let len = frame.len() as u64;
        let mut tail = self.tail.0.load(Ordering::Relaxed);
        loop {
            // Acquire: pairs with the Release store in `release`, so that
            // the flusher is done with these bytes (and their marks are
            // clear) before they are written again.
            let head = self.head.0.load(Ordering::Acquire);
            // `tail` may be older than `head`: another publisher can push,
            // and a drainer release those bytes, between the two loads.
            // Such a tail is stale, so the exchange below fails and reloads
            // it; it must not read as a full ring (a spurious wait, and an
            // overflow in debug builds).
            if tail.saturating_sub(head) >= self.bytes_max as u64 {
                return false;
            }
            // Relaxed: the tail only hands out disjoint ranges; what the
            // flusher needs to see, the mark's Release store publishes.
            match self.tail.0.compare_exchange_weak(
                tail,
                tail + len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => tail = now,
            }
        }
        let start = self.offset(tail);
        let first = frame.len().min(self.capacity - start);
        // SAFETY: [tail, tail + len) is this thread's reservation: no other
        // publisher got it, and the flusher reads it only once committed
        // below. `head` (loaded above) is at most `bytes_max` behind `tail`
        // and the frame fits in the rest of the capacity (see `new`), so
        // these bytes are free; the ring wraps at most once in a frame.
        unsafe {
            std::ptr::copy_nonoverlapping(frame.as_ptr(), self.bytes.as_ptr().add(start), first);
            std::ptr::copy_nonoverlapping(
                frame.as_ptr().add(first),
                self.bytes.as_ptr(),
                frame.len() - first,
            );
        }
        let len = u32::try_from(frame.len()).expect("frames are far below 4 GiB");
        // Release: pairs with the Acquire load in `committed`: the frame's
        // bytes are in place before the flusher sees its length.
        self.marks[start / FRAME_ALIGN].store(len, Ordering::Release);
        true
    }

    /// Publisher side, after a successful push (or other work for the
    /// drainer): true if nobody holds the drain role, and the caller must
    /// try to [`FrameRing::claim`] it. False means the holder will see the
    /// work when it gives the role up, if not before.
    pub(crate) fn drainer_idle(&self) -> bool {
        // SYNC POINT (drain role): pairs with the fence in `release_role`.
        // After it, either this load sees the holder's `Idle`, or the
        // holder's re-check sees the mark (or other work) stored before.
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence; `claim` acquires.
        self.drainer.0.load(Ordering::Relaxed) == Drainer::Idle as u8
    }

    /// Takes the drain role for `drainer` if nobody holds it; only one
    /// claimant wins.
    pub(crate) fn claim(&self, drainer: Drainer) -> bool {
        // Acquire: pairs with the Release store in `release_role` (and
        // `hand_to`): the last holder's cleared marks and `head` are seen.
        self.drainer
            .0
            .compare_exchange(
                Drainer::Idle as u8,
                drainer as u8,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Holder side: passes the role straight to `drainer`.
    pub(crate) fn hand_to(&self, drainer: Drainer) {
        // Release: pairs with the Acquire load in `holder`.
        self.drainer.0.store(drainer as u8, Ordering::Release);
    }

    /// Who holds the drain role now.
    pub(crate) fn holder(&self) -> Drainer {
        // Acquire: pairs with the Release store in `hand_to` (and the CAS
        // in `claim`, whose winner is the reading thread itself).
        Drainer::from_u8(self.drainer.0.load(Ordering::Acquire))
    }

    /// Holder side: gives the drain role up. The caller must then look for
    /// work again ([`FrameRing::has_committed`] at [`FrameRing::head`], and
    /// whatever else it drains) and [`FrameRing::claim`] the role back if
    /// there is some.
    pub(crate) fn release_role(&self) {
        // Release: pairs with the Acquire CAS in `claim`.
        self.drainer.0.store(Drainer::Idle as u8, Ordering::Release);
        // SYNC POINT (drain role): pairs with the fence in `drainer_idle`.
        fence(Ordering::SeqCst);
    }

    /// Drainer side: the committed frames from `from` ([`FrameRing::head`])
    /// on, up to the first frame not yet committed or the
    /// end of the ring's memory, whichever comes first (so one slice). Clears
    /// the marks it passes: the room is not given back before `release`.
    pub(crate) fn committed(&self, from: u64) -> Committed {
        let mut to = from;
        loop {
            let start = self.offset(to);
            // Acquire: pairs with the Release store in `try_push`.
            let len = self.marks[start / FRAME_ALIGN].load(Ordering::Acquire);
            if len == 0 {
                break;
            }
            // Relaxed: no publisher writes this mark again before `head`
            // has passed it (`release`'s Release store orders this).
            self.marks[start / FRAME_ALIGN].store(0, Ordering::Relaxed);
            to += u64::from(len);
            if start + len as usize >= self.capacity {
                break;
            }
        }
        Committed { from, to }
    }

    /// The bytes of `committed`, as one or two slices (two when a frame
    /// wraps past the ring's end).
    pub(crate) fn slices(&self, committed: Committed) -> [&[u8]; 2] {
        let start = self.offset(committed.from);
        let len = (committed.to - committed.from) as usize;
        let first = len.min(self.capacity - start);
        // SAFETY: these frames are committed (their marks' Acquire loads
        // in `committed` saw their lengths) and nobody writes them again
        // until `release` moves `head` past them; only the drain role's holder, the
        // caller, calls `release`.
        unsafe {
            [
                std::slice::from_raw_parts(self.bytes.as_ptr().add(start), first),
                std::slice::from_raw_parts(self.bytes.as_ptr(), len - first),
            ]
        }
    }

    /// Drainer side: gives the bytes up to `to` back to publishers.
    pub(crate) fn release(&self, to: u64) {
        // Release: pairs with the Acquire load in `try_push`.
        self.head.0.store(to, Ordering::Release);
    }

    /// Where the next frame to write out starts: the end of what the last
    /// drainer released.
    pub(crate) fn head(&self) -> u64 {
        // Acquire: pairs with the Release store in `release` (a drainer
        // that took the role over sees it through the role's Acquire too).
        self.head.0.load(Ordering::Acquire)
    }

    /// True if a frame is committed at `from` ([`FrameRing::head`]).
    pub(crate) fn has_committed(&self, from: u64) -> bool {
        // Acquire: pairs with the Release store in `try_push` (the caller
        // goes on to read the frame through `committed`).
        self.marks[self.offset(from) / FRAME_ALIGN].load(Ordering::Acquire) != 0
    }

    fn offset(&self, position: u64) -> usize {
        (position % self.capacity as u64) as usize
    }
}

impl Drop for FrameRing {
    fn drop(&mut self) {
        let layout =
            Layout::from_size_align(self.capacity, FRAME_ALIGN).expect("the layout of `new`");
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.bytes.as_ptr(), layout) };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A frame of `slots` 16-byte slots naming its publisher and number.
    fn frame(publisher: u64, number: u64, slots: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; slots * FRAME_ALIGN];
        for slot in bytes.chunks_exact_mut(FRAME_ALIGN) {
            slot[..8].copy_from_slice(&publisher.to_le_bytes());
            slot[8..].copy_from_slice(&number.to_le_bytes());
        }
        bytes
    }

    /// Several threads push frames of different sizes into a ring small
    /// enough to wrap and fill thousands of times; a flusher drains it like
    /// `Writer::flush_loop`. The model: every frame arrives exactly once,
    /// whole, and each publisher's frames in the order it pushed them.
    #[test]
    fn concurrent_publishers_lose_duplicate_and_reorder_nothing() {
        const PUBLISHERS: u64 = 4;
        const FRAMES: u64 = 20_000;
        let ring = Arc::new(FrameRing::new(256, 4 * FRAME_ALIGN));
        let done = Arc::new(AtomicUsize::new(0));
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|publisher| {
                let ring = ring.clone();
                let done = done.clone();
                std::thread::spawn(move || {
                    for number in 0..FRAMES {
                        let frame = frame(publisher, number, 1 + (number % 4) as usize);
                        while !ring.try_push(&frame) {
                            std::thread::yield_now();
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        let mut next = [0u64; PUBLISHERS as usize];
        let mut received = Vec::new();
        let mut head = 0;
        loop {
            let committed = ring.committed(head);
            if committed.to == head {
                if done.load(Ordering::Relaxed) == PUBLISHERS as usize && !ring.has_committed(head)
                {
                    break;
                }
                std::thread::yield_now();
                continue;
            }
            for slice in ring.slices(committed) {
                received.extend_from_slice(slice);
            }
            head = committed.to;
            ring.release(head);
            // Walk whole frames: a frame's slots all name the same event, and
            // its length is 1 + number % 4 slots.
            let mut at = 0;
            while at < received.len() {
                let publisher = u64::from_le_bytes(received[at..at + 8].try_into().unwrap());
                let number = u64::from_le_bytes(received[at + 8..at + 16].try_into().unwrap());
                assert_eq!(number, next[publisher as usize], "publisher {publisher}");
                let len = (1 + (number % 4) as usize) * FRAME_ALIGN;
                assert_eq!(&received[at..at + len], frame(publisher, number, len / 16));
                next[publisher as usize] += 1;
                at += len;
            }
            received.clear();
        }
        for publisher in publishers {
            publisher.join().unwrap();
        }
        assert_eq!(next, [FRAMES; PUBLISHERS as usize]);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model checks of the commit protocol (marks, `tail`, `head`), run with
    //! `RUSTFLAGS="--cfg loom -C overflow-checks=on" cargo test -p starling-transport --release --lib loom_tests`
    //! (scripts/test runs them). loom does not see the ring's raw bytes; it
    //! checks the atomics, and the tests check the bytes read.
    //!
    //! The flusher's park is not modelled: it parks only while it does not
    //! hold the drain role, and whoever hands the role to it unparks it. The
    //! role's hand-over is (`the_drain_role_strands_no_frame`). An earlier
    //! model of a flag-only park handshake failed in loom 0.7.3 where the
    //! C++ fence rules forbid it (a Relaxed load after a SeqCst fence missed
    //! a store made before an earlier fence, once the loading thread had
    //! swapped that flag itself); this one passes.

    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// Drains `frames` one-slot frames; returns their first bytes in the
    /// order written out.
    fn drain(ring: &FrameRing, frames: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut head = 0;
        while out.len() < frames {
            let committed = ring.committed(head);
            if committed.to == head {
                thread::yield_now();
                continue;
            }
            for slice in ring.slices(committed) {
                out.extend(slice.chunks_exact(FRAME_ALIGN).map(|slot| slot[0]));
            }
            head = committed.to;
            ring.release(head);
        }
        out
    }

    /// Publishes `frames` one-slot frames named by their numbers from a
    /// thread of its own.
    fn publish(
        ring: &Arc<FrameRing>,
        frames: std::ops::RangeInclusive<u8>,
    ) -> thread::JoinHandle<()> {
        let ring = ring.clone();
        thread::spawn(move || {
            for name in frames {
                while !ring.try_push(&[name; FRAME_ALIGN]) {
                    thread::yield_now();
                }
            }
        })
    }

    /// Two publishers, one frame each, into a ring with room for one frame
    /// buffered (so the second may wait for the first to go out, and reuses
    /// its memory): both arrive, once each.
    #[test]
    fn frames_arrive_once() {
        loom::model(|| {
            let ring = Arc::new(FrameRing::new(FRAME_ALIGN, FRAME_ALIGN));
            let publishers = [publish(&ring, 1..=1), publish(&ring, 2..=2)];
            let mut out = drain(&ring, 2);
            for publisher in publishers {
                publisher.join().unwrap();
            }
            out.sort_unstable();
            assert_eq!(out, [1, 2]);
        });
    }

    /// What `Writer::drain` does with the ring, for the drain role's holder;
    /// `draining` catches two holders at once.
    fn drain_held(ring: &FrameRing, out: &loom::sync::Mutex<Vec<u8>>, draining: &AtomicU8) {
        assert_eq!(
            draining.swap(1, Ordering::Relaxed),
            0,
            "two drainers at once"
        );
        let committed = ring.committed(ring.head());
        for slice in ring.slices(committed) {
            let mut out = out.lock().unwrap();
            out.extend(slice.chunks_exact(FRAME_ALIGN).map(|slot| slot[0]));
        }
        ring.release(committed.to);
        draining.store(0, Ordering::Relaxed);
    }

    /// `Writer::give_up_role`, without a reconnect's first frames.
    fn give_up_role(ring: &FrameRing, next: Drainer) -> bool {
        ring.release_role();
        ring.has_committed(ring.head()) && ring.claim(next)
    }

    /// Two publishers commit a frame each and write the ring out themselves
    /// when they win the idle role, handing it to the flusher if a frame
    /// came meanwhile (as `Writer::committed` and `drain_here` do), while
    /// the flusher, holding the role at first, drains until it gives the
    /// role up. Then the flusher drains whenever it was handed the role.
    /// Never two drainers at once, and in the end the role is idle and both
    /// frames are out, once each: no frame is stranded by a role given up.
    #[test]
    fn the_drain_role_strands_no_frame() {
        // Three threads: unbounded, the search takes far too long.
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(2);
        model.check(|| {
            let ring = Arc::new(FrameRing::new(2 * FRAME_ALIGN, FRAME_ALIGN));
            let out = Arc::new(loom::sync::Mutex::new(Vec::new()));
            let draining = Arc::new(AtomicU8::new(0));
            assert!(ring.claim(Drainer::Flusher));
            let publishers: Vec<_> = [1u8, 2]
                .into_iter()
                .map(|name| {
                    let (ring, out, draining) = (ring.clone(), out.clone(), draining.clone());
                    thread::spawn(move || {
                        assert!(ring.try_push(&[name; FRAME_ALIGN]));
                        if ring.drainer_idle() && ring.claim(Drainer::Publisher) {
                            drain_held(&ring, &out, &draining);
                            let _ = give_up_role(&ring, Drainer::Flusher);
                        }
                    })
                })
                .collect();
            // The flusher: one drain, then the role goes (or is claimed back).
            drain_held(&ring, &out, &draining);
            while give_up_role(&ring, Drainer::Flusher) {
                drain_held(&ring, &out, &draining);
            }
            for publisher in publishers {
                publisher.join().unwrap();
            }
            // What a parked flusher does when it is handed the role.
            while ring.holder() == Drainer::Flusher {
                drain_held(&ring, &out, &draining);
                let _ = give_up_role(&ring, Drainer::Flusher);
            }
            let mut out = out.lock().unwrap().clone();
            out.sort_unstable();
            assert_eq!(out, [1, 2]);
        });
    }

    /// One publisher, two frames: they go out in order.
    #[test]
    fn one_publishers_frames_keep_their_order() {
        loom::model(|| {
            let ring = Arc::new(FrameRing::new(2 * FRAME_ALIGN, FRAME_ALIGN));
            let publisher = publish(&ring, 1..=2);
            assert_eq!(drain(&ring, 2), [1, 2]);
            publisher.join().unwrap();
        });
    }
}
