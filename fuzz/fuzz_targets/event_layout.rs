//! The hand-written structural check of the event layout
//! ([`Structure::Layout`], what `event::validate` runs first) against rkyv's
//! bytecheck ([`Structure::Bytecheck`]) on any bytes. It must never accept
//! what bytecheck refuses: what it accepts is read in place, unchecked, by
//! every consumer. It is written to accept exactly what bytecheck accepts,
//! so a refusal bytecheck does not share fails too (it would only cost
//! time, since `validate` then asks bytecheck, but it means the replay of
//! bytecheck's rules is off).
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_core::event::{self, EventLimits, Structure};
use starling_fuzz::aligned;

fuzz_target!(|data: &[u8]| {
    let bytes = aligned(data);
    let limits = EventLimits::default();
    let layout = event::validate_with(&bytes, &limits, Structure::Layout);
    let bytecheck = event::validate_with(&bytes, &limits, Structure::Bytecheck);
    match (layout, bytecheck) {
        (Ok(fast), Ok(slow)) => {
            assert!(std::ptr::eq(fast, slow));
            // Read every field, as a consumer does.
            let owned = fast.to_event();
            assert_eq!(owned.subject, fast.subject());
        }
        (Ok(_), Err(error)) => panic!("the layout check accepted what bytecheck refuses: {error}"),
        (Err(error), Ok(_)) => panic!("the layout check refused what bytecheck accepts: {error}"),
        (Err(_), Err(_)) => {}
    }
});
