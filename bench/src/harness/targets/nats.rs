//! The NATS baselines: `nats-server`s started for each run (one, or a
//! cluster of two or three), driven with async-nats, one connection per
//! endpoint, on one multi-threaded tokio runtime that the harness's threads
//! enter to publish and receive.
//!
//! Every server listens on ports the OS picks (`-1`) and writes them to a
//! ports file in its scratch directory once it is ready. A cluster's servers
//! route to the first one and find each other from it; the cluster is ready
//! once every server has a route to every other (`/routez`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::{ConnectOptions, Subject, Subscriber};
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::runtime::Handle;

use super::process::{Scratch, ServerProcess};
use super::{
    Endpoint, Inbound, OnEvent, OnReply, RECEIVE_BATCH, REQUEST_TIMEOUT, Role, System, monitor,
};
use crate::harness::error::{Context, Error, Result};
use crate::harness::measurement::ProcessUsage;

/// Messages a subscription may have waiting in the client before async-nats
/// drops them (its default, 65,536, drops under a flat-out publisher).
const SUBSCRIPTION_CAPACITY: usize = 1 << 20;

/// Commands (publishes) the client may have waiting for its connection task.
const CLIENT_CAPACITY: usize = 65_536;

/// The cluster's name, so that servers do not spend time agreeing on one.
const CLUSTER_NAME: &str = "starling-bench";

/// Running `nats-server`s: one, or a cluster.
#[derive(Debug)]
pub struct Cluster {
    servers: Vec<Server>,
    runtime: Handle,
}

/// One running server and where it listens.
#[derive(Debug)]
struct Server {
    process: ServerProcess,
    client_url: String,
    /// In a cluster, where other servers route to it.
    route_url: Option<String>,
    /// The monitoring endpoint's `HOST:PORT`.
    monitoring: String,
    /// Its server id, as its peers' routes name it.
    id: String,
}

/// A server's ports file.
#[derive(Debug, Deserialize)]
struct Ports {
    /// Client URLs.
    nats: Vec<String>,
    /// Monitoring URLs.
    monitoring: Vec<String>,
    /// Route URLs, in a cluster.
    #[serde(default)]
    cluster: Vec<String>,
}

/// `/routez?subs=detail`, the part the harness reads.
#[derive(Debug, Deserialize)]
struct Routez {
    server_id: String,
    routes: Vec<Route>,
}

#[derive(Debug, Deserialize)]
struct Route {
    remote_id: String,
    /// The remote server's subscriptions, as this server knows them.
    #[serde(default)]
    subscriptions_list_detail: Vec<RoutedSubscription>,
}

#[derive(Debug, Deserialize)]
struct RoutedSubscription {
    subject: String,
    #[serde(default)]
    qgroup: Option<String>,
}

impl RoutedSubscription {
    /// Its queue group: none when the field is absent or empty.
    fn queue_group(&self) -> Option<&str> {
        self.qgroup.as_deref().filter(|group| !group.is_empty())
    }
}

impl Cluster {
    /// Starts `count` servers of `binary` and waits until they listen and,
    /// in a cluster, are routed to each other.
    pub fn start(binary: &Path, count: usize, runtime: Handle) -> Result<Self> {
        let mut servers: Vec<Server> = Vec::with_capacity(count);
        for index in 0..count {
            let join = servers.first().and_then(|first| first.route_url.clone());
            servers.push(Server::start(binary, index, (count > 1).then_some(join))?);
        }
        let mut cluster = Self { servers, runtime };
        if count > 1 {
            cluster.await_routes()?;
        }
        Ok(cluster)
    }

    /// Waits until each server has a route to every other.
    fn await_routes(&mut self) -> Result<()> {
        let ids: Vec<String> = self
            .servers
            .iter()
            .map(|server| server.id.clone())
            .collect();
        for server in &mut self.servers {
            let (monitoring, own) = (&server.monitoring, &server.id);
            server
                .process
                .await_ready("route to every other server", || {
                    let routez: Routez = monitor::get(monitoring, "/routez")?;
                    let routed = |id: &String| routez.routes.iter().any(|r| &r.remote_id == id);
                    Ok(ids.iter().filter(|&id| id != own).all(routed).then_some(()))
                })?;
        }
        Ok(())
    }
}

