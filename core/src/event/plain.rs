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

/// Copies `src` into `dst`, of the same length. Subjects and small payloads
/// take two fixed-size copies that may overlap (4, 8 or 16 bytes each)
/// instead of a call to `memmove` with a length known only at run time
/// (2.1% of the batch 1 → 1 publisher's samples in `perf`); longer ones, and
/// the shortest, are copied as usual.
#[inline]
fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    fn halves<const N: usize>(dst: &mut [u8], src: &[u8]) {
        let len = src.len();
        dst[..N].copy_from_slice(&src[..N]);
        dst[len - N..].copy_from_slice(&src[len - N..]);
    }
    match src.len() {
        4..8 => halves::<4>(dst, src),
        8..16 => halves::<8>(dst, src),
        16..=32 => halves::<16>(dst, src),
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
        let src: Vec<u8> = (1..=40).collect();
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
