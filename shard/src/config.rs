//! Shard configuration: command-line flags, each also settable through a
//! `VITRINE_SHARD_*` environment variable (how the Helm chart passes them).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::wal::FsyncPolicy;

#[derive(Debug, Clone, Parser)]
#[command(name = "vitrine-shard", version, about = "A Vitrine shard: embeds, indexes and stores part of the catalogue")]
pub struct ShardConfig {
    /// Address to serve the internal gRPC API on.
    #[arg(long, env = "VITRINE_SHARD_LISTEN", default_value = "127.0.0.1:50061")]
    pub listen: SocketAddr,
    /// Address to serve Prometheus metrics on (`GET /metrics`, plain HTTP),
    /// e.g. 0.0.0.0:9090. Unset: no metrics listener.
    #[arg(long, env = "VITRINE_SHARD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// This shard's number (shown in results and ClusterInfo).
    #[arg(long, env = "VITRINE_SHARD_ID", default_value_t = 0)]
    pub shard_id: u32,
    /// Directory for the write-ahead log segments and the snapshots.
    #[arg(long, env = "VITRINE_SHARD_DATA_DIR", default_value = "data/shard-0")]
    pub data_dir: PathBuf,
    /// Directory with the text model's `model.onnx` and `tokenizer.json`.
    #[arg(long, env = "VITRINE_SHARD_MODEL_DIR", default_value = ".cache/models/all-minilm-l6-v2")]
    pub model_dir: PathBuf,
    /// The ONNX Runtime shared library.
    #[arg(long, env = "VITRINE_SHARD_ORT_LIB", default_value = ".cache/models/libonnxruntime.so.1.31.1")]
    pub ort_lib: PathBuf,
    /// Run without a text model (vector-only catalogues); needs --dimension.
    #[arg(long, env = "VITRINE_SHARD_NO_MODEL")]
    pub no_model: bool,
    /// Vector dimension when running without a model.
    #[arg(long, env = "VITRINE_SHARD_DIMENSION")]
    pub dimension: Option<usize>,
    /// ONNX Runtime sessions (concurrent inference batches).
    #[arg(long, env = "VITRINE_SHARD_EMBED_SESSIONS", default_value_t = 1)]
    pub embed_sessions: usize,
    /// Intra-op threads per ONNX Runtime session.
    #[arg(long, env = "VITRINE_SHARD_INTRA_THREADS", default_value_t = 1)]
    pub intra_threads: usize,
    /// Most query texts per batched model call.
    #[arg(long, env = "VITRINE_SHARD_BATCH_MAX_SIZE", default_value_t = 16)]
    pub batch_max_size: usize,
    /// Longest a query waits for others to batch with, in microseconds.
    #[arg(long, env = "VITRINE_SHARD_BATCH_MAX_DELAY_US", default_value_t = 2000)]
    pub batch_max_delay_us: u64,
    /// Most queries waiting for the model before new ones are refused.
    #[arg(long, env = "VITRINE_SHARD_BATCH_MAX_QUEUE", default_value_t = 1024)]
    pub batch_max_queue: usize,
    /// HNSW links per node.
    #[arg(long, env = "VITRINE_SHARD_HNSW_M", default_value_t = 16)]
    pub hnsw_m: usize,
    /// HNSW candidate list while building.
    #[arg(long, env = "VITRINE_SHARD_HNSW_EF_CONSTRUCTION", default_value_t = 100)]
    pub hnsw_ef_construction: usize,
    /// HNSW candidate list while searching.
    #[arg(long, env = "VITRINE_SHARD_HNSW_EF_SEARCH", default_value_t = 64)]
    pub hnsw_ef_search: usize,
    /// Rebuild the graph when tombstones exceed this fraction of live items.
    #[arg(long, env = "VITRINE_SHARD_COMPACT_RATIO", default_value_t = 0.25)]
    pub compact_ratio: f64,
    /// ... and there are at least this many tombstones.
    #[arg(long, env = "VITRINE_SHARD_COMPACT_MIN", default_value_t = 1000)]
    pub compact_min: usize,
    /// When WAL appends reach the disk (docs/RELIABILITY.md): `always`
    /// (fsync per write), `group` (concurrent writers share one fsync; same
    /// guarantee) or `never` (the OS flushes; survives
    /// a process crash, not a power loss).
    #[arg(long, env = "VITRINE_SHARD_FSYNC", value_enum, default_value = "group")]
    pub fsync: FsyncPolicy,
    /// Under `--fsync group`: extra wait before each shared fsync, in
    /// milliseconds, to gather more writers per flush; 0 flushes as soon as
    /// the previous flush ends.
    #[arg(long, env = "VITRINE_SHARD_FSYNC_GROUP_MS", default_value_t = 0)]
    pub fsync_group_ms: u64,
    /// Write a snapshot (and cut the WAL) once this many bytes of WAL were
    /// written since the last one; 0: only on request (`vitrine snapshot`).
    #[arg(long, env = "VITRINE_SHARD_SNAPSHOT_WAL_BYTES", default_value_t = 256 << 20)]
    pub snapshot_wal_bytes: u64,
    /// Snapshots kept; with 2 or more a damaged newest snapshot is survived
    /// by falling back to the previous one and a longer WAL replay.
    #[arg(long, env = "VITRINE_SHARD_SNAPSHOTS_KEEP", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub snapshots_keep: u16,
    /// On SIGTERM: how long to report NOT_SERVING (refusing new requests)
    /// before closing the listener, so load balancers stop sending first.
    #[arg(long, env = "VITRINE_SHARD_DRAIN_MS", default_value_t = 0)]
    pub drain_ms: u64,
    /// Drop a corrupt WAL record and everything after it instead of refusing to start.
    #[arg(long, env = "VITRINE_SHARD_REPAIR_WAL")]
    pub repair_wal: bool,
    /// Events kept per user.
    #[arg(long, env = "VITRINE_SHARD_PROFILE_EVENTS", default_value_t = 200)]
    pub profile_events: usize,
    /// Largest gRPC message accepted, in MiB (bulk upserts carry many items).
    #[arg(long, env = "VITRINE_SHARD_MAX_MESSAGE_MIB", default_value_t = 64)]
    pub max_message_mib: usize,
    /// Log as JSON lines.
    #[arg(long, env = "VITRINE_LOG_JSON")]
    pub log_json: bool,
    /// PEM certificate chain presented to the router; with --tls-key the
    /// shard serves TLS only. (The chart sets these variables for both
    /// workloads, hence no `VITRINE_SHARD_` prefix.)
    #[arg(long, env = "VITRINE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "VITRINE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that signs client certificates, for
    /// --tls-client-auth.
    #[arg(long, env = "VITRINE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: refuse clients without a certificate signed by --tls-ca
    /// (the router presents one with --shard-tls-cert).
    #[arg(long, env = "VITRINE_SHARD_TLS_CLIENT_AUTH", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_client_auth: bool,
    /// Also serve grpc.health.v1 alone, in plaintext, on this address: for
    /// kubelet gRPC probes, which cannot use TLS.
    #[arg(long, env = "VITRINE_SHARD_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
}
