//! [`Terminator`]: the thread that speaks TLS on the local server's TCP port
//! when the server has TLS settings (why it is a thread in front of the
//! I/O backends rather than TLS inside them: `crate::tls`).
//!
//! It accepts from the TCP listener (the I/O thread then listens on the
//! Unix socket only), and for each connection makes a socket pair: one end
//! goes to the I/O thread, which serves it like any connection (listed as
//! transport `tls`, with the client's address); a [`Pump`] carries bytes
//! between the other end and the TCP socket, decrypting and encrypting. One
//! mio loop runs every pump, as the epoll backend runs its sessions.
//!
//! Limits: at most twice `connections_max` pumps at once: the I/O thread
//! refuses connections past `connections_max` with an `ERR` saying so,
//! which reaches the client once its handshake is done, so the pumps of
//! refused connections may outnumber the served ones for a moment; past
//! twice, connections are closed at once, unanswered. A handshake
//! not done within the session's handshake timeout ends its pump (the
//! session, started at accept, times out as well); a closing connection
//! gets the same time for its last words.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use super::ServerState;
use super::accept::AcceptPause;
use super::session::{earliest, tick_interval};
use crate::stream::Stream;
use crate::tls::pump::{Drive, Pump, SCRATCH_BYTES};
use crate::tls::{Failure, ServerTls, TlsPlain};

const WAKE: Token = Token(0);
const LISTEN: Token = Token(1);
const FIRST_PUMP: usize = 2;

/// The running terminator thread.
#[derive(Debug)]
pub(super) struct Terminator {
    thread: JoinHandle<()>,
    waker: Arc<mio::Waker>,
    /// Set once, by [`Terminator::finish`]. SYNC POINT (tls-finish): the
    /// Release store pairs with the Acquire load the loop makes every turn;
    /// `waker` makes it take that turn at once.
    finishing: Arc<AtomicBool>,
}

impl Terminator {
    /// Starts the thread on `listener` (bound, non-blocking), handing the
    /// connections it accepts to `server`'s I/O thread, which must be
    /// running (its waker set).
    pub(super) fn start(
        listener: TcpListener,
        tls: &ServerTls,
        server: Arc<ServerState>,
    ) -> io::Result<Terminator> {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
        poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTEN,
            Interest::READABLE,
        )?;
        let finishing = Arc::new(AtomicBool::new(false));
        let state = Loop {
            server,
            tls: tls.config().clone(),
            listener: Some(listener),
            pumps: slab::Slab::new(),
            turns: Vec::new(),
            scratch: vec![0; SCRATCH_BYTES],
            accept_pause: AcceptPause::default(),
            accept_again: false,
            finishing: finishing.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("starling-tls".into())
            .spawn(move || state.run(poll))?;
        Ok(Terminator {
            thread,
            waker,
            finishing,
        })
    }

    /// Makes the loop look at the server's stop flag now: it stops
    /// accepting.
    pub(super) fn wake(&self) {
        // A failure means the loop is gone; nothing is left to wake.
        let _ = self.waker.wake();
    }

    /// Once the I/O thread has stopped: gives the open connections up to
    /// the drain timeout to say their last words, then stops the thread.
    pub(super) fn finish(self) {
        self.finishing.store(true, Ordering::Release);
        self.wake();
        let _ = self.thread.join();
    }
}

struct Loop {
    server: Arc<ServerState>,
    tls: Arc<rustls::ServerConfig>,
    /// None once the server stops accepting.
    listener: Option<TcpListener>,
    pumps: slab::Slab<Pump>,
    /// Pumps whose turn ended before they would block.
    turns: Vec<usize>,
    /// What each pump reads into; shared, as the loop drives one at a time.
    scratch: Vec<u8>,
    accept_pause: AcceptPause,
    /// The listener had more connections waiting when its turn was up.
    accept_again: bool,
    finishing: Arc<AtomicBool>,
}

