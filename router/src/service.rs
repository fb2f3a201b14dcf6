//! The public `Vitrine` gRPC service: validation at the edge, routing of
//! writes to owning shards, fan-out of reads, merge.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use vitrine_proto::{pb, validate, Filter, Limits};

use crate::deadline::Deadline;
use crate::fanout::{Consistency, Shards, Written};
use crate::pipeline::RankQuery;
use crate::rank::{Feedback, RankSettings};
use crate::recommend::UserVectorParams;
use crate::topology::Topology;
use crate::trending::TrendingCache;
use crate::version::VersionClock;

/// Longest deadline honoured from a client.
const MAX_DEADLINE: Duration = Duration::from_secs(300);

/// Router settings the service needs.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// Default deadline of reads without `grpc-timeout`. Vespa's 500 ms soft
    /// timeout is the model; 1 s leaves room for text embedding under load.
    pub read_timeout: Duration,
    /// Default deadline of writes: a batch may need embedding of many items.
    pub write_timeout: Duration,
    pub limits: Limits,
    pub user_vector: UserVectorParams,
    /// Default ranking of Recommend and SimilarItems.
    pub ranking: RankSettings,
    /// Items whose feedback rates are tracked.
    pub feedback_capacity: usize,
    /// How long a fetched trending list serves before the next fan-out.
    pub trending_refresh: Duration,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_millis(1000),
            write_timeout: Duration::from_secs(60),
            limits: Limits::default(),
            user_vector: UserVectorParams::default(),
            ranking: RankSettings::default(),
            feedback_capacity: 1_000_000,
            trending_refresh: Duration::from_secs(2),
        }
    }
}

/// The router's state.
pub struct Router {
    pub(crate) shards: Arc<Shards>,
    topology: Topology,
    pub(crate) settings: RouterSettings,
    /// Vector dimension learnt from the shards (0 until one answered).
    dimension: AtomicUsize,
    /// Click and purchase rates learnt from events.
    pub(crate) feedback: Feedback,
    /// Versions of writes (see `version`).
    clock: VersionClock,
    /// The cluster's trending items, refreshed every `trending_refresh`.
    pub(crate) trending: TrendingCache,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Router {
    pub fn new(shards: Arc<Shards>, topology: Topology, settings: RouterSettings, clock: VersionClock) -> Self {
        let feedback = Feedback::new(settings.feedback_capacity);
        let trending = TrendingCache::new(settings.trending_refresh);
        Self { shards, topology, settings, dimension: AtomicUsize::new(0), feedback, clock, trending }
    }

    /// The consistency level of a write request.
    fn consistency(&self, level: i32) -> Result<Consistency, Status> {
        Consistency::from_request(level, self.shards.write_consistency)
    }

    /// What a write reports about its replicas.
    fn replication(&self, level: Consistency, acknowledged: u32) -> pb::Replication {
        let replicas = self.shards.replicas();
        pb::Replication {
            consistency: level.to_wire() as i32,
            replicas: replicas as u32,
            required: level.required(replicas) as u32,
            acknowledged,
        }
    }

    /// The ranking for a request: the configured one with its overrides.
    fn rank_settings(&self, r: Option<&pb::Ranking>) -> Result<RankSettings, Status> {
        if let Some(r) = r {
            validate::ranking(r)?;
        }
        Ok(self.settings.ranking.with_overrides(r))
    }

    fn read_deadline<T>(&self, r: &Request<T>) -> Deadline {
        Deadline::from_metadata(r.metadata(), self.settings.read_timeout, MAX_DEADLINE)
    }

    fn write_deadline<T>(&self, r: &Request<T>) -> Deadline {
        Deadline::from_metadata(r.metadata(), self.settings.write_timeout, MAX_DEADLINE)
    }

    /// Calls every replica of every shard at once (administration: every
    /// copy's own answer matters); results in shard then replica order.
    /// FAILED_PRECONDITION when the router has no shards.
    async fn each_replica<T, Fut>(
        &self,
        deadline: Deadline,
        f: impl Fn(crate::fanout::ShardConn, Duration) -> Fut,
    ) -> Result<Vec<(Arc<crate::fanout::Replica>, Result<T, Status>)>, Status>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let replicas: Vec<_> = self.shards.all_replicas().cloned().collect();
        if replicas.is_empty() {
            return Err(Status::failed_precondition("the router has no shards"));
        }
        let results = join_all(replicas.iter().map(|r| self.shards.call_replica(r, deadline, &f))).await;
        Ok(replicas.into_iter().zip(results).collect())
    }

