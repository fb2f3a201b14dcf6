//! An in-process stand-in for the router, for testing the evaluation driver
//! without binaries or a model. It ranks by the uploaded signals only: the sum
//! of the history items' neighbour weights (× `ranking.behaviour`, default 1)
//! plus popularity (× `ranking.popularity`, default 0.01), ties by id, seen
//! items excluded. It rejects a Recommend without `explore_epsilon = 0`, so a
//! test also checks what the driver sends.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tonic::{Request, Response, Status};
use vitrine_proto::pb::{self, vitrine_server::Vitrine};

#[derive(Default)]
pub struct State {
    /// id → title, in insertion order of first upsert.
    pub items: HashMap<String, String>,
    pub signals: HashMap<String, pb::ItemSignals>,
    pub recommends: usize,
}

#[derive(Clone, Default)]
pub struct FakeRouter {
    pub state: Arc<Mutex<State>>,
}

impl FakeRouter {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves on a free loopback port; returns the address.
    pub async fn serve(&self) -> SocketAddr {
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        let svc = pb::vitrine_server::VitrineServer::new(self.clone());
        tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming));
        addr
    }
}

/// A 2-d unit vector per id, so that diversity has something to measure.
fn vector(id: &str) -> Vec<f32> {
    let h = id.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let a = (h % 360) as f32 * std::f32::consts::PI / 180.0;
    vec![a.cos(), a.sin()]
}

#[tonic::async_trait]
impl Vitrine for FakeRouter {
    async fn upsert_items(
        &self,
        request: Request<pb::UpsertItemsRequest>,
    ) -> Result<Response<pb::UpsertItemsResponse>, Status> {
        let items = request.into_inner().items;
        let n = items.len() as u32;
        let mut s = self.lock();
        for it in items {
            if it.title.is_empty() {
                return Err(Status::invalid_argument(format!("item {} has no text", it.id)));
            }
            s.items.insert(it.id, it.title);
        }
        Ok(Response::new(pb::UpsertItemsResponse { upserted: n, embedded: n, ..Default::default() }))
    }

    async fn upsert_items_stream(
        &self,
        _: Request<tonic::Streaming<pb::UpsertItemsRequest>>,
    ) -> Result<Response<pb::UpsertItemsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn delete_items(
        &self,
        _: Request<pb::DeleteItemsRequest>,
    ) -> Result<Response<pb::DeleteItemsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_items(&self, request: Request<pb::GetItemsRequest>) -> Result<Response<pb::GetItemsResponse>, Status> {
        let r = request.into_inner();
        let s = self.lock();
        let (mut items, mut missing) = (Vec::new(), Vec::new());
        for id in r.ids {
            match s.items.get(&id) {
                Some(title) => items.push(pb::Item {
                    vector: r.with_vectors.then(|| pb::Vector { values: vector(&id) }),
                    id,
                    title: title.clone(),
                    ..Default::default()
                }),
                None => missing.push(id),
            }
        }
        Ok(Response::new(pb::GetItemsResponse { items, missing, model: String::new() }))
    }

    async fn search(&self, _: Request<pb::SearchRequest>) -> Result<Response<pb::SearchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn similar_items(&self, _: Request<pb::SimilarItemsRequest>) -> Result<Response<pb::SearchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn recommend(&self, request: Request<pb::RecommendRequest>) -> Result<Response<pb::SearchResponse>, Status> {
        let r = request.into_inner();
        let ranking = r.ranking.unwrap_or_default();
        if ranking.explore_epsilon != Some(0.0) {
            return Err(Status::invalid_argument("evaluation must switch exploration off"));
        }
        let mut s = self.lock();
        s.recommends += 1;
        let seen: HashSet<&str> = r.history.iter().map(String::as_str).collect();
        let candidates: Vec<&str> = if r.candidate_ids.is_empty() {
            s.items.keys().map(String::as_str).collect()
        } else {
            r.candidate_ids.iter().map(String::as_str).filter(|id| s.items.contains_key(*id)).collect()
        };
        let mut behaviour: HashMap<&str, f32> = HashMap::new();
        for h in &r.history {
            for n in s.signals.get(h).map(|x| x.neighbours.as_slice()).unwrap_or_default() {
                *behaviour.entry(n.id.as_str()).or_default() += n.weight;
            }
        }
        let (wb, wp) = (ranking.behaviour.unwrap_or(1.0), ranking.popularity.unwrap_or(0.01));
        let mut hits: Vec<pb::ScoredItem> = candidates
            .into_iter()
            .filter(|id| !seen.contains(id))
            .map(|id| {
                let pop = s.signals.get(id).map_or(0.0, |x| x.popularity);
                let score = wb * behaviour.get(id).copied().unwrap_or(0.0) + wp * pop;
                pb::ScoredItem { id: id.to_string(), score, ..Default::default() }
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        hits.truncate(r.k as usize);
        let coverage = Some(pb::Coverage { shards_asked: 1, shards_answered: 1, degraded: false });
        Ok(Response::new(pb::SearchResponse { hits, coverage }))
    }

    async fn record_events(
        &self,
        _: Request<pb::RecordEventsRequest>,
    ) -> Result<Response<pb::RecordEventsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn update_signals(
        &self,
        request: Request<pb::UpdateSignalsRequest>,
    ) -> Result<Response<pb::UpdateSignalsResponse>, Status> {
        let signals = request.into_inner().signals;
        let n = signals.len() as u32;
        let mut s = self.lock();
        for x in signals {
            s.signals.insert(x.id.clone(), x);
        }
        Ok(Response::new(pb::UpdateSignalsResponse { updated: n, ..Default::default() }))
    }

    async fn cluster_info(
        &self,
        _: Request<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn create_snapshot(
        &self,
        _: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_snapshots(
        &self,
        _: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn switch_models(
        &self,
        _: Request<pb::SwitchModelsRequest>,
    ) -> Result<Response<pb::SwitchModelsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}
