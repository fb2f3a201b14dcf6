//! Request metrics for a gRPC service, as a tower layer around the server:
//! every call of the service is counted by method and final status code
//! (`vitrine_requests_total{service,rpc,code}`) and timed
//! (`vitrine_request_duration_seconds{service,rpc}`).
//!
//! A layer rather than code in each handler: it covers every RPC, present and
//! future, and it sees the status the client really gets. That status is not
//! always the handler's: a request tonic rejects before the handler runs
//! (oversized, undecodable) never reaches it, and layers closer to the
//! service may rewrite codes (`router::status`). A failed call is answered
//! "trailers-only", with `grpc-status` in the response headers; a successful
//! one sends it in the trailers after the body, so the layer wraps the body
//! and records when the trailers pass. A call whose response is dropped
//! before a status was sent (the client cancelled or went away) counts as
//! `Canceled`. The duration runs from the request's arrival to its status.
//!
//! Codes are written as grpc-go names them (`codes.Code.String()`, also what
//! go-grpc-prometheus' `grpc_code` label holds): `OK`, `Canceled`,
//! `InvalidArgument`, `DeadlineExceeded`, ... (see [`code_name`]).
//!
//! Only the named service is measured: health checks (kubelet probes every
//! few seconds) and reflection would drown the service's own traffic, and
//! their streaming `Watch` would distort latency. Methods are labelled from
//! a fixed list, so a client calling made-up method names cannot create
//! series (they count as `rpc="unknown"`, answered `Unimplemented`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tower::{Layer, Service};

pub use vitrine_proto::rpc::UNKNOWN_METHOD;

/// gRPC status code names as grpc-go writes them, indexed by code number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

const CANCELED: i32 = 1;
const UNKNOWN: i32 = 2;

/// The `code` label of a gRPC status code: grpc-go's name for it
/// (`InvalidArgument` for 3). Codes outside the specification are `Unknown`,
/// as gRPC clients treat them.
pub fn code_name(code: i32) -> &'static str {
    usize::try_from(code).ok().and_then(|i| CODE_NAMES.get(i)).copied().unwrap_or(CODE_NAMES[UNKNOWN as usize])
}

/// The two request metric families.
pub struct RequestMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

static GLOBAL: LazyLock<Arc<RequestMetrics>> = LazyLock::new(|| {
    Arc::new(RequestMetrics::new(crate::registry()).unwrap_or_else(|e| panic!("registering request metrics: {e}")))
});

impl RequestMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("vitrine_requests_total", "gRPC calls handled, by service, method and final status code"),
            &["service", "rpc", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "vitrine_request_duration_seconds",
                "Time from a gRPC call's arrival to its final status, by service and method",
            )
            .buckets(crate::LATENCY_BUCKETS.to_vec()),
            &["service", "rpc"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }

    /// The families in the process registry ([`crate::registry`]).
    pub fn global() -> Arc<Self> {
        Arc::clone(&GLOBAL)
    }

    fn record(&self, service: &str, rpc: &str, code: i32, started: Instant) {
        self.requests.with_label_values(&[service, rpc, code_name(code)]).inc();
        self.duration.with_label_values(&[service, rpc]).observe(started.elapsed().as_secs_f64());
    }
}

/// Measures the calls of one gRPC service (see the module documentation).
#[derive(Clone)]
pub struct RequestMetricsLayer {
    metrics: Arc<RequestMetrics>,
    service: &'static str,
    methods: &'static [&'static str],
}

impl RequestMetricsLayer {
    /// Measures `service` (its full name, e.g. `vitrine.v1.Vitrine`), whose
    /// methods are `methods`. Every method's series start at zero, so that
    /// `rate()` sees the first call.
    pub fn new(metrics: Arc<RequestMetrics>, service: &'static str, methods: &'static [&'static str]) -> Self {
        for m in methods {
            metrics.requests.with_label_values(&[service, m, code_name(0)]);
            metrics.duration.with_label_values(&[service, m]);
        }
        Self { metrics, service, methods }
    }

    /// The `rpc` label for a request path (`/package.Service/Method`), or
    /// `None` when the path is not this service's.
    fn rpc(&self, path: &str) -> Option<&'static str> {
        vitrine_proto::rpc::method_of(path, self.service, self.methods)
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetricsService { inner, layer: self.clone() }
    }
}

/// The service [`RequestMetricsLayer`] wraps around a server.
#[derive(Clone)]
pub struct RequestMetricsService<S> {
    inner: S,
    layer: RequestMetricsLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestMetricsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = self.layer.rpc(request.uri().path()).map(|rpc| Call {
            metrics: Arc::clone(&self.layer.metrics),
            service: self.layer.service,
            rpc,
            started: Instant::now(),
            done: false,
        });
        ResponseFuture { inner: self.inner.call(request), call }
    }
}

/// One measured call until its status is known. Dropped unfinished, it
/// records `Canceled`: the response never completed.
struct Call {
    metrics: Arc<RequestMetrics>,
    service: &'static str,
    rpc: &'static str,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: i32) {
        if !self.done {
            self.done = true;
            self.metrics.record(self.service, self.rpc, code, self.started);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(CANCELED);
    }
}

/// The `grpc-status` in a header map, if any (unparseable counts as Unknown).
fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status").map(|v| v.to_str().ok().and_then(|s| s.trim().parse().ok()).unwrap_or(UNKNOWN))
}

