//! [`Socket`]: a NATS client's connection as its task drives it: TCP, or,
//! on a TLS listener, the plaintext end of its TLS pump (a socket pair; the
//! pump, on `starling_transport::tls::Terminator`'s thread, speaks TLS on
//! the TCP connection). The task is the same for both.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// A NATS client's connection.
#[derive(Debug)]
pub(super) enum Socket {
    /// Plain TCP.
    Tcp(TcpStream),
    /// The plaintext of a TLS connection.
    Tls(UnixStream),
}

impl Socket {
    pub(super) async fn readable(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(stream) => stream.readable().await,
            Socket::Tls(stream) => stream.readable().await,
        }
    }

    pub(super) async fn writable(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(stream) => stream.writable().await,
            Socket::Tls(stream) => stream.writable().await,
        }
    }

    pub(super) fn try_read_buf(&self, buffer: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Socket::Tcp(stream) => stream.try_read_buf(buffer),
            Socket::Tls(stream) => stream.try_read_buf(buffer),
        }
    }

    pub(super) fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(stream) => stream.try_write(bytes),
            Socket::Tls(stream) => stream.try_write(bytes),
        }
    }

    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Socket::Tcp(stream) => stream.write_all(bytes).await,
            Socket::Tls(stream) => stream.write_all(bytes).await,
        }
    }

    pub(super) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Socket::Tcp(stream) => stream.shutdown().await,
            Socket::Tls(stream) => stream.shutdown().await,
        }
    }

    pub(super) async fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(stream) => stream.read(buffer).await,
            Socket::Tls(stream) => stream.read(buffer).await,
        }
    }
}
