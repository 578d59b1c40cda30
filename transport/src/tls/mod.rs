//! TLS on the local server's TCP port (and the NATS listener's), and for
//! clients that dial `tls://HOST:PORT`: rustls (TLS 1.3, the ring provider,
//! as the mesh's links), certificates from PEM files.
//!
//! ```text
//!  client app ─► socket pair ─► pump thread ═TLS/TCP═► Terminator thread ─► socket pair ─► I/O thread
//!  (frames)      (plaintext)    (rustls, one            (rustls, one loop      (plaintext)    (io_uring or epoll:
//!                               per connection)          for every pump)                       a connection like any)
//! ```
//!
//! Where TLS sits on the server: beside the I/O backends, not inside them.
//! The I/O thread accepts TCP as always, hands each connection to a
//! [`Terminator`] thread, and serves the plaintext end of a socket pair in
//! its place (listed as transport `tls`, with the client's address); on the
//! terminator's thread a `Pump` moves bytes between the TCP socket
//! (ciphertext) and the pair's other end (plaintext). Why not rustls inside
//! both backends:
//!
//! - The backends are built around few copies: io_uring receives into a
//!   registered buffer ring and sends gathered slices (large archives
//!   straight from event memory). Encryption copies every byte anyway, so TLS inside them would
//!   need a second receive and send path in each (buffered, with rustls's
//!   state between completions), two new state machines where a mistake
//!   loses or reorders bytes. The socket pair keeps both backends as they
//!   are; TLS is written once, for both, for the NATS listener (tokio), and
//!   for the client.
//! - Crypto runs on a thread of its own, beside the I/O thread, so TLS
//!   clients cost the I/O thread no more than Unix-socket clients do.
//! - The limits hold unchanged: the session's handshake timeout starts when
//!   the connection is accepted, so it covers the TLS handshake too, and the
//!   pump ends a TLS handshake not done within that same timeout itself;
//!   `connections_max` counts TLS connections like the others (pumps are
//!   bounded too); half-received frames are the session's, within the
//!   node-wide budget as always. A pump holds at most one TLS record of
//!   ciphertext and one of plaintext, plus a 64 KiB read only while the
//!   local side is slower than the network.
//!
//! The cost: each byte crosses a socket pair once more (a copy in and out
//! of the kernel) and a thread hop; see ARCHITECTURE.md for the figures.
//!
//! The client does the same with one pump per connection, on a thread of
//! its own: the client's reader and flusher threads share one socket
//! without a lock, which a rustls connection (one state for both
//! directions) does not allow.
//!
//! A peer that does not speak TLS gets a clear answer, not a hang or a
//! decode error: a server looks at a new connection's first bytes, and if
//! they are not a TLS ClientHello it answers in the peer's own protocol (a
//! Starling `ERR` frame, "this port requires TLS"; NATS's `-ERR`) before
//! closing; a client whose server's first bytes are not a TLS record says
//! "the server did not answer TLS".

mod pump;
mod terminator;

pub use terminator::{Terminator, TerminatorConfig};

use std::fmt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;

use crate::stream::Stream;

/// Why TLS settings could not be made.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read, or holds nothing usable of the kind needed.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: String,
    },
    /// rustls refused the settings (for example, a key that does not
    /// match its certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider of every TLS connection here: ring, as the mesh's
/// links (no C toolchain needed, unlike aws-lc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM file (a chain: the leaf first).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(|error| file_error(path, error.to_string()))?;
    if certificates.is_empty() {
        return Err(file_error(path, "no CERTIFICATE in it".into()));
    }
    Ok(certificates)
}

/// The private key in a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|error| file_error(path, format!("no usable private key: {error}")))
}

/// The CA certificates in a PEM file, as trust anchors.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots
            .add(certificate)
            .map_err(|error| file_error(path, format!("not a usable CA certificate: {error}")))?;
    }
    Ok(roots)
}

fn file_error(path: &Path, what: String) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        what,
    }
}

