//! The tables printed at the end, in Markdown: aligned for a terminal, ready
//! to paste into BENCHMARKS.md.

use std::fmt;

use super::{Row, percent};
use crate::harness::scenarios::Scenario;
use crate::harness::targets::Target;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy)]
pub enum Align {
    /// On the left: names.
    Left,
    /// On the right: figures.
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
        ("lost", Right),
        ("lost %", Right),
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
                row.lost.to_string(),
                percent(row.lost_pct),
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
    fn ratio(self, starling: &Row, nats: &Row) -> Option<Ratio> {
        let (better, worse) = match self {
            Measure::Throughput => (starling.events_per_s, nats.events_per_s),
            Measure::MedianLatency => (nats.p50_us, starling.p50_us),
            Measure::P99Latency => (nats.p99_us, starling.p99_us),
        };
        (worse > 0.0).then(|| Ratio {
            value: better / worse,
            starling_lost_pct: starling.lost_pct,
            nats_lost_pct: nats.lost_pct,
        })
    }
}

/// A Starling target's figure against its counterpart's, with what each
/// side lost. Shown as `1.12× (none lost)`, or `1.12× (LOSSY: starling lost
/// 27%)` when either side lost deliveries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// Above 1 when Starling did better.
    pub value: f64,
    /// Percent of its deliveries the Starling target lost.
    pub starling_lost_pct: f64,
    /// Percent of its deliveries the NATS target lost.
    pub nats_lost_pct: f64,
}

impl Ratio {
    /// Whether either side lost deliveries. Such a ratio is no result: a
    /// side that drops what it cannot deliver moves more events per second
    /// than one that slows its publisher down, and is not faster for it.
    pub fn is_lossy(&self) -> bool {
        self.starling_lost_pct > 0.0 || self.nats_lost_pct > 0.0
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}×", self.value)?;
        if !self.is_lossy() {
            return write!(f, " (none lost)");
        }
        let losses: Vec<String> = [
            ("starling", self.starling_lost_pct),
            ("nats", self.nats_lost_pct),
        ]
        .into_iter()
        .filter(|&(_, pct)| pct > 0.0)
        .map(|(side, pct)| format!("{side} lost {}", percent(pct)))
        .collect();
        write!(f, " (LOSSY: {})", losses.join(", "))
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
    /// Each Starling target in the rows that has a counterpart, with its
    /// ratio if both it and its counterpart have a row here.
    pub ratios: Vec<(Target, Option<Ratio>)>,
}