    /// The cluster's vector dimension, asking the shards if not yet known.
    /// `None` when no shard answers; shards then validate on their own.
    async fn dimension(&self, deadline: Deadline) -> Option<usize> {
        match self.dimension.load(Ordering::Relaxed) {
            0 => {
                let infos = self.shard_infos(deadline).await;
                infos.iter().flatten().map(|i| i.dimension as usize).find(|&d| d > 0)
            }
            d => Some(d),
        }
    }

    /// Info from every replica of every shard (None where it did not
    /// answer), in shard then replica order; also learns the dimension.
    async fn shard_infos(&self, deadline: Deadline) -> Vec<Option<pb::ShardInfo>> {
        let calls = self.shards.all_replicas().map(|replica| {
            self.shards.call_replica(replica, deadline, |mut c, budget| {
                let mut r = Request::new(pb::ClusterInfoRequest {});
                r.set_timeout(budget);
                async move { c.info(r).await }
            })
        });
        let infos: Vec<Option<pb::ShardInfo>> = join_all(calls).await.into_iter().map(Result::ok).collect();
        if let Some(d) = infos.iter().flatten().map(|i| i.dimension as usize).find(|&d| d > 0) {
            self.dimension.store(d, Ordering::Relaxed);
        }
        infos
    }

    pub(crate) fn group<T>(&self, items: Vec<T>, key: impl Fn(&T) -> &str) -> BTreeMap<u32, Vec<T>> {
        let mut groups: BTreeMap<u32, Vec<T>> = BTreeMap::new();
        for it in items {
            groups.entry(self.topology.shard_of(key(&it))).or_default().push(it);
        }
        groups
    }

    /// Sends each group to its shard concurrently. All must succeed (at the
    /// write's consistency level): a write a shard did not acknowledge is
    /// reported, with how much the others acknowledged, so the client can
    /// retry (every write is idempotent). Returns the answers and the fewest
    /// replica acknowledgements of any shard.
    async fn write_grouped<T, R, Fut>(
        &self,
        deadline: Deadline,
        groups: BTreeMap<u32, Vec<T>>,
        what: &str,
        f: impl Fn(u32, Vec<T>, Duration) -> Fut,
    ) -> Result<(Vec<R>, u32), Status>
    where
        Fut: std::future::Future<Output = Result<Written<R>, Status>>,
    {
        let sizes: BTreeMap<u32, usize> = groups.iter().map(|(s, v)| (*s, v.len())).collect();
        let calls = groups.into_iter().map(|(shard, batch)| {
            let fut = f(shard, batch, deadline.stage_budget());
            async move { (shard, fut.await) }
        });
        let mut ok = Vec::new();
        let mut acked = 0usize;
        let mut replicas = u32::MAX;
        let mut failed: Vec<(u32, Status)> = Vec::new();
        for (shard, r) in join_all(calls).await {
            match r {
                Ok(w) => {
                    acked += sizes[&shard];
                    replicas = replicas.min(w.acknowledged);
                    ok.push(w.answer);
                }
                Err(s) => failed.push((shard, s)),
            }
        }
        if failed.is_empty() {
            return Ok((ok, if replicas == u32::MAX { 0 } else { replicas }));
        }
        // A validation error means the request is wrong, whichever shard said it.
        if let Some((_, s)) = failed.iter().find(|(_, s)| s.code() == tonic::Code::InvalidArgument) {
            return Err(s.clone());
        }
        let code = if failed.iter().any(|(_, s)| s.code() == tonic::Code::ResourceExhausted) {
            tonic::Code::ResourceExhausted
        } else {
            tonic::Code::Unavailable
        };
        let details: Vec<String> =
            failed.iter().map(|(sh, s)| format!("{} {what} not acknowledged by {}", sizes[sh], s.message())).collect();
        Err(Status::new(
            code,
            format!(
                "{}; {acked} {what} were acknowledged by other shards; writes are idempotent, retry the request",
                details.join("; ")
            ),
        ))
    }

