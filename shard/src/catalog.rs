//! The shard's items: attributes, vectors and the ANN index over them.
//!
//! `hnsw_rs` cannot delete or update a point, so an update or delete leaves a
//! *tombstone*: the old point stays in the graph but no longer maps to a live
//! item, and every search result is re-checked against the live map (which
//! also catches the library ignoring a filter). When tombstones pass a
//! threshold the graph is rebuilt from the live points on a background thread
//! while searches keep using the old graph; writes that land during the
//! rebuild are replayed into the new graph just before it is swapped in.
//!
//! The index is a [`ServingIndex`]: inserts go to the `hnsw_rs` graph,
//! searches to its flattened copy plus the points inserted since.
//!
//! Every write carries a version (0 for unversioned, pre-replication
//! records): an upsert or delete older than what the catalogue holds for its
//! id is ignored, and deleted ids remember the version of their delete, so
//! replicas that receive the same writes in any order converge.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use vitrine_proto::{pb, Filter};

use crate::index::{dot, IndexParams, PointId, VectorIndex};
use crate::serving::{FlattenPolicy, ServingIndex};

/// An item id with the version of its last write (or of its delete).
pub type VersionedId = (String, u64);

/// An item as the shard keeps it: the wire item without image and vectors,
/// plus its unit (fused) vector, its per-modality vectors when the shard
/// fuses two models, and the version of the write that stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredItem {
    pub item: pb::Item,
    pub vector: Vec<f32>,
    pub modalities: Modalities,
    pub version: u64,
}

/// The per-modality vectors a fused vector was made from (kept out of
/// `item` so that search results, which clone `item`, do not copy them).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Modalities {
    pub text: Option<pb::Vector>,
    pub image: Option<pb::Vector>,
}

impl StoredItem {
    /// The stored form of a logged item; `None` when it carries no vector
    /// (the shard embeds before logging, so logged items always have one).
    pub fn from_wire(mut item: pb::Item, version: u64) -> Option<Self> {
        let vector = item.vector.take()?.values;
        let modalities = Modalities { text: item.text_vector.take(), image: item.image_vector.take() };
        Some(Self { item, vector, modalities, version })
    }

    /// The wire item, with its vectors (fused and per-modality) when asked:
    /// what GetItems returns, and what snapshots and catch-up carry.
    pub fn to_wire(&self, with_vectors: bool) -> pb::Item {
        let mut item = self.item.clone();
        if with_vectors {
            item.vector = Some(pb::Vector { values: self.vector.clone() });
            item.text_vector.clone_from(&self.modalities.text);
            item.image_vector.clone_from(&self.modalities.image);
        }
        item
    }

    /// The stored items of an upsert record, with their versions.
    pub fn from_request(req: pb::ShardUpsertRequest) -> Vec<Self> {
        let versions = req.versions;
        req.items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| Self::from_wire(item, versions.get(i).copied().unwrap_or(0)))
            .collect()
    }

    pub fn id(&self) -> &str {
        &self.item.id
    }
}

/// When to rebuild the graph.
#[derive(Debug, Clone)]
pub struct CompactionPolicy {
    /// Never compact for fewer tombstones than this: a rebuild costs about as
    /// much as inserting every live point again.
    pub min_tombstones: usize,
    /// Compact when tombstones exceed this fraction of live points; dead
    /// points cost search time (they are visited) and memory.
    pub max_tombstone_ratio: f64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self { min_tombstones: 1000, max_tombstone_ratio: 0.25 }
    }
}

struct State {
    by_id: HashMap<String, PointId>,
    /// Keyed by point number with Fx hashing: the search predicate looks a
    /// point up for every graph node it visits, and SipHash there cost as
    /// much as the distance computations (measured with perf).
    points: FxHashMap<PointId, Arc<StoredItem>>,
    index: Arc<dyn VectorIndex>,
    next_point: PointId,
    tombstones: usize,
    /// Deleted ids with the version of their delete (versioned deletes only).
    deleted: HashMap<String, u64>,
}

/// Whether a write of `version` replaces what is stored at `current` (the
/// version of the live item or of its delete). Version 0 is an unversioned
/// write and always applies, as before replication; versions are unique, so
/// an equal one is the same write arriving again.
pub fn supersedes(version: u64, current: Option<u64>) -> bool {
    version == 0 || current.is_none_or(|c| version > c)
}

