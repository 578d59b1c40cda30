//! Settings a server (or a client opening thousands of connections) makes
//! for its whole process at start:
//!
//! - [`raise_open_files_limit`]: every connection is a descriptor, and the
//!   soft `RLIMIT_NOFILE` a shell hands a process (often 1,024) is far below
//!   what a server needs; it lifts the soft limit to the hard one, as Go's
//!   runtime does for every Go program (nats-server among them);
//! - [`disable_transparent_huge_pages`]: mimalloc asks for transparent huge
//!   pages on the memory it reserves (`madvise(MADV_HUGEPAGE)`), so memory
//!   becomes resident 2 MiB at a time, whether touched or not; a node's
//!   per-connection buffers are large and mostly untouched (an outbox with
//!   room for 1,024 frames, a delivery queue of 16,384 slots in zeroed
//!   pages), so an idle subscriber cost ~520 KiB of resident memory with
//!   them and ~20 KiB without.

use std::io;

/// The open-files limit before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit found.
    pub was: u64,
    /// The soft limit now: the hard limit.
    pub now: u64,
}

/// Raises the soft open-files limit to the hard limit. An error if either
/// cannot be read or set.
pub fn raise_open_files_limit() -> io::Result<OpenFilesLimit> {
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

/// Keeps the kernel from backing this process's memory with transparent
/// huge pages from now on, even where the allocator asked for them (Linux
/// 3.15 and later). Pages already faulted in stay as they are.
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    // SAFETY: a plain syscall that takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_becomes_the_hard_limit() {
        let raised = raise_open_files_limit().unwrap();
        assert!(raised.now >= raised.was);
        let again = raise_open_files_limit().unwrap();
        assert_eq!(again.was, raised.now, "already raised");
        assert_eq!(again.now, raised.now);
    }

    #[test]
    fn transparent_huge_pages_can_be_turned_off() {
        disable_transparent_huge_pages().unwrap();
        // SAFETY: a plain syscall that takes no pointers.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(disabled, 1);
    }
}
