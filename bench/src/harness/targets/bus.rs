//! Starling in process: the `Bus`, no server and no sockets. Every endpoint
//! is a handle on one bus with its own publisher.

use std::time::Duration;

use starling_core::{
    Bus, BusConfig, PublishError, Publisher, RequestError, SubscribeOptions, Subscription,
};
use starling_transport::client::ClientOptions;

use super::{
    Endpoint, Inbound, OnEvent, OnReply, REQUEST_TIMEOUT, Role, System, receive_from_mailbox,
};
use crate::harness::error::{Context, Error, Result};
use crate::harness::measurement::ProcessUsage;

/// A bus for one run.
#[derive(Debug)]
pub struct InProcess {
    bus: Bus,
}

impl InProcess {
    /// A bus whose subscriptions queue as many events as a client
    /// subscription does, so the in-process and node targets absorb the same
    /// bursts.
    pub fn new() -> Self {
        let subscription = SubscribeOptions {
            capacity: ClientOptions::default().subscription.capacity,
            ..SubscribeOptions::default()
        };
        Self {
            bus: Bus::new(BusConfig {
                subscription,
                ..BusConfig::default()
            }),
        }
    }
}

impl Default for InProcess {
    fn default() -> Self {
        Self::new()
    }
}

impl System for InProcess {
    fn open(&self, _role: Role) -> Result<Box<dyn Endpoint>> {
        Ok(Box::new(BusEndpoint {
            publisher: self.bus.publisher(),
            bus: self.bus.clone(),
        }))
    }

    fn await_interest(
        &mut self,
        _subject: &str,
        _group: Option<&str>,
        _subscribers: usize,
    ) -> Result<()> {
        // A subscription is in effect on the bus once `subscribe` returns.
        Ok(())
    }

    fn dropped_between_servers(&self, _: usize, _: bool) -> Result<Option<u64>> {
        Ok(Some(0))
    }

    fn server_usage(&self) -> Result<Vec<ProcessUsage>> {
        Ok(Vec::new())
    }

    fn io_backend(&self) -> Option<&str> {
        None
    }

    fn stop(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

struct BusEndpoint {
    bus: Bus,
    publisher: Publisher,
}

impl Endpoint for BusEndpoint {
    fn subscribe(&mut self, subject: &str, group: Option<&str>) -> Result<Box<dyn Inbound>> {
        let subscription = self
            .bus
            .subscribe_with(subject, group, self.bus.config().subscription)
            .context(format!("subscribing to {subject}"))?;
        Ok(Box::new(BusInbound { subscription }))
    }

    fn publish(&mut self, subject: &str, payload: &[u8]) -> Result<()> {
        match self.publisher.publish(subject, payload) {
            // With the memory budget spent the event is dropped and every
            // subscriber counts it: a loss the run reports, not a failure.
            Ok(()) | Err(PublishError::OutOfMemory(_)) => Ok(()),
            Err(error) => Err(Error::new(format!("publishing on the bus: {error}"))),
        }
    }

    fn flush(&mut self) -> Result<()> {
        // Publishing on the bus delivers before it returns.
        Ok(())
    }

    fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        on_reply: &mut OnReply<'_>,
    ) -> Result<bool> {
        match self.bus.request(subject, payload, REQUEST_TIMEOUT) {
            Ok(reply) => on_reply(reply.payload()).map(|()| true),
            Err(RequestError::Timeout) => Ok(false),
            Err(error) => Err(Error::new(format!("requesting on the bus: {error}"))),
        }
    }
}

struct BusInbound {
    subscription: Subscription,
}

impl Inbound for BusInbound {
    fn receive(&mut self, wait: Duration, on_event: &mut OnEvent<'_>) -> Result<usize> {
        receive_from_mailbox(&self.subscription, wait, on_event)
    }

    fn dropped(&self) -> Option<u64> {
        Some(self.subscription.dropped())
    }
}
