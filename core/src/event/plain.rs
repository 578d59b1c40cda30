//! A hand-written archiver for the common event: no headers (a reply
//! subject or none). It writes exactly the bytes rkyv's serializer writes for
//! the same event (see [`super::layout`]; the property test
//! `plain_events_encode_to_the_bytes_rkyv_writes` holds the two together) in
//! a few copies and stores, where rkyv's generic serializer spends most of
//! its time on bookkeeping (its resolvers, scratch space and per-field
//! alignment calls): 39.6 ns for a 16-byte event before this, on the publish
//! path of every event.

use super::layout::{
    HEADER_ALIGN, HEADERS_AT, ID_AT, INLINE_BYTES_MAX, INLINE_FILL, OUT_OF_LINE_BYTES_MAX,
    PAYLOAD_AT, REPLY_AT, REPLY_TAG_AT, ROOT_BYTES, STRING_BYTES, SUBJECT_AT, TAG_SOME, TIME_AT,
    align_up, out_of_line_len_word,
};
use super::{ARCHIVE_ALIGN, EventParts};

/// What [`encode`] did. Two words, returned in registers: a result that
/// carried an `EncodeError` went through memory and its read-back stalled
/// on every publish (store forwarding, measured with `perf`).
pub(super) enum Encoded {
    /// The archive's length.
    Len(usize),
    /// `out` is too small.
    TooSmall,
    /// Only rkyv's serializer may answer: a string too long for the format,
    /// or an archive too large for 32-bit relative pointers.
    NotPlain,
}

/// Archives `parts`, which has no headers, into the start of `out` (16-byte
/// aligned).
#[inline]
pub(super) fn encode(parts: &EventParts<'_>, out: &mut [u8]) -> Encoded {
    debug_assert!(parts.headers.is_empty());
    let reply = parts.reply_to.unwrap_or("");
    if parts.subject.len() > OUT_OF_LINE_BYTES_MAX || reply.len() > OUT_OF_LINE_BYTES_MAX {
        return Encoded::NotPlain;
    }
    // Positions, in the order rkyv writes the out-of-line data.
    let subject_at = 0;
    let reply_at = subject_at + out_of_line_bytes(parts.subject);
    let headers_at = align_up(reply_at + out_of_line_bytes(reply), HEADER_ALIGN);
    let payload_at = headers_at;
    let payload_end = payload_at + parts.payload.len();
    let root_at = align_up(payload_end, ARCHIVE_ALIGN);
    let len = root_at + ROOT_BYTES;
    if len > i32::MAX as usize {
        return Encoded::NotPlain;
    }
    let Some(out) = out.get_mut(..len) else {
        return Encoded::TooSmall;
    };

    let (data, root) = out.split_at_mut(root_at);
    // The padding (before the headers, after the payload) is zeroed by
    // whole 16-byte blocks written before the data that overlaps them: a
    // fixed-size store each, where filling exactly the padding was a call to
    // `memset` per event (4% of the 1 -> 1 publisher's samples in `perf`).
    let reply_end = reply_at + out_of_line_bytes(reply);
    if reply_end < headers_at {
        zero_block(data, reply_end - reply_end % ARCHIVE_ALIGN);
    }
    if payload_end < root_at {
        zero_block(data, root_at - ARCHIVE_ALIGN);
    }
    write_out_of_line(data, subject_at, parts.subject);
    write_out_of_line(data, reply_at, reply);
    copy_bytes(&mut data[payload_at..payload_end], parts.payload);

    root.fill(0);
    root[ID_AT..ID_AT + 16].copy_from_slice(&parts.id.to_le_bytes());
    root[TIME_AT..TIME_AT + 8].copy_from_slice(&parts.time_unix_nanos.to_le_bytes());
    write_string(root, root_at, SUBJECT_AT, parts.subject, subject_at);
    if let Some(reply) = parts.reply_to {
        root[REPLY_TAG_AT] = TAG_SOME;
        write_string(root, root_at, REPLY_AT, reply, reply_at);
    }
    write_slice(root, root_at, HEADERS_AT, headers_at, 0);
    write_slice(root, root_at, PAYLOAD_AT, payload_at, parts.payload.len());
    Encoded::Len(len)
}

