//! The wire format between clients and a node's local server.
//!
//! A connection is a stream of frames. Every frame is a 16-byte header and a
//! body padded with zeros to a multiple of 16 bytes, so that every body starts
//! on a 16-byte boundary of the stream: an rkyv archive in a `PUB` or `MSG` body
//! can be read in place wherever the receive buffer is 16-byte aligned.
//!
//! ```text
//!  0         4      5       6         8                          16
//!  +---------+------+-------+---------+--------------------------+
//!  | length  | kind | flags | zero    | tag                      |
//!  | u32 LE  | u8   | u8 =0 | u16 = 0 | u64 LE                   |
//!  +---------+------+-------+---------+--------------------------+
//!  | body: `length` bytes | zero padding to a multiple of 16      |
//!  +---------------------------------------------------------------+
//! ```
//!
//! - `length` is the body's length without the padding; the whole frame is
//!   `16 + length.next_multiple_of(16)` bytes.
//! - `kind` says what the body is ([`Kind`]); the values are exchanged between
//!   builds: never change or reuse one.
//! - `tag` is the subscription id for `SUB`, `UNSUB` and `MSG`, the id of the
//!   frame answered for `OK` and `ERR`, and a correlation number for
//!   `PING`/`PONG`. A `PUB` with a non-zero tag asks to be told, with
//!   `ERR(NoResponders)` carrying that tag, if it matched nobody.
//!
//! The bodies of control frames are small, little-endian, and described in
//! [`control`]. `PUB` and `MSG` bodies are archived [`starling_core::Event`]s.
//! A `PACKED_PUB` body (protocol 4) is many small events, each a compact
//! record that the node turns back into the archive a `PUB` would carry
//! ([`packed`], where the record is drawn); its padding must be zero.
//!
//! A connection starts with the client's `HELLO` (protocol version, archive
//! format fingerprint, client name, optional token, user and password) and the server's `HELLO`
//! in reply; anything else first is a protocol error. The node answers with
//! the client's version if it speaks it (3 or 4) and refuses any other; a
//! client sends `PACKED_PUB` frames only to a node that answered 4. Every decoder here
//! checks lengths before it allocates or reads, and reports bad input as a
//! [`FrameError`] with a stable [`ErrorCode`].

pub mod control;
mod decoder;
pub mod packed;

pub use decoder::{DecodeError, Decoder, Frame};

use thiserror::Error;

/// Bytes in a frame header.
pub const HEADER_BYTES: usize = 16;

/// Alignment of every frame in the stream, and of every body.
pub const FRAME_ALIGN: usize = 16;

/// The newest protocol version this build speaks, and the one its client
/// asks for. 3: `HELLO` carries a user and a password. 4: `PACKED_PUB`.
pub const PROTOCOL_VERSION: u32 = 4;

/// The oldest protocol version a node still answers: a version-3 client
/// keeps working unchanged (it never sees a frame it does not know).
pub const PROTOCOL_VERSION_MIN: u32 = 3;

/// The first protocol version with `PACKED_PUB` frames.
pub const PACKED_SINCE: u32 = 4;

const _: () = assert!(HEADER_BYTES == 16);
const _: () = assert!(FRAME_ALIGN == starling_core::event::ARCHIVE_ALIGN);
const _: () = assert!(HEADER_BYTES.is_multiple_of(FRAME_ALIGN));

