//! The event envelope: an rkyv archive written once where an event enters the
//! system and read in place by every consumer after that.
//!
//! ```text
//! Event { id: u128, time_unix_nanos: u64, subject: String, reply_to: Option<String>,
//!         headers: Vec<(String, Vec<u8>)>, payload: Vec<u8> }
//! ```
//!
//! Three ways in and two ways out:
//!
//! - [`Event`] is the owned form, for tests, clients and anything that is not on
//!   the data path.
//! - [`EventParts`] borrows its strings and bytes and archives to *the same bytes*
//!   as the equivalent [`Event`] (a property test holds this), so the publish path
//!   can serialize straight into log memory with no allocation.
//! - [`validate`] checks bytes from outside the process (a client, a peer) once,
//!   with rkyv's bytecheck plus the semantic limits of [`EventLimits`], and never
//!   panics or reads out of bounds, whatever the bytes.
//! - [`access_unchecked`] reads bytes that were validated before (or written by
//!   this process) at no cost.
//!
//! Every archive starts on a 16-byte boundary: the `u128` id gives the root
//! object 16-byte alignment, and rkyv checks alignment against absolute
//! addresses. The record and frame headers in front of an archive are therefore
//! always a multiple of 16 bytes long.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rkyv::rancor;
use rkyv::ser::allocator::SubAllocator;
use rkyv::ser::writer::Buffer;
use rkyv::string::ArchivedString;
use rkyv::tuple::ArchivedTuple2;
use rkyv::vec::ArchivedVec;
use rkyv::{Archive, Deserialize, Serialize};
use thiserror::Error;

use crate::hash::Fnv1a;
use crate::subject::{self, SubjectError, SubjectLimits};

mod layout;
mod parts;
mod plain;
pub(crate) use plain::Template;
mod verify;

/// The archived form of one header, `(String, Vec<u8>)`.
pub type ArchivedHeader = ArchivedTuple2<ArchivedString, ArchivedVec<u8>>;

/// Alignment of every archive, in bytes.
pub const ARCHIVE_ALIGN: usize = 16;

/// Version of the archived layout. Bump it whenever [`Event`] changes shape.
pub const FORMAT_VERSION: u32 = 1;

/// An event, owned.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Event {
    /// Unique id, chosen by the publisher.
    pub id: u128,
    /// Wall-clock time of publication, in nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    /// The subject the event was published on; never a pattern.
    pub subject: String,
    /// Where replies go, for requests.
    pub reply_to: Option<String>,
    /// A small list of headers; CloudEvents attribute names where they apply
    /// (`ce-type`, `ce-source`, ...).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The application's bytes.
    pub payload: Vec<u8>,
}

/// An event whose strings and bytes are borrowed. Archives exactly as the
/// [`Event`] with the same contents, without allocating (see [`crate::event::parts`]
/// for the hand-written `Archive` impl).
#[derive(Debug, Clone, Copy, Default)]
pub struct EventParts<'a> {
    /// See [`Event::id`].
    pub id: u128,
    /// See [`Event::time_unix_nanos`].
    pub time_unix_nanos: u64,
    /// See [`Event::subject`].
    pub subject: &'a str,
    /// See [`Event::reply_to`].
    pub reply_to: Option<&'a str>,
    /// See [`Event::headers`].
    pub headers: &'a [Header<'a>],
    /// See [`Event::payload`].
    pub payload: &'a [u8],
}

impl EventParts<'_> {
    /// An upper bound on the archive's size, computed without serializing: the
    /// root, plus every out-of-line object with worst-case alignment padding.
    /// (Short strings are stored inline, so this over-counts them.)
    pub fn archive_bytes_bound(&self) -> usize {
        let out_of_line = |len: usize| len + ARCHIVE_ALIGN;
        let headers = self.headers.len() * size_of::<ArchivedHeader>()
            + ARCHIVE_ALIGN
            + self
                .headers
                .iter()
                .map(|h| out_of_line(h.0.len()) + out_of_line(h.1.len()))
                .sum::<usize>();
        size_of::<ArchivedEvent>()
            + ARCHIVE_ALIGN
            + out_of_line(self.subject.len())
            + self.reply_to.map_or(0, |r| out_of_line(r.len()))
            + headers
            + out_of_line(self.payload.len())
    }
}

