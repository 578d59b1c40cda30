//! [`Pump`]: one TLS connection's bytes, moved between its TCP socket
//! (ciphertext) and a socket pair (plaintext), on either side: a server's
//! [`super::Terminator`] runs one per TLS connection on one thread, a
//! client one on a thread of its own ([`Pump::run_alone`]).
//!
//! Non-blocking and edge-triggered: [`Pump::drive`] moves bytes until
//! every socket it needs would block (readiness will come again for each)
//! or its turn is up. It never buffers without bound: it reads ciphertext
//! only while rustls has no plaintext waiting for the plaintext socket, and
//! reads plaintext only once rustls has written all its ciphertext out, so
//! a slow reader on either side holds the writer on the other back (each
//! socket's buffer fills, then TCP's window closes) and the pump holds at
//! most one read of each.

use std::io::{self, BufRead, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Registry, Token};
use rustls::{AlertDescription, CertificateError, Connection};

use super::Failure;

/// Bytes read from either socket at once (the terminator's loop shares one
/// buffer of this size among its pumps).
pub(crate) const SCRATCH_BYTES: usize = 64 << 10;
/// Rounds of moving bytes per turn: one busy connection does not keep the
/// terminator's other connections waiting.
const ROUNDS_PER_TURN: usize = 8;
/// What a client says when its server answers, but not in TLS.
const NOT_TLS: &str = "the server did not answer TLS: is it a plain tcp:// port?";

/// What [`Pump::drive`] left the pump in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drive {
    /// Waiting for a socket's readiness.
    Blocked,
    /// More to do, but its turn is up: drive it again soon, without
    /// waiting for readiness (which will not come again for bytes already
    /// there).
    TurnUp,
    /// Over: drop it.
    Done,
}

/// One TLS connection.
#[derive(Debug)]
pub(crate) struct Pump {
    tls: Connection,
    tcp: TcpStream,
    plain: UnixStream,
    phase: Phase,
    /// The peer's first bytes looked like TLS.
    prefix_seen: bool,
    /// The local side reads no more (it closed): what the peer sends is
    /// dropped, while what the local side wrote before it closed (say, an
    /// `ERR` refusing the connection) still goes out.
    plain_closed: bool,
    /// Ciphertext read that rustls could not take yet, because the
    /// plaintext of the record before waits for room in the plaintext
    /// socket. Unallocated unless the local side is slower than the peer.
    cipher: Vec<u8>,
    /// How long the handshake may take, and closing: then the pump ends.
    timeout: Duration,
    deadline: Instant,
    role: Role,
}

/// The side a pump is on, and what it does when TLS fails.
#[derive(Debug)]
enum Role {
    /// Logs failures; tells a client that does not speak TLS `refusal`.
    Server { refusal: Arc<[u8]> },
    /// Writes failures down for the client to report.
    Client { failure: Arc<Failure> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The handshake, then data both ways.
    Open,
    /// Our last words (an alert, a `close_notify`, or a plain `ERR` frame)
    /// go out; then the TCP write side is shut (`shut`), and what the peer
    /// still sends is read and dropped until it closes too: unread input
    /// would make the kernel reset the connection, and the peer could lose
    /// our last words.
    Closing {
        shut: bool,
    },
    Done,
}

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Drop both sockets now.
    Now,
    /// Close the plaintext side now, say the last words on TCP, then close.
    Gracefully,
}

impl Pump {
    /// A server's pump between `tcp` and `plain` (made non-blocking here);
    /// the handshake, and closing, may take `timeout` each; a client that
    /// does not speak TLS is told `refusal`.
    pub(crate) fn server(
        tls: rustls::ServerConnection,
        tcp: std::net::TcpStream,
        plain: std::os::unix::net::UnixStream,
        timeout: Duration,
        refusal: Arc<[u8]>,
    ) -> io::Result<Pump> {
        Pump::new(tls.into(), tcp, plain, timeout, Role::Server { refusal })
    }

