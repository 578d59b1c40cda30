//! Interest convergence across a 5-node mesh: a subscription made on one node,
//! timed until an event published on each other node is delivered to it
//! (`starling_mesh::demo::convergence`). Five full nodes run in this process,
//! linked over QUIC on loopback (encrypted; development certificates).
//!
//! Each round subscribes on the next node in turn and drops the subscription
//! after; per round it records the time until every other node delivered
//! (the figure the goal is about) and each node's own time. Probes go out
//! every 50 µs, which bounds the resolution.
//!
//! The first [`WARM_UP_ROUNDS`] rounds are not recorded: they pay the
//! process's first touches of its memory. Their figures are printed on a
//! line of their own. The process starts as the `starling` binary does, with
//! transparent huge pages off unless `MIMALLOC_ALLOW_THP` is set: with them
//! (`MIMALLOC_ALLOW_THP=1`), mimalloc asks the kernel to back its arenas with
//! huge pages, and each first touch zeroes 2 MiB on the faulting thread
//! (BENCHMARKS.md, issue 12, 2026-12-06: 68-82% of the samples of the slow
//! rounds, most within the first ~50 rounds, 10-30 ms each).
//!
//! It also prints how long the process's threads were runnable but waiting
//! for a CPU during the rounds (Linux's `/proc/self/task/*/schedstat`): on
//! a shared machine that wait, not the mesh, makes the tail (BENCHMARKS.md,
//! issue 12), and a figure without it cannot be compared with another.
//!
//! `cargo bench -p starling-bench --bench convergence` runs it in full;
//! without `--bench` (as under `cargo test --benches`) it runs a smoke round.

use std::time::Duration;

use hdrhistogram::Histogram;
use starling_mesh::Node;
use starling_mesh::cluster::tls::TlsSource;
use starling_mesh::demo::convergence::{self, Prober};
use starling_mesh::demo::loopback;
use starling_transport::process;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// As the `starling` binary does.
starling_transport::disable_transparent_huge_pages_before_main!();

const NODES: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(10);
/// Rounds run before the recorded ones, in a full run.
const WARM_UP_ROUNDS: usize = 100;

fn main() {
    let huge_pages = match process::huge_pages_at_start() {
        Ok(outcome) => outcome.to_string(),
        Err(error) => format!("on ({error})"),
    };
    let full = std::env::args().any(|arg| arg == "--bench");
    let (warm_up, rounds) = if full { (WARM_UP_ROUNDS, 500) } else { (0, 10) };
    let nodes = start_mesh();
    let cold_before = scheduled();
    let (cold, _) = run_rounds(&nodes, 0..warm_up);
    let scheduled_before = scheduled();
    let (every_node, each_node) = run_rounds(&nodes, warm_up..warm_up + rounds);
    let scheduled_after = scheduled();
    println!(
        "interest convergence, {NODES} nodes over QUIC on loopback, {rounds} subscriptions \
         (probe interval {} µs; transparent huge pages {huge_pages})",
        convergence::PROBE_INTERVAL.as_micros()
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9}",
        "subscribe -> delivered from", "p50 µs", "p90 µs", "p99 µs", "max µs"
    );
    for (label, histogram) in [
        ("every other node (slowest of 4)", &every_node),
        ("each other node", &each_node),
    ] {
        println!(
            "{label:<40} {:>9} {:>9} {:>9} {:>9}",
            histogram.value_at_quantile(0.50),
            histogram.value_at_quantile(0.90),
            histogram.value_at_quantile(0.99),
            histogram.max()
        );
    }
    if let (Some(before), Some(after)) = (scheduled_before, scheduled_after) {
        println!(
            "this process's threads over the rounds: {} ms running, {} ms runnable and waiting for a CPU",
            after.running.saturating_sub(before.running).as_millis(),
            after.waiting.saturating_sub(before.waiting).as_millis()
        );
    }
    if !cold.is_empty() {
        let ran = match (cold_before, scheduled_before) {
            (Some(before), Some(after)) => format!(
                "; threads ran {} ms",
                after.running.saturating_sub(before.running).as_millis()
            ),
            _ => String::new(),
        };
        println!(
            "the {warm_up} warm-up rounds before them (not in the table): every other node p50 {} µs, \
             p99 {} µs, max {} µs{ran}",
            cold.value_at_quantile(0.50),
            cold.value_at_quantile(0.99),
            cold.max()
        );
    }
}

/// Runs the rounds numbered `rounds`, each subscribing on the next node in
/// turn; returns the histograms of the time until every other node
/// delivered, and until each did.
fn run_rounds(nodes: &[Node], rounds: std::ops::Range<usize>) -> (Histogram<u64>, Histogram<u64>) {
    let mut every_node = histogram();
    let mut each_node = histogram();
    for round in rounds {
        let subscriber = &nodes[round % NODES];
        let probers: Vec<Prober<'_>> = nodes
            .iter()
            .filter(|node| node.name() != subscriber.name())
            .map(|node| Prober {
                name: node.name(),
                bus: node.bus(),
            })
            .collect();
        let (subscription, effective) = convergence::measure(
            subscriber.bus(),
            &format!("convergence.r{round}"),
            &probers,
            TIMEOUT,
        )
        .expect("every node delivers within the timeout");
        drop(subscription);
        let slowest = effective.iter().max().expect("four other nodes");
        every_node.record(micros(*slowest)).unwrap();
        for time in &effective {
            each_node.record(micros(*time)).unwrap();
        }
        // Let the withdrawal of this round's interest settle.
        std::thread::sleep(Duration::from_millis(5));
    }
    (every_node, each_node)
}

fn start_mesh() -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::with_capacity(NODES);
    for index in 0..NODES {
        let name = format!("n{index}");
        let node = loopback::start_node(&name, "bench", nodes.first(), TlsSource::InsecureDev)
            .expect("a node starts");
        nodes.push(node);
    }
    loopback::wait_linked(&nodes, TIMEOUT).expect("the mesh forms");
    nodes
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn micros(duration: Duration) -> u64 {
    (duration.as_micros() as u64).max(1)
}

/// CPU time of this process's threads so far, and time they spent runnable
/// but not running.
#[derive(Debug, Clone, Copy)]
struct Scheduled {
    running: Duration,
    waiting: Duration,
}

/// Sums `/proc/self/task/*/schedstat` (nanoseconds on a CPU, nanoseconds
/// waiting in a run queue, time slices); `None` where there is none.
fn scheduled() -> Option<Scheduled> {
    let mut total = Scheduled {
        running: Duration::ZERO,
        waiting: Duration::ZERO,
    };
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("schedstat")) else {
            // The thread ended since the listing.
            continue;
        };
        let mut fields = stat.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(running)), Some(Ok(waiting))) = (fields.next(), fields.next()) else {
            return None;
        };
        total.running += Duration::from_nanos(running);
        total.waiting += Duration::from_nanos(waiting);
    }
    Some(total)
}
