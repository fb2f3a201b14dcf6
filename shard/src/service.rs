//! The internal gRPC service the router calls.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use vitrine_proto::{pb, timeout, validate, Filter, Limits};

use crate::catalog::{sort_hits, Catalog, Constraint, Hit, StoredItem};
use crate::fusion::QueryPart;
use crate::index::dot;
use crate::models::Query;
use crate::profiles::Profiles;
use crate::replica::Peers;
use crate::signals::SignalStore;
use crate::store::{Captured, Snapshots, StoreError, Written};
use crate::switch::{Generation, Generations};
use crate::wal::{Op, Wal, WalRecord};

/// Everything one shard owns.
pub struct ShardState {
    pub shard_id: u32,
    /// The served model set with its index and, during a model switch, the
    /// other one (`crate::switch`). Read paths clone the `Arc` they need.
    pub generations: RwLock<Generations>,
    pub profiles: Profiles,
    /// Behavioural neighbours and popularity learnt off-line.
    pub signals: SignalStore,
    /// The log doubles as the write serialiser: holding it across append and
    /// apply makes the in-memory order equal the replay order. A model
    /// switch swaps generations under it, so a write lands in one of them.
    pub wal: Mutex<Wal>,
    /// Snapshot policy and bookkeeping.
    pub snapshots: Snapshots,
    pub limits: Limits,
    /// Replica number within the shard (reported in Info).
    pub replica: u32,
    /// The other replicas of this shard and whether reads are served yet.
    pub peers: Peers,
    /// What the shard was started with: a model switch loads models and
    /// builds its index with the same settings.
    pub config: crate::ShardConfig,
    /// One model switch phase at a time.
    pub switching: tokio::sync::Mutex<()>,
    /// The data directory's lock, held while the state lives.
    pub dir_lock: crate::restore::DirLock,
}

/// Why a write was not applied.
pub(crate) enum WriteError {
    /// Its vectors were made by models this shard stopped serving while the
    /// write was being embedded (a model switch committed): embed it again.
    Switched,
    Failed(Status),
}

impl From<Status> for WriteError {
    fn from(s: Status) -> Self {
        WriteError::Failed(s)
    }
}

impl ShardState {
    /// The served generation.
    pub fn serving(&self) -> Arc<Generation> {
        Arc::clone(&self.generations.read().serving)
    }

