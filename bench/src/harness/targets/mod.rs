//! The systems under test: how each one is started and stopped, and how the
//! scenarios drive it.
//!
//! Every target is a [`System`] that hands out [`Endpoint`]s, one per
//! application in a scenario (a publisher, a subscriber, a requester, a
//! responder): a handle on the in-process bus ([`bus`]), a client connection
//! to a `starling node` the harness started ([`starling`]), or an async-nats
//! connection to a `nats-server` it started ([`nats`]). Endpoints are driven
//! from plain threads; each server target gets fresh servers per run, so that
//! their CPU time and peak memory belong to that run alone.
//!
//! In a cluster (`mesh-N`, `nats-cluster-N`) publishers connect to the first
//! server and subscribers to the others, so that every event crosses a link
//! between servers ([`Role::server`]).

pub mod bus;
pub mod monitor;
pub mod nats;
pub mod nats_port;
pub mod process;
pub mod starling;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;
use starling_core::{Mailbox, RecvError};

use super::error::{Context, Error, Result};
use super::measurement::ProcessUsage;

/// How long a request waits for its reply before it counts as lost.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Most events a receive hands over at once: enough to amortize the wait,
/// few enough that the caller checks for the end of the run often.
const RECEIVE_BATCH: usize = 64;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Starling's in-process bus: no server, no sockets.
    Bus,
    /// A starling node (io backend auto), clients over TCP.
    LocalTcp,
    /// A starling node (io backend auto), clients over its Unix socket.
    LocalUds,
    /// A starling node on the epoll backend, clients over TCP.
    LocalTcpEpoll,
    /// Two starling nodes meshed over QUIC; clients over TCP.
    #[value(name = "mesh-2")]
    #[serde(rename = "mesh-2")]
    Mesh2,
    /// Three starling nodes meshed over QUIC; clients over TCP.
    #[value(name = "mesh-3")]
    #[serde(rename = "mesh-3")]
    Mesh3,
    /// A starling node's NATS listener, driven with async-nats (the `nats`
    /// target's client).
    #[value(name = "nats-port")]
    #[serde(rename = "nats-port")]
    NatsPort,
    /// Two starling nodes meshed over QUIC; clients over their NATS
    /// listeners, with async-nats.
    #[value(name = "mesh-2-nats-port")]
    #[serde(rename = "mesh-2-nats-port")]
    Mesh2NatsPort,
    /// nats-server, driven with async-nats.
    Nats,
    /// Two nats-servers in a cluster.
    #[value(name = "nats-cluster-2")]
    #[serde(rename = "nats-cluster-2")]
    NatsCluster2,
    /// Three nats-servers in a cluster.
    #[value(name = "nats-cluster-3")]
    #[serde(rename = "nats-cluster-3")]
    NatsCluster3,
}

impl Target {
    /// Every target.
    pub const ALL: &'static [Target] = &[
        Target::Bus,
        Target::LocalTcp,
        Target::LocalUds,
        Target::LocalTcpEpoll,
        Target::Mesh2,
        Target::Mesh3,
        Target::NatsPort,
        Target::Mesh2NatsPort,
        Target::Nats,
        Target::NatsCluster2,
        Target::NatsCluster3,
    ];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Bus => "bus",
            Target::LocalTcp => "local-tcp",
            Target::LocalUds => "local-uds",
            Target::LocalTcpEpoll => "local-tcp-epoll",
            Target::Mesh2 => "mesh-2",
            Target::Mesh3 => "mesh-3",
            Target::NatsPort => "nats-port",
            Target::Mesh2NatsPort => "mesh-2-nats-port",
            Target::Nats => "nats",
            Target::NatsCluster2 => "nats-cluster-2",
            Target::NatsCluster3 => "nats-cluster-3",
        }
    }

    /// Starling's targets, as opposed to the NATS baselines.
    pub fn is_starling(self) -> bool {
        !matches!(
            self,
            Target::Nats | Target::NatsCluster2 | Target::NatsCluster3
        )
    }

    /// The NATS target a networked Starling target is compared with: the
    /// same number of servers, reached the same way. `None` for the NATS
    /// targets themselves, and for the bus: an in-process call against a
    /// server over sockets says nothing about either (the bus's baseline,
    /// crossbeam channels, is in the criterion benches).
    pub fn nats_counterpart(self) -> Option<Target> {
        match self {
            Target::LocalTcp | Target::LocalUds | Target::LocalTcpEpoll | Target::NatsPort => {
                Some(Target::Nats)
            }
            Target::Mesh2 | Target::Mesh2NatsPort => Some(Target::NatsCluster2),
            Target::Mesh3 => Some(Target::NatsCluster3),
            Target::Bus | Target::Nats | Target::NatsCluster2 | Target::NatsCluster3 => None,
        }
    }

    /// How many server processes the target runs (whose CPU and memory are
    /// measured).
    pub fn servers(self) -> usize {
        match self {
            Target::Bus => 0,
            Target::LocalTcp
            | Target::LocalUds
            | Target::LocalTcpEpoll
            | Target::NatsPort
            | Target::Nats => 1,
            Target::Mesh2 | Target::Mesh2NatsPort | Target::NatsCluster2 => 2,
            Target::Mesh3 | Target::NatsCluster3 => 3,
        }
    }

    fn needs_starling_node(self) -> bool {
        self.is_starling() && self.servers() > 0
    }

    fn needs_nats_server(self) -> bool {
        !self.is_starling()
    }

    /// Clients speak NATS (async-nats): the NATS baselines, and Starling's
    /// NATS listener.
    fn speaks_nats(self) -> bool {
        self.needs_nats_server() || matches!(self, Target::NatsPort | Target::Mesh2NatsPort)
    }
}

