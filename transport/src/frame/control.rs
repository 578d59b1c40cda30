//! Bodies of the control frames. Little-endian fixed fields, then strings as
//! a `u16` length and the bytes. Decoding checks every length against the
//! bytes actually there and refuses bytes left over.
//!
//! ```text
//! HELLO  | version u32 | zero u32 | fingerprint u64 | name: u16 len + bytes | token: u16 len + bytes |
//!        | user: u16 len + bytes | password: u16 len + bytes |   (protocol 3; the node sends both empty)
//! SUB    | pattern: u16 len + bytes | queue group: u16 len + bytes (empty: none) | policy u8 | max stall ms u32 |
//! ERR    | code u16 | reason: u16 len + bytes |
//! ```

use std::time::Duration;

use starling_core::SlowConsumerPolicy;

use super::{ErrorCode, FrameError, Kind};

/// Longest name, token, user, password, pattern, group or reason, in bytes.
pub const STRING_BYTES_MAX: usize = 1024;

/// The opening frame of a connection, from either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version ([`super::PROTOCOL_VERSION`]).
    pub version: u32,
    /// The sender's archive format fingerprint
    /// ([`starling_core::event::format_fingerprint`]).
    pub fingerprint: u64,
    /// The client's name, or the node's.
    pub name: String,
    /// An authentication token; empty for none.
    pub token: String,
    /// The user the client connects as; empty for none.
    pub user: String,
    /// The user's password; empty for none.
    pub password: String,
}

/// A subscription request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The subject pattern.
    pub pattern: String,
    /// The queue group, if any.
    pub queue_group: Option<String>,
    /// What the node does with this subscription's events when the
    /// connection cannot take them yet: hold their publishers back
    /// (`block`, up to `max_stall` per episode) or drop them.
    pub policy: SlowConsumerPolicy,
}

/// The wire codes of the slow-consumer policies in a `SUB` body.
const POLICY_BLOCK: u8 = 0;
const POLICY_DROP_NEWEST: u8 = 1;
const POLICY_DROP_OLDEST: u8 = 2;

/// What an `ERR` frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable reason.
    pub reason: String,
}

impl Hello {
    /// This build's hello, for a peer called `name`.
    pub fn ours(name: &str, token: &str) -> Self {
        Self {
            version: super::PROTOCOL_VERSION,
            fingerprint: starling_core::event::format_fingerprint(),
            name: name.to_owned(),
            token: token.to_owned(),
            user: String::new(),
            password: String::new(),
        }
    }

    /// The body bytes.
    pub fn encode(&self) -> Vec<u8> {
        let strings = self.name.len() + self.token.len() + self.user.len() + self.password.len();
        let mut out = Vec::with_capacity(24 + strings);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        put_string(&mut out, &self.name);
        put_string(&mut out, &self.token);
        put_string(&mut out, &self.user);
        put_string(&mut out, &self.password);
        out
    }

    /// The protocol version a body claims, read before the rest: a peer of
    /// another version may lay out the rest differently, and must be told
    /// the version, not that its HELLO is malformed.
    pub fn version_of(body: &[u8]) -> Option<u32> {
        Some(u32::from_le_bytes(body.get(..4)?.try_into().ok()?))
    }

    /// Parses a body.
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut reader = Reader::new(Kind::Hello, body);
        let version = reader.u32()?;
        if reader.u32()? != 0 {
            return Err(reader.malformed("reserved field is not zero"));
        }
        let fingerprint = reader.u64()?;
        let name = reader.string()?;
        let token = reader.string()?;
        let user = reader.string()?;
        let password = reader.string()?;
        reader.finish()?;
        Ok(Self {
            version,
            fingerprint,
            name,
            token,
            user,
            password,
        })
    }
}

impl Subscribe {
    /// A subscription to `pattern` (in `queue_group`) with the default,
    /// lossless policy.
    pub fn new(pattern: impl Into<String>, queue_group: Option<&str>) -> Self {
        Self {
            pattern: pattern.into(),
            queue_group: queue_group.map(String::from),
            policy: SlowConsumerPolicy::default(),
        }
    }

    /// The body bytes: pattern, group (empty for none), the policy's code and
    /// `max_stall` in milliseconds (0 unless `block`).
    pub fn encode(&self) -> Vec<u8> {
        let group = self.queue_group.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(9 + self.pattern.len() + group.len());
        put_string(&mut out, &self.pattern);
        put_string(&mut out, group);
        let (code, max_stall) = match self.policy {
            SlowConsumerPolicy::Block { max_stall } => (
                POLICY_BLOCK,
                u32::try_from(max_stall.as_millis()).unwrap_or(u32::MAX),
            ),
            SlowConsumerPolicy::DropNewest => (POLICY_DROP_NEWEST, 0),
            SlowConsumerPolicy::DropOldest => (POLICY_DROP_OLDEST, 0),
        };
        out.push(code);
        out.extend_from_slice(&max_stall.to_le_bytes());
        out
    }

