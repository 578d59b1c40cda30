//! The scenarios: who publishes, who subscribes, and how one run goes.
//!
//! A streaming run (pubsub, fanout, fanin, queue) opens one endpoint per
//! subscriber and per publisher, as separate applications would. Subscribers
//! subscribe first and each flushes, so every subscription is in effect on
//! its server, and in a cluster the run waits until the publishers' server
//! knows of them all, before anything is published; then the publishers
//! start together. The run ends when every expected delivery arrived, or
//! everything not received is already counted as dropped by the system
//! itself, or nothing arrived for [`QUIET`], or [`GRACE`] after the last
//! publish; what has not arrived then is lost.
//!
//! A request run sends sequential requests from one endpoint to a responder
//! on another, which echoes each payload; the latency is the round trip. One
//! round trip before the run, not measured, sets up what a first request
//! sets up (a client's reply subscription, routes for it).

use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::error::{Error, Result};
use super::load::{self, Clock, RunLength, Schedule};
use super::measurement;
use super::targets::{Endpoint, Inbound, Role, System};

/// Subscribers of fanout and queue, publishers of fanin.
const FAN: usize = 4;

/// How long a waiting subscriber or responder sleeps before it checks
/// whether the run is over.
const POLL: Duration = Duration::from_millis(20);

/// How long after the last publish a run waits, at most, for what is still
/// in flight.
const GRACE: Duration = Duration::from_secs(5);

/// How long after the last publish a run goes on without a delivery before
/// it takes what has not arrived as lost.
const QUIET: Duration = Duration::from_secs(1);

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// One publisher, one subscriber.
    Pubsub,
    /// One publisher, four subscribers that each get every event.
    Fanout,
    /// Four publishers, one subscriber.
    Fanin,
    /// One publisher, a queue group of four: each event goes to one member.
    Queue,
    /// Sequential request/reply round trips to one responder.
    Request,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: &'static [Scenario] = &[
        Scenario::Pubsub,
        Scenario::Fanout,
        Scenario::Fanin,
        Scenario::Queue,
        Scenario::Request,
    ];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Pubsub => "pubsub",
            Scenario::Fanout => "fanout",
            Scenario::Fanin => "fanin",
            Scenario::Queue => "queue",
            Scenario::Request => "request",
        }
    }

    fn subject(self) -> String {
        format!("bench.{}", self.name())
    }

    fn publishers(self) -> usize {
        match self {
            Scenario::Fanin => FAN,
            _ => 1,
        }
    }

    fn subscribers(self) -> usize {
        match self {
            Scenario::Fanout | Scenario::Queue => FAN,
            _ => 1,
        }
    }

    fn queue_group(self) -> Option<&'static str> {
        (self == Scenario::Queue).then_some("workers")
    }

    /// Deliveries each published event should make: one per subscriber,
    /// except that a queue group takes each event once.
    pub fn deliveries_per_event(self) -> u64 {
        match self {
            Scenario::Fanout => FAN as u64,
            _ => 1,
        }
    }
}

/// How a run loads the system.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Bytes per event.
    pub payload_bytes: usize,
    /// How long it publishes.
    pub length: RunLength,
    /// Events per second in all, or flat out.
    pub rate: Option<f64>,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Events published (requests sent).
    pub sent: u64,
    /// Deliveries that should have arrived (replies, for requests).
    pub expected: u64,
    /// Deliveries that arrived.
    pub received: u64,
    /// Deliveries the system itself counted as dropped, where it counts them
    /// exactly (Starling); `None` where it does not.
    pub dropped_counted: Option<u64>,
    /// Latency of every delivery (round trip, for requests), in nanoseconds.
    pub latency: Histogram<u64>,
    /// From the first publish to the last delivery.
    pub elapsed: Duration,
}

/// Runs `scenario` on `system`.
pub fn run(scenario: Scenario, system: &mut dyn System, load: &Load) -> Result<Outcome> {
    match scenario {
        Scenario::Request => run_requests(system, load),
        _ => run_stream(scenario, system, load),
    }
}

/// One subscriber's counters, on a cache line of its own: its thread writes
/// them per batch, the coordinator reads them while it waits for the end.
#[derive(Debug, Default)]
struct Progress {
    received: AtomicU64,
    dropped: AtomicU64,
}

/// What a subscriber took in.
struct Consumed {
    received: u64,
    dropped: Option<u64>,
    latency: Histogram<u64>,
    last_receive_ns: u64,
}

/// What a publisher sent.
struct Published {
    sent: u64,
    first_ns: u64,
    /// When the server had the last event.
    done: Instant,
}

