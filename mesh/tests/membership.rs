//! Membership with real `starling node` processes on loopback: five nodes
//! joined in a chain of seeds find each other by gossip, a node killed with
//! SIGKILL is declared dead by every other while they go on delivering, and
//! once restarted it is alive again and served; a node that stops on
//! purpose is reported as having left, and leaves no warning in its peers'
//! logs (a killed one does); twenty short-lived nodes killed
//! just after joining are all declared dead within the stated bound. Every
//! process is killed when its test ends, pass or fail.

mod common;

use std::time::{Duration, Instant};

use common::*;
use starling_transport::client::{Client, ClientSubscription};

/// Generous: with the default timing (1 s probes, 4 probe periods to refute
/// a suspicion) a dead node is declared so in about 5 to 8 s, and within
/// 11 s in a cluster of up to 10 (README).
const DEATH_BOUND: Duration = Duration::from_secs(20);

/// README's figure for a cluster of up to 100 members when no node missed
/// the verdict, however many die at once: the links time out (5 s), the
/// suspicion times out (4·log10 n probe periods, and one more), the verdict
/// spreads (2·log2 N gossip rounds). Each survivor here knows and links to
/// every visitor, and suspects it itself.
const MASS_DEATH_BOUND: Duration = Duration::from_secs(17);

fn connect(node: &Node) -> Client {
    Client::connect(&node.tcp).unwrap()
}

/// Every node subscribes to `census.>`; each publishes `census.<name>`, and
/// every subscriber must get exactly one event from each.
fn census(nodes: &[&Node], subscriptions: &[ClientSubscription], clients: &[Client], round: &str) {
    for (node, client) in nodes.iter().zip(clients) {
        client
            .publish(&format!("census.{}", node.name), round.as_bytes())
            .unwrap();
        client.flush().unwrap();
    }
    let mut expected: Vec<String> = nodes
        .iter()
        .map(|node| format!("census.{} {round}", node.name))
        .collect();
    expected.sort();
    for (node, subscription) in nodes.iter().zip(subscriptions) {
        let mut received: Vec<String> = (0..nodes.len())
            .map(|_| {
                let event = subscription
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| panic!("{} receives round {round}", node.name));
                format!(
                    "{} {}",
                    event.subject(),
                    String::from_utf8_lossy(event.payload())
                )
            })
            .collect();
        received.sort();
        assert_eq!(received, expected, "what {} received", node.name);
    }
    // Nothing twice: whatever else is due arrives before the end markers.
    let subjects: Vec<String> = nodes
        .iter()
        .map(|node| format!("census.{}", node.name))
        .collect();
    let ends: Vec<(&Client, &str)> = clients
        .iter()
        .zip(&subjects)
        .map(|(client, subject)| (client, subject.as_str()))
        .collect();
    let census: Vec<_> = subscriptions.iter().map(|s| (s, "census.>")).collect();
    assert_nothing_more(&census, &ends);
}

fn subscribe_all(nodes: &[&Node]) -> (Vec<Client>, Vec<ClientSubscription>) {
    let clients: Vec<Client> = nodes.iter().map(|node| connect(node)).collect();
    let subscriptions = clients
        .iter()
        .map(|client| client.subscribe("census.>").unwrap())
        .collect();
    for node in nodes {
        wait_interest(nodes, &node.name, "census.>", None, true);
    }
    (clients, subscriptions)
}

/// Every node holds, for every other, the interest version that node
/// reports for itself: per-origin versions have converged.
fn assert_interest_versions_agree(nodes: &[&Node]) {
    let own: Vec<(String, u64)> = nodes
        .iter()
        .map(|node| {
            let view = get_json(node, "/v1/interest");
            (
                view["node_id"].as_str().unwrap().to_owned(),
                view["interest"]["version"].as_u64().unwrap(),
            )
        })
        .collect();
    for node in nodes {
        let view = get_json(node, "/v1/interest");
        for peer in view["interest"]["peers"].as_array().unwrap() {
            let id = peer["peer_id"].as_str().unwrap();
            let Some((_, version)) = own.iter().find(|(origin, _)| origin == id) else {
                continue;
            };
            assert_eq!(
                peer["version"].as_u64(),
                Some(*version),
                "{} holds {}'s version",
                node.name,
                peer["peer_name"]
            );
        }
    }
}

