//! [`Terminator`]: a thread that speaks TLS for a server's TCP connections
//! (why a thread in front of the server rather than TLS inside it: the
//! module doc of `crate::tls`).
//!
//! Whoever accepts a TCP connection hands it over with
//! [`Terminator::terminate`] and gets back at once the plaintext end of a
//! socket pair, which it serves like any connection (the local server's
//! I/O thread, the NATS listener's tasks). A [`Pump`] carries bytes between
//! the other end and the TCP socket, decrypting and encrypting; one mio
//! loop runs every pump, as the epoll backend runs its sessions.
//!
//! Limits: a handshake not done within the handshake timeout ends its
//! pump, and a closing connection gets the same time for its last words;
//! at most `pumps_max` pumps at once (past it, `terminate` refuses, and the
//! caller drops the connection).

use std::io;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Registry, Token};

use super::ServerTls;
use super::pump::{Drive, Pump, SCRATCH_BYTES};

const WAKE: Token = Token(0);
const FIRST_PUMP: usize = 1;
/// How often pumps' deadlines are looked at.
const TICK: Duration = Duration::from_millis(100);

/// How a [`Terminator`] serves.
#[derive(Debug, Clone)]
pub struct TerminatorConfig {
    /// The server's certificate, and the client CA if clients must present
    /// certificates.
    pub tls: ServerTls,
    /// How long a TLS handshake may take (and closing, after it).
    pub handshake_timeout: Duration,
    /// Most TLS connections at once.
    pub pumps_max: usize,
    /// What a client that does not speak TLS is told, in its own protocol,
    /// before the connection closes.
    pub refusal: Vec<u8>,
    /// On [`Terminator::finish`], how long open connections have for their
    /// last words.
    pub drain_timeout: Duration,
}

/// The running thread.
#[derive(Debug)]
pub struct Terminator {
    config: TerminatorConfig,
    refusal: Arc<[u8]>,
    shared: Arc<Shared>,
    waker: Arc<mio::Waker>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What [`Terminator::terminate`] and the loop share.
#[derive(Debug, Default)]
struct Shared {
    /// Pumps handed over, for the loop to register: a lock, taken once per
    /// connection on each side.
    incoming: Mutex<Vec<Pump>>,
    /// Pumps handed over and not yet ended: the bound `terminate` checks.
    /// Relaxed: a count for a limit, which orders nothing (the pumps travel
    /// through `incoming`'s lock).
    open: AtomicUsize,
    /// Set once, by [`Terminator::finish`]. SYNC POINT (tls-finish): the
    /// Release store pairs with the Acquire load the loop makes every turn;
    /// the waker makes it take that turn at once.
    finishing: AtomicBool,
}

impl Terminator {
    /// Starts the thread.
    pub fn start(config: TerminatorConfig) -> io::Result<Terminator> {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
        let shared = Arc::new(Shared::default());
        let state = Loop {
            shared: shared.clone(),
            drain_timeout: config.drain_timeout,
            pumps: slab::Slab::new(),
            turns: Vec::new(),
            scratch: vec![0; SCRATCH_BYTES],
        };
        let thread = std::thread::Builder::new()
            .name("starling-tls".into())
            .spawn(move || state.run(poll))?;
        Ok(Terminator {
            refusal: config.refusal.clone().into(),
            config,
            shared,
            waker,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Starts TLS on `tcp`, a connection accepted from a client; returns
    /// its plaintext end at once (non-blocking): the handshake runs on the
    /// terminator's thread. Fails past `pumps_max` connections, or without a
    /// descriptor for the socket pair: drop the connection then.
    pub fn terminate(&self, tcp: TcpStream) -> io::Result<UnixStream> {
        // Relaxed: see `Shared::open`.
        if self.shared.open.fetch_add(1, Ordering::Relaxed) >= self.config.pumps_max {
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::other(format!(
                "the node has its most TLS connections ({})",
                self.config.pumps_max
            )));
        }
        let pump = self.pump(tcp);
        match pump {
            Ok((pump, plain)) => {
                self.shared
                    .incoming
                    .lock()
                    .expect("incoming lock")
                    .push(pump);
                // A failure means the loop is gone: the pump is dropped
                // with `shared`, closing the connection.
                let _ = self.waker.wake();
                Ok(plain)
            }
            Err(error) => {
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    fn pump(&self, tcp: TcpStream) -> io::Result<(Pump, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        theirs.set_nonblocking(true)?;
        let connection = rustls::ServerConnection::new(self.config.tls.config().clone())
            .map_err(io::Error::other)?;
        let timeout = self.config.handshake_timeout;
        let pump = Pump::server(connection, tcp, ours, timeout, self.refusal.clone())?;
        Ok((pump, theirs))
    }

    /// Gives the open connections up to the drain timeout to say their last
    /// words (their plaintext ends should be closed by now), then stops the
    /// thread. Idempotent; also done on drop.
    pub fn finish(&self) {
        self.shared.finishing.store(true, Ordering::Release);
        let _ = self.waker.wake();
        let thread = self.thread.lock().expect("thread lock").take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.finish();
    }
}

struct Loop {
    shared: Arc<Shared>,
    drain_timeout: Duration,
    pumps: slab::Slab<Pump>,
    /// Pumps whose turn ended before they would block.
    turns: Vec<usize>,
    /// What each pump reads into; shared, as the loop drives one at a time.
    scratch: Vec<u8>,
}

impl Loop {
    fn run(mut self, mut poll: Poll) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let timeout = if self.turns.is_empty() {
                let wake_at = drain_deadline.map_or(next_tick, |at| at.min(next_tick));
                wake_at.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(error) = poll.poll(&mut events, Some(timeout))
                && error.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(%error, "the TLS connections' loop failed; they close");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    WAKE => self.take_incoming(poll.registry()),
                    Token(token) => self.drive(token - FIRST_PUMP, poll.registry()),
                }
            }
            for key in std::mem::take(&mut self.turns) {
                // A pump that ended meanwhile may have left its slot to a
                // new one: driving that one early is harmless.
                self.drive(key, poll.registry());
            }
            let now = Instant::now();
            if now >= next_tick {
                self.expire(now, poll.registry());
                next_tick = now + TICK;
            }
            // SYNC POINT (tls-finish).
            if self.shared.finishing.load(Ordering::Acquire) {
                let deadline = *drain_deadline.get_or_insert(now + self.drain_timeout);
                if self.pumps.is_empty() || now >= deadline {
                    break;
                }
            }
        }
        for mut pump in self.pumps.drain() {
            pump.deregister(poll.registry());
        }
    }

    /// Registers the pumps handed over, and drives each once: bytes may be
    /// waiting already, and edge-triggered readiness says so only once.
    fn take_incoming(&mut self, registry: &Registry) {
        let incoming = std::mem::take(&mut *self.shared.incoming.lock().expect("incoming lock"));
        for mut pump in incoming {
            let entry = self.pumps.vacant_entry();
            let key = entry.key();
            if pump.register(registry, Token(FIRST_PUMP + key)).is_err() {
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            entry.insert(pump);
            self.drive(key, registry);
        }
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
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
