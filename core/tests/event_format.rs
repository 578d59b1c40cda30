//! The event format: round trips, the borrowed encoder against the owned one,
//! the size bound, and validation of hostile bytes.
//!
//! Validation is the edge where bytes from clients and peers come in, so it
//! gets a large randomized test: arbitrary bytes, and valid archives with
//! random corruption (bit flips, overwritten words, truncation). Whatever the
//! input, `validate` must return, not panic, and anything it accepts must be
//! readable in full.

use proptest::prelude::*;
use rkyv::util::AlignedVec;
use starling_core::event::{self, EventParts, Header, Structure};
use starling_core::{Bus, Event, EventLimits, Message};

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{1,12}"
}

fn subject() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 1..6).prop_map(|t| t.join("."))
}

/// Strings around the inline limit (8 bytes) and far beyond it; the
/// archiver does not care whether they are valid subjects.
fn plain_string() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z.]{0,10}", subject(), "[a-zé]{100,256}"]
}

fn event() -> impl Strategy<Value = Event> {
    (
        any::<u128>(),
        any::<u64>(),
        subject(),
        prop::option::of(subject()),
        prop::collection::vec(
            (
                "[a-z][a-z0-9-]{0,20}",
                prop::collection::vec(any::<u8>(), 0..40),
            ),
            0..6,
        ),
        prop::collection::vec(any::<u8>(), 0..2000),
    )
        .prop_map(
            |(id, time_unix_nanos, subject, reply_to, headers, payload)| Event {
                id,
                time_unix_nanos,
                subject,
                reply_to,
                headers,
                payload,
            },
        )
}

fn aligned(bytes: &[u8]) -> AlignedVec<16> {
    let mut buffer = AlignedVec::<16>::with_capacity(bytes.len());
    buffer.extend_from_slice(bytes);
    buffer
}