    async fn upsert_batch(
        &self,
        deadline: Deadline,
        items: Vec<pb::Item>,
        level: Consistency,
    ) -> Result<pb::UpsertItemsResponse, Status> {
        let dim = self.dimension(deadline).await;
        if let Some(dim) = dim {
            // What the shards can embed is checked there; here everything else.
            validate::items(&items, dim, validate::Embedders::ANY, &self.settings.limits)?;
        } else {
            for it in &items {
                validate::id("item id", &it.id, &self.settings.limits)?;
            }
        }
        let versions = self.clock.reserve(items.len());
        let groups = self.group(items.into_iter().zip(versions).collect(), |(it, _)| it.id.as_str());
        let shards = &self.shards;
        let (results, acknowledged) = self
            .write_grouped(deadline, groups, "items", |shard, batch, _| async move {
                let (items, versions): (Vec<pb::Item>, Vec<u64>) = batch.into_iter().unzip();
                let req = pb::ShardUpsertRequest { items, versions, ..Default::default() };
                shards
                    .write(shard, deadline, level, move |mut c, budget| {
                        let mut r = Request::new(req.clone());
                        r.set_timeout(budget);
                        async move { c.upsert(r).await }
                    })
                    .await
            })
            .await?;
        let mut resp = results.into_iter().fold(pb::UpsertItemsResponse::default(), |acc, r| pb::UpsertItemsResponse {
            upserted: acc.upserted + r.upserted,
            embedded: acc.embedded + r.embedded,
            replication: None,
        });
        resp.replication = Some(self.replication(level, acknowledged));
        Ok(resp)
    }

    /// Items by id, with vectors when asked. Returns found items keyed by id,
    /// the shards that could not be read and, with vectors, the model set
    /// that made them. During a model switch shards may serve different
    /// sets; every vector is then read again in one set's space (each shard
    /// holds both until the switch is released), so a user vector never
    /// averages two spaces.
    pub(crate) async fn fetch_items(
        &self,
        deadline: Deadline,
        ids: Vec<String>,
        with_vectors: bool,
        model: String,
    ) -> (HashMap<String, pb::Item>, Vec<Status>, String) {
        let (mut found, mut errors, mut sets) = self.get_items_from_shards(deadline, ids, with_vectors, &model).await;
        if !with_vectors || sets.len() <= 1 {
            return (found, errors, sets.pop().map_or(model, |(m, _)| m));
        }
        let tag = sets[0].0.clone();
        let again: Vec<String> = sets.drain(1..).flat_map(|(_, ids)| ids).collect();
        for id in &again {
            found.remove(id);
        }
        tracing::debug!(model = %tag, items = again.len(), "items read from two model sets; reading again in one");
        let (more, more_errors, _) = self.get_items_from_shards(deadline, again, true, &tag).await;
        found.extend(more);
        errors.extend(more_errors);
        (found, errors, tag)
    }

    /// One GetItems per owning shard; found items, errors, and the ids read
    /// per model set (with vectors).
    async fn get_items_from_shards(
        &self,
        deadline: Deadline,
        ids: Vec<String>,
        with_vectors: bool,
        model: &str,
    ) -> (HashMap<String, pb::Item>, Vec<Status>, Vec<(String, Vec<String>)>) {
        let groups = self.group(ids, |s| s.as_str());
        let calls = groups.into_iter().map(|(shard, ids)| {
            let req = pb::GetItemsRequest { ids, with_vectors, model: model.to_string() };
            self.shards.call(shard, deadline, move |mut c, budget| {
                let mut r = Request::new(req.clone());
                r.set_timeout(budget);
                async move { c.get(r).await }
            })
        });
        let mut found = HashMap::new();
        let mut errors = Vec::new();
        let mut sets: Vec<(String, Vec<String>)> = Vec::new();
        for r in join_all(calls).await {
            match r {
                Ok(resp) => {
                    let ids = resp.items.iter().map(|it| it.id.clone());
                    match sets.iter_mut().find(|(m, _)| *m == resp.model) {
                        Some((_, v)) => v.extend(ids),
                        None => sets.push((resp.model.clone(), ids.collect())),
                    }
                    found.extend(resp.items.into_iter().map(|it| (it.id.clone(), it)));
                }
                Err(s) => errors.push(s),
            }
        }
        (found, errors, sets)
    }

