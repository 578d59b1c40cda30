//! [`Stream`]: a connected socket of the local path, over TCP, a Unix
//! domain socket, or TLS (the plaintext end of a socket pair, see
//! [`crate::tls`]). The server's two backends and the client hold their
//! connections as one.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::tls::TlsPlain;

/// A connected socket. Reads and writes go through `&Stream`, so two
/// threads (the client's reader and flusher) share one without a lock.
#[derive(Debug)]
pub(crate) enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix domain socket connection.
    Unix(UnixStream),
    /// A TLS connection, as its plaintext: what is written here goes out
    /// encrypted, what is read came in so.
    Tls(TlsPlain),
}

impl Stream {
    /// `tcp`, `unix` or `tls`, as connection listings name the transport.
    pub(crate) fn transport(&self) -> &'static str {
        match self {
            Stream::Tcp(_) => "tcp",
            Stream::Unix(_) => "unix",
            Stream::Tls(_) => "tls",
        }
    }

    /// Why TLS failed on this connection, if it did: a closed TLS stream
    /// says no more than a closed socket, its pump says why.
    pub(crate) fn tls_failure(&self) -> Option<String> {
        match self {
            Stream::Tls(tls) => tls.failure(),
            Stream::Tcp(_) | Stream::Unix(_) => None,
        }
    }

    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(nonblocking),
            Stream::Unix(s) | Stream::Tls(TlsPlain { plain: s, .. }) => {
                s.set_nonblocking(nonblocking)
            }
        }
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Unix(s) | Stream::Tls(TlsPlain { plain: s, .. }) => s.set_read_timeout(timeout),
        }
    }

    /// Shuts both directions down; a failure means it is down already.
    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) | Stream::Tls(TlsPlain { plain: s, .. }) => s.shutdown(Shutdown::Both),
        };
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) | Stream::Tls(TlsPlain { plain: s, .. }) => s.as_raw_fd(),
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) | Stream::Tls(TlsPlain { plain: s, .. }) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) | Stream::Tls(TlsPlain { plain: s, .. }) => (&*s).write(buf),
        }
    }

    fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write_vectored(slices),
            Stream::Unix(s) | Stream::Tls(TlsPlain { plain: s, .. }) => {
                (&*s).write_vectored(slices)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => (&*s).flush(),
            Stream::Unix(s) | Stream::Tls(TlsPlain { plain: s, .. }) => (&*s).flush(),
        }
    }
}
