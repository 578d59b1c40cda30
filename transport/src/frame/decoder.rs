//! [`Decoder`]: turns the chunks a socket returns into whole frames.
//!
//! Chunks end anywhere, so a frame may arrive in pieces. When a chunk starts on
//! a frame boundary and sits at a 16-byte-aligned address (the usual case for a
//! fresh receive buffer), the decoder hands out the frames in it in place,
//! without copying; only a frame cut by the chunk's end is copied, into a
//! 16-byte-aligned reassembly buffer, where the next chunk completes it. The
//! reassembly buffer never holds more than one frame, and grows with the bytes
//! that arrive, not with the length a header announces. A server's decoders
//! take what it holds from a node-wide [`Budget`] before it grows, and give
//! it back once a large frame is through: a thousand connections with
//! half-sent frames cannot take the node's memory.

use std::sync::Arc;

use rkyv::util::AlignedVec;

use super::{FRAME_ALIGN, FrameError, HEADER_BYTES, Header, Kind};
use crate::budget::Budget;

/// Reassembly capacity kept between frames; more is given back when the
/// frame that needed it is through.
const KEPT_BYTES: usize = 4 << 10;

/// One whole frame. The body is 16-byte aligned and unpadded.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The frame's header.
    pub header: Header,
    /// The body, `header.length` bytes.
    pub body: &'a [u8],
}

/// Reassembles frames from a byte stream.
#[derive(Debug)]
pub struct Decoder {
    /// Bytes of an incomplete frame, from a frame boundary on.
    pending: AlignedVec<FRAME_ALIGN>,
    limits: BodyLimits,
    /// Where the reassembly buffer's capacity is charged, if anywhere, and
    /// how much is charged now.
    budget: Option<Arc<Budget>>,
    charged: usize,
}

/// The longest body accepted: the first frame's, then every other's.
#[derive(Debug, Clone, Copy)]
struct BodyLimits {
    first: usize,
    rest: usize,
    first_seen: bool,
}

impl BodyLimits {
    fn max(&self) -> usize {
        if self.first_seen {
            self.rest
        } else {
            self.first
        }
    }
}

impl Decoder {
    /// A decoder that refuses bodies longer than `body_bytes_max`.
    pub fn new(body_bytes_max: usize) -> Self {
        Self {
            pending: AlignedVec::new(),
            limits: BodyLimits {
                first: body_bytes_max,
                rest: body_bytes_max,
                first_seen: false,
            },
            budget: None,
            charged: 0,
        }
    }

    /// A server's decoder: the first frame's body may be at most
    /// `first_body_bytes_max` (a connection must open with a small `HELLO`,
    /// so a stranger cannot make the node hold a large frame), the others'
    /// `body_bytes_max`; the reassembly buffer is charged to `budget`, and a
    /// frame that would overdraw it is an error.
    pub fn for_server(
        first_body_bytes_max: usize,
        body_bytes_max: usize,
        budget: Arc<Budget>,
    ) -> Self {
        Self {
            limits: BodyLimits {
                first: first_body_bytes_max.min(body_bytes_max),
                rest: body_bytes_max,
                first_seen: false,
            },
            pending: AlignedVec::new(),
            budget: Some(budget),
            charged: 0,
        }
    }

    /// Lets go of the reassembly buffer's memory if no frame is pending in
    /// it: for a connection gone quiet.
    pub fn release_memory(&mut self) {
        if self.pending.is_empty() {
            self.pending = AlignedVec::new();
            self.give_back();
        }
    }

