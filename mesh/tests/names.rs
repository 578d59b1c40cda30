//! One live node per name, with real `starling node` processes on
//! loopback: a second node started under the name of a live member (a peer
//! of its seed, or the seed itself) is refused and exits non-zero saying
//! which node holds the name, and the mesh goes on without it; a node
//! killed and started again elsewhere under its name is taken back. Every
//! process is killed when its test ends, pass or fail.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use starling_transport::client::Client;

/// Twice the idle timeout (5 s): how long a node tries before it takes the
/// refusal of its name as final; and room for the redials.
const REFUSAL_BOUND: Duration = Duration::from_secs(25);

/// Starts `starling node --name NAME` joining through `seed`, with its
/// output piped, for a test that waits for it to exit.
fn start_second(name: &str, seed: &str) -> Process {
    let child = starling(&[
        "node",
        "--name",
        name,
        "--listen",
        "127.0.0.1:0",
        "--http",
        "",
        "--nats-listen",
        "",
        "--cluster-listen",
        "127.0.0.1:0",
        "--insecure-dev-tls",
        "--seed",
        seed,
    ])
    .env_remove("STARLING_NAME")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    Process(child)
}

#[test]
fn a_second_live_node_under_a_members_name_is_refused_and_exits() {
    let n1 = start_mesh_node("n1", None, None);
    let n2 = start_mesh_node("n2", Some(&n1.cluster), None);
    wait_full_mesh(&[&n1, &n2]);
    // Both through n1: one takes the name of n1's peer, one n1's own.
    let mut impostors = [
        (start_second("n2", &n1.cluster), &n2),
        (start_second("n1", &n1.cluster), &n1),
    ];
    for (impostor, holder) in &mut impostors {
        let output = wait_output(impostor, REFUSAL_BOUND);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let why = format!(
            "error: the mesh refused this node: a live node named '{}' (address {}) is already a member of cluster 'starling'",
            holder.name, holder.cluster
        );
        assert!(stderr.lines().any(|line| line == why), "{why} in\n{stderr}");
    }
    // The mesh never took them in, and goes on.
    for (node, other) in [(&n1, "n2"), (&n2, "n1")] {
        let members: Vec<(String, String)> = members_of(node)
            .into_iter()
            .map(|m| (m.name, m.state))
            .collect();
        assert_eq!(members, [(other.to_owned(), "alive".to_owned())]);
        assert_eq!(peers_up(node), [other]);
    }
}

#[test]
fn a_node_killed_and_started_elsewhere_under_its_name_is_taken_back() {
    let n1 = start_mesh_node("n1", None, None);
    let mut n2 = start_mesh_node("n2", Some(&n1.cluster), None);
    wait_full_mesh(&[&n1, &n2]);
    n2.process.0.kill().unwrap();
    n2.process.0.wait().unwrap();
    // Another port: n1 refuses the name while its link to the killed
    // process still looks up (until the idle timeout), then lets it in.
    let again = start_mesh_node("n2", Some(&n1.cluster), None);
    assert_ne!(again.cluster, n2.cluster);
    wait_until("n1 links to n2 at its new address", REFUSAL_BOUND, || {
        get_json(&n1, "/v1/links")
            .as_array()
            .unwrap()
            .iter()
            .any(|link| {
                link["peer_name"] == "n2"
                    && link["state"] == "up"
                    && link["address"] == again.cluster.as_str()
            })
    });
    // It serves: a subscriber on it gets what n1 publishes (once its
    // interest has reached n1, which a second peer named n2, the killed
    // one, may still share the interest report with: publish until then).
    let subscriber = Client::connect(&again.tcp).unwrap();
    let orders = subscriber.subscribe("orders.>").unwrap();
    subscriber.flush().unwrap();
    let publisher = Client::connect(&n1.tcp).unwrap();
    wait_until(
        "an event from n1 reaches the new n2",
        Duration::from_secs(10),
        || {
            publisher.publish("orders.1", b"to the new n2").unwrap();
            publisher.flush().unwrap();
            orders
                .recv_timeout(Duration::from_millis(50))
                .is_ok_and(|event| event.payload() == b"to the new n2")
        },
    );
}
