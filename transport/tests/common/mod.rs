//! Shared test fixtures: a node's local server on free loopback ports (TCP
//! and a Unix socket in a fresh directory), once per backend, and a raw
//! socket that speaks frames by hand.

#![allow(dead_code)] // each test file uses a different part of this module

pub mod tls;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;
use starling_core::{Bus, BusConfig};
use starling_transport::frame::control::{ErrorBody, Hello};
use starling_transport::frame::{
    Decoder, ErrorCode, Header, Kind, PADDING, PROTOCOL_VERSION, padded,
};
use starling_transport::server::{BackendChoice, Server, ServerConfig};
use starling_transport::tls::ClientTls;

pub const SECOND: Duration = Duration::from_secs(1);

/// How long a test waits for what must come (an answer, a close) before it
/// fails: the wait ends as soon as it comes, and on a machine loaded far
/// past its cores the threads involved may wait seconds to run.
pub const WAIT: Duration = Duration::from_secs(10);

/// How late past one of the node's timeouts a test accepts the close it
/// causes: the node's timers are precise, but its threads and the test's
/// may wait seconds to run on a loaded machine. A timeout not enforced
/// leaves the connection open for good.
pub const LATE: Duration = Duration::from_secs(5);

/// A running server and how to reach it.
pub struct Node {
    pub bus: Bus,
    pub server: Server,
    /// `tcp://` or, if the server has TLS, `tls://`.
    pub tcp: String,
    pub uds: String,
    /// What a client needs for `tcp` if the server has TLS.
    pub client_tls: Option<ClientTls>,
    _dir: TempDir,
}

/// The backends every server test runs against.
pub fn backends() -> [BackendChoice; 2] {
    [BackendChoice::Epoll, BackendChoice::Uring]
}

pub fn node(backend: BackendChoice) -> Node {
    node_with(backend, config(), BusConfig::default())
}

/// The server defaults, but with no fixed TCP port: `node_with` picks a
/// free one unless the test sets `tcp`.
pub fn config() -> ServerConfig {
    ServerConfig {
        tcp: None,
        ..ServerConfig::default()
    }
}

/// A node with `config`, on a free TCP port unless `config.tcp` names one.
pub fn node_with(backend: BackendChoice, config: ServerConfig, bus: BusConfig) -> Node {
    let dir = TempDir::new();
    let uds_path = dir.0.join("node.sock");
    let bus = Bus::new(bus);
    let server_has_tls = config.tls.is_some();
    let server = Server::start(
        bus.clone(),
        ServerConfig {
            tcp: config.tcp.clone().or_else(|| Some("127.0.0.1:0".into())),
            uds: Some(uds_path.clone()),
            backend,
            ..config
        },
    )
    .expect("server starts");
    let scheme = if server_has_tls { "tls" } else { "tcp" };
    let tcp = format!("{scheme}://{}", server.tcp_addr().expect("tcp address"));
    let uds = format!("unix://{}", uds_path.display());
    Node {
        bus,
        server,
        tcp,
        uds,
        client_tls: None,
        _dir: dir,
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "starling-test-{:016x}",
            starling_core::random_u64()
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A raw connection that writes frames (or any bytes) by hand.
pub struct Raw {
    stream: RawStream,
    decoder: Decoder,
    /// Frames read but not yet returned: one read may carry several.
    frames: std::collections::VecDeque<(Kind, u64, Vec<u8>)>,
}

enum RawStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for RawStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.read(buf),
            RawStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for RawStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.write(buf),
            RawStream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Raw {
    /// Connects over TCP (raw: to a TLS port, the bytes are the test's).
    pub fn connect(node: &Node) -> Raw {
        let address = node.tcp.split_once("://").expect("a URL").1;
        let stream = TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Raw::new(RawStream::Tcp(stream))
    }

    /// Connects over the Unix socket.
    pub fn connect_uds(node: &Node) -> Raw {
        let stream = UnixStream::connect(node.uds.trim_start_matches("unix://")).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Raw::new(RawStream::Unix(stream))
    }

    fn new(stream: RawStream) -> Raw {
        Raw {
            stream,
            decoder: Decoder::new(1 << 21),
            frames: std::collections::VecDeque::new(),
        }
    }

    /// Connects and completes the handshake.
    pub fn hello(node: &Node) -> Raw {
        Raw::hello_as(node, PROTOCOL_VERSION).0
    }

    /// Connects and completes the handshake asking for protocol `version`;
    /// returns the version the node answered with.
    pub fn hello_as(node: &Node, version: u32) -> (Raw, u32) {
        let mut raw = Raw::connect(node);
        let hello = Hello {
            version,
            ..Hello::ours("raw", "")
        };
        raw.send(Kind::Hello, 0, &hello.encode());
        let (kind, _, body) = raw.next_frame(WAIT).expect("the node answers HELLO");
        assert_eq!(kind, Kind::Hello);
        let answered = Hello::decode(&body).expect("a valid HELLO").version;
        (raw, answered)
    }

    pub fn send(&mut self, kind: Kind, tag: u64, body: &[u8]) {
        self.write(&frame(kind, tag, body));
    }

    pub fn write(&mut self, bytes: &[u8]) {
        // The node may already have closed on us; that is what some tests
        // expect, so a failed write is not a failure here.
        let _ = self.stream.write_all(bytes);
    }

    /// The next frame from the node, or `None` on close or timeout.
    pub fn next_frame(&mut self, timeout: Duration) -> Option<(Kind, u64, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; 4096];
        while Instant::now() < deadline {
            if let Some(frame) = self.frames.pop_front() {
                return Some(frame);
            }
            match self.stream.read(&mut buffer) {
                Ok(0) => return None,
                Ok(n) => {
                    let mut aligned = AlignedVec::<16>::new();
                    aligned.extend_from_slice(&buffer[..n]);
                    let frames = &mut self.frames;
                    self.decoder
                        .feed::<()>(&aligned, |f| {
                            frames.push_back((f.header.kind, f.header.tag, f.body.to_vec()));
                            Ok(())
                        })
                        .expect("the node sends valid frames");
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
        self.frames.pop_front()
    }

    /// Reads until the node sends an `ERR`; returns its code and tag.
    pub fn expect_error(&mut self) -> (ErrorCode, u64) {
        loop {
            let (kind, tag, body) = self.next_frame(WAIT).expect("an ERR frame before close");
            if kind == Kind::Err {
                return (
                    ErrorBody::decode(&body).expect("a valid ERR body").code,
                    tag,
                );
            }
        }
    }

    /// True once the node has closed the connection.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// A whole frame's bytes.
pub fn frame(kind: Kind, tag: u64, body: &[u8]) -> Vec<u8> {
    let mut bytes = Header::new(kind, tag, body.len()).encode().to_vec();
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(&PADDING[..padded(body.len()) - body.len()]);
    bytes
}

/// Waits until `condition` holds, up to `timeout`.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}
