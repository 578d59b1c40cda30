//! The event envelope: encoding without allocation (against rkyv's own
//! allocating `to_bytes` of the owned event, in the same run), validation of
//! untrusted bytes, and reading in place.

use std::hint::black_box;
use std::mem::MaybeUninit;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rkyv::rancor;
use rkyv::ser::allocator::SubAllocator;
use rkyv::ser::writer::Buffer;
use rkyv::util::AlignedVec;
use starling_core::event::{self, EventParts, Header, Structure};
use starling_core::{Event, EventLimits};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn sample(payload_bytes: usize) -> Event {
    Event {
        id: 1,
        time_unix_nanos: 2,
        subject: "orders.eu.created.v1".into(),
        reply_to: None,
        headers: vec![("ce-type".into(), b"order.created".to_vec())],
        payload: vec![7; payload_bytes],
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("event/encode");
    for payload_bytes in [16, 128, 1024] {
        let event = sample(payload_bytes);
        let headers = [Header("ce-type", b"order.created")];
        let parts = EventParts {
            id: event.id,
            time_unix_nanos: event.time_unix_nanos,
            subject: &event.subject,
            reply_to: None,
            headers: &headers,
            payload: &event.payload,
        };
        let mut out = AlignedVec::<16>::new();
        out.resize(parts.archive_bytes_bound(), 0);
        // Check before timing: the borrowed encoder writes what rkyv writes.
        let len = event::encode_into(&parts, &mut out).unwrap();
        assert_eq!(&out[..len], &event.to_archive()[..]);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("starling_parts_in_place/{payload_bytes}B"), |b| {
            b.iter(|| event::encode_into(black_box(&parts), &mut out).unwrap())
        });
        group.bench_function(
            format!("baseline_rkyv_to_bytes_owned/{payload_bytes}B"),
            |b| b.iter(|| black_box(&event).to_archive()),
        );
    }
    group.finish();
}

/// The common event (no headers, no reply subject), which `encode_into`
/// archives by hand, against rkyv's own serializer writing the same parts
/// into the same buffer.
fn encode_plain(c: &mut Criterion) {
    let mut group = c.benchmark_group("event/encode_plain");
    for payload_bytes in [16, 128, 1024] {
        let event = Event {
            headers: Vec::new(),
            ..sample(payload_bytes)
        };
        let parts = EventParts {
            id: event.id,
            time_unix_nanos: event.time_unix_nanos,
            subject: &event.subject,
            reply_to: None,
            headers: &[],
            payload: &event.payload,
        };
        let mut out = AlignedVec::<16>::new();
        out.resize(parts.archive_bytes_bound(), 0);
        let mut scratch = [MaybeUninit::<u8>::uninit(); 4096];
        let mut rkyv_in_place = |out: &mut [u8]| {
            rkyv::api::low::to_bytes_in_with_alloc::<_, _, rancor::Failure>(
                &parts,
                Buffer::from(out),
                SubAllocator::new(&mut scratch),
            )
            .unwrap()
            .len()
        };
        // Check before timing: both write what rkyv writes for the owned event.
        let len = event::encode_into(&parts, &mut out).unwrap();
        assert_eq!(&out[..len], &event.to_archive()[..]);
        assert_eq!(rkyv_in_place(&mut out), len);
        assert_eq!(&out[..len], &event.to_archive()[..]);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("starling_by_hand/{payload_bytes}B"), |b| {
            b.iter(|| event::encode_into(black_box(&parts), &mut out).unwrap())
        });
        group.bench_function(format!("baseline_rkyv_in_place/{payload_bytes}B"), |b| {
            b.iter(|| rkyv_in_place(black_box(&mut out)))
        });
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("event/read");
    let archive = sample(128).to_archive();
    let limits = EventLimits::default();
    assert!(event::validate(&archive, &limits).is_ok());
    group.throughput(Throughput::Elements(1));
    group.bench_function("validate_untrusted", |b| {
        b.iter(|| {
            event::validate(black_box(&archive), &limits)
                .unwrap()
                .payload()
                .len()
        })
    });
    group.bench_function("baseline_validate_untrusted_bytecheck", |b| {
        b.iter(|| {
            event::validate_with(black_box(&archive), &limits, Structure::Bytecheck)
                .unwrap()
                .payload()
                .len()
        })
    });
    group.bench_function("access_in_place", |b| {
        b.iter(|| {
            // SAFETY: validated above and unchanged since.
            let event = unsafe { event::access_unchecked(black_box(&archive)) };
            event.subject().len()
                + event.payload().len()
                + event.header("ce-type").map_or(0, <[u8]>::len)
        })
    });
    group.finish();
}

criterion_group!(benches, encode, encode_plain, read);
criterion_main!(benches);
