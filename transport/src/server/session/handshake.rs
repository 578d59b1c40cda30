//! The handshake of a session: the client's `HELLO`, its credentials
//! checked (a password on a verifier thread, the session stalled until the
//! answer), and, once open, the check that a reload of the node's users
//! still lets it in.

use std::sync::Arc;

use starling_core::event;

use super::{Fatal, Protocol, State};
use crate::auth::{Access, AuthError, Begin, Credentials, Revoked, Verification};
use crate::frame::control::Hello;
use crate::frame::{ErrorCode, Kind, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};

/// A handshake waiting for its password to be verified.
#[derive(Debug)]
pub(super) struct Verifying {
    pub(super) verification: Arc<Verification>,
    pub(super) client_name: String,
}

impl Protocol {
    pub(super) fn hello(&mut self, body: &[u8]) -> Result<(), Fatal> {
        if let Some(version) = Hello::version_of(body)
            && !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version)
        {
            let reason = format!(
                "protocol version {version} is not {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION}"
            );
            return Err(self.fail(ErrorCode::Incompatible, 0, reason));
        }
        let hello = match Hello::decode(body) {
            Ok(hello) => hello,
            Err(error) => return Err(self.fail(ErrorCode::Framing, 0, error.to_string())),
        };
        let ours = event::format_fingerprint();
        if hello.fingerprint != ours {
            let reason = format!(
                "event format fingerprint {:016x} is not {ours:016x}: client and node were built with different archive formats",
                hello.fingerprint
            );
            return Err(self.fail(ErrorCode::Incompatible, 0, reason));
        }
        // Answered with the client's own version, which it knows.
        self.version = hello.version;
        let credentials = Credentials {
            user: &hello.user,
            password: &hello.password,
            token: &hello.token,
        };
        match self.config.auth.begin(credentials, self.peer) {
            Begin::Done(result) => self.authenticated(result, &hello.name),
            Begin::Verifying(verification) => {
                // Stalled until the answer wakes the session.
                self.verifying = Some(Verifying {
                    verification,
                    client_name: hello.name,
                });
                Ok(())
            }
        }
    }

    /// The handshake's outcome: the connection is open, or refused.
    pub(super) fn authenticated(
        &mut self,
        result: Result<Access, AuthError>,
        client_name: &str,
    ) -> Result<(), Fatal> {
        self.access = match result {
            Ok(access) => access,
            Err(error) => {
                // Busy or throttled: the credentials may be right; retry.
                let code = if error.is_retry() {
                    ErrorCode::Limit
                } else {
                    ErrorCode::Unauthorized
                };
                return Err(self.fail(code, 0, error.to_string()));
            }
        };
        self.stats.set_client_name(client_name);
        self.state = State::Ready;
        let ours = Hello {
            version: self.version,
            ..Hello::ours(&self.config.server_name, "")
        };
        self.reply(Kind::Hello, 0, &ours.encode())
    }

    /// Closes the connection if the node's users were reloaded and no
    /// longer let it in (an atomic load otherwise).
    pub(super) fn authorized(&mut self) -> Result<(), Fatal> {
        match self.config.auth.check(&mut self.access) {
            Ok(()) => Ok(()),
            Err(revoked) => Err(self.revoke(&revoked)),
        }
    }

    #[cold]
    fn revoke(&mut self, revoked: &Revoked) -> Fatal {
        tracing::info!(
            client = self.stats.client_name.get().map_or("", String::as_str),
            "closing a connection: {revoked}"
        );
        self.fail(ErrorCode::Unauthorized, 0, revoked.to_string())
    }
}
