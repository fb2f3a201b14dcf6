//! A Vitrine shard owns part of the catalogue (the items whose ids hash to its
//! virtual shards) and the profiles of part of the users.
//!
//! - [`embed`]: text → vector with ONNX Runtime (and the session pool both
//!   models use).
//! - [`image_embed`]: image → vector: decode, EXIF, resize, crop, ViT.
//! - [`fusion`]: text and image vectors → one item or query vector.
//! - [`models`]: the models, their batchers and the query cache as one unit.
//! - [`registry`]: the declared models, their versions and the tags on vectors.
//! - [`batcher`]: dynamic batching of query embeddings, per model.
//! - [`index`]: the ANN graph behind the [`index::VectorIndex`] trait.
//! - [`flat`]: a flattened, read-only copy of that graph for fast search.
//! - [`serving`]: graph for inserts + flat copy and delta for searches.
//! - [`catalog`]: items + index, tombstones, compaction, filtered search.
//! - [`profiles`]: recent events per user.
//! - [`wal`]: the write-ahead log (segments, fsync policies) and its replay.
//! - [`snapshot`]: checksummed snapshots of the whole state.
//! - [`store`]: recovery (snapshot + log) and taking snapshots.
//! - [`replica`]: catching up with the shard's other replicas.
//! - [`switch`]: switching to another model version while serving.
//! - [`service`]: the internal gRPC API the router calls.
//! - [`metrics`]: the shard's Prometheus metrics.
#![forbid(unsafe_code)]

pub mod batcher;
pub mod catalog;
pub mod config;
pub mod embed;
pub mod flat;
pub mod fusion;
pub mod image_embed;
pub mod index;
pub mod metrics;
pub mod models;
pub mod profiles;
pub mod query_cache;
pub mod registry;
pub mod replica;
pub mod restore;
pub mod service;
pub mod serving;
pub mod signals;
pub mod snapshot;
pub mod store;
pub mod switch;
pub mod trending;
pub mod wal;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};
use vitrine_proto::{pb, Limits};

use catalog::{Catalog, CompactionPolicy, StoredItem};
pub use config::ShardConfig;
use embed::{TextEmbedder, TextModelConfig};
use index::IndexParams;
use service::{ShardService, ShardState};
use store::{SnapshotPolicy, Snapshots};
use wal::WalOptions;

