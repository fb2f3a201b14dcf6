//! The evaluation protocol: which items a model may learn from, which it is
//! asked to predict, and the random choices (user subset, negatives, held-out
//! items), each drawn from its own seeded stream so that one choice never
//! shifts another.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// One leave-one-out test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Index of the user in the data set.
    pub user: usize,
    /// The items before the target, oldest first.
    pub history: Vec<u32>,
    /// The item to predict: the user's last.
    pub target: u32,
}

/// Training data and test cases of a leave-one-out split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Per user (same indices as the data set), everything but the last item.
    pub train: Vec<Vec<u32>>,
    /// One case per user with at least two items.
    pub cases: Vec<Case>,
}

/// Leave-one-out: each user's last item is the target, the items before it
/// are both the input history and the user's training data. Targets never
/// reach `train`, so statistics fitted on it (co-visitation, popularity)
/// cannot have seen what they are asked to predict.
pub fn split(sequences: &[Vec<u32>]) -> Split {
    let train = sequences.iter().map(|s| s[..s.len().saturating_sub(1)].to_vec()).collect();
    let cases = sequences
        .iter()
        .enumerate()
        .filter_map(|(user, s)| match s.split_last() {
            Some((&target, history)) if !history.is_empty() => Some(Case { user, history: history.to_vec(), target }),
            _ => None,
        })
        .collect();
    Split { train, cases }
}

/// Every sequence without its last item: the data of the validation split,
/// in which the last item is never seen (not as target, history or training).
pub fn without_last(sequences: &[Vec<u32>]) -> Vec<Vec<u32>> {
    sequences.iter().map(|s| s[..s.len().saturating_sub(1)].to_vec()).collect()
}

/// Independent random streams, so that e.g. asking for fewer users does not
/// change which negatives a user gets.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub enum Stream {
    Users = 1,
    ShuffleTargets = 2,
    Negatives = 3,
    ColdItems = 4,
    CandidateOrder = 5,
}

/// A generator for (seed, stream, index). splitmix64 spreads neighbouring
/// inputs over the whole seed space. `StdRng` is reproducible for the `rand`
/// version pinned in Cargo.lock, which is what reruns compare against.
pub fn rng(seed: u64, stream: Stream, index: u64) -> StdRng {
    let mut x = seed ^ (stream as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(x ^ (x >> 31))
}

/// Indices of the cases to evaluate: all of them, or the first `n` after a
/// seeded shuffle, returned in ascending order.
pub fn subset(n_cases: usize, n: Option<usize>, seed: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n_cases).collect();
    if let Some(n) = n.filter(|&n| n < n_cases) {
        all.shuffle(&mut rng(seed, Stream::Users, 0));
        all.truncate(n);
        all.sort_unstable();
    }
    all
}

/// Permutes targets across cases: the honesty check. A model that is scored
/// against someone else's target must fall to chance.
pub fn shuffle_targets(cases: &mut [Case], seed: u64) {
    let mut targets: Vec<u32> = cases.iter().map(|c| c.target).collect();
    targets.shuffle(&mut rng(seed, Stream::ShuffleTargets, 0));
    for (c, t) in cases.iter_mut().zip(targets) {
        c.target = t;
    }
}

/// Up to `count` distinct items from `0..n_items`, uniformly, none in
/// `exclude` (the user's items). When fewer are available, all of them.
pub fn sample_negatives(n_items: usize, exclude: &HashSet<u32>, count: usize, rng: &mut StdRng) -> Vec<u32> {
    let excluded_in_range = exclude.iter().filter(|&&i| (i as usize) < n_items).count();
    let available = n_items - excluded_in_range;
    if available <= count {
        let mut all: Vec<u32> = (0..n_items as u32).filter(|i| !exclude.contains(i)).collect();
        all.shuffle(rng);
        return all;
    }
    // Rejection sampling: users hold a handful of items out of thousands, so
    // a draw is rarely rejected. When more than half the catalogue is
    // excluded, `available <= count` above usually takes over.
    let mut chosen = Vec::with_capacity(count);
    let mut seen = HashSet::with_capacity(count);
    while chosen.len() < count {
        let i = rng.random_range(0..n_items as u32);
        if !exclude.contains(&i) && seen.insert(i) {
            chosen.push(i);
        }
    }
    chosen
}

/// A mask of items held out of training entirely (cold-start): a seeded
/// `fraction` of the catalogue, at least one item when there are any.
pub fn hold_out_items(n_items: usize, fraction: f64, seed: u64) -> Vec<bool> {
    let mut order: Vec<usize> = (0..n_items).collect();
    order.shuffle(&mut rng(seed, Stream::ColdItems, 0));
    let n = ((n_items as f64 * fraction).round() as usize).clamp(n_items.min(1), n_items);
    let mut held = vec![false; n_items];
    for &i in &order[..n] {
        held[i] = true;
    }
    held
}

