//! The membership layer's datagrams, byte by byte, and the two hooks foca
//! calls into while it reads and writes them: the [`WireCodec`] and the
//! [`DepartureHandler`].
//!
//! Every datagram starts with one kind byte:
//!
//! ```text
//!   KIND_SWIM          foca packet: Header, u16 count, Members, custom broadcasts
//!   KIND_STATE_REQUEST Identity of the asker
//!   KIND_STATE         u16 count, Members (the sender's full view, in chunks)
//!   KIND_DIGEST        Identity of the sender | digest u64 of its view
//!   KIND_DEPARTURE     Identity of the sender, which is leaving (the same
//!                      bytes as the Departure custom broadcast below)
//!
//!   Identity  = id u64 | started_ms u64 | renewal u16 | len u8 | advertise (UTF-8)
//!   Member    = Identity | incarnation u16 | state u8 (0 alive, 1 suspect, 2 down;
//!               3 down and departed, in KIND_STATE only)
//!   Header    = src Identity | src incarnation u16 | dst Identity | Message
//!   Message   = tag u8 | fields (a probe number u8, an Identity and a probe number,
//!               or nothing; see `encode_message`)
//!   Departure = KIND_DEPARTURE u8 | Identity   (a custom broadcast)
//! ```
//!
//! Integers are big-endian. Do not change values or order: these bytes are
//! exchanged between nodes of different versions.
//!
//! Both hooks write what they see into the [`SharedJournal`] they share
//! with the `Membership` wrapper.

use std::collections::HashMap;

use bytes::{Buf, BufMut};
use foca::{BroadcastHandler, Codec, Header, Identity as _, Invalidates, Member, Message, State};
use thiserror::Error;

use super::identity::Identity;
use super::journal::{Claim, SharedJournal};

/// A foca packet follows.
pub(super) const KIND_SWIM: u8 = 0x53;
/// A request for the receiver's full view.
pub(super) const KIND_STATE_REQUEST: u8 = 0x51;
/// A chunk of the sender's full view.
pub(super) const KIND_STATE: u8 = 0x56;
/// A digest of the sender's view.
pub(super) const KIND_DIGEST: u8 = 0x44;
/// A member leaving on purpose: a datagram of its own, and the only custom
/// broadcast.
pub(super) const KIND_DEPARTURE: u8 = 0x4C;
/// A member's state in a full view: down, and it left on purpose.
const STATE_DEPARTED: u8 = 3;

/// Why bytes could not be read or written.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// The bytes end in the middle of an item.
    #[error("truncated")]
    Truncated,
    /// An unknown message, state or broadcast tag.
    #[error("unknown tag {0:#04x}")]
    UnknownTag(u8),
    /// An advertise address that is not UTF-8 or is empty.
    #[error("bad advertise address")]
    BadAddress,
    /// Bytes left over after the last item.
    #[error("trailing bytes")]
    Trailing,
    /// Not enough room left in the packet for the item (writing only; the
    /// packet is left as it was).
    #[error("no room in the packet")]
    NoRoom,
}

/// foca's [`Codec`]: the layout in the module docs.
#[derive(Debug)]
pub(super) struct WireCodec {
    pub journal: SharedJournal,
}

impl WireCodec {
    fn claim(&self, identity: &Identity, incarnation: u16, state: State) {
        self.journal.lock().claims.push(Claim {
            identity: identity.clone(),
            incarnation,
            state,
        });
    }
}

impl Codec<Identity> for WireCodec {
    type Error = WireError;

