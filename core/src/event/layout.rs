//! The fixed layout of an archived [`Event`](super::Event), as rkyv writes it
//! with the workspace's pinned format features (little endian, aligned
//! primitives, 32-bit relative pointers), drawn once for the two hand-written
//! paths that read and write it without rkyv's generic machinery: the
//! archiver of [`super::plain`] and the validator of [`super::verify`].
//!
//! Do not change these values: they are the archive format that clients,
//! nodes and peers exchange. The `const` assertions below fail the build if
//! rkyv's layout ever moves away from this drawing; the property tests in
//! `core/tests/event_format.rs` check the bytes against rkyv's own.
//!
//! The root is the last 64 bytes of an archive (rkyv writes it last, and
//! finds it at `len - 64`); everything it points to lies before it:
//!
//! ```text
//!  root  size  field
//!     0    16  id                       u128 LE
//!    16     8  time_unix_nanos          u64 LE
//!    24     8  subject                  string (below)
//!    32     1  reply_to tag             0 = None, 1 = Some
//!    33     3  (zero)
//!    36     8  reply_to                 string, when the tag is 1 (zero otherwise)
//!    44     4  headers offset           i32 LE, from byte 44 to the header array
//!    48     4  headers count            u32 LE
//!    52     4  payload offset           i32 LE, from byte 52 to the payload
//!    56     4  payload length           u32 LE
//!    60     4  (zero)
//!
//!  string, 8 bytes, inline when it is at most 8 bytes long:
//!    inline:       the bytes, then 0xFF up to 8; the first byte is never 10xx_xxxx
//!    out of line:  u32 LE length L stored as (L & 0x3F) | 0x80 | (L & !0x3F) << 2
//!                  (so the first byte is 10xx_xxxx), then i32 LE offset from the
//!                  string's own first byte to its bytes
//!
//!  header, 16 bytes, 4-aligned, in an array of `headers count`:
//!     0     8  name                     string
//!     8     4  value offset             i32 LE, from byte 8 of the header
//!    12     4  value length             u32 LE
//! ```
//!
//! Out-of-line objects come in the order rkyv's serializer writes them, each
//! field's before the next: subject bytes, reply bytes, each header's name
//! and value bytes, the header array (aligned to 4), the payload, zero
//! padding to 16, the root.

use std::mem::{align_of, offset_of, size_of};

use rkyv::option::ArchivedOption;
use rkyv::string::ArchivedString;
use rkyv::vec::ArchivedVec;

use super::{ArchivedEvent, ArchivedHeader};

/// Size of the root object, the archive's last bytes.
pub(super) const ROOT_BYTES: usize = size_of::<ArchivedEvent>();
/// Where the id lies in the root.
pub(super) const ID_AT: usize = offset_of!(ArchivedEvent, id);
/// Where the time lies in the root.
pub(super) const TIME_AT: usize = offset_of!(ArchivedEvent, time_unix_nanos);
/// Where the subject's string lies in the root.
pub(super) const SUBJECT_AT: usize = offset_of!(ArchivedEvent, subject);
/// Where the reply subject's `Option` tag lies in the root.
pub(super) const REPLY_TAG_AT: usize = offset_of!(ArchivedEvent, reply_to);
/// Where the reply subject's string lies in the root (after the tag, aligned).
pub(super) const REPLY_AT: usize = REPLY_TAG_AT + align_of::<ArchivedString>();
/// Where the header array's relative pointer and count lie in the root.
pub(super) const HEADERS_AT: usize = offset_of!(ArchivedEvent, headers);
/// Where the payload's relative pointer and length lie in the root.
pub(super) const PAYLOAD_AT: usize = offset_of!(ArchivedEvent, payload);

/// Size of one archived string (inline bytes, or length and offset).
pub(super) const STRING_BYTES: usize = size_of::<ArchivedString>();
/// Longest string stored inline (rkyv's `INLINE_CAPACITY`).
pub(super) const INLINE_BYTES_MAX: usize = rkyv::string::repr::INLINE_CAPACITY;
/// Longest string rkyv can store out of line (30 bits of length).
pub(super) const OUT_OF_LINE_BYTES_MAX: usize = (1 << 30) - 1;
/// Fills the rest of an inline string.
pub(super) const INLINE_FILL: u8 = 0xFF;

/// Size of one header in the header array.
pub(super) const HEADER_BYTES: usize = size_of::<ArchivedHeader>();
/// Alignment of the header array.
pub(super) const HEADER_ALIGN: usize = align_of::<ArchivedHeader>();
/// Where a header's value (relative pointer and length) lies in the header.
pub(super) const HEADER_VALUE_AT: usize = STRING_BYTES;

/// Option tags.
pub(super) const TAG_NONE: u8 = 0;
pub(super) const TAG_SOME: u8 = 1;

// The drawing above, held against rkyv's types.
const _: () = assert!(ROOT_BYTES == 64);
const _: () = assert!(align_of::<ArchivedEvent>() == super::ARCHIVE_ALIGN);
const _: () = assert!(ID_AT == 0 && TIME_AT == 16 && SUBJECT_AT == 24);
const _: () = assert!(REPLY_TAG_AT == 32 && REPLY_AT == 36);
const _: () = assert!(size_of::<ArchivedOption<ArchivedString>>() == 12);
const _: () = assert!(HEADERS_AT == 44 && PAYLOAD_AT == 52);
const _: () = assert!(STRING_BYTES == 8 && INLINE_BYTES_MAX == 8);
const _: () = assert!(size_of::<ArchivedVec<u8>>() == 8 && align_of::<ArchivedVec<u8>>() == 4);
const _: () = assert!(HEADER_BYTES == 16 && HEADER_ALIGN == 4);

/// `at` rounded up to a multiple of `align` (a power of two).
pub(super) const fn align_up(at: usize, align: usize) -> usize {
    (at + align - 1) & !(align - 1)
}

/// The stored form of an out-of-line string's length: two marker bits
/// (`10`) in bits 6 and 7 of the first byte, the length's other bits around
/// them.
pub(super) const fn out_of_line_len_word(len: u32) -> u32 {
    (len & 0x3F) | 0x80 | ((len & !0x3F) << 2)
}

/// The length an out-of-line length word stands for.
pub(super) const fn out_of_line_len(word: u32) -> u32 {
    (word & 0x3F) | ((word & !0xFF) >> 2)
}

/// True if a string whose first byte is `first` is stored inline.
pub(super) const fn is_inline(first: u8) -> bool {
    first & 0xC0 != 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_line_lengths_round_trip_and_carry_the_marker() {
        for len in [
            9u32,
            63,
            64,
            255,
            256,
            1 << 20,
            OUT_OF_LINE_BYTES_MAX as u32,
        ] {
            let word = out_of_line_len_word(len);
            assert_eq!(out_of_line_len(word), len);
            assert!(!is_inline(word.to_le_bytes()[0]));
        }
    }
}