/// Reads every field, as a consumer would.
fn read_all(event: &starling_core::ArchivedEvent) -> usize {
    let mut total =
        event.subject().len() + event.payload().len() + event.reply_to().map_or(0, str::len);
    for (name, value) in event.headers() {
        total += name.len() + value.len();
    }
    total + (event.id() as usize & 1) + (event.time_unix_nanos() as usize & 1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trips_and_the_borrowed_encoder_matches(event in event()) {
        let archive = event.to_archive();
        let limits = EventLimits::default();
        let archived = event::validate(&archive, &limits).unwrap();
        prop_assert_eq!(archived.to_event(), event.clone());

        let mut headers = Vec::new();
        let parts = event.parts(&mut headers);
        let bound = parts.archive_bytes_bound();
        let mut out = aligned(&vec![0u8; bound]);
        let len = event::encode_into(&parts, &mut out).unwrap();
        prop_assert!(len <= bound, "bound {} < actual {}", bound, len);
        prop_assert_eq!(&out[..len], &archive[..], "borrowed and owned encoders agree");
    }

    /// What a node that publishes events from parts (`PACKED_PUB` records)
    /// makes of them is what `check` makes of rkyv's archive: accepted, and
    /// then archived to the same bytes, or refused with the same error.
    #[test]
    fn checked_parts_agree_with_check_of_the_archive(
        event in event(),
        payload_bytes_max in 0usize..2500,
        headers_max in 0usize..8,
    ) {
        let limits = EventLimits { payload_bytes_max, headers_max, ..EventLimits::default() };
        let mut headers = Vec::new();
        let parts = event.parts(&mut headers);
        let archive = event.to_archive();
        match (event::checked_parts(parts, &limits), event::check(&archive, &limits)) {
            (Ok(ours), Ok(theirs)) => {
                let mut out = aligned(&vec![0u8; parts.archive_bytes_bound()]);
                let len = event::encode_into(ours.parts(), &mut out).unwrap();
                prop_assert_eq!(&out[..len], theirs.bytes());
            }
            (Err(ours), Err(theirs)) => prop_assert_eq!(ours.to_string(), theirs.to_string()),
            (ours, theirs) => prop_assert!(false, "{:?} vs {:?}", ours.map(|_| ()), theirs.map(|_| ())),
        }
    }

    #[test]
    fn plain_events_encode_to_the_bytes_rkyv_writes(
        id in any::<u128>(),
        time_unix_nanos in any::<u64>(),
        subject in plain_string(),
        reply_to in prop::option::of(plain_string()),
        payload in prop::collection::vec(any::<u8>(), 0..300),
        stale in any::<u8>(),
    ) {
        let event = Event { id, time_unix_nanos, subject, reply_to, headers: Vec::new(), payload };
        let mut headers = Vec::new();
        let parts = event.parts(&mut headers);
        // Buffers are reused: whatever an earlier record left there must not
        // show through the padding.
        let mut out = aligned(&vec![stale; parts.archive_bytes_bound()]);
        let len = event::encode_into(&parts, &mut out).unwrap();
        prop_assert_eq!(&out[..len], &event.to_archive()[..]);
    }

    /// A batch archives its runs of events on one subject by stamping a
    /// template made from each run's first event (`event::plain::Template`)
    /// rather than encoding each: what a subscriber receives must still be
    /// the bytes rkyv writes, for payloads of one length or of several, with
    /// a reply subject or without, in segments earlier rounds used.
    #[test]
    fn batches_stamp_the_bytes_rkyv_writes(
        subject in subject(),
        reply_to in prop::option::of(subject()),
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..150),
        one_length in prop::option::of(0usize..300),
        with_reply in prop::collection::vec(any::<bool>(), 150),
    ) {
        let payloads: Vec<Vec<u8>> = payloads
            .into_iter()
            .map(|mut payload| {
                if let Some(len) = one_length {
                    payload.resize(len, 7);
                }
                payload
            })
            .collect();
        let messages: Vec<Message<'_>> = payloads
            .iter()
            .zip(&with_reply)
            .map(|(payload, &reply)| Message {
                subject: &subject,
                reply_to: reply_to.as_deref().filter(|_| reply),
                headers: &[],
                payload,
            })
            .collect();
        let bus = Bus::default();
        let subscription = bus.subscribe(&subject).unwrap();
        let mut publisher = bus.publisher();
        for _ in 0..3 {
            prop_assert_eq!(publisher.publish_batch(&messages).unwrap(), messages.len());
            let mut received = Vec::new();
            subscription.try_recv_batch(usize::MAX, |event| {
                received.push((event.archive().to_vec(), event.to_event()));
            });
            prop_assert_eq!(received.len(), messages.len());
            // A publisher numbers its events: one id after the other, and
            // one time for the batch.
            for pair in received.windows(2) {
                prop_assert_eq!(pair[1].1.id, pair[0].1.id + 1);
                prop_assert_eq!(pair[1].1.time_unix_nanos, pair[0].1.time_unix_nanos);
            }
            for ((archive, event), message) in received.iter().zip(&messages) {
                prop_assert_eq!(&event.subject, message.subject);
                prop_assert_eq!(event.reply_to.as_deref(), message.reply_to);
                prop_assert_eq!(&event.payload[..], message.payload);
                prop_assert_eq!(&archive[..], &event.to_archive()[..]);
            }
        }
    }

    #[test]
    fn corrupted_archives_are_refused_or_fully_readable(
        event in event(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = event.to_archive().to_vec();
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] ^= value | 1;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(archived) = event::validate(&aligned(&bytes), &EventLimits::default()) {
            read_all(archived);
        }
        both_checks(&aligned(&bytes), &EventLimits::default())?;
    }

    #[test]
    fn the_layout_check_agrees_with_bytecheck_on_valid_and_mutated_archives(
        event in event(),
        edits in prop::collection::vec(word_edit(), 0..4),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let archive = event.to_archive();
        let limits = EventLimits::default();
        prop_assert!(both_checks(&archive, &limits)?, "a valid archive is accepted");

        let mut bytes = archive.to_vec();
        let root = bytes.len() - size_of::<starling_core::ArchivedEvent>();
        for (at, delta) in edits {
            // Words of the root (pointers, lengths, strings) and of what lies
            // just before it (the header array), nudged by a little: in-bounds
            // pointers that overlap, reorder, misalign or overrun.
            let region = root.saturating_sub(64);
            let at = (region + at.index(bytes.len() - region)) & !3;
            let word = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            bytes[at..at + 4].copy_from_slice(&word.wrapping_add(delta as u32).to_le_bytes());
        }
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] ^= value | 1;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        both_checks(&aligned(&bytes), &limits)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(archived) = event::validate(&aligned(&bytes), &EventLimits::default()) {
            read_all(archived);
        }
        both_checks(&aligned(&bytes), &EventLimits::default())?;
    }
}

/// A signed nudge of a 32-bit word, small enough to keep a pointer in bounds.
fn word_edit() -> impl Strategy<Value = (prop::sample::Index, i32)> {
    (
        any::<prop::sample::Index>(),
        prop_oneof![-40i32..=40, any::<i32>()],
    )
}

/// Checks `bytes` with both structural checks: they must agree, and the one
/// written by hand must never accept what bytecheck refuses. Returns whether
/// they accepted.
fn both_checks(bytes: &[u8], limits: &EventLimits) -> Result<bool, TestCaseError> {
    let layout = event::validate_with(bytes, limits, Structure::Layout);
    let bytecheck = event::validate_with(bytes, limits, Structure::Bytecheck);
    match (layout, bytecheck) {
        (Ok(fast), Ok(slow)) => {
            prop_assert!(std::ptr::eq(fast, slow));
            read_all(fast);
            Ok(true)
        }
        (Ok(_), Err(error)) => Err(TestCaseError::fail(format!(
            "the layout check accepted what bytecheck refuses ({error}): {bytes:?}"
        ))),
        (Err(error), Ok(_)) => Err(TestCaseError::fail(format!(
            "the layout check refused what bytecheck accepts ({error}): {bytes:?}"
        ))),
        (Err(_), Err(_)) => Ok(false),
    }
}

