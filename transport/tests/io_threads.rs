//! Several I/O threads per server, against both backends: connections spread
//! over the threads, events cross from one thread's connection to
//! another's complete and in order, shutdown drains every thread,
//! `connections_max` is one limit for the node, and a loop is woken through
//! its eventfd only by deliveries from other threads.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Node, Raw, SECOND, WAIT, backends, eventually, node_with};
use starling_core::BusConfig;
use starling_transport::client::{Client, ClientSubscription};
use starling_transport::frame::ErrorCode;
use starling_transport::server::{BackendChoice, ServerConfig};

const THREADS: usize = 4;

fn node_with_threads(backend: BackendChoice, io_threads: usize, connections_max: usize) -> Node {
    let config = ServerConfig {
        io_threads,
        connections_max,
        ..common::config()
    };
    node_with(backend, config, BusConfig::default())
}

/// The I/O thread of each open connection, by connection id.
fn io_threads_of(node: &Node) -> Vec<usize> {
    node.server
        .connections()
        .iter()
        .map(|connection| connection.io_thread)
        .collect()
}

#[test]
fn connections_spread_over_the_threads_and_events_cross_them_in_order() {
    const EVENTS: u32 = 20_000;
    const WINDOW: u32 = 2048;
    for backend in backends() {
        let node = node_with_threads(backend, THREADS, 100);
        // Each connection goes to the thread with the fewest: one each.
        let clients: Vec<Client> = (0..THREADS)
            .map(|i| {
                let url = if i % 2 == 0 { &node.tcp } else { &node.uds };
                Client::connect(url).unwrap()
            })
            .collect();
        assert_eq!(io_threads_of(&node), [0, 1, 2, 3], "{backend:?}");
        // Thread 0's client publishes; threads 1 to 3's receive.
        let subscriptions: Vec<_> = clients[1..]
            .iter()
            .map(|client| client.subscribe("seq").unwrap())
            .collect();
        for client in &clients[1..] {
            client.flush().unwrap();
        }
        let progress: Vec<Arc<AtomicU32>> = (1..THREADS).map(|_| Arc::default()).collect();
        let readers: Vec<_> = subscriptions
            .into_iter()
            .zip(progress.clone())
            .map(|(subscription, read)| {
                std::thread::spawn(move || {
                    for next in 0..EVENTS {
                        let event = subscription
                            .recv_timeout(10 * SECOND)
                            .unwrap_or_else(|_| panic!("event {next} arrives"));
                        assert_eq!(event.payload(), next.to_le_bytes(), "in order");
                        read.store(next + 1, Ordering::Relaxed);
                    }
                    subscription.dropped()
                })
            })
            .collect();
        for i in 0..EVENTS {
            // Stay within the node's per-connection queue however the
            // machine schedules the readers: this test is about order and
            // integrity; what a slow consumer costs is tested elsewhere.
            let slowest = || {
                progress
                    .iter()
                    .map(|read| read.load(Ordering::Relaxed))
                    .min()
            };
            while i - slowest().unwrap_or(i) > WINDOW {
                std::thread::yield_now();
            }
            clients[0].publish("seq", &i.to_le_bytes()).unwrap();
        }
        clients[0].flush().unwrap();
        for reader in readers {
            assert_eq!(reader.join().unwrap(), 0, "{backend:?}: none dropped");
        }
        for client in &clients[1..] {
            assert_eq!(client.dropped_by_node(), 0, "{backend:?}");
        }
        let listed = node.server.connections();
        assert_eq!(listed[0].events_in, u64::from(EVENTS), "{backend:?}");
        for connection in &listed[1..] {
            assert_eq!(connection.events_out, u64::from(EVENTS), "{backend:?}");
        }
    }
}

#[test]
fn shutdown_drains_the_connections_of_every_thread() {
    for backend in backends() {
        let node = node_with_threads(backend, THREADS, 100);
        let mut raws: Vec<Raw> = (0..2 * THREADS).map(|_| Raw::hello(&node)).collect();
        assert_eq!(
            io_threads_of(&node),
            [0, 1, 2, 3, 0, 1, 2, 3],
            "{backend:?}"
        );
        let started = Instant::now();
        node.server.shutdown();
        assert!(
            started.elapsed() < 5 * SECOND,
            "{backend:?}: shutdown returns"
        );
        assert!(node.server.connections().is_empty(), "{backend:?}");
        for raw in &mut raws {
            assert_eq!(raw.expect_error().0, ErrorCode::ShuttingDown, "{backend:?}");
            assert!(raw.closed_within(WAIT), "{backend:?}");
        }
    }
}

