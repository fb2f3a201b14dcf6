//! The shard's own Prometheus metrics. Request counts and latencies of the
//! `Shard` service come from `vitrine_metrics::grpc`, wrapped around the
//! server in `serve`; docs/OPERATIONS.md lists every metric.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGauge};

use crate::service::ShardState;

/// Seconds a query waits for its batch: 50 µs (an idle shard) to 1 s (the
/// router's default read deadline; a query past it is dropped).
const QUEUE_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// Seconds one model call takes: about 5 ms for one short title to a few
/// hundred ms for a full batch of long texts on one CPU thread.
const COMPUTE_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Queries per batch: powers of two up to the largest `--batch-max-size`
/// worth setting (throughput stops improving past ~32 on CPU).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
/// Seconds per fsync: 50 µs (NVMe with a write cache) to 1 s (a saturated
/// network volume).
/// Seconds: a few thousand items take milliseconds, a million several seconds.
const SNAPSHOT_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
const FSYNC_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

pub(crate) struct ShardMetrics {
    /// Per query: from entering the batcher's queue to its batch starting
    /// (or to being dropped because its deadline passed), by modality.
    pub embed_queue_seconds: HistogramVec,
    /// Per batch: the model call, by modality.
    pub embed_compute_seconds: HistogramVec,
    /// Per batch: queries in it, by modality.
    pub embed_batch_size: HistogramVec,
    /// Per image (queries and items): decode, orientation, resize, crop and
    /// normalisation, apart from the model's time.
    pub image_preprocess_seconds: Histogram,
    /// Inputs embedded (queries and items), by execution provider and
    /// modality (`text`, `image`).
    pub embed_requests: IntCounterVec,
    /// Query embedding cache lookups, by result (`hit`, `miss`).
    pub query_cache: IntCounterVec,
    /// Live items in the index (set on scrape).
    pub index_items: IntGauge,
    /// Deleted or replaced items still in the graph (set on scrape).
    pub index_tombstones: IntGauge,
    /// Points in the flat copy that searches walk (set on scrape).
    pub index_flat_points: IntGauge,
    /// Points inserted since the flat copy was taken (set on scrape).
    pub index_delta_points: IntGauge,
    /// Size of the write-ahead log (set by the log).
    pub wal_bytes: IntGauge,
    /// Per fsync of the log (per append under `always`, per shared flush
    /// under `group`).
    pub wal_fsync_seconds: Histogram,
    /// Snapshots attempted, by result (`ok`, `error`).
    pub snapshots: IntCounterVec,
    /// Time to capture and write one snapshot.
    pub snapshot_seconds: Histogram,
    /// Sequence number of the last record in the log (set on scrape).
    pub wal_last_seq: IntGauge,
    /// Catch-ups with the peer replicas, by result (`ok`, `partial`).
    pub catch_ups: IntCounterVec,
    /// 1 while this replica serves reads, 0 while it catches up (on scrape).
    pub ready: IntGauge,
}