    /// The served generation's index.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.generations.read().serving.catalog)
    }

    /// The generation whose vectors are in the space of `set` (a query's
    /// model set; empty: the served one). During a model switch a shard
    /// holds two, so a query embedded just before the commit still finds
    /// its index; any other set is refused rather than compared across
    /// spaces.
    pub fn generation(&self, set: &str) -> Result<Arc<Generation>, Status> {
        let g = self.generations.read();
        if set.is_empty() || set == g.serving.set() {
            return Ok(Arc::clone(&g.serving));
        }
        match &g.other {
            Some((o, _)) if o.set() == set => Ok(Arc::clone(o)),
            _ => Err(Status::failed_precondition(format!(
                "the query was embedded with {set}, and this shard serves {}; the shards' models differ",
                g.serving.set()
            ))),
        }
    }

    /// Applies a replayed or freshly logged record.
    pub fn apply(&self, record: WalRecord) {
        match record.op {
            Some(Op::Upsert(req)) => {
                self.catalog().upsert(StoredItem::from_request(req));
            }
            Some(Op::Delete(req)) => {
                let g = self.generations.read();
                g.serving.catalog.delete_versioned(&req.ids, &req.versions);
                // The other generation forgets deleted items at once too.
                if let Some((o, _)) = &g.other {
                    o.catalog.delete_versioned(&req.ids, &req.versions);
                }
            }
            Some(Op::Events(req)) => self.profiles.append(&req.events, &req.versions),
            Some(Op::Signals(req)) => self.signals.update(&req.signals, &req.versions),
            None => {}
        }
    }

    /// Logs, applies and, once durable, returns: the caller may acknowledge.
    /// Under group commit the wait for the shared fsync happens after the
    /// log's lock is released, so concurrent writers share one flush.
    pub(crate) fn log_and_apply(self: &Arc<Self>, record: WalRecord) -> Result<(), Status> {
        self.log_and_apply_checked(record).map_err(|e| match e {
            WriteError::Switched => Status::unavailable("the shard switched models during this write; retry it"),
            WriteError::Failed(s) => s,
        })
    }

    /// [`ShardState::log_and_apply`], refusing (before logging) an upsert
    /// whose vectors are tagged with models no longer served.
    pub(crate) fn log_and_apply_checked(self: &Arc<Self>, record: WalRecord) -> Result<(), WriteError> {
        let (appended, snapshot_due) = {
            let mut wal = self.wal.lock();
            if let Some(Op::Upsert(req)) = &record.op {
                let serving = self.serving();
                let tags = &serving.models.tags;
                let tagged = !req.text_model.is_empty() || !req.image_model.is_empty();
                if tagged && (req.text_model != tags.text || req.image_model != tags.image) {
                    return Err(WriteError::Switched);
                }
            }
            let appended = wal.append(&record).map_err(|e| storage_status(&e.into()))?;
            self.apply(record);
            (appended, self.snapshots.due(&wal))
        };
        if snapshot_due {
            let this = Arc::clone(self);
            std::thread::Builder::new()
                .name("snapshot".into())
                .spawn(move || {
                    // Failures are logged and counted in `take`; the log keeps everything.
                    let _ = this.snapshot();
                })
                .map_err(|e| tracing::warn!(error = %e, "cannot start the snapshot thread"))
                .ok();
        }
        appended.wait_durable().map_err(|e| storage_status(&e.into()))?;
        Ok(())
    }

    /// Writes a snapshot now (blocking); see [`crate::store`].
    pub fn snapshot(&self) -> Result<Written, StoreError> {
        self.snapshots.take(&self.wal, || self.capture(&self.serving()))
    }

    /// The state to snapshot, with `generation`'s items (called under the
    /// log's lock).
    pub(crate) fn capture(&self, generation: &Generation) -> Captured {
        Captured {
            items: generation.catalog.export(),
            deleted: generation.catalog.export_deleted(),
            events: self.profiles.export(),
            users: self.profiles.len() as u64,
            signals: self.signals.export(),
            dimension: generation.catalog.dimension(),
            text_model: generation.models.tags.text.clone(),
            image_model: generation.models.tags.image.clone(),
        }
    }

    /// The hits of one shard search in any of its modes: the index (nearest
    /// to `query`), the most popular accepted items, or exactly the listed
    /// candidates. Returns the hits best first and whether they are exact.
    fn find(
        &self,
        g: &Generation,
        query: Option<&[f32]>,
        k: usize,
        constraint: &Constraint<'_>,
        source: Option<&pb::shard_search_request::Source>,
    ) -> (Vec<Hit>, bool) {
        use pb::shard_search_request::Source;
        let score = |item: &StoredItem| query.map_or(0.0, |q| dot(q, &item.vector));
        match (source, query) {
            (None, Some(q)) => match g.models.fusion.query_part(q) {
                None => {
                    let out = g.catalog.search(q, k, constraint);
                    (out.hits, out.exact)
                }
                Some(part) => {
                    // Items missing the other modality are over-ranked by the
                    // fused vector (crate::fusion), so take twice the hits and
                    // rescore them by the query's modality alone.
                    let out = g.catalog.search(q, k.saturating_mul(2), constraint);
                    let fusion = &g.models.fusion;
                    let mut hits: Vec<Hit> = out
                        .hits
                        .into_iter()
                        .map(|h| {
                            let m = &h.item.modalities;
                            let own = match part {
                                QueryPart::Text => m.text.as_ref(),
                                QueryPart::Image => m.image.as_ref(),
                            };
                            let score = fusion.part_score(part, q, own.map(|v| v.values.as_slice()), &h.item.vector);
                            Hit { score, item: h.item }
                        })
                        .collect();
                    sort_hits(&mut hits);
                    hits.truncate(k);
                    (hits, out.exact)
                }
            },
            (None, None) => (Vec::new(), true),
            (Some(Source::Popular(_)), _) => {
                let mut accepted = Vec::new();
                for (id, _) in
                    self.signals.most_popular(k, |id| g.catalog.get(id).is_some_and(|it| constraint.accepts(&it)))
                {
                    if let Some(item) = g.catalog.get(&id) {
                        accepted.push(Hit { score: score(&item), item });
                    }
                }
                (accepted, true)
            }
            (Some(Source::Candidates(c)), _) => {
                let mut seen = HashSet::new();
                let mut hits: Vec<Hit> = c
                    .ids
                    .iter()
                    .filter(|id| seen.insert(id.as_str()))
                    .filter_map(|id| g.catalog.get(id))
                    .filter(|it| constraint.accepts(it))
                    .map(|item| Hit { score: score(&item), item })
                    .collect();
                sort_hits(&mut hits);
                hits.truncate(k);
                (hits, true)
            }
        }
    }
}

