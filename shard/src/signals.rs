//! Behavioural signals of the shard's items: co-visitation neighbours and a
//! popularity prior, learnt off-line (`vitrine train`) and stored beside the
//! catalogue.
//!
//! They are kept apart from the items on purpose: a shop re-sends an item
//! when its title or price changes, and that must not wipe what was learnt
//! from behaviour; and re-training replaces signals without re-embedding.
//! Signals of an id that is not (or no longer) in the catalogue are kept but
//! never served, because every use goes through the live catalogue.
//!
//! Each entry carries the version of the write that stored it and a newer
//! entry replaces an older one whatever order they arrive in (replicas); a
//! cleared entry is kept, empty, with its version, so that an older entry
//! arriving later cannot bring it back.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use vitrine_proto::pb;

/// Signals of one item as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// Strongest first.
    pub neighbours: Vec<(String, f32)>,
    /// In [0, 1].
    pub popularity: f32,
    /// Version of the write that stored it (0: unversioned).
    pub version: u64,
}

impl Signals {
    fn from_wire(s: &pb::ItemSignals, version: u64) -> Self {
        let mut neighbours: Vec<(String, f32)> = s.neighbours.iter().map(|n| (n.id.clone(), n.weight)).collect();
        neighbours.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Self { neighbours, popularity: s.popularity, version }
    }

    pub fn to_wire(&self, id: &str) -> pb::ItemSignals {
        pb::ItemSignals {
            id: id.to_string(),
            neighbours: self.neighbours.iter().map(|(id, w)| pb::Neighbour { id: id.clone(), weight: *w }).collect(),
            popularity: self.popularity,
        }
    }

    fn is_empty(&self) -> bool {
        self.neighbours.is_empty() && self.popularity == 0.0
    }
}

/// Item ids by descending popularity.
type Ranked = Arc<Vec<(String, f32)>>;

/// The shard's signal store.
#[derive(Default)]
pub struct SignalStore {
    by_id: RwLock<HashMap<String, Arc<Signals>>>,
    /// Ids by descending popularity, built on first use after a change:
    /// signals change in bulk (a training run), while cold users ask often.
    ranked: RwLock<Option<Ranked>>,
}

impl SignalStore {
    /// Replaces the signals of each listed item (with `versions` parallel
    /// to them; missing ones 0) unless what is stored is newer; empty
    /// entries clear them.
    pub fn update(&self, signals: &[pb::ItemSignals], versions: &[u64]) {
        let mut map = self.by_id.write();
        *self.ranked.write() = None;
        for (i, s) in signals.iter().enumerate() {
            let version = versions.get(i).copied().unwrap_or(0);
            if !crate::catalog::supersedes(version, map.get(&s.id).map(|x| x.version)) {
                continue;
            }
            let stored = Signals::from_wire(s, version);
            if stored.is_empty() && version == 0 {
                map.remove(&s.id);
            } else {
                map.insert(s.id.clone(), Arc::new(stored));
            }
        }
    }

    /// Every entry in wire form with its version, cleared ones included
    /// (snapshots).
    pub fn export(&self) -> Vec<(pb::ItemSignals, u64)> {
        self.by_id.read().iter().map(|(id, s)| (s.to_wire(id), s.version)).collect()
    }

    /// Every entry's id and version (replica digests).
    pub fn digest(&self) -> Vec<(String, u64)> {
        self.by_id.read().iter().map(|(id, s)| (id.clone(), s.version)).collect()
    }

    /// The stored entry of an id, cleared ones included, with its version.
    pub fn get_versioned(&self, id: &str) -> Option<(pb::ItemSignals, u64)> {
        self.by_id.read().get(id).map(|s| (s.to_wire(id), s.version))
    }

    pub fn get(&self, id: &str) -> Option<Arc<Signals>> {
        self.by_id.read().get(id).filter(|s| !s.is_empty()).cloned()
    }

    pub fn popularity(&self, id: &str) -> f32 {
        self.by_id.read().get(id).map_or(0.0, |s| s.popularity)
    }

    /// Items with signals (cleared entries not counted).
    pub fn len(&self) -> usize {
        self.by_id.read().values().filter(|s| !s.is_empty()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` accepted ids by descending popularity, ties by id: the
    /// candidate list for users with no history.
    pub fn most_popular(&self, limit: usize, mut accept: impl FnMut(&str) -> bool) -> Vec<(String, f32)> {
        self.ranked().iter().filter(|(id, _)| accept(id)).take(limit).cloned().collect()
    }

    fn ranked(&self) -> Ranked {
        if let Some(r) = self.ranked.read().as_ref() {
            return Arc::clone(r);
        }
        let map = self.by_id.read();
        let mut all: Vec<(String, f32)> =
            map.iter().filter(|(_, s)| s.popularity > 0.0).map(|(id, s)| (id.clone(), s.popularity)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let ranked = Arc::new(all);
        // Built under the map's read lock, so no update can slip in between
        // reading the map and publishing the list.
        *self.ranked.write() = Some(Arc::clone(&ranked));
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(id: &str, nb: &[(&str, f32)], pop: f32) -> pb::ItemSignals {
        pb::ItemSignals {
            id: id.into(),
            neighbours: nb.iter().map(|(id, w)| pb::Neighbour { id: (*id).into(), weight: *w }).collect(),
            popularity: pop,
        }
    }

    #[test]
    fn updates_replace_sort_and_clear() {
        let store = SignalStore::default();
        store.update(&[sig("a", &[("x", 0.1), ("y", 0.9)], 0.5), sig("b", &[], 0.2)], &[]);
        let a = store.get("a").unwrap();
        assert_eq!(a.neighbours[0].0, "y", "neighbours are kept strongest first");
        store.update(&[sig("a", &[("z", 1.0)], 0.1)], &[]);
        assert_eq!(store.get("a").unwrap().neighbours, vec![("z".to_string(), 1.0)]);
        store.update(&[sig("a", &[], 0.0)], &[]);
        assert!(store.get("a").is_none());
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn most_popular_is_ordered_and_filtered() {
        let store = SignalStore::default();
        store.update(&[sig("a", &[], 0.5), sig("b", &[], 0.9), sig("c", &[], 0.5), sig("d", &[], 0.0)], &[]);
        let top = store.most_popular(10, |_| true);
        let ids: Vec<&str> = top.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["b", "a", "c"]);
        let top = store.most_popular(1, |id| id != "b");
        assert_eq!(top[0].0, "a");
        // The cached order follows updates.
        store.update(&[sig("c", &[], 1.0)], &[]);
        assert_eq!(store.most_popular(1, |_| true)[0].0, "c");
    }
}
