//! Where event bytes live: segments of record memory, written once by a single
//! appender and read in place by every consumer that holds a record.
//!
//! - [`segment`]: the memory layout (drawn there) and the reference-counting
//!   protocol that decides when bytes may be written again;
//! - [`pool`]: the bounded budget of segments, recycled through a free list;
//! - [`appender`]: one writer's bump allocation through its segments;
//! - [`record`]: a holder's handle, released on drop;
//! - [`channel`](mod@channel): one writer handing records to one reader a batch at a
//!   time, for library users who want the log without the bus.
//!
//! Delivering one event to N consumers writes its bytes once and hands out N
//! holds on the same record: no payload is copied per consumer.

pub(crate) mod appender;
pub(crate) mod channel;
pub(crate) mod pool;
pub(crate) mod record;
pub(crate) mod segment;

pub use appender::{AppendError, Appender, Holds};
pub use channel::{Closed, LogReader, LogWriter, WriteError, channel};
pub use pool::{PoolStats, SegmentPool};
pub(crate) use record::BatchRelease;
pub use record::RecordRef;
