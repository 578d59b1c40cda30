//! A mesh link's data stream, as `link.rs` reads it: frames
//! ([`Decoder`]), each a FORWARD ([`decode_forward`]) whose archive then
//! goes through [`event::check`]. A FORWARD that decodes must name someone,
//! carry its archive 16-byte aligned, and say the same once re-encoded by
//! [`encode_forward`].
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_core::event::{self, EventLimits};
use starling_fuzz::aligned;
use starling_mesh::cluster::wire::{FRAME_GROUPS_MAX, decode_forward, encode_forward};
use starling_transport::frame::Decoder;

fuzz_target!(|stream: &[u8]| {
    let limits = EventLimits::default();
    let stream = aligned(stream);
    // The link's bound: the largest event plus room for the group names.
    let mut decoder = Decoder::new(limits.archive_bytes_max() + 64 * 1024);
    let _ = decoder.feed::<()>(&stream, |frame| {
        let Ok(forward) = decode_forward(frame) else {
            return Err(());
        };
        let mut room = [""; FRAME_GROUPS_MAX];
        let groups = forward.groups(&mut room);
        assert!(forward.plain || !groups.is_empty(), "for someone");
        assert_eq!(groups.len(), forward.group_count);
        assert!(groups.iter().all(|group| !group.is_empty()));
        assert!((forward.archive.as_ptr() as usize).is_multiple_of(16));
        let mut again = Vec::new();
        encode_forward(&mut again, forward.plain, groups, forward.archive);
        let again = aligned(&again);
        let mut frames = 0;
        Decoder::new(usize::MAX)
            .feed::<()>(&again, |frame| {
                let decoded = decode_forward(frame).expect("a re-encoded FORWARD decodes");
                assert_eq!(decoded.plain, forward.plain);
                assert_eq!(decoded.groups(&mut [""; FRAME_GROUPS_MAX]), groups);
                assert_eq!(decoded.archive, forward.archive);
                frames += 1;
                Ok(())
            })
            .expect("a re-encoded FORWARD is one whole frame");
        assert_eq!(frames, 1);
        event::check(forward.archive, &limits)
            .map(drop)
            .map_err(drop)
    });
});