/// Longest archive a [`Template`] holds: enough for the small events whose
/// encoding is most of their cost; larger ones are encoded each.
const TEMPLATE_BYTES_MAX: usize = 256;

/// The archive of one plain event, from which the archives of others that
/// differ from it only in their ids and payload bytes are stamped: a copy
/// of the template, the payload and the id, instead of an encode per event
/// (a batch's runs of events on one subject mostly differ in nothing else;
/// the encode was a third of the batch publisher's samples in `perf`).
/// Stamped archives are the bytes [`encode`] writes, held to rkyv's by
/// `batches_stamp_the_bytes_rkyv_writes` in `core/tests/event_format.rs`.
#[repr(C, align(16))]
pub(crate) struct Template<'a> {
    bytes: [u8; TEMPLATE_BYTES_MAX],
    /// The archive's length; 0 while empty.
    len: usize,
    /// Where the payload lies.
    payload_at: usize,
    /// The event the template was made from, but its id and payload bytes.
    parts: EventParts<'a>,
}

impl Default for Template<'_> {
    fn default() -> Self {
        Self {
            bytes: [0; TEMPLATE_BYTES_MAX],
            len: 0,
            payload_at: 0,
            parts: EventParts::default(),
        }
    }
}

impl<'a> Template<'a> {
    /// True if `parts` can be stamped from this template: it is not empty
    /// and `parts` differs from its event only in id and payload bytes.
    #[inline]
    pub(crate) fn fits(&self, parts: &EventParts<'_>) -> bool {
        let made = &self.parts;
        self.len > 0
            && parts.payload.len() == made.payload.len()
            && parts.time_unix_nanos == made.time_unix_nanos
            && parts.headers.is_empty()
            && same_str(parts.subject, made.subject)
            && match (parts.reply_to, made.reply_to) {
                (None, None) => true,
                (Some(reply), Some(made)) => same_str(reply, made),
                _ => false,
            }
    }

    /// Makes this the template of `parts`; leaves it empty if `parts` has
    /// headers or its archive is larger than a template holds.
    pub(crate) fn make(&mut self, parts: &EventParts<'a>) {
        self.len = 0;
        if !parts.headers.is_empty() {
            return;
        }
        let Encoded::Len(len) = encode(parts, &mut self.bytes) else {
            return;
        };
        let root_at = len - ROOT_BYTES;
        let field = root_at + PAYLOAD_AT;
        let offset = i32::from_le_bytes(self.bytes[field..field + 4].try_into().expect("4 bytes"));
        self.payload_at = (field as i64 + i64::from(offset)) as usize;
        self.len = len;
        self.parts = *parts;
    }

    /// The length of the archives this template stamps.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Writes the archive of the event this template [`Template::fits`],
    /// with `payload` and the id whose low and high words are `id_words`,
    /// into the start of `out` (16-byte aligned, at least
    /// [`Template::len`] long); returns its length. The id comes in two
    /// words, as a publisher makes it (its sequence and its high word): a
    /// 16-byte load of two 8-byte stores just made (an id in memory) cannot
    /// be forwarded from the store buffer, and stalled the publisher on
    /// every event (`perf`).
    #[inline]
    pub(crate) fn stamp(&self, id_words: (u64, u64), payload: &[u8], out: &mut [u8]) -> usize {
        debug_assert_eq!(payload.len(), self.parts.payload.len());
        let len = self.len;
        let out = &mut out[..len];
        copy_bytes(out, &self.bytes[..len]);
        copy_bytes(
            &mut out[self.payload_at..self.payload_at + payload.len()],
            payload,
        );
        let root = &mut out[len - ROOT_BYTES..];
        root[ID_AT..ID_AT + 8].copy_from_slice(&id_words.0.to_le_bytes());
        root[ID_AT + 8..ID_AT + 16].copy_from_slice(&id_words.1.to_le_bytes());
        len
    }
}

