//! [`Authentication`]: the node's users in force, replaced while the node
//! runs (`starling node` on SIGHUP), and the check that tells a connection
//! let in under an earlier set whether it may stay.
//!
//! No lock on the publish→deliver path: a session checks its [`Access`]
//! against the users' generation, one atomic load, at natural points (each
//! frame or operation it handles, each batch it delivers, each tick); only
//! when the generation moved does it take the read lock and look its user
//! up in the new set. Why a read lock and not an atomically swapped pointer
//! (the `arc-swap` crate): the set is read only at a handshake and once per
//! connection after a reload, never per event, so a lock that is almost
//! never contended costs nothing measurable and needs no new dependency.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::verifier::{Verification, Verifier, VerifierSettings};
use super::{Access, AuthError, Authenticator, Credentials, Precheck, Revoked};

/// How long a failed password login waits before it is answered; its
/// address's next login is refused until then (see `verifier.rs`).
pub const FAILED_LOGIN_DELAY: Duration = Duration::from_secs(1);

/// The node's users in force, shared by every session of both protocols.
#[derive(Debug)]
pub struct Authentication {
    current: RwLock<Arc<Authenticator>>,
    /// The generation of `current`. SYNC POINT (users-generation): the
    /// Release store in `replace`, made after the new set is in place,
    /// pairs with the Acquire load in `check`: a session that sees the new
    /// generation finds the new set (or a newer one) when it looks.
    generation: AtomicU64,
    verifier: Verifier,
}

/// How a handshake's credentials fare: at once, or after an argon2
/// verification on a verifier thread.
#[derive(Debug)]
pub enum Begin {
    /// The answer.
    Done(Result<Access, AuthError>),
    /// Being verified: poll it ([`Verification::poll`]); the waker is woken
    /// with the answer.
    Verifying(Arc<Verification>),
}

impl Default for Authentication {
    fn default() -> Self {
        Self::new(Authenticator::default())
    }
}

impl From<Authenticator> for Authentication {
    fn from(authenticator: Authenticator) -> Self {
        Self::new(authenticator)
    }
}

impl Authentication {
    /// `authenticator` in force, with the default verifier (a thread per two
    /// cores, at most 4, started at the first password to verify; 64
    /// verifications queued at most).
    pub fn new(authenticator: Authenticator) -> Self {
        Self::with_verifier(authenticator, VerifierSettings::default())
    }

    pub(crate) fn with_verifier(
        mut authenticator: Authenticator,
        settings: VerifierSettings,
    ) -> Self {
        authenticator.generation = 1;
        Self {
            current: RwLock::new(Arc::new(authenticator)),
            generation: AtomicU64::new(1),
            verifier: Verifier::new(settings),
        }
    }

    /// Puts `authenticator` in force: new handshakes use it at once, and
    /// every session checks its access against it at its next natural point
    /// ([`Authentication::check`]).
    pub fn replace(&self, mut authenticator: Authenticator) {
        let mut current = self.current.write().expect("users lock");
        authenticator.generation = current.generation + 1;
        let generation = authenticator.generation;
        *current = Arc::new(authenticator);
        // SYNC POINT (users-generation): see `generation`. Under the lock,
        // so that two reloads publish their generations in order.
        self.generation.store(generation, Ordering::Release);
    }

    /// The set in force.
    pub fn current(&self) -> Arc<Authenticator> {
        self.current.read().expect("users lock").clone()
    }

    /// True if clients must present credentials now.
    pub fn required(&self) -> bool {
        self.current().required()
    }

    /// Checks a handshake's credentials (`peer`: the client's address, for
    /// the failed-login throttle; `None` for a Unix socket). A password not
    /// verified before goes to a verifier thread; a full verifier queue, or
    /// an address whose last login failed a moment ago, is refused at once.
    pub fn begin(&self, credentials: Credentials<'_>, peer: Option<IpAddr>) -> Begin {
        let authenticator = self.current();
        match authenticator.precheck(credentials) {
            Precheck::Done(result) => Begin::Done(result),
            Precheck::Verify(check) => match self.verifier.submit(authenticator, check, peer) {
                Ok(verification) => Begin::Verifying(verification),
                Err(error) => Begin::Done(Err(error)),
            },
        }
    }

