//! Router configuration: flags, each also settable through `VITRINE_ROUTER_*`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tonic::transport::{ClientTlsConfig, ServerTlsConfig};
use vitrine_proto::Limits;
use vitrine_security::{tls, ApiKeys};

use crate::rank::RankSettings;
use crate::recommend::UserVectorParams;

#[derive(Debug, Clone, Parser)]
#[command(name = "vitrine-router", version, about = "The Vitrine router: public gRPC API, fan-out, merge")]
pub struct RouterConfig {
    /// Address to serve the public gRPC API on.
    #[arg(long, env = "VITRINE_ROUTER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Shard addresses (host:port), in shard-number order, each shard's
    /// replicas together (shard 0 replica 0, shard 0 replica 1, ...). Repeat
    /// the flag or separate with commas.
    #[arg(long = "shard", env = "VITRINE_ROUTER_SHARDS", value_delimiter = ',', required = true)]
    pub shards: Vec<String>,
    /// Replicas per shard: the --shard list holds shards × replicas addresses.
    #[arg(long, env = "VITRINE_ROUTER_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub replicas: u32,
    /// Replicas that must acknowledge a write that does not ask for a level
    /// (docs/RELIABILITY.md, Replication).
    #[arg(long, env = "VITRINE_ROUTER_WRITE_CONSISTENCY", value_enum, default_value = "quorum")]
    pub write_consistency: crate::fanout::Consistency,
    /// A shard read not answered after this many ms is also sent to another
    /// replica, and the first answer wins; 0: only after a failure.
    #[arg(long, env = "VITRINE_ROUTER_HEDGE_MS", default_value_t = 20)]
    pub hedge_ms: u64,
    /// This router's number in write versions (0..4095). Unset: random, which
    /// keeps a handful of routers apart with high probability; set distinct
    /// numbers when running many.
    #[arg(long, env = "VITRINE_ROUTER_ID", value_parser = clap::value_parser!(u16).range(0..4096))]
    pub router_id: Option<u16>,
    /// Virtual shards that item and user ids hash onto. Fixed for the life of
    /// the data: changing it moves almost every item.
    #[arg(long, env = "VITRINE_ROUTER_VIRTUAL_SHARDS", default_value_t = crate::topology::DEFAULT_VIRTUAL_SHARDS)]
    pub virtual_shards: u32,
    /// Deadline of reads that carry no grpc-timeout, in ms.
    #[arg(long, env = "VITRINE_ROUTER_READ_TIMEOUT_MS", default_value_t = 1000)]
    pub read_timeout_ms: u64,
    /// Deadline of writes that carry no grpc-timeout, in ms.
    #[arg(long, env = "VITRINE_ROUTER_WRITE_TIMEOUT_MS", default_value_t = 60_000)]
    pub write_timeout_ms: u64,
    /// Fraction of shards that must answer a read; fewer gives UNAVAILABLE.
    #[arg(long, env = "VITRINE_ROUTER_MIN_COVERAGE", default_value_t = 0.5)]
    pub min_coverage: f64,
    /// Confidence that asking each shard for fewer than k hits still returns
    /// the exact global top-k (Vespa's topKProbability). 1.0 disables it.
    #[arg(long, env = "VITRINE_ROUTER_TOPK_PROBABILITY", default_value_t = 0.9999)]
    pub topk_probability: f64,
    /// Address to serve Prometheus metrics on (`GET /metrics`, plain HTTP),
    /// e.g. 0.0.0.0:9090. Unset: no metrics listener.
    #[arg(long, env = "VITRINE_ROUTER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Largest request accepted, in MiB.
    #[arg(long, env = "VITRINE_ROUTER_MAX_MESSAGE_MIB", default_value_t = 16)]
    pub max_message_mib: usize,
    /// Logs and traces: JSON logs, OTLP export (docs/OPERATIONS.md, Tracing).
    #[command(flatten)]
    pub telemetry: vitrine_telemetry::TelemetryArgs,
    /// Default ranking of Recommend and SimilarItems (requests may override
    /// each weight; see docs/QUALITY.md for how the defaults were chosen).
    #[command(flatten)]
    pub ranking: RankingArgs,
    /// TLS and API keys (docs/OPERATIONS.md, Security); all off by default.
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Request limits, enforced before any shard is asked.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Request limits. Each may only be lowered from the default: the shards
/// apply the defaults themselves, so a router allowing more would forward
/// requests they refuse.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Largest `k` of a read.
    #[arg(long, env = "VITRINE_ROUTER_MAX_K", default_value_t = Limits::default().max_k)]
    pub max_k: usize,
    /// Most items, ids or events in one write or lookup.
    #[arg(long, env = "VITRINE_ROUTER_MAX_BATCH", default_value_t = Limits::default().max_batch)]
    pub max_batch: usize,
    /// Largest item title, in bytes.
    #[arg(long, env = "VITRINE_ROUTER_MAX_TITLE_BYTES", default_value_t = Limits::default().max_title_bytes)]
    pub max_title_bytes: usize,
    /// Largest item description and query text, in bytes.
    #[arg(long, env = "VITRINE_ROUTER_MAX_TEXT_BYTES", default_value_t = Limits::default().max_description_bytes)]
    pub max_text_bytes: usize,
    /// Most pixels in an image.
    #[arg(long, env = "VITRINE_ROUTER_MAX_IMAGE_PIXELS", default_value_t = Limits::default().max_image_pixels)]
    pub max_image_pixels: u64,
    /// Longest history (and positive or negative example list) of a Recommend.
    #[arg(long, env = "VITRINE_ROUTER_MAX_HISTORY", default_value_t = Limits::default().max_history)]
    pub max_history: usize,
    /// Requests one client connection may have in flight; more wait until
    /// one finishes, so a single client cannot occupy every worker.
    #[arg(long, env = "VITRINE_ROUTER_MAX_CONCURRENT_PER_CONNECTION", default_value_t = 256)]
    pub max_concurrent_per_connection: usize,
}