/// True if `a` and `b` are the same string: the same bytes borrowed (a
/// batch's messages mostly borrow one subject), or equal ones.
#[inline]
fn same_str(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// Zeroes the 16 bytes at `at`, a multiple of 16 inside `data` (whose
/// length, the root's position, is one too).
fn zero_block(data: &mut [u8], at: usize) {
    data[at..at + ARCHIVE_ALIGN].copy_from_slice(&[0; ARCHIVE_ALIGN]);
}

/// Bytes a string takes before the root: none when it is inline.
fn out_of_line_bytes(value: &str) -> usize {
    if value.len() > INLINE_BYTES_MAX {
        value.len()
    } else {
        0
    }
}

fn write_out_of_line(data: &mut [u8], at: usize, value: &str) {
    if value.len() > INLINE_BYTES_MAX {
        copy_bytes(&mut data[at..at + value.len()], value.as_bytes());
    }
}

/// Copies `src` into `dst`, of the same length. Subjects, small payloads
/// and templates take two fixed-size copies that may overlap (4 to 128
/// bytes each) instead of a call to `memmove` with a length known only at
/// run time (2.1% of the batch 1 → 1 publisher's samples in `perf`, and 11%
/// once its archives were stamped from a template); longer ones, and the
/// shortest, are copied as usual.
#[inline]
fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    #[inline(always)]
    fn halves<const N: usize>(dst: &mut [u8], src: &[u8]) {
        let len = src.len();
        dst[..N].copy_from_slice(&src[..N]);
        dst[len - N..].copy_from_slice(&src[len - N..]);
    }
    match src.len() {
        4..8 => halves::<4>(dst, src),
        8..16 => halves::<8>(dst, src),
        16..=32 => halves::<16>(dst, src),
        33..=64 => halves::<32>(dst, src),
        65..=128 => halves::<64>(dst, src),
        129..=256 => halves::<128>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// Writes the 8-byte string at `field` of the root (which starts at
/// `root_at` in the archive), its bytes being at `target` if out of line.
fn write_string(root: &mut [u8], root_at: usize, field: usize, value: &str, target: usize) {
    let string = &mut root[field..field + STRING_BYTES];
    if value.len() <= INLINE_BYTES_MAX {
        string.fill(INLINE_FILL);
        string[..value.len()].copy_from_slice(value.as_bytes());
    } else {
        let word = out_of_line_len_word(value.len() as u32);
        string[..4].copy_from_slice(&word.to_le_bytes());
        string[4..].copy_from_slice(&relative(root_at + field, target).to_le_bytes());
    }
}

/// Writes a relative pointer and a count at `field` of the root.
fn write_slice(root: &mut [u8], root_at: usize, field: usize, target: usize, count: usize) {
    root[field..field + 4].copy_from_slice(&relative(root_at + field, target).to_le_bytes());
    root[field + 4..field + 8].copy_from_slice(&(count as u32).to_le_bytes());
}

/// The offset from `from` to `to`; both lie in an archive shorter than
/// `i32::MAX` bytes, so it fits.
fn relative(from: usize, to: usize) -> i32 {
    (to as i64 - from as i64) as i32
}

#[cfg(test)]
mod tests {
    use super::copy_bytes;

    #[test]
    fn copy_bytes_copies_every_length_exactly() {
        // Past every fixed-size arm (up to 256) into the plain copy.
        let src: Vec<u8> = (0..300).map(|i| (i % 251 + 1) as u8).collect();
        for len in 0..=src.len() {
            let mut dst = vec![0; len + 2];
            copy_bytes(&mut dst[1..=len], &src[..len]);
            assert_eq!(&dst[1..=len], &src[..len], "length {len}");
            assert_eq!(
                (dst[0], dst[len + 1]),
                (0, 0),
                "length {len}: nothing around it"
            );
        }
    }
}
