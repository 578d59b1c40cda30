//! [`ReplyGrants`]: reply subjects a connection may use for a while without
//! a permission that lists them, as nats-server's `allow_responses`: the
//! reply subject of a request delivered to a responder (it may answer once),
//! and the reply subject of a requester's own request (it may receive the
//! replies).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a grant lasts: nats-server's default response expiry.
pub const REPLY_GRANT_TTL: Duration = Duration::from_secs(120);

/// Most grants one connection holds; past it the oldest goes first, so a
/// client cannot grow the node's memory by asking for more.
pub const REPLY_GRANTS_MAX: usize = 4096;

/// Reply subjects granted, each until it expires or is used up.
#[derive(Debug)]
pub(crate) struct ReplyGrants {
    /// Uses each grant allows; `None`: any number until it expires.
    uses_per_grant: Option<u32>,
    by_subject: HashMap<Box<str>, Grant>,
    /// Subjects in the order granted, with when: the oldest are evicted
    /// first. An entry whose stamp no longer matches the map's (renewed or
    /// used up since) is skipped.
    order: VecDeque<(Box<str>, Instant)>,
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    granted_at: Instant,
    uses_left: Option<u32>,
}

impl ReplyGrants {
    /// Grants that allow `uses_per_grant` uses each (`None`: any number).
    pub(crate) fn new(uses_per_grant: Option<u32>) -> Self {
        Self {
            uses_per_grant,
            by_subject: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Grants `subject` from `now`, renewing a grant it already has.
    pub(crate) fn grant(&mut self, subject: &str, now: Instant) {
        self.evict(now);
        let grant = Grant {
            granted_at: now,
            uses_left: self.uses_per_grant,
        };
        self.by_subject.insert(subject.into(), grant);
        self.order.push_back((subject.into(), now));
    }

    /// Uses the grant for `subject`, if there is a live one.
    pub(crate) fn take(&mut self, subject: &str, now: Instant) -> bool {
        let Some(grant) = self.by_subject.get_mut(subject) else {
            return false;
        };
        if now.duration_since(grant.granted_at) >= REPLY_GRANT_TTL {
            self.by_subject.remove(subject);
            return false;
        }
        match &mut grant.uses_left {
            None => {}
            Some(1) => {
                self.by_subject.remove(subject);
            }
            Some(uses) => *uses -= 1,
        }
        true
    }

    /// Drops expired grants, and the oldest while at the cap.
    fn evict(&mut self, now: Instant) {
        while let Some((subject, granted_at)) = self.order.front() {
            let expired = now.duration_since(*granted_at) >= REPLY_GRANT_TTL;
            if !expired && self.order.len() < REPLY_GRANTS_MAX {
                break;
            }
            if self
                .by_subject
                .get(subject)
                .is_some_and(|grant| grant.granted_at == *granted_at)
            {
                self.by_subject.remove(subject);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_grant_is_used_once_and_expires() {
        let start = Instant::now();
        let mut grants = ReplyGrants::new(Some(1));
        grants.grant("_INBOX.a.1", start);
        assert!(!grants.take("_INBOX.a.2", start), "never granted");
        assert!(grants.take("_INBOX.a.1", start));
        assert!(!grants.take("_INBOX.a.1", start), "used up");
        grants.grant("_INBOX.a.3", start);
        assert!(
            !grants.take("_INBOX.a.3", start + REPLY_GRANT_TTL),
            "expired"
        );
    }

    #[test]
    fn a_request_grant_lasts_until_it_expires() {
        let start = Instant::now();
        let mut grants = ReplyGrants::new(None);
        grants.grant("_INBOX.a.1", start);
        for _ in 0..3 {
            assert!(grants.take("_INBOX.a.1", start + Duration::from_secs(1)));
        }
        assert!(!grants.take("_INBOX.a.1", start + REPLY_GRANT_TTL));
    }

    #[test]
    fn grants_are_bounded_oldest_first() {
        let start = Instant::now();
        let mut grants = ReplyGrants::new(None);
        for n in 0..REPLY_GRANTS_MAX + 10 {
            grants.grant(&format!("_INBOX.a.{n}"), start);
        }
        assert!(grants.by_subject.len() <= REPLY_GRANTS_MAX);
        assert!(grants.order.len() <= REPLY_GRANTS_MAX);
        assert!(!grants.take("_INBOX.a.0", start), "the oldest went first");
        let last = format!("_INBOX.a.{}", REPLY_GRANTS_MAX + 9);
        assert!(grants.take(&last, start));
    }
}
