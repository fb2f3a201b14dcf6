//! Shard-local search: the HNSW graph through the catalogue (tombstone and
//! filter re-checks included), on 20,000 random 384-d unit vectors.

use std::collections::HashSet;

use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use vitrine_proto::{filter::build, pb, Filter};
use vitrine_shard::catalog::{Catalog, CompactionPolicy, Constraint, StoredItem};
use vitrine_shard::embed::normalize;
use vitrine_shard::index::IndexParams;

const DIM: usize = 384;
const N: usize = 20_000;

fn unit(rng: &mut impl Rng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
    normalize(&mut v);
    v
}

fn bench(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let catalog =
        Catalog::new(DIM, IndexParams { expected_points: N, ..Default::default() }, CompactionPolicy::default());
    let items: Vec<StoredItem> = (0..N)
        .map(|i| StoredItem {
            item: pb::Item {
                id: format!("item-{i}"),
                attributes: Some(pb::Attributes { category: format!("c{}", i % 20), ..Default::default() }),
                ..Default::default()
            },
            vector: unit(&mut rng),
            modalities: Default::default(),
            version: 0,
        })
        .collect();
    catalog.upsert(items);
    let queries: Vec<Vec<f32>> = (0..256).map(|_| unit(&mut rng)).collect();
    let filter = Filter::from_proto(&build::matches("category", &["c3", "c7"])).expect("filter");
    let mut g = c.benchmark_group("catalog_search_20k_384d");
    let mut qi = 0;
    g.bench_function("k10", |b| {
        b.iter(|| {
            qi = (qi + 1) % queries.len();
            catalog.search(&queries[qi], 10, &Constraint::default())
        })
    });
    g.bench_function("k10_filter_10pct", |b| {
        let cons = Constraint { filter: Some(&filter), exclude: HashSet::new() };
        b.iter(|| {
            qi = (qi + 1) % queries.len();
            catalog.search(&queries[qi], 10, &cons)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
