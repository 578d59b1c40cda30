//! Request/reply: a request carries a reply subject, the first reply wins.
//!
//! Each request borrows an *inbox* from the bus: a subscription to
//! `_INBOX.<bus nuid>.<inbox id>.*`, kept and reused, so a request costs no
//! subscribe or unsubscribe (those take the control-plane lock and wait for
//! readers). The reply subject ends with a per-inbox sequence number; replies
//! to an earlier request that timed out are recognized and discarded.
//!
//! If nothing subscribes to the request's subject, the publish makes no
//! delivery and the request fails at once with "no responders".

use std::fmt::Write;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::event_ref::archived;
use super::queue::Delivery;
use super::{Bus, BusInner, Message, RecvError, RequestError, SubscribeOptions, Subscription};
use crate::event::ArchivedEvent;

/// Room for a few late replies per inbox before they are dropped.
const INBOX_CAPACITY: usize = 16;

/// A reusable reply inbox.
pub(crate) struct Inbox {
    subscription: Subscription,
    /// `_INBOX.<nuid>.<id>.` followed by the current sequence number.
    reply_subject: String,
    prefix_len: usize,
    sequence: u64,
}

impl Inbox {
    fn new(bus: &Bus) -> Result<Self, RequestError> {
        let inner = bus.inner();
        let prefix = format!("{}{}.", bus.inbox_prefix(), inner.next_id());
        // Only the first reply is used, and the requester may be gone: a
        // reply never waits for room in an inbox (a responder must not be
        // held back by a requester that stopped listening).
        let options = SubscribeOptions {
            capacity: INBOX_CAPACITY,
            policy: super::SlowConsumerPolicy::DropNewest,
            ..SubscribeOptions::default()
        };
        let subscription = bus.subscribe_with(&format!("{prefix}*"), None, options)?;
        Ok(Self {
            subscription,
            prefix_len: prefix.len(),
            reply_subject: prefix,
            sequence: 0,
        })
    }

    /// Moves on to a new reply subject; the string keeps its capacity.
    fn next_reply_subject(&mut self) -> &str {
        self.sequence += 1;
        self.reply_subject.truncate(self.prefix_len);
        write!(self.reply_subject, "{}", self.sequence).expect("writing to a String cannot fail");
        &self.reply_subject
    }
}

/// The reply to a request. Dereferences to the [`ArchivedEvent`], read in place.
pub struct Reply {
    delivery: Delivery,
    inbox: Option<Inbox>,
    bus: Arc<BusInner>,
}

impl Deref for Reply {
    type Target = ArchivedEvent;

    fn deref(&self) -> &ArchivedEvent {
        archived(&self.delivery)
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            give_back(&self.bus, inbox);
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("subject", &self.subject())
            .field("payload_len", &self.payload().len())
            .finish()
    }
}

pub(super) fn request(
    bus: &Bus,
    message: &Message<'_>,
    timeout: Duration,
) -> Result<Reply, RequestError> {
    let inner = bus.inner();
    let deadline = Instant::now() + timeout;
    let mut inbox = match inner.inboxes.pop() {
        Some(inbox) => inbox,
        None => Inbox::new(bus)?,
    };
    let request = Message {
        reply_to: Some(inbox.next_reply_subject()),
        ..*message
    };
    match bus.publish_message(&request) {
        Ok(0) => {
            give_back(inner, inbox);
            return Err(RequestError::NoResponders);
        }
        Ok(_) => {}
        Err(error) => {
            give_back(inner, inbox);
            return Err(error.into());
        }
    }
    loop {
        let received = inbox.subscription.recv_deadline(deadline);
        match received {
            Ok(event) if event.subject() == inbox.reply_subject => {
                let delivery = event.into_delivery();
                return Ok(Reply {
                    delivery,
                    inbox: Some(inbox),
                    bus: inner.clone(),
                });
            }
            // A late reply to an earlier request on this inbox.
            Ok(_) => continue,
            Err(RecvError::Timeout) => {
                give_back(inner, inbox);
                return Err(RequestError::Timeout);
            }
            Err(RecvError::Closed) => return Err(RequestError::Closed),
        }
    }
}

/// Returns an inbox to the bus for the next request, unless the bus is closing
/// (an inbox holds the bus, so keeping it then would keep the bus alive).
fn give_back(bus: &Arc<BusInner>, inbox: Inbox) {
    if !bus.is_closed() {
        // If the pool is full the inbox is simply dropped (unsubscribed).
        let _ = bus.inboxes.push(inbox);
    }
}