/// What a frame carries. Do not change the values: they are on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Opens a connection, both ways. Body: [`control::Hello`].
    Hello = 1,
    /// Asks for a `PONG` with the same tag.
    Ping = 2,
    /// Answers a `PING`.
    Pong = 3,
    /// Subscribes; tag = subscription id. Body: [`control::Subscribe`].
    Sub = 4,
    /// Unsubscribes; tag = subscription id. No body.
    Unsub = 5,
    /// Publishes; body: an archived event.
    Pub = 6,
    /// Delivers; tag = subscription id; body: an archived event.
    Msg = 7,
    /// Acknowledges the frame whose tag it carries. No body.
    Ok = 8,
    /// Reports an error about the frame whose tag it carries. Body:
    /// [`control::ErrorBody`].
    Err = 9,
    /// An event one node forwards to another, on a mesh link's data stream;
    /// never on a local connection. Its layout belongs to the mesh
    /// (`starling_mesh::cluster::wire`).
    Forward = 10,
    /// Publishes many small events (protocol 4, client to node); tag: the
    /// high half of the base id. Body: records ([`packed`]).
    PackedPub = 11,
}

impl Kind {
    /// The kind for a wire value.
    pub fn from_wire(value: u8) -> Option<Kind> {
        Some(match value {
            1 => Kind::Hello,
            2 => Kind::Ping,
            3 => Kind::Pong,
            4 => Kind::Sub,
            5 => Kind::Unsub,
            6 => Kind::Pub,
            7 => Kind::Msg,
            8 => Kind::Ok,
            9 => Kind::Err,
            10 => Kind::Forward,
            11 => Kind::PackedPub,
            _ => return None,
        })
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Body length without padding.
    pub length: u32,
    /// What the body is.
    pub kind: Kind,
    /// Subscription id, answered frame, or correlation number.
    pub tag: u64,
}

impl Header {
    /// A header for a body of `length` bytes.
    pub fn new(kind: Kind, tag: u64, length: usize) -> Self {
        let length = u32::try_from(length).expect("frame bodies are far below 4 GiB");
        Self { length, kind, tag }
    }

    /// The header's 16 bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[0..4].copy_from_slice(&self.length.to_le_bytes());
        bytes[4] = self.kind as u8;
        bytes[8..16].copy_from_slice(&self.tag.to_le_bytes());
        bytes
    }

    /// Parses a header, checking every field and the length against
    /// `body_bytes_max`.
    pub fn decode(bytes: &[u8; HEADER_BYTES], body_bytes_max: usize) -> Result<Header, FrameError> {
        let length = u32::from_le_bytes(bytes[0..4].try_into().expect("four bytes"));
        let kind = Kind::from_wire(bytes[4]).ok_or(FrameError::UnknownKind(bytes[4]))?;
        if bytes[5] != 0 || bytes[6] != 0 || bytes[7] != 0 {
            return Err(FrameError::ReservedBits);
        }
        if length as usize > body_bytes_max {
            return Err(FrameError::TooLarge {
                length: u64::from(length),
                max: body_bytes_max,
            });
        }
        let tag = u64::from_le_bytes(bytes[8..16].try_into().expect("eight bytes"));
        Ok(Header { length, kind, tag })
    }

    /// Bytes the whole frame takes in the stream.
    pub fn frame_bytes(&self) -> usize {
        HEADER_BYTES + padded(self.length as usize)
    }
}

/// A whole `ERR` frame (header, body, padding) with tag 0: what a server
/// sends a connection it turns away before a session has it.
pub(crate) fn error_frame(code: ErrorCode, reason: &str) -> Vec<u8> {
    encode(
        Kind::Err,
        0,
        &control::ErrorBody::new(code, reason).encode(),
    )
}

/// `length` rounded up to the frame alignment.
pub fn padded(length: usize) -> usize {
    length.next_multiple_of(FRAME_ALIGN)
}

/// Zeros to pad any body to the frame alignment.
pub static PADDING: [u8; FRAME_ALIGN] = [0; FRAME_ALIGN];

/// A whole frame in a buffer of its own: header, body, padding. For frames
/// made once in a while (a refusal, a tool's or a test's handshake); the
/// data paths write frames in place.
pub fn encode(kind: Kind, tag: u64, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_BYTES + padded(body.len()));
    frame.extend_from_slice(&Header::new(kind, tag, body.len()).encode());
    frame.extend_from_slice(body);
    frame.extend_from_slice(&PADDING[..padded(body.len()) - body.len()]);
    frame
}

