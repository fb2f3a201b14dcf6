//! The recommendation pipeline behind `Recommend` and `SimilarItems`:
//!
//! 1. **History**: the touched items' vectors, and the behavioural signals of
//!    the most recent ones, read from the shards that own them.
//! 2. **User vector**: attention over the history ([`crate::recommend`]).
//! 3. **Candidates**, gathered concurrently: the index's nearest items to the
//!    user vector, the behavioural neighbours of the recent items (scored
//!    exactly on their shards), popular and trending items for users with
//!    nothing else to go on (or when their weights ask for them), or the
//!    request's own candidate list. Shards apply the filter and exclusions
//!    to every source.
//! 4. **Ranking** on the merged set ([`crate::rank`]): weighted score, rules,
//!    online feedback, MMR diversity, exploration of the final slots.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::future::join_all;
use tonic::{Request, Status};
use vitrine_proto::{pb, Filter};

use crate::deadline::Deadline;
use crate::rank::{self, Candidate, RankSettings, Source};
use crate::recommend::{user_vector, Touch};
use crate::service::Router;

/// Exploration pool: how many ranked candidates past the fixed slots an
/// exploring slot may draw from.
const EXPLORE_POOL: usize = 20;

/// What the pipeline needs from a request, already validated.
pub struct RankQuery {
    /// For logs (empty for anonymous sessions).
    pub user: String,
    /// Touched items, oldest first.
    pub events: Vec<(String, pb::EventType)>,
    pub positive: Vec<String>,
    pub negative: Vec<String>,
    /// Items that must not be returned.
    pub exclude: HashSet<String>,
    pub filter: Option<pb::Filter>,
    pub k: usize,
    pub with_items: bool,
    pub explain: bool,
    pub settings: RankSettings,
    pub rules: Vec<(Filter, f32)>,
    /// When non-empty, rank exactly these.
    pub candidate_ids: Vec<String>,
}

/// The history as read from the shards.
pub struct History {
    /// Vectors of the touched items that exist.
    pub vectors: HashMap<String, Vec<f32>>,
    /// Neighbour lists of the recent items.
    pub neighbours: HashMap<String, Vec<pb::Neighbour>>,
    /// Some shard could not be read.
    pub degraded: bool,
    /// The model set the vectors are in (empty: client-supplied vectors).
    pub model: String,
}

/// What one round of `Lookup` calls gathered.
#[derive(Default)]
struct Looked {
    vectors: HashMap<String, Vec<f32>>,
    neighbours: HashMap<String, Vec<pb::Neighbour>>,
    failed: bool,
    /// The ids whose vectors each model set made, in answer order.
    sets: Vec<(String, Vec<String>)>,
}

impl RankQuery {
    /// The most recent distinct history items (positives count as newest),
    /// newest first.
    fn recent(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.events
            .iter()
            .map(|(id, _)| id)
            .chain(&self.positive)
            .rev()
            .filter(|id| seen.insert(id.as_str()))
            .take(self.settings.behaviour_history)
            .cloned()
            .collect()
    }
}

impl Router {
    /// Reads the touched items' vectors and, when behaviour counts, the
    /// signals of the recent ones: one `Lookup` per owning shard, so the
    /// first stage costs one round trip. During a model switch shards may
    /// answer from different sets; the vectors of the other sets are then
    /// read again in the first answer's set (each shard holds both until the
    /// switch is released), so a user vector never averages two spaces.
    pub async fn load_history(&self, deadline: Deadline, q: &RankQuery) -> History {
        let mut seen = HashSet::new();
        let wanted: Vec<String> = q
            .events
            .iter()
            .map(|(id, _)| id)
            .chain(&q.positive)
            .chain(&q.negative)
            .filter(|id| seen.insert(id.as_str()))
            .cloned()
            .collect();
        let recent = if q.settings.behaviour > 0.0 { q.recent() } else { Vec::new() };
        let mut looked = self.lookup(deadline, wanted, recent, "").await;
        let model = match looked.sets.len() {
            0 => String::new(),
            1 => looked.sets.swap_remove(0).0,
            _ => {
                let tag = looked.sets[0].0.clone();
                let again: Vec<String> = looked.sets.drain(1..).flat_map(|(_, ids)| ids).collect();
                for id in &again {
                    looked.vectors.remove(id);
                }
                tracing::debug!(model = %tag, items = again.len(), "vectors read from two model sets; reading again in one");
                let more = self.lookup(deadline, again, Vec::new(), &tag).await;
                looked.vectors.extend(more.vectors);
                looked.failed |= more.failed;
                tag
            }
        };
        History { vectors: looked.vectors, neighbours: looked.neighbours, degraded: looked.failed, model }
    }

