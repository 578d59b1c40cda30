//! Reporting: one [`Row`] per run, printed as tables ([`table`]), written as
//! a JSON array, and drawn as SVG charts ([`chart`]).

pub mod chart;
pub mod table;

use std::path::Path;

use serde::Serialize;

use super::cli::Run;
use super::error::{Context, Result};
use super::measurement::{self, Percentiles, ServerCost};
use super::scenarios::{Outcome, Scenario};
use super::targets::Target;

/// The figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// What the run did.
    pub scenario: Scenario,
    /// What it did it to.
    pub target: Target,
    /// Bytes per event.
    pub payload_bytes: usize,
    /// The open-loop rate asked for, events (round trips) per second, all
    /// publishers together; `null` when flat out.
    pub rate_per_s: Option<f64>,
    /// Deliveries per second (round trips for request), from the first
    /// publish to the last delivery.
    pub events_per_s: f64,
    /// Payload megabytes (10^6) delivered per second.
    pub mb_per_s: f64,
    /// Latency percentiles, send (intended send, when paced) to receive; for
    /// request, the round trip.
    pub p50_us: f64,
    /// See `p50_us`.
    pub p90_us: f64,
    /// See `p50_us`.
    pub p99_us: f64,
    /// See `p50_us`.
    pub p999_us: f64,
    /// See `p50_us`.
    pub max_us: f64,
    /// Events published (requests sent).
    pub sent: u64,
    /// Deliveries that should have arrived: `sent` times the subscribers
    /// each event goes to.
    pub expected: u64,
    /// Deliveries that arrived.
    pub received: u64,
    /// Deliveries that did not arrive, `expected - received`, whether the
    /// system counted them (`dropped_counted`) or not. A figure from a run
    /// that lost any is no measure of speed: see [`Row::is_lossy`].
    pub lost: u64,
    /// `lost` as a percentage of `expected`.
    pub lost_pct: f64,
    /// Deliveries the system itself counted as dropped, where it counts them
    /// exactly (Starling: in client and node queues, and on mesh links);
    /// `null` otherwise (NATS).
    pub dropped_counted: Option<u64>,
    /// Server CPU seconds (all of the target's servers together) per
    /// million deliveries; 0 without a server.
    pub server_cpu_s_per_million: f64,
    /// The largest peak resident memory of the target's servers; 0 without
    /// a server.
    pub server_peak_rss_bytes: u64,
    /// Each server's peak resident memory, publishers' server first.
    pub server_peak_rss_bytes_each: Vec<u64>,
    /// The I/O backend the server said it runs, if it says.
    pub io_backend: Option<String>,
}

impl Row {
    /// The row of `run` at `rate` (or flat out), from what it measured and
    /// what its servers cost (nothing, without servers).
    pub fn new(
        run: &Run,
        rate: Option<f64>,
        outcome: &Outcome,
        server: ServerCost,
        io_backend: Option<&str>,
    ) -> Self {
        let events_per_s = measurement::per_second(outcome.received, outcome.elapsed);
        let latency = Percentiles::of(&outcome.latency);
        let lost = outcome.expected.saturating_sub(outcome.received);
        Self {
            scenario: run.scenario,
            target: run.target,
            payload_bytes: run.payload_bytes,
            rate_per_s: rate,
            events_per_s,
            mb_per_s: events_per_s * run.payload_bytes as f64 / 1e6,
            p50_us: latency.p50_us,
            p90_us: latency.p90_us,
            p99_us: latency.p99_us,
            p999_us: latency.p999_us,
            max_us: latency.max_us,
            sent: outcome.sent,
            expected: outcome.expected,
            received: outcome.received,
            lost,
            lost_pct: if outcome.expected == 0 {
                0.0
            } else {
                lost as f64 * 100.0 / outcome.expected as f64
            },
            dropped_counted: outcome.dropped_counted,
            server_cpu_s_per_million: server.cpu_seconds_per_million(outcome.received),
            server_peak_rss_bytes: server.peak_rss_bytes.iter().copied().max().unwrap_or(0),
            server_peak_rss_bytes_each: server.peak_rss_bytes,
            io_backend: io_backend.map(str::to_owned),
        }
    }

    /// Whether any delivery went missing. Such a run's throughput is not
    /// comparable with anything: a system that drops what it cannot deliver
    /// looks faster for it.
    pub fn is_lossy(&self) -> bool {
        self.lost > 0
    }

    /// Deliveries that went missing without the system counting them, where
    /// it promises to count every one.
    pub fn uncounted_losses(&self) -> u64 {
        self.dropped_counted
            .map_or(0, |counted| self.lost.saturating_sub(counted))
    }
}

/// A percentage of deliveries lost, for tables and charts: never rounded
/// down to nothing when something was lost.
pub fn percent(pct: f64) -> String {
    if pct == 0.0 {
        "0%".to_owned()
    } else if pct < 0.01 {
        "<0.01%".to_owned()
    } else if pct < 1.0 {
        format!("{pct:.2}%")
    } else if pct < 10.0 {
        format!("{pct:.1}%")
    } else {
        format!("{pct:.0}%")
    }
}

