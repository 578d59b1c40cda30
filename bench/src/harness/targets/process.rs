//! Server processes: started with their output in a scratch directory,
//! stopped with SIGINT, killed if anything goes wrong first, and killed by
//! the kernel if the harness itself dies.

use std::fmt;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::error::{Context, Error, Result};
use crate::harness::measurement::ProcessUsage;

/// How long a server may take to start, or a cluster to form.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server may take to exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a wait checks again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Lines of a server's log quoted when it fails.
const LOG_TAIL_LINES: usize = 10;

/// A directory for one server's socket, log and files, removed when dropped.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A new, empty directory under the system's temporary directory.
    pub fn create() -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "starling-bench-{}-{:016x}",
            std::process::id(),
            starling_core::random_u64()
        ));
        std::fs::create_dir_all(&path).context(format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A server process the harness started. Killed when dropped unless it was
/// stopped: a failed run never leaves a server behind.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Child,
    running: bool,
    log: PathBuf,
    // Dropped after the process is gone (fields drop after `drop`).
    _scratch: Scratch,
}

impl ServerProcess {
    /// Starts `command` as the server called `name`, its standard error going
    /// to a log in `scratch`.
    ///
    /// The server gets SIGKILL when the thread that started it ends (Linux's
    /// parent-death signal), so that not even a harness killed outright
    /// leaves servers behind. The harness starts every server from its main
    /// thread.
    ///
    /// The server does not inherit the harness's own setting for transparent
    /// huge pages (off, see `starling-bench`'s `main`): nats-server runs as
    /// the machine's settings have it, and a `starling node` makes its own
    /// choice.
    pub fn spawn(name: String, mut command: Command, scratch: Scratch) -> Result<Self> {
        let log = scratch.path().join("server.log");
        let log_file = File::create(&log).context(format!("creating {}", log.display()))?;
        command.stdin(Stdio::null()).stderr(log_file);
        // SAFETY: the closure runs in the forked child before exec, where
        // only async-signal-safe calls are allowed; prctl is a system call
        // that allocates nothing and takes no locks.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // Kernels before 3.15 know no such setting: nothing to undo.
                let _ = libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .context(format!("starting {name} ({:?})", command.get_program()))?;
        Ok(Self {
            name,
            child,
            running: true,
            log,
            _scratch: scratch,
        })
    }

    /// Its standard output, if it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Its CPU time and memory so far.
    pub fn usage(&self) -> Result<ProcessUsage> {
        ProcessUsage::read(self.child.id())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error about this server, with the end of its log.
    pub fn failure(&self, what: impl fmt::Display) -> Error {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n    ");
        Error::new(format!(
            "{} {what}; the end of its log ({}):\n    {tail}",
            self.name,
            self.log.display()
        ))
    }

    /// Calls `check` until it finds what it looks for, failing if the server
    /// exits first or [`START_TIMEOUT`] passes; `awaited` says what is
    /// awaited ("did not {awaited} in time").
    pub fn await_ready<T>(
        &mut self,
        awaited: &str,
        mut check: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // A check that fails (a monitoring endpoint not up yet) is
            // retried; only the deadline ends the wait.
            let last_error = match check() {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => None,
                Err(error) => Some(error),
            };
            if let Some(status) = self.child.try_wait().context("waiting for a server")? {
                self.running = false;
                return Err(self.failure(format!("exited ({status}) before it could {awaited}")));
            }
            if Instant::now() >= deadline {
                let cause = last_error.map_or_else(String::new, |error| format!(" ({error})"));
                return Err(
                    self.failure(format!("did not {awaited} within {START_TIMEOUT:?}{cause}"))
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Stops it with SIGINT (on which both nats-server and starling exit 0,
    /// where nats-server exits 1 on SIGTERM) and waits for it to exit; fails
    /// if it does not exit, or exits with an error.
    pub fn stop(mut self) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("a server's process id")?;
        // SAFETY: `kill` only sends a signal; `pid` is our child, not yet
        // waited for, so the id cannot have been reused by another process.
        if unsafe { libc::kill(pid, libc::SIGINT) } == -1 {
            let error = std::io::Error::last_os_error();
            return Err(self.failure(format!("could not be sent SIGINT ({error})")));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for a server")? {
                self.running = false;
                if status.success() {
                    return Ok(());
                }
                return Err(self.failure(format!("exited with {status} on SIGINT")));
            }
            if Instant::now() >= deadline {
                // Dropping `self` kills it.
                return Err(self.failure(format!(
                    "did not exit within {STOP_TIMEOUT:?} of SIGINT and was killed"
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.running {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Stops every server, each even if another fails; returns the first
/// failure.
pub fn stop_all(servers: Vec<ServerProcess>) -> Result<()> {
    let stopped: Vec<Result<()>> = servers.into_iter().map(ServerProcess::stop).collect();
    stopped.into_iter().collect()
}

/// `name`'s path in `PATH`, or in the system directories that are not in
/// every user's `PATH` (Debian installs nats-server in /usr/sbin).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(seconds: &str) -> ServerProcess {
        let mut command = Command::new("sleep");
        command.arg(seconds);
        ServerProcess::spawn("sleep".into(), command, Scratch::create().unwrap()).unwrap()
    }

    #[test]
    fn a_dropped_server_is_killed_and_its_scratch_removed() {
        let server = sleeper("30");
        let pid = server.child.id();
        let scratch = server.log.parent().unwrap().to_owned();
        assert!(scratch.is_dir());
        drop(server);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "sleep {pid} still runs"
        );
        assert!(!scratch.exists());
    }

    #[test]
    fn a_wait_fails_when_the_server_exits_and_quotes_its_log() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo bad flag >&2; exit 3"]);
        let mut server =
            ServerProcess::spawn("sh".into(), command, Scratch::create().unwrap()).unwrap();
        let error = server
            .await_ready("listen", || Ok(None::<()>))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("sh exited (exit status: 3) before it could listen"),
            "{error}"
        );
        assert!(error.ends_with("\n    bad flag"), "{error}");
    }

    #[test]
    fn stopping_sends_sigint_and_wants_a_clean_exit() {
        sleeper("30").stop().expect_err("sleep dies of SIGINT");
        let mut command = Command::new("sh");
        command.args(["-c", "trap 'exit 0' INT; while :; do sleep 0.01; done"]);
        let server =
            ServerProcess::spawn("sh".into(), command, Scratch::create().unwrap()).unwrap();
        // Give the shell time to set its trap.
        std::thread::sleep(Duration::from_millis(200));
        server.stop().expect("the trap exits 0");
    }
}
