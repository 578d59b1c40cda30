//! Spin, then park: how a consumer waits for deliveries without burning a core
//! and without missing a wake-up.
//!
//! On this kind of machine a parked thread takes 20–25 µs to wake (no guest
//! halt-polling), while a spinning one sees a new item in about 0.3 µs. So a
//! waiting consumer first spins for a short, configurable time, and only then
//! registers a waker and sleeps. Publishers pay one fence per publish (shared by
//! all the consumers an event goes to) and a plain load per consumer; they call
//! into the waker only when the consumer is actually asleep.
//!
//! The handshake is Dekker's: the consumer announces it is going to sleep and
//! re-checks for items; the publisher makes an item available and checks for
//! sleepers. A SeqCst fence on each side, between its write and its read,
//! guarantees that at least one of them sees the other's write, so an item is
//! never left behind with its consumer asleep. The loom test
//! `signal_never_loses_a_wakeup` checks this.

use std::task::Waker;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicBool, AtomicWaker, Mutex, Ordering, fence};

/// One consumer's wake-up state.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    /// True from just before the consumer's final re-check until it is awake
    /// again. Read by publishers on every delivery, written only around sleeps,
    /// so it sits on its own cache line and stays shared in every cache.
    sleeping: CachePadded<AtomicBool>,
    /// Wakes the consumer: a thread unparker or an async task's waker.
    waker: AtomicWaker,
}

/// The publisher's half of the handshake, done once after delivering an event
/// to all its consumers and before [`Signal::wake_if_sleeping`] on each.
pub(crate) fn publish_fence() {
    // SYNC POINT (park): pairs with the fence in `Signal::prepare_to_sleep`.
    fence(Ordering::SeqCst);
}

impl Signal {
    /// Publisher side, after [`publish_fence`]: wakes the consumer if it sleeps.
    pub(crate) fn wake_if_sleeping(&self) {
        // Relaxed: ordered by the publish fence before it (see module docs).
        // The swap lets one publisher do the wake; the others see `false`.
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::Relaxed) {
            self.waker.wake();
        }
    }

    /// True if the consumer is parked or about to park. A hint only: it may
    /// change at once; wake-ups never depend on it.
    pub(crate) fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::Relaxed)
    }

    /// Wakes the consumer whatever it is doing (used when closing).
    pub(crate) fn wake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
        self.waker.wake();
    }

    /// Consumer side: registers `waker` and announces sleep. The caller must
    /// then re-check for items and, if there are none, sleep; if there are,
    /// call [`Signal::awake`].
    pub(crate) fn prepare_to_sleep(&self, waker: &Waker) {
        self.waker.register(waker);
        self.sleeping.store(true, Ordering::Relaxed);
        // SYNC POINT (park): pairs with `publish_fence`. After this fence the
        // caller's re-check sees every item whose publisher's fence came
        // earlier; a publisher whose fence comes later sees `sleeping`.
        fence(Ordering::SeqCst);
    }

    /// Consumer side: no longer about to sleep.
    pub(crate) fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Blocks the calling thread until `ready()` holds or `deadline` passes:
    /// spins for `spin`, then parks with the thread's waker registered.
    /// Returns the last value of `ready()`.
    pub(crate) fn wait(
        &self,
        spin: Duration,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        if spin_until(spin, deadline, &mut ready) {
            return true;
        }
        let thread_waker = current_thread_waker();
        loop {
            self.prepare_to_sleep(&thread_waker);
            if ready() {
                self.awake();
                return true;
            }
            match deadline {
                None => park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        self.awake();
                        return ready();
                    }
                    park_timeout(deadline - now);
                }
            }
            self.awake();
            if ready() {
                return true;
            }
        }
    }
}

/// "There is room again": how a consumer's queue tells the sources waiting
/// for it (publishers held back by a full `Block` queue) that they may go on.
///
/// The reverse of [`Signal`], with the same Dekker handshake: a source
/// registers its waker, sets `wanted`, fences, and re-tries its delivery; the
/// consumer takes an item, fences, and reads `wanted`. At least one of them
/// sees the other's write, so a source never waits on room that already
/// exists. The consumer wakes sources only once its queue has drained to
/// a low watermark (the caller's `drained` test), so a held-back publisher
/// resumes with room for a batch instead of ping-ponging per event; and only
/// when someone waits, so a consumer that keeps up pays one fence and one
/// load of a line nobody writes.
///
/// Unlike [`Signal`], any number of sources may wait on one queue (every
/// publishing connection of a fan-in), so wakers go into a list under a lock.
/// The lock is taken by a source that is about to wait (it is already off
/// the fast path: its delivery did not fit) and by the consumer once per
/// stall episode; never on the path of a delivery that fits.
#[derive(Debug, Default)]
pub(crate) struct SpaceSignal {
    /// True while some source waits for room. Read by the consumer on every
    /// take; written only when a source starts to wait and when it is woken.
    wanted: CachePadded<AtomicBool>,
    /// The waiting sources, each once (`Waker::will_wake`).
    waiters: Mutex<Vec<Waker>>,
}

impl SpaceSignal {
    /// Source side: registers `waker` and announces that it waits. The caller
    /// must then re-try its delivery, and wait only if that fails too.
    pub(crate) fn register(&self, waker: &Waker) {
        {
            let mut waiters = self.waiters.lock().expect("space waiter list");
            if !waiters.iter().any(|known| known.will_wake(waker)) {
                waiters.push(waker.clone());
            }
        }
        self.wanted.store(true, Ordering::Relaxed);
        // SYNC POINT (space): pairs with the fence in `notify_if_drained`.
        // After it, the caller's re-try sees every item the consumer took
        // before its fence; a consumer whose fence comes later sees `wanted`.
        fence(Ordering::SeqCst);
    }

