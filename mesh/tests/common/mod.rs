//! Running real `starling` processes in tests: nodes on free loopback ports,
//! client commands, and the node's HTTP endpoint. Every process is killed
//! when its handle drops, pass or fail.

#![allow(dead_code)] // Each test binary uses its own part of this.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use starling_core::subject::pattern_matches;
use starling_transport::client::{Client, ClientOptions, ClientSubscription};

pub const BINARY: &str = env!("CARGO_BIN_EXE_starling");

/// How long a test waits for a node to start, a subscription to register,
/// interest to spread or a mesh to form before it fails: the wait ends as
/// soon as that happens, and CI runs these on 2 cores beside other builds,
/// where nodes, their links and membership may take many seconds.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A child process, killed on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `starling node` and what it printed about itself.
pub struct Node {
    /// The network namespace it runs in, if not this process's.
    pub netns: Option<String>,
    pub process: Process,
    /// `tcp://HOST:PORT`, or `tls://HOST:PORT` if the port speaks TLS.
    pub tcp: String,
    pub uds: String,
    pub http: String,
    /// `nats://HOST:PORT`, where NATS clients connect.
    pub nats: String,
    pub backend: String,
    pub name: String,
    /// The cluster port's address, if the node is in a mesh.
    pub cluster: String,
    pub dir: PathBuf,
    /// The lines it wrote to stderr so far (its log), which also go on to
    /// this process's stderr.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn temp_dir() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("starling-cli-{:016x}", starling_core::random_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn start_node(extra: &[&str], env: &[(&str, &str)]) -> Node {
    start_node_in(None, extra, env)
}

/// A `starling` command, run inside network namespace `netns` if given.
pub fn starling_command(netns: Option<&str>) -> Command {
    match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, BINARY]);
            command
        }
        None => Command::new(BINARY),
    }
}

/// Starts a node inside network namespace `netns` if given (`ip netns exec`
/// execs the node, so the process handle is the node's own).
pub fn start_node_in(netns: Option<&str>, extra: &[&str], env: &[(&str, &str)]) -> Node {
    start_node_by(starling_command(netns), netns, extra, env)
}

/// Starts a node that may open at most `descriptors` files (`prlimit`
/// execs the node, so the process handle is the node's own).
pub fn start_node_with_descriptors(descriptors: u64, extra: &[&str]) -> Node {
    let mut command = Command::new("prlimit");
    command.arg(format!("--nofile={descriptors}:{descriptors}"));
    command.arg(BINARY);
    start_node_by(command, None, extra, &[])
}

/// Starts a node with `command`, a `starling` command line so far.
fn start_node_by(
    mut command: Command,
    netns: Option<&str>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Node {
    let dir = temp_dir();
    let uds = dir.join("node.sock");
    command
        .arg("node")
        // A free loopback port, unless the test chose where.
        .args(
            (!extra.contains(&"--listen"))
                .then_some(["--listen", "127.0.0.1:0"])
                .into_iter()
                .flatten(),
        )
        .args(["--http", "127.0.0.1:0", "--uds"])
        .arg(&uds)
        .args(extra)
        // A free port rather than NATS's 4222, unless the test chose one.
        .args(
            (!extra.contains(&"--nats-listen"))
                .then_some(["--nats-listen", "127.0.0.1:0"])
                .into_iter()
                .flatten(),
        )
        .env_remove("STARLING_NAME")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("starling node starts");
    let stdout = child.stdout.take().unwrap();
    let log = record_log(child.stderr.take().unwrap());
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
        netns: netns.map(str::to_owned),
        process,
        tcp: String::new(),
        uds: String::new(),
        http: String::new(),
        nats: String::new(),
        backend: String::new(),
        name: String::new(),
        cluster: String::new(),
        dir,
        log,
    };
    let deadline = Instant::now() + PATIENCE;
    while node.backend.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .expect("the node prints its addresses and backend");
        if let Some(rest) = line.strip_prefix("starling node ") {
            node.name = rest.trim_end_matches(" is up").to_owned();
        } else if let Some(url) = line.strip_prefix("local tcp://") {
            node.tcp = format!("tcp://{url}");
        } else if let Some(url) = line.strip_prefix("local tls://") {
            node.tcp = format!("tls://{url}");
        } else if let Some(url) = line.strip_prefix("local unix://") {
            node.uds = format!("unix://{url}");
        } else if let Some(url) = line.strip_prefix("http http://") {
            node.http = url.to_owned();
        } else if let Some(url) = line.strip_prefix("nats ") {
            node.nats = url.to_owned();
        } else if let Some(rest) = line.strip_prefix("cluster quic://") {
            node.cluster = rest.split(' ').next().unwrap_or_default().to_owned();
        } else if let Some(backend) = line.strip_prefix("io backend ") {
            node.backend = backend.to_owned();
        }
    }
    node
}

