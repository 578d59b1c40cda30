//! Password verifications off the I/O threads.
//!
//! argon2id takes tens of milliseconds by design. On an I/O thread, every
//! wrong password a stranger sends would stall every other client of that
//! thread for as long; here they run on a few threads of their own, fed
//! through a bounded queue:
//!
//! - a handshake whose password needs verifying hands a job over and waits
//!   (its session is stalled, its I/O thread serves the others); the
//!   job's [`Verification`] wakes it with the answer;
//! - a full queue refuses the handshake at once ([`AuthError::Busy`]):
//!   nothing queues without end;
//! - a failed verification is answered [`FAILED_LOGIN_DELAY`] later (a
//!   tarpit, as PostgreSQL's `auth_delay`), and until then, and while its
//!   next verification runs, further logins from the same address are
//!   refused at once ([`AuthError::Throttled`]), so neither a sequential
//!   nor a parallel guesser from one address gets more than about one
//!   argon2 verification a second out of the node. Addresses that never
//!   failed are not limited (a crowd of clients behind one address logs in
//!   at once); Unix socket clients have no address and are not limited.
//!
//! [`FAILED_LOGIN_DELAY`]: super::FAILED_LOGIN_DELAY

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::{Access, AuthError, Authenticator, FAILED_LOGIN_DELAY, PasswordCheck};

/// Addresses remembered for their failed logins; past this many, the
/// oldest forgotten first, and new ones are not throttled until there is
/// room (the bounded queue still protects the node).
const SUSPECTS_MAX: usize = 65_536;
/// How long an address is remembered after its last failed login: its
/// next logins are checked one at a time.
const SUSPECT_MEMORY: Duration = Duration::from_secs(60);

/// How many verifier threads, how many jobs may wait, how long a failure
/// waits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VerifierSettings {
    pub(crate) threads: usize,
    pub(crate) queue: usize,
    pub(crate) failure_delay: Duration,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            // Half the cores at most: a flood of logins must leave the I/O
            // threads a core.
            threads: cores.div_ceil(2).clamp(1, 4),
            queue: 64,
            failure_delay: FAILED_LOGIN_DELAY,
        }
    }
}

/// The verifier threads (started at the first job) and what they share.
#[derive(Debug)]
pub(crate) struct Verifier {
    settings: VerifierSettings,
    jobs: OnceLock<Sender<Job>>,
    shared: Arc<Shared>,
}

/// The answer to one verification, when it comes.
#[derive(Debug, Default)]
pub struct Verification {
    state: Mutex<Answer>,
}

#[derive(Debug, Default)]
struct Answer {
    result: Option<Result<Access, AuthError>>,
    waker: Option<Waker>,
}

struct Job {
    authenticator: Arc<Authenticator>,
    check: PasswordCheck,
    peer: Option<IpAddr>,
    verification: Arc<Verification>,
}

#[derive(Debug)]
struct Shared {
    failure_delay: Duration,
    suspects: Mutex<HashMap<IpAddr, Suspect>>,
    /// Failed verifications, to be answered at their time: in that order,
    /// as every one waits the same delay.
    delayed: Mutex<VecDeque<Delayed>>,
}

/// An address whose login failed lately.
#[derive(Debug, Clone, Copy)]
struct Suspect {
    /// Its logins are refused until then.
    until: Instant,
    /// One of its logins is being verified.
    verifying: bool,
}

#[derive(Debug)]
struct Delayed {
    at: Instant,
    verification: Arc<Verification>,
    error: AuthError,
}

