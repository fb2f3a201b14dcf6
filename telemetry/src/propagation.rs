//! Trace context in gRPC metadata: W3C Trace Context (`traceparent`,
//! `tracestate`), the format OpenTelemetry SDKs, Envoy and most collectors
//! speak, so that a caller's trace continues through the router and the
//! router's continues in the shards.
//!
//! gRPC metadata is HTTP/2 headers, so this works on [`http::HeaderMap`]:
//! the tower layers of [`crate::server`] and [`crate::client`] see requests
//! as `http::Request`s, before tonic turns headers into metadata.
//!
//! The propagator is used directly rather than through OpenTelemetry's
//! global one: nothing else in the process should change what goes on the
//! wire.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The W3C header that carries trace id, parent span id and sampling flag.
pub const TRACEPARENT: &str = "traceparent";

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes lowercase ASCII names and values; anything
        // else (a tracestate a caller filled with junk) is left out.
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes the span context of `cx` into `headers`. A context without a
/// valid span (no exporter, or outside any span) writes nothing.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// The remote span context in `headers`, as a parent for a local span. A
/// missing or malformed `traceparent` gives a context without a valid span:
/// the local span then starts a trace of its own.
pub fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract_with_context(&Context::new(), &HeaderExtractor(headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

    fn remote(trace: u128, span: u64, sampled: bool) -> Context {
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let sc = SpanContext::new(
            TraceId::from_bytes(trace.to_be_bytes()),
            SpanId::from_bytes(span.to_be_bytes()),
            flags,
            true,
            TraceState::default(),
        );
        Context::new().with_remote_span_context(sc)
    }

    #[test]
    fn inject_then_extract_round_trips() {
        let mut headers = HeaderMap::new();
        let cx = remote(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, true);
        inject(&cx, &mut headers);
        assert_eq!(headers[TRACEPARENT], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let back = extract(&headers);
        let sc = back.span().span_context().clone();
        assert_eq!(sc, cx.span().span_context().clone());
        assert!(sc.is_remote() && sc.is_sampled());

        // Not sampled travels too: the receiver must not sample either.
        let mut headers = HeaderMap::new();
        inject(&remote(1, 2, false), &mut headers);
        assert!(headers[TRACEPARENT].to_str().unwrap().ends_with("-00"));
        assert!(!extract(&headers).span().span_context().is_sampled());
    }

    #[test]
    fn no_span_injects_nothing() {
        let mut headers = HeaderMap::new();
        inject(&Context::new(), &mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn malformed_traceparent_gives_no_parent() {
        for bad in ["", "00-xyz", "00-00000000000000000000000000000000-b7ad6b7169203331-01", "garbage"] {
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, HeaderValue::from_str(bad).unwrap());
            assert!(!extract(&headers).span().span_context().is_valid(), "{bad:?} accepted");
        }
        assert!(!extract(&HeaderMap::new()).span().span_context().is_valid());
    }
}
