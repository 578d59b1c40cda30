//! Starling's core: events, subjects, the subscription index, lock-free logs
//! and the in-process [`Bus`]. No I/O: no sockets, no clock it was not handed
//! (publishers stamp events with the [`clock`] in the bus's configuration), no
//! threads of its own.
//!
//! # The bus in one program
//!
//! ```
//! use std::time::Duration;
//! use starling_core::Bus;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let bus = Bus::new(Default::default());
//!     let orders = bus.subscribe("orders.*.created")?;
//!     let _workers = bus.queue_subscribe("orders.>", "workers")?;
//!
//!     let responder = bus.clone();
//!     let checks = bus.subscribe("inventory.check")?;
//!     std::thread::spawn(move || {
//!         while let Ok(req) = checks.recv() {
//!             if let Some(reply_to) = req.reply_to() {
//!                 responder.publish(reply_to, b"in-stock").unwrap();
//!             }
//!         }
//!     });
//!
//!     bus.publish("orders.eu.created", b"{\"id\":1}")?;
//!     let ev = orders.recv_timeout(Duration::from_secs(1))?; // a zero-copy view of the event
//!     assert_eq!(ev.subject(), "orders.eu.created");
//!     assert_eq!(ev.payload(), b"{\"id\":1}");
//!     drop(ev);
//!     assert_eq!(orders.dropped(), 0); // events this subscription missed by falling behind
//!
//!     let answer = bus.request("inventory.check", b"sku-1", Duration::from_millis(100))?;
//!     assert_eq!(answer.payload(), b"in-stock");
//!     assert!(bus.request("nobody.home", b"", Duration::from_secs(1)).is_err()); // at once, not after 1 s
//!     Ok(())
//! }
//! ```
//!
//! # Delivery contract
//!
//! At most once, no duplicates, and each publisher's events on a subject
//! arrive in the order published. When a subscription falls behind, its
//! [`SlowConsumerPolicy`] drops events and [`Mailbox::dropped`] counts each one
//! exactly; nothing is lost without being counted.
//!
//! # Map
//!
//! - [`subject`]: subject and pattern rules, the reference matcher;
//! - [`event`]: the rkyv envelope, encoding without allocation, validation;
//! - [`sublist`]: the subscription index and its match cache;
//! - [`log`]: segments of event memory and their reference-counting protocol;
//! - [`bus`]: publishers, subscriptions, mailboxes, request/reply.

pub mod bus;
pub mod clock;
pub mod event;
pub mod hash;
mod lane;
pub mod log;
mod ring;
mod signal;
pub mod subject;
pub mod sublist;
mod sync;

#[cfg(all(test, loom))]
mod loom_tests;

pub use bus::{
    Bus, BusConfig, BusStats, DirectSource, EventRef, Inlet, InterestChange, InterestWatcher,
    Mailbox, Message, PublishBatchError, PublishError, Publisher, QueueCounters, QueueInfo,
    RecvError, Reply, RequestError, SlowConsumerPolicy, SubscribeError, SubscribeOptions,
    Subscription, SubscriptionInfo, random_u64,
};
pub use event::{ArchivedEvent, Event, EventLimits, Header};
