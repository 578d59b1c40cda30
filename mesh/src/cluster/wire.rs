//! What nodes say to each other on a link.
//!
//! **Control stream** (one per link, bidirectional, opened by the dialer):
//! messages, each `length: u32 LE | type: u8 | body`, where `length` counts
//! the type byte and the body.
//!
//! | type | body |
//! |---|---|
//! | 1 `HELLO` | [`Hello`], hand-encoded so that builds that differ in anything else can still tell each other why they cannot talk |
//! | 2 `REFUSE` | the reason, UTF-8 |
//! | 4 `INTEREST` | an rkyv archive of [`InterestMessage`] |
//! | 5 `NAME_TAKEN` | the reason, UTF-8: a refusal because a live member holds the name the dialer claims |
//!
//! (Type 3 carried member lists in protocol 1; membership is SWIM's now.)
//!
//! **Datagrams**: membership packets (see [`super::membership`]), one per
//! QUIC datagram, at most [`super::membership::PACKET_BYTES_MAX`] bytes.
//!
//! **Data streams** (several per direction, bidirectional, opened by the
//! sender): the local path's frames ([`starling_transport::frame`]), of kind
//! `FORWARD` only. The reverse direction carries acknowledgements: each a
//! `u64 LE`, the count of forward frames received on the stream and handed
//! to the bus so far (cumulative; never decreasing, never more than were
//! sent). A sender whose link dies counts what was not acknowledged as lost
//! in flight. A forward
//! frame's tag says whether the event is for the receiver's plain
//! subscriptions (bit 0) and how long the queue-group section is (bits
//! 32..64, a multiple of 16); the body is that section (each group name as
//! `len: u16 LE | UTF-8`, zero-padded) followed by the event's archive, which so
//! starts 16-byte aligned like every body.
//!
//! **Closing**: a link's QUIC connection closes with one of the [`close`]
//! codes; a peer that reads `SHUTDOWN` knows the node left on purpose.
//!
//! Every decoder checks lengths before it reads or allocates and reports bad
//! input as a [`WireError`]; the link that sent it is closed, other links go
//! on.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use starling_transport::frame::{FRAME_ALIGN, Frame, Header, Kind, PADDING, padded};
use thiserror::Error;

use super::interest::{InterestMessage, NodeId};

/// The mesh protocol version this build speaks.
pub const MESH_PROTOCOL_VERSION: u32 = 3;

/// The ALPN protocol of mesh links.
pub const ALPN: &[u8] = b"starling-mesh/1";

/// Queue groups one forward frame can name; more take more frames.
pub const FRAME_GROUPS_MAX: usize = 16;

/// QUIC application close codes of links.
pub(crate) mod close {
    use quinn::VarInt;
    /// The node is stopping.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// Another connection to the same peer was kept instead.
    pub const DUPLICATE: VarInt = VarInt::from_u32(1);
    /// The handshake failed.
    pub const REFUSED: VarInt = VarInt::from_u32(2);
    /// The peer sent bytes that break the protocol.
    pub const PROTOCOL: VarInt = VarInt::from_u32(3);
    /// The peer restarted or was forgotten.
    pub const GONE: VarInt = VarInt::from_u32(4);

    /// The reason a stopping node gives with [`SHUTDOWN`].
    pub const SHUTDOWN_REASON: &str = "the node is stopping";

    /// Whether `error` is a peer's close as it stops on purpose: [`SHUTDOWN`]
    /// with a reason. quinn closes a connection dropped without a close with
    /// code 0 too, but gives no reason: that is no departure (a handshake
    /// that gave up on bad bytes, say).
    pub fn is_shutdown(error: &quinn::ConnectionError) -> bool {
        matches!(
            error,
            quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code == SHUTDOWN && !close.reason.is_empty()
        )
    }
}

const HELLO_MAGIC: &[u8; 4] = b"STRM";
const TYPE_HELLO: u8 = 1;
const TYPE_REFUSE: u8 = 2;
const TYPE_INTEREST: u8 = 4;
const TYPE_NAME_TAKEN: u8 = 5;

/// Why bytes from a peer were refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// A control message longer than allowed.
    #[error("control message of {length} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its announced length.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// A control message of no known type.
    #[error("unknown control message type {0}")]
    UnknownType(u8),
    /// A message that does not parse.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
}