fn storage_status(e: &StoreError) -> Status {
    if e.is_disk_full() {
        Status::resource_exhausted(format!("shard storage is full; write not acknowledged: {e}"))
    } else {
        Status::internal(format!("write not acknowledged: {e}"))
    }
}

/// Refuses a read while this replica is catching up with its peers: its
/// answer could miss writes the others acknowledged. The router then asks
/// another replica.
fn serving_reads(state: &ShardState) -> Result<(), Status> {
    if state.peers.is_ready() {
        Ok(())
    } else {
        Err(Status::unavailable(format!(
            "shard {} replica {} is catching up with its peers; ask another replica",
            state.shard_id, state.replica
        )))
    }
}

/// Checks that a write's versions, when given, are one per entry.
fn check_versions(what: &str, entries: usize, versions: &[u64]) -> Result<(), Status> {
    if versions.is_empty() || versions.len() == entries {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!("{} versions for {entries} {what}", versions.len())))
    }
}

/// Runs blocking work (model inference, graph search, fsync) off the async
/// workers so that one slow call cannot stall every connection.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))
}

/// Text fed to the model for an item: title, then description. Public so
/// that `vitrine embed` (tools/) embeds exactly what a shard would.
pub fn item_text(item: &pb::Item) -> String {
    match (item.title.trim(), item.description.trim()) {
        (t, "") => t.to_string(),
        ("", d) => d.to_string(),
        (t, d) => format!("{t}. {d}"),
    }
}

/// The `Shard` gRPC service.
#[derive(Clone)]
pub struct ShardService {
    state: Arc<ShardState>,
}

