//! Shard configuration: command-line flags, each also settable through a
//! `VITRINE_SHARD_*` environment variable (how the Helm chart passes them).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::wal::FsyncPolicy;

/// A pod placement (--pod-index) that cannot be turned into a shard,
/// replica and peers.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("--peer-template {0:?} has no `{{index}}` to put the pod ordinal in")]
    NoIndexInTemplate(String),
}

/// What the index's search copy walks the graph with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IndexVectors {
    F32,
    Int8,
}

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
    /// This replica's number within its shard (shown in ClusterInfo).
    #[arg(long, env = "VITRINE_SHARD_REPLICA", default_value_t = 0)]
    pub replica: u32,
    /// The other replicas of this shard (host:port; repeat or separate with
    /// commas). With peers the shard catches up with them at start-up
    /// before serving reads, and when the router asks (docs/RELIABILITY.md).
    #[arg(long = "peer", env = "VITRINE_SHARD_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Pod ordinal in a StatefulSet that holds every replica of every shard
    /// (how the Helm chart places them): shard = index / --replicas,
    /// replica = index % --replicas. Replaces --shard-id and --replica, so
    /// one pod template serves all pods.
    #[arg(long, env = "VITRINE_SHARD_POD_INDEX", conflicts_with_all = ["shard_id", "replica"])]
    pub pod_index: Option<u32>,
    /// With --pod-index: how many replicas each shard has.
    #[arg(long, env = "VITRINE_SHARD_REPLICAS", default_value_t = 1, requires = "pod_index",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
    /// With --pod-index: the address of pod `{index}`, e.g.
    /// `vitrine-shard-{index}.vitrine-shard.default.svc.cluster.local:50061`.
    /// The other replicas of this pod's shard become its peers.
    #[arg(long, env = "VITRINE_SHARD_PEER_TEMPLATE", requires = "pod_index", conflicts_with = "peers")]
    pub peer_template: Option<String>,
    /// How long the start-up catch-up keeps trying peers that do not answer
    /// before serving reads with what this replica has, in ms.
    #[arg(long, env = "VITRINE_SHARD_CATCH_UP_TIMEOUT_MS", default_value_t = 30_000)]
    pub catch_up_timeout_ms: u64,
    /// Directory for the write-ahead log segments and the snapshots.
    #[arg(long, env = "VITRINE_SHARD_DATA_DIR", default_value = "data/shard-0")]
    pub data_dir: PathBuf,
    /// A model registry (JSON, `shard::registry`): the models with names,
    /// versions, kinds, files, pooling and dimensions, and which to serve.
    /// When given, it replaces the single-model flags below (--model-dir,
    /// --model-name, --model-version, --pooling, --image-model-dir,
    /// --image-model-version, --fusion and the weights).
    #[arg(long, env = "VITRINE_SHARD_MODELS")]
    pub models: Option<PathBuf>,
    /// Directory with the text model's `model.onnx` and `tokenizer.json`.
    #[arg(long, env = "VITRINE_SHARD_MODEL_DIR", default_value = ".cache/models/all-minilm-l6-v2")]
    pub model_dir: PathBuf,
    /// The text model's name, in ClusterInfo and the tags on its vectors.
    #[arg(long, env = "VITRINE_SHARD_MODEL_NAME", default_value = "all-MiniLM-L6-v2")]
    pub model_name: String,
    /// The text model's version: vectors made by another version are
    /// refused (docs/OPERATIONS.md, Models).
    #[arg(long, env = "VITRINE_SHARD_MODEL_VERSION", default_value = "1")]
    pub model_version: String,
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
    /// What the graph walk of a search reads: `int8` codes (a quarter of the
    /// bytes of the vectors; the results are re-scored with the f32 vectors,
    /// so scores stay exact; 388 more bytes per item), or the `f32` vectors.
    /// docs/PERFORMANCE.md has the trade-off.
    #[arg(long, env = "VITRINE_SHARD_INDEX_VECTORS", value_enum, default_value = "int8")]
    pub index_vectors: IndexVectors,
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
    /// Where the text model runs: `cpu`, `cuda:N` (refuses to start when
    /// the runtime library has no CUDA provider or it fails to register) or
    /// `auto` (CUDA when it registers, else the CPU with a warning). ClusterInfo and the
    /// `vitrine_embed_requests_total{provider}` metric say which runs.
    #[arg(long, env = "VITRINE_SHARD_DEVICE", default_value = "cpu")]
    pub device: crate::embed::Device,
    /// How the text model's token vectors become one vector: `mean` over
    /// the attention mask (sentence-transformers models such as MiniLM) or
    /// the first token, `cls` (BERT-style models trained that way).
    #[arg(long, env = "VITRINE_SHARD_POOLING", value_enum, default_value_t = crate::embed::Pooling::Mean)]
    pub pooling: crate::embed::Pooling,
    /// Directory with an image model's `model.onnx` and `preprocess.json`
    /// (docs/IMAGE-MODELS.md); without it item images are validated and
    /// dropped and image queries are refused. `scripts/fetch-models.sh`
    /// builds a random-weight test model in `.cache/models/test-vit`.
    #[arg(long, env = "VITRINE_SHARD_IMAGE_MODEL_DIR")]
    pub image_model_dir: Option<PathBuf>,
    /// The image model's version (its name is the directory's).
    #[arg(long, env = "VITRINE_SHARD_IMAGE_MODEL_VERSION", default_value = "1")]
    pub image_model_version: String,
    /// How an item's text and image vectors combine (docs/IMAGE-MODELS.md):
    /// `concat` for models with separate spaces, `sum` for one shared
    /// space (CLIP towers, which need one dimension).
    #[arg(long, env = "VITRINE_SHARD_FUSION", value_enum, default_value_t = crate::fusion::FusionMode::Concat)]
    pub fusion: crate::fusion::FusionMode,
    /// Weight of the text vector in fused item vectors (with an image model).
    #[arg(long, env = "VITRINE_SHARD_TEXT_WEIGHT", default_value_t = 1.0)]
    pub text_weight: f32,
    /// Weight of the image vector in fused item vectors. Weights are
    /// renormalised over the modalities an item has; changing them
    /// re-fuses stored items at start-up without re-embedding.
    #[arg(long, env = "VITRINE_SHARD_IMAGE_WEIGHT", default_value_t = 1.0)]
    pub image_weight: f32,
    /// Recent query embeddings kept (least recently used evicted; about
    /// 1.6 KB each at 384 dimensions); 0 turns the cache off.
    #[arg(long, env = "VITRINE_SHARD_QUERY_CACHE_ENTRIES", default_value_t = 4096)]
    pub query_cache_entries: usize,
    /// Events kept per user.
    #[arg(long, env = "VITRINE_SHARD_PROFILE_EVENTS", default_value_t = 200)]
    pub profile_events: usize,
    /// Hours after which an event counts half in the trending counts
    /// (docs/QUALITY.md); the same on every shard, since the router adds
    /// their lists.
    #[arg(long, env = "VITRINE_SHARD_TRENDING_HALF_LIFE_HOURS", default_value_t = 24.0,
          value_parser = positive_hours)]
    pub trending_half_life_hours: f64,
    /// Largest gRPC message accepted, in MiB (bulk upserts carry many items).
    #[arg(long, env = "VITRINE_SHARD_MAX_MESSAGE_MIB", default_value_t = 64)]
    pub max_message_mib: usize,
    /// Logs and traces: JSON logs, OTLP export (docs/OPERATIONS.md, Tracing).
    #[command(flatten)]
    pub telemetry: vitrine_telemetry::TelemetryArgs,
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

