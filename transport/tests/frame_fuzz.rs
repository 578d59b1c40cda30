//! The frame decoder and control-body parsers against random input.
//!
//! - Valid streams of random frames, cut into random chunks at random
//!   alignments, decode to exactly the frames that were encoded.
//! - Arbitrary bytes, fed the same way, never panic, never allocate past the
//!   frame limit, and stop at the first error.
//! - Control bodies parse or fail cleanly whatever the bytes.

use proptest::prelude::*;
use rkyv::util::AlignedVec;
use starling_transport::frame::control::{ErrorBody, Hello, Subscribe};
use starling_transport::frame::{
    DecodeError, Decoder, HEADER_BYTES, Header, Kind, PADDING, padded,
};

const BODY_MAX: usize = 4096;

fn kind() -> impl Strategy<Value = Kind> {
    (1u8..=9).prop_map(|k| Kind::from_wire(k).expect("1..=9 are kinds"))
}

fn frames() -> impl Strategy<Value = Vec<(Kind, u64, Vec<u8>)>> {
    prop::collection::vec(
        (
            kind(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..300),
        ),
        0..20,
    )
}

/// Feeds `stream` in chunks of the given sizes, each copied to `offset`
/// bytes past a 16-byte boundary (so chunks land both aligned and not).
fn feed_chunked(
    decoder: &mut Decoder,
    stream: &[u8],
    cuts: &[usize],
    offset: usize,
    mut on_frame: impl FnMut(Kind, u64, &[u8]),
) -> Result<(), DecodeError<()>> {
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = cuts
            .get(i)
            .map_or(rest.len(), |c| (*c).clamp(1, rest.len()));
        i += 1;
        let mut buffer = AlignedVec::<16>::new();
        buffer.extend_from_slice(&vec![0; offset]);
        buffer.extend_from_slice(&rest[..n]);
        decoder.feed(&buffer[offset..], |frame| {
            assert!(
                (frame.body.as_ptr() as usize).is_multiple_of(16),
                "bodies are aligned"
            );
            on_frame(frame.header.kind, frame.header.tag, frame.body);
            Ok(())
        })?;
        rest = &rest[n..];
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_streams_decode_exactly_under_any_chunking(
        frames in frames(),
        cuts in prop::collection::vec(1usize..700, 0..40),
        offset in 0usize..16,
    ) {
        let mut stream = Vec::new();
        for (kind, tag, body) in &frames {
            stream.extend_from_slice(&Header::new(*kind, *tag, body.len()).encode());
            stream.extend_from_slice(body);
            stream.extend_from_slice(&PADDING[..padded(body.len()) - body.len()]);
        }
        let mut decoder = Decoder::new(BODY_MAX);
        let mut decoded = Vec::new();
        feed_chunked(&mut decoder, &stream, &cuts, offset, |kind, tag, body| decoded.push((kind, tag, body.to_vec())))
            .map_err(|_| TestCaseError::fail("a valid stream failed to decode"))?;
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(decoder.pending_bytes(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_grow_past_the_limit(
        bytes in prop::collection::vec(any::<u8>(), 0..4000),
        cuts in prop::collection::vec(1usize..500, 0..20),
        offset in 0usize..16,
    ) {
        let mut decoder = Decoder::new(BODY_MAX);
        let result = feed_chunked(&mut decoder, &bytes, &cuts, offset, |_, _, body| assert!(body.len() <= BODY_MAX));
        prop_assert!(decoder.pending_bytes() <= HEADER_BYTES + padded(BODY_MAX));
        if result.is_ok() {
            // Whatever was accepted was whole frames plus at most one partial.
            prop_assert!(decoder.pending_bytes() <= bytes.len());
        }
    }

    #[test]
    fn control_bodies_parse_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Hello::decode(&bytes);
        let _ = Subscribe::decode(&bytes);
        let _ = ErrorBody::decode(&bytes);
    }
}
