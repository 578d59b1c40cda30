//! The synchronization primitives the lock-free code uses, swapped for loom's
//! model-checked versions under `--cfg loom` (see `ARCHITECTURE.md` and
//! `.ci/run` for how the loom tests run).
//!
//! Only the protocols written in this crate go through here: the segment
//! reference counts ([`crate::log`]), the delivery rings ([`crate::ring`]),
//! the single-producer lanes ([`crate::lane`]) and the park/wake handshake
//! ([`crate::signal`]). The pool's free list is crossbeam's `ArrayQueue`, tested by crossbeam; under loom it is replaced by
//! a lock-protected stand-in with the same acquire/release edges, so that the
//! model still sees every happens-before.

/// A hint that the caller is spinning; under loom, a yield, so that the model
/// lets other threads make the progress the spinner waits for.
#[cfg(loom)]
pub(crate) use loom::hint::spin_loop;
#[cfg(not(loom))]
pub(crate) use std::hint::spin_loop;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};

/// The waiter list of [`crate::signal::SpaceSignal`]: a lock taken only by
/// sources that must wait and by the consumer waking them, never on delivery.
#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;

#[cfg(not(loom))]
pub(crate) use atomic_waker::AtomicWaker;
/// Under loom: loom's model-checked waker slot, with `atomic_waker`'s interface.
#[cfg(loom)]
#[derive(Debug, Default)]
pub(crate) struct AtomicWaker(loom::future::AtomicWaker);

#[cfg(loom)]
impl AtomicWaker {
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.0.register_by_ref(waker);
    }

    pub(crate) fn wake(&self) {
        self.0.wake();
    }
}

#[cfg(not(loom))]
pub(crate) use crossbeam_queue::ArrayQueue;

/// A cell whose accesses loom tracks under `--cfg loom`; plain
/// `std::cell::UnsafeCell` otherwise. Same interface as loom's.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// See the loom variant.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a pointer to the contents; the caller's protocol must
    /// make this access exclusive.
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Under loom: a bounded MPMC queue with `ArrayQueue`'s interface, built on
/// loom's mutex so that loom tracks the push → pop happens-before edge.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct ArrayQueue<T> {
    items: loom::sync::Mutex<std::collections::VecDeque<T>>,
    capacity: usize,
}

#[cfg(loom)]
impl<T> ArrayQueue<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            items: loom::sync::Mutex::new(std::collections::VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    pub(crate) fn push(&self, value: T) -> Result<(), T> {
        let mut items = self.items.lock().unwrap();
        if items.len() == self.capacity {
            return Err(value);
        }
        items.push_back(value);
        Ok(())
    }

    pub(crate) fn pop(&self) -> Option<T> {
        self.items.lock().unwrap().pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.items.lock().unwrap().len()
    }
}