#[test]
fn a_killed_member_is_declared_dead_the_rest_deliver_and_once_restarted_it_is_alive_and_served() {
    // A chain: each node knows only the one before it. n0 learns of n4 only
    // by gossip, and must link to it all the same.
    let mut nodes: Vec<Node> = Vec::new();
    for index in 0..5 {
        let seed = nodes.last().map(|previous| previous.cluster.clone());
        nodes.push(start_mesh_node(&format!("n{index}"), seed.as_deref(), None));
    }
    let all: Vec<&Node> = nodes.iter().collect();
    wait_full_mesh(&all);
    for node in &all {
        let members = members_of(node);
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let expected: Vec<String> = all
            .iter()
            .filter(|other| other.name != node.name)
            .map(|other| other.name.clone())
            .collect();
        assert_eq!(names, expected, "{} knows every other member", node.name);
        assert!(
            members.iter().all(|m| m.state == "alive" && m.linked),
            "{}: {members:?}",
            node.name
        );
    }
    let (clients, subscriptions) = subscribe_all(&all);
    census(&all, &subscriptions, &clients, "before");

    // SIGKILL n2, the seed n3 joined through: no goodbye.
    let victim = nodes.remove(2);
    let victim_id = members_of(&nodes[0])
        .into_iter()
        .find(|m| m.name == "n2")
        .unwrap()
        .id;
    let victim_cluster = victim.cluster.clone();
    drop(victim);
    let survivors: Vec<&Node> = nodes.iter().collect();
    let survivor_clients: Vec<Client> = [0, 1, 3, 4]
        .into_iter()
        .map(|index| clients[index].clone())
        .collect();
    let mut subscriptions = subscriptions;
    subscriptions.remove(2);
    // Before any verdict, events flow among the rest as before.
    census(&survivors, &subscriptions, &survivor_clients, "just-killed");
    let declared = wait_member_state(&survivors, "n2", "dead", DEATH_BOUND);
    eprintln!("n2 killed: declared dead by all four others after {declared:?}");
    // Nobody else was suspected on the way.
    for node in &survivors {
        for member in members_of(node).iter().filter(|m| m.name != "n2") {
            assert_eq!(member.state, "alive", "{} on {}", member.name, node.name);
        }
    }
    // The dead member's interest waits out the grace period (10 s from its
    // links going down), in case it was only paused; then it goes.
    wait_interest(&survivors, "n2", "census.>", None, false);
    census(
        &survivors,
        &subscriptions,
        &survivor_clients,
        "after-verdict",
    );
    let (_, metrics) = get_from(&nodes[0], "/metrics");
    for line in [
        "starling_mesh_members_by_state{state=\"alive\"} 4",
        "starling_mesh_members_by_state{state=\"dead\"} 1",
        "starling_mesh_members_by_state{state=\"suspect\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert_interest_versions_agree(&survivors);

    // Restarted where it was, joining through n1: a new member (new id)
    // that everyone reports alive, links to, and serves.
    let restarted = start_mesh_node("n2", Some(&nodes[1].cluster), Some(&victim_cluster));
    let started = Instant::now();
    let everyone: Vec<&Node> = nodes.iter().chain([&restarted]).collect();
    wait_member_state(&survivors, "n2", "alive", DEATH_BOUND);
    wait_full_mesh(&everyone);
    eprintln!(
        "n2 restarted: alive and linked everywhere after {:?}",
        started.elapsed()
    );
    for node in &survivors {
        let n2 = members_of(node)
            .into_iter()
            .find(|m| m.name == "n2")
            .unwrap();
        assert_ne!(n2.id, victim_id, "{} knows the new start", node.name);
    }
    let (clients, subscriptions) = subscribe_all(&everyone);
    census(&everyone, &subscriptions, &clients, "after-restart");
}

#[test]
fn a_member_that_stops_is_reported_left_and_its_interest_goes() {
    let n0 = start_mesh_node("n0", None, None);
    let n1 = start_mesh_node("n1", Some(&n0.cluster), None);
    let mut n2 = start_mesh_node("n2", Some(&n1.cluster), None);
    let all = [&n0, &n1, &n2];
    wait_full_mesh(&all);
    let on_n2 = connect(&n2);
    let _subscription = on_n2.subscribe("going.>").unwrap();
    wait_interest(&all, "n2", "going.>", None, true);

    // SIGTERM: the node leaves the cluster before it stops.
    let pid = n2.process.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(n2.process.0.wait().unwrap().success());
    // Well under what a verdict of death takes: this is the departure
    // notice, not failure detection.
    let reported = wait_member_state(&[&n0, &n1], "n2", "left", Duration::from_secs(3));
    eprintln!("n2 stopped: reported left after {reported:?}");
    wait_interest(&[&n0, &n1], "n2", "going.>", None, false);
    for node in [&n0, &n1] {
        let members = members_of(node);
        let n2 = members.iter().find(|m| m.name == "n2").unwrap();
        assert!(!n2.linked);
        assert!(
            members
                .iter()
                .filter(|m| m.name != "n2")
                .all(|m| m.state == "alive")
        );
    }
}

/// Stops `node` with `signal` (`TERM`: it leaves the mesh; `KILL`) and waits
/// for it to exit.
fn signal(node: &mut Node, signal: &str) {
    let pid = node.process.0.id().to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid}");
    node.process.0.wait().unwrap();
}

