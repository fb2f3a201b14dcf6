//! Router configuration: flags, each also settable through `VITRINE_ROUTER_*`.

use std::net::SocketAddr;

use clap::Parser;

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
    /// Largest request accepted, in MiB.
    #[arg(long, env = "VITRINE_ROUTER_MAX_MESSAGE_MIB", default_value_t = 16)]
    pub max_message_mib: usize,
    /// Log as JSON lines.
    #[arg(long, env = "VITRINE_LOG_JSON")]
    pub log_json: bool,
}
