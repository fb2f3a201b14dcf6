//! Approximate nearest-neighbour search behind a trait of our own, so the
//! graph implementation can change (a flattened copy for speed, a different
//! library) without touching the catalogue logic above it.
//!
//! The index knows only point numbers and vectors. Deletion, updates and
//! filters are the catalogue's business: `hnsw_rs` cannot delete, and its
//! filtered search sometimes ignores the filter (upstream issue #27), so the
//! catalogue tombstones points and re-checks every result.

use hnsw_rs::prelude::{DistDot, Hnsw};

/// Dense point number inside one index generation's id space.
pub type PointId = usize;

/// Graph parameters.
#[derive(Debug, Clone)]
pub struct IndexParams {
    /// Links per node (HNSW `M`). 16 is the usual recall/memory balance for
    /// 384-dimensional text embeddings.
    pub m: usize,
    /// Candidate list size while building; higher builds slower, better graphs.
    pub ef_construction: usize,
    /// Candidate list size while searching; raised to k when k is larger.
    pub ef_search: usize,
    /// Capacity hint for the first allocation.
    pub expected_points: usize,
}

impl Default for IndexParams {
    fn default() -> Self {
        Self { m: 16, ef_construction: 100, ef_search: 64, expected_points: 100_000 }
    }
}

/// A nearest-neighbour index over unit vectors, scored by dot product.
pub trait VectorIndex: Send + Sync {
    /// Adds a point. Ids must not repeat within one index.
    fn insert(&self, id: PointId, vector: &[f32]);
    /// Up to `k` points the predicate accepts (all points when `None`), best
    /// first, as (id, distance) with distance = 1 − dot. The predicate is a
    /// hint: callers re-check.
    fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(PointId) -> bool>,
    ) -> Vec<(PointId, f32)>;
    /// Points inserted (including those the catalogue has tombstoned).
    fn len(&self) -> usize;
    /// Whether no point was inserted.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sizes of the flat copy and of the points waiting for the next one,
    /// for an index that serves from a copy ([`crate::serving::ServingIndex`]);
    /// `None` for a bare graph.
    fn serving_stats(&self) -> Option<crate::serving::ServingStats> {
        None
    }
}

/// `hnsw_rs` with dot-product distance on unit vectors.
pub struct HnswIndex {
    graph: Hnsw<'static, f32, DistDot>,
}

/// Layers in the graph. 16 covers far more points than a shard holds
/// (layer sizes shrink by a factor of M per level).
const MAX_LAYERS: usize = 16;

impl HnswIndex {
    pub fn new(params: &IndexParams) -> Self {
        let graph =
            Hnsw::new(params.m, params.expected_points.max(1024), MAX_LAYERS, params.ef_construction, DistDot {});
        Self { graph }
    }

    /// Inserts many points on all cores (rayon, inside `hnsw_rs`): recovery
    /// and compaction build whole graphs, where one thread would leave the
    /// other cores idle.
    pub fn insert_parallel(&self, points: &[(PointId, &[f32])]) {
        let data: Vec<(&[f32], usize)> = points.iter().map(|&(id, v)| (v, id)).collect();
        self.graph.parallel_insert_slice(&data);
    }

    /// The `hnsw_rs` graph, for [`crate::flat::FlatIndex::from_hnsw`] to copy.
    pub(crate) fn graph(&self) -> &Hnsw<'static, f32, DistDot> {
        &self.graph
    }
}

impl VectorIndex for HnswIndex {
    fn insert(&self, id: PointId, vector: &[f32]) {
        self.graph.insert_slice((vector, id));
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(PointId) -> bool>,
    ) -> Vec<(PointId, f32)> {
        let hits = match accept {
            Some(accept) => {
                let filter = |id: &usize| accept(*id);
                self.graph.search_filter(query, k, ef.max(k), Some(&filter))
            }
            // hnsw_rs's unfiltered path is measurably faster (docs/PERFORMANCE.md).
            None => self.graph.search(query, k, ef.max(k)),
        };
        hits.into_iter().map(|n| (n.d_id, n.distance)).collect()
    }

    fn len(&self) -> usize {
        self.graph.get_nb_point()
    }
}

/// Dot product; the score of unit vectors (cosine similarity).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four accumulators let the compiler vectorise without fast-math.
    let mut acc = [0f32; 4];
    let chunks = a.len() / 4 * 4;
    for i in (0..chunks).step_by(4) {
        acc[0] += a[i] * b[i];
        acc[1] += a[i + 1] * b[i + 1];
        acc[2] += a[i + 2] * b[i + 2];
        acc[3] += a[i + 3] * b[i + 3];
    }
    let mut s = acc[0] + acc[1] + acc[2] + acc[3];
    for i in chunks..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn unit(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        crate::embed::normalize(&mut v);
        v
    }

    #[test]
    fn finds_each_point_by_its_own_vector() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let idx = HnswIndex::new(&IndexParams { expected_points: 2000, ..Default::default() });
        let vs: Vec<Vec<f32>> = (0..2000).map(|_| unit(&mut rng, 32)).collect();
        for (i, v) in vs.iter().enumerate() {
            idx.insert(i, v);
        }
        let found =
            vs.iter().enumerate().filter(|(i, v)| idx.search(v, 1, 64, None).first().map(|h| h.0) == Some(*i)).count();
        assert!(found >= 1980, "self-recall {found}/2000");
    }

    #[test]
    fn dot_matches_naive() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (a, b) = (unit(&mut rng, 37), unit(&mut rng, 37));
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-5);
    }
}
