//! [`Outbox`]: what a session has to send, in order, as slices to gather.
//!
//! A delivered event goes out as three slices: a 16-byte `MSG` header kept
//! here, the archive read in place from the node's event memory (no copy), and
//! padding from a static block of zeros. Control frames are small owned
//! buffers. A socket may take any prefix of the bytes; [`Outbox::advance`]
//! drops what was fully written, releasing the events' memory.
//!
//! The entries live in a deque allocated only while it is empty, so queued
//! entries never move: an io_uring send in flight holds pointers to the
//! headers stored here. It has no memory until the first frame is queued (a
//! connection that never hears from the node costs little), and gives it
//! back when the connection goes quiet. (Starting small and growing while
//! deliveries outgrew it lost events in the stopped-node backpressure test;
//! not understood yet, so not done.)

use std::collections::VecDeque;

use starling_core::EventRef;

use crate::frame::{HEADER_BYTES, Header, Kind, PADDING, padded};

/// Entries kept free for control frames when messages fill the rest.
const CONTROL_RESERVE: usize = 16;

/// A session's pending output.
#[derive(Debug)]
pub(crate) struct Outbox {
    entries: VecDeque<Entry>,
    /// Most entries queued at once.
    limit: usize,
    /// Bytes of the front entry already written.
    front_written: usize,
    /// Bytes not yet written, all entries together.
    queued_bytes: usize,
}

#[derive(Debug)]
enum Entry {
    /// A whole control frame: header, body, padding.
    Control(Vec<u8>),
    /// A delivered event.
    Message {
        header: [u8; HEADER_BYTES],
        event: EventRef,
    },
}

/// Why a control frame could not be queued: the peer is not reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

impl Entry {
    fn len(&self) -> usize {
        match self {
            Entry::Control(frame) => frame.len(),
            Entry::Message { event, .. } => HEADER_BYTES + padded(event.archive().len()),
        }
    }

    /// Calls `visit` with each slice of this entry from byte `skip` on; stops
    /// early if `visit` returns false. Returns false if it stopped early.
    fn slices<'a>(&'a self, mut skip: usize, visit: &mut impl FnMut(&'a [u8]) -> bool) -> bool {
        let parts: [&'a [u8]; 3] = match self {
            Entry::Control(frame) => [frame, &[], &[]],
            Entry::Message { header, event } => {
                let archive = event.archive();
                [
                    header,
                    archive,
                    &PADDING[..padded(archive.len()) - archive.len()],
                ]
            }
        };
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            if !visit(&part[skip..]) {
                return false;
            }
            skip = 0;
        }
        true
    }
}

impl Outbox {
    /// An outbox that will hold at most `entries_max` entries. Allocates
    /// nothing yet.
    pub(crate) fn new(entries_max: usize) -> Self {
        assert!(
            entries_max > CONTROL_RESERVE,
            "an outbox needs room beyond its control reserve"
        );
        Self {
            entries: VecDeque::new(),
            limit: entries_max,
            front_written: 0,
            queued_bytes: 0,
        }
    }

    /// True if another message fits (control frames have a reserve).
    pub(crate) fn has_room_for_message(&self) -> bool {
        self.entries.len() + CONTROL_RESERVE < self.limit
    }

    /// True if a control frame fits.
    pub(crate) fn has_room_for_control(&self) -> bool {
        self.entries.len() < self.limit
    }

    /// Lets go of the entries' memory if nothing is queued: for a
    /// connection gone quiet.
    pub(crate) fn release_memory(&mut self) {
        if self.entries.is_empty() {
            self.entries = VecDeque::new();
        }
    }

    /// Makes room for `limit` entries, only while empty: queued entries
    /// must not move.
    fn reserve(&mut self) {
        if self.entries.is_empty() {
            self.entries.reserve_exact(self.limit);
        }
    }

    /// Queues a control frame.
    pub(crate) fn push_frame(&mut self, kind: Kind, tag: u64, body: &[u8]) -> Result<(), Full> {
        if !self.has_room_for_control() {
            return Err(Full);
        }
        self.reserve();
        let mut frame = Vec::with_capacity(HEADER_BYTES + padded(body.len()));
        frame.extend_from_slice(&Header::new(kind, tag, body.len()).encode());
        frame.extend_from_slice(body);
        frame.extend_from_slice(&PADDING[..padded(body.len()) - body.len()]);
        self.queued_bytes += frame.len();
        self.entries.push_back(Entry::Control(frame));
        Ok(())
    }

