//! The local path's frame decoder ([`Decoder`], [`Header::decode`]) on an
//! arbitrary byte stream, checked against itself: the same stream fed whole
//! and fed in arbitrary chunks at arbitrary alignments must give the same
//! frames and the same error, since a socket may cut the stream anywhere.
//! Input: one byte of alignment offset, one byte seeding the chunk sizes,
//! then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_fuzz::aligned;
use starling_transport::frame::{
    DecodeError, Decoder, FrameError, HEADER_BYTES, Header, Kind, padded,
};

/// Small, so that short inputs reach the length limit.
const BODY_MAX: usize = 4096;

#[derive(Debug, Default, PartialEq)]
struct Decoded {
    frames: Vec<(Kind, u64, Vec<u8>)>,
    error: Option<FrameError>,
    pending: usize,
}

/// Feeds `stream` in chunks of `sizes` (cycled), each copied to `offset`
/// bytes past a 16-byte boundary.
fn decode(stream: &[u8], sizes: &[usize], offset: usize) -> Decoded {
    let mut decoder = Decoder::new(BODY_MAX);
    let mut decoded = Decoded::default();
    let mut rest = stream;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
        rest = tail;
        let mut buffer = aligned(&[0; 16][..offset]);
        buffer.extend_from_slice(chunk);
        let fed = decoder.feed::<()>(&buffer[offset..], |frame| {
            assert!(
                (frame.body.as_ptr() as usize).is_multiple_of(16),
                "bodies are aligned"
            );
            assert!(frame.body.len() <= BODY_MAX);
            decoded
                .frames
                .push((frame.header.kind, frame.header.tag, frame.body.to_vec()));
            Ok(())
        });
        assert!(
            decoder.pending_bytes() <= HEADER_BYTES + padded(BODY_MAX),
            "the decoder holds at most one frame"
        );
        match fed {
            Ok(()) => {}
            Err(DecodeError::Frame(error)) => {
                decoded.error = Some(error);
                return decoded;
            }
            Err(DecodeError::Handler(())) => unreachable!("the handler accepts every frame"),
        }
    }
    decoded.pending = decoder.pending_bytes();
    decoded
}

fuzz_target!(|data: &[u8]| {
    let [offset, seed, stream @ ..] = data else {
        return;
    };
    let whole = decode(stream, &[stream.len()], 0);
    // Chunk sizes from 1 to 64 bytes, from a xorshift seeded by the input.
    let mut state = u32::from(*seed) | 0x100;
    let sizes: Vec<usize> = (0..16)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 64) as usize + 1
        })
        .collect();
    let chunked = decode(stream, &sizes, usize::from(offset % 16));
    assert_eq!(whole, chunked, "chunking changed what was decoded");
    // Every header accepted is its own canonical encoding.
    let mut at = 0;
    for (kind, tag, body) in &whole.frames {
        let header = Header::new(*kind, *tag, body.len());
        assert_eq!(header.encode()[..], stream[at..at + HEADER_BYTES]);
        at += header.frame_bytes();
    }
});
