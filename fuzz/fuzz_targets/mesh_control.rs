//! A mesh link's control stream, as `link.rs` reads it: length-prefixed
//! messages ([`Control::announced_length`], [`Control::decode`]), a HELLO
//! judged against ours ([`Hello::incompatibility`]). Whatever decodes must
//! survive being encoded and decoded again unchanged, since nodes relay
//! what they learn.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_mesh::cluster::wire::{Control, Hello, MESH_PROTOCOL_VERSION};

/// The link's limit is 1 MiB; a small one lets short inputs reach it.
const MESSAGE_MAX: usize = 4096;

fuzz_target!(|stream: &[u8]| {
    let ours = Hello {
        protocol: MESH_PROTOCOL_VERSION,
        fingerprint: starling_core::event::format_fingerprint(),
        node_id: 1,
        cluster: "fuzz".into(),
        name: "n1".into(),
        advertise: "10.0.0.1:7401".into(),
        inbox_prefix: "_INBOX.01.".into(),
    };
    let mut rest = stream;
    while let [a, b, c, d, tail @ ..] = rest {
        let Ok(length) = Control::announced_length([*a, *b, *c, *d], MESSAGE_MAX) else {
            return;
        };
        let Some((message, tail)) = tail.split_at_checked(length) else {
            return;
        };
        rest = tail;
        let Ok(control) = Control::decode(message) else {
            continue;
        };
        if let Control::Hello(theirs) = &control {
            let _ = ours.incompatibility(theirs);
        }
        let mut encoded = Vec::new();
        control.encode(&mut encoded);
        let prefix = encoded[..4].try_into().expect("a length prefix");
        let relength =
            Control::announced_length(prefix, usize::MAX).expect("a message's own length");
        assert_eq!(relength, encoded.len() - 4);
        assert_eq!(Control::decode(&encoded[4..]), Ok(control));
    }
});
