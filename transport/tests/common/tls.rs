//! Certificates for the TLS tests (made as `starling cert` makes them: a CA
//! and certificates it signs), and servers whose TCP port speaks TLS.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use starling_core::BusConfig;
use starling_transport::server::{BackendChoice, ServerConfig};
use starling_transport::tls::{ClientTls, ServerTls};

use super::{Node, TempDir, node_with};

/// A CA in a directory of its own, and the certificates it signs there.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate, PEM.
    pub cert: PathBuf,
    dir: TempDir,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let dir = TempDir::new();
        let cert = dir.0.join("ca.pem");
        std::fs::write(&cert, certificate.pem()).unwrap();
        Authority {
            issuer: Issuer::new(params, key),
            cert,
            dir,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses) with `purpose`,
    /// signed by this CA: its file and its key's.
    pub fn issue(
        &self,
        stem: &str,
        names: &[&str],
        purpose: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = vec![purpose];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let cert = self.dir.0.join(format!("{stem}.pem"));
        let key_path = self.dir.0.join(format!("{stem}-key.pem"));
        std::fs::write(&cert, certificate.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert, key_path)
    }

    /// A server certificate naming the loopback address and `localhost`.
    pub fn server_tls(&self, client_ca: Option<&Path>) -> ServerTls {
        let (cert, key) = self.issue(
            "server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        ServerTls::from_files(&cert, &key, client_ca).unwrap()
    }

    /// A client that trusts this CA, with no certificate of its own.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls::from_files(&self.cert, None).unwrap()
    }

    /// A client that trusts `server_ca` and presents a certificate from
    /// this CA.
    pub fn client_tls_with_certificate(&self, server_ca: &Path) -> ClientTls {
        let (cert, key) = self.issue(
            "client",
            &["client.invalid"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        ClientTls::from_files(server_ca, Some((&cert, &key))).unwrap()
    }
}

/// A server whose TCP port speaks TLS with a certificate from `ca` (and
/// requires client certificates from `client_ca`, if given); `node.tcp` is
/// its `tls://` URL and `node.client_tls` trusts `ca`.
pub fn tls_node(
    backend: BackendChoice,
    ca: &Authority,
    client_ca: Option<&Path>,
    config: ServerConfig,
) -> Node {
    let mut node = node_with(
        backend,
        ServerConfig {
            tls: Some(ca.server_tls(client_ca)),
            ..config
        },
        BusConfig::default(),
    );
    node.client_tls = Some(ca.client_tls());
    node
}
