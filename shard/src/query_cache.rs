//! A bounded cache of recent query embeddings.
//!
//! Shoppers repeat queries ("white sneakers", the same autocomplete
//! suggestion typed by thousands): a cached vector costs a hash lookup,
//! while embedding costs milliseconds of a core the index also needs. The
//! cache is least-recently-used over whole query texts, holds only vectors
//! of the model that fills it (one cache per model, so a model change can
//! never serve another model's vectors), and is bounded by entries: at 384
//! dimensions an entry is about 1.6 KB plus its text.

use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

/// Recent query texts and their vectors.
pub struct QueryCache {
    /// `None` when the capacity is 0 (caching off).
    entries: Option<Mutex<LruCache<String, Arc<Vec<f32>>>>>,
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
}

impl QueryCache {
    /// Holds up to `capacity` queries; 0 turns caching off.
    pub fn new(capacity: usize) -> Self {
        let m = crate::metrics::get();
        Self {
            entries: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
            hits: m.query_cache.with_label_values(&["hit"]),
            misses: m.query_cache.with_label_values(&["miss"]),
        }
    }

    /// The cached vector of `text`, counted as a hit or a miss.
    pub fn get(&self, text: &str) -> Option<Arc<Vec<f32>>> {
        let entries = self.entries.as_ref()?;
        let found = entries.lock().get(text).cloned();
        match &found {
            Some(_) => self.hits.inc(),
            None => self.misses.inc(),
        }
        found
    }

    /// Remembers the vector of `text`, evicting the least recently used
    /// query when full.
    pub fn put(&self, text: String, vector: Arc<Vec<f32>>) {
        if let Some(entries) = &self.entries {
            entries.lock().put(text, vector);
        }
    }

    /// Queries held.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.lock().len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: f32) -> Arc<Vec<f32>> {
        Arc::new(vec![x])
    }

    #[test]
    fn recent_queries_are_kept_and_the_oldest_evicted() {
        let c = QueryCache::new(2);
        assert!(c.get("a").is_none());
        c.put("a".into(), v(1.0));
        c.put("b".into(), v(2.0));
        assert_eq!(c.get("a").as_deref(), Some(&vec![1.0]), "a is now the most recent");
        c.put("c".into(), v(3.0));
        assert!(c.get("b").is_none(), "b was least recently used");
        assert_eq!(c.get("a").as_deref(), Some(&vec![1.0]));
        assert_eq!(c.get("c").as_deref(), Some(&vec![3.0]));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let c = QueryCache::new(0);
        c.put("a".into(), v(1.0));
        assert!(c.get("a").is_none());
        assert!(c.is_empty());
    }
}