    /// May a connection with `access` stay? Free while the node's users are
    /// the ones it was checked against (an atomic load); after a reload,
    /// looks its user up in the new set: the same user with the same secret
    /// and permissions stays, anything else is revoked.
    #[inline]
    pub fn check(&self, access: &mut Access) -> Result<(), Revoked> {
        // SYNC POINT (users-generation): see `generation`.
        if access.generation == self.generation.load(Ordering::Acquire) {
            return Ok(());
        }
        self.recheck(access)
    }

    #[cold]
    fn recheck(&self, access: &mut Access) -> Result<(), Revoked> {
        let current = self.current();
        access.principal = current.still_admits(&access.principal)?;
        access.generation = current.generation;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Permissions, SubjectRules, User, UserSecret};

    fn token_user(name: &str, token: &str, publish: &[&str]) -> User {
        User {
            name: name.into(),
            secret: UserSecret::Token(token.into()),
            permissions: Permissions {
                publish: SubjectRules {
                    allow: Some(publish.iter().map(|p| p.to_string()).collect()),
                    deny: Vec::new(),
                },
                subscribe: SubjectRules::everything(),
            },
        }
    }

    fn with_token(token: &str) -> Credentials<'_> {
        Credentials {
            token,
            ..Credentials::default()
        }
    }

    fn let_in(auth: &Authentication, token: &str) -> Access {
        match auth.begin(with_token(token), None) {
            Begin::Done(result) => result.unwrap(),
            Begin::Verifying(_) => unreachable!("tokens are checked at once"),
        }
    }

    #[test]
    fn a_reload_keeps_whom_it_still_admits_alike_and_revokes_the_rest() {
        let users = |alice_publish: &[&str], bob: bool, carol_token: &str| {
            let mut users = vec![
                token_user("alice", "a", alice_publish),
                token_user("carol", carol_token, &[">"]),
            ];
            if bob {
                users.push(token_user("bob", "b", &[">"]));
            }
            users
        };
        let auth = Authentication::new(Authenticator::new(
            Some("shared".into()),
            users(&["orders.>"], true, "c"),
        ));
        let mut alice = let_in(&auth, "a");
        let mut bob = let_in(&auth, "b");
        let mut carol = let_in(&auth, "c");
        let mut shared = let_in(&auth, "shared");
        assert_eq!(auth.check(&mut alice), Ok(()), "nothing reloaded");

        auth.replace(Authenticator::new(
            Some("shared".into()),
            users(&["orders.>"], false, "c2"),
        ));
        assert_eq!(auth.check(&mut alice), Ok(()), "the same user, alike");
        assert_eq!(auth.check(&mut shared), Ok(()));
        assert_eq!(auth.check(&mut bob), Err(Revoked::Removed("bob".into())));
        assert_eq!(
            auth.check(&mut carol),
            Err(Revoked::SecretChanged("carol".into()))
        );
        assert!(let_in_fails(&auth, "b"), "a new connection is refused too");

        auth.replace(Authenticator::new(
            None,
            users(&["orders.eu.>"], false, "c2"),
        ));
        assert_eq!(
            auth.check(&mut alice),
            Err(Revoked::PermissionsChanged("alice".into()))
        );
        assert_eq!(auth.check(&mut shared), Err(Revoked::TokenChanged));

        let open = Authentication::default();
        let mut anyone = let_in(&open, "");
        open.replace(Authenticator::new(Some("now".into()), Vec::new()));
        assert_eq!(open.check(&mut anyone), Err(Revoked::CredentialsRequired));
    }

    fn let_in_fails(auth: &Authentication, token: &str) -> bool {
        matches!(auth.begin(with_token(token), None), Begin::Done(Err(_)))
    }
}
