//! The HTTP endpoint under abuse (slow clients, too many clients, a
//! half-sent request at shutdown) and what its `/metrics` says, against a
//! real `starling node`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use starling_transport::client::Client;

/// A node whose HTTP endpoint has the given `[limits]`.
fn node_with(limits: &str) -> Node {
    let dir = temp_dir();
    let config = dir.join("node.toml");
    std::fs::write(&config, format!("[limits]\n{limits}\n")).unwrap();
    let node = start_node(&["--config", config.to_str().unwrap()], &[]);
    std::fs::remove_dir_all(dir).unwrap();
    node
}

/// Waits until the node closes `stream` (end of file or reset), and returns
/// how long that took; fails after `deadline`.
fn closed_within(stream: &mut TcpStream, deadline: Duration) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(deadline)).unwrap();
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return started.elapsed(),
            // A 408 or 400 may come first: what matters is the close.
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return started.elapsed(),
            Err(error) => panic!("not closed within {deadline:?}: {error}"),
        }
    }
}

#[test]
fn a_slow_loris_is_cut_at_the_header_timeout_while_others_are_served() {
    let node = node_with("http_header_timeout_ms = 1000");
    // Fifty clients that send a request head a byte at a time, slower than
    // the timeout allows the whole head.
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut stream = TcpStream::connect(&node.http).unwrap();
            stream.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
            stream
        })
        .collect();
    let started = Instant::now();
    for _ in 0..3 {
        for stream in &mut slow {
            // The node may already have cut it: that is the point.
            let _ = stream.write_all(b"X");
        }
        // Meanwhile a client that sends its request whole is served.
        let (status, body) = get(&node.http, "/healthz");
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.0 200 OK", "ok\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for stream in &mut slow {
        closed_within(stream, Duration::from_secs(5));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "every slow client is cut soon after the 1 s header timeout, took {took:?}"
    );
}

#[test]
fn connections_past_the_limit_are_closed_at_once_and_the_endpoint_recovers() {
    let node = node_with("http_connections_max = 8");
    // Eight connections that say nothing hold every slot.
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(&node.http).unwrap())
        .collect();
    // Wait until the node has taken all eight: then the next is refused.
    wait_until(
        "a ninth connection is refused",
        Duration::from_secs(10),
        || {
            let mut ninth = TcpStream::connect(&node.http).unwrap();
            let _ = ninth.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
            let mut response = String::new();
            ninth
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            matches!(ninth.read_to_string(&mut response), Ok(0) | Err(_)) && response.is_empty()
        },
    );
    drop(idle);
    wait_until(
        "the endpoint serves again once the idle connections are gone",
        Duration::from_secs(10),
        || {
            let mut stream = TcpStream::connect(&node.http).unwrap();
            let _ = stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            response.ends_with("\r\n\r\nok\n")
        },
    );
}

#[test]
fn a_half_sent_request_does_not_keep_the_node_from_stopping() {
    let mut node = node_with("http_header_timeout_ms = 60000");
    let mut half = TcpStream::connect(&node.http).unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHo").unwrap();
    // The request has reached the node: a whole one on another connection
    // is answered after it was sent.
    let (status, _) = get(&node.http, "/healthz");
    assert_eq!(status, "HTTP/1.0 200 OK");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &node.process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = node.process.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the node still runs 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        started.elapsed()
    );
    closed_within(&mut half, Duration::from_secs(1));
}

