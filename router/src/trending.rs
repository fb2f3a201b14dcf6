//! The cluster's trending items, as the ranking sees them.
//!
//! Each shard counts the events of the users it owns
//! (`vitrine_shard::trending`); an item's cluster-wide score is the sum of
//! the shards' scores. Users are spread evenly over shards, so every shard's
//! list samples the same activity and the sum of the shards' top lists
//! (each [`TrendingCache::DEPTH`] deep) finds the cluster's top items.
//!
//! The list changes slowly next to request rates, so one fan-out refreshes
//! it for every request of the next [`RouterSettings::trending_refresh`]
//! (crate::service::RouterSettings). Only one refresh runs at a time, and
//! nobody queues behind it: while it runs, callers take the previous list
//! (only the very first callers, with no list yet, wait for it, and never
//! past their own deadline). A failed refresh keeps the previous list for
//! another interval: trending is a ranking signal, not an answer a request
//! should fail for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tonic::Request;
use vitrine_proto::pb;

use crate::deadline::Deadline;
use crate::fanout::Shards;

/// Trending items, best first, with scores normalised so the first has 1.
pub type TrendingList = Arc<Vec<(String, f32)>>;

/// The last fetched list and when it was fetched.
pub struct TrendingCache {
    refresh: Duration,
    current: RwLock<Option<(Instant, TrendingList)>>,
    /// Held while a refresh runs.
    refreshing: tokio::sync::Mutex<()>,
}

impl TrendingCache {
    /// Items asked of each shard and kept after the sum.
    pub const DEPTH: u32 = 200;

    pub fn new(refresh: Duration) -> Self {
        Self { refresh, current: RwLock::new(None), refreshing: tokio::sync::Mutex::new(()) }
    }

    /// The list if it is younger than the refresh interval (`fresh`), or
    /// whatever list there is.
    fn cached(&self, fresh: bool) -> Option<TrendingList> {
        let current = self.current.read();
        let (at, list) = current.as_ref()?;
        (!fresh || at.elapsed() < self.refresh).then(|| Arc::clone(list))
    }

    /// The current list: cached when younger than the refresh interval,
    /// otherwise refreshed from the shards within `deadline` (see the module
    /// documentation for callers that arrive during a refresh).
    pub async fn get(&self, shards: &Shards, deadline: Deadline) -> TrendingList {
        if let Some(list) = self.cached(true) {
            return list;
        }
        let _refreshing = match self.refreshing.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                if let Some(stale) = self.cached(false) {
                    return stale;
                }
                // No list yet: wait for the first refresh, within the deadline.
                let waited = tokio::time::timeout(deadline.remaining(), self.refreshing.lock()).await;
                match waited {
                    Ok(guard) => guard,
                    Err(_) => return TrendingList::default(),
                }
            }
        };
        // Someone may have refreshed while this caller waited.
        if let Some(list) = self.cached(true) {
            return list;
        }
        let req = pb::ShardTrendingRequest { k: Self::DEPTH };
        let fetched = shards
            .gather(deadline, |mut c, budget| {
                let mut r = Request::new(req);
                r.set_timeout(budget);
                async move { c.trending(r).await }
            })
            .await;
        match fetched {
            Ok(g) => {
                let list = Arc::new(sum(g.answers.into_iter().map(|(_, r)| r.items), Self::DEPTH as usize));
                *self.current.write() = Some((Instant::now(), Arc::clone(&list)));
                list
            }
            Err(e) => {
                tracing::warn!(code = ?e.code(), error = e.message(), "trending refresh failed; serving the last list");
                // Try again after another interval, not on the next request.
                let mut current = self.current.write();
                if let Some((at, _)) = current.as_mut() {
                    *at = Instant::now();
                }
                current.as_ref().map(|(_, list)| Arc::clone(list)).unwrap_or_default()
            }
        }
    }
}

/// Adds the shards' lists per item and keeps the best `depth`, normalised
/// so that the best has 1 (ties by id).
pub fn sum(lists: impl IntoIterator<Item = Vec<pb::TrendingItem>>, depth: usize) -> Vec<(String, f32)> {
    let mut total: HashMap<String, f64> = HashMap::new();
    for list in lists {
        for t in list {
            if t.score.is_finite() && t.score > 0.0 {
                *total.entry(t.id).or_default() += t.score;
            }
        }
    }
    let mut all: Vec<(String, f64)> = total.into_iter().collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(depth);
    let best = all.first().map_or(1.0, |(_, s)| *s);
    all.into_iter().map(|(id, s)| (id, (s / best) as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, score: f64) -> pb::TrendingItem {
        pb::TrendingItem { id: id.into(), score }
    }

    #[test]
    fn fresh_and_stale_lists() {
        let list: TrendingList = Arc::new(vec![("a".to_string(), 1.0)]);
        let never_fresh = TrendingCache::new(Duration::ZERO);
        assert!(never_fresh.cached(false).is_none(), "nothing fetched yet");
        *never_fresh.current.write() = Some((Instant::now(), Arc::clone(&list)));
        assert!(never_fresh.cached(true).is_none(), "older than a zero interval");
        assert_eq!(never_fresh.cached(false), Some(Arc::clone(&list)), "but served while a refresh runs");
        let long = TrendingCache::new(Duration::from_secs(3600));
        *long.current.write() = Some((Instant::now(), Arc::clone(&list)));
        assert_eq!(long.cached(true), Some(list));
    }

    #[test]
    fn shards_lists_add_up_per_item() {
        let got = sum(vec![vec![t("a", 3.0), t("b", 2.0)], vec![t("b", 2.0), t("c", 1.0)], vec![]], 10);
        assert_eq!(got, vec![("b".to_string(), 1.0), ("a".to_string(), 0.75), ("c".to_string(), 0.25)]);
    }

    #[test]
    fn depth_ties_and_bad_scores() {
        let got = sum(vec![vec![t("z", 1.0), t("y", 1.0), t("x", f64::NAN), t("w", -1.0), t("v", 0.5)]], 2);
        assert_eq!(got, vec![("y".to_string(), 1.0), ("z".to_string(), 1.0)]);
        assert!(sum(Vec::<Vec<pb::TrendingItem>>::new(), 5).is_empty());
    }
}
