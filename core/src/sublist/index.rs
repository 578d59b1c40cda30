//! The shared subscription index: one writer (the control plane), many readers
//! (the publish paths), and readers never wait for the writer.
//!
//! The trie lives in a [`left_right`] pair: readers read one copy while the
//! writer changes the other, then the writer swaps them and waits (only the
//! writer ever waits) until no reader is left on the old copy before replaying
//! the change there. A reader's entry is one atomic increment; it never blocks.
//!
//! Each reader keeps its own [`MatchCache`] (a per-publisher level-1 cache, as
//! NATS keeps one per client). Each copy carries a generation number and the
//! patterns of the last [`LOG_CAPACITY`] changes; a reader that finds the
//! generation moved matches again the cached subjects those patterns touch,
//! or clears the cache if it missed too many for that to be cheaper.
//!
//! **What the index holds on to.** A target (a subscription's queue: for a
//! peer node, room for tens of thousands of events) must be freed once it is
//! removed. So the change log keeps patterns, never targets (it kept the
//! targets of the last 256 changes once, and a node whose peers came and went
//! kept every departed peer's queue: 29 MB grew to 230 MB in 83 join/leave
//! cycles), and a removal is published twice, so that both left-right copies
//! have let go of the target before [`IndexWriter::remove`] returns. What is
//! left is a reader's cache: a publisher that matched the target lets go of
//! it at its next lookup.

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use left_right::{Absorb, ReadHandle, ReadHandleFactory, WriteHandle};

use crate::sync::{AtomicU64, Ordering};

use super::cache::MatchCache;
use super::trie::{MatchResult, Trie};

/// Changes kept for readers to catch up with.
pub const LOG_CAPACITY: usize = 256;

/// A reader that missed more changes than this clears its cache instead:
/// catching up costs a scan of the cache per wildcard change.
const CATCH_UP_CHANGES_MAX: u64 = 64;

/// The write side of the index. Not `Sync`: callers serialize writers
/// themselves (the bus holds it under its control-plane lock).
pub struct IndexWriter<T: Clone + PartialEq> {
    handle: WriteHandle<VersionedTrie<T>, Change<T>>,
    published: Arc<CachePadded<AtomicU64>>,
}

/// Hands out readers; cheap to clone, safe to share.
#[derive(Clone)]
pub struct IndexReaders<T> {
    factory: ReadHandleFactory<VersionedTrie<T>>,
    published: Arc<CachePadded<AtomicU64>>,
}

/// One reader of the index with its private match cache. `Send`, not `Sync`:
/// each publishing thread owns one.
pub struct IndexReader<T> {
    handle: ReadHandle<VersionedTrie<T>>,
    cache: MatchCache<T>,
    /// The generation this reader's cache is up to date with.
    generation: u64,
    /// The generation the writer last made visible (see [`IndexWriter::change`]).
    published: Arc<CachePadded<AtomicU64>>,
    /// Where subjects that are not cached are matched, reused.
    scratch: MatchResult<T>,
    /// The subject of the last cache hit and its result.
    memo: Memo<T>,
}

/// Names one result a reader memoized ([`IndexReader::lookup_stamped`]): as
/// long as the reader hands out a stamp, the result it names is the same
/// one, unchanged. A batch publisher that routed an event with a result need
/// not note that result's consumers again for the next event with the same
/// stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultStamp(u64);

/// A match result and its stamp, if the reader memoizes it.
pub type Stamped<'a, T> = (&'a MatchResult<T>, Option<ResultStamp>);

/// The last subject the cached path found, and its result: a publisher that
/// publishes on one subject again and again compares it with this one and
/// skips hashing and probing the cache (a third of a 1 → 1 publish's cost,
/// measured with `perf`).
struct Memo<T> {
    /// Keeps its capacity: no allocation once it has held the longest subject.
    subject: String,
    /// Points into an entry of the reader's cache (an `Arc`'s contents, which
    /// stay put while the map moves its handles). Cleared before anything
    /// changes the cache, so it never outlives the entry.
    result: Option<NonNull<MatchResult<T>>>,
    /// Counts the results memoized: each `set` draws a new stamp, and the
    /// cache changes only after the memo is cleared, so one stamp always
    /// stands for one unchanged result.
    stamp: u64,
}

