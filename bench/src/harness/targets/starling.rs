//! Starling through nodes: `starling node` processes started for each run
//! (one for the local targets, two or three meshed over QUIC for `mesh-N`),
//! driven with the blocking client library (`starling_transport::client`),
//! one client connection per endpoint.
//!
//! Every node listens on port 0 and says where it listens on its standard
//! output, ending with its `io backend` line. A mesh joins through the first
//! node's cluster port with `--insecure-dev-tls` (encrypted, nobody
//! authenticated: no certificates to make), and is ready once every node
//! has an `up` link to every other (`/v1/links`).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use starling_transport::client::{Client, ClientError, ClientOptions, ClientSubscription};

use super::process::{START_TIMEOUT, Scratch, ServerProcess};
use super::{
    Endpoint, Inbound, OnEvent, OnReply, REQUEST_TIMEOUT, Role, System, Target,
    deliveries_per_link_event, monitor, receive_from_mailbox,
};
use crate::harness::error::{Context, Error, Result};
use crate::harness::measurement::ProcessUsage;

/// Running `starling node`s: one, or a full mesh.
#[derive(Debug)]
pub struct Mesh {
    nodes: Vec<Node>,
    /// Clients connect over the Unix socket rather than TCP.
    over_unix_socket: bool,
    /// Clients send small events as `PACKED_PUB` records.
    pack_small_events: bool,
}

/// One running node and what it said about itself.
#[derive(Debug)]
pub struct Node {
    process: ServerProcess,
    tcp: String,
    unix: String,
    http: String,
    /// Its NATS listener's URL.
    nats: Option<String>,
    /// In a mesh: the address of its cluster port and its node id (hex).
    cluster: Option<(String, String)>,
    io_backend: String,
}

/// One entry of `/v1/links`.
#[derive(Debug, Deserialize)]
struct Link {
    peer_id: String,
    state: String,
    /// Events for the peer dropped because its queue was full.
    dropped_out: u64,
    /// Events for an interest the peer had just withdrawn.
    unroutable_out: u64,
    /// Events from the peer dropped here.
    dropped_in: u64,
}

/// `/v1/interest`: what the node knows of each peer's interest.
#[derive(Debug, Deserialize)]
struct InterestReport {
    interest: Interest,
}

#[derive(Debug, Deserialize)]
struct Interest {
    peers: Vec<PeerInterest>,
}

#[derive(Debug, Deserialize)]
struct PeerInterest {
    peer_id: String,
    entries: Vec<InterestEntry>,
}

#[derive(Debug, Deserialize)]
struct InterestEntry {
    pattern: String,
    queue_group: Option<String>,
}

impl Mesh {
    /// Starts the nodes of `target` (a local or mesh target) and waits until
    /// they are up and, in a mesh, linked. Its clients pack small events if
    /// `pack_small_events`.
    pub fn start(binary: &Path, target: Target, pack_small_events: bool) -> Result<Self> {
        let io_backend = match target {
            Target::LocalTcpEpoll => "epoll",
            _ => "auto",
        };
        let in_mesh = target.servers() > 1;
        let mut nodes: Vec<Node> = Vec::with_capacity(target.servers());
        for index in 0..target.servers() {
            let seed = nodes.first().map(Node::cluster_id).transpose()?;
            let cluster = in_mesh.then(|| seed.map(|(address, _)| address.to_owned()));
            nodes.push(Node::start(binary, index, io_backend, cluster, &[])?);
        }
        let mut mesh = Self {
            nodes,
            over_unix_socket: target == Target::LocalUds,
            pack_small_events,
        };
        if in_mesh {
            mesh.await_links()?;
        }
        Ok(mesh)
    }

    /// The NATS listener's URL of the node `role` connects to.
    pub(super) fn nats_url(&self, role: Role) -> Result<&str> {
        let node = &self.nodes[role.server(self.nodes.len())];
        node.nats.as_deref().ok_or_else(|| {
            node.process
                .failure("did not say where its NATS listener is")
        })
    }

