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
//!   them and ~20 KiB without; and each first touch of a 2 MiB page zeroes
//!   all of it on the touching thread, 10-30 ms stalls over a fresh node's
//!   first subscriptions and events. [`disable_transparent_huge_pages_by_default`]
//!   is how the binaries that use mimalloc start: off, unless the user set
//!   mimalloc's own [`ALLOW_THP_VARIABLE`].

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

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

/// mimalloc's variable for its `allow_thp` option, which it reads when it
/// initializes, before `main`: `1` keeps transparent huge pages (mimalloc
/// then `madvise`s its arenas for them), `0` has mimalloc turn them off
/// itself.
pub const ALLOW_THP_VARIABLE: &CStr = c"MIMALLOC_ALLOW_THP";

/// The OS error of [`disable_transparent_huge_pages_by_default`]'s prctl,
/// 0 if there was none. Written before `main` and read in it by
/// [`huge_pages_at_start`], both on the main thread, whose program order
/// orders them: `Relaxed` on both sides.
static START_ERROR: AtomicI32 = AtomicI32::new(0);

/// What [`disable_transparent_huge_pages_by_default`] did; displayed as
/// what follows "transparent huge pages" in a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HugePages {
    /// Turned them off.
    Off,
    /// Left them as [`ALLOW_THP_VARIABLE`], set to this, had mimalloc set
    /// them.
    AsAllocatorSays(String),
}

impl fmt::Display for HugePages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::AsAllocatorSays(value) => write!(
                f,
                "as {}={value} says",
                ALLOW_THP_VARIABLE.to_string_lossy()
            ),
        }
    }
}

/// Turns transparent huge pages off for this process
/// ([`disable_transparent_huge_pages`]) unless [`ALLOW_THP_VARIABLE`] is
/// set, in which case mimalloc does what it says. A binary that uses
/// mimalloc runs it before mimalloc's own start-up constructor, which
/// reserves and touches the first arena (turned off in `main`, a 2 MiB
/// huge page was already resident), with
/// [`disable_transparent_huge_pages_before_main!`](crate::disable_transparent_huge_pages_before_main).
///
/// Hence `extern "C"`, no allocation and no result: [`huge_pages_at_start`]
/// tells `main` what it did. Only for a process's start, before any other
/// thread could change the environment.
pub extern "C" fn disable_transparent_huge_pages_by_default() {
    // SAFETY: the name is NUL-terminated; before `main` no other thread
    // exists to call `setenv` meanwhile.
    if !unsafe { libc::getenv(ALLOW_THP_VARIABLE.as_ptr()) }.is_null() {
        return;
    }
    if let Err(error) = disable_transparent_huge_pages() {
        let errno = error.raw_os_error().unwrap_or(libc::EINVAL);
        START_ERROR.store(errno, Ordering::Relaxed);
    }
}

/// Registers [`disable_transparent_huge_pages_by_default`] to run before
/// mimalloc's start-up constructor: an `.init_array` entry of a higher
/// priority (a lower number; std reads `argv` at 00099 the same way). Once,
/// at the top level of each binary that uses mimalloc.
#[macro_export]
macro_rules! disable_transparent_huge_pages_before_main {
    () => {
        #[used]
        #[unsafe(link_section = ".init_array.00090")]
        static HUGE_PAGES_OFF: extern "C" fn() =
            $crate::process::disable_transparent_huge_pages_by_default;
    };
}

/// What [`disable_transparent_huge_pages_by_default`] did at the start, for
/// `main` to report: an error if the prctl failed or the process still
/// allows huge pages without [`ALLOW_THP_VARIABLE`] (the binary did not run
/// it).
pub fn huge_pages_at_start() -> io::Result<HugePages> {
    let variable = ALLOW_THP_VARIABLE.to_str().expect("an ASCII name");
    if let Some(value) = std::env::var_os(variable) {
        return Ok(HugePages::AsAllocatorSays(
            value.to_string_lossy().into_owned(),
        ));
    }
    match START_ERROR.load(Ordering::Relaxed) {
        0 if thp_disabled()? => Ok(HugePages::Off),
        0 => Err(io::Error::other("not turned off at start")),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Whether transparent huge pages are off for this process.
fn thp_disabled() -> io::Result<bool> {
    // SAFETY: a plain syscall that takes no pointers.
    match unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) } {
        -1 => Err(io::Error::last_os_error()),
        disabled => Ok(disabled == 1),
    }
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
        assert!(thp_disabled().unwrap());
    }
}
