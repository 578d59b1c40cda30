//! TLS for mesh links: mutual TLS 1.3 from a private cluster CA, or, for
//! development only, ephemeral self-signed certificates that trust anyone.
//!
//! Every node both dials and accepts, so a node certificate serves for both
//! ends (`serverAuth` and `clientAuth`). Peers dial each other by address,
//! before they know each other's names, so every node certificate also
//! carries the shared name [`LINK_SERVER_NAME`], which is what a dialer
//! verifies; the name a peer claims in its `HELLO` is then checked against
//! its certificate ([`peer_holds_name`]), so one node cannot pose as another.
//!
//! `starling cert ca` and `starling cert node NAME` write a development CA
//! and node certificates signed by it ([`write_ca`], [`write_node_certificate`]);
//! `--san HOST,...` adds the names and addresses clients dial the node's
//! TLS client port at. Reading PEM files is the transport's
//! (`starling_transport::tls`), shared with the client port's TLS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName as RustlsDn, SignatureScheme};
use starling_transport::tls::{certificates, private_key, provider, roots};
use thiserror::Error;

use super::wire::ALPN;

/// The DNS name every node certificate carries and every dialer verifies.
pub const LINK_SERVER_NAME: &str = "starling-node";

/// The development CA's common name. `starling cert node` rebuilds the CA's
/// issuer name from it, so it must never change.
const CA_COMMON_NAME: &str = "Starling development cluster CA";

/// Where a node's link certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files: this node's certificate chain and key, and the cluster CA
    /// that every peer's certificate must chain to.
    Files {
        /// The node's certificate (chain).
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
        /// The cluster CA.
        ca: PathBuf,
    },
    /// A self-signed certificate made at start, and any peer accepted.
    /// Encrypts, but authenticates nobody: development only.
    InsecureDev,
    /// Nothing chosen: the mesh refuses to start. The default, so that an
    /// embedded node never accepts any peer unless it was asked to.
    Unset,
}

/// Why link TLS could not be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate, key or CA file is missing or unusable.
    #[error(transparent)]
    Files(#[from] starling_transport::tls::TlsError),
    /// A file holds no usable PEM item of the kind needed.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The peer verifier could not be built (for example, an empty CA file).
    #[error("peer verification: {0}")]
    Verifier(String),
    /// The node's certificate does not name the node: every peer would
    /// refuse its links, so it is refused at start instead.
    #[error(
        "{path}: the certificate is not valid for this node's name '{name}' (make one with `starling cert node {name}`)"
    )]
    NotForName {
        /// The certificate file.
        path: PathBuf,
        /// The node's name.
        name: String,
    },
    /// [`TlsSource::Unset`]: no way to authenticate peers was chosen.
    #[error(
        "no link TLS was chosen: give certificate files (TlsSource::Files; `starling cert` \
         makes them) or, for development only, TlsSource::InsecureDev, which accepts any peer"
    )]
    Unset,
}

/// The crypto half of a node's QUIC endpoint.
#[derive(Clone)]
pub struct LinkTls {
    /// For links this node accepts.
    pub server: Arc<QuicServerConfig>,
    /// For links this node dials.
    pub client: Arc<QuicClientConfig>,
    /// Whether peers are authenticated (mutual TLS from a CA).
    pub authenticated: bool,
}

impl fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkTls")
            .field("authenticated", &self.authenticated)
            .finish_non_exhaustive()
    }
}

/// This node's certificate and how it checks its peers'.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<dyn ServerCertVerifier>,
    authenticated: bool,
}

impl Identity {
    fn from_files(
        cert: &Path,
        key: &Path,
        ca: &Path,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let chain = certificates(cert)?;
        let key = private_key(key)?;
        let roots = Arc::new(roots(ca)?);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|error| TlsError::Verifier(error.to_string()))?;
        let server_verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|error| TlsError::Verifier(error.to_string()))?;
        Ok(Identity {
            chain,
            key,
            client_verifier,
            server_verifier,
            authenticated: true,
        })
    }

    fn insecure(node_name: &str, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let cert = node_params(node_name, &[])?.self_signed(&key)?;
        let accept = Arc::new(AcceptAnyPeer {
            algorithms: provider.signature_verification_algorithms,
        });
        Ok(Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der())
                .map_err(|what| TlsError::Verifier(what.into()))?,
            client_verifier: accept.clone(),
            server_verifier: accept,
            authenticated: false,
        })
    }
}

