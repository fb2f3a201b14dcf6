//! Naming a gRPC call from its HTTP/2 path, shared by the layers that label
//! calls (request metrics, `rpc` spans) so that a metric and a span of the
//! same call always carry the same method name.

/// Name given to calls of a method the service does not have, so that a
/// client sending made-up paths cannot create unbounded label values.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The method of a request path (`/package.Service/Method`) when the path
/// belongs to `service`: one of `methods`, or [`UNKNOWN_METHOD`]. `None`
/// when the path is another service's (health, reflection) or malformed.
pub fn method_of(path: &str, service: &str, methods: &'static [&'static str]) -> Option<&'static str> {
    let (svc, method) = path.strip_prefix('/')?.split_once('/')?;
    if svc != service {
        return None;
    }
    Some(methods.iter().copied().find(|m| *m == method).unwrap_or(UNKNOWN_METHOD))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_the_list() {
        let methods = &["Call"];
        assert_eq!(method_of("/test.v1.Svc/Call", "test.v1.Svc", methods), Some("Call"));
        assert_eq!(method_of("/test.v1.Svc/Made-Up", "test.v1.Svc", methods), Some(UNKNOWN_METHOD));
        assert_eq!(method_of("/other.Svc/Call", "test.v1.Svc", methods), None);
        assert_eq!(method_of("nonsense", "test.v1.Svc", methods), None);
        assert_eq!(method_of("/test.v1.Svc", "test.v1.Svc", methods), None);
    }
}
