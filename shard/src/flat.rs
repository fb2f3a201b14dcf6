//! A flattened, read-only copy of an `hnsw_rs` graph, searched without the
//! costs that make `hnsw_rs` 2.5–7× slower than hnswlib at equal recall.
//!
//! `hnsw_rs` keeps every point behind an `Arc`, every neighbour list behind a
//! `RwLock` of `Arc`s (one pointer chase and one reference-count update per
//! edge visited), and tracks visited points in a fresh `HashMap` per search.
//! None of that is needed once the graph stops changing, so [`FlatIndex`]
//! copies the graph into plain arrays:
//!
//! - the vectors, one contiguous `n × dim` block of `f32`, row = dense index;
//! - per layer, a fixed-stride adjacency table of `u32` (count, then links),
//!   like hnswlib's: a row's count and its links share a cache line, where a
//!   CSR layout would need a second array (the offsets) for every expansion;
//! - dense index → external [`PointId`].
//!
//! Dense indices are assigned top level first, so the points present on layer
//! `l` are exactly the dense prefix `0..rows(l)`: upper layers need no id map.
//! Searches reuse a per-thread visited set of generation stamps and per-thread
//! heaps, so a search allocates only for its result.
//!
//! The copy does not follow later inserts; the owner rebuilds it when the
//! graph has changed enough to matter.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use hnsw_rs::prelude::{DistDot, Hnsw};

use crate::index::{HnswIndex, PointId};

/// Why a graph could not be flattened.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    /// Dense indices are `u32` to halve the size of the adjacency tables.
    #[error("{0} points do not fit a u32-indexed flat graph")]
    TooManyPoints(usize),
    /// The graph holds vectors of different lengths, which `hnsw_rs` allows
    /// but a contiguous `n × dim` block cannot represent.
    #[error("point {id} has {found} dimensions, the first point has {expected}")]
    RaggedDimensions {
        /// External id of the offending point.
        id: PointId,
        /// Dimension of the first point copied.
        expected: usize,
        /// Dimension of the offending point.
        found: usize,
    },
}

/// One layer's adjacency: row `i` is `data[i * stride..]`, its first entry
/// the number of links, then the links (dense indices with a row here).
struct Layer {
    stride: usize,
    data: Vec<u32>,
}

impl Layer {
    #[inline]
    fn links(&self, i: u32) -> &[u32] {
        let start = i as usize * self.stride;
        let row = &self.data[start..start + self.stride];
        // The count was written by `from_hnsw` and is below the stride.
        let count = row[0] as usize;
        &row[1..1 + count]
    }
}

/// A read-only HNSW graph in flat arrays; see the module docs for why.
pub struct FlatIndex {
    dim: usize,
    vectors: Vec<f32>,
    external: Vec<PointId>,
    /// `layers[l]` has a row for each dense index in `0..rows(l)`; empty when
    /// the index is empty.
    layers: Vec<Layer>,
    /// With [`FlatIndex::quantize`]: int8 codes the graph walk scores with.
    codes: Option<Codes>,
}

/// Scalar-quantised vectors: vector `i` ≈ scale × code, one scale per vector
/// (its largest absolute component / 127), so every code uses the full int8
/// range whatever the vector's spread. A quarter of the bytes of the `f32`
/// rows, so the walk's cache misses fetch four times fewer lines, and the
/// integer dot product vectorises without reordering concerns; the results
/// are re-scored exactly (see `search_with`).
///
/// Each row holds the scale (4 little-endian bytes) and then the codes, so
/// scoring a neighbour touches one region of memory: with the scales in an
/// array of their own, each neighbour cost one more cache miss. Moving the
/// scale into the row made the int8 walk about 1.26× faster on 50-d vectors
/// and 7–12% faster on 384-d ones (docs/PERFORMANCE.md).
struct Codes {
    /// `n` rows of [`Codes::SCALE_BYTES`] + `dim` bytes.
    data: Vec<i8>,
    stride: usize,
}

impl Codes {
    const SCALE_BYTES: usize = size_of::<f32>();

