//! The local server through the client library, against both backends: one
//! suite, run once with epoll and once with io_uring.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{SECOND, WAIT, backends, eventually, node, node_with};
use starling_core::BusConfig;
use starling_transport::client::{Client, ClientError, ClientOptions};
use starling_transport::server::{Backend, BackendChoice, ServerConfig};

#[test]
fn the_chosen_backend_runs_and_says_so() {
    let epoll = node(BackendChoice::Epoll);
    assert!(matches!(epoll.server.backend(), Backend::Epoll { .. }));
    assert!(
        epoll
            .server
            .backend()
            .to_string()
            .contains("--io-backend epoll")
    );
    let uring = node(BackendChoice::Uring);
    assert_eq!(uring.server.backend(), &Backend::Uring);
}

#[test]
fn publish_and_subscribe_across_tcp_and_unix_sockets() {
    for backend in backends() {
        let node = node(backend);
        let over_tcp = Client::connect(&node.tcp).unwrap();
        let over_uds = Client::connect(&node.uds).unwrap();
        let orders = over_tcp.subscribe("orders.*.created").unwrap();
        let all = over_uds.subscribe(">").unwrap();
        over_uds.publish("orders.eu.created", b"from uds").unwrap();
        over_tcp.publish("orders.us.shipped", b"from tcp").unwrap();
        over_uds.flush().unwrap();
        over_tcp.flush().unwrap();
        assert_eq!(
            orders.recv_timeout(WAIT).unwrap().payload(),
            b"from uds",
            "{backend:?}"
        );
        let mut seen: Vec<Vec<u8>> = (0..2)
            .map(|_| all.recv_timeout(WAIT).unwrap().payload().to_vec())
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![b"from tcp".to_vec(), b"from uds".to_vec()],
            "{backend:?}"
        );
        assert!(
            orders.try_recv().is_none(),
            "{backend:?}: shipped is not created"
        );
    }
}

#[test]
fn the_node_and_in_process_subscribers_share_one_bus() {
    for backend in backends() {
        let node = node(backend);
        let client = Client::connect(&node.tcp).unwrap();
        let remote = client.subscribe("in.>").unwrap();
        let local = node.bus.subscribe("out.>").unwrap();
        node.bus.publish("in.x", b"bus to client").unwrap();
        client.publish("out.y", b"client to bus").unwrap();
        assert_eq!(
            remote.recv_timeout(WAIT).unwrap().payload(),
            b"bus to client"
        );
        assert_eq!(
            local.recv_timeout(WAIT).unwrap().payload(),
            b"client to bus"
        );
    }
}

#[test]
fn many_events_arrive_complete_and_in_order() {
    const EVENTS: u32 = 50_000;
    const WINDOW: u32 = 2048;
    for backend in backends() {
        let node = node(backend);
        let publisher = Client::connect(&node.uds).unwrap();
        let subscriber = Client::connect(&node.tcp).unwrap();
        let sub = subscriber.subscribe("seq").unwrap();
        let progress = Arc::new(AtomicU32::new(0));
        let read = progress.clone();
        let reader = std::thread::spawn(move || {
            let mut next = 0u32;
            while next < EVENTS {
                let event = sub.recv_timeout(5 * SECOND).expect("no event lost");
                assert_eq!(
                    u32::from_le_bytes(event.payload()[..4].try_into().unwrap()),
                    next
                );
                assert_eq!(event.payload().len(), 4 + (next % 300) as usize);
                next += 1;
                read.store(next, Ordering::Relaxed);
            }
            sub.dropped()
        });
        for i in 0..EVENTS {
            // Stay within the node's per-connection queue however the
            // machine schedules the reader: this test is about integrity;
            // what a slow consumer costs is tested elsewhere.
            while i - progress.load(Ordering::Relaxed) > WINDOW {
                std::thread::yield_now();
            }
            let mut payload = i.to_le_bytes().to_vec();
            payload.resize(4 + (i % 300) as usize, 7);
            publisher.publish("seq", &payload).unwrap();
        }
        publisher.flush().unwrap();
        assert_eq!(reader.join().unwrap(), 0, "{backend:?}");
        assert_eq!(subscriber.dropped_by_node(), 0, "{backend:?}");
    }
}

/// Reads `count` events numbered `from..` in order from `sub`.
fn expect_numbered(sub: &starling_transport::client::ClientSubscription, from: u32, count: u32) {
    for i in from..from + count {
        let event = sub.recv_timeout(5 * SECOND).expect("no event lost");
        assert_eq!(event.payload(), i.to_le_bytes());
    }
}