/// Which application an endpoint is for, which decides the server of a
/// cluster it connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A publisher or a requester.
    Publisher,
    /// Subscriber (or responder) number `n` of its run.
    Subscriber(usize),
}

impl Role {
    /// The server this role connects to among `servers`: publishers to the
    /// first, subscribers to the others in turn (all to the only one, when
    /// there is one).
    pub fn server(self, servers: usize) -> usize {
        match self {
            Role::Subscriber(n) if servers > 1 => 1 + n % (servers - 1),
            _ => 0,
        }
    }
}

/// Deliveries lost with each event a link between servers drops, if each
/// event goes to `subscribers` subscribers (to one of them, in a queue
/// group) placed by [`Role::server`] over `servers` servers: one link
/// carries an event to the subscribers on one server.
fn deliveries_per_link_event(subscribers: usize, queue_group: bool, servers: usize) -> u64 {
    let subscriber_servers = subscribers.min(servers.saturating_sub(1)).max(1);
    if queue_group {
        1
    } else {
        subscribers.div_ceil(subscriber_servers) as u64
    }
}

/// Called with each event received: its payload and reply subject.
pub type OnEvent<'a> = dyn FnMut(&[u8], Option<&str>) -> Result<()> + 'a;

/// Called with a reply's payload.
pub type OnReply<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;

/// A running system under test.
pub trait System {
    /// A new endpoint: one application's connection (or bus handle).
    fn open(&self, role: Role) -> Result<Box<dyn Endpoint>>;

    /// Returns once a publisher's server routes `subject` (in queue group
    /// `group`) to the servers of subscribers `0..subscribers`, whose
    /// subscriptions are in effect on their own servers. At once on a
    /// single server.
    fn await_interest(
        &mut self,
        subject: &str,
        group: Option<&str>,
        subscribers: usize,
    ) -> Result<()>;

    /// Deliveries lost between servers, as the servers counted them, if
    /// each event goes to `subscribers` subscribers (to one of them, in a
    /// queue group); `Some(0)` with no links between servers, `None` where
    /// the servers do not count such losses.
    fn dropped_between_servers(&self, subscribers: usize, queue_group: bool)
    -> Result<Option<u64>>;

    /// The figures of each server process so far; empty without a server.
    fn server_usage(&self) -> Result<Vec<ProcessUsage>>;

    /// The I/O backend the servers say they run, if they say.
    fn io_backend(&self) -> Option<&str>;

    /// Stops the system; fails if a server does not stop cleanly.
    fn stop(self: Box<Self>) -> Result<()>;
}

/// One application's handle on a system.
pub trait Endpoint: Send {
    /// Subscribes to `subject`, in queue group `group` if given.
    fn subscribe(&mut self, subject: &str, group: Option<&str>) -> Result<Box<dyn Inbound>>;

    /// Publishes an event.
    fn publish(&mut self, subject: &str, payload: &[u8]) -> Result<()>;

    /// Publishes `payload` for as long as `next` fills it in (and returns
    /// true): a publisher's loop, which a client may run its own way.
    fn publish_each(
        &mut self,
        subject: &str,
        payload: &mut [u8],
        next: &mut dyn FnMut(&mut [u8]) -> bool,
    ) -> Result<()> {
        while next(payload) {
            self.publish(subject, payload)?;
        }
        Ok(())
    }

