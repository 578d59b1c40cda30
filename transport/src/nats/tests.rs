//! The session against a real bus, and the parser under random input.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use proptest::prelude::*;
use starling_core::{Bus, SubscribeOptions};

use super::parser::{ClientOp, MAX_CONTROL_LINE, Parsed, Parser};
use super::proto::{self, ServerInfo};
use super::session::{Close, Input, NatsConfig, Session};
use crate::auth::{Authentication, Authenticator, Permissions, SubjectRules, User, UserSecret};
use crate::auth::{VerifierSettings, hash_password};
use crate::budget::Budget;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn config(token: Option<&str>) -> Arc<NatsConfig> {
    config_with(Authenticator::new(token.map(Into::into), Vec::new()))
}

fn config_with(auth: Authenticator) -> Arc<NatsConfig> {
    Arc::new(NatsConfig {
        info: ServerInfo {
            server_id: "test".into(),
            server_name: "test".into(),
            version: super::NATS_VERSION.into(),
            go: "starling".into(),
            host: "127.0.0.1".into(),
            port: 4222,
            headers: true,
            auth_required: auth.required(),
            tls_required: false,
            tls_verify: false,
            max_payload: 1024,
            proto: 1,
            client_id: 0,
            client_ip: String::new(),
            ldm: false,
        },
        // A short failed-login delay: these tests refuse several.
        auth: Arc::new(Authentication::with_verifier(
            auth,
            VerifierSettings {
                threads: 1,
                queue: 8,
                failure_delay: Duration::from_millis(1),
            },
        )),
        max_control_line: MAX_CONTROL_LINE,
        subscriptions_max: 4,
        node_subscriptions: Arc::new(Budget::new(6)),
        mailbox: SubscribeOptions::default(),
        max_pings_out: 2,
    })
}