/// One hit of a shard-local search.
#[derive(Debug, Clone)]
pub struct Hit {
    pub item: Arc<StoredItem>,
    pub score: f32,
}

/// Result of a shard-local search.
#[derive(Debug, Default)]
pub struct SearchOutcome {
    pub hits: Vec<Hit>,
    /// The graph returned fewer than k acceptable points and the shard fell
    /// back to scoring every acceptable item exactly.
    pub exact: bool,
}

/// What a search may return.
#[derive(Default)]
pub struct Constraint<'a> {
    pub filter: Option<&'a Filter>,
    pub exclude: HashSet<&'a str>,
}

impl Constraint<'_> {
    pub fn accepts(&self, item: &StoredItem) -> bool {
        !self.exclude.contains(item.id()) && self.filter.is_none_or(|f| f.matches(item.item.attributes.as_ref()))
    }
}

/// Items, vectors and index of one shard.
pub struct Catalog {
    state: RwLock<State>,
    params: IndexParams,
    policy: CompactionPolicy,
    dimension: usize,
    compacting: AtomicBool,
    /// How graph rebuilds (recovery, compaction) copy their graph for search.
    flatten: FlattenPolicy,
}

impl Catalog {
    pub fn new(dimension: usize, params: IndexParams, policy: CompactionPolicy) -> Self {
        let index: Arc<dyn VectorIndex> = Arc::new(ServingIndex::new(&params, FlattenPolicy::default()));
        Self {
            state: RwLock::new(State {
                by_id: HashMap::new(),
                points: FxHashMap::default(),
                index,
                next_point: 0,
                tombstones: 0,
                deleted: HashMap::new(),
            }),
            params,
            policy,
            dimension,
            compacting: AtomicBool::new(false),
            flatten: FlattenPolicy::default(),
        }
    }