    /// A client's pump, as [`Pump::server`]; why TLS failed, if it does,
    /// goes to `failure`.
    pub(crate) fn client(
        tls: rustls::ClientConnection,
        tcp: std::net::TcpStream,
        plain: std::os::unix::net::UnixStream,
        timeout: Duration,
        failure: Arc<Failure>,
    ) -> io::Result<Pump> {
        Pump::new(tls.into(), tcp, plain, timeout, Role::Client { failure })
    }

    fn new(
        mut tls: Connection,
        tcp: std::net::TcpStream,
        plain: std::os::unix::net::UnixStream,
        timeout: Duration,
        role: Role,
    ) -> io::Result<Pump> {
        tcp.set_nonblocking(true)?;
        tcp.set_nodelay(true)?;
        plain.set_nonblocking(true)?;
        // The pump keeps rustls's output to one read of plaintext itself
        // (see `take_plain`); rustls's own limit would cut that read short.
        tls.set_buffer_limit(None);
        Ok(Pump {
            tls,
            tcp: TcpStream::from_std(tcp),
            plain: UnixStream::from_std(plain),
            phase: Phase::Open,
            prefix_seen: false,
            plain_closed: false,
            cipher: Vec::new(),
            timeout,
            deadline: Instant::now() + timeout,
            role,
        })
    }

