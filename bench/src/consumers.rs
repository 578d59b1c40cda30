//! Persistent consumer threads for throughput benchmarks.
//!
//! Each consumer runs a receive function in a loop and counts what it got in a
//! counter on its own cache line (written only by that thread, read by the
//! publisher only while it waits for the end of a batch). The publisher
//! publishes a batch, then spins until the counters add up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

/// How long a consumer's receive call may block before it checks for stop.
pub const POLL: Duration = Duration::from_millis(20);

/// Consumer threads and their counters. Stopped and joined on drop.
#[derive(Debug)]
pub struct Consumers {
    counts: Vec<Arc<CachePadded<AtomicU64>>>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Consumers {
    /// Starts one thread per receiver, which it owns (so `receive` may take
    /// it by `&mut`, as a single-consumer end wants). `receive` returns how
    /// many events it took (0 on a timeout); it must return within about
    /// [`POLL`].
    pub fn spawn<R, F>(receivers: Vec<R>, receive: F) -> Self
    where
        R: Send + 'static,
        F: Fn(&mut R) -> u64 + Send + Sync + Copy + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let mut counts = Vec::new();
        let mut handles = Vec::new();
        for mut receiver in receivers {
            let count = Arc::new(CachePadded::new(AtomicU64::new(0)));
            counts.push(count.clone());
            let stop = stop.clone();
            handles.push(std::thread::spawn(move || {
                let mut total = 0;
                while !stop.load(Ordering::Relaxed) {
                    let got = receive(&mut receiver);
                    if got > 0 {
                        total += got;
                        count.store(total, Ordering::Release);
                    }
                }
            }));
        }
        Self {
            counts,
            stop,
            handles,
        }
    }

    /// Events received so far by all consumers.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Acquire)).sum()
    }

    /// Spins (then yields) until the consumers have received `target` in all.
    /// Panics after 60 s: a lost event must fail the bench, not hang it.
    pub fn wait_for(&self, target: u64) {
        let started = Instant::now();
        let mut spins = 0u32;
        while self.total() < target {
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "consumers got {} of {target} events",
                self.total()
            );
        }
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}
