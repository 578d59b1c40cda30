//! `PACKED_PUB` bodies ([`Records`]), as a node reads them from a client:
//! checking never panics and agrees with reading record by record; every
//! body accepted encodes back (its records, again from any record on) to
//! the same records, and to the very same bytes when its tag is the one an
//! encoder would choose; and every record whose subjects are UTF-8 archives
//! to exactly the bytes rkyv writes for the same event. Input: eight bytes
//! of tag, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rkyv::util::AlignedVec;
use starling_core::Event;
use starling_core::event;
use starling_transport::frame::packed::{self, Records};
use starling_transport::frame::{FRAME_ALIGN, HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((tag, body)) = data.split_first_chunk::<8>() else {
        return;
    };
    let tag = u64::from_le_bytes(*tag);
    let checked = Records::check(tag, body);
    let read: Result<Vec<_>, _> = Records::new(tag, body).collect();
    let Ok(count) = checked else {
        assert!(body.is_empty() || read.is_err(), "check and reading agree");
        return;
    };
    let records = read.expect("check and reading agree");
    assert_eq!(records.len(), count);

    let mut again = AlignedVec::<FRAME_ALIGN>::new();
    packed::push_frame(&mut again, &records);
    let length = u32::from_le_bytes(again[..4].try_into().unwrap()) as usize;
    let again_tag = u64::from_le_bytes(again[8..16].try_into().unwrap());
    let again_body = &again[HEADER_BYTES..HEADER_BYTES + length];
    let reread: Vec<_> = Records::new(again_tag, again_body)
        .collect::<Result<_, _>>()
        .expect("an encoded body reads back");
    assert_eq!(reread, records);
    if again_tag == tag {
        assert_eq!(again_body, body, "one encoding per body");
    }
    for skip in 0..records.len() {
        let mut reading = Records::new(tag, body);
        reading.nth(skip).unwrap().unwrap();
        let mut rest = AlignedVec::<FRAME_ALIGN>::new();
        reading.push_rest(&mut rest).unwrap();
        if skip + 1 == records.len() {
            assert!(rest.is_empty());
            continue;
        }
        let length = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let rest_tag = u64::from_le_bytes(rest[8..16].try_into().unwrap());
        let rest: Vec<_> = Records::new(rest_tag, &rest[HEADER_BYTES..HEADER_BYTES + length])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rest, records[skip + 1..]);
    }

    let mut archive = AlignedVec::<FRAME_ALIGN>::new();
    for record in &records {
        let Ok(parts) = record.parts() else {
            continue;
        };
        archive.clear();
        archive.resize(parts.archive_bytes_bound(), 0);
        let len = event::encode_into(&parts, &mut archive).expect("the bound leaves room");
        let owned = Event {
            id: record.id,
            time_unix_nanos: record.time_unix_nanos,
            subject: parts.subject.to_owned(),
            reply_to: parts.reply_to.map(str::to_owned),
            headers: Vec::new(),
            payload: record.payload.to_vec(),
        };
        assert_eq!(&archive[..len], owned.to_archive().as_slice(), "rkyv's bytes");
    }
});
