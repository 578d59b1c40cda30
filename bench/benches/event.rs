//! The event envelope: encoding without allocation (against rkyv's own
//! allocating `to_bytes` of the owned event, in the same run), validation of
//! untrusted bytes, and reading in place.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rkyv::util::AlignedVec;
use starling_core::event::{self, EventParts, Header};
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

criterion_group!(benches, encode, read);
criterion_main!(benches);
