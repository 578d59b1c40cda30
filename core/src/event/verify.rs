//! A structural validator for the fixed layout of [`ArchivedEvent`] (see
//! [`super::layout`]), written by hand to accept exactly what rkyv's
//! bytecheck accepts for this one type, at a fraction of its cost: bytecheck
//! walks the archive through generic, error-building contexts (124 ns for a
//! 128-byte event measured before this); this reads the root's words, checks
//! each pointer against the same rules and checks the strings' UTF-8.
//!
//! The rules are bytecheck's (rkyv 0.8 `validation::archive`), replayed:
//!
//! - the root is the last [`ROOT_BYTES`] of the archive and 16-aligned;
//! - every out-of-line object is *claimed* in the order bytecheck visits
//!   the fields (subject, reply subject, the header array, then each header's
//!   name and value inside it, the payload): a claim must lie inside the
//!   current range and be aligned, and the next claim must start at or after
//!   its end (claims are ordered and never overlap). Children of the header
//!   array must lie before the array. Empty objects are claimed too, at their
//!   address;
//! - a string is inline (first byte not `10xx_xxxx`; its length is the
//!   position of the first 0xFF) or out of line with a length above the
//!   inline capacity; either way its bytes are UTF-8;
//! - the reply subject's tag is 0 or 1.
//!
//! It must never accept what bytecheck refuses, since what it accepts is read
//! in place without another check: a differential property test
//! (`core/tests/event_format.rs`) and a fuzz target (`fuzz/fuzz_targets/
//! event_verify.rs`) hold it to bytecheck on random, mutated and hostile
//! archives.

use super::layout::{
    HEADER_ALIGN, HEADER_BYTES, HEADER_VALUE_AT, HEADERS_AT, INLINE_BYTES_MAX, INLINE_FILL,
    PAYLOAD_AT, REPLY_AT, REPLY_TAG_AT, ROOT_BYTES, STRING_BYTES, SUBJECT_AT, TAG_NONE, TAG_SOME,
    is_inline, out_of_line_len,
};
use super::{ARCHIVE_ALIGN, ArchivedEvent};

/// Reads `bytes` as an event if their structure is valid. `bytes` must be
/// 16-byte aligned and at least [`ROOT_BYTES`] long (the caller checks both
/// first, to report them precisely). `None` says only "not accepted here":
/// rkyv's validator says why.
pub(super) fn access(bytes: &[u8]) -> Option<&ArchivedEvent> {
    debug_assert!((bytes.as_ptr() as usize).is_multiple_of(ARCHIVE_ALIGN));
    let root_at = bytes.len().checked_sub(ROOT_BYTES)?;
    if !root_at.is_multiple_of(ARCHIVE_ALIGN) {
        return None;
    }
    let mut claims = Claims {
        start: 0,
        end: root_at as i64,
    };
    string(bytes, root_at + SUBJECT_AT, &mut claims)?;
    match bytes[root_at + REPLY_TAG_AT] {
        TAG_NONE => {}
        TAG_SOME => string(bytes, root_at + REPLY_AT, &mut claims)?,
        _ => return None,
    }
    headers(bytes, root_at + HEADERS_AT, &mut claims)?;
    let (payload_at, payload_len) = slice(bytes, root_at + PAYLOAD_AT);
    claims.leaf(payload_at, payload_len, 1)?;
    // SAFETY: the bytes are 16-byte aligned (the caller's precondition), the
    // root lies in them at the position rkyv reads it from, and every check
    // bytecheck makes for an `ArchivedEvent` passed above: every pointer and
    // length lies in bounds, aligned, in claims that do not overlap, every
    // string is UTF-8 and the option tag is valid. The differential tests
    // named in the module docs hold this to bytecheck itself.
    Some(unsafe { super::access_unchecked(bytes) })
}

/// The part of the archive where out-of-line objects may still lie (in
/// archive positions; `i64` so that no sum of a position and a 32-bit offset
/// or length can overflow). bytecheck's `ArchiveValidator` keeps the same
/// range in absolute addresses; since the archive is 16-aligned and no
/// object needs more, alignment of a position is alignment of the address.
struct Claims {
    start: i64,
    end: i64,
}

impl Claims {
    /// Checks that `len` bytes at `at` lie in the range, aligned to `align`.
    fn check(&self, at: i64, len: i64, align: i64) -> Option<()> {
        let fits = at >= self.start && at + len <= self.end;
        (fits && at & (align - 1) == 0).then_some(())
    }

    /// Claims an object with no pointers of its own: later claims lie after it.
    fn leaf(&mut self, at: i64, len: i64, align: i64) -> Option<()> {
        self.check(at, len, align)?;
        self.start = at + len;
        Some(())
    }
}

/// Checks the string at `at`, claiming its bytes if they are out of line.
fn string(bytes: &[u8], at: usize, claims: &mut Claims) -> Option<()> {
    let repr: &[u8; STRING_BYTES] = bytes.get(at..at + STRING_BYTES)?.try_into().ok()?;
    let text = if is_inline(repr[0]) {
        let len = repr
            .iter()
            .position(|&byte| byte == INLINE_FILL)
            .unwrap_or(INLINE_BYTES_MAX);
        &repr[..len]
    } else {
        let len = out_of_line_len(word(repr, 0)) as usize;
        if len <= INLINE_BYTES_MAX {
            return None;
        }
        let target = at as i64 + i64::from(word(repr, 4) as i32);
        claims.leaf(target, len as i64, 1)?;
        &bytes[target as usize..target as usize + len]
    };
    // Subjects and header names are ASCII in practice: the word-at-a-time
    // ASCII test is the common answer, full UTF-8 decoding the rare one.
    (text.is_ascii() || std::str::from_utf8(text).is_ok()).then_some(())
}

/// Checks the header array whose pointer and count lie at `at`: the array
/// is claimed as a whole, and each header's name and value are claimed
/// inside the range before it.
fn headers(bytes: &[u8], at: usize, claims: &mut Claims) -> Option<()> {
    let (array_at, count) = slice(bytes, at);
    let array_len = count * HEADER_BYTES as i64;
    claims.check(array_at, array_len, HEADER_ALIGN as i64)?;
    let mut inner = Claims {
        start: claims.start,
        end: array_at,
    };
    for index in 0..count {
        let header = (array_at + index * HEADER_BYTES as i64) as usize;
        string(bytes, header, &mut inner)?;
        let (value_at, value_len) = slice(bytes, header + HEADER_VALUE_AT);
        inner.leaf(value_at, value_len, 1)?;
    }
    claims.start = array_at + array_len;
    Some(())
}

/// The target position and the count of the relative pointer and count at
/// `at` (the pointer is relative to its own position).
fn slice(bytes: &[u8], at: usize) -> (i64, i64) {
    let words: &[u8; 8] = bytes[at..at + 8].try_into().expect("8 bytes");
    let target = at as i64 + i64::from(word(words, 0) as i32);
    (target, i64::from(word(words, 4)))
}

/// The little-endian `u32` at `at` of `bytes`.
fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}
