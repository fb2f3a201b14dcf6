//! Status codes at the transport edge that tonic chooses differently from the
//! gRPC specification.

use http::HeaderValue;

/// tonic rejects a request larger than the configured limit with OUT_OF_RANGE
/// ("decoded message length too large"); the gRPC status-code guide and the
/// other implementations (grpc-go, grpc-java) use RESOURCE_EXHAUSTED, which
/// clients' retry policies already treat as "do not retry as is". The decode
/// error is produced inside tonic before our handler runs, so it is
/// rewritten here, on the trailers-only response tonic sends for it.
pub fn oversize_is_resource_exhausted<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers();
    let is_out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
    let is_oversize = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains("message%20length%20too%20large") || m.contains("message length too large"));
    if is_out_of_range && is_oversize {
        resp.headers_mut().insert("grpc-status", HeaderValue::from_static("8"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: &'static str, message: &'static str) -> http::Response<()> {
        let mut r = http::Response::new(());
        r.headers_mut().insert("grpc-status", HeaderValue::from_static(status));
        r.headers_mut().insert("grpc-message", HeaderValue::from_static(message));
        r
    }

    #[test]
    fn only_oversize_errors_are_rewritten() {
        let r = oversize_is_resource_exhausted(response("11", "Error,%20decoded%20message%20length%20too%20large"));
        assert_eq!(r.headers()["grpc-status"], "8");
        let r = oversize_is_resource_exhausted(response("11", "index%20out%20of%20range"));
        assert_eq!(r.headers()["grpc-status"], "11");
        let r = oversize_is_resource_exhausted(response("3", "message%20length%20too%20large"));
        assert_eq!(r.headers()["grpc-status"], "3");
    }
}
