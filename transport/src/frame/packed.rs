//! `PACKED_PUB` bodies (protocol 4): many small events in one frame, each a
//! compact record instead of a 64-byte-rooted archive. A 16-byte event on a
//! short subject takes about 30 bytes here, where a `PUB` frame takes 128.
//!
//! A client sends them only to a node that answered its `HELLO` with
//! protocol 4, and only for events without headers, with a payload of at
//! most [`PACKED_PAYLOAD_BYTES_MAX`] bytes, published with tag 0 (no
//! `NoResponders` asked for: a request goes as a `PUB`, whose tag the
//! answer names). The node turns each record back into the archive a `PUB`
//! would have carried, byte for byte (the hand-written encoder of
//! `starling_core::event`), and checks and publishes it as it would that
//! `PUB`'s: the same checks, the same error codes, with tag 0.
//!
//! ```text
//!  frame header: kind PACKED_PUB (11), tag = the high 64 bits of the base id
//!  body: one or more records, back to back, no padding between them;
//!        the frame's zero padding follows the last (checked: zero)
//!
//!  record:
//!  +-------+-------------+---------+---------------------------+-------------+---------+----------+------------+
//!  | flags | subject len | subject | if flags & 1: reply len,  | payload len | payload | id delta | time delta |
//!  | u8    | varint      | bytes   |   reply bytes             | varint      | bytes   | zz varint| zz varint  |
//!  +-------+-------------+---------+---------------------------+-------------+---------+----------+------------+
//!
//!  flags:      bit 0 = a reply subject follows the subject; bits 1-7 zero
//!  varint:     unsigned LEB128, 7 bits a byte, low first; the shortest form only
//!  zz varint:  a zigzag-encoded signed difference, as a varint
//!  id delta:   id - previous id (wrapping, i128); the first record's previous
//!              id is `tag << 64` (so a client's ids, its random high half and
//!              a counter, cost a few bytes)
//!  time delta: time_unix_nanos - previous time (wrapping, i64); the first
//!              record's previous time is 0
//! ```
//!
//! Structure errors (a record cut short, a length past the body, a varint
//! too long or not in its shortest form, reserved flag bits, an empty body,
//! padding not zero) are framing errors: the stream cannot be trusted, the
//! connection closes. A subject that is not UTF-8 is an event's fault, as
//! in a `PUB` archive: that event is refused and the rest go on.

use rkyv::util::AlignedVec;
use starling_core::event::EventParts;

use super::{FRAME_ALIGN, FrameError, HEADER_BYTES, Header, Kind, PADDING, padded};

/// The largest payload a client packs; larger events go as `PUB` frames,
/// where the archive's fixed 64 bytes are small beside the payload.
pub const PACKED_PAYLOAD_BYTES_MAX: usize = 1024;

/// The `flags` bit saying a reply subject follows.
const FLAG_REPLY: u8 = 1;

/// Bits a varint may hold for a length, a time delta, an id delta.
const LENGTH_BITS: u32 = 32;
const TIME_BITS: u32 = 64;
const ID_BITS: u32 = 128;

/// One event of a `PACKED_PUB` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The event's id.
    pub id: u128,
    /// The event's time, nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    /// The subject's bytes (UTF-8 is the receiver's to check: see
    /// [`Record::parts`]).
    pub subject: &'a [u8],
    /// The reply subject's bytes, if any.
    pub reply_to: Option<&'a [u8]>,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> Record<'a> {
    /// The event this record stands for, or which of its subjects is not
    /// UTF-8.
    pub fn parts(&self) -> Result<EventParts<'a>, &'static str> {
        let subject = std::str::from_utf8(self.subject).map_err(|_| "the subject is not UTF-8")?;
        let reply_to = match self.reply_to {
            Some(reply) => {
                Some(std::str::from_utf8(reply).map_err(|_| "the reply subject is not UTF-8")?)
            }
            None => None,
        };
        Ok(EventParts {
            id: self.id,
            time_unix_nanos: self.time_unix_nanos,
            subject,
            reply_to,
            headers: &[],
            payload: self.payload,
        })
    }
}

/// Where a record's deltas start from: the previous record, or for the
/// frame's first the base its tag names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Previous {
    id: u128,
    time: u64,
}

