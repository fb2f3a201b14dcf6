//! The global ranking phase of `Recommend` and `SimilarItems`, run on the
//! router after the shards' candidates are merged (Vespa's "global phase").
//!
//! Each candidate gets
//!
//! ```text
//! score = w_c · content + w_b · behaviour / max(behaviour) + w_p · popularity
//!       + w_f · 2^(−age / half_life) + w_t · trending + Σ rule boosts
//!       + w_fb · (ctr − prior ctr)
//! ```
//!
//! where `content` is the cosine to the user vector, `behaviour` the summed,
//! recency-weighted neighbour weights of the recent history items (normalised
//! by the best candidate's, so the weight means the same for every user),
//! `popularity` the trained prior, `trending` the cluster's recent activity on
//! the item (normalised so the most trending item has 1; `crate::trending`)
//! weighted by `w_t`, and `ctr` the posterior click rate learnt
//! online from feedback. Then MMR picks the final list for diversity, and the
//! last slots may be explored (ε-greedy) with each slot's propensity kept.

use std::collections::HashMap;

use parking_lot::Mutex;
use rand::Rng;
use vitrine_proto::pb;

/// The router's ranking settings; requests may override them
/// ([`RankSettings::with_overrides`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RankSettings {
    pub content: f32,
    pub behaviour: f32,
    pub popularity: f32,
    pub freshness: f32,
    /// Age at which freshness halves.
    pub freshness_half_life_days: f32,
    pub diversity_lambda: f32,
    pub explore_epsilon: f32,
    pub explore_slots: usize,
    pub feedback: f32,
    /// Weight of the trending score; above 0, trending items are candidates.
    pub trending: f32,
    /// Recent history items whose neighbours are candidates.
    pub behaviour_history: usize,
    /// Multiplier of a history item's neighbour weights per step back in time.
    pub behaviour_recency: f32,
    /// Candidates asked from the index.
    pub ann_candidates: usize,
    /// Behavioural candidates scored, best first.
    pub behaviour_candidates: usize,
}

impl Default for RankSettings {
    /// Tuned on the Amazon Beauty validation protocol (docs/QUALITY.md):
    /// behaviour carries most of the signal on shopping data, content breaks
    /// its ties and covers items without behaviour.
    fn default() -> Self {
        Self {
            content: 1.5,
            behaviour: 1.0,
            popularity: 0.0,
            freshness: 0.0,
            freshness_half_life_days: 30.0,
            diversity_lambda: 1.0,
            explore_epsilon: 0.0,
            explore_slots: 2,
            feedback: 0.5,
            // Off for users with a history: on Amazon Beauty the trained
            // terms carry the signal. Users with nothing to go on rank by
            // popularity and trending (crate::pipeline).
            trending: 0.0,
            behaviour_history: 10,
            behaviour_recency: 0.5,
            // With popularity, freshness and rules off, a content-only
            // candidate below the k-th nearest can never reach the top k, so
            // depth past k only serves the other terms. 50 measured the same
            // as 100 and 200 on Amazon Beauty (docs/QUALITY.md) at a quarter
            // of the graph search.
            ann_candidates: 50,
            behaviour_candidates: 300,
        }
    }
}

impl RankSettings {
    /// These settings with a request's overrides applied (validated by the caller).
    pub fn with_overrides(&self, r: Option<&pb::Ranking>) -> Self {
        let mut s = self.clone();
        if let Some(r) = r {
            s.content = r.content.unwrap_or(s.content);
            s.behaviour = r.behaviour.unwrap_or(s.behaviour);
            s.popularity = r.popularity.unwrap_or(s.popularity);
            s.freshness = r.freshness.unwrap_or(s.freshness);
            s.diversity_lambda = r.diversity_lambda.unwrap_or(s.diversity_lambda);
            s.explore_epsilon = r.explore_epsilon.unwrap_or(s.explore_epsilon);
            s.explore_slots = r.explore_slots.map_or(s.explore_slots, |n| n as usize);
            s.feedback = r.feedback.unwrap_or(s.feedback);
            s.trending = r.trending.unwrap_or(s.trending);
        }
        s
    }
}

/// Where a candidate came from (the first source that proposed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Content,
    Behaviour,
    Popular,
    Trending,
    Requested,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Content => "content",
            Source::Behaviour => "behaviour",
            Source::Popular => "popular",
            Source::Trending => "trending",
            Source::Requested => "candidates",
        }
    }
}

