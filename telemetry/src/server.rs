//! The `rpc` span of every call a server handles, as a tower layer.
//!
//! For each call of the named gRPC service the layer
//!
//! - settles the call's request id ([`crate::request_id`]): the caller's
//!   `x-request-id` when acceptable, a fresh one otherwise; it rewrites the
//!   request's header to that id, so a handler reading it sees the same;
//! - opens `rpc{method, request_id}` and runs the whole call, handler
//!   included, inside it; with trace export on, the span continues the
//!   caller's trace (`traceparent`, [`crate::propagation`]), is named
//!   `package.Service/Method` and is a server span;
//! - keeps the id in the task-local the client layer forwards to shards;
//! - echoes `x-request-id` in the response headers, so a client that sent
//!   none learns the id to quote in a bug report. Refusals and errors are
//!   answered "trailers-only", in headers, so they carry it too.
//!
//! A layer rather than a span in each handler: it covers every method,
//! present and future, and the calls that never reach a handler (refused
//! keys, undecodable messages). Health checks and reflection are other
//! services and pass through untouched: kubelet probes would fill the
//! traces. Methods are named from a fixed list (`unknown` otherwise), so a
//! client cannot put arbitrary text in span names.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};
use tracing::field::Empty;
use tracing::instrument::Instrumented;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::request_id::{self, RequestId};

pub use vitrine_proto::rpc::UNKNOWN_METHOD;

/// Wraps a server so that each call of one service runs in its `rpc` span
/// (see the module documentation).
#[derive(Debug, Clone)]
pub struct RpcSpanLayer {
    service: &'static str,
    methods: &'static [&'static str],
}

impl RpcSpanLayer {
    /// Spans for `service` (its full name, e.g. `vitrine.v1.Vitrine`),
    /// whose methods are `methods`.
    pub fn new(service: &'static str, methods: &'static [&'static str]) -> Self {
        Self { service, methods }
    }

    /// The method of a request path (`/package.Service/Method`), or `None`
    /// when the path is not this service's.
    fn method(&self, path: &str) -> Option<&'static str> {
        vitrine_proto::rpc::method_of(path, self.service, self.methods)
    }
}

impl<S> Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcSpan { inner, layer: self.clone() }
    }
}

/// The service [`RpcSpanLayer`] wraps around a server.
#[derive(Debug, Clone)]
pub struct RpcSpan<S> {
    inner: S,
    layer: RpcSpanLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcSpan<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(method) = self.layer.method(request.uri().path()) else {
            return ResponseFuture::Bare { inner: self.inner.call(request) };
        };
        let id = RequestId::from_header(request.headers().get(request_id::HEADER));
        request.headers_mut().insert(request_id::HEADER, id.header_value());
        let span = tracing::info_span!(
            "rpc",
            method,
            request_id = %id,
            otel.name = Empty,
            otel.kind = Empty,
            rpc.system = Empty,
            rpc.service = Empty,
        );
        if crate::exporting() {
            // Recorded only when exporting: in logs they would be noise.
            span.record("otel.name", format!("{}/{method}", self.layer.service).as_str());
            span.record("otel.kind", "server");
            span.record("rpc.system", "grpc");
            span.record("rpc.service", self.layer.service);
            let parent = crate::propagation::extract(request.headers());
            if opentelemetry::trace::TraceContextExt::has_active_span(&parent) {
                // Fails only once the span has started, which it has not.
                let _ = span.set_parent(parent);
            }
        }
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture::Traced { inner: request_id::scope(id.clone(), inner).instrument(span.clone()), id, span }
    }
}

pin_project! {
    /// The response of a call: as is for calls outside the service
    /// (`Bare`), with the request id echoed once it is ready otherwise.
    #[project = ResponseProj]
    pub enum ResponseFuture<F> {
        Bare { #[pin] inner: F },
        Traced {
            #[pin]
            inner: Instrumented<TaskLocalFuture<Option<RequestId>, F>>,
            id: RequestId,
            span: tracing::Span,
        },
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseProj::Bare { inner } => inner.poll(cx),
            ResponseProj::Traced { inner, id, span } => {
                let mut result = ready!(inner.poll(cx));
                if let Ok(response) = &mut result {
                    response.headers_mut().insert(request_id::HEADER, id.header_value());
                    if crate::exporting() {
                        mark_error(span, response.headers());
                    }
                }
                Poll::Ready(result)
            }
        }
    }
}