    fn encode_header(
        &mut self,
        header: &Header<Identity>,
        mut buf: impl BufMut,
    ) -> Result<(), WireError> {
        self.journal.lock().own_incarnation = header.src_incarnation;
        let mut bytes = Vec::with_capacity(128);
        put_identity(&mut bytes, &header.src);
        bytes.put_u16(header.src_incarnation);
        put_identity(&mut bytes, &header.dst);
        encode_message(&mut bytes, &header.message);
        put_whole(&mut buf, &bytes)
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<Identity>, WireError> {
        let src = get_identity(&mut buf)?;
        let src_incarnation = get_u16(&mut buf)?;
        let dst = get_identity(&mut buf)?;
        let message = decode_message(&mut buf)?;
        // The sender can talk, so foca takes it to be alive at this
        // incarnation.
        self.claim(&src, src_incarnation, State::Alive);
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    fn encode_member(
        &mut self,
        member: &Member<Identity>,
        mut buf: impl BufMut,
    ) -> Result<(), WireError> {
        let mut bytes = Vec::with_capacity(64);
        put_member(&mut bytes, member);
        put_whole(&mut buf, &bytes)?;
        // foca encodes a member when it makes news about it (a suspicion,
        // a verdict) and when it lists members for a newcomer.
        self.claim(member.id(), member.incarnation(), member.state());
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<Identity>, WireError> {
        let member = get_member(&mut buf)?;
        self.claim(member.id(), member.incarnation(), member.state());
        Ok(member)
    }
}

/// foca's [`BroadcastHandler`]: spreads departures, each until every
/// member has seen it (foca stops relaying an item once the handler says
/// it is not news).
#[derive(Debug)]
pub(super) struct DepartureHandler {
    pub journal: SharedJournal,
}

/// A departure's key: its address. A newer identity's departure replaces
/// an older one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DepartureKey(u64);

impl Invalidates for DepartureKey {
    fn invalidates(&self, other: &Self) -> bool {
        self == other
    }
}

impl BroadcastHandler<Identity> for DepartureHandler {
    type Key = DepartureKey;
    type Error = WireError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&Identity>,
    ) -> Result<Option<DepartureKey>, WireError> {
        let identity = decode_departure(data)?;
        let address = identity.addr();
        let news = self.journal.lock().record_departure(identity);
        Ok(news.then_some(DepartureKey(address)))
    }
}

pub(super) fn encode_departure(identity: &Identity) -> Vec<u8> {
    let mut bytes = vec![KIND_DEPARTURE];
    put_identity(&mut bytes, identity);
    bytes
}

fn decode_departure(mut data: &[u8]) -> Result<Identity, WireError> {
    match get_u8(&mut data)? {
        KIND_DEPARTURE => {}
        tag => return Err(WireError::UnknownTag(tag)),
    }
    let identity = get_identity(&mut data)?;
    if data.has_remaining() {
        return Err(WireError::Trailing);
    }
    Ok(identity)
}

pub(super) fn encode_state_request(asker: &Identity) -> Vec<u8> {
    let mut bytes = vec![KIND_STATE_REQUEST];
    put_identity(&mut bytes, asker);
    bytes
}

/// The body of a [`KIND_STATE_REQUEST`] datagram (after the kind byte).
pub(super) fn decode_state_request(mut body: &[u8]) -> Result<Identity, WireError> {
    let asker = get_identity(&mut body)?;
    if body.has_remaining() {
        return Err(WireError::Trailing);
    }
    Ok(asker)
}

pub(super) fn encode_digest(sender: &Identity, digest: u64) -> Vec<u8> {
    let mut bytes = vec![KIND_DIGEST];
    put_identity(&mut bytes, sender);
    bytes.put_u64(digest);
    bytes
}

/// The body of a [`KIND_DIGEST`] datagram (after the kind byte).
pub(super) fn decode_digest(mut body: &[u8]) -> Result<(Identity, u64), WireError> {
    let sender = get_identity(&mut body)?;
    let digest = get_u64(&mut body)?;
    if body.has_remaining() {
        return Err(WireError::Trailing);
    }
    Ok((sender, digest))
}

/// `members` as [`KIND_STATE`] datagrams of at most `bytes_max` each; a
/// full view says which of its down members left on purpose (in
/// `departed`), so that a node that missed the departure notice learns it.
pub(super) fn encode_state<'a>(
    members: impl Iterator<Item = &'a Member<Identity>>,
    departed: &HashMap<u64, Identity>,
    bytes_max: usize,
) -> Vec<Vec<u8>> {
    const PREAMBLE: usize = 3;
    let mut packets = Vec::new();
    let mut packet = Vec::new();
    let mut count = 0u16;
    let mut member_bytes = Vec::with_capacity(64);
    for member in members {
        member_bytes.clear();
        put_member(&mut member_bytes, member);
        if departed.get(&member.id().addr()) == Some(member.id()) {
            *member_bytes.last_mut().expect("a state byte") = STATE_DEPARTED;
        }
        if count > 0 && packet.len() + member_bytes.len() > bytes_max - PREAMBLE {
            packets.push(finish_state(&packet, count));
            packet.clear();
            count = 0;
        }
        packet.extend_from_slice(&member_bytes);
        count += 1;
    }
    if count > 0 {
        packets.push(finish_state(&packet, count));
    }
    packets
}

fn finish_state(members: &[u8], count: u16) -> Vec<u8> {
    let mut packet = Vec::with_capacity(members.len() + 3);
    packet.push(KIND_STATE);
    packet.put_u16(count);
    packet.extend_from_slice(members);
    packet
}

/// The body of a [`KIND_STATE`] datagram (after the kind byte): its
/// members, and those of them that departed.
pub(super) fn decode_state(
    mut body: &[u8],
) -> Result<(Vec<Member<Identity>>, Vec<Identity>), WireError> {
    let count = get_u16(&mut body)?;
    let mut members = Vec::with_capacity(usize::from(count));
    let mut departed = Vec::new();
    for _ in 0..count {
        let identity = get_identity(&mut body)?;
        let incarnation = get_u16(&mut body)?;
        let state = match get_u8(&mut body)? {
            STATE_DEPARTED => {
                departed.push(identity.clone());
                State::Down
            }
            tag => state_from_tag(tag)?,
        };
        members.push(Member::new(identity, incarnation, state));
    }
    if body.has_remaining() {
        return Err(WireError::Trailing);
    }
    Ok((members, departed))
}

/// Writes `bytes` whole or not at all: foca requires a failed write to
/// leave the buffer as it was.
fn put_whole(buf: &mut impl BufMut, bytes: &[u8]) -> Result<(), WireError> {
    if buf.remaining_mut() < bytes.len() {
        return Err(WireError::NoRoom);
    }
    buf.put_slice(bytes);
    Ok(())
}

fn put_identity(bytes: &mut Vec<u8>, identity: &Identity) {
    bytes.put_u64(identity.id);
    bytes.put_u64(identity.started_ms);
    bytes.put_u16(identity.renewal);
    let advertise = identity.advertise.as_bytes();
    let length = u8::try_from(advertise.len()).expect("checked by Identity::new");
    bytes.put_u8(length);
    bytes.put_slice(advertise);
}

fn get_identity(buf: &mut impl Buf) -> Result<Identity, WireError> {
    let id = get_u64(buf)?;
    let started_ms = get_u64(buf)?;
    let renewal = get_u16(buf)?;
    let length = usize::from(get_u8(buf)?);
    if buf.remaining() < length {
        return Err(WireError::Truncated);
    }
    let advertise =
        std::str::from_utf8(&buf.chunk()[..length]).map_err(|_| WireError::BadAddress)?;
    if advertise.is_empty() {
        return Err(WireError::BadAddress);
    }
    let identity = Identity::new(id, advertise, started_ms)
        .map_err(|_| WireError::BadAddress)?
        .renewed_to(renewal);
    buf.advance(length);
    Ok(identity)
}

fn put_member(bytes: &mut Vec<u8>, member: &Member<Identity>) {
    put_identity(bytes, member.id());
    bytes.put_u16(member.incarnation());
    bytes.put_u8(match member.state() {
        State::Alive => 0,
        State::Suspect => 1,
        State::Down => 2,
    });
}

fn get_member(buf: &mut impl Buf) -> Result<Member<Identity>, WireError> {
    let identity = get_identity(buf)?;
    let incarnation = get_u16(buf)?;
    let state = state_from_tag(get_u8(buf)?)?;
    Ok(Member::new(identity, incarnation, state))
}

fn state_from_tag(tag: u8) -> Result<State, WireError> {
    match tag {
        0 => Ok(State::Alive),
        1 => Ok(State::Suspect),
        2 => Ok(State::Down),
        tag => Err(WireError::UnknownTag(tag)),
    }
}

fn encode_message(bytes: &mut Vec<u8>, message: &Message<Identity>) {
    let (tag, about, probe) = match message {
        Message::Ping(probe) => (0, None, Some(*probe)),
        Message::Ack(probe) => (1, None, Some(*probe)),
        Message::PingReq {
            target,
            probe_number,
        } => (2, Some(target), Some(*probe_number)),
        Message::IndirectPing {
            origin,
            probe_number,
        } => (3, Some(origin), Some(*probe_number)),
        Message::IndirectAck {
            target,
            probe_number,
        } => (4, Some(target), Some(*probe_number)),
        Message::ForwardedAck {
            origin,
            probe_number,
        } => (5, Some(origin), Some(*probe_number)),
        Message::Announce => (6, None, None),
        Message::Feed => (7, None, None),
        Message::Gossip => (8, None, None),
        Message::Broadcast => (9, None, None),
        Message::TurnUndead => (10, None, None),
    };
    bytes.put_u8(tag);
    if let Some(identity) = about {
        put_identity(bytes, identity);
    }
    if let Some(probe) = probe {
        bytes.put_u8(probe);
    }
}

fn decode_message(buf: &mut impl Buf) -> Result<Message<Identity>, WireError> {
    let tag = get_u8(buf)?;
    Ok(match tag {
        0 => Message::Ping(get_u8(buf)?),
        1 => Message::Ack(get_u8(buf)?),
        2..=5 => {
            let about = get_identity(buf)?;
            let probe_number = get_u8(buf)?;
            match tag {
                2 => Message::PingReq {
                    target: about,
                    probe_number,
                },
                3 => Message::IndirectPing {
                    origin: about,
                    probe_number,
                },
                4 => Message::IndirectAck {
                    target: about,
                    probe_number,
                },
                _ => Message::ForwardedAck {
                    origin: about,
                    probe_number,
                },
            }
        }
        6 => Message::Announce,
        7 => Message::Feed,
        8 => Message::Gossip,
        9 => Message::Broadcast,
        10 => Message::TurnUndead,
        tag => return Err(WireError::UnknownTag(tag)),
    })
}

fn get_u8(buf: &mut impl Buf) -> Result<u8, WireError> {
    buf.try_get_u8().map_err(|_| WireError::Truncated)
}

fn get_u16(buf: &mut impl Buf) -> Result<u16, WireError> {
    buf.try_get_u16().map_err(|_| WireError::Truncated)
}

fn get_u64(buf: &mut impl Buf) -> Result<u64, WireError> {
    buf.try_get_u64().map_err(|_| WireError::Truncated)
}