impl LinkTls {
    /// Builds the endpoint's TLS configuration. `node_name` names the
    /// ephemeral certificate of [`TlsSource::InsecureDev`].
    pub fn new(source: &TlsSource, node_name: &str) -> Result<LinkTls, TlsError> {
        let provider = provider();
        let Identity {
            chain,
            key,
            client_verifier,
            server_verifier,
            authenticated,
        } = match source {
            TlsSource::Files { cert, key, ca } => {
                let identity = Identity::from_files(cert, key, ca, &provider)?;
                if !identity
                    .chain
                    .first()
                    .is_some_and(|leaf| names(leaf, node_name))
                {
                    return Err(TlsError::NotForName {
                        path: cert.clone(),
                        name: node_name.to_owned(),
                    });
                }
                identity
            }
            TlsSource::InsecureDev => Identity::insecure(node_name, &provider)?,
            TlsSource::Unset => return Err(TlsError::Unset),
        };
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(chain, key)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        let server = QuicServerConfig::try_from(server)
            .map_err(|error| TlsError::Verifier(error.to_string()))?;
        let client = QuicClientConfig::try_from(client)
            .map_err(|error| TlsError::Verifier(error.to_string()))?;
        Ok(LinkTls {
            server: Arc::new(server),
            client: Arc::new(client),
            authenticated,
        })
    }
}

/// Whether the certificate `connection`'s peer presented is valid for
/// `name` (a DNS name among its subject alternative names). Links without
/// authentication ([`TlsSource::InsecureDev`]) take any claim.
pub fn peer_holds_name(connection: &quinn::Connection, authenticated: bool, name: &str) -> bool {
    if !authenticated {
        return true;
    }
    let Some(identity) = connection.peer_identity() else {
        return false;
    };
    let Ok(chain) = identity.downcast::<Vec<CertificateDer<'static>>>() else {
        return false;
    };
    chain.first().is_some_and(|leaf| names(leaf, name))
}

/// Whether the certificate `leaf` is valid for the DNS name `name`.
fn names(leaf: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    ParsedCertificate::try_from(leaf)
        .and_then(|parsed| rustls::client::verify_server_name(&parsed, &name))
        .is_ok()
}

