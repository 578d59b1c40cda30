//! TLS on the local server's TCP port, against both backends: clients
//! publish and subscribe through it; every way a connection can fail says
//! so clearly and at once (another CA, a certificate for another name, a
//! plain client at the TLS port, a TLS client at a plain port, a missing or
//! foreign client certificate); a handshake that never ends is closed
//! within the handshake timeout; the connection limit holds.

mod common;

use std::time::{Duration, Instant};

use common::tls::{Authority, tls_node};
use common::{LATE, Node, Raw, SECOND, WAIT, backends, config, eventually, node, node_with};
use rcgen::ExtendedKeyUsagePurpose;
use starling_core::BusConfig;
use starling_transport::client::{Client, ClientError, ClientOptions};
use starling_transport::frame::ErrorCode;
use starling_transport::server::{ServerConfig, SessionConfig};
use starling_transport::tls::{ClientTls, ServerTls};

/// How long the client waits for the node in its handshake: long, so that
/// a refusal that comes within [`PROMPTLY`] cannot be a timeout, however
/// starved the machine.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a refusal may take to arrive: it is an answer, not a timeout.
const PROMPTLY: Duration = Duration::from_secs(30);

fn options(tls: Option<ClientTls>) -> ClientOptions {
    ClientOptions {
        tls,
        reconnect: false,
        connect_timeout: CONNECT_TIMEOUT,
        ..ClientOptions::default()
    }
}

fn connect(node: &Node) -> Result<Client, ClientError> {
    Client::connect_with(&node.tcp, options(node.client_tls.clone()))
}

/// The reason of a TLS failure, which must come within [`PROMPTLY`].
fn tls_failure(url: &str, tls: Option<ClientTls>) -> String {
    let started = Instant::now();
    let error = Client::connect_with(url, options(tls)).expect_err("refused");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    match error {
        ClientError::Tls { reason, .. } => reason,
        other => panic!("expected a TLS failure, got {other}"),
    }
}

/// Publishes and checks that `client` receives it (the connection works).
fn round_trip(publisher: &Client, subscriber: &Client) {
    let events = subscriber.subscribe("check").unwrap();
    publisher.publish("check", b"through").unwrap();
    publisher.flush().unwrap();
    let event = events.recv_timeout(5 * SECOND).unwrap();
    assert_eq!(event.payload(), b"through");
}

#[test]
fn tls_clients_publish_and_subscribe_on_both_backends() {
    let ca = Authority::new("test CA");
    for backend in backends() {
        let node = tls_node(backend, &ca, None, config());
        // Both names the certificate gives: the address and localhost.
        let port = node.server.tcp_addr().unwrap().port();
        let by_name = format!("tls://localhost:{port}");
        let subscriber = Client::connect_with(&by_name, options(node.client_tls.clone())).unwrap();
        let events = subscriber.subscribe("tls.>").unwrap();
        let publisher = connect(&node).unwrap();
        // A plain client on the Unix socket, beside them.
        let local = Client::connect(&node.uds).unwrap();
        let local_events = local.subscribe("tls.>").unwrap();
        let large = vec![7u8; 512 << 10];
        const SMALL: u64 = 5_000;
        for i in 0..SMALL {
            publisher.publish("tls.small", &i.to_le_bytes()).unwrap();
        }
        publisher.publish("tls.large", &large).unwrap();
        publisher.flush().unwrap();
        for (who, events) in [("tls", &events), ("unix", &local_events)] {
            for i in 0..SMALL {
                let event = events.recv_timeout(5 * SECOND).unwrap();
                assert_eq!(
                    event.payload(),
                    i.to_le_bytes(),
                    "{backend:?} {who}: in order"
                );
            }
            let event = events.recv_timeout(5 * SECOND).unwrap();
            assert_eq!(event.subject(), "tls.large");
            assert!(event.payload() == large.as_slice(), "{backend:?} {who}");
        }
        // Requests go both ways too.
        let replies = subscriber.subscribe("tls.echo").unwrap();
        let responder = std::thread::spawn(move || {
            let request = replies.recv_timeout(5 * SECOND).unwrap();
            subscriber
                .publish(request.reply_to().unwrap(), request.payload())
                .unwrap();
            subscriber.flush().unwrap();
        });
        let reply = publisher.request("tls.echo", b"ping", 5 * SECOND).unwrap();
        assert_eq!(reply.payload, b"ping");
        responder.join().unwrap();
        // Listed as TLS connections, from where their clients are.
        let listed = node.server.connections();
        let tls: Vec<_> = listed.iter().filter(|c| c.transport == "tls").collect();
        assert_eq!(tls.len(), 2, "{backend:?}: {listed:?}");
        assert!(
            tls.iter().all(|c| c.remote.starts_with("127.0.0.1:")),
            "{listed:?}"
        );
    }
}

#[test]
fn a_client_that_trusts_another_ca_is_told_so() {
    let ca = Authority::new("node CA");
    let other = Authority::new("other CA");
    for backend in backends() {
        let node = tls_node(backend, &ca, None, config());
        let reason = tls_failure(&node.tcp, Some(other.client_tls()));
        assert!(reason.contains("UnknownIssuer"), "{reason}");
        assert!(reason.contains("--ca"), "says what to check: {reason}");
        // Nothing is left of it, and the node serves the right clients.
        assert!(eventually(5 * SECOND, || node
            .server
            .connections()
            .is_empty()));
        let client = connect(&node).unwrap();
        round_trip(&client, &client);
    }
}

