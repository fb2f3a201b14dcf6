//! The index searches are served from: the `hnsw_rs` graph takes every
//! insert, and searches go to a flattened copy of it ([`FlatIndex`]) plus an
//! exact scan of the points inserted since that copy was taken (the *delta*).
//!
//! Why two structures: `hnsw_rs` builds incrementally and lets searches run
//! during inserts, but it searches 2.5–7× slower than hnswlib (per-edge
//! `Arc`s, a `HashMap` per search); the flat copy searches 2.4–3.5× faster
//! than the graph at equal recall (docs/PERFORMANCE.md) but cannot take
//! inserts. So writes go to the graph, reads to the copy, and the copy is
//! re-taken on a background thread as writes accumulate.
//!
//! Invariant: every inserted point is in the current copy or in the delta
//! (sometimes both, while a copy taken during inserts catches up; results
//! are de-duplicated). A point leaves the delta only when a copy taken after
//! its insert returned is installed, in the same critical section.
//!
//! When the delta is too long to scan cheaply (a bulk load outruns the
//! background copies) searches go to the graph itself, which holds every
//! point: slower, never wrong. Re-copying is rate-limited to a duty cycle so
//! that a steady stream of writes cannot keep a core busy copying.
//!
//! The copies run on one background thread (the *copier*) that keeps
//! copying, resting between copies, until the delta is short again. A write
//! or search that finds the delta long starts the copier if none runs, even
//! during a rest: the copier then waits the rest out. So once a bulk load
//! ends, an idle shard catches up on its own instead of waiting for the
//! next request, whose search would otherwise walk the slower graph.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::flat::{dot, FlatIndex};
use crate::index::{HnswIndex, IndexParams, PointId, VectorIndex};

/// When to re-take the flat copy and when to stop scanning the delta.
#[derive(Debug, Clone)]
pub struct FlattenPolicy {
    /// Re-copy in the background once this many points wait in the delta.
    pub flatten_after: usize,
    /// Above this many delta points searches use the graph instead of
    /// copy + scan. At 384 dimensions scanning 1,024 vectors costs about as
    /// much as one flat-graph search at ef = 64.
    pub max_delta_scan: usize,
    /// After a copy that took `t`, the next one waits `rest_factor × t`, so
    /// copying uses at most `1 / (1 + rest_factor)` of one core.
    pub rest_factor: u32,
    /// Give each copy int8 codes to walk the graph with (`--index-vectors
    /// int8`, [`FlatIndex::quantize`]); results are re-scored exactly.
    pub int8: bool,
}

impl Default for FlattenPolicy {
    fn default() -> Self {
        Self { flatten_after: 256, max_delta_scan: 1024, rest_factor: 3, int8: false }
    }
}

/// Longest rest between background copies, whatever the policy says.
const MAX_REST: Duration = Duration::from_secs(600);

/// Which structure answered a search (for tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The flat copy (if any) plus an exact scan of the delta.
    FlatAndDelta,
    /// The `hnsw_rs` graph: the delta was too long to scan.
    Graph,
}

/// Sizes of the two structures, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServingStats {
    /// Points in the installed flat copy.
    pub flat_points: usize,
    /// Points inserted since that copy was taken.
    pub delta_points: usize,
    /// Copies installed since start.
    pub flattens: u64,
}

/// The graph plus its flat copy and delta; see the module docs.
pub struct ServingIndex {
    inner: Arc<Inner>,
}

struct Inner {
    graph: HnswIndex,
    view: RwLock<View>,
    policy: FlattenPolicy,
    /// A copy is being taken (by the copier or [`ServingIndex::flatten_now`]).
    flattening: AtomicBool,
    /// The copier thread exists (copying, or waiting for its rest to end).
    copier: AtomicBool,
    /// The next background copy may not start before this.
    rest_until: Mutex<Instant>,
}

