//! Request/reply round-trip latency percentiles, in process: the bus against
//! a pair of crossbeam channels carrying owned messages, in the same run.
//!
//! Criterion reports means; this harness records every round trip in an HDR
//! histogram and prints p50/p99/p99.9/max. The two systems alternate round by
//! round (the machine is shared and noisy; a noisy period then hits both), and
//! the table shows the median of the rounds for each percentile.
//!
//! `cargo bench -p starling-bench --bench latency` runs it in full; without
//! `--bench` (as under `cargo test --benches`) it runs a small smoke round.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use hdrhistogram::Histogram;
use starling_bench::consumers::POLL;
use starling_core::Bus;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAYLOAD: [u8; 16] = [1; 16];

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (rounds, requests) = if full { (7, 50_000) } else { (1, 2_000) };
    let mut starling = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..rounds {
        starling.push(bus_round(requests));
        baseline.push(crossbeam_round(requests));
    }
    println!(
        "request/reply round trip, 16 B, in process ({rounds} rounds x {requests} requests, median of rounds)"
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9}",
        "system", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    for (name, runs) in [
        ("starling bus", &starling),
        ("crossbeam channels", &baseline),
    ] {
        let at =
            |q: f64| median(runs.iter().map(|h| h.value_at_quantile(q)).collect()) as f64 / 1000.0;
        let max = median(runs.iter().map(Histogram::max).collect()) as f64 / 1000.0;
        println!(
            "{name:<22} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            at(0.5),
            at(0.99),
            at(0.999),
            max
        );
    }
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("histogram bounds")
}

fn bus_round(requests: usize) -> Histogram<u64> {
    let bus = Bus::default();
    let service = bus.subscribe("svc.echo").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let responder = {
        let (bus, stop) = (bus.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut publisher = bus.publisher();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(request) = service.recv_timeout(POLL) {
                    publisher
                        .publish(request.reply_to().unwrap(), request.payload())
                        .unwrap();
                }
            }
        })
    };
    let mut histogram = histogram();
    for i in 0..requests + requests / 10 {
        let started = Instant::now();
        let reply = bus
            .request("svc.echo", &PAYLOAD, Duration::from_secs(5))
            .unwrap();
        assert_eq!(reply.payload(), PAYLOAD);
        drop(reply);
        // The first tenth warms caches and is not recorded.
        if i >= requests / 10 {
            histogram
                .record(started.elapsed().as_nanos() as u64)
                .unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    responder.join().unwrap();
    histogram
}

fn crossbeam_round(requests: usize) -> Histogram<u64> {
    let (request_tx, request_rx) = bounded::<(String, Vec<u8>)>(1);
    let (reply_tx, reply_rx) = bounded::<(String, Vec<u8>)>(1);
    let responder = std::thread::spawn(move || {
        while let Ok((_, payload)) = request_rx.recv() {
            reply_tx
                .send(("_INBOX.reply".to_string(), payload))
                .unwrap();
        }
    });
    let mut histogram = histogram();
    for i in 0..requests + requests / 10 {
        let started = Instant::now();
        request_tx
            .send(("svc.echo".to_string(), PAYLOAD.to_vec()))
            .unwrap();
        let reply = reply_rx.recv().unwrap();
        assert_eq!(reply.1, PAYLOAD);
        if i >= requests / 10 {
            histogram
                .record(started.elapsed().as_nanos() as u64)
                .unwrap();
        }
    }
    drop(request_tx);
    responder.join().unwrap();
    histogram
}