impl Server {
    /// Starts server `index`. `routes`: `None` outside a cluster; in one, the
    /// route URL of the server to join (`None` for the first).
    fn start(binary: &Path, index: usize, routes: Option<Option<String>>) -> Result<Self> {
        let scratch = Scratch::create()?;
        let ports_dir = scratch.path().to_owned();
        let mut command = Command::new(binary);
        command
            .args(["-a", "127.0.0.1", "-p", "-1", "-m", "-1"])
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null());
        let in_cluster = routes.is_some();
        if let Some(routes) = routes {
            command.args([
                "--cluster",
                "nats://127.0.0.1:-1",
                "--cluster_name",
                CLUSTER_NAME,
            ]);
            command.args(routes.iter().flat_map(|url| ["--routes", url]));
        }
        let mut process = ServerProcess::spawn(format!("nats-server {index}"), command, scratch)?;
        let ports = process.await_ready("write its ports file", || read_ports(&ports_dir))?;
        let first = |urls: Vec<String>, kind: &str| {
            urls.into_iter()
                .next()
                .ok_or_else(|| process.failure(format!("wrote no {kind} URL in its ports file")))
        };
        let client_url = first(ports.nats, "client")?;
        let monitoring = first(ports.monitoring, "monitoring")?
            .trim_start_matches("http://")
            .to_owned();
        let route_url = if in_cluster {
            Some(first(ports.cluster, "route")?)
        } else {
            None
        };
        let id = process.await_ready("answer on its monitoring port", || {
            let routez: Routez = monitor::get(&monitoring, "/routez")?;
            Ok(Some(routez.server_id))
        })?;
        Ok(Self {
            process,
            client_url,
            route_url,
            monitoring,
            id,
        })
    }
}

/// The ports file nats-server writes into `dir` once it is ready (named
/// after its executable and process id); `None` until it is complete.
fn read_ports(dir: &Path) -> Result<Option<Ports>> {
    let entries = std::fs::read_dir(dir).context(format!("reading {}", dir.display()))?;
    let file: Option<PathBuf> = entries
        .filter_map(|entry| Some(entry.ok()?.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "ports"));
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&file).context(format!("reading {}", file.display()))?;
    // Half written, it does not parse yet.
    Ok(serde_json::from_str(&text).ok())
}

/// An async-nats connection to the NATS server at `url` (nats-server, or a
/// starling node's NATS listener), as an endpoint.
pub(super) fn connect(runtime: &Handle, url: &str) -> Result<Box<dyn Endpoint>> {
    let connecting = ConnectOptions::new()
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .client_capacity(CLIENT_CAPACITY)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .connect(url);
    let client = runtime
        .block_on(connecting)
        .context(format!("connecting to the NATS server at {url}"))?;
    Ok(Box::new(NatsEndpoint {
        client,
        runtime: runtime.clone(),
        subject: None,
    }))
}

impl System for Cluster {
    fn open(&self, role: Role) -> Result<Box<dyn Endpoint>> {
        let url = &self.servers[role.server(self.servers.len())].client_url;
        connect(&self.runtime, url)
    }

    fn await_interest(
        &mut self,
        subject: &str,
        group: Option<&str>,
        subscribers: usize,
    ) -> Result<()> {
        let count = self.servers.len();
        if count < 2 {
            return Ok(());
        }
        let awaited: Vec<String> = (0..subscribers)
            .map(|n| self.servers[Role::Subscriber(n).server(count)].id.clone())
            .collect();
        let publisher = &mut self.servers[Role::Publisher.server(count)];
        let monitoring = &publisher.monitoring;
        publisher.process.await_ready(
            &format!("learn every subscriber's interest in {subject}"),
            || {
                let routez: Routez = monitor::get(monitoring, "/routez?subs=detail")?;
                let knows = |id: &String| {
                    routez.routes.iter().any(|route| {
                        &route.remote_id == id
                            && route
                                .subscriptions_list_detail
                                .iter()
                                .any(|sub| sub.subject == subject && sub.queue_group() == group)
                    })
                };
                Ok(awaited.iter().all(knows).then_some(()))
            },
        )
    }

    fn dropped_between_servers(&self, _: usize, _: bool) -> Result<Option<u64>> {
        // Routes report no losses: one server has no links to lose on, a
        // cluster's losses go uncounted.
        Ok((self.servers.len() == 1).then_some(0))
    }

    fn server_usage(&self) -> Result<Vec<ProcessUsage>> {
        self.servers
            .iter()
            .map(|server| server.process.usage())
            .collect()
    }

    fn io_backend(&self) -> Option<&str> {
        None
    }

    fn stop(self: Box<Self>) -> Result<()> {
        super::process::stop_all(
            self.servers
                .into_iter()
                .map(|server| server.process)
                .collect(),
        )
    }
}

struct NatsEndpoint {
    client: async_nats::Client,
    runtime: Handle,
    /// The last subject used: a hot loop reuses it instead of copying the
    /// string into a new `Subject` per event.
    subject: Option<Subject>,
}

impl NatsEndpoint {
    fn subject(&mut self, subject: &str) -> Subject {
        match &self.subject {
            Some(last) if last.as_str() == subject => last.clone(),
            _ => self.subject.insert(Subject::from(subject)).clone(),
        }
    }
}