impl Loop {
    fn run(mut self, mut poll: Poll) {
        let mut events = Events::with_capacity(1024);
        let tick_every = tick_interval(&self.server.session);
        let mut next_tick = Instant::now() + tick_every;
        let mut drain_deadline = None;
        loop {
            let timeout = if self.turns.is_empty() && !self.accept_again {
                let deadlines = [drain_deadline, self.accept_pause.resume_at()];
                earliest(&deadlines, next_tick).saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(error) = poll.poll(&mut events, Some(timeout))
                && error.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(%error, "the TLS port's loop failed; its connections close");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    WAKE => {}
                    LISTEN => self.accept(poll.registry()),
                    Token(token) => self.drive(token - FIRST_PUMP, poll.registry()),
                }
            }
            for key in std::mem::take(&mut self.turns) {
                // A pump that ended meanwhile may have left its slot to a
                // new one: driving that one early is harmless.
                self.drive(key, poll.registry());
            }
            let now = Instant::now();
            if std::mem::take(&mut self.accept_again) || self.accept_pause.resumes(now) {
                self.accept(poll.registry());
            }
            if now >= next_tick {
                self.expire(now, poll.registry());
                next_tick = now + tick_every;
            }
            // SYNC POINT (server-stop), as the I/O loops.
            if self.server.stopping.load(Ordering::Acquire)
                && let Some(listener) = self.listener.take()
            {
                let _ = poll
                    .registry()
                    .deregister(&mut SourceFd(&listener.as_raw_fd()));
            }
            // SYNC POINT (tls-finish).
            if self.finishing.load(Ordering::Acquire) {
                let deadline =
                    *drain_deadline.get_or_insert(now + self.server.config.drain_timeout);
                if self.pumps.is_empty() || now >= deadline {
                    break;
                }
            }
        }
        for mut pump in self.pumps.drain() {
            pump.deregister(poll.registry());
        }
    }

    /// Accepts what waits, up to a turn's worth, unless paused.
    fn accept(&mut self, registry: &Registry) {
        if self.accept_pause.resume_at().is_some() {
            return;
        }
        let Some(listener) = self.listener.take() else {
            return;
        };
        let mut pause = std::mem::take(&mut self.accept_pause);
        let again = pause.accept_turn(
            || listener.accept(),
            |(tcp, remote)| self.admit(tcp, remote.to_string(), registry),
        );
        self.accept_pause = pause;
        self.accept_again |= again;
        self.listener = Some(listener);
    }

    /// Starts a pump for a new connection and hands its plaintext end to
    /// the I/O thread.
    fn admit(&mut self, tcp: std::net::TcpStream, remote: String, registry: &Registry) {
        if self.pumps.len() >= self.server.config.connections_max.saturating_mul(2) {
            tracing::debug!(%remote, "TLS connection closed: the node has its most connections");
            return;
        }
        // The I/O thread's end is non-blocking, as the sockets it accepts.
        let pair = UnixStream::pair().and_then(|(ours, theirs)| {
            theirs.set_nonblocking(true)?;
            Ok((ours, theirs))
        });
        let (ours, theirs) = match pair {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%remote, %error, "TLS connection closed: no socket pair for it");
                return;
            }
        };
        let connection = match rustls::ServerConnection::new(self.tls.clone()) {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%remote, %error, "TLS connection closed: rustls refused to start it");
                return;
            }
        };
        let failure = Arc::new(Failure::default());
        let timeout = self.server.session.handshake_timeout;
        let Ok(mut pump) = Pump::new(connection.into(), tcp, ours, timeout, failure.clone()) else {
            return;
        };
        let entry = self.pumps.vacant_entry();
        if pump
            .register(registry, Token(FIRST_PUMP + entry.key()))
            .is_err()
        {
            return;
        }
        entry.insert(pump);
        let plain = Stream::Tls(TlsPlain::new(theirs, failure));
        self.server.adopt(plain, remote);
    }

    fn drive(&mut self, key: usize, registry: &Registry) {
        let Some(pump) = self.pumps.get_mut(key) else {
            return;
        };
        match pump.drive(&mut self.scratch) {
            Drive::Blocked => {}
            Drive::TurnUp => {
                if !self.turns.contains(&key) {
                    self.turns.push(key);
                }
            }
            Drive::Done => self.remove(key, registry),
        }
    }

    /// Ends the pumps whose handshake or closing has run out of time.
    fn expire(&mut self, now: Instant, registry: &Registry) {
        let overdue: Vec<usize> = self
            .pumps
            .iter_mut()
            .filter_map(|(key, pump)| pump.expired(now).then_some(key))
            .collect();
        for key in overdue {
            self.remove(key, registry);
        }
    }

    fn remove(&mut self, key: usize, registry: &Registry) {
        if let Some(mut pump) = self.pumps.try_remove(key) {
            pump.deregister(registry);
        }
    }
}