/// Loads the model, recovers the state (newest valid snapshot, then the log
/// after it) and returns it.
pub fn open(config: &ShardConfig) -> anyhow::Result<Arc<ShardState>> {
    let started = Instant::now();
    // First, before the model loads: one process per data directory, and
    // none on a directory a restore left half-done.
    let dir_lock = restore::DirLock::acquire(&config.data_dir)?;
    restore::check_not_restoring(&config.data_dir)?;
    // hnsw_rs calls process::exit on M > 256; refuse such settings here instead.
    anyhow::ensure!((2..=256).contains(&config.hnsw_m), "--hnsw-m must be 2..=256, got {}", config.hnsw_m);
    anyhow::ensure!(
        config.hnsw_ef_construction >= 1 && config.hnsw_ef_search >= 1,
        "HNSW ef values must be at least 1"
    );
    anyhow::ensure!(
        config.compact_ratio.is_finite() && config.compact_ratio > 0.0,
        "--compact-ratio must be a positive number, got {}",
        config.compact_ratio
    );
    let wal_options = WalOptions {
        fsync: config.fsync,
        group_interval: Duration::from_millis(config.fsync_group_ms),
        repair: config.repair_wal,
    };
    let recovered = store::recover(&config.data_dir, wal_options)?;
    let selection = selection_at_start(config, &recovered)?;
    let models = load_models(config, &selection)?;
    let dimension = match (models.fusion.dimension(), config.dimension) {
        (Some(m), Some(d)) if d != m => {
            anyhow::bail!(
                "--dimension {d} disagrees with the models' vector dimension {m} ({})",
                models.fusion.describe()
            )
        }
        (Some(m), _) => m,
        (None, Some(d)) if d > 0 => d,
        (None, _) => anyhow::bail!("--no-model needs --dimension"),
    };
    let catalog = Arc::new(new_catalog(config, dimension));
    let snapshot_policy =
        SnapshotPolicy { after_wal_bytes: config.snapshot_wal_bytes, keep: usize::from(config.snapshots_keep) };
    let snapshot_seq = recovered.snapshot.as_ref().map_or(0, |s| s.seq);
    // Peers are called with the shard's own TLS settings: the cluster CA as
    // trust root and, under mutual TLS, the shard's certificate as identity.
    let peer_tls = match (&config.tls_cert, &config.tls_ca) {
        (Some(_), Some(ca)) => {
            let identity = config.tls_client_auth.then_some((config.tls_cert.as_deref(), config.tls_key.as_deref()));
            let identity = identity.and_then(|(c, k)| c.zip(k));
            Some(vitrine_security::tls::client_config(ca, identity, None)?)
        }
        (Some(_), None) if !config.peers.is_empty() => {
            anyhow::bail!("--peer with TLS needs --tls-ca: the CA that signed the peers' certificates")
        }
        _ => None,
    };
    let peers = replica::Peers::connect(
        &config.peers,
        peer_tls.as_ref(),
        config.max_message_mib << 20,
        Duration::from_millis(config.catch_up_timeout_ms),
    )?;
    let state = Arc::new(ShardState {
        shard_id: config.shard_id,
        generations: parking_lot::RwLock::new(switch::Generations {
            serving: Arc::new(switch::Generation { models, catalog }),
            other: None,
        }),
        profiles: profiles::Profiles::new(
            config.profile_events,
            Duration::from_secs_f64(config.trending_half_life_hours * 3600.0),
        ),
        signals: signals::SignalStore::default(),
        wal: Mutex::new(recovered.wal),
        snapshots: Snapshots::new(&config.data_dir, snapshot_policy, snapshot_seq),
        limits: Limits::default(),
        replica: config.replica,
        peers,
        config: config.clone(),
        switching: tokio::sync::Mutex::new(()),
        dir_lock,
    });
    let serving = state.serving();
    let (models, catalog) = (&serving.models, &serving.catalog);
    // Items from the snapshot and the log are staged into their final state
    // first and indexed with one parallel build: replaying upserts one by
    // one would insert on a single core, and also index points a later
    // delete or update makes dead. Events and signals apply in order.
    let loading = Instant::now();
    let mut staged = Staged::default();
    let mut snapshot_items = 0;
    if let Some(snap) = &recovered.snapshot {
        let mut bad = None;
        let manifest = snapshot::load(snap, |record| match record.op {
            Some(wal::Op::Upsert(mut req)) => {
                bad = bad.take().or_else(|| models.foreign(&req));
                req.items.iter_mut().for_each(|it| models.refuse(it));
                bad = bad.take().or_else(|| wrong_dimension(&req, dimension));
                staged.upsert(req);
            }
            Some(wal::Op::Delete(req)) => staged.delete(&req),
            _ => state.apply(record),
        })?;
        if let Some(msg) = bad {
            anyhow::bail!("{}: {msg}; the snapshot was written with another model", snap.path.display());
        }
        snapshot_items = staged.len();
        tracing::info!(seq = manifest.seq, items = snapshot_items, "snapshot loaded");
    }
    let records = recovered.replay.records.len();
    for record in recovered.replay.records {
        match record.op {
            Some(wal::Op::Upsert(mut req)) => {
                if let Some(msg) = models.foreign(&req) {
                    anyhow::bail!(
                        "{}: the log holds items whose {msg}; start with the models that made them, or re-embed \
                         the catalogue",
                        config.data_dir.display(),
                        msg = msg.trim_start_matches("its ")
                    );
                }
                req.items.iter_mut().for_each(|it| models.refuse(it));
                if let Some(msg) = wrong_dimension(&req, dimension) {
                    anyhow::bail!("{}: {msg}; the log was written with another model", config.data_dir.display());
                }
                staged.upsert(req);
            }
            Some(wal::Op::Delete(req)) => staged.delete(&req),
            op => state.apply(wal::WalRecord { op }),
        }
    }
    let read_ms = loading.elapsed().as_millis() as u64;
    let (items, deleted) = staged.into_parts();
    catalog.restore(items, deleted);
    tracing::info!(
        items = catalog.len(),
        read_ms,
        index_ms = loading.elapsed().as_millis() as u64 - read_ms,
        "catalogue indexed"
    );
    catalog.maybe_compact_in_background();
    tracing::info!(
        shard = config.shard_id,
        snapshot_seq,
        snapshot_items,
        wal_records = records,
        last_seq = recovered.replay.last_seq,
        items = catalog.len(),
        users = state.profiles.len(),
        torn_bytes = recovered.replay.torn_bytes,
        repaired_bytes = recovered.replay.repaired_bytes,
        quarantined_snapshots = recovered.quarantined.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shard recovered"
    );
    Ok(state)
}

