//! What a NATS server sends, and the JSON of INFO and CONNECT.
//!
//! The `-ERR` texts are nats-server's, quotes included: clients match on
//! them (nats.go and nats.py treat `'Stale Connection'` as a reason to
//! reconnect and `'Authorization Violation'` as an authentication failure,
//! and close on a text they do not know).

use serde::{Deserialize, Serialize};

use starling_core::Header;

/// `-ERR` for an unknown operation or a payload whose size lied.
pub const ERR_UNKNOWN_OPERATION: &[u8] = b"-ERR 'Unknown Protocol Operation'\r\n";
/// `-ERR` for a control line over the limit (nats-server's text: lower case).
pub const ERR_CONTROL_LINE: &[u8] = b"-ERR 'maximum control line exceeded'\r\n";
/// `-ERR` for a payload over `max_payload`.
pub const ERR_MAX_PAYLOAD: &[u8] = b"-ERR 'Maximum Payload Violation'\r\n";
/// `-ERR` for anything but CONNECT before authenticating, or wrong credentials.
pub const ERR_AUTHORIZATION: &[u8] = b"-ERR 'Authorization Violation'\r\n";
/// `-ERR` for no CONNECT within the authentication timeout.
pub const ERR_AUTH_TIMEOUT: &[u8] = b"-ERR 'Authentication Timeout'\r\n";
/// Our own: every password verifier is busy, or the client's address
/// failed a login a moment ago; the credentials may be right, retry.
pub const ERR_AUTH_BUSY: &[u8] = b"-ERR 'Authorization Busy, Retry Later'\r\n";
/// `-ERR` for a SUB whose subject is not a valid pattern.
pub const ERR_INVALID_SUBJECT: &[u8] = b"-ERR 'Invalid Subject'\r\n";
/// `-ERR` (pedantic clients only, as nats-server) for a PUB to an invalid subject.
pub const ERR_INVALID_PUBLISH_SUBJECT: &[u8] = b"-ERR 'Invalid Publish Subject'\r\n";
/// `-ERR` for a client that answered none of the server's last pings.
pub const ERR_STALE: &[u8] = b"-ERR 'Stale Connection'\r\n";
/// `-ERR` for a client that does not read what it is sent.
pub const ERR_SLOW_CONSUMER: &[u8] = b"-ERR 'Slow Consumer'\r\n";
/// `-ERR` for a connection over the node's limit.
pub const ERR_MAX_CONNECTIONS: &[u8] = b"-ERR 'maximum connections exceeded'\r\n";
/// `-ERR` for a connection over its subscription limit.
pub const ERR_MAX_SUBSCRIPTIONS: &[u8] = b"-ERR 'maximum subscriptions exceeded'\r\n";
/// `-ERR` for a client that does not start TLS on a listener that requires
/// it (nats-server's text).
pub const ERR_TLS_REQUIRED: &[u8] = b"-ERR 'Secure Connection - TLS Required'\r\n";

/// `PING`.
pub const PING: &[u8] = b"PING\r\n";
/// `PONG`.
pub const PONG: &[u8] = b"PONG\r\n";
/// `+OK`, for verbose clients.
pub const OK: &[u8] = b"+OK\r\n";

/// The header block of a "no responders" reply: status 503, no headers.
pub const NO_RESPONDERS: &[u8] = b"NATS/1.0 503\r\n\r\n";

/// The version line every header block starts with.
const HEADER_VERSION: &[u8] = b"NATS/1.0";

/// The server's INFO. Clients read `headers`, `proto` and `version` to decide
/// whether to use headers and no-responders (nats.go and async-nats want a
/// 2.2+ server), and `max_payload` to refuse large messages themselves.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    /// The server's unique id.
    pub server_id: String,
    /// The server's name.
    pub server_name: String,
    /// The NATS server version this node behaves as.
    pub version: String,
    /// Its implementation language, as nats-server reports `go`.
    pub go: String,
    /// The host it listens on.
    pub host: String,
    /// The port it listens on.
    pub port: u16,
    /// Header blocks (HPUB, HMSG) are understood.
    pub headers: bool,
    /// A CONNECT must carry credentials.
    pub auth_required: bool,
    /// TLS is required: the client starts it after this INFO.
    pub tls_required: bool,
    /// Clients must present a certificate (TLS with a client CA).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_verify: bool,
    /// Largest payload accepted.
    pub max_payload: usize,
    /// Protocol level: 1 (asynchronous INFO, headers).
    pub proto: u8,
    /// This connection's id.
    pub client_id: u64,
    /// This connection's address as the server sees it.
    pub client_ip: String,
    /// Lame-duck mode: the server will stop soon; clients move elsewhere.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ldm: bool,
}