/// One borrowed header: a name and a value. Archives as `(String, Vec<u8>)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a>(pub &'a str, pub &'a [u8]);

/// Limits on the parts of an event, checked on the way in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Limits on the subject and the reply subject.
    pub subject: SubjectLimits,
    /// Largest payload, in bytes.
    pub payload_bytes_max: usize,
    /// Most headers on one event.
    pub headers_max: usize,
    /// Most bytes in all header names and values together.
    pub header_bytes_max: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            subject: SubjectLimits::default(),
            payload_bytes_max: 1 << 20,
            headers_max: 64,
            header_bytes_max: 16 << 10,
        }
    }
}

impl EventLimits {
    /// An upper bound on the archived size of any event within these limits,
    /// so that buffers can be sized once.
    pub fn archive_bytes_max(&self) -> usize {
        let fixed = size_of::<ArchivedEvent>() + ARCHIVE_ALIGN;
        let strings = 2 * (self.subject.bytes_max + ARCHIVE_ALIGN);
        let header_entry = size_of::<ArchivedHeader>();
        // The entries' vector is out of line too, aligned like the rest
        // (`EventParts::archive_bytes_bound` counts it).
        let headers = ARCHIVE_ALIGN
            + self.headers_max * (header_entry + 2 * ARCHIVE_ALIGN)
            + self.header_bytes_max;
        fixed + strings + headers + self.payload_bytes_max + ARCHIVE_ALIGN
    }
}

/// Why an event could not be encoded. Nothing was published.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The subject is not a valid published subject.
    #[error("invalid subject: {0}")]
    Subject(SubjectError),
    /// The reply subject is not a valid published subject.
    #[error("invalid reply subject: {0}")]
    ReplyTo(SubjectError),
    /// The payload is larger than [`EventLimits::payload_bytes_max`].
    #[error("the payload is {len} bytes; the limit is {max} bytes")]
    PayloadTooLarge {
        /// Payload length in bytes.
        len: usize,
        /// The limit it broke.
        max: usize,
    },
    /// A header name is empty, too long, or holds whitespace, ':' or control characters.
    #[error(
        "header {index} has an invalid name: names are 1 to 256 visible ASCII characters without ':'"
    )]
    HeaderName {
        /// Zero-based index of the header.
        index: usize,
    },
    /// More headers, or more header bytes, than [`EventLimits`] allows.
    #[error("the headers exceed the limits of {headers_max} headers and {bytes_max} bytes")]
    HeadersTooLarge {
        /// The limit on the number of headers.
        headers_max: usize,
        /// The limit on header bytes.
        bytes_max: usize,
    },
    /// The output buffer is too small for the archive (or not 16-byte aligned).
    #[error("the output buffer is too small or misaligned for this event")]
    BufferTooSmall,
}

/// Why bytes were refused as an event. The bytes are not read any further.
#[derive(Debug, Error)]
pub enum ValidationError {
    /// The bytes do not start on a 16-byte boundary.
    #[error("the archive is not 16-byte aligned")]
    Misaligned,
    /// Too few or too many bytes for any event within the limits.
    #[error("the archive is {len} bytes; events are {min} to {max} bytes")]
    BadLength {
        /// Length given.
        len: usize,
        /// Smallest possible event.
        min: usize,
        /// Largest event within the limits.
        max: usize,
    },
    /// The bytes are not a well-formed archive (bad pointers, bad UTF-8, ...).
    #[error("malformed archive: {0}")]
    Malformed(rancor::Error),
    /// The archive is well formed but breaks a limit or a subject rule.
    #[error("{0}")]
    Limits(EncodeError),
}

impl ValidationError {
    /// A short, stable code for error frames and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::Misaligned => "misaligned",
            ValidationError::BadLength { .. } => "bad-length",
            ValidationError::Malformed(_) => "malformed",
            ValidationError::Limits(_) => "limits",
        }
    }
}

/// Checks the parts of an event against the limits, before anything is written.
pub fn check_parts(parts: &EventParts<'_>, limits: &EventLimits) -> Result<(), EncodeError> {
    check_subject(parts.subject, limits)?;
    check_parts_but_subject(parts, limits)
}

/// Checks the subject only.
pub(crate) fn check_subject(subject: &str, limits: &EventLimits) -> Result<(), EncodeError> {
    subject::validate_subject(subject, &limits.subject).map_err(EncodeError::Subject)
}