/// The `WARN` lines of `node`'s log about `peer` (by name or address).
fn warnings_about(node: &Node, peer: &Node) -> Vec<String> {
    let mut lines = log_lines(node, &[" WARN ", &format!("peer={}", peer.name)]);
    lines.extend(log_lines(node, &[" WARN ", &peer.cluster]));
    lines
}

/// A node that stops on purpose (it says so as it closes its links) leaves
/// no warning in its peers' logs; a node killed does. As at the end of
/// `starling demo`: n1 and n2, seeded with n0, dialed it again while it was
/// stopping and warned "link failed: control stream: connection lost" or
/// "... the server refused to accept a new connection". Then n2 is killed
/// (SIGKILL), and n1 warns about it: n1's log is checked once that warning
/// is in, seconds after n0 left.
#[test]
fn a_node_that_stops_leaves_no_warning_in_its_peers_logs_and_a_killed_one_does() {
    let mut n0 = start_mesh_node("n0", None, None);
    let n1 = start_mesh_node("n1", Some(&n0.cluster), None);
    let mut n2 = start_mesh_node("n2", Some(&n0.cluster), None);
    wait_full_mesh(&[&n0, &n1, &n2]);

    signal(&mut n0, "TERM");
    wait_member_state(&[&n1, &n2], "n0", "left", Duration::from_secs(3));
    signal(&mut n2, "KILL");
    wait_until("n1 to warn about n2, killed", DEATH_BOUND, || {
        !warnings_about(&n1, &n2).is_empty()
    });
    assert_eq!(warnings_about(&n1, &n0), Vec::<String>::new(), "n1 on n0");
    assert_eq!(warnings_about(&n2, &n0), Vec::<String>::new(), "n2 on n0");
}