    /// The query's vector and, when a shard embedded it, the model set that
    /// did (shards serving another set refuse it).
    async fn query_vector(
        &self,
        deadline: Deadline,
        query: Option<pb::search_request::Query>,
    ) -> Result<(Vec<f32>, String), Status> {
        use pb::search_request::Query;
        let limits = &self.settings.limits;
        match query {
            Some(Query::Text(text)) => {
                validate::query_text(&text, limits)?;
                self.shards.embed(deadline, pb::embed_request::Input::Text(text)).await
            }
            Some(Query::Image(bytes)) => {
                validate::image("query image", &bytes, limits)?;
                self.shards.embed(deadline, pb::embed_request::Input::Image(bytes)).await
            }
            Some(Query::Multimodal(q)) => {
                validate::query_text(&q.text, limits)?;
                if q.image.is_empty() {
                    return Err(Status::invalid_argument("multimodal query has no image; send text and image"));
                }
                validate::image("query image", &q.image, limits)?;
                self.shards.embed(deadline, pb::embed_request::Input::Multimodal(q)).await
            }
            Some(Query::Vector(v)) => match self.dimension(deadline).await {
                Some(dim) => Ok((validate::vector("query vector", &v.values, dim)?, String::new())),
                None => Ok((v.values, String::new())),
            },
            None => Err(Status::invalid_argument("search needs a query: text, image, both, or a vector")),
        }
    }
}

/// The tonic service wrapper.
#[derive(Clone)]
pub struct VitrineService {
    router: Arc<Router>,
}

impl VitrineService {
    pub fn new(router: Arc<Router>) -> Self {
        Self { router }
    }
}

/// Compiles and checks business rules.
fn compile_rules(rules: &[pb::Rule]) -> Result<Vec<(Filter, f32)>, Status> {
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            validate::rule(rule, i)?;
            let f = Filter::from_optional(rule.when.as_ref())?
                .ok_or_else(|| Status::invalid_argument(format!("rules[{i}] has an empty `when` filter")))?;
            Ok((f, rule.boost))
        })
        .collect()
}

fn validate_filter(f: Option<&pb::Filter>) -> Result<(), Status> {
    Filter::from_optional(f)?;
    Ok(())
}

#[tonic::async_trait]
impl pb::vitrine_server::Vitrine for VitrineService {
    async fn upsert_items(
        &self,
        request: Request<pb::UpsertItemsRequest>,
    ) -> Result<Response<pb::UpsertItemsResponse>, Status> {
        let r = &self.router;
        let deadline = r.write_deadline(&request);
        let req = request.into_inner();
        let level = r.consistency(req.consistency)?;
        tracing::debug!(items = req.items.len(), ?level, "upsert");
        Ok(Response::new(r.upsert_batch(deadline, req.items, level).await?))
    }

    async fn upsert_items_stream(
        &self,
        request: Request<Streaming<pb::UpsertItemsRequest>>,
    ) -> Result<Response<pb::UpsertItemsResponse>, Status> {
        let r = &self.router;
        let deadline = r.write_deadline(&request);
        let mut stream = request.into_inner();
        let mut total = pb::UpsertItemsResponse::default();
        let mut batches = 0u32;
        let mut level = None;
        while let Some(msg) = stream.next().await {
            let fail = |s: Status, total: &pb::UpsertItemsResponse| {
                Status::new(
                    s.code(),
                    format!(
                        "batch {} failed after {} items were acknowledged: {}",
                        batches + 1,
                        total.upserted,
                        s.message()
                    ),
                )
            };
            let batch = msg.map_err(|s| fail(s, &total))?;
            // The first message's level holds for the whole stream.
            let level = match level {
                Some(l) => l,
                None => *level.insert(r.consistency(batch.consistency)?),
            };
            let resp = r.upsert_batch(deadline, batch.items, level).await.map_err(|s| fail(s, &total))?;
            total.upserted += resp.upserted;
            total.embedded += resp.embedded;
            total.replication = match (total.replication.take(), resp.replication) {
                (Some(a), Some(b)) => Some(pb::Replication { acknowledged: a.acknowledged.min(b.acknowledged), ..a }),
                (a, b) => a.or(b),
            };
            batches += 1;
        }
        tracing::info!(batches, items = total.upserted, "stream upsert done");
        Ok(Response::new(total))
    }

