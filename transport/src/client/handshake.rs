//! Opening a connection: the socket for a server URL (with TLS for
//! `tls://`), and the handshake (our `HELLO`, then the node's `HELLO` or its
//! `ERR`).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use rkyv::util::AlignedVec;

use super::writer::push_frame;
use super::{ClientError, ClientOptions};
use crate::frame::control::{ErrorBody, Hello};
use crate::frame::{
    DecodeError, Decoder, ErrorCode, FRAME_ALIGN, Kind, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
use crate::read_buffer::ReadBuffer;
use crate::stream::Stream;
use crate::url::ServerUrl;

/// Connects to the node at `url`.
fn connect(url: &ServerUrl, options: &ClientOptions) -> Result<Stream, ClientError> {
    let connect_error = |source| ClientError::Connect {
        url: url.to_string(),
        source,
    };
    match url {
        ServerUrl::Tcp(address) => connect_tcp(address, options.connect_timeout)
            .map(Stream::Tcp)
            .map_err(connect_error),
        ServerUrl::Tls(address) => {
            let Some(tls) = &options.tls else {
                return Err(ClientError::Tls {
                    url: url.to_string(),
                    reason: "a tls:// URL needs the CA that signed the node's certificate \
                             (ClientOptions::tls; --ca FILE)"
                        .into(),
                });
            };
            let tcp = connect_tcp(address, options.connect_timeout).map_err(connect_error)?;
            let host = ServerUrl::tls_host(address);
            crate::tls::dial(tcp, host, tls, options.connect_timeout).map_err(connect_error)
        }
        ServerUrl::Unix(path) => UnixStream::connect(path)
            .map(Stream::Unix)
            .map_err(connect_error),
    }
}

/// Connects over TCP, trying each address a host name resolves to.
fn connect_tcp(address: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        "the host name resolved to no address",
    );
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// An open connection: the socket, the decoder that read the node's
/// `HELLO` (it may hold more), and the protocol version agreed.
pub(super) type Opened = (Arc<Stream>, Decoder, u32);

/// Connects and shakes hands: sends our `HELLO`, waits for the node's. A
/// node older than this build's protocol refuses the version: then it is
/// asked again with the oldest one, on a new connection, so that a new
/// client keeps working with an old node (without packed frames).
pub(super) fn open(url: &ServerUrl, options: &ClientOptions) -> Result<Opened, ClientError> {
    match open_with(url, options, PROTOCOL_VERSION) {
        Err(ClientError::Server {
            code: ErrorCode::Incompatible,
            reason,
        }) if reason.starts_with("protocol version") => {
            let (stream, decoder) = open_with(url, options, PROTOCOL_VERSION_MIN)?;
            Ok((stream, decoder, PROTOCOL_VERSION_MIN))
        }
        opened => opened.map(|(stream, decoder)| (stream, decoder, PROTOCOL_VERSION)),
    }
}

/// [`open`] asking for protocol `version`.
fn open_with(
    url: &ServerUrl,
    options: &ClientOptions,
    version: u32,
) -> Result<(Arc<Stream>, Decoder), ClientError> {
    let stream = connect(url, options)?;
    // A TLS connection that failed closes its plaintext end: what failed is
    // the pump's to say.
    let connect_error = |source| match stream.tls_failure() {
        Some(reason) => ClientError::Tls {
            url: url.to_string(),
            reason,
        },
        None => ClientError::Connect {
            url: url.to_string(),
            source,
        },
    };
    let mut hello = AlignedVec::<FRAME_ALIGN>::new();
    push_frame(
        &mut hello,
        Kind::Hello,
        0,
        &Hello {
            user: options.user.clone(),
            password: options.password.clone(),
            version,
            ..Hello::ours(&options.name, &options.token)
        }
        .encode(),
    );
    (&stream).write_all(&hello).map_err(connect_error)?;
    stream
        .set_read_timeout(Some(options.connect_timeout))
        .map_err(connect_error)?;
    let mut decoder = Decoder::new(starling_core::EventLimits::default().archive_bytes_max());
    let mut buffer = ReadBuffer::new(16 << 10);
    loop {
        let n = (&stream).read(buffer.bytes_mut()).map_err(connect_error)?;
        if n == 0 {
            return Err(connect_error(io::ErrorKind::UnexpectedEof.into()));
        }
        let mut answer = None;
        let fed = decoder.feed(&buffer.bytes_mut()[..n], |frame| {
            if answer.is_some() {
                // Frames after the node's HELLO belong to the reader; none
                // come before our first request, so there is none to keep.
                return Ok(());
            }
            answer = Some(match frame.header.kind {
                Kind::Hello => {
                    Hello::decode(frame.body)
                        .map(|_| ())
                        .map_err(|e| ClientError::Server {
                            code: ErrorCode::Framing,
                            reason: e.to_string(),
                        })
                }
                Kind::Err => {
                    let body = ErrorBody::decode(frame.body).map_err(|_| ClientError::Closed)?;
                    Err(ClientError::Server {
                        code: body.code,
                        reason: body.reason,
                    })
                }
                _ => Err(ClientError::Closed),
            });
            Ok::<(), ClientError>(())
        });
        if let Err(DecodeError::Frame(error)) = fed {
            return Err(ClientError::Server {
                code: ErrorCode::Framing,
                reason: error.to_string(),
            });
        }
        match answer {
            Some(Ok(())) => return Ok((Arc::new(stream), decoder)),
            Some(Err(error)) => return Err(error),
            None => continue,
        }
    }
}
