//! [`Access`]: one connection's rights, and who it proved to be
//! ([`Principal`]), so that a reload of the node's users can tell whether
//! the connection may stay.

use std::sync::Arc;
use std::time::Instant;

use starling_core::subject::INBOX_PREFIX;

use super::permissions::{DeliveryFilter, SubjectRules};
use super::replies::ReplyGrants;
use super::{PermissionError, User};

/// Who a connection proved to be at its handshake.
#[derive(Debug, Clone)]
pub(crate) enum Principal {
    /// Nobody: the node asked for no credentials.
    Open,
    /// The holder of the node's shared token (this one).
    SharedToken(Arc<str>),
    /// A user (as it was then: its secret and permissions).
    User(Arc<User>),
}

/// One connection's rights.
#[derive(Debug)]
pub struct Access {
    pub(crate) principal: Principal,
    /// The generation of the node's users this access was last checked
    /// against (see `Authentication::check`).
    pub(crate) generation: u64,
    /// Reply subjects of requests delivered to this connection: it may
    /// publish one answer to each.
    responses: ReplyGrants,
    /// Reply subjects (under `_INBOX.`) of this connection's own requests:
    /// it may receive what is published to them.
    requests: ReplyGrants,
}

impl Access {
    /// A connection without a user, before any check: what a session holds
    /// until its handshake says who the client is. Generation 0 is older
    /// than every node's users, so it is checked at its first use.
    pub fn unrestricted() -> Self {
        Self::new(Principal::Open, 0)
    }

    pub(crate) fn new(principal: Principal, generation: u64) -> Self {
        Self {
            principal,
            generation,
            responses: ReplyGrants::new(Some(1)),
            requests: ReplyGrants::new(None),
        }
    }

    fn user(&self) -> Option<&User> {
        match &self.principal {
            Principal::User(user) => Some(user),
            Principal::Open | Principal::SharedToken(_) => None,
        }
    }

    /// The user's name, if the connection has one.
    pub fn user_name(&self) -> Option<&str> {
        self.user().map(|user| user.name.as_str())
    }

    /// May the connection subscribe to `pattern`? On success, what must be
    /// checked for each event it delivers ([`Access::admits`]).
    ///
    /// A pattern under `_INBOX.` that the permissions do not allow is still
    /// accepted: it is how a requester receives replies, and it delivers
    /// only replies to the connection's own requests.
    pub fn check_subscribe(&self, pattern: &str) -> Result<DeliveryFilter, PermissionError> {
        let Some(user) = self.user() else {
            return SubjectRules::everything()
                .allows_pattern(pattern)
                .ok_or_else(|| PermissionError::Subscribe(pattern.to_owned()));
        };
        match user.permissions.subscribe.allows_pattern(pattern) {
            Some(filter) => Ok(filter),
            None if pattern.starts_with(INBOX_PREFIX) => Ok(DeliveryFilter::OwnReplies),
            None => Err(PermissionError::Subscribe(pattern.to_owned())),
        }
    }

    /// May the connection publish to `subject` (with `reply_to`)? Allowed:
    /// the subject is within its publish permissions, or it answers a
    /// request it was delivered (once). Replies to the request it makes are
    /// then its to receive.
    pub fn check_publish(
        &mut self,
        subject: &str,
        reply_to: Option<&str>,
    ) -> Result<(), PermissionError> {
        let Principal::User(user) = &self.principal else {
            return Ok(());
        };
        let now = Instant::now();
        if !user.permissions.publish.allows_subject(subject) && !self.responses.take(subject, now) {
            return Err(PermissionError::Publish(subject.to_owned()));
        }
        if let Some(reply_to) = reply_to
            && reply_to.starts_with(INBOX_PREFIX)
        {
            self.requests.grant(reply_to, now);
        }
        Ok(())
    }

    /// May an event on `subject` (with `reply_to`) that a subscription with
    /// `filter` matched reach the client? If so, and it is a request the
    /// connection may not otherwise answer, it may now answer it once.
    pub fn admits(
        &mut self,
        filter: DeliveryFilter,
        subject: &str,
        reply_to: Option<&str>,
    ) -> bool {
        let Principal::User(user) = &self.principal else {
            return true;
        };
        // The clock is read only for the grants (a plain event of a plain
        // subscription is on the delivery path: no clock read for it).
        let admitted = match filter {
            DeliveryFilter::Nothing => true,
            DeliveryFilter::Deny => user.permissions.subscribe.admits_delivery(subject),
            DeliveryFilter::OwnReplies => self.requests.take(subject, Instant::now()),
        };
        if admitted
            && let Some(reply_to) = reply_to
            && !user.permissions.publish.allows_subject(reply_to)
        {
            self.responses.grant(reply_to, Instant::now());
        }
        admitted
    }
}