/// One merged candidate with its features.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub hit: pb::ScoredItem,
    pub source: Source,
    /// Cosine to the user vector.
    pub content: f32,
    /// Raw behavioural score (before normalisation).
    pub behaviour: f32,
    /// The history item that contributed most to `behaviour`.
    pub behaviour_from: Option<String>,
    /// Sum of matching rule boosts.
    pub rules: f32,
    /// Freshness in [0, 1] (0 when unknown).
    pub freshness: f32,
    /// Posterior click rate minus the prior, from [`Feedback`].
    pub feedback: f32,
    /// Trending score in [0, 1] (0 when not trending).
    pub trending: f32,
    pub explanation: pb::Explanation,
    pub score: f32,
}

impl Candidate {
    pub fn new(hit: pb::ScoredItem, source: Source) -> Self {
        Self {
            content: hit.score,
            hit,
            source,
            behaviour: 0.0,
            behaviour_from: None,
            rules: 0.0,
            freshness: 0.0,
            feedback: 0.0,
            trending: 0.0,
            explanation: pb::Explanation::default(),
            score: 0.0,
        }
    }
}

/// `2^(−age / half_life)`, 0 for unknown or future dates.
pub fn freshness(published_ms: i64, now_ms: i64, half_life_days: f32) -> f32 {
    if published_ms <= 0 || half_life_days <= 0.0 {
        return 0.0;
    }
    let age_days = (now_ms - published_ms).max(0) as f32 / 86_400_000.0;
    (-(age_days / half_life_days) * std::f32::consts::LN_2).exp()
}

/// Scores every candidate and sorts best first (ties by id).
pub fn score_all(cands: &mut [Candidate], s: &RankSettings) {
    let max_behaviour = cands.iter().map(|c| c.behaviour).fold(0f32, f32::max);
    for c in cands.iter_mut() {
        let b = if max_behaviour > 0.0 { c.behaviour / max_behaviour } else { 0.0 };
        let e = pb::Explanation {
            source: c.source.name().to_string(),
            because_of: c.behaviour_from.clone().unwrap_or_default(),
            content: s.content * c.content,
            behaviour: s.behaviour * b,
            popularity: s.popularity * c.hit.popularity,
            freshness: s.freshness * c.freshness,
            rules: c.rules,
            feedback: s.feedback * c.feedback,
            trending: s.trending * c.trending,
        };
        c.score = e.content + e.behaviour + e.popularity + e.freshness + e.rules + e.feedback + e.trending;
        c.explanation = e;
    }
    cands.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.hit.id.cmp(&b.hit.id)));
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Maximal marginal relevance (Carbonell & Goldstein): repeatedly takes the
/// candidate maximising `λ·score − (1−λ)·max cosine to those already taken`.
/// `cands` must be sorted best first; λ = 1 keeps that order. Candidates
/// without a vector are treated as dissimilar to everything. O(k·n).
pub fn mmr(cands: Vec<Candidate>, k: usize, lambda: f32) -> Vec<Candidate> {
    if lambda >= 1.0 || cands.len() <= 1 {
        let mut c = cands;
        c.truncate(k);
        return c;
    }
    let mut rest = cands;
    let mut out: Vec<Candidate> = Vec::with_capacity(k.min(rest.len()));
    // Highest similarity of each remaining candidate to the selected set.
    let mut max_sim = vec![f32::NEG_INFINITY; rest.len()];
    while out.len() < k && !rest.is_empty() {
        let mut best = 0;
        let mut best_value = f32::NEG_INFINITY;
        for (i, c) in rest.iter().enumerate() {
            let redundancy = if out.is_empty() { 0.0 } else { max_sim[i].max(0.0) };
            let v = lambda * c.score - (1.0 - lambda) * redundancy;
            if v > best_value {
                best_value = v;
                best = i;
            }
        }
        let chosen = rest.remove(best);
        max_sim.remove(best);
        if let Some(cv) = chosen.hit.vector.as_ref() {
            for (i, c) in rest.iter().enumerate() {
                if let Some(v) = c.hit.vector.as_ref() {
                    max_sim[i] = max_sim[i].max(cosine(&cv.values, &v.values));
                }
            }
        }
        out.push(chosen);
    }
    out
}

/// `explanation.source` of a slot that exploration filled.
pub const EXPLORED: &str = "explore";

