//! Meshes of full nodes inside one process, on free loopback ports: what the
//! demo runs on, and what benches measure the mesh with.

use std::time::{Duration, Instant};

use crate::cluster::ClusterConfig;
use crate::cluster::membership::MemberState;
use crate::cluster::tls::TlsSource;
use crate::cluster::view::ClusterView;
use crate::config::NodeConfig;
use crate::node::{Node, NodeError};

/// Starts node `name` of cluster `cluster_name` with a local TCP port, an
/// HTTP endpoint and a cluster port, all on free loopback ports, joining the
/// mesh through `seed` if given.
pub fn start_node(
    name: &str,
    cluster_name: &str,
    seed: Option<&Node>,
    tls: TlsSource,
) -> Result<Node, NodeError> {
    let seeds = seed
        .and_then(Node::cluster)
        .map(|seed| vec![seed.local_addr().to_string()])
        .unwrap_or_default();
    Node::start(NodeConfig {
        name: name.into(),
        listen: Some("127.0.0.1:0".into()),
        http: Some("127.0.0.1:0".into()),
        cluster: Some(ClusterConfig {
            node_name: name.into(),
            cluster_name: cluster_name.into(),
            listen: "127.0.0.1:0".into(),
            seeds,
            tls,
            ..ClusterConfig::default()
        }),
        ..NodeConfig::default()
    })
}

/// Polls `node`'s view of the mesh until `ready` holds; fails after
/// `timeout`, saying what `node` did not see.
pub fn wait_for(
    node: &Node,
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut(&ClusterView) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let view = node.cluster().and_then(|cluster| cluster.view());
        if view.as_ref().is_some_and(&mut ready) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not see {what} within {timeout:?}",
                node.name()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until every node has a link up with every other, and its
/// membership holds every other alive.
pub fn wait_linked(nodes: &[Node], timeout: Duration) -> Result<(), String> {
    for node in nodes {
        wait_for(node, "every other node linked and alive", timeout, |view| {
            let others = nodes.len() - 1;
            let alive = view
                .members
                .iter()
                .filter(|member| !member.this_node && member.state == MemberState::Alive)
                .count();
            view.links.iter().filter(|link| link.state == "up").count() == others && alive == others
        })?;
    }
    Ok(())
}
