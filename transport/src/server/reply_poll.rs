//! [`ReplyPoll`]: an I/O loop polls, instead of sleeping, for a moment after
//! one of its connections published a request.
//!
//! On a machine whose idle cores halt, waking a sleeping thread costs about
//! 20–25 µs (an interrupt to bring the core back), and a request's round
//! trip wakes the requester's I/O thread twice: once when the reply comes
//! from another I/O thread, and once when the client sends its next
//! request. Polling the loop's own sources for as long as a round trip
//! takes removes both, at the price of a core busy while requests flow.
//! Only a request turns it on, so an idle node, and a node that only
//! streams events, never polls.

use std::io;
use std::time::{Duration, Instant};

/// How long a loop polls after a request was published: longer than most
/// round trips of a sequential requester on the same host (p50 about 170 µs,
/// p99 about 260 µs, on the 2-core VM of BENCHMARKS.md), so that it catches
/// the reply and the next request. Polling ends at once when anything comes.
const REPLY_POLL: Duration = Duration::from_micros(250);

/// A yield that returns later than this gave the core to another thread:
/// the machine has more runnable threads than cores, and polling stops.
const CORE_WANTED: Duration = Duration::from_micros(50);

/// Until when the loop polls, if it does.
#[derive(Debug, Default)]
pub(super) struct ReplyPoll {
    until: Option<Instant>,
}

impl ReplyPoll {
    /// A connection of this loop published a request: poll for its reply.
    pub(super) fn request_published(&mut self) {
        self.until = Some(Instant::now() + REPLY_POLL);
    }

    /// Before the loop sleeps until `deadline`: calls `poll_once` (which
    /// looks for work without waiting, and says whether it found any) until
    /// it finds some, or the polling time or `deadline` is over, or the
    /// core turns out to be wanted by other threads. True if it found work:
    /// the loop handles it instead of sleeping.
    pub(super) fn poll(
        &mut self,
        deadline: Instant,
        poll_once: impl FnMut() -> io::Result<bool>,
    ) -> io::Result<bool> {
        self.poll_yielding(deadline, poll_once, yield_core)
    }

    /// [`ReplyPoll::poll`], yielding the core between looks with
    /// `yield_core`, which says whether other threads took it meanwhile.
    fn poll_yielding(
        &mut self,
        deadline: Instant,
        mut poll_once: impl FnMut() -> io::Result<bool>,
        mut yield_core: impl FnMut() -> bool,
    ) -> io::Result<bool> {
        let Some(until) = self.until else {
            return Ok(false);
        };
        let end = until.min(deadline);
        loop {
            if poll_once()? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= end {
                if now >= until {
                    self.until = None;
                }
                return Ok(false);
            }
            if yield_core() {
                // More threads want to run than there are cores: polling
                // would only make the reply's threads wait for this one.
                // Sleep until the next request.
                self.until = None;
                return Ok(false);
            }
        }
    }
}

/// Yields the core; true if other threads ran meanwhile for longer than a
/// look takes. Not a bare spin: on a busy machine the threads the reply
/// waits for (the clients', another I/O thread) may need this core, and
/// must not queue behind the poll.
fn yield_core() -> bool {
    let before = Instant::now();
    std::thread::yield_now();
    before.elapsed() > CORE_WANTED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_only_after_a_request_and_stops_at_work() {
        let mut reply_poll = ReplyPoll::default();
        let far = Instant::now() + Duration::from_secs(1);
        let mut polls = 0;
        // No request: the loop sleeps at once.
        assert!(!reply_poll.poll(far, || Ok(false)).unwrap());
        reply_poll.request_published();
        // Work on the third look ends the polling there.
        let found = reply_poll.poll_yielding(
            far,
            || {
                polls += 1;
                Ok(polls == 3)
            },
            free_core,
        );
        assert!(found.unwrap());
        assert_eq!(polls, 3);
    }

    #[test]
    fn polling_ends_with_its_time_and_then_stays_off() {
        let mut reply_poll = ReplyPoll::default();
        let started = Instant::now();
        reply_poll.request_published();
        let far = started + Duration::from_secs(1);
        assert!(
            !reply_poll
                .poll_yielding(far, || Ok(false), free_core)
                .unwrap()
        );
        assert!(started.elapsed() >= REPLY_POLL);
        let mut polls = 0;
        assert!(
            !reply_poll
                .poll(far, || {
                    polls += 1;
                    Ok(false)
                })
                .unwrap()
        );
        assert_eq!(polls, 0, "no request since: no polling");
    }

    #[test]
    fn polling_ends_at_an_earlier_deadline_and_resumes_after() {
        let mut reply_poll = ReplyPoll::default();
        reply_poll.request_published();
        // A deadline already passed (a tick due): one look, then the loop
        // handles the deadline; the polling time is not over.
        let mut polls = 0;
        let passed = Instant::now();
        let found = reply_poll.poll(passed, || {
            polls += 1;
            Ok(false)
        });
        assert!(!found.unwrap());
        assert_eq!(polls, 1);
        let far = Instant::now() + Duration::from_secs(1);
        assert!(reply_poll.poll(far, || Ok(true)).unwrap());
    }

    #[test]
    fn a_core_wanted_by_other_threads_ends_the_polling_until_the_next_request() {
        let mut reply_poll = ReplyPoll::default();
        reply_poll.request_published();
        let far = Instant::now() + Duration::from_secs(1);
        let mut polls = 0;
        let mut look = || {
            polls += 1;
            Ok(false)
        };
        assert!(!reply_poll.poll_yielding(far, &mut look, || true).unwrap());
        assert!(!reply_poll.poll_yielding(far, &mut look, free_core).unwrap());
        assert_eq!(polls, 1, "one look, then no polling until a request");
        reply_poll.request_published();
        assert!(
            reply_poll
                .poll_yielding(far, || Ok(true), free_core)
                .unwrap()
        );
    }

    /// A yield on an idle machine: nobody else wanted the core.
    fn free_core() -> bool {
        false
    }
}