impl ShardService {
    pub fn new(state: Arc<ShardState>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl pb::shard_server::Shard for ShardService {
    async fn upsert(
        &self,
        request: Request<pb::ShardUpsertRequest>,
    ) -> Result<Response<pb::UpsertItemsResponse>, Status> {
        let span =
            tracing::info_span!("shard.upsert", shard = self.state.shard_id, items = request.get_ref().items.len());
        async move {
            let pb::ShardUpsertRequest { mut items, versions, .. } = request.into_inner();
            check_versions("items", items.len(), &versions)?;
            let n = items.len() as u32;
            // A model switch may commit while this write is being embedded;
            // the write is then embedded again with the new models (the
            // switch's write lock makes the second attempt land).
            let mut attempts = 0;
            loop {
                attempts += 1;
                let g = self.state.serving();
                let dim = g.catalog.dimension();
                let mut items = if attempts < 3 { items.clone() } else { std::mem::take(&mut items) };
                validate::items(&items, dim, g.models.embedders(), &self.state.limits)?;
                let embedded = g.models.embed_items(&mut items, &self.state.limits).await?;
                for it in &mut items {
                    // Image bytes are not kept: the image vector is, and reads
                    // never return image bytes.
                    it.image.clear();
                    if let Some(v) = &mut it.vector {
                        v.values = validate::vector("item vector", &v.values, dim)?;
                    }
                }
                let mut req = pb::ShardUpsertRequest { items, versions: versions.clone(), ..Default::default() };
                g.models.tag(&mut req);
                let record = WalRecord { op: Some(Op::Upsert(req)) };
                let state = Arc::clone(&self.state);
                match blocking(move || state.log_and_apply_checked(record)).await? {
                    Ok(()) => {
                        g.catalog.maybe_compact_in_background();
                        return Ok(Response::new(pb::UpsertItemsResponse { upserted: n, embedded, replication: None }));
                    }
                    Err(WriteError::Switched) if attempts < 3 => {
                        tracing::info!(attempts, "models switched while embedding the write; embedding it again");
                    }
                    Err(WriteError::Switched) => {
                        return Err(Status::unavailable("the shard switched models during this write; retry it"))
                    }
                    Err(WriteError::Failed(s)) => return Err(s),
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn delete(
        &self,
        request: Request<pb::ShardDeleteRequest>,
    ) -> Result<Response<pb::DeleteItemsResponse>, Status> {
        let span = tracing::info_span!("shard.delete", shard = self.state.shard_id);
        async move {
            let req = request.into_inner();
            validate::ids("item id", &req.ids, &self.state.limits)?;
            check_versions("ids", req.ids.len(), &req.versions)?;
            let catalog = self.state.catalog();
            let existing = req.ids.iter().filter(|id| catalog.get(id).is_some()).count() as u32;
            let state = Arc::clone(&self.state);
            blocking(move || state.log_and_apply(WalRecord { op: Some(Op::Delete(req)) })).await??;
            catalog.maybe_compact_in_background();
            Ok(Response::new(pb::DeleteItemsResponse { deleted: existing, replication: None }))
        }
        .instrument(span)
        .await
    }

    async fn get(&self, request: Request<pb::GetItemsRequest>) -> Result<Response<pb::GetItemsResponse>, Status> {
        let _span = tracing::info_span!("shard.get", shard = self.state.shard_id).entered();
        serving_reads(&self.state)?;
        let req = request.into_inner();
        validate::ids("item id", &req.ids, &self.state.limits)?;
        let g = self.state.generation(&req.model)?;
        let mut out = pb::GetItemsResponse::default();
        if req.with_vectors {
            out.model = g.set().to_string();
        }
        for id in req.ids {
            match g.catalog.get(&id) {
                Some(stored) => out.items.push(stored.to_wire(req.with_vectors)),
                None => out.missing.push(id),
            }
        }
        Ok(Response::new(out))
    }

    async fn search(
        &self,
        request: Request<pb::ShardSearchRequest>,
    ) -> Result<Response<pb::ShardSearchResponse>, Status> {
        let span = tracing::info_span!("shard.search", shard = self.state.shard_id, k = request.get_ref().k);
        async move {
            serving_reads(&self.state)?;
            let req = request.into_inner();
            let g = self.state.generation(&req.model)?;
            let dim = g.catalog.dimension();
            let query = match (&req.vector, &req.source) {
                (Some(v), _) => Some(validate::vector("query vector", &v.values, dim)?),
                // Popularity and candidate scoring can do without a vector.
                (None, Some(_)) => None,
                (None, None) => return Err(Status::invalid_argument("search needs a vector")),
            };
            let k = validate::k(req.k, &self.state.limits)?;
            let filter = Filter::from_optional(req.filter.as_ref())?;
            validate::ids("exclude id", &req.exclude_ids, &self.state.limits)?;
            if let Some(pb::shard_search_request::Source::Candidates(c)) = &req.source {
                validate::ids("candidate id", &c.ids, &self.state.limits)?;
            }
            // A plain index search (no filter, no other source) costs 0.1 to
            // 0.5 ms of CPU, less than handing it to the blocking pool and
            // back: on 2 cores, with one search in flight, that hand-off
            // added 0.15 ms to each search and 10% to its CPU cost; under
            // load it made no measurable difference (docs/PERFORMANCE.md).
            // So it runs here, on the async worker,
            // unless a write holds the catalogue (the search would wait for
            // it). Filtered searches, which may scan every item, popularity
            // and candidate scoring go to the pool.
            let inline = req.source.is_none() && filter.is_none() && !g.catalog.writing();
            let state = Arc::clone(&self.state);
            let run = move || {
                let constraint = Constraint {
                    filter: filter.as_ref(),
                    exclude: req.exclude_ids.iter().map(String::as_str).collect::<HashSet<_>>(),
                };
                let (hits, exact) = state.find(&g, query.as_deref(), k, &constraint, req.source.as_ref());
                let hits = hits
                    .into_iter()
                    .map(|h| pb::ScoredItem {
                        id: h.item.item.id.clone(),
                        score: h.score,
                        item: req.with_items.then(|| h.item.item.clone()),
                        shard: state.shard_id,
                        popularity: state.signals.popularity(h.item.id()),
                        vector: req.with_vectors.then(|| pb::Vector { values: h.item.vector.clone() }),
                        ..Default::default()
                    })
                    .collect();
                pb::ShardSearchResponse { exact, hits }
            };
            let resp = if inline { run() } else { blocking(run).await? };
            Ok(Response::new(resp))
        }
        .instrument(span)
        .await
    }

    async fn embed(&self, request: Request<pb::EmbedRequest>) -> Result<Response<pb::EmbedResponse>, Status> {
        let span = tracing::info_span!("shard.embed", shard = self.state.shard_id);
        // The caller's deadline bounds the time a query may wait for a batch.
        let deadline = Instant::now() + timeout::from_metadata(request.metadata()).unwrap_or(Duration::from_secs(1));
        async move {
            let limits = &self.state.limits;
            let check_text = |text: &str| validate::query_text(text, limits);
            let query = match request.into_inner().input {
                Some(pb::embed_request::Input::Text(text)) => {
                    check_text(&text)?;
                    Query::Text(text)
                }
                Some(pb::embed_request::Input::Image(bytes)) => Query::Image(bytes),
                Some(pb::embed_request::Input::Multimodal(pb::MultimodalQuery { text, image })) => {
                    check_text(&text)?;
                    if image.is_empty() {
                        return Err(Status::invalid_argument("multimodal query has no image"));
                    }
                    Query::Both(text, image)
                }
                None => return Err(Status::invalid_argument("embed needs text, an image or both")),
            };
            let (v, model) = self.state.serving().models.embed_query(query, deadline, limits).await?;
            Ok(Response::new(pb::EmbedResponse { vector: Some(pb::Vector { values: v }), model }))
        }
        .instrument(span)
        .await
    }

    async fn get_profile(&self, request: Request<pb::GetProfileRequest>) -> Result<Response<pb::Profile>, Status> {
        let _span = tracing::info_span!("shard.get_profile", shard = self.state.shard_id).entered();
        serving_reads(&self.state)?;
        let user_id = request.into_inner().user_id;
        validate::id("user id", &user_id, &self.state.limits)?;
        let events = self.state.profiles.get(&user_id);
        Ok(Response::new(pb::Profile { user_id, events }))
    }

    async fn append_events(
        &self,
        request: Request<pb::ShardEventsRequest>,
    ) -> Result<Response<pb::RecordEventsResponse>, Status> {
        let span = tracing::info_span!(
            "shard.append_events",
            shard = self.state.shard_id,
            events = request.get_ref().events.len()
        );
        async move {
            let req = request.into_inner();
            validate::batch_len("events", req.events.len(), &self.state.limits)?;
            check_versions("events", req.events.len(), &req.versions)?;
            for e in &req.events {
                validate::event(e, &self.state.limits)?;
            }
            let n = req.events.len() as u32;
            let state = Arc::clone(&self.state);
            blocking(move || state.log_and_apply(WalRecord { op: Some(Op::Events(req)) })).await??;
            Ok(Response::new(pb::RecordEventsResponse { recorded: n, replication: None }))
        }
        .instrument(span)
        .await
    }

    async fn update_signals(
        &self,
        request: Request<pb::ShardSignalsRequest>,
    ) -> Result<Response<pb::UpdateSignalsResponse>, Status> {
        let span = tracing::info_span!(
            "shard.update_signals",
            shard = self.state.shard_id,
            items = request.get_ref().signals.len()
        );
        async move {
            let req = request.into_inner();
            validate::batch_len("signal entries", req.signals.len(), &self.state.limits)?;
            check_versions("signal entries", req.signals.len(), &req.versions)?;
            for s in &req.signals {
                validate::signals(s, &self.state.limits)?;
            }
            let n = req.signals.len() as u32;
            let state = Arc::clone(&self.state);
            blocking(move || state.log_and_apply(WalRecord { op: Some(Op::Signals(req)) })).await??;
            Ok(Response::new(pb::UpdateSignalsResponse { updated: n, replication: None }))
        }
        .instrument(span)
        .await
    }

    async fn lookup(
        &self,
        request: Request<pb::ShardLookupRequest>,
    ) -> Result<Response<pb::ShardLookupResponse>, Status> {
        let _span = tracing::info_span!("shard.lookup", shard = self.state.shard_id).entered();
        serving_reads(&self.state)?;
        let req = request.into_inner();
        validate::ids("item id", &req.ids, &self.state.limits)?;
        validate::ids("signal id", &req.signal_ids, &self.state.limits)?;
        let g = self.state.generation(&req.model)?;
        let vectors = req
            .ids
            .into_iter()
            .filter_map(|id| {
                let values = g.catalog.get(&id)?.vector.clone();
                Some(pb::ItemVector { id, vector: Some(pb::Vector { values }) })
            })
            .collect();
        let signals =
            req.signal_ids.iter().filter_map(|id| self.state.signals.get(id).map(|s| s.to_wire(id))).collect();
        Ok(Response::new(pb::ShardLookupResponse { vectors, signals, model: g.set().to_string() }))
    }

    async fn trending(
        &self,
        request: Request<pb::ShardTrendingRequest>,
    ) -> Result<Response<pb::ShardTrendingResponse>, Status> {
        let _span = tracing::info_span!("shard.trending", shard = self.state.shard_id).entered();
        serving_reads(&self.state)?;
        let k = validate::k(request.into_inner().k, &self.state.limits)?;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let items = self
            .state
            .profiles
            .trending(k, now)
            .into_iter()
            .map(|(id, score)| pb::TrendingItem { id, score })
            .collect();
        Ok(Response::new(pb::ShardTrendingResponse { items }))
    }

    async fn info(&self, _request: Request<pb::ClusterInfoRequest>) -> Result<Response<pb::ShardInfo>, Status> {
        let s = &self.state;
        let report = crate::switch::report(s);
        let g = s.serving();
        let (wal_last_seq, wal_bytes) = {
            let wal = s.wal.lock();
            (wal.last_seq(), wal.bytes())
        };
        Ok(Response::new(pb::ShardInfo {
            shard: s.shard_id,
            address: String::new(),
            state: if s.peers.is_ready() { pb::ShardState::Serving } else { pb::ShardState::CatchingUp } as i32,
            items: g.catalog.len() as u64,
            tombstones: g.catalog.tombstones() as u64,
            users: s.profiles.len() as u64,
            model: g.models.text_name(),
            execution_provider: g.models.execution_provider().to_string(),
            dimension: g.catalog.dimension() as u32,
            virtual_shards: 0,
            items_with_signals: s.signals.len() as u64,
            wal_last_seq,
            snapshot_seq: s.snapshots.last_seq(),
            wal_bytes,
            replica: s.replica,
            deleted_ids: g.catalog.deleted_ids() as u64,
            image_model: g.models.image_name(),
            fusion: g.models.fusion.describe(),
            model_set: g.set().to_string(),
            other_model_set: report.other,
            other_model_state: report.other_state,
        }))
    }

    async fn snapshot(
        &self,
        _request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotInfo>, Status> {
        let span = tracing::info_span!("shard.snapshot", shard = self.state.shard_id);
        let state = Arc::clone(&self.state);
        let written = blocking(move || state.snapshot()).instrument(span).await?.map_err(|e| match e {
            StoreError::Busy => Status::failed_precondition(e.to_string()),
            e if e.is_disk_full() => Status::resource_exhausted(format!("snapshot not written: {e}")),
            e => Status::internal(format!("snapshot not written: {e}")),
        })?;
        let m = written.manifest;
        Ok(Response::new(pb::SnapshotInfo {
            shard: self.state.shard_id,
            replica: self.state.replica,
            seq: m.seq,
            items: m.items,
            users: m.users,
            bytes: m.bytes,
            elapsed_ms: written.elapsed_ms,
            error: String::new(),
        }))
    }

    async fn switch_models(
        &self,
        request: Request<pb::SwitchModelsRequest>,
    ) -> Result<Response<pb::ShardModelSwitch>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("shard.switch_models", shard = self.state.shard_id, phase = req.phase,
            text_model = %req.text_model);
        let report = crate::switch::run(&self.state, req).instrument(span).await?;
        Ok(Response::new(report))
    }

    async fn list_snapshots(
        &self,
        _request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ShardSnapshots>, Status> {
        let span = tracing::info_span!("shard.list_snapshots", shard = self.state.shard_id);
        let dir = self.state.snapshots.dir().to_path_buf();
        let listed = blocking(move || crate::restore::list_in(&dir, false))
            .instrument(span)
            .await?
            .map_err(|e| Status::internal(format!("listing snapshots: {e}")))?;
        let snapshots = listed.iter().map(crate::restore::Listed::to_wire).collect();
        Ok(Response::new(pb::ShardSnapshots {
            shard: self.state.shard_id,
            replica: self.state.replica,
            snapshots,
            error: String::new(),
        }))
    }

    type SyncDigestStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SyncDigestChunk, Status>> + Send>>;

    async fn sync_digest(
        &self,
        _request: Request<pb::SyncDigestRequest>,
    ) -> Result<Response<Self::SyncDigestStream>, Status> {
        let span = tracing::info_span!("shard.sync_digest", shard = self.state.shard_id);
        let state = Arc::clone(&self.state);
        let chunks = blocking(move || crate::replica::digest_chunks(&state)).instrument(span).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))))
    }

    async fn sync_fetch(
        &self,
        request: Request<pb::SyncFetchRequest>,
    ) -> Result<Response<pb::SyncFetchResponse>, Status> {
        let span = tracing::info_span!("shard.sync_fetch", shard = self.state.shard_id);
        let req = request.into_inner();
        let asked = req.item_ids.len() + req.user_ids.len() + req.signal_ids.len();
        if asked > crate::replica::MAX_FETCH {
            return Err(Status::invalid_argument(format!(
                "{asked} ids in one fetch; the limit is {}",
                crate::replica::MAX_FETCH
            )));
        }
        let state = Arc::clone(&self.state);
        let resp = blocking(move || crate::replica::fetch(&state, &req)).instrument(span).await?;
        Ok(Response::new(resp))
    }

    async fn catch_up(&self, _request: Request<pb::CatchUpRequest>) -> Result<Response<pb::CatchUpResponse>, Status> {
        let span = tracing::info_span!("shard.catch_up", shard = self.state.shard_id, replica = self.state.replica);
        let report = crate::replica::catch_up(Arc::clone(&self.state)).instrument(span).await;
        Ok(Response::new(report))
    }
}
