//! [`Subscription`]: a mailbox with exactly one pattern.

use std::ops::Deref;

use super::mailbox::Mailbox;

/// One subscription to one pattern (optionally in a queue group), with its own
/// queue. Receives through the [`Mailbox`] methods it dereferences to
/// (`recv`, `recv_timeout`, `try_recv`, `recv_async`, `dropped`, ...).
/// Unsubscribes when dropped.
#[derive(Debug)]
pub struct Subscription {
    mailbox: Mailbox,
}

impl Subscription {
    pub(super) fn new(mailbox: Mailbox) -> Self {
        debug_assert_eq!(mailbox.subscription_count(), 1);
        Self { mailbox }
    }

    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        self.mailbox
            .first_subscription()
            .map_or("", |(pattern, _)| pattern)
    }

    /// The queue group joined, if any.
    pub fn queue_group(&self) -> Option<&str> {
        self.mailbox
            .first_subscription()
            .and_then(|(_, group)| group)
    }
}

impl Deref for Subscription {
    type Target = Mailbox;

    fn deref(&self) -> &Mailbox {
        &self.mailbox
    }
}
