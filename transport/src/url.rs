//! Server addresses: `tcp://HOST:PORT`, `tls://HOST:PORT` and
//! `unix:///path/to.sock`, and credentials given in one
//! (`tcp://alice:pw@HOST:PORT`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

/// The default server address.
pub const DEFAULT_URL: &str = "tcp://127.0.0.1:7400";

/// Where a node's local server listens, or where a client connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerUrl {
    /// TCP, `host:port` as given (resolved when connecting).
    Tcp(String),
    /// TLS over TCP, `host:port` as given; the server's certificate must
    /// name the host.
    Tls(String),
    /// A Unix domain socket at this path.
    Unix(PathBuf),
}

/// Why a string is not a server URL.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    /// Neither `tcp://`, `tls://` nor `unix://`.
    #[error("unsupported URL '{0}': use tcp://HOST:PORT, tls://HOST:PORT or unix:///path/to.sock")]
    Scheme(String),
    /// `tcp://` or `tls://` without a `host:port`.
    #[error("'{0}' needs a host and a port, as in tcp://127.0.0.1:7400")]
    HostPort(String),
    /// `unix://` without an absolute path.
    #[error("'{0}' needs an absolute path, as in unix:///run/starling.sock")]
    Path(String),
    /// Credentials that are not `USER:PASSWORD@`, or in a `unix://` URL.
    /// (The URL is not repeated: it holds a password.)
    #[error("credentials in a URL go as tcp://USER:PASSWORD@HOST:PORT (percent-encoded)")]
    Credentials,
}

/// A user name and password given in a URL.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlCredentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ServerUrl {
    /// Parses a URL that may carry `USER:PASSWORD@` (percent-encoded)
    /// before a TCP (or TLS) host.
    pub fn parse_with_credentials(
        text: &str,
    ) -> Result<(ServerUrl, Option<UrlCredentials>), UrlError> {
        let Some((scheme, rest)) = ["tcp://", "tls://"]
            .into_iter()
            .find_map(|scheme| Some((scheme, text.strip_prefix(scheme)?)))
        else {
            return Ok((text.parse()?, None));
        };
        let Some((userinfo, host)) = rest.rsplit_once('@') else {
            return Ok((text.parse()?, None));
        };
        let (user, password) = userinfo.split_once(':').ok_or(UrlError::Credentials)?;
        let credentials = UrlCredentials {
            user: percent_decode(user)?,
            password: percent_decode(password)?,
        };
        if credentials.user.is_empty() {
            return Err(UrlError::Credentials);
        }
        Ok((format!("{scheme}{host}").parse()?, Some(credentials)))
    }

    /// The host a `tls://` URL names, without brackets (an IPv6 address):
    /// what the server's certificate must name.
    pub(crate) fn tls_host(address: &str) -> &str {
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        host.strip_prefix('[')
            .and_then(|host| host.strip_suffix(']'))
            .unwrap_or(host)
    }
}

/// Decodes `%XX` escapes.
fn percent_decode(text: &str) -> Result<String, UrlError> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail.get(..2).ok_or(UrlError::Credentials)?;
            let hex = std::str::from_utf8(hex).map_err(|_| UrlError::Credentials)?;
            bytes.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::Credentials)?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).map_err(|_| UrlError::Credentials)
}

impl FromStr for ServerUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        for scheme in ["tcp://", "tls://"] {
            let Some(address) = text.strip_prefix(scheme) else {
                continue;
            };
            let address = address.trim_end_matches('/');
            let valid = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(UrlError::HostPort(text.to_owned()));
            }
            let address = address.to_owned();
            return Ok(if scheme == "tls://" {
                ServerUrl::Tls(address)
            } else {
                ServerUrl::Tcp(address)
            });
        }
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(UrlError::Path(text.to_owned()));
            }
            return Ok(ServerUrl::Unix(PathBuf::from(path)));
        }
        Err(UrlError::Scheme(text.to_owned()))
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerUrl::Tcp(address) => write!(f, "tcp://{address}"),
            ServerUrl::Tls(address) => write!(f, "tls://{address}"),
            ServerUrl::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes_and_says_what_is_wrong() {
        assert_eq!(
            "tcp://127.0.0.1:7400".parse(),
            Ok(ServerUrl::Tcp("127.0.0.1:7400".into()))
        );
        assert_eq!(
            "tcp://localhost:1/".parse(),
            Ok(ServerUrl::Tcp("localhost:1".into()))
        );
        assert_eq!(
            "unix:///tmp/s.sock".parse(),
            Ok(ServerUrl::Unix("/tmp/s.sock".into()))
        );
        assert!(matches!(
            "http://x:1".parse::<ServerUrl>(),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            "tcp://x".parse::<ServerUrl>(),
            Err(UrlError::HostPort(_))
        ));
        assert!(matches!(
            "tcp://:80".parse::<ServerUrl>(),
            Err(UrlError::HostPort(_))
        ));
        assert!(matches!(
            "tcp://x:99999".parse::<ServerUrl>(),
            Err(UrlError::HostPort(_))
        ));
        assert!(matches!(
            "unix://relative".parse::<ServerUrl>(),
            Err(UrlError::Path(_))
        ));
        assert_eq!(ServerUrl::Unix("/a".into()).to_string(), "unix:///a");
        assert_eq!(
            "tls://node-a.example:7400".parse(),
            Ok(ServerUrl::Tls("node-a.example:7400".into()))
        );
        assert!(matches!(
            "tls://node-a".parse::<ServerUrl>(),
            Err(UrlError::HostPort(_))
        ));
        assert_eq!(ServerUrl::Tls("h:1".into()).to_string(), "tls://h:1");
    }

    #[test]
    fn a_tls_url_names_the_host_its_certificate_must_name() {
        assert_eq!(ServerUrl::tls_host("node-a.example:7400"), "node-a.example");
        assert_eq!(ServerUrl::tls_host("127.0.0.1:7400"), "127.0.0.1");
        assert_eq!(ServerUrl::tls_host("[::1]:7400"), "::1");
        let (url, credentials) =
            ServerUrl::parse_with_credentials("tls://alice:pw@node-a:7400").unwrap();
        assert_eq!(url, ServerUrl::Tls("node-a:7400".into()));
        assert_eq!(credentials.unwrap().user, "alice");
    }

    #[test]
    fn credentials_come_out_of_the_url_decoded() {
        let (url, credentials) =
            ServerUrl::parse_with_credentials("tcp://alice:p%40ss%3Aw@127.0.0.1:7400").unwrap();
        assert_eq!(url, ServerUrl::Tcp("127.0.0.1:7400".into()));
        let credentials = credentials.unwrap();
        assert_eq!(
            (credentials.user.as_str(), credentials.password.as_str()),
            ("alice", "p@ss:w")
        );
        assert!(!format!("{credentials:?}").contains("p@ss"), "never logged");
        assert_eq!(
            ServerUrl::parse_with_credentials("tcp://h:1").unwrap(),
            (ServerUrl::Tcp("h:1".into()), None)
        );
        for bad in [
            "tcp://alice@h:1",
            "tcp://:pw@h:1",
            "tcp://a:%zz@h:1",
            "tcp://a:%4@h:1",
        ] {
            assert_eq!(
                ServerUrl::parse_with_credentials(bad),
                Err(UrlError::Credentials),
                "{bad}"
            );
        }
        assert!(matches!(
            ServerUrl::parse_with_credentials("tcp://a:b@"),
            Err(UrlError::HostPort(_))
        ));
    }
}