    fn of(vectors: &[f32], dim: usize) -> Self {
        let stride = Self::SCALE_BYTES + dim;
        if dim == 0 {
            // An empty copy (dimension 0): nothing to code.
            return Self { data: Vec::new(), stride };
        }
        let n = vectors.len() / dim;
        let mut data = vec![0i8; n * stride];
        for (row, out) in vectors.chunks_exact(dim).zip(data.chunks_exact_mut(stride)) {
            let (scale, code) = out.split_at_mut(Self::SCALE_BYTES);
            let s = quantize_into(row, code);
            for (b, x) in scale.iter_mut().zip(s.to_le_bytes()) {
                *b = x as i8;
            }
        }
        Self { data, stride }
    }

    /// Row `i`: its scale and its codes.
    #[inline]
    fn row(&self, i: u32) -> (f32, &[i8]) {
        let start = i as usize * self.stride;
        let row = &self.data[start..start + self.stride];
        let (scale, code) = row.split_at(Self::SCALE_BYTES);
        let scale = f32::from_le_bytes([scale[0] as u8, scale[1] as u8, scale[2] as u8, scale[3] as u8]);
        (scale, code)
    }
}

/// Writes `v`'s int8 codes into `out` and returns their scale.
fn quantize_into(v: &[f32], out: &mut [i8]) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        out.fill(0);
        return 0.0;
    }
    let scale = max / 127.0;
    for (o, x) in out.iter_mut().zip(v) {
        *o = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// A dense index with its distance to the query, ordered by distance and then
/// by index so heap order is total and deterministic.
#[derive(Clone, Copy, PartialEq)]
struct Scored {
    dist: f32,
    id: u32,
}

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.dist.total_cmp(&other.dist).then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Per-thread search state, kept between searches so that none allocates.
#[derive(Default)]
struct Scratch {
    /// `stamps[i] == generation` means dense index `i` was visited by the
    /// current search; bumping the generation clears the set in O(1).
    stamps: Vec<u32>,
    generation: u32,
    candidates: BinaryHeap<Reverse<Scored>>,
    results: BinaryHeap<Scored>,
    /// The links of the candidate being expanded that were not yet visited.
    fresh: Vec<u32>,
    /// The query's int8 codes (quantised indexes).
    qcode: Vec<i8>,
}

impl Scratch {
    /// Starts a search over `n` points with an empty visited set.
    fn begin(&mut self, n: usize) {
        if self.stamps.len() < n {
            self.stamps.resize(n, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Wrapped: old stamps could equal new generations; clear them once.
            self.stamps.fill(0);
            self.generation = 1;
        }
        self.candidates.clear();
        self.results.clear();
    }

    /// Marks `i` visited; returns whether it was not visited before.
    #[inline]
    fn visit(&mut self, i: u32) -> bool {
        let stamp = &mut self.stamps[i as usize];
        let fresh = *stamp != self.generation;
        *stamp = self.generation;
        fresh
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl FlatIndex {
    /// Copies the graph of `index` (a snapshot: points inserted concurrently
    /// may be missing, and links to them are dropped).
    pub fn from_hnsw(index: &HnswIndex) -> Result<Self, FlattenError> {
        Self::from_graph(index.graph())
    }

    /// Copies an `hnsw_rs` graph; see [`FlatIndex::from_hnsw`].
    pub fn from_graph(graph: &Hnsw<'_, f32, DistDot>) -> Result<Self, FlattenError> {
        let indexation = graph.get_point_indexation();
        let top = usize::from(indexation.get_max_level_observed());
        // hnsw_rs files each point under its highest level, in insertion order.
        // Taking levels top-down puts the entry point (the first point to reach
        // the top level) at dense index 0 and makes each layer a dense prefix.
        let mut points = Vec::new();
        let mut level_start = vec![0usize; top + 1];
        let mut level_len = vec![0usize; top + 1];
        for level in (0..=top).rev() {
            level_start[level] = points.len();
            points.extend(indexation.get_layer_iterator(level));
            level_len[level] = points.len() - level_start[level];
        }
        let n = points.len();
        if u32::try_from(n).is_err() {
            return Err(FlattenError::TooManyPoints(n));
        }
        if n == 0 {
            return Ok(Self { dim: 0, vectors: Vec::new(), external: Vec::new(), layers: Vec::new(), codes: None });
        }
        // rows[l]: how many points are present on layer l (those of level >= l).
        let rows: Vec<usize> = (0..=top).map(|l| level_start[l] + level_len[l]).collect();
        let dense = |level: u8, rank: i32| -> Option<u32> {
            let level = usize::from(level);
            let rank = usize::try_from(rank).ok()?;
            (level <= top && rank < level_len[level]).then(|| (level_start[level] + rank) as u32)
        };

        let dim = points[0].get_v().len();
        // links[i][l]: point i's links on layer l, as dense indices.
        let mut links: Vec<Vec<Vec<u32>>> = Vec::with_capacity(n);
        let mut max_degree = vec![0usize; top + 1];
        for point in &points {
            let found = point.get_v().len();
            if found != dim {
                return Err(FlattenError::RaggedDimensions { id: point.get_origin_id(), expected: dim, found });
            }
            let level = usize::from(point.get_point_id().0).min(top);
            let hood = point.get_neighborhood_id();
            let mut own = Vec::with_capacity(level + 1);
            for (l, max) in max_degree.iter_mut().enumerate().take(level + 1) {
                let layer_links: Vec<u32> = hood
                    .get(l)
                    .into_iter()
                    .flatten()
                    .filter_map(|nb| dense(nb.p_id.0, nb.p_id.1))
                    // A link must have a row on this layer to be followed.
                    .filter(|&j| (j as usize) < rows[l])
                    .collect();
                *max = (*max).max(layer_links.len());
                own.push(layer_links);
            }
            links.push(own);
        }

        let mut vectors = Vec::with_capacity(n * dim);
        let mut external = Vec::with_capacity(n);
        let mut layers: Vec<Layer> = (0..=top)
            .map(|l| {
                let stride = 1 + max_degree[l];
                Layer { stride, data: vec![0u32; rows[l] * stride] }
            })
            .collect();
        for (i, (point, own)) in points.iter().zip(&links).enumerate() {
            vectors.extend_from_slice(point.get_v());
            external.push(point.get_origin_id());
            for (layer, layer_links) in layers.iter_mut().zip(own) {
                let row = &mut layer.data[i * layer.stride..(i + 1) * layer.stride];
                row[0] = layer_links.len() as u32;
                row[1..1 + layer_links.len()].copy_from_slice(layer_links);
            }
        }
        Ok(Self { dim, vectors, external, layers, codes: None })
    }

    /// Adds int8 codes: the graph walk then scores with them and the `ef`
    /// results are re-scored with the `f32` vectors before the best `k` are
    /// kept, so returned distances are exact.
    pub fn quantize(&mut self) {
        self.codes = Some(Codes::of(&self.vectors, self.dim));
    }

    /// Whether searches walk the graph on int8 codes.
    pub fn is_quantized(&self) -> bool {
        self.codes.is_some()
    }

    /// External ids of the copied points, in dense order.
    #[cfg(test)]
    pub(crate) fn point_ids(&self) -> &[PointId] {
        &self.external
    }

    /// Points copied.
    pub fn len(&self) -> usize {
        self.external.len()
    }

    /// Whether the copied graph was empty.
    pub fn is_empty(&self) -> bool {
        self.external.is_empty()
    }

    /// Vector length; 0 for an empty index.
    pub fn dimension(&self) -> usize {
        self.dim
    }

    /// Heap bytes this copy holds (the capacities of its vectors, id map and
    /// adjacency tables), so benchmarks can report its memory per vector next
    /// to the RSS growth of the `hnsw_rs` graph it was copied from. Excludes
    /// the per-thread search scratch (4 bytes per point per searching thread).
    pub fn memory_bytes(&self) -> usize {
        let layers: usize = self.layers.iter().map(|l| l.data.capacity() * size_of::<u32>()).sum();
        let codes = self.codes.as_ref().map_or(0, |c| c.data.capacity());
        codes
            + self.vectors.capacity() * size_of::<f32>()
            + self.external.capacity() * size_of::<PointId>()
            + self.layers.capacity() * size_of::<Layer>()
            + layers
    }

    /// Up to `k` points the predicate accepts (all when `None`), best first,
    /// as (external id, 1 − dot), with the contract of
    /// [`crate::index::VectorIndex::search`]: rejected points are traversed
    /// but not returned. `ef` is raised to `k`. A query of the wrong
    /// dimension matches nothing.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(PointId) -> bool>,
    ) -> Vec<(PointId, f32)> {
        if k == 0 || self.is_empty() || query.len() != self.dim {
            return Vec::new();
        }
        let ef = ef.max(k);
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.search_with(&mut scratch, query, k, ef, accept),
            // A predicate that itself searches on this thread: use a fresh set.
            Err(_) => self.search_with(&mut Scratch::default(), query, k, ef, accept),
        })
    }

    #[inline]
    fn distance(&self, query: &[f32], i: u32) -> f32 {
        let start = i as usize * self.dim;
        1.0 - dot(query, &self.vectors[start..start + self.dim])
    }

    fn search_with(
        &self,
        scratch: &mut Scratch,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(PointId) -> bool>,
    ) -> Vec<(PointId, f32)> {
        let Some(codes) = &self.codes else {
            let exact = Exact { flat: self, query };
            let mut hits = self.walk(scratch, &exact, ef, accept);
            hits.truncate(k);
            return hits.into_iter().map(|s| (self.external[s.id as usize], s.dist)).collect();
        };
        let mut qcode = std::mem::take(&mut scratch.qcode);
        qcode.resize(self.dim, 0);
        let qscale = quantize_into(query, &mut qcode);
        let approx = Approx { codes, query: &qcode, scale: qscale };
        let mut hits = self.walk(scratch, &approx, ef, accept);
        scratch.qcode = qcode;
        // Exact re-scoring of the ef results: the codes rank near-ties
        // slightly wrong, the f32 dot product puts the best k back in order.
        for h in &mut hits {
            h.dist = self.distance(query, h.id);
        }
        hits.sort_unstable();
        hits.truncate(k);
        hits.into_iter().map(|s| (self.external[s.id as usize], s.dist)).collect()
    }

    /// The HNSW search proper with `metric`'s distances: greedy descent
    /// through the upper layers, then the beam search on layer 0. Returns up
    /// to `ef` accepted points, best first.
    fn walk<M: Metric>(
        &self,
        scratch: &mut Scratch,
        metric: &M,
        ef: usize,
        accept: Option<&dyn Fn(PointId) -> bool>,
    ) -> Vec<Scored> {
        // Greedy descent through the upper layers (ef = 1) from the entry point.
        let mut current = 0u32;
        let mut current_dist = metric.distance(current);
        for layer in self.layers.iter().skip(1).rev() {
            let mut improved = true;
            while improved {
                improved = false;
                for &nb in layer.links(current) {
                    let d = metric.distance(nb);
                    if d < current_dist {
                        current_dist = d;
                        current = nb;
                        improved = true;
                    }
                }
            }
        }

        // Best-first beam search on layer 0, as hnswlib's searchBaseLayerST:
        // every point is a candidate, only accepted points are results, and
        // with a predicate the search goes on until it has `ef` results.
        let accepted = |i: u32| accept.is_none_or(|f| f(self.external[i as usize]));
        scratch.begin(self.len());
        scratch.visit(current);
        scratch.candidates.push(Reverse(Scored { dist: current_dist, id: current }));
        if accepted(current) {
            scratch.results.push(Scored { dist: current_dist, id: current });
        }
        let mut bound = scratch.results.peek().map_or(f32::INFINITY, |s| s.dist);
        let base = &self.layers[0];
        while let Some(Reverse(candidate)) = scratch.candidates.pop() {
            if candidate.dist > bound && (scratch.results.len() >= ef || accept.is_none()) {
                break;
            }
            // Unvisited links first; then one load from each of their vectors, so
            // that the cache misses are in flight together before the dot
            // products, which would otherwise wait for one vector's first line
            // at a time (+25-35% QPS on 384-d MiniLM vectors). hnswlib uses a
            // prefetch instruction here, which needs `unsafe` (forbidden in
            // this crate).
            let mut fresh = std::mem::take(&mut scratch.fresh);
            fresh.clear();
            fresh.extend(base.links(candidate.id).iter().copied().filter(|&nb| scratch.visit(nb)));
            let mut touched = 0f32;
            for &nb in &fresh {
                touched += metric.touch(nb);
            }
            std::hint::black_box(touched);
            for &nb in &fresh {
                let d = metric.distance(nb);
                if scratch.results.len() < ef || d < bound {
                    scratch.candidates.push(Reverse(Scored { dist: d, id: nb }));
                    if accepted(nb) {
                        scratch.results.push(Scored { dist: d, id: nb });
                        if scratch.results.len() > ef {
                            scratch.results.pop();
                        }
                    }
                    if let Some(worst) = scratch.results.peek() {
                        bound = worst.dist;
                    }
                }
            }
            scratch.fresh = fresh;
        }

        let mut hits: Vec<Scored> = scratch.results.drain().collect();
        hits.sort_unstable();
        hits
    }
}

/// How the walk scores a dense index against the query, and how it touches
/// that index's vector early (see the comment in `walk`). Generic rather
/// than a `dyn` so that each metric's inner loop is compiled on its own.
trait Metric {
    fn distance(&self, i: u32) -> f32;
    fn touch(&self, i: u32) -> f32;
}

/// `1 − dot` on the `f32` vectors.
struct Exact<'a> {
    flat: &'a FlatIndex,
    query: &'a [f32],
}