/// Checks everything [`check_parts`] checks except the subject, for callers
/// that know the subject is valid (a publisher whose match cache holds it).
#[inline]
pub(crate) fn check_parts_but_subject(
    parts: &EventParts<'_>,
    limits: &EventLimits,
) -> Result<(), EncodeError> {
    if let Some(reply_to) = parts.reply_to {
        subject::validate_subject(reply_to, &limits.subject).map_err(EncodeError::ReplyTo)?;
    }
    if parts.payload.len() > limits.payload_bytes_max {
        return Err(EncodeError::PayloadTooLarge {
            len: parts.payload.len(),
            max: limits.payload_bytes_max,
        });
    }
    check_headers(parts.headers.iter().map(|h| (h.0, h.1)), limits)
}

fn check_headers<'a>(
    headers: impl ExactSizeIterator<Item = (&'a str, &'a [u8])>,
    limits: &EventLimits,
) -> Result<(), EncodeError> {
    let too_large = EncodeError::HeadersTooLarge {
        headers_max: limits.headers_max,
        bytes_max: limits.header_bytes_max,
    };
    if headers.len() > limits.headers_max {
        return Err(too_large);
    }
    let mut bytes = 0usize;
    for (index, (name, value)) in headers.enumerate() {
        if !valid_header_name(name) {
            return Err(EncodeError::HeaderName { index });
        }
        bytes += name.len() + value.len();
        if bytes > limits.header_bytes_max {
            return Err(too_large);
        }
    }
    Ok(())
}

fn valid_header_name(name: &str) -> bool {
    (1..=256).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Scratch space for the serializer's bookkeeping (the resolvers of the header
/// list): 64 headers need 512 bytes, so this is ample and lives on the stack.
const SCRATCH_BYTES: usize = 4096;

/// Archives `parts` into the start of `out`, which must be 16-byte aligned.
/// Returns the archive's length. Does not check limits; see [`check_parts`].
///
/// Allocates nothing: the archive goes straight into `out` and the serializer's
/// scratch space is on the stack. An event without headers, the common case,
/// is archived by hand (module `plain`) to the same bytes, several times faster.
#[inline]
pub fn encode_into(parts: &EventParts<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    if !(out.as_ptr() as usize).is_multiple_of(ARCHIVE_ALIGN) {
        return Err(EncodeError::BufferTooSmall);
    }
    if parts.headers.is_empty() {
        match plain::encode(parts, out) {
            plain::Encoded::Len(len) => return Ok(len),
            plain::Encoded::TooSmall => return Err(EncodeError::BufferTooSmall),
            plain::Encoded::NotPlain => {}
        }
    }
    encode_with_rkyv(parts, out)
}

/// [`encode_into`] by rkyv's serializer: events with headers, and what the
/// hand-written archiver leaves to it.
#[inline(never)]
fn encode_with_rkyv(parts: &EventParts<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    let mut scratch = [MaybeUninit::<u8>::uninit(); SCRATCH_BYTES];
    let writer = rkyv::api::low::to_bytes_in_with_alloc::<_, _, rancor::Failure>(
        parts,
        Buffer::from(out),
        SubAllocator::new(&mut scratch),
    )
    .map_err(|_| EncodeError::BufferTooSmall)?;
    Ok(writer.len())
}

impl Event {
    /// Borrows this event as [`EventParts`] (headers are borrowed into `headers`).
    pub fn parts<'a>(&'a self, headers: &'a mut Vec<Header<'a>>) -> EventParts<'a> {
        headers.clear();
        headers.extend(self.headers.iter().map(|(n, v)| Header(n, v)));
        EventParts {
            id: self.id,
            time_unix_nanos: self.time_unix_nanos,
            subject: &self.subject,
            reply_to: self.reply_to.as_deref(),
            headers,
            payload: &self.payload,
        }
    }

    /// Archives the event into a fresh 16-byte-aligned buffer. Allocates; for
    /// tests, clients and control paths.
    pub fn to_archive(&self) -> rkyv::util::AlignedVec<ARCHIVE_ALIGN> {
        rkyv::to_bytes::<rancor::Error>(self).expect("archiving into a growable buffer cannot fail")
    }
}

