//! The bodies of the local path's control frames ([`Hello`], [`Subscribe`],
//! [`ErrorBody`]), which a server reads from clients and a client from its
//! server. Each body has one encoding: whatever decodes must encode back to
//! the very bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_transport::frame::control::{ErrorBody, Hello, Subscribe};

fuzz_target!(|body: &[u8]| {
    if let Ok(hello) = Hello::decode(body) {
        assert_eq!(hello.encode(), body);
    }
    if let Ok(subscribe) = Subscribe::decode(body) {
        assert_eq!(subscribe.encode(), body);
    }
    if let Ok(error) = ErrorBody::decode(body) {
        assert_eq!(error.encode(), body);
    }
});
