//! The tables printed at the end, in Markdown: aligned for a terminal, ready
//! to paste into BENCHMARKS.md.

use super::Row;
use crate::harness::scenarios::Scenario;
use crate::harness::targets::Target;

#[derive(Debug, Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// Every run's figures.
pub fn results(rows: &[Row]) -> String {
    use Align::{Left, Right};
    let columns = [
        ("scenario", Left),
        ("target", Left),
        ("payload B", Right),
        ("events/s", Right),
        ("MB/s", Right),
        ("p50 µs", Right),
        ("p90 µs", Right),
        ("p99 µs", Right),
        ("p99.9 µs", Right),
        ("max µs", Right),
        ("sent", Right),
        ("received", Right),
        ("dropped", Right),
        ("server CPU s/M", Right),
        ("server peak RSS MiB", Right),
    ];
    let cells = rows
        .iter()
        .map(|row| {
            let server = |figure: String| {
                if row.target.servers() > 0 {
                    figure
                } else {
                    "—".to_owned()
                }
            };
            vec![
                row.scenario.name().to_owned(),
                row.target.name().to_owned(),
                row.payload_bytes.to_string(),
                rate(row.events_per_s),
                format!("{:.1}", row.mb_per_s),
                micros(row.p50_us),
                micros(row.p90_us),
                micros(row.p99_us),
                micros(row.p999_us),
                micros(row.max_us),
                row.sent.to_string(),
                row.received.to_string(),
                row.dropped.to_string(),
                server(format!("{:.2}", row.server_cpu_s_per_million)),
                server(format!(
                    "{:.1}",
                    row.server_peak_rss_bytes as f64 / (1 << 20) as f64
                )),
            ]
        })
        .collect::<Vec<_>>();
    markdown(&columns, &cells)
}

/// What a comparison divides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Starling's events/s ÷ NATS's.
    Throughput,
    /// NATS's median latency ÷ Starling's.
    MedianLatency,
    /// NATS's p99 latency ÷ Starling's.
    P99Latency,
}

impl Measure {
    /// The measures a run is compared by: latency for request/reply and at a
    /// fixed rate (where both systems keep the same rate, if they can),
    /// throughput for the rest.
    fn of(row: &Row) -> &'static [Measure] {
        if row.scenario == Scenario::Request || row.rate_per_s.is_some() {
            &[Measure::MedianLatency, Measure::P99Latency]
        } else {
            &[Measure::Throughput]
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Measure::Throughput => "events/s: Starling ÷ NATS",
            Measure::MedianLatency => "p50 latency: NATS ÷ Starling",
            Measure::P99Latency => "p99 latency: NATS ÷ Starling",
        }
    }

    /// `starling` against `nats`, above 1 when Starling does better; `None`
    /// if the divisor is 0 (nothing measured).
    fn ratio(self, starling: &Row, nats: &Row) -> Option<f64> {
        let (better, worse) = match self {
            Measure::Throughput => (starling.events_per_s, nats.events_per_s),
            Measure::MedianLatency => (nats.p50_us, starling.p50_us),
            Measure::P99Latency => (nats.p99_us, starling.p99_us),
        };
        (worse > 0.0).then(|| better / worse)
    }
}

/// How Starling's targets compare with their NATS counterparts
/// ([`Target::nats_counterpart`]) in one scenario at one payload size, by
/// one measure. Above 1 means Starling did better.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The scenario.
    pub scenario: Scenario,
    /// The payload size.
    pub payload_bytes: usize,
    /// What is divided.
    pub measure: Measure,
    /// Each Starling target in the rows, with its ratio if both it and its
    /// counterpart have a row here.
    pub ratios: Vec<(Target, Option<f64>)>,
}

/// A comparison per scenario, payload size and measure for which some NATS
/// target has a row.
pub fn comparisons(rows: &[Row]) -> Vec<Comparison> {
    let present = |target: Target| rows.iter().any(|row| row.target == target);
    let starling: Vec<Target> = Target::ALL
        .iter()
        .copied()
        .filter(|&t| t.is_starling() && present(t))
        .collect();
    let mut cases: Vec<&Row> = Vec::new();
    for row in rows.iter().filter(|row| !row.target.is_starling()) {
        let case = |other: &&Row| (other.scenario, other.payload_bytes);
        if !cases.iter().any(|seen| case(seen) == case(&row)) {
            cases.push(row);
        }
    }
    let find = |target: Target, scenario: Scenario, payload_bytes: usize| {
        rows.iter().find(|row| {
            row.target == target && row.scenario == scenario && row.payload_bytes == payload_bytes
        })
    };
    let mut comparisons = Vec::new();
    for case in cases {
        let (scenario, payload_bytes) = (case.scenario, case.payload_bytes);
        for &measure in Measure::of(case) {
            let ratios = starling
                .iter()
                .map(|&target| {
                    let nats = target
                        .nats_counterpart()
                        .and_then(|nats| find(nats, scenario, payload_bytes));
                    let ratio = find(target, scenario, payload_bytes)
                        .zip(nats)
                        .and_then(|(starling, nats)| measure.ratio(starling, nats));
                    (target, ratio)
                })
                .collect();
            comparisons.push(Comparison {
                scenario,
                payload_bytes,
                measure,
                ratios,
            });
        }
    }
    comparisons
}