/// Validates bytes from outside the process and returns the archived event.
///
/// Checks, in order: alignment, length bounds, the archive's structure (every
/// relative pointer in bounds, every string UTF-8), then the semantic rules
/// (subject, reply subject, header names, size limits). Never panics.
///
/// The structure is checked by hand for the fixed layout of
/// [`ArchivedEvent`] ([`Structure::Layout`]), which accepts exactly what
/// rkyv's bytecheck accepts, several times faster; what it refuses goes to
/// bytecheck, which has the last word and says what is wrong.
pub fn validate<'a>(
    bytes: &'a [u8],
    limits: &EventLimits,
) -> Result<&'a ArchivedEvent, ValidationError> {
    match validate_with(bytes, limits, Structure::Layout) {
        Err(ValidationError::Malformed(_)) => validate_with(bytes, limits, Structure::Bytecheck),
        checked => checked,
    }
}

/// How [`validate_with`] checks an archive's structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// The hand-written check of [`ArchivedEvent`]'s fixed layout. It must
    /// never accept what [`Structure::Bytecheck`] refuses; a differential
    /// property test and a fuzz target hold it to that.
    Layout,
    /// rkyv's own validation (bytecheck), with errors that say what is wrong.
    Bytecheck,
}

/// Like [`validate`], with the structural check named. For the tests and
/// fuzz targets that compare the two checks, and for benches.
pub fn validate_with<'a>(
    bytes: &'a [u8],
    limits: &EventLimits,
    structure: Structure,
) -> Result<&'a ArchivedEvent, ValidationError> {
    if !(bytes.as_ptr() as usize).is_multiple_of(ARCHIVE_ALIGN) {
        return Err(ValidationError::Misaligned);
    }
    let (min, max) = (size_of::<ArchivedEvent>(), limits.archive_bytes_max());
    if bytes.len() < min || bytes.len() > max {
        return Err(ValidationError::BadLength {
            len: bytes.len(),
            min,
            max,
        });
    }
    let event = match structure {
        Structure::Layout => verify::access(bytes).ok_or_else(|| {
            ValidationError::Malformed(<rancor::Error as rancor::Source>::new(OffLayout))
        })?,
        Structure::Bytecheck => rkyv::access::<ArchivedEvent, rancor::Error>(bytes)
            .map_err(ValidationError::Malformed)?,
    };
    check_archived(event, limits).map_err(ValidationError::Limits)?;
    Ok(event)
}

/// What [`Structure::Layout`] says of an archive it refuses.
#[derive(Debug, Error)]
#[error("not a well-formed archive of the event layout")]
struct OffLayout;

/// Bytes that [`check`] accepted as an event: the only way to hand an
/// archive from outside to a publisher, so nothing unvalidated gets in.
#[derive(Debug, Clone, Copy)]
pub struct Checked<'a> {
    bytes: &'a [u8],
    event: &'a ArchivedEvent,
}

impl<'a> Checked<'a> {
    /// The archive's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The event, read in place.
    pub fn event(&self) -> &'a ArchivedEvent {
        self.event
    }
}

/// Like [`validate`], keeping the bytes together with the proof that they
/// were validated.
pub fn check<'a>(bytes: &'a [u8], limits: &EventLimits) -> Result<Checked<'a>, ValidationError> {
    let event = validate(bytes, limits)?;
    Ok(Checked { bytes, event })
}

/// Parts that [`checked_parts`] accepted: the borrowed twin of [`Checked`],
/// for a receiver that gets events in a compact form (a node reading
/// `PACKED_PUB` records) and hands them to a publisher, which archives them
/// once, straight into event memory.
#[derive(Debug, Clone, Copy)]
pub struct CheckedParts<'a> {
    parts: EventParts<'a>,
}

impl<'a> CheckedParts<'a> {
    /// The parts.
    pub fn parts(&self) -> &EventParts<'a> {
        &self.parts
    }
}

/// Checks `parts` against the limits as [`check`] checks the archive they
/// make: what `check` would say of rkyv's archive of the same event, the
/// same acceptance or the same error, without archiving them.
pub fn checked_parts<'a>(
    parts: EventParts<'a>,
    limits: &EventLimits,
) -> Result<CheckedParts<'a>, ValidationError> {
    check_parts(&parts, limits).map_err(ValidationError::Limits)?;
    Ok(CheckedParts { parts })
}

