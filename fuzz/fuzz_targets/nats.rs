//! The NATS listener's protocol ([`Session`], its parser and its header
//! blocks) on an arbitrary client byte stream, checked against itself: the
//! stream fed whole and fed in arbitrary chunks, as a socket may cut it,
//! must get the same answer, byte for byte, and end the same way. Messages
//! are published on a bus of the session's own, so deliveries (MSG, HMSG,
//! no-responders) are part of the answer. Input: one byte seeding the chunk
//! sizes, then the stream.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use starling_core::{Bus, SubscribeOptions};
use starling_transport::auth::{Authentication, Authenticator};
use starling_transport::budget::Budget;
use starling_transport::nats::{
    Close, Input, MAX_CONTROL_LINE, NATS_VERSION, NatsConfig, ServerInfo, Session,
};

/// Small, so that short inputs reach the payload limit.
const MAX_PAYLOAD: usize = 512;

fn config(token: Option<String>) -> Arc<NatsConfig> {
    Arc::new(NatsConfig {
        info: ServerInfo {
            server_id: "fuzz".into(),
            server_name: "fuzz".into(),
            version: NATS_VERSION.into(),
            go: "starling".into(),
            host: "127.0.0.1".into(),
            port: 4222,
            headers: true,
            auth_required: token.is_some(),
            tls_required: false,
            tls_verify: false,
            max_payload: MAX_PAYLOAD,
            proto: 1,
            client_id: 1,
            client_ip: "127.0.0.1".into(),
            ldm: false,
        },
        auth: Arc::new(Authentication::new(Authenticator::new(token, Vec::new()))),
        max_control_line: MAX_CONTROL_LINE,
        subscriptions_max: 16,
        node_subscriptions: Arc::new(Budget::new(32)),
        mailbox: SubscribeOptions::default(),
        max_pings_out: 2,
    })
}

/// What the session wrote, and how it ended, with the stream arriving in
/// chunks of `sizes` (cycled), as the listener drives it.
fn answer(stream: &[u8], sizes: &[usize], token: Option<String>) -> (Vec<u8>, Option<Close>) {
    let bus = Bus::default();
    let mut session = Session::new(config(token), &bus, 1, IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut out = Vec::new();
    session.greeting(&mut out);
    let (mut start, mut end) = (0, 0);
    let mut sizes = sizes.iter().cycle();
    let closed = loop {
        match session.handle_input(&stream[start..end], &mut out) {
            Ok(Input::Handled { used }) => start += used,
            Ok(Input::Publish { used, publish }) => {
                let outcome = bus.publish_message(&publish.message());
                if let Err(close) = session.published(&publish, outcome, &mut out) {
                    break Some(close);
                }
                start += used;
            }
            Ok(Input::Verifying { .. }) => {
                unreachable!(
                    "the fuzzed node has a token and no password users: nothing is verified on a thread"
                )
            }
            Ok(Input::Incomplete { needed }) => {
                assert!(needed > end - start, "incomplete asks for more than it has");
                if end == stream.len() {
                    break None;
                }
                end = (end + sizes.next().expect("cycled")).min(stream.len());
            }
            Err(close) => break Some(close),
        }
        assert!(start <= end, "an operation uses only what it was given");
        // Deliveries go out as they would between reads.
        while let Some(event) = session.mailbox().try_recv() {
            session.deliver(&event, &mut out);
        }
    };
    (out, closed)
}

fuzz_target!(|input: &[u8]| {
    let Some((&seed, stream)) = input.split_first() else {
        return;
    };
    // Sizes from 1 to 64 bytes, from the seed.
    let sizes: Vec<usize> = (0..8)
        .map(|i| usize::from(seed.rotate_left(i) % 64) + 1)
        .collect();
    // An odd seed plays a node that requires a token.
    let token = (seed % 2 == 1).then(|| "s3cret".to_owned());
    let whole = answer(stream, &[stream.len().max(1)], token.clone());
    let chunked = answer(stream, &sizes, token);
    assert_eq!(whole, chunked, "chunking changed the answer");
});