/// The comparisons with NATS as a table; `None` without NATS rows.
pub fn comparison_table(rows: &[Row]) -> Option<String> {
    let comparisons = comparisons(rows);
    let first = comparisons.first()?;
    let targets: Vec<Target> = first.ratios.iter().map(|(target, _)| *target).collect();
    let mut columns = vec![
        ("scenario", Align::Left),
        ("payload B", Align::Right),
        ("measure", Align::Left),
    ];
    columns.extend(targets.iter().map(|t| (t.name(), Align::Right)));
    let cells = comparisons
        .iter()
        .map(|comparison| {
            let mut line = vec![
                comparison.scenario.name().to_owned(),
                comparison.payload_bytes.to_string(),
                comparison.measure.describe().to_owned(),
            ];
            line.extend(comparison.ratios.iter().map(|(_, ratio)| match ratio {
                Some(ratio) => format!("{ratio:.2}×"),
                None => "—".to_owned(),
            }));
            line
        })
        .collect::<Vec<_>>();
    Some(markdown(&columns, &cells))
}

/// A line for each run in which Starling lost deliveries it did not count,
/// against its promise of no silent loss.
pub fn loss_notes(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter(|row| row.uncounted_losses() > 0)
        .map(|row| {
            format!(
                "{} on {}, {} B: {} deliveries missing, {} counted as dropped by Starling",
                row.scenario.name(),
                row.target.name(),
                row.payload_bytes,
                row.dropped,
                row.dropped_counted.unwrap_or(0),
            )
        })
        .collect()
}

/// Events per second with an SI prefix.
fn rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1} k", per_second / 1e3)
    } else {
        format!("{per_second:.0}")
    }
}

/// Microseconds with three significant digits or so, as the histograms have.
fn micros(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.2}")
    } else if us < 1000.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

