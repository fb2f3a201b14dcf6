//! Prometheus metrics for the Vitrine binaries, in one place:
//!
//! - [`registry`]: the process-wide registry every metric is registered in,
//!   and helpers that create and register one metric each;
//! - [`grpc`]: a tower layer that counts and times every call of a gRPC
//!   service with its final status code (`vitrine_requests_total`,
//!   `vitrine_request_duration_seconds`);
//! - [`exporter`]: a plain HTTP/1.1 listener answering `GET /metrics` in the
//!   Prometheus text format.
//!
//! The router and the shard define their own metrics (`router::metrics`,
//! `shard::metrics`); docs/OPERATIONS.md lists them all.
//!
//! **Why the `prometheus` crate.** It is the lighter choice to compile.
//! Without its default features (the protobuf encoder; Prometheus scrapes
//! the text format) it adds exactly one crate to the build: its dependencies
//! (`fnv`, `lazy_static`, `memchr`, `parking_lot`, `thiserror`) are in the
//! workspace already. `metrics` + `metrics-exporter-prometheus` would add
//! `metrics`, `metrics-util`, `quanta`, `sketches-ddsketch` and more, plus
//! hyper's server half for its built-in listener. A scrape endpoint answers
//! one kind of request, so [`exporter`] does it over a tokio `TcpListener`
//! in a few dozen lines.
#![forbid(unsafe_code)]

pub mod exporter;
pub mod grpc;

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub use exporter::{Exporter, Running};
pub use grpc::{code_name, RequestMetrics, RequestMetricsLayer};

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// The process-wide registry: everything registered here is what
/// `GET /metrics` shows.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Latency buckets in seconds, for requests and shard calls: from 0.5 ms (a
/// shard answering `Get` from memory) to 60 s (the default write deadline).
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

// Metric names are compile-time constants, so a clash or an invalid name is
// a programming error found by the first test that touches the metric:
// these helpers panic rather than make every caller handle it.

fn register<M: prometheus::core::Collector + Clone + 'static>(m: M) -> M {
    REGISTRY.register(Box::new(m.clone())).unwrap_or_else(|e| panic!("registering a metric: {e}"));
    m
}

/// A counter in the process registry.
pub fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

/// A counter with labels in the process registry.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

/// A gauge in the process registry.
pub fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

/// A histogram in the process registry.
pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(Histogram::with_opts(opts).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

/// A histogram with labels in the process registry.
pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(HistogramVec::new(opts, labels).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

/// The registry's content in the Prometheus text format (what a scrape gets).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_register_in_the_process_registry() {
        let c = counter("vitrine_test_helper_total", "a test counter");
        c.inc_by(3);
        let h = histogram("vitrine_test_helper_seconds", "a test histogram", LATENCY_BUCKETS);
        h.observe(0.002);
        let text = render(registry());
        assert!(text.contains("# TYPE vitrine_test_helper_total counter"), "{text}");
        assert!(text.contains("vitrine_test_helper_total 3"), "{text}");
        assert!(text.contains("vitrine_test_helper_seconds_bucket{le=\"0.0025\"} 1"), "{text}");
        assert!(text.contains("vitrine_test_helper_seconds_count 1"), "{text}");
    }

    #[test]
    #[should_panic(expected = "registering a metric")]
    fn a_name_clash_is_a_bug() {
        gauge("vitrine_test_clash", "first");
        gauge("vitrine_test_clash", "second");
    }
}