/// Keeps the lines of `stderr` as they come, passing each on to this
/// process's stderr (written directly: the test harness would swallow
/// `eprintln!`'s), so that a failed test still shows every node's log.
fn record_log(stderr: ChildStderr) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(std::io::stderr(), "{line}");
            lines.lock().unwrap().push(line);
        }
    });
    log
}

/// The lines of `node`'s log that hold all of `words`.
pub fn log_lines(node: &Node, words: &[&str]) -> Vec<String> {
    node.log
        .lock()
        .unwrap()
        .iter()
        .filter(|line| words.iter().all(|word| line.contains(word)))
        .cloned()
        .collect()
}

/// A node in this process, in a mesh on a free loopback port (no local
/// server, no HTTP), joining through `seeds`, queueing at most
/// `peer_queue_events` for each peer.
pub fn start_embedded_node(
    name: &str,
    seeds: Vec<String>,
    peer_queue_events: usize,
) -> starling_mesh::Node {
    starling_mesh::Node::start(starling_mesh::NodeConfig {
        name: name.into(),
        listen: None,
        http: None,
        cluster: Some(starling_mesh::cluster::ClusterConfig {
            node_name: name.into(),
            listen: "127.0.0.1:0".into(),
            seeds,
            peer_queue_events,
            tls: starling_mesh::cluster::tls::TlsSource::InsecureDev,
            ..Default::default()
        }),
        ..starling_mesh::NodeConfig::default()
    })
    .unwrap()
}

pub fn starling(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(args).env("RUST_LOG", "warn");
    command
}