#[test]
fn connections_max_holds_for_all_threads_together() {
    for backend in backends() {
        let node = node_with_threads(backend, 2, 3);
        let mut raws: Vec<Option<Raw>> = (0..3).map(|_| Some(Raw::hello(&node))).collect();
        assert_eq!(io_threads_of(&node), [0, 1, 0], "{backend:?}");
        let mut over = Raw::connect(&node);
        assert_eq!(over.expect_error().0, ErrorCode::Limit, "{backend:?}");
        assert!(over.closed_within(WAIT), "{backend:?}");
        // Thread 1's connection leaves: the next one takes its place there.
        drop(raws[1].take());
        assert!(
            eventually(5 * SECOND, || node.server.connections().len() == 2),
            "{backend:?}: the node sees the close"
        );
        raws[1] = Some(Raw::hello(&node));
        assert_eq!(io_threads_of(&node), [0, 0, 1], "{backend:?}");
        assert_eq!(node.server.totals().connections, 4, "{backend:?}");
    }
}

/// Rounds of "publish one event, wait for it": the subscriber's mailbox has
/// run dry before each, so each delivery has to wake the subscriber's session.
const ROUNDS: u32 = 2000;

/// A node with `io_threads` threads, a client subscribed to `ping` (on
/// thread 0) and another client (on thread 1 if there is one): the node, the
/// subscriber, its subscription and the other client.
fn ping_subscriber(
    backend: BackendChoice,
    io_threads: usize,
) -> (Node, Client, ClientSubscription, Client) {
    let node = node_with_threads(backend, io_threads, 100);
    let subscriber = Client::connect(&node.tcp).unwrap();
    let other = Client::connect(&node.uds).unwrap();
    let subscription = subscriber.subscribe("ping").unwrap();
    subscriber.flush().unwrap();
    (node, subscriber, subscription, other)
}

/// A round slower than this waited for something other than the event:
/// the loop's tick (a second by default), which is all that pulls a session
/// whose wake was lost. A round takes well under a millisecond otherwise.
const SLOW_ROUND: Duration = Duration::from_millis(250);

/// Publishes `ROUNDS` events with `publish`, each once the one before has
/// arrived, checks that each arrives, and returns how many times the node's
/// loops were woken through their eventfds meanwhile. Fails, early, when
/// more than one round in twenty is slow: a lost wake is rescued by the
/// loop's tick, so it shows as a slow round, not as a missing event.
fn one_at_a_time(
    node: &Node,
    subscription: &ClientSubscription,
    mut publish: impl FnMut(&[u8]),
) -> u64 {
    let before = node.server.loop_wakes();
    let mut slow_rounds = 0;
    for round in 0..ROUNDS {
        let started = Instant::now();
        publish(&round.to_le_bytes());
        let event = subscription
            .recv_timeout(10 * SECOND)
            .unwrap_or_else(|_| panic!("event {round} arrives"));
        assert_eq!(event.payload(), round.to_le_bytes());
        if started.elapsed() > SLOW_ROUND {
            slow_rounds += 1;
            assert!(
                slow_rounds <= ROUNDS / 20,
                "{slow_rounds} of {} rounds took over {SLOW_ROUND:?}: wakes are lost",
                round + 1
            );
        }
    }
    node.server.loop_wakes() - before
}

#[test]
fn a_delivery_from_the_same_io_thread_does_not_wake_the_loop() {
    for backend in backends() {
        let (node, _subscriber, subscription, publisher) = ping_subscriber(backend, 1);
        let wakes = one_at_a_time(&node, &subscription, |payload| {
            publisher.publish("ping", payload).unwrap();
        });
        // Every delivery came from the loop's own thread, which pulls the
        // subscriber before it waits: no eventfd write was needed (one per
        // event before). A few to spare for what else may wake a loop.
        assert!(
            wakes < u64::from(ROUNDS / 20),
            "{backend:?}: {wakes} loop wakes for {ROUNDS} events"
        );
    }
}

#[test]
fn a_delivery_from_another_thread_still_wakes_the_loop() {
    for backend in backends() {
        let (node, _subscriber, subscription, other_io_thread) = ping_subscriber(backend, 2);
        assert_eq!(io_threads_of(&node), [0, 1], "{backend:?}");
        let mut in_process = node.bus.publisher();
        // A lost wake would show as slow rounds (`one_at_a_time`). Not
        // one wake per event: a loop still writing the last event may find
        // the next one before its mailbox runs dry (epoll does, in about
        // half the rounds with the bus publishing, and more of them when
        // the machine is busy), so the count only shows that the eventfd
        // is written from these threads.
        let from_io_thread = one_at_a_time(&node, &subscription, |payload| {
            other_io_thread.publish("ping", payload).unwrap();
        });
        let from_bus = one_at_a_time(&node, &subscription, |payload| {
            in_process.publish("ping", payload).unwrap();
        });
        for (wakes, publisher) in [(from_io_thread, "I/O thread 1"), (from_bus, "the bus")] {
            assert!(
                wakes > 0,
                "{backend:?}: {wakes} loop wakes for {ROUNDS} events from {publisher}"
            );
        }
    }
}

#[test]
fn zero_threads_means_one_per_core() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for backend in backends() {
        let node = node_with_threads(backend, 0, 100);
        let raws: Vec<Raw> = (0..cores + 1).map(|_| Raw::hello(&node)).collect();
        let mut expected: Vec<usize> = (0..cores).collect();
        expected.push(0);
        assert_eq!(io_threads_of(&node), expected, "{backend:?}");
        drop(raws);
    }
}
