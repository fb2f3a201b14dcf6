//! The Vitrine router: the public gRPC API. It owns no data; it knows where
//! data lives ([`topology`]), asks shards ([`fanout`]) within the client's
//! deadline ([`deadline`]), asks each for only as many hits as needed
//! ([`topk`]), merges their answers ([`merge`]). Recommendations run the
//! [`pipeline`]: user vector by attention ([`recommend`]), candidates from
//! the index, behavioural signals and popularity, then the global ranking
//! phase ([`rank`]). [`service`] wires it to gRPC; [`metrics`] holds the
//! router's Prometheus metrics; [`access`] says which API key scope each
//! RPC needs (TLS and keys themselves: `vitrine-security`).
#![forbid(unsafe_code)]

pub mod access;
pub mod config;
pub mod deadline;
pub mod fanout;
pub mod merge;
pub mod metrics;
pub mod pipeline;
pub mod rank;
pub mod recommend;
pub mod service;
pub mod status;
pub mod topk;
pub mod topology;
pub mod trending;
pub mod version;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use vitrine_proto::pb;

pub use config::RouterConfig;
use fanout::Shards;
use service::{Router, RouterSettings, VitrineService};
use topology::Topology;

/// Builds the router from its configuration.
pub fn build(config: &RouterConfig) -> anyhow::Result<Arc<Router>> {
    if !(0.0..=1.0).contains(&config.min_coverage) {
        anyhow::bail!("--min-coverage must be within 0..=1, got {}", config.min_coverage);
    }
    let shard_tls = config.security.shard_tls()?;
    let mut shards =
        Shards::connect(&config.shards, config.replicas as usize, config.max_message_mib << 20, shard_tls.as_ref())?;
    let topology = Topology::uniform(config.virtual_shards, shards.len() as u32)?;
    shards.min_coverage = config.min_coverage;
    shards.topk_probability = config.topk_probability;
    shards.hedge_after = Duration::from_millis(config.hedge_ms);
    shards.write_consistency = config.write_consistency;
    let r = &config.ranking;
    let in_unit = |name: &str, v: f32| {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(anyhow::anyhow!("--{name} must be within 0..=1, got {v}"))
        }
    };
    in_unit("diversity-lambda", r.diversity_lambda)?;
    in_unit("explore-epsilon", r.explore_epsilon)?;
    let weights = [r.content, r.behaviour, r.popularity, r.freshness, r.feedback, r.trending, r.target_attention];
    if weights.iter().any(|w| !w.is_finite()) || r.freshness_half_life_days <= 0.0 {
        anyhow::bail!("ranking weights must be finite and the freshness half-life positive: {r:?}");
    }
    for (name, n) in [("ann-candidates", r.ann_candidates), ("behaviour-candidates", r.behaviour_candidates)] {
        if !(1..=1000).contains(&n) {
            anyhow::bail!("--{name} must be within 1..=1000, got {n}");
        }
    }
    let defaults = RouterSettings::default();
    let settings = RouterSettings {
        read_timeout: Duration::from_millis(config.read_timeout_ms),
        write_timeout: Duration::from_millis(config.write_timeout_ms),
        ranking: rank::RankSettings {
            content: r.content,
            behaviour: r.behaviour,
            popularity: r.popularity,
            freshness: r.freshness,
            freshness_half_life_days: r.freshness_half_life_days,
            diversity_lambda: r.diversity_lambda,
            explore_epsilon: r.explore_epsilon,
            explore_slots: r.explore_slots,
            feedback: r.feedback,
            trending: r.trending,
            ann_candidates: r.ann_candidates,
            behaviour_candidates: r.behaviour_candidates,
            ..defaults.ranking.clone()
        },
        user_vector: recommend::UserVectorParams {
            target_attention: r.target_attention,
            ..defaults.user_vector.clone()
        },
        limits: config.limits.limits()?,
        trending_refresh: Duration::from_millis(r.trending_refresh_ms),
        ..defaults
    };
    let router_id = config.router_id.unwrap_or_else(|| (uuid::Uuid::new_v4().as_u128() & 0xfff) as u16);
    tracing::info!(router_id, replicas = config.replicas, "write versions carry this router id");
    let clock = version::VersionClock::new(router_id);
    Ok(Arc::new(Router::new(Arc::new(shards), topology, settings, clock)))
}

/// Serves the public API (plus grpc.health.v1 and reflection) until
/// `shutdown`, and Prometheus metrics when `--metrics-addr` is set. Each
/// call of the API runs in an `rpc` span with its request id
/// (`vitrine-telemetry`). With a certificate the API port speaks TLS only;
/// with API keys every call but health and reflection needs one
/// (`access`), and the key file is re-read while serving.
pub async fn serve(
    config: &RouterConfig,
    router: Arc<Router>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    metrics::init();
    let _metrics = match config.metrics_addr {
        Some(addr) => {
            let exporter = vitrine_metrics::Exporter::bind(addr, vitrine_metrics::registry().clone())
                .await
                .with_context(|| format!("serving metrics on {addr}"))?;
            tracing::info!(metrics = %exporter.local_addr()?, "router metrics at /metrics");
            Some(exporter.spawn())
        }
        None => None,
    };
    let security = &config.security;
    let tls = security.server_tls()?;
    let keys = security.api_keys()?;
    match (&tls, &keys) {
        (Some(_), None) => {
            tracing::warn!("TLS is on but no API keys are configured: anyone who reaches the port may read and write")
        }
        (None, Some(_)) => {
            tracing::warn!("API keys are checked but the port has no TLS: keys cross the network in the clear")
        }
        _ => {}
    }
    if let Some(keys) = &keys {
        tracing::info!(keys = %keys.counts(), file = ?keys.file(), "API keys required");
    }
    // Dropped when serving ends: the file watch and the health port stop.
    let _watch = keys.as_ref().and_then(|k| k.watch(security.api_keys_reload()));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::vitrine_server::VitrineServer<VitrineService>>().await;
    let _health_port = security
        .health_listen
        .map(|addr| vitrine_security::HealthPort::spawn(addr, health_reporter.clone()))
        .transpose()?;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let max = config.max_message_mib << 20;
    let svc = pb::vitrine_server::VitrineServer::new(VitrineService::new(router))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    tracing::info!(
        listen = %config.listen,
        shards = config.shards.len() / config.replicas.max(1) as usize,
        replicas = config.replicas,
        tls = tls.is_some(),
        shard_tls = security.tls_ca.is_some(),
        "router serving"
    );
    let requests = vitrine_metrics::RequestMetricsLayer::new(
        vitrine_metrics::RequestMetrics::global(),
        pb::vitrine_server::SERVICE_NAME,
        pb::methods::VITRINE,
    );
    let spans = vitrine_telemetry::RpcSpanLayer::new(pb::vitrine_server::SERVICE_NAME, pb::methods::VITRINE);
    let mut server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(config.limits.max_concurrent_per_connection);
    if let Some(tls) = tls {
        server = server.tls_config(tls).context("TLS configuration")?;
    }
    server
        // The first layer is the outermost. Every call, refused ones
        // included, gets its request id and `rpc` span; request metrics
        // record the status code after `status` has corrected it, as the
        // client receives it, refusals by `auth` included.
        .layer(spans)
        .layer(requests)
        .layer(tower::util::MapResponseLayer::new(status::oversize_is_resource_exhausted))
        .layer(vitrine_security::AuthLayer::new(keys, access::required))
        .add_service(health)
        .add_service(reflection)
        .add_service(svc)
        .serve_with_shutdown(config.listen, shutdown)
        .await
        .with_context(|| format!("serving on {}", config.listen))
}