    /// Queues a delivered event for subscription `sid`. The caller checks
    /// [`Outbox::has_room_for_message`] first.
    pub(crate) fn push_message(&mut self, sid: u64, event: EventRef) {
        assert!(
            self.entries.len() + CONTROL_RESERVE < self.limit,
            "checked by the caller"
        );
        self.reserve();
        let header = Header::new(Kind::Msg, sid, event.archive().len()).encode();
        let entry = Entry::Message { header, event };
        self.queued_bytes += entry.len();
        self.entries.push_back(entry);
    }

    /// True if nothing is waiting to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes waiting to be written.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Calls `visit` with the unwritten bytes as slices, in order, until it
    /// returns false or the bytes run out.
    pub(crate) fn for_each_slice<'a>(&'a self, mut visit: impl FnMut(&'a [u8]) -> bool) {
        let mut skip = self.front_written;
        for entry in &self.entries {
            if !entry.slices(skip, &mut visit) {
                return;
            }
            skip = 0;
        }
    }

    /// `written` more bytes went out: drops the entries now fully written
    /// (releasing their events) and remembers how far into the next one.
    pub(crate) fn advance(&mut self, written: usize) {
        assert!(written <= self.queued_bytes, "wrote more than was queued");
        self.queued_bytes -= written;
        let mut written = written + self.front_written;
        while let Some(front) = self.entries.front() {
            let len = front.len();
            if written < len {
                break;
            }
            written -= len;
            self.entries.pop_front();
        }
        self.front_written = written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_core::Bus;

    fn gather(outbox: &Outbox, max_slices: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut slices = 0;
        outbox.for_each_slice(|slice| {
            bytes.extend_from_slice(slice);
            slices += 1;
            slices < max_slices
        });
        bytes
    }

    #[test]
    fn partial_writes_resume_where_they_stopped_and_release_events() {
        let bus = Bus::default();
        let sub = bus.subscribe("a").unwrap();
        bus.publish("a", b"one").unwrap();
        bus.publish("a", b"two, longer than one").unwrap();
        let mut outbox = Outbox::new(32);
        outbox.push_frame(Kind::Pong, 7, b"").unwrap();
        outbox.push_message(1, sub.try_recv().unwrap());
        outbox.push_message(2, sub.try_recv().unwrap());
        let all = gather(&outbox, usize::MAX);
        assert_eq!(all.len(), outbox.queued_bytes());
        assert_eq!(all.len() % 16, 0, "frames are padded to 16");
        // Write it out in odd-sized pieces: the bytes must come out the same.
        let mut written = Vec::new();
        let mut step = 1;
        while !outbox.is_empty() {
            let next = gather(&outbox, 2);
            let n = step.min(next.len());
            written.extend_from_slice(&next[..n]);
            outbox.advance(n);
            step = step * 3 % 29 + 1;
        }
        assert_eq!(written, all);
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[test]
    fn control_frames_have_a_reserve_and_then_report_full() {
        let mut outbox = Outbox::new(CONTROL_RESERVE + 2);
        assert!(outbox.has_room_for_message());
        for _ in 0..CONTROL_RESERVE + 2 {
            outbox.push_frame(Kind::Pong, 0, b"").unwrap();
        }
        assert!(!outbox.has_room_for_message());
        assert_eq!(outbox.push_frame(Kind::Pong, 0, b""), Err(Full));
    }

    #[test]
    fn an_outbox_allocates_at_its_first_frame_and_lets_go_when_quiet() {
        let bus = Bus::default();
        let sub = bus.subscribe("a").unwrap();
        let mut outbox = Outbox::new(64);
        assert_eq!(outbox.entries.capacity(), 0, "nothing allocated at first");
        bus.publish("a", b"x").unwrap();
        outbox.push_message(1, sub.try_recv().unwrap());
        assert!(outbox.entries.capacity() >= 64);
        outbox.release_memory();
        assert!(
            outbox.entries.capacity() >= 64,
            "not while entries are queued"
        );
        let bytes = gather(&outbox, usize::MAX).len();
        outbox.advance(bytes);
        outbox.release_memory();
        assert_eq!(outbox.entries.capacity(), 0);
    }
}