#[derive(Default)]
struct View {
    flat: Option<Arc<FlatIndex>>,
    /// Points the copy may lack, in insertion order.
    delta: Vec<(PointId, Box<[f32]>)>,
    flattens: u64,
}

impl ServingIndex {
    pub fn new(params: &IndexParams, policy: FlattenPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                graph: HnswIndex::new(params),
                view: RwLock::new(View::default()),
                policy,
                flattening: AtomicBool::new(false),
                copier: AtomicBool::new(false),
                rest_until: Mutex::new(Instant::now()),
            }),
        }
    }

    /// An index of many points at once, built on all cores and flattened
    /// before it is returned, so it serves from the fast path at once.
    pub fn build(params: &IndexParams, policy: FlattenPolicy, points: &[(PointId, &[f32])]) -> Self {
        let this = Self::new(params, policy);
        this.inner.graph.insert_parallel(points);
        this.flatten_now();
        this
    }

    /// Takes a fresh copy now, on this thread, unless a copy is being taken
    /// (then that one will do). For bulk builds, where the caller
    /// wants the fast path as soon as the build returns.
    pub fn flatten_now(&self) {
        if !self.inner.flattening.swap(true, Ordering::AcqRel) {
            self.inner.flatten();
        }
    }

    pub fn stats(&self) -> ServingStats {
        let v = self.inner.view.read();
        ServingStats {
            flat_points: v.flat.as_ref().map_or(0, |f| f.len()),
            delta_points: v.delta.len(),
            flattens: v.flattens,
        }
    }

    /// Like [`VectorIndex::search`], also saying which structure answered.
    pub fn search_with_path(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(PointId) -> bool>,
    ) -> (Vec<(PointId, f32)>, Path) {
        let view = self.inner.view.read();
        if view.delta.len() > self.inner.policy.max_delta_scan {
            drop(view);
            self.inner.flatten_in_background();
            return (self.inner.graph.search(query, k, ef, accept), Path::Graph);
        }
        if k == 0 {
            return (Vec::new(), Path::FlatAndDelta);
        }
        let mut hits = view.flat.as_ref().map(|f| f.search(query, k, ef, accept)).unwrap_or_default();
        if !view.delta.is_empty() && query.len() == view.dimension() {
            hits.extend(
                view.delta
                    .iter()
                    .filter(|(id, _)| accept.is_none_or(|f| f(*id)))
                    .map(|(id, v)| (*id, 1.0 - dot(query, v))),
            );
            hits.sort_unstable_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            // A point in both the copy and the delta has the same distance,
            // so its two entries are now adjacent.
            hits.dedup_by_key(|h| h.0);
            hits.truncate(k);
        }
        (hits, Path::FlatAndDelta)
    }
}

impl View {
    /// The dimension of stored vectors: the copy's, or the first delta
    /// point's before any copy exists.
    fn dimension(&self) -> usize {
        match &self.flat {
            Some(f) if !f.is_empty() => f.dimension(),
            _ => self.delta.first().map_or(0, |(_, v)| v.len()),
        }
    }
}

impl Inner {
    /// Delta length at which the copier should run: the policy's trigger,
    /// or the length at which searches leave the copy for the graph.
    fn copy_wanted(&self, pending: usize) -> bool {
        pending >= self.policy.flatten_after || pending > self.policy.max_delta_scan
    }

    /// Starts the copier unless it runs; the copier honours the duty cycle.
    fn flatten_in_background(self: &Arc<Self>) {
        if self.copier.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("flatten".into()).spawn(move || Self::run_copier(&weak));
        if let Err(e) = spawned {
            self.copier.store(false, Ordering::Release);
            tracing::warn!(error = %e, "cannot start the index copy thread; searches use the graph meanwhile");
        }
    }