fn check_archived(event: &ArchivedEvent, limits: &EventLimits) -> Result<(), EncodeError> {
    subject::validate_subject(event.subject(), &limits.subject).map_err(EncodeError::Subject)?;
    if let Some(reply_to) = event.reply_to() {
        subject::validate_subject(reply_to, &limits.subject).map_err(EncodeError::ReplyTo)?;
    }
    if event.payload().len() > limits.payload_bytes_max {
        return Err(EncodeError::PayloadTooLarge {
            len: event.payload().len(),
            max: limits.payload_bytes_max,
        });
    }
    check_headers(event.headers(), limits)
}

/// Reads an archived event without checking it.
///
/// # Safety
///
/// `bytes` must be exactly an archive that [`validate`] accepted or that
/// [`encode_into`] produced, unchanged since, and 16-byte aligned.
pub unsafe fn access_unchecked(bytes: &[u8]) -> &ArchivedEvent {
    // SAFETY: the caller guarantees the bytes are a valid, aligned ArchivedEvent root.
    unsafe { rkyv::access_unchecked::<ArchivedEvent>(bytes) }
}

impl ArchivedEvent {
    /// The event's unique id.
    pub fn id(&self) -> u128 {
        self.id.to_native()
    }

    /// Publication time, nanoseconds since the Unix epoch.
    pub fn time_unix_nanos(&self) -> u64 {
        self.time_unix_nanos.to_native()
    }

    /// The subject it was published on.
    pub fn subject(&self) -> &str {
        self.subject.as_str()
    }

    /// The reply subject, for requests.
    pub fn reply_to(&self) -> Option<&str> {
        self.reply_to.as_ref().map(|r| r.as_str())
    }

    /// The payload, in place.
    pub fn payload(&self) -> &[u8] {
        self.payload.as_slice()
    }

    /// All headers, in order.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|h| (h.0.as_str(), h.1.as_slice()))
    }

    /// The value of the first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Copies the event out into its owned form.
    pub fn to_event(&self) -> Event {
        rkyv::deserialize::<Event, rancor::Error>(self)
            .expect("deserializing a valid archive cannot fail")
    }
}

