//! Shared by the integration tests of the core.

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// A minimal executor: polls `future` on this thread and parks between polls
/// until woken — no timed re-poll, so a lost wake-up hangs the test instead
/// of hiding.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}