#[test]
fn dropping_the_last_handle_flushes_and_closes_the_connection() {
    for backend in backends() {
        let node = node(backend);
        let subscriber = Client::connect(&node.tcp).unwrap();
        let sub = subscriber.subscribe("dropped.handle").unwrap();
        let publisher = Client::connect(&node.uds).unwrap();
        let clone = publisher.clone();
        publisher.flush().unwrap();
        assert_eq!(node.server.connection_count(), 2, "{backend:?}");

        // A clone keeps the connection: the node still answers its flush.
        publisher
            .publish("dropped.handle", &0u32.to_le_bytes())
            .unwrap();
        drop(publisher);
        clone.flush().unwrap();
        assert_eq!(node.server.connection_count(), 2, "{backend:?}");

        // The last handle's drop writes out what is buffered, then closes.
        for i in 1..1_000u32 {
            clone.publish("dropped.handle", &i.to_le_bytes()).unwrap();
        }
        drop(clone);
        expect_numbered(&sub, 0, 1_000);
        assert!(
            eventually(5 * SECOND, || node.server.connection_count() == 1),
            "{backend:?}: the publisher's connection stays open"
        );

        // A subscription alone keeps its connection, and events come.
        drop(subscriber);
        let publisher = Client::connect(&node.uds).unwrap();
        publisher
            .publish("dropped.handle", &1_000u32.to_le_bytes())
            .unwrap();
        expect_numbered(&sub, 1_000, 1);
        drop(sub);
        drop(publisher);
        assert!(
            eventually(5 * SECOND, || node.server.connection_count() == 0),
            "{backend:?}: {} connections stay open",
            node.server.connection_count()
        );
    }
}