    /// Appends `bytes` to the pending frame, growing the buffer (and its
    /// charge) first if needed: doubling, but never past `frame_bytes`,
    /// the pending frame's whole size if its header is known.
    fn append(&mut self, bytes: &[u8], frame_bytes: Option<usize>) -> Result<(), FrameError> {
        let needed = self.pending.len() + bytes.len();
        if needed > self.pending.capacity() {
            let doubled = (2 * self.pending.capacity()).max(HEADER_BYTES * 16);
            let target = frame_bytes
                .map_or(doubled, |whole| doubled.min(whole))
                .max(needed);
            if let Some(budget) = &self.budget {
                if !budget.try_take(target - self.charged) {
                    return Err(FrameError::PartialFramesOverBudget {
                        held: budget.held(),
                        max: budget.max(),
                    });
                }
                self.charged = target;
            }
            self.pending.reserve_exact(target - self.pending.len());
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// A frame went through: empties the buffer, and lets go of it if a
    /// large frame made it grow.
    fn frame_done(&mut self) {
        self.pending.clear();
        if self.pending.capacity() > KEPT_BYTES {
            self.pending = AlignedVec::new();
            self.give_back();
        }
    }

    fn give_back(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give_back(std::mem::take(&mut self.charged));
        }
    }

    /// Bytes held for an incomplete frame.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Feeds the next chunk of the stream and calls `on_frame` for every frame
    /// it completes, in order. Stops at the first error from the stream (the
    /// connection must then close) or from `on_frame`.
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        mut on_frame: impl FnMut(Frame<'_>) -> Result<(), E>,
    ) -> Result<(), DecodeError<E>> {
        let mut chunk = chunk;
        loop {
            if !self.pending.is_empty() {
                // Complete the pending frame first, copying only what it needs:
                // the rest of its header, then the rest of its body.
                if self.pending.len() < HEADER_BYTES {
                    let take = (HEADER_BYTES - self.pending.len()).min(chunk.len());
                    self.append(&chunk[..take], None)?;
                    chunk = &chunk[take..];
                    if self.pending.len() < HEADER_BYTES {
                        return Ok(());
                    }
                }
                let needed = self.bytes_to_complete()?.expect("the header is whole");
                let take = needed.min(chunk.len());
                let whole = self.pending.len() + needed;
                self.append(&chunk[..take], Some(whole))?;
                chunk = &chunk[take..];
                if take < needed {
                    return Ok(());
                }
                let used = parse_all(&self.pending, &mut self.limits, &mut on_frame)?;
                debug_assert_eq!(
                    used,
                    self.pending.len(),
                    "exactly one whole frame was pending"
                );
                self.frame_done();
                continue;
            }
            if chunk.is_empty() {
                return Ok(());
            }
            if (chunk.as_ptr() as usize).is_multiple_of(FRAME_ALIGN) {
                // Frames in place, no copy.
                let used = parse_all(chunk, &mut self.limits, &mut on_frame)?;
                let rest = &chunk[used..];
                // Check a whole header first, so that a hostile length is
                // refused before anything is held for its body.
                let whole = match rest.get(..HEADER_BYTES) {
                    Some(header) => Some(
                        Header::decode(
                            header.try_into().expect("a whole header"),
                            self.limits.max(),
                        )?
                        .frame_bytes(),
                    ),
                    None => None,
                };
                self.append(rest, whole)?;
                return Ok(());
            }
            // A misaligned chunk: frames must be copied into aligned memory to
            // be read in place. Start the next one with its header.
            let take = HEADER_BYTES.min(chunk.len());
            self.append(&chunk[..take], None)?;
            chunk = &chunk[take..];
        }
    }

    /// Bytes still missing from the pending frame, once its header is whole.
    fn bytes_to_complete<E>(&self) -> Result<Option<usize>, DecodeError<E>> {
        if self.pending.len() < HEADER_BYTES {
            return Ok(None);
        }
        let header = Header::decode(
            self.pending[..HEADER_BYTES]
                .try_into()
                .expect("a whole header"),
            self.limits.max(),
        )?;
        Ok(Some(
            header.frame_bytes().saturating_sub(self.pending.len()),
        ))
    }
}

/// Calls `on_frame` for every whole frame at the start of `bytes` (which is
/// 16-byte aligned and starts on a frame boundary). Returns how many bytes the
/// whole frames took.
fn parse_all<E>(
    bytes: &[u8],
    limits: &mut BodyLimits,
    on_frame: &mut impl FnMut(Frame<'_>) -> Result<(), E>,
) -> Result<usize, DecodeError<E>> {
    let mut at = 0;
    while bytes.len() - at >= HEADER_BYTES {
        let header = Header::decode(
            bytes[at..at + HEADER_BYTES]
                .try_into()
                .expect("a whole header"),
            limits.max(),
        )?;
        let frame_bytes = header.frame_bytes();
        if bytes.len() - at < frame_bytes {
            break;
        }
        let body_start = at + HEADER_BYTES;
        let body = &bytes[body_start..body_start + header.length as usize];
        // Packed records end where the body says, not at the archive's
        // own end: padding that is not zero would be bytes nobody reads.
        if header.kind == Kind::PackedPub
            && bytes[body_start + body.len()..at + frame_bytes]
                .iter()
                .any(|&b| b != 0)
        {
            return Err(DecodeError::Frame(FrameError::Malformed {
                kind: Kind::PackedPub,
                reason: "padding is not zero",
            }));
        }
        limits.first_seen = true;
        on_frame(Frame { header, body }).map_err(DecodeError::Handler)?;
        at += frame_bytes;
    }
    Ok(at)
}

/// Why decoding stopped.
#[derive(Debug)]
pub enum DecodeError<E> {
    /// The stream is not valid frames.
    Frame(FrameError),
    /// The frame handler refused a frame.
    Handler(E),
}

impl Drop for Decoder {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl<E> From<FrameError> for DecodeError<E> {
    fn from(error: FrameError) -> Self {
        DecodeError::Frame(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{PADDING, padded};

    fn frame(kind: Kind, tag: u64, body: &[u8]) -> Vec<u8> {
        let mut bytes = Header::new(kind, tag, body.len()).encode().to_vec();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(&PADDING[..padded(body.len()) - body.len()]);
        bytes
    }

    fn collect(
        decoder: &mut Decoder,
        chunks: &[&[u8]],
    ) -> Result<Vec<(Kind, u64, Vec<u8>)>, FrameError> {
        let mut out = Vec::new();
        for chunk in chunks {
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(chunk);
            decoder
                .feed::<()>(&aligned, |frame| {
                    assert!(
                        (frame.body.as_ptr() as usize).is_multiple_of(16),
                        "bodies are aligned"
                    );
                    out.push((frame.header.kind, frame.header.tag, frame.body.to_vec()));
                    Ok(())
                })
                .map_err(|e| match e {
                    DecodeError::Frame(e) => e,
                    DecodeError::Handler(()) => unreachable!(),
                })?;
        }
        Ok(out)
    }

    #[test]
    fn reassembles_frames_split_at_every_byte() {
        let mut stream = frame(Kind::Pub, 1, b"hello world, this is a body");
        stream.extend(frame(Kind::Ping, 2, b""));
        stream.extend(frame(Kind::Msg, 3, &[7u8; 40]));
        for cut in 0..stream.len() {
            let mut decoder = Decoder::new(1024);
            let got = collect(&mut decoder, &[&stream[..cut], &stream[cut..]]).unwrap();
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[0].2, b"hello world, this is a body");
            assert_eq!((got[1].0, got[1].1), (Kind::Ping, 2));
            assert_eq!(got[2].2, vec![7u8; 40]);
            assert_eq!(decoder.pending_bytes(), 0);
        }
    }

    #[test]
    fn refuses_a_huge_length_as_soon_as_the_header_is_whole() {
        let mut header = Header::new(Kind::Pub, 0, 0).encode();
        header[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut decoder = Decoder::new(1 << 20);
        let error = collect(&mut decoder, &[&header]).unwrap_err();
        assert!(matches!(error, FrameError::TooLarge { .. }));
    }

    #[test]
    fn refuses_unknown_kinds_and_reserved_bits() {
        let mut header = Header::new(Kind::Ping, 0, 0).encode();
        header[4] = 200;
        assert_eq!(
            collect(&mut Decoder::new(64), &[&header]).unwrap_err(),
            FrameError::UnknownKind(200)
        );
        let mut header = Header::new(Kind::Ping, 0, 0).encode();
        header[6] = 1;
        assert_eq!(
            collect(&mut Decoder::new(64), &[&header]).unwrap_err(),
            FrameError::ReservedBits
        );
    }

    #[test]
    fn a_server_decoder_holds_half_frames_within_its_budget_and_gives_back() {
        let budget = Arc::new(Budget::new(48 << 10));
        let mut stranger = Decoder::for_server(64, 1 << 20, budget.clone());
        let error = collect(&mut stranger, &[&Header::new(Kind::Hello, 0, 100).encode()]);
        assert!(
            matches!(error, Err(FrameError::TooLarge { max: 64, .. })),
            "the first frame may be small only"
        );
        let hello = frame(Kind::Hello, 0, &[1; 10]);
        let large = frame(Kind::Pub, 1, &[2; 40_000]);
        let mut decoder = Decoder::for_server(64, 1 << 20, budget.clone());
        let mut start = hello.clone();
        start.extend_from_slice(&large[..20_000]);
        assert_eq!(collect(&mut decoder, &[&start]).unwrap().len(), 1);
        assert_eq!(
            budget.held(),
            20_000,
            "what it holds, not what was announced"
        );
        let mut other = Decoder::for_server(64, 1 << 20, budget.clone());
        let mut start = hello.clone();
        start.extend_from_slice(&large[..30_000]);
        assert!(matches!(
            collect(&mut other, &[&start]),
            Err(FrameError::PartialFramesOverBudget { held: 20_000, .. })
        ));
        drop(other);
        assert_eq!(budget.held(), 20_000);
        let got = collect(&mut decoder, &[&large[20_000..]]).unwrap();
        assert_eq!(got[0].2.len(), 40_000);
        assert_eq!(
            budget.held(),
            0,
            "a large frame's buffer goes once it is through"
        );
        collect(&mut decoder, &[&large[..100]]).unwrap();
        assert!(budget.held() > 0);
        drop(decoder);
        assert_eq!(budget.held(), 0, "dropped, it gives everything back");
    }

    #[test]
    fn misaligned_chunks_are_copied_into_alignment() {
        let stream = frame(Kind::Pub, 9, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let mut shifted = AlignedVec::<16>::new();
        shifted.extend_from_slice(&[0]);
        shifted.extend_from_slice(&stream);
        let mut decoder = Decoder::new(64);
        let mut bodies = Vec::new();
        decoder
            .feed::<()>(&shifted[1..], |frame| {
                assert!((frame.body.as_ptr() as usize).is_multiple_of(16));
                bodies.push(frame.body.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(bodies, vec![vec![1, 2, 3, 4, 5, 6, 7, 8, 9]]);
    }
}
