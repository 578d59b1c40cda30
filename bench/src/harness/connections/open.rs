//! Opening many connections to a node at once, from several threads: each
//! thread connects its share one after another, without waiting for the
//! node between them, and (for real idle clients) sends each its `HELLO`
//! (and `SUB`) at once and reads the node's answers once all its
//! connections are open.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use starling_transport::frame::control::{ErrorBody, Hello, Subscribe};
use starling_transport::frame::{self, HEADER_BYTES, Header, Kind};

use crate::harness::error::{Context, Error, Result};

/// How long a thread waits for one of the node's answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the connections do once open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// They never say anything (a stranger, or a client that hangs before
    /// its handshake): kept by the node until its handshake timeout.
    Silent,
    /// They complete the handshake (`HELLO` both ways), then say nothing:
    /// real clients, idle.
    Hello,
    /// As `hello`, and each subscribes to a subject of its own, on which
    /// nothing is published: idle subscribers (devices waiting for
    /// commands, say).
    Subscribed,
}

impl Variant {
    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Silent => "silent",
            Variant::Hello => "hello",
            Variant::Subscribed => "subscribed",
        }
    }

    /// The frames each connection sends, all at once, and how many answers
    /// the node gives them.
    fn greeting(self, connection: usize) -> (Vec<u8>, usize) {
        let mut frames = Vec::new();
        if self == Variant::Silent {
            return (frames, 0);
        }
        frames.extend(frame::encode(
            Kind::Hello,
            0,
            &Hello::ours("starling-connections", "").encode(),
        ));
        if self == Variant::Hello {
            return (frames, 1);
        }
        let subject = format!("idle.{connection}");
        frames.extend(frame::encode(
            Kind::Sub,
            1,
            &Subscribe::new(subject, None).encode(),
        ));
        (frames, 2)
    }
}

/// Connections held open, and how long opening them took.
#[derive(Debug)]
pub struct Opened {
    /// The connections; they close when this drops.
    pub connections: Vec<TcpStream>,
    /// From the start until every thread had connected (and, for `hello`,
    /// read every answer).
    pub elapsed: Duration,
}

/// Opens `count` connections to `address` from `threads` threads, each
/// doing what `variant` says.
pub fn open(address: SocketAddr, count: usize, threads: usize, variant: Variant) -> Result<Opened> {
    let start = Instant::now();
    let shares: Vec<Result<Vec<TcpStream>>> = std::thread::scope(|scope| {
        let mut first = 0;
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let share = count / threads + usize::from(thread < count % threads);
                let connections = first..first + share;
                first += share;
                scope.spawn(move || open_share(address, connections, variant))
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(Error::new("a connecting thread panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut connections = Vec::with_capacity(count);
    for share in shares {
        connections.extend(share?);
    }
    Ok(Opened {
        connections,
        elapsed,
    })
}

/// One thread's share: connections numbered `numbers`, each sent its
/// greeting at once, whose answers are read once all are open.
fn open_share(
    address: SocketAddr,
    numbers: std::ops::Range<usize>,
    variant: Variant,
) -> Result<Vec<TcpStream>> {
    let mut connections = Vec::with_capacity(numbers.len());
    let mut answers = 0;
    for number in numbers {
        let mut stream = TcpStream::connect(address)
            .context(format!("opening connection {} to {address}", number + 1))?;
        reset_on_close(&stream)?;
        let (greeting, answered) = variant.greeting(number);
        if !greeting.is_empty() {
            stream.set_nodelay(true).context("setting TCP_NODELAY")?;
            stream.write_all(&greeting).context("greeting the node")?;
        }
        answers = answered;
        connections.push(stream);
    }
    for stream in &mut connections {
        for _ in 0..answers {
            read_answer(stream)?;
        }
    }
    Ok(connections)
}

/// Makes closing `stream` reset the connection (`SO_LINGER` of zero)
/// instead of leaving this side in TIME_WAIT for a minute: a few runs of
/// thousands of connections would otherwise tie up most of the ephemeral
/// ports, and `connect` slows down searching for a free one (runs fell from
/// ~12,000 to ~4,000 connections/s with 65,000 sockets in TIME_WAIT).
fn reset_on_close(stream: &TcpStream) -> Result<()> {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .context("setting SO_LINGER")
}

/// Reads one of the node's answers: its `HELLO`, an `OK`, or an error.
fn read_answer(stream: &mut TcpStream) -> Result<()> {
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .context("setting a read timeout")?;
    let mut header = [0; HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .context("reading the node's answer")?;
    let header = Header::decode(&header, 64 << 10).context("the node's answer")?;
    let mut body = vec![0; header.frame_bytes() - HEADER_BYTES];
    stream
        .read_exact(&mut body)
        .context("reading the node's answer")?;
    match header.kind {
        Kind::Hello | Kind::Ok => Ok(()),
        Kind::Err => {
            let reason = ErrorBody::decode(&body[..header.length as usize])
                .map_or_else(|_| "an unreadable ERR".to_owned(), |error| error.reason);
            Err(Error::new(format!(
                "the node refused a connection: {reason}"
            )))
        }
        kind => Err(Error::new(format!("the node answered HELLO with {kind:?}"))),
    }
}
