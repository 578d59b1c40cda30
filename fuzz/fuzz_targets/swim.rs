//! Membership datagrams ([`Membership::handle_packet`]: SWIM packets through
//! foca and our codec, view requests, views, digests, departure notices)
//! arriving at one node in a row, with time passing between them so that
//! its timers fire. Nothing may panic, and what the node sends in return
//! must fit in a datagram. Input: records of [`SwimRecord`].
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use starling_fuzz::{SwimRecord, swim_node};
use starling_mesh::cluster::membership::{Output, PACKET_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mut node = swim_node(now);
    for record in SwimRecord::read_all(data) {
        now += record.delay;
        if node.poll_timeout().is_some_and(|deadline| deadline <= now) {
            let _ = node.handle_timeout(now);
        }
        let _ = node.handle_packet(record.packet, now);
        while let Some(output) = node.poll_output() {
            if let Output::Send { packet, .. } = output {
                assert!(packet.len() <= PACKET_BYTES_MAX, "{} bytes", packet.len());
            }
        }
    }
    // What `/v1/members` reports, from whatever state the packets left.
    let _ = node.members();
});
