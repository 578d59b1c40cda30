//! What a user may publish and subscribe to: an allow-list of patterns and
//! a deny-list over it, for each direction, as nats-server's `permissions`.
//!
//! - A subject may be published if an allowed pattern matches it and no
//!   denied one does.
//! - A pattern may be subscribed to if an allowed pattern covers it (every
//!   subject it matches is allowed) and no denied pattern covers it. One
//!   that only overlaps a denied pattern (`orders.>` with `orders.us.>`
//!   denied) is accepted, and the subjects it must not see are filtered out
//!   at delivery ([`DeliveryFilter::Deny`]).
//! - `$SYS.` belongs to the mesh: no pattern under it is subscribable unless
//!   an allowed pattern names `$SYS` itself (`>` is not enough).
//!
//! Replies (`_INBOX.`) have rules of their own, in [`super::Access`].

use starling_core::subject::{
    self, SYSTEM_PREFIX, pattern_covers, pattern_matches, patterns_overlap,
};

use super::PermissionError;

/// The rules of one direction: `None` allows every subject (no list was
/// given); an empty allow-list allows none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectRules {
    /// Patterns allowed; `None` for all.
    pub allow: Option<Vec<String>>,
    /// Patterns denied, taking precedence over `allow`.
    pub deny: Vec<String>,
}

/// A user's permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// What the user may publish to.
    pub publish: SubjectRules,
    /// What the user may subscribe to.
    pub subscribe: SubjectRules,
}

/// What must be checked for each event a subscription delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryFilter {
    /// Nothing: every event the pattern matches is allowed.
    #[default]
    Nothing,
    /// The pattern overlaps a denied one: events on denied subjects are
    /// dropped before they reach the client.
    Deny,
    /// A reply inbox outside the allow-list: only replies to the
    /// connection's own requests reach the client.
    OwnReplies,
}

impl SubjectRules {
    /// Every subject allowed.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Checks every pattern of both lists; the first invalid one is the error.
    pub fn validate(&self) -> Result<(), String> {
        let limits = subject::SubjectLimits::default();
        for pattern in self.allow.iter().flatten().chain(&self.deny) {
            subject::validate_pattern(pattern, &limits)
                .map_err(|error| format!("'{pattern}' is not a valid pattern: {error}"))?;
        }
        Ok(())
    }

    /// May a client publish to `subject`?
    pub fn allows_subject(&self, subject: &str) -> bool {
        let allowed = self.allow.as_ref().is_none_or(|allow| {
            allow
                .iter()
                .any(|pattern| pattern_matches(pattern, subject))
        });
        allowed
            && !self
                .deny
                .iter()
                .any(|pattern| pattern_matches(pattern, subject))
    }

    /// May a client subscribe to `pattern`, and what must then be filtered?
    /// `None`: not allowed.
    pub fn allows_pattern(&self, pattern: &str) -> Option<DeliveryFilter> {
        let system = is_system(pattern);
        let allowed = match &self.allow {
            None => !system,
            Some(allow) => allow
                .iter()
                .any(|general| pattern_covers(general, pattern) && (!system || is_system(general))),
        };
        if !allowed
            || self
                .deny
                .iter()
                .any(|denied| pattern_covers(denied, pattern))
        {
            return None;
        }
        let overlaps = self
            .deny
            .iter()
            .any(|denied| patterns_overlap(denied, pattern));
        Some(if overlaps {
            DeliveryFilter::Deny
        } else {
            DeliveryFilter::Nothing
        })
    }

    /// Is a subject the filter of an overlapping subscription lets through?
    pub fn admits_delivery(&self, subject: &str) -> bool {
        !self
            .deny
            .iter()
            .any(|pattern| pattern_matches(pattern, subject))
    }
}

/// Does `pattern` name `$SYS` as its first token?
fn is_system(pattern: &str) -> bool {
    pattern.starts_with(SYSTEM_PREFIX) || pattern == SYSTEM_PREFIX.trim_end_matches('.')
}