#[test]
fn a_certificate_that_does_not_name_the_host_dialled_is_refused() {
    let ca = Authority::new("node CA");
    let (cert, key) = ca.issue(
        "elsewhere",
        &["node.invalid"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    for backend in backends() {
        let tls = ServerTls::from_files(&cert, &key, None).unwrap();
        let node = node_with(
            backend,
            ServerConfig {
                tls: Some(tls),
                ..config()
            },
            BusConfig::default(),
        );
        let reason = tls_failure(&node.tcp, Some(ca.client_tls()));
        assert!(reason.contains("not valid for name"), "{reason}");
        assert!(reason.contains("--san"), "says what to do: {reason}");
    }
}

#[test]
fn a_plain_client_at_the_tls_port_is_told_to_use_tls() {
    let ca = Authority::new("node CA");
    for backend in backends() {
        let node = tls_node(backend, &ca, None, config());
        let plain = node.tcp.replace("tls://", "tcp://");
        let started = Instant::now();
        let error = Client::connect_with(&plain, options(None)).expect_err("refused");
        assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
        match error {
            ClientError::Server {
                code: ErrorCode::Handshake,
                reason,
            } => assert!(reason.contains("requires TLS"), "{reason}"),
            other => panic!("{backend:?}: expected the node's refusal, got {other}"),
        }
        assert!(eventually(5 * SECOND, || node
            .server
            .connections()
            .is_empty()));
    }
}

#[test]
fn a_tls_client_at_a_plain_port_is_told_the_port_is_not_tls() {
    let ca = Authority::new("node CA");
    for backend in backends() {
        let node = node(backend);
        let url = node.tcp.replace("tcp://", "tls://");
        let reason = tls_failure(&url, Some(ca.client_tls()));
        assert!(reason.contains("did not answer TLS"), "{reason}");
        assert!(reason.contains("tcp://"), "{reason}");
    }
}

#[test]
fn a_tls_url_without_a_ca_is_refused_before_connecting() {
    let reason = tls_failure("tls://127.0.0.1:9", None);
    assert!(reason.contains("--ca"), "{reason}");
}

#[test]
fn with_a_client_ca_every_client_must_present_a_certificate_from_it() {
    let ca = Authority::new("node CA");
    let clients = Authority::new("client CA");
    let strangers = Authority::new("stranger CA");
    for backend in backends() {
        let node = tls_node(backend, &ca, Some(&clients.cert), config());
        let reason = tls_failure(&node.tcp, Some(ca.client_tls()));
        assert!(
            reason.contains("requires a client certificate"),
            "{backend:?}: {reason}"
        );
        let stranger = strangers.client_tls_with_certificate(&ca.cert);
        let reason = tls_failure(&node.tcp, Some(stranger));
        assert!(
            reason.contains("refused this client certificate"),
            "{backend:?}: {reason}"
        );
        assert!(eventually(5 * SECOND, || node
            .server
            .connections()
            .is_empty()));
        let member = clients.client_tls_with_certificate(&ca.cert);
        let client = Client::connect_with(&node.tcp, options(Some(member))).unwrap();
        round_trip(&client, &client);
    }
}

#[test]
fn a_tls_handshake_that_never_ends_is_closed_within_the_handshake_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let ca = Authority::new("node CA");
    for backend in backends() {
        let node = tls_node(
            backend,
            &ca,
            None,
            ServerConfig {
                session: SessionConfig {
                    handshake_timeout: TIMEOUT,
                    ..SessionConfig::default()
                },
                ..config()
            },
        );
        let started = Instant::now();
        // One says nothing; one starts a ClientHello and stops.
        let mut silent = Raw::connect(&node);
        let mut partial = Raw::connect(&node);
        partial.write(&[22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3]);
        assert!(eventually(WAIT, || node.server.connections().len() == 2));
        for raw in [&mut silent, &mut partial] {
            assert!(raw.closed_within(WAIT), "{backend:?}: closed");
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= TIMEOUT, "{backend:?}: not before the timeout");
        assert!(elapsed < TIMEOUT + LATE, "{backend:?}: took {elapsed:?}");
        assert!(eventually(WAIT, || node.server.connections().is_empty()));
    }
}

#[test]
fn the_connection_limit_holds_for_tls_clients_and_says_why() {
    let ca = Authority::new("node CA");
    for backend in backends() {
        let node = tls_node(
            backend,
            &ca,
            None,
            ServerConfig {
                connections_max: 2,
                ..config()
            },
        );
        let first = connect(&node).unwrap();
        let second = connect(&node).unwrap();
        match connect(&node).expect_err("over the limit") {
            ClientError::Server {
                code: ErrorCode::Limit,
                reason,
            } => assert!(reason.contains("at most 2"), "{reason}"),
            other => panic!("{backend:?}: expected the limit, got {other}"),
        }
        first.close();
        assert!(eventually(5 * SECOND, || node.server.connections().len() == 1));
        let third = connect(&node).unwrap();
        round_trip(&second, &third);
    }
}