impl Previous {
    fn of_frame(tag: u64) -> Self {
        Self {
            id: u128::from(tag) << 64,
            time: 0,
        }
    }
}

/// The tag of a frame whose first record has `id`.
fn tag_for(id: u128) -> u64 {
    (id >> 64) as u64
}

/// Appends a whole `PACKED_PUB` frame holding `records` (at least one) to
/// `buffer`: header, records, zero padding.
pub fn push_frame(buffer: &mut AlignedVec<FRAME_ALIGN>, records: &[Record<'_>]) {
    let (first, rest) = records.split_first().expect("a frame holds a record");
    push_frame_continuing(buffer, first, |body, previous| {
        for record in rest {
            push_record(body, previous, record);
        }
    });
}

/// Appends a `PACKED_PUB` frame whose first record is `first` and whose
/// other records `more` appends (encoded against `first`); patches the
/// header's length once they are written.
fn push_frame_continuing(
    buffer: &mut AlignedVec<FRAME_ALIGN>,
    first: &Record<'_>,
    more: impl FnOnce(&mut AlignedVec<FRAME_ALIGN>, &mut Previous),
) {
    let mut open = Open::start(buffer, tag_for(first.id));
    buffer.reserve(record_bytes_max(first));
    push_record(buffer, &mut open.previous, first);
    more(buffer, &mut open.previous);
    open.close(buffer);
}

/// The most bytes `record` can take.
fn record_bytes_max(record: &Record<'_>) -> usize {
    const VARINTS: usize = 5 + 5 + 5 + 19 + 10;
    1 + VARINTS
        + record.subject.len()
        + record.reply_to.map_or(0, <[u8]>::len)
        + record.payload.len()
}

fn push_record(out: &mut AlignedVec<FRAME_ALIGN>, previous: &mut Previous, record: &Record<'_>) {
    out.push(if record.reply_to.is_some() {
        FLAG_REPLY
    } else {
        0
    });
    push_bytes(out, record.subject);
    if let Some(reply) = record.reply_to {
        push_bytes(out, reply);
    }
    push_bytes(out, record.payload);
    let id_delta = record.id.wrapping_sub(previous.id) as i128;
    push_varint(out, ((id_delta << 1) ^ (id_delta >> 127)) as u128);
    let time_delta = record.time_unix_nanos.wrapping_sub(previous.time) as i64;
    push_varint(
        out,
        u128::from(((time_delta << 1) ^ (time_delta >> 63)) as u64),
    );
    *previous = Previous {
        id: record.id,
        time: record.time_unix_nanos,
    };
}

fn push_bytes(out: &mut AlignedVec<FRAME_ALIGN>, bytes: &[u8]) {
    push_varint(out, bytes.len() as u128);
    out.extend_from_slice(bytes);
}

fn push_varint(out: &mut AlignedVec<FRAME_ALIGN>, mut value: u128) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The most record bytes [`join`] puts in one frame: about 150 small
/// events, each of which then costs the node a record's work and no
/// frame's; small beside a receive buffer (16 KiB), so that a joined frame
/// is seldom split between two receives.
pub const JOINED_BODY_BYTES_MAX: usize = 4 << 10;

/// True if `frames` (whole frames as a client wrote them, the last maybe
/// cut short) hold two `PACKED_PUB` frames in a row, which [`join`] would
/// join.
pub fn has_run(frames: &[u8]) -> bool {
    let mut previous_packed = false;
    for header in headers(frames) {
        let packed = header.kind == Kind::PackedPub;
        if packed && previous_packed {
            return true;
        }
        previous_packed = packed;
    }
    false
}

/// Appends `frames` (whole frames this process wrote, the last maybe cut
/// short) to `out` with each run of `PACKED_PUB` frames joined into frames
/// of up to [`JOINED_BODY_BYTES_MAX`] bytes of records; other frames are
/// copied as they are, in order. Stops after the frame that takes `out`
/// past `out_bytes_max`, or before a frame cut short; returns how many
/// bytes of `frames` it took. Publishers each append a frame of one record
/// to the client's ring (without a lock, so none appends to another's
/// frame); the writer joins those that wait together to be written, so the
/// node handles one frame for many events.
///
/// # Panics
///
/// If a `PACKED_PUB` frame among `frames` is malformed: this process's own
/// encoder wrote them.
pub fn join(frames: &[u8], out: &mut AlignedVec<FRAME_ALIGN>, out_bytes_max: usize) -> usize {
    let mut open: Option<Open> = None;
    let mut taken = 0;
    for header in headers(frames) {
        let frame = &frames[taken..taken + header.frame_bytes()];
        if header.kind == Kind::PackedPub {
            let body = &frame[HEADER_BYTES..HEADER_BYTES + header.length as usize];
            for record in Records::new(header.tag, body) {
                let record = record.expect("this process wrote the frame");
                let full = open.as_ref().is_some_and(|open| {
                    out.len() - open.start - HEADER_BYTES + record_bytes_max(&record)
                        > JOINED_BODY_BYTES_MAX
                });
                if full {
                    open.take().expect("open").close(out);
                }
                let open = open.get_or_insert_with(|| Open::start(out, tag_for(record.id)));
                push_record(out, &mut open.previous, &record);
            }
        } else {
            if let Some(open) = open.take() {
                open.close(out);
            }
            out.extend_from_slice(frame);
        }
        taken += frame.len();
        if out.len() > out_bytes_max {
            break;
        }
    }
    if let Some(open) = open {
        open.close(out);
    }
    taken
}

/// The headers of the whole frames at the start of `frames`, up to the
/// first cut short.
fn headers(frames: &[u8]) -> impl Iterator<Item = Header> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let bytes = frames.get(at..at + HEADER_BYTES)?;
        let header = Header::decode(bytes.try_into().expect("16 bytes"), usize::MAX)
            .expect("this process wrote the frame");
        if at + header.frame_bytes() > frames.len() {
            return None;
        }
        at += header.frame_bytes();
        Some(header)
    })
}

