//! Per-link counters, each written by the one task that moves the events
//! it counts (link readers, egress) and read for the mesh's report.

use std::sync::atomic::AtomicU64;

/// Counters of one peer's link, each written by one task. Relaxed: they are
/// figures, not synchronization.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Events sent to the peer (one per publish, however many of its
    /// subscriptions and groups it was for).
    pub events_out: AtomicU64,
    /// Bytes written to the peer's data streams.
    pub bytes_out: AtomicU64,
    /// Events routed to the peer for an interest entry it had withdrawn by
    /// the time they were sent: not sent.
    pub unroutable_out: AtomicU64,
    /// Events received from the peer and delivered here.
    pub events_in: AtomicU64,
    /// Bytes read from the peer's data streams.
    pub bytes_in: AtomicU64,
    /// Events received from the peer that found no event memory here
    /// (counted as dropped by the consumers they were for, too).
    pub dropped_in: AtomicU64,
    /// Events for the peer dropped by its egress rather than by its queue:
    /// those still queued when the peer was forgotten, and the queue's own
    /// count, added when the queue goes with it.
    pub dropped_out: AtomicU64,
    /// Forwards taken for the peer (written to a link, or about to be)
    /// that the peer had not acknowledged when the link went down: lost
    /// with the link — at most: a peer may have handled some before its
    /// acknowledgement could come back, or (a stopped one that resumes)
    /// after this node gave the link up.
    pub lost_in_flight: AtomicU64,
    /// Events the egress took from the peer's queue past a round's room and
    /// holds, in order, to send first next round: still waiting to be sent,
    /// like the queue's (a figure the egress sets each round, not a count).
    pub held_out: AtomicU64,
}