fn run_stream(scenario: Scenario, system: &mut dyn System, load: &Load) -> Result<Outcome> {
    let clock = Clock::new();
    let subject = scenario.subject();
    let mut subscribers = Vec::new();
    for n in 0..scenario.subscribers() {
        let mut endpoint = system.open(Role::Subscriber(n))?;
        let inbound = endpoint.subscribe(&subject, scenario.queue_group())?;
        // The server has the subscription once it has processed everything
        // this endpoint sent.
        endpoint.flush()?;
        subscribers.push((endpoint, inbound));
    }
    system.await_interest(&subject, scenario.queue_group(), subscribers.len())?;
    // Open until the run is over, as a real publisher's connection would
    // be: a client that closes right after its flush can lose what it sent.
    // Its flush may only mean "handed to the socket" (async-nats'), and a
    // TCP connection closed with bytes unread on it (or written to after)
    // is reset, which throws away what its kernel has not transmitted yet:
    // a busy node read 48 of 200 events before such a reset ("read error"),
    // and the run counted the rest as lost.
    let mut publishers = (0..scenario.publishers())
        .map(|_| system.open(Role::Publisher))
        .collect::<Result<Vec<_>>>()?;
    let counts_drops = subscribers
        .iter()
        .all(|(_, inbound)| inbound.dropped().is_some());
    let progress: Vec<CachePadded<Progress>> =
        subscribers.iter().map(|_| Default::default()).collect();
    let stop = AtomicBool::new(false);
    let start = Barrier::new(publishers.len());
    let rate = load.rate.map(|rate| rate / publishers.len() as f64);

    let (published, consumed) = std::thread::scope(|scope| {
        let consumers: Vec<_> = subscribers
            .into_iter()
            .zip(&progress)
            .map(|((endpoint, mut inbound), progress)| {
                let stop = &stop;
                scope.spawn(move || {
                    // Receiving needs the endpoint's connection open.
                    let _connection = endpoint;
                    consume(inbound.as_mut(), progress, stop, clock)
                })
            })
            .collect();
        let count = publishers.len();
        let senders: Vec<_> = publishers
            .iter_mut()
            .enumerate()
            .map(|(index, endpoint)| {
                let (start, subject) = (&start, &subject);
                let length = load.length.share(count, index);
                scope.spawn(move || {
                    start.wait();
                    publish(
                        endpoint.as_mut(),
                        subject,
                        load.payload_bytes,
                        length,
                        rate,
                        clock,
                    )
                })
            })
            .collect();
        let published = join_all(senders, "publisher");
        if let Ok(published) = &published {
            let sent: u64 = published.iter().map(|p| p.sent).sum();
            let last_publish = published.iter().map(|p| p.done).max();
            let deadline = last_publish.unwrap_or_else(Instant::now) + GRACE;
            await_deliveries(
                sent * scenario.deliveries_per_event(),
                &progress,
                counts_drops,
                deadline,
            );
        }
        stop.store(true, Ordering::Relaxed);
        let consumed = join_all(consumers, "subscriber");
        Ok::<_, Error>((published?, consumed?))
    })?;
    drop(publishers);
    let dropped_between_servers =
        system.dropped_between_servers(scenario.subscribers(), scenario.queue_group().is_some())?;
    Ok(combine(
        scenario,
        published,
        consumed,
        dropped_between_servers,
    ))
}

/// The outcome of a streaming run from what each publisher and subscriber
/// did, and what the servers lost between them.
fn combine(
    scenario: Scenario,
    published: Vec<Published>,
    consumed: Vec<Consumed>,
    dropped_between_servers: Option<u64>,
) -> Outcome {
    let sent = published.iter().map(|p| p.sent).sum::<u64>();
    let first_publish = published.iter().map(|p| p.first_ns).min().unwrap_or(0);
    let last_receive = consumed
        .iter()
        .map(|c| c.last_receive_ns)
        .max()
        .unwrap_or(0);
    let mut latency = measurement::latency_histogram();
    for subscriber in &consumed {
        measurement::merge(&mut latency, &subscriber.latency);
    }
    Outcome {
        sent,
        expected: sent * scenario.deliveries_per_event(),
        received: consumed.iter().map(|c| c.received).sum(),
        dropped_counted: consumed
            .iter()
            .map(|c| c.dropped)
            .chain([dropped_between_servers])
            .sum(),
        latency,
        elapsed: Duration::from_nanos(last_receive.saturating_sub(first_publish)),
    }
}

