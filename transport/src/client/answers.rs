//! [`Answers`]: what the client waits to hear from the node (a
//! subscription's `OK`/`ERR`, a request's reply, a flush's `PONG`), each
//! with its deadline, and the timer thread that ends the waits whose time is
//! up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use starling_core::Event;

use super::ClientError;
use super::completion::Completion;

/// A subscription's acknowledgement, or a flush's `PONG`.
type Ack = Result<(), ClientError>;
/// A request's reply.
type Reply = Result<Event, ClientError>;

/// An answer someone waits for, and until when.
#[derive(Debug)]
struct Pending<T> {
    completion: Arc<Completion<T>>,
    deadline: Instant,
}

/// A request in flight.
pub(super) struct PendingRequest {
    pub(super) tag: u64,
    pub(super) completion: Arc<Completion<Reply>>,
}

impl PendingRequest {
    pub(super) fn wait_until(&self, deadline: Instant) -> Option<Reply> {
        self.completion.wait_until(deadline)
    }
}

/// The answers awaited, by tag.
#[derive(Debug)]
pub(super) struct Answers {
    awaited: Mutex<Awaited>,
    /// The timer thread sleeps on it (with `awaited`) until the next
    /// deadline.
    due: Condvar,
}

#[derive(Debug, Default)]
struct Awaited {
    acks: HashMap<u64, Pending<Ack>>,
    requests: HashMap<u64, Pending<Reply>>,
    pongs: HashMap<u64, Pending<Ack>>,
    /// The first error the node reported about a plain publish (a
    /// permission, an invalid event) since the last flush, which returns
    /// it: nobody waits for a publish's answer.
    refused_publish: Option<ClientError>,
    /// When the timer thread will wake next, if it will.
    timer_wakes_at: Option<Instant>,
}

impl Awaited {
    /// The earliest deadline of any answer still awaited.
    fn next_deadline(&self) -> Option<Instant> {
        let acks = self.acks.values().map(|p| p.deadline);
        let requests = self.requests.values().map(|p| p.deadline);
        let pongs = self.pongs.values().map(|p| p.deadline);
        acks.chain(requests).chain(pongs).min()
    }
}

impl Answers {
    pub(super) fn new() -> Self {
        Self {
            awaited: Mutex::new(Awaited::default()),
            due: Condvar::new(),
        }
    }

    /// Awaits the `OK` or `ERR` for subscription `sid`, for up to `wait`.
    pub(super) fn expect_ack(&self, sid: u64, wait: Duration) -> Arc<Completion<Ack>> {
        self.expect(|awaited| &mut awaited.acks, sid, wait)
    }

    /// Awaits the reply to request `tag`, for up to `wait`.
    pub(super) fn expect_reply(&self, tag: u64, wait: Duration) -> Arc<Completion<Reply>> {
        self.expect(|awaited| &mut awaited.requests, tag, wait)
    }

    /// Awaits the `PONG` for ping `tag`, for up to `wait`.
    pub(super) fn expect_pong(&self, tag: u64, wait: Duration) -> Arc<Completion<Ack>> {
        self.expect(|awaited| &mut awaited.pongs, tag, wait)
    }

    /// Awaits the answer filed under `tag` in `table`: the reader completes
    /// it when the answer comes, the timer with a timeout once `wait` has
    /// passed.
    fn expect<T>(
        &self,
        table: fn(&mut Awaited) -> &mut HashMap<u64, Pending<T>>,
        tag: u64,
        wait: Duration,
    ) -> Arc<Completion<T>> {
        let completion = Completion::new();
        let deadline = Instant::now() + wait;
        let mut awaited = self.awaited.lock().expect("answers lock");
        table(&mut awaited).insert(
            tag,
            Pending {
                completion: completion.clone(),
                deadline,
            },
        );
        // Deadlines mostly come in order, so the timer seldom has to be
        // woken early.
        if awaited.timer_wakes_at.is_none_or(|at| deadline < at) {
            awaited.timer_wakes_at = Some(deadline);
            self.due.notify_one();
        }
        completion
    }

