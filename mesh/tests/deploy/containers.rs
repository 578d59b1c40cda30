//! The image as users run it: deploy/compose's 3-node mTLS cluster on a
//! private network, nodes finding each other by service name. Each test
//! brings up a Compose project of its own (a unique name: its own network,
//! certificate volume and containers) and takes it all down when it ends,
//! pass or fail. The test talks to the nodes' HTTP endpoints at their
//! addresses on that network (the host reaches a bridge network), and runs
//! clients inside the containers with `docker exec`.
//!
//! Needs Docker with Compose (v2 `docker compose` or v1 `docker-compose`)
//! and the image (`scripts/image`; `STARLING_IMAGE`, default starling:dev).
//!
//! A little over 800 lines, on purpose: the Compose project (`Cluster`), the
//! in-container clients and the four scenarios that drive them are one
//! concept, the cluster as users run it; split, the scenarios' private
//! helpers would only become a public surface between two files.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use starling_transport::client::Client;

use super::common::{Process, skip, wait_until};
use super::repo;

/// The name `STARLING_REQUIRE` knows these tests by.
const TEST: &str = "containers";

/// Membership declares a silent member dead within ~5-8 probe periods of
/// 1 s (README); the bound leaves room for a loaded machine.
const DEAD_WITHIN: Duration = Duration::from_secs(20);
/// A node back, or a partition healed: links redial with backoff up to 2 s,
/// membership refutes within a few probes, interest follows the links.
const RECOVERED_WITHIN: Duration = Duration::from_secs(30);
/// The compose file's stop_grace_period.
const GRACE: Duration = Duration::from_secs(30);

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn image() -> String {
    std::env::var("STARLING_IMAGE").unwrap_or_else(|_| "starling:dev".into())
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The Compose command here: v2's `docker compose` or v1's `docker-compose`.
fn compose_command() -> Option<Vec<&'static str>> {
    if succeeds("docker", &["compose", "version"]) {
        Some(vec!["docker", "compose"])
    } else if succeeds("docker-compose", &["version"]) {
        Some(vec!["docker-compose"])
    } else {
        None
    }
}

/// Runs `docker args`; fails the test with what it said if it fails.
fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A member as one node's `/v1/members` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    name: String,
    state: String,
    linked: bool,
}

/// One Compose project of deploy/compose/docker-compose.yml.
struct Cluster {
    project: String,
    compose: Vec<&'static str>,
    /// Container ids by service, in `NODES` order (they survive kill, stop
    /// and start).
    ids: Vec<String>,
    /// Containers started on the network besides the project's.
    others: Vec<String>,
}

impl Cluster {
    /// Brings the cluster up, or returns `None` after saying why it cannot
    /// here. With `staggered`, node-a starts alone first and must say that
    /// its seeds do not resolve yet, then the others start.
    fn up(staggered: bool) -> Option<Cluster> {
        if !succeeds("docker", &["version"]) {
            skip(TEST, "no Docker Engine answers `docker version`");
            return None;
        }
        let Some(compose) = compose_command() else {
            skip(
                TEST,
                "neither `docker compose` nor `docker-compose` is installed",
            );
            return None;
        };
        if !succeeds("docker", &["image", "inspect", &image()]) {
            skip(
                TEST,
                &format!("no image {}: build it with scripts/image", image()),
            );
            return None;
        }
        let mut cluster = Cluster {
            project: format!("starlingtest{:012x}", starling_core::random_u64() >> 16),
            compose,
            ids: Vec::new(),
            others: Vec::new(),
        };
        let started = Instant::now();
        if staggered {
            cluster.compose(&["up", "-d", "node-a"]);
            let id = cluster.compose(&["ps", "-q", "node-a"]);
            wait_until(
                "node-a to log that its seed node-b does not resolve yet",
                RECOVERED_WITHIN,
                || {
                    let logs = container_logs(&id);
                    logs.lines()
                        .any(|line| line.contains("cannot resolve") && line.contains("node-b:7401"))
                },
            );
        }
        cluster.compose(&["up", "-d"]);
        cluster.ids = NODES
            .iter()
            .map(|node| cluster.compose(&["ps", "-q", node]))
            .collect();
        cluster.wait_formed();
        println!(
            "{}: formed in {:.1} s",
            cluster.project,
            started.elapsed().as_secs_f64()
        );
        Some(cluster)
    }