/// Waits until `expected` deliveries are received or counted as dropped,
/// or nothing arrives for [`QUIET`], or until `deadline`.
fn await_deliveries(
    expected: u64,
    progress: &[CachePadded<Progress>],
    counts_drops: bool,
    deadline: Instant,
) {
    let mut last = (0, Instant::now());
    while Instant::now() < deadline && last.1.elapsed() < QUIET {
        let received: u64 = progress
            .iter()
            .map(|p| p.received.load(Ordering::Acquire))
            .sum();
        let dropped: u64 = if counts_drops {
            progress
                .iter()
                .map(|p| p.dropped.load(Ordering::Acquire))
                .sum()
        } else {
            0
        };
        if received + dropped >= expected {
            return;
        }
        if received > last.0 {
            last = (received, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn publish(
    endpoint: &mut dyn Endpoint,
    subject: &str,
    payload_bytes: usize,
    length: RunLength,
    rate: Option<f64>,
    clock: Clock,
) -> Result<Published> {
    let mut payload = load::payload(payload_bytes);
    let first_ns = clock.now();
    let mut schedule = Schedule::start(length, rate);
    endpoint.publish_each(subject, &mut payload, &mut |payload| {
        let Some(send_at) = schedule.next() else {
            return false;
        };
        load::stamp(payload, clock.nanos_at(send_at));
        true
    })?;
    // The last publish counts as done once the server has it (or, for a
    // client whose flush only writes to its socket, once it is on its way).
    endpoint.flush()?;
    Ok(Published {
        sent: schedule.issued(),
        first_ns,
        done: Instant::now(),
    })
}

fn consume(
    inbound: &mut dyn Inbound,
    progress: &Progress,
    stop: &AtomicBool,
    clock: Clock,
) -> Result<Consumed> {
    let mut latency = measurement::latency_histogram();
    let mut received = 0;
    let mut last_receive_ns = 0;
    while !stop.load(Ordering::Relaxed) {
        // The events of one receive were taken together: one clock read, at
        // the first of them, is the receive time of them all.
        let mut received_at = None;
        let taken = inbound.receive(POLL, &mut |payload, _reply_to| {
            let now = *received_at.get_or_insert_with(|| clock.now());
            latency.saturating_record(now.saturating_sub(sent_at(payload)?));
            last_receive_ns = now;
            Ok(())
        })?;
        if taken > 0 {
            received += taken as u64;
            progress.received.store(received, Ordering::Release);
        }
        if let Some(dropped) = inbound.dropped() {
            progress.dropped.store(dropped, Ordering::Release);
        }
    }
    Ok(Consumed {
        received,
        dropped: inbound.dropped(),
        latency,
        last_receive_ns,
    })
}

fn run_requests(system: &mut dyn System, load: &Load) -> Result<Outcome> {
    let clock = Clock::new();
    let subject = Scenario::Request.subject();
    let mut responder = system.open(Role::Subscriber(0))?;
    let mut requests = responder.subscribe(&subject, None)?;
    responder.flush()?;
    system.await_interest(&subject, None, 1)?;
    let mut requester = system.open(Role::Publisher)?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let responding = scope.spawn(|| respond(responder.as_mut(), requests.as_mut(), &stop));
        let asked = warm_up(requester.as_mut(), &subject, load.payload_bytes)
            .and_then(|()| ask(requester.as_mut(), &subject, load, clock));
        stop.store(true, Ordering::Relaxed);
        let responded = join(responding, "responder");
        let outcome = asked?;
        responded?;
        Ok(outcome)
    })
}

/// One round trip, not measured; fails without a reply.
fn warm_up(endpoint: &mut dyn Endpoint, subject: &str, payload_bytes: usize) -> Result<()> {
    let answered = endpoint.request(subject, &load::payload(payload_bytes), &mut |_| Ok(()))?;
    if !answered {
        return Err(Error::new("the responder did not answer a first request"));
    }
    Ok(())
}

/// Sends the run's requests one after the other; a request without a reply
/// in time counts as lost.
fn ask(endpoint: &mut dyn Endpoint, subject: &str, load: &Load, clock: Clock) -> Result<Outcome> {
    let mut payload = load::payload(load.payload_bytes);
    let mut latency = measurement::latency_histogram();
    let first_ns = clock.now();
    let mut last_reply_ns = first_ns;
    let mut replies = 0;
    let mut schedule = Schedule::start(load.length, load.rate);
    for send_at in schedule.by_ref() {
        load::stamp(&mut payload, clock.nanos_at(send_at));
        let answered = endpoint.request(subject, &payload, &mut |reply| {
            let now = clock.now();
            latency.saturating_record(now.saturating_sub(sent_at(reply)?));
            last_reply_ns = now;
            Ok(())
        })?;
        replies += u64::from(answered);
    }
    Ok(Outcome {
        sent: schedule.issued(),
        expected: schedule.issued(),
        received: replies,
        dropped_counted: None,
        latency,
        elapsed: Duration::from_nanos(last_reply_ns - first_ns),
    })
}

/// Echoes every request's payload to its reply subject until the run stops.
fn respond(
    endpoint: &mut dyn Endpoint,
    requests: &mut dyn Inbound,
    stop: &AtomicBool,
) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        requests.receive(POLL, &mut |payload, reply_to| {
            let reply_to =
                reply_to.ok_or_else(|| Error::new("a request arrived without a reply subject"))?;
            endpoint.publish(reply_to, payload)
        })?;
    }
    Ok(())
}

