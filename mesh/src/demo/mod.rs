//! `starling demo`: a 3-node mesh on loopback, in this process, running a
//! food-ordering system. Each node is a full [`Node`] (local server, HTTP,
//! QUIC links with mutual TLS from a CA made for the run), and the services
//! use their node's bus as an embedding application would:
//!
//! - `node-c` runs the order service, publishing `orders.<region>.created`
//!   at a fixed rate, and inventory, answering `inventory.check` requests
//!   from its stock;
//! - `node-a` and `node-b` each run a member of the `order-processing` queue
//!   group (each order goes to exactly one of them, wherever they are); a
//!   member reserves an order's items with an `inventory.check` request
//!   across the mesh;
//! - `node-a` also runs analytics, a plain `orders.>` subscription made while
//!   the mesh runs: the demo measures how long it takes to become effective
//!   on the other nodes.
//!
//! It prints a live line per second and a summary, and fails if any order
//! was lost or processed twice.

pub mod convergence;
pub mod loopback;
mod services;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use starling_core::{RecvError, Subscription};

use crate::cluster::tls::{self, TlsError, TlsSource};
use crate::node::{Node, NodeError};
use convergence::{ConvergenceError, Prober};
use services::{REGIONS, Sample, Tally};

/// The demo's nodes, in start order; the first is everyone's seed.
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const CLUSTER_NAME: &str = "starling-demo";
const QUEUE_GROUP: &str = "order-processing";
/// How long the mesh may take to form, and the stragglers to be processed.
const SETTLE: Duration = Duration::from_secs(10);

