//! A revoked user, with real `starling node` processes: SIGHUP reloads the
//! `[[users]]` of the node's config file; an open connection whose user was
//! removed, or whose permissions changed, is closed with the reason (on the
//! Starling protocol and on the NATS protocol), a new one is refused, an
//! added user may connect, and a user left alike stays connected; a revoked
//! client of the library stops reconnecting. A restart with the user removed
//! refuses it too.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, ServerError};
use starling_transport::client::{Client, ClientError, ClientOptions};
use starling_transport::frame::control::ErrorBody;
use starling_transport::frame::{ErrorCode, Kind};

use common::*;

/// Longest wait for anything expected.
const WAIT: Duration = Duration::from_secs(10);

/// The users of the file before the reload: `alice` (a password), `bob`
/// and `dave` (tokens; dave may publish under `a.`).
fn before(alice_hash: &str) -> String {
    format!(
        r#"[[users]]
name = "alice"
password = "{alice_hash}"

[[users]]
name = "bob"
token = "bob-token"

[[users]]
name = "dave"
token = "dave-token"
publish = ["a.>"]
"#
    )
}

/// After: `alice` alike (the same hash), `bob` gone, `dave` allowed `b.>`
/// instead, `carol` new.
fn after(alice_hash: &str) -> String {
    format!(
        r#"[[users]]
name = "alice"
password = "{alice_hash}"

[[users]]
name = "dave"
token = "dave-token"
publish = ["b.>"]

[[users]]
name = "carol"
token = "carol-token"
"#
    )
}

fn sighup(node: &Node) {
    let pid = node.process.0.id().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
}

/// A Starling connection let in with `token`, spoken to frame by frame, so
/// that the node's last words can be read.
fn raw_connection(node: &Node, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(node.tcp.trim_start_matches("tcp://")).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(&hello_frame("", "", token)).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !frames_in(&received)
        .iter()
        .any(|(kind, _, _)| *kind == Kind::Hello)
    {
        let read = stream.read(&mut buffer).expect("the node's HELLO in time");
        assert!(
            read > 0,
            "closed before its HELLO: {:?}",
            frames_in(&received)
        );
        received.extend_from_slice(&buffer[..read]);
    }
    stream
}

/// Reads until the node closes `stream`; the error it gave last.
fn closed_with(mut stream: TcpStream) -> (ErrorCode, String) {
    let mut received = Vec::new();
    stream
        .read_to_end(&mut received)
        .expect("the node closes the connection in time");
    let (_, _, body) = frames_in(&received)
        .into_iter()
        .rfind(|(kind, _, _)| *kind == Kind::Err)
        .expect("an ERR before the close");
    let error = ErrorBody::decode(&body).unwrap();
    (error.code, error.reason)
}

fn assert_revoked(stream: TcpStream, says: &str) {
    let (code, reason) = closed_with(stream);
    assert_eq!(code, ErrorCode::Unauthorized, "{reason}");
    assert!(reason.contains("authorization revoked"), "{reason}");
    assert!(reason.contains(says), "{reason}");
}

#[test]
fn sighup_revokes_removed_users_on_open_connections_and_a_restart_keeps_them_out() {
    let dir = temp_dir();
    let config = dir.join("users.toml");
    let alice_hash = passwd("wonderland");
    std::fs::write(&config, before(&alice_hash)).unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let node = start_node(&args, &[]);

    let alice = Client::connect_with(&node.tcp, options("alice", "wonderland", "")).unwrap();
    let news = alice.subscribe("news").unwrap();
    let bob = raw_connection(&node, "bob-token");
    let dave = raw_connection(&node, "dave-token");
    // bob again, through the client library, which would reconnect.
    let bob_client = Client::connect_with(
        &node.tcp,
        ClientOptions {
            reconnect: true,
            ..options("", "", "bob-token")
        },
    )
    .unwrap();

    std::fs::write(&config, after(&alice_hash)).unwrap();
    sighup(&node);
    assert_revoked(bob, "user 'bob' was removed");
    assert_revoked(dave, "permissions of user 'dave' changed");
    // The revoked client gives up instead of reconnecting for ever: its
    // handshake is refused, so it closes.
    let deadline = Instant::now() + WAIT;
    while !matches!(bob_client.publish("news", b"x"), Err(ClientError::Closed)) {
        assert!(
            Instant::now() < deadline,
            "bob's client still retries after its user was removed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(bob_client.reconnects(), 0);

    // The reload is in force: bob is refused, carol let in, and alice,
    // alike, was never cut (her subscription still delivers).
    let refused = Client::connect_with(&node.tcp, options("", "", "bob-token")).unwrap_err();
    assert!(refused.to_string().contains("wrong token"), "{refused}");
    let carol = Client::connect_with(&node.tcp, options("", "", "carol-token")).unwrap();
    carol.publish("news", b"after the reload").unwrap();
    carol.flush().unwrap();
    let event = news.recv_timeout(WAIT).unwrap();
    assert_eq!(event.payload(), b"after the reload");
    assert!(alice.is_connected());

    // A restart reads the same file: bob stays out.
    drop((alice, carol, node));
    let node = start_node(&args, &[]);
    let refused = Client::connect_with(&node.tcp, options("", "", "bob-token")).unwrap_err();
    assert!(refused.to_string().contains("wrong token"), "{refused}");
    Client::connect_with(&node.tcp, options("alice", "wonderland", "")).unwrap();
    Client::connect_with(&node.tcp, options("", "", "carol-token")).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_revokes_a_removed_users_nats_connection() {
    let dir = temp_dir();
    let config = dir.join("users.toml");
    let alice_hash = tokio::task::block_in_place(|| passwd("wonderland"));
    std::fs::write(&config, before(&alice_hash)).unwrap();
    let node =
        tokio::task::block_in_place(|| start_node(&["--config", config.to_str().unwrap()], &[]));

    let (bob, mut errors) = with_server_errors(ConnectOptions::with_token("bob-token".into()));
    let bob = bob.connect(&node.nats).await.expect("bob gets in");
    bob.flush().await.unwrap();
    let alice = ConnectOptions::with_user_and_password("alice".into(), "wonderland".into())
        .connect(&node.nats)
        .await
        .expect("alice gets in");

    std::fs::write(&config, after(&alice_hash)).unwrap();
    sighup(&node);
    let said = tokio::time::timeout(WAIT, errors.recv())
        .await
        .expect("bob is told in time")
        .unwrap();
    assert_eq!(said, ServerError::AuthorizationViolation);

    let refused = tokio::time::timeout(
        WAIT,
        ConnectOptions::with_token("bob-token".into()).connect(&node.nats),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "bob got in again after his removal"
    );
    let carol = ConnectOptions::with_token("carol-token".into())
        .connect(&node.nats)
        .await
        .expect("carol, added, gets in");
    carol.flush().await.unwrap();
    // A round trip after the reload, on the connection alice had: never
    // cut, so never connected again.
    alice.flush().await.unwrap();
    let connects = alice.statistics().connects.load(Ordering::Relaxed);
    assert_eq!(connects, 1, "alice, alike, stays connected");
    drop(bob);
    tokio::task::block_in_place(|| drop(node));
    std::fs::remove_dir_all(Path::new(&dir)).unwrap();
}