impl Verification {
    /// The answer, once it is in; until then `cx`'s waker is kept, and
    /// woken when it comes.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<Access, AuthError>> {
        let mut answer = self.state.lock().expect("verification lock");
        if let Some(result) = answer.result.take() {
            return Poll::Ready(result);
        }
        match &mut answer.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => answer.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn complete(&self, result: Result<Access, AuthError>) {
        let waker = {
            let mut answer = self.state.lock().expect("verification lock");
            answer.result = Some(result);
            answer.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Verifier {
    pub(crate) fn new(settings: VerifierSettings) -> Self {
        Self {
            settings,
            jobs: OnceLock::new(),
            shared: Arc::new(Shared {
                failure_delay: settings.failure_delay,
                suspects: Mutex::default(),
                delayed: Mutex::default(),
            }),
        }
    }

    /// Queues a verification, or refuses it at once: its address is
    /// throttled, or the queue is full.
    pub(super) fn submit(
        &self,
        authenticator: Arc<Authenticator>,
        check: PasswordCheck,
        peer: Option<IpAddr>,
    ) -> Result<Arc<Verification>, AuthError> {
        if let Some(peer) = peer
            && !self.shared.admit(peer, Instant::now())
        {
            return Err(AuthError::Throttled);
        }
        let verification = Arc::new(Verification::default());
        let job = Job {
            authenticator,
            check,
            peer,
            verification: verification.clone(),
        };
        match self.jobs().try_send(job) {
            Ok(()) => Ok(verification),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                if let Some(peer) = job.peer {
                    self.shared.not_verifying(peer);
                }
                Err(AuthError::Busy)
            }
        }
    }

    fn jobs(&self) -> &Sender<Job> {
        self.jobs.get_or_init(|| {
            let (jobs, queue) = crossbeam_channel::bounded(self.settings.queue);
            for index in 0..self.settings.threads {
                let (queue, shared) = (queue.clone(), self.shared.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("starling-auth-{index}"))
                    .spawn(move || work(&queue, &shared));
                if let Err(error) = spawned {
                    // Fewer verifiers; with none, the queue fills and
                    // logins are refused as busy.
                    tracing::error!(%error, "cannot start a password verifier thread");
                }
            }
            jobs
        })
    }
}

/// A verifier thread: verifies jobs, and answers failed ones when their
/// delay is over. Ends when the node's authentication is dropped.
fn work(queue: &Receiver<Job>, shared: &Shared) {
    loop {
        let job = match shared.answer_due(Instant::now()) {
            Some(next) => match queue.recv_deadline(next) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        let result = job.check.run(&job.authenticator);
        let now = Instant::now();
        if let Some(peer) = job.peer {
            shared.verified(peer, result.is_ok(), now);
        }
        match result {
            Ok(access) => job.verification.complete(Ok(access)),
            Err(error) => shared.delay(Delayed {
                at: now + shared.failure_delay,
                verification: job.verification,
                error,
            }),
        }
    }
    // Stopping: whoever still waits gets its answer now.
    shared.answer_due(Instant::now() + shared.failure_delay);
}

impl Shared {
    /// Whether a login from `peer` may be verified now; if `peer` is a
    /// suspect, it is marked as verifying.
    fn admit(&self, peer: IpAddr, now: Instant) -> bool {
        let mut suspects = self.suspects.lock().expect("suspects lock");
        match suspects.get_mut(&peer) {
            Some(suspect) if suspect.verifying || now < suspect.until => false,
            Some(suspect) => {
                suspect.verifying = true;
                true
            }
            None => true,
        }
    }

    fn not_verifying(&self, peer: IpAddr) {
        if let Some(suspect) = self.suspects.lock().expect("suspects lock").get_mut(&peer) {
            suspect.verifying = false;
        }
    }

    /// A login from `peer` was verified: a success forgets the address, a
    /// failure throttles it for the failure delay.
    fn verified(&self, peer: IpAddr, ok: bool, now: Instant) {
        let mut suspects = self.suspects.lock().expect("suspects lock");
        if ok {
            suspects.remove(&peer);
            return;
        }
        if suspects.len() >= SUSPECTS_MAX && !suspects.contains_key(&peer) {
            suspects.retain(|_, suspect| suspect.verifying || now < suspect.until + SUSPECT_MEMORY);
            if suspects.len() >= SUSPECTS_MAX {
                return;
            }
        }
        suspects.insert(
            peer,
            Suspect {
                until: now + self.failure_delay,
                verifying: false,
            },
        );
    }

    fn delay(&self, delayed: Delayed) {
        self.delayed
            .lock()
            .expect("delayed lock")
            .push_back(delayed);
    }

    /// Answers the failed verifications due by `now`; returns when the next
    /// one is due.
    fn answer_due(&self, now: Instant) -> Option<Instant> {
        let mut due = Vec::new();
        let next = {
            let mut delayed = self.delayed.lock().expect("delayed lock");
            while delayed.front().is_some_and(|first| first.at <= now) {
                due.extend(delayed.pop_front());
            }
            delayed.front().map(|first| first.at)
        };
        for delayed in due {
            delayed.verification.complete(Err(delayed.error));
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Authentication, Begin, Credentials, Permissions, User, UserSecret};
    use crate::auth::{Authenticator, hash_password};
    use std::sync::mpsc;
    use std::task::Wake;

    /// Sends on a channel when woken.
    struct Signal(Mutex<mpsc::Sender<()>>);

    impl Wake for Signal {
        fn wake(self: Arc<Self>) {
            let _ = self.0.lock().unwrap().send(());
        }
    }

    fn alice() -> Authenticator {
        let alice = User {
            name: "alice".into(),
            secret: UserSecret::PasswordHash(hash_password("wonderland")),
            permissions: Permissions::everything(),
        };
        Authenticator::new(None, vec![alice])
    }

    fn login<'a>(password: &'a str) -> Credentials<'a> {
        Credentials {
            user: "alice",
            password,
            token: "",
        }
    }

    /// Waits (on this thread) for a verification's answer, and how long
    /// it took.
    fn answer(begin: Begin) -> (Result<Access, AuthError>, Duration) {
        let start = Instant::now();
        let verification = match begin {
            Begin::Done(result) => return (result, Duration::ZERO),
            Begin::Verifying(verification) => verification,
        };
        let (woken, wakes) = mpsc::channel();
        let waker = Waker::from(Arc::new(Signal(Mutex::new(woken))));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(result) = verification.poll(&mut cx) {
                return (result, start.elapsed());
            }
            wakes
                .recv_timeout(Duration::from_secs(10))
                .expect("woken with the answer");
        }
    }

    #[test]
    fn a_failed_login_is_answered_late_and_throttles_its_address_only() {
        let delay = Duration::from_millis(300);
        let auth = Authentication::with_verifier(
            alice(),
            VerifierSettings {
                threads: 1,
                queue: 4,
                failure_delay: delay,
            },
        );
        let guesser: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let (result, took) = answer(auth.begin(login("wrong"), Some(guesser)));
        assert_eq!(result.unwrap_err(), AuthError::WrongPassword);
        assert!(took >= delay, "a failure waits {delay:?}; took {took:?}");
        // Answered at the end of the delay: its address may try again now,
        // and this try is verified; meanwhile a second is refused at once.
        let verifying = auth.begin(login("wrong again"), Some(guesser));
        assert!(matches!(verifying, Begin::Verifying(_)));
        let (parallel, _) = answer(auth.begin(login("wonderland"), Some(guesser)));
        assert_eq!(parallel.unwrap_err(), AuthError::Throttled);
        let (result, _) = answer(verifying);
        assert_eq!(result.unwrap_err(), AuthError::WrongPassword);
        // Another address is not held back, and Unix sockets have none.
        let (ok, _) = answer(auth.begin(login("wonderland"), Some(other)));
        assert_eq!(ok.unwrap().user_name(), Some("alice"));
        // Now cached: answered at once, even for the throttled address.
        let (cached, took) = answer(auth.begin(login("wonderland"), Some(guesser)));
        assert!(cached.is_ok());
        assert_eq!(took, Duration::ZERO);
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        // One thread, two places: of four logins sent at once (argon2 takes
        // milliseconds, sending microseconds), the thread holds one at most
        // and the queue two, so the fourth is refused.
        let auth = Authentication::with_verifier(
            alice(),
            VerifierSettings {
                threads: 1,
                queue: 2,
                failure_delay: Duration::ZERO,
            },
        );
        let first = auth.begin(login("x"), None);
        assert!(matches!(first, Begin::Verifying(_)));
        let _second = auth.begin(login("x"), None);
        let _third = auth.begin(login("x"), None);
        let (busy, took) = answer(auth.begin(login("x"), None));
        assert_eq!(busy.unwrap_err(), AuthError::Busy);
        assert_eq!(took, Duration::ZERO, "refused at once");
        let (wrong, _) = answer(first);
        assert_eq!(wrong.unwrap_err(), AuthError::WrongPassword);
    }
}
