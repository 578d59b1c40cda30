//! A real network partition: three `starling node` processes, each in a
//! network namespace of its own, wired to a bridge in a fourth namespace. The
//! test cuts one node off (its port on the bridge goes down), checks that
//! both sides go on serving their local subscribers and that each side
//! declares the other dead, heals the cut, and asserts that membership,
//! links, interest and cross-node delivery come back within a bound. Everything the test creates lives in namespaces it creates and
//! deletes; the host's own network is untouched.
//!
//! The subscriber on the cut-off node is the one made before the cut: a
//! link torn down and re-made must bring its interest back (nats-server
//! #3515: leaf nodes lost their subscriptions after a TCP reset).
//!
//! Needs root and iproute2 (`ip`); skips otherwise, printing `SKIPPED:` and
//! the reason where the test output shows it. CI runs as root and sets
//! `STARLING_REQUIRE=partition`, which turns a skip into a failure.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::*;

/// Longer than the links' idle timeout (5 s), so that the links really go
/// down and must be re-established; the cut also lasts until each side has
/// declared the other dead.
const PARTITION: Duration = Duration::from_secs(7);
/// How long each side may take to declare the other dead (about 5 to 8 s
/// with the default timing).
const VERDICT_BOUND: Duration = Duration::from_secs(20);
/// How long after healing membership and delivery must work again both
/// ways.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
const CLUSTER_PORT: u16 = 7401;

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("cannot run ip: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Namespaces `<tag>-n<i>` for the nodes, each with `eth0` at 10.213.0.<i+1>,
/// plugged into a bridge in namespace `<tag>-sw`. Deleted on drop.
struct Topology {
    switch: String,
    nodes: Vec<String>,
}

impl Topology {
    fn create(count: usize) -> Result<Topology, String> {
        let tag = format!("st{:06x}", starling_core::random_u64() & 0xff_ffff);
        let mut topology = Topology {
            switch: format!("{tag}-sw"),
            nodes: Vec::new(),
        };
        ip(&["netns", "add", &topology.switch])?;
        let sw = topology.switch.clone();
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for index in 0..count {
            let netns = format!("{tag}-n{index}");
            ip(&["netns", "add", &netns])?;
            topology.nodes.push(netns.clone());
            let port = format!("p{index}");
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &netns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            let address = format!("{}/24", Topology::address(index));
            ip(&["-n", &netns, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        }
        Ok(topology)
    }

    fn address(index: usize) -> String {
        format!("10.213.0.{}", index + 1)
    }

    fn cluster_address(index: usize) -> String {
        format!("{}:{CLUSTER_PORT}", Topology::address(index))
    }

    /// Unplugs node `index` from the bridge (`up` false) or plugs it back.
    fn plug(&self, index: usize, up: bool) {
        let port = format!("p{index}");
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch, "link", "set", &port, state]).unwrap();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for netns in self.nodes.iter().chain([&self.switch]) {
            let _ = ip(&["netns", "del", netns]);
        }
    }
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root: network namespaces need CAP_NET_ADMIN".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2's `ip` is not installed".into());
    }
    None
}

/// A `starling sub` inside a namespace, its lines on a channel.
struct Subscriber {
    _process: Process,
    lines: Receiver<String>,
}

impl Subscriber {
    fn start(node: &Node, pattern: &str) -> Subscriber {
        let mut child = starling_command(node.netns.as_deref())
            .args(["sub", "--server", &node.tcp, pattern])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Subscriber {
            _process: Process(child),
            lines,
        }
    }

    /// Waits up to `timeout` for a line starting with `subject `.
    fn saw(&self, subject: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.starts_with(&format!("{subject} ")) {
                return true;
            }
        }
        false
    }
}

