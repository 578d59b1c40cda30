//! [`EventRef`]: the zero-copy view of a received event, as every mailbox,
//! subscription and request hands it out.

use std::ops::Deref;

use super::queue::Delivery;
use crate::event::{self, ArchivedEvent};

/// A received event, read in place in the memory it was published into. It
/// dereferences to the [`ArchivedEvent`]: `subject()`, `payload()`,
/// `reply_to()`, `headers()`, `header(name)`, `id()`, `time_unix_nanos()`.
///
/// Holding it keeps its memory (and only its memory) from being reused, even
/// after the subscription and the bus are gone; drop it when done.
pub struct EventRef {
    delivery: Delivery,
}

impl EventRef {
    pub(super) fn new(delivery: Delivery) -> Self {
        Self { delivery }
    }

    /// The tag of the subscription that matched (see [`Mailbox::subscribe`](super::Mailbox::subscribe)).
    pub fn tag(&self) -> u64 {
        self.delivery.tag
    }

    /// The archive bytes, 16-byte aligned, for forwarding without re-encoding.
    pub fn archive(&self) -> &[u8] {
        self.delivery.record.archive()
    }

    pub(super) fn into_delivery(self) -> Delivery {
        self.delivery
    }
}

impl Deref for EventRef {
    type Target = ArchivedEvent;

    fn deref(&self) -> &ArchivedEvent {
        archived(&self.delivery)
    }
}

/// The event a delivery holds.
pub(super) fn archived(delivery: &Delivery) -> &ArchivedEvent {
    // SAFETY: every record's archive was produced by `event::encode_into` or
    // copied from bytes `event::validate` accepted, is 16-byte aligned, and does
    // not change while the delivery holds it.
    unsafe { event::access_unchecked(delivery.record.archive()) }
}

impl std::fmt::Debug for EventRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRef")
            .field("subject", &self.subject())
            .field("payload_len", &self.payload().len())
            .field("tag", &self.tag())
            .finish()
    }
}
