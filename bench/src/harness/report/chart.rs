//! SVG bar charts: one per scenario, events/s for each target, grouped by
//! payload size; the bar of a run that lost events is labelled with how
//! much it lost, so that no one reads it as speed.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Row, percent};
use crate::harness::error::{Context, Result};
use crate::harness::scenarios::Scenario;
use crate::harness::targets::Target;

const SIZE: (u32, u32) = (960, 540);

/// Writes `DIR/SCENARIO.svg` for each scenario in `rows`; returns the paths.
pub fn write_charts(dir: &Path, rows: &[Row]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).context(format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for &scenario in Scenario::ALL {
        let rows: Vec<&Row> = rows.iter().filter(|row| row.scenario == scenario).collect();
        if rows.is_empty() {
            continue;
        }
        let path = dir.join(format!("{}.svg", scenario.name()));
        draw(&path, scenario, &rows).context(format!("drawing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// One bar per row, in slots: a group of one slot per target for each
/// payload size, an empty slot between groups.
fn draw(path: &Path, scenario: Scenario, rows: &[&Row]) -> Result<(), Box<dyn std::error::Error>> {
    let mut payloads: Vec<usize> = rows.iter().map(|row| row.payload_bytes).collect();
    payloads.sort_unstable();
    payloads.dedup();
    let targets: Vec<Target> = Target::ALL
        .iter()
        .copied()
        .filter(|&t| rows.iter().any(|row| row.target == t))
        .collect();
    let group = targets.len() as u32 + 1;
    let slot = |payload: usize, target: Target| {
        let g = payloads.iter().position(|&p| p == payload).unwrap_or(0) as u32;
        let t = targets.iter().position(|&x| x == target).unwrap_or(0) as u32;
        g * group + t
    };
    let top = rows
        .iter()
        .map(|row| row.events_per_s)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let unit = match scenario {
        Scenario::Request => "round trips/s",
        _ => "events/s",
    };

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: {unit} by target and payload", scenario.name()),
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (0..group * payloads.len() as u32).into_segmented(),
            0.0..top,
        )?;
    let label = |value: &SegmentValue<u32>| match value {
        // Under the middle bar of each group, its payload size.
        SegmentValue::CenterOf(slot) if slot % group == (group - 1) / 2 => payloads
            .get((slot / group) as usize)
            .map_or_else(String::new, |payload| format!("{payload} B")),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(group as usize * payloads.len() + 1)
        .x_label_formatter(&label)
        .y_desc(unit)
        .y_label_formatter(&|value| si(*value))
        .draw()?;
    for (index, &target) in targets.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let bars = rows.iter().filter(|row| row.target == target).map(|row| {
            let at = slot(row.payload_bytes, target);
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(at), 0.0),
                    (SegmentValue::Exact(at + 1), row.events_per_s),
                ],
                color.filled(),
            );
            bar.set_margin(0, 0, 2, 2);
            bar
        });
        chart
            .draw_series(bars)?
            .label(target.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    let loss_label = TextStyle::from(("sans-serif", 12))
        .color(&RED)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    let losses = rows.iter().filter(|row| row.is_lossy()).map(|row| {
        Text::new(
            format!("lost {}", percent(row.lost_pct)),
            (
                SegmentValue::CenterOf(slot(row.payload_bytes, row.target)),
                row.events_per_s,
            ),
            loss_label.clone(),
        )
    });
    chart.draw_series(losses)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// An axis value with an SI prefix.
fn si(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.1} M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.0} k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::report::tests::{losing, row};
    use crate::harness::targets::process::Scratch;

    #[test]
    fn a_chart_per_scenario_with_a_bar_per_row() {
        let scratch = Scratch::create().unwrap();
        let mut big = row(Scenario::Pubsub, Target::LocalTcp, 900_000.0, 1.0);
        big.payload_bytes = 1024;
        let rows = [
            row(Scenario::Pubsub, Target::Bus, 2_000_000.0, 1.0),
            losing(
                row(Scenario::Pubsub, Target::LocalTcp, 1_000_000.0, 1.0),
                270,
            ),
            big,
            row(Scenario::Request, Target::Nats, 30_000.0, 1.0),
        ];
        let written = write_charts(scratch.path(), &rows).unwrap();
        assert_eq!(
            written,
            [
                scratch.path().join("pubsub.svg"),
                scratch.path().join("request.svg")
            ]
        );
        let svg = std::fs::read_to_string(&written[0]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.contains("pubsub: events/s by target and payload"));
        // plotters writes each text on a line of its own.
        let text = |content: &str| svg.contains(&format!("\n{content}\n</text>"));
        assert!(text("128 B") && text("1024 B"), "payload labels:\n{svg}");
        assert!(text("bus") && text("local-tcp"), "legend:\n{svg}");
        assert!(text("lost 27%"), "the lossy bar's label:\n{svg}");
        assert_eq!(svg.matches("lost ").count(), 1, "only on the lossy bar");
        let request = std::fs::read_to_string(&written[1]).unwrap();
        assert!(request.contains("round trips/s"));
    }
}
