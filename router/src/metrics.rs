//! The router's own Prometheus metrics. Request counts and latencies of the
//! public API come from `vitrine_metrics::grpc`, wrapped around the server in
//! `serve`; docs/OPERATIONS.md lists every metric.

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounter};

pub(crate) struct RouterMetrics {
    /// Shards asked by fan-out reads (each `Shards::gather` adds the shard count).
    pub fanout_asked: IntCounter,
    /// Shards that answered them before the deadline, client errors included.
    pub fanout_answered: IntCounter,
    /// One observation per call to one shard, by shard number.
    pub shard_call_seconds: HistogramVec,
    /// Ranked slots filled by exploration instead of the best remaining item.
    pub explore_slots: IntCounter,
    /// Every ranked slot served by Recommend and SimilarItems.
    pub served_slots: IntCounter,
    /// Reads also sent to a second replica because the first was slow.
    pub hedged_reads: IntCounter,
    /// Writes a replica failed (it is then marked behind and catches up).
    pub replica_missed_writes: IntCounter,
}

static METRICS: LazyLock<RouterMetrics> = LazyLock::new(|| RouterMetrics {
    fanout_asked: vitrine_metrics::counter(
        "vitrine_fanout_shards_asked",
        "Shards asked by fan-out reads; with vitrine_fanout_shards_answered, the coverage",
    ),
    fanout_answered: vitrine_metrics::counter(
        "vitrine_fanout_shards_answered",
        "Shards that answered fan-out reads before the deadline",
    ),
    shard_call_seconds: vitrine_metrics::histogram_vec(
        "vitrine_shard_call_duration_seconds",
        "Duration of one router-to-shard call, failures and timeouts included, by shard",
        &["shard"],
        vitrine_metrics::LATENCY_BUCKETS,
    ),
    explore_slots: vitrine_metrics::counter(
        "vitrine_explore_slots_total",
        "Recommendation slots filled by exploration; divided by vitrine_served_slots_total, the exploration rate",
    ),
    served_slots: vitrine_metrics::counter(
        "vitrine_served_slots_total",
        "Recommendation slots served by Recommend and SimilarItems",
    ),
    hedged_reads: vitrine_metrics::counter(
        "vitrine_hedged_reads_total",
        "Shard reads also sent to another replica because the first had not answered after --hedge-ms",
    ),
    replica_missed_writes: vitrine_metrics::counter(
        "vitrine_replica_missed_writes_total",
        "Writes a replica did not acknowledge; it is avoided by reads until it has caught up",
    ),
});

pub(crate) fn get() -> &'static RouterMetrics {
    &METRICS
}

/// Registers every router metric, so that the first scrape shows them all
/// (at zero) rather than only those already touched.
pub fn init() {
    LazyLock::force(&METRICS);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_router_metric_is_exposed_after_init() {
        init();
        get().shard_call_seconds.with_label_values(&["0"]);
        let text = vitrine_metrics::render(vitrine_metrics::registry());
        for name in [
            "vitrine_fanout_shards_asked",
            "vitrine_fanout_shards_answered",
            "vitrine_shard_call_duration_seconds",
            "vitrine_explore_slots_total",
            "vitrine_served_slots_total",
            "vitrine_hedged_reads_total",
            "vitrine_replica_missed_writes_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn the_public_methods_come_from_the_proto() {
        use vitrine_proto::pb::methods::VITRINE;
        assert!(VITRINE.contains(&"Search") && VITRINE.contains(&"UpsertItemsStream"), "{VITRINE:?}");
        assert_eq!(VITRINE.len(), 13, "{VITRINE:?}");
    }
}
