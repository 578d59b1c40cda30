//! The listening sockets: bound before the I/O thread starts, so that
//! errors such as "address in use" reach the caller, with a listen backlog
//! that takes a burst of connections; and turning away a connection the
//! node will not serve (over the limit, or shutting down).

use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

use super::ServerConfig;
use crate::frame;
use crate::stream::Stream;

/// The listening sockets of a server (none, for I/O threads other than
/// the first).
#[derive(Debug, Default)]
pub(super) struct Listeners {
    pub(super) tcp: Option<std::net::TcpListener>,
    pub(super) uds: Option<UnixListener>,
}

/// Binds what `config` asks for, non-blocking.
pub(super) fn bind(config: &ServerConfig) -> io::Result<Listeners> {
    if config.tcp.is_none() && config.uds.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "nothing to listen on: give a TCP address or a Unix socket path",
        ));
    }
    let tcp = match &config.tcp {
        Some(address) => {
            let listener = listen_tcp(address).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot listen on tcp://{address}: {error}"),
                )
            })?;
            listener.set_nonblocking(true)?;
            Some(listener)
        }
        None => None,
    };
    let uds = match &config.uds {
        Some(path) => {
            remove_stale_socket(path)?;
            let listener = UnixListener::bind(path).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot listen on unix://{}: {error}", path.display()),
                )
            })?;
            listener.set_nonblocking(true)?;
            Some(listener)
        }
        None => None,
    };
    Ok(Listeners { tcp, uds })
}

/// Connections the kernel completes and queues for a TCP listener until it
/// accepts them. std's `TcpListener::bind` asks for 128: a burst of clients
/// (thousands reconnecting at once, or only a few hundred while the I/O
/// thread waits for a core) overflows it, and each connection that finds it
/// full has its handshake dropped and retried by its client a second or more
/// later. The kernel caps it at `net.core.somaxconn` (4096 by default since
/// Linux 5.4). std's Unix listeners already ask for the most the kernel
/// allows.
const TCP_BACKLOG: libc::c_int = 4096;

/// A TCP listener on `address` with a backlog of [`TCP_BACKLOG`]: for every
/// port where clients connect (the node's own protocol and NATS's).
pub fn listen_tcp(address: &str) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(address)?;
    // Calling listen again on a listening socket sets its backlog anew.
    // SAFETY: plain syscall on a descriptor `listener` owns and keeps open.
    if unsafe { libc::listen(listener.as_raw_fd(), TCP_BACKLOG) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// Removes a socket file left by a node that did not stop cleanly, but never
/// a live socket (another node listening) or a file that is not a socket.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another process is listening on {}", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

/// Tells a connection the node will not serve why it is closed (an `ERR`
/// frame with `code` and `reason`), if it can take the bytes at once
/// (without blocking the loop), and leaves it to be dropped.
pub(super) fn refuse(stream: &Stream, code: frame::ErrorCode, reason: &str) {
    if stream.set_nonblocking(true).is_ok() {
        let _ = (&*stream).write(&frame::error_frame(code, reason));
    }
}