    /// Stops waiting for subscription `sid`'s acknowledgement.
    pub(super) fn forget_ack(&self, sid: u64) {
        self.awaited.lock().expect("answers lock").acks.remove(&sid);
    }

    /// Stops waiting for request `tag`'s reply.
    pub(super) fn forget_request(&self, tag: u64) {
        self.awaited
            .lock()
            .expect("answers lock")
            .requests
            .remove(&tag);
    }

    /// The node refused a plain publish; kept for the next flush, unless an
    /// earlier refusal is still kept.
    pub(super) fn refused_publish(&self, error: ClientError) {
        self.awaited
            .lock()
            .expect("answers lock")
            .refused_publish
            .get_or_insert(error);
    }

    /// The first publish refused since the last call.
    pub(super) fn take_refused_publish(&self) -> Option<ClientError> {
        self.awaited
            .lock()
            .expect("answers lock")
            .refused_publish
            .take()
    }

    pub(super) fn answer_ack(&self, sid: u64, answer: Ack) {
        let pending = self.awaited.lock().expect("answers lock").acks.remove(&sid);
        if let Some(pending) = pending {
            pending.completion.complete(answer);
        }
    }

    pub(super) fn answer_request(&self, tag: u64, answer: Reply) {
        let pending = self
            .awaited
            .lock()
            .expect("answers lock")
            .requests
            .remove(&tag);
        if let Some(pending) = pending {
            pending.completion.complete(answer);
        }
    }

    pub(super) fn answer_pong(&self, tag: u64) {
        let pending = self
            .awaited
            .lock()
            .expect("answers lock")
            .pongs
            .remove(&tag);
        if let Some(pending) = pending {
            pending.completion.complete(Ok(()));
        }
    }

    /// The timer thread: completes answers whose time is up with a timeout,
    /// until `closed`. A thread of its own because the reader cannot be
    /// relied on for it: a steady stream of frames keeps its reads from ever
    /// timing out, and reconnecting can take it seconds.
    pub(super) fn timer_loop(&self, closed: &AtomicBool) {
        let mut awaited = self.awaited.lock().expect("answers lock");
        while !closed.load(Ordering::Relaxed) {
            let now = Instant::now();
            awaited
                .acks
                .retain(|_, p| keep_or(p, now, || Err(ClientError::Timeout)));
            awaited
                .requests
                .retain(|_, p| keep_or(p, now, || Err(ClientError::Timeout)));
            awaited
                .pongs
                .retain(|_, p| keep_or(p, now, || Err(ClientError::Timeout)));
            awaited.timer_wakes_at = awaited.next_deadline();
            awaited = match awaited.timer_wakes_at {
                Some(at) => {
                    self.due
                        .wait_timeout(awaited, at.saturating_duration_since(now))
                        .expect("answers lock")
                        .0
                }
                None => self.due.wait(awaited).expect("answers lock"),
            };
        }
    }

    /// The client is closing (`closed` is set): wakes the timer to see it.
    pub(super) fn stop_timer(&self) {
        // Taken so that the timer is either before its check of `closed` or
        // asleep, and cannot miss this wake-up.
        let _awaited = self.awaited.lock().expect("answers lock");
        self.due.notify_all();
    }

    /// The connection is gone for good (`closed` is set): stops the timer and
    /// answers every waiter with [`ClientError::Closed`].
    pub(super) fn fail_all(&self) {
        let mut awaited = self.awaited.lock().expect("answers lock");
        self.due.notify_all();
        for (_, pending) in awaited.acks.drain() {
            pending.completion.complete(Err(ClientError::Closed));
        }
        for (_, pending) in awaited.requests.drain() {
            pending.completion.complete(Err(ClientError::Closed));
        }
        for (_, pending) in awaited.pongs.drain() {
            pending.completion.complete(Err(ClientError::Closed));
        }
    }
}

/// Keeps `pending` if its deadline is still ahead; else completes it with
/// `expired()` and drops it.
fn keep_or<T>(pending: &Pending<T>, now: Instant, expired: impl FnOnce() -> T) -> bool {
    if pending.deadline > now {
        return true;
    }
    pending.completion.complete(expired());
    false
}
