//! The Vitrine router: the public gRPC API. It owns no data; it knows where
//! data lives ([`topology`]), asks shards ([`fanout`]) within the client's
//! deadline ([`deadline`]), asks each for only as many hits as needed
//! ([`topk`]), merges their answers ([`merge`]) and builds user vectors for
//! recommendations ([`recommend`]). [`service`] wires it to gRPC.
#![forbid(unsafe_code)]

pub mod config;
pub mod deadline;
pub mod fanout;
pub mod merge;
pub mod recommend;
pub mod service;
pub mod status;
pub mod topk;
pub mod topology;

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
    let topology = Topology::uniform(config.virtual_shards, config.shards.len() as u32)?;
    let mut shards = Shards::connect(&config.shards, config.max_message_mib << 20)?;
    shards.min_coverage = config.min_coverage;
    shards.topk_probability = config.topk_probability;
    let settings = RouterSettings {
        read_timeout: Duration::from_millis(config.read_timeout_ms),
        write_timeout: Duration::from_millis(config.write_timeout_ms),
        ..RouterSettings::default()
    };
    Ok(Arc::new(Router::new(Arc::new(shards), topology, settings)))
}

/// Serves the public API (plus grpc.health.v1 and reflection) until `shutdown`.
pub async fn serve(
    config: &RouterConfig,
    router: Arc<Router>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::vitrine_server::VitrineServer<VitrineService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let max = config.max_message_mib << 20;
    let svc = pb::vitrine_server::VitrineServer::new(VitrineService::new(router))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    tracing::info!(listen = %config.listen, shards = config.shards.len(), "router serving");
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(status::oversize_is_resource_exhausted))
        .add_service(health)
        .add_service(reflection)
        .add_service(svc)
        .serve_with_shutdown(config.listen, shutdown)
        .await
        .with_context(|| format!("serving on {}", config.listen))
}
