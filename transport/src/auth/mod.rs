//! Who a client is and what it may do, for both client protocols
//! (Starling's and NATS's).
//!
//! - [`Authenticator`]: one set of the node's users (a name with an
//!   argon2id password hash, or a token) and its shared token; it turns
//!   what a client presents into an [`Access`], or refuses it.
//! - [`Authentication`] (`live.rs`): the set in force, replaced when the
//!   node reloads its users; connections let in under an older set are
//!   checked again ([`Authentication::check`]) and closed if revoked.
//! - `verifier.rs`: argon2 verifications on threads of their own, never on
//!   an I/O thread, through a bounded queue, with a delay before a failed
//!   login is answered.
//! - [`Access`] (`access.rs`): one connection's rights: its user's
//!   [`Permissions`], and the reply subjects it may use without a
//!   permission that lists them (its own requests' replies; one answer to
//!   each request it received).
//!
//! A connection without a user (a node without users, or the shared token)
//! may do anything but subscribe under `$SYS.`, as before users existed.

mod access;
mod live;
mod permissions;
mod replies;
mod verifier;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use thiserror::Error;

pub use self::access::Access;
pub use self::live::{Authentication, Begin, FAILED_LOGIN_DELAY};
pub use self::permissions::{DeliveryFilter, Permissions, SubjectRules};
pub use self::replies::{REPLY_GRANT_TTL, REPLY_GRANTS_MAX};
pub use self::verifier::Verification;
#[cfg(test)]
pub(crate) use self::verifier::VerifierSettings;

use self::access::Principal;
use crate::secret::constant_time_eq;

/// How a user proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum UserSecret {
    /// An argon2id PHC string (`starling passwd` makes one); the client
    /// sends the password.
    PasswordHash(String),
    /// A token the client sends as it is, compared in constant time.
    Token(String),
}

impl fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never in a log: a hash can be attacked offline.
        match self {
            UserSecret::PasswordHash(_) => f.write_str("PasswordHash(..)"),
            UserSecret::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// A user of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The name the client gives.
    pub name: String,
    /// What proves it.
    pub secret: UserSecret,
    /// What it may do.
    pub permissions: Permissions,
}

/// Why a client was refused at its handshake.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// The node needs credentials and none came.
    #[error("this node requires credentials: a user name and password, or a token")]
    Missing,
    /// A user name and password that do not match a user (which of the two
    /// is wrong is not said).
    #[error("wrong user name or password")]
    WrongPassword,
    /// A token that is neither the node's nor a user's.
    #[error("wrong token")]
    WrongToken,
    /// Every password verifier is busy and its queue is full: the node
    /// refuses rather than queue without end. Retry shortly.
    #[error("the node is busy checking passwords: retry shortly")]
    Busy,
    /// A login from the client's address failed a moment ago, or another
    /// from it is being checked: retry in a second.
    #[error("too many failed logins from this address: retry in a second")]
    Throttled,
}

impl AuthError {
    /// True if the credentials may be right, and trying again later may
    /// succeed ([`AuthError::Busy`], [`AuthError::Throttled`]).
    pub fn is_retry(&self) -> bool {
        matches!(self, AuthError::Busy | AuthError::Throttled)
    }
}

/// A publish or subscribe outside the user's permissions. Nothing was done.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PermissionError {
    /// Publishing to this subject is not allowed.
    #[error("permission denied: publishing to '{0}' is not allowed")]
    Publish(String),
    /// Subscribing to this pattern is not allowed.
    #[error("permission denied: subscribing to '{0}' is not allowed")]
    Subscribe(String),
}

/// A PHC string that is not an argon2 hash this build can verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("not an argon2 password hash (make one with `starling passwd`): {0}")]
pub struct HashError(String);

/// Hashes `password` with argon2id and a random salt, as a PHC string.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("the default argon2 parameters take any password and salt")
        .to_string()
}

/// Checks that `phc` is an argon2 hash [`Authenticator`] can verify.
pub fn check_password_hash(phc: &str) -> Result<(), HashError> {
    let hash = PasswordHash::new(phc).map_err(|error| HashError(error.to_string()))?;
    if !hash.algorithm.as_str().starts_with("argon2") {
        return Err(HashError(format!("algorithm {}", hash.algorithm)));
    }
    Ok(())
}