    /// Waits until each node has an `up` link to every other.
    fn await_links(&mut self) -> Result<()> {
        let ids = self
            .nodes
            .iter()
            .map(|node| Ok(node.cluster_id()?.1.to_owned()))
            .collect::<Result<Vec<String>>>()?;
        for (node, own) in self.nodes.iter_mut().zip(&ids) {
            let http = node.http.clone();
            node.process
                .await_ready("link up with every other node", || {
                    let links: Vec<Link> = monitor::get(&http, "/v1/links")?;
                    let up = |id: &String| {
                        links
                            .iter()
                            .any(|link| &link.peer_id == id && link.state == "up")
                    };
                    Ok(ids.iter().filter(|&id| id != own).all(up).then_some(()))
                })?;
        }
        Ok(())
    }
}

impl Node {
    /// Starts a node of its own, outside any target, on `io_backend` (as
    /// `--io-backend` takes it), with `extra` arguments (`--config FILE`):
    /// for measurements of the node itself (see `harness::connections`).
    pub fn start_alone(binary: &Path, io_backend: &str, extra: &[&OsStr]) -> Result<Self> {
        Self::start(binary, 0, io_backend, None, extra)
    }

    /// Its client port, `HOST:PORT`.
    pub fn tcp(&self) -> &str {
        &self.tcp
    }

    /// Its HTTP endpoint, `HOST:PORT`.
    pub fn http(&self) -> &str {
        &self.http
    }

    /// The I/O backend it said it runs.
    pub fn io_backend(&self) -> &str {
        &self.io_backend
    }

    /// Its CPU time and memory so far.
    pub fn usage(&self) -> Result<ProcessUsage> {
        self.process.usage()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops it (see [`ServerProcess::stop`]).
    pub fn stop(self) -> Result<()> {
        self.process.stop()
    }

    /// Starts node `index` (its name says which) and reads what it says.
    /// `cluster`: `None` outside a mesh; in one, the seed's cluster address
    /// (`None` for the first node).
    fn start(
        binary: &Path,
        index: usize,
        io_backend: &str,
        cluster: Option<Option<String>>,
        extra: &[&OsStr],
    ) -> Result<Self> {
        let scratch = Scratch::create()?;
        let mut command = Command::new(binary);
        command
            .args(["node", "--name", &format!("starling-bench-{index}")])
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            // Not NATS's 4222: the nodes of a mesh would share it.
            .args(["--nats-listen", "127.0.0.1:0"])
            .args(["--io-backend", io_backend])
            .arg("--uds")
            .arg(scratch.path().join("node.sock"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        if let Some(seed) = cluster {
            command.args(["--cluster-listen", "127.0.0.1:0", "--insecure-dev-tls"]);
            command.args(seed.iter().flat_map(|seed| ["--seed", seed]));
        }
        // The node runs on these flags alone, whatever STARLING_* variables
        // (a token, a config file) the caller's shell has.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("STARLING_") {
                command.env_remove(key);
            }
        }
        let mut process = ServerProcess::spawn(format!("starling node {index}"), command, scratch)?;
        let announced = read_announcement(&mut process)?;
        let missing = |what: &str| format!("did not say {what}");
        Ok(Self {
            tcp: announced
                .tcp
                .ok_or_else(|| process.failure(missing("its TCP address")))?,
            unix: announced
                .unix
                .ok_or_else(|| process.failure(missing("its socket path")))?,
            http: announced
                .http
                .ok_or_else(|| process.failure(missing("its HTTP address")))?,
            nats: announced.nats,
            cluster: announced.cluster,
            io_backend: announced.io_backend.unwrap_or_default(),
            process,
        })
    }

    /// Its cluster port's address and node id; an error outside a mesh.
    fn cluster_id(&self) -> Result<(&str, &str)> {
        self.cluster
            .as_ref()
            .map(|(address, id)| (address.as_str(), id.as_str()))
            .ok_or_else(|| {
                self.process
                    .failure("did not say where its cluster port is")
            })
    }
}

/// What a node printed when it was ready.
#[derive(Debug, Default, PartialEq)]
struct Announced {
    tcp: Option<String>,
    unix: Option<String>,
    http: Option<String>,
    nats: Option<String>,
    cluster: Option<(String, String)>,
    io_backend: Option<String>,
}

impl Announced {
    /// Takes note of one line of the node's output.
    fn read(&mut self, line: &str) {
        if let Some(address) = line.strip_prefix("local tcp://") {
            self.tcp = Some(address.to_owned());
        } else if let Some(path) = line.strip_prefix("local unix://") {
            self.unix = Some(path.to_owned());
        } else if let Some(address) = line.strip_prefix("http http://") {
            self.http = Some(address.to_owned());
        } else if let Some(url) = line.strip_prefix("nats ") {
            self.nats = Some(url.to_owned());
        } else if let Some(rest) = line.strip_prefix("cluster quic://") {
            // `cluster quic://ADDRESS node id HEX`
            if let Some((address, id)) = rest.split_once(" node id ") {
                self.cluster = Some((address.to_owned(), id.to_owned()));
            }
        } else if let Some(backend) = line.strip_prefix("io backend ") {
            self.io_backend = Some(backend.to_owned());
        }
    }
}

/// Reads the node's start-up lines until `io backend ...`, its last.
fn read_announcement(node: &mut ServerProcess) -> Result<Announced> {
    let stdout = node.take_stdout().expect("the node's stdout is piped");
    let (lines_tx, lines) = mpsc::channel();
    // Reads to the end, not just to the announcement: the node prints again
    // as it stops, and printing to a closed pipe would fail its clean exit.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let mut announced = Announced::default();
    while announced.io_backend.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => announced.read(&line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(node.failure(format!("did not say it was up within {START_TIMEOUT:?}")));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(node.failure("exited at start"));
            }
        }
    }
    Ok(announced)
}