/// Marks the span failed when the call was answered with an error status.
/// Errors come "trailers-only", with `grpc-status` in the headers; a call
/// that succeeds sends its status in the trailers, after the body, and
/// keeps the span's status unset, which trace back-ends read as fine.
fn mark_error(span: &tracing::Span, headers: &http::HeaderMap) {
    let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok())
    else {
        return;
    };
    span.set_attribute("rpc.grpc.status_code", code);
    if code != 0 {
        let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default();
        span.set_status(opentelemetry::trace::Status::error(format!("gRPC status {code}: {message}")));
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tower::{service_fn, ServiceExt};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::client::Propagate;
    use crate::propagation::TRACEPARENT;

    const PARENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const PARENT_SPAN: &str = "b7ad6b7169203331";

    /// A server whose handler makes one downstream call through the client
    /// layer and answers with the headers that call carried.
    fn server() -> RpcSpan<impl Service<http::Request<()>, Response = http::Response<()>, Error = Infallible> + Clone> {
        let downstream =
            Propagate::new(service_fn(
                |req: http::Request<()>| async move { Ok::<_, Infallible>(req.headers().clone()) },
            ));
        let handler = service_fn(move |_req: http::Request<()>| {
            let downstream = downstream.clone();
            async move {
                let sent = downstream.oneshot(http::Request::new(())).await?;
                let mut response = http::Response::new(());
                *response.headers_mut() = sent;
                Ok::<_, Infallible>(response)
            }
        });
        RpcSpanLayer::new("test.v1.Svc", &["Call"]).layer(handler)
    }

    fn call(path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[tokio::test]
    async fn calls_carry_the_request_id_and_continue_the_trace() {
        crate::set_exporting(true);
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _default = tracing::subscriber::set_default(subscriber);

        let traceparent = format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01");
        let req = call("/test.v1.Svc/Call", &[("x-request-id", "test-req-42"), ("traceparent", &traceparent)]);
        let resp = server().oneshot(req).await.unwrap();
        let h = resp.headers();
        // Forwarded downstream, and echoed (the same header here).
        assert_eq!(h[request_id::HEADER], "test-req-42");
        // Downstream's parent: the rpc span, in the caller's trace.
        let sent = h[TRACEPARENT].to_str().unwrap();
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts.len(), 4, "{sent}");
        assert_eq!((parts[1], parts[3]), (PARENT_TRACE, "01"), "{sent}");
        assert_ne!(parts[2], PARENT_SPAN, "the rpc span is a new span: {sent}");

        // No id from the caller: a generated one, the same downstream and back.
        let resp = server().oneshot(call("/test.v1.Svc/Call", &[("x-request-id", "bad id")])).await.unwrap();
        let id = resp.headers()[request_id::HEADER].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        // ... and a trace of its own.
        let sent = resp.headers()[TRACEPARENT].to_str().unwrap();
        assert!(!sent.contains(PARENT_TRACE), "{sent}");

        // Other services (health checks) pass untouched.
        let resp = server().oneshot(call("/grpc.health.v1.Health/Check", &[])).await.unwrap();
        assert!(resp.headers().get(request_id::HEADER).is_none());
    }

    #[test]
    fn methods_come_from_the_list() {
        let layer = RpcSpanLayer::new("test.v1.Svc", &["Call"]);
        assert_eq!(layer.method("/test.v1.Svc/Call"), Some("Call"));
        assert_eq!(layer.method("/test.v1.Svc/Made-Up"), Some(UNKNOWN_METHOD));
        assert_eq!(layer.method("/other.Svc/Call"), None);
        assert_eq!(layer.method("nonsense"), None);
    }
}
