//! A node's configuration: command-line flags, `STARLING_*` environment
//! variables and a TOML file, in that order of precedence, over built-in
//! defaults.
//!
//! ```toml
//! name = "node-a"
//! listen = "127.0.0.1:7400"        # local clients over TCP; "" for none
//! uds = "/run/starling.sock"       # local clients over a Unix socket
//! http = "127.0.0.1:7402"          # /healthz, /metrics, /v1/...; "" for none
//! io_backend = "auto"              # auto | uring | epoll
//! token = "..."                    # clients must present it
//!
//! [limits]
//! connections_max = 10000
//! subscriptions_per_connection_max = 10000
//! pending_events_per_connection_max = 16384
//! payload_bytes_max = 1048576
//! memory_bytes_max = 1073741824
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use starling_transport::server::BackendChoice;

/// Default address for local clients.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
/// Default address of the HTTP endpoint.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7402";

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's name (in `HELLO`, logs and `/v1/node`).
    pub name: String,
    /// TCP address for local clients.
    pub listen: Option<String>,
    /// Unix socket for local clients.
    pub uds: Option<PathBuf>,
    /// Address of the HTTP endpoint.
    pub http: Option<String>,
    /// The I/O backend of the local server.
    pub io_backend: BackendChoice,
    /// A token clients must present.
    pub token: Option<String>,
    /// Limits.
    pub limits: Limits,
}

/// Node limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most local connections.
    pub connections_max: usize,
    /// Most subscriptions per connection.
    pub subscriptions_per_connection_max: usize,
    /// Events queued for one connection before its further events drop.
    pub pending_events_per_connection_max: usize,
    /// Largest payload.
    pub payload_bytes_max: usize,
    /// Event memory budget.
    pub memory_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_max: 10_000,
            subscriptions_per_connection_max: 10_000,
            pending_events_per_connection_max: 16_384,
            payload_bytes_max: 1 << 20,
            memory_bytes_max: 1 << 30,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: default_name(),
            listen: Some(DEFAULT_LISTEN.into()),
            uds: None,
            http: Some(DEFAULT_HTTP.into()),
            io_backend: BackendChoice::Auto,
            token: None,
            limits: Limits::default(),
        }
    }
}

/// The TOML file's shape; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    name: Option<String>,
    listen: Option<String>,
    uds: Option<PathBuf>,
    http: Option<String>,
    io_backend: Option<String>,
    token: Option<String>,
    limits: Option<Limits>,
}

/// Values given on the command line or in the environment (clap merges the
/// two, flags first); `None` means "not given".
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--name` / `STARLING_NAME`.
    pub name: Option<String>,
    /// `--listen` / `STARLING_LISTEN`.
    pub listen: Option<String>,
    /// `--uds` / `STARLING_UDS`.
    pub uds: Option<PathBuf>,
    /// `--http` / `STARLING_HTTP`.
    pub http: Option<String>,
    /// `--io-backend` / `STARLING_IO_BACKEND`.
    pub io_backend: Option<String>,
    /// `--token` / `STARLING_TOKEN`.
    pub token: Option<String>,
}

/// Why a configuration could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid configuration in {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// An I/O backend name other than auto, uring or epoll.
    #[error("unknown I/O backend '{0}': use auto, uring or epoll")]
    Backend(String),
}

impl NodeConfig {
    /// Builds the configuration: `overrides` over the file at `path` (if
    /// any) over the defaults. An empty `listen`, `uds` or `http` turns that
    /// listener off.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<NodeConfig, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|error| ConfigError::Parse {
                    path: path.to_owned(),
                    message: error.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let defaults = NodeConfig::default();
        let io_backend = match overrides.io_backend.or(file.io_backend).as_deref() {
            None | Some("auto") => BackendChoice::Auto,
            Some("uring") | Some("io_uring") => BackendChoice::Uring,
            Some("epoll") => BackendChoice::Epoll,
            Some(other) => return Err(ConfigError::Backend(other.to_owned())),
        };
        Ok(NodeConfig {
            name: overrides.name.or(file.name).unwrap_or(defaults.name),
            listen: non_empty(overrides.listen.or(file.listen).or(defaults.listen)),
            uds: overrides
                .uds
                .or(file.uds)
                .filter(|path| !path.as_os_str().is_empty()),
            http: non_empty(overrides.http.or(file.http).or(defaults.http)),
            io_backend,
            token: non_empty(overrides.token.or(file.token)),
            limits: file.limits.unwrap_or_default(),
        })
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        format!("starling-{}", std::process::id())
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "starling-config-{:016x}.toml",
            starling_core::random_u64()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let path = write(
            "name = \"from-file\"\nlisten = \"127.0.0.1:9000\"\nio_backend = \"epoll\"\n[limits]\nconnections_max = 5\n",
        );
        let overrides = Overrides {
            name: Some("from-flag".into()),
            ..Overrides::default()
        };
        let config = NodeConfig::load(Some(&path), overrides).unwrap();
        assert_eq!(config.name, "from-flag");
        assert_eq!(config.listen.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(config.io_backend, BackendChoice::Epoll);
        assert_eq!(config.http.as_deref(), Some(DEFAULT_HTTP));
        assert_eq!(config.limits.connections_max, 5);
        assert_eq!(
            config.limits.payload_bytes_max,
            1 << 20,
            "unset limits keep their defaults"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn empty_values_turn_listeners_off() {
        let overrides = Overrides {
            http: Some(String::new()),
            listen: Some(String::new()),
            ..Overrides::default()
        };
        let config = NodeConfig::load(None, overrides).unwrap();
        assert_eq!((config.listen, config.http), (None, None));
    }

    #[test]
    fn mistakes_are_reported_with_their_place() {
        let path = write("nmae = \"typo\"\n");
        let error = NodeConfig::load(Some(&path), Overrides::default()).unwrap_err();
        assert!(error.to_string().contains("nmae"), "{error}");
        std::fs::remove_file(path).unwrap();
        let overrides = Overrides {
            io_backend: Some("kqueue".into()),
            ..Overrides::default()
        };
        let error = NodeConfig::load(None, overrides).unwrap_err();
        assert!(
            error.to_string().contains("auto, uring or epoll"),
            "{error}"
        );
        let missing = NodeConfig::load(
            Some(Path::new("/nonexistent/starling.toml")),
            Overrides::default(),
        );
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
    }
}