    /// Returns once the server has processed everything this endpoint sent.
    fn flush(&mut self) -> Result<()>;

    /// Sends a request and waits up to [`REQUEST_TIMEOUT`] for its reply,
    /// which goes to `on_reply`. `Ok(false)` if none came in time.
    fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        on_reply: &mut OnReply<'_>,
    ) -> Result<bool>;
}

/// The receiving end of one subscription.
pub trait Inbound: Send {
    /// Waits up to `wait` for an event, then takes whatever else is ready (up
    /// to a batch), handing each to `on_event`. Returns how many it took.
    fn receive(&mut self, wait: Duration, on_event: &mut OnEvent<'_>) -> Result<usize>;

    /// Events for this subscription the system counted as dropped, where it
    /// counts them exactly.
    fn dropped(&self) -> Option<u64>;
}

/// Receives from a Starling mailbox (a bus subscription, or a client
/// subscription's local queue) the way [`Inbound::receive`] says: a batch
/// at a time, as an application that wants throughput would
/// ([`Mailbox::recv_batch_timeout`]: one take for the batch, not one per
/// event).
fn receive_from_mailbox(
    mailbox: &Mailbox,
    wait: Duration,
    on_event: &mut OnEvent<'_>,
) -> Result<usize> {
    let mut failed = None;
    let received = mailbox.recv_batch_timeout(RECEIVE_BATCH, wait, |event| {
        if failed.is_none() {
            failed = on_event(event.payload(), event.reply_to()).err();
        }
    });
    match (received, failed) {
        (_, Some(error)) => Err(error),
        (Ok(taken), None) => Ok(taken),
        (Err(RecvError::Timeout), None) => Ok(0),
        (Err(RecvError::Closed), None) => Err(Error::new("the subscription was closed")),
    }
}

/// Where the `starling` binary is: `given`, or next to this executable
/// (cargo builds both into the same directory).
pub fn starling_binary(given: Option<&Path>) -> Result<PathBuf> {
    match given {
        Some(path) => Ok(path.to_owned()),
        None => Ok(std::env::current_exe()
            .context("finding this executable")?
            .with_file_name("starling")),
    }
}

/// Starts the targets' systems: knows where their servers' binaries are and
/// keeps the async runtime the NATS client runs on.
#[derive(Debug)]
pub struct Launcher {
    starling: Option<PathBuf>,
    nats_server: Option<PathBuf>,
    /// The runtime async-nats runs on, for targets whose clients speak NATS.
    nats_client: Option<tokio::runtime::Runtime>,
    /// Whether starling clients pack small events (`--pack`).
    pack_small_events: bool,
}

impl Launcher {
    /// Finds what `targets` need; returns the launcher and a message for each
    /// kind of target that has to be skipped. `starling_bin` and
    /// `nats_server_bin` override where the servers' binaries are looked for;
    /// `pack_small_events`, the starling clients' option of that name.
    pub fn prepare(
        targets: &[Target],
        starling_bin: Option<&Path>,
        nats_server_bin: Option<&Path>,
        pack_small_events: bool,
    ) -> Result<(Self, Vec<String>)> {
        let mut skipped = Vec::new();
        let names = |needs: fn(Target) -> bool| {
            let names: Vec<&str> = targets
                .iter()
                .filter(|&&t| needs(t))
                .map(|t| t.name())
                .collect();
            names.join(", ")
        };
        let mut starling = None;
        if targets.iter().any(|t| t.needs_starling_node()) {
            let path = starling_binary(starling_bin)?;
            if path.is_file() {
                starling = Some(path);
            } else {
                skipped.push(format!(
                    "skipping {}: no starling binary at {} (build it with \
                     `cargo build --release -p starling-mesh`, or pass --starling-bin PATH)",
                    names(Target::needs_starling_node),
                    path.display()
                ));
            }
        }
        let mut nats_server = None;
        if targets.iter().any(|t| t.needs_nats_server()) {
            nats_server = match nats_server_bin {
                Some(path) => Some(path.to_owned()).filter(|path| path.is_file()),
                None => process::find_program("nats-server"),
            };
            if nats_server.is_none() {
                skipped.push(format!(
                    "skipping {}: nats-server not found in PATH or /usr/sbin \
                     (install it with scripts/install-nats, or pass --nats-server-bin PATH)",
                    names(Target::needs_nats_server)
                ));
            }
        }
        let nats_client = if targets.iter().any(|t| t.speaks_nats()) {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("nats-client")
                .build()
                .context("starting the tokio runtime for the NATS client")?;
            Some(runtime)
        } else {
            None
        };
        let launcher = Self {
            starling,
            nats_server,
            nats_client,
            pack_small_events,
        };
        Ok((launcher, skipped))
    }