impl System for Mesh {
    fn open(&self, role: Role) -> Result<Box<dyn Endpoint>> {
        let node = &self.nodes[role.server(self.nodes.len())];
        let url = if self.over_unix_socket {
            format!("unix://{}", node.unix)
        } else {
            format!("tcp://{}", node.tcp)
        };
        let options = ClientOptions {
            name: "starling-bench".into(),
            // A broken connection must fail the run, not be papered over.
            reconnect: false,
            pack_small_events: self.pack_small_events,
            ..ClientOptions::default()
        };
        let client = Client::connect_with(&url, options)
            .context(format!("connecting to the node at {url}"))?;
        Ok(Box::new(NodeEndpoint { client }))
    }

    fn await_interest(
        &mut self,
        subject: &str,
        group: Option<&str>,
        subscribers: usize,
    ) -> Result<()> {
        let count = self.nodes.len();
        if count < 2 {
            return Ok(());
        }
        let awaited = (0..subscribers)
            .map(|n| {
                Ok(self.nodes[Role::Subscriber(n).server(count)]
                    .cluster_id()?
                    .1
                    .to_owned())
            })
            .collect::<Result<Vec<String>>>()?;
        let publisher = &mut self.nodes[Role::Publisher.server(count)];
        let http = publisher.http.clone();
        publisher.process.await_ready(
            &format!("learn every subscriber's interest in {subject}"),
            || {
                let report: InterestReport = monitor::get(&http, "/v1/interest")?;
                let knows = |peer: &String| {
                    report.interest.peers.iter().any(|known| {
                        &known.peer_id == peer
                            && known.entries.iter().any(|entry| {
                                entry.pattern == subject && entry.queue_group.as_deref() == group
                            })
                    })
                };
                Ok(awaited.iter().all(knows).then_some(()))
            },
        )
    }