impl ServerInfo {
    /// The `INFO {...}\r\n` line.
    pub fn encode(&self) -> Vec<u8> {
        let mut line = b"INFO ".to_vec();
        // Serializing plain fields into a Vec cannot fail.
        serde_json::to_writer(&mut line, self).unwrap_or_default();
        line.extend_from_slice(b"\r\n");
        line
    }
}

/// A client's CONNECT. Unknown fields are ignored (clients send many).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ConnectOptions {
    /// Answer each accepted operation with `+OK`.
    pub verbose: bool,
    /// Check subjects strictly and say so (`-ERR 'Invalid Publish Subject'`).
    pub pedantic: bool,
    /// Deliver the client's own messages to its subscriptions.
    pub echo: Option<bool>,
    /// The client understands header blocks.
    pub headers: bool,
    /// The client wants a 503 status when a request reaches nobody.
    pub no_responders: bool,
    /// The client's name.
    pub name: Option<String>,
    /// Its language.
    pub lang: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// Its protocol level.
    pub protocol: Option<u8>,
    /// A token.
    pub auth_token: Option<String>,
    /// A user name.
    pub user: Option<String>,
    /// A password.
    pub pass: Option<String>,
}

/// `-ERR 'Permissions Violation for Publish to "subject"'`, as nats-server
/// writes it (Go's `%q`), appended to `out`.
pub fn encode_publish_violation(out: &mut Vec<u8>, subject: &str) {
    out.extend_from_slice(b"-ERR 'Permissions Violation for Publish to ");
    go_quote(out, subject);
    out.extend_from_slice(b"'\r\n");
}

/// `-ERR 'Permissions Violation for Subscription to "pattern"'` (with
/// ` using queue "group"` for a queue subscription), as nats-server writes
/// it, appended to `out`.
pub fn encode_subscription_violation(out: &mut Vec<u8>, pattern: &str, queue: Option<&str>) {
    out.extend_from_slice(b"-ERR 'Permissions Violation for Subscription to ");
    go_quote(out, pattern);
    if let Some(queue) = queue {
        out.extend_from_slice(b" using queue ");
        go_quote(out, queue);
    }
    out.extend_from_slice(b"'\r\n");
}