/// A `PACKED_PUB` frame [`join`] is appending records to.
struct Open {
    /// Where its header is in the output.
    start: usize,
    tag: u64,
    previous: Previous,
}

impl Open {
    fn start(out: &mut AlignedVec<FRAME_ALIGN>, tag: u64) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_BYTES]);
        Self {
            start,
            tag,
            previous: Previous::of_frame(tag),
        }
    }

    /// Writes its header, now that its length is known, and its padding.
    fn close(self, out: &mut AlignedVec<FRAME_ALIGN>) {
        let length = out.len() - self.start - HEADER_BYTES;
        out[self.start..self.start + HEADER_BYTES]
            .copy_from_slice(&Header::new(Kind::PackedPub, self.tag, length).encode());
        out.extend_from_slice(&PADDING[..padded(length) - length]);
    }
}

/// The records of a `PACKED_PUB` body, in order. Yields an error at the
/// first structure error, then nothing.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    previous: Previous,
}

impl<'a> Records<'a> {
    /// The records of the frame with `tag` and `body`.
    pub fn new(tag: u64, body: &'a [u8]) -> Self {
        Self {
            rest: body,
            previous: Previous::of_frame(tag),
        }
    }

    /// Checks the whole body's structure (every record, and that there is
    /// one), without reading the events: what a receiver does before it acts
    /// on any record, so that a frame is refused whole or not at all.
    pub fn check(tag: u64, body: &'a [u8]) -> Result<usize, FrameError> {
        if body.is_empty() {
            return Err(malformed("no records"));
        }
        let mut records = Records::new(tag, body);
        let mut count = 0;
        while !records.rest.is_empty() {
            // Inlined: what only the records' values need (ids, times) is
            // not computed.
            records.record().map_err(malformed)?;
            count += 1;
        }
        Ok(count)
    }

    /// Appends a `PACKED_PUB` frame of the records not yet read to `buffer`
    /// (nothing if none is left): the first is encoded again against the new
    /// frame's base, the others are copied as they are. For a receiver that
    /// must stop part-way through a frame and go on later.
    pub fn push_rest(mut self, buffer: &mut AlignedVec<FRAME_ALIGN>) -> Result<(), FrameError> {
        let Some(first) = self.next().transpose()? else {
            return Ok(());
        };
        let rest = self.rest;
        push_frame_continuing(buffer, &first, |body, _| body.extend_from_slice(rest));
        Ok(())
    }

