//! Subject matching: the trie uncached, and through a publisher's cached index
//! reader, at 10k, 100k and 1M subscriptions with 10% wildcards. The 10k case
//! also runs the reference linear scan as the baseline.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use starling_bench::workload;
use starling_core::subject::pattern_matches;
use starling_core::sublist::{MatchResult, Trie, index};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("sublist/match");
    group.sample_size(20);
    for subscriptions in [10_000, 100_000, 1_000_000] {
        let patterns = workload::patterns(subscriptions);
        // 1000 distinct subjects in rotation: a hot set that fits the cache.
        let subjects = workload::subjects(1000, subscriptions);
        let mut trie = Trie::new();
        let (mut writer, readers) = index::new::<u32>();
        for (id, pattern) in patterns.iter().enumerate() {
            trie.insert(pattern, None, id as u32);
            writer.insert(Arc::from(pattern.as_str()), None, id as u32);
        }
        // Check before timing: the trie agrees with the reference matcher.
        if subscriptions == 10_000 {
            for subject in &subjects[..50] {
                let expected = patterns
                    .iter()
                    .filter(|p| pattern_matches(p, subject))
                    .count();
                assert_eq!(trie.matches(subject).plain.len(), expected);
            }
        }
        assert!(!trie.matches(&subjects[0]).is_empty());
        group.throughput(Throughput::Elements(1));
        let mut result = MatchResult::default();
        let mut next = 0;
        group.bench_function(BenchmarkId::new("trie_uncached", subscriptions), |b| {
            b.iter(|| {
                next = (next + 1) % subjects.len();
                result.plain.clear();
                result.groups.clear();
                trie.match_into(black_box(&subjects[next]), &mut result);
                result.plain.len()
            })
        });
        let mut reader = readers.reader(1024);
        group.bench_function(BenchmarkId::new("index_cached", subscriptions), |b| {
            b.iter(|| {
                next = (next + 1) % subjects.len();
                reader
                    .lookup(black_box(&subjects[next]))
                    .unwrap()
                    .plain
                    .len()
            })
        });
        if subscriptions == 10_000 {
            group.bench_function(
                BenchmarkId::new("baseline_linear_scan", subscriptions),
                |b| {
                    b.iter(|| {
                        next = (next + 1) % subjects.len();
                        patterns
                            .iter()
                            .filter(|p| pattern_matches(p, black_box(&subjects[next])))
                            .count()
                    })
                },
            );
        }
        drop(writer);
    }
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