impl Permissions {
    /// No restriction at all.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Checks every pattern; names the first invalid one.
    pub fn validate(&self) -> Result<(), String> {
        self.publish.validate()?;
        self.subscribe.validate()
    }

    /// Is a subscription to `pattern` allowed? The error names it.
    pub fn check_subscribe(&self, pattern: &str) -> Result<DeliveryFilter, PermissionError> {
        self.subscribe
            .allows_pattern(pattern)
            .ok_or_else(|| PermissionError::Subscribe(pattern.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> SubjectRules {
        SubjectRules {
            allow: Some(allow.iter().map(|p| p.to_string()).collect()),
            deny: deny.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn publishing_needs_an_allowed_match_and_no_denied_one() {
        let orders = rules(&["orders.>", "inventory.*"], &["orders.us.>"]);
        assert!(orders.allows_subject("orders.eu.1"));
        assert!(orders.allows_subject("inventory.apples"));
        assert!(!orders.allows_subject("orders.us.1"), "denied");
        assert!(
            !orders.allows_subject("inventory.apples.red"),
            "not allowed"
        );
        assert!(!orders.allows_subject("payments.1"));
        assert!(SubjectRules::everything().allows_subject("anything.at.all"));
        assert!(!rules(&[], &[]).allows_subject("a"), "empty allows none");
    }

    #[test]
    fn a_subscription_must_lie_within_the_allow_list() {
        let rules = rules(&["orders.eu.>", "inventory.*"], &[]);
        assert_eq!(
            rules.allows_pattern("orders.eu.>"),
            Some(DeliveryFilter::Nothing)
        );
        assert_eq!(
            rules.allows_pattern("orders.eu.*.created"),
            Some(DeliveryFilter::Nothing)
        );
        assert_eq!(
            rules.allows_pattern("inventory.apples"),
            Some(DeliveryFilter::Nothing)
        );
        assert_eq!(
            rules.allows_pattern("orders.*"),
            None,
            "overlaps, not within"
        );
        assert_eq!(rules.allows_pattern("orders.>"), None);
        assert_eq!(rules.allows_pattern(">"), None);
        assert_eq!(rules.allows_pattern("inventory.>"), None);
    }

    #[test]
    fn a_subscription_overlapping_a_deny_is_filtered_and_one_within_it_refused() {
        let rules = rules(&["orders.>"], &["orders.us.>"]);
        assert_eq!(rules.allows_pattern("orders.>"), Some(DeliveryFilter::Deny));
        assert_eq!(
            rules.allows_pattern("orders.*.1"),
            Some(DeliveryFilter::Deny)
        );
        assert_eq!(
            rules.allows_pattern("orders.eu.>"),
            Some(DeliveryFilter::Nothing)
        );
        assert_eq!(rules.allows_pattern("orders.us.*"), None);
        assert!(rules.admits_delivery("orders.eu.1"));
        assert!(!rules.admits_delivery("orders.us.1"));
    }

    #[test]
    fn the_mesh_subjects_need_an_allow_that_names_them() {
        assert_eq!(SubjectRules::everything().allows_pattern("$SYS.>"), None);
        assert_eq!(SubjectRules::everything().allows_pattern("$SYS"), None);
        assert_eq!(rules(&[">"], &[]).allows_pattern("$SYS.x"), None);
        assert_eq!(
            rules(&["$SYS.>"], &[]).allows_pattern("$SYS.links.*"),
            Some(DeliveryFilter::Nothing)
        );
        assert_eq!(
            SubjectRules::everything().allows_pattern(">"),
            Some(DeliveryFilter::Nothing)
        );
    }

    #[test]
    fn invalid_patterns_are_named() {
        let error = rules(&["orders.>.x"], &[]).validate().unwrap_err();
        assert!(error.contains("orders.>.x"), "{error}");
    }
}
