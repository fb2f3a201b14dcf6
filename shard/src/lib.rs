//! A Vitrine shard owns part of the catalogue (the items whose ids hash to its
//! virtual shards) and the profiles of part of the users.
//!
//! - [`embed`]: text → vector with ONNX Runtime.
//! - [`batcher`]: dynamic batching of query embeddings.
//! - [`index`]: the ANN graph behind the [`index::VectorIndex`] trait.
//! - [`flat`]: a flattened, read-only copy of that graph for fast search.
//! - [`serving`]: graph for inserts + flat copy and delta for searches.
//! - [`catalog`]: items + index, tombstones, compaction, filtered search.
//! - [`profiles`]: recent events per user.
//! - [`wal`]: the write-ahead log and its replay.
//! - [`service`]: the internal gRPC API the router calls.
//! - [`metrics`]: the shard's Prometheus metrics.
#![forbid(unsafe_code)]

pub mod batcher;
pub mod catalog;
pub mod config;
pub mod embed;
pub mod flat;
pub mod index;
pub mod metrics;
pub mod profiles;
pub mod service;
pub mod serving;
pub mod signals;
pub mod wal;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use parking_lot::Mutex;
use vitrine_proto::{pb, Limits};

use catalog::{Catalog, CompactionPolicy};
pub use config::ShardConfig;
use embed::{TextEmbedder, TextModelConfig};
use index::IndexParams;
use service::{ShardService, ShardState};
use wal::Wal;

/// Loads the model, replays the log and returns the shard's state.
pub fn open(config: &ShardConfig) -> anyhow::Result<Arc<ShardState>> {
    let started = Instant::now();
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
    let embedder = if config.no_model {
        None
    } else {
        let mut model = TextModelConfig::new(&config.model_dir, &config.ort_lib);
        model.sessions = config.embed_sessions;
        model.intra_threads = config.intra_threads;
        Some(TextEmbedder::load(&model).context("loading the text model")?)
    };
    let dimension = match (&embedder, config.dimension) {
        (Some(e), Some(d)) if d != e.dimension() => {
            anyhow::bail!("--dimension {d} disagrees with the model's output dimension {}", e.dimension())
        }
        (Some(e), _) => e.dimension(),
        (None, Some(d)) if d > 0 => d,
        (None, _) => anyhow::bail!("--no-model needs --dimension"),
    };
    let params = IndexParams {
        m: config.hnsw_m,
        ef_construction: config.hnsw_ef_construction,
        ef_search: config.hnsw_ef_search,
        ..IndexParams::default()
    };
    let policy = CompactionPolicy { min_tombstones: config.compact_min, max_tombstone_ratio: config.compact_ratio };
    let catalog = Arc::new(Catalog::new(dimension, params, policy));
    let wal_path = config.data_dir.join("wal.log");
    let (wal, replay) = Wal::open(&wal_path, config.fsync, config.repair_wal)?;
    let batcher = match &embedder {
        Some(e) => Some(
            batcher::Batcher::start(
                Arc::clone(e),
                batcher::BatcherConfig {
                    max_batch: config.batch_max_size.max(1),
                    max_delay: std::time::Duration::from_micros(config.batch_max_delay_us),
                    max_queue: config.batch_max_queue,
                    workers: config.embed_sessions.max(1),
                },
            )
            .context("starting the embedding batcher")?,
        ),
        None => None,
    };
    let state = Arc::new(ShardState {
        shard_id: config.shard_id,
        batcher,
        catalog,
        profiles: profiles::Profiles::new(config.profile_events),
        signals: signals::SignalStore::default(),
        wal: Mutex::new(wal),
        embedder,
        limits: Limits::default(),
    });
    let records = replay.records.len();
    for record in replay.records {
        if let Some(wal::Op::Upsert(req)) = &record.op {
            if let Some(bad) =
                req.items.iter().find(|it| it.vector.as_ref().is_some_and(|v| v.values.len() != dimension))
            {
                anyhow::bail!(
                    "{}: item {:?} has a {}-dimensional vector but the model gives {dimension}; \
                     the log was written with another model",
                    wal_path.display(),
                    bad.id,
                    bad.vector.as_ref().map_or(0, |v| v.values.len())
                );
            }
        }
        state.apply(record);
    }
    state.catalog.maybe_compact_in_background();
    tracing::info!(
        shard = config.shard_id,
        records,
        items = state.catalog.len(),
        users = state.profiles.len(),
        torn_bytes = replay.torn_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shard recovered"
    );
    Ok(state)
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
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::shard_server::ShardServer<ShardService>>().await;
    let max = config.max_message_mib << 20;
    let svc = pb::shard_server::ShardServer::new(ShardService::new(state))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    tracing::info!(listen = %config.listen, shard = config.shard_id, "shard serving");
    let requests = vitrine_metrics::RequestMetricsLayer::new(
        vitrine_metrics::RequestMetrics::global(),
        pb::shard_server::SERVICE_NAME,
        pb::methods::SHARD,
    );
    tonic::transport::Server::builder()
        .layer(requests)
        .add_service(health)
        .add_service(svc)
        .serve_with_shutdown(config.listen, shutdown)
        .await
        .with_context(|| format!("serving on {}", config.listen))
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

/// Sets up logging for the binaries: `RUST_LOG` filters, JSON on request.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hnsw_rs=warn,ort=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
