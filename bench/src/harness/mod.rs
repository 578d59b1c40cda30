//! The load harness behind `starling-bench`: the same scenarios against
//! Starling (in process, through a `starling node`, through a mesh of nodes)
//! and against `nats-server` (alone and in clusters), in one run, with
//! throughput, latency percentiles, losses, and the servers' CPU and memory
//! side by side, and each networked Starling target's ratio to its NATS
//! counterpart, with what each side lost (a ratio where either lost events
//! is marked LOSSY).
//!
//! The harness starts every server it uses, fresh for each run, and stops
//! it after; a failed run kills its servers, and so does the kernel if the
//! harness dies. It looks for `starling` next to its own executable (cargo
//! builds both into the same directory: `cargo build --release -p
//! starling-bench -p starling-mesh`), or takes `--starling-bin PATH`; and
//! for `nats-server` in `PATH` and `/usr/sbin` (`scripts/install-nats`), or
//! takes `--nats-server-bin PATH`. Targets whose server is missing are
//! skipped with a message saying so.
//!
//! - [`cli`]: the command line and the plan of runs it asks for;
//! - [`scenarios`]: who publishes and subscribes, and how one run goes;
//! - [`load`]: stamped payloads, flat out or on an open-loop schedule;
//! - [`targets`]: the systems under test: starting and stopping their
//!   servers, and driving them;
//! - [`measurement`]: histograms, rates, server CPU and memory from `/proc`;
//! - [`report`]: rows, tables, JSON and SVG charts;
//! - [`connections`]: the `starling-connections` binary: how fast a node
//!   accepts connections and what an idle one costs it.

pub mod cli;
pub mod connections;
pub mod error;
pub mod load;
pub mod measurement;
pub mod report;
pub mod scenarios;
pub mod targets;

use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use starling_transport::client::ClientOptions;

use self::cli::{Options, Plan, Run};
use self::error::{Error, Result};
use self::load::RunLength;
use self::measurement::ServerCost;
use self::report::{Row, table};
use self::scenarios::Load;
use self::targets::Launcher;

