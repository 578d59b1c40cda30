//! Several I/O threads ([`ServerConfig::io_threads`](super::ServerConfig)):
//! how connections are spread over them.
//!
//! Thread 0 owns the listeners and accepts. Each accepted connection goes to
//! the thread with the fewest connections (the lowest index among equals,
//! so the spread is deterministic): thread 0 admits its own at once; another
//! thread's goes through that thread's inbox, a lock-free queue, and its loop
//! waker. A connection then lives on its thread for its whole life; its
//! deliveries from sessions on other threads come through the bus's
//! mailboxes and its `SessionWaker`, as they always did.
//!
//! `connections_max` is node-wide: only thread 0 adds to the per-thread
//! counts, so the sum it reads before adding cannot be overtaken.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_queue::SegQueue;

use super::listeners::refuse;
use super::session::SHUTTING_DOWN;
use super::wake::WakeLoop;
use crate::frame::ErrorCode;
use crate::stream::Stream;

/// An accepted connection, on its way to the thread that will serve it.
#[derive(Debug)]
pub(super) struct Accepted {
    pub(super) stream: Stream,
    /// The client's `IP:PORT` (empty for a Unix socket).
    pub(super) remote: String,
}

/// What one I/O thread shares with the acceptor and the server's owner.
#[derive(Debug)]
struct IoThread {
    /// Connections handed to this thread, not yet admitted. Unbounded, so
    /// an idle server holds no slots for them (`connections_max` bounds
    /// them anyway); a segment is allocated per 31 connections handed over,
    /// on the accept path only.
    inbox: SegQueue<Accepted>,
    /// Its connections: open, or waiting in its inbox. Relaxed: thread 0
    /// adds, the owner subtracts when one closes; a late subtraction only
    /// makes thread 0 more careful for a moment.
    connections: AtomicUsize,
    /// Set by the backend once its loop runs: how to wake it.
    waker: OnceLock<Arc<dyn WakeLoop>>,
    /// Times its loop was woken through `waker`. Written by the loop only,
    /// read for statistics: Relaxed, it orders nothing.
    wakes: AtomicU64,
}

/// The I/O threads of a server.
#[derive(Debug)]
pub(super) struct IoThreads {
    threads: Box<[IoThread]>,
    connections_max: usize,
}

impl IoThreads {
    /// `count` threads (at least one) sharing `connections_max`.
    pub(super) fn new(count: usize, connections_max: usize) -> Self {
        let threads = (0..count.max(1))
            .map(|_| IoThread {
                inbox: SegQueue::new(),
                connections: AtomicUsize::new(0),
                waker: OnceLock::new(),
                wakes: AtomicU64::new(0),
            })
            .collect();
        Self {
            threads,
            connections_max,
        }
    }

    /// How many threads there are.
    pub(super) fn count(&self) -> usize {
        self.threads.len()
    }

    /// Thread `index`'s loop runs and `waker` wakes it.
    pub(super) fn set_waker(&self, index: usize, waker: Arc<dyn WakeLoop>) {
        let _ = self.threads[index].waker.set(waker);
    }