fn malformed(what: &'static str, detail: impl Into<String>) -> WireError {
    WireError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// The first message each side sends on a link's control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The mesh protocol version.
    pub protocol: u32,
    /// [`starling_core::event::format_fingerprint`] of the sender's build.
    pub fingerprint: u64,
    /// The sender's node id, random per start.
    pub node_id: NodeId,
    /// The cluster the sender belongs to.
    pub cluster: String,
    /// The sender's node name.
    pub name: String,
    /// The address the sender's cluster port can be dialed at.
    pub advertise: String,
    /// The prefix of the sender's bus's request inboxes: replies to it are
    /// routed to the sender from the moment the link is up.
    pub inbox_prefix: String,
}

impl Hello {
    /// Why a link between `self` (ours) and `theirs` cannot be, if it cannot.
    pub fn incompatibility(&self, theirs: &Hello) -> Option<String> {
        if theirs.protocol != self.protocol {
            return Some(format!(
                "mesh protocol {} is not ours ({})",
                theirs.protocol, self.protocol
            ));
        }
        if theirs.fingerprint != self.fingerprint {
            return Some(format!(
                "event format {:016x} is not ours ({:016x}): builds with different archive formats cannot share events",
                theirs.fingerprint, self.fingerprint
            ));
        }
        if theirs.cluster != self.cluster {
            return Some(format!(
                "cluster '{}' is not ours ('{}')",
                theirs.cluster, self.cluster
            ));
        }
        if theirs.node_id == self.node_id {
            return Some("that is this node itself".into());
        }
        let inbox_tokens = theirs
            .inbox_prefix
            .strip_prefix(starling_core::subject::INBOX_PREFIX);
        let valid_inbox = inbox_tokens.is_some_and(|rest| {
            rest.ends_with('.')
                && rest[..rest.len() - 1].split('.').all(|token| {
                    !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric())
                })
        });
        if !valid_inbox {
            return Some(format!(
                "'{}' is not a request inbox prefix",
                theirs.inbox_prefix
            ));
        }
        None
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(HELLO_MAGIC);
        out.extend_from_slice(&self.protocol.to_le_bytes());
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.node_id.to_le_bytes());
        for text in [
            &self.cluster,
            &self.name,
            &self.advertise,
            &self.inbox_prefix,
        ] {
            let bytes = &text.as_bytes()[..text.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }

    fn decode_body(body: &[u8]) -> Result<Hello, WireError> {
        let mut reader = Reader { bytes: body };
        if reader.take(4)? != HELLO_MAGIC {
            return Err(malformed("HELLO", "not a Starling mesh HELLO"));
        }
        let protocol = u32::from_le_bytes(reader.array()?);
        let fingerprint = u64::from_le_bytes(reader.array()?);
        let node_id = u64::from_le_bytes(reader.array()?);
        let mut text = || -> Result<String, WireError> {
            let len = u16::from_le_bytes(reader.array()?) as usize;
            String::from_utf8(reader.take(len)?.to_vec())
                .map_err(|_| malformed("HELLO", "a name is not UTF-8"))
        };
        let hello = Hello {
            protocol,
            fingerprint,
            node_id,
            cluster: text()?,
            name: text()?,
            advertise: text()?,
            inbox_prefix: text()?,
        };
        // Later versions may append fields; this one ignores them.
        Ok(hello)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < len {
            return Err(malformed("HELLO", "truncated"));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
}

/// A message on a link's control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The handshake.
    Hello(Hello),
    /// The handshake failed; the reason, for the log.
    Refuse(String),
    /// Interest propagation.
    Interest(InterestMessage),
    /// The handshake failed because a live member holds the name the
    /// dialer claims; the reason, for the log. Apart from [`Control::Refuse`]
    /// so that the dialer knows to stop trying (see the driver's
    /// **Names**).
    NameTaken(String),
}

impl Control {
    /// Appends the message, framed, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Control::Hello(hello) => {
                out.push(TYPE_HELLO);
                hello.encode_body(out);
            }
            Control::Refuse(reason) => {
                out.push(TYPE_REFUSE);
                out.extend_from_slice(reason.as_bytes());
            }
            Control::NameTaken(reason) => {
                out.push(TYPE_NAME_TAKEN);
                out.extend_from_slice(reason.as_bytes());
            }
            Control::Interest(message) => {
                out.push(TYPE_INTEREST);
                let archive = rkyv::to_bytes::<rancor::Error>(message)
                    .expect("archiving plain data cannot fail");
                out.extend_from_slice(&archive);
            }
        }
        let length =
            u32::try_from(out.len() - start - 4).expect("control messages stay far below 4 GiB");
        out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    }

    /// The length a control message's 4-byte prefix announces, checked
    /// against `max` before anything waits for or allocates that much.
    pub fn announced_length(prefix: [u8; 4], max: usize) -> Result<usize, WireError> {
        let length = u32::from_le_bytes(prefix) as usize;
        if length > max {
            return Err(WireError::TooLarge { length, max });
        }
        if length == 0 {
            return Err(malformed("control message", "empty"));
        }
        Ok(length)
    }

    /// Decodes a message from what followed its length prefix.
    pub fn decode(message: &[u8]) -> Result<Control, WireError> {
        let (&kind, body) = message
            .split_first()
            .ok_or_else(|| malformed("control message", "empty"))?;
        match kind {
            TYPE_HELLO => Hello::decode_body(body).map(Control::Hello),
            TYPE_REFUSE => Ok(Control::Refuse(String::from_utf8_lossy(body).into_owned())),
            TYPE_INTEREST => archived::<InterestMessage>(body, "INTEREST").map(Control::Interest),
            TYPE_NAME_TAKEN => Ok(Control::NameTaken(
                String::from_utf8_lossy(body).into_owned(),
            )),
            other => Err(WireError::UnknownType(other)),
        }
    }
}

