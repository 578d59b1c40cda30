//! How the bus wakes an I/O loop when events arrive for an idle connection.
//!
//! A session registers its [`SessionWaker`] with its mailbox only when the
//! mailbox runs dry. When the next delivery comes, the publishing thread calls
//! the waker: it puts the session's key on the loop's [`ReadyQueue`] (once,
//! however many deliveries follow, until the loop takes it off) and wakes the
//! loop through its eventfd, unless the publisher runs on the loop's own
//! thread: that loop looks at its queue before it next waits anyway
//! ([`ReadyQueue::serve_on_this_thread`]). Under load mailboxes do not run
//! dry, so there are no wake-ups at all.

use std::cell::Cell;
use std::fmt;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};

use crossbeam_queue::ArrayQueue;

/// Wakes an I/O loop from any thread.
pub(crate) trait WakeLoop: Send + Sync + fmt::Debug {
    /// Makes the loop return from its wait soon.
    fn wake_loop(&self);
}

thread_local! {
    /// The ready queue of the I/O loop this thread runs, or null: how a
    /// waker tells that it runs on its own loop's thread.
    static SERVED_HERE: Cell<*const ReadyQueue> = const { Cell::new(ptr::null()) };
}

/// Sessions with deliveries waiting, for one I/O loop.
#[derive(Debug)]
pub(crate) struct ReadyQueue {
    keys: ArrayQueue<u64>,
    loop_waker: Arc<dyn WakeLoop>,
}

/// While alive, this thread runs the loop of one ready queue (see
/// [`ReadyQueue::serve_on_this_thread`]).
#[derive(Debug)]
pub(crate) struct Serving {
    /// Keeps the queue, so that its address names no other queue meanwhile.
    _ready: Arc<ReadyQueue>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        SERVED_HERE.set(ptr::null());
    }
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

    /// The calling thread runs this queue's loop until the guard is
    /// dropped: its wakers called on this thread queue their session
    /// without waking the loop. The loop promises in return to empty the
    /// queue (`pop` until `None`) at the end of every turn, after anything
    /// of the turn that can wake a session and right before it waits.
    pub(crate) fn serve_on_this_thread(self: &Arc<Self>) -> Serving {
        SERVED_HERE.set(Arc::as_ptr(self));
        Serving {
            _ready: self.clone(),
        }
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
            // SYNC POINT (same-thread wake): no wake is lost when this thread
            // runs the key's loop. The loop's thread calls wakers only from
            // within a turn (handling completions or readiness, resuming,
            // ticking, shutting down), never from within its wait (the ring
            // or epoll wait runs no code of ours), and it ends every turn by
            // popping its queue until empty, right before it waits, popping
            // also what the sessions it pulls there queue. So this key, pushed
            // earlier on the same thread (program order; no fence needed),
            // is popped before the loop next waits. Any other thread (another
            // loop's, an in-process publisher, the mesh, the TLS terminator)
            // sees null or another queue here and writes the eventfd: the
            // loop may be asleep. Between the loop's last turn and the end
            // of its `Serving` guard nothing is left to wake.
            let served_here = SERVED_HERE.get() == Arc::as_ptr(&self.ready);
            if !served_here {
                self.ready.loop_waker.wake_loop();
            }
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

    #[test]
    fn only_a_wake_from_another_thread_than_the_loops_wakes_the_loop() {
        let counting = Arc::new(Counting::default());
        let ready = ReadyQueue::new(4, counting.clone());
        let other_loop = ReadyQueue::new(4, Arc::new(Counting::default()));
        let session = SessionWaker::new(7, ready.clone());
        let serving_other = other_loop.serve_on_this_thread();
        session.waker().wake_by_ref();
        assert_eq!(
            counting.0.load(Ordering::Relaxed),
            1,
            "another loop's thread"
        );
        drop(serving_other);
        let serving = ready.serve_on_this_thread();
        assert_eq!(ready.pop(), Some(7));
        session.taken();
        session.waker().wake_by_ref();
        assert_eq!(ready.pop(), Some(7), "queued all the same");
        assert_eq!(
            counting.0.load(Ordering::Relaxed),
            1,
            "the loop's own thread"
        );
        session.taken();
        std::thread::scope(|scope| {
            scope.spawn(|| session.waker().wake_by_ref());
        });
        assert_eq!(counting.0.load(Ordering::Relaxed), 2, "any other thread");
        drop(serving);
        assert_eq!(ready.pop(), Some(7));
        session.taken();
        session.waker().wake_by_ref();
        assert_eq!(
            counting.0.load(Ordering::Relaxed),
            3,
            "after the loop ended"
        );
    }
}
