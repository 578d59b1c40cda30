//! [`Completion`]: a one-shot result that a thread can block on or a task can
//! await. Used for the answers the reader thread hands back: a subscription's
//! `OK`/`ERR`, a request's reply, a flush's `PONG` — or the timeout the
//! client's timer thread completes it with at its deadline, which is what
//! wakes an awaiting task that no answer will.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// A result that arrives once.
#[derive(Debug)]
pub(crate) struct Completion<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

#[derive(Debug)]
struct State<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

impl<T> Completion<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                value: None,
                waker: None,
            }),
            ready: Condvar::new(),
        })
    }

    /// Sets the result (the first one wins) and wakes the waiter.
    pub(crate) fn complete(&self, value: T) {
        let waker = {
            let mut state = self.state.lock().expect("completion lock");
            if state.value.is_some() {
                return;
            }
            state.value = Some(value);
            state.waker.take()
        };
        // Woken after the lock is released: a waiter woken while it is held
        // runs at once (when its core is awake) only to find the lock taken
        // and sleep again, a second wake-up per answer. Nothing is missed:
        // a waiter checks the value under the lock before it waits, and
        // `Condvar::wait` releases the lock only once it is waiting.
        if let Some(waker) = waker {
            waker.wake();
        }
        self.ready.notify_all();
    }

    /// Blocks until the result arrives or `deadline` passes.
    pub(crate) fn wait_until(&self, deadline: Instant) -> Option<T> {
        let mut state = self.state.lock().expect("completion lock");
        loop {
            if let Some(value) = state.value.take() {
                return Some(value);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = self
                .ready
                .wait_timeout(state, deadline - now)
                .expect("completion lock")
                .0;
        }
    }

    /// The result, for async code.
    pub(crate) fn wait_async(self: &Arc<Self>) -> Wait<T> {
        Wait {
            completion: self.clone(),
        }
    }
}

/// The future of [`Completion::wait_async`].
#[derive(Debug)]
pub(crate) struct Wait<T> {
    completion: Arc<Completion<T>>,
}

impl<T> Future for Wait<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.completion.state.lock().expect("completion lock");
        match state.value.take() {
            Some(value) => Poll::Ready(value),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