/// The value of the `/metrics` sample that starts with `series` (name and
/// labels), if there is one.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_have_a_bounded_number_of_pattern_series_whose_counters_never_fall() {
    let node = node_with("metrics_patterns_max = 10");
    let client = Client::connect(&node.tcp).unwrap();
    let subscriptions: Vec<_> = (0..200)
        .map(|n| client.subscribe(&format!("m.{n}")).unwrap())
        .collect();
    for n in 0..200 {
        client.publish(&format!("m.{n}"), b"x").unwrap();
    }
    client.flush().unwrap();
    for subscription in &subscriptions {
        subscription
            .recv_timeout(Duration::from_secs(10))
            .expect("each subscription gets its event");
    }
    let (_, metrics) = get(&node.http, "/metrics");
    let series = metrics
        .lines()
        .filter(|line| line.starts_with("starling_pattern_delivered_total{"))
        .count();
    assert_eq!(
        series, 11,
        "ten of their own and one for the rest\n{metrics}"
    );
    // The client's request inbox has one of the ten.
    let own = metrics
        .lines()
        .filter(|line| line.starts_with(r#"starling_pattern_delivered_total{pattern="m."#))
        .count();
    assert_eq!(own, 9, "{metrics}");
    let other = r#"starling_pattern_delivered_total{pattern="(other)",queue_group=""}"#;
    assert_eq!(sample(&metrics, other), Some(191.0), "{metrics}");
    // Every subscription ends: the counters keep what they counted.
    client.close();
    wait_until(
        "the subscriptions are gone",
        Duration::from_secs(10),
        || subscription_count(&node) == 0,
    );
    let (_, metrics) = get(&node.http, "/metrics");
    assert_eq!(sample(&metrics, other), Some(191.0), "{metrics}");
    let gauge = r#"starling_pattern_subscriptions{pattern="(other)",queue_group=""}"#;
    assert_eq!(sample(&metrics, gauge), Some(0.0), "{metrics}");
}

/// A GET with an `Accept` header; returns the response's head and body.
fn get_accepting(address: &str, path: &str, accept: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_owned())
}

/// Each sample's name and labels, without its value, in order.
fn series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.rsplit_once(' ').unwrap().0)
        .collect()
}

#[test]
fn metrics_come_in_the_classic_text_or_in_openmetrics_as_the_scraper_asks() {
    let node = start_node(&[], &[]);
    let client = Client::connect(&node.tcp).unwrap();
    let subscription = client.subscribe("orders.>").unwrap();
    client.publish("orders.1", b"x").unwrap();
    client.flush().unwrap();
    subscription.recv_timeout(Duration::from_secs(10)).unwrap();
    let sample = "starling_client_events_in_total 1";
    let pattern = r#"starling_pattern_delivered_total{pattern="orders.>",queue_group=""} 1"#;

    let (head, text) = get_accepting(&node.http, "/metrics", "*/*");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    for line in [
        "# TYPE starling_client_events_in_total counter",
        sample,
        pattern,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }

    // What Prometheus sends.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (head, open) = get_accepting(&node.http, "/metrics", prometheus);
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    // OpenMetrics names a counter's family without `_total`; its samples
    // keep the names the classic text has.
    for line in ["# TYPE starling_client_events_in counter", sample, pattern] {
        assert!(open.lines().any(|l| l == line), "{line} in\n{open}");
    }
    assert!(open.ends_with("\n# EOF\n"), "{open}");
    assert_eq!(series(&text), series(&open));
}

/// `/v1/node` counts the open connections from a counter the server keeps
/// beside its registry (it used to list every connection under the
/// registry's lock, holding up accepts and closes): the count never falls
/// below the connections held open while others open and close around
/// them, and is exact once they settle. Its fields stay as they were.
#[test]
fn the_node_view_counts_connections_right_while_others_open_and_close() {
    let node = start_node(&["--io-threads", "2"], &[]);
    let view = get_json(&node, "/v1/node");
    let mut fields: Vec<&str> = view
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "connections",
            "io_backend",
            "io_threads",
            "memory",
            "name",
            "queue_slots",
            "queues",
            "started_unix_nanos",
            "subscriptions",
            "tcp",
            "uds",
            "uptime_seconds",
            "version"
        ]
    );
    let counted = || get_json(&node, "/v1/node")["connections"].as_u64().unwrap();
    let listed = || get_json(&node, "/v1/connections").as_array().unwrap().len() as u64;
    let mut held: Vec<Client> = (0..5)
        .map(|_| Client::connect(&node.tcp).unwrap())
        .collect();
    wait_until("five connections", Duration::from_secs(10), || {
        counted() == 5 && listed() == 5
    });

    let address = node.tcp.trim_start_matches("tcp://");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let churned = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    drop(TcpStream::connect(address).unwrap());
                    churned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        let mut polls = 0;
        while polls < 20 || churned.load(std::sync::atomic::Ordering::Relaxed) < 200 {
            let count = counted();
            assert!(count >= 5, "{count} connections counted, five held open");
            polls += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    wait_until(
        "the churned connections to close",
        Duration::from_secs(10),
        || counted() == 5 && listed() == 5,
    );
    for client in held.drain(2..) {
        client.close();
    }
    wait_until(
        "three held connections to close",
        Duration::from_secs(10),
        || counted() == 2 && listed() == 2,
    );
}