// SAFETY: the pointer is into the owning reader's own cache and moves with
// it; `MatchResult<T>` is `Send` when `T` is.
unsafe impl<T: Send> Send for Memo<T> {}

impl<T> Memo<T> {
    fn get(&self, subject: &str) -> Option<NonNull<MatchResult<T>>> {
        self.result.filter(|_| self.subject == subject)
    }

    fn set(&mut self, subject: &str, result: &MatchResult<T>) {
        self.subject.clear();
        self.subject.push_str(subject);
        self.result = Some(NonNull::from(result));
        self.stamp += 1;
    }
}

/// One of the two copies left-right keeps: the trie, how many changes it
/// has taken in, and the patterns of the latest of them (for readers to
/// bring their caches up to date with; patterns only, so that a removed
/// target is not kept alive by the log).
#[derive(Clone)]
struct VersionedTrie<T> {
    trie: Trie<T>,
    generation: u64,
    changed_patterns: VecDeque<Arc<str>>,
}

/// A subscription change as the writer hands it to both copies.
#[derive(Debug, Clone)]
struct Change<T> {
    kind: ChangeKind,
    pattern: Arc<str>,
    group: Option<Arc<str>>,
    target: T,
}

/// Whether a subscription came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Insert,
    Remove,
}

/// Creates an empty index.
pub fn new<T>() -> (IndexWriter<T>, IndexReaders<T>)
where
    T: Clone + PartialEq + Send + Sync,
{
    let empty = VersionedTrie {
        trie: Trie::new(),
        generation: 0,
        changed_patterns: VecDeque::with_capacity(LOG_CAPACITY),
    };
    let (handle, reader) = left_right::new_from_empty::<VersionedTrie<T>, Change<T>>(empty);
    let published = Arc::new(CachePadded::new(AtomicU64::new(0)));
    (
        IndexWriter {
            handle,
            published: published.clone(),
        },
        IndexReaders {
            factory: reader.factory(),
            published,
        },
    )
}

impl<T: Clone + PartialEq> IndexWriter<T> {
    /// Adds a subscription and makes it visible to readers before returning.
    /// The pattern must be valid.
    pub fn insert(&mut self, pattern: Arc<str>, group: Option<Arc<str>>, target: T) {
        self.change(ChangeKind::Insert, pattern, group, target);
    }

    /// Removes a subscription and makes the removal visible before returning.
    /// Neither copy of the index holds `target` afterwards.
    pub fn remove(&mut self, pattern: Arc<str>, group: Option<Arc<str>>, target: T) {
        self.change(ChangeKind::Remove, pattern, group, target);
        // left-right applies a change to the copy readers just left only at
        // the next publish, and keeps it (target and all) until then: on a
        // quiet bus, forever. Publishing again now applies it there and
        // drops it. The writer waits for readers once more; readers see the
        // same generation and do nothing.
        self.handle.publish();
    }

    /// Number of subscriptions stored.
    pub fn len(&self) -> usize {
        self.handle.enter().map_or(0, |shared| shared.trie.len())
    }

    /// True if no subscription is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn change(&mut self, kind: ChangeKind, pattern: Arc<str>, group: Option<Arc<str>>, target: T) {
        self.handle.append(Change {
            kind,
            pattern,
            group,
            target,
        });
        self.handle.publish();
        // SYNC POINT (index-generation): Release after the change is visible
        // in the readers' copy; pairs with the Acquire in `lookup_stamped`.
        // A reader that sees the new number will enter the index and catch
        // up.
        let generation = self.handle.enter().map_or(0, |shared| shared.generation);
        self.published.store(generation, Ordering::Release);
    }
}

impl<T: Clone + PartialEq> IndexReaders<T> {
    /// A new reader with a match cache of `cache_capacity` subjects.
    pub fn reader(&self, cache_capacity: usize) -> IndexReader<T> {
        IndexReader {
            handle: self.factory.handle(),
            cache: MatchCache::new(cache_capacity),
            generation: 0,
            published: self.published.clone(),
            scratch: MatchResult::default(),
            memo: Memo {
                subject: String::new(),
                result: None,
                stamp: 0,
            },
        }
    }
}

