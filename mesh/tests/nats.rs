//! The NATS listener, driven by NATS clients no one here wrote: the
//! `async-nats` crate (and, in `nats_py`, the `nats-py` package), through
//! their public APIs, against real `starling node` processes. Bad input is
//! sent raw, each case on its own connection, while a bystander client
//! goes on being served.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event, HeaderMap, client::PublishErrorKind};
use futures_util::StreamExt;
use starling_transport::client::Client as StarlingClient;

use common::*;

/// Longest wait for anything expected.
const WAIT: Duration = Duration::from_secs(10);

fn host_port(node: &Node) -> &str {
    node.nats.trim_start_matches("nats://")
}

async fn connect(node: &Node) -> async_nats::Client {
    async_nats::connect(&node.nats)
        .await
        .expect("async-nats connects")
}

/// The next message of `subscriber`, within [`WAIT`].
async fn next(subscriber: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, subscriber.next())
        .await
        .expect("a message arrives in time")
        .expect("the subscription is open")
}

/// Payloads of the next `count` messages.
async fn payloads(subscriber: &mut async_nats::Subscriber, count: usize) -> Vec<String> {
    let mut received = Vec::new();
    for _ in 0..count {
        let message = next(subscriber).await;
        received.push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_wildcards_queue_groups_and_headers() {
    let node = start_node(&[], &[]);
    let client = connect(&node).await;
    assert!(client.server_info().headers, "INFO offers headers");
    assert_eq!(client.server_info().proto, 1);
    let mut one_token = client.subscribe("orders.*").await.unwrap();
    let mut every_token = client.subscribe("orders.>").await.unwrap();
    let mut workers = [
        client
            .queue_subscribe("orders.>", "workers".into())
            .await
            .unwrap(),
        client
            .queue_subscribe("orders.>", "workers".into())
            .await
            .unwrap(),
    ];
    let mut headers = HeaderMap::new();
    headers.insert("ce-type", "order.created");
    client
        .publish_with_headers("orders.eu", headers, "1".into())
        .await
        .unwrap();
    client.publish("orders.eu.de", "2".into()).await.unwrap();
    client.publish("other", "3".into()).await.unwrap();
    client.publish("orders.us", "4".into()).await.unwrap();
    client.flush().await.unwrap();

    let first = next(&mut one_token).await;
    assert_eq!(first.subject.as_str(), "orders.eu");
    let header = first.headers.as_ref().and_then(|h| h.get("ce-type"));
    assert_eq!(header.map(|v| v.as_str()), Some("order.created"));
    assert_eq!(payloads(&mut one_token, 1).await, ["4"]);
    assert_eq!(payloads(&mut every_token, 3).await, ["1", "2", "4"]);
    // Each of the three went to exactly one worker: count them all, then
    // a marker on each worker's own subject shows nothing more is coming.
    let mut received = 0;
    let deadline = Instant::now() + WAIT;
    while received < 3 {
        for worker in &mut workers {
            if let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(20), worker.next()).await
            {
                received += 1;
            }
        }
        assert!(Instant::now() < deadline, "3 events reach the group");
    }
    drop(workers);
    client.publish("orders.marker", "m".into()).await.unwrap();
    assert_eq!(payloads(&mut every_token, 1).await, ["m"]);
}

/// Flat out, more messages than a subscriber's queue holds: the publisher
/// is held back while the subscriber catches up (both NATS connections on
/// one node, so on one runtime: the wait must not block a thread the
/// subscriber needs), and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_out_publisher_is_held_back_and_nothing_is_lost() {
    const COUNT: usize = 60_000;
    let node = start_node(&[], &[]);
    let subscriber = connect(&node).await;
    let mut flood = subscriber.subscribe("flood").await.unwrap();
    subscriber.flush().await.unwrap();
    let publisher = connect(&node).await;
    let sending = tokio::spawn(async move {
        for n in 0..COUNT {
            publisher
                .publish("flood", n.to_string().into())
                .await
                .unwrap();
        }
        publisher.flush().await.unwrap();
        publisher
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    for expected in 0..COUNT {
        let message = tokio::time::timeout_at(deadline.into(), flood.next())
            .await
            .unwrap_or_else(|_| panic!("message {expected} of {COUNT} in time"))
            .unwrap();
        assert_eq!(
            message.payload,
            expected.to_string().as_bytes(),
            "in order, none missing"
        );
    }
    sending.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_and_no_responders() {
    let node = start_node(&[], &[]);
    let client = connect(&node).await;
    let mut service = client.subscribe("time.now").await.unwrap();
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(request) = service.next().await {
            let reply = request.reply.expect("a request has a reply subject");
            let mut answer = b"it is ".to_vec();
            answer.extend_from_slice(&request.payload);
            responder.publish(reply, answer.into()).await.unwrap();
        }
    });
    client.flush().await.unwrap();
    let reply = client.request("time.now", "noon".into()).await.unwrap();
    assert_eq!(&reply.payload[..], b"it is noon");
    // The refusal is an answer: it comes well before the timeout, which is
    // long so that a starved machine cannot pass for one that waited.
    let timeout = Duration::from_secs(60);
    let started = Instant::now();
    let error = client
        .send_request(
            "nobody.listens",
            async_nats::Request::new()
                .payload("x".into())
                .timeout(Some(timeout)),
        )
        .await
        .expect_err("no responders");
    assert_eq!(
        error.kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
    assert!(
        started.elapsed() < timeout / 2,
        "fails fast, not by timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_after_flush_and_drain() {
    let node = start_node(&[], &[]);
    let client = connect(&node).await;
    let mut three = client.subscribe("count").await.unwrap();
    three.unsubscribe_after(3).await.unwrap();
    let mut all = client.subscribe("count").await.unwrap();
    for n in 0..5 {
        client.publish("count", n.to_string().into()).await.unwrap();
    }
    client.flush().await.unwrap();
    assert_eq!(payloads(&mut all, 5).await, ["0", "1", "2", "3", "4"]);
    assert_eq!(payloads(&mut three, 3).await, ["0", "1", "2"]);
    let end = tokio::time::timeout(WAIT, three.next()).await.unwrap();
    assert!(end.is_none(), "after 3 messages the subscription ends");

    // Drain a subscription: it ends. (async-nats ends it at its connection
    // task's next turn after writing the UNSUB; what it publishes meanwhile
    // gives it turns, and may still reach the subscription before it ends.)
    client.publish("count", "5".into()).await.unwrap();
    assert_eq!(payloads(&mut all, 1).await, ["5"]);
    all.drain().await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        client.publish("count", "turn".into()).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(50), all.next()).await {
            Ok(None) => break,
            Ok(Some(message)) => assert_eq!(&message.payload[..], b"turn"),
            Err(_) => assert!(Instant::now() < deadline, "the drained subscription ends"),
        }
    }
    // Drain the client: it closes, and refuses to publish from then on.
    client.drain().await.unwrap();
    let deadline = Instant::now() + WAIT;
    while client.publish("count", "late".into()).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the drained client closed in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_payload_is_refused() {
    let node = start_node(&[], &[]);
    let client = connect(&node).await;
    let max = client.server_info().max_payload;
    assert_eq!(max, 1 << 20);
    let mut sub = client.subscribe("big").await.unwrap();
    client.publish("big", vec![7u8; max].into()).await.unwrap();
    assert_eq!(
        next(&mut sub).await.payload.len(),
        max,
        "the largest allowed"
    );
    let error = client
        .publish("big", vec![7u8; max + 1].into())
        .await
        .expect_err("one byte more is refused");
    assert_eq!(error.kind(), PublishErrorKind::MaxPayloadExceeded);
    // A client that does not check is told by the node, then closed.
    let mut raw = Raw::connect(&node);
    raw.send(format!("PUB big {}\r\n", max + 1).as_bytes());
    assert_eq!(raw.rest(), "-ERR 'Maximum Payload Violation'\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_the_node_restarts_on_its_port() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let node = start_node(&["--nats-listen", &listen], &[]);
    let client = ConnectOptions::new()
        .retry_on_initial_connect()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .connect(&node.nats)
        .await
        .unwrap();
    let mut sub = client.subscribe("after.restart").await.unwrap();
    client
        .publish("after.restart", "before".into())
        .await
        .unwrap();
    assert_eq!(payloads(&mut sub, 1).await, ["before"]);
    drop(node);
    let node = start_node(&["--nats-listen", &listen], &[]);
    // The client finds the node again by itself and subscribes again; until
    // it has, what it publishes may be lost, so publish until one arrives.
    let deadline = Instant::now() + WAIT;
    loop {
        let _ = client.publish("after.restart", "after".into()).await;
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(100), sub.next()).await
        {
            assert_eq!(&message.payload[..], b"after");
            break;
        }
        assert!(Instant::now() < deadline, "the client reconnected in time");
    }
    assert_eq!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_the_node_has_one() {
    let node = start_node(&["--token", "s3cret"], &[]);
    let client = ConnectOptions::with_token("s3cret".into())
        .connect(&node.nats)
        .await
        .expect("the right token is let in");
    client.flush().await.unwrap();
    let refused = ConnectOptions::with_token("wrong".into())
        .connect(&node.nats)
        .await;
    assert!(refused.is_err(), "a wrong token is refused");
    let mut raw = Raw::connect(&node);
    assert!(raw.info.contains("\"auth_required\":true"), "{}", raw.info);
    raw.send(b"PUB a 1\r\nx\r\n");
    assert_eq!(raw.rest(), "-ERR 'Authorization Violation'\r\n");
    let mut raw = Raw::connect(&node);
    raw.send(b"CONNECT {\"auth_token\":\"s3cret\"}\r\nPING\r\n");
    assert_eq!(raw.line(), "PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lame_duck_mode_is_announced_on_sigusr2() {
    let node = start_node(&[], &[]);
    let (events, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let client = ConnectOptions::new()
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send(event.to_string());
            }
        })
        .connect(&node.nats)
        .await
        .unwrap();
    client.flush().await.unwrap();
    let status = Command::new("kill")
        .args(["-USR2", &node.process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline.into(), seen.recv()).await;
        match event {
            Ok(Some(event)) if event == Event::LameDuckMode.to_string() => break,
            Ok(Some(_)) => {}
            _ => panic!("no lame duck event in time"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_endpoints_speak_nats_servers_json() {
    let node = start_node(&[], &[]);
    let client = ConnectOptions::new()
        .name("monitored")
        .connect(&node.nats)
        .await
        .unwrap();
    let mut watched = client.subscribe("watched").await.unwrap();
    client.publish("watched", "x".into()).await.unwrap();
    client.flush().await.unwrap();
    // Back to the publisher (echo is on): the node has counted it. (A
    // flush only writes the client's buffer.)
    tokio::time::timeout(WAIT, watched.next())
        .await
        .expect("the event comes back")
        .expect("the subscription is open");
    let (status, body) = get(&node.http, "/varz");
    assert!(status.contains("200"), "{status}");
    let varz: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(varz["version"], "2.10.0");
    assert_eq!(varz["proto"], 1);
    assert_eq!(varz["max_payload"], 1 << 20);
    assert_eq!(
        varz["port"].as_u64().unwrap().to_string(),
        host_port(&node).rsplit(':').next().unwrap()
    );
    assert_eq!(varz["connections"], 1);
    assert!(varz["in_msgs"].as_u64().unwrap() >= 1);
    let connz: serde_json::Value = serde_json::from_str(&get(&node.http, "/connz").1).unwrap();
    assert_eq!(connz["num_connections"], 1);
    let connection = &connz["connections"][0];
    assert_eq!(connection["name"], "monitored");
    assert_eq!(connection["lang"], "rust");
    assert_eq!(connection["subscriptions"], 1);
    assert_eq!(connection["in_msgs"], 1);
    let subsz: serde_json::Value = serde_json::from_str(&get(&node.http, "/subsz").1).unwrap();
    assert!(subsz["num_subscriptions"].as_u64().unwrap() >= 1);
}

/// A NATS client on node A and a Starling client on node B of a mesh
/// exchange events, headers included, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_client_and_a_starling_client_meet_across_the_mesh() {
    let a = start_mesh_node("a", None, None);
    let b = start_mesh_node("b", Some(&a.cluster), None);
    wait_full_mesh(&[&a, &b]);
    let nats = connect(&a).await;
    let starling = StarlingClient::connect(&b.tcp).unwrap();

    let from_nats = starling.subscribe("to.starling.>").unwrap();
    wait_interest(&[&a], "b", "to.starling.>", None, true);
    let mut headers = HeaderMap::new();
    headers.insert("ce-source", "nats-on-a");
    nats.publish_with_headers("to.starling.x", headers, "hello b".into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let event = tokio::task::block_in_place(|| from_nats.recv_timeout(WAIT)).unwrap();
    assert_eq!(event.subject(), "to.starling.x");
    assert_eq!(event.payload(), b"hello b");
    assert_eq!(event.header("ce-source"), Some(&b"nats-on-a"[..]));

    let mut from_starling = nats.subscribe("to.nats.>").await.unwrap();
    nats.flush().await.unwrap();
    wait_interest(&[&b], "a", "to.nats.>", None, true);
    starling
        .publish_with_headers(
            "to.nats.y",
            &[starling_core::Header("ce-type", b"greeting")],
            b"hello a",
        )
        .unwrap();
    starling.flush().unwrap();
    let message = next(&mut from_starling).await;
    assert_eq!(message.subject.as_str(), "to.nats.y");
    assert_eq!(&message.payload[..], b"hello a");
    let header = message.headers.as_ref().and_then(|h| h.get("ce-type"));
    assert_eq!(header.map(|v| v.as_str()), Some("greeting"));

    // Request/reply across the mesh: a NATS requester on A, a Starling
    // responder on B.
    let requests = starling.subscribe("svc.echo").unwrap();
    wait_interest(&[&a], "b", "svc.echo", None, true);
    let responder = std::thread::spawn(move || {
        let request = requests.recv_timeout(WAIT).unwrap();
        let reply_to = request.reply_to().unwrap().to_owned();
        starling.publish(&reply_to, request.payload()).unwrap();
        starling.flush().unwrap();
    });
    let reply = nats.request("svc.echo", "ping".into()).await.unwrap();
    assert_eq!(&reply.payload[..], b"ping");
    responder.join().unwrap();
}

/// The Python client (`nats-py`) runs `scripts/nats-py-check.py` against a
/// node. Skipped, saying so, where `nats-py` is not installed, unless
/// `STARLING_REQUIRE` names `nats_py` (CI does, after installing it).
#[test]
fn nats_py() {
    let importable = Command::new("python3")
        .args(["-c", "import nats"])
        .status()
        .is_ok_and(|status| status.success());
    if !importable {
        skip(
            "nats_py",
            "python3 with nats-py is not installed (pip install nats-py)",
        );
        return;
    }
    let node = start_node(&[], &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/nats-py-check.py");
    let mut child = Process(
        Command::new("python3")
            .arg(script)
            .arg(&node.nats)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let output = wait_output(&mut child, Duration::from_secs(30));
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(
        text(&output.stdout).ends_with("ok\n"),
        "{}",
        text(&output.stdout)
    );
}

/// Bad input, each case on a connection of its own: nats-server's `-ERR`
/// and/or a close, never a crash, and a bystander served throughout.
#[test]
fn bad_input_gets_nats_errors_and_hurts_nobody_else() {
    let node = start_node(&[], &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // async-nats needs the runtime's context to drop a subscriber.
    let _context = runtime.enter();
    let mut bystander = Bystander::start(&runtime, &node);

    let long_line = format!("SUB {} 1\r\n", "a".repeat(5000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unknown operation",
            b"HELLO world\r\n".to_vec(),
            "-ERR 'Unknown Protocol Operation'\r\n",
        ),
        (
            "over-long control line",
            long_line.into_bytes(),
            "-ERR 'maximum control line exceeded'\r\n",
        ),
        (
            "a size shorter than the payload",
            b"PUB a 2\r\nhello\r\n".to_vec(),
            "-ERR 'Unknown Protocol Operation'\r\n",
        ),
        (
            "a size longer than the payload",
            [&b"PUB a 20\r\nhello\r\n"[..], &[b'x'; 32]].concat(),
            "-ERR 'Unknown Protocol Operation'\r\n",
        ),
        (
            "a 4 GiB size",
            b"PUB a 4294967296\r\n".to_vec(),
            "-ERR 'Maximum Payload Violation'\r\n",
        ),
        (
            "a size that is not a number",
            b"PUB a b c d\r\n".to_vec(),
            "",
        ),
    ];
    for (what, input, expected) in cases {
        let mut raw = Raw::connect(&node);
        raw.send(b"CONNECT {}\r\n");
        raw.send(&input);
        assert_eq!(raw.rest(), expected, "{what}");
        bystander.check(&runtime, what);
    }

    // Invalid subjects: told, not closed (as nats-server).
    let mut raw = Raw::connect(&node);
    raw.send(b"CONNECT {\"verbose\":true,\"pedantic\":true}\r\n");
    assert_eq!(raw.line(), "+OK\r\n");
    for sub in ["SUB a..b 1\r\n", "SUB a.>.b 1\r\n", "SUB  1\r\n"] {
        raw.send(sub.as_bytes());
        let expected = if sub == "SUB  1\r\n" {
            ""
        } else {
            "-ERR 'Invalid Subject'\r\n"
        };
        if expected.is_empty() {
            // Too few arguments: a framing error, closed without a word.
            assert_eq!(raw.rest(), "");
        } else {
            assert_eq!(raw.line(), expected, "{sub}");
        }
    }
    let mut raw = Raw::connect(&node);
    raw.send(b"CONNECT {\"verbose\":true,\"pedantic\":true}\r\nPUB a.* 0\r\n\r\nPING\r\n");
    assert_eq!(raw.line(), "+OK\r\n");
    assert_eq!(raw.line(), "-ERR 'Invalid Publish Subject'\r\n");
    assert_eq!(raw.line(), "PONG\r\n");
    bystander.check(&runtime, "invalid subjects");

    // Random bytes, from fixed seeds.
    for seed in 1..=20u64 {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let mut raw = Raw::connect(&node);
        raw.send(&noise);
        let said = raw.rest();
        assert!(
            said.is_empty()
                || [
                    "-ERR 'Unknown Protocol Operation'\r\n",
                    "-ERR 'maximum control line exceeded'\r\n",
                    "-ERR 'Maximum Payload Violation'\r\n",
                ]
                .contains(&said.as_str()),
            "seed {seed}: {said:?}"
        );
    }
    bystander.check(&runtime, "random bytes");

    // A client that never reads: the bystander floods its subject; the
    // bystander is still served, and after the write deadline the node
    // gives up on the reader as a slow consumer.
    let mut stuck = Raw::connect(&node);
    stuck.send(b"CONNECT {}\r\nSUB flood 1\r\nPING\r\n");
    assert_eq!(stuck.line(), "PONG\r\n");
    runtime.block_on(async {
        let payload = bytes_of(16 << 10);
        for _ in 0..2000 {
            bystander
                .client
                .publish("flood", payload.clone())
                .await
                .unwrap();
        }
        bystander.client.flush().await.unwrap();
    });
    bystander.check(&runtime, "a client that never reads");
    wait_until(
        "the stuck client is closed as a slow consumer",
        Duration::from_secs(30),
        || {
            let varz: serde_json::Value =
                serde_json::from_str(&get(&node.http, "/varz").1).unwrap();
            varz["slow_consumers"] == 1
        },
    );
    bystander.check(&runtime, "the slow consumer's close");
    assert!(node_is_running(&node));
}

fn bytes_of(size: usize) -> bytes::Bytes {
    vec![b'z'; size].into()
}

fn node_is_running(node: &Node) -> bool {
    // `try_wait` needs `&mut`; the node is checked through its HTTP port.
    get(&node.http, "/healthz").0.contains("200")
}

/// A client that keeps being served while others misbehave.
struct Bystander {
    client: async_nats::Client,
    subscriber: async_nats::Subscriber,
}

impl Bystander {
    fn start(runtime: &tokio::runtime::Runtime, node: &Node) -> Bystander {
        runtime.block_on(async {
            let client = connect(node).await;
            let subscriber = client.subscribe("bystander").await.unwrap();
            client.flush().await.unwrap();
            Bystander { client, subscriber }
        })
    }

    /// A round trip through the node: a marker published and received.
    fn check(&mut self, runtime: &tokio::runtime::Runtime, after: &str) {
        runtime.block_on(async {
            self.client
                .publish("bystander", after.to_owned().into())
                .await
                .unwrap();
            let message = tokio::time::timeout(WAIT, self.subscriber.next())
                .await
                .unwrap_or_else(|_| panic!("the bystander is served after {after}"))
                .unwrap();
            assert_eq!(&message.payload[..], after.as_bytes());
        });
    }
}

/// A NATS connection spoken raw.
struct Raw {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// The server's INFO line.
    info: String,
}

impl Raw {
    fn connect(node: &Node) -> Raw {
        let stream = TcpStream::connect(host_port(node)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut raw = Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
            info: String::new(),
        };
        raw.info = raw.line();
        assert!(raw.info.starts_with("INFO {"), "{}", raw.info);
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        // The node may close before it has read everything: not an error.
        let _ = self.stream.write_all(bytes);
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a line in time");
        line
    }

    /// Everything the node sends until it closes the connection.
    fn rest(&mut self) -> String {
        let mut rest = Vec::new();
        let started = Instant::now();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => {}
            // A reset after the node's last words (input it never read).
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(error) => panic!(
                "the node closes in time: {error} after {:?}",
                started.elapsed()
            ),
        }
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// A loopback port free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