/// Items by id in their final state during recovery, remembering the order
/// of each id's last write (the order they are indexed in), and remembered
/// deletes. Versions decide as in [`Catalog`]: an older write is skipped.
#[derive(Default)]
struct Staged {
    items: HashMap<String, (u64, StoredItem)>,
    deleted: HashMap<String, u64>,
    writes: u64,
}

impl Staged {
    fn current(&self, id: &str) -> Option<u64> {
        self.items.get(id).map(|(_, it)| it.version).or_else(|| self.deleted.get(id).copied())
    }

    fn upsert(&mut self, req: pb::ShardUpsertRequest) {
        for item in StoredItem::from_request(req) {
            if !catalog::supersedes(item.version, self.current(item.id())) {
                continue;
            }
            self.writes += 1;
            self.deleted.remove(item.id());
            self.items.insert(item.item.id.clone(), (self.writes, item));
        }
    }

    fn delete(&mut self, req: &pb::ShardDeleteRequest) {
        for (i, id) in req.ids.iter().enumerate() {
            let version = req.versions.get(i).copied().unwrap_or(0);
            if !catalog::supersedes(version, self.current(id)) {
                continue;
            }
            self.items.remove(id);
            if version > 0 {
                self.deleted.insert(id.clone(), version);
            }
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn into_parts(self) -> (Vec<StoredItem>, HashMap<String, u64>) {
        let mut items: Vec<(u64, StoredItem)> = self.items.into_values().collect();
        items.sort_unstable_by_key(|(order, _)| *order);
        (items.into_iter().map(|(_, it)| it).collect(), self.deleted)
    }
}

/// The models to serve: the single-model flags, or the `--models` file's
/// `serve`, unless the newest snapshot was made with another set the file
/// declares. That snapshot is how a model switch survives a restart: its
/// commit writes it, tagged with the new set, before any write uses them.
fn selection_at_start(config: &ShardConfig, recovered: &store::Recovered) -> anyhow::Result<registry::Selection> {
    let Some(path) = &config.models else { return Ok(registry::Selection::from_flags(config)) };
    let declared = registry::Selection::from_file(path)?;
    let Some(manifest) = recovered.snapshot.as_ref().and_then(|s| snapshot::read_manifest(s).ok()) else {
        return Ok(declared);
    };
    let tag = |m: &Option<registry::ModelSpec>| m.as_ref().map(registry::ModelSpec::tag).unwrap_or_default();
    let stored = [&manifest.text_model, &manifest.image_model];
    let differs = stored[0] != &tag(&declared.text) || stored[1] != &tag(&declared.image);
    let all_declared = stored.iter().all(|t| t.is_empty() || registry::Selection::declares(path, t));
    if !differs || !all_declared || stored.iter().all(|t| t.is_empty()) {
        // Nothing to prefer, or a set the file no longer declares: start-up
        // then refuses the vectors with the reason.
        return Ok(declared);
    }
    let nonempty = |t: &'static str, v: &String| (!v.is_empty()).then(|| v.clone()).map(|v| (t, v));
    let (text, image) = (nonempty("text", &manifest.text_model), nonempty("image", &manifest.image_model));
    tracing::info!(
        registry = %path.display(),
        serve = %declared.tag(),
        stored = ?(text.as_ref().map(|t| &t.1), image.as_ref().map(|i| &i.1)),
        "serving the model set of the newest snapshot (written by a model switch); set `serve` in the registry to match"
    );
    Ok(registry::Selection::from_file_serving(
        path,
        text.as_ref().map(|t| t.1.as_str()),
        image.as_ref().map(|i| i.1.as_str()),
    )?)
}

/// An empty index with the shard's HNSW and compaction settings.
pub(crate) fn new_catalog(config: &ShardConfig, dimension: usize) -> Catalog {
    let params = IndexParams {
        m: config.hnsw_m,
        ef_construction: config.hnsw_ef_construction,
        ef_search: config.hnsw_ef_search,
        ..IndexParams::default()
    };
    let policy = CompactionPolicy { min_tombstones: config.compact_min, max_tombstone_ratio: config.compact_ratio };
    let flatten = serving::FlattenPolicy {
        int8: config.index_vectors == config::IndexVectors::Int8,
        ..serving::FlattenPolicy::default()
    };
    Catalog::new(dimension, params, policy).with_flatten(flatten)
}

/// Loads the selected models and starts their query batchers.
pub(crate) fn load_models(config: &ShardConfig, selection: &registry::Selection) -> anyhow::Result<models::Models> {
    let batching = batcher::BatcherConfig {
        max_batch: config.batch_max_size.max(1),
        max_delay: Duration::from_micros(config.batch_max_delay_us),
        max_queue: config.batch_max_queue,
        workers: config.embed_sessions.max(1),
    };
    let runtime = embed::RuntimeConfig {
        ort_library: config.ort_lib.clone(),
        sessions: config.embed_sessions,
        intra_threads: config.intra_threads,
        device: config.device,
    };
    let check_dimension = |spec: &registry::ModelSpec, got: usize| match spec.dimension {
        Some(want) if want != got => {
            anyhow::bail!("{} gives {got}-dimensional vectors but is declared with dimension {want}", spec.tag())
        }
        _ => Ok(()),
    };
    let text = match &selection.text {
        Some(spec) => {
            let mut model = TextModelConfig::new(&spec.dir, &config.ort_lib);
            model.onnx_file = spec.onnx.as_ref().map(|_| spec.onnx_path());
            model.name = spec.name.clone();
            model.sessions = runtime.sessions;
            model.intra_threads = runtime.intra_threads;
            model.device = runtime.device;
            model.pooling = spec.pooling.unwrap_or(config.pooling);
            if let Some(max) = spec.max_tokens {
                model.max_tokens = max;
            }
            let model = TextEmbedder::load(&model).with_context(|| format!("loading the text model {}", spec.tag()))?;
            check_dimension(spec, model.dimension())?;
            Some(models::Served::start(model, batching.clone()).context("starting the text batcher")?)
        }
        None => None,
    };
    let image = match &selection.image {
        Some(spec) => {
            let cfg = image_embed::ImageModelConfig {
                model_dir: spec.dir.clone(),
                onnx_file: spec.onnx.as_ref().map(|_| spec.onnx_path()),
                name: Some(spec.name.clone()),
                runtime,
                max_batch: config.batch_max_size.max(1),
            };
            let model = image_embed::ImageEmbedder::load(&cfg)
                .with_context(|| format!("loading the image model {}", spec.tag()))?;
            check_dimension(spec, model.dimension())?;
            Some(models::Served::start(model, batching).context("starting the image batcher")?)
        }
        None => None,
    };
    let fusion = fusion::Fusion::new(
        selection.fusion,
        text.as_ref().map(|t| fusion::Modality { dim: t.model.dimension(), weight: selection.text_weight }),
        image.as_ref().map(|i| fusion::Modality { dim: i.model.dimension(), weight: selection.image_weight }),
    )?;
    tracing::info!(models = %selection.tag(), fusion = %fusion.describe(), dimension = ?fusion.dimension(), "models ready");
    Ok(models::Models {
        text,
        image,
        fusion,
        tags: models::Tags {
            text: selection.text.as_ref().map(registry::ModelSpec::tag).unwrap_or_default(),
            image: selection.image.as_ref().map(registry::ModelSpec::tag).unwrap_or_default(),
            set: selection.tag(),
        },
        query_cache: query_cache::QueryCache::new(config.query_cache_entries),
    })
}

/// Why an upsert's vectors cannot belong to this shard's model, if they cannot.
fn wrong_dimension(req: &pb::ShardUpsertRequest, dimension: usize) -> Option<String> {
    let bad = req.items.iter().find(|it| it.vector.as_ref().is_some_and(|v| v.values.len() != dimension))?;
    Some(format!(
        "item {:?} has a {}-dimensional vector but the model gives {dimension}",
        bad.id,
        bad.vector.as_ref().map_or(0, |v| v.values.len())
    ))
}

/// Serves the shard until `shutdown` resolves, and Prometheus metrics when
/// `--metrics-addr` is set.
pub async fn serve(
    config: &ShardConfig,
    state: Arc<ShardState>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    metrics::init();
    let _metrics = match config.metrics_addr {
        Some(addr) => {
            let exporter = vitrine_metrics::Exporter::bind(addr, vitrine_metrics::registry().clone())
                .await
                .with_context(|| format!("serving metrics on {addr}"))?;
            tracing::info!(metrics = %exporter.local_addr()?, shard = config.shard_id, "shard metrics at /metrics");
            let state = Arc::clone(&state);
            Some(exporter.on_scrape(move || metrics::refresh(&state)).spawn())
        }
        None => None,
    };
    type Server = pb::shard_server::ShardServer<ShardService>;
    // TLS, and mutual TLS (only clients with a certificate from --tls-ca,
    // i.e. the router) with --tls-client-auth.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let client_ca = config.tls_ca.as_deref().filter(|_| config.tls_client_auth);
            Some(vitrine_security::tls::server_config(cert, key, client_ca)?)
        }
        _ => None,
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    if state.peers.is_ready() {
        health_reporter.set_serving::<Server>().await;
    } else {
        // Writes are taken at once; reads (and readiness) wait for the
        // catch-up with the peer replicas, which runs once we listen.
        health_reporter.set_not_serving::<Server>().await;
        let state = Arc::clone(&state);
        let reporter = health_reporter.clone();
        tokio::spawn(async move {
            replica::catch_up_at_start(state).await;
            reporter.set_serving::<Server>().await;
        });
    }
    // Stops with this function: after the drain, like the main port.
    let _health_port = config
        .health_listen
        .map(|addr| vitrine_security::HealthPort::spawn(addr, health_reporter.clone()))
        .transpose()?;
    let max = config.max_message_mib << 20;
    let draining = Arc::new(AtomicBool::new(false));
    let refuse_when_draining = {
        let draining = Arc::clone(&draining);
        move |request: Request<()>| {
            if draining.load(Ordering::Acquire) {
                Err(Status::unavailable("shard is shutting down; retry on another replica or later"))
            } else {
                Ok(request)
            }
        }
    };
    let svc = InterceptedService::new(
        Server::new(ShardService::new(Arc::clone(&state)))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        refuse_when_draining,
    );
    let drain = Duration::from_millis(config.drain_ms);
    // Graceful shutdown: NOT_SERVING and refuse new requests, wait out the
    // drain period, then let tonic close the listener and finish what is
    // in flight; the WAL is flushed after the last request returned.
    let stop = async move {
        shutdown.await;
        tracing::info!(drain_ms = drain.as_millis() as u64, "shutting down: refusing new requests");
        draining.store(true, Ordering::Release);
        health_reporter.set_not_serving::<Server>().await;
        tokio::time::sleep(drain).await;
    };
    tracing::info!(
        listen = %config.listen,
        shard = config.shard_id,
        tls = tls.is_some(),
        mutual_tls = tls.is_some() && config.tls_client_auth,
        "shard serving"
    );
    let requests = vitrine_metrics::RequestMetricsLayer::new(
        vitrine_metrics::RequestMetrics::global(),
        pb::shard_server::SERVICE_NAME,
        pb::methods::SHARD,
    );
    // Outermost: each call runs in its `rpc` span (a child of the router's
    // when trace export is on) with the router's request id.
    let spans = vitrine_telemetry::RpcSpanLayer::new(pb::shard_server::SERVICE_NAME, pb::methods::SHARD);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).context("TLS configuration")?;
    }
    server
        .layer(spans)
        .layer(requests)
        .add_service(health)
        .add_service(svc)
        .serve_with_shutdown(config.listen, stop)
        .await
        .with_context(|| format!("serving on {}", config.listen))?;
    let wal = state.wal.lock();
    wal.sync().context("flushing the WAL at shutdown")?;
    tracing::info!(last_seq = wal.last_seq(), "in-flight requests finished and the WAL is flushed");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