/// Runs what `options` ask for and reports it. The exit code fails if a run
/// failed or, with `--smoke`, if the smoke check did.
pub fn run(options: &Options) -> Result<ExitCode> {
    let plan = options.plan();
    let (launcher, skipped) = Launcher::prepare(
        &plan.targets,
        options.starling_bin.as_deref(),
        options.nats_server_bin.as_deref(),
        options
            .pack
            .unwrap_or(ClientOptions::default().pack_small_events),
    )?;
    for message in &skipped {
        println!("{message}");
    }
    let runs = plan.runs(|target| launcher.available(target));
    if runs.is_empty() {
        return Err(Error::new(
            "nothing to run: every target asked for was skipped",
        ));
    }
    println!("{}", describe(&plan, runs.len()));

    let progress = ProgressBar::new(runs.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    let mut rows = Vec::new();
    let mut failed = 0;
    for run in &runs {
        progress.set_message(run.to_string());
        match measure(&launcher, run, &plan) {
            Ok(row) => rows.push(row),
            Err(error) => {
                failed += 1;
                // Not `println`: a hidden bar (output not a terminal) drops it.
                progress.suspend(|| eprintln!("{run}: failed: {error}"));
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();

    print_report(&rows);
    if let Some(path) = &options.json {
        report::write_json(path, &rows)?;
        println!("wrote {}", path.display());
    }
    if let Some(dir) = &options.chart_dir {
        for path in report::chart::write_charts(dir, &rows)? {
            println!("wrote {}", path.display());
        }
    }
    let mut success = failed == 0;
    if !success {
        eprintln!("{failed} of {} runs failed", runs.len());
    }
    if plan.smoke {
        match smoke_verdict(&rows) {
            Ok(checked) => println!("smoke check passed: {checked} runs delivered every event"),
            Err(problem) => {
                eprintln!("smoke check failed: {problem}");
                success = false;
            }
        }
    }
    Ok(if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One run: a fresh system, the scenario, the servers' cost, a clean stop.
/// On failure the system is dropped, which kills its servers.
fn measure(launcher: &Launcher, run: &Run, plan: &Plan) -> Result<Row> {
    let mut system = launcher.start(run.target)?;
    let load = Load {
        payload_bytes: run.payload_bytes,
        length: plan.length,
        rate: plan.rate,
    };
    let before = system.server_usage()?;
    let outcome = scenarios::run(run.scenario, system.as_mut(), &load)?;
    let after = system.server_usage()?;
    let cost = ServerCost::between(&before, &after);
    let row = Row::new(run, plan.rate, &outcome, cost, system.io_backend());
    system.stop()?;
    Ok(row)
}

fn describe(plan: &Plan, runs: usize) -> String {
    let length = match plan.length {
        RunLength::Duration(duration) => format!("{:.1} s each", duration.as_secs_f64()),
        RunLength::Count(count) => format!("{count} events each"),
    };
    let rate = match plan.rate {
        Some(rate) => format!("{rate} events/s in all, open loop"),
        None => "flat out".to_owned(),
    };
    format!("{runs} runs, {length}, {rate}")
}

fn print_report(rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    println!("\n{}", table::results(rows));
    let mut backends: Vec<String> = Vec::new();
    for row in rows {
        if let Some(backend) = &row.io_backend {
            let named = format!("{} {backend}", row.target.name());
            if !backends.contains(&named) {
                backends.push(named);
            }
        }
    }
    if !backends.is_empty() {
        println!("io backends: {}\n", backends.join("; "));
    }
    match table::comparison_table(rows) {
        Some(comparison) => println!(
            "Starling against its NATS counterpart in this run (local-*: nats; \
             mesh-N: nats-cluster-N; the in-process bus has none); above 1×, Starling \
             does better. A ratio where either side lost events is LOSSY: no result, \
             since dropping what cannot be delivered is not speed\n\n{comparison}"
        ),
        None => println!(
            "no comparison with NATS: it needs a NATS target and a networked Starling \
             target (the bus is not compared with a server)\n"
        ),
    }
    for note in table::loss_notes(rows) {
        println!("uncounted loss: {note}");
    }
}

/// The smoke check: every run delivered every event it sent, as many times
/// as it should have (a few hundred events lose nothing on a working
/// system). Returns how many runs it checked.
fn smoke_verdict(rows: &[Row]) -> Result<usize, String> {
    if rows.is_empty() {
        return Err("no run completed".to_owned());
    }
    for row in rows {
        if row.sent == 0 || row.received != row.expected {
            return Err(format!(
                "{} on {} delivered {} of {} events",
                row.scenario.name(),
                row.target.name(),
                row.received,
                row.expected
            ));
        }
    }
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::report::tests::row;
    use crate::harness::scenarios::Scenario;
    use crate::harness::targets::Target;

    #[test]
    fn the_smoke_check_wants_every_delivery() {
        let complete = row(Scenario::Pubsub, Target::Bus, 1.0, 1.0);
        let mut fanout = row(Scenario::Fanout, Target::Mesh3, 1.0, 1.0);
        fanout.expected = 4000;
        fanout.received = 4000;
        assert_eq!(smoke_verdict(&[complete.clone(), fanout.clone()]), Ok(2));
        fanout.received = 3999;
        assert_eq!(
            smoke_verdict(&[complete.clone(), fanout]),
            Err("fanout on mesh-3 delivered 3999 of 4000 events".to_owned())
        );
        let mut nothing_sent = complete;
        (
            nothing_sent.sent,
            nothing_sent.expected,
            nothing_sent.received,
        ) = (0, 0, 0);
        assert!(smoke_verdict(&[nothing_sent]).is_err());
        assert!(smoke_verdict(&[]).is_err());
    }
}
