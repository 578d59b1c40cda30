//! What the fuzz targets (`fuzz_targets/`) and the seed writer
//! (`examples/seeds.rs`) share: aligned copies of the input, and the layout
//! of the `swim` target's input, which the seed writer must produce exactly
//! as the target reads it.

use std::time::Duration;

use rkyv::util::AlignedVec;
use starling_mesh::cluster::membership::{Identity, Membership, MembershipConfig};

/// `bytes` copied to a 16-byte-aligned buffer, as a receive buffer is: the
/// decoders read archives in place and refuse misaligned ones, so fuzzing
/// an unaligned slice would only ever reach that refusal.
pub fn aligned(bytes: &[u8]) -> AlignedVec<16> {
    let mut buffer = AlignedVec::with_capacity(bytes.len());
    buffer.extend_from_slice(bytes);
    buffer
}

/// The node the `swim` target plays: every datagram in its input is
/// addressed to this node, built the same way each time so that seeds
/// recorded from a live exchange (see `examples/seeds.rs`) replay into the
/// same state.
pub fn swim_node(now: std::time::Instant) -> Membership {
    let identity = Identity::new(1, SWIM_ADVERTISE, 1_000).expect("a valid advertise address");
    Membership::new(identity, MembershipConfig::lan(), 7, now)
}

/// The advertise address of [`swim_node`].
pub const SWIM_ADVERTISE: &str = "10.0.0.1:7401";

/// One datagram of the `swim` target's input: `delay` (whole milliseconds
/// since the previous one, one byte, so that timers fire between packets),
/// `len` (u16, big-endian), then `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwimRecord<'a> {
    /// Time since the previous datagram.
    pub delay: Duration,
    /// The datagram.
    pub packet: &'a [u8],
}

impl SwimRecord<'_> {
    /// Appends the record to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let delay = u8::try_from(self.delay.as_millis().min(255)).expect("clamped to a byte");
        let len = u16::try_from(self.packet.len()).expect("datagrams are far below 64 KiB");
        out.push(delay);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(self.packet);
    }

    /// The records in `input`; a record cut short ends the input with
    /// what it has.
    pub fn read_all(mut input: &[u8]) -> Vec<SwimRecord<'_>> {
        let mut records = Vec::new();
        while let [delay, high, low, rest @ ..] = input {
            let len = usize::from(u16::from_be_bytes([*high, *low])).min(rest.len());
            let (packet, tail) = rest.split_at(len);
            records.push(SwimRecord {
                delay: Duration::from_millis(u64::from(*delay)),
                packet,
            });
            input = tail;
        }
        records
    }
}