    fn dropped_between_servers(
        &self,
        subscribers: usize,
        queue_group: bool,
    ) -> Result<Option<u64>> {
        let mut events = 0;
        if self.nodes.len() > 1 {
            for node in &self.nodes {
                let links: Vec<Link> = monitor::get(&node.http, "/v1/links")?;
                events += links
                    .iter()
                    .map(|link| link.dropped_out + link.unroutable_out + link.dropped_in)
                    .sum::<u64>();
            }
        }
        let per_event = deliveries_per_link_event(subscribers, queue_group, self.nodes.len());
        Ok(Some(events * per_event))
    }

    fn server_usage(&self) -> Result<Vec<ProcessUsage>> {
        self.nodes.iter().map(|node| node.process.usage()).collect()
    }

    fn io_backend(&self) -> Option<&str> {
        self.nodes.first().map(|node| node.io_backend.as_str())
    }

    fn stop(self: Box<Self>) -> Result<()> {
        super::process::stop_all(self.nodes.into_iter().map(|node| node.process).collect())
    }
}

/// One client connection to a node.
struct NodeEndpoint {
    client: Client,
}

impl Drop for NodeEndpoint {
    fn drop(&mut self) {
        // Dropping the last handle does not end a client: its reader and
        // flusher threads hold it until it is closed.
        self.client.close();
    }
}

impl Endpoint for NodeEndpoint {
    fn subscribe(&mut self, subject: &str, group: Option<&str>) -> Result<Box<dyn Inbound>> {
        let subscription = match group {
            Some(group) => self.client.queue_subscribe(subject, group),
            None => self.client.subscribe(subject),
        }
        .context(format!("subscribing to {subject} on the node"))?;
        Ok(Box::new(NodeInbound {
            subscription,
            client: self.client.clone(),
        }))
    }

    fn publish(&mut self, subject: &str, payload: &[u8]) -> Result<()> {
        self.client
            .publish(subject, payload)
            .context("publishing to the node")
    }

    fn flush(&mut self) -> Result<()> {
        self.client.flush().context("flushing to the node")
    }

    fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        on_reply: &mut OnReply<'_>,
    ) -> Result<bool> {
        match self.client.request(subject, payload, REQUEST_TIMEOUT) {
            Ok(reply) => on_reply(&reply.payload).map(|()| true),
            Err(ClientError::Timeout) => Ok(false),
            Err(error) => Err(Error::new(format!("requesting from the node: {error}"))),
        }
    }
}

/// A subscription through a client, with the client for its drop count.
struct NodeInbound {
    subscription: ClientSubscription,
    client: Client,
}

impl Inbound for NodeInbound {
    fn receive(&mut self, wait: Duration, on_event: &mut OnEvent<'_>) -> Result<usize> {
        let taken = receive_from_mailbox(&self.subscription, wait, on_event)?;
        // A client whose connection broke keeps its subscriptions open and
        // empty: nothing else would end the wait.
        if taken == 0 && !self.client.is_connected() {
            return Err(Error::new("the connection to the node broke"));
        }
        Ok(taken)
    }

    fn dropped(&self) -> Option<u64> {
        // The client's own queue, and the node's queue for this connection
        // (which serves this one subscription).
        Some(self.subscription.dropped() + self.client.dropped_by_node())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_announcement_is_read_up_to_its_backend() {
        let mut announced = Announced::default();
        for line in [
            "starling node starling-bench-1 is up",
            "local tcp://127.0.0.1:41000",
            "local unix:///tmp/x/node.sock",
            "http http://127.0.0.1:41001",
            "nats nats://127.0.0.1:41003",
            "cluster quic://127.0.0.1:41002 node id 00c0ffee00c0ffee",
            "io backend epoll (--io-backend epoll)",
        ] {
            announced.read(line);
        }
        assert_eq!(
            announced,
            Announced {
                tcp: Some("127.0.0.1:41000".into()),
                unix: Some("/tmp/x/node.sock".into()),
                http: Some("127.0.0.1:41001".into()),
                nats: Some("nats://127.0.0.1:41003".into()),
                cluster: Some(("127.0.0.1:41002".into(), "00c0ffee00c0ffee".into())),
                io_backend: Some("epoll (--io-backend epoll)".into()),
            }
        );
    }
}