/// A member that left on purpose is not dialed again until a new start of
/// it is alive: its peers used to dial it 40-100 ms after "member left", to
/// carry membership's answer to its departure notice. n0 logs each dial it
/// starts (at debug level); n2 leaves, membership goes on for a few
/// packets (a later packet for n2 would dial it too), then n1 leaves: once
/// n0 logs that, its log holds every dial it made after n2 left.
#[test]
fn a_member_that_left_is_not_dialed_again() {
    let n0 = start_node(
        &[
            "--name",
            "n0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--insecure-dev-tls",
        ],
        &[("RUST_LOG", "warn,starling_mesh::cluster::driver=debug")],
    );
    let mut n1 = start_mesh_node("n1", Some(&n0.cluster), None);
    let mut n2 = start_mesh_node("n2", Some(&n0.cluster), None);
    wait_full_mesh(&[&n0, &n1, &n2]);

    signal(&mut n2, "TERM");
    wait_member_state(&[&n0, &n1], "n2", "left", Duration::from_secs(3));
    let sent = membership_packets_out(&n0);
    wait_until("n0 to send more membership packets", DEATH_BOUND, || {
        membership_packets_out(&n0) >= sent + 4
    });
    signal(&mut n1, "TERM");
    wait_until("n0 to log that n1 left", Duration::from_secs(5), || {
        !log_lines(&n0, &["member left", "peer=n1"]).is_empty()
    });
    for peer in [&n2, &n1] {
        assert_eq!(
            dials_after_leaving(&n0, peer),
            Vec::<String>::new(),
            "n0 dialed {} after it left",
            peer.name
        );
    }
}

/// The dials `node` logged to `peer`'s address after it logged that `peer`
/// left.
fn dials_after_leaving(node: &Node, peer: &Node) -> Vec<String> {
    let log = node.log.lock().unwrap();
    let left = format!("peer={}", peer.name);
    let address = format!("address={}", peer.cluster);
    let after = log
        .iter()
        .position(|line| line.contains("member left") && line.contains(&left))
        .expect("the departure is logged");
    log[after..]
        .iter()
        .filter(|line| line.contains("dialing") && line.contains(&address))
        .cloned()
        .collect()
}

/// The membership packets `node` sent so far (from `/metrics`).
fn membership_packets_out(node: &Node) -> u64 {
    let (_, metrics) = get_from(node, "/metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("starling_membership_packets_out_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("/metrics reports membership packets")
}

/// Issue 15: twenty nodes, each with its own name and address, join a
/// 3-node mesh one after another and are killed (SIGKILL) 200 ms after
/// joining (their seed knows them). Every survivor must hold every one it
/// heard of dead within `MASS_DEATH_BOUND` of the last kill (SWIM alone
/// probes one member per second per node: it took ~20 s).
#[test]
fn short_lived_nodes_killed_after_joining_are_all_declared_dead_within_the_bound() {
    const VISITORS: usize = 20;
    let a = start_mesh_node("a", None, None);
    let b = start_mesh_node("b", Some(&a.cluster), None);
    let c = start_mesh_node("c", Some(&b.cluster), None);
    let survivors = [&a, &b, &c];
    wait_full_mesh(&survivors);
    let mut visitors = Vec::new();
    for index in 0..VISITORS {
        let seed = survivors[index % survivors.len()];
        let visitor = start_mesh_node(&format!("visitor-{index}"), Some(&seed.cluster), None);
        wait_until(
            &format!("{} to know {}", seed.name, visitor.name),
            Duration::from_secs(10),
            || state_of(seed, &visitor.name).is_some(),
        );
        std::thread::sleep(Duration::from_millis(200));
        visitors.push((visitor.name.clone(), visitor.cluster.clone()));
        drop(visitor);
    }
    let last_kill = Instant::now();
    let is_visitor = |member: &MemberReport| {
        visitors
            .iter()
            .any(|(name, cluster)| &member.name == name || &member.name == cluster)
    };
    for node in survivors {
        loop {
            let alive: Vec<MemberReport> = members_of(node)
                .into_iter()
                .filter(|member| is_visitor(member) && member.state != "dead")
                .collect();
            if alive.is_empty() {
                break;
            }
            assert!(
                last_kill.elapsed() < MASS_DEATH_BOUND,
                "{} still holds {} of the killed nodes not dead {:?} after the last kill: {alive:?}",
                node.name,
                alive.len(),
                last_kill.elapsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "{VISITORS} killed: all dead on every survivor {:?} after the last kill",
        last_kill.elapsed()
    );
    for node in survivors {
        for member in members_of(node).iter().filter(|m| !is_visitor(m)) {
            assert_eq!(member.state, "alive", "{} on {}", member.name, node.name);
        }
    }
}
