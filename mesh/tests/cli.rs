//! The `starling` binary as a user runs it: real `starling node` processes on
//! free loopback ports, and `pub`, `sub`, `req`, `reply` processes against
//! them. Every process a test starts is killed when the test ends, pass or
//! fail.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn sub_and_pub_over_tcp_and_unix_with_either_backend() {
    for backend in ["uring", "epoll"] {
        let node = start_node(&["--io-backend", backend], &[]);
        let expected = if backend == "uring" {
            "io_uring"
        } else {
            "epoll"
        };
        assert!(
            node.backend.starts_with(expected),
            "printed backend: {}",
            node.backend
        );
        let mut sub = start_sub(&node, &["orders.>", "--count", "2"]);
        let first = run(&["pub", "--server", &node.uds, "orders.eu.created", "hello"]);
        assert!(first.status.success(), "{}", text(&first.stderr));
        let second = run(&["pub", "--server", &node.tcp, "orders.us.created", "world"]);
        assert!(second.status.success(), "{}", text(&second.stderr));
        let output = wait_output(&mut sub, Duration::from_secs(10));
        assert!(output.status.success(), "sub exits 0 after --count events");
        assert_eq!(
            text(&output.stdout),
            "orders.eu.created hello\norders.us.created world\n"
        );
    }
}

#[test]
fn pub_count_and_size_publish_that_many_and_print_the_rate() {
    let node = start_node(&[], &[]);
    let mut sub = start_sub(&node, &["bulk", "--count", "1000"]);
    let output = run(&[
        "pub", "--server", &node.tcp, "bulk", "--count", "1000", "--size", "64",
    ]);
    assert!(output.status.success());
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("published 1000 events of 64 bytes") && stdout.contains("events/s"),
        "{stdout}"
    );
    let received = wait_output(&mut sub, Duration::from_secs(10));
    assert!(received.status.success());
    let lines: Vec<String> = text(&received.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 1000);
    assert!(lines.iter().all(|l| l
        == &format!(
            "bulk {}",
            "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijkl"
        )));
}

#[test]
fn sub_timeout_fails_when_the_count_is_not_reached() {
    let node = start_node(&[], &[]);
    let started = Instant::now();
    let output = run(&[
        "sub",
        "--server",
        &node.tcp,
        "quiet",
        "--count",
        "1",
        "--timeout",
        "0.5",
    ]);
    assert!(!output.status.success(), "count not reached");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        text(&output.stderr).contains("received 0 of 1"),
        "{}",
        text(&output.stderr)
    );
    let output = run(&["sub", "--server", &node.tcp, "quiet", "--timeout", "0.3"]);
    assert!(
        output.status.success(),
        "no count: the timeout is a normal end"
    );
}