/// Validates and deserializes an rkyv archive (copied to aligned memory:
/// the body follows a 5-byte prefix).
fn archived<T>(body: &[u8], what: &'static str) -> Result<T, WireError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    let mut aligned = AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    rkyv::from_bytes::<T, rancor::Error>(&aligned)
        .map_err(|error| malformed(what, error.to_string()))
}

/// Appends a forward frame to `out`: `archive` for the receiver's plain
/// subscriptions if `plain`, and for one member of each of `groups`
/// (at most [`FRAME_GROUPS_MAX`]; the bus keeps names short).
pub fn encode_forward(out: &mut Vec<u8>, plain: bool, groups: &[&str], archive: &[u8]) {
    debug_assert!(groups.len() <= FRAME_GROUPS_MAX);
    let names: usize = groups.iter().map(|g| 2 + g.len()).sum();
    let section = padded(names);
    let tag = u64::from(plain) | ((section as u64) << 32);
    out.extend_from_slice(&Header::new(Kind::Forward, tag, section + archive.len()).encode());
    for group in groups {
        let len = u16::try_from(group.len()).expect("the bus limits group names to 256 bytes");
        debug_assert!(len > 0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(group.as_bytes());
    }
    out.extend_from_slice(&PADDING[..section - names]);
    out.extend_from_slice(archive);
    out.extend_from_slice(&PADDING[..padded(archive.len()) - archive.len()]);
}

/// A decoded forward frame. Small, so that handing it on costs nothing:
/// the queue-group names stay in the frame until asked for.
#[derive(Debug, Clone, Copy)]
pub struct Forward<'a> {
    /// For the receiver's plain subscriptions.
    pub plain: bool,
    /// The queue-group section, checked by [`decode_forward`].
    names: &'a [u8],
    /// How many queue groups it names.
    pub group_count: usize,
    /// The event's archive, 16-byte aligned, not yet validated.
    pub archive: &'a [u8],
}

impl<'a> Forward<'a> {
    /// The queue groups named (for one member of each), written into
    /// `room`; empty for most frames, which are plain only.
    pub fn groups<'r>(&self, room: &'r mut [&'a str; FRAME_GROUPS_MAX]) -> &'r [&'a str] {
        let mut count = 0;
        let names = GroupNames { rest: self.names }.map_while(Result::ok);
        for (slot, name) in room.iter_mut().zip(names) {
            *slot = name;
            count += 1;
        }
        &room[..count]
    }
}

/// The names of a forward frame's queue-group section, in order: each
/// `len: u16 LE | UTF-8`, then zeros to the end.
struct GroupNames<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for GroupNames<'a> {
    type Item = Result<&'a str, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        let len = match self.rest {
            [low, high, ..] => u16::from_le_bytes([*low, *high]) as usize,
            _ => 0,
        };
        if len == 0 {
            // Padding: all zeros to the end.
            let padding = std::mem::take(&mut self.rest);
            return padding
                .iter()
                .any(|&b| b != 0)
                .then(|| Err(malformed("FORWARD", "an empty group name")));
        }
        let Some((name, rest)) = self.rest[2..].split_at_checked(len) else {
            self.rest = &[];
            return Some(Err(malformed(
                "FORWARD",
                "a group name runs past its section",
            )));
        };
        self.rest = rest;
        Some(
            std::str::from_utf8(name)
                .map_err(|_| malformed("FORWARD", "a group name is not UTF-8")),
        )
    }
}