/// A comparison per scenario, payload size and measure for which some NATS
/// target has a row; empty if no Starling target with a NATS counterpart
/// has rows (the bus has none).
pub fn comparisons(rows: &[Row]) -> Vec<Comparison> {
    let present = |target: Target| rows.iter().any(|row| row.target == target);
    let starling: Vec<Target> = Target::ALL
        .iter()
        .copied()
        .filter(|&t| t.nats_counterpart().is_some() && present(t))
        .collect();
    if starling.is_empty() {
        return Vec::new();
    }
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

/// The comparisons with NATS as a table, each ratio with what either side
/// lost; `None` without anything to compare.
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
                Some(ratio) => ratio.to_string(),
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
                row.lost,
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

/// A Markdown table of `rows` (a cell per column, in order) under
/// `columns`' titles, padded to line up in a terminal.
pub fn markdown(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
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
    use crate::harness::report::tests::{losing, row};

    /// Each target's ratio, without the losses.
    type Values = Vec<(Target, Option<f64>)>;

    fn values(comparison: &Comparison) -> Values {
        comparison
            .ratios
            .iter()
            .map(|(target, ratio)| (*target, ratio.map(|ratio| ratio.value)))
            .collect()
    }

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
        let cases: Vec<(Scenario, Measure, Values)> = comparisons
            .iter()
            .map(|c| (c.scenario, c.measure, values(c)))
            .collect();
        assert_eq!(
            cases,
            [
                (
                    Scenario::Pubsub,
                    Measure::Throughput,
                    vec![(Target::LocalTcp, Some(1.5)), (Target::Mesh3, Some(1.5))]
                ),
                (
                    Scenario::Request,
                    Measure::MedianLatency,
                    vec![(Target::LocalTcp, Some(0.6)), (Target::Mesh3, None)]
                ),
                (
                    Scenario::Request,
                    Measure::P99Latency,
                    vec![(Target::LocalTcp, Some(0.6)), (Target::Mesh3, None)]
                ),
            ]
        );
        assert!(comparisons.iter().all(|c| c.payload_bytes == 128));
    }

    #[test]
    fn the_bus_is_never_compared_with_a_server() {
        let rows = [
            row(Scenario::Pubsub, Target::Bus, 3_000_000.0, 5.0),
            row(Scenario::Pubsub, Target::Nats, 400_000.0, 80.0),
        ];
        assert_eq!(comparisons(&rows), []);
        assert_eq!(comparison_table(&rows), None);
        let with_a_node = [
            rows[0].clone(),
            rows[1].clone(),
            row(Scenario::Pubsub, Target::LocalUds, 500_000.0, 50.0),
        ];
        let table = comparison_table(&with_a_node).unwrap();
        assert!(
            table.lines().next().unwrap().ends_with(" local-uds |"),
            "{table}"
        );
        assert!(!table.contains("bus"), "{table}");
    }

    #[test]
    fn a_ratio_where_either_side_lost_is_lossy_and_says_who_lost_what() {
        let starling = losing(row(Scenario::Pubsub, Target::LocalTcp, 1_120.0, 1.0), 270);
        let nats = row(Scenario::Pubsub, Target::Nats, 1_000.0, 1.0);
        let ratio = |starling: &Row, nats: &Row| {
            let comparisons = comparisons(&[starling.clone(), nats.clone()]);
            comparisons[0].ratios[0].1.expect("both have a row")
        };
        let starling_lost = ratio(&starling, &nats);
        assert!(starling_lost.is_lossy());
        assert_eq!(
            starling_lost.to_string(),
            "1.12× (LOSSY: starling lost 27%)"
        );
        let nats_lost = ratio(
            &row(Scenario::Pubsub, Target::LocalTcp, 1_120.0, 1.0),
            &losing(nats.clone(), 5),
        );
        assert!(nats_lost.is_lossy());
        assert_eq!(nats_lost.to_string(), "1.12× (LOSSY: nats lost 0.50%)");
        let both = ratio(&starling, &losing(nats.clone(), 1));
        assert_eq!(
            both.to_string(),
            "1.12× (LOSSY: starling lost 27%, nats lost 0.10%)"
        );
        let clean = ratio(
            &row(Scenario::Pubsub, Target::LocalTcp, 1_120.0, 1.0),
            &nats,
        );
        assert!(!clean.is_lossy());
        assert_eq!(clean.to_string(), "1.12× (none lost)");
        let table = comparison_table(&[starling, nats]).unwrap();
        assert!(
            table.contains("| 1.12× (LOSSY: starling lost 27%) |"),
            "{table}"
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
            .map(|comparison| (comparison.measure, values(comparison)[0].1))
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
        let rows = [row(Scenario::Pubsub, Target::LocalTcp, 1.0, 1.0)];
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
            "| scenario | payload B | measure                      |         local-tcp |"
        );
        assert_eq!(
            lines[1],
            "| -------- | --------: | ---------------------------- | ----------------: |"
        );
        assert_eq!(
            lines[2],
            "| request  |       128 | p50 latency: NATS ÷ Starling | 0.50× (none lost) |"
        );
        assert_eq!(
            lines[3],
            "| request  |       128 | p99 latency: NATS ÷ Starling | 0.50× (none lost) |"
        );
    }

    #[test]
    fn the_results_table_has_a_line_per_run_with_its_loss_and_no_server_figures_for_the_bus() {
        let rows = [
            row(Scenario::Pubsub, Target::Bus, 2_500_000.0, 3.0),
            losing(row(Scenario::Pubsub, Target::Nats, 1_500.0, 1234.0), 30),
        ];
        let table = results(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].contains("| sent | received | lost | lost % |"),
            "{}",
            lines[0]
        );
        assert!(lines[2].contains(" 2.50 M |"), "{}", lines[2]);
        assert!(
            lines[2].contains("| 1000 |     1000 |    0 |     0% |"),
            "{}",
            lines[2]
        );
        assert!(
            lines[2].ends_with("|              — |                   — |"),
            "{}",
            lines[2]
        );
        assert!(lines[3].contains(" 1.5 k |"), "{}", lines[3]);
        assert!(lines[3].contains(" 1234 |"), "{}", lines[3]);
        assert!(
            lines[3].contains("| 1000 |      970 |   30 |   3.0% |"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn uncounted_losses_are_called_out() {
        let mut lossy = losing(row(Scenario::Fanin, Target::LocalUds, 1.0, 1.0), 7);
        lossy.dropped_counted = Some(2);
        let notes = loss_notes(&[lossy, row(Scenario::Pubsub, Target::Bus, 1.0, 1.0)]);
        assert_eq!(
            notes,
            ["fanin on local-uds, 128 B: 7 deliveries missing, 2 counted as dropped by Starling"]
        );
    }
}