/// Stable error codes, sent in `ERR` frames. Do not change the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The bytes are not a valid frame; the connection closes.
    Framing = 1,
    /// A frame came before the handshake, or a second handshake came.
    Handshake = 2,
    /// The peer speaks another protocol version or archive format.
    Incompatible = 3,
    /// The credentials (token, or user and password) were missing or wrong.
    Unauthorized = 4,
    /// A subject or pattern is invalid.
    InvalidSubject = 5,
    /// An event archive failed validation.
    InvalidEvent = 6,
    /// A limit was exceeded: subscriptions, connections, sizes.
    Limit = 7,
    /// Events for this connection were dropped because it read too slowly;
    /// the tag carries the total dropped so far.
    SlowConsumer = 8,
    /// The subscription id is unknown or already used.
    UnknownSubscription = 9,
    /// The node is shutting down.
    ShuttingDown = 10,
    /// The event memory budget is spent.
    OutOfMemory = 11,
    /// A request (a `PUB` with a reply subject and a non-zero tag) matched no
    /// subscriber anywhere; the tag is the request's.
    NoResponders = 12,
    /// A publish or subscribe outside the user's permissions; nothing was
    /// done. The reason names the subject or pattern.
    PermissionDenied = 13,
}

impl ErrorCode {
    /// The code for a wire value.
    pub fn from_wire(value: u16) -> Option<ErrorCode> {
        Some(match value {
            1 => ErrorCode::Framing,
            2 => ErrorCode::Handshake,
            3 => ErrorCode::Incompatible,
            4 => ErrorCode::Unauthorized,
            5 => ErrorCode::InvalidSubject,
            6 => ErrorCode::InvalidEvent,
            7 => ErrorCode::Limit,
            8 => ErrorCode::SlowConsumer,
            9 => ErrorCode::UnknownSubscription,
            10 => ErrorCode::ShuttingDown,
            11 => ErrorCode::OutOfMemory,
            12 => ErrorCode::NoResponders,
            13 => ErrorCode::PermissionDenied,
            _ => return None,
        })
    }

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Framing => "framing",
            ErrorCode::Handshake => "handshake",
            ErrorCode::Incompatible => "incompatible",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidSubject => "invalid-subject",
            ErrorCode::InvalidEvent => "invalid-event",
            ErrorCode::Limit => "limit",
            ErrorCode::SlowConsumer => "slow-consumer",
            ErrorCode::UnknownSubscription => "unknown-subscription",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::OutOfMemory => "out-of-memory",
            ErrorCode::NoResponders => "no-responders",
            ErrorCode::PermissionDenied => "permission-denied",
        }
    }
}

/// Why bytes could not be read as frames. After any of these the stream is
/// out of step, so the connection is closed (after an `ERR` frame if possible).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The kind byte is not one this build knows.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A reserved header byte is not zero.
    #[error("reserved header bits are set")]
    ReservedBits,
    /// The body is longer than the limit.
    #[error("frame body of {length} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared body length.
        length: u64,
        /// The limit.
        max: usize,
    },
    /// Holding the rest of this frame would take the node's budget for
    /// partly received frames (all connections together) past its limit.
    #[error(
        "the node holds {held} bytes of partly received frames, and may hold {max}: send whole frames, or fewer at once"
    )]
    PartialFramesOverBudget {
        /// Bytes held when the frame was refused.
        held: usize,
        /// The budget.
        max: usize,
    },
    /// A control body is shorter than its fields, or has bytes left over.
    #[error("malformed {kind:?} body: {reason}")]
    Malformed {
        /// The frame's kind.
        kind: Kind,
        /// What is wrong.
        reason: &'static str,
    },
}

impl FrameError {
    /// The error code an `ERR` frame for this error carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::PartialFramesOverBudget { .. } => ErrorCode::Limit,
            _ => ErrorCode::Framing,
        }
    }
}
