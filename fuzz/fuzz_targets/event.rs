//! [`event::check`], the one gate for archives from outside the process (a
//! `PUB` body from a client, a `FORWARD` archive from a peer), under the
//! default limits and under small ones that short inputs can break. What it
//! accepts must be an event the publish path could have made: its parts
//! pass [`event::check_parts`], it re-encodes within the bounds buffers are
//! sized by, and the re-encoding is accepted and reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_core::event::{self, EventLimits};
use starling_core::subject::SubjectLimits;
use starling_fuzz::aligned;

fuzz_target!(|data: &[u8]| {
    let bytes = aligned(data);
    let small = EventLimits {
        subject: SubjectLimits {
            bytes_max: 16,
            tokens_max: 3,
        },
        payload_bytes_max: 32,
        headers_max: 2,
        header_bytes_max: 24,
    };
    for limits in [EventLimits::default(), small] {
        let Ok(checked) = event::check(&bytes, &limits) else {
            continue;
        };
        let archived = checked.event();
        let owned = archived.to_event();
        assert_eq!(archived.headers().len(), owned.headers.len());
        let mut headers = Vec::new();
        let parts = owned.parts(&mut headers);
        event::check_parts(&parts, &limits).expect("check and check_parts agree");
        // Buffers are sized once by `archive_bytes_max`, each event's by its
        // bound: within the limits, the one must hold the other.
        let bound = parts.archive_bytes_bound();
        assert!(bound <= limits.archive_bytes_max());
        let mut out = aligned(&vec![0; bound]);
        let len = event::encode_into(&parts, &mut out).expect("an event fits in its bound");
        let again = event::check(&out[..len], &limits).expect("a re-encoded event is accepted");
        assert_eq!(again.event().to_event(), owned);
    }
});
