//! The process's open-files limit (`RLIMIT_NOFILE`): every connection is a
//! descriptor, and the soft limit a shell hands a process (often 1,024) is
//! far below what a server, or a client opening thousands of connections,
//! needs. [`raise_limit`] lifts the soft limit to the hard one, as Go's
//! runtime does for every Go program (nats-server among them).

use std::io;

/// The open-files limit before and after [`raise_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit found.
    pub was: u64,
    /// The soft limit now: the hard limit, unless raising failed.
    pub now: u64,
}

/// Raises the soft open-files limit to the hard limit. An error if either
/// cannot be read or set.
pub fn raise_limit() -> io::Result<OpenFilesLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the one struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == -1 {
        return Err(io::Error::last_os_error());
    }
    let was = limit.rlim_cur;
    if was < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the one struct it is given, which lives here.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(OpenFilesLimit {
        was,
        now: limit.rlim_cur,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_becomes_the_hard_limit() {
        let raised = raise_limit().unwrap();
        assert!(raised.now >= raised.was);
        let again = raise_limit().unwrap();
        assert_eq!(again.was, raised.now, "already raised");
        assert_eq!(again.now, raised.now);
    }
}