impl ShardConfig {
    /// Resolves --pod-index into the shard id, the replica number and (with
    /// --peer-template) the peers. Without --pod-index the configuration is
    /// returned as given.
    pub fn placed(mut self) -> Result<Self, PlacementError> {
        let Some(index) = self.pod_index else {
            return Ok(self);
        };
        let r = self.replicas.max(1);
        self.shard_id = index / r;
        self.replica = index % r;
        if let Some(template) = &self.peer_template {
            if !template.contains("{index}") {
                return Err(PlacementError::NoIndexInTemplate(template.clone()));
            }
            let first = self.shard_id * r;
            self.peers = (first..first + r)
                .filter(|&i| i != index)
                .map(|i| template.replace("{index}", &i.to_string()))
                .collect();
        }
        Ok(self)
    }
}

/// A half-life in hours: positive, finite and at most ten years.
fn positive_hours(v: &str) -> Result<f64, String> {
    let h: f64 = v.parse().map_err(|e| format!("{v}: {e}"))?;
    if h.is_finite() && h > 0.0 && h <= 87_600.0 {
        Ok(h)
    } else {
        Err(format!("{v}: must be more than 0 and at most 87600 hours"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ShardConfig, String> {
        let argv = std::iter::once("vitrine-shard").chain(args.iter().copied());
        ShardConfig::try_parse_from(argv).map_err(|e| e.to_string())?.placed().map_err(|e| e.to_string())
    }

    #[test]
    fn pod_index_places_shard_replica_and_peers() {
        let c = parse(&["--pod-index", "4", "--replicas", "3", "--peer-template", "s-{index}.s:1"]).unwrap();
        assert_eq!((c.shard_id, c.replica), (1, 1));
        assert_eq!(c.peers, vec!["s-3.s:1".to_string(), "s-5.s:1".to_string()]);
        let c = parse(&["--pod-index", "3"]).unwrap();
        assert_eq!((c.shard_id, c.replica), (3, 0));
        assert!(c.peers.is_empty());
    }

    #[test]
    fn one_replica_has_no_peers() {
        let c = parse(&["--pod-index", "2", "--replicas", "1", "--peer-template", "s-{index}:1"]).unwrap();
        assert_eq!((c.shard_id, c.replica), (2, 0));
        assert!(c.peers.is_empty());
    }

    #[test]
    fn placement_mistakes_are_refused() {
        let e = parse(&["--pod-index", "1", "--replicas", "2", "--peer-template", "s:1"]).unwrap_err();
        assert!(e.contains("no `{index}`"), "{e}");
        assert!(parse(&["--pod-index", "1", "--shard-id", "2"]).is_err());
        assert!(parse(&["--peer-template", "s-{index}:1"]).is_err(), "template without a pod index");
        assert!(parse(&["--pod-index", "1", "--replicas", "0"]).is_err());
        // Without a pod index there is nothing to place: refused rather
        // than silently ignored.
        let e = parse(&["--replicas", "3"]).unwrap_err();
        assert!(e.contains("--pod-index"), "{e}");
        assert!(parse(&["--pod-index", "1", "--peer", "a:1", "--peer-template", "s-{index}:1"]).is_err());
        for bad in ["0", "-1", "NaN", "inf", "100000"] {
            assert!(parse(&["--trending-half-life-hours", bad]).is_err(), "{bad}");
        }
        assert!(parse(&["--trending-half-life-hours", "0.5"]).is_ok());
        assert_eq!(parse(&["--device", "cuda:1"]).unwrap().device, crate::embed::Device::Cuda(1));
        assert!(parse(&["--device", "gpu"]).is_err());
        assert!(parse(&["--pooling", "max"]).is_err());
    }
}
