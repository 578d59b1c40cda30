//! Subscription patterns and subjects for the index benchmarks.
//!
//! Subjects look like `region.service.entity.event` with four tokens. One
//! subscription in ten has a wildcard (`*` in a middle position, or a final
//! `>`), the rest are literal. Lookup subjects are drawn so that most match one
//! literal subscription plus whatever wildcards cover them.

/// The patterns of `count` subscriptions, 10% with wildcards.
pub fn patterns(count: usize) -> Vec<String> {
    let mut rng = SplitMix(0x5EED);
    (0..count)
        .map(|i| {
            let [a, b, c, d] = tokens(i, count);
            match i % 10 {
                0 => match rng.next_u64() % 3 {
                    0 => format!("{a}.*.{c}.{d}"),
                    1 => format!("{a}.{b}.*.{d}"),
                    _ => format!("{a}.{b}.>"),
                },
                _ => format!("{a}.{b}.{c}.{d}"),
            }
        })
        .collect()
}

/// `count` published subjects spread over the same token space as
/// [`patterns`] for `subscriptions` subscriptions.
pub fn subjects(count: usize, subscriptions: usize) -> Vec<String> {
    let mut rng = SplitMix(0xC0FFEE);
    (0..count)
        .map(|_| {
            let i = (rng.next_u64() as usize) % subscriptions;
            let [a, b, c, d] = tokens(i, subscriptions);
            format!("{a}.{b}.{c}.{d}")
        })
        .collect()
}

/// The four tokens of item `i` of `n`: 10 regions, 20 services, then
/// entities and events enough to make every item distinct.
fn tokens(i: usize, n: usize) -> [String; 4] {
    let entities = (n / 200).max(1);
    [
        format!("r{}", i % 10),
        format!("svc{}", (i / 10) % 20),
        format!("e{}", (i / 200) % entities),
        format!("ev{}", i / (200 * entities)),
    ]
}

/// A tiny deterministic generator (SplitMix64), so workloads are the same in
/// every run.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn literal_patterns_are_distinct_and_one_in_ten_has_a_wildcard() {
        let patterns = patterns(10_000);
        let (wild, literal): (Vec<_>, Vec<_>) = patterns
            .iter()
            .partition(|p| p.contains('*') || p.contains('>'));
        assert_eq!(wild.len(), 1_000);
        let distinct: HashSet<_> = literal.iter().collect();
        assert_eq!(distinct.len(), literal.len());
    }

    #[test]
    fn most_subjects_have_a_literal_subscription() {
        let patterns: HashSet<_> = patterns(1000).into_iter().collect();
        let matched = subjects(100, 1000)
            .iter()
            .filter(|s| patterns.contains(*s))
            .count();
        assert!(
            matched >= 85,
            "{matched} of 100 subjects have a literal subscription"
        );
    }
}
