//! Router merge: k-way merge of per-shard top-k lists.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::{Rng, SeedableRng};
use vitrine_proto::pb::ScoredItem;
use vitrine_router::merge::merge_top_k;

fn lists(shards: usize, per_shard: usize, rng: &mut impl Rng) -> Vec<Vec<ScoredItem>> {
    (0..shards)
        .map(|s| {
            let mut l: Vec<ScoredItem> = (0..per_shard)
                .map(|i| ScoredItem { id: format!("s{s}-i{i}"), score: rng.random(), ..Default::default() })
                .collect();
            l.sort_by(|a, b| b.score.total_cmp(&a.score));
            l
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut g = c.benchmark_group("merge_top_k");
    for (shards, k) in [(2, 10), (2, 100), (8, 100), (8, 1000)] {
        let input = lists(shards, k, &mut rng);
        g.bench_with_input(BenchmarkId::from_parameter(format!("{shards}x{k}")), &input, |b, input| {
            b.iter_batched(|| input.clone(), |l| merge_top_k(l, k), criterion::BatchSize::SmallInput)
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
