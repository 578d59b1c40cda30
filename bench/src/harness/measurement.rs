//! Measuring: latency histograms and their percentiles, rates, and the CPU
//! time and memory (now and at peak) of a server process, read from `/proc`.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::error::{Context, Error, Result};

/// Latencies above this are recorded as this (a minute: far past any run's
/// grace period).
const LATENCY_MAX_NANOS: u64 = 60_000_000_000;

/// Clock ticks per second in `/proc/PID/stat`: the kernel's USER_HZ, fixed at
/// 100 for user space on every architecture Linux builds Rust for.
const TICKS_PER_SECOND: u64 = 100;

/// An empty latency histogram in nanoseconds, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NANOS, 3).expect("valid histogram bounds")
}

/// Adds `from`'s counts to `into`.
pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    into.add(from)
        .expect("histograms made by latency_histogram have the same bounds");
}

/// The percentiles a report shows, in microseconds; all zero for an empty
/// histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Percentiles {
    /// The percentiles of a histogram in nanoseconds.
    pub fn of(latency: &Histogram<u64>) -> Self {
        let us = |nanos: u64| nanos as f64 / 1000.0;
        if latency.is_empty() {
            return Self {
                p50_us: 0.0,
                p90_us: 0.0,
                p99_us: 0.0,
                p999_us: 0.0,
                max_us: 0.0,
            };
        }
        Self {
            p50_us: us(latency.value_at_quantile(0.5)),
            p90_us: us(latency.value_at_quantile(0.9)),
            p99_us: us(latency.value_at_quantile(0.99)),
            p999_us: us(latency.value_at_quantile(0.999)),
            max_us: us(latency.max()),
        }
    }
}

/// `count` per second over `elapsed`; 0 over no time.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        return 0.0;
    }
    count as f64 / elapsed.as_secs_f64()
}

/// A process's CPU time so far, and the memory it has resident now and had
/// at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessUsage {
    /// User and system time of all its threads.
    pub cpu: Duration,
    /// Resident set size now (`VmRSS`).
    pub rss_bytes: u64,
    /// Peak resident set size (`VmHWM`).
    pub peak_rss_bytes: u64,
}

impl ProcessUsage {
    /// Reads process `pid`'s figures from `/proc`.
    pub fn read(pid: u32) -> Result<Self> {
        let stat_path = format!("/proc/{pid}/stat");
        let status_path = format!("/proc/{pid}/status");
        let stat = std::fs::read_to_string(&stat_path).context(format!("reading {stat_path}"))?;
        let status =
            std::fs::read_to_string(&status_path).context(format!("reading {status_path}"))?;
        let memory = |field: &str| {
            parse_memory(&status, field)
                .ok_or_else(|| Error::new(format!("no {field} line in {status_path}")))
        };
        Ok(Self {
            cpu: parse_cpu(&stat)
                .ok_or_else(|| Error::new(format!("no utime and stime in {stat_path}")))?,
            rss_bytes: memory("VmRSS")?,
            peak_rss_bytes: memory("VmHWM")?,
        })
    }
}

/// What a system's servers cost during a run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerCost {
    /// CPU time they used during the run, all servers together.
    pub cpu: Duration,
    /// Each server's peak resident memory by the end of the run.
    pub peak_rss_bytes: Vec<u64>,
}

impl ServerCost {
    /// The cost between two readings of the same processes, in the same
    /// order.
    pub fn between(before: &[ProcessUsage], after: &[ProcessUsage]) -> Self {
        let cpu = |usage: &[ProcessUsage]| usage.iter().map(|u| u.cpu).sum::<Duration>();
        Self {
            cpu: cpu(after).saturating_sub(cpu(before)),
            peak_rss_bytes: after.iter().map(|u| u.peak_rss_bytes).collect(),
        }
    }

    /// CPU seconds per million `events`; 0 for no events.
    pub fn cpu_seconds_per_million(&self, events: u64) -> f64 {
        if events == 0 {
            return 0.0;
        }
        self.cpu.as_secs_f64() * 1e6 / events as f64
    }
}

/// utime + stime from the text of `/proc/PID/stat`. The command name (field
/// 2) is in parentheses and may hold spaces and parentheses itself, so fields
/// are counted from the last `)`: state is field 3, utime 14, stime 15.
fn parse_cpu(stat: &str) -> Option<Duration> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(
        Duration::from_secs(ticks / TICKS_PER_SECOND)
            + Duration::from_nanos(ticks % TICKS_PER_SECOND * (1_000_000_000 / TICKS_PER_SECOND)),
    )
}

/// A memory figure such as `VmHWM` in bytes from the text of
/// `/proc/PID/status` (given there in kB).
fn parse_memory(status: &str, field: &str) -> Option<u64> {
    let figure = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?;
    let mut words = figure.split_whitespace();
    let kilobytes: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kilobytes * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_counts_fields_from_the_last_parenthesis() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 130 0 0 20 0 9 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu(stat), Some(Duration::from_millis(3800)));
        assert_eq!(parse_cpu("4242 (cut) S 1 2"), None);
    }

    #[test]
    fn memory_figures_are_in_bytes() {
        let status =
            "Name:\tnats-server\nVmPeak:\t 1300000 kB\nVmHWM:\t   20480 kB\nVmRSS:\t 10240 kB\n";
        assert_eq!(parse_memory(status, "VmHWM"), Some(20480 * 1024));
        assert_eq!(parse_memory(status, "VmRSS"), Some(10240 * 1024));
        assert_eq!(parse_memory("Name:\tx\n", "VmHWM"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let usage = ProcessUsage::read(std::process::id()).expect("/proc/self is readable");
        assert!(usage.rss_bytes > 0);
        assert!(usage.peak_rss_bytes >= usage.rss_bytes);
    }

    #[test]
    fn percentiles_are_in_microseconds() {
        let mut latency = latency_histogram();
        for micros in 1..=1000 {
            latency.record(micros * 1000).unwrap();
        }
        let percentiles = Percentiles::of(&latency);
        assert!((percentiles.p50_us - 500.0).abs() < 1.0, "{percentiles:?}");
        assert!((percentiles.p99_us - 990.0).abs() < 1.0, "{percentiles:?}");
        assert!((percentiles.max_us - 1000.0).abs() < 1.0, "{percentiles:?}");
        assert_eq!(Percentiles::of(&latency_histogram()).max_us, 0.0);
    }

    #[test]
    fn cost_per_million_events() {
        let usage = |cpu_ms, peak_rss_bytes| ProcessUsage {
            cpu: Duration::from_millis(cpu_ms),
            rss_bytes: peak_rss_bytes,
            peak_rss_bytes,
        };
        let cost = ServerCost::between(
            &[usage(1000, 10), usage(200, 30)],
            &[usage(1500, 20), usage(200, 30)],
        );
        assert_eq!(cost.cpu, Duration::from_millis(500), "summed over servers");
        assert_eq!(cost.peak_rss_bytes, [20, 30], "each server's");
        assert_eq!(cost.cpu_seconds_per_million(2_000_000), 0.25);
        assert_eq!(cost.cpu_seconds_per_million(0), 0.0);
        assert_eq!(per_second(10, Duration::from_millis(500)), 20.0);
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
    }
}
