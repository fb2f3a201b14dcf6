//! Logs and traces for the Vitrine binaries.
//!
//! - [`init`]: the process's `tracing` set-up: log lines on stderr (text or
//!   JSON, filtered by `RUST_LOG`) and, when an OTLP endpoint is
//!   configured, spans exported to a collector over OTLP/gRPC.
//! - [`request_id`]: the id each call is known by, in spans and log lines,
//!   chosen by the client or generated.
//! - [`propagation`]: W3C trace context in gRPC metadata.
//! - [`server`]: the tower layer that runs each call in its `rpc` span,
//!   continuing the caller's trace and echoing the request id.
//! - [`client`]: the tower layer that makes calls to shards carry the
//!   request id and the trace context.
//!
//! Without an OTLP endpoint nothing is exported and the layers only handle
//! request ids: no trace context is read or written. docs/OPERATIONS.md
//! (Tracing) is the operator's view.
#![forbid(unsafe_code)]

pub mod client;
pub mod propagation;
pub mod request_id;
pub mod server;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

pub use client::{Propagate, PropagateLayer};
pub use request_id::RequestId;
pub use server::RpcSpanLayer;

/// Log filter when `RUST_LOG` is unset: hnsw_rs and ONNX Runtime are chatty
/// at info level.
pub const DEFAULT_FILTER: &str = "info,hnsw_rs=warn,ort=warn";

/// How long a graceful exit waits for the last spans to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether spans are exported, so that trace context is worth reading and
/// writing. Set once by [`init`]; read on every call by the layers.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans (an OTLP endpoint was configured).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Lets the layer tests run with trace context on, without an exporter.
#[cfg(test)]
pub(crate) fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Telemetry flags both binaries take (flattened into their configurations).
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log as JSON lines.
    #[arg(long, env = "VITRINE_LOG_JSON")]
    pub log_json: bool,
    /// OTLP/gRPC endpoint of a trace collector, e.g. http://otel-collector:4317
    /// (plaintext) or https://otel-collector:4317 (TLS, with --otlp-ca).
    /// Unset: no spans are exported.
    #[arg(long, env = "VITRINE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// PEM file of the CA that signed the collector's certificate; needed
    /// by an https:// endpoint.
    #[arg(long, env = "VITRINE_OTLP_CA")]
    pub otlp_ca: Option<PathBuf>,
    /// PEM certificate and key presented to a collector that requires
    /// client certificates (mutual TLS).
    #[arg(long, env = "VITRINE_OTLP_CERT", requires_all = ["otlp_key", "otlp_ca"])]
    pub otlp_cert: Option<PathBuf>,
    #[arg(long, env = "VITRINE_OTLP_KEY", requires = "otlp_cert")]
    pub otlp_key: Option<PathBuf>,
    /// Fraction of traces started here that are exported (0 to 1). A
    /// caller's decision, in its `traceparent`, is followed instead.
    #[arg(long, env = "VITRINE_OTLP_SAMPLE_RATIO", default_value_t = 1.0)]
    pub otlp_sample_ratio: f64,
}

impl TelemetryArgs {
    /// The export configuration, or `None` when no endpoint is set (an
    /// empty variable counts as unset).
    pub fn otlp(&self) -> Option<OtlpConfig> {
        let endpoint = self.otlp_endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty())?;
        let mut cfg = OtlpConfig::new(endpoint).sample_ratio(self.otlp_sample_ratio);
        cfg.ca = self.otlp_ca.clone();
        cfg.identity = self.otlp_cert.clone().zip(self.otlp_key.clone());
        Some(cfg)
    }
}

/// Where and what to export.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    endpoint: String,
    sample_ratio: f64,
    attributes: Vec<KeyValue>,
    /// Trust root for an https:// endpoint.
    ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    identity: Option<(PathBuf, PathBuf)>,
}

impl OtlpConfig {
    /// Exports every trace to `endpoint` (`http://host:port`).
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self { endpoint: endpoint.into(), sample_ratio: 1.0, attributes: Vec::new(), ca: None, identity: None }
    }

    /// Connects over TLS, trusting the CA in this PEM file (the endpoint
    /// must be https://).
    pub fn ca(mut self, pem: impl Into<PathBuf>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Presents this certificate and key (PEM files) to the collector.
    pub fn identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Samples this fraction of the traces that start in this process.
    pub fn sample_ratio(mut self, ratio: f64) -> Self {
        self.sample_ratio = ratio;
        self
    }

    /// Adds a resource attribute, on every span of the process (a shard's
    /// number, for one).
    pub fn attribute(mut self, key: &'static str, value: impl Into<opentelemetry::Value>) -> Self {
        self.attributes.push(KeyValue::new(key, value));
        self
    }
}

/// What can stop telemetry from starting.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--otlp-sample-ratio must be within 0..=1, got {0}")]
    SampleRatio(f64),
    #[error("OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("OTLP endpoint {endpoint}: {reason}")]
    Tls { endpoint: String, reason: String },
    #[error("the OTLP exporter needs a Tokio runtime: call init inside one")]
    NoRuntime,
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the exporter running; dropping it (or [`TelemetryGuard::shutdown`])
/// sends the spans still queued, so a graceful exit loses none. Hold it for
/// the life of the process and drop it inside the Tokio runtime: the
/// exporter's connection lives there.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes queued spans (waiting up to 5 s) and stops exporting.
    pub fn shutdown(mut self) {
        self.flush_and_stop();
    }

    fn flush_and_stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                tracing::warn!(error = %e, "trace export did not shut down cleanly; the last spans may be lost");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.flush_and_stop();
    }
}