    /// One `Lookup` per shard that owns any of `ids` or `signal_ids`.
    async fn lookup(&self, deadline: Deadline, ids: Vec<String>, signal_ids: Vec<String>, model: &str) -> Looked {
        let mut groups: BTreeMap<u32, pb::ShardLookupRequest> = BTreeMap::new();
        for (shard, ids) in self.group(ids, |s| s.as_str()) {
            groups.entry(shard).or_default().ids = ids;
        }
        for (shard, ids) in self.group(signal_ids, |s| s.as_str()) {
            groups.entry(shard).or_default().signal_ids = ids;
        }
        let calls = groups.into_iter().map(|(shard, mut req)| {
            req.model = model.to_string();
            self.shards.call(shard, deadline, move |mut c, budget| {
                let mut r = Request::new(req.clone());
                r.set_timeout(budget);
                async move { c.lookup(r).await }
            })
        });
        let mut out = Looked::default();
        for r in join_all(calls).await {
            match r {
                Ok(resp) => {
                    if !resp.vectors.is_empty() {
                        let ids = resp.vectors.iter().map(|v| v.id.clone());
                        match out.sets.iter_mut().find(|(m, _)| *m == resp.model) {
                            Some((_, v)) => v.extend(ids),
                            None => out.sets.push((resp.model.clone(), ids.collect())),
                        }
                    }
                    out.vectors.extend(resp.vectors.into_iter().filter_map(|v| Some((v.id, v.vector?.values))));
                    out.neighbours.extend(resp.signals.into_iter().map(|s| (s.id, s.neighbours)));
                }
                Err(s) => {
                    tracing::warn!(error = s.message(), "history incomplete: a shard did not answer");
                    out.failed = true;
                }
            }
        }
        out
    }

    /// Scores exactly `ids` on their owning shards (cosine to `vector`).
    async fn score_ids(
        &self,
        deadline: Deadline,
        ids: Vec<String>,
        template: &pb::ShardSearchRequest,
    ) -> (Vec<pb::ScoredItem>, bool) {
        if ids.is_empty() {
            return (Vec::new(), false);
        }
        let groups: BTreeMap<u32, Vec<String>> = self.group(ids, |s| s.as_str());
        let calls = groups.into_iter().map(|(shard, ids)| {
            let req = pb::ShardSearchRequest {
                k: ids.len().min(self.settings.limits.max_k) as u32,
                source: Some(pb::shard_search_request::Source::Candidates(pb::CandidateIds { ids })),
                ..template.clone()
            };
            self.shards.call(shard, deadline, move |mut c, budget| {
                let mut r = Request::new(req.clone());
                r.set_timeout(budget);
                async move { c.search(r).await }
            })
        });
        let mut hits = Vec::new();
        let mut failed = false;
        for r in join_all(calls).await {
            match r {
                Ok(resp) => hits.extend(resp.hits),
                Err(s) => {
                    tracing::warn!(error = s.message(), "candidate scoring incomplete");
                    failed = true;
                }
            }
        }
        (hits, failed)
    }