pub fn run(args: &[&str]) -> Output {
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
pub fn wait_output(child: &mut Process, timeout: Duration) -> Output {
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

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A plain HTTP/1.0 GET; returns status line and body.
pub fn get(address: &str, path: &str) -> (String, String) {
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
pub fn start_sub(node: &Node, args: &[&str]) -> Process {
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
    let deadline = Instant::now() + PATIENCE;
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

pub fn subscription_count(node: &Node) -> usize {
    let (_, body) = get(&node.http, "/v1/node");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["subscriptions"].as_u64().unwrap() as usize
}

/// `starling passwd`, as an operator runs it: the password on stdin.
pub fn passwd(password: &str) -> String {
    let mut child = Process(
        starling(&["passwd"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    writeln!(stdin, "{password}").unwrap();
    drop(stdin);
    let output = wait_output(&mut child, Duration::from_secs(10));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let hash = text(&output.stdout).trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    hash
}

/// A `HELLO` frame of the Starling protocol, as a client sends it first,
/// with these credentials (empty strings for none).
pub fn hello_frame(user: &str, password: &str, token: &str) -> Vec<u8> {
    use starling_transport::frame::control::Hello;
    use starling_transport::frame::{Header, Kind, padded};
    let mut hello = Hello::ours("raw", token);
    hello.user = user.into();
    hello.password = password.into();
    let body = hello.encode();
    let mut frame = Header::new(Kind::Hello, 0, body.len()).encode().to_vec();
    frame.extend_from_slice(&body);
    frame.resize(frame.len() + padded(body.len()) - body.len(), 0);
    frame
}

/// The frames of the Starling protocol in `bytes`: (kind, tag, body).
pub fn frames_in(bytes: &[u8]) -> Vec<(starling_transport::frame::Kind, u64, Vec<u8>)> {
    let mut decoder = starling_transport::frame::Decoder::new(1 << 20);
    let mut frames = Vec::new();
    let _ = decoder.feed(bytes, |frame| {
        frames.push((frame.header.kind, frame.header.tag, frame.body.to_vec()));
        Ok::<(), ()>(())
    });
    frames
}

/// Polls `done` every 10 ms until it holds; fails the test with `what` after
/// `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a node named `name` in a mesh on a free loopback QUIC port (or on
/// `cluster_listen`, to restart a node where it was), joining through `seed`.
pub fn start_mesh_node(name: &str, seed: Option<&str>, cluster_listen: Option<&str>) -> Node {
    start_mesh_node_in(None, name, seed, cluster_listen.unwrap_or("127.0.0.1:0"))
}

/// Starts a mesh node inside network namespace `netns` if given.
pub fn start_mesh_node_in(
    netns: Option<&str>,
    name: &str,
    seed: Option<&str>,
    cluster_listen: &str,
) -> Node {
    let mut args = vec![
        "--name",
        name,
        "--cluster-listen",
        cluster_listen,
        "--insecure-dev-tls",
    ];
    if let Some(seed) = seed {
        args.extend(["--seed", seed]);
    }
    let node = start_node_in(netns, &args, &[]);
    assert!(
        !node.cluster.is_empty(),
        "node {name} printed its cluster address"
    );
    node
}

/// `GET path` from the node's HTTP endpoint, from inside its network
/// namespace if it has one (with bash's `/dev/tcp`, which every test machine
/// has).
pub fn get_from(node: &Node, path: &str) -> (String, String) {
    let Some(netns) = &node.netns else {
        return get(&node.http, path);
    };
    let (host, port) = node.http.rsplit_once(':').unwrap();
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let output = Command::new("ip")
        .args(["netns", "exec", netns, "bash", "-c", &script])
        .output()
        .unwrap();
    let response = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// `GET path` as JSON.
pub fn get_json(node: &Node, path: &str) -> serde_json::Value {
    let (status, body) = get_from(node, path);
    assert!(status.contains("200"), "{path}: {status} {body}");
    serde_json::from_str(&body).unwrap()
}

/// The names of the peers this node has a link up with.
pub fn peers_up(node: &Node) -> Vec<String> {
    let links = get_json(node, "/v1/links");
    let mut names: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|link| link["state"] == "up")
        .map(|link| link["peer_name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// The (pattern, queue group) entries `peer` has on `node`, as `node` knows them.
pub fn interest_of(node: &Node, peer: &str) -> Vec<(String, Option<String>)> {
    let interest = get_json(node, "/v1/interest");
    let Some(entries) = interest["interest"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|known| known["peer_name"] == peer)
    else {
        return Vec::new();
    };
    entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["pattern"].as_str().unwrap().to_owned(),
                entry["queue_group"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Waits until every node in `nodes` knows `peer`'s interest in `pattern`
/// (with `group`), or, with `present` false, no longer knows it.
pub fn wait_interest(
    nodes: &[&Node],
    peer: &str,
    pattern: &str,
    group: Option<&str>,
    present: bool,
) {
    for node in nodes.iter().filter(|node| node.name != peer) {
        wait_until(
            &format!(
                "{} to {} {peer}'s interest in {pattern}",
                node.name,
                if present { "learn" } else { "forget" }
            ),
            PATIENCE,
            || {
                let known = interest_of(node, peer).iter().any(|(known, known_group)| {
                    known == pattern && known_group.as_deref() == group
                });
                known == present
            },
        );
    }
}

/// Sum of one counter over a node's links.
pub fn link_total(node: &Node, counter: &str) -> u64 {
    get_json(node, "/v1/links")
        .as_array()
        .unwrap()
        .iter()
        .map(|link| link[counter].as_u64().unwrap())
        .sum()
}

/// Waits until every node has a link up with every other, and its
/// membership holds every other alive.
pub fn wait_full_mesh(nodes: &[&Node]) {
    for node in nodes {
        let mut others: Vec<String> = nodes
            .iter()
            .filter(|other| other.name != node.name)
            .map(|other| other.name.clone())
            .collect();
        others.sort();
        wait_until(
            &format!("{} to link with {others:?}", node.name),
            PATIENCE,
            || {
                let alive: Vec<String> = members_of(node)
                    .into_iter()
                    .filter(|member| member.state == "alive")
                    .map(|member| member.name)
                    .collect();
                peers_up(node) == others && others.iter().all(|other| alive.contains(other))
            },
        );
    }
}

/// One member as a node's `/v1/members` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberReport {
    pub id: String,
    pub name: String,
    pub state: String,
    pub incarnation: u64,
    pub linked: bool,
}

/// The members `node` reports, itself excluded, sorted by name.
pub fn members_of(node: &Node) -> Vec<MemberReport> {
    let members = get_json(node, "/v1/members");
    let mut reports: Vec<MemberReport> = members
        .as_array()
        .unwrap()
        .iter()
        .filter(|member| member["self"] == false)
        .map(|member| MemberReport {
            id: member["id"].as_str().unwrap().to_owned(),
            name: member["name"].as_str().unwrap().to_owned(),
            state: member["state"].as_str().unwrap().to_owned(),
            incarnation: member["incarnation"].as_u64().unwrap(),
            linked: member["linked"].as_bool().unwrap(),
        })
        .collect();
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    reports
}

/// The state `node` reports for the member named `name`, if it knows one.
pub fn state_of(node: &Node, name: &str) -> Option<String> {
    members_of(node)
        .into_iter()
        .find(|member| member.name == name)
        .map(|member| member.state)
}

/// Waits until every node in `observers` reports the member named `name` in
/// `state`; returns how long that took.
pub fn wait_member_state(
    observers: &[&Node],
    name: &str,
    state: &str,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    for node in observers {
        while state_of(node, name).as_deref() != Some(state) {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {} to report {name} {state}; it reports {:?}",
                node.name,
                members_of(node)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    start.elapsed()
}

/// The payload of an end marker (see [`assert_nothing_more`]).
pub const END: &[u8] = b"end";

/// Asserts that each of `subscriptions` gets nothing more of what the
/// publishers in `ends` published on their subjects, without waiting out a
/// quiet spell (a slow machine would pass that by luck): each publishes an
/// end marker on its subject. One publisher's events on one subject keep
/// their order to every subscriber, across links too (a link carries a
/// subject on one data stream), so anything more still due arrives before
/// the marker. Each subscription (with its pattern) must next receive
/// exactly the markers its pattern matches, and nothing else.
pub fn assert_nothing_more(
    subscriptions: &[(&ClientSubscription, &str)],
    ends: &[(&Client, &str)],
) {
    for (client, subject) in ends {
        client.publish(subject, END).unwrap();
        client.flush().unwrap();
    }
    for (subscription, pattern) in subscriptions {
        let markers = ends
            .iter()
            .filter(|(_, subject)| pattern_matches(pattern, subject))
            .count();
        assert!(markers > 0, "{pattern} matches a marker");
        for _ in 0..markers {
            let event = subscription.recv_timeout(PATIENCE).expect("an end marker");
            assert_eq!(
                event.payload(),
                END,
                "{pattern}: nothing arrives before the end markers, but {} did",
                event.subject()
            );
        }
    }
}

/// Skips the test `name` for `reason`, or fails it if `STARLING_REQUIRE` (a
/// comma-separated list of test names, set by CI) says it must run here.
/// The line goes to the process's stderr itself: the test harness swallows
/// what a passing test prints with `eprintln!`, and a skip must not read as
/// a pass.
pub fn skip(name: &str, reason: &str) {
    let required = std::env::var("STARLING_REQUIRE")
        .is_ok_and(|names| names.split(',').any(|required| required.trim() == name));
    assert!(
        !required,
        "STARLING_REQUIRE says {name} must run here, but it cannot: {reason}"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED: {name}: {reason}");
}

/// CPU time process `pid`'s threads have used, to the nanosecond (the
/// scheduler's own accounting: `/proc/PID/stat` counts 10 ms ticks).
pub fn cpu_time(pid: u32) -> Duration {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let nanos = threads
        .map(|thread| {
            let schedstat = std::fs::read_to_string(thread.unwrap().path().join("schedstat"))
                .expect("/proc/PID/task/TID/schedstat (CONFIG_SCHED_INFO)");
            schedstat
                .split_whitespace()
                .next()
                .and_then(|on_cpu| on_cpu.parse::<u64>().ok())
                .expect("time on CPU, in nanoseconds")
        })
        .sum();
    Duration::from_nanos(nanos)
}

/// Waits until the node counts `count` open client connections.
pub fn await_connections(node: &Node, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = get(&node.http, "/v1/node");
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        if view["connections"] == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node counts {count} connections: {view}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// VmRSS of a process, from /proc.
pub fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmRSS in /proc/PID/status")
        * 1024
}

/// VmRSS of a node's process.
pub fn resident_bytes_of(node: &Node) -> u64 {
    resident_bytes(node.process.0.id())
}

/// Starling client options with credentials (any may be empty), without
/// reconnecting: a refusal ends the client, for the test to see.
pub fn options(user: &str, password: &str, token: &str) -> ClientOptions {
    ClientOptions {
        user: user.into(),
        password: password.into(),
        token: token.into(),
        reconnect: false,
        ..ClientOptions::default()
    }
}

/// `options` with the `-ERR`s the node sends its NATS client handed to the
/// returned receiver.
pub fn with_server_errors(
    options: async_nats::ConnectOptions,
) -> (
    async_nats::ConnectOptions,
    tokio::sync::mpsc::UnboundedReceiver<async_nats::ServerError>,
) {
    let (errors_tx, errors) = tokio::sync::mpsc::unbounded_channel();
    let options = options.event_callback(move |event| {
        let errors = errors_tx.clone();
        async move {
            if let async_nats::Event::ServerError(error) = event {
                let _ = errors.send(error);
            }
        }
    });
    (options, errors)
}