impl<T: Clone + PartialEq> IndexReader<T> {
    /// The subscriptions `subject` matches, from the cache when possible.
    /// `None` once the writer is gone. The subject must be a valid published
    /// subject.
    pub fn lookup(&mut self, subject: &str) -> Option<&MatchResult<T>> {
        self.lookup_checked(subject, true, || Ok::<(), ()>(()))
            .ok()
            .flatten()
    }

    /// Like [`IndexReader::lookup`], but runs `check` on the subject before
    /// matching it, unless the cache already holds it: cached subjects were
    /// checked on their way in. A publisher uses this to validate each
    /// distinct subject once rather than on every publish.
    ///
    /// Subjects that are used once (`cacheable == false`, such as the reply
    /// subjects of requests) are matched into a scratch result instead of the
    /// cache, so that they neither allocate nor evict the subjects that repeat.
    pub fn lookup_checked<E>(
        &mut self,
        subject: &str,
        cacheable: bool,
        check: impl FnOnce() -> Result<(), E>,
    ) -> Result<Option<&MatchResult<T>>, E> {
        let found = self.lookup_stamped(subject, cacheable, None, check)?;
        Ok(found.map(|(result, _)| result))
    }

    /// Like [`IndexReader::lookup_checked`], also returning the result's
    /// stamp if it is the one this reader memoizes (a cached subject's; not
    /// one matched or brought up to date just now, nor one not cacheable).
    ///
    /// `again` is the stamp the previous lookup returned, given by a caller
    /// that looks up the very same subject again (the same bytes, borrowed
    /// ever since): if the reader still memoizes that result and the index
    /// has not changed, it is returned without comparing the subject.
    pub fn lookup_stamped<E>(
        &mut self,
        subject: &str,
        cacheable: bool,
        again: Option<ResultStamp>,
        check: impl FnOnce() -> Result<(), E>,
    ) -> Result<Option<Stamped<'_, T>>, E> {
        if !cacheable {
            check()?;
            let Some(shared) = self.handle.enter() else {
                return Ok(None);
            };
            self.scratch.plain.clear();
            self.scratch.groups.clear();
            shared.trie.match_into(subject, &mut self.scratch);
            return Ok(Some((&self.scratch, None)));
        }
        // Fast path: nothing changed since this reader's cache was brought up
        // to date, and the subject is cached. Entering the left-right copy
        // costs two atomic read-modify-writes and a fence; this costs a load.
        // SYNC POINT (index-generation): pairs with the Release in `change`.
        let fresh = self.published.load(Ordering::Acquire) == self.generation;
        let memoized = match again {
            // The stamp says the subject is the memo's, if it is still current.
            Some(stamp) => self.memo.result.filter(|_| self.memo.stamp == stamp.0),
            None => self.memo.get(subject),
        };
        if fresh && let Some(result) = memoized {
            let stamp = ResultStamp(self.memo.stamp);
            // SAFETY: the memo's result is a live cache entry (see `Memo`),
            // borrowed through `&mut self` like the one below.
            return Ok(Some((unsafe { result.as_ref() }, Some(stamp))));
        }
        let cached = match self.cache.get(subject) {
            Some(result) if fresh => {
                let result: *const MatchResult<T> = &**result;
                // SAFETY: as below.
                self.memo.set(subject, unsafe { &*result });
                let stamp = ResultStamp(self.memo.stamp);
                // SAFETY: the result lives in `self.cache`, which the returned
                // reference keeps borrowed through `&mut self`. (The borrow
                // checker cannot yet return a borrow from one branch and go on
                // in the other; this saves hashing the subject twice.)
                return Ok(Some((unsafe { &*result }, Some(stamp))));
            }
            cached => cached.is_some(),
        };
        // The cache may change below.
        self.memo.result = None;
        if !cached {
            // Checked before entering, so that the match below runs against
            // the same copy the cache is brought up to date with.
            check()?;
        }
        let Some(shared) = self.handle.enter() else {
            return Ok(None);
        };
        if shared.generation != self.generation {
            let behind = shared.generation - self.generation;
            let logged = shared.changed_patterns.len();
            if behind <= CATCH_UP_CHANGES_MAX && behind as usize <= logged {
                let skip = logged - behind as usize;
                for pattern in shared.changed_patterns.iter().skip(skip) {
                    self.cache.rematch(pattern, &shared.trie);
                }
            } else {
                self.cache.clear();
            }
            self.generation = shared.generation;
        }
        if self.cache.get(subject).is_none() {
            let result = shared.trie.matches(subject);
            drop(shared);
            return Ok(Some((self.cache.insert(subject, Arc::new(result)), None)));
        }
        drop(shared);
        Ok(self.cache.get(subject).map(|result| (&**result, None)))
    }

    /// True once the writer is gone.
    pub fn is_closed(&self) -> bool {
        self.handle.was_dropped()
    }

    /// Number of subjects in this reader's cache.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

