//! Starling's NATS listener, driven the way the NATS baselines are: the
//! `starling node`s of `local-tcp` and `mesh-2` ([`starling::Mesh`]), each
//! endpoint an async-nats connection ([`nats::connect`]) to its node's NATS
//! port. The same client against nats-server and against Starling: the
//! comparison measures the servers alone.

use tokio::runtime::Handle;

use super::starling::Mesh;
use super::{Endpoint, Role, System, nats};
use crate::harness::error::Result;
use crate::harness::measurement::ProcessUsage;

/// Starling nodes whose clients speak NATS.
#[derive(Debug)]
pub struct OverNats {
    mesh: Mesh,
    /// The runtime async-nats runs on.
    runtime: Handle,
}

impl OverNats {
    /// Clients of `mesh`'s NATS listeners, on `runtime`.
    pub fn new(mesh: Mesh, runtime: Handle) -> Self {
        Self { mesh, runtime }
    }
}

impl System for OverNats {
    fn open(&self, role: Role) -> Result<Box<dyn Endpoint>> {
        nats::connect(&self.runtime, self.mesh.nats_url(role)?)
    }

    fn await_interest(
        &mut self,
        subject: &str,
        group: Option<&str>,
        subscribers: usize,
    ) -> Result<()> {
        self.mesh.await_interest(subject, group, subscribers)
    }

    fn dropped_between_servers(
        &self,
        subscribers: usize,
        queue_group: bool,
    ) -> Result<Option<u64>> {
        self.mesh.dropped_between_servers(subscribers, queue_group)
    }

    fn server_usage(&self) -> Result<Vec<ProcessUsage>> {
        self.mesh.server_usage()
    }

    fn io_backend(&self) -> Option<&str> {
        self.mesh.io_backend()
    }

    fn stop(self: Box<Self>) -> Result<()> {
        Box::new(self.mesh).stop()
    }
}