    /// Whether `target` can run.
    pub fn available(&self, target: Target) -> bool {
        if target.needs_nats_server() {
            self.nats_server.is_some()
        } else if target.needs_starling_node() {
            self.starling.is_some()
        } else {
            true
        }
    }

    /// Starts `target`'s system: for a server target, fresh servers.
    pub fn start(&self, target: Target) -> Result<Box<dyn System>> {
        let nats_client = || {
            self.nats_client
                .as_ref()
                .map(|runtime| runtime.handle().clone())
                .ok_or_else(|| Error::new("no runtime for the NATS client"))
        };
        if target.needs_nats_server() {
            let binary = self
                .nats_server
                .as_ref()
                .ok_or_else(|| Error::new("no nats-server binary"))?;
            Ok(Box::new(nats::Cluster::start(
                binary,
                target.servers(),
                nats_client()?,
            )?))
        } else if target.needs_starling_node() {
            let binary = self
                .starling
                .as_deref()
                .ok_or_else(|| Error::new("no starling binary"))?;
            let mesh = starling::Mesh::start(binary, target, self.pack_small_events)?;
            if target.speaks_nats() {
                Ok(Box::new(nats_port::OverNats::new(mesh, nats_client()?)))
            } else {
                Ok(Box::new(mesh))
            }
        } else {
            Ok(Box::new(bus::InProcess::new()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_use_the_first_server_and_subscribers_the_others_in_turn() {
        let on = |role: Role, servers| role.server(servers);
        assert_eq!(on(Role::Publisher, 3), 0);
        assert_eq!(
            (0..4)
                .map(|n| on(Role::Subscriber(n), 3))
                .collect::<Vec<_>>(),
            [1, 2, 1, 2]
        );
        assert_eq!(on(Role::Subscriber(3), 2), 1);
        assert_eq!(on(Role::Subscriber(3), 1), 0, "one server takes everyone");
        assert_eq!(on(Role::Subscriber(0), 0), 0, "the bus has no servers");
    }

    #[test]
    fn a_link_drop_loses_the_deliveries_of_the_subscribers_beyond_it() {
        assert_eq!(deliveries_per_link_event(1, false, 3), 1, "pubsub");
        assert_eq!(
            deliveries_per_link_event(4, false, 2),
            4,
            "fanout, all on one"
        );
        assert_eq!(
            deliveries_per_link_event(4, false, 3),
            2,
            "fanout, two by two"
        );
        assert_eq!(
            deliveries_per_link_event(4, true, 3),
            1,
            "a queue group takes one"
        );
    }

    #[test]
    fn each_networked_starling_target_has_a_nats_counterpart_with_as_many_servers() {
        for &target in Target::ALL {
            match target.nats_counterpart() {
                Some(nats) => {
                    assert!(target.is_starling() && !nats.is_starling());
                    assert_eq!(nats.servers(), target.servers(), "{target:?}");
                }
                None => assert!(target == Target::Bus || !target.is_starling(), "{target:?}"),
            }
        }
        assert!(Target::Bus.is_starling());
        assert_eq!(
            Target::Bus.nats_counterpart(),
            None,
            "the in-process bus is never compared with a server"
        );
    }

    #[test]
    fn missing_servers_skip_their_targets_with_a_message() {
        let nowhere = Path::new("/nonexistent/starling-bench");
        let (launcher, skipped) =
            Launcher::prepare(Target::ALL, Some(nowhere), Some(nowhere), false)
                .expect("skipping is not an error");
        assert_eq!(
            Target::ALL
                .iter()
                .filter(|&&t| launcher.available(t))
                .collect::<Vec<_>>(),
            [&Target::Bus]
        );
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped[0].starts_with(
                "skipping local-tcp, local-uds, local-tcp-epoll, mesh-2, mesh-3, nats-port, \
                 mesh-2-nats-port: no starling binary"
            ),
            "{}",
            skipped[0]
        );
        assert!(
            skipped[1].starts_with(
                "skipping nats, nats-cluster-2, nats-cluster-3: nats-server not found"
            ),
            "{}",
            skipped[1]
        );
    }
}