/// Fills the top `k` slots from `ranked` (best first), exploring in the last
/// `slots` of them: each explored slot takes, with probability ε, a uniformly
/// random candidate among those not yet shown (from the next `pool` ranked
/// ones), and otherwise the best remaining. Returns the slots with their
/// propensities: P(this item in this slot | the slots above), exact under
/// this policy, so impressions can be re-weighted off-line (IPS).
pub fn explore(
    mut ranked: Vec<Candidate>,
    k: usize,
    slots: usize,
    epsilon: f32,
    pool: usize,
    rng: &mut impl Rng,
) -> Vec<(Candidate, f32)> {
    let fixed = k.saturating_sub(slots).min(ranked.len());
    let mut rest = ranked.split_off(fixed);
    let mut out: Vec<(Candidate, f32)> = ranked.into_iter().map(|c| (c, 1.0)).collect();
    rest.truncate(pool.max(k - fixed));
    while out.len() < k && !rest.is_empty() {
        let n = rest.len() as f32;
        let explore = epsilon > 0.0 && rest.len() > 1 && rng.random::<f32>() < epsilon;
        let pick = if explore { rng.random_range(0..rest.len()) } else { 0 };
        let p_random = if rest.len() > 1 { epsilon / n } else { 0.0 };
        let propensity =
            if pick == 0 { (1.0 - if rest.len() > 1 { epsilon } else { 0.0 }) + p_random } else { p_random };
        let mut c = rest.remove(pick);
        if explore && pick != 0 {
            c.explanation.source = EXPLORED.to_string();
        }
        out.push((c, propensity));
    }
    out
}

/// How many of the served slots exploration filled with another item than
/// the best remaining one (an exploring draw that lands on that item changes
/// nothing a shopper sees, so it does not count).
pub fn explored_slots(served: &[(Candidate, f32)]) -> usize {
    served.iter().filter(|(c, _)| c.explanation.source == EXPLORED).count()
}

/// Click and purchase rates learnt online from feedback: impressions are
/// counted when items are served, rewards when click, add-to-cart or
/// purchase events arrive. Kept in the router's memory (per router; lost on
/// restart) and bounded: when full, every count is halved and items whose
/// impressions fall below one are forgotten, which also ages old evidence.
pub struct Feedback {
    counts: Mutex<HashMap<String, (f32, f32)>>,
    capacity: usize,
    /// Beta prior: `prior_rewards` successes in `prior_impressions` trials.
    prior_rewards: f32,
    prior_impressions: f32,
}

impl Feedback {
    pub fn new(capacity: usize) -> Self {
        Self { counts: Mutex::new(HashMap::new()), capacity, prior_rewards: 1.0, prior_impressions: 20.0 }
    }

    fn prior(&self) -> f32 {
        self.prior_rewards / self.prior_impressions
    }

    fn make_room(&self, map: &mut HashMap<String, (f32, f32)>) {
        if map.len() >= self.capacity {
            map.retain(|_, (imp, rew)| {
                *imp /= 2.0;
                *rew /= 2.0;
                *imp >= 1.0
            });
        }
    }