    /// The copier: rest, copy, repeat while the delta is long. It holds the
    /// index only weakly while it rests, so dropping the index ends it at
    /// its next wake-up.
    fn run_copier(weak: &Weak<Self>) {
        loop {
            let Some(this) = weak.upgrade() else { return };
            let pending = this.view.read().delta.len();
            if !this.copy_wanted(pending) {
                this.copier.store(false, Ordering::Release);
                // A writer that saw `copier` set just before the store above
                // did not start one; look once more so its points are not
                // left waiting for the next request.
                let pending = this.view.read().delta.len();
                if this.copy_wanted(pending) && !this.copier.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return;
            }
            let rest = this.rest_until.lock().saturating_duration_since(Instant::now());
            if !rest.is_zero() {
                drop(this);
                std::thread::sleep(rest);
                // The delta or the rest may have changed meanwhile: re-read.
                continue;
            }
            if this.flattening.swap(true, Ordering::AcqRel) {
                // `flatten_now` is copying on another thread; look again
                // once it is done.
                drop(this);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            this.flatten();
        }
    }

    /// Copies the graph and installs the copy. The caller has set
    /// `flattening`; this clears it.
    fn flatten(&self) {
        let started = Instant::now();
        // Every delta point below `cut` finished its graph insert before the
        // copy starts, so the copy holds it fully linked. Points inserted
        // during the copy may be in it half-linked; they stay in the delta.
        let cut = self.view.read().delta.len();
        match FlatIndex::from_hnsw(&self.graph) {
            Ok(mut flat) => {
                if self.policy.int8 {
                    flat.quantize();
                }
                let points = flat.len();
                let mut v = self.view.write();
                v.delta.drain(..cut);
                v.flat = Some(Arc::new(flat));
                v.flattens += 1;
                let pending = v.delta.len();
                drop(v);
                let took = started.elapsed();
                let rest = took.saturating_mul(self.policy.rest_factor).min(MAX_REST);
                *self.rest_until.lock() = Instant::now() + rest;
                tracing::debug!(points, pending, took_ms = took.as_millis() as u64, "index copy installed");
            }
            Err(e) => {
                // Cannot happen for catalogue-checked vectors (one dimension,
                // far below u32::MAX points); if it does, the graph serves.
                *self.rest_until.lock() = Instant::now() + Duration::from_secs(60);
                tracing::error!(error = %e, "cannot copy the index; searches use the graph");
            }
        }
        self.flattening.store(false, Ordering::Release);
    }
}

impl VectorIndex for ServingIndex {
    fn insert(&self, id: PointId, vector: &[f32]) {
        self.inner.graph.insert(id, vector);
        let pending = {
            let mut v = self.inner.view.write();
            v.delta.push((id, vector.into()));
            v.delta.len()
        };
        if pending >= self.inner.policy.flatten_after {
            self.inner.flatten_in_background();
        }
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(PointId) -> bool>,
    ) -> Vec<(PointId, f32)> {
        self.search_with_path(query, k, ef, accept).0
    }

    fn len(&self) -> usize {
        self.inner.graph.len()
    }

