//! Traces and request ids through a real cluster (router + 2 shards,
//! vectors only). An in-process fake OTLP collector receives what the
//! processes export: one Search must give one trace in which the router's
//! span and both shards' `rpc` spans meet, shard spans children of router
//! spans, the client's `x-request-id` on them and echoed in the response;
//! a caller's `traceparent` must be continued. A shard stopped with SIGTERM
//! sends the spans it still queues; a collector serving TLS receives spans
//! from processes given its CA. Without `--otlp-endpoint` the cluster
//! still settles and echoes request ids. Waits are polling with a bound;
//! nothing is timed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use rcgen::ExtendedKeyUsagePurpose;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};
use vitrine_integration_tests::pki::Ca;
use vitrine_integration_tests::{connect, Cluster, Options};
use vitrine_proto::pb;

const DIM: usize = 4;
const REQUEST_ID: &str = "test-req-42";
/// A caller's trace and span, as another service would send them.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// One exported span with the `service.name` and attributes of the process
/// that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    resource: Vec<KeyValue>,
    span: Span,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let value = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

/// The fake collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    fn spans(&self) -> MutexGuard<'_, Vec<Received>> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves OTLP/gRPC on a free loopback port; returns its URL.
    fn serve(&self, rt: &tokio::runtime::Runtime) -> String {
        self.serve_with(rt, None)
    }

    /// Serves OTLP/gRPC, over TLS with this certificate and key when given
    /// (then the URL is https://localhost:port, the name the certificate has).
    fn serve_with(&self, rt: &tokio::runtime::Runtime, tls: Option<(PathBuf, PathBuf)>) -> String {
        let incoming = rt
            .block_on(async { tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()) })
            .expect("collector port");
        let addr = incoming.local_addr().expect("collector address");
        let svc = TraceServiceServer::new(self.clone());
        let mut server = tonic::transport::Server::builder();
        let url = match tls {
            Some((cert, key)) => {
                let identity = Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap());
                server = server.tls_config(ServerTlsConfig::new().identity(identity)).expect("collector TLS");
                format!("https://localhost:{}", addr.port())
            }
            None => format!("http://{addr}"),
        };
        rt.spawn(server.add_service(svc).serve_with_incoming(incoming));
        url
    }

    /// Polls (bounded) until `found` finds what it looks for in the spans.
    fn wait_for<T>(&self, what: &str, mut found: impl FnMut(&[Received]) -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(t) = found(&self.spans()) {
                return t;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let seen: Vec<String> = self
                    .spans()
                    .iter()
                    .map(|r| format!("{} {} trace {} parent {:?}", r.service, r.span.name, r.trace_id(), r.parent_id()))
                    .collect();
                panic!("collector never received {what}; it has:\n{}", seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans();
        for rs in request.into_inner().resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            let service = attr(&resource, "service.name").unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|span| Received {
                    service: service.clone(),
                    resource: resource.clone(),
                    span,
                }));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A vectors-only cluster of `shards` whose router and shards all get the
/// export flags `otlp` and send their spans within 100 ms instead of 5 s.
fn exporting(shards: usize, otlp: &[&str]) -> Options {
    let mut opts = Options::shards(shards).vectors_only(DIM);
    opts.router_args.extend(otlp.iter().map(|a| a.to_string()));
    opts.shard_args.extend(otlp.iter().map(|a| a.to_string()));
    let quick = vec![("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string())];
    opts.router_env = quick.clone();
    opts.shard_env = quick;
    opts
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn items() -> Vec<pb::Item> {
    (0..20)
        .map(|i| {
            let mut v = vec![0.0f32; DIM];
            v[i % DIM] = 1.0;
            pb::Item {
                id: format!("item-{i}"),
                title: format!("item {i}"),
                vector: Some(pb::Vector { values: v }),
                ..Default::default()
            }
        })
        .collect()
}

fn search(metadata: &[(&'static str, &str)]) -> Request<pb::SearchRequest> {
    let mut req = Request::new(pb::SearchRequest {
        query: Some(pb::search_request::Query::Vector(pb::Vector { values: vec![1.0, 0.0, 0.0, 0.0] })),
        k: 5,
        ..Default::default()
    });
    for (k, v) in metadata {
        req.metadata_mut().insert(*k, v.parse().expect("ASCII metadata"));
    }
    req
}

fn echoed(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

#[test]
fn one_trace_spans_router_and_shards() {
    let rt = runtime();
    let collector = Collector::default();
    let endpoint = collector.serve(&rt);
    let cluster = Cluster::start(exporting(2, &["--otlp-endpoint", &endpoint]));

    let mut c = rt.block_on(connect(&cluster.url())).expect("connect");
    rt.block_on(c.upsert_items(pb::UpsertItemsRequest { items: items(), ..Default::default() })).expect("upsert");
    let resp = rt.block_on(c.search(search(&[("x-request-id", REQUEST_ID)]))).expect("search");
    assert_eq!(echoed(resp.metadata()), REQUEST_ID, "the router echoes the client's request id");
    assert_eq!(resp.get_ref().coverage.map(|c| c.shards_answered), Some(2));

    // The router's span of that Search, with the client's request id.
    let router = collector.wait_for("the router's Search span", |spans| {
        spans
            .iter()
            .find(|r| r.span.name == "vitrine.v1.Vitrine/Search" && r.attr("request_id").as_deref() == Some(REQUEST_ID))
            .cloned()
    });
    assert_eq!(router.service, "vitrine-router");
    assert_eq!(router.span.kind, SpanKind::Server as i32);
    assert_eq!(router.attr("method").as_deref(), Some("Search"));
    let trace = router.trace_id();

    // Both shards' Search spans: same trace, each a child of a router span,
    // each with the request id the router forwarded.
    let shards = collector.wait_for("both shards' Search spans in the router's trace", |spans| {
        let router_ids: HashSet<String> = spans
            .iter()
            .filter(|r| r.service == "vitrine-router" && r.trace_id() == trace)
            .map(Received::span_id)
            .collect();
        let shard_spans: Vec<Received> = spans
            .iter()
            .filter(|r| r.span.name == "vitrine.v1.Shard/Search" && r.trace_id() == trace)
            .filter(|r| router_ids.contains(&r.parent_id()))
            .cloned()
            .collect();
        (shard_spans.len() >= 2).then_some(shard_spans)
    });
    let mut shard_numbers = HashSet::new();
    for s in &shards {
        assert_eq!(s.service, "vitrine-shard");
        assert_eq!(s.span.kind, SpanKind::Server as i32);
        assert_eq!(s.attr("request_id").as_deref(), Some(REQUEST_ID), "{s:?}");
        shard_numbers.insert(attr(&s.resource, "vitrine.shard"));
    }
    assert_eq!(shard_numbers, HashSet::from([Some("0".to_string()), Some("1".to_string())]));

    // A caller's trace continues: the router's span is the caller's child.
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let resp = rt.block_on(c.search(search(&[("traceparent", &traceparent)]))).expect("search with traceparent");
    let generated = echoed(resp.metadata());
    assert!(!generated.is_empty(), "a request id is echoed even when the client sent none");
    let continued = collector.wait_for("the router's span in the caller's trace", |spans| {
        spans.iter().find(|r| r.span.name == "vitrine.v1.Vitrine/Search" && r.trace_id() == CALLER_TRACE).cloned()
    });
    assert_eq!(continued.parent_id(), CALLER_SPAN);
    assert_eq!(continued.attr("request_id"), Some(generated));
    collector.wait_for("shard spans in the caller's trace", |spans| {
        spans.iter().find(|r| r.service == "vitrine-shard" && r.trace_id() == CALLER_TRACE).map(|_| ())
    });
}

/// Spans reach a collector that serves TLS, from the router and from a
/// shard, when the processes trust its CA (`--otlp-ca`).
#[test]
fn spans_reach_a_tls_collector() {
    let rt = runtime();
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(pki.path(), "collector-ca");
    let identity = ca.issue(pki.path(), "collector", ExtendedKeyUsagePurpose::ServerAuth);
    let collector = Collector::default();
    let endpoint = collector.serve_with(&rt, Some(identity));
    assert!(endpoint.starts_with("https://"));
    let ca_pem = ca.pem.display().to_string();
    let cluster = Cluster::start(exporting(1, &["--otlp-endpoint", &endpoint, "--otlp-ca", &ca_pem]));
    let mut c = rt.block_on(connect(&cluster.url())).expect("connect");
    rt.block_on(c.upsert_items(pb::UpsertItemsRequest { items: items(), ..Default::default() })).expect("upsert");
    rt.block_on(c.search(search(&[("x-request-id", "tls-export")]))).expect("search");
    collector.wait_for("router and shard spans over TLS", |spans| {
        let of = |service: &str| {
            spans.iter().any(|r| r.service == service && r.attr("request_id").as_deref() == Some("tls-export"))
        };
        (of("vitrine-router") && of("vitrine-shard")).then_some(())
    });
}

#[test]
fn request_ids_without_export() {
    let rt = runtime();
    let cluster = Cluster::start(Options::shards(2).vectors_only(DIM));
    let mut c = rt.block_on(connect(&cluster.url())).expect("connect");
    rt.block_on(c.upsert_items(pb::UpsertItemsRequest { items: items(), ..Default::default() })).expect("upsert");

    let resp = rt.block_on(c.search(search(&[("x-request-id", REQUEST_ID)]))).expect("search");
    assert_eq!(echoed(resp.metadata()), REQUEST_ID);
    assert_eq!(resp.get_ref().hits.len(), 5);

    // None, or one that is not acceptable: a fresh UUID, different each time.
    let mut fresh = HashSet::new();
    for sent in [None, Some("has spaces"), Some(&*"x".repeat(129))] {
        let metadata: Vec<(&'static str, &str)> = sent.map(|s| ("x-request-id", s)).into_iter().collect();
        let resp = rt.block_on(c.search(search(&metadata))).expect("search");
        let id = echoed(resp.metadata());
        assert_eq!(id.len(), 36, "{sent:?} gave {id:?}, not a UUID");
        assert!(fresh.insert(id));
    }

    // Errors carry it too (answered in headers, "trailers-only").
    let mut bad = search(&[("x-request-id", REQUEST_ID)]);
    bad.get_mut().k = 0;
    let status = rt.block_on(c.search(bad)).expect_err("k = 0 is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(echoed(status.metadata()), REQUEST_ID);
}

#[test]
fn a_graceful_exit_sends_the_queued_spans() {
    let rt = runtime();
    let collector = Collector::default();
    let endpoint = collector.serve(&rt);
    let mut opts = Options::shards(1).vectors_only(DIM);
    opts.shard_args.extend(["--otlp-endpoint".to_string(), endpoint]);
    // Nothing is sent on schedule within the test: only the exit's flush.
    opts.shard_env = vec![("OTEL_BSP_SCHEDULE_DELAY".to_string(), "600000".to_string())];
    let mut cluster = Cluster::start(opts);
    let mut c = rt.block_on(connect(&cluster.url())).expect("connect");
    rt.block_on(c.upsert_items(pb::UpsertItemsRequest { items: items(), ..Default::default() })).expect("upsert");
    rt.block_on(c.search(search(&[("x-request-id", REQUEST_ID)]))).expect("search");
    assert!(collector.spans().is_empty(), "spans were sent before the exit");

    let status = cluster.terminate_shard(0, Duration::from_secs(30)).expect("the shard exits on SIGTERM");
    assert!(status.success(), "{status}");
    collector.wait_for("the shard's spans, sent at exit", |spans| {
        spans
            .iter()
            .find(|r| r.span.name == "vitrine.v1.Shard/Search" && r.attr("request_id").as_deref() == Some(REQUEST_ID))
            .map(|_| ())
    });
}