    async fn delete_items(
        &self,
        request: Request<pb::DeleteItemsRequest>,
    ) -> Result<Response<pb::DeleteItemsResponse>, Status> {
        let r = &self.router;
        let deadline = r.write_deadline(&request);
        let req = request.into_inner();
        let level = r.consistency(req.consistency)?;
        let ids = req.ids;
        validate::ids("item id", &ids, &r.settings.limits)?;
        let versions = r.clock.reserve(ids.len());
        let groups = r.group(ids.into_iter().zip(versions).collect(), |(id, _)| id.as_str());
        let shards = &r.shards;
        let (results, acknowledged) = r
            .write_grouped(deadline, groups, "deletes", |shard, batch, _| async move {
                let (ids, versions) = batch.into_iter().unzip();
                let req = pb::ShardDeleteRequest { ids, versions };
                shards
                    .write(shard, deadline, level, move |mut c, budget| {
                        let mut q = Request::new(req.clone());
                        q.set_timeout(budget);
                        async move { c.delete(q).await }
                    })
                    .await
            })
            .await?;
        Ok(Response::new(pb::DeleteItemsResponse {
            deleted: results.iter().map(|r| r.deleted).sum(),
            replication: Some(r.replication(level, acknowledged)),
        }))
    }

    async fn get_items(&self, request: Request<pb::GetItemsRequest>) -> Result<Response<pb::GetItemsResponse>, Status> {
        let r = &self.router;
        let deadline = r.read_deadline(&request);
        let req = request.into_inner();
        validate::ids("item id", &req.ids, &r.settings.limits)?;
        let (mut found, errors, model) = r.fetch_items(deadline, req.ids.clone(), req.with_vectors, req.model).await;
        if let Some(e) = errors.into_iter().next() {
            return Err(Status::unavailable(format!("cannot read every requested item: {}", e.message())));
        }
        // Request order, each id once (a repeated id is answered once).
        let mut out =
            pb::GetItemsResponse { model: if req.with_vectors { model } else { String::new() }, ..Default::default() };
        let mut answered = HashSet::with_capacity(req.ids.len());
        for id in req.ids {
            if !answered.insert(id.clone()) {
                continue;
            }
            match found.remove(&id) {
                Some(it) => out.items.push(it),
                None => out.missing.push(id),
            }
        }
        Ok(Response::new(out))
    }

    async fn search(&self, request: Request<pb::SearchRequest>) -> Result<Response<pb::SearchResponse>, Status> {
        let r = &self.router;
        let deadline = r.read_deadline(&request);
        let req = request.into_inner();
        let k = validate::k(req.k, &r.settings.limits)?;
        validate_filter(req.filter.as_ref())?;
        let (vector, model) = r.query_vector(deadline, req.query).await?;
        let shard_req = pb::ShardSearchRequest {
            vector: Some(pb::Vector { values: vector }),
            model,
            k: k as u32,
            filter: req.filter,
            exclude_ids: Vec::new(),
            with_items: req.with_items,
            ..Default::default()
        };
        let (hits, coverage) = r.shards.search(deadline, shard_req, k).await?;
        Ok(Response::new(pb::SearchResponse { hits, coverage: Some(coverage) }))
    }

