//! The registry of open connections, and what listings of them report:
//! each open connection ([`ConnectionInfo`]) and totals over every
//! connection so far ([`ConnectionTotals`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use starling_core::QueueCounters;

use super::counters::ConnectionStats;

/// One connection, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The connection's id, unique within the server.
    pub id: u64,
    /// `tcp` or `unix`.
    pub transport: &'static str,
    /// The peer's address, for TCP.
    pub remote: String,
    /// The I/O thread that serves it (0 to `io_threads - 1`), for its whole
    /// life.
    pub io_thread: usize,
    /// The name the client gave in its `HELLO`.
    pub client_name: String,
    /// When it connected, nanoseconds since the Unix epoch.
    pub connected_unix_nanos: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Events published by the client.
    pub events_in: u64,
    /// Events delivered to the client.
    pub events_out: u64,
    /// Live subscriptions.
    pub subscriptions: u64,
    /// The id of the connection's mailbox in the bus (see
    /// `starling_core::QueueInfo::id`).
    pub mailbox: u64,
    /// Per subscription: id, pattern, queue group, events delivered.
    pub delivered: Vec<SubscriptionDelivered>,
    /// Events dropped because the client read too slowly.
    pub dropped: u64,
    /// Error frames sent.
    pub errors: u64,
}

/// What was delivered for one subscription of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionDelivered {
    /// The subscription id the client chose.
    pub sid: u64,
    /// Its pattern.
    pub pattern: String,
    /// Its queue group.
    pub queue_group: Option<String>,
    /// Events delivered for it.
    pub delivered: u64,
}

/// Counters summed over every connection the server ever had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTotals {
    /// ConnectionRegistry accepted.
    pub connections: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Events clients published.
    pub events_in: u64,
    /// Events delivered to clients.
    pub events_out: u64,
    /// Events dropped for clients that read too slowly.
    pub dropped: u64,
    /// Error frames sent.
    pub errors: u64,
}

/// The registry of open connections (control plane: a lock, taken on
/// connect, disconnect and listing only; a listing holds it only to copy
/// the entries' handles, so an HTTP poll does not hold up accepts and
/// closes for the time it takes to read every connection's figures).
#[derive(Debug, Default)]
pub(super) struct ConnectionRegistry {
    /// Relaxed: only uniqueness matters, which `fetch_add` gives alone.
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Registered>>>,
    /// How many entries `open` has, for a count without the lock. Changed
    /// under the lock with the map, so it equals the map's length whenever
    /// the lock is free; Relaxed: a statistic that orders nothing.
    open_count: AtomicUsize,
    /// Counters of connections that have closed, so that totals never go
    /// down when a client leaves.
    closed: ClosedTotals,
}

/// Sums over closed connections (Relaxed: statistics, ordering nothing).
#[derive(Debug, Default)]
struct ClosedTotals {
    connections: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    events_in: AtomicU64,
    events_out: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
}

#[derive(Debug)]
struct Registered {
    transport: &'static str,
    remote: String,
    io_thread: usize,
    connected_unix_nanos: u64,
    stats: Arc<ConnectionStats>,
}

impl ConnectionRegistry {
    /// Registers a new connection, served by I/O thread `io_thread`;
    /// returns its id and counters.
    pub(super) fn open(
        &self,
        transport: &'static str,
        remote: String,
        io_thread: usize,
    ) -> (u64, Arc<ConnectionStats>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let stats = Arc::new(ConnectionStats::default());
        let connected_unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let registered = Registered {
            transport,
            remote,
            io_thread,
            connected_unix_nanos,
            stats: stats.clone(),
        };
        let mut open = self.open.lock().expect("connections lock");
        open.insert(id, Arc::new(registered));
        self.open_count.store(open.len(), Ordering::Relaxed);
        drop(open);
        (id, stats)
    }

    /// How many connections are open (without the lock).
    pub(super) fn count(&self) -> usize {
        self.open_count.load(Ordering::Relaxed)
    }