impl LimitArgs {
    /// The limits, refusing any above the shards' defaults or at zero.
    pub fn limits(&self) -> anyhow::Result<Limits> {
        let d = Limits::default();
        let check = |flag: &str, value: u64, max: u64| -> anyhow::Result<()> {
            anyhow::ensure!(
                (1..=max).contains(&value),
                "--{flag} must be between 1 and {max} (the shards' own limit), got {value}"
            );
            Ok(())
        };
        check("max-k", self.max_k as u64, d.max_k as u64)?;
        check("max-batch", self.max_batch as u64, d.max_batch as u64)?;
        check("max-title-bytes", self.max_title_bytes as u64, d.max_title_bytes as u64)?;
        check("max-text-bytes", self.max_text_bytes as u64, d.max_description_bytes as u64)?;
        check("max-image-pixels", self.max_image_pixels, d.max_image_pixels)?;
        check("max-history", self.max_history as u64, d.max_history as u64)?;
        anyhow::ensure!(self.max_concurrent_per_connection >= 1, "--max-concurrent-per-connection must be at least 1");
        Ok(Limits {
            max_k: self.max_k,
            max_batch: self.max_batch,
            max_title_bytes: self.max_title_bytes,
            max_description_bytes: self.max_text_bytes,
            max_image_pixels: self.max_image_pixels,
            max_history: self.max_history,
            ..d
        })
    }
}

/// TLS towards clients and shards, and API keys. The certificate, key, CA
/// and key-file variables are the ones the Helm chart sets for both
/// workloads, hence no `VITRINE_ROUTER_` prefix.
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// PEM certificate chain presented to clients; with --tls-key the public
    /// API is served over TLS only.
    #[arg(long, env = "VITRINE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "VITRINE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that signed the shards' certificates. When set, the
    /// router calls shards over TLS (`host:port` means https) and trusts
    /// this CA only.
    #[arg(long, env = "VITRINE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate presented to shards, for shards that require
    /// mutual TLS (`vitrine-shard --tls-client-auth`).
    #[arg(long, env = "VITRINE_ROUTER_SHARD_TLS_CERT", requires_all = ["shard_tls_key", "tls_ca"])]
    pub shard_tls_cert: Option<PathBuf>,
    /// PEM private key of --shard-tls-cert.
    #[arg(long, env = "VITRINE_ROUTER_SHARD_TLS_KEY", requires = "shard_tls_cert")]
    pub shard_tls_key: Option<PathBuf>,
    /// Name every shard's certificate must carry, instead of the host of
    /// each shard address.
    #[arg(long, env = "VITRINE_ROUTER_SHARD_TLS_DOMAIN", requires = "tls_ca")]
    pub shard_tls_domain: Option<String>,
    /// API key file: one `read:<key>` or `write:<key>` per line. Re-read
    /// when it changes (see --api-keys-reload-ms). With keys from here or
    /// VITRINE_API_KEYS every call but health and reflection needs
    /// `authorization: Bearer <key>`; with neither, there is no auth.
    #[arg(long, env = "VITRINE_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// API keys as a list (`read:<key>,write:<key>`), fixed until restart.
    /// Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "VITRINE_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<KeyList>,
    /// How often the API key file is checked for changes, in ms.
    #[arg(long, env = "VITRINE_ROUTER_API_KEYS_RELOAD_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub api_keys_reload_ms: u64,
    /// Also serve grpc.health.v1 alone, in plaintext, on this address: for
    /// kubelet gRPC probes, which cannot use TLS.
    #[arg(long, env = "VITRINE_ROUTER_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
}

/// API keys given inline; never printed (`Debug` shows only that there are some).
#[derive(Clone)]
pub struct KeyList(pub String);

