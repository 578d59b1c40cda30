//! Opening a connection: the socket for a server URL, and the handshake
//! (our `HELLO`, then the node's `HELLO` or its `ERR`).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use rkyv::util::AlignedVec;

use super::writer::push_frame;
use super::{ClientError, ClientOptions};
use crate::frame::control::{ErrorBody, Hello};
use crate::frame::{DecodeError, Decoder, ErrorCode, FRAME_ALIGN, Kind};
use crate::read_buffer::ReadBuffer;
use crate::stream::Stream;
use crate::url::ServerUrl;

/// Connects to the node at `url`, trying each address a host name resolves to.
fn connect(url: &ServerUrl, timeout: Duration) -> io::Result<Stream> {
    match url {
        ServerUrl::Tcp(address) => {
            let mut last = io::Error::new(
                io::ErrorKind::NotFound,
                "the host name resolved to no address",
            );
            for addr in address.to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(stream) => {
                        stream.set_nodelay(true)?;
                        return Ok(Stream::Tcp(stream));
                    }
                    Err(error) => last = error,
                }
            }
            Err(last)
        }
        ServerUrl::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path)?)),
    }
}

/// Connects and shakes hands: sends our `HELLO`, waits for the node's.
pub(super) fn open(
    url: &ServerUrl,
    options: &ClientOptions,
) -> Result<(Arc<Stream>, Decoder), ClientError> {
    let connect_error = |source| ClientError::Connect {
        url: url.to_string(),
        source,
    };
    let stream = connect(url, options.connect_timeout).map_err(connect_error)?;
    let mut hello = AlignedVec::<FRAME_ALIGN>::new();
    push_frame(
        &mut hello,
        Kind::Hello,
        0,
        &Hello {
            user: options.user.clone(),
            password: options.password.clone(),
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