    /// Consumer side, after taking an item: wakes the waiting sources if
    /// there are any and `drained()` says the queue is down to its low
    /// watermark.
    pub(crate) fn notify_if_drained(&self, drained: impl FnOnce() -> bool) {
        // SYNC POINT (space): pairs with the fence in `register`.
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above. The swap lets one caller wake.
        if self.wanted.load(Ordering::Relaxed)
            && drained()
            && self.wanted.swap(false, Ordering::Relaxed)
        {
            self.wake_all();
        }
    }

    /// Wakes every waiting source whatever the queue holds (the queue was
    /// demoted or closed: waiting sources must look again).
    pub(crate) fn notify_all(&self) {
        self.wanted.store(false, Ordering::Relaxed);
        self.wake_all();
    }

    fn wake_all(&self) {
        // Draining keeps the list's capacity: no allocation per episode. The
        // wakers only queue a task or unpark a thread, never call back here.
        let mut waiters = self.waiters.lock().expect("space waiter list");
        for waker in waiters.drain(..) {
            waker.wake();
        }
    }
}

/// Spins until `ready()`, or the spin time or the deadline is up. Checks back
/// off exponentially (up to [`SPIN_PAUSES_MAX`] pause instructions apart):
/// each check reads a line the publisher writes, and checking in a tight loop
/// would take it from the publisher on every event. The clock (40 ns on a VM)
/// is read only once the backoff is at its longest, so short waits never
/// read it.
fn spin_until(spin: Duration, deadline: Option<Instant>, ready: &mut impl FnMut() -> bool) -> bool {
    if ready() {
        return true;
    }
    if spin.is_zero() {
        return false;
    }
    let mut pauses = 1u32;
    let mut until = None;
    loop {
        for _ in 0..pauses {
            std::hint::spin_loop();
        }
        if ready() {
            return true;
        }
        if pauses < SPIN_PAUSES_MAX {
            pauses *= 2;
            continue;
        }
        // At the longest backoff, offer the core to another thread between
        // looks: on a machine with more runnable threads than cores (two
        // cores here, shared with builds) the thread this one waits for may
        // be the one it keeps off the core. With nobody else runnable, the
        // yield returns at once and this is still a spin.
        yield_now();
        let now = Instant::now();
        let until = *until.get_or_insert_with(|| {
            let end = now + spin;
            deadline.map_or(end, |deadline| end.min(deadline))
        });
        if now >= until {
            return false;
        }
    }
}

/// Most pause instructions between two checks while spinning. A trade: a
/// consumer that checks too often pulls the ring's lines from the publisher on
/// every event (throughput), one that checks too rarely adds latency. On this
/// Xeon a PAUSE is about 140 cycles, so 32 is about 1.5 µs; measured with 8
/// (request/reply p50 2.0 µs, 1 → 1 3.1 M/s) and 64 (3.4 µs, 3.6 M/s).
const SPIN_PAUSES_MAX: u32 = 32;

#[cfg(not(loom))]
fn yield_now() {
    std::thread::yield_now();
}

#[cfg(loom)]
fn yield_now() {
    loom::thread::yield_now();
}

#[cfg(not(loom))]
fn park() {
    std::thread::park();
}

#[cfg(not(loom))]
fn park_timeout(timeout: Duration) {
    std::thread::park_timeout(timeout);
}

/// Parks the calling thread for at most `timeout` (until unparked).
pub(crate) fn park_for(timeout: Duration) {
    park_timeout(timeout);
}

#[cfg(loom)]
fn park() {
    loom::thread::park();
}

#[cfg(loom)]
fn park_timeout(_: Duration) {
    loom::thread::park();
}

/// A waker that unparks one thread.
pub(crate) fn thread_waker() -> Waker {
    Waker::from(std::sync::Arc::new(ThreadUnparker(current_thread())))
}

#[cfg(not(loom))]
fn current_thread() -> std::thread::Thread {
    std::thread::current()
}

#[cfg(loom)]
fn current_thread() -> loom::thread::Thread {
    loom::thread::current()
}

#[cfg(not(loom))]
struct ThreadUnparker(std::thread::Thread);
#[cfg(loom)]
struct ThreadUnparker(loom::thread::Thread);

impl std::task::Wake for ThreadUnparker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// Each thread's unparking waker, made once per thread so that waiting never
/// allocates.
#[cfg(not(loom))]
pub(crate) fn current_thread_waker() -> Waker {
    thread_local! {
        static WAKER: Waker = thread_waker();
    }
    WAKER.with(Waker::clone)
}

#[cfg(loom)]
pub(crate) fn current_thread_waker() -> Waker {
    thread_waker()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn wait_returns_at_the_deadline_when_nothing_comes() {
        let signal = Signal::default();
        let start = Instant::now();
        let ready = signal.wait(
            Duration::from_micros(10),
            Some(start + Duration::from_millis(20)),
            || false,
        );
        assert!(!ready);
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn a_publisher_wakes_a_parked_consumer() {
        let signal = Arc::new(Signal::default());
        let items = Arc::new(AtomicUsize::new(0));
        let consumer = {
            let (signal, items) = (signal.clone(), items.clone());
            std::thread::spawn(move || {
                signal.wait(Duration::ZERO, None, || {
                    items.load(std::sync::atomic::Ordering::Relaxed) > 0
                })
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        items.store(1, std::sync::atomic::Ordering::Relaxed);
        publish_fence();
        signal.wake_if_sleeping();
        assert!(consumer.join().unwrap());
    }
}
