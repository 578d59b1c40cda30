//! [`AcceptPause`]: what both backends do when accepting fails for want of
//! descriptors (EMFILE, ENFILE) or kernel memory: pause accepting for a
//! while, instead of trying again at once (the io_uring loop re-armed its
//! accept and spun a core), say so once per episode, and resume.
//!
//! Connections that arrive meanwhile wait in the listen backlog (the kernel
//! completes their handshakes), and are accepted when descriptors free up.

use std::io;
use std::time::{Duration, Instant};

/// How long accepting pauses after running out of descriptors.
const PAUSE: Duration = Duration::from_millis(100);
/// Connections accepted from one listener per turn of a loop: a flood of
/// new connections does not keep the open ones waiting.
const ACCEPTS_PER_TURN: usize = 64;

/// Accepting's state: running, or paused until a time.
#[derive(Debug, Default)]
pub(super) struct AcceptPause {
    resume_at: Option<Instant>,
    /// In an episode of shortage: it was logged, and its end will be.
    short: bool,
}

impl AcceptPause {
    /// Accepts up to [`ACCEPTS_PER_TURN`] connections with `accept`, handing
    /// each to `admit`, for a loop whose listener is edge-triggered. True if
    /// more may be waiting, which readiness will not say again: the turn was
    /// up, or an accept failed for another reason than a shortage (a
    /// connection reset before it was accepted), which the next one need not
    /// share.
    pub(super) fn accept_turn<C>(
        &mut self,
        mut accept: impl FnMut() -> io::Result<C>,
        mut admit: impl FnMut(C),
    ) -> bool {
        for _ in 0..ACCEPTS_PER_TURN {
            match accept() {
                Ok(connection) => {
                    self.accepted();
                    admit(connection);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    let errno = error.raw_os_error().unwrap_or(0);
                    return !self.failed(errno, Instant::now());
                }
            }
        }
        true
    }

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