    /// Thread `index`'s loop was woken through its waker. Its only writer,
    /// so no atomic add.
    pub(super) fn woken(&self, index: usize) {
        let wakes = &self.threads[index].wakes;
        wakes.store(wakes.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Times the loops were woken through their wakers, all threads together.
    pub(super) fn wakes(&self) -> u64 {
        self.threads
            .iter()
            .map(|thread| thread.wakes.load(Ordering::Relaxed))
            .sum()
    }

    /// Wakes every loop that runs (shutdown).
    pub(super) fn wake_all(&self) {
        for thread in &self.threads {
            if let Some(waker) = thread.waker.get() {
                waker.wake_loop();
            }
        }
    }

    /// Places a connection thread `own` (the acceptor) accepted: refuses it
    /// over `connections_max`, hands it to a less busy thread, or returns it
    /// for `own` to admit.
    pub(super) fn place(&self, own: usize, accepted: Accepted) -> Option<Accepted> {
        let counts = self
            .threads
            .iter()
            .map(|thread| thread.connections.load(Ordering::Relaxed));
        let open: usize = counts.clone().sum();
        if open >= self.connections_max {
            let reason = format!(
                "the node accepts at most {} connections",
                self.connections_max
            );
            refuse(&accepted.stream, ErrorCode::Limit, &reason);
            return None;
        }
        let (target, _) = counts
            .enumerate()
            .min_by_key(|&(index, count)| (count, index))
            .expect("at least one thread");
        let thread = &self.threads[target];
        thread.connections.fetch_add(1, Ordering::Relaxed);
        if target == own {
            return Some(accepted);
        }
        // SYNC POINT (io-inbox): the queue's push (Release) pairs with the
        // target's pop (Acquire) after its wake-up: the stream arrives whole.
        // Every waker is set before thread 0 accepts (`backend::start`), so
        // the wake-up is never missed.
        thread.inbox.push(accepted);
        if let Some(waker) = thread.waker.get() {
            waker.wake_loop();
        }
        None
    }

    /// The next connection handed to thread `index`, for it to admit.
    pub(super) fn take(&self, index: usize) -> Option<Accepted> {
        self.threads[index].inbox.pop()
    }

    /// One of thread `index`'s connections closed (or could not be admitted).
    pub(super) fn closed(&self, index: usize) {
        self.threads[index]
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// After every thread has stopped: closes the connections still waiting
    /// in inboxes (handed over while their thread was stopping), each told
    /// why, as the connections their threads had admitted were.
    pub(super) fn discard_waiting(&self) {
        for (index, thread) in self.threads.iter().enumerate() {
            while let Some(waiting) = thread.inbox.pop() {
                refuse(&waiting.stream, ErrorCode::ShuttingDown, SHUTTING_DOWN);
                self.closed(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn accepted() -> (Accepted, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        let accepted = Accepted {
            stream: Stream::Unix(server),
            remote: String::new(),
        };
        (accepted, client)
    }

    #[test]
    fn connections_go_to_the_least_busy_thread_up_to_the_limit() {
        let threads = IoThreads::new(3, 4);
        let mut clients = Vec::new();
        let mut placed = Vec::new();
        for _ in 0..4 {
            let (connection, client) = accepted();
            clients.push(client);
            placed.push(threads.place(0, connection).is_some());
        }
        // Thread 0 admits its own; threads 1 and 2 get theirs in the inbox;
        // then thread 0 again (all at one).
        assert_eq!(placed, [true, false, false, true]);
        assert!(threads.take(1).is_some() && threads.take(1).is_none());
        assert!(threads.take(2).is_some() && threads.take(2).is_none());
        let (over, mut client) = accepted();
        assert!(threads.place(0, over).is_none(), "over the limit");
        assert!(threads.take(1).is_none() && threads.take(2).is_none());
        let mut refusal = Vec::new();
        std::io::Read::read_to_end(&mut client, &mut refusal).unwrap();
        assert!(String::from_utf8_lossy(&refusal).contains("at most 4 connections"));
        // One closes on thread 2: the next goes there.
        threads.closed(2);
        let (next, _client) = accepted();
        assert!(threads.place(0, next).is_none());
        assert!(threads.take(2).is_some());
    }

    #[test]
    fn a_connection_left_in_an_inbox_at_shutdown_is_told_why_it_closes() {
        let threads = IoThreads::new(2, 4);
        let (own, _own_client) = accepted();
        assert!(threads.place(0, own).is_some());
        // Handed to thread 1 after its loop stopped: nobody admits it.
        let (late, mut client) = accepted();
        assert!(threads.place(0, late).is_none());
        threads.discard_waiting();
        let mut received = Vec::new();
        std::io::Read::read_to_end(&mut client, &mut received).unwrap();
        assert_eq!(
            received,
            crate::frame::error_frame(ErrorCode::ShuttingDown, SHUTTING_DOWN)
        );
        // Its place is free again.
        let (next, _next_client) = accepted();
        assert!(threads.place(0, next).is_none(), "thread 1 has none now");
    }
}