/// Training sequences with the held-out items removed.
pub fn without_items(train: &[Vec<u32>], held: &[bool]) -> Vec<Vec<u32>> {
    let keep = |i: &&u32| !held.get(**i as usize).copied().unwrap_or(false);
    train.iter().map(|s| s.iter().filter(keep).copied().collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::{fit, TrainParams};

    fn sequences() -> Vec<Vec<u32>> {
        vec![vec![0, 1, 2, 3], vec![4], vec![], vec![2, 5, 1], vec![1, 1], vec![3, 4, 5, 0, 2, 6]]
    }

    #[test]
    fn no_target_reaches_training() {
        let seqs = sequences();
        let s = split(&seqs);
        assert_eq!(s.train.len(), seqs.len());
        for (u, seq) in seqs.iter().enumerate() {
            assert_eq!(s.train[u], seq[..seq.len().saturating_sub(1)], "user {u}");
        }
        // Users shorter than 2 have no case; every case is (prefix, last).
        assert_eq!(s.cases.iter().map(|c| c.user).collect::<Vec<_>>(), [0, 3, 4, 5]);
        for c in &s.cases {
            let seq = &seqs[c.user];
            assert_eq!(c.target, *seq.last().unwrap());
            assert_eq!(c.history, seq[..seq.len() - 1]);
        }
    }

    #[test]
    fn the_fit_is_a_function_of_the_training_part_only() {
        let seqs = sequences();
        let p = TrainParams::default();
        let reference = fit(8, &split(&seqs).train, &p);
        // Change every target (to a different item each time): the fitted
        // signals must not move.
        for shift in 1..8u32 {
            let mut changed = seqs.clone();
            for s in changed.iter_mut().filter(|s| s.len() >= 2) {
                if let Some(last) = s.last_mut() {
                    *last = (*last + shift) % 8;
                }
            }
            assert_ne!(changed, seqs);
            assert_eq!(fit(8, &split(&changed).train, &p), reference, "shift {shift}");
        }
        // The control: fitting on the full sequences does differ.
        assert_ne!(fit(8, &seqs, &p), reference);
    }

    #[test]
    fn subsets_are_deterministic() {
        assert_eq!(subset(10, None, 1), (0..10).collect::<Vec<_>>());
        assert_eq!(subset(10, Some(20), 1), (0..10).collect::<Vec<_>>());
        let a = subset(1000, Some(50), 7);
        assert_eq!(a.len(), 50);
        assert_eq!(a, subset(1000, Some(50), 7));
        assert_ne!(a, subset(1000, Some(50), 8));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn shuffled_targets_are_a_permutation() {
        let mut cases = split(&sequences()).cases;
        let before: Vec<u32> = cases.iter().map(|c| c.target).collect();
        let histories: Vec<Vec<u32>> = cases.iter().map(|c| c.history.clone()).collect();
        shuffle_targets(&mut cases, 3);
        let mut after: Vec<u32> = cases.iter().map(|c| c.target).collect();
        assert_eq!(cases.iter().map(|c| c.history.clone()).collect::<Vec<_>>(), histories);
        after.sort_unstable();
        let mut sorted = before;
        sorted.sort_unstable();
        assert_eq!(after, sorted);
    }

    #[test]
    fn negatives_are_deterministic_distinct_and_never_the_users_items() {
        let user: HashSet<u32> = [3, 17, 42, 99, 500].into_iter().collect();
        let a = sample_negatives(1000, &user, 99, &mut rng(5, Stream::Negatives, 12));
        let b = sample_negatives(1000, &user, 99, &mut rng(5, Stream::Negatives, 12));
        assert_eq!(a, b, "same seed and user, same negatives");
        assert_ne!(a, sample_negatives(1000, &user, 99, &mut rng(5, Stream::Negatives, 13)));
        assert_eq!(a.len(), 99);
        assert!(a.iter().all(|i| !user.contains(i) && *i < 1000));
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 99, "no repeats");
        // Many users, tiny catalogue: the exclusion holds whatever the draw.
        for u in 0..200 {
            let mine: HashSet<u32> = [(u % 20) as u32, ((u * 7) % 20) as u32].into_iter().collect();
            let negs = sample_negatives(20, &mine, 10, &mut rng(1, Stream::Negatives, u));
            assert_eq!(negs.len(), 10);
            assert!(negs.iter().all(|i| !mine.contains(i)));
        }
        // Fewer available than asked: all of them.
        let mut all = sample_negatives(6, &user, 99, &mut rng(5, Stream::Negatives, 0));
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 4, 5]);
    }

    #[test]
    fn the_validation_split_never_sees_the_last_item() {
        let seqs = vec![vec![1, 2, 3, 4], vec![5, 6, 7], vec![8, 9]];
        let s = split(&without_last(&seqs));
        assert_eq!(s.train, vec![vec![1, 2], vec![5], vec![]]);
        let targets: Vec<u32> = s.cases.iter().map(|c| c.target).collect();
        assert_eq!(targets, [3, 6], "second-to-last items; a two-item user has no validation case");
        assert!(s.cases.iter().all(|c| !c.history.contains(&4) && !c.history.contains(&7)));
    }

    #[test]
    fn held_out_items_vanish_from_training() {
        let held = hold_out_items(100, 0.1, 9);
        assert_eq!(held.iter().filter(|h| **h).count(), 10);
        assert_eq!(held, hold_out_items(100, 0.1, 9));
        assert_eq!(hold_out_items(3, 0.1, 9).iter().filter(|h| **h).count(), 1, "at least one item");
        let mask = vec![false, true, false, true];
        assert_eq!(without_items(&[vec![0, 1, 2, 3, 1], vec![3]], &mask), vec![vec![0, 2], vec![]]);
        // A held-out item gets no signals and occurs in nobody's neighbours.
        let s = fit(4, &without_items(&[vec![0, 1, 2, 3], vec![2, 1, 0]], &mask), &TrainParams::default());
        for i in [1usize, 3] {
            assert!(s[i].neighbours.is_empty() && s[i].popularity == 0.0);
        }
        assert!(s.iter().flat_map(|x| &x.neighbours).all(|(b, _)| !mask[*b as usize]));
    }
}