    async fn similar_items(
        &self,
        request: Request<pb::SimilarItemsRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let r = &self.router;
        let deadline = r.read_deadline(&request);
        let req = request.into_inner();
        validate::id("item id", &req.id, &r.settings.limits)?;
        let k = validate::k(req.k, &r.settings.limits)?;
        validate_filter(req.filter.as_ref())?;
        let settings = r.rank_settings(req.ranking.as_ref())?;
        let rules = compile_rules(&req.rules)?;
        // The item acts as a one-item history: its content neighbours and
        // its behavioural neighbours are the candidates.
        let q = RankQuery {
            user: String::new(),
            events: vec![(req.id.clone(), pb::EventType::Purchase)],
            positive: Vec::new(),
            negative: Vec::new(),
            exclude: HashSet::from([req.id.clone()]),
            filter: req.filter,
            k,
            with_items: req.with_items,
            explain: req.explain,
            settings,
            rules,
            candidate_ids: Vec::new(),
        };
        let history = r.load_history(deadline, &q).await;
        if history.degraded && !history.vectors.contains_key(&req.id) {
            return Err(Status::unavailable(format!("the shard holding item {:?} is unavailable", req.id)));
        }
        if !history.vectors.contains_key(&req.id) {
            return Err(Status::not_found(format!("item {:?} does not exist", req.id)));
        }
        Ok(Response::new(r.rank(deadline, q, history).await?))
    }

