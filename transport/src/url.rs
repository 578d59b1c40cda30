//! Server addresses: `tcp://HOST:PORT` and `unix:///path/to.sock`.

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
    /// A Unix domain socket at this path.
    Unix(PathBuf),
}

/// Why a string is not a server URL.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    /// Neither `tcp://` nor `unix://`.
    #[error("unsupported URL '{0}': use tcp://HOST:PORT or unix:///path/to.sock")]
    Scheme(String),
    /// `tcp://` without a `host:port`.
    #[error("'{0}' needs a host and a port, as in tcp://127.0.0.1:7400")]
    HostPort(String),
    /// `unix://` without an absolute path.
    #[error("'{0}' needs an absolute path, as in unix:///run/starling.sock")]
    Path(String),
}

impl FromStr for ServerUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        if let Some(address) = text.strip_prefix("tcp://") {
            let address = address.trim_end_matches('/');
            let valid = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(UrlError::HostPort(text.to_owned()));
            }
            return Ok(ServerUrl::Tcp(address.to_owned()));
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
    }
}
