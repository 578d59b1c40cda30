//! Choosing the I/O backend, on the I/O thread itself.
//!
//! io_uring is tried first (unless `epoll` was asked for): the ring, the
//! opcodes the loop needs and the buffer ring must all work here. Any failure
//! (ENOSYS on an old kernel or under a seccomp filter, EPERM with
//! `kernel.io_uring_disabled`, ENOMEM under a small memlock limit, EINVAL for
//! an unsupported setup flag) falls back to epoll, and the reason is reported
//! once, with the backend, to whoever started the server.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use super::ServerState;
use super::listeners::Listeners;

/// Which I/O backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// io_uring if it works here, else epoll.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll.
    Epoll,
}

/// The backend a server runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// io_uring.
    Uring,
    /// epoll, and why (`--io-backend epoll`, or why io_uring could not start).
    Epoll {
        /// Why epoll was chosen.
        reason: String,
    },
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Uring => write!(f, "io_uring"),
            Backend::Epoll { reason } => write!(f, "epoll ({reason})"),
        }
    }
}

/// Runs the chosen backend's loop until the server stops; reports the
/// backend (or a start-up error) through `started` first.
pub(super) fn run(
    choice: BackendChoice,
    listeners: Listeners,
    server: &Arc<ServerState>,
    started: &Sender<io::Result<Backend>>,
) {
    let reason = match choice {
        BackendChoice::Epoll => "--io-backend epoll".to_owned(),
        BackendChoice::Auto | BackendChoice::Uring => match uring_setup() {
            Ok(setup) => {
                let result = run_uring(setup, listeners, server, started);
                if let Err(error) = result {
                    let _ = started.send(Err(error));
                }
                return;
            }
            Err(error) if choice == BackendChoice::Uring => {
                let _ = started.send(Err(io::Error::new(
                    error.kind(),
                    format!("io_uring was required but cannot start: {error}"),
                )));
                return;
            }
            Err(error) => format!("io_uring unavailable: {error}"),
        },
    };
    let backend = Backend::Epoll { reason };
    if let Err(error) = super::epoll::run(listeners, server, &|| {
        let _ = started.send(Ok(backend.clone()));
    }) {
        let _ = started.send(Err(error));
    }
}

#[cfg(target_os = "linux")]
type UringSetup = super::uring::Setup;
#[cfg(not(target_os = "linux"))]
type UringSetup = std::convert::Infallible;

#[cfg(target_os = "linux")]
fn uring_setup() -> io::Result<UringSetup> {
    super::uring::Setup::new()
}

#[cfg(not(target_os = "linux"))]
fn uring_setup() -> io::Result<UringSetup> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "io_uring is Linux-only",
    ))
}

#[cfg(target_os = "linux")]
fn run_uring(
    setup: UringSetup,
    listeners: Listeners,
    server: &Arc<ServerState>,
    started: &Sender<io::Result<Backend>>,
) -> io::Result<()> {
    super::uring::run(setup, listeners, server, &|| {
        let _ = started.send(Ok(Backend::Uring));
    })
}

#[cfg(not(target_os = "linux"))]
fn run_uring(
    setup: UringSetup,
    _: Listeners,
    _: &Arc<ServerState>,
    _: &Sender<io::Result<Backend>>,
) -> io::Result<()> {
    match setup {}
}
