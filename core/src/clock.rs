//! Wall clocks for event timestamps.
//!
//! The core reads no clock it was not handed: a bus stamps events with the
//! clock in its [`crate::BusConfig`]. Two are provided:
//!
//! - [`system`]: the precise wall clock (`CLOCK_REALTIME`), the default;
//! - [`coarse`]: the kernel's cached wall clock (`CLOCK_REALTIME_COARSE`),
//!   about 6 ns to read instead of 30–45 ns on a VM, at the resolution of the
//!   kernel tick (4 ms on this machine). For publishers at millions of events
//!   per second that do not need sub-millisecond event times (Kafka's record
//!   timestamps are milliseconds too).

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now.
pub type WallClock = fn() -> u64;

/// The precise wall clock.
pub fn system() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// The coarse wall clock: cheap, with the kernel tick's resolution. Falls
/// back to [`system`] if the kernel refuses it.
#[cfg(target_os = "linux")]
pub fn coarse() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call's duration.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
    if result != 0 {
        return system();
    }
    (now.tv_sec as u64).saturating_mul(1_000_000_000) + now.tv_nsec as u64
}

/// The coarse wall clock; elsewhere than Linux, the precise one.
#[cfg(not(target_os = "linux"))]
pub fn coarse() -> u64 {
    system()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_clocks_tell_the_same_time_within_the_tick() {
        let (precise, cheap) = (system(), coarse());
        assert!(precise > 1_600_000_000_000_000_000);
        assert!(precise.abs_diff(cheap) < 50_000_000, "{precise} vs {cheap}");
    }
}