#[test]
fn a_queue_group_across_connections_gets_each_event_once() {
    const EVENTS: u64 = 3_000;
    for backend in backends() {
        let node = node(backend);
        let members: Vec<_> = (0..3)
            .map(|_| {
                let client = Client::connect(&node.tcp).unwrap();
                let sub = client.queue_subscribe("jobs.*", "workers").unwrap();
                (client, sub)
            })
            .collect();
        let publisher = Client::connect(&node.tcp).unwrap();
        for i in 0..EVENTS {
            publisher.publish("jobs.x", &i.to_le_bytes()).unwrap();
        }
        publisher.flush().unwrap();
        // Take from every member until all the events have arrived among
        // them, failing once no event has come for a while.
        let mut seen = HashSet::new();
        let mut last_arrival = Instant::now();
        while (seen.len() as u64) < EVENTS {
            let before = seen.len();
            for (_, sub) in &members {
                while let Some(event) = sub.try_recv() {
                    assert!(
                        seen.insert(u64::from_le_bytes(event.payload().try_into().unwrap())),
                        "duplicate"
                    );
                }
            }
            if seen.len() > before {
                last_arrival = Instant::now();
            } else {
                assert!(
                    last_arrival.elapsed() < 5 * SECOND,
                    "{backend:?}: {} of {EVENTS} events arrived",
                    seen.len()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(
            seen.len() as u64,
            EVENTS,
            "{backend:?}: every event exactly once"
        );
    }
}

#[test]
fn requests_get_replies_and_fail_fast_without_responders() {
    for backend in backends() {
        let node = node(backend);
        let service = Client::connect(&node.uds).unwrap();
        let requests = service.subscribe("svc.echo").unwrap();
        let responder = service.clone();
        const REQUESTS: u32 = 50;
        let server = std::thread::spawn(move || {
            for _ in 0..REQUESTS {
                let request = requests.recv_timeout(5 * SECOND).expect("a request");
                responder
                    .publish(request.reply_to().unwrap(), request.payload())
                    .unwrap();
            }
        });
        let client = Client::connect(&node.tcp).unwrap();
        for i in 0..REQUESTS {
            let reply = client.request("svc.echo", &i.to_le_bytes(), WAIT).unwrap();
            assert_eq!(reply.payload, i.to_le_bytes());
        }
        // An in-process responder answers clients too.
        let bus_service = node.bus.subscribe("svc.bus").unwrap();
        let bus = node.bus.clone();
        let in_process = std::thread::spawn(move || {
            let request = bus_service.recv_timeout(WAIT).unwrap();
            bus.publish(request.reply_to().unwrap(), b"from the bus")
                .unwrap();
        });
        assert_eq!(
            client.request("svc.bus", b"", WAIT).unwrap().payload,
            b"from the bus"
        );
        in_process.join().unwrap();
        // The refusal is an answer: it comes well before the timeout, which
        // is long so that a starved machine cannot pass for one that waited.
        let timeout = 60 * SECOND;
        let started = Instant::now();
        let error = client.request("nobody.home", b"", timeout).unwrap_err();
        assert!(matches!(error, ClientError::NoResponders), "{error}");
        assert!(
            started.elapsed() < timeout / 2,
            "{backend:?}: no waiting for the timeout: {:?}",
            started.elapsed()
        );
        server.join().unwrap();
    }
}

#[test]
fn unsubscribing_stops_delivery() {
    for backend in backends() {
        let node = node(backend);
        let client = Client::connect(&node.tcp).unwrap();
        let sub = client.subscribe("t").unwrap();
        client.publish("t", b"1").unwrap();
        client.flush().unwrap();
        assert!(sub.recv_timeout(WAIT).is_ok());
        drop(sub);
        client.flush().unwrap();
        let gone = || node.bus.subscriptions().iter().all(|s| s.pattern != "t");
        assert!(eventually(WAIT, gone), "{backend:?}");
    }
}

#[test]
fn invalid_subjects_are_refused_with_the_reason() {
    for backend in backends() {
        let node = node(backend);
        let client = Client::connect(&node.tcp).unwrap();
        let error = client.subscribe("orders..eu").unwrap_err();
        assert!(error.to_string().contains("token 1 is empty"), "{error}");
        let error = client.publish("orders.*", b"").unwrap_err();
        assert!(error.to_string().contains("wildcards"), "{error}");
        // Still connected and working.
        let sub = client.subscribe("ok").unwrap();
        client.publish("ok", b"fine").unwrap();
        assert_eq!(sub.recv_timeout(WAIT).unwrap().payload(), b"fine");
    }
}

#[test]
fn a_token_is_required_when_configured() {
    for backend in backends() {
        let config = ServerConfig {
            session: starling_transport::server::SessionConfig {
                auth: std::sync::Arc::new(
                    starling_transport::auth::Authenticator::new(Some("s3cret".into()), Vec::new())
                        .into(),
                ),
                ..Default::default()
            },
            ..common::config()
        };
        let node = node_with(backend, config, BusConfig::default());
        let error = Client::connect(&node.tcp).unwrap_err();
        assert!(error.to_string().contains("unauthorized"), "{error}");
        let options = ClientOptions {
            token: "s3cret".into(),
            ..Default::default()
        };
        assert!(
            Client::connect_with(&node.tcp, options).is_ok(),
            "{backend:?}"
        );
    }
}

#[test]
fn connections_over_the_limit_are_refused_with_a_reason() {
    for backend in backends() {
        let config = ServerConfig {
            connections_max: 2,
            ..common::config()
        };
        let node = node_with(backend, config, BusConfig::default());
        let _first = Client::connect(&node.tcp).unwrap();
        let _second = Client::connect(&node.tcp).unwrap();
        let error = Client::connect(&node.tcp).unwrap_err();
        assert!(
            error.to_string().contains("at most 2 connections"),
            "{backend:?}: {error}"
        );
    }
}

#[test]
fn the_client_reconnects_and_subscribes_again() {
    for backend in backends() {
        let first = node(backend);
        let address = first.server.tcp_addr().unwrap();
        let url = first.tcp.clone();
        let client = Client::connect(&url).unwrap();
        let sub = client.subscribe("again").unwrap();
        drop(first);
        assert!(
            eventually(WAIT, || !client.is_connected()),
            "{backend:?}: the break is noticed"
        );
        // A new node on the same port.
        let second = node_with(
            backend,
            ServerConfig {
                tcp: Some(address.to_string()),
                ..common::config()
            },
            BusConfig::default(),
        );
        assert!(
            eventually(5 * SECOND, || client.is_connected()),
            "{backend:?}: reconnected"
        );
        assert!(
            eventually(WAIT, || !second.bus.subscriptions().is_empty()),
            "{backend:?}: subscribed again"
        );
        second.bus.publish("again", b"after").unwrap();
        assert_eq!(sub.recv_timeout(WAIT).unwrap().payload(), b"after");
        assert_eq!(client.reconnects(), 1);
        // The first node's tcp URL is gone with it; the test used its port.
        let _ = second.tcp;
    }
}

#[test]
fn async_receive_request_and_flush() {
    for backend in backends() {
        let node = node(backend);
        let client = Client::connect(&node.tcp).unwrap();
        let sub = client.subscribe("async").unwrap();
        let bus = node.bus.clone();
        let service = bus.subscribe("svc").unwrap();
        std::thread::spawn(move || {
            let request = service.recv_timeout(WAIT).unwrap();
            bus.publish(request.reply_to().unwrap(), b"pong").unwrap();
        });
        let (payload, reply) = block_on(async {
            client.publish("async", b"ping").unwrap();
            client.flush_async().await.unwrap();
            let event = sub.recv_async().await.unwrap();
            let reply = client.request_async("svc", b"", WAIT).await.unwrap();
            (event.payload().to_vec(), reply.payload)
        });
        assert_eq!(
            (payload.as_slice(), reply.as_slice()),
            (&b"ping"[..], &b"pong"[..])
        );
    }
}

#[test]
fn the_server_lists_its_connections() {
    for backend in backends() {
        let node = node(backend);
        let options = ClientOptions {
            name: "lister".into(),
            ..Default::default()
        };
        let client = Client::connect_with(&node.tcp, options).unwrap();
        let _sub = client.subscribe("a").unwrap();
        client.publish("a", b"x").unwrap();
        client.flush().unwrap();
        let list = node.server.connections();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].client_name.as_str(), list[0].transport),
            ("lister", "tcp")
        );
        assert_eq!(
            list[0].subscriptions, 2,
            "the client's inbox and its subscription"
        );
        assert!(list[0].events_in >= 1 && list[0].bytes_in > 0);
    }
}

/// A minimal executor for the async test.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}