/// Installs the process's `tracing` subscriber: log lines on stderr (JSON
/// lines with `json`), filtered by `RUST_LOG` or [`DEFAULT_FILTER`]; with
/// `otlp`, also a layer that exports spans as `service_name` through a
/// batch processor (tuned by the standard `OTEL_BSP_*` variables).
///
/// Export has a filter of its own, info and above, so that `RUST_LOG=warn`
/// quiets the logs without emptying the traces; the HTTP/2 and gRPC
/// libraries are kept out of it, the exporter's own calls included.
pub fn init(service_name: &str, json: bool, otlp: Option<OtlpConfig>) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only for a person at a terminal, not in log files.
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    let provider = otlp.map(|cfg| provider(service_name, cfg)).transpose()?;
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service_name.to_string()))
            .with_tracked_inactivity(false)
            .with_filter(export_filter())
    });
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).try_init()?;
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Ok(TelemetryGuard { provider })
}

/// Which spans and events are exported.
fn export_filter() -> Targets {
    Targets::new()
        .with_default(LevelFilter::INFO)
        .with_targets([("hnsw_rs", LevelFilter::WARN), ("ort", LevelFilter::WARN)])
        .with_targets(["h2", "hyper", "hyper_util", "tonic", "tower", "opentelemetry"].map(|t| (t, LevelFilter::OFF)))
}

fn provider(service_name: &str, cfg: OtlpConfig) -> Result<SdkTracerProvider, TelemetryError> {
    if !(0.0..=1.0).contains(&cfg.sample_ratio) {
        return Err(TelemetryError::SampleRatio(cfg.sample_ratio));
    }
    // The exporter's channel connects lazily on a task of the runtime.
    tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
    use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(cfg.endpoint.clone());
    if let Some(tls) = tls_config(&cfg)? {
        builder = builder.with_tls_config(tls);
    }
    let exporter =
        builder.build().map_err(|source| TelemetryError::Exporter { endpoint: cfg.endpoint.clone(), source })?;
    // `Resource::builder` also reads OTEL_RESOURCE_ATTRIBUTES, so that a
    // deployment can add its own (pod name, zone); the service name is ours.
    let resource =
        Resource::builder().with_attributes(cfg.attributes).with_service_name(service_name.to_string()).build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio))))
        .with_resource(resource)
        .build())
}

/// The TLS settings of an https:// endpoint: its CA is required, so that
/// a typo cannot silently send traces somewhere untrusted; a CA with a
/// plaintext endpoint is refused as the likely mistake it is.
fn tls_config(cfg: &OtlpConfig) -> Result<Option<tonic::transport::ClientTlsConfig>, TelemetryError> {
    let fail = |reason: String| TelemetryError::Tls { endpoint: cfg.endpoint.clone(), reason };
    let https = cfg.endpoint.starts_with("https://");
    let Some(ca) = &cfg.ca else {
        return if https {
            Err(fail("an https:// endpoint needs --otlp-ca (VITRINE_OTLP_CA)".into()))
        } else {
            Ok(None)
        };
    };
    if !https {
        return Err(fail("--otlp-ca is set but the endpoint is not https://".into()));
    }
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| fail(format!("reading {}: {e}", p.display())));
    let mut tls =
        tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = &cfg.identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_endpoint_is_unset() {
        let args = |e: Option<&str>| TelemetryArgs {
            log_json: false,
            otlp_endpoint: e.map(str::to_string),
            otlp_ca: None,
            otlp_cert: None,
            otlp_key: None,
            otlp_sample_ratio: 0.5,
        };
        assert!(args(None).otlp().is_none());
        assert!(args(Some("  ")).otlp().is_none());
        let cfg = args(Some("http://collector:4317")).otlp().unwrap();
        assert_eq!((cfg.endpoint.as_str(), cfg.sample_ratio), ("http://collector:4317", 0.5));
    }

    #[test]
    fn bad_settings_are_refused() {
        for ratio in [-0.1, 1.5, f64::NAN] {
            let e = provider("x", OtlpConfig::new("http://127.0.0.1:4317").sample_ratio(ratio)).err();
            assert!(matches!(e, Some(TelemetryError::SampleRatio(_))), "{ratio}: {e:?}");
        }
        // Outside a runtime the exporter could not connect.
        let e = provider("x", OtlpConfig::new("http://127.0.0.1:4317")).err();
        assert!(matches!(e, Some(TelemetryError::NoRuntime)), "{e:?}");
    }

    #[tokio::test]
    async fn tls_mistakes_are_refused_at_start() {
        let e = provider("x", OtlpConfig::new("https://collector:4317")).err();
        assert!(matches!(&e, Some(TelemetryError::Tls { reason, .. }) if reason.contains("--otlp-ca")), "{e:?}");
        let e = provider("x", OtlpConfig::new("http://collector:4317").ca("/ca.pem")).err();
        assert!(matches!(&e, Some(TelemetryError::Tls { reason, .. }) if reason.contains("not https")), "{e:?}");
        let e = provider("x", OtlpConfig::new("https://collector:4317").ca("/no/such/ca.pem")).err();
        assert!(matches!(&e, Some(TelemetryError::Tls { reason, .. }) if reason.contains("/no/such/ca.pem")), "{e:?}");
        let e = provider("x", OtlpConfig::new("not a uri")).err();
        assert!(matches!(e, Some(TelemetryError::Exporter { .. })), "{e:?}");
    }
}
