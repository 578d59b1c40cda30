//! Several I/O threads per server, against both backends: connections spread
//! over the threads, events cross from one thread's connection to
//! another's complete and in order, shutdown drains every thread, and
//! `connections_max` is one limit for the node.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use common::{Node, Raw, SECOND, backends, eventually, node_with};
use starling_core::BusConfig;
use starling_transport::client::Client;
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
            assert!(raw.closed_within(SECOND), "{backend:?}");
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
        assert!(over.closed_within(SECOND), "{backend:?}");
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