fn markdown(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .chain([title.chars().count(), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = String>| {
        format!("| {} |\n", cells.collect::<Vec<_>>().join(" | "))
    };
    let pad = |text: &str, width: usize, align: Align| {
        let fill = " ".repeat(width - text.chars().count());
        match align {
            Align::Left => format!("{text}{fill}"),
            Align::Right => format!("{fill}{text}"),
        }
    };
    let mut out = line(
        &mut columns
            .iter()
            .zip(&widths)
            .map(|((title, align), &width)| pad(title, width, *align)),
    );
    out += &line(
        &mut columns
            .iter()
            .zip(&widths)
            .map(|((_, align), &width)| match align {
                Align::Left => "-".repeat(width),
                Align::Right => format!("{}:", "-".repeat(width - 1)),
            }),
    );
    for row in rows {
        out += &line(
            &mut row
                .iter()
                .zip(columns.iter().zip(&widths))
                .map(|(cell, ((_, align), &width))| pad(cell, width, *align)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::report::tests::row;

    #[test]
    fn each_target_is_divided_by_its_counterpart_and_latency_the_other_way() {
        let rows = [
            row(Scenario::Pubsub, Target::Bus, 3_000_000.0, 5.0),
            row(Scenario::Pubsub, Target::LocalTcp, 600_000.0, 50.0),
            row(Scenario::Pubsub, Target::Mesh3, 300_000.0, 50.0),
            row(Scenario::Pubsub, Target::Nats, 400_000.0, 80.0),
            row(Scenario::Pubsub, Target::NatsCluster3, 200_000.0, 80.0),
            row(Scenario::Request, Target::LocalTcp, 20_000.0, 100.0),
            row(Scenario::Request, Target::Nats, 25_000.0, 60.0),
        ];
        let comparisons = comparisons(&rows);
        let ratios = |ratios: &[Option<f64>]| {
            [Target::Bus, Target::LocalTcp, Target::Mesh3]
                .into_iter()
                .zip(ratios.iter().copied())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            comparisons,
            [
                Comparison {
                    scenario: Scenario::Pubsub,
                    payload_bytes: 128,
                    measure: Measure::Throughput,
                    ratios: ratios(&[Some(7.5), Some(1.5), Some(1.5)]),
                },
                Comparison {
                    scenario: Scenario::Request,
                    payload_bytes: 128,
                    measure: Measure::MedianLatency,
                    ratios: ratios(&[None, Some(0.6), None]),
                },
                Comparison {
                    scenario: Scenario::Request,
                    payload_bytes: 128,
                    measure: Measure::P99Latency,
                    ratios: ratios(&[None, Some(0.6), None]),
                },
            ]
        );
    }

    #[test]
    fn missing_rows_and_zero_figures_have_no_ratio() {
        let rows = [
            row(Scenario::Fanout, Target::LocalUds, 1000.0, 1.0),
            row(Scenario::Fanout, Target::Nats, 0.0, 1.0),
            row(Scenario::Queue, Target::Nats, 1000.0, 1.0),
            row(Scenario::Queue, Target::Mesh2, 1000.0, 1.0),
        ];
        let comparisons = comparisons(&rows);
        assert_eq!(
            comparisons[0].ratios,
            [(Target::LocalUds, None), (Target::Mesh2, None)],
            "nats got nothing; mesh-2 has no fanout row"
        );
        assert_eq!(
            comparisons[1].ratios,
            [(Target::LocalUds, None), (Target::Mesh2, None)],
            "no queue row for local-uds; no nats-cluster-2 row for mesh-2"
        );
        let table = comparison_table(&rows).unwrap();
        assert!(
            table.contains("| fanout   |       128 | events/s: Starling ÷ NATS |         — |"),
            "{table}"
        );
    }

    #[test]
    fn at_a_fixed_rate_streams_are_compared_by_latency() {
        let paced = |target, p99_us| Row {
            rate_per_s: Some(10_000.0),
            ..row(Scenario::Fanin, target, 10_000.0, p99_us)
        };
        let comparisons = comparisons(&[paced(Target::LocalTcp, 40.0), paced(Target::Nats, 100.0)]);
        let measures: Vec<(Measure, Option<f64>)> = comparisons
            .iter()
            .map(|comparison| (comparison.measure, comparison.ratios[0].1))
            .collect();
        assert_eq!(
            measures,
            [
                (Measure::MedianLatency, Some(2.5)),
                (Measure::P99Latency, Some(2.5))
            ]
        );
    }

    #[test]
    fn no_nats_rows_no_comparison_table() {
        let rows = [row(Scenario::Pubsub, Target::Bus, 1.0, 1.0)];
        assert_eq!(comparison_table(&rows), None);
    }

    #[test]
    fn the_comparison_table_says_which_way_is_better() {
        let rows = [
            row(Scenario::Request, Target::LocalTcp, 20_000.0, 100.0),
            row(Scenario::Request, Target::Nats, 25_000.0, 50.0),
        ];
        let table = comparison_table(&rows).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| scenario | payload B | measure                      | local-tcp |"
        );
        assert_eq!(
            lines[1],
            "| -------- | --------: | ---------------------------- | --------: |"
        );
        assert_eq!(
            lines[2],
            "| request  |       128 | p50 latency: NATS ÷ Starling |     0.50× |"
        );
        assert_eq!(
            lines[3],
            "| request  |       128 | p99 latency: NATS ÷ Starling |     0.50× |"
        );
    }

    #[test]
    fn the_results_table_has_a_line_per_run_and_no_server_figures_for_the_bus() {
        let rows = [
            row(Scenario::Pubsub, Target::Bus, 2_500_000.0, 3.0),
            row(Scenario::Pubsub, Target::Nats, 1_500.0, 1234.0),
        ];
        let table = results(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[2].contains(" 2.50 M |"), "{}", lines[2]);
        assert!(
            lines[2].ends_with("|              — |                   — |"),
            "{}",
            lines[2]
        );
        assert!(lines[3].contains(" 1.5 k |"), "{}", lines[3]);
        assert!(lines[3].contains(" 1234 |"), "{}", lines[3]);
    }

    #[test]
    fn uncounted_losses_are_called_out() {
        let mut lossy = row(Scenario::Fanin, Target::LocalUds, 1.0, 1.0);
        lossy.dropped = 7;
        lossy.dropped_counted = Some(2);
        let notes = loss_notes(&[lossy, row(Scenario::Pubsub, Target::Bus, 1.0, 1.0)]);
        assert_eq!(
            notes,
            ["fanin on local-uds, 128 B: 7 deliveries missing, 2 counted as dropped by Starling"]
        );
    }
}