    /// This (empty) catalogue with another policy for its index's flat
    /// copies, e.g. int8 codes (`--index-vectors int8`).
    pub fn with_flatten(mut self, flatten: FlattenPolicy) -> Self {
        self.state.get_mut().index = Arc::new(ServingIndex::new(&self.params, flatten.clone()));
        self.flatten = flatten;
        self
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Live items.
    pub fn len(&self) -> usize {
        self.state.read().points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dead points still in the graph.
    pub fn tombstones(&self) -> usize {
        self.state.read().tombstones
    }

    /// Sizes of the index's flat copy and of the points inserted since it
    /// was taken (`None` when the index serves from its graph alone).
    pub fn serving_stats(&self) -> Option<crate::serving::ServingStats> {
        self.state.read().index.serving_stats()
    }

    /// The version stored for an id: its live item's, or its delete's.
    pub fn version_of(&self, id: &str) -> Option<u64> {
        let s = self.state.read();
        Self::current_version(&s, id)
    }

    fn current_version(s: &State, id: &str) -> Option<u64> {
        match s.by_id.get(id).and_then(|pid| s.points.get(pid)) {
            Some(it) => Some(it.version),
            None => s.deleted.get(id).copied(),
        }
    }

    /// Inserts or replaces items, skipping those older than what is stored;
    /// returns how many applied. The write lock is taken per item so that
    /// searches interleave with a long batch instead of waiting for all of it.
    pub fn upsert(&self, items: Vec<StoredItem>) -> usize {
        let mut applied = 0;
        for item in items {
            debug_assert_eq!(item.vector.len(), self.dimension);
            let mut s = self.state.write();
            if !supersedes(item.version, Self::current_version(&s, item.id())) {
                continue;
            }
            applied += 1;
            s.deleted.remove(item.id());
            let pid = s.next_point;
            s.next_point += 1;
            if let Some(old) = s.by_id.insert(item.item.id.clone(), pid) {
                s.points.remove(&old);
                s.tombstones += 1;
            }
            s.index.insert(pid, &item.vector);
            s.points.insert(pid, Arc::new(item));
        }
        applied
    }

    /// Loads items and remembered deletes into an empty catalogue with one
    /// parallel graph build (recovery); into a non-empty one, applies them
    /// as writes.
    pub fn restore(&self, items: Vec<StoredItem>, deleted: HashMap<String, u64>) {
        if !self.is_empty() || self.tombstones() > 0 || !self.state.read().deleted.is_empty() {
            let (ids, versions): (Vec<String>, Vec<u64>) = deleted.into_iter().unzip();
            self.delete_versioned(&ids, &versions);
            self.upsert(items);
            return;
        }
        let mut by_id = HashMap::with_capacity(items.len());
        let mut points = FxHashMap::default();
        points.reserve(items.len());
        let mut next_point = 0;
        for item in items {
            let pid = next_point;
            next_point += 1;
            if let Some(old) = by_id.insert(item.item.id.clone(), pid) {
                // A snapshot holds each id once; tolerate repeats as updates.
                points.remove(&old);
            }
            points.insert(pid, Arc::new(item));
        }
        let mut order: Vec<(PointId, &[f32])> = points.iter().map(|(p, it)| (*p, it.vector.as_slice())).collect();
        order.sort_unstable_by_key(|(p, _)| *p);
        let index = ServingIndex::build(
            &IndexParams { expected_points: points.len().max(1024), ..self.params.clone() },
            self.flatten.clone(),
            &order,
        );
        drop(order);
        // Replaced repeats were never inserted into the graph: no tombstones.
        *self.state.write() = State { by_id, points, index: Arc::new(index), next_point, tombstones: 0, deleted };
    }

    /// Remembered deletes: (id, version of the delete).
    pub fn export_deleted(&self) -> Vec<(String, u64)> {
        self.state.read().deleted.iter().map(|(id, v)| (id.clone(), *v)).collect()
    }

    /// Ids whose delete is remembered.
    pub fn deleted_ids(&self) -> usize {
        self.state.read().deleted.len()
    }

    /// Every live id with its version, then every remembered delete: what a
    /// peer replica compares against its own state.
    pub fn digest(&self) -> (Vec<VersionedId>, Vec<VersionedId>) {
        let s = self.state.read();
        let live = s.points.values().map(|it| (it.item.id.clone(), it.version)).collect();
        let deleted = s.deleted.iter().map(|(id, v)| (id.clone(), *v)).collect();
        (live, deleted)
    }

    /// Every live item in insertion order (snapshots).
    pub fn export(&self) -> Vec<Arc<StoredItem>> {
        let s = self.state.read();
        let mut items: Vec<(PointId, Arc<StoredItem>)> = s.points.iter().map(|(p, it)| (*p, Arc::clone(it))).collect();
        drop(s);
        items.sort_unstable_by_key(|(p, _)| *p);
        items.into_iter().map(|(_, it)| it).collect()
    }

    /// Deletes items (unversioned); returns how many existed.
    pub fn delete(&self, ids: &[String]) -> usize {
        self.delete_versioned(ids, &[])
    }

    /// Deletes items with the versions of the deletes (parallel to `ids`,
    /// missing ones 0), skipping items written after the delete; returns how
    /// many live items were removed. Versioned deletes are remembered even
    /// for ids not stored, so an older upsert arriving later stays dead.
    pub fn delete_versioned(&self, ids: &[String], versions: &[u64]) -> usize {
        let mut s = self.state.write();
        let mut deleted = 0;
        for (i, id) in ids.iter().enumerate() {
            let version = versions.get(i).copied().unwrap_or(0);
            if !supersedes(version, Self::current_version(&s, id)) {
                continue;
            }
            if let Some(pid) = s.by_id.remove(id) {
                s.points.remove(&pid);
                s.tombstones += 1;
                deleted += 1;
            }
            if version > 0 {
                s.deleted.insert(id.clone(), version);
            }
        }
        deleted
    }

    /// Whether a write holds the catalogue now, so a search started now
    /// would wait for it. A hint: the answer may change at once.
    pub fn writing(&self) -> bool {
        self.state.is_locked_exclusive()
    }

    pub fn get(&self, id: &str) -> Option<Arc<StoredItem>> {
        let s = self.state.read();
        s.by_id.get(id).and_then(|pid| s.points.get(pid)).cloned()
    }

    /// Up to `k` accepted items closest to `query` (a unit vector), best first,
    /// ties broken by id.
    pub fn search(&self, query: &[f32], k: usize, constraint: &Constraint<'_>) -> SearchOutcome {
        let s = self.state.read();
        if constraint.filter.is_some() && estimated_matches(&s.points, constraint) <= EXACT_SCAN_MAX {
            // Few items pass the filter: scoring them all is both exact and
            // cheaper than a graph walk that must skip past the rest.
            let mut hits = exact_scan(&s.points, query, constraint);
            drop(s);
            sort_hits(&mut hits);
            hits.truncate(k);
            return SearchOutcome { hits, exact: true };
        }
        // The predicate runs on every visited node, so it works on point
        // numbers: exclusions are resolved to the items' current points once
        // (older points of an excluded id are tombstones, rejected anyway),
        // and the live map is consulted only when tombstones or a filter
        // make it necessary.
        let mut excluded: Vec<PointId> = constraint.exclude.iter().filter_map(|id| s.by_id.get(*id).copied()).collect();
        excluded.sort_unstable();
        let accept = |pid: PointId| {
            excluded.binary_search(&pid).is_err()
                && match constraint.filter {
                    None => s.tombstones == 0 || s.points.contains_key(&pid),
                    Some(f) => s.points.get(&pid).is_some_and(|it| f.matches(it.item.attributes.as_ref())),
                }
        };
        let ef = self.params.ef_search.max(k);
        // Without tombstones or constraints every point is acceptable, and
        // the graph's unfiltered search is cheaper.
        let unconstrained = s.tombstones == 0 && constraint.filter.is_none() && constraint.exclude.is_empty();
        let mut hits: Vec<Hit> = s
            .index
            .search(query, k, ef, if unconstrained { None } else { Some(&accept) })
            .into_iter()
            // Re-check: the graph's filter is only a hint (and the unfiltered
            // path used no predicate at all).
            .filter(|(pid, _)| accept(*pid))
            .filter_map(|(pid, _)| s.points.get(&pid))
            .map(|it| Hit { score: dot(query, &it.vector), item: Arc::clone(it) })
            .collect();
        let mut exact = false;
        if hits.len() < k && s.points.len() > hits.len() {
            // The filter (or the exclusions) are selective enough that the
            // graph walk ran out of acceptable neighbours. Score every
            // acceptable item exactly: correct, and cheap precisely when the
            // accepted set is small.
            exact = true;
            hits = exact_scan(&s.points, query, constraint);
        }
        drop(s);
        sort_hits(&mut hits);
        hits.truncate(k);
        SearchOutcome { hits, exact }
    }

    /// Whether the tombstone policy asks for a rebuild.
    pub fn needs_compaction(&self) -> bool {
        let s = self.state.read();
        s.tombstones >= self.policy.min_tombstones
            && s.tombstones as f64 > self.policy.max_tombstone_ratio * s.points.len().max(1) as f64
    }

    /// Rebuilds the graph from the live points. Searches and writes continue
    /// during the rebuild; only the final swap takes the write lock. Returns
    /// false when another compaction is already running.
    pub fn compact(&self) -> bool {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return false;
        }
        let started = std::time::Instant::now();
        let (snapshot, from) = {
            let s = self.state.read();
            let live: Vec<(PointId, Arc<StoredItem>)> = s.points.iter().map(|(p, it)| (*p, Arc::clone(it))).collect();
            (live, s.next_point)
        };
        // Built (on all cores) and flattened before the swap, so it serves
        // from its flat copy at once.
        let points: Vec<(PointId, &[f32])> = snapshot.iter().map(|(p, it)| (*p, it.vector.as_slice())).collect();
        let fresh = ServingIndex::build(
            &IndexParams { expected_points: snapshot.len().max(1024), ..self.params.clone() },
            self.flatten.clone(),
            &points,
        );
        drop(points);
        let mut s = self.state.write();
        // Points written while we were building.
        let mut late: Vec<(PointId, Arc<StoredItem>)> =
            s.points.iter().filter(|(p, _)| **p >= from).map(|(p, it)| (*p, Arc::clone(it))).collect();
        late.sort_by_key(|(p, _)| *p);
        for (pid, it) in &late {
            fresh.insert(*pid, &it.vector);
        }
        // Points of the snapshot that were deleted or replaced meanwhile.
        let dead = snapshot.iter().filter(|(p, _)| !s.points.contains_key(p)).count();
        let before = s.tombstones;
        s.index = Arc::new(fresh);
        s.tombstones = dead;
        drop(s);
        self.compacting.store(false, Ordering::Release);
        tracing::info!(
            live = snapshot.len(),
            late = late.len(),
            tombstones_before = before,
            tombstones_after = dead,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index compacted"
        );
        true
    }

    /// Starts a background compaction when the policy asks for one.
    pub fn maybe_compact_in_background(self: &Arc<Self>) {
        if self.needs_compaction() && !self.compacting.load(Ordering::Acquire) {
            let this = Arc::clone(self);
            std::thread::Builder::new()
                .name("compaction".into())
                .spawn(move || {
                    this.compact();
                })
                .map_err(|e| tracing::warn!(error = %e, "cannot start compaction thread"))
                .ok();
        }
    }
}

/// A filter expected to pass at most this many items is answered by an exact
/// scan instead of the graph. At 384 dimensions scoring 4,096 vectors costs
/// about as much as one filtered graph walk on a selective filter, while the
/// graph's cost grows as the filter gets more selective (it must walk past
/// every rejected neighbour). Measured in docs/PERFORMANCE.md.
const EXACT_SCAN_MAX: usize = 4096;

/// Points sampled to estimate a filter's selectivity.
const SELECTIVITY_SAMPLE: usize = 256;

/// Estimated number of live items a constraint accepts, from a sample of
/// the map (whose iteration order is unrelated to the attributes).
fn estimated_matches(points: &FxHashMap<PointId, Arc<StoredItem>>, constraint: &Constraint<'_>) -> usize {
    let n = points.len();
    if n <= EXACT_SCAN_MAX {
        return n;
    }
    let sampled = SELECTIVITY_SAMPLE.min(n);
    let accepted = points.values().take(sampled).filter(|it| constraint.accepts(it)).count();
    // One accepted item in the sample stands for n / sampled items.
    (accepted * n).div_ceil(sampled)
}

fn exact_scan(points: &FxHashMap<PointId, Arc<StoredItem>>, query: &[f32], constraint: &Constraint<'_>) -> Vec<Hit> {
    points
        .values()
        .filter(|it| constraint.accepts(it))
        .map(|it| Hit { score: dot(query, &it.vector), item: Arc::clone(it) })
        .collect()
}

/// Best first; equal scores ordered by id so results are deterministic.
pub fn sort_hits(hits: &mut [Hit]) {
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.item.id().cmp(b.item.id())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use vitrine_proto::filter::build;

    const DIM: usize = 16;

    fn item(id: &str, category: &str, rng: &mut impl Rng) -> StoredItem {
        let mut v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
        crate::embed::normalize(&mut v);
        StoredItem {
            item: pb::Item {
                id: id.into(),
                attributes: Some(pb::Attributes { category: category.into(), ..Default::default() }),
                ..Default::default()
            },
            vector: v,
            modalities: Default::default(),
            version: 0,
        }
    }

    fn catalog(n: usize, policy: CompactionPolicy) -> (Catalog, Vec<StoredItem>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let c = Catalog::new(DIM, IndexParams { expected_points: n, ..Default::default() }, policy);
        let items: Vec<StoredItem> =
            (0..n).map(|i| item(&format!("i{i}"), if i % 10 == 0 { "rare" } else { "common" }, &mut rng)).collect();
        c.upsert(items.clone());
        (c, items)
    }

    #[test]
    fn an_exported_catalogue_restores_to_the_same_items_and_answers() {
        let (c, items) = catalog(800, CompactionPolicy::default());
        let gone: Vec<String> = items.iter().step_by(7).map(|i| i.item.id.clone()).collect();
        c.delete(&gone);
        let mut renamed = items[1].clone();
        renamed.item.title = "renamed".into();
        c.upsert(vec![renamed.clone()]);
        let exported = c.export();
        assert_eq!(exported.len(), c.len());
        let restored = Catalog::new(DIM, IndexParams::default(), CompactionPolicy::default());
        restored.restore(exported.iter().map(|it| (**it).clone()).collect(), HashMap::new());
        assert_eq!((restored.len(), restored.tombstones()), (c.len(), 0));
        assert_eq!(restored.get(renamed.id()).map(|it| it.item.title.clone()).as_deref(), Some("renamed"));
        for it in &exported {
            assert_eq!(restored.get(it.id()).as_deref(), Some(&**it));
            let out = restored.search(&it.vector, 10, &Constraint::default());
            assert!(out.hits.iter().any(|h| h.item.id() == it.id()), "{} not found by its own vector", it.id());
        }
        // Writes after a restore continue with fresh point numbers.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let extra = item("after-restore", "common", &mut rng);
        restored.upsert(vec![extra.clone(), renamed.clone()]);
        assert_eq!(restored.len(), c.len() + 1);
        assert_eq!(restored.tombstones(), 1);
        assert!(restored.search(&extra.vector, 1, &Constraint::default()).hits[0].item.id() == "after-restore");
    }

    /// The shard runs a plain search on its async worker only when no write
    /// holds the catalogue; `writing` is what it asks.
    #[test]
    fn writing_is_true_exactly_while_a_write_holds_the_catalogue() {
        let (c, _) = catalog(50, CompactionPolicy::default());
        assert!(!c.writing());
        let held = c.state.write();
        assert!(c.writing());
        drop(held);
        let read = c.state.read();
        assert!(!c.writing(), "readers do not count");
        drop(read);
        assert!(!c.writing());
    }

    #[test]
    fn deleted_items_never_come_back() {
        let (c, items) = catalog(500, CompactionPolicy::default());
        let gone: Vec<String> = items.iter().take(100).map(|i| i.item.id.clone()).collect();
        assert_eq!(c.delete(&gone), 100);
        assert_eq!(c.delete(&gone), 0, "deletes are idempotent");
        assert_eq!((c.len(), c.tombstones()), (400, 100));
        for it in items.iter().take(100) {
            let out = c.search(&it.vector, 10, &Constraint::default());
            assert!(out.hits.iter().all(|h| !gone.contains(&h.item.item.id)));
            assert!(c.get(it.id()).is_none());
        }
    }

    #[test]
    fn updates_replace_the_vector() {
        let (c, items) = catalog(200, CompactionPolicy::default());
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut moved = item("i5", "common", &mut rng);
        moved.vector = items[77].vector.clone();
        c.upsert(vec![moved]);
        assert_eq!(c.tombstones(), 1);
        let out = c.search(&items[77].vector, 2, &Constraint::default());
        let ids: Vec<&str> = out.hits.iter().map(|h| h.item.id()).collect();
        assert!(ids.contains(&"i5") && ids.contains(&"i77"), "{ids:?}");
        // Only one copy of i5 is ever returned.
        let out = c.search(&items[5].vector, 50, &Constraint::default());
        assert!(out.hits.iter().filter(|h| h.item.id() == "i5").count() <= 1);
    }

    #[test]
    fn every_result_satisfies_the_filter_and_selective_filters_are_exact() {
        let (c, items) = catalog(1000, CompactionPolicy::default());
        let f = Filter::from_proto(&build::matches("category", &["rare"])).unwrap();
        let cons = Constraint { filter: Some(&f), exclude: HashSet::new() };
        for it in items.iter().step_by(37) {
            let out = c.search(&it.vector, 20, &cons);
            assert_eq!(out.hits.len(), 20);
            assert!(out.hits.iter().all(|h| h.item.item.attributes.as_ref().unwrap().category == "rare"));
            let mut want: Vec<(f32, &str)> = items
                .iter()
                .filter(|x| x.item.attributes.as_ref().unwrap().category == "rare")
                .map(|x| (dot(&it.vector, &x.vector), x.id()))
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0));
            // The best accepted item is found whichever path ran.
            assert_eq!(out.hits[0].item.id(), want[0].1);
        }
    }

    #[test]
    fn broad_filters_use_the_graph_and_still_hold() {
        let (c, items) = catalog(6000, CompactionPolicy::default());
        let f = Filter::from_proto(&build::matches("category", &["common"])).unwrap();
        let cons = Constraint { filter: Some(&f), exclude: HashSet::new() };
        let mut graph_answers = 0;
        for it in items.iter().filter(|i| i.item.attributes.as_ref().unwrap().category == "common").step_by(97) {
            let out = c.search(&it.vector, 10, &cons);
            graph_answers += usize::from(!out.exact);
            assert_eq!(out.hits.len(), 10);
            assert!(out.hits.iter().all(|h| h.item.item.attributes.as_ref().unwrap().category == "common"));
            assert_eq!(out.hits[0].item.id(), it.id(), "an item is its own nearest neighbour");
        }
        assert!(graph_answers > 0, "a filter passing 90% of 6,000 items should take the graph path");
    }

    #[test]
    fn exclusions_are_honoured() {
        let (c, items) = catalog(300, CompactionPolicy::default());
        let cons = Constraint { filter: None, exclude: ["i3"].into_iter().collect() };
        let out = c.search(&items[3].vector, 5, &cons);
        assert!(out.hits.iter().all(|h| h.item.id() != "i3"));
        assert_eq!(out.hits.len(), 5);
    }

    #[test]
    fn compaction_drops_tombstones_and_keeps_every_live_item_findable() {
        let policy = CompactionPolicy { min_tombstones: 10, max_tombstone_ratio: 0.1 };
        let (c, items) = catalog(600, policy);
        let gone: Vec<String> = items.iter().step_by(3).map(|i| i.item.id.clone()).collect();
        c.delete(&gone);
        assert!(c.needs_compaction());
        assert!(c.compact());
        assert_eq!(c.tombstones(), 0);
        assert!(!c.needs_compaction());
        let live: Vec<&StoredItem> = items.iter().filter(|i| !gone.contains(&i.item.id)).collect();
        assert_eq!(c.len(), live.len());
        let found = live
            .iter()
            .filter(|it| c.search(&it.vector, 1, &Constraint::default()).hits[0].item.id() == it.id())
            .count();
        assert!(found as f64 >= 0.98 * live.len() as f64, "{found}/{}", live.len());
    }

    #[test]
    fn searches_and_writes_continue_during_compaction() {
        let policy = CompactionPolicy { min_tombstones: 10, max_tombstone_ratio: 0.1 };
        let (c, items) = catalog(2000, policy);
        let c = Arc::new(c);
        c.delete(&items.iter().step_by(2).map(|i| i.item.id.clone()).collect::<Vec<_>>());
        let bg = {
            let c = Arc::clone(&c);
            std::thread::spawn(move || c.compact())
        };
        // While the rebuild runs: searches answer and new items land.
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let late: Vec<StoredItem> = (0..50).map(|i| item(&format!("late{i}"), "common", &mut rng)).collect();
        for (i, it) in late.iter().enumerate() {
            c.upsert(vec![it.clone()]);
            let out = c.search(&items[2 * i + 1].vector, 3, &Constraint::default());
            assert!(!out.hits.is_empty());
        }
        assert!(bg.join().unwrap());
        for it in &late {
            assert_eq!(c.search(&it.vector, 1, &Constraint::default()).hits[0].item.id(), it.id());
        }
        assert_eq!(c.len(), 1000 + 50);
    }

    #[test]
    fn older_writes_lose_to_newer_ones_in_any_order() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let versioned = |id: &str, title: &str, version: u64, rng: &mut rand::rngs::StdRng| {
            let mut it = item(id, "c", rng);
            it.item.title = title.into();
            it.version = version;
            it
        };
        let (a1, a2, b1) = (
            versioned("a", "old", 10, &mut rng),
            versioned("a", "new", 20, &mut rng),
            versioned("b", "b", 5, &mut rng),
        );
        // Two replicas receive the same writes in opposite orders.
        let one = Catalog::new(DIM, IndexParams::default(), CompactionPolicy::default());
        let two = Catalog::new(DIM, IndexParams::default(), CompactionPolicy::default());
        assert_eq!(one.upsert(vec![a1.clone(), b1.clone()]), 2);
        assert_eq!(one.upsert(vec![a2.clone()]), 1);
        assert_eq!(one.delete_versioned(&["b".to_string()], &[7]), 1);
        assert_eq!(two.delete_versioned(&["b".to_string()], &[7]), 0, "nothing to delete yet");
        assert_eq!(two.upsert(vec![a2.clone(), b1.clone()]), 1, "b (version 5) is older than its delete (7)");
        assert_eq!(two.upsert(vec![a1.clone()]), 0, "a version 10 is older than the stored 20");
        for c in [&one, &two] {
            assert_eq!(c.get("a").map(|it| it.item.title.clone()).as_deref(), Some("new"));
            assert!(c.get("b").is_none());
            assert_eq!(c.version_of("b"), Some(7));
        }
        let sorted = |c: &Catalog| {
            let (mut live, mut deleted) = c.digest();
            live.sort();
            deleted.sort();
            (live, deleted)
        };
        assert_eq!(sorted(&one), sorted(&two));
        // A newer upsert brings a deleted id back and forgets the delete.
        assert_eq!(two.upsert(vec![versioned("b", "back", 9, &mut rng)]), 1);
        assert_eq!(two.deleted_ids(), 0);
        // Unversioned writes (records from before replication) always apply.
        assert_eq!(two.upsert(vec![versioned("a", "legacy", 0, &mut rng)]), 1);
        assert_eq!(two.get("a").map(|it| it.item.title.clone()).as_deref(), Some("legacy"));
    }
}