/// Bytes of one acknowledgement on a data stream's reverse direction.
pub const ACK_BYTES: usize = 8;

/// Checks an acknowledgement from the receiver of a data stream: forward
/// frames it has handled, cumulative. It may not go back (`acked` is the
/// last one) nor exceed the frames `sent`.
pub fn check_ack(ack: [u8; ACK_BYTES], acked: u64, sent: u64) -> Result<u64, WireError> {
    let count = u64::from_le_bytes(ack);
    if count < acked || count > sent {
        return Err(malformed(
            "acknowledgement",
            format!("{count} forwards, after {acked} of {sent} sent"),
        ));
    }
    Ok(count)
}

/// Decodes a frame from a data stream.
pub fn decode_forward(frame: Frame<'_>) -> Result<Forward<'_>, WireError> {
    if frame.header.kind != Kind::Forward {
        return Err(malformed(
            "data stream",
            format!("{:?} frame where only FORWARD may be", frame.header.kind),
        ));
    }
    let tag = frame.header.tag;
    if tag & 0xFFFF_FFFE != 0 {
        return Err(malformed("FORWARD", "reserved flag bits set"));
    }
    let section = (tag >> 32) as usize;
    if !section.is_multiple_of(FRAME_ALIGN) || section > frame.body.len() {
        return Err(malformed(
            "FORWARD",
            format!(
                "group section of {section} bytes in a body of {}",
                frame.body.len()
            ),
        ));
    }
    let (names, archive) = frame.body.split_at(section);
    let plain = tag & 1 == 1;
    let mut group_count = 0;
    for name in (GroupNames { rest: names }) {
        name?;
        if group_count == FRAME_GROUPS_MAX {
            return Err(malformed(
                "FORWARD",
                format!("more than {FRAME_GROUPS_MAX} groups"),
            ));
        }
        group_count += 1;
    }
    if !plain && group_count == 0 {
        return Err(malformed("FORWARD", "an event for nobody"));
    }
    Ok(Forward {
        plain,
        names,
        group_count,
        archive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::interest::{Change, InterestKey};
    use starling_transport::frame::Decoder;

    fn hello() -> Hello {
        Hello {
            protocol: MESH_PROTOCOL_VERSION,
            fingerprint: 7,
            node_id: 42,
            cluster: "food".into(),
            name: "node-a".into(),
            advertise: "127.0.0.1:7401".into(),
            inbox_prefix: "_INBOX.00ff.".into(),
        }
    }

    fn decode_one(bytes: &[u8]) -> Result<Control, WireError> {
        let length = Control::announced_length(bytes[..4].try_into().unwrap(), 1 << 20)?;
        assert_eq!(length, bytes.len() - 4);
        Control::decode(&bytes[4..])
    }

    #[test]
    fn control_messages_round_trip() {
        let messages = [
            Control::Hello(hello()),
            Control::Refuse("cluster 'x' is not ours ('y')".into()),
            Control::NameTaken("a live node named 'a' is already a member".into()),
            Control::Interest(InterestMessage::Delta {
                epoch: 3,
                version: 4,
                change: Change::Add {
                    id: 5,
                    key: InterestKey {
                        pattern: "orders.>".into(),
                        group: Some("billing".into()),
                    },
                },
            }),
            Control::Interest(InterestMessage::SnapshotRequest),
        ];
        for message in messages {
            let mut bytes = Vec::new();
            message.encode(&mut bytes);
            assert_eq!(decode_one(&bytes), Ok(message));
        }
    }

    #[test]
    fn hello_mismatches_are_explained() {
        let ours = hello();
        let mut theirs = ours.clone();
        assert_eq!(
            ours.incompatibility(&theirs).as_deref(),
            Some("that is this node itself")
        );
        theirs.node_id = 43;
        assert_eq!(ours.incompatibility(&theirs), None);
        for bad in ["", ">", "_INBOX.", "_INBOX.*.", "_INBOX.ab", "orders."] {
            theirs.inbox_prefix = bad.into();
            assert!(
                ours.incompatibility(&theirs).unwrap().contains("inbox"),
                "{bad}"
            );
        }
        theirs.inbox_prefix = ours.inbox_prefix.clone();
        theirs.cluster = "other".into();
        assert!(
            ours.incompatibility(&theirs)
                .unwrap()
                .contains("cluster 'other'")
        );
        theirs.fingerprint = 8;
        assert!(
            ours.incompatibility(&theirs)
                .unwrap()
                .contains("event format")
        );
        theirs.protocol = MESH_PROTOCOL_VERSION + 1;
        let why = ours.incompatibility(&theirs).unwrap();
        assert!(
            why.contains(&format!("mesh protocol {}", MESH_PROTOCOL_VERSION + 1)),
            "{why}"
        );
    }

    #[test]
    fn oversized_and_unknown_control_messages_are_refused() {
        assert_eq!(
            Control::announced_length(u32::MAX.to_le_bytes(), 1 << 20),
            Err(WireError::TooLarge {
                length: u32::MAX as usize,
                max: 1 << 20
            })
        );
        assert_eq!(
            Control::decode(&[99, 1, 2]),
            Err(WireError::UnknownType(99))
        );
        assert!(matches!(
            Control::decode(&[TYPE_INTEREST, 1, 2, 3]),
            Err(WireError::Malformed { .. })
        ));
        assert!(matches!(
            Control::decode(&[TYPE_HELLO, b'S']),
            Err(WireError::Malformed { .. })
        ));
    }

    fn frames(bytes: &[u8], mut each: impl FnMut(Frame<'_>)) {
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(bytes);
        Decoder::new(1 << 20)
            .feed(&aligned, |frame| {
                each(frame);
                Ok::<(), ()>(())
            })
            .unwrap();
    }

    #[test]
    fn forward_frames_round_trip_with_the_archive_aligned() {
        let archive = starling_core::Event {
            id: 1,
            time_unix_nanos: 2,
            subject: "orders.eu.created".into(),
            reply_to: None,
            headers: vec![],
            payload: b"x".to_vec(),
        }
        .to_archive();
        for (plain, groups) in [
            (true, vec![]),
            (false, vec!["billing"]),
            (true, vec!["a", "couriers"]),
        ] {
            let mut bytes = Vec::new();
            encode_forward(&mut bytes, plain, &groups, &archive);
            let mut seen = 0;
            frames(&bytes, |frame| {
                let forward = decode_forward(frame).unwrap();
                assert_eq!(forward.plain, plain);
                assert_eq!(forward.group_count, groups.len());
                assert_eq!(forward.groups(&mut [""; FRAME_GROUPS_MAX]), &groups[..]);
                assert_eq!(&forward.archive[..archive.len()], &archive[..]);
                assert!((forward.archive.as_ptr() as usize).is_multiple_of(16));
                seen += 1;
            });
            assert_eq!(seen, 1);
        }
    }

    #[test]
    fn acknowledgements_never_go_back_nor_past_what_was_sent() {
        let ack = |count: u64| count.to_le_bytes();
        assert_eq!(check_ack(ack(5), 3, 9), Ok(5));
        assert_eq!(check_ack(ack(3), 3, 9), Ok(3));
        assert_eq!(check_ack(ack(9), 0, 9), Ok(9));
        assert!(matches!(
            check_ack(ack(2), 3, 9),
            Err(WireError::Malformed { .. })
        ));
        assert!(matches!(
            check_ack(ack(10), 3, 9),
            Err(WireError::Malformed { .. })
        ));
        assert!(matches!(
            check_ack(ack(u64::MAX), 0, 9),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn random_forward_frames_never_panic() {
        // Random bodies and tags under a FORWARD header: decoded or refused.
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 96) as usize;
            let body: Vec<u8> = (0..len).map(|_| next() as u8 % 4).collect();
            let tag = match next() % 3 {
                0 => next(),
                1 => ((next() % 6) * 16) << 32 | (next() & 1),
                _ => 1,
            };
            let mut bytes = Header::new(Kind::Forward, tag, len).encode().to_vec();
            bytes.extend_from_slice(&body);
            bytes.extend_from_slice(&PADDING[..padded(len) - len]);
            frames(&bytes, |frame| {
                if let Ok(forward) = decode_forward(frame) {
                    assert!(forward.plain || forward.group_count > 0);
                    let mut room = [""; FRAME_GROUPS_MAX];
                    let groups = forward.groups(&mut room);
                    assert_eq!(groups.len(), forward.group_count);
                    assert!(groups.iter().all(|g| !g.is_empty()));
                }
            });
        }
    }
}