    /// Runs the pipeline on a loaded history.
    pub async fn rank(&self, deadline: Deadline, q: RankQuery, history: History) -> Result<pb::SearchResponse, Status> {
        let s = &q.settings;
        let mut degraded = history.degraded;
        let vec_of = |id: &str| history.vectors.get(id).map(Vec::as_slice);
        let touches: Vec<Touch<'_>> =
            q.events.iter().filter_map(|(id, t)| vec_of(id).map(|v| Touch { vector: v, event: *t })).collect();
        let positive: Vec<&[f32]> = q.positive.iter().filter_map(|id| vec_of(id)).collect();
        let negative: Vec<&[f32]> = q.negative.iter().filter_map(|id| vec_of(id)).collect();
        let user = user_vector(&touches, &positive, &negative, &self.settings.user_vector);

        // Behavioural scores: neighbours of the recent items, recency-weighted.
        let mut behaviour: HashMap<&str, (f32, &str, f32)> = HashMap::new();
        if s.behaviour > 0.0 {
            for (age, id) in q.recent().iter().enumerate() {
                let Some((h_id, list)) = history.neighbours.get_key_value(id) else { continue };
                let w = s.behaviour_recency.powi(age as i32);
                for n in list {
                    if q.exclude.contains(&n.id) {
                        continue;
                    }
                    let contribution = w * n.weight;
                    let e = behaviour.entry(n.id.as_str()).or_insert((0.0, h_id.as_str(), 0.0));
                    e.0 += contribution;
                    if contribution > e.2 {
                        e.1 = h_id.as_str();
                        e.2 = contribution;
                    }
                }
            }
        }

        let needs_items = q.with_items || !q.rules.is_empty() || s.freshness > 0.0;
        let template = pb::ShardSearchRequest {
            vector: user.clone().map(|values| pb::Vector { values }),
            k: 0,
            filter: q.filter.clone(),
            exclude_ids: q.exclude.iter().cloned().collect(),
            with_items: needs_items,
            with_vectors: s.diversity_lambda < 1.0 || q.explain,
            source: None,
            // The user vector is made of stored item vectors: search in
            // the space they were read in.
            model: history.model.clone(),
        };

        let mut cands: HashMap<String, Candidate> = HashMap::new();
        // Trending score of every item on the cluster's list, when fetched.
        let mut trending_scores: HashMap<String, f32> = HashMap::new();
        let mut coverage = pb::Coverage { shards_asked: 0, shards_answered: 0, degraded: false };
        if !q.candidate_ids.is_empty() {
            let (hits, failed) = self.score_ids(deadline, q.candidate_ids.clone(), &template).await;
            degraded |= failed;
            if s.trending > 0.0 {
                let list = self.trending.get(&self.shards, deadline).await;
                trending_scores = list.iter().map(|(id, v)| (id.clone(), *v)).collect();
            }
            for h in hits {
                cands.entry(h.id.clone()).or_insert_with(|| Candidate::new(h, Source::Requested));
            }
        } else {
            let mut top: Vec<(&str, f32)> = behaviour.iter().map(|(id, v)| (*id, v.0)).collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            top.truncate(s.behaviour_candidates);
            let behaviour_ids: Vec<String> = top.iter().map(|(id, _)| id.to_string()).collect();
            let depth = if explore_on(s) { q.k + EXPLORE_POOL } else { q.k };
            let ann_k = s.ann_candidates.max(depth).min(self.settings.limits.max_k);
            let want_ann = s.content > 0.0 && user.is_some();
            let cold = user.is_none() && behaviour_ids.is_empty();
            let want_popular = s.popularity > 0.0 || cold;
            let want_trending = s.trending > 0.0 || cold;
            let ann = async {
                if !want_ann {
                    return Ok(None);
                }
                let req = pb::ShardSearchRequest { k: ann_k as u32, ..template.clone() };
                self.shards.search(deadline, req, ann_k).await.map(Some)
            };
            let popular = async {
                if !want_popular {
                    return Ok(None);
                }
                // Every shard's own most popular items; the ranking below
                // orders their union (a merge by cosine would not).
                let req = pb::ShardSearchRequest {
                    k: q.k.max(EXPLORE_POOL) as u32,
                    source: Some(pb::shard_search_request::Source::Popular(true)),
                    ..template.clone()
                };
                let gathered = self
                    .shards
                    .gather(deadline, |mut c, budget| {
                        let mut r = Request::new(req.clone());
                        r.set_timeout(budget);
                        async move { c.search(r).await }
                    })
                    .await?;
                let hits = gathered.answers.into_iter().flat_map(|(_, r)| r.hits).collect::<Vec<_>>();
                Ok::<_, Status>(Some((hits, gathered.coverage)))
            };
            let trending = async {
                if !want_trending {
                    return (Vec::new(), false);
                }
                // The list's best items the request may show, scored (and
                // filtered) on the shards that own them.
                let list = self.trending.get(&self.shards, deadline).await;
                trending_scores = list.iter().map(|(id, v)| (id.clone(), *v)).collect();
                let ids: Vec<String> = list
                    .iter()
                    .filter(|(id, _)| !q.exclude.contains(id))
                    .take(q.k.max(EXPLORE_POOL))
                    .map(|(id, _)| id.clone())
                    .collect();
                self.score_ids(deadline, ids, &template).await
            };
            let (ann, scored, popular, trending) =
                tokio::join!(ann, self.score_ids(deadline, behaviour_ids, &template), popular, trending);
            for ((hits, failed), source) in [(scored, Source::Behaviour), (trending, Source::Trending)] {
                degraded |= failed;
                for h in hits {
                    cands.entry(h.id.clone()).or_insert_with(|| Candidate::new(h, source));
                }
            }
            for (res, source) in [(ann?, Source::Content), (popular?, Source::Popular)] {
                let Some((hits, cov)) = res else { continue };
                coverage.shards_asked = coverage.shards_asked.max(cov.shards_asked);
                coverage.shards_answered = coverage.shards_answered.max(cov.shards_answered);
                coverage.degraded |= cov.degraded;
                for h in hits {
                    cands.entry(h.id.clone()).or_insert_with(|| Candidate::new(h, source));
                }
            }
        }
        if coverage.shards_asked == 0 {
            let n = self.shards.len() as u32;
            coverage = pb::Coverage { shards_asked: n, shards_answered: n, degraded: false };
        }
        coverage.degraded |= degraded;

        // With nothing known about the user, popularity and what is
        // trending now are all there is.
        let mut s = s.clone();
        if user.is_none() && behaviour.is_empty() {
            if s.popularity == 0.0 {
                s.popularity = 1.0;
            }
            if s.trending == 0.0 {
                s.trending = 1.0;
            }
        }
        let s = &s;

        // Features, then the score.
        let now = crate::service::now_ms();
        let mut cands: Vec<Candidate> = cands.into_values().collect();
        for c in &mut cands {
            if let Some((score, from, _)) = behaviour.get(c.hit.id.as_str()) {
                c.behaviour = *score;
                c.behaviour_from = Some((*from).to_string());
            }
            let attrs = c.hit.item.as_ref().and_then(|it| it.attributes.as_ref());
            c.rules = q.rules.iter().filter(|(f, _)| f.matches(attrs)).map(|(_, b)| b).sum();
            c.freshness =
                c.hit.item.as_ref().map_or(0.0, |it| rank::freshness(it.published_ms, now, s.freshness_half_life_days));
            if s.feedback != 0.0 {
                c.feedback = self.feedback.lift(&c.hit.id);
            }
            c.trending = trending_scores.get(&c.hit.id).copied().unwrap_or(0.0);
        }
        rank::score_all(&mut cands, s);
        let keep = if explore_on(s) { q.k + EXPLORE_POOL } else { q.k };
        let ranked = rank::mmr(cands, keep, s.diversity_lambda);
        let served = rank::explore(ranked, q.k, s.explore_slots, s.explore_epsilon, EXPLORE_POOL, &mut rand::rng());
        let m = crate::metrics::get();
        m.served_slots.inc_by(served.len() as u64);
        m.explore_slots.inc_by(rank::explored_slots(&served) as u64);

        // A request that opts out of the feedback term (evaluation, previews)
        // does not feed the learner either.
        if s.feedback != 0.0 {
            self.feedback.impressions(served.iter().map(|(c, _)| c.hit.id.as_str()));
        }
        let mut hits = Vec::with_capacity(served.len());
        for (slot, (mut c, propensity)) in served.into_iter().enumerate() {
            // One event per served item, for off-line policy evaluation.
            // Debug level so that it costs nothing unless asked for:
            // RUST_LOG=info,vitrine::impressions=debug (with --log-json for
            // machine-readable lines).
            tracing::debug!(
                target: "vitrine::impressions",
                user = %q.user,
                item = %c.hit.id,
                slot,
                propensity,
                score = c.score,
                source = %c.explanation.source,
            );
            if q.explain && c.explanation.because_of.is_empty() {
                // Content candidates: the history item closest to it.
                if let Some(v) = c.hit.vector.as_ref() {
                    c.explanation.because_of = nearest_touch(&v.values, &q, &history).unwrap_or_default();
                }
            }
            let mut hit = c.hit;
            hit.score = c.score;
            hit.propensity = propensity;
            hit.vector = None;
            if !q.with_items {
                hit.item = None;
            }
            if q.explain {
                hit.explanation = Some(c.explanation);
            }
            hits.push(hit);
        }
        Ok(pb::SearchResponse { hits, coverage: Some(coverage) })
    }
}

/// Whether the final slots are open to exploration (which needs a pool of
/// ranked candidates past k).
fn explore_on(s: &RankSettings) -> bool {
    s.explore_epsilon > 0.0 && s.explore_slots > 0
}

/// The history item most similar to `v`.
fn nearest_touch(v: &[f32], q: &RankQuery, history: &History) -> Option<String> {
    q.events
        .iter()
        .map(|(id, _)| id)
        .chain(&q.positive)
        .filter_map(|id| {
            let hv = history.vectors.get(id)?;
            Some((id, hv.iter().zip(v).map(|(a, b)| a * b).sum::<f32>()))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(id, _)| id.clone())
}