/// How the local server's TCP port speaks TLS: its certificate, and
/// whether clients must present one of their own.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    verifies_clients: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("verifies_clients", &self.verifies_clients)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The server's certificate (chain) and key from PEM files; with
    /// `client_ca`, every client must present a certificate that chains to
    /// it (a connection without one is refused during the handshake).
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match client_ca {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                        .build()
                        .map_err(|error| file_error(ca, error.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(certificates(cert)?, private_key(key)?)?;
        Ok(ServerTls {
            config: Arc::new(config),
            verifies_clients: client_ca.is_some(),
        })
    }

    /// Settings made elsewhere; `verifies_clients` says whether `config`
    /// makes client certificates mandatory (which authenticates clients).
    pub fn new(config: Arc<rustls::ServerConfig>, verifies_clients: bool) -> ServerTls {
        ServerTls {
            config,
            verifies_clients,
        }
    }

    /// Whether every client must present a certificate from the client CA.
    pub fn verifies_clients(&self) -> bool {
        self.verifies_clients
    }

    /// The rustls settings.
    pub fn config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }
}

/// How a client checks the node's certificate, and its own certificate if
/// the node asks for one.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA in the PEM file `ca` (the one that signed the node's
    /// certificate); `identity`, a certificate and its key, is presented to
    /// a node that requires client certificates.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots(ca)?);
        let config = match identity {
            Some((cert, key)) => {
                builder.with_client_auth_cert(certificates(cert)?, private_key(key)?)?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// Settings made elsewhere (for example, trusting the system's roots).
    pub fn new(config: Arc<rustls::ClientConfig>) -> ClientTls {
        ClientTls { config }
    }
}

/// Opens TLS over `tcp`, a connection to `host`, checking that the server's
/// certificate names `host` (a DNS name or an IP address); returns the
/// plaintext side at once: the handshake runs on the connection's pump
/// thread and must be done within `handshake_timeout`. Why it failed, if
/// it does, is [`Stream::tls_failure`].
pub(crate) fn dial(
    tcp: std::net::TcpStream,
    host: &str,
    tls: &ClientTls,
    handshake_timeout: Duration,
) -> std::io::Result<Stream> {
    let name = ServerName::try_from(host.to_owned()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("'{host}' is neither a host name nor an address a certificate can name"),
        )
    })?;
    let connection =
        rustls::ClientConnection::new(tls.config.clone(), name).map_err(std::io::Error::other)?;
    let (ours, theirs) = UnixStream::pair()?;
    let failure = Arc::new(Failure::default());
    let pump = pump::Pump::client(connection, tcp, ours, handshake_timeout, failure.clone())?;
    std::thread::Builder::new()
        .name("starling-client-tls".into())
        .spawn(move || pump.run_alone())?;
    Ok(Stream::Tls(TlsPlain {
        plain: theirs,
        failure: Some(failure),
    }))
}

/// A TLS connection's plaintext end: bytes written here leave encrypted,
/// bytes read here arrived encrypted; a client's pump writes down why, if
/// TLS failed (a server's logs it).
#[derive(Debug)]
pub(crate) struct TlsPlain {
    pub(crate) plain: UnixStream,
    failure: Option<Arc<Failure>>,
}

impl TlsPlain {
    /// A server's connection, from [`Terminator::terminate`].
    pub(crate) fn accepted(plain: UnixStream) -> TlsPlain {
        TlsPlain {
            plain,
            failure: None,
        }
    }

    /// Why TLS failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.as_ref()?.get()
    }
}

/// Why a pump ended a connection, written before it closes the plaintext
/// end (so whoever reads that end's close finds it); the first reason
/// stays. A lock, taken once or twice per connection.
#[derive(Debug, Default)]
pub(crate) struct Failure(Mutex<Option<String>>);

impl Failure {
    fn set(&self, reason: String) {
        self.0.lock().expect("failure lock").get_or_insert(reason);
    }

    fn get(&self) -> Option<String> {
        self.0.lock().expect("failure lock").clone()
    }
}