/// A fingerprint of the archive format this build reads and writes: the
/// layout version and the bytes of a probe event, hashed. Two builds with
/// different rkyv format features (endianness, pointer width, alignment) or a
/// different [`Event`] shape get different fingerprints, and the handshakes of
/// the local path and the mesh refuse to talk across them.
pub fn format_fingerprint() -> u64 {
    static FINGERPRINT: OnceLock<u64> = OnceLock::new();
    *FINGERPRINT.get_or_init(|| {
        let probe = Event {
            id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            time_unix_nanos: 0x1112_1314_1516_1718,
            subject: "starling.format.probe".into(),
            reply_to: Some("r".into()),
            headers: vec![("h".into(), vec![1, 2, 3])],
            payload: vec![0xAB; 17],
        };
        let archive = probe.to_archive();
        Fnv1a::new()
            .write(&FORMAT_VERSION.to_le_bytes())
            .write(&(size_of::<ArchivedEvent>() as u64).to_le_bytes())
            .write(&archive)
            .finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkyv::util::AlignedVec;

    fn sample() -> Event {
        Event {
            id: 42,
            time_unix_nanos: 7,
            subject: "orders.eu.created".into(),
            reply_to: Some("_INBOX.x.1".into()),
            headers: vec![("ce-type".into(), b"order.created".to_vec())],
            payload: b"{\"id\":1}".to_vec(),
        }
    }

    #[test]
    fn parts_archive_to_the_same_bytes_as_the_owned_event() {
        let event = sample();
        let mut headers = Vec::new();
        let parts = event.parts(&mut headers);
        let mut out = AlignedVec::<16>::with_capacity(1024);
        out.resize(1024, 0);
        let len = encode_into(&parts, &mut out).unwrap();
        assert_eq!(&out[..len], &event.to_archive()[..]);
    }

    #[test]
    fn validated_view_reads_every_field() {
        let event = sample();
        let bytes = event.to_archive();
        let archived = validate(&bytes, &EventLimits::default()).unwrap();
        assert_eq!(archived.id(), 42);
        assert_eq!(archived.time_unix_nanos(), 7);
        assert_eq!(archived.subject(), "orders.eu.created");
        assert_eq!(archived.reply_to(), Some("_INBOX.x.1"));
        assert_eq!(archived.payload(), b"{\"id\":1}");
        assert_eq!(archived.header("ce-type"), Some(&b"order.created"[..]));
        assert_eq!(archived.header("nope"), None);
        assert_eq!(archived.to_event(), event);
    }

    #[test]
    fn refuses_misaligned_short_and_semantically_bad_archives() {
        let bytes = sample().to_archive();
        let mut shifted = AlignedVec::<16>::new();
        shifted.extend_from_slice(&[0]);
        shifted.extend_from_slice(&bytes);
        let limits = EventLimits::default();
        assert!(matches!(
            validate(&shifted[1..], &limits),
            Err(ValidationError::Misaligned)
        ));
        assert!(matches!(
            validate(&bytes[..16], &limits),
            Err(ValidationError::BadLength { .. })
        ));

        let mut bad = sample();
        bad.subject = "orders.*".into();
        let bytes = bad.to_archive();
        let err = validate(&bytes, &limits).unwrap_err();
        assert!(
            matches!(err, ValidationError::Limits(EncodeError::Subject(_))),
            "{err}"
        );
    }

    #[test]
    fn encode_into_reports_a_small_buffer_instead_of_growing() {
        let event = sample();
        let mut headers = Vec::new();
        let parts = event.parts(&mut headers);
        let mut out = AlignedVec::<16>::with_capacity(32);
        out.resize(32, 0);
        assert_eq!(
            encode_into(&parts, &mut out),
            Err(EncodeError::BufferTooSmall)
        );
        let plain = EventParts {
            subject: "orders.eu.created",
            payload: b"x",
            ..EventParts::default()
        };
        assert_eq!(
            encode_into(&plain, &mut out),
            Err(EncodeError::BufferTooSmall)
        );
    }

    #[test]
    fn check_parts_enforces_limits() {
        let limits = EventLimits {
            payload_bytes_max: 4,
            headers_max: 1,
            header_bytes_max: 8,
            ..EventLimits::default()
        };
        let ok = EventParts {
            subject: "a.b",
            payload: b"abcd",
            ..EventParts::default()
        };
        assert_eq!(check_parts(&ok, &limits), Ok(()));
        let big = EventParts {
            payload: b"abcde",
            ..ok
        };
        assert!(matches!(
            check_parts(&big, &limits),
            Err(EncodeError::PayloadTooLarge { len: 5, max: 4 })
        ));
        let two = [Header("a", b""), Header("b", b"")];
        let many = EventParts {
            headers: &two,
            ..ok
        };
        assert!(matches!(
            check_parts(&many, &limits),
            Err(EncodeError::HeadersTooLarge { .. })
        ));
        let bad_name = [Header("a b", b"")];
        let named = EventParts {
            headers: &bad_name,
            ..ok
        };
        assert_eq!(
            check_parts(&named, &limits),
            Err(EncodeError::HeaderName { index: 0 })
        );
        let reply = EventParts {
            reply_to: Some("x.>"),
            ..ok
        };
        assert!(matches!(
            check_parts(&reply, &limits),
            Err(EncodeError::ReplyTo(_))
        ));
    }

    #[test]
    fn archive_bound_covers_the_largest_event() {
        let limits = EventLimits::default();
        let name = "n".repeat(128);
        let value = vec![1u8; 128];
        let headers: Vec<_> = (0..64).map(|_| Header(&name, &value)).collect();
        let subject = "s".repeat(256);
        let payload = vec![0u8; limits.payload_bytes_max];
        let parts = EventParts {
            id: u128::MAX,
            time_unix_nanos: u64::MAX,
            subject: &subject,
            reply_to: Some(&subject),
            headers: &headers,
            payload: &payload,
        };
        assert_eq!(check_parts(&parts, &limits), Ok(()));
        let mut out = AlignedVec::<16>::with_capacity(limits.archive_bytes_max());
        out.resize(limits.archive_bytes_max(), 0);
        let len = encode_into(&parts, &mut out).unwrap();
        assert!(len <= limits.archive_bytes_max());
        assert!(validate(&out[..len], &limits).is_ok());
    }

    #[test]
    fn fingerprint_is_stable_within_a_build() {
        assert_eq!(format_fingerprint(), format_fingerprint());
        assert_ne!(format_fingerprint(), 0);
    }
}
