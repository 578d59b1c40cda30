//! The token trie: subscriptions stored by pattern, one level per token, with
//! `*` and `>` branches beside the literal children (the shape of NATS's
//! sublist). Matching a subject walks the literal path and, at each level, the
//! wildcard branches.

use std::collections::HashMap;
use std::sync::Arc;

use crate::subject::{self, FULL_WILDCARD, SINGLE_WILDCARD};

/// Hash builder for token maps: fast, and seeded per process so that tokens
/// chosen by clients cannot force collisions.
pub(crate) type TokenHasher = foldhash::fast::RandomState;

/// The subscriptions one subject matches.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchResult<T> {
    /// Plain subscriptions: each one gets the event.
    pub plain: Vec<T>,
    /// Queue groups by name: one member of each gets the event.
    pub groups: Vec<QueueGroup<T>>,
}

/// The members of one queue group that a subject matches.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueGroup<T> {
    /// The group's name.
    pub name: Arc<str>,
    /// Its matching members; never empty.
    pub members: Vec<T>,
}

impl<T> Default for MatchResult<T> {
    fn default() -> Self {
        Self {
            plain: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<T: PartialEq + Clone> MatchResult<T> {
    /// True if nothing matches.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }

    /// How many deliveries an event on this subject makes: one per plain
    /// subscription and one per group.
    pub fn delivery_count(&self) -> usize {
        self.plain.len() + self.groups.len()
    }

    fn add(&mut self, group: Option<&Arc<str>>, target: T) {
        match group {
            None => self.plain.push(target),
            Some(name) => match self.groups.iter_mut().find(|g| &g.name == name) {
                Some(existing) => existing.members.push(target),
                None => self.groups.push(QueueGroup {
                    name: name.clone(),
                    members: vec![target],
                }),
            },
        }
    }

    fn extend_from(&mut self, node: &Node<T>) {
        self.plain.extend(node.plain.iter().cloned());
        for group in &node.groups {
            for member in &group.members {
                self.add(Some(&group.name), member.clone());
            }
        }
    }
}

/// Subscriptions stored by pattern.
#[derive(Debug, Clone)]
pub struct Trie<T> {
    root: Level<T>,
    len: usize,
}

#[derive(Debug, Clone)]
struct Level<T> {
    literal: HashMap<Box<str>, Node<T>, TokenHasher>,
    single_wildcard: Option<Box<Node<T>>>,
    full_wildcard: Option<Box<Node<T>>>,
}

/// The subscriptions whose pattern ends at this token, and the level below.
#[derive(Debug, Clone)]
struct Node<T> {
    next: Option<Box<Level<T>>>,
    plain: Vec<T>,
    groups: Vec<QueueGroup<T>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Self {
            literal: HashMap::with_hasher(TokenHasher::default()),
            single_wildcard: None,
            full_wildcard: None,
        }
    }
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            next: None,
            plain: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.next.is_none() && self.plain.is_empty() && self.groups.is_empty()
    }
}

impl<T> Level<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.single_wildcard.is_none() && self.full_wildcard.is_none()
    }
}

impl<T> Default for Trie<T> {
    fn default() -> Self {
        Self {
            root: Level::default(),
            len: 0,
        }
    }
}

impl<T: PartialEq + Clone> Trie<T> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no subscription is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `target` under `pattern`, in `group` if given. The pattern must
    /// be valid (see [`subject::validate_pattern`]).
    pub fn insert(&mut self, pattern: &str, group: Option<&Arc<str>>, target: T) {
        let mut level = &mut self.root;
        let mut tokens = subject::tokens(pattern).peekable();
        loop {
            let token = tokens
                .next()
                .expect("a valid pattern has at least one token");
            let node = match token {
                SINGLE_WILDCARD => level
                    .single_wildcard
                    .get_or_insert_with(Box::default)
                    .as_mut(),
                FULL_WILDCARD => level
                    .full_wildcard
                    .get_or_insert_with(Box::default)
                    .as_mut(),
                literal => level.literal.entry(literal.into()).or_default(),
            };
            if tokens.peek().is_none() {
                match group {
                    None => node.plain.push(target),
                    Some(name) => match node.groups.iter_mut().find(|g| &g.name == name) {
                        Some(existing) => existing.members.push(target),
                        None => node.groups.push(QueueGroup {
                            name: name.clone(),
                            members: vec![target],
                        }),
                    },
                }
                self.len += 1;
                return;
            }
            level = node.next.get_or_insert_with(Box::default);
        }
    }

    /// Removes one `target` stored under `pattern` in `group`. Returns false if
    /// it was not there. Prunes the branches it leaves empty.
    pub fn remove(&mut self, pattern: &str, group: Option<&Arc<str>>, target: &T) -> bool {
        let tokens: Vec<&str> = subject::tokens(pattern).collect();
        let removed = remove_from(&mut self.root, &tokens, group, target);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Appends every subscription matching the published `subject` to `out`.
    pub fn match_into(&self, subject: &str, out: &mut MatchResult<T>) {
        // A stack array of tokens, as NATS does: no allocation for subjects of
        // up to 32 tokens, which is the default limit.
        let mut storage = [""; 32];
        let mut count = 0;
        for token in subject::tokens(subject) {
            if count == storage.len() {
                let all: Vec<&str> = subject::tokens(subject).collect();
                return match_level(&self.root, &all, out);
            }
            storage[count] = token;
            count += 1;
        }
        match_level(&self.root, &storage[..count], out);
    }

    /// Every subscription matching `subject`, in a fresh result.
    pub fn matches(&self, subject: &str) -> MatchResult<T> {
        let mut out = MatchResult::default();
        self.match_into(subject, &mut out);
        out
    }
}