    fn serving_stats(&self) -> Option<ServingStats> {
        Some(self.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn unit(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn exact(vectors: &[Vec<f32>], query: &[f32], k: usize, accept: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut all: Vec<(usize, f32)> =
            vectors.iter().enumerate().filter(|(i, _)| accept(*i)).map(|(i, v)| (i, 1.0 - dot(query, v))).collect();
        all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        all.into_iter().take(k).map(|(i, _)| i).collect()
    }

    fn recall(got: &[(PointId, f32)], truth: &[usize]) -> f64 {
        got.iter().filter(|(id, _)| truth.contains(id)).count() as f64 / truth.len() as f64
    }

    fn params() -> IndexParams {
        IndexParams { m: 16, ef_construction: 100, ef_search: 64, expected_points: 4096 }
    }

    /// Inserts never start a copy, and after each copy the next background
    /// one waits long, so each test decides when to copy.
    fn manual(max_delta_scan: usize) -> FlattenPolicy {
        FlattenPolicy { flatten_after: usize::MAX, max_delta_scan, rest_factor: 10_000, int8: false }
    }

    /// Waits until the copier has stopped (it stops once the delta is
    /// short) and no copy is being taken.
    fn wait_for_copier(index: &ServingIndex) {
        while index.inner.copier.load(Ordering::Acquire) || index.inner.flattening.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for the copier, then copies now.
    fn settle(index: &ServingIndex) {
        wait_for_copier(index);
        index.flatten_now();
    }

    /// Searches every `step`th vector and expects it first, from the copy
    /// or the delta.
    fn finds_each_by_its_own_vector(index: &ServingIndex, vectors: &[Vec<f32>], step: usize) {
        for (q, v) in vectors.iter().enumerate().step_by(step) {
            let (hits, path) = index.search_with_path(v, 1, 64, None);
            assert_eq!(path, Path::FlatAndDelta);
            assert_eq!(hits.first().map(|h| h.0), Some(q));
        }
    }

    /// An index that copies after `flatten_after` waiting points, with no
    /// rest of its own, but resting for `rest` from now, as after a long
    /// copy.
    fn resting(flatten_after: usize, rest: Duration) -> ServingIndex {
        let index = ServingIndex::new(
            &params(),
            FlattenPolicy { flatten_after, max_delta_scan: 100_000, rest_factor: 0, int8: false },
        );
        *index.inner.rest_until.lock() = Instant::now() + rest;
        index
    }

    #[test]
    fn every_point_is_found_through_copy_delta_or_graph() {
        let mut rng = StdRng::seed_from_u64(7);
        let dim = 32;
        let vectors: Vec<Vec<f32>> = (0..3000).map(|_| unit(&mut rng, dim)).collect();
        let index = ServingIndex::new(&params(), manual(500));
        // Before any copy: 300 points, all scanned exactly.
        for (i, v) in vectors.iter().enumerate().take(300) {
            index.insert(i, v);
        }
        let (hits, path) = index.search_with_path(&vectors[5], 10, 64, None);
        assert_eq!(path, Path::FlatAndDelta);
        assert_eq!(hits[0].0, 5);
        assert_eq!(recall(&hits, &exact(&vectors[..300], &vectors[5], 10, |_| true)), 1.0);

        // A long delta goes to the graph.
        for (i, v) in vectors.iter().enumerate().skip(300).take(2000) {
            index.insert(i, v);
        }
        assert_eq!(index.search_with_path(&vectors[0], 10, 64, None).1, Path::Graph);

        // A copy (the graph search above may have started one), then 700
        // more points: more than the scan limit, so the graph answers.
        settle(&index);
        let stats = index.stats();
        assert_eq!((stats.flat_points, stats.delta_points), (2300, 0));
        for (i, v) in vectors.iter().enumerate().skip(2300) {
            index.insert(i, v);
        }
        assert_eq!(index.stats().delta_points, 700);
        let mut total = 0.0;
        for q in (0..3000).step_by(100) {
            let (hits, path) = index.search_with_path(&vectors[q], 10, 64, None);
            assert_eq!(path, Path::Graph, "700 > 500 pending points");
            total += recall(&hits, &exact(&vectors, &vectors[q], 10, |_| true));
        }
        assert!(total / 30.0 > 0.9);
    }

    #[test]
    fn delta_points_are_found_exactly_and_once() {
        let mut rng = StdRng::seed_from_u64(11);
        let dim = 24;
        let vectors: Vec<Vec<f32>> = (0..2000).map(|_| unit(&mut rng, dim)).collect();
        let index = ServingIndex::new(&params(), manual(1024));
        for (i, v) in vectors.iter().enumerate().take(1500) {
            index.insert(i, v);
        }
        index.flatten_now();
        for (i, v) in vectors.iter().enumerate().skip(1500) {
            index.insert(i, v);
        }
        let mut total = 0.0;
        for q in 1500..2000 {
            let (hits, path) = index.search_with_path(&vectors[q], 10, 64, None);
            assert_eq!(path, Path::FlatAndDelta);
            // Each delta point finds itself first, exactly.
            assert_eq!(hits[0].0, q);
            let mut ids: Vec<usize> = hits.iter().map(|h| h.0).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), hits.len(), "no point twice");
            total += recall(&hits, &exact(&vectors, &vectors[q], 10, |_| true));
        }
        assert!(total / 500.0 > 0.9, "recall {}", total / 500.0);

        // The predicate holds for copy and delta alike.
        let even = |id: PointId| id.is_multiple_of(2);
        let (hits, _) = index.search_with_path(&vectors[1501], 10, 64, Some(&even));
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| h.0.is_multiple_of(2)));
    }