/// The node's users and shared token, and the passwords already verified.
#[derive(Default)]
pub struct Authenticator {
    token: Option<Arc<str>>,
    users: Vec<Arc<User>>,
    /// The last password verified for each user: argon2 is slow on purpose
    /// (tens of milliseconds of a verifier thread), so a client that
    /// reconnects with the same password is checked by a constant-time
    /// comparison instead.
    verified: Mutex<HashMap<String, String>>,
    /// Which of the node's successive sets of users this is (see
    /// [`Authentication::replace`]); 0 until one is in place.
    generation: u64,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("token", &self.token.as_ref().map(|_| ".."))
            .field("users", &self.users)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// What a client presents at its handshake; empty strings for none.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The user name.
    pub user: &'a str,
    /// The user's password.
    pub password: &'a str,
    /// A token: the node's, or a token user's.
    pub token: &'a str,
}

/// What checking credentials takes: an answer at once, or an argon2
/// verification (slow on purpose, so run off the I/O threads).
pub(crate) enum Precheck {
    Done(Result<Access, AuthError>),
    Verify(PasswordCheck),
}

/// A password to verify against a user's hash (or against a hash of
/// nothing, for a name nobody has).
pub(crate) struct PasswordCheck {
    user: Option<Arc<User>>,
    password: String,
}

impl Authenticator {
    /// A node's authentication: `token` (shared, no permissions) and
    /// `users`. With neither, every client is let in unrestricted.
    pub fn new(token: Option<String>, users: Vec<User>) -> Self {
        Self {
            token: token.filter(|token| !token.is_empty()).map(Arc::from),
            users: users.into_iter().map(Arc::new).collect(),
            verified: Mutex::default(),
            generation: 0,
        }
    }

    /// True if clients must present credentials.
    pub fn required(&self) -> bool {
        self.token.is_some() || !self.users.is_empty()
    }

    /// The access of a client that presents `credentials`, or why it is
    /// refused. Verifies a password on the calling thread: a server uses
    /// [`Authentication::begin`] instead.
    pub fn authenticate(&self, credentials: Credentials<'_>) -> Result<Access, AuthError> {
        match self.precheck(credentials) {
            Precheck::Done(result) => result,
            Precheck::Verify(check) => check.run(self),
        }
    }

    /// Everything but an argon2 verification: tokens, a node without
    /// credentials, and passwords verified before.
    pub(crate) fn precheck(&self, credentials: Credentials<'_>) -> Precheck {
        if !self.required() {
            return Precheck::Done(Ok(Access::new(Principal::Open, self.generation)));
        }
        if !credentials.user.is_empty() {
            return self.password_user(credentials.user, credentials.password);
        }
        if credentials.token.is_empty() {
            return Precheck::Done(Err(AuthError::Missing));
        }
        let token = credentials.token.as_bytes();
        if let Some(ours) = &self.token
            && constant_time_eq(ours.as_bytes(), token)
        {
            let principal = Principal::SharedToken(ours.clone());
            return Precheck::Done(Ok(Access::new(principal, self.generation)));
        }
        // Every token user is compared, so the time taken says nothing
        // about which one came close.
        let mut found = None;
        for user in &self.users {
            if let UserSecret::Token(ours) = &user.secret
                && constant_time_eq(ours.as_bytes(), token)
            {
                found = Some(user.clone());
            }
        }
        Precheck::Done(
            found
                .map(|user| Access::new(Principal::User(user), self.generation))
                .ok_or(AuthError::WrongToken),
        )
    }

    fn password_user(&self, name: &str, password: &str) -> Precheck {
        let user = self
            .users
            .iter()
            .find(|user| user.name == name && matches!(user.secret, UserSecret::PasswordHash(_)));
        if let Some(user) = user {
            let cached = self
                .verified
                .lock()
                .expect("verified lock")
                .get(name)
                .is_some_and(|known| constant_time_eq(known.as_bytes(), password.as_bytes()));
            if cached {
                let access = Access::new(Principal::User(user.clone()), self.generation);
                return Precheck::Done(Ok(access));
            }
        }
        Precheck::Verify(PasswordCheck {
            user: user.cloned(),
            password: password.to_owned(),
        })
    }