/// How long and how hard the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long orders are published.
    pub duration: Duration,
    /// Orders per second.
    pub rate: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Duration::from_secs(5),
            rate: 2_000,
        }
    }
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The run's certificates could not be made.
    #[error("certificates: {0}")]
    Certificates(#[from] TlsError),
    /// A node could not start.
    #[error("starting a node: {0}")]
    Node(#[from] NodeError),
    /// A thread could not start, or the output could not be written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A subscription could not be made.
    #[error("subscribing: {0}")]
    Subscribe(#[from] starling_core::SubscribeError),
    /// The convergence measurement failed.
    #[error("measuring convergence: {0}")]
    Convergence(#[from] ConvergenceError),
    /// The mesh did not reach the state the demo waits for.
    #[error("{0}")]
    Mesh(String),
    /// Orders were lost or processed twice, or inventory checks failed.
    #[error("{0}")]
    Delivery(String),
}

/// Runs the demo, writing its report to `out`.
pub fn run(options: &DemoOptions, out: &mut impl Write) -> Result<(), DemoError> {
    if options.rate == 0 || options.duration.is_zero() {
        return Err(DemoError::Mesh(
            "the rate and the duration must be above zero".into(),
        ));
    }
    let certificates = TempDir::new()?;
    let nodes = start_nodes(certificates.path(), out)?;
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];

    let mesh_started = Instant::now();
    loopback::wait_linked(&nodes, SETTLE).map_err(DemoError::Mesh)?;
    writeln!(
        out,
        "mesh: {} nodes linked over QUIC with mutual TLS (cluster {CLUSTER_NAME}), each alive to the others' SWIM membership, in {:.1} ms",
        nodes.len(),
        mesh_started.elapsed().as_secs_f64() * 1e3
    )?;

    let inventory_requests = c.bus().subscribe("inventory.check")?;
    let members = [
        a.bus().queue_subscribe("orders.*.created", QUEUE_GROUP)?,
        b.bus().queue_subscribe("orders.*.created", QUEUE_GROUP)?,
    ];
    // Analytics joins on node-a: a new subscription, effective on each
    // other node once that node has learned of it.
    let (analytics, effective) = convergence::measure(
        a.bus(),
        "orders",
        &[
            Prober {
                name: b.name(),
                bus: b.bus(),
            },
            Prober {
                name: c.name(),
                bus: c.bus(),
            },
        ],
        SETTLE,
    )?;
    writeln!(
        out,
        "eventual consistency: analytics subscribed to orders.> on node-a; effective on \
         node-b after {:.2} ms, on node-c after {:.2} ms (first event delivered from each)",
        effective[0].as_secs_f64() * 1e3,
        effective[1].as_secs_f64() * 1e3
    )?;
    // The services start once every node routes to them.
    for (owner, pattern) in [
        (a, "orders.*.created"),
        (b, "orders.*.created"),
        (c, "inventory.check"),
    ] {
        for node in nodes.iter().filter(|node| node.name() != owner.name()) {
            let what = format!("{}'s interest in {pattern}", owner.name());
            loopback::wait_for(node, &what, SETTLE, |view| {
                view.interest.peers.iter().any(|peer| {
                    peer.peer_name == owner.name()
                        && peer.entries.iter().any(|entry| entry.pattern == pattern)
                })
            })
            .map_err(DemoError::Mesh)?;
        }
    }

    let orders = options.rate * options.duration.as_secs_f64().ceil() as u64;
    let tally = Arc::new(Tally::new(orders as usize, members.len()));
    let (samples_tx, samples) = sync_channel(1 << 16);
    let inventory = services::inventory(c.bus().clone(), inventory_requests, tally.clone())?;
    let mut workers = Vec::new();
    for (member, (subscription, node)) in members.into_iter().zip([a, b]).enumerate() {
        workers.push(services::order_processing(
            node.bus().clone(),
            member,
            subscription,
            tally.clone(),
            samples_tx.clone(),
        )?);
    }
    drop(samples_tx);
    let analytics = analytics_counter(analytics, tally.clone())?;
    writeln!(
        out,
        "running: node-c publishes {} orders/s for {:.0} s; order-processing members on node-a \
         and node-b reserve stock from inventory on node-c",
        options.rate,
        options.duration.as_secs_f64()
    )?;
    workers.push(services::order_service(
        c.bus().clone(),
        tally.clone(),
        orders,
        options.rate,
    )?);

    let mut report = Report::new(&nodes);
    let deadline = tally.epoch + options.duration + SETTLE;
    loop {
        std::thread::sleep(
            Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
        );
        report.absorb(&samples);
        report.live_line(&tally, &nodes, out)?;
        let finished =
            tally.published.load(Ordering::Relaxed) == orders && tally.processed_total() == orders;
        if finished || Instant::now() >= deadline {
            break;
        }
    }
    tally.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let stock = inventory.join().unwrap_or_default();
    let by_region = analytics.join().unwrap_or_default();
    report.absorb(&samples);
    report.summary(&tally, &stock, &by_region, out)?;
    let settled = tally.processed_total() >= tally.published.load(Ordering::Relaxed);
    check_exactly_once(&tally, settled, options.rate)?;
    writeln!(
        out,
        "delivery: every order processed exactly once, none lost"
    )?;
    Ok(())
}

fn start_nodes(certificates: &Path, out: &mut impl Write) -> Result<Vec<Node>, DemoError> {
    let ca = tls::write_ca(certificates)?;
    let mut nodes: Vec<Node> = Vec::with_capacity(NODES.len());
    for name in NODES {
        let pair = tls::write_node_certificate(certificates, name, &[])?;
        let certificate = TlsSource::Files {
            cert: pair.cert,
            key: pair.key,
            ca: ca.cert.clone(),
        };
        let node = loopback::start_node(name, CLUSTER_NAME, nodes.first(), certificate)?;
        writeln!(
            out,
            "{name}: quic://{}  tcp://{}  http://{}",
            node.cluster()
                .map_or_else(String::new, |c| c.local_addr().to_string()),
            node.tcp_addr().map_or_else(String::new, |a| a.to_string()),
            node.http_addr().map_or_else(String::new, |a| a.to_string()),
        )?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Analytics: counts orders per region (a plain subscription sees every
/// order, while the queue group shares them).
fn analytics_counter(
    subscription: Subscription,
    tally: Arc<Tally>,
) -> std::io::Result<std::thread::JoinHandle<Vec<u64>>> {
    std::thread::Builder::new()
        .name("demo-analytics".into())
        .spawn(move || {
            let mut by_region = vec![0; REGIONS.len()];
            while !tally.stop.load(Ordering::Relaxed) {
                let event = match subscription.recv_timeout(Duration::from_millis(50)) {
                    Ok(event) => event,
                    Err(RecvError::Timeout) => continue,
                    Err(RecvError::Closed) => break,
                };
                let mut tokens = event.subject().split('.');
                let region = tokens.nth(1).unwrap_or_default();
                if tokens.next() == Some("created")
                    && let Some(index) = REGIONS.iter().position(|known| *known == region)
                {
                    by_region[index] += 1;
                }
            }
            by_region
        })
}

/// Fails if an order was processed twice, an inventory check failed, or an
/// order was never processed. `settled`: every order was processed before
/// the demo stopped waiting; if not, the missing orders may be lost or only
/// late (a machine too slow for the rate), and the message says both.
fn check_exactly_once(tally: &Tally, settled: bool, rate: u64) -> Result<(), DemoError> {
    let published = tally.published.load(Ordering::Relaxed) as usize;
    let mut lost = 0;
    let mut twice = 0;
    for count in &tally.deliveries[..published] {
        match count.load(Ordering::Relaxed) {
            0 => lost += 1,
            1 => {}
            _ => twice += 1,
        }
    }
    let failed_checks = tally.check_failures.load(Ordering::Relaxed);
    if lost + twice > 0 || failed_checks > 0 {
        let missing = if settled || lost == 0 {
            format!("{lost} orders lost")
        } else {
            format!(
                "{lost} orders not processed {} s after the last was published (lost, or still \
                 queued on a machine too slow for --rate {rate}: try a lower rate or a release build)",
                SETTLE.as_secs()
            )
        };
        return Err(DemoError::Delivery(format!(
            "{missing}, {twice} processed more than once, {failed_checks} inventory checks failed"
        )));
    }
    Ok(())
}

/// Latency histograms (per second and overall) and the counters of the
/// previous live line.
struct Report {
    started: Instant,
    last_line: Instant,
    order_interval: Histogram<u64>,
    check_interval: Histogram<u64>,
    order_total: Histogram<u64>,
    check_total: Histogram<u64>,
    last_published: u64,
    last_processed: u64,
    last_link_events: u64,
}

impl Report {
    fn new(nodes: &[Node]) -> Report {
        // Nanoseconds, 1 ns to 100 s, 3 significant digits.
        let histogram = || Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds");
        Report {
            started: Instant::now(),
            last_line: Instant::now(),
            order_interval: histogram(),
            check_interval: histogram(),
            order_total: histogram(),
            check_total: histogram(),
            last_published: 0,
            last_processed: 0,
            last_link_events: link_events(nodes),
        }
    }

    fn absorb(&mut self, samples: &Receiver<Sample>) {
        for sample in samples.try_iter() {
            let (interval, total, nanos) = match sample {
                Sample::Order(nanos) => (&mut self.order_interval, &mut self.order_total, nanos),
                Sample::Check(nanos) => (&mut self.check_interval, &mut self.check_total, nanos),
            };
            let nanos = nanos.max(1);
            let _ = interval.record(nanos);
            let _ = total.record(nanos);
        }
    }

    fn live_line(
        &mut self,
        tally: &Tally,
        nodes: &[Node],
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        let seconds = self.last_line.elapsed().as_secs_f64().max(1e-3);
        self.last_line = Instant::now();
        let published = tally.published.load(Ordering::Relaxed);
        let processed = tally.processed_total();
        let link_events = link_events(nodes);
        let per_second =
            |now: u64, before: u64| thousands(((now - before) as f64 / seconds) as u64);
        writeln!(
            out,
            "{:>5.1}s  orders {:>7}/s  processed {:>7}/s  link events {:>7}/s  order latency \
             p50 {} p99 {}  inventory check p50 {} p99 {}",
            self.started.elapsed().as_secs_f64(),
            per_second(published, self.last_published),
            per_second(processed, self.last_processed),
            per_second(link_events, self.last_link_events),
            quantile(&self.order_interval, 0.50),
            quantile(&self.order_interval, 0.99),
            quantile(&self.check_interval, 0.50),
            quantile(&self.check_interval, 0.99),
        )?;
        self.last_published = published;
        self.last_processed = processed;
        self.last_link_events = link_events;
        self.order_interval.reset();
        self.check_interval.reset();
        Ok(())
    }

    fn summary(
        &self,
        tally: &Tally,
        stock: &[(&str, u64)],
        by_region: &[u64],
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        let processed: Vec<String> = tally
            .processed
            .iter()
            .zip(NODES)
            .map(|(count, node)| format!("{node} {}", thousands(count.load(Ordering::Relaxed))))
            .collect();
        writeln!(
            out,
            "orders: {} published, {} processed ({})",
            thousands(tally.published.load(Ordering::Relaxed)),
            thousands(tally.processed_total()),
            processed.join(", ")
        )?;
        let regions: Vec<String> = REGIONS
            .iter()
            .zip(by_region)
            .map(|(region, count)| format!("{region} {}", thousands(*count)))
            .collect();
        writeln!(
            out,
            "analytics on node-a saw every order: {}",
            regions.join(", ")
        )?;
        let stock: Vec<String> = stock
            .iter()
            .map(|(item, left)| format!("{item} {}", thousands(*left)))
            .collect();
        writeln!(
            out,
            "inventory: {} orders reserved, {} short of stock; left: {}",
            thousands(tally.reserved.load(Ordering::Relaxed)),
            thousands(tally.short.load(Ordering::Relaxed)),
            stock.join(", ")
        )?;
        writeln!(
            out,
            "latency: order (intended send to processing) p50 {} p99 {} max {}; inventory check \
             round trip p50 {} p99 {} max {}",
            quantile(&self.order_total, 0.50),
            quantile(&self.order_total, 0.99),
            quantile(&self.order_total, 1.0),
            quantile(&self.check_total, 0.50),
            quantile(&self.check_total, 0.99),
            quantile(&self.check_total, 1.0),
        )
    }
}

/// Events sent over every link of every node so far.
fn link_events(nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .filter_map(|node| node.cluster()?.view())
        .flat_map(|view| view.links)
        .map(|link| link.events_out)
        .sum()
}

fn quantile(histogram: &Histogram<u64>, quantile: f64) -> String {
    if histogram.is_empty() {
        return "-".into();
    }
    let nanos = histogram.value_at_quantile(quantile);
    if nanos >= 1_000_000 {
        format!("{:.1} ms", nanos as f64 / 1e6)
    } else {
        format!("{} µs", nanos / 1_000)
    }
}

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// The run's certificate directory, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!(
            "starling-demo-{:016x}",
            starling_core::random_u64()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tally of 3 orders published, the first processed once and the
    /// second twice; the third never.
    fn tally_with_a_missing_order() -> Tally {
        let tally = Tally::new(3, 1);
        tally.published.store(3, Ordering::Relaxed);
        tally.deliveries[0].store(1, Ordering::Relaxed);
        tally.deliveries[1].store(2, Ordering::Relaxed);
        tally
    }

    #[test]
    fn a_missing_order_is_lost_when_every_order_was_processed_in_time() {
        let tally = tally_with_a_missing_order();
        tally.processed[0].store(3, Ordering::Relaxed);
        let error = check_exactly_once(&tally, true, 2_000).unwrap_err();
        assert_eq!(
            error.to_string(),
            "1 orders lost, 1 processed more than once, 0 inventory checks failed"
        );
    }

    #[test]
    fn a_missing_order_may_be_late_when_the_demo_stopped_waiting() {
        let tally = tally_with_a_missing_order();
        let error = check_exactly_once(&tally, false, 2_000).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("1 orders not processed 10 s after the last was published"),
            "{message}"
        );
        assert!(message.contains("--rate 2000"), "{message}");
    }

    #[test]
    fn every_order_processed_once_passes() {
        let tally = Tally::new(2, 1);
        tally.published.store(2, Ordering::Relaxed);
        for delivery in &tally.deliveries {
            delivery.store(1, Ordering::Relaxed);
        }
        assert!(check_exactly_once(&tally, true, 2_000).is_ok());
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