    /// The next record. Its parts report a structure error as the reason
    /// alone (made a `FrameError` by `next`): a small value to pass back,
    /// on the node's path for every event.
    #[inline]
    fn record(&mut self) -> Result<Record<'a>, &'static str> {
        let flags = self.take(1)?[0];
        if flags & !FLAG_REPLY != 0 {
            return Err("reserved record flags are set");
        }
        let subject = self.bytes()?;
        let reply_to = if flags & FLAG_REPLY != 0 {
            Some(self.bytes()?)
        } else {
            None
        };
        let payload = self.bytes()?;
        let id_zigzag = self.varint(ID_BITS)?;
        let id_delta = (id_zigzag >> 1) as i128 ^ -((id_zigzag & 1) as i128);
        let time_zigzag = self.varint(TIME_BITS)? as u64;
        let time_delta = (time_zigzag >> 1) as i64 ^ -((time_zigzag & 1) as i64);
        self.previous = Previous {
            id: self.previous.id.wrapping_add(id_delta as u128),
            time: self.previous.time.wrapping_add(time_delta as u64),
        };
        Ok(Record {
            id: self.previous.id,
            time_unix_nanos: self.previous.time,
            subject,
            reply_to,
            payload,
        })
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.rest.len() < n {
            return Err("a record runs past the end of the body");
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    #[inline]
    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let len = self.varint(LENGTH_BITS)?;
        // Within the body (below 4 GiB): checked before anything is read.
        self.take(usize::try_from(len).unwrap_or(usize::MAX))
    }

    /// A LEB128 varint of at most `bits` bits, in its shortest form.
    #[inline]
    fn varint(&mut self, bits: u32) -> Result<u128, &'static str> {
        // Most are one byte (lengths, and the deltas of a frame's records
        // after its first): those skip the loop and its 128-bit shifts.
        match self.rest.split_first() {
            Some((&byte, rest)) if byte < 0x80 => {
                self.rest = rest;
                Ok(u128::from(byte))
            }
            _ => self.varint_long(bits),
        }
    }

    fn varint_long(&mut self, bits: u32) -> Result<u128, &'static str> {
        let mut value = 0u128;
        let mut shift = 0;
        loop {
            let byte = self.take(1)?[0];
            let low = u128::from(byte & 0x7F);
            if shift + 7 > bits && low >> (bits - shift) != 0 {
                return Err("a varint overflows its field");
            }
            value |= low << shift;
            if byte & 0x80 == 0 {
                if byte == 0 && shift > 0 {
                    return Err("a varint is longer than its shortest form");
                }
                return Ok(value);
            }
            shift += 7;
            if shift >= bits {
                return Err("a varint overflows its field");
            }
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let record = self.record().map_err(malformed);
        if record.is_err() {
            self.rest = &[];
        }
        Some(record)
    }
}

