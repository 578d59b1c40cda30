//! [`AcceptPause`]: what both backends do when accepting fails for want of
//! descriptors (EMFILE, ENFILE) or kernel memory: pause accepting for a
//! while, instead of trying again at once (the io_uring loop re-armed its
//! accept and spun a core), say so once per episode, and resume.
//!
//! Connections that arrive meanwhile wait in the listen backlog (the kernel
//! completes their handshakes), and are accepted when descriptors free up.

use std::time::{Duration, Instant};

/// How long accepting pauses after running out of descriptors.
const PAUSE: Duration = Duration::from_millis(100);

/// Accepting's state: running, or paused until a time.
#[derive(Debug, Default)]
pub(super) struct AcceptPause {
    resume_at: Option<Instant>,
    /// In an episode of shortage: it was logged, and its end will be.
    short: bool,
}

impl AcceptPause {
    /// An accept failed with `errno`. True if for want of descriptors or
    /// memory: accepting pauses (see [`AcceptPause::resume_at`]).
    pub(super) fn failed(&mut self, errno: i32, now: Instant) -> bool {
        if !matches!(
            errno,
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
        ) {
            return false;
        }
        if !self.short {
            self.short = true;
            tracing::warn!(
                "cannot accept connections: {}; trying again every {} ms until descriptors free up",
                std::io::Error::from_raw_os_error(errno),
                PAUSE.as_millis()
            );
        }
        self.resume_at = Some(now + PAUSE);
        true
    }

    /// A connection was accepted: an episode of shortage is over.
    pub(super) fn accepted(&mut self) {
        if self.short {
            self.short = false;
            tracing::info!("accepting connections again");
        }
    }

    /// When accepting resumes, if paused.
    pub(super) fn resume_at(&self) -> Option<Instant> {
        self.resume_at
    }

    /// True, once, when the pause is over: accept again now.
    pub(super) fn resumes(&mut self, now: Instant) -> bool {
        let due = self.resume_at.is_some_and(|at| at <= now);
        if due {
            self.resume_at = None;
        }
        due
    }
}
