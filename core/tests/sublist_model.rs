//! The subscription index against a linear scan with the reference matcher.
//!
//! Random operations (subscribe with or without a queue group, unsubscribe,
//! look up) run against the index (through a cached, patched reader) and the
//! plain trie, and every lookup must equal what a linear scan of the live
//! subscriptions with `pattern_matches` gives. The token alphabet is tiny so
//! that patterns and subjects collide often.

use std::sync::Arc;

use proptest::prelude::*;
use starling_core::subject::pattern_matches;
use starling_core::sublist::{MatchResult, Trie, index};

#[derive(Debug, Clone)]
enum Op {
    Subscribe { pattern: String, group: Option<u8> },
    Unsubscribe { pick: usize },
    Lookup { subject: String },
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from)
}

fn subject() -> impl Strategy<Value = String> {
    prop::collection::vec(literal(), 1..5).prop_map(|tokens| tokens.join("."))
}

fn pattern() -> impl Strategy<Value = String> {
    let token = prop_oneof![4 => literal(), 2 => Just("*".to_string())];
    (prop::collection::vec(token, 1..5), any::<bool>()).prop_map(|(mut tokens, full)| {
        if full {
            *tokens.last_mut().unwrap() = ">".into();
        }
        tokens.join(".")
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (pattern(), prop::option::of(0u8..3)).prop_map(|(pattern, group)| Op::Subscribe { pattern, group }),
        1 => any::<usize>().prop_map(|pick| Op::Unsubscribe { pick }),
        4 => subject().prop_map(|subject| Op::Lookup { subject }),
    ]
}

struct Live {
    id: u32,
    pattern: Arc<str>,
    group: Option<Arc<str>>,
}

/// The expected result for `subject`, normalized for comparison.
fn expected(live: &[Live], subject: &str) -> Normalized {
    let mut result = MatchResult::default();
    for sub in live.iter().filter(|s| pattern_matches(&s.pattern, subject)) {
        result.plain.push(sub.id);
        if let Some(group) = &sub.group {
            result.plain.pop();
            match result
                .groups
                .iter_mut()
                .find(|g: &&mut starling_core::sublist::QueueGroup<u32>| &g.name == group)
            {
                Some(g) => g.members.push(sub.id),
                None => result.groups.push(starling_core::sublist::QueueGroup {
                    name: group.clone(),
                    members: vec![sub.id],
                }),
            }
        }
    }
    normalize(&result)
}

type Normalized = (Vec<u32>, Vec<(String, Vec<u32>)>);

fn normalize(result: &MatchResult<u32>) -> Normalized {
    let mut plain = result.plain.clone();
    plain.sort_unstable();
    let mut groups: Vec<(String, Vec<u32>)> = result
        .groups
        .iter()
        .map(|g| {
            let mut members = g.members.clone();
            members.sort_unstable();
            (g.name.to_string(), members)
        })
        .collect();
    groups.sort();
    (plain, groups)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn index_and_trie_agree_with_a_linear_scan(ops in prop::collection::vec(op(), 1..120)) {
        let (mut writer, readers) = index::new::<u32>();
        // A small cache so that eviction is exercised too.
        let mut reader = readers.reader(8);
        let mut trie = Trie::new();
        let mut live: Vec<Live> = Vec::new();
        let mut next_id = 0;
        for op in ops {
            match op {
                Op::Subscribe { pattern, group } => {
                    let pattern: Arc<str> = pattern.into();
                    let group: Option<Arc<str>> = group.map(|g| format!("g{g}").into());
                    writer.insert(pattern.clone(), group.clone(), next_id);
                    trie.insert(&pattern, group.as_ref(), next_id);
                    live.push(Live { id: next_id, pattern, group });
                    next_id += 1;
                }
                Op::Unsubscribe { pick } => {
                    if live.is_empty() {
                        continue;
                    }
                    let sub = live.swap_remove(pick % live.len());
                    writer.remove(sub.pattern.clone(), sub.group.clone(), sub.id);
                    prop_assert!(trie.remove(&sub.pattern, sub.group.as_ref(), &sub.id));
                }
                Op::Lookup { subject } => {
                    let want = expected(&live, &subject);
                    prop_assert_eq!(&normalize(&trie.matches(&subject)), &want, "trie, subject {}", subject);
                    let got = normalize(reader.lookup(&subject).unwrap());
                    prop_assert_eq!(&got, &want, "cached index, subject {}", subject);
                }
            }
        }
        prop_assert_eq!(trie.len(), live.len());
        prop_assert_eq!(writer.len(), live.len());
    }
}
