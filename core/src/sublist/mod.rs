//! The subscription index: which subscriptions does a published subject match?
//!
//! - [`trie`]: patterns stored token by token, with `*` and `>` branches.
//! - [`cache`]: a bounded subject → result cache, brought up to date change by
//!   change.
//! - [`index`]: the trie shared between one writer and many readers that never
//!   wait, each reader with its own cache.
//!
//! The trie and the cache are checked against [`crate::subject::pattern_matches`]
//! by a property test over random patterns, subjects, groups and removals.

pub mod cache;
pub mod index;
pub mod trie;

pub use cache::MatchCache;
pub use index::{IndexReader, IndexReaders, IndexWriter, ResultStamp};
pub use trie::{MatchResult, QueueGroup, Trie};
