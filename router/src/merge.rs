//! Merging per-shard top-k lists into one.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

use vitrine_proto::pb::ScoredItem;

/// Global order: higher score first, then smaller id, so equal scores from
/// different shards always come out in the same order.
pub fn better(a: &ScoredItem, b: &ScoredItem) -> Ordering {
    b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id))
}

struct Head {
    item: ScoredItem,
    list: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    // BinaryHeap is a max-heap: the "greatest" head is the best item.
    fn cmp(&self, other: &Self) -> Ordering {
        better(&other.item, &self.item)
    }
}

/// k-way merge of per-shard lists, keeping each id once (at its best score).
/// Lists are sorted first, so a misbehaving shard cannot break the order.
pub fn merge_top_k(lists: Vec<Vec<ScoredItem>>, k: usize) -> Vec<ScoredItem> {
    let mut iters: Vec<std::vec::IntoIter<ScoredItem>> = lists
        .into_iter()
        .map(|mut l| {
            l.sort_by(better);
            l.into_iter()
        })
        .collect();
    let mut heap = BinaryHeap::with_capacity(iters.len());
    for (i, it) in iters.iter_mut().enumerate() {
        if let Some(item) = it.next() {
            heap.push(Head { item, list: i });
        }
    }
    let mut out = Vec::with_capacity(k);
    let mut seen = HashSet::with_capacity(k);
    while out.len() < k {
        let Some(Head { item, list }) = heap.pop() else { break };
        if let Some(next) = iters[list].next() {
            heap.push(Head { item: next, list });
        }
        if seen.insert(item.id.clone()) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hit(id: u8, score: f32) -> ScoredItem {
        ScoredItem { id: format!("i{id}"), score, ..Default::default() }
    }

    #[test]
    fn merges_in_order_and_dedupes() {
        let a = vec![hit(1, 0.9), hit(2, 0.5)];
        let b = vec![hit(3, 0.8), hit(1, 0.7)];
        let m = merge_top_k(vec![a, b], 10);
        let ids: Vec<&str> = m.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, ["i1", "i3", "i2"]);
    }

    proptest! {
        /// The merged top-k equals the top-k of the union (deduplicated, each
        /// id at its best score), for any lists and k.
        #[test]
        fn merged_top_k_is_top_k_of_union(
            lists in prop::collection::vec(prop::collection::vec((0u8..40, -1.0f32..1.0), 0..30), 0..6),
            k in 1usize..50,
        ) {
            let lists: Vec<Vec<ScoredItem>> = lists.into_iter().map(|l| l.into_iter().map(|(i, s)| hit(i, s)).collect()).collect();
            let mut union: Vec<ScoredItem> = lists.iter().flatten().cloned().collect();
            union.sort_by(better);
            let mut seen = HashSet::new();
            let want: Vec<(String, f32)> = union.into_iter().filter(|h| seen.insert(h.id.clone())).take(k).map(|h| (h.id, h.score)).collect();
            let got: Vec<(String, f32)> = merge_top_k(lists, k).into_iter().map(|h| (h.id, h.score)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