    /// Whether a connection that proved to be `principal` (under an
    /// earlier set of users) may stay under this one, and as whom.
    pub(crate) fn still_admits(&self, principal: &Principal) -> Result<Principal, Revoked> {
        match principal {
            Principal::Open if self.required() => Err(Revoked::CredentialsRequired),
            Principal::Open => Ok(Principal::Open),
            Principal::SharedToken(token) => match &self.token {
                Some(ours) if ours == token => Ok(Principal::SharedToken(ours.clone())),
                _ => Err(Revoked::TokenChanged),
            },
            Principal::User(user) => {
                let name = &user.name;
                let Some(now) = self.users.iter().find(|now| now.name == *name) else {
                    return Err(Revoked::Removed(name.clone()));
                };
                if now.secret != user.secret {
                    Err(Revoked::SecretChanged(name.clone()))
                } else if now.permissions != user.permissions {
                    Err(Revoked::PermissionsChanged(name.clone()))
                } else {
                    Ok(Principal::User(now.clone()))
                }
            }
        }
    }
}

impl PasswordCheck {
    /// Verifies the password with argon2 (tens of milliseconds).
    pub(crate) fn run(&self, authenticator: &Authenticator) -> Result<Access, AuthError> {
        let Some(user) = &self.user else {
            // Verified against a hash of nothing, so that a name nobody has
            // takes as long to refuse as a wrong password: the time taken
            // does not tell which names exist.
            static NOBODY: OnceLock<String> = OnceLock::new();
            let phc = NOBODY.get_or_init(|| hash_password(""));
            let hash = PasswordHash::new(phc).expect("our own hash parses");
            let _ = Argon2::default().verify_password(self.password.as_bytes(), &hash);
            return Err(AuthError::WrongPassword);
        };
        let UserSecret::PasswordHash(phc) = &user.secret else {
            unreachable!("found among the password users");
        };
        let hash = PasswordHash::new(phc).map_err(|_| AuthError::WrongPassword)?;
        Argon2::default()
            .verify_password(self.password.as_bytes(), &hash)
            .map_err(|_| AuthError::WrongPassword)?;
        authenticator
            .verified
            .lock()
            .expect("verified lock")
            .insert(user.name.clone(), self.password.clone());
        let principal = Principal::User(user.clone());
        Ok(Access::new(principal, authenticator.generation))
    }
}

