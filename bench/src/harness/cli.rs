//! The command line, and the plan of runs it asks for.
//!
//! `--quick` and `--smoke` are presets: they choose scenarios, targets,
//! payloads and run length, and any of those given explicitly wins.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use super::load::{PAYLOAD_BYTES_MIN, RunLength};
use super::scenarios::Scenario;
use super::targets::Target;

/// Loads Starling (in process, through a `starling node`, through meshes of
/// nodes) and `nats-server` (alone and in clusters) with the same scenarios
/// in one run, and reports throughput, latency percentiles, losses, the
/// servers' CPU and memory, and each networked Starling target against its
/// NATS counterpart with what each side lost (a ratio where either side lost
/// events is marked LOSSY: no result). It starts and stops every server
/// itself.
#[derive(Debug, Parser)]
#[command(name = "starling-bench", version, after_help = USAGE)]
pub struct Options {
    /// Scenarios, comma-separated: pubsub (1 → 1), fanout (1 → 4), fanin
    /// (4 → 1), queue (1 → queue group of 4), request (sequential round
    /// trips), or all [default: all]
    #[arg(long, value_name = "SCENARIO", value_delimiter = ',', value_parser = pick::<Scenario>)]
    pub scenario: Vec<Pick<Scenario>>,

    /// Systems under test, comma-separated: bus (in process); local-tcp,
    /// local-uds, local-tcp-epoll (one starling node: io_uring over TCP or
    /// its Unix socket, epoll over TCP); mesh-2, mesh-3 (starling nodes
    /// meshed over QUIC); nats-port, mesh-2-nats-port (one node, two meshed:
    /// clients over their NATS listeners, with the NATS targets' client);
    /// nats, nats-cluster-2, nats-cluster-3 (nats-server); or all [default:
    /// all]. In a cluster, publishers connect to the first
    /// server and subscribers to the others
    #[arg(long, value_name = "TARGET", value_delimiter = ',', value_parser = pick::<Target>)]
    pub target: Vec<Pick<Target>>,

    /// Payload sizes in bytes, at least 16: each payload starts with its
    /// 8-byte send time [default: 16 128 1024; 128 with --quick or --smoke]
    #[arg(long, value_name = "BYTES", num_args = 1.., value_delimiter = ',', value_parser = parse_payload)]
    pub payload: Vec<usize>,

    /// Seconds each run publishes for [default: 5; 2 with --quick]
    #[arg(long, value_name = "SECS", conflicts_with = "count", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    /// Events each run publishes in all (round trips for request), instead
    /// of a duration [default with --smoke: 200]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Events per second to publish in all, open loop: each event's latency
    /// counts from when it was meant to be sent [default: as fast as
    /// possible]
    #[arg(long, value_name = "EVENTS_PER_S", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Write the result rows to FILE as a JSON array
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write one SVG bar chart per scenario (events/s by target and payload)
    /// into DIR
    #[arg(long, value_name = "DIR")]
    pub chart_dir: Option<PathBuf>,

    /// Every scenario and target at 128 B, 2 s each
    #[arg(long, conflicts_with = "smoke")]
    pub quick: bool,

    /// A tiny check for CI: every scenario and target at 128 B, 200 events
    /// each; fails unless every run delivered every event
    #[arg(long)]
    pub smoke: bool,

    /// The starling binary to start nodes with [default: `starling` next to
    /// this executable, where cargo builds both]
    #[arg(long, value_name = "PATH")]
    pub starling_bin: Option<PathBuf>,

    /// The nats-server binary [default: nats-server in PATH or /usr/sbin];
    /// without one, the NATS targets are skipped
    #[arg(long, value_name = "PATH")]
    pub nats_server_bin: Option<PathBuf>,

    /// Whether the starling clients send small events (no headers, payload
    /// up to 1 KiB) as PACKED_PUB records: on or off [default: the client
    /// library's default, `ClientOptions::pack_small_events`]. For comparing
    /// the two frame kinds with the same binaries
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub pack: Option<bool>,
}

/// How to build and run it, after the options in `--help`.
const USAGE: &str = "\
Build the harness and the node into one directory (the harness looks for `starling` next to itself):
    cargo build --release -p starling-bench -p starling-mesh
    target/release/starling-bench --quick --json bench.json --chart-dir charts
The NATS targets need nats-server (scripts/install-nats installs it); without it they are skipped.";

/// One value of a list option: a named value, or `all` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick<T> {
    /// Every value.
    All,
    /// This one.
    One(T),
}

fn pick<T: ValueEnum>(text: &str) -> Result<Pick<T>, String> {
    if text == "all" {
        return Ok(Pick::All);
    }
    T::from_str(text, false).map(Pick::One).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|value| Some(value.to_possible_value()?.get_name().to_owned()))
            .collect();
        format!("expected one of {}, or all", names.join(", "))
    })
}

fn parse_payload(text: &str) -> Result<usize, String> {
    let bytes: usize = text.parse().map_err(|_| "not a byte count".to_owned())?;
    if bytes < PAYLOAD_BYTES_MIN {
        return Err(format!(
            "payloads are at least {PAYLOAD_BYTES_MIN} bytes: each starts with its 8-byte send time"
        ));
    }
    Ok(bytes)
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Ok(Duration::from_secs_f64(seconds)),
        _ => Err("expected a positive number of seconds".to_owned()),
    }
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("expected on or off".to_owned()),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("expected a positive number of events per second".to_owned()),
    }
}