impl std::str::FromStr for KeyList {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

impl std::fmt::Debug for KeyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyList(<redacted>)")
    }
}

impl SecurityArgs {
    /// TLS for the public port, when a certificate is configured.
    pub fn server_tls(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(tls::server_config(cert, key, None)?)),
            _ => Ok(None),
        }
    }

    /// TLS towards shards, when a CA is configured.
    pub fn shard_tls(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        let Some(ca) = &self.tls_ca else { return Ok(None) };
        let identity = self.shard_tls_cert.as_deref().zip(self.shard_tls_key.as_deref());
        Ok(Some(tls::client_config(ca, identity, self.shard_tls_domain.as_deref())?))
    }

    /// The API keys, when any source is configured (even an empty one: an
    /// emptied key file must refuse everyone, not switch auth off).
    pub fn api_keys(&self) -> anyhow::Result<Option<ApiKeys>> {
        if self.api_keys_file.is_none() && self.api_keys.is_none() {
            return Ok(None);
        }
        let list = self.api_keys.as_ref().map(|k| k.0.as_str());
        ApiKeys::load(self.api_keys_file.as_deref(), list, "VITRINE_API_KEYS").context("loading API keys").map(Some)
    }

    pub fn api_keys_reload(&self) -> Duration {
        Duration::from_millis(self.api_keys_reload_ms)
    }
}

/// Ranking defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct RankingArgs {
    /// Weight of the cosine between user vector and item.
    #[arg(long = "rank-content", env = "VITRINE_ROUTER_RANK_CONTENT", default_value_t = RankSettings::default().content)]
    pub content: f32,
    /// Weight of the behavioural (co-visitation) score.
    #[arg(long = "rank-behaviour", env = "VITRINE_ROUTER_RANK_BEHAVIOUR", default_value_t = RankSettings::default().behaviour)]
    pub behaviour: f32,
    /// Weight of the popularity prior.
    #[arg(long = "rank-popularity", env = "VITRINE_ROUTER_RANK_POPULARITY", default_value_t = RankSettings::default().popularity)]
    pub popularity: f32,
    /// Weight of freshness.
    #[arg(long = "rank-freshness", env = "VITRINE_ROUTER_RANK_FRESHNESS", default_value_t = RankSettings::default().freshness)]
    pub freshness: f32,
    /// Days after which freshness halves.
    #[arg(long, env = "VITRINE_ROUTER_FRESHNESS_HALF_LIFE_DAYS", default_value_t = RankSettings::default().freshness_half_life_days)]
    pub freshness_half_life_days: f32,
    /// MMR λ: 1 ranks by score only; lower favours diversity.
    #[arg(long, env = "VITRINE_ROUTER_DIVERSITY_LAMBDA", default_value_t = RankSettings::default().diversity_lambda)]
    pub diversity_lambda: f32,
    /// Probability of exploring in each of the last `explore-slots` slots.
    #[arg(long, env = "VITRINE_ROUTER_EXPLORE_EPSILON", default_value_t = RankSettings::default().explore_epsilon)]
    pub explore_epsilon: f32,
    /// Final slots open to exploration.
    #[arg(long, env = "VITRINE_ROUTER_EXPLORE_SLOTS", default_value_t = RankSettings::default().explore_slots)]
    pub explore_slots: usize,
    /// Weight of the trending score (recent events across the cluster,
    /// normalised to [0, 1]); above 0, trending items are also candidates.
    #[arg(long = "rank-trending", env = "VITRINE_ROUTER_RANK_TRENDING", default_value_t = RankSettings::default().trending)]
    pub trending: f32,
    /// How long a fetched trending list serves before the shards are asked
    /// again, in ms.
    #[arg(long, env = "VITRINE_ROUTER_TRENDING_REFRESH_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub trending_refresh_ms: u64,
    /// Weight of the click rate learnt from feedback events.
    #[arg(long = "feedback-weight", env = "VITRINE_ROUTER_FEEDBACK_WEIGHT", default_value_t = RankSettings::default().feedback)]
    pub feedback: f32,
    /// Candidates asked from the index per Recommend (more finds more cold
    /// items, costs a deeper graph search on every shard).
    #[arg(long, env = "VITRINE_ROUTER_ANN_CANDIDATES", default_value_t = RankSettings::default().ann_candidates)]
    pub ann_candidates: usize,
    /// Behavioural neighbours scored per Recommend.
    #[arg(long, env = "VITRINE_ROUTER_BEHAVIOUR_CANDIDATES", default_value_t = RankSettings::default().behaviour_candidates)]
    pub behaviour_candidates: usize,
    /// Sharpness of target attention in the user vector (0 = off).
    #[arg(long, env = "VITRINE_ROUTER_TARGET_ATTENTION", default_value_t = UserVectorParams::default().target_attention)]
    pub target_attention: f32,
}
