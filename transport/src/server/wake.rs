//! How the bus wakes an I/O loop when events arrive for an idle connection.
//!
//! A session registers its [`SessionWaker`] with its mailbox only when the
//! mailbox runs dry. When the next delivery comes, the publishing thread calls
//! the waker: it puts the session's key on the loop's [`ReadyQueue`] (once,
//! however many deliveries follow, until the loop takes it off) and wakes the
//! loop through its eventfd. Under load mailboxes do not run dry, so there are
//! no wake-ups at all.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};

use crossbeam_queue::ArrayQueue;

/// Wakes an I/O loop from any thread.
pub(crate) trait WakeLoop: Send + Sync + fmt::Debug {
    /// Makes the loop return from its wait soon.
    fn wake_loop(&self);
}

/// Sessions with deliveries waiting, for one I/O loop.
#[derive(Debug)]
pub(crate) struct ReadyQueue {
    keys: ArrayQueue<u64>,
    loop_waker: Arc<dyn WakeLoop>,
}

impl ReadyQueue {
    /// A queue for up to `sessions` sessions: each is on it at most once.
    pub(crate) fn new(sessions: usize, loop_waker: Arc<dyn WakeLoop>) -> Arc<Self> {
        Arc::new(Self {
            keys: ArrayQueue::new(sessions.max(1)),
            loop_waker,
        })
    }

    /// The next session that was woken.
    pub(crate) fn pop(&self) -> Option<u64> {
        self.keys.pop()
    }
}

/// A session's waker: registered with its mailbox, called by publishers.
#[derive(Debug)]
pub(crate) struct SessionWaker {
    key: u64,
    /// True while the key is on the ready queue.
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl SessionWaker {
    pub(crate) fn new(key: u64, ready: Arc<ReadyQueue>) -> Arc<Self> {
        Arc::new(Self {
            key,
            queued: AtomicBool::new(false),
            ready,
        })
    }

    /// The loop took the key off the queue and is about to pull the session:
    /// from now on a wake must queue it again. Called before pulling, so a
    /// delivery racing with the pull is never missed.
    pub(crate) fn taken(&self) {
        // SYNC POINT (session-ready): Release pairs with the AcqRel swap in
        // `wake_by_ref`: a waker that sees `false` queues the key again.
        self.queued.store(false, Ordering::Release);
    }

    /// This waker as a `Waker`.
    pub(crate) fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }
}

impl Wake for SessionWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // SYNC POINT (session-ready): see `taken`.
        if !self.queued.swap(true, Ordering::AcqRel) {
            // The queue holds one key per session at most, and is sized for
            // every session, so this push cannot fail.
            let pushed = self.ready.keys.push(self.key);
            debug_assert!(pushed.is_ok(), "ready queue sized for every session");
            self.ready.loop_waker.wake_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl WakeLoop for Counting {
        fn wake_loop(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_session_is_queued_once_until_taken() {
        let counting = Arc::new(Counting::default());
        let ready = ReadyQueue::new(4, counting.clone());
        let waker = SessionWaker::new(7, ready.clone()).waker();
        waker.wake_by_ref();
        waker.wake_by_ref();
        assert_eq!(ready.pop(), Some(7));
        assert_eq!(ready.pop(), None);
        assert_eq!(counting.0.load(Ordering::Relaxed), 1);
    }
}
