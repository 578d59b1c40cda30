//! The NATS listener's parser (`starling_transport::nats::Parser`): a
//! stream of PUBs as a flat-out client sends them, parsed in place, in
//! operations per second and bytes per second; and the same stream through
//! the whole session (parse, check, hand over the message, answer), without
//! the bus, whose cost the bus benches measure.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use starling_core::{Bus, SubscribeOptions};
use starling_transport::budget::Budget;
use starling_transport::nats::{
    Input, MAX_CONTROL_LINE, NATS_VERSION, NatsConfig, Parsed, Parser, ServerInfo, Session,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Operations per stream.
const OPS: usize = 1000;

/// `OPS` PUBs (or HPUBs with one header) of `payload_bytes`.
fn stream(payload_bytes: usize, headers: bool) -> Vec<u8> {
    let payload = vec![b'x'; payload_bytes];
    let block = b"NATS/1.0\r\nce-type: order.created\r\n\r\n";
    let mut stream = Vec::new();
    for _ in 0..OPS {
        if headers {
            let total = block.len() + payload_bytes;
            stream.extend_from_slice(
                format!("HPUB orders.eu.created {} {total}\r\n", block.len()).as_bytes(),
            );
            stream.extend_from_slice(block);
        } else {
            stream
                .extend_from_slice(format!("PUB orders.eu.created {payload_bytes}\r\n").as_bytes());
        }
        stream.extend_from_slice(&payload);
        stream.extend_from_slice(b"\r\n");
    }
    stream
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("nats/parse");
    for (payload_bytes, headers) in [(16, false), (128, false), (1024, false), (128, true)] {
        let stream = stream(payload_bytes, headers);
        let name = format!("{}/{payload_bytes}B", if headers { "hpub" } else { "pub" });
        group.throughput(Throughput::Elements(OPS as u64));
        group.bench_function(format!("ops/{name}"), |b| {
            let mut parser = Parser::new(MAX_CONTROL_LINE, 1 << 20);
            b.iter(|| {
                let mut input = &stream[..];
                while let Ok(Parsed::Op(op, used)) = parser.parse(input) {
                    black_box(op);
                    input = &input[used..];
                }
                assert!(input.is_empty());
            })
        });
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(format!("bytes/{name}"), |b| {
            let mut parser = Parser::new(MAX_CONTROL_LINE, 1 << 20);
            b.iter(|| {
                let mut input = &stream[..];
                while let Ok(Parsed::Op(op, used)) = parser.parse(input) {
                    black_box(op);
                    input = &input[used..];
                }
            })
        });
    }
    group.finish();
}

fn session(c: &mut Criterion) {
    let mut group = c.benchmark_group("nats/session");
    let bus = Bus::default();
    let config = Arc::new(NatsConfig {
        info: ServerInfo {
            server_id: "bench".into(),
            server_name: "bench".into(),
            version: NATS_VERSION.into(),
            go: "starling".into(),
            host: "127.0.0.1".into(),
            port: 4222,
            headers: true,
            auth_required: false,
            tls_required: false,
            tls_verify: false,
            max_payload: 1 << 20,
            proto: 1,
            client_id: 1,
            client_ip: String::new(),
            ldm: false,
        },
        auth: Default::default(),
        max_control_line: MAX_CONTROL_LINE,
        subscriptions_max: 16,
        node_subscriptions: Arc::new(Budget::new(16)),
        mailbox: SubscribeOptions::default(),
        max_pings_out: 2,
    });
    for (payload_bytes, headers) in [(128, false), (128, true)] {
        let stream = stream(payload_bytes, headers);
        let name = format!("{}/{payload_bytes}B", if headers { "hpub" } else { "pub" });
        let mut session = Session::new(config.clone(), &bus, 1, Ipv4Addr::LOCALHOST.into());
        let mut out = Vec::new();
        group.throughput(Throughput::Elements(OPS as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut input = &stream[..];
                while let Ok(Input::Publish { used, publish }) =
                    session.handle_input(input, &mut out)
                {
                    black_box(publish.message());
                    input = &input[used..];
                }
                assert!(input.is_empty());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse, session);
criterion_main!(benches);