    #[test]
    fn a_copy_taken_during_inserts_loses_nothing() {
        let mut rng = StdRng::seed_from_u64(3);
        let dim = 16;
        let vectors: Vec<Vec<f32>> = (0..4000).map(|_| unit(&mut rng, dim)).collect();
        let index = Arc::new(ServingIndex::new(
            &params(),
            FlattenPolicy { flatten_after: 64, max_delta_scan: 100_000, rest_factor: 0, int8: false },
        ));
        let writer = {
            let index = Arc::clone(&index);
            let vectors = vectors.clone();
            std::thread::spawn(move || {
                for (i, v) in vectors.iter().enumerate() {
                    index.insert(i, v);
                }
            })
        };
        // Copies run in the background while the writer inserts.
        writer.join().expect("writer thread");
        wait_for_copier(&index);
        assert!(index.stats().flattens >= 1);
        let held = |index: &ServingIndex| {
            let view = index.inner.view.read();
            let mut held: Vec<PointId> = view.flat.as_ref().map(|f| f.point_ids().to_vec()).unwrap_or_default();
            held.extend(view.delta.iter().map(|(id, _)| *id));
            held.sort_unstable();
            held.dedup();
            held
        };
        let all: Vec<PointId> = (0..4000).collect();
        assert_eq!(held(&index), all, "every point is in the copy or the delta");
        index.flatten_now();
        assert_eq!(index.stats().delta_points, 0);
        assert_eq!(held(&index), all);
        finds_each_by_its_own_vector(&index, &vectors, 50);
    }

    /// After a bulk load, an idle index catches up with no further write or
    /// search: writes that arrive while copying rests still get copied once
    /// the rest ends.
    #[test]
    fn an_idle_index_catches_up_after_writes_during_a_rest() {
        let mut rng = StdRng::seed_from_u64(5);
        let dim = 16;
        let vectors: Vec<Vec<f32>> = (0..600).map(|_| unit(&mut rng, dim)).collect();
        // As after a long copy: every write below finds copying resting.
        let index = resting(64, Duration::from_millis(300));
        for (i, v) in vectors.iter().enumerate() {
            index.insert(i, v);
        }
        // No request from here on. The bound is for a hung copier, not a
        // speed check: the copy of 600 points takes milliseconds.
        let give_up = Instant::now() + Duration::from_secs(60);
        while index.stats().delta_points > 0 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stats = index.stats();
        assert_eq!((stats.flat_points, stats.delta_points), (600, 0), "the copier caught up on its own");
        wait_for_copier(&index);
        finds_each_by_its_own_vector(&index, &vectors, 37);
    }

    /// Dropping the index while the copier rests ends the copier instead of
    /// keeping the index alive.
    #[test]
    fn a_resting_copier_does_not_keep_the_index_alive() {
        let mut rng = StdRng::seed_from_u64(9);
        let index = resting(8, Duration::from_millis(200));
        for i in 0..20 {
            index.insert(i, &unit(&mut rng, 8));
        }
        assert!(index.inner.copier.load(Ordering::Acquire), "the writes started the copier");
        let weak = Arc::downgrade(&index.inner);
        drop(index);
        assert!(weak.upgrade().is_none(), "the resting copier holds the index only weakly");
    }
}