    async fn recommend(&self, request: Request<pb::RecommendRequest>) -> Result<Response<pb::SearchResponse>, Status> {
        let r = &self.router;
        let deadline = r.read_deadline(&request);
        let req = request.into_inner();
        let limits = &r.settings.limits;
        let k = validate::k(req.k, limits)?;
        validate_filter(req.filter.as_ref())?;
        let settings = r.rank_settings(req.ranking.as_ref())?;
        let rules = compile_rules(&req.rules)?;
        if req.user_id.is_empty() && req.history.is_empty() && req.positive.is_empty() {
            return Err(Status::invalid_argument("recommend needs a user_id, a history or positive examples"));
        }
        if !req.user_id.is_empty() {
            validate::id("user id", &req.user_id, limits)?;
        }
        for (what, list) in [
            ("history", &req.history),
            ("positive", &req.positive),
            ("negative", &req.negative),
            ("candidate_ids", &req.candidate_ids),
        ] {
            if list.len() > limits.max_history {
                return Err(Status::invalid_argument(format!(
                    "{what} has {} items; the limit is {}",
                    list.len(),
                    limits.max_history
                )));
            }
            validate::ids(&format!("{what} item id"), list, limits)?;
        }

        let mut degraded = false;
        // The user's recorded events, from the shard that owns the user.
        let mut events: Vec<(String, pb::EventType)> = Vec::new();
        if !req.user_id.is_empty() {
            let owner = r.topology.shard_of(&req.user_id);
            let user_id = req.user_id.clone();
            match r
                .shards
                .call(owner, deadline, |mut c, budget| {
                    let mut q = Request::new(pb::GetProfileRequest { user_id: user_id.clone() });
                    q.set_timeout(budget);
                    async move { c.get_profile(q).await }
                })
                .await
            {
                Ok(profile) => events.extend(profile.events.into_iter().map(|e| {
                    let t = pb::EventType::try_from(e.r#type).unwrap_or(pb::EventType::View);
                    (e.item_id, t)
                })),
                Err(s) if req.history.is_empty() && req.positive.is_empty() => {
                    return Err(Status::unavailable(format!(
                        "the profile of user {:?} is unavailable: {}",
                        req.user_id,
                        s.message()
                    )))
                }
                Err(s) => {
                    tracing::warn!(error = s.message(), "profile unavailable; using the explicit history only");
                    degraded = true;
                }
            }
        }
        events.extend(req.history.iter().map(|id| (id.clone(), pb::EventType::View)));

        let mut exclude: HashSet<String> = req.positive.iter().chain(req.negative.iter()).cloned().collect();
        if !req.include_seen {
            exclude.extend(events.iter().map(|(id, _)| id.clone()));
        }
        let q = RankQuery {
            user: req.user_id,
            events,
            positive: req.positive,
            negative: req.negative,
            exclude,
            filter: req.filter,
            k,
            with_items: req.with_items,
            explain: req.explain,
            settings,
            rules,
            candidate_ids: req.candidate_ids,
        };
        let history = r.load_history(deadline, &q).await;
        let mut resp = r.rank(deadline, q, history).await?;
        if let Some(c) = resp.coverage.as_mut() {
            c.degraded |= degraded;
        }
        Ok(Response::new(resp))
    }

    async fn update_signals(
        &self,
        request: Request<pb::UpdateSignalsRequest>,
    ) -> Result<Response<pb::UpdateSignalsResponse>, Status> {
        let r = &self.router;
        let deadline = r.write_deadline(&request);
        let req = request.into_inner();
        let level = r.consistency(req.consistency)?;
        let signals = req.signals;
        let limits = &r.settings.limits;
        validate::batch_len("signal entries", signals.len(), limits)?;
        for s in &signals {
            validate::signals(s, limits)?;
        }
        let versions = r.clock.reserve(signals.len());
        let groups = r.group(signals.into_iter().zip(versions).collect(), |(s, _)| s.id.as_str());
        let shards = &r.shards;
        let (results, acknowledged) = r
            .write_grouped(deadline, groups, "signal entries", |shard, batch, _| async move {
                let (signals, versions) = batch.into_iter().unzip();
                let req = pb::ShardSignalsRequest { signals, versions };
                shards
                    .write(shard, deadline, level, move |mut c, budget| {
                        let mut q = Request::new(req.clone());
                        q.set_timeout(budget);
                        async move { c.update_signals(q).await }
                    })
                    .await
            })
            .await?;
        Ok(Response::new(pb::UpdateSignalsResponse {
            updated: results.iter().map(|r| r.updated).sum(),
            replication: Some(r.replication(level, acknowledged)),
        }))
    }

    async fn record_events(
        &self,
        request: Request<pb::RecordEventsRequest>,
    ) -> Result<Response<pb::RecordEventsResponse>, Status> {
        let r = &self.router;
        let deadline = r.write_deadline(&request);
        let req = request.into_inner();
        let level = r.consistency(req.consistency)?;
        let mut events = req.events;
        let limits = &r.settings.limits;
        validate::batch_len("events", events.len(), limits)?;
        let now = now_ms();
        for e in &mut events {
            validate::event(e, limits)?;
            if e.timestamp_ms == 0 {
                e.timestamp_ms = now;
            }
        }
        for e in &events {
            use pb::EventType::{AddToCart, Click, Purchase};
            if matches!(pb::EventType::try_from(e.r#type), Ok(Click | AddToCart | Purchase)) {
                r.feedback.reward(&e.item_id);
            }
        }
        // Each event's version is also its identity on the replicas: a
        // retried request gets new versions, but a replica that catches up
        // receives the stored ones and keeps each event once.
        let versions = r.clock.reserve(events.len());
        let groups = r.group(events.into_iter().zip(versions).collect(), |(e, _)| e.user_id.as_str());
        let shards = &r.shards;
        let (results, acknowledged) = r
            .write_grouped(deadline, groups, "events", |shard, batch, _| async move {
                let (events, versions) = batch.into_iter().unzip();
                let req = pb::ShardEventsRequest { events, versions };
                shards
                    .write(shard, deadline, level, move |mut c, budget| {
                        let mut q = Request::new(req.clone());
                        q.set_timeout(budget);
                        async move { c.append_events(q).await }
                    })
                    .await
            })
            .await?;
        Ok(Response::new(pb::RecordEventsResponse {
            recorded: results.iter().map(|r| r.recorded).sum(),
            replication: Some(r.replication(level, acknowledged)),
        }))
    }

    async fn cluster_info(
        &self,
        request: Request<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        let r = &self.router;
        let deadline = r.read_deadline(&request);
        let infos = r.shard_infos(deadline).await;
        let load = r.topology.load();
        let mut shards = Vec::with_capacity(infos.len());
        for (replica, info) in r.shards.all_replicas().zip(infos) {
            let mut s =
                info.unwrap_or(pb::ShardInfo { state: pb::ShardState::Unreachable as i32, ..Default::default() });
            s.shard = replica.shard;
            s.replica = replica.replica;
            s.address = replica.address.clone();
            s.virtual_shards = load.get(replica.shard as usize).copied().unwrap_or(0);
            if replica.is_behind() && s.state == pb::ShardState::Serving as i32 {
                s.state = pb::ShardState::Behind as i32;
            }
            shards.push(s);
        }
        let answered = shards.iter().filter(|s| s.state == pb::ShardState::Serving as i32).count() as u32;
        let asked = shards.len() as u32;
        Ok(Response::new(pb::ClusterInfoResponse {
            shards,
            virtual_shards: r.topology.virtual_shards(),
            dimension: r.dimension.load(Ordering::Relaxed) as u32,
            coverage: Some(pb::Coverage { shards_asked: asked, shards_answered: answered, degraded: answered < asked }),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let r = &self.router;
        // A snapshot of a large shard takes seconds: the write timeout, not
        // the read one, bounds it unless the client sets a deadline.
        let deadline = r.write_deadline(&request);
        let results = r
            .each_replica(deadline, |mut c, budget| {
                let mut req = Request::new(pb::CreateSnapshotRequest {});
                req.set_timeout(budget);
                async move { c.snapshot(req).await }
            })
            .await?;
        let shards = results
            .into_iter()
            .map(|(replica, result)| match result {
                Ok(mut info) => {
                    info.shard = replica.shard;
                    info.replica = replica.replica;
                    info
                }
                Err(status) => pb::SnapshotInfo {
                    shard: replica.shard,
                    replica: replica.replica,
                    error: status.message().to_string(),
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(pb::CreateSnapshotResponse { shards }))
    }

    async fn switch_models(
        &self,
        request: Request<pb::SwitchModelsRequest>,
    ) -> Result<Response<pb::SwitchModelsResponse>, Status> {
        let r = &self.router;
        // Re-embedding a catalogue takes minutes: the client's deadline (up
        // to MAX_DEADLINE) bounds it; an interrupted prepare resumes.
        let deadline = r.write_deadline(&request);
        let req = request.into_inner();
        let phase = pb::ModelSwitchPhase::try_from(req.phase).unwrap_or(pb::ModelSwitchPhase::Unspecified);
        match phase {
            pb::ModelSwitchPhase::Unspecified => {
                return Err(Status::invalid_argument("SwitchModels needs a phase: prepare, commit or release"))
            }
            pb::ModelSwitchPhase::Prepare | pb::ModelSwitchPhase::Commit if req.text_model.is_empty() => {
                return Err(Status::invalid_argument("name the text model to switch to, as name@version"))
            }
            _ => {}
        }
        for (what, tag) in [("text_model", &req.text_model), ("image_model", &req.image_model)] {
            if !tag.is_empty() && (tag.len() > 256 || !tag.contains('@') || tag.contains(char::is_whitespace)) {
                return Err(Status::invalid_argument(format!("{what} {tag:?} is not name@version")));
            }
        }
        let span =
            tracing::info_span!("router.switch_models", phase = phase.as_str_name(), text_model = %req.text_model);
        let results = r
            .each_replica(deadline, |mut c, budget| {
                let mut call = Request::new(req.clone());
                call.set_timeout(budget);
                async move { c.switch_models(call).await }
            })
            .instrument(span)
            .await?;
        let shards: Vec<pb::ShardModelSwitch> = results
            .into_iter()
            .map(|(replica, result)| match result {
                Ok(mut s) => {
                    s.shard = replica.shard;
                    s.replica = replica.replica;
                    s
                }
                Err(status) => pb::ShardModelSwitch {
                    shard: replica.shard,
                    replica: replica.replica,
                    error: status.message().to_string(),
                    ..Default::default()
                },
            })
            .collect();
        if phase == pb::ModelSwitchPhase::Commit {
            // The new models may give another dimension: learn it again.
            r.dimension.store(0, Ordering::Relaxed);
        }
        Ok(Response::new(pb::SwitchModelsResponse { shards }))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let r = &self.router;
        let deadline = r.read_deadline(&request);
        let results = r
            .each_replica(deadline, |mut c, budget| {
                let mut req = Request::new(pb::ListSnapshotsRequest {});
                req.set_timeout(budget);
                async move { c.list_snapshots(req).await }
            })
            .await?;
        let shards = results
            .into_iter()
            .map(|(replica, result)| {
                let (snapshots, error) = match result {
                    Ok(s) => (s.snapshots, String::new()),
                    Err(status) => (Vec::new(), status.message().to_string()),
                };
                pb::ShardSnapshots { shard: replica.shard, replica: replica.replica, snapshots, error }
            })
            .collect();
        Ok(Response::new(pb::ListSnapshotsResponse { shards }))
    }
}
