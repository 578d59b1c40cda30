//! [`Outbox`]: what a session has to send, in order, as slices to gather.
//!
//! A small delivered event (an archive of at most [`COPY_BYTES_MAX`]) is
//! copied, `MSG` header, archive and padding, onto the end of a contiguous
//! chunk, so that one slice carries hundreds of events and the kernel copies
//! one long run instead of three short pieces per event (the gathered copy
//! was the node's largest cost at 16 B). Its event memory goes back at once.
//! A larger event goes out as three slices: a 16-byte header kept here, the
//! archive read in place from the node's event memory (no copy), and padding
//! from a static block of zeros. Control frames are small owned buffers. A
//! socket may take any prefix of the bytes; [`Outbox::advance`] drops what
//! was fully written, releasing the events' memory and keeping written
//! chunks for reuse, so steady traffic allocates nothing.
//!
//! The entries live in a deque allocated only while it is empty, so queued
//! entries never move: an io_uring send in flight holds pointers to the
//! headers stored here. A chunk never grows past the capacity it was made
//! with, so appending to one while a send of its first bytes is in flight
//! never moves those bytes. The outbox has no memory until the first frame
//! is queued (a connection that never hears from the node costs little), and
//! gives it back when the connection goes quiet (at once, for a connection
//! without subscriptions: see `Session::sent`). (Starting small and growing
//! while deliveries outgrew it lost events in the stopped-node backpressure
//! test; not understood yet, so not done.)

use std::collections::VecDeque;

use starling_core::EventRef;

use crate::frame::{HEADER_BYTES, Header, Kind, PADDING, padded};

/// Entries kept free for control frames when messages fill the rest.
const CONTROL_RESERVE: usize = 16;

/// Largest archive copied into a chunk; larger ones are sent in place, where
/// a copy would cost more than the slices it saves.
const COPY_BYTES_MAX: usize = 1024;

/// Bytes of one chunk: 128 frames of 128 B.
const CHUNK_BYTES: usize = 16 << 10;

/// Copied bytes a session may have queued before it stops taking deliveries:
/// four chunks, about 500 frames of 128 B, so that one send carries a few
/// hundred events while a connection that does not read holds at most this
/// much copied memory.
const COPIED_BYTES_MAX: usize = 4 * CHUNK_BYTES;

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
    /// Bytes in queued chunks, written or not: what copying holds.
    copied_bytes: usize,
    /// Written chunks, emptied, for the next copies.
    spare: Vec<Vec<u8>>,
}

