//! What a call to another service carries of the call being handled, as a
//! tower layer around the client's channel: the request id
//! (`x-request-id`, from [`crate::request_id::current`]) and, with trace
//! export on, the current span as the remote parent (`traceparent`).
//!
//! A layer around the channel rather than metadata added where each
//! request is built: every call made through the channel carries them, the
//! ones added later included. Both come from the context the call is
//! *made* in: tonic invokes the channel when the call's future is first
//! polled, inside the caller's span and task, so a call spawned as a task
//! of its own must be instrumented with the span and wrapped in
//! [`crate::request_id::carry`].

use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::request_id;

/// Wraps a client channel so that its calls carry the request id and trace
/// context (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateLayer;

impl<S> Layer<S> for PropagateLayer {
    type Service = Propagate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Propagate { inner }
    }
}

/// The service [`PropagateLayer`] wraps around a channel.
#[derive(Debug, Clone)]
pub struct Propagate<S> {
    inner: S,
}

impl<S> Propagate<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> Service<http::Request<B>> for Propagate<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        outgoing(request.headers_mut());
        self.inner.call(request)
    }
}

/// Adds the current call's request id (unless the request names one
/// already) and the current span's trace context to `headers`.
pub fn outgoing(headers: &mut http::HeaderMap) {
    if let Some(id) = request_id::current() {
        headers.entry(request_id::HEADER).or_insert_with(|| id.header_value());
    }
    if crate::exporting() {
        crate::propagation::inject(&tracing::Span::current().context(), headers);
    }
}
