//! The delivery contract with real processes: a `starling sub` that is
//! stopped (SIGSTOP) while 400 MB flow past holds `starling pub` back for
//! at most its `--max-stall`; a healthy subscriber of the same events gets
//! every one; the node's memory stays bounded; and once continued, the
//! stopped subscriber is told exactly how many events it missed.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Process, resident_bytes, starling, start_node, start_sub, text, wait_output};

const EVENTS: u64 = 100_000;
const SIZE: &str = "4096";

#[test]
fn a_stopped_subscriber_holds_its_publisher_back_only_for_max_stall() {
    let node = start_node(&[], &[]);
    let count = EVENTS.to_string();
    let mut stopped = start_sub(
        &node,
        &[
            "big",
            "--max-stall",
            "500",
            "--count",
            &count,
            "--timeout",
            "60",
        ],
    );
    let mut healthy = start_sub(&node, &["big", "--count", &count, "--timeout", "180"]);
    // Read the healthy one's output as it comes: a pipe nobody reads would
    // make it a stuck subscriber too.
    let healthy = std::thread::spawn(move || wait_output(&mut healthy, Duration::from_secs(170)));
    signal(&stopped, "-STOP");

    let started = Instant::now();
    let mut publisher = Process(
        starling(&[
            "pub", "--server", &node.tcp, "big", "--count", &count, "--size", SIZE,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let published = wait_output(&mut publisher, Duration::from_secs(150));
    let publishing = started.elapsed();
    assert!(published.status.success(), "{}", text(&published.stderr));

    let healthy = healthy.join().unwrap();
    assert!(healthy.status.success(), "{}", text(&healthy.stderr));
    assert_eq!(
        text(&healthy.stdout).lines().count() as u64,
        EVENTS,
        "the healthy subscriber got every event"
    );
    assert!(
        !text(&healthy.stderr).contains("dropped"),
        "{}",
        text(&healthy.stderr)
    );
    let rss = resident_bytes(node.process.0.id());
    assert!(
        rss < 512 << 20,
        "the node stayed bounded while 400 MB went past: {rss} bytes resident"
    );

    signal(&stopped, "-CONT");
    let stopped_output = wait_output(&mut stopped, Duration::from_secs(120));
    let received = text(&stopped_output.stdout).lines().count() as u64;
    let report = text(&stopped_output.stderr);
    let missed: u64 = report
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the stopped subscriber is told what it missed: {report:?}"));
    assert_eq!(
        received + missed,
        EVENTS,
        "every event received or counted as missed ({received} + {missed})"
    );
    assert!(missed > 0);
    // The publisher waited for the stopped subscriber once, for its max
    // stall, and went on: far faster than if it had waited per event.
    assert!(
        publishing < Duration::from_secs(120),
        "publishing took {publishing:?}"
    );
}

fn signal(process: &Process, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal}");
}