static METRICS: LazyLock<ShardMetrics> = LazyLock::new(|| ShardMetrics {
    embed_queue_seconds: vitrine_metrics::histogram_vec(
        "vitrine_embed_queue_seconds",
        "Time a query waited in the embedding batcher's queue, by modality",
        &["modality"],
        QUEUE_BUCKETS,
    ),
    embed_compute_seconds: vitrine_metrics::histogram_vec(
        "vitrine_embed_compute_seconds",
        "Time of one batched model call for queries, by modality",
        &["modality"],
        COMPUTE_BUCKETS,
    ),
    embed_batch_size: vitrine_metrics::histogram_vec(
        "vitrine_embed_batch_size",
        "Queries per batched model call, by modality",
        &["modality"],
        BATCH_BUCKETS,
    ),
    image_preprocess_seconds: vitrine_metrics::histogram(
        "vitrine_image_preprocess_seconds",
        "Time to decode, orient, resize, crop and normalise one image",
        QUEUE_BUCKETS,
    ),
    embed_requests: vitrine_metrics::counter_vec(
        "vitrine_embed_requests_total",
        "Inputs embedded by a model (queries and items), by ONNX Runtime execution provider and modality",
        &["provider", "modality"],
    ),
    query_cache: vitrine_metrics::counter_vec(
        "vitrine_query_cache_total",
        "Query embedding cache lookups, by result (hit, miss)",
        &["result"],
    ),
    index_items: vitrine_metrics::gauge("vitrine_index_items", "Live items in this shard's index"),
    index_tombstones: vitrine_metrics::gauge(
        "vitrine_index_tombstones",
        "Deleted or replaced items still in this shard's graph, until compaction",
    ),
    index_flat_points: vitrine_metrics::gauge(
        "vitrine_index_flat_points",
        "Points in the flat copy of this shard's graph that searches walk",
    ),
    index_delta_points: vitrine_metrics::gauge(
        "vitrine_index_delta_points",
        "Points inserted since the flat copy was taken (above 1,024, searches walk the slower graph)",
    ),
    wal_bytes: vitrine_metrics::gauge("vitrine_wal_bytes", "Size of this shard's write-ahead log in bytes"),
    wal_fsync_seconds: vitrine_metrics::histogram(
        "vitrine_wal_fsync_seconds",
        "Time of one write-ahead log fsync",
        FSYNC_BUCKETS,
    ),
    snapshots: vitrine_metrics::counter_vec(
        "vitrine_snapshots_total",
        "Snapshots of this shard's state, by result",
        &["result"],
    ),
    snapshot_seconds: vitrine_metrics::histogram(
        "vitrine_snapshot_seconds",
        "Time to capture and write one snapshot",
        SNAPSHOT_BUCKETS,
    ),
    wal_last_seq: vitrine_metrics::gauge(
        "vitrine_wal_last_seq",
        "Sequence number of the last record in this shard's write-ahead log",
    ),
    catch_ups: vitrine_metrics::counter_vec(
        "vitrine_replica_catch_ups_total",
        "Catch-ups of this replica with its peers, by result (partial: a peer failed)",
        &["result"],
    ),
    ready: vitrine_metrics::gauge(
        "vitrine_replica_ready",
        "1 while this replica serves reads, 0 while it catches up with its peers",
    ),
});

pub(crate) fn get() -> &'static ShardMetrics {
    &METRICS
}

/// Registers every shard metric, so that the first scrape shows them all
/// (at zero) rather than only those already touched.
pub fn init() {
    let m = LazyLock::force(&METRICS);
    for modality in ["text", "image"] {
        m.embed_queue_seconds.with_label_values(&[modality]);
        m.embed_compute_seconds.with_label_values(&[modality]);
        m.embed_batch_size.with_label_values(&[modality]);
    }
    for result in ["ok", "error"] {
        m.snapshots.with_label_values(&[result]);
    }
    for result in ["ok", "partial"] {
        m.catch_ups.with_label_values(&[result]);
    }
}

/// Sets the gauges read from the shard's state; runs before every scrape.
/// Reading on demand costs a read lock per scrape instead of work on every
/// write, and stays right when background compaction drops tombstones.
pub fn refresh(state: &ShardState) {
    let m = get();
    let catalog = state.catalog();
    m.index_items.set(catalog.len() as i64);
    m.index_tombstones.set(catalog.tombstones() as i64);
    let serving = catalog.serving_stats().unwrap_or_default();
    m.index_flat_points.set(serving.flat_points as i64);
    m.index_delta_points.set(serving.delta_points as i64);
    m.wal_last_seq.set(state.wal.lock().last_seq() as i64);
    m.ready.set(i64::from(state.peers.is_ready()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_metric_is_exposed_after_init() {
        init();
        get().embed_requests.with_label_values(&["cpu", "text"]);
        let text = vitrine_metrics::render(vitrine_metrics::registry());
        for name in [
            "vitrine_embed_queue_seconds",
            "vitrine_embed_compute_seconds",
            "vitrine_embed_batch_size",
            "vitrine_embed_requests_total",
            "vitrine_image_preprocess_seconds",
            "vitrine_index_items",
            "vitrine_index_tombstones",
            "vitrine_index_flat_points",
            "vitrine_index_delta_points",
            "vitrine_wal_bytes",
            "vitrine_wal_fsync_seconds",
            "vitrine_snapshots_total",
            "vitrine_snapshot_seconds",
            "vitrine_wal_last_seq",
            "vitrine_replica_catch_ups_total",
            "vitrine_replica_ready",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn the_shard_methods_come_from_the_proto() {
        use vitrine_proto::pb::methods::SHARD;
        assert!(SHARD.contains(&"Upsert") && SHARD.contains(&"Embed") && SHARD.contains(&"Info"), "{SHARD:?}");
    }
}