/// `text` in double quotes with `"` and `\` escaped: Go's `%q` for what a
/// valid subject can hold (no control characters, no whitespace).
fn go_quote(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    for byte in text.bytes() {
        if matches!(byte, b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(byte);
    }
    out.push(b'"');
}

/// `MSG subject sid [reply] size\r\npayload\r\n`, or with `headers`,
/// `HMSG subject sid [reply] header_size total_size\r\nheaders payload\r\n`,
/// appended to `out`.
pub fn encode_msg(
    out: &mut Vec<u8>,
    subject: &str,
    sid: &[u8],
    reply: Option<&str>,
    headers: Option<&[u8]>,
    payload: &[u8],
) {
    out.extend_from_slice(if headers.is_some() { b"HMSG " } else { b"MSG " });
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(sid);
    out.push(b' ');
    if let Some(reply) = reply {
        out.extend_from_slice(reply.as_bytes());
        out.push(b' ');
    }
    if let Some(headers) = headers {
        push_number(out, headers.len());
        out.push(b' ');
        push_number(out, headers.len() + payload.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(headers);
    } else {
        push_number(out, payload.len());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal (without going through `fmt`, which is slower).
fn push_number(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends an event's headers as a NATS header block, or nothing if none of
/// them can be written. A header whose value holds a line break cannot be
/// written in a NATS header block and is left out.
pub fn encode_headers<'a>(
    out: &mut Vec<u8>,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> bool {
    let start = out.len();
    out.extend_from_slice(HEADER_VERSION);
    out.extend_from_slice(b"\r\n");
    let mut any = false;
    for (name, value) in headers {
        if value.iter().any(|&b| b == b'\r' || b == b'\n') {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
        any = true;
    }
    if any {
        out.extend_from_slice(b"\r\n");
    } else {
        out.truncate(start);
    }
    any
}

/// Why a header block was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed NATS header block")]
pub struct HeaderError;

/// Reads a NATS header block (`NATS/1.0[ status]\r\nName: value\r\n...\r\n`)
/// into `headers`, borrowing names and values from `block`. A status on the
/// version line is not kept: statuses are the server's to send. Values keep
/// their bytes but lose surrounding blanks, as in HTTP.
pub fn parse_headers<'a>(
    block: &'a [u8],
    headers: &mut Vec<Header<'a>>,
) -> Result<(), HeaderError> {
    let mut lines = block.split(|&b| b == b'\n').map(|line| match line {
        [line @ .., b'\r'] => line,
        line => line,
    });
    match lines.next() {
        Some(version) if version.starts_with(HEADER_VERSION) => {}
        _ => return Err(HeaderError),
    }
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let colon = line.iter().position(|&b| b == b':').ok_or(HeaderError)?;
        let name = std::str::from_utf8(&line[..colon]).map_err(|_| HeaderError)?;
        let value = line[colon + 1..].trim_ascii();
        headers.push(Header(name.trim_ascii(), value));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_and_hmsg_carry_exact_sizes() {
        let mut out = Vec::new();
        encode_msg(&mut out, "a.b", b"7", None, None, b"hello");
        encode_msg(&mut out, "a.b", b"7", Some("r"), Some(NO_RESPONDERS), b"");
        assert_eq!(
            out,
            b"MSG a.b 7 5\r\nhello\r\nHMSG a.b 7 r 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
        );
    }

    #[test]
    fn permission_violations_read_as_nats_server_writes_them() {
        let mut out = Vec::new();
        encode_publish_violation(&mut out, "orders.us.1");
        encode_subscription_violation(&mut out, "orders.*", None);
        encode_subscription_violation(&mut out, "a\"b", Some("workers"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-ERR 'Permissions Violation for Publish to \"orders.us.1\"'\r\n\
             -ERR 'Permissions Violation for Subscription to \"orders.*\"'\r\n\
             -ERR 'Permissions Violation for Subscription to \"a\\\"b\" using queue \"workers\"'\r\n"
        );
    }

    #[test]
    fn header_blocks_round_trip() {
        let mut block = Vec::new();
        let written = [("ce-type", &b"order"[..]), ("bad", b"a\r\nb"), ("K", b"")];
        assert!(encode_headers(&mut block, written.into_iter()));
        assert_eq!(block, b"NATS/1.0\r\nce-type: order\r\nK: \r\n\r\n");
        let mut headers = Vec::new();
        parse_headers(&block, &mut headers).unwrap();
        assert_eq!(headers, [Header("ce-type", b"order"), Header("K", b"")]);
        assert!(!encode_headers(
            &mut Vec::new(),
            [("x", &b"\n"[..])].into_iter()
        ));
        assert_eq!(
            parse_headers(b"HTTP/1.1\r\n\r\n", &mut Vec::new()),
            Err(HeaderError)
        );
        assert_eq!(
            parse_headers(b"NATS/1.0\r\nno colon\r\n\r\n", &mut Vec::new()),
            Err(HeaderError)
        );
    }

    #[test]
    fn connect_ignores_fields_it_does_not_know() {
        let connect: ConnectOptions = serde_json::from_str(
            r#"{"verbose":true,"headers":true,"no_responders":true,"auth_token":"t","sig":"x","tls_required":false}"#,
        )
        .unwrap();
        assert!(connect.verbose && connect.headers && connect.no_responders);
        assert_eq!(connect.auth_token.as_deref(), Some("t"));
    }
}
