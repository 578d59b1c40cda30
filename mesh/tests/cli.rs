//! The `starling` binary as a user runs it: real `starling node` processes on
//! free loopback ports, and `pub`, `sub`, `req`, `reply` processes against
//! them. Every process a test starts is killed when the test ends, pass or
//! fail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_starling");

/// A child process, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `starling node` and what it printed about itself.
struct Node {
    process: Process,
    tcp: String,
    uds: String,
    http: String,
    backend: String,
    name: String,
    dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("starling-cli-{:016x}", starling_core::random_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start_node(extra: &[&str], env: &[(&str, &str)]) -> Node {
    let dir = temp_dir();
    let uds = dir.join("node.sock");
    let mut command = Command::new(BINARY);
    command
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--uds",
        ])
        .arg(&uds)
        .args(extra)
        .env_remove("STARLING_NAME")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("starling node starts");
    let stdout = child.stdout.take().unwrap();
    let process = Process(child);
    // Read the start-up lines on a thread, so that a node that prints nothing
    // fails the test instead of hanging it.
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut node = Node {
        process,
        tcp: String::new(),
        uds: String::new(),
        http: String::new(),
        backend: String::new(),
        name: String::new(),
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.backend.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .expect("the node prints its addresses and backend");
        if let Some(rest) = line.strip_prefix("starling node ") {
            node.name = rest.trim_end_matches(" is up").to_owned();
        } else if let Some(url) = line.strip_prefix("local tcp://") {
            node.tcp = format!("tcp://{url}");
        } else if let Some(url) = line.strip_prefix("local unix://") {
            node.uds = format!("unix://{url}");
        } else if let Some(url) = line.strip_prefix("http http://") {
            node.http = url.to_owned();
        } else if let Some(backend) = line.strip_prefix("io backend ") {
            node.backend = backend.to_owned();
        }
    }
    node
}

fn starling(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(args).env("RUST_LOG", "warn");
    command
}

fn run(args: &[&str]) -> Output {
    let mut child = Process(
        starling(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_output(&mut child, Duration::from_secs(20))
}

/// Waits for the process to exit, reading its output meanwhile (a full pipe
/// would otherwise block it).
fn wait_output(child: &mut Process, timeout: Duration) -> Output {
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.0.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.0.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return Output {
                status,
                stdout: stdout.join().unwrap(),
                stderr: stderr.join().unwrap(),
            };
        }
        assert!(
            Instant::now() < deadline,
            "the process did not finish in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A plain HTTP/1.0 GET; returns status line and body.
fn get(address: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// Starts `starling sub` and waits until the node has its subscription.
fn start_sub(node: &Node, args: &[&str]) -> Process {
    let before = subscription_count(node);
    let mut full = vec!["sub", "--server", &node.tcp];
    full.extend_from_slice(args);
    let child = Process(
        starling(&full)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    // Its inbox and its subscription.
    while subscription_count(node) < before + 2 {
        assert!(
            Instant::now() < deadline,
            "the subscriber registered in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn subscription_count(node: &Node) -> usize {
    let (_, body) = get(&node.http, "/v1/node");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["subscriptions"].as_u64().unwrap() as usize
}

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
        text(&output.stderr).contains("use tcp://HOST:PORT or unix:///path"),
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
    let started = Instant::now();
    let output = run(&[
        "req",
        "--server",
        &node.tcp,
        "nobody.home",
        "x",
        "--timeout",
        "5000",
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("no responders"),
        "{}",
        text(&output.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "at once, not after the timeout"
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
