//! Ranking metrics. Every case has exactly one relevant item (the target), so
//! the ideal DCG is 1 and NDCG@k is 1 / log2(rank + 1) when the target is in
//! the top k.
//!
//! A rank is 1-based; `None` means the target was not returned.

use std::collections::HashSet;

/// Share of cases whose target is in the top `k`.
pub fn hit_rate(ranks: &[Option<usize>], k: usize) -> f64 {
    mean(ranks.iter().map(|r| if r.is_some_and(|r| r <= k) { 1.0 } else { 0.0 }))
}

/// Mean NDCG@k with one relevant item per case.
pub fn ndcg(ranks: &[Option<usize>], k: usize) -> f64 {
    mean(ranks.iter().map(|r| match r {
        Some(r) if *r <= k => 1.0 / ((*r as f64) + 1.0).log2(),
        _ => 0.0,
    }))
}

/// Mean reciprocal rank within the returned list (0 when absent).
pub fn mrr(ranks: &[Option<usize>]) -> f64 {
    mean(ranks.iter().map(|r| r.map_or(0.0, |r| 1.0 / r as f64)))
}

/// Distinct items in any of the lists, as a share of the catalogue.
pub fn coverage<'a>(lists: impl IntoIterator<Item = &'a [u32]>, catalogue: usize) -> f64 {
    if catalogue == 0 {
        return 0.0;
    }
    let distinct: HashSet<u32> = lists.into_iter().flatten().copied().collect();
    distinct.len() as f64 / catalogue as f64
}

/// Intra-list diversity: 1 − the mean pairwise cosine of the items of one
/// list. `None` when fewer than two of its items have a vector.
pub fn list_diversity<'v>(list: &[u32], vector: impl Fn(u32) -> Option<&'v [f32]>) -> Option<f64> {
    diversity_of(&list.iter().filter_map(|&i| vector(i)).collect::<Vec<_>>())
}

/// [`list_diversity`] over vectors already looked up.
pub fn diversity_of(vectors: &[&[f32]]) -> Option<f64> {
    let mut sum = 0.0;
    let mut pairs = 0usize;
    for (i, a) in vectors.iter().enumerate() {
        for b in &vectors[i + 1..] {
            sum += cosine(a, b);
            pairs += 1;
        }
    }
    (pairs > 0).then(|| 1.0 - sum / pairs as f64)
}

/// Cosine similarity; 0 for a zero vector. Computed in full rather than as a
/// dot product, because a router other than ours may return unnormalised
/// vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Arithmetic mean; 0 for no values.
pub fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = values.into_iter().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// 1-based position of `target` in `hits`.
pub fn rank_of<T: PartialEq>(hits: &[T], target: &T) -> Option<usize> {
    hits.iter().position(|h| h == target).map(|p| p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hit_rate_ndcg_and_mrr_match_hand_computed_values() {
        let ranks = [Some(1), Some(3), None, Some(12)];
        assert!(close(hit_rate(&ranks, 1), 0.25));
        assert!(close(hit_rate(&ranks, 5), 0.5));
        assert!(close(hit_rate(&ranks, 10), 0.5));
        assert!(close(hit_rate(&ranks, 20), 0.75));
        // Rank 1 → 1/log2(2) = 1; rank 3 → 1/log2(4) = 0.5.
        assert!(close(ndcg(&ranks, 5), (1.0 + 0.5) / 4.0));
        assert!(close(ndcg(&ranks, 10), 0.375));
        assert!(close(ndcg(&ranks, 20), (1.0 + 0.5 + 1.0 / 13f64.log2()) / 4.0));
        assert!(close(mrr(&ranks), (1.0 + 1.0 / 3.0 + 0.0 + 1.0 / 12.0) / 4.0));
        assert_eq!(hit_rate(&[], 10), 0.0);
        assert_eq!(ndcg(&[None], 10), 0.0);
    }

    #[test]
    fn ranks_are_one_based() {
        assert_eq!(rank_of(&["a", "b", "c"], &"c"), Some(3));
        assert_eq!(rank_of(&["a"], &"z"), None);
    }

    #[test]
    fn coverage_counts_distinct_items() {
        let lists: [&[u32]; 3] = [&[0, 1], &[1, 2], &[]];
        assert!(close(coverage(lists, 4), 0.75));
        assert_eq!(coverage(std::iter::empty::<&[u32]>(), 0), 0.0);
    }

    #[test]
    fn diversity_is_one_minus_mean_pairwise_cosine() {
        let (x, y): (&[f32], &[f32]) = (&[1.0, 0.0], &[0.0, 2.0]);
        assert_eq!(diversity_of(&[x, y]), Some(1.0), "orthogonal");
        assert_eq!(diversity_of(&[x, x]), Some(0.0), "identical");
        // Pairs (x,y)=0, (x,x)=1, (y,x)=0: mean 1/3.
        assert!(close(diversity_of(&[x, y, x]).unwrap(), 2.0 / 3.0));
        // 45°: cosine 1/√2, and scale does not matter.
        let d: &[f32] = &[3.0, 3.0];
        assert!((diversity_of(&[x, d]).unwrap() - (1.0 - 0.5f64.sqrt())).abs() < 1e-7);
        assert_eq!(diversity_of(&[x]), None);
        assert_eq!(cosine(&[0.0, 0.0], x), 0.0);
        let v = [vec![1.0f32, 0.0], vec![0.0, 1.0]];
        assert_eq!(list_diversity(&[0, 1, 7], |i| v.get(i as usize).map(Vec::as_slice)), Some(1.0));
    }
}
