//! What deploy/ relies on, checked against the node it deploys: `starling
//! health` and `starling cert cluster` (the image's health check and the
//! compose file's certificate service), seeds and advertised addresses by
//! name, the systemd unit and its example configuration, and the Kubernetes
//! manifests (rendered, validated against the Kubernetes schemas and checked
//! for the invariants that matter, by deploy/tests/check_k8s.py).
//!
//! The containers module runs the image (built by `scripts/image`) as a
//! 3-node cluster with Docker Compose.
//!
//! The tools these need (systemd-analyze; python3 with kubernetes-validate;
//! Docker and the image) are installed and built by `.ci/run`, which sets
//! `STARLING_REQUIRE=deploy,containers`: there a missing tool fails the
//! test; elsewhere the test prints `SKIPPED: <test>: <reason>` and passes.

mod common;
#[path = "deploy/containers.rs"]
mod containers;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{get_json, run, skip, start_node, temp_dir, text, wait_full_mesh};
use starling_mesh::config::{NodeConfig, Overrides};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `program args` runs and succeeds; if not, the test `name` is
/// skipped (or fails, where `STARLING_REQUIRE` names it).
fn tool_works(name: &str, program: &str, args: &[&str], what: &str) -> bool {
    let works = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|output| output.status.success());
    if !works {
        skip(name, &format!("{what} is missing"));
    }
    works
}

#[test]
fn health_is_zero_for_a_serving_node_and_one_otherwise() {
    let node = start_node(&[], &[]);
    for endpoint in [node.http.clone(), format!("http://{}/", node.http)] {
        let output = run(&["health", "--http", &endpoint]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(text(&output.stdout).starts_with("healthy"));
    }
    let endpoint = node.http.clone();
    drop(node);
    let output = run(&["health", "--http", &endpoint]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).starts_with("unhealthy"),
        "{}",
        text(&output.stderr)
    );
    let output = run(&["health", "--http", "https://127.0.0.1:1"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("only http://"));
}

/// `starling cert cluster` writes what is missing and keeps the rest; two
/// nodes with its certificates form a mesh, one found by name (with a seed
/// that does not resolve beside it, which must not stop the node).
#[test]
fn cluster_certificates_and_seeds_by_name_make_a_mesh() {
    let dir = temp_dir();
    let certs = dir.to_str().unwrap();
    let output = run(&["cert", "cluster", "--dir", certs, "node-a"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let (ca, node_a) = (read("ca.pem"), read("node-a.pem"));
    let output = run(&["cert", "cluster", "--dir", certs, "node-a", "node-b"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout).matches("wrote").count(),
        2,
        "node-b's pair only"
    );
    assert_eq!((read("ca.pem"), read("node-a.pem")), (ca, node_a), "kept");

    // A port for node-a to advertise under a name: bound, read, freed.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tls = |name: &str| {
        [
            format!("--tls-cert={certs}/{name}.pem"),
            format!("--tls-key={certs}/{name}-key.pem"),
            format!("--tls-ca={certs}/ca.pem"),
        ]
    };
    let listen = format!("--cluster-listen=127.0.0.1:{port}");
    let advertise = format!("--cluster-advertise=localhost:{port}");
    let a_tls = tls("node-a");
    let mut a_args = vec!["--name", "node-a", &listen, &advertise];
    a_args.extend(a_tls.iter().map(String::as_str));
    let a = start_node(&a_args, &[]);
    let seed = format!("--seed=localhost:{port}");
    let b_tls = tls("node-b");
    let mut b_args = vec![
        "--name",
        "node-b",
        "--cluster-listen=127.0.0.1:0",
        "--seed=starling-no-such-node.invalid:7401",
        &seed,
    ];
    b_args.extend(b_tls.iter().map(String::as_str));
    let b = start_node(&b_args, &[]);
    wait_full_mesh(&[&a, &b]);
    let members = get_json(&b, "/v1/members");
    let node_a = members
        .as_array()
        .unwrap()
        .iter()
        .find(|member| member["name"] == "node-a")
        .expect("node-b knows node-a");
    assert_eq!(node_a["advertise"], format!("localhost:{port}"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_systemd_unit_verifies_and_its_example_configuration_loads() {
    let config = repo().join("deploy/systemd/starling.toml");
    let loaded = NodeConfig::load(Some(&config), Overrides::default()).unwrap();
    let cluster = loaded.cluster.expect("the example joins a mesh");
    assert!(
        !cluster.seeds.contains(cluster.advertise.as_ref().unwrap()),
        "the node's own name is not dialed"
    );
    if !tool_works(
        "deploy",
        "systemd-analyze",
        &["--version"],
        "systemd-analyze",
    ) {
        return;
    }
    // verify checks that ExecStart's program exists: point it at this build.
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/starling.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/starling node --config "));
    let dir = temp_dir();
    let copy = dir.join("starling.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/starling", common::BINARY),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    // verify exits 0 on many mistakes (an unknown key, a bad value): what it
    // prints is the verdict.
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "{said}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_kubernetes_manifests_render_validate_and_agree_with_the_node() {
    if !tool_works(
        "deploy",
        "python3",
        &["-c", "import kubernetes_validate, yaml"],
        "python3 with kubernetes-validate (pip install kubernetes-validate)",
    ) {
        return;
    }
    let output = Command::new("python3")
        .arg(repo().join("deploy/tests/check_k8s.py"))
        .args(["--starling", common::BINARY])
        .output()
        .unwrap();
    print!("{}", text(&output.stdout));
    assert!(output.status.success(), "{}", text(&output.stderr));
}