/// Every value of `picks`, each once, in declaration order; `defaults` if
/// none was picked.
fn expand<T: ValueEnum + PartialEq + Copy>(picks: &[Pick<T>], defaults: &[T]) -> Vec<T> {
    if picks.is_empty() {
        return defaults.to_vec();
    }
    T::value_variants()
        .iter()
        .copied()
        .filter(|value| {
            picks
                .iter()
                .any(|pick| matches!(pick, Pick::All) || *pick == Pick::One(*value))
        })
        .collect()
}

/// One run: a scenario against a target at a payload size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// What the run does.
    pub scenario: Scenario,
    /// What it does it to.
    pub target: Target,
    /// Bytes per event.
    pub payload_bytes: usize,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {}, {} B",
            self.scenario.name(),
            self.target.name(),
            self.payload_bytes
        )
    }
}

/// What the options ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Scenarios to run.
    pub scenarios: Vec<Scenario>,
    /// Targets to run them against.
    pub targets: Vec<Target>,
    /// Payload sizes.
    pub payloads: Vec<usize>,
    /// How long each run publishes.
    pub length: RunLength,
    /// Events per second in all, or flat out.
    pub rate: Option<f64>,
    /// Whether this is the CI smoke check (which verifies what it measured).
    pub smoke: bool,
}

impl Options {
    /// The plan: presets filled in, explicit options winning.
    pub fn plan(&self) -> Plan {
        let (payloads, length): (&[usize], RunLength) = if self.smoke {
            (&[128], RunLength::Count(200))
        } else if self.quick {
            (&[128], RunLength::Duration(Duration::from_secs(2)))
        } else {
            (
                &[16, 128, 1024],
                RunLength::Duration(Duration::from_secs(5)),
            )
        };
        let length = match (self.count, self.duration) {
            (Some(count), _) => RunLength::Count(count),
            (None, Some(duration)) => RunLength::Duration(duration),
            (None, None) => length,
        };
        let mut payloads = if self.payload.is_empty() {
            payloads.to_vec()
        } else {
            self.payload.clone()
        };
        payloads.sort_unstable();
        payloads.dedup();
        Plan {
            scenarios: expand(&self.scenario, Scenario::ALL),
            targets: expand(&self.target, Target::ALL),
            payloads,
            length,
            rate: self.rate,
            smoke: self.smoke,
        }
    }
}

impl Plan {
    /// Every run, scenario by scenario and payload by payload, for the
    /// targets that `available` accepts.
    pub fn runs(&self, available: impl Fn(Target) -> bool) -> Vec<Run> {
        let mut runs = Vec::new();
        for &scenario in &self.scenarios {
            for &payload_bytes in &self.payloads {
                for &target in self.targets.iter().filter(|&&t| available(t)) {
                    runs.push(Run {
                        scenario,
                        target,
                        payload_bytes,
                    });
                }
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Plan {
        let mut argv = vec!["starling-bench"];
        argv.extend_from_slice(args);
        Options::try_parse_from(argv).expect("valid options").plan()
    }

    #[test]
    fn no_options_run_everything_at_three_payloads_for_five_seconds() {
        let plan = plan(&[]);
        assert_eq!(plan.scenarios, Scenario::ALL);
        assert_eq!(plan.targets, Target::ALL);
        assert_eq!(plan.payloads, [16, 128, 1024]);
        assert_eq!(plan.length, RunLength::Duration(Duration::from_secs(5)));
        assert_eq!(plan.rate, None);
    }

    #[test]
    fn presets_give_way_to_explicit_options() {
        let smoke = plan(&["--smoke"]);
        assert_eq!(smoke.targets, Target::ALL);
        assert_eq!(smoke.payloads, [128]);
        assert_eq!(smoke.length, RunLength::Count(200));
        assert!(smoke.smoke);

        let bus_only = plan(&["--smoke", "--target", "bus"]);
        assert_eq!(bus_only.targets, [Target::Bus]);
        assert_eq!(bus_only.scenarios, Scenario::ALL);

        let quick = plan(&["--quick", "--duration", "0.5", "--payload", "1024", "16"]);
        assert_eq!(quick.payloads, [16, 1024]);
        assert_eq!(
            quick.length,
            RunLength::Duration(Duration::from_millis(500))
        );
    }

    #[test]
    fn lists_take_commas_and_all_in_declaration_order() {
        let picked = plan(&[
            "--scenario",
            "request,pubsub",
            "--target",
            "nats,local-tcp-epoll",
        ]);
        assert_eq!(picked.scenarios, [Scenario::Pubsub, Scenario::Request]);
        assert_eq!(picked.targets, [Target::LocalTcpEpoll, Target::Nats]);
        let all = plan(&["--target", "bus,all"]);
        assert_eq!(all.targets, Target::ALL);
    }

    #[test]
    fn bad_values_are_refused_with_the_rule() {
        let refused = |args: &[&str]| {
            let mut argv = vec!["starling-bench"];
            argv.extend_from_slice(args);
            Options::try_parse_from(argv)
                .expect_err("refused")
                .to_string()
        };
        assert!(refused(&["--payload", "8"]).contains("at least 16 bytes"));
        assert!(refused(&["--scenario", "broadcast"]).contains("pubsub, fanout"));
        assert!(refused(&["--rate", "0"]).contains("positive"));
        assert!(refused(&["--count", "5", "--duration", "1"]).contains("cannot be used with"));
        assert!(refused(&["--quick", "--smoke"]).contains("cannot be used with"));
    }

    #[test]
    fn runs_skip_unavailable_targets() {
        let plan = plan(&["--scenario", "pubsub", "--payload", "16,128"]);
        let runs = plan.runs(|target| target != Target::Nats);
        assert_eq!(runs.len(), 2 * (Target::ALL.len() - 1));
        assert!(runs.iter().all(|run| run.target != Target::Nats));
        assert_eq!(runs[0].to_string(), "pubsub on bus, 16 B");
    }
}