    /// Runs Compose on the project; fails the test if Compose fails.
    fn compose(&self, args: &[&str]) -> String {
        let file = repo().join("deploy/compose/docker-compose.yml");
        let mut command = Command::new(self.compose[0]);
        command
            .args(&self.compose[1..])
            .arg("--file")
            .arg(&file)
            .args(["--project-name", &self.project])
            .args(args)
            .env("STARLING_IMAGE", image())
            .env("STARLING_PUBLISH", "127.0.0.1")
            .env("RUST_LOG", "info");
        // Ports on the host chosen by Docker: tests may run side by side.
        for port in [
            "NODE_A_CLIENT",
            "NODE_A_HTTP",
            "NODE_B_CLIENT",
            "NODE_B_HTTP",
            "NODE_C_CLIENT",
            "NODE_C_HTTP",
        ] {
            command.env(port, "");
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "compose {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn id(&self, node: &str) -> &str {
        let index = NODES.iter().position(|n| *n == node).unwrap();
        &self.ids[index]
    }

    /// The node's address on the cluster's network, if it is on it.
    fn ip(&self, node: &str) -> Option<String> {
        let ip = docker(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            self.id(node),
        ]);
        (!ip.is_empty()).then_some(ip)
    }

    /// `GET path` from the node's HTTP endpoint, as JSON; `None` if the
    /// node cannot be reached.
    fn get(&self, node: &str, path: &str) -> Option<Value> {
        let address = format!("{}:7402", self.ip(node)?);
        let mut stream =
            TcpStream::connect_timeout(&address.parse().ok()?, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        use std::io::Write;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?;
        (status == "200")
            .then(|| serde_json::from_str(body).ok())
            .flatten()
    }

    /// The members `node` reports, itself excluded.
    fn members(&self, node: &str) -> Option<Vec<Member>> {
        let members = self.get(node, "/v1/members")?;
        Some(
            members
                .as_array()?
                .iter()
                .filter(|member| member["self"] == false)
                .map(|member| Member {
                    name: member["name"].as_str().unwrap_or_default().to_owned(),
                    state: member["state"].as_str().unwrap_or_default().to_owned(),
                    linked: member["linked"] == true,
                })
                .collect(),
        )
    }

    fn state_of(&self, observer: &str, node: &str) -> Option<String> {
        self.members(observer)?
            .into_iter()
            .find(|member| member.name == node)
            .map(|member| member.state)
    }

    /// Waits until every node in `observers` reports `node` in `state`;
    /// returns how long that took.
    fn wait_state(
        &self,
        observers: &[&str],
        node: &str,
        state: &str,
        within: Duration,
    ) -> Duration {
        let start = Instant::now();
        for observer in observers {
            wait_until(
                &format!("{observer} to report {node} {state}"),
                within,
                || self.state_of(observer, node).as_deref() == Some(state),
            );
        }
        start.elapsed()
    }

    /// Waits until each of `nodes` holds every other node of `nodes` alive
    /// with a link up.
    fn wait_linked(&self, nodes: &[&str], within: Duration) -> Duration {
        let start = Instant::now();
        for node in nodes {
            wait_until(
                &format!("{node} to hold {nodes:?} alive and linked"),
                within,
                || {
                    self.members(node).is_some_and(|members| {
                        nodes.iter().filter(|other| *other != node).all(|other| {
                            members
                                .iter()
                                .any(|m| m.name == *other && m.state == "alive" && m.linked)
                        })
                    })
                },
            );
        }
        start.elapsed()
    }

    /// The whole cluster is up: healthy by the image's health check, and
    /// meshed.
    fn wait_formed(&self) {
        for node in NODES {
            wait_until(
                &format!("{node}'s health check to pass"),
                RECOVERED_WITHIN,
                || {
                    docker(&[
                        "inspect",
                        "--format",
                        "{{.State.Health.Status}}",
                        self.id(node),
                    ]) == "healthy"
                },
            );
        }
        self.wait_linked(&NODES, RECOVERED_WITHIN);
    }

    /// Whether `publisher` holds `subscriber`'s interest in `pattern`.
    fn has_interest(&self, publisher: &str, subscriber: &str, pattern: &str) -> bool {
        self.get(publisher, "/v1/interest").is_some_and(|interest| {
            interest["interest"]["peers"]
                .as_array()
                .is_some_and(|peers| {
                    peers.iter().any(|peer| {
                        peer["peer_name"] == subscriber
                            && peer["entries"].as_array().is_some_and(|entries| {
                                entries.iter().any(|entry| entry["pattern"] == pattern)
                            })
                    })
                })
        })
    }

    /// `starling sub PATTERN` inside `node`'s container, for `count`
    /// events; returns once the node holds the subscription.
    fn subscribe(&self, node: &str, pattern: &str, count: u64) -> Subscriber {
        let before = self.subscriptions(node);
        let subscriber = self.subscriber(node, pattern, count);
        // Its inbox and its subscription.
        wait_until(&format!("a subscriber on {node}"), RECOVERED_WITHIN, || {
            self.subscriptions(node) >= before + 2
        });
        subscriber
    }

    /// Like [`Cluster::subscribe`], without waiting (for a node out of
    /// reach).
    fn subscriber(&self, node: &str, pattern: &str, count: u64) -> Subscriber {
        let count = count.to_string();
        let mut child = Command::new("docker")
            .args([
                "exec",
                self.id(node),
                "starling",
                "sub",
                pattern,
                "--count",
                &count,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        Subscriber {
            _process: Process(child),
            lines,
        }
    }

    fn subscriptions(&self, node: &str) -> u64 {
        self.get(node, "/v1/node")
            .and_then(|node| node["subscriptions"].as_u64())
            .unwrap_or(0)
    }

    /// Publishes `count` events on `subject` through `node`, from inside its
    /// container.
    fn publish(&self, node: &str, subject: &str, count: u64) {
        let count = count.to_string();
        docker(&[
            "exec",
            self.id(node),
            "starling",
            "pub",
            subject,
            "x",
            "--count",
            &count,
        ]);
    }

    /// `publisher` delivers to a new subscriber on `subscriber`: subscribes,
    /// waits for the interest to reach `publisher`, publishes 100 events and
    /// receives exactly them.
    fn assert_delivers(&self, publisher: &str, subscriber: &str, subject: &str) {
        let pattern = format!("{subject}.>");
        let sub = self.subscribe(subscriber, &pattern, 100);
        wait_until(
            &format!("{publisher} to learn {subscriber}'s interest in {pattern}"),
            RECOVERED_WITHIN,
            || self.has_interest(publisher, subscriber, &pattern),
        );
        self.publish(publisher, &format!("{subject}.x"), 100);
        sub.expect(100, &format!("{subject}.x x"));
    }

    /// Starts an idle container on the network (a node serving nobody,
    /// with no mesh), which takes the lowest free address.
    fn occupy_an_address(&mut self) {
        let network = format!("{}_mesh", self.project);
        let id = docker(&["run", "--detach", "--network", &network, &image(), "node"]);
        self.others.push(id);
    }

    fn logs(&self, node: &str) -> String {
        container_logs(self.id(node))
    }
}

fn container_logs(id: &str) -> String {
    let output = Command::new("docker").args(["logs", id]).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in NODES {
                if let Some(id) = self.ids.get(NODES.iter().position(|n| *n == node).unwrap()) {
                    let logs = container_logs(id);
                    let tail: Vec<&str> = logs.lines().rev().take(30).collect();
                    eprintln!("--- {node} (last lines) ---");
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        for id in &self.others {
            let _ = Command::new("docker")
                .args(["rm", "--force", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // Not `compose()`: a failure here must not panic during a panic.
        let file = repo().join("deploy/compose/docker-compose.yml");
        let _ = Command::new(self.compose[0])
            .args(&self.compose[1..])
            .arg("--file")
            .arg(&file)
            .args(["--project-name", &self.project])
            .args(["down", "--volumes", "--remove-orphans", "--timeout", "1"])
            .env("STARLING_IMAGE", image())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A `starling sub` inside a container, its lines on a channel.
struct Subscriber {
    _process: Process,
    lines: Receiver<String>,
}

impl Subscriber {
    /// Receives exactly `count` lines, each `line`.
    fn expect(&self, count: usize, line: &str) {
        for received in 0..count {
            let got = self
                .lines
                .recv_timeout(RECOVERED_WITHIN)
                .unwrap_or_else(|_| panic!("received {received} of {count} events in time"));
            assert_eq!(got, line);
        }
    }

    /// The next line, if one comes within `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }
}

/// Names, not addresses: node-a starts alone, its seeds not resolving, and
/// meshes when the others come. A subscriber in node-c gets what node-a
/// publishes; node-b killed is declared dead and the others go on; started
/// again (maybe at a new address) it is alive, linked and served.
#[test]
fn a_cluster_found_by_name_delivers_and_outlives_a_killed_node() {
    let Some(mut cluster) = Cluster::up(true) else {
        return;
    };
    cluster.assert_delivers("node-a", "node-c", "orders");

    let before = cluster.ip("node-b");
    docker(&["kill", cluster.id("node-b")]);
    let dead = cluster.wait_state(&["node-a", "node-c"], "node-b", "dead", DEAD_WITHIN);
    println!(
        "node-b killed: dead to node-a and node-c after {:.1} s",
        dead.as_secs_f64()
    );
    cluster.assert_delivers("node-a", "node-c", "while-b-is-dead");

    // Off the network and back while stopped, its old address taken by
    // another container meanwhile: it comes back at a new address, where
    // its peers must find it by name.
    let network = format!("{}_mesh", cluster.project);
    docker(&["network", "disconnect", &network, cluster.id("node-b")]);
    cluster.occupy_an_address();
    docker(&[
        "network",
        "connect",
        "--alias",
        "node-b",
        &network,
        cluster.id("node-b"),
    ]);
    let restarted = Instant::now();
    docker(&["start", cluster.id("node-b")]);
    let after = cluster.ip("node-b");
    assert_ne!(before, after, "node-b is back at a new address");
    cluster.wait_linked(&NODES, RECOVERED_WITHIN);
    println!(
        "node-b started again ({:?} before, {:?} now): alive and linked everywhere after {:.1} s",
        before,
        after,
        restarted.elapsed().as_secs_f64()
    );
    cluster.assert_delivers("node-a", "node-b", "after-restart");
    cluster.assert_delivers("node-b", "node-c", "from-b");
}

/// `docker stop` sends SIGTERM: the node drains, leaves (its peers report
/// it `left`, not `dead`) and exits 0 within the grace period.
#[test]
fn a_stopped_node_leaves_the_mesh_and_exits_zero() {
    let Some(cluster) = Cluster::up(false) else {
        return;
    };
    let grace = GRACE.as_secs().to_string();
    let stopping = Instant::now();
    docker(&["stop", "--time", &grace, cluster.id("node-c")]);
    let stopped = stopping.elapsed();
    let code = docker(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        cluster.id("node-c"),
    ]);
    assert_eq!(
        code, "0",
        "node-c exits 0 (137 would be SIGKILL after the grace period)"
    );
    assert!(stopped < GRACE, "stopped in {stopped:?}");
    assert!(
        cluster
            .logs("node-c")
            .contains("stopping: draining connections")
    );
    let left = cluster.wait_state(&["node-a", "node-b"], "node-c", "left", DEAD_WITHIN);
    println!(
        "node-c stopped in {:.2} s; left to node-a and node-b after {:.2} s",
        stopped.as_secs_f64(),
        left.as_secs_f64()
    );
    cluster.assert_delivers("node-a", "node-b", "after-leave");
}

/// node-c cut off the network: each side serves locally and the majority
/// declares node-c dead; reconnected, membership, interest and delivery
/// recover within `RECOVERED_WITHIN`.
#[test]
fn a_partition_heals() {
    let Some(cluster) = Cluster::up(false) else {
        return;
    };
    let network = format!("{}_mesh", cluster.project);
    // Held across the partition: its interest must be back at node-a after.
    let long_lived = cluster.subscribe("node-c", "healed.>", 10);

    docker(&["network", "disconnect", &network, cluster.id("node-c")]);
    let cut = cluster.wait_state(&["node-a", "node-b"], "node-c", "dead", DEAD_WITHIN);
    println!(
        "partitioned: node-c dead to node-a and node-b after {:.1} s",
        cut.as_secs_f64()
    );
    // The majority serves across its link.
    cluster.assert_delivers("node-a", "node-b", "majority");
    // node-c serves its own clients: publish until its subscriber has one
    // (a subscription's registration cannot be read over HTTP from here).
    let local = cluster.subscriber("node-c", "island.>", 1);
    let deadline = Instant::now() + RECOVERED_WITHIN;
    loop {
        cluster.publish("node-c", "island.x", 1);
        if let Some(line) = local.next(Duration::from_millis(200)) {
            assert_eq!(line, "island.x x");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-c served its own subscriber"
        );
    }

    let healing = Instant::now();
    // The service name is an alias on the network, given back with it.
    docker(&[
        "network",
        "connect",
        "--alias",
        "node-c",
        &network,
        cluster.id("node-c"),
    ]);
    cluster.wait_linked(&NODES, RECOVERED_WITHIN);
    let linked = healing.elapsed();
    wait_until(
        "node-a to hold node-c's interest again",
        RECOVERED_WITHIN,
        || cluster.has_interest("node-a", "node-c", "healed.>"),
    );
    cluster.publish("node-a", "healed.x", 10);
    long_lived.expect(10, "healed.x x");
    println!(
        "healed: all alive and linked after {:.1} s, interest and delivery after {:.1} s",
        linked.as_secs_f64(),
        healing.elapsed().as_secs_f64()
    );
    assert!(healing.elapsed() < RECOVERED_WITHIN);
}

/// Events per second of the rolling restart's steady load.
const RATE: u64 = 5_000;

/// A publisher on one node at a fixed rate, a subscriber on another, each
/// event numbered in its payload.
struct Load {
    stop: Arc<AtomicBool>,
    /// Events published (sent to the client library), and numbered so far.
    published: Arc<AtomicU64>,
    /// Events the client library refused (its buffer full while it
    /// reconnected).
    refused: Arc<AtomicU64>,
    /// How many times each number has been received.
    received: Arc<Mutex<Vec<u8>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(publisher: Client, subscriber: Client) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let received: Arc<Mutex<Vec<u8>>> = Arc::default();
        let subscription = subscriber.subscribe("load.>").unwrap();
        let receiving = {
            let (stop, received) = (stop.clone(), received.clone());
            std::thread::spawn(move || {
                let _client = subscriber;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(event) = subscription.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    let number = u64::from_le_bytes(event.payload()[..8].try_into().unwrap());
                    let mut received = received.lock().unwrap();
                    let at = number as usize;
                    if received.len() <= at {
                        received.resize(at + 1, 0);
                    }
                    received[at] = received[at].saturating_add(1);
                }
            })
        };
        let publishing = {
            let (stop, published, refused) = (stop.clone(), published.clone(), refused.clone());
            std::thread::spawn(move || {
                // Open loop: each event has its time; a slow publish does
                // not slow the schedule down.
                let start = Instant::now();
                let mut number = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = start + Duration::from_micros(number * 1_000_000 / RATE);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    if publisher.publish("load.x", &number.to_le_bytes()).is_err() {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    number += 1;
                    published.store(number, Ordering::Relaxed);
                }
            })
        };
        Load {
            stop,
            published,
            refused,
            received,
            threads: vec![receiving, publishing],
        }
    }

    fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Waits until an event numbered `number` or later has arrived: per
    /// publisher order holds along a path, so whatever of the events before
    /// it was still to come has come.
    fn wait_past(&self, number: u64) {
        wait_until(
            &format!("event {number} to arrive"),
            RECOVERED_WITHIN,
            || self.received.lock().unwrap().len() as u64 > number,
        );
    }

    /// Of the events numbered `from..to`: how many never arrived, and how
    /// many arrived more than once.
    fn lost_and_duplicated(&self, from: u64, to: u64) -> (u64, u64) {
        let received = self.received.lock().unwrap();
        (from..to).fold((0, 0), |(lost, duplicated), number| {
            match received.get(number as usize).copied().unwrap_or(0) {
                0 => (lost + 1, duplicated),
                1 => (lost, duplicated),
                _ => (lost, duplicated + 1),
            }
        })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
    }
}

/// Each node restarted in turn (`docker restart`: SIGTERM, then start)
/// under 5,000 events/s published through node-a to a subscriber on node-b.
/// Restarting node-c, which neither client uses, loses nothing; what the
/// restarts of node-b and node-a lose is reported, and once all are back
/// nothing is lost.
#[test]
fn a_rolling_restart_under_load() {
    let Some(cluster) = Cluster::up(false) else {
        return;
    };
    let client = |node: &str| {
        let url = format!("tcp://{}:7400", cluster.ip(node).unwrap());
        Client::connect(&url).unwrap()
    };
    let load = Load::start(client("node-a"), client("node-b"));
    wait_until(
        "node-a to learn node-b's interest in load.>",
        RECOVERED_WITHIN,
        || cluster.has_interest("node-a", "node-b", "load.>"),
    );
    let grace = GRACE.as_secs().to_string();
    let mut from = load.published();
    for (node, why) in [
        ("node-c", "neither client's node"),
        (
            "node-b",
            "the subscriber's node: while it is down, nothing is subscribed",
        ),
        (
            "node-a",
            "the publisher's node: the client buffers while it reconnects",
        ),
    ] {
        let restarting = Instant::now();
        docker(&["restart", "--time", &grace, cluster.id(node)]);
        cluster.wait_linked(&NODES, RECOVERED_WITHIN);
        wait_until(
            "node-a to hold node-b's interest in load.>",
            RECOVERED_WITHIN,
            || cluster.has_interest("node-a", "node-b", "load.>"),
        );
        let to = load.published();
        load.wait_past(to);
        let (lost, duplicated) = load.lost_and_duplicated(from, to);
        println!(
            "restarted {node} ({why}): back in {:.1} s; of {} events published meanwhile, \
             {lost} lost, {duplicated} duplicated; {} refused by the publisher's client so far",
            restarting.elapsed().as_secs_f64(),
            to - from,
            load.refused.load(Ordering::Relaxed)
        );
        assert_eq!(duplicated, 0, "at most once: no duplicates");
        if node == "node-c" {
            assert_eq!(
                lost, 0,
                "restarting a node neither client uses loses nothing"
            );
        }
        from = to;
    }
    // All back: a stretch of steady load loses nothing.
    let settled = load.published();
    load.wait_past(settled + RATE);
    let (lost, duplicated) = load.lost_and_duplicated(settled, settled + RATE);
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "after the restarts, a second of load"
    );
    load.stop();
}
