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

/// Starts the server's I/O threads and returns once every loop runs, or
/// with an error once one cannot start or has died (panicked) on the way.
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
    let mut listeners = Some(listeners);
    let mut workers = Vec::with_capacity(count);
    let mut decisions = Vec::with_capacity(count);
    let mut reports = Vec::with_capacity(count);
    for index in 0..count {
        let (decision_tx, decision_rx) = mpsc::channel();
        let (report_tx, report_rx) = mpsc::channel();
        let thread = IoThread {
            index,
            choice,
            listeners: listeners.take().unwrap_or_default(),
            server: server.clone(),
            decision: decision_rx,
            report: report_tx,
            #[cfg(test)]
            panic_after_probe: tests::PANIC_AFTER_PROBE.get() == Some(index),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("starling-io-{index}"))
            .spawn(move || thread.run());
        match spawned {
            Ok(worker) => {
                workers.push(worker);
                decisions.push(decision_tx);
                reports.push(report_rx);
            }
            Err(error) => {
                // Without a decision, the threads started return at once.
                drop(decisions);
                join(workers);
                return Err(error);
            }
        }
    }
    let mut unavailable = None;
    for report in &reports {
        if let Err(error) = next_report(report) {
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
    for report in &reports {
        if let Err(error) = next_report(report) {
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

/// What a thread reports next, or that it died (its sender was dropped
/// as it unwound): each thread has its own channel, so one that dies is
/// seen as such even while the others hold theirs, waiting for the decision.
fn next_report(report: &Receiver<io::Result<()>>) -> io::Result<()> {
    report
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("an I/O thread exited during start-up")))
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
    /// The backend all threads run; then closed once every loop runs (or
    /// if the server does not start).
    decision: Receiver<Backend>,
    /// To `start`, in turn: whether io_uring works here (always, if not
    /// asked for); then whether the loop runs, or why it could not start.
    report: Sender<io::Result<()>>,
    /// Test hook: die between the probe and the loop.
    #[cfg(test)]
    panic_after_probe: bool,
}

impl IoThread {
    fn run(self) {
        let IoThread {
            index,
            choice,
            listeners,
            server,
            decision,
            report,
            #[cfg(test)]
            panic_after_probe,
        } = self;
        let mut setup = None;
        let probe = match choice {
            BackendChoice::Epoll => Ok(()),
            BackendChoice::Auto | BackendChoice::Uring => uring_setup().map(|ring| {
                setup = Some(ring);
            }),
        };
        let _ = report.send(probe);
        #[cfg(test)]
        assert!(!panic_after_probe, "I/O thread {index}: injected failure");
        let Ok(backend) = decision.recv() else {
            return;
        };
        // Called by the loop once its waker is set; waits for every other
        // thread's.
        let started = || {
            let _ = report.send(Ok(()));
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
            let _ = report.send(Err(error));
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use starling_core::Bus;

    use super::*;
    use crate::server::{Server, ServerConfig};

    thread_local! {
        /// The I/O thread that dies between its probe and its loop, in the
        /// servers this thread starts.
        pub(super) static PANIC_AFTER_PROBE: Cell<Option<usize>> = const { Cell::new(None) };
    }

    #[test]
    fn a_thread_that_dies_before_its_loop_runs_fails_start_instead_of_hanging_it() {
        for backend in [BackendChoice::Epoll, BackendChoice::Auto] {
            for dying in [0, 1] {
                let (started_tx, started_rx) = mpsc::channel();
                std::thread::spawn(move || {
                    PANIC_AFTER_PROBE.set(Some(dying));
                    let config = ServerConfig {
                        tcp: Some("127.0.0.1:0".into()),
                        backend,
                        io_threads: 3,
                        ..ServerConfig::default()
                    };
                    let started = Server::start(Bus::default(), config).map(drop);
                    let _ = started_tx.send(started);
                });
                let started = started_rx
                    .recv_timeout(Duration::from_secs(20))
                    .unwrap_or_else(|_| panic!("{backend:?}, thread {dying} died: start hangs"));
                let error = started.expect_err("a thread died: start must fail");
                assert!(
                    error.to_string().contains("exited during start-up"),
                    "{backend:?}, thread {dying}: {error}"
                );
            }
        }
    }
}
