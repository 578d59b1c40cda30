//! A real `starling node` runs without transparent huge pages, turned off at
//! the start of `main` before the node touches its memory, unless
//! `MIMALLOC_ALLOW_THP` says otherwise (BENCHMARKS.md, interest convergence:
//! every first touch of a huge page zeroed 2 MiB, 10-30 ms stalls on a fresh
//! node). Read from the node's `/proc/PID/status` (`THP_enabled`, the
//! kernel's per-process setting) and `/proc/PID/smaps_rollup`
//! (`AnonHugePages`, what it is backed by) after it has carried events.

mod common;

use std::time::Duration;

use common::*;

/// Events the node carries before its memory is read: enough to touch its
/// connections' buffers, delivery queues and segments.
const EVENTS: &str = "2000";

/// A field of `/proc/PID/<file>` in kB or as a plain number.
fn proc_field(pid: u32, file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/{file}"))
}

/// Starts a node with `env`, has it carry [`EVENTS`] events of 4 KiB from
/// `starling pub` to `starling sub`, and returns its `THP_enabled` and its
/// `AnonHugePages` in kB.
fn huge_pages_after_traffic(env: &[(&str, &str)]) -> (u64, u64) {
    let node = start_node(&[], env);
    let mut subscriber = start_sub(&node, &["touch.>", "--count", EVENTS]);
    let published = run(&[
        "pub",
        "--server",
        &node.tcp,
        "touch.pages",
        "--count",
        EVENTS,
        "--size",
        "4096",
    ]);
    assert!(published.status.success(), "{}", text(&published.stderr));
    let received = wait_output(&mut subscriber, Duration::from_secs(20));
    assert!(received.status.success(), "{}", text(&received.stderr));
    let pid = node.process.0.id();
    (
        proc_field(pid, "status", "THP_enabled"),
        proc_field(pid, "smaps_rollup", "AnonHugePages"),
    )
}

/// Whether this process may have transparent huge pages: a node inherits
/// the setting, and cannot have them if its parent may not.
fn this_process_allows_huge_pages() -> bool {
    proc_field(std::process::id(), "status", "THP_enabled") == 1
}

#[test]
fn a_node_runs_without_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        skip(
            "a_node_runs_without_transparent_huge_pages",
            "MIMALLOC_ALLOW_THP is set for the tests, so the node would follow it",
        );
        return;
    }
    let (enabled, huge_kib) = huge_pages_after_traffic(&[]);
    assert_eq!(enabled, 0, "THP_enabled of the node");
    assert_eq!(huge_kib, 0, "AnonHugePages of the node, in kB");
}

#[test]
fn mimalloc_allow_thp_0_turns_them_off_too() {
    let (enabled, huge_kib) = huge_pages_after_traffic(&[("MIMALLOC_ALLOW_THP", "0")]);
    assert_eq!(enabled, 0, "THP_enabled of the node");
    assert_eq!(huge_kib, 0, "AnonHugePages of the node, in kB");
}

/// The way back, for whoever measures that huge pages help them; and proof
/// that the two tests above read a figure that can be other than 0.
#[test]
fn mimalloc_allow_thp_1_keeps_them() {
    let name = "mimalloc_allow_thp_1_keeps_them";
    if !this_process_allows_huge_pages() {
        skip(name, "this process may not have transparent huge pages");
        return;
    }
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !mode.contains("[always]") && !mode.contains("[madvise]") {
        skip(
            name,
            &format!("the kernel gives no huge pages here: {mode}"),
        );
        return;
    }
    let (enabled, huge_kib) = huge_pages_after_traffic(&[("MIMALLOC_ALLOW_THP", "1")]);
    assert_eq!(enabled, 1, "THP_enabled of the node");
    assert!(
        huge_kib >= 2048,
        "AnonHugePages of the node: {huge_kib} kB, not even one huge page"
    );
}