/// The send time an event carries.
fn sent_at(payload: &[u8]) -> Result<u64> {
    load::read_stamp(payload).ok_or_else(|| {
        Error::new(format!(
            "an event of {} bytes arrived: too short to carry a send time",
            payload.len()
        ))
    })
}

fn join<T>(handle: ScopedJoinHandle<'_, Result<T>>, role: &str) -> Result<T> {
    handle
        .join()
        .unwrap_or_else(|_| Err(Error::new(format!("a {role} thread panicked"))))
}

/// Joins every thread (none is left running), then gives the first error.
fn join_all<T>(handles: Vec<ScopedJoinHandle<'_, Result<T>>>, role: &str) -> Result<Vec<T>> {
    let results: Vec<Result<T>> = handles.into_iter().map(|h| join(h, role)).collect();
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::harness::measurement::ProcessUsage;
    use crate::harness::targets::{OnEvent, OnReply};

    /// How long the server below takes to read what a publisher sent after
    /// its flush returned.
    const READ_LAG: Duration = Duration::from_millis(50);

    /// A server that reads its publishers late, as a busy one does: a
    /// publisher's flush returns once the events are in its socket (as
    /// async-nats' does), they reach the subscriber [`READ_LAG`] later, and
    /// what has not been read when the publisher's connection closes is
    /// lost, as behind a connection reset.
    #[derive(Default)]
    struct LateReader {
        /// Payloads sent and not read yet.
        unread: Mutex<Vec<Vec<u8>>>,
        /// When a publisher's flush last returned.
        flushed: Mutex<Option<Instant>>,
    }

    struct LateSystem(Arc<LateReader>);

    struct LateEndpoint {
        server: Arc<LateReader>,
        publisher: bool,
    }

    struct LateInbound(Arc<LateReader>);

    impl System for LateSystem {
        fn open(&self, role: Role) -> Result<Box<dyn Endpoint>> {
            Ok(Box::new(LateEndpoint {
                server: self.0.clone(),
                publisher: matches!(role, Role::Publisher),
            }))
        }

        fn await_interest(&mut self, _: &str, _: Option<&str>, _: usize) -> Result<()> {
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

    impl Endpoint for LateEndpoint {
        fn subscribe(&mut self, _: &str, _: Option<&str>) -> Result<Box<dyn Inbound>> {
            Ok(Box::new(LateInbound(self.server.clone())))
        }

        fn publish(&mut self, _: &str, payload: &[u8]) -> Result<()> {
            self.server.unread.lock().unwrap().push(payload.to_vec());
            Ok(())
        }

        fn flush(&mut self) -> Result<()> {
            if self.publisher {
                *self.server.flushed.lock().unwrap() = Some(Instant::now());
            }
            Ok(())
        }

        fn request(&mut self, _: &str, _: &[u8], _: &mut OnReply<'_>) -> Result<bool> {
            Err(Error::new("no requests here"))
        }
    }

    impl Drop for LateEndpoint {
        fn drop(&mut self) {
            if self.publisher {
                self.server.unread.lock().unwrap().clear();
            }
        }
    }

    impl Inbound for LateInbound {
        fn receive(&mut self, wait: Duration, on_event: &mut OnEvent<'_>) -> Result<usize> {
            let flushed = *self.0.flushed.lock().unwrap();
            if flushed.is_none_or(|at| at.elapsed() < READ_LAG) {
                std::thread::sleep(wait.min(Duration::from_millis(1)));
                return Ok(0);
            }
            let read = std::mem::take(&mut *self.0.unread.lock().unwrap());
            for payload in &read {
                on_event(payload, None)?;
            }
            Ok(read.len())
        }

        fn dropped(&self) -> Option<u64> {
            None
        }
    }

    #[test]
    fn a_publisher_stays_connected_until_the_server_has_read_its_events() {
        let mut system = LateSystem(Arc::default());
        let load = Load {
            payload_bytes: 128,
            length: RunLength::Count(200),
            rate: None,
        };
        let outcome = run(Scenario::Pubsub, &mut system, &load).unwrap();
        assert_eq!((outcome.sent, outcome.received), (200, 200));
    }
}
