//! The load: payloads stamped with their send time, sent flat out or on an
//! open-loop schedule.
//!
//! Every payload starts with its send time as nanoseconds since the run's
//! [`Clock`] epoch (u64, little-endian); the rest is filler. Flat out, the
//! stamp is the moment of sending. Paced, it is the moment the event was
//! *meant* to be sent: if the publisher falls behind (the system pushes back),
//! the delay shows up in the latency instead of being hidden by sending later
//! (coordinated omission).

use std::time::{Duration, Instant};

/// Bytes of the send-time stamp at the start of every payload.
pub const STAMP_BYTES: usize = 8;

/// The smallest payload a run may use: the stamp and some filler.
pub const PAYLOAD_BYTES_MIN: usize = 16;

/// Below this much time to wait, a paced publisher yields instead of
/// sleeping: a sleep overshoots by about the timer slack (50 µs).
const SLEEP_THRESHOLD: Duration = Duration::from_micros(200);

/// The time base shared by every publisher and subscriber of a run (all in
/// this process, so one monotonic clock serves both ends).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds from the epoch to `at` (0 before the epoch).
    pub fn nanos_at(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.epoch))
    }

    /// Nanoseconds from the epoch to now.
    pub fn now(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A payload of `bytes` bytes (at least [`STAMP_BYTES`]): stamp space, then
/// filler.
pub fn payload(bytes: usize) -> Vec<u8> {
    assert!(bytes >= STAMP_BYTES, "a payload holds at least its stamp");
    vec![0x5a; bytes]
}

/// Writes the send time into the payload's first bytes.
pub fn stamp(payload: &mut [u8], sent_nanos: u64) {
    payload[..STAMP_BYTES].copy_from_slice(&sent_nanos.to_le_bytes());
}

/// The send time a payload carries; `None` if it is too short to carry one.
pub fn read_stamp(payload: &[u8]) -> Option<u64> {
    let stamp = payload.get(..STAMP_BYTES)?;
    Some(u64::from_le_bytes(
        stamp.try_into().expect("STAMP_BYTES long"),
    ))
}

/// How long a run publishes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunLength {
    /// For this long.
    Duration(Duration),
    /// This many events (request/reply: round trips), in all.
    Count(u64),
}

impl RunLength {
    /// Publisher `index`'s part of a run shared by `publishers` publishers: the
    /// same duration, or its share of the count (the first ones take the
    /// remainder).
    pub fn share(self, publishers: usize, index: usize) -> RunLength {
        match self {
            RunLength::Duration(duration) => RunLength::Duration(duration),
            RunLength::Count(count) => {
                let publishers = publishers as u64;
                let index = index as u64;
                let extra = u64::from(index < count % publishers);
                RunLength::Count(count / publishers + extra)
            }
        }
    }
}

/// When one publisher sends its events: flat out, or at `per_second` from
/// the moment the schedule starts.
#[derive(Debug)]
pub struct Schedule {
    start: Instant,
    end: Option<Instant>,
    count: Option<u64>,
    per_second: Option<f64>,
    issued: u64,
}

impl Schedule {
    /// A schedule starting now.
    pub fn start(length: RunLength, per_second: Option<f64>) -> Self {
        let start = Instant::now();
        let (end, count) = match length {
            RunLength::Duration(duration) => (Some(start + duration), None),
            RunLength::Count(count) => (None, Some(count)),
        };
        Self {
            start,
            end,
            count,
            per_second,
            issued: 0,
        }
    }

    /// Events handed out so far.
    pub fn issued(&self) -> u64 {
        self.issued
    }
}

/// The send times of a publisher's events, one by one.
impl Iterator for Schedule {
    type Item = Instant;

    /// Waits for the next event's turn and returns its send time (intended,
    /// when paced), or `None` when the run is over.
    fn next(&mut self) -> Option<Instant> {
        if self.count.is_some_and(|count| self.issued >= count) {
            return None;
        }
        let send_at = match self.per_second {
            // Flat out: one clock read per event, the send time itself. It
            // is now, so there is nothing to wait for, and it is the time to
            // compare with the end (three reads took about a third of the
            // publishing thread's CPU: BENCHMARKS.md).
            None => {
                let now = Instant::now();
                if self.end.is_some_and(|end| now >= end) {
                    return None;
                }
                now
            }
            Some(per_second) => {
                let offset = (self.issued as f64 * 1e9 / per_second).round();
                let send_at = self.start + Duration::from_nanos(offset as u64);
                // A paced publisher that fell behind stops at the end too:
                // the run lasts as long as asked, and sends fewer events
                // than the rate says.
                if self
                    .end
                    .is_some_and(|end| send_at.max(Instant::now()) >= end)
                {
                    return None;
                }
                wait_until(send_at);
                send_at
            }
        };
        self.issued += 1;
        Some(send_at)
    }
}

fn wait_until(at: Instant) {
    loop {
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if left > SLEEP_THRESHOLD {
            std::thread::sleep(left - SLEEP_THRESHOLD / 2);
        } else {
            // Spinning would take the core from the system under test: this
            // machine may have as few cores as the run has busy threads.
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_and_leaves_the_filler() {
        let mut bytes = payload(16);
        stamp(&mut bytes, 0x0102_0304_0506_0708);
        assert_eq!(read_stamp(&bytes), Some(0x0102_0304_0506_0708));
        assert_eq!(&bytes[STAMP_BYTES..], &[0x5a; 8]);
        assert_eq!(read_stamp(&bytes[..7]), None);
    }

    #[test]
    fn counts_are_shared_out_with_the_remainder_first() {
        let shares: Vec<_> = (0..4).map(|i| RunLength::Count(10).share(4, i)).collect();
        assert_eq!(
            shares,
            [3, 3, 2, 2].map(RunLength::Count),
            "10 events over 4 publishers"
        );
        let second = Duration::from_secs(1);
        assert_eq!(
            RunLength::Duration(second).share(4, 3),
            RunLength::Duration(second)
        );
    }

    #[test]
    fn a_counted_schedule_hands_out_exactly_its_count() {
        let mut schedule = Schedule::start(RunLength::Count(5), None);
        assert_eq!(schedule.by_ref().count(), 5);
        assert_eq!(schedule.issued(), 5);
        assert_eq!(schedule.next(), None, "and no more");
    }

    #[test]
    fn a_paced_schedule_stamps_intended_times_at_the_rate() {
        let times: Vec<Instant> = Schedule::start(RunLength::Count(3), Some(1000.0)).collect();
        assert_eq!(times.len(), 3);
        // Intended times are exact, however late the thread woke up.
        assert_eq!(times[1] - times[0], Duration::from_millis(1));
        assert_eq!(times[2] - times[0], Duration::from_millis(2));
        assert!(Instant::now() >= times[2], "waited for the last turn");
    }

    #[test]
    fn a_paced_schedule_that_falls_behind_still_ends_on_time() {
        let started = Instant::now();
        // A billion events a second: no thread keeps up.
        let schedule = Schedule::start(RunLength::Duration(Duration::from_millis(50)), Some(1e9));
        let sent = schedule.count();
        assert!(
            sent < 50_000_000,
            "{sent} events: it stopped before its schedule did"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_timed_schedule_ends_at_its_deadline() {
        let started = Instant::now();
        let mut schedule = Schedule::start(RunLength::Duration(Duration::from_millis(20)), None);
        let sent = schedule.by_ref().count() as u64;
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(sent > 0);
        assert_eq!(schedule.issued(), sent);
    }
}