    /// Parses a body.
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut reader = Reader::new(Kind::Sub, body);
        let pattern = reader.string()?;
        let group = reader.string()?;
        let code = reader.take(1)?[0];
        let max_stall = Duration::from_millis(u64::from(reader.u32()?));
        let policy = match code {
            POLICY_BLOCK => SlowConsumerPolicy::Block { max_stall },
            // Zero unless `block`, like any field that means nothing: a
            // sender that sets it believes something this node would ignore.
            POLICY_DROP_NEWEST | POLICY_DROP_OLDEST if !max_stall.is_zero() => {
                return Err(reader.malformed("max_stall without the block policy"));
            }
            POLICY_DROP_NEWEST => SlowConsumerPolicy::DropNewest,
            POLICY_DROP_OLDEST => SlowConsumerPolicy::DropOldest,
            _ => return Err(reader.malformed("unknown slow-consumer policy")),
        };
        reader.finish()?;
        Ok(Self {
            pattern,
            queue_group: (!group.is_empty()).then_some(group),
            policy,
        })
    }
}

impl ErrorBody {
    /// An error with a reason.
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > STRING_BYTES_MAX {
            let mut cut = STRING_BYTES_MAX;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Self { code, reason }
    }

    /// The body bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.reason.len());
        out.extend_from_slice(&(self.code as u16).to_le_bytes());
        put_string(&mut out, &self.reason);
        out
    }

    /// Parses a body.
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut reader = Reader::new(Kind::Err, body);
        let code = reader.u16()?;
        let code =
            ErrorCode::from_wire(code).ok_or_else(|| reader.malformed("unknown error code"))?;
        let reason = reader.string()?;
        reader.finish()?;
        Ok(Self { code, reason })
    }
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    assert!(
        text.len() <= STRING_BYTES_MAX,
        "control strings are at most {STRING_BYTES_MAX} bytes"
    );
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Reads fields off a body, checking each length first.
struct Reader<'a> {
    kind: Kind,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(kind: Kind, bytes: &'a [u8]) -> Self {
        Self { kind, bytes }
    }

    fn malformed(&self, reason: &'static str) -> FrameError {
        FrameError::Malformed {
            kind: self.kind,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.bytes.len() < n {
            return Err(self.malformed("body is shorter than its fields"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("two bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("four bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("eight bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, FrameError> {
        let len = self.u16()? as usize;
        if len > STRING_BYTES_MAX {
            return Err(self.malformed("string longer than the limit"));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.malformed("string is not UTF-8"))
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("bytes left over after the last field"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bodies_round_trip() {
        let hello = Hello {
            user: "alice".into(),
            password: "wonderland".into(),
            ..Hello::ours("client-1", "secret")
        };
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
        let sub = Subscribe {
            policy: SlowConsumerPolicy::Block {
                max_stall: Duration::from_millis(750),
            },
            ..Subscribe::new("orders.>", Some("workers"))
        };
        assert_eq!(Subscribe::decode(&sub.encode()).unwrap(), sub);
        for policy in [
            SlowConsumerPolicy::DropNewest,
            SlowConsumerPolicy::DropOldest,
        ] {
            let sub = Subscribe {
                policy,
                ..Subscribe::new("a.*", None)
            };
            assert_eq!(Subscribe::decode(&sub.encode()).unwrap(), sub);
        }
        let mut unknown = Subscribe::new("a", None).encode();
        let code = unknown.len() - 5;
        unknown[code] = 9;
        assert!(
            Subscribe::decode(&unknown).is_err(),
            "an unknown policy is refused"
        );
        let plain = Subscribe::new("a", None);
        assert_eq!(Subscribe::decode(&plain.encode()).unwrap(), plain);
        let error = ErrorBody::new(ErrorCode::Limit, "too many subscriptions");
        assert_eq!(ErrorBody::decode(&error.encode()).unwrap(), error);
    }

    /// Found by the `control_bodies` fuzz target: a drop-oldest SUB with a
    /// max_stall was taken, the max_stall silently dropped.
    #[test]
    fn a_max_stall_without_block_is_refused() {
        let body = [3, 0, b'a', b'*', 3, 0, 0, POLICY_DROP_OLDEST, 0, 1, 0, 114];
        assert!(matches!(
            Subscribe::decode(&body),
            Err(FrameError::Malformed {
                reason: "max_stall without the block policy",
                ..
            })
        ));
        let mut zero = body;
        zero[8..].fill(0);
        assert!(Subscribe::decode(&zero).is_ok());
    }

    /// A protocol 2 client's HELLO (no user, no password) is malformed as
    /// protocol 3, but its version can still be read.
    #[test]
    fn an_older_hello_still_tells_its_version() {
        let mut old = Hello::ours("old", "");
        old.version = 2;
        let mut body = old.encode();
        body.truncate(body.len() - 4);
        assert!(Hello::decode(&body).is_err());
        assert_eq!(Hello::version_of(&body), Some(2));
        assert_eq!(Hello::version_of(&body[..3]), None);
    }

    #[test]
    fn truncated_and_padded_bodies_are_refused() {
        let body = Hello::ours("n", "").encode();
        for cut in 0..body.len() {
            assert!(Hello::decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(Hello::decode(&longer).is_err());
        let lying = [0xFF, 0xFF, b'a'];
        assert!(Subscribe::decode(&lying).is_err());
        assert!(
            ErrorBody::decode(&[0xFF, 0xFF, 0, 0]).is_err(),
            "unknown code"
        );
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let error = ErrorBody::new(ErrorCode::Framing, "é".repeat(STRING_BYTES_MAX));
        assert!(error.reason.len() <= STRING_BYTES_MAX);
        assert_eq!(ErrorBody::decode(&error.encode()).unwrap(), error);
    }
}