/// A node certificate's parameters: valid for the shared link name, the
/// node's name and `sans` (DNS names or IP addresses clients dial).
fn node_params(name: &str, sans: &[String]) -> Result<CertificateParams, TlsError> {
    let mut names = vec![LINK_SERVER_NAME.to_owned()];
    for extra in std::iter::once(name).chain(sans.iter().map(String::as_str)) {
        if !names.iter().any(|known| known == extra) {
            names.push(extra.to_owned());
        }
    }
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Files written by [`write_ca`] and [`write_node_certificate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenPair {
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM, readable by the owner only.
    pub key: PathBuf,
}

/// Writes a new development CA to `dir/ca.pem` and `dir/ca-key.pem`. Refuses
/// to overwrite an existing CA.
pub fn write_ca(dir: &Path) -> Result<WrittenPair, TlsError> {
    let pair = WrittenPair {
        cert: dir.join("ca.pem"),
        key: dir.join("ca-key.pem"),
    };
    refuse_overwrite(&pair)?;
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    write_pair(&pair, &cert.pem(), &key.serialize_pem())?;
    Ok(pair)
}

/// Writes a certificate for node `name`, signed by the CA in `dir`, to
/// `dir/NAME.pem` and `dir/NAME-key.pem`; it is also valid for `sans`, the
/// DNS names and IP addresses clients dial the node at (its TLS client
/// port checks nothing else).
pub fn write_node_certificate(
    dir: &Path,
    name: &str,
    sans: &[String],
) -> Result<WrittenPair, TlsError> {
    if ServerName::try_from(name).is_err() || name.contains('/') {
        return Err(TlsError::Verifier(format!(
            "'{name}' cannot name a node certificate: use letters, digits, '-' and '.'"
        )));
    }
    // ServerName parses an IP address as one, anything else as a DNS name.
    if let Some(san) = sans
        .iter()
        .find(|san| ServerName::try_from(san.as_str()).is_err())
    {
        return Err(TlsError::Verifier(format!(
            "--san '{san}' is neither a DNS name nor an IP address"
        )));
    }
    let ca_key_path = dir.join("ca-key.pem");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|source| TlsError::Io {
        path: ca_key_path.clone(),
        source,
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|error| TlsError::Pem {
        path: ca_key_path,
        what: error.to_string(),
    })?;
    // The issuer is the CA's name and key; the name is fixed, so it need not
    // be parsed back out of ca.pem.
    let issuer = Issuer::new(ca_params(), ca_key);
    let pair = WrittenPair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    refuse_overwrite(&pair)?;
    let key = KeyPair::generate()?;
    let cert = node_params(name, sans)?.signed_by(&key, &issuer)?;
    write_pair(&pair, &cert.pem(), &key.serialize_pem())?;
    Ok(pair)
}

fn refuse_overwrite(pair: &WrittenPair) -> Result<(), TlsError> {
    for path in [&pair.cert, &pair.key] {
        if path.exists() {
            return Err(TlsError::Io {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists; not overwritten",
                ),
            });
        }
    }
    Ok(())
}

fn write_pair(pair: &WrittenPair, cert: &str, key: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    std::fs::write(&pair.cert, cert).map_err(io(&pair.cert))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&pair.key)
        .and_then(|mut file| file.write_all(key.as_bytes()))
        .map_err(io(&pair.key))
}

/// Accepts any certificate, checking only that the peer holds its key:
/// `--insecure-dev-tls`.
#[derive(Debug)]
struct AcceptAnyPeer {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyPeer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for AcceptAnyPeer {
    fn root_hint_subjects(&self) -> &[RustlsDn] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("starling-tls-{:016x}", starling_core::random_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_ca_signs_node_certificates_that_load_and_name_their_node() {
        let dir = temp_dir();
        let ca = write_ca(&dir).unwrap();
        let sans = ["node-a.example".to_owned(), "10.0.0.5".to_owned()];
        let node = write_node_certificate(&dir, "node-a", &sans).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&node.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "keys are private to their owner");
        let source = TlsSource::Files {
            cert: node.cert.clone(),
            key: node.key.clone(),
            ca: ca.cert.clone(),
        };
        let tls = LinkTls::new(&source, "node-a").unwrap();
        assert!(tls.authenticated);
        // A node is not started with a certificate its peers would refuse.
        let error = LinkTls::new(&source, "node-b").unwrap_err();
        assert!(
            matches!(&error, TlsError::NotForName { name, .. } if name == "node-b"),
            "{error}"
        );
        assert!(error.to_string().contains("node-a.pem"), "{error}");
        // The certificate is valid for the shared link name and its node's
        // name, and only those.
        let leaf = certificates(&node.cert).unwrap().remove(0);
        let parsed = ParsedCertificate::try_from(&leaf).unwrap();
        // ... and the names and addresses given with --san.
        for (name, valid) in [
            (LINK_SERVER_NAME, true),
            ("node-a", true),
            ("node-b", false),
            ("node-a.example", true),
            ("10.0.0.5", true),
            ("10.0.0.6", false),
        ] {
            let name = ServerName::try_from(name).unwrap();
            assert_eq!(
                rustls::client::verify_server_name(&parsed, &name).is_ok(),
                valid,
                "{name:?}"
            );
        }
        assert!(
            matches!(write_ca(&dir), Err(TlsError::Io { .. })),
            "an existing CA is not overwritten"
        );
        assert!(write_node_certificate(&dir, "bad/name", &[]).is_err());
        let error = write_node_certificate(&dir, "node-c", &["not a name".into()]).unwrap_err();
        assert!(error.to_string().contains("'not a name'"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_or_empty_files_are_reported_with_their_path() {
        let dir = temp_dir();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let source = TlsSource::Files {
            cert: empty.clone(),
            key: empty.clone(),
            ca: dir.join("missing.pem"),
        };
        let error = LinkTls::new(&source, "n").unwrap_err().to_string();
        assert!(error.contains("empty.pem"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_default_accepts_no_peer_it_does_not_start() {
        let source = crate::cluster::ClusterConfig::default().tls;
        assert_eq!(source, TlsSource::Unset);
        let error = LinkTls::new(&source, "node").unwrap_err();
        assert!(matches!(error, TlsError::Unset), "{error}");
    }

    #[test]
    fn insecure_dev_tls_builds_without_files() {
        let tls = LinkTls::new(&TlsSource::InsecureDev, "dev-node").unwrap();
        assert!(!tls.authenticated);
    }
}