pin_project! {
    /// The response future of [`RequestMetricsService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let (Some(c), Some(code)) = (call.as_mut(), grpc_status(response.headers())) {
                    // Trailers-only: this status is final.
                    c.finish(code);
                    call = None;
                }
                Ok(response.map(|inner| MeteredBody { inner, call }))
            }
            Err(e) => {
                if let Some(mut c) = call {
                    c.finish(UNKNOWN);
                }
                Err(e)
            }
        })
    }
}

pin_project! {
    /// A response body that records its call when the trailers pass.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(call) = this.call.as_mut() {
            let code = match &frame {
                Some(Ok(f)) => f.trailers_ref().map(|t| grpc_status(t).unwrap_or(UNKNOWN)),
                // A body that fails or ends without a status leaves the
                // client with UNKNOWN (or INTERNAL); count it as Unknown.
                Some(Err(_)) | None => Some(UNKNOWN),
            };
            if let Some(code) = code {
                call.finish(code);
                *this.call = None;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const METHODS: &[&str] = &["Search", "Upsert"];

    fn layer() -> (Registry, RequestMetricsLayer) {
        let registry = Registry::new();
        let metrics = Arc::new(RequestMetrics::new(&registry).unwrap());
        (registry, RequestMetricsLayer::new(metrics, "test.v1.Svc", METHODS))
    }

    fn count(registry: &Registry, rpc: &str, code: &str) -> u64 {
        let text = crate::render(registry);
        let series = format!("vitrine_requests_total{{code=\"{code}\",rpc=\"{rpc}\",service=\"test.v1.Svc\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.parse().unwrap())
    }

    fn observations(registry: &Registry, rpc: &str) -> u64 {
        let text = crate::render(registry);
        let series = format!("vitrine_request_duration_seconds_count{{rpc=\"{rpc}\",service=\"test.v1.Svc\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.parse().unwrap())
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn trailers_only(code: &'static str) -> http::Response<Trailers> {
        http::Response::builder().header("grpc-status", code).body(Trailers::done()).unwrap()
    }

    fn with_trailers(code: &'static str) -> http::Response<Trailers> {
        http::Response::new(Trailers::new(code))
    }

    /// A minimal body: one data frame, then trailers with a status.
    struct Trailers {
        frames: std::collections::VecDeque<Frame<Bytes>>,
    }

    impl Trailers {
        fn new(code: &'static str) -> Self {
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static(code));
            Self { frames: [Frame::data(Bytes::from_static(b"payload")), Frame::trailers(t)].into() }
        }

        fn done() -> Self {
            Self { frames: Default::default() }
        }
    }

    impl Body for Trailers {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.frames.pop_front().map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.frames.is_empty()
        }
    }

    async fn serve(
        layer: &RequestMetricsLayer,
        path: &str,
        response: http::Response<Trailers>,
    ) -> MeteredBody<Trailers> {
        let mut response = Some(response);
        let svc = layer.layer(tower::service_fn(move |_: http::Request<()>| {
            let r = response.take().expect("called once");
            async move { Ok::<_, std::convert::Infallible>(r) }
        }));
        svc.oneshot(request(path)).await.unwrap().into_body()
    }

    #[tokio::test]
    async fn codes_come_from_headers_or_trailers() {
        let (registry, layer) = layer();
        assert_eq!(count(&registry, "Search", "OK"), 0, "series exist from the start");
        assert!(crate::render(&registry).contains("rpc=\"Upsert\""));

        // A failure is answered trailers-only: recorded as soon as the response is.
        let body = serve(&layer, "/test.v1.Svc/Search", trailers_only("3")).await;
        assert_eq!(count(&registry, "Search", "InvalidArgument"), 1);
        drop(body);
        assert_eq!(count(&registry, "Search", "Canceled"), 0, "a finished call is not counted again");

        // A success has its status in the trailers, after the body.
        let body = serve(&layer, "/test.v1.Svc/Search", with_trailers("0")).await;
        assert_eq!(count(&registry, "Search", "OK"), 0, "not before the trailers");
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0", "frames pass through unchanged");
        assert_eq!(count(&registry, "Search", "OK"), 1);
        assert_eq!(observations(&registry, "Search"), 2);

        // A response dropped before its trailers: the client cancelled.
        drop(serve(&layer, "/test.v1.Svc/Upsert", with_trailers("0")).await);
        assert_eq!(count(&registry, "Upsert", "Canceled"), 1);
        assert_eq!(count(&registry, "Upsert", "OK"), 0);
    }

    #[tokio::test]
    async fn only_the_service_and_its_methods_are_labelled() {
        let (registry, layer) = layer();
        drop(serve(&layer, "/grpc.health.v1.Health/Check", trailers_only("0")).await);
        assert!(!crate::render(&registry).contains("grpc.health"), "other services are not measured");
        drop(serve(&layer, "/test.v1.Svc/Made_Up", trailers_only("12")).await);
        assert_eq!(count(&registry, UNKNOWN_METHOD, "Unimplemented"), 1);
        assert!(!crate::render(&registry).contains("Made_Up"));
    }

    #[test]
    fn code_names_follow_grpc_go() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(1), "Canceled");
        assert_eq!(code_name(3), "InvalidArgument");
        assert_eq!(code_name(8), "ResourceExhausted");
        assert_eq!(code_name(16), "Unauthenticated");
        assert_eq!(code_name(17), "Unknown");
        assert_eq!(code_name(-1), "Unknown");
    }
}
