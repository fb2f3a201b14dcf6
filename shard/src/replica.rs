//! Replicas of one shard catching up with each other (anti-entropy).
//!
//! The router sends every write to all replicas of a shard with a version
//! from its clock (router::version), and every replica keeps, per id, the
//! newest version ([`crate::catalog::supersedes`]). Replicas that received the
//! same writes therefore hold the same state, whatever the order. A replica
//! that missed writes (it was down, or a call to it failed) catches up by
//! reading each peer's *digest* — every id with the version it holds, every
//! user with a hash of their history — and fetching what is newer there.
//! Fetched state is logged and applied like any write, so it is durable.
//!
//! Why digests rather than shipping a peer's snapshot plus log: replicas
//! number their logs independently (each logs what reached it), so there is
//! no common sequence number to resume from; comparing versions per id is
//! exact, moves only what differs, and needs no clock assumptions. It costs
//! one pass over the peer's ids (about 30 bytes each) per catch-up.
//!
//! A replica with peers starts *not ready*: it takes writes at once but
//! refuses reads (UNAVAILABLE, so the router asks another replica) until it
//! has caught up with every peer it can reach, or the catch-up deadline
//! passes with none reachable (a whole-cluster cold start); then it serves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tracing::Instrument;
use vitrine_proto::pb::{self, shard_client::ShardClient};
use vitrine_telemetry::Propagate;

use crate::service::{blocking, ShardState};
use crate::wal::{Op, WalRecord};

/// A client of one peer replica.
type PeerClient = ShardClient<Propagate<Channel>>;

/// Entries per digest chunk: about 200 KB, well under message limits.
const DIGEST_CHUNK: usize = 4096;
/// Most ids one fetch may ask for.
pub const MAX_FETCH: usize = 1024;
/// Ids asked per fetch by a catching-up replica (items carry vectors: 256
/// items at 384 dimensions are about 400 KB).
const FETCH_BATCH: usize = 256;

/// The other replicas of this shard, and whether this one serves reads.
pub struct Peers {
    /// Each call carries the request id and, with trace export on, the
    /// calling span as `traceparent` (the router's, when it asked for the
    /// catch-up), so a catch-up shows in the trace that caused it.
    clients: Vec<(String, PeerClient)>,
    ready: AtomicBool,
    /// One catch-up at a time; a second request waits and then runs (cheap
    /// when nothing changed), so its caller knows the state it asked for.
    running: tokio::sync::Mutex<()>,
    /// How long a start-up catch-up keeps trying peers that do not answer.
    pub startup_timeout: Duration,
}

impl Peers {
    /// No peers: a single replica, ready at once.
    pub fn none() -> Self {
        Self {
            clients: Vec::new(),
            ready: AtomicBool::new(true),
            running: tokio::sync::Mutex::new(()),
            startup_timeout: Duration::ZERO,
        }
    }