/// Feeds `input` to the session as the listener would, publishing on `bus`;
/// returns what it wrote and whether it closed.
fn run(session: &mut Session, bus: &Bus, input: &[u8]) -> (String, Option<Close>) {
    let mut out = Vec::new();
    let mut at = 0;
    let closed = loop {
        match session.handle_input(&input[at..], &mut out) {
            Ok(Input::Handled { used }) => at += used,
            Ok(Input::Publish { used, publish }) => {
                let outcome = bus.publish_message(&publish.message());
                if let Err(close) = session.published(&publish, outcome, &mut out) {
                    break Some(close);
                }
                at += used;
            }
            Ok(Input::Verifying { used, verification }) => {
                let result = wait(|cx| verification.poll(cx));
                if let Err(close) = session.verified(result, &mut out) {
                    break Some(close);
                }
                at += used;
            }
            Ok(Input::Incomplete { .. }) => break None,
            Err(close) => break Some(close),
        }
    };
    while let Some(event) = session.mailbox().try_recv() {
        session.deliver(&event, &mut out);
    }
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Unparks the thread that waits.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls until ready, parking the thread in between.
fn wait<T>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(value) = poll(&mut cx) {
            return value;
        }
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

#[test]
fn pub_sub_with_headers_and_auto_unsubscribe() {
    let bus = Bus::default();
    let mut session = Session::new(config(None), &bus, 1, LOCAL);
    let (out, closed) = run(
        &mut session,
        &bus,
        b"CONNECT {\"verbose\":true,\"headers\":true}\r\nSUB a.* 1\r\nUNSUB 1 2\r\n",
    );
    assert_eq!((out.as_str(), closed), ("+OK\r\n+OK\r\n+OK\r\n", None));
    let (out, _) = run(
        &mut session,
        &bus,
        b"PUB a.x r 2\r\nhi\r\nHPUB a.y 18 20\r\nNATS/1.0\r\nK: v\r\n\r\nyo\r\nPUB a.z 0\r\n\r\n",
    );
    assert_eq!(
        out,
        "+OK\r\n+OK\r\n+OK\r\nMSG a.x 1 r 2\r\nhi\r\nHMSG a.y 1 18 20\r\nNATS/1.0\r\nK: v\r\n\r\nyo\r\n",
        "the third message is past UNSUB's maximum"
    );
    assert_eq!(bus.stats().subscriptions, 0, "unsubscribed after 2");
}

#[test]
fn what_was_published_before_a_ping_goes_out_before_the_pong() {
    let bus = Bus::default();
    let mut session = Session::new(config(None), &bus, 1, LOCAL);
    let mut out = Vec::new();
    let input = b"SUB a 1\r\nPUB a 1\r\nx\r\nPING\r\n";
    let mut at = 0;
    while at < input.len() {
        match session.handle_input(&input[at..], &mut out).unwrap() {
            Input::Handled { used } => at += used,
            Input::Publish { used, publish } => {
                let outcome = bus.publish_message(&publish.message());
                session.published(&publish, outcome, &mut out).unwrap();
                at += used;
            }
            Input::Incomplete { .. } | Input::Verifying { .. } => {
                unreachable!("the input is whole, and no password is asked")
            }
        }
    }
    assert_eq!(out, b"MSG a 1 1\r\nx\r\nPONG\r\n");
}

/// What a client that takes no-responders statuses and holds
/// `subscriptions` is told when it requests `svc`, which nobody serves, with
/// `_INBOX.x.1` as its reply subject.
fn answer_to_a_request_nobody_serves(subscriptions: &str) -> String {
    let bus = Bus::default();
    let mut session = Session::new(config(None), &bus, 1, LOCAL);
    let input = format!(
        "CONNECT {{\"headers\":true,\"no_responders\":true}}\r\n{subscriptions}PUB svc _INBOX.x.1 0\r\n\r\n"
    );
    run(&mut session, &bus, input.as_bytes()).0
}

#[test]
fn a_request_to_nobody_gets_a_503_on_the_inbox() {
    assert_eq!(
        answer_to_a_request_nobody_serves("SUB _INBOX.x.* 9\r\n"),
        "HMSG _INBOX.x.1 9 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    );
}

/// Of several subscriptions on the reply subject, the oldest gets the 503,
/// in every session: each session's map of subscriptions iterates in an
/// order of its own (a fuzz run found the same stream answered with either
/// sid).
#[test]
fn a_503_goes_to_the_oldest_of_the_subscriptions_on_the_inbox() {
    for _ in 0..32 {
        assert_eq!(
            answer_to_a_request_nobody_serves(
                "SUB _INBOX.> 5\r\nSUB _INBOX.x.* 3\r\nSUB _INBOX.x.1 4\r\n"
            ),
            "HMSG _INBOX.x.1 5 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
        );
    }
}

#[test]
fn nothing_but_connect_before_authentication() {
    let bus = Bus::default();
    for input in [
        &b"PUB a 0\r\n\r\n"[..],
        b"CONNECT {\"auth_token\":\"no\"}\r\n",
        b"x",
    ] {
        let mut session = Session::new(config(Some("secret")), &bus, 1, LOCAL);
        let (out, closed) = run(&mut session, &bus, input);
        assert_eq!(out, "-ERR 'Authorization Violation'\r\n");
        assert!(closed.is_some());
    }
    let mut session = Session::new(config(Some("secret")), &bus, 1, LOCAL);
    let (out, closed) = run(
        &mut session,
        &bus,
        b"CONNECT {\"auth_token\":\"secret\"}\r\nPING\r\n",
    );
    assert_eq!((out.as_str(), closed), ("PONG\r\n", None));
}

#[test]
fn errors_are_nats_servers() {
    let bus = Bus::default();
    let cases: [(&[u8], &str, bool); 6] = [
        (b"SUB a..b 1\r\n", "-ERR 'Invalid Subject'\r\n", false),
        (b"FOO\r\n", "-ERR 'Unknown Protocol Operation'\r\n", true),
        (
            b"PUB a 2048\r\n",
            "-ERR 'Maximum Payload Violation'\r\n",
            true,
        ),
        (
            b"PUB a 1\r\nxyz\r\n",
            "-ERR 'Unknown Protocol Operation'\r\n",
            true,
        ),
        (b"PUB a b c d\r\n", "", true),
        (
            b"CONNECT {\"pedantic\":true}\r\nPUB a.* 0\r\n\r\n",
            "-ERR 'Invalid Publish Subject'\r\n",
            false,
        ),
    ];
    for (input, expected, closes) in cases {
        let mut session = Session::new(config(None), &bus, 1, LOCAL);
        let (out, closed) = run(&mut session, &bus, input);
        assert_eq!(
            (out.as_str(), closed.is_some()),
            (expected, closes),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
    let mut session = Session::new(config(None), &bus, 1, LOCAL);
    let (out, _) = run(
        &mut session,
        &bus,
        b"SUB a 1\r\nSUB b 2\r\nSUB c 3\r\nSUB d 4\r\nSUB e 5\r\n",
    );
    assert_eq!(out, "-ERR 'maximum subscriptions exceeded'\r\n");
}

#[test]
fn the_node_wide_subscription_budget_is_shared() {
    // 4 per connection, 6 in all (see `config_with`).
    let bus = Bus::default();
    let config = config(None);
    let mut first = Session::new(config.clone(), &bus, 1, LOCAL);
    let mut second = Session::new(config.clone(), &bus, 2, LOCAL);
    let four = b"SUB a 1\r\nSUB b 2\r\nSUB c 3\r\nSUB d 4\r\n";
    assert_eq!(run(&mut first, &bus, four), (String::new(), None));
    let (out, _) = run(&mut second, &bus, b"SUB a 1\r\nSUB b 2\r\nSUB c 3\r\n");
    assert_eq!(out, "-ERR 'maximum subscriptions exceeded'\r\n");
    assert_eq!(config.node_subscriptions.held(), 6);
    run(&mut first, &bus, b"UNSUB 1\r\n");
    assert_eq!(
        run(&mut second, &bus, b"SUB c 3\r\n"),
        (String::new(), None)
    );
    drop(first);
    assert_eq!(
        config.node_subscriptions.held(),
        3,
        "the closed one's are back"
    );
}

#[test]
fn unanswered_pings_make_a_connection_stale() {
    let bus = Bus::default();
    let mut session = Session::new(config(None), &bus, 1, LOCAL);
    let mut out = Vec::new();
    session.handle_ping_timer(&mut out).unwrap();
    run(&mut session, &bus, b"PONG\r\n");
    session.handle_ping_timer(&mut out).unwrap();
    session.handle_ping_timer(&mut out).unwrap();
    assert!(session.handle_ping_timer(&mut out).is_err());
    assert_eq!(out, b"PING\r\nPING\r\nPING\r\n-ERR 'Stale Connection'\r\n");
    let mut out = Vec::new();
    session.enter_lame_duck(&mut out);
    let info = String::from_utf8(out).unwrap();
    assert!(
        info.starts_with("INFO {") && info.contains("\"ldm\":true"),
        "{info}"
    );
}

#[test]
fn a_starling_event_with_headers_reaches_a_nats_client_as_hmsg() {
    let bus = Bus::default();
    let mut session = Session::new(config(None), &bus, 1, LOCAL);
    run(
        &mut session,
        &bus,
        b"CONNECT {\"headers\":true}\r\nSUB orders.> s1\r\n",
    );
    bus.request_with_headers(
        "orders.eu",
        &[starling_core::Header("ce-type", b"created")],
        b"{}",
        Duration::from_millis(1),
    )
    .unwrap_err();
    let (out, _) = run(&mut session, &bus, b"");
    let inbox = out.split(' ').nth(3).unwrap().to_owned();
    assert_eq!(
        out,
        format!("HMSG orders.eu s1 {inbox} 30 32\r\nNATS/1.0\r\nce-type: created\r\n\r\n{{}}\r\n")
    );
}

/// A node with two users: `alice` (a password; orders only, not the US
/// ones) and `svc` (a token; may subscribe to `svc.*` and publish nothing).
fn users() -> Authenticator {
    let rules = |allow: &[&str], deny: &[&str]| SubjectRules {
        allow: Some(allow.iter().map(|p| p.to_string()).collect()),
        deny: deny.iter().map(|p| p.to_string()).collect(),
    };
    Authenticator::new(
        None,
        vec![
            User {
                name: "alice".into(),
                secret: UserSecret::PasswordHash(hash_password("pw")),
                permissions: Permissions {
                    publish: rules(&["orders.>", "svc.*"], &["orders.us.>"]),
                    subscribe: rules(&["orders.>"], &["orders.us.>"]),
                },
            },
            User {
                name: "svc".into(),
                secret: UserSecret::Token("svc-token".into()),
                permissions: Permissions {
                    publish: rules(&[], &[]),
                    subscribe: rules(&["svc.*"], &[]),
                },
            },
        ],
    )
}

#[test]
fn users_authenticate_with_user_and_pass_or_a_token() {
    let bus = Bus::default();
    let config = config_with(users());
    assert!(config.info.auth_required);
    for refused in [
        &b"CONNECT {\"user\":\"alice\",\"pass\":\"wrong\"}\r\n"[..],
        b"CONNECT {\"user\":\"mallory\",\"pass\":\"pw\"}\r\n",
        b"CONNECT {}\r\n",
        b"CONNECT {\"auth_token\":\"nope\"}\r\n",
    ] {
        let mut session = Session::new(config.clone(), &bus, 1, LOCAL);
        let (out, closed) = run(&mut session, &bus, refused);
        assert_eq!(out, "-ERR 'Authorization Violation'\r\n");
        assert!(closed.is_some());
    }
    for accepted in [
        &b"CONNECT {\"user\":\"alice\",\"pass\":\"pw\"}\r\nPING\r\n"[..],
        b"CONNECT {\"auth_token\":\"svc-token\"}\r\nPING\r\n",
    ] {
        let mut session = Session::new(config.clone(), &bus, 1, LOCAL);
        assert_eq!(
            run(&mut session, &bus, accepted),
            ("PONG\r\n".to_owned(), None)
        );
    }
}

#[test]
fn permissions_refuse_with_nats_servers_texts_and_nothing_else_happens() {
    let bus = Bus::default();
    let watcher = bus.subscribe(">").unwrap();
    let mut alice = Session::new(config_with(users()), &bus, 1, LOCAL);
    let (out, closed) = run(
        &mut alice,
        &bus,
        b"CONNECT {\"user\":\"alice\",\"pass\":\"pw\"}\r\n\
          PUB orders.us.1 1\r\nx\r\nPUB payments.1 1\r\nx\r\n\
          SUB *.eu.* 1\r\nSUB > q 2\r\nSUB orders.us.* 3\r\nSUB $SYS.> 4\r\n\
          PUB orders.eu.1 6\r\nmarker\r\nPING\r\n",
    );
    assert_eq!(closed, None, "permission errors do not close");
    assert_eq!(
        out,
        "-ERR 'Permissions Violation for Publish to \"orders.us.1\"'\r\n\
         -ERR 'Permissions Violation for Publish to \"payments.1\"'\r\n\
         -ERR 'Permissions Violation for Subscription to \"*.eu.*\"'\r\n\
         -ERR 'Permissions Violation for Subscription to \">\" using queue \"q\"'\r\n\
         -ERR 'Permissions Violation for Subscription to \"orders.us.*\"'\r\n\
         -ERR 'Permissions Violation for Subscription to \"$SYS.>\"'\r\n\
         PONG\r\n"
    );
    let first = watcher.try_recv().expect("the marker");
    assert_eq!(first.subject(), "orders.eu.1", "nothing refused got out");
    assert_eq!(
        bus.stats().subscriptions,
        1,
        "no refused subscription exists"
    );
}

#[test]
fn a_subscription_overlapping_a_deny_never_delivers_a_denied_subject() {
    let bus = Bus::default();
    let mut alice = Session::new(config_with(users()), &bus, 1, LOCAL);
    run(
        &mut alice,
        &bus,
        b"CONNECT {\"user\":\"alice\",\"pass\":\"pw\"}\r\nSUB orders.> 1\r\n",
    );
    for subject in ["orders.us.1", "orders.eu.1", "orders.us.2", "orders.eu.2"] {
        bus.publish(subject, b"x").unwrap();
    }
    let (out, _) = run(&mut alice, &bus, b"");
    assert_eq!(
        out,
        "MSG orders.eu.1 1 1\r\nx\r\nMSG orders.eu.2 1 1\r\nx\r\n"
    );
}

#[test]
fn replies_reach_only_the_requester_and_only_a_responder_may_answer() {
    let bus = Bus::default();
    let config = config_with(users());
    let connect_alice = &b"CONNECT {\"user\":\"alice\",\"pass\":\"pw\"}\r\n"[..];
    let mut requester = Session::new(config.clone(), &bus, 1, LOCAL);
    let mut thief = Session::new(config.clone(), &bus, 2, LOCAL);
    let mut responder = Session::new(config, &bus, 3, LOCAL);
    run(&mut requester, &bus, connect_alice);
    run(&mut thief, &bus, connect_alice);
    let (out, _) = run(
        &mut responder,
        &bus,
        b"CONNECT {\"auth_token\":\"svc-token\"}\r\nSUB svc.quote 1\r\n\
          PUB _INBOX.r.1 5\r\nspoof\r\n",
    );
    assert_eq!(
        out, "-ERR 'Permissions Violation for Publish to \"_INBOX.r.1\"'\r\n",
        "no request received: answering is spoofing"
    );
    // Both may subscribe to the inbox; only the requester's requests
    // make its replies theirs to read.
    run(
        &mut requester,
        &bus,
        b"SUB _INBOX.r.* 9\r\nPUB svc.quote _INBOX.r.1 1\r\n?\r\n",
    );
    run(&mut thief, &bus, b"SUB _INBOX.r.* 9\r\nSUB _INBOX.> 8\r\n");
    let (out, _) = run(&mut responder, &bus, b"");
    assert_eq!(out, "MSG svc.quote 1 _INBOX.r.1 1\r\n?\r\n");
    let (out, _) = run(
        &mut responder,
        &bus,
        b"PUB _INBOX.r.1 6\r\nanswer\r\nPUB _INBOX.r.1 5\r\nagain\r\n",
    );
    assert_eq!(
        out, "-ERR 'Permissions Violation for Publish to \"_INBOX.r.1\"'\r\n",
        "one answer per request"
    );
    let (out, _) = run(&mut requester, &bus, b"");
    assert_eq!(out, "MSG _INBOX.r.1 9 6\r\nanswer\r\n");
    let (out, _) = run(&mut thief, &bus, b"PING\r\n");
    assert_eq!(out, "PONG\r\n", "the thief read nothing");
}

/// Valid operations, for chunking tests.
fn operation() -> impl Strategy<Value = Vec<u8>> {
    let token = "[a-z]{1,6}";
    prop_oneof![
        Just(b"PING\r\n".to_vec()),
        Just(b"PONG\r\n".to_vec()),
        (token, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(subject, payload)| {
            let mut op = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
            op.extend_from_slice(&payload);
            op.extend_from_slice(b"\r\n");
            op
        }),
        (token, token, "[a-z ]{0,10}").prop_map(|(subject, reply, value)| {
            let block = format!("NATS/1.0\r\nK: {value}\r\n\r\n");
            format!(
                "HPUB {subject} {reply} {} {}\r\n{block}\r\n",
                block.len(),
                block.len()
            )
            .into_bytes()
        }),
        (token, 0u32..100)
            .prop_map(|(subject, sid)| format!("SUB {subject} {sid}\r\n").into_bytes()),
        (0u32..100, 0u32..5).prop_map(|(sid, max)| format!("UNSUB {sid} {max}\r\n").into_bytes()),
    ]
}

/// Every operation in `stream`, as the parser sees them with input
/// arriving in chunks of the given sizes.
fn parse_in_chunks(stream: &[u8], chunks: &[usize]) -> Vec<String> {
    let mut parser = Parser::new(MAX_CONTROL_LINE, 1 << 20);
    let mut ops = Vec::new();
    let (mut start, mut end) = (0, 0);
    let mut sizes = chunks.iter().cycle();
    while start < stream.len() {
        match parser.parse(&stream[start..end]).unwrap() {
            Parsed::Op(op, used) => {
                ops.push(format!("{op:?}"));
                start += used;
            }
            Parsed::Incomplete { needed } => {
                assert!(end < stream.len(), "the whole stream parses");
                assert!(needed > end - start);
                end = (end + sizes.next().unwrap()).min(stream.len());
            }
        }
    }
    ops
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunking_does_not_change_what_is_parsed(
        ops in proptest::collection::vec(operation(), 1..20),
        chunks in proptest::collection::vec(1usize..40, 1..8),
    ) {
        let stream = ops.concat();
        let whole = parse_in_chunks(&stream, &[stream.len()]);
        prop_assert_eq!(whole.len(), ops.len());
        prop_assert_eq!(parse_in_chunks(&stream, &chunks), whole);
    }

    #[test]
    fn random_bytes_never_panic_and_end_in_an_answer(
        prefix in proptest::collection::vec(operation(), 0..4),
        noise in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let bus = Bus::default();
        let mut session = Session::new(config(None), &bus, 1, LOCAL);
        let mut input = prefix.concat();
        input.extend_from_slice(&noise);
        let (out, closed) = run(&mut session, &bus, &input);
        if closed.is_some() {
            // Whatever it said, it said it as nats-server would.
            let last = out.rsplit("\r\n").nth(1).unwrap_or("");
            prop_assert!(
                !last.starts_with("-ERR") || [
                    proto::ERR_UNKNOWN_OPERATION,
                    proto::ERR_CONTROL_LINE,
                    proto::ERR_MAX_PAYLOAD,
                ].iter().any(|err| err.starts_with(last.as_bytes())),
                "{}", last
            );
        }
    }

    #[test]
    fn random_bytes_after_operation_names(
        name in prop_oneof![Just("PUB "), Just("HPUB "), Just("SUB "), Just("UNSUB "), Just("CONNECT ")],
        noise in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut parser = Parser::new(64, 1024);
        let mut input = name.as_bytes().to_vec();
        input.extend_from_slice(&noise);
        if let Ok(Parsed::Op(op, used)) = parser.parse(&input) {
            prop_assert!(used <= input.len());
            if let ClientOp::Pub(publish) = op {
                prop_assert!(publish.payload.len() <= 1024);
            }
        }
    }
}