/// Why a connection that was let in may no longer stay, after the node's
/// users were reloaded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Revoked {
    /// Its user is gone.
    #[error("authorization revoked: user '{0}' was removed")]
    Removed(String),
    /// Its user's password hash or token changed.
    #[error("authorization revoked: the password or token of user '{0}' changed")]
    SecretChanged(String),
    /// Its user's permissions changed: it may connect again to have them.
    #[error("authorization revoked: the permissions of user '{0}' changed; connect again")]
    PermissionsChanged(String),
    /// The shared token it gave changed or is gone.
    #[error("authorization revoked: the shared token changed")]
    TokenChanged,
    /// It gave no credentials, and the node now asks for them.
    #[error("authorization revoked: this node now requires credentials")]
    CredentialsRequired,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> User {
        User {
            name: "alice".into(),
            secret: UserSecret::PasswordHash(hash_password("wonderland")),
            permissions: Permissions {
                publish: SubjectRules {
                    allow: Some(vec!["orders.>".into()]),
                    deny: vec!["orders.us.>".into()],
                },
                subscribe: SubjectRules {
                    allow: Some(vec!["orders.>".into(), "svc.*".into()]),
                    deny: vec!["orders.us.>".into()],
                },
            },
        }
    }

    fn bot() -> User {
        User {
            name: "bot".into(),
            secret: UserSecret::Token("t0ken".into()),
            permissions: Permissions::everything(),
        }
    }

    fn credentials<'a>(user: &'a str, password: &'a str, token: &'a str) -> Credentials<'a> {
        Credentials {
            user,
            password,
            token,
        }
    }

    #[test]
    fn users_passwords_and_tokens() {
        let auth = Authenticator::new(Some("shared".into()), vec![alice(), bot()]);
        assert!(auth.required());
        let access = auth
            .authenticate(credentials("alice", "wonderland", ""))
            .unwrap();
        assert_eq!(access.user_name(), Some("alice"));
        // The second time from the cache: the same answer.
        let again = auth
            .authenticate(credentials("alice", "wonderland", ""))
            .unwrap();
        assert_eq!(again.user_name(), Some("alice"));
        assert_eq!(
            auth.authenticate(credentials("alice", "wrong", ""))
                .unwrap_err(),
            AuthError::WrongPassword
        );
        assert_eq!(
            auth.authenticate(credentials("mallory", "wonderland", ""))
                .unwrap_err(),
            AuthError::WrongPassword
        );
        assert_eq!(
            auth.authenticate(credentials("bot", "t0ken", ""))
                .unwrap_err(),
            AuthError::WrongPassword,
            "a token user has no password"
        );
        assert_eq!(
            auth.authenticate(credentials("", "", "")).unwrap_err(),
            AuthError::Missing
        );
        let bot = auth.authenticate(credentials("", "", "t0ken")).unwrap();
        assert_eq!(bot.user_name(), Some("bot"));
        let shared = auth.authenticate(credentials("", "", "shared")).unwrap();
        assert_eq!(shared.user_name(), None);
        assert_eq!(
            auth.authenticate(credentials("", "", "nope")).unwrap_err(),
            AuthError::WrongToken
        );
        let open = Authenticator::default();
        assert!(!open.required());
        assert!(open.authenticate(Credentials::default()).is_ok());
    }

    #[test]
    fn hashes_are_argon2id_phc_strings() {
        let phc = hash_password("pw");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(check_password_hash(&phc).is_ok());
        assert!(check_password_hash("plain").is_err());
        assert_ne!(hash_password("pw"), phc, "salted");
    }

    #[test]
    fn publish_and_subscribe_follow_the_permissions() {
        let mut access = Access::new(Principal::User(Arc::new(alice())), 1);
        assert!(access.check_publish("orders.eu.1", None).is_ok());
        assert_eq!(
            access.check_publish("orders.us.1", None),
            Err(PermissionError::Publish("orders.us.1".into()))
        );
        assert!(access.check_publish("payments.1", None).is_err());
        assert_eq!(access.check_subscribe("orders.>"), Ok(DeliveryFilter::Deny));
        assert_eq!(
            access.check_subscribe("orders.eu.*"),
            Ok(DeliveryFilter::Nothing)
        );
        assert_eq!(
            access.check_subscribe("*.eu.*"),
            Err(PermissionError::Subscribe("*.eu.*".into()))
        );
        assert!(access.check_subscribe("$SYS.>").is_err());
        assert!(access.admits(DeliveryFilter::Deny, "orders.eu.1", None));
        assert!(!access.admits(DeliveryFilter::Deny, "orders.us.1", None));
    }

    #[test]
    fn replies_only_to_the_requester_and_answers_only_to_requests_received() {
        let mut requester = Access::new(Principal::User(Arc::new(alice())), 1);
        let inbox = requester.check_subscribe("_INBOX.r.*").unwrap();
        assert_eq!(inbox, DeliveryFilter::OwnReplies);
        assert!(
            !requester.admits(inbox, "_INBOX.r.1", None),
            "not a reply to a request of its own"
        );
        requester
            .check_publish("svc.quote", Some("_INBOX.r.1"))
            .unwrap_err();
        requester
            .check_publish("orders.eu.quote", Some("_INBOX.r.1"))
            .unwrap();
        assert!(requester.admits(inbox, "_INBOX.r.1", None));
        assert!(!requester.admits(inbox, "_INBOX.r.2", None));

        let mut responder = Access::new(Principal::User(Arc::new(alice())), 1);
        assert!(
            responder.check_publish("_INBOX.r.1", None).is_err(),
            "no request received: spoofing"
        );
        assert!(responder.admits(DeliveryFilter::Nothing, "svc.quote", Some("_INBOX.r.1")));
        assert!(responder.check_publish("_INBOX.r.1", None).is_ok());
        assert!(
            responder.check_publish("_INBOX.r.1", None).is_err(),
            "one answer per request"
        );

        let mut open = Access::unrestricted();
        assert!(open.check_publish("_INBOX.anyone.1", None).is_ok());
        assert_eq!(open.check_subscribe(">"), Ok(DeliveryFilter::Nothing));
        assert!(open.check_subscribe("$SYS.>").is_err());
    }
}