    /// Lazily connected clients for the peer addresses (`host:port`, or with
    /// a scheme); with `tls` they are called over TLS.
    pub fn connect(
        addresses: &[String],
        tls: Option<&ClientTlsConfig>,
        max_message_bytes: usize,
        startup_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut clients = Vec::with_capacity(addresses.len());
        for addr in addresses {
            let uri = if addr.contains("://") { addr.clone() } else { format!("{scheme}://{addr}") };
            let mut endpoint = Endpoint::from_shared(uri)
                .map_err(|e| anyhow::anyhow!("peer address {addr:?}: {e}"))?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true);
            if let Some(tls) = tls {
                endpoint =
                    endpoint.tls_config(tls.clone()).map_err(|e| anyhow::anyhow!("TLS to peer {addr:?}: {e}"))?;
            }
            let client = ShardClient::new(Propagate::new(endpoint.connect_lazy()))
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes);
            clients.push((addr.clone(), client));
        }
        Ok(Self {
            ready: AtomicBool::new(clients.is_empty()),
            clients,
            running: tokio::sync::Mutex::new(()),
            startup_timeout,
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// This replica's digest in chunks (see the module docs).
pub fn digest_chunks(state: &ShardState) -> Vec<pb::SyncDigestChunk> {
    let (live, deleted) = state.catalog().digest();
    let users = state.profiles.digest();
    let signals = state.signals.digest();
    let to_wire = |v: Vec<(String, u64)>| -> Vec<pb::VersionedId> {
        v.into_iter().map(|(id, version)| pb::VersionedId { id, version }).collect()
    };
    let mut chunks = Vec::new();
    let mut push = |kind: usize, list: Vec<pb::VersionedId>| {
        let mut it = list.into_iter().peekable();
        while it.peek().is_some() {
            let part: Vec<pb::VersionedId> = it.by_ref().take(DIGEST_CHUNK).collect();
            let mut chunk = pb::SyncDigestChunk::default();
            match kind {
                0 => chunk.items = part,
                1 => chunk.deleted = part,
                2 => chunk.users = part,
                _ => chunk.signals = part,
            }
            chunks.push(chunk);
        }
    };
    push(0, to_wire(live));
    push(1, to_wire(deleted));
    push(2, to_wire(users));
    push(3, to_wire(signals));
    chunks
}

/// The current state of the asked ids, with versions.
pub fn fetch(state: &ShardState, req: &pb::SyncFetchRequest) -> pb::SyncFetchResponse {
    // Items and their tags from one generation.
    let g = state.serving();
    let mut items = pb::ShardUpsertRequest::default();
    let mut deleted = pb::ShardDeleteRequest::default();
    for id in &req.item_ids {
        match g.catalog.get(id) {
            Some(stored) => {
                items.items.push(stored.to_wire(true));
                items.versions.push(stored.version);
            }
            None => {
                if let Some(v) = g.catalog.version_of(id) {
                    deleted.ids.push(id.clone());
                    deleted.versions.push(v);
                }
            }
        }
    }
    let mut events = pb::ShardEventsRequest::default();
    for user in &req.user_ids {
        for e in state.profiles.get_stored(user) {
            events.events.push(e.event);
            events.versions.push(e.version);
        }
    }
    let mut signals = pb::ShardSignalsRequest::default();
    for id in &req.signal_ids {
        if let Some((s, v)) = state.signals.get_versioned(id) {
            signals.signals.push(s);
            signals.versions.push(v);
        }
    }
    g.models.tag(&mut items);
    pb::SyncFetchResponse { items: Some(items), deleted: Some(deleted), events: Some(events), signals: Some(signals) }
}

/// What one peer's digest says this replica lacks.
#[derive(Default)]
struct Wanted {
    items: Vec<String>,
    deletes: pb::ShardDeleteRequest,
    users: Vec<String>,
    signals: Vec<String>,
}

/// Whether a peer's version should replace ours. Unlike a write, an
/// unversioned (0) entry is never fetched: both sides already hold what
/// they had before replication, and fetching it would rewrite it each time.
fn newer(peer: u64, ours: Option<u64>) -> bool {
    ours.is_none_or(|o| peer > o)
}

impl Wanted {
    fn of(state: &ShardState, chunk: pb::SyncDigestChunk, our_users: &HashMap<String, u64>) -> Self {
        let mut w = Wanted::default();
        let catalog = state.catalog();
        for e in chunk.items {
            if newer(e.version, catalog.version_of(&e.id)) {
                w.items.push(e.id);
            }
        }
        for e in chunk.deleted {
            if newer(e.version, catalog.version_of(&e.id)) {
                w.deletes.ids.push(e.id);
                w.deletes.versions.push(e.version);
            }
        }
        for e in chunk.users {
            if our_users.get(&e.id) != Some(&e.version) {
                w.users.push(e.id);
            }
        }
        for e in chunk.signals {
            if newer(e.version, state.signals.get_versioned(&e.id).map(|(_, v)| v)) {
                w.signals.push(e.id);
            }
        }
        w
    }
}

/// Counts of what a catch-up applied.
#[derive(Default)]
struct Applied {
    items: u64,
    deletes: u64,
    users: u64,
    signals: u64,
}

/// Catches up with every peer (see the module docs) and reports what changed.
pub async fn catch_up(state: Arc<ShardState>) -> pb::CatchUpResponse {
    let _one_at_a_time = state.peers.running.lock().await;
    let started = Instant::now();
    let mut report = pb::CatchUpResponse::default();
    let mut applied = Applied::default();
    for (addr, client) in &state.peers.clients {
        match sync_from(&state, client.clone(), &mut applied).await {
            Ok(()) => report.peers_synced += 1,
            Err(e) => {
                tracing::warn!(peer = %addr, error = %e, "catch-up from a peer failed");
                report.peer_errors.push(format!("{addr}: {e}"));
            }
        }
    }
    report.items = applied.items;
    report.deletes = applied.deletes;
    report.users = applied.users;
    report.signals = applied.signals;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    crate::metrics::get()
        .catch_ups
        .with_label_values(&[if report.peer_errors.is_empty() { "ok" } else { "partial" }])
        .inc();
    tracing::info!(
        peers_synced = report.peers_synced,
        peer_errors = report.peer_errors.len(),
        items = report.items,
        deletes = report.deletes,
        users = report.users,
        signals = report.signals,
        elapsed_ms = report.elapsed_ms,
        "caught up with peer replicas"
    );
    report
}

/// The start-up catch-up: retries until every peer was synced once or the
/// deadline passed, then lets the replica serve reads.
pub async fn catch_up_at_start(state: Arc<ShardState>) {
    if state.peers.is_empty() {
        return;
    }
    let deadline = Instant::now() + state.peers.startup_timeout;
    loop {
        // Each attempt is a trace of its own (there is no caller to join).
        let span = tracing::info_span!("shard.catch_up_at_start", replica = state.replica);
        let report = catch_up(Arc::clone(&state)).instrument(span).await;
        if report.peer_errors.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                peers_synced = report.peers_synced,
                errors = ?report.peer_errors,
                "serving reads without having caught up with every peer (catch-up deadline passed); \
                 writes the unreachable peers acknowledged alone are missing until the next catch-up"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    state.peers.ready.store(true, Ordering::Release);
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("peer sent an item {id:?} with a {got}-dimensional vector; this replica has {want}")]
    Dimension { id: String, got: usize, want: usize },
    #[error("peer sent items whose vectors this replica cannot serve: {0}")]
    Models(String),
}

async fn sync_from(state: &Arc<ShardState>, mut client: PeerClient, applied: &mut Applied) -> Result<(), SyncError> {
    let our_users: HashMap<String, u64> = {
        let s = Arc::clone(state);
        blocking(move || s.profiles.digest().into_iter().collect()).await?
    };
    let mut stream = client.sync_digest(pb::SyncDigestRequest {}).await?.into_inner();
    while let Some(chunk) = stream.message().await? {
        let wanted = Wanted::of(state, chunk, &our_users);
        if !wanted.deletes.ids.is_empty() {
            applied.deletes += wanted.deletes.ids.len() as u64;
            log(state, Op::Delete(wanted.deletes)).await?;
        }
        let (mut items, mut users, mut signals) = (wanted.items, wanted.users, wanted.signals);
        while !(items.is_empty() && users.is_empty() && signals.is_empty()) {
            let take = |v: &mut Vec<String>| v.drain(..v.len().min(FETCH_BATCH)).collect::<Vec<_>>();
            let req = pb::SyncFetchRequest {
                item_ids: take(&mut items),
                user_ids: take(&mut users),
                signal_ids: take(&mut signals),
            };
            let got = client.sync_fetch(req).await?.into_inner();
            if let Some(up) = got.items.filter(|u| !u.items.is_empty()) {
                let g = state.serving();
                if let Some(why) = g.models.foreign(&up) {
                    return Err(SyncError::Models(why));
                }
                let want = g.catalog.dimension();
                if let Some(bad) = up.items.iter().find(|it| it.vector.as_ref().is_none_or(|v| v.values.len() != want))
                {
                    return Err(SyncError::Dimension {
                        id: bad.id.clone(),
                        got: bad.vector.as_ref().map_or(0, |v| v.values.len()),
                        want,
                    });
                }
                applied.items += up.items.len() as u64;
                log(state, Op::Upsert(up)).await?;
            }
            if let Some(del) = got.deleted.filter(|d| !d.ids.is_empty()) {
                applied.deletes += del.ids.len() as u64;
                log(state, Op::Delete(del)).await?;
            }
            if let Some(ev) = got.events.filter(|e| !e.events.is_empty()) {
                let mut seen: Vec<&str> = ev.events.iter().map(|e| e.user_id.as_str()).collect();
                seen.dedup();
                applied.users += seen.len() as u64;
                log(state, Op::Events(ev)).await?;
            }
            if let Some(sig) = got.signals.filter(|s| !s.signals.is_empty()) {
                applied.signals += sig.signals.len() as u64;
                log(state, Op::Signals(sig)).await?;
            }
        }
    }
    Ok(())
}

/// Logs and applies fetched state like a write.
async fn log(state: &Arc<ShardState>, op: Op) -> Result<(), tonic::Status> {
    let s = Arc::clone(state);
    blocking(move || s.log_and_apply(WalRecord { op: Some(op) })).await?
}