/// Writes `rows` to `path` as a JSON array.
pub fn write_json(path: &Path, rows: &[Row]) -> Result<()> {
    let json = serde_json::to_string_pretty(rows).expect("rows serialize");
    std::fs::write(path, json + "\n").context(format!("writing {}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::harness::measurement::latency_histogram;

    /// A row with the given figures and plausible rest.
    pub(crate) fn row(scenario: Scenario, target: Target, events_per_s: f64, p99_us: f64) -> Row {
        Row {
            scenario,
            target,
            payload_bytes: 128,
            rate_per_s: None,
            events_per_s,
            mb_per_s: events_per_s * 128.0 / 1e6,
            p50_us: p99_us / 2.0,
            p90_us: p99_us * 0.8,
            p99_us,
            p999_us: p99_us * 2.0,
            max_us: p99_us * 4.0,
            sent: 1000,
            expected: 1000,
            received: 1000,
            lost: 0,
            lost_pct: 0.0,
            dropped_counted: target.is_starling().then_some(0),
            server_cpu_s_per_million: 0.0,
            server_peak_rss_bytes: 0,
            server_peak_rss_bytes_each: Vec::new(),
            io_backend: None,
        }
    }

    /// `row` with `lost` of its expected deliveries missing.
    pub(crate) fn losing(row: Row, lost: u64) -> Row {
        Row {
            received: row.expected - lost,
            lost,
            lost_pct: lost as f64 * 100.0 / row.expected as f64,
            ..row
        }
    }

    #[test]
    fn a_loss_is_never_shown_as_none() {
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(1e-5), "<0.01%");
        assert_eq!(percent(0.5), "0.50%");
        assert_eq!(percent(2.4), "2.4%");
        assert_eq!(percent(27.4), "27%");
    }

    #[test]
    fn a_row_has_the_documented_json_fields() {
        let run = Run {
            scenario: Scenario::Fanout,
            target: Target::LocalTcpEpoll,
            payload_bytes: 1000,
        };
        let mut latency = latency_histogram();
        latency.record(2_000).unwrap();
        let outcome = Outcome {
            sent: 100,
            expected: 400,
            received: 390,
            dropped_counted: Some(10),
            latency,
            elapsed: Duration::from_millis(100),
        };
        let cost = ServerCost {
            cpu: Duration::from_millis(39),
            peak_rss_bytes: vec![1 << 20, 3 << 20],
        };
        let row = Row::new(
            &run,
            Some(5000.0),
            &outcome,
            cost,
            Some("epoll (asked for)"),
        );
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["scenario"], "fanout");
        assert_eq!(json["target"], "local-tcp-epoll");
        assert_eq!(json["payload_bytes"], 1000);
        assert_eq!(json["rate_per_s"], 5000.0);
        let close = |field: &str, expected: f64| {
            let value = json[field].as_f64().unwrap_or(f64::NAN);
            assert!((value - expected).abs() < 1e-6, "{field} = {value}");
        };
        close("events_per_s", 3900.0);
        close("mb_per_s", 3.9);
        close("p50_us", 2.0);
        close("max_us", 2.0);
        close("server_cpu_s_per_million", 100.0);
        assert_eq!(json["sent"], 100);
        assert_eq!(json["received"], 390);
        assert_eq!(json["lost"], 10);
        close("lost_pct", 2.5);
        assert_eq!(json["dropped_counted"], 10);
        assert_eq!(json["server_peak_rss_bytes"], 3 << 20, "the largest");
        assert_eq!(
            json["server_peak_rss_bytes_each"],
            serde_json::json!([1 << 20, 3 << 20])
        );
        for field in ["p90_us", "p99_us", "p999_us", "expected", "io_backend"] {
            assert!(json.get(field).is_some(), "{field} is missing");
        }
        assert_eq!(row.uncounted_losses(), 0);
        assert!(row.is_lossy());
    }

    #[test]
    fn names_in_json_are_the_names_on_the_command_line() {
        for &scenario in Scenario::ALL {
            assert_eq!(serde_json::to_value(scenario).unwrap(), scenario.name());
        }
        for &target in Target::ALL {
            assert_eq!(serde_json::to_value(target).unwrap(), target.name());
        }
    }

    #[test]
    fn losses_beyond_the_counted_drops_are_uncounted() {
        let mut lossy = row(Scenario::Pubsub, Target::LocalTcp, 1.0, 1.0);
        lossy.lost = 25;
        lossy.dropped_counted = Some(20);
        assert_eq!(lossy.uncounted_losses(), 5);
        lossy.target = Target::Nats;
        lossy.dropped_counted = None;
        assert_eq!(lossy.uncounted_losses(), 0, "nats counts nothing exactly");
    }
}