impl<T: Clone + PartialEq> VersionedTrie<T> {
    fn apply(&mut self, change: Change<T>) {
        let Change {
            kind,
            pattern,
            group,
            target,
        } = change;
        match kind {
            ChangeKind::Insert => self.trie.insert(&pattern, group.as_ref(), target),
            ChangeKind::Remove => {
                self.trie.remove(&pattern, group.as_ref(), &target);
            }
        }
        self.generation += 1;
        if self.changed_patterns.len() == LOG_CAPACITY {
            self.changed_patterns.pop_front();
        }
        self.changed_patterns.push_back(pattern);
    }
}

impl<T: Clone + PartialEq> Absorb<Change<T>> for VersionedTrie<T> {
    fn absorb_first(&mut self, change: &mut Change<T>, _: &Self) {
        self.apply(change.clone());
    }

    fn absorb_second(&mut self, change: Change<T>, _: &Self) {
        self.apply(change);
    }

    fn sync_with(&mut self, first: &Self) {
        *self = first.clone();
    }
}

impl<T: Clone + PartialEq> std::fmt::Debug for IndexWriter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexWriter")
            .field("len", &self.len())
            .finish()
    }
}

impl<T> std::fmt::Debug for IndexReaders<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexReaders").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for IndexReader<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexReader")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_changes_and_patch_their_caches() {
        let (mut writer, readers) = new::<u32>();
        let mut reader = readers.reader(16);
        assert!(reader.lookup("a.b").unwrap().is_empty());
        writer.insert("a.*".into(), None, 1);
        assert_eq!(reader.lookup("a.b").unwrap().plain, vec![1]);
        writer.insert("a.b".into(), None, 2);
        writer.remove("a.*".into(), None, 1);
        assert_eq!(reader.lookup("a.b").unwrap().plain, vec![2]);
        assert_eq!(writer.len(), 1);
    }

    #[test]
    fn a_reader_far_behind_clears_its_cache_and_stays_correct() {
        let (mut writer, readers) = new::<u32>();
        let mut reader = readers.reader(16);
        assert!(reader.lookup("x").unwrap().is_empty());
        for i in 0..(LOG_CAPACITY as u32 + 10) {
            writer.insert("x".into(), None, i);
        }
        assert_eq!(reader.lookup("x").unwrap().plain.len(), LOG_CAPACITY + 10);
    }

    /// Issue 15: the change log kept the targets of the last 256 changes,
    /// and with them every departed peer's queue.
    #[test]
    fn a_removed_target_is_let_go_by_the_index_and_by_a_reader_at_its_next_lookup() {
        let (mut writer, readers) = new::<Arc<u32>>();
        let mut reader = readers.reader(16);
        let target = Arc::new(7);
        writer.insert("a.*".into(), None, target.clone());
        writer.insert("b".into(), None, Arc::new(8));
        assert_eq!(reader.lookup("a.x").unwrap().plain, vec![target.clone()]);
        writer.remove("a.*".into(), None, target.clone());
        assert_eq!(
            Arc::strong_count(&target),
            2,
            "only the test and the reader's cache hold it"
        );
        assert!(reader.lookup("b").unwrap().plain.len() == 1);
        assert_eq!(
            Arc::strong_count(&target),
            1,
            "the reader's cache let go of it when it caught up"
        );
        assert!(reader.lookup("a.x").unwrap().is_empty());
    }

    #[test]
    fn lookup_returns_none_once_the_writer_is_gone() {
        let (writer, readers) = new::<u32>();
        let mut reader = readers.reader(4);
        drop(writer);
        assert!(reader.lookup("a").is_none());
    }
}