#[derive(Debug)]
enum Entry {
    /// A whole control frame: header, body, padding.
    Control(Vec<u8>),
    /// Small delivered events, whole frames back to back; never grows past
    /// its capacity.
    Chunk(Vec<u8>),
    /// A delivered event too large to copy, sent in place.
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
            Entry::Control(frame) | Entry::Chunk(frame) => frame.len(),
            Entry::Message { event, .. } => HEADER_BYTES + padded(event.archive().len()),
        }
    }

    /// Calls `visit` with each slice of this entry from byte `skip` on; stops
    /// early if `visit` returns false. Returns false if it stopped early.
    fn slices<'a>(&'a self, mut skip: usize, visit: &mut impl FnMut(&'a [u8]) -> bool) -> bool {
        let parts: [&'a [u8]; 3] = match self {
            Entry::Control(frame) | Entry::Chunk(frame) => [frame, &[], &[]],
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
            copied_bytes: 0,
            spare: Vec::new(),
        }
    }

    /// Messages that fit now, however large each (the most a batch of
    /// deliveries may take): one entry each, and, for copied ones, the
    /// largest copied frame each, in the last chunk or in the new chunks
    /// [`COPIED_BYTES_MAX`] still allows (a frame never spans two chunks).
    pub(crate) fn message_room(&self) -> usize {
        let entries = self
            .limit
            .saturating_sub(self.entries.len() + CONTROL_RESERVE);
        let frame_max = HEADER_BYTES + padded(COPY_BYTES_MAX);
        let in_last_chunk = match self.entries.back() {
            Some(Entry::Chunk(chunk)) => (chunk.capacity() - chunk.len()) / frame_max,
            _ => 0,
        };
        let new_chunks = COPIED_BYTES_MAX.saturating_sub(self.copied_bytes) / CHUNK_BYTES;
        entries.min(in_last_chunk + new_chunks * (CHUNK_BYTES / frame_max))
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
            self.spare = Vec::new();
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
    /// [`Outbox::message_room`] first. Gives the event back once copied (the
    /// caller releases it, with others), `None` if it is kept to be sent in
    /// place.
    pub(crate) fn push_message(&mut self, sid: u64, event: EventRef) -> Option<EventRef> {
        assert!(
            self.entries.len() + CONTROL_RESERVE < self.limit,
            "checked by the caller"
        );
        self.reserve();
        let archive = event.archive();
        let header = Header::new(Kind::Msg, sid, archive.len()).encode();
        if archive.len() > COPY_BYTES_MAX {
            let entry = Entry::Message { header, event };
            self.queued_bytes += entry.len();
            self.entries.push_back(entry);
            return None;
        }
        let frame_bytes = HEADER_BYTES + padded(archive.len());
        let chunk = self.chunk_with_room(frame_bytes);
        chunk.extend_from_slice(&header);
        chunk.extend_from_slice(archive);
        chunk.extend_from_slice(&PADDING[..padded(archive.len()) - archive.len()]);
        self.queued_bytes += frame_bytes;
        Some(event)
    }

    /// The last entry if it is a chunk with `bytes` to spare, or a new chunk
    /// (a spare one if any) queued after it.
    fn chunk_with_room(&mut self, bytes: usize) -> &mut Vec<u8> {
        let fits = matches!(
            self.entries.back(),
            Some(Entry::Chunk(chunk)) if chunk.capacity() - chunk.len() >= bytes
        );
        if !fits {
            let chunk = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES));
            self.copied_bytes += chunk.capacity();
            self.entries.push_back(Entry::Chunk(chunk));
        }
        match self.entries.back_mut() {
            Some(Entry::Chunk(chunk)) => chunk,
            _ => unreachable!("a chunk with room is last"),
        }
    }

    /// True if nothing is waiting to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries it has room for without allocating.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.entries.capacity()
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
    /// (releasing their events, keeping their chunks for reuse) and
    /// remembers how far into the next one.
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
            if let Some(Entry::Chunk(mut chunk)) = self.entries.pop_front() {
                self.copied_bytes -= chunk.capacity();
                chunk.clear();
                self.spare.push(chunk);
            }
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

    /// The frame `push_message` must produce, built the plain way.
    fn frame_of(sid: u64, event: &EventRef) -> Vec<u8> {
        let archive = event.archive();
        let mut frame = Header::new(Kind::Msg, sid, archive.len()).encode().to_vec();
        frame.extend_from_slice(archive);
        frame.resize(HEADER_BYTES + padded(archive.len()), 0);
        frame
    }

    #[test]
    fn small_events_share_a_slice_and_large_ones_go_in_place_in_order() {
        let bus = Bus::default();
        let sub = bus.subscribe("a").unwrap();
        let mut outbox = Outbox::new(1024);
        let mut expected = Vec::new();
        for i in 0..100u64 {
            bus.publish("a", &i.to_le_bytes()).unwrap();
            let event = sub.try_recv().unwrap();
            expected.extend_from_slice(&frame_of(i, &event));
            outbox.push_message(i, event);
        }
        outbox.push_frame(Kind::Pong, 7, b"").unwrap();
        expected.extend_from_slice(&Header::new(Kind::Pong, 7, 0).encode());
        bus.publish("a", &[7; 2 * COPY_BYTES_MAX]).unwrap();
        let large = sub.try_recv().unwrap();
        expected.extend_from_slice(&frame_of(100, &large));
        outbox.push_message(100, large);
        bus.publish("a", b"after").unwrap();
        let last = sub.try_recv().unwrap();
        expected.extend_from_slice(&frame_of(101, &last));
        outbox.push_message(101, last);

        let mut slices = 0;
        outbox.for_each_slice(|_| {
            slices += 1;
            true
        });
        // 100 small frames in one chunk, the pong, the large event's header,
        // archive and padding, the last small frame in a new chunk.
        assert!(slices <= 6, "{slices} slices");
        assert_eq!(gather(&outbox, usize::MAX), expected);
        assert_eq!(outbox.queued_bytes(), expected.len());
    }

    #[test]
    fn copied_bytes_are_bounded_and_written_chunks_are_reused() {
        let bus = Bus::default();
        let sub = bus.subscribe("a").unwrap();
        let mut outbox = Outbox::new(1024);
        let mut pushed = 0;
        while outbox.message_room() > 0 {
            bus.publish("a", &[1; 64]).unwrap();
            outbox.push_message(1, sub.try_recv().unwrap());
            pushed += 1;
        }
        assert!(pushed > 300, "hundreds of small events fit: {pushed}");
        assert!(outbox.queued_bytes() <= COPIED_BYTES_MAX);
        let bytes = gather(&outbox, usize::MAX).len();
        outbox.advance(bytes);
        assert!(outbox.is_empty());
        assert!(outbox.message_room() > 0);
        let spare = outbox.spare.len();
        assert!(spare >= 4, "written chunks are kept: {spare}");
        bus.publish("a", &[1; 64]).unwrap();
        outbox.push_message(1, sub.try_recv().unwrap());
        assert_eq!(outbox.spare.len(), spare - 1, "a spare chunk was reused");
    }

    #[test]
    fn batches_as_large_as_the_room_stay_within_four_chunks() {
        let bus = Bus::default();
        let sub = bus.subscribe("a").unwrap();
        let mut outbox = Outbox::new(1024);
        // The largest copied archives, then small and middling ones.
        let mut payloads = [900, 8, 300].into_iter().cycle();
        let mut pushed = 0;
        let mut batches = 0;
        while outbox.message_room() > 0 {
            for _ in 0..outbox.message_room() {
                bus.publish("a", &vec![1; payloads.next().unwrap()])
                    .unwrap();
                let event = sub.try_recv().unwrap();
                assert!(event.archive().len() <= COPY_BYTES_MAX);
                assert!(outbox.push_message(1, event).is_some(), "copied");
                pushed += 1;
            }
            batches += 1;
            assert!(outbox.copied_bytes <= COPIED_BYTES_MAX);
        }
        assert_eq!(outbox.copied_bytes, COPIED_BYTES_MAX, "four chunks used");
        assert!(pushed > 100 && batches > 1, "{pushed} in {batches} batches");
        assert_eq!(gather(&outbox, usize::MAX).len(), outbox.queued_bytes());
    }

    #[test]
    fn control_frames_have_a_reserve_and_then_report_full() {
        let mut outbox = Outbox::new(CONTROL_RESERVE + 2);
        assert!(outbox.message_room() > 0);
        for _ in 0..CONTROL_RESERVE + 2 {
            outbox.push_frame(Kind::Pong, 0, b"").unwrap();
        }
        assert_eq!(outbox.message_room(), 0);
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