#[test]
fn invalid_subjects_are_refused_with_the_rule() {
    let node = start_node(&[], &[]);
    let output = run(&["pub", "--server", &node.tcp, "orders..eu", "x"]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("token 1 is empty"),
        "{}",
        text(&output.stderr)
    );
    let output = run(&["sub", "--server", &node.tcp, "orders.>.x", "--count", "1"]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("'>' may only be the last token"),
        "{}",
        text(&output.stderr)
    );
    let output = run(&["pub", "--server", "http://nowhere", "a", "b"]);
    assert!(
        text(&output.stderr).contains("use tcp://HOST:PORT, tls://HOST:PORT or unix:///path"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn req_gets_the_reply_and_says_when_nobody_answers() {
    let node = start_node(&[], &[]);
    let before = subscription_count(&node);
    let _reply = Process(
        starling(&["reply", "--server", &node.uds, "svc.echo"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscription_count(&node) < before + 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = run(&["req", "--server", &node.tcp, "svc.echo", "ping"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "ping\n");
    // The refusal is an answer: it comes well before the minute's timeout
    // (`run` gives up on the command after 20 s), however long a starved
    // machine takes to start the command.
    let started = Instant::now();
    let output = run(&[
        "req",
        "--server",
        &node.tcp,
        "nobody.home",
        "x",
        "--timeout",
        "60000",
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("no responders"),
        "{}",
        text(&output.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "at once, not after the timeout: {:?}",
        started.elapsed()
    );
}

#[test]
fn the_http_endpoint_reports_health_metrics_and_per_pattern_counters() {
    let node = start_node(&[], &[]);
    let (status, body) = get(&node.http, "/healthz");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "ok\n");
    let mut sub = start_sub(&node, &["metrics.>", "--count", "3"]);
    let output = run(&[
        "pub",
        "--server",
        &node.tcp,
        "metrics.a",
        "x",
        "--count",
        "3",
    ]);
    assert!(output.status.success());
    assert!(
        wait_output(&mut sub, Duration::from_secs(10))
            .status
            .success()
    );
    let (_, body) = get(&node.http, "/v1/node");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["name"], node.name.as_str());
    assert!(json["io_backend"].as_str().unwrap().contains("io_uring"));
    assert_eq!(json["tcp"], node.tcp.as_str());
    let (_, body) = get(&node.http, "/metrics");
    assert!(body.contains("starling_client_events_in_total 3"), "{body}");
    assert!(
        body.contains("starling_client_events_out_total 3"),
        "{body}"
    );
    // The subscriber has gone, so its pattern has no subscriptions now; a
    // live one shows up with its counters.
    let _live = start_sub(&node, &["live.*", "--timeout", "60"]);
    let output = run(&["pub", "--server", &node.uds, "live.x", "y", "--count", "2"]);
    assert!(output.status.success());
    let ok = |node: &Node| {
        let (_, body) = get(&node.http, "/v1/subscriptions");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["patterns"].as_array().unwrap().iter().any(|p| {
            p["pattern"] == "live.*"
                && p["delivered"] == 2
                && p["published"] == 2
                && p["dropped"] == 0
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok(&node) {
        assert!(
            Instant::now() < deadline,
            "live.* shows 2 published and delivered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, body) = get(&node.http, "/metrics");
    assert!(
        body.contains("starling_pattern_delivered_total{pattern=\"live.*\",queue_group=\"\"} 2"),
        "{body}"
    );
    let (_, body) = get(&node.http, "/v1/connections");
    let connections: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(connections.as_array().unwrap().iter().any(|c| {
        c["client_name"]
            .as_str()
            .unwrap()
            .starts_with("starling-sub")
    }));
}

#[test]
fn flags_beat_the_environment_which_beats_the_config_file() {
    let dir = temp_dir();
    let config = dir.join("node.toml");
    std::fs::write(&config, "name = \"from-file\"\n").unwrap();
    let config = config.to_string_lossy().into_owned();
    let node = start_node(&["--config", &config], &[]);
    assert_eq!(node.name, "from-file");
    drop(node);
    let node = start_node(&["--config", &config], &[("STARLING_NAME", "from-env")]);
    assert_eq!(node.name, "from-env");
    drop(node);
    let node = start_node(
        &["--config", &config, "--name", "from-flag"],
        &[("STARLING_NAME", "from-env")],
    );
    assert_eq!(node.name, "from-flag");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn io_threads_come_from_the_flag_or_the_environment_and_show_in_the_api() {
    let by_flag: (&[&str], &[(&str, &str)]) = (&["--io-threads", "3"], &[]);
    let by_environment: (&[&str], &[(&str, &str)]) = (&[], &[("STARLING_IO_THREADS", "3")]);
    for (flags, environment) in [by_flag, by_environment] {
        let node = start_node(flags, environment);
        let (_, body) = get(&node.http, "/v1/node");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["io_threads"], 3, "{flags:?} {environment:?}");
        // Each subscriber is registered before the next starts: one per thread.
        let _subs: Vec<Process> = (0..3)
            .map(|_| start_sub(&node, &["spread", "--timeout", "60"]))
            .collect();
        let (_, body) = get(&node.http, "/v1/connections");
        let connections: serde_json::Value = serde_json::from_str(&body).unwrap();
        let threads: Vec<u64> = connections
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["io_thread"].as_u64().unwrap())
            .collect();
        assert_eq!(threads, [0, 1, 2], "{flags:?} {environment:?}");
    }
}

#[test]
fn sigterm_drains_and_stops_cleanly() {
    let mut node = start_node(&[], &[]);
    let socket = node.uds.trim_start_matches("unix://").to_owned();
    assert!(std::path::Path::new(&socket).exists());
    // SAFETY-free: `kill` is a command here, not a libc call.
    let status = Command::new("kill")
        .args(["-TERM", &node.process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = node.process.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the node stops in time");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
    assert!(
        !std::path::Path::new(&socket).exists(),
        "the socket file is removed"
    );
    node.tcp.clear();
}

#[test]
fn a_node_with_nothing_to_listen_on_is_refused() {
    let output = run(&["node", "--listen", "", "--http", ""]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("nothing to listen on"),
        "{}",
        text(&output.stderr)
    );
}