    /// Registers both sockets with `registry` under `token`, for both
    /// directions, edge-triggered.
    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        registry.register(&mut self.tcp, token, interest)?;
        registry.register(&mut self.plain, token, interest)
    }

    /// Undoes [`Pump::register`].
    pub(crate) fn deregister(&mut self, registry: &Registry) {
        // Fails only for a socket that was never registered.
        let _ = registry.deregister(&mut self.tcp);
        let _ = registry.deregister(&mut self.plain);
    }

    /// The peer's address, for logs.
    pub(crate) fn peer(&self) -> String {
        self.tcp
            .peer_addr()
            .map(|address| address.to_string())
            .unwrap_or_default()
    }

    /// When the pump ends unless its handshake or its closing is done.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let waiting = match self.phase {
            Phase::Open => self.tls.is_handshaking(),
            Phase::Closing { .. } => true,
            Phase::Done => false,
        };
        waiting.then_some(self.deadline)
    }

    /// True if the pump's deadline has passed: it is over (drop it).
    pub(crate) fn expired(&mut self, now: Instant) -> bool {
        if self.deadline().is_none_or(|deadline| deadline > now) {
            return false;
        }
        if self.phase == Phase::Open {
            self.fail(format!(
                "the TLS handshake was not done within {} ms",
                self.timeout.as_millis()
            ));
        }
        self.phase = Phase::Done;
        true
    }

    /// Moves bytes until every socket it needs would block, its turn is
    /// up, or the connection is over.
    pub(crate) fn drive(&mut self, scratch: &mut [u8]) -> Drive {
        for _ in 0..ROUNDS_PER_TURN {
            let moved = match self.step(scratch) {
                Ok(moved) => moved,
                Err(end) => {
                    self.end(end);
                    true
                }
            };
            if self.phase == Phase::Done {
                return Drive::Done;
            }
            if !moved {
                return Drive::Blocked;
            }
        }
        Drive::TurnUp
    }

    /// Runs the pump on this thread until it is over: a client's
    /// connection.
    pub(crate) fn run_alone(mut self) {
        let Ok(mut poll) = Poll::new() else {
            self.fail("cannot poll the TLS connection".into());
            return;
        };
        if self.register(poll.registry(), Token(0)).is_err() {
            self.fail("cannot poll the TLS connection".into());
            return;
        }
        let mut events = Events::with_capacity(4);
        let mut scratch = vec![0u8; SCRATCH_BYTES];
        loop {
            match self.drive(&mut scratch) {
                Drive::Done => break,
                Drive::TurnUp => continue,
                Drive::Blocked => {}
            }
            let timeout = self
                .deadline()
                .map(|deadline| deadline.saturating_duration_since(Instant::now()));
            if let Err(error) = poll.poll(&mut events, timeout)
                && error.kind() != io::ErrorKind::Interrupted
            {
                break;
            }
            if self.expired(Instant::now()) {
                break;
            }
        }
        self.deregister(poll.registry());
    }

    /// One round: whatever can move, moves. True if anything did.
    fn step(&mut self, scratch: &mut [u8]) -> Result<bool, End> {
        match self.phase {
            Phase::Open => {
                let mut moved = self.send_tls()?;
                moved |= self.receive_tls(scratch)?;
                moved |= self.take_plain(scratch)?;
                Ok(moved)
            }
            Phase::Closing { shut } => self.close(shut, scratch),
            Phase::Done => Ok(false),
        }
    }

    fn end(&mut self, end: End) {
        match end {
            End::Now => self.phase = Phase::Done,
            End::Gracefully => {
                // The local side learns at once; a failure is written down
                // already.
                let _ = self.plain.shutdown(Shutdown::Both);
                self.phase = Phase::Closing { shut: false };
                self.deadline = Instant::now() + self.timeout;
            }
        }
    }

    /// Writes what rustls has for the peer.
    fn send_tls(&mut self) -> Result<bool, End> {
        let mut moved = false;
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(_) => moved = true,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(self.lost(&error)),
            }
        }
        Ok(moved)
    }

    /// The TCP connection failed under us.
    fn lost(&self, error: &io::Error) -> End {
        self.fail(format!("the TLS connection broke: {error}"));
        End::Now
    }

    /// Reads ciphertext (one read of the socket at most) into rustls and
    /// its plaintext out to the local side, as far as the local side takes
    /// it.
    fn receive_tls(&mut self, scratch: &mut [u8]) -> Result<bool, End> {
        if !self.prefix_seen && !self.check_prefix(scratch)? {
            return Ok(false);
        }
        let moved = self.deliver_plain()?;
        if !self.tls.wants_read() {
            return Ok(moved);
        }
        if !self.cipher.is_empty() {
            let mut cipher = std::mem::take(&mut self.cipher);
            let used = self.absorb(&cipher)?;
            cipher.drain(..used);
            if !cipher.is_empty() {
                self.cipher = cipher;
            }
            return Ok(true);
        }
        loop {
            match self.tcp.read(scratch) {
                Ok(0) => {
                    if self.tls.is_handshaking() {
                        self.fail(
                            "the server closed the connection during the TLS handshake".into(),
                        );
                        return Err(End::Now);
                    }
                    // Tell rustls: it reports the end once its plaintext is
                    // out (`deliver_plain`).
                    let _ = self.tls.read_tls(&mut io::empty());
                    self.deliver_plain()?;
                    return Ok(true);
                }
                Ok(n) => {
                    let used = self.absorb(&scratch[..n])?;
                    // Kept only while the local side is slower than the peer.
                    self.cipher.extend_from_slice(&scratch[used..n]);
                    return Ok(true);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(self.lost(&error)),
            }
        }
    }

    /// Hands `bytes` of ciphertext to rustls and the plaintext they hold to
    /// the local side, record by record, until all are used or the local
    /// side (or the handshake's reply) must be waited for; returns how many
    /// were used.
    fn absorb(&mut self, bytes: &[u8]) -> Result<usize, End> {
        let mut used = 0;
        while used < bytes.len() {
            used += self.feed(&bytes[used..])?;
            self.deliver_plain()?;
            if !self.tls.wants_read() {
                break;
            }
        }
        Ok(used)
    }

    /// Hands ciphertext to rustls as long as it takes more; returns how many
    /// bytes it took.
    fn feed(&mut self, bytes: &[u8]) -> Result<usize, End> {
        let mut rest = bytes;
        while !rest.is_empty() && self.tls.wants_read() {
            if let Err(error) = self.tls.read_tls(&mut rest) {
                self.fail(format!("TLS: {error}"));
                return Err(End::Now);
            }
            if let Err(error) = self.tls.process_new_packets() {
                self.fail(describe(&error));
                // rustls has queued an alert saying why.
                return Err(End::Gracefully);
            }
        }
        Ok(bytes.len() - rest.len())
    }

    /// Writes the plaintext rustls has decrypted to the local side.
    fn deliver_plain(&mut self) -> Result<bool, End> {
        let mut moved = false;
        loop {
            let mut reader = self.tls.reader();
            let chunk = match reader.fill_buf() {
                // The peer said close_notify and everything is delivered;
                // or it closed TCP and everything is delivered.
                Ok([]) => return Err(End::Now),
                Ok(chunk) => chunk,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                Err(_) => return Err(End::Now),
            };
            if self.plain_closed {
                let n = chunk.len();
                reader.consume(n);
                moved = true;
                continue;
            }
            match (&self.plain).write(chunk) {
                Ok(n) => {
                    reader.consume(n);
                    moved = true;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // Closed: `take_plain` reads what it left, then its end.
                Err(_) => self.plain_closed = true,
            }
        }
    }

    /// Reads plaintext from the local side into rustls, once the handshake
    /// is done and everything rustls had for the peer is written.
    fn take_plain(&mut self, scratch: &mut [u8]) -> Result<bool, End> {
        if self.tls.is_handshaking() || self.tls.wants_write() {
            return Ok(false);
        }
        loop {
            match (&self.plain).read(scratch) {
                Ok(0) => return Err(self.local_closed()),
                Ok(n) => {
                    // No buffer limit (see `new`): rustls takes it all.
                    if self.tls.writer().write_all(&scratch[..n]).is_err() {
                        return Err(End::Now);
                    }
                    return Ok(true);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(self.local_closed()),
            }
        }
    }

    /// The local side closed: tell the peer, then close.
    fn local_closed(&mut self) -> End {
        self.tls.send_close_notify();
        End::Gracefully
    }

    /// Says the last words, shuts the write side, and drops what the peer
    /// sends until it closes.
    fn close(&mut self, shut: bool, scratch: &mut [u8]) -> Result<bool, End> {
        let mut moved = self.send_tls()?;
        if self.tls.wants_write() {
            return Ok(moved);
        }
        if !shut {
            let _ = self.tcp.shutdown(Shutdown::Write);
            self.phase = Phase::Closing { shut: true };
            moved = true;
        }
        loop {
            match self.tcp.read(scratch) {
                Ok(0) => return Err(End::Now),
                Ok(_) => moved = true,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(End::Now),
            }
        }
    }

    /// Looks at the peer's first bytes without taking them: true once they
    /// look like TLS, false while too few have come to tell.
    fn check_prefix(&mut self, scratch: &mut [u8]) -> Result<bool, End> {
        let mut head = [0u8; CLIENT_HELLO_PREFIX];
        let n = loop {
            match self.tcp.peek(&mut head) {
                Ok(n) => break n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) => return Err(self.lost(&error)),
            }
        };
        if n == 0 {
            self.fail("the server closed the connection during the TLS handshake".into());
            return Err(End::Now);
        }
        match looks_like_tls(self.is_server(), &head[..n]) {
            Some(true) => {
                self.prefix_seen = true;
                Ok(true)
            }
            None => Ok(false),
            Some(false) => match &self.role {
                Role::Server { refusal } => {
                    // Take what it sent (unread input would reset the
                    // connection under our answer), then answer in its own
                    // protocol; a new connection's socket takes it whole.
                    let _ = self.tcp.read(scratch);
                    let _ = self.tcp.write(refusal);
                    tracing::debug!(peer = %self.peer(), "a client spoke plain to a TLS port");
                    Err(End::Gracefully)
                }
                Role::Client { .. } => {
                    self.fail(NOT_TLS.into());
                    Err(End::Now)
                }
            },
        }
    }

    fn is_server(&self) -> bool {
        matches!(self.role, Role::Server { .. })
    }

    /// Writes down why TLS failed: for the client to report, in the
    /// server's log.
    fn fail(&self, reason: String) {
        match &self.role {
            Role::Server { .. } => {
                tracing::debug!(peer = %self.peer(), "TLS connection failed: {reason}");
            }
            Role::Client { failure } => failure.set(reason),
        }
    }
}

/// Bytes of a ClientHello's start that tell it from anything else: a
/// record header (type 22, version 3.x, length) and the handshake type (1).
const CLIENT_HELLO_PREFIX: usize = 6;
/// Bytes of a server's first record that tell TLS from anything else: its
/// type and version.
const SERVER_RECORD_PREFIX: usize = 3;

/// Whether `head`, a peer's first bytes, are TLS: `None` while too few have
/// come to tell. A server expects a ClientHello; a client a handshake
/// record or an alert. A Starling frame never passes: its sixth byte (the
/// flags) is zero where a ClientHello has 1, and a frame whose first bytes
/// read as a TLS record header would have a body of about 790 bytes with
/// the wrong kind.
fn looks_like_tls(server: bool, head: &[u8]) -> Option<bool> {
    let wanted = if server {
        CLIENT_HELLO_PREFIX
    } else {
        SERVER_RECORD_PREFIX
    };
    for (index, &byte) in head.iter().enumerate().take(wanted) {
        let fits = match index {
            // Handshake (22); a server may also answer with an alert (21).
            0 => byte == 22 || (!server && byte == 21),
            1 => byte == 3,
            2 => byte <= 4,
            5 => byte == 1,
            _ => true,
        };
        if !fits {
            return Some(false);
        }
    }
    (head.len() >= wanted).then_some(true)
}

/// A rustls error, with what to do about the usual ones.
fn describe(error: &rustls::Error) -> String {
    use rustls::Error;
    let hint = match error {
        Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => " (is the CA given, --ca, the one that signed the node's certificate?)",
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => " (the certificate must name the host dialled: `starling cert node NAME --san HOST`)",
        Error::AlertReceived(AlertDescription::CertificateRequired) => {
            " (the node requires a client certificate: give --tls-cert and --tls-key)"
        }
        // A certificate from a CA of the same name but another key (two
        // `starling cert ca`) fails its signature check: DecryptError.
        Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::DecryptError,
        ) => " (the node refused this client certificate: is it signed by the node's client CA?)",
        _ => "",
    };
    format!("TLS: {error}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hello_is_told_from_a_starling_frame_by_its_first_bytes() {
        let client_hello = [22, 3, 1, 0, 200, 1, 0, 0, 196];
        assert_eq!(looks_like_tls(true, &client_hello), Some(true));
        assert_eq!(looks_like_tls(true, &client_hello[..5]), None, "too few");
        // A HELLO frame whose body is 0x316 bytes reads as a record header;
        // its flags byte, zero, gives it away.
        let hello = crate::frame::Header::new(crate::frame::Kind::Hello, 0, 0x316).encode();
        assert_eq!(&hello[..3], &[0x16, 3, 0]);
        assert_eq!(looks_like_tls(true, &hello), Some(false));
        // Any other frame differs at once.
        let frame = crate::frame::Header::new(crate::frame::Kind::Hello, 0, 40).encode();
        assert_eq!(looks_like_tls(true, &frame[..1]), Some(false));
        // A client takes a handshake record or an alert, not a frame.
        assert_eq!(looks_like_tls(false, &[22, 3, 3]), Some(true));
        assert_eq!(looks_like_tls(false, &[21, 3, 3]), Some(true));
        let error = crate::frame::error_frame(crate::frame::ErrorCode::Framing, "bad frame");
        assert_eq!(looks_like_tls(false, &error), Some(false));
    }
}
