//! Router configuration: flags, each also settable through `VITRINE_ROUTER_*`.

use std::net::SocketAddr;

use clap::Parser;

use crate::rank::RankSettings;
use crate::recommend::UserVectorParams;

#[derive(Debug, Clone, Parser)]
#[command(name = "vitrine-router", version, about = "The Vitrine router: public gRPC API, fan-out, merge")]
pub struct RouterConfig {
    /// Address to serve the public gRPC API on.
    #[arg(long, env = "VITRINE_ROUTER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Shard addresses (host:port), in shard-number order. Repeat the flag or
    /// separate with commas.
    #[arg(long = "shard", env = "VITRINE_ROUTER_SHARDS", value_delimiter = ',', required = true)]
    pub shards: Vec<String>,
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
    /// Log as JSON lines.
    #[arg(long, env = "VITRINE_LOG_JSON")]
    pub log_json: bool,
    /// Default ranking of Recommend and SimilarItems (requests may override
    /// each weight; see docs/QUALITY.md for how the defaults were chosen).
    #[command(flatten)]
    pub ranking: RankingArgs,
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