impl Metric for Exact<'_> {
    #[inline]
    fn distance(&self, i: u32) -> f32 {
        self.flat.distance(self.query, i)
    }

    #[inline]
    fn touch(&self, i: u32) -> f32 {
        self.flat.vectors[i as usize * self.flat.dim]
    }
}

/// `1 − dot` estimated from the int8 codes of the query and the point.
struct Approx<'a> {
    codes: &'a Codes,
    query: &'a [i8],
    scale: f32,
}

impl Metric for Approx<'_> {
    #[inline]
    fn distance(&self, i: u32) -> f32 {
        let (scale, code) = self.codes.row(i);
        1.0 - self.scale * scale * dot_i8(self.query, code) as f32
    }

    #[inline]
    fn touch(&self, i: u32) -> f32 {
        f32::from(self.codes.data[i as usize * self.codes.stride])
    }
}

/// Integer dot product of two code rows (`vitrine_kernels`: AVX2 where the
/// CPU has it).
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    vitrine_kernels::dot_i8(a, b)
}

/// Dot product (`vitrine_kernels`: sixteen independent accumulators, so the
/// compiler vectorises without fast-math; AVX2 where the CPU has it, with
/// the same result bit for bit, since each lane adds in the same order).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    vitrine_kernels::dot(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{IndexParams, VectorIndex};
    use rand::{Rng, SeedableRng};

    fn unit(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        crate::embed::normalize(&mut v);
        v
    }

    /// An hnsw_rs index over `n` random unit vectors, with external ids
    /// `id(i)`, and the vectors.
    fn build(n: usize, dim: usize, seed: u64, id: impl Fn(usize) -> usize) -> (HnswIndex, Vec<Vec<f32>>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let index = HnswIndex::new(&IndexParams { m: 16, ef_construction: 100, ef_search: 64, expected_points: n });
        let vs: Vec<Vec<f32>> = (0..n).map(|_| unit(&mut rng, dim)).collect();
        for (i, v) in vs.iter().enumerate() {
            index.insert(id(i), v);
        }
        (index, vs)
    }

    fn brute_force(vs: &[Vec<f32>], q: &[f32], k: usize) -> Vec<usize> {
        let mut all: Vec<(f32, usize)> = vs.iter().enumerate().map(|(i, v)| (1.0 - dot(q, v), i)).collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        all.into_iter().take(k).map(|(_, i)| i).collect()
    }

    fn recall(hits: &[(PointId, f32)], truth: &[usize]) -> usize {
        hits.iter().filter(|(id, _)| truth.contains(id)).count()
    }

    #[test]
    fn recall_matches_hnsw_rs_at_the_same_ef() {
        let (index, vs) = build(5000, 64, 11, |i| i);
        let flat = FlatIndex::from_hnsw(&index).expect("flatten");
        assert_eq!(flat.len(), 5000);
        assert_eq!(flat.dimension(), 64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let queries: Vec<Vec<f32>> = (0..200).map(|_| unit(&mut rng, 64)).collect();
        let truth: Vec<Vec<usize>> = queries.iter().map(|q| brute_force(&vs, q, 10)).collect();
        for ef in [16, 64] {
            let (mut ours, mut theirs) = (0, 0);
            for (q, t) in queries.iter().zip(&truth) {
                ours += recall(&flat.search(q, 10, ef, None), t);
                theirs += recall(&index.search(q, 10, ef, None), t);
            }
            let (ours, theirs) = (ours as f64 / 2000.0, theirs as f64 / 2000.0);
            assert!(ours >= theirs - 0.01, "ef {ef}: flat recall {ours:.3} < hnsw_rs recall {theirs:.3} - 0.01");
        }
    }

    #[test]
    fn results_are_sorted_distinct_and_keep_external_ids() {
        let (index, vs) = build(1000, 32, 3, |i| i * 3 + 7);
        let flat = FlatIndex::from_hnsw(&index).expect("flatten");
        let mut self_found = 0;
        for (i, v) in vs.iter().enumerate() {
            let hits = flat.search(v, 10, 32, None);
            assert_eq!(hits.len(), 10);
            assert!(hits.windows(2).all(|w| w[0].1 <= w[1].1), "unsorted: {hits:?}");
            let mut ids: Vec<PointId> = hits.iter().map(|h| h.0).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), 10);
            assert!(ids.iter().all(|id| id % 3 == 1 && (id - 7) / 3 < 1000));
            self_found += usize::from(hits[0].0 == i * 3 + 7);
        }
        assert!(self_found >= 990, "self-recall {self_found}/1000");
    }

    #[test]
    fn predicate_is_respected() {
        let (index, vs) = build(2000, 32, 5, |i| i);
        let flat = FlatIndex::from_hnsw(&index).expect("flatten");
        let even = |id: PointId| id.is_multiple_of(2);
        let mut found = 0;
        for v in vs.iter().take(100) {
            let hits = flat.search(v, 10, 64, Some(&even));
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|(id, _)| even(*id)));
            assert!(hits.windows(2).all(|w| w[0].1 <= w[1].1));
            let evens: Vec<Vec<f32>> = vs.iter().step_by(2).cloned().collect();
            let truth: Vec<usize> = brute_force(&evens, v, 10).into_iter().map(|i| i * 2).collect();
            found += recall(&hits, &truth);
        }
        assert!(found >= 950, "filtered recall {found}/1000");
        // A predicate that rejects everything returns nothing (after a full walk).
        assert!(flat.search(&vs[0], 10, 64, Some(&|_| false)).is_empty());
    }

    #[test]
    fn empty_index_and_small_index() {
        let empty = HnswIndex::new(&IndexParams::default());
        let mut flat = FlatIndex::from_hnsw(&empty).expect("flatten");
        assert!(flat.is_empty());
        assert!(flat.search(&[1.0, 0.0], 5, 10, None).is_empty());
        flat.quantize();
        assert!(flat.search(&[1.0, 0.0], 5, 10, None).is_empty());

        let (index, vs) = build(5, 8, 9, |i| 100 + i);
        for coded in [false, true] {
            let mut flat = FlatIndex::from_hnsw(&index).expect("flatten");
            if coded {
                flat.quantize();
            }
            let hits = flat.search(&vs[2], 10, 4, None);
            assert_eq!(hits.len(), 5);
            assert_eq!(hits[0].0, 102);
            let mut ids: Vec<PointId> = hits.iter().map(|h| h.0).collect();
            ids.sort_unstable();
            assert_eq!(ids, vec![100, 101, 102, 103, 104]);
            assert!(flat.search(&vs[2], 0, 4, None).is_empty());
            assert!(flat.search(&[1.0; 3], 3, 4, None).is_empty(), "wrong dimension matches nothing");
        }
    }

    #[test]
    fn a_predicate_may_search_the_same_thread() {
        let (index, vs) = build(300, 16, 21, |i| i);
        let flat = FlatIndex::from_hnsw(&index).expect("flatten");
        let nested = |id: PointId| flat.search(&vs[id], 1, 8, None).first().is_some_and(|h| h.0 == id);
        let hits = flat.search(&vs[0], 5, 16, Some(&nested));
        assert!(!hits.is_empty());
    }

    #[test]
    fn int8_walk_keeps_recall_and_returns_exact_distances() {
        let (index, vs) = build(5000, 64, 31, |i| i);
        let flat = FlatIndex::from_hnsw(&index).expect("flatten");
        let mut q8 = FlatIndex::from_hnsw(&index).expect("flatten");
        q8.quantize();
        assert!(q8.is_quantized() && !flat.is_quantized());
        // Codes add a quarter of the f32 block (plus a scale per vector).
        assert_eq!(q8.memory_bytes() - flat.memory_bytes(), 5000 * 64 + 5000 * 4);
        let mut rng = rand::rngs::StdRng::seed_from_u64(32);
        let queries: Vec<Vec<f32>> = (0..200).map(|_| unit(&mut rng, 64)).collect();
        let truth: Vec<Vec<usize>> = queries.iter().map(|q| brute_force(&vs, q, 10)).collect();
        for ef in [16, 64] {
            let (mut exact, mut coded) = (0, 0);
            for (q, t) in queries.iter().zip(&truth) {
                exact += recall(&flat.search(q, 10, ef, None), t);
                let hits = q8.search(q, 10, ef, None);
                coded += recall(&hits, t);
                assert!(hits.windows(2).all(|w| w[0].1 <= w[1].1), "unsorted: {hits:?}");
                for (id, d) in &hits {
                    assert!((d - (1.0 - dot(q, &vs[*id]))).abs() < 1e-6, "distance of {id} is not exact");
                }
            }
            let (exact, coded) = (exact as f64 / 2000.0, coded as f64 / 2000.0);
            assert!(coded >= exact - 0.02, "ef {ef}: int8 recall {coded:.3} < f32 recall {exact:.3} - 0.02");
        }
        let even = |id: PointId| id.is_multiple_of(2);
        let hits = q8.search(&vs[1], 10, 64, Some(&even));
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|(id, _)| even(*id)));
    }

    #[test]
    fn int8_codes_round_trip_within_half_a_step() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let v = unit(&mut rng, 384);
        let mut code = vec![0i8; 384];
        let scale = quantize_into(&v, &mut code);
        assert!(code.iter().any(|&c| c.abs() == 127), "the largest component uses the full range");
        for (x, c) in v.iter().zip(&code) {
            assert!((x - scale * f32::from(*c)).abs() <= scale * 0.5 + 1e-7);
        }
        let mut zero = vec![1i8; 4];
        assert_eq!(quantize_into(&[0.0; 4], &mut zero), 0.0);
        assert_eq!(zero, [0; 4]);
        let (a, b): (Vec<i8>, Vec<i8>) = (
            (0..37i32).map(|i| (i * 7 % 255 - 127) as i8).collect(),
            (0..37i32).map(|i| (i * 13 % 255 - 127) as i8).collect(),
        );
        let naive: i32 = a.iter().zip(&b).map(|(x, y)| i32::from(*x) * i32::from(*y)).sum();
        assert_eq!(dot_i8(&a, &b), naive);
    }

    #[test]
    fn dot_matches_naive() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for dim in [1, 15, 16, 37, 384] {
            let (a, b) = (unit(&mut rng, dim), unit(&mut rng, dim));
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-5, "dim {dim}");
        }
    }
}