fn malformed(reason: &'static str) -> FrameError {
    FrameError::Malformed {
        kind: Kind::PackedPub,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(records: &[Record<'_>]) -> AlignedVec<FRAME_ALIGN> {
        let mut buffer = AlignedVec::new();
        push_frame(&mut buffer, records);
        buffer
    }

    fn decode(frame: &[u8]) -> Result<Vec<Record<'_>>, FrameError> {
        let header = Header::decode(frame[..HEADER_BYTES].try_into().unwrap(), 1 << 20)?;
        assert_eq!(header.kind, Kind::PackedPub);
        assert_eq!(header.frame_bytes(), frame.len(), "padded to the alignment");
        let body = &frame[HEADER_BYTES..HEADER_BYTES + header.length as usize];
        Records::check(header.tag, body)?;
        Records::new(header.tag, body).collect()
    }

    const SAMPLE: Record<'static> = Record {
        id: (0xDEAD_BEEF_u128 << 64) | 7,
        time_unix_nanos: 1_765_000_000_000_000_000,
        subject: b"bench.x",
        reply_to: None,
        payload: &[0xAB; 16],
    };

    #[test]
    fn a_small_event_takes_64_bytes_alone_and_at_most_32_in_a_batch() {
        let alone = frame_of(&[SAMPLE]);
        assert_eq!(alone.len(), 64, "one 16-byte event alone: 16 + 48");
        let batch: Vec<Record<'_>> = (0..16)
            .map(|i| Record {
                id: SAMPLE.id + i,
                time_unix_nanos: SAMPLE.time_unix_nanos + 300 * i as u64,
                ..SAMPLE
            })
            .collect();
        let frame = frame_of(&batch);
        assert!(
            frame.len() <= 16 * 32,
            "{} bytes for 16 events, 32 a piece at most",
            frame.len()
        );
        assert_eq!(decode(&frame).unwrap(), batch);
    }

    #[test]
    fn extreme_ids_and_times_round_trip() {
        let records = [
            Record {
                id: u128::MAX,
                time_unix_nanos: u64::MAX,
                reply_to: Some(b"_INBOX.abc.1"),
                ..SAMPLE
            },
            Record {
                id: 0,
                time_unix_nanos: 0,
                subject: b"",
                payload: b"",
                ..SAMPLE
            },
            Record {
                id: 1 << 127,
                time_unix_nanos: 1 << 63,
                subject: b"\xFF not utf-8",
                ..SAMPLE
            },
        ];
        assert_eq!(decode(&frame_of(&records)).unwrap(), records);
        assert_eq!(
            records[2].parts().err(),
            Some("the subject is not UTF-8"),
            "kept as bytes for the receiver to refuse"
        );
    }

    #[test]
    fn every_truncation_of_a_body_is_refused() {
        let second = Record {
            reply_to: Some(b"r.s"),
            ..SAMPLE
        };
        let frame = frame_of(&[SAMPLE, second]);
        let body_of = |frame: &[u8]| {
            let length = Header::decode(frame[..16].try_into().unwrap(), 1 << 20)
                .unwrap()
                .length as usize;
            frame[HEADER_BYTES..HEADER_BYTES + length].to_vec()
        };
        let body = body_of(&frame);
        let first_record = body_of(&frame_of(&[SAMPLE])).len();
        for cut in 1..body.len() {
            let checked = Records::check(tag_for(SAMPLE.id), &body[..cut]);
            assert_eq!(
                checked.is_ok(),
                cut == first_record,
                "cut at {cut}: {checked:?}"
            );
        }
        assert_eq!(Records::check(tag_for(SAMPLE.id), &body), Ok(2));
        assert!(matches!(
            Records::check(0, &[]),
            Err(FrameError::Malformed {
                reason: "no records",
                ..
            })
        ));
    }

    #[test]
    fn bad_varints_and_flags_are_refused() {
        let refused = |body: &[u8]| match Records::check(0, body) {
            Err(FrameError::Malformed { reason, .. }) => reason,
            other => panic!("{body:?} gave {other:?}"),
        };
        // flags 0, subject "a", payload "", id delta, time delta.
        assert!(Records::check(0, &[0, 1, b'a', 0, 0, 0]).is_ok());
        assert_eq!(
            refused(&[2, 1, b'a', 0, 0, 0]),
            "reserved record flags are set"
        );
        assert_eq!(
            refused(&[0, 0x81, 0, b'a', 0, 0, 0]),
            "a varint is longer than its shortest form"
        );
        let mut too_long_time = vec![0, 1, b'a', 0, 0];
        too_long_time.extend([0xFF; 9]);
        too_long_time.push(0x02);
        assert_eq!(refused(&too_long_time), "a varint overflows its field");
        let mut eleven = vec![0, 1, b'a', 0, 0];
        eleven.extend([0x80; 10]);
        eleven.push(1);
        assert_eq!(refused(&eleven), "a varint overflows its field");
        assert_eq!(
            refused(&[0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, b'a']),
            "a record runs past the end of the body"
        );
        assert_eq!(
            refused(&[0, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F]),
            "a varint overflows its field"
        );
    }

    /// The records of every frame in `frames`, in order, and the kinds of
    /// the frames.
    fn frames_read(frames: &[u8]) -> (Vec<Kind>, Vec<Record<'_>>) {
        let (mut kinds, mut records) = (Vec::new(), Vec::new());
        let mut at = 0;
        for header in headers(frames) {
            kinds.push(header.kind);
            if header.kind == Kind::PackedPub {
                let frame = &frames[at..at + header.frame_bytes()];
                records.extend(decode(frame).unwrap());
            }
            at += header.frame_bytes();
        }
        assert_eq!(at, frames.len(), "whole frames");
        (kinds, records)
    }

    #[test]
    fn runs_of_packed_frames_are_joined_and_other_frames_kept_in_place() {
        let records: Vec<Record<'_>> = (0..300u64)
            .map(|i| Record {
                id: SAMPLE.id + u128::from(i),
                // Publishing threads' clocks need not be in order.
                time_unix_nanos: SAMPLE.time_unix_nanos + 1_000 * i - 700 * (i % 3),
                reply_to: (i % 7 == 0).then_some(b"_INBOX.r.1".as_slice()),
                ..SAMPLE
            })
            .collect();
        let ping = crate::frame::encode(Kind::Ping, 5, &[]);
        let mut frames = AlignedVec::<FRAME_ALIGN>::new();
        frames.extend_from_slice(&ping);
        push_frame(&mut frames, &records[..1]);
        frames.extend_from_slice(&ping);
        for record in &records[1..] {
            push_frame(&mut frames, std::slice::from_ref(record));
        }
        frames.extend_from_slice(&ping);
        assert!(has_run(&frames));
        let first_frames = 2 * ping.len() + frame_of(&records[..1]).len();
        assert!(!has_run(&frames[..first_frames]), "ping, one packed, ping");

        let mut joined = AlignedVec::<FRAME_ALIGN>::new();
        assert_eq!(join(&frames, &mut joined, usize::MAX), frames.len());
        let (kinds, read) = frames_read(&joined);
        assert_eq!(read, records, "every record, in order");
        let packed = kinds
            .iter()
            .filter(|&&kind| kind == Kind::PackedPub)
            .count();
        assert_eq!(kinds.first(), Some(&Kind::Ping));
        assert_eq!(kinds[1..3], [Kind::PackedPub, Kind::Ping]);
        assert_eq!(kinds.last(), Some(&Kind::Ping));
        assert!(
            (3..=4).contains(&packed),
            "299 records of about 30 bytes in frames of up to 4 KiB, then one: {kinds:?}"
        );
        assert!(joined.len() < frames.len() / 2, "{} bytes", joined.len());
        for header in headers(&joined) {
            assert!(header.length as usize <= JOINED_BODY_BYTES_MAX);
        }

        // A frame cut short (by the ring's end) is left; a limit on the
        // output stops after the frame that passes it, and the rest joins
        // on from there.
        let cut = frames.len() - ping.len() - 16;
        let mut joined = AlignedVec::<FRAME_ALIGN>::new();
        let taken = join(&frames[..cut], &mut joined, usize::MAX);
        assert_eq!(taken, cut - 64 + 16, "all but the last packed frame");
        assert_eq!(frames_read(&joined).1, records[..records.len() - 1]);
        let mut joined = AlignedVec::<FRAME_ALIGN>::new();
        let taken = join(&frames, &mut joined, 1000);
        assert!(first_frames < taken && taken < frames.len() / 2, "{taken}");
        let mut rest = AlignedVec::<FRAME_ALIGN>::new();
        assert_eq!(
            join(&frames[taken..], &mut rest, usize::MAX),
            frames.len() - taken
        );
        assert_eq!(
            [frames_read(&joined).1, frames_read(&rest).1].concat(),
            records
        );
    }

    #[test]
    fn the_rest_of_a_frame_is_pushed_again_from_any_record() {
        let records: Vec<Record<'_>> = (0..5u64)
            .map(|i| Record {
                id: SAMPLE.id.wrapping_add(u128::from(i) * 1_000_003) ^ (u128::from(i) << 100),
                time_unix_nanos: SAMPLE.time_unix_nanos - 1_000 * i,
                ..SAMPLE
            })
            .collect();
        let frame = frame_of(&records);
        let header = Header::decode(frame[..16].try_into().unwrap(), 1 << 20).unwrap();
        let body = &frame[HEADER_BYTES..HEADER_BYTES + header.length as usize];
        for read in 0..=records.len() {
            let mut reading = Records::new(header.tag, body);
            for _ in 0..read {
                reading.next().unwrap().unwrap();
            }
            let mut rest = AlignedVec::<FRAME_ALIGN>::new();
            reading.push_rest(&mut rest).unwrap();
            if read == records.len() {
                assert!(rest.is_empty());
            } else {
                assert_eq!(decode(&rest).unwrap(), records[read..], "after {read}");
            }
        }
    }
}