impl Endpoint for NatsEndpoint {
    fn subscribe(&mut self, subject: &str, group: Option<&str>) -> Result<Box<dyn Inbound>> {
        let subject = subject.to_owned();
        let subscriber = self
            .runtime
            .block_on(async {
                match group {
                    Some(group) => self.client.queue_subscribe(subject, group.to_owned()).await,
                    None => self.client.subscribe(subject).await,
                }
            })
            .context("subscribing on nats-server")?;
        Ok(Box::new(NatsInbound {
            subscriber: Some(subscriber),
            runtime: self.runtime.clone(),
            batch: Vec::with_capacity(RECEIVE_BATCH),
        }))
    }

    fn publish(&mut self, subject: &str, payload: &[u8]) -> Result<()> {
        let subject = self.subject(subject);
        // async-nats takes the payload as owned `Bytes`: one copy per event.
        self.runtime
            .block_on(self.client.publish(subject, payload.to_vec().into()))
            .context("publishing to nats-server")
    }

    fn publish_each(
        &mut self,
        subject: &str,
        payload: &mut [u8],
        next: &mut dyn FnMut(&mut [u8]) -> bool,
    ) -> Result<()> {
        let subject = self.subject(subject);
        let client = &self.client;
        // One `block_on` for the whole loop, as an async publisher runs: a
        // publish that finds room in the client's queue does not suspend.
        self.runtime
            .block_on(async {
                while next(payload) {
                    client
                        .publish(subject.clone(), payload.to_vec().into())
                        .await?;
                }
                Ok::<_, async_nats::PublishError>(())
            })
            .context("publishing to nats-server")
    }

    fn flush(&mut self) -> Result<()> {
        // async-nats' flush returns once its buffer is written to the
        // socket, not once the server has read it: the connection must stay
        // open until it has (see `scenarios::run_stream`).
        self.runtime
            .block_on(self.client.flush())
            .context("flushing to nats-server")
    }

    fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        on_reply: &mut OnReply<'_>,
    ) -> Result<bool> {
        let subject = self.subject(subject);
        let asked = self
            .runtime
            .block_on(self.client.request(subject, payload.to_vec().into()));
        match asked {
            Ok(reply) => on_reply(&reply.payload).map(|()| true),
            Err(error) if error.kind() == async_nats::RequestErrorKind::TimedOut => Ok(false),
            Err(error) => Err(Error::new(format!("requesting from nats-server: {error}"))),
        }
    }
}

struct NatsInbound {
    /// Always present; taken out only to be dropped inside the runtime.
    subscriber: Option<Subscriber>,
    runtime: Handle,
    batch: Vec<async_nats::Message>,
}

impl Inbound for NatsInbound {
    fn receive(&mut self, wait: Duration, on_event: &mut OnEvent<'_>) -> Result<usize> {
        let subscriber = self.subscriber.as_mut().expect("present until dropped");
        let batch = &mut self.batch;
        let open = self.runtime.block_on(async {
            match tokio::time::timeout(wait, subscriber.next()).await {
                Err(_elapsed) => return true,
                Ok(None) => return false,
                Ok(Some(message)) => batch.push(message),
            }
            while batch.len() < RECEIVE_BATCH {
                match subscriber.next().now_or_never() {
                    Some(Some(message)) => batch.push(message),
                    _ => break,
                }
            }
            true
        });
        if !open {
            return Err(Error::new("the nats subscription was closed"));
        }
        let taken = batch.len();
        for message in batch.drain(..) {
            on_event(&message.payload, message.reply.as_deref())?;
        }
        Ok(taken)
    }

    fn dropped(&self) -> Option<u64> {
        // async-nats reports its drops only as slow-consumer events on a
        // bounded channel that itself drops: there is no exact count.
        None
    }
}

impl Drop for NatsInbound {
    fn drop(&mut self) {
        // A subscriber unsubscribes from its `Drop` with `tokio::spawn`,
        // which panics outside the runtime.
        let _runtime = self.runtime.enter();
        drop(self.subscriber.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ports_file_is_read_once_it_is_whole() {
        let scratch = Scratch::create().unwrap();
        assert!(read_ports(scratch.path()).unwrap().is_none(), "no file yet");
        let file = scratch.path().join("nats-server_42.ports");
        let text = r#"{"nats":["nats://127.0.0.1:41261"],"monitoring":["http://127.0.0.1:36341"],"cluster":["nats://127.0.0.1:45867"]}"#;
        std::fs::write(&file, &text[..40]).unwrap();
        assert!(
            read_ports(scratch.path()).unwrap().is_none(),
            "half written"
        );
        std::fs::write(&file, text).unwrap();
        let ports = read_ports(scratch.path()).unwrap().expect("whole");
        assert_eq!(ports.nats, ["nats://127.0.0.1:41261"]);
        assert_eq!(ports.monitoring, ["http://127.0.0.1:36341"]);
        assert_eq!(ports.cluster, ["nats://127.0.0.1:45867"]);
    }
}