    pub fn impressions<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut map = self.counts.lock();
        for id in ids {
            if !map.contains_key(id) {
                self.make_room(&mut map);
            }
            map.entry(id.to_string()).or_insert((0.0, 0.0)).0 += 1.0;
        }
    }

    /// A positive reward for an item; ignored for items never served, whose
    /// rate would be undefined.
    pub fn reward(&self, id: &str) {
        if let Some((imp, rew)) = self.counts.lock().get_mut(id) {
            // Rewards never exceed impressions (a shopper clicking twice).
            *rew = (*rew + 1.0).min(*imp);
        }
    }

    /// Posterior mean click rate minus the prior mean: positive for items
    /// that earn more than an unknown item is assumed to.
    pub fn lift(&self, id: &str) -> f32 {
        self.counts
            .lock()
            .get(id)
            .map_or(0.0, |(imp, rew)| (rew + self.prior_rewards) / (imp + self.prior_impressions) - self.prior())
    }

    pub fn len(&self) -> usize {
        self.counts.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cand(id: &str, content: f32, behaviour: f32, vector: Option<Vec<f32>>) -> Candidate {
        let hit = pb::ScoredItem {
            id: id.into(),
            score: content,
            vector: vector.map(|values| pb::Vector { values }),
            ..Default::default()
        };
        let mut c = Candidate::new(hit, Source::Content);
        c.behaviour = behaviour;
        c
    }

    #[test]
    fn scores_add_weighted_normalised_terms() {
        let s = RankSettings { content: 1.0, behaviour: 2.0, ..Default::default() };
        let mut cs = vec![cand("a", 0.5, 0.0, None), cand("b", 0.1, 4.0, None), cand("c", 0.2, 2.0, None)];
        score_all(&mut cs, &s);
        let ids: Vec<&str> = cs.iter().map(|c| c.hit.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "a"]);
        assert!((cs[0].score - (0.1 + 2.0)).abs() < 1e-6, "behaviour is normalised by the best candidate's");
        assert!((cs[1].score - (0.2 + 1.0)).abs() < 1e-6);
        assert!((cs[0].explanation.behaviour - 2.0).abs() < 1e-6);
    }

    #[test]
    fn mmr_trades_score_for_diversity() {
        let s = RankSettings { content: 1.0, behaviour: 0.0, ..Default::default() };
        // a and b are near duplicates; c is different and slightly worse.
        let mut cs = vec![
            cand("a", 0.9, 0.0, Some(vec![1.0, 0.0])),
            cand("b", 0.89, 0.0, Some(vec![0.99, 0.141])),
            cand("c", 0.8, 0.0, Some(vec![0.0, 1.0])),
        ];
        score_all(&mut cs, &s);
        let plain: Vec<String> = mmr(cs.clone(), 2, 1.0).into_iter().map(|c| c.hit.id).collect();
        assert_eq!(plain, ["a", "b"]);
        let diverse: Vec<String> = mmr(cs, 2, 0.5).into_iter().map(|c| c.hit.id).collect();
        assert_eq!(diverse, ["a", "c"]);
    }

    #[test]
    fn exploration_propensities_are_probabilities_of_the_policy() {
        let mk = |n: usize| (0..n).map(|i| cand(&format!("i{i:02}"), 1.0 - i as f32 / 100.0, 0.0, None)).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // ε = 0: the ranking is served as is, every propensity 1.
        let served = explore(mk(20), 5, 2, 0.0, 10, &mut rng);
        assert!(served.iter().all(|(_, p)| *p == 1.0));
        assert_eq!(
            served.iter().map(|(c, _)| c.hit.id.as_str()).collect::<Vec<_>>(),
            ["i00", "i01", "i02", "i03", "i04"]
        );
        // ε = 0.5 over a pool of 10: the first exploring slot shows its greedy
        // item with 0.5 + 0.05 and any other with 0.05; the fixed slots are 1.
        let trials = 20_000;
        let mut greedy = 0;
        for _ in 0..trials {
            let served = explore(mk(20), 5, 2, 0.5, 10, &mut rng);
            assert_eq!(served.len(), 5);
            assert!(served[..3].iter().all(|(_, p)| *p == 1.0));
            let (c, p) = &served[3];
            if c.hit.id == "i03" {
                assert!((p - 0.55).abs() < 1e-6);
                greedy += 1;
            } else {
                assert!((p - 0.05).abs() < 1e-6);
            }
        }
        let rate = greedy as f64 / trials as f64;
        assert!((rate - 0.55).abs() < 0.02, "greedy item shown at rate {rate}, propensity says 0.55");
    }

    #[test]
    fn explored_slots_are_those_exploration_changed() {
        let mk = |n: usize| (0..n).map(|i| cand(&format!("i{i:02}"), 1.0 - i as f32 / 100.0, 0.0, None)).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        assert_eq!(explored_slots(&explore(mk(20), 5, 2, 0.0, 10, &mut rng)), 0);
        let mut explored = 0;
        for _ in 0..1000 {
            let served = explore(mk(20), 5, 2, 1.0, 10, &mut rng);
            let n = explored_slots(&served);
            assert!(n <= 2, "only the last 2 slots explore");
            assert!(served[..3].iter().all(|(c, _)| c.explanation.source != EXPLORED));
            explored += n;
        }
        // ε = 1 over pools of 10 and then 9 candidates: a slot draws its
        // greedy item again with probability 1/10 or 1/9, so about 89% of
        // the exploring slots show another item.
        let rate = explored as f64 / 2000.0;
        assert!((0.86..0.93).contains(&rate), "explored rate {rate}");
    }

    #[test]
    fn feedback_learns_rates_and_stays_bounded() {
        let f = Feedback::new(4);
        f.reward("never-served");
        assert_eq!(f.lift("never-served"), 0.0);
        for _ in 0..50 {
            f.impressions(["good", "bad"]);
            f.reward("good");
        }
        assert!(f.lift("good") > 0.5, "an item clicked every time it is shown earns a high rate");
        assert!(f.lift("bad") < 0.0, "an item never clicked falls below the prior");
        for i in 0..10 {
            f.impressions([format!("x{i}").as_str()]);
        }
        assert!(f.len() <= 4);
    }

    #[test]
    fn overrides_apply_only_what_is_set() {
        let base = RankSettings::default();
        let s = base.with_overrides(Some(&pb::Ranking { behaviour: Some(0.0), ..Default::default() }));
        assert_eq!(s.behaviour, 0.0);
        assert_eq!(s.content, base.content);
        assert_eq!(base.with_overrides(None), base);
    }

    #[test]
    fn freshness_halves_per_half_life() {
        let day = 86_400_000;
        assert_eq!(freshness(0, 100 * day, 30.0), 0.0);
        assert!((freshness(70 * day, 100 * day, 30.0) - 0.5).abs() < 1e-5);
        assert!((freshness(100 * day, 100 * day, 30.0) - 1.0).abs() < 1e-6);
    }
}