    /// Unregisters a connection that closed, adding its counters to the
    /// totals of closed connections.
    pub(super) fn close(&self, id: u64) {
        let closed = {
            let mut open = self.open.lock().expect("connections lock");
            let closed = open.remove(&id);
            self.open_count.store(open.len(), Ordering::Relaxed);
            closed
        };
        let Some(closed) = closed else {
            return;
        };
        let add = |total: &AtomicU64, value: u64| total.fetch_add(value, Ordering::Relaxed);
        let stats = &closed.stats;
        add(&self.closed.connections, 1);
        add(
            &self.closed.bytes_in,
            stats.bytes_in.load(Ordering::Relaxed),
        );
        add(
            &self.closed.bytes_out,
            stats.bytes_out.load(Ordering::Relaxed),
        );
        add(
            &self.closed.events_in,
            stats.events_in.load(Ordering::Relaxed),
        );
        add(
            &self.closed.events_out,
            stats.events_out.load(Ordering::Relaxed),
        );
        add(
            &self.closed.dropped,
            stats.mailbox.get().map_or(0, QueueCounters::dropped),
        );
        add(&self.closed.errors, stats.errors.load(Ordering::Relaxed));
    }

    /// Totals over every connection so far: the closed ones, plus `open`
    /// (a [`Self::snapshot`]).
    pub(super) fn totals(&self, open: &[ConnectionInfo]) -> ConnectionTotals {
        let closed = |total: &AtomicU64| total.load(Ordering::Relaxed);
        let sum = |field: fn(&ConnectionInfo) -> u64| open.iter().map(field).sum::<u64>();
        ConnectionTotals {
            connections: closed(&self.closed.connections) + open.len() as u64,
            bytes_in: closed(&self.closed.bytes_in) + sum(|c| c.bytes_in),
            bytes_out: closed(&self.closed.bytes_out) + sum(|c| c.bytes_out),
            events_in: closed(&self.closed.events_in) + sum(|c| c.events_in),
            events_out: closed(&self.closed.events_out) + sum(|c| c.events_out),
            dropped: closed(&self.closed.dropped) + sum(|c| c.dropped),
            errors: closed(&self.closed.errors) + sum(|c| c.errors),
        }
    }

    /// The open connections, by id. Their figures are read after the lock
    /// is given back.
    pub(super) fn snapshot(&self) -> Vec<ConnectionInfo> {
        let open: Vec<(u64, Arc<Registered>)> = self
            .open
            .lock()
            .expect("connections lock")
            .iter()
            .map(|(id, registered)| (*id, registered.clone()))
            .collect();
        let mut list: Vec<ConnectionInfo> = open
            .iter()
            .map(|(id, c)| {
                let subscriptions = c.stats.subscriptions.lock().expect("subscriptions lock");
                let delivered = subscriptions
                    .iter()
                    .map(|(sid, s)| SubscriptionDelivered {
                        sid: *sid,
                        pattern: s.pattern.clone(),
                        queue_group: s.queue_group.clone(),
                        delivered: s.delivered.load(Ordering::Relaxed),
                    })
                    .collect();
                ConnectionInfo {
                    id: *id,
                    transport: c.transport,
                    remote: c.remote.clone(),
                    io_thread: c.io_thread,
                    client_name: c.stats.client_name.get().cloned().unwrap_or_default(),
                    connected_unix_nanos: c.connected_unix_nanos,
                    bytes_in: c.stats.bytes_in.load(Ordering::Relaxed),
                    bytes_out: c.stats.bytes_out.load(Ordering::Relaxed),
                    events_in: c.stats.events_in.load(Ordering::Relaxed),
                    events_out: c.stats.events_out.load(Ordering::Relaxed),
                    subscriptions: subscriptions.len() as u64,
                    mailbox: c.stats.mailbox.get().map_or(0, QueueCounters::id),
                    delivered,
                    dropped: c.stats.mailbox.get().map_or(0, QueueCounters::dropped),
                    errors: c.stats.errors.load(Ordering::Relaxed),
                }
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }
}
