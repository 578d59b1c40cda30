//! The `starling-bench` binary as CI runs it: `--smoke`, every scenario on
//! every target at a tiny size, checked through its JSON output. Targets
//! whose servers are not there (no `starling` next to the harness, no
//! nats-server) must be skipped with a message, never silently; the rest
//! must deliver every event, and every figure must come with what was lost.
//! Also the report generator's own check of its logic.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_starling-bench");

const SCENARIOS: &[&str] = &["pubsub", "fanout", "fanin", "queue", "request"];

const TARGETS: &[&str] = &[
    "bus",
    "local-tcp",
    "local-uds",
    "local-tcp-epoll",
    "mesh-2",
    "mesh-3",
    "nats-port",
    "mesh-2-nats-port",
    "nats",
    "nats-cluster-2",
    "nats-cluster-3",
];

/// The fields every JSON row documents.
const FIELDS: &[&str] = &[
    "scenario",
    "target",
    "payload_bytes",
    "events_per_s",
    "mb_per_s",
    "p50_us",
    "p90_us",
    "p99_us",
    "p999_us",
    "max_us",
    "sent",
    "expected",
    "received",
    "lost",
    "lost_pct",
    "dropped_counted",
    "server_cpu_s_per_million",
    "server_peak_rss_bytes",
    "server_peak_rss_bytes_each",
    "io_backend",
];

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("starling-bench-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed on drop (its servers die with it: the harness
/// gives them a parent-death signal).
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the harness with `args`, its output in files of `scratch` (a full
/// pipe cannot block it), failing the test if it runs past `timeout`.
fn harness(scratch: &Scratch, args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let stdout = scratch.0.join("stdout");
    let stderr = scratch.0.join("stderr");
    let mut child = Process(
        Command::new(BINARY)
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the harness ran past {timeout:?}; its output so far:\n{}",
            std::fs::read_to_string(&stdout).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |path| std::fs::read_to_string(path).unwrap();
    (status, read(&stdout), read(&stderr))
}

#[test]
fn smoke_runs_every_scenario_on_every_target_it_has_servers_for() {
    let scratch = Scratch::new("smoke");
    let json = scratch.0.join("rows.json");
    let charts = scratch.0.join("charts");
    let (status, stdout, stderr) = harness(
        &scratch,
        &[
            "--smoke",
            "--json",
            json.to_str().unwrap(),
            "--chart-dir",
            charts.to_str().unwrap(),
        ],
        Duration::from_secs(50),
    );
    assert!(status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("smoke check passed"), "{stdout}");
    assert!(
        stdout.contains("| scenario |"),
        "the results table:\n{stdout}"
    );
    assert!(
        stdout.contains("| sent | received | lost | lost % |"),
        "the results table's loss columns:\n{stdout}"
    );
    match stdout.find("| scenario | payload B | measure ") {
        // The comparison table's header names the targets compared.
        Some(at) => {
            let mut table = stdout[at..]
                .lines()
                .take_while(|line| line.starts_with('|'));
            let header = table.next().unwrap();
            assert!(!header.contains("bus"), "the bus compared: {header}");
            // Every ratio says what was lost beside it; a smoke run loses
            // nothing.
            let ratios = table.skip(1).flat_map(|line| line.split('|').skip(4));
            for cell in ratios.map(str::trim).filter(|cell| cell.contains('×')) {
                assert!(cell.ends_with("× (none lost)"), "{cell}\n{stdout}");
            }
        }
        None => assert!(
            stdout.contains("no comparison with NATS"),
            "neither a comparison nor why not:\n{stdout}"
        ),
    }

    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for row in &rows {
        for field in FIELDS {
            assert!(row.get(field).is_some(), "{field} is missing from {row}");
        }
        assert_eq!(row["payload_bytes"], 128);
        assert_eq!(row["received"], row["expected"], "{row}");
        assert_eq!(row["lost"], 0, "{row}");
        assert_eq!(row["lost_pct"], 0.0, "{row}");
        assert!(row["events_per_s"].as_f64().unwrap() > 0.0, "{row}");
        let servers = row["server_peak_rss_bytes_each"].as_array().unwrap().len();
        let expected_servers = match row["target"].as_str().unwrap() {
            "bus" => 0,
            "mesh-2" | "mesh-2-nats-port" | "nats-cluster-2" => 2,
            "mesh-3" | "nats-cluster-3" => 3,
            _ => 1,
        };
        assert_eq!(servers, expected_servers, "{row}");
    }
    for target in TARGETS {
        let scenarios: Vec<&str> = rows
            .iter()
            .filter(|row| row["target"] == *target)
            .map(|row| row["scenario"].as_str().unwrap())
            .collect();
        let skipped = stdout
            .lines()
            .any(|line| line.starts_with("skipping ") && line.contains(target));
        assert!(
            scenarios == SCENARIOS || (scenarios.is_empty() && skipped),
            "{target}: ran {scenarios:?}, skipped: {skipped}\n{stdout}"
        );
    }
    let bus: Vec<&serde_json::Value> = rows.iter().filter(|row| row["target"] == "bus").collect();
    assert_eq!(bus[0]["sent"], 200, "pubsub publishes the count");
    assert_eq!(
        bus[1]["received"], 800,
        "fanout delivers each event 4 times"
    );
    assert_eq!(
        bus[0]["server_cpu_s_per_million"], 0.0,
        "the bus has no server"
    );
    for scenario in SCENARIOS {
        assert!(
            charts.join(format!("{scenario}.svg")).is_file(),
            "{scenario}.svg"
        );
    }
}

/// The delivery contract under load (issue "lossless under load"): flat
/// out, with healthy subscribers, every Starling target delivers exactly
/// what was sent times the fan-out, in every scenario that fans events out
/// or in — the default policy holds publishers back instead of dropping.
#[test]
fn flat_out_every_starling_target_delivers_every_event() {
    let scratch = Scratch::new("lossless");
    let json = scratch.0.join("rows.json");
    let (status, stdout, stderr) = harness(
        &scratch,
        &[
            "--scenario",
            "pubsub,fanout,fanin,queue",
            "--target",
            "bus,local-tcp,local-uds,mesh-2,mesh-3",
            "--payload",
            "128",
            "--count",
            "20000",
            "--json",
            json.to_str().unwrap(),
        ],
        Duration::from_secs(600),
    );
    assert!(status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.len(), 4 * 5, "every scenario on every target ran");
    for row in &rows {
        assert_eq!(row["received"], row["expected"], "{row}");
        assert_eq!(row["lost"], 0, "{row}");
    }
}

#[test]
fn nats_targets_without_nats_server_are_skipped_with_a_message() {
    let scratch = Scratch::new("no-nats");
    let (status, stdout, stderr) = harness(
        &scratch,
        &[
            "--smoke",
            "--target",
            "nats,nats-cluster-3",
            "--nats-server-bin",
            "/nonexistent/nats-server",
        ],
        Duration::from_secs(10),
    );
    assert!(!status.success());
    assert!(
        stdout.contains("skipping nats, nats-cluster-3: nats-server not found"),
        "{stdout}"
    );
    assert!(stderr.contains("nothing to run"), "{stderr}");
}

#[test]
fn a_payload_too_small_for_its_timestamp_is_refused() {
    let scratch = Scratch::new("small");
    let (status, _, stderr) = harness(
        &scratch,
        &["--target", "bus", "--payload", "8"],
        Duration::from_secs(10),
    );
    assert!(!status.success());
    assert!(stderr.contains("at least 16 bytes"), "{stderr}");
}

/// The Goals logic and the lead of BENCHMARKS.md live in
/// scripts/bench-report; its self-test renders made-up runs and checks that
/// a ratio where either side lost events is marked LOSSY, never met, and
/// kept out of the comparisons BENCHMARKS.md leads with.
#[test]
fn the_report_generator_never_counts_a_lossy_ratio_as_a_goal_met() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench-report");
    let output = Command::new("python3")
        .args([script, "--self-test"])
        .output()
        .expect("python3 runs scripts/bench-report");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("self-test passed"), "{stdout}");
}
