//! TLS on a real `starling node`'s client port, with certificates made by
//! `starling cert` and the command line's own clients, as the README's
//! "Securing a cluster" runs them: a round trip on both I/O backends; every
//! way a client can be refused, each said clearly and at once; client
//! certificates when the node requires them; NATS clients (async-nats) on
//! the NATS port with the same settings; and the secure default, which
//! mandatory client certificates satisfy and TLS alone does not.
//!
//! The node's settings come from flags, from `STARLING_*` variables and
//! from the config file, one test each.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

/// Longest wait for anything expected.
const WAIT: Duration = Duration::from_secs(20);
/// How long a refusal may take, process start included: it is an answer,
/// not a timeout (a client's connect timeout is 5 s).
const PROMPTLY: Duration = Duration::from_secs(3);

/// A node CA with a certificate for node `n1` valid for 127.0.0.1 and
/// localhost (`nodes/`), and a CA of clients with one for `alice`
/// (`clients/`), made by `starling cert`.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn new() -> Certificates {
        let dir = temp_dir();
        let nodes = dir.join("nodes");
        let clients = dir.join("clients");
        let (nodes, clients) = (nodes.to_str().unwrap(), clients.to_str().unwrap());
        for args in [
            &["cert", "ca", "--dir", nodes][..],
            &[
                "cert",
                "node",
                "n1",
                "--dir",
                nodes,
                "--san",
                "127.0.0.1,localhost",
            ],
            &["cert", "ca", "--dir", clients],
            &["cert", "node", "alice", "--dir", clients],
        ] {
            let output = run(args);
            assert!(output.status.success(), "{}", text(&output.stderr));
        }
        Certificates { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    /// `--client-tls-cert` and `--client-tls-key` of node n1.
    fn node_flags(&self) -> Vec<String> {
        vec![
            "--client-tls-cert".into(),
            self.path("nodes/n1.pem"),
            "--client-tls-key".into(),
            self.path("nodes/n1-key.pem"),
        ]
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(args: &[String]) -> Node {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_node(&args, &[])
}

/// `starling pub SUBJECT x` through `server` with `extra` flags, timed.
fn publish(server: &str, extra: &[&str], subject: &str) -> (Output, Duration) {
    let mut args = vec!["pub", "--server", server];
    args.extend_from_slice(extra);
    args.extend([subject, "x"]);
    let started = Instant::now();
    let output = run(&args);
    (output, started.elapsed())
}

/// A refused `starling pub`: it fails at once, saying `expected`.
fn refused(server: &str, extra: &[&str], expected: &str) {
    let (output, took) = publish(server, extra, "refused");
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{server} {extra:?} got through");
    assert!(stderr.contains(expected), "{server} {extra:?}: {stderr}");
    assert!(took < PROMPTLY, "{server} {extra:?}: took {took:?}");
}

/// A `starling sub` on `node` with `extra` flags receives what `starling
/// pub` with the same flags publishes.
fn round_trip(node: &Node, extra: &[&str]) {
    let mut args = extra.to_vec();
    args.extend(["tls.>", "--count", "3", "--timeout", "20"]);
    let mut sub = start_sub(node, &args);
    let mut publish_args = extra.to_vec();
    publish_args.extend(["--count", "3"]);
    let (output, _) = publish(&node.tcp, &publish_args, "tls.hello");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let received = wait_output(&mut sub, WAIT);
    assert!(received.status.success(), "{}", text(&received.stderr));
    assert_eq!(text(&received.stdout), "tls.hello x\n".repeat(3));
}

#[test]
fn tls_clients_publish_and_subscribe_through_a_node_on_both_backends() {
    let certificates = Certificates::new();
    let ca = certificates.path("nodes/ca.pem");
    // io_uring with the settings as flags, epoll with them in STARLING_*.
    let mut flags = certificates.node_flags();
    flags.extend(["--io-backend".into(), "uring".into()]);
    let by_flags = start(&flags);
    assert!(
        by_flags.backend.starts_with("io_uring"),
        "{}",
        by_flags.backend
    );
    assert!(
        by_flags.tcp.starts_with("tls://127.0.0.1:"),
        "{}",
        by_flags.tcp
    );
    round_trip(&by_flags, &["--ca", &ca]);
    let environment = [
        (
            "STARLING_CLIENT_TLS_CERT",
            certificates.path("nodes/n1.pem"),
        ),
        (
            "STARLING_CLIENT_TLS_KEY",
            certificates.path("nodes/n1-key.pem"),
        ),
    ];
    let environment: Vec<(&str, &str)> = environment
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    let by_environment = start_node(&["--io-backend", "epoll"], &environment);
    assert!(by_environment.backend.starts_with("epoll"));
    assert!(by_environment.tcp.starts_with("tls://"));
    round_trip(&by_environment, &["--ca", &ca]);
    // By name, which the certificate also gives, and with the CA from
    // STARLING_CA.
    let port = by_environment.tcp.rsplit_once(':').unwrap().1;
    let by_name = format!("tls://localhost:{port}");
    let mut sub = Process(
        starling(&["sub", "--server", &by_name, "tls.>", "--count", "1"])
            .env("STARLING_CA", &ca)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The subscriber is in when the node counts its inbox and its pattern.
    wait_until("the subscriber is in", WAIT, || {
        subscription_count(&by_environment) == 2
    });
    let (output, _) = publish(&by_environment.tcp, &["--ca", &ca], "tls.named");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let received = wait_output(&mut sub, WAIT);
    assert_eq!(text(&received.stdout), "tls.named x\n");
}

#[test]
fn clients_that_cannot_speak_to_the_port_are_told_why_at_once() {
    let certificates = Certificates::new();
    let ca = certificates.path("nodes/ca.pem");
    let other_ca = certificates.path("clients/ca.pem");
    let node = start(&certificates.node_flags());
    let plain_url = node.tcp.replace("tls://", "tcp://");
    refused(&plain_url, &[], "requires TLS");
    // Development CAs share their name: another one's key fails the
    // signature check.
    refused(
        &node.tcp,
        &["--ca", &other_ca],
        "BadSignature (is the CA given, --ca",
    );
    refused(&node.tcp, &[], "needs --ca");
    refused(&plain_url, &["--ca", &ca], "for tls:// URLs");
    let plain_node = start_node(&[], &[]);
    let tls_url = plain_node.tcp.replace("tcp://", "tls://");
    refused(&tls_url, &["--ca", &ca], "did not answer TLS");
    // The node is none the worse.
    round_trip(&node, &["--ca", &ca]);
}

#[test]
fn a_node_with_a_client_ca_requires_a_certificate_from_it() {
    let certificates = Certificates::new();
    let ca = certificates.path("nodes/ca.pem");
    // The settings from the config file.
    let config = certificates.dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "client_tls_cert = \"{}\"\nclient_tls_key = \"{}\"\nclient_tls_ca = \"{}\"\n",
            certificates.path("nodes/n1.pem"),
            certificates.path("nodes/n1-key.pem"),
            certificates.path("clients/ca.pem"),
        ),
    )
    .unwrap();
    let node = start_node(&["--config", config.to_str().unwrap()], &[]);
    refused(&node.tcp, &["--ca", &ca], "requires a client certificate");
    // A certificate, but from the node CA rather than the clients' one.
    let (stranger_cert, stranger_key) = (
        certificates.path("nodes/n1.pem"),
        certificates.path("nodes/n1-key.pem"),
    );
    let stranger = [
        "--ca",
        &ca,
        "--tls-cert",
        &stranger_cert,
        "--tls-key",
        &stranger_key,
    ];
    refused(&node.tcp, &stranger, "refused this client certificate");
    let alice_cert = certificates.path("clients/alice.pem");
    let alice_key = certificates.path("clients/alice-key.pem");
    round_trip(
        &node,
        &[
            "--ca",
            &ca,
            "--tls-cert",
            &alice_cert,
            "--tls-key",
            &alice_key,
        ],
    );
}

#[test]
fn client_certificates_let_a_node_serve_other_hosts_tls_alone_does_not() {
    let certificates = Certificates::new();
    let every_interface = ["--listen", "0.0.0.0:0", "--nats-listen", "0.0.0.0:0"];
    let mut args = vec!["node", "--http", ""];
    args.extend(every_interface);
    let flags = certificates.node_flags();
    args.extend(flags.iter().map(String::as_str));
    let output = run(&args);
    assert!(!output.status.success(), "TLS alone is not authentication");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("--client-tls-ca"), "{stderr}");

    let clients_ca = certificates.path("clients/ca.pem");
    let mut args = every_interface.to_vec();
    args.extend(flags.iter().map(String::as_str));
    args.extend(["--client-tls-ca", &clients_ca]);
    let node = start_node(&args, &[]);
    let port = node.tcp.rsplit_once(':').unwrap().1;
    let loopback = format!("tls://127.0.0.1:{port}");
    let (ca, cert, key) = (
        certificates.path("nodes/ca.pem"),
        certificates.path("clients/alice.pem"),
        certificates.path("clients/alice-key.pem"),
    );
    let alice = ["--ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    let (output, _) = publish(&loopback, &alice, "tls.exposed");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).starts_with("published 1 event"));
}

/// Connects a NATS client that trusts the node CA and presents `identity`.
async fn nats_client(
    node: &Node,
    certificates: &Certificates,
    identity: Option<(&str, &str)>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .add_root_certificates(certificates.dir.join("nodes/ca.pem"))
        .require_tls(true);
    if let Some((cert, key)) = identity {
        options =
            options.add_client_certificate(certificates.dir.join(cert), certificates.dir.join(key));
    }
    tokio::time::timeout(WAIT, options.connect(&node.nats))
        .await
        .expect("connects or fails in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_clients_speak_tls_on_the_nats_port_with_the_same_settings() {
    use futures_util::StreamExt;
    use std::io::{BufRead, BufReader, Write};
    let certificates = Certificates::new();
    let node = tokio::task::block_in_place(|| start(&certificates.node_flags()));
    let client = nats_client(&node, &certificates, None).await.unwrap();
    let mut events = client.subscribe("tls.nats").await.unwrap();
    client.flush().await.unwrap();
    // What a Starling client publishes over TLS reaches it, and back.
    let ca = certificates.path("nodes/ca.pem");
    tokio::task::block_in_place(|| {
        wait_until("the NATS subscription is in", WAIT, || {
            subscription_count(&node) == 1
        });
        let (output, _) = publish(&node.tcp, &["--ca", &ca], "tls.nats");
        assert!(output.status.success(), "{}", text(&output.stderr));
    });
    let event = tokio::time::timeout(WAIT, events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&event.payload[..], b"x");

    // A client that speaks plain NATS reads that TLS is required, and is
    // told so in its own protocol when it goes on in plain text.
    let address = node.nats.trim_start_matches("nats://").to_owned();
    let (info, refusal) = tokio::task::block_in_place(|| {
        let stream = std::net::TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        (&stream).write_all(b"CONNECT {}\r\nPING\r\n").unwrap();
        let mut refusal = String::new();
        reader.read_line(&mut refusal).unwrap();
        (info, refusal)
    });
    assert!(info.contains(r#""tls_required":true"#), "{info}");
    assert_eq!(refusal, "-ERR 'Secure Connection - TLS Required'\r\n");

    // With a client CA, the NATS port requires certificates too.
    let mut flags = certificates.node_flags();
    flags.extend([
        "--client-tls-ca".into(),
        certificates.path("clients/ca.pem"),
    ]);
    let strict = tokio::task::block_in_place(|| start(&flags));
    assert!(nats_client(&strict, &certificates, None).await.is_err());
    let alice = Some(("clients/alice.pem", "clients/alice-key.pem"));
    let client = nats_client(&strict, &certificates, alice).await.unwrap();
    client.publish("tls.alice", "in".into()).await.unwrap();
    client.flush().await.unwrap();
}