fn publish(node: &Node, subject: &str) {
    let output = starling_command(node.netns.as_deref())
        .args(["pub", "--server", &node.tcp, subject, "x"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Publishes `<prefix>.<n>` from `from` until `to` has received one; returns
/// how long that took.
fn deliver_eventually(from: &Node, to: &Subscriber, prefix: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    for attempt in 0.. {
        let subject = format!("{prefix}.{attempt}");
        publish(from, &subject);
        if to.saw(&subject, Duration::from_millis(250)) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "{prefix}: no delivery from {} within {bound:?}",
            from.name
        );
    }
    unreachable!()
}

#[test]
fn a_partitioned_node_serves_locally_and_the_mesh_recovers_after_healing() {
    if let Some(reason) = unsupported() {
        return skip("partition", &reason);
    }
    let topology = Topology::create(3).expect("network namespaces can be made");
    let ns = |index: usize| Some(topology.nodes[index].as_str());
    let n0 = start_mesh_node_in(ns(0), "n0", None, &Topology::cluster_address(0));
    let seed0 = Topology::cluster_address(0);
    let n1 = start_mesh_node_in(ns(1), "n1", Some(&seed0), &Topology::cluster_address(1));
    let seed1 = Topology::cluster_address(1);
    let n2 = start_mesh_node_in(ns(2), "n2", Some(&seed1), &Topology::cluster_address(2));
    let all = [&n0, &n1, &n2];
    wait_full_mesh(&all);

    let on_n0 = Subscriber::start(&n0, "p.>");
    let on_n2 = Subscriber::start(&n2, "p.>");
    wait_interest(&all, "n0", "p.>", None, true);
    wait_interest(&all, "n2", "p.>", None, true);
    publish(&n1, "p.before");
    assert!(on_n0.saw("p.before", Duration::from_secs(5)));
    assert!(on_n2.saw("p.before", Duration::from_secs(5)));

    // Cut n2 off. Both sides go on serving their own subscribers.
    topology.plug(2, false);
    let cut = Instant::now();
    publish(&n2, "p.inside");
    assert!(
        on_n2.saw("p.inside", Duration::from_secs(2)),
        "n2 serves its local subscriber while cut off"
    );
    publish(&n0, "p.outside");
    assert!(
        on_n0.saw("p.outside", Duration::from_secs(2)),
        "n0 serves its local subscriber while n2 is cut off"
    );
    wait_until(
        "n0 to notice that n2 is gone",
        PARTITION + Duration::from_secs(5),
        || !peers_up(&n0).contains(&"n2".to_owned()),
    );
    wait_member_state(&[&n0, &n1], "n2", "dead", VERDICT_BOUND);
    let outside_verdict = cut.elapsed();
    wait_member_state(&[&n2], "n0", "dead", VERDICT_BOUND);
    wait_member_state(&[&n2], "n1", "dead", VERDICT_BOUND);
    let inside_verdict = cut.elapsed();
    eprintln!(
        "cut: n0 and n1 declared n2 dead {outside_verdict:?} after the cut, n2 declared them dead after {inside_verdict:?}"
    );
    std::thread::sleep(PARTITION.saturating_sub(cut.elapsed()));

    // Heal: membership, links, interest and delivery come back, both ways.
    topology.plug(2, true);
    let healed = Instant::now();
    for name in ["n0", "n1", "n2"] {
        let observers: Vec<&Node> = all.iter().copied().filter(|n| n.name != name).collect();
        wait_member_state(&observers, name, "alive", RECOVERY_BOUND);
    }
    let members_back = healed.elapsed();
    wait_until("the mesh to re-form", RECOVERY_BOUND, || {
        all.iter().all(|node| peers_up(node).len() == 2)
    });
    let to_n2 = deliver_eventually(&n0, &on_n2, "p.after.n0", RECOVERY_BOUND);
    let to_n0 = deliver_eventually(&n2, &on_n0, "p.after.n2", RECOVERY_BOUND);
    let recovered = healed.elapsed();
    eprintln!(
        "partition of {:?}: every member alive everywhere {members_back:?} after healing; \
         delivery across the healed cut after {recovered:?} \
         (n0 -> n2 within {to_n2:?}, then n2 -> n0 within {to_n0:?})",
        healed - cut
    );
    assert!(recovered < RECOVERY_BOUND);
}
