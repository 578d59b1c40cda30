//! Starting the I/O threads, and choosing their backend on the threads
//! themselves.
//!
//! io_uring is tried first (unless `epoll` was asked for): the ring, the
//! opcodes the loop needs and the buffer ring must all work here. Any failure
//! (ENOSYS on an old kernel or under a seccomp filter, EPERM with
//! `kernel.io_uring_disabled`, ENOMEM under a small memlock limit, EINVAL for
//! an unsupported setup flag) falls back to epoll, and the reason is reported
//! once, with the backend, to whoever started the server; every I/O thread
//! runs the same backend.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

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

/// Starts the server's I/O threads and returns once every loop runs.
///
/// Each thread sets its backend up itself (an io_uring ring belongs to the
/// thread that submits to it) and reports whether io_uring works there;
/// io_uring runs only if it works on every thread, else every thread runs
/// epoll, for the first thread's reason: one backend, decided and reported
/// once. Thread 0 gets the listeners.
pub(super) fn start(
    choice: BackendChoice,
    listeners: Listeners,
    server: &Arc<ServerState>,
) -> io::Result<(Backend, Vec<JoinHandle<()>>)> {
    let count = server.threads.count();
    let (probed_tx, probed_rx) = mpsc::channel();
    let (running_tx, running_rx) = mpsc::channel();
    let mut listeners = Some(listeners);
    let mut workers = Vec::with_capacity(count);
    let mut decisions = Vec::with_capacity(count);
    for index in 0..count {
        let (decision_tx, decision_rx) = mpsc::channel();
        let thread = IoThread {
            index,
            choice,
            listeners: listeners.take().unwrap_or_default(),
            server: server.clone(),
            probed: probed_tx.clone(),
            decision: decision_rx,
            running: running_tx.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("starling-io-{index}"))
            .spawn(move || thread.run());
        match spawned {
            Ok(worker) => {
                workers.push(worker);
                decisions.push(decision_tx);
            }
            Err(error) => {
                // Without a decision, the threads started return at once.
                drop(decisions);
                join(workers);
                return Err(error);
            }
        }
    }
    drop((probed_tx, running_tx));
    let mut unavailable = None;
    for _ in 0..count {
        let probe = probed_rx.recv().unwrap_or_else(|_| Err(exited()));
        if let Err(error) = probe {
            unavailable.get_or_insert(error);
        }
    }
    let backend = match (choice, unavailable) {
        (BackendChoice::Epoll, _) => Backend::Epoll {
            reason: "--io-backend epoll".to_owned(),
        },
        (_, None) => Backend::Uring,
        (BackendChoice::Uring, Some(error)) => {
            drop(decisions);
            join(workers);
            return Err(io::Error::new(
                error.kind(),
                format!("io_uring was required but cannot start: {error}"),
            ));
        }
        (BackendChoice::Auto, Some(error)) => Backend::Epoll {
            reason: format!("io_uring unavailable: {error}"),
        },
    };
    for decision in &decisions {
        let _ = decision.send(backend.clone());
    }
    for _ in 0..count {
        if let Err(error) = running_rx.recv().unwrap_or_else(|_| Err(exited())) {
            // SYNC POINT (server-stop): as in `Server::shutdown`. The loops
            // that run stop at once: they have no connection yet.
            server.stopping.store(true, Ordering::Release);
            drop(decisions);
            server.threads.wake_all();
            join(workers);
            return Err(error);
        }
    }
    // Every loop's waker is set: let them go (thread 0 accepts and hands
    // connections to the others, whose wakers it needs).
    drop(decisions);
    Ok((backend, workers))
}

fn exited() -> io::Error {
    io::Error::other("an I/O thread exited during start-up")
}

fn join(workers: Vec<JoinHandle<()>>) {
    for worker in workers {
        let _ = worker.join();
    }
}

/// One I/O thread before its loop runs, and what it reports through.
struct IoThread {
    index: usize,
    choice: BackendChoice,
    listeners: Listeners,
    server: Arc<ServerState>,
    /// Whether io_uring works here (always, if not asked for).
    probed: Sender<io::Result<()>>,
    /// The backend all threads run; then closed once every loop runs (or
    /// if the server does not start).
    decision: Receiver<Backend>,
    /// The loop runs, or could not start.
    running: Sender<io::Result<()>>,
}

impl IoThread {
    fn run(self) {
        let IoThread {
            index,
            choice,
            listeners,
            server,
            probed,
            decision,
            running,
        } = self;
        let mut setup = None;
        let probe = match choice {
            BackendChoice::Epoll => Ok(()),
            BackendChoice::Auto | BackendChoice::Uring => uring_setup().map(|ring| {
                setup = Some(ring);
            }),
        };
        // Dropped once sent: should another thread die before it reports,
        // the receiver then sees that rather than waiting for ever.
        let _ = probed.send(probe);
        drop(probed);
        let Ok(backend) = decision.recv() else {
            return;
        };
        // Called by the loop once its waker is set; waits for every other
        // thread's.
        let started = || {
            let _ = running.send(Ok(()));
            let _ = decision.recv();
        };
        let result = match setup {
            Some(setup) if backend == Backend::Uring => {
                run_uring(setup, index, listeners, &server, &started)
            }
            setup => {
                drop(setup);
                super::epoll::run(index, listeners, &server, &started)
            }
        };
        if let Err(error) = result {
            let _ = running.send(Err(error));
        }
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
    index: usize,
    listeners: Listeners,
    server: &Arc<ServerState>,
    started: &dyn Fn(),
) -> io::Result<()> {
    super::uring::run(setup, index, listeners, server, started)
}

#[cfg(not(target_os = "linux"))]
fn run_uring(
    setup: UringSetup,
    _: usize,
    _: Listeners,
    _: &Arc<ServerState>,
    _: &dyn Fn(),
) -> io::Result<()> {
    match setup {}
}