fn match_level<T: PartialEq + Clone>(
    mut level: &Level<T>,
    tokens: &[&str],
    out: &mut MatchResult<T>,
) {
    for (index, token) in tokens.iter().enumerate() {
        let last = index + 1 == tokens.len();
        // `>` takes this token and all after it: at least one, which holds here.
        if let Some(node) = &level.full_wildcard {
            out.extend_from(node);
        }
        if let Some(node) = &level.single_wildcard {
            if last {
                out.extend_from(node);
            } else if let Some(next) = &node.next {
                match_level(next, &tokens[index + 1..], out);
            }
        }
        let Some(node) = level.literal.get(*token) else {
            return;
        };
        if last {
            out.extend_from(node);
            return;
        }
        match &node.next {
            Some(next) => level = next,
            None => return,
        }
    }
}

fn remove_from<T: PartialEq>(
    level: &mut Level<T>,
    tokens: &[&str],
    group: Option<&Arc<str>>,
    target: &T,
) -> bool {
    let Some((&token, rest)) = tokens.split_first() else {
        return false;
    };
    let node = match token {
        SINGLE_WILDCARD => level.single_wildcard.as_deref_mut(),
        FULL_WILDCARD => level.full_wildcard.as_deref_mut(),
        literal => level.literal.get_mut(literal),
    };
    let Some(node) = node else {
        return false;
    };
    let removed = if rest.is_empty() {
        remove_target(node, group, target)
    } else {
        match node.next.as_deref_mut() {
            Some(next) => {
                let removed = remove_from(next, rest, group, target);
                if next.is_empty() {
                    node.next = None;
                }
                removed
            }
            None => false,
        }
    };
    if removed && node.is_empty() {
        match token {
            SINGLE_WILDCARD => level.single_wildcard = None,
            FULL_WILDCARD => level.full_wildcard = None,
            literal => {
                level.literal.remove(literal);
            }
        }
    }
    removed
}

fn remove_target<T: PartialEq>(node: &mut Node<T>, group: Option<&Arc<str>>, target: &T) -> bool {
    let list = match group {
        None => &mut node.plain,
        Some(name) => match node.groups.iter_mut().position(|g| &g.name == name) {
            Some(index) => {
                let members = &mut node.groups[index].members;
                let Some(at) = members.iter().position(|t| t == target) else {
                    return false;
                };
                members.swap_remove(at);
                if members.is_empty() {
                    node.groups.swap_remove(index);
                }
                return true;
            }
            None => return false,
        },
    };
    match list.iter().position(|t| t == target) {
        Some(at) => {
            list.swap_remove(at);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v
    }

    #[test]
    fn matches_literals_and_wildcards() {
        let mut trie = Trie::new();
        trie.insert("orders.eu.created", None, 1);
        trie.insert("orders.*.created", None, 2);
        trie.insert("orders.>", None, 3);
        trie.insert(">", None, 4);
        trie.insert("orders.eu", None, 5);
        trie.insert("*.*.*", None, 6);
        assert_eq!(
            sorted(trie.matches("orders.eu.created").plain),
            vec![1, 2, 3, 4, 6]
        );
        assert_eq!(sorted(trie.matches("orders.eu").plain), vec![3, 4, 5]);
        assert_eq!(sorted(trie.matches("orders").plain), vec![4]);
        assert_eq!(
            sorted(trie.matches("orders.us.created.x").plain),
            vec![3, 4]
        );
        assert_eq!(trie.len(), 6);
    }

    #[test]
    fn groups_queue_members_by_name_across_patterns() {
        let mut trie = Trie::new();
        let workers: Arc<str> = "workers".into();
        let audit: Arc<str> = "audit".into();
        trie.insert("orders.>", Some(&workers), 1);
        trie.insert("orders.*.created", Some(&workers), 2);
        trie.insert("orders.eu.created", Some(&audit), 3);
        let result = trie.matches("orders.eu.created");
        assert!(result.plain.is_empty());
        assert_eq!(result.groups.len(), 2);
        let group = result.groups.iter().find(|g| g.name == workers).unwrap();
        assert_eq!(sorted(group.members.clone()), vec![1, 2]);
        assert_eq!(result.delivery_count(), 2);
    }

    #[test]
    fn remove_prunes_and_reports_absent_targets() {
        let mut trie = Trie::new();
        let group: Arc<str> = "g".into();
        trie.insert("a.b.c", None, 1);
        trie.insert("a.*.c", Some(&group), 2);
        assert!(!trie.remove("a.b.c", None, &9));
        assert!(!trie.remove("a.b", None, &1));
        assert!(!trie.remove("a.*.c", None, &2), "wrong group");
        assert!(trie.remove("a.b.c", None, &1));
        assert!(trie.remove("a.*.c", Some(&group), &2));
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "empty branches are pruned");
    }

    #[test]
    fn the_same_target_may_be_stored_twice() {
        let mut trie = Trie::new();
        trie.insert("a", None, 1);
        trie.insert("a", None, 1);
        assert_eq!(trie.matches("a").plain, vec![1, 1]);
        assert!(trie.remove("a", None, &1));
        assert_eq!(trie.matches("a").plain, vec![1]);
    }
}