/// Word-sized corruption of the root (where the relative pointers and lengths
/// live) is the most dangerous kind; hammer it deterministically.
#[test]
fn hostile_lengths_and_offsets_in_the_root_are_refused() {
    let event = Event {
        subject: "a.b.c".into(),
        reply_to: Some("reply.subject.longer".into()),
        headers: vec![("ce-type".into(), b"x".to_vec())],
        payload: vec![5; 100],
        ..Event::default()
    };
    let archive = event.to_archive();
    let limits = EventLimits::default();
    let root = archive.len() - size_of::<starling_core::ArchivedEvent>();
    let hostile = [
        0u32,
        1,
        0x7FFF_FFFF,
        0x8000_0000,
        0xFFFF_FFFF,
        0xFFFF_FFF0,
        4096,
        1 << 20,
    ];
    let mut accepted = 0;
    for offset in (root..archive.len() - 3).step_by(4) {
        for value in hostile {
            let mut bytes = archive.to_vec();
            bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
            if let Ok(archived) = event::validate(&aligned(&bytes), &limits) {
                read_all(archived);
                accepted += 1;
            }
            both_checks(&aligned(&bytes), &limits).unwrap();
        }
    }
    // Some words (the id, the time) accept any value; most must be refused.
    assert!(accepted < (archive.len() - root) / 4 * hostile.len());
}

/// Every word of the root and of the header array, nudged by every small
/// delta: pointers that overlap a neighbour, come out of order, lose their
/// alignment or overrun by a byte. The hand-written check and bytecheck
/// must agree on each.
#[test]
fn small_nudges_of_every_pointer_and_length_agree_with_bytecheck() {
    let header = |name: &str, value: &[u8]| (name.to_string(), value.to_vec());
    let events = [
        Event {
            subject: "orders.eu.created".into(),
            payload: vec![1; 16],
            ..Event::default()
        },
        Event {
            subject: "a.b".into(),
            reply_to: Some("r".into()),
            ..Event::default()
        },
        Event {
            // 9 + 10 bytes before the header array: it is padded to 4.
            subject: "orders.eu".into(),
            reply_to: Some("_INBOX.x.1".into()),
            headers: vec![header("ce-type", b"x"), header("a-long-header-name", b"")],
            payload: vec![2; 3],
            ..Event::default()
        },
        Event {
            subject: "s".into(),
            headers: vec![header("h", b""), header("i", b"12345678901")],
            ..Event::default()
        },
    ];
    let limits = EventLimits::default();
    let mut accepted = 0;
    for event in events {
        let archive = event.to_archive();
        let region = archive.len().saturating_sub(64 + 48);
        for at in (region..archive.len()).step_by(4) {
            for delta in -20i32..=20 {
                let mut bytes = archive.to_vec();
                let word = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
                bytes[at..at + 4].copy_from_slice(&word.wrapping_add(delta as u32).to_le_bytes());
                accepted += usize::from(both_checks(&aligned(&bytes), &limits).unwrap());
            }
        }
    }
    // The id, the time and the payload's bytes take any value.
    assert!(accepted > 0);
}

#[test]
fn limits_are_enforced_on_archives_from_outside() {
    let limits = EventLimits {
        payload_bytes_max: 10,
        headers_max: 1,
        ..EventLimits::default()
    };
    let big = Event {
        subject: "a".into(),
        payload: vec![0; 11],
        ..Event::default()
    };
    assert!(event::validate(&big.to_archive(), &limits).is_err());
    let headers = Event {
        subject: "a".into(),
        headers: vec![("a".into(), vec![]), ("b".into(), vec![])],
        ..Event::default()
    };
    assert!(event::validate(&headers.to_archive(), &limits).is_err());
    let wildcard = Event {
        subject: "a.>".into(),
        ..Event::default()
    };
    let error = event::validate(&wildcard.to_archive(), &EventLimits::default()).unwrap_err();
    assert_eq!(error.code(), "limits");
    let bad_header = [Header("bad name", b"")];
    let parts = EventParts {
        subject: "a",
        headers: &bad_header,
        ..EventParts::default()
    };
    assert!(event::check_parts(&parts, &EventLimits::default()).is_err());
}

/// Found by the `event` fuzz target: every header the limits allow, with
/// short strings elsewhere, bounded above `archive_bytes_max` (the headers'
/// vector's own alignment was not counted), so a buffer sized by it could
/// be too small for an event the limits accept.
#[test]
fn every_event_within_the_limits_is_bounded_by_archive_bytes_max() {
    let limits = EventLimits {
        subject: starling_core::subject::SubjectLimits {
            bytes_max: 16,
            tokens_max: 3,
        },
        payload_bytes_max: 32,
        headers_max: 2,
        header_bytes_max: 24,
    };
    let headers = [Header("abc", b"0123456789abc"), Header("d", b"012345")];
    let parts = EventParts {
        id: 1,
        time_unix_nanos: 2,
        subject: "a.b.cd",
        reply_to: Some("_INBOX.abcdef"),
        headers: &headers,
        payload: &[7; 32],
    };
    event::check_parts(&parts, &limits).expect("within the limits");
    assert!(
        parts.archive_bytes_bound() <= limits.archive_bytes_max(),
        "bound {} above {}",
        parts.archive_bytes_bound(),
        limits.archive_bytes_max()
    );
}
