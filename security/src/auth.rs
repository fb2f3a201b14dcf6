//! API keys enforced on gRPC calls, as a tower layer around the server.
//!
//! A layer rather than a check in each handler: every call passes through
//! it, those of methods added later included, and it answers before the
//! request body is read. What each method needs is the server's [`Policy`]
//! (the router's is `router/src/access.rs`); this layer only reads the
//! `authorization: Bearer <key>` header, looks the key up and compares
//! scopes:
//!
//! - no header, another scheme, or an empty key: UNAUTHENTICATED
//!   "missing or malformed authorization: Bearer <key>";
//! - a key that is not in force: UNAUTHENTICATED "unknown API key";
//! - a key whose scope is too small: PERMISSION_DENIED
//!   "this key has scope read; UpsertItems needs write".
//!
//! Refusals are logged at debug level with the method and the reason, never
//! the key: request metrics already count them by code.

use std::future::{ready, Ready};
use std::task::{Context, Poll};

use futures::future::Either;
use tonic::Status;
use tower::{Layer, Service};

use crate::keys::{ApiKeys, Scope};

/// What a gRPC method requires of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key (health checks, reflection).
    Open,
    /// A key of at least this scope.
    Needs(Scope),
}

/// Maps a request path (`/package.Service/Method`) to what it requires.
pub type Policy = fn(&str) -> Access;

pub const MISSING_KEY: &str = "missing or malformed authorization: Bearer <key>";
pub const UNKNOWN_KEY: &str = "unknown API key";

/// Checks one call: `Ok` lets it through, `Err` is the status to answer.
pub fn authorize(keys: &ApiKeys, policy: Policy, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
    let needed = match policy(path) {
        Access::Open => return Ok(()),
        Access::Needs(scope) => scope,
    };
    let key = bearer(headers).ok_or_else(|| Status::unauthenticated(MISSING_KEY))?;
    let scope = keys.scope_of(key).ok_or_else(|| Status::unauthenticated(UNKNOWN_KEY))?;
    if scope.allows(needed) {
        Ok(())
    } else {
        let method = path.rsplit('/').next().unwrap_or(path);
        Err(Status::permission_denied(format!("this key has scope {scope}; {method} needs {needed}")))
    }
}

/// The key of an `authorization: Bearer <key>` header (the scheme is
/// case-insensitive, RFC 7235).
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// Wraps a server so that every call is [`authorize`]d; with no keys
/// (`None`) it lets everything through.
#[derive(Clone)]
pub struct AuthLayer {
    keys: Option<ApiKeys>,
    policy: Policy,
}

impl AuthLayer {
    pub fn new(keys: Option<ApiKeys>, policy: Policy) -> Self {
        Self { keys, policy }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, keys: self.keys.clone(), policy: self.policy }
    }
}

/// The service [`AuthLayer`] wraps around a server.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Option<ApiKeys>,
    policy: Policy,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let Some(keys) = &self.keys else { return Either::Right(self.inner.call(request)) };
        match authorize(keys, self.policy, request.uri().path(), request.headers()) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(status) => {
                tracing::debug!(path = request.uri().path(), code = ?status.code(), reason = status.message(), "call refused");
                Either::Left(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    const READ: &str = "reader-key-0123456789";
    const WRITE: &str = "writer-key-0123456789";

    fn policy(path: &str) -> Access {
        match path {
            "/grpc.health.v1.Health/Check" => Access::Open,
            "/test.Svc/Search" => Access::Needs(Scope::Read),
            _ => Access::Needs(Scope::Write),
        }
    }

    fn keys() -> ApiKeys {
        ApiKeys::load(None, Some(&format!("read:{READ},write:{WRITE}")), "E").unwrap()
    }

    fn check(path: &str, auth: Option<&str>) -> Result<(), Status> {
        let mut headers = http::HeaderMap::new();
        if let Some(a) = auth {
            headers.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        authorize(&keys(), policy, path, &headers)
    }

    fn refused(r: Result<(), Status>) -> (Code, String) {
        let s = r.unwrap_err();
        (s.code(), s.message().to_string())
    }

    #[test]
    fn open_paths_need_no_key() {
        assert!(check("/grpc.health.v1.Health/Check", None).is_ok());
    }

    #[test]
    fn missing_or_malformed_headers_are_unauthenticated() {
        for auth in [None, Some("Basic abc"), Some("Bearer"), Some("Bearer   "), Some(READ)] {
            assert_eq!(
                refused(check("/test.Svc/Search", auth)),
                (Code::Unauthenticated, MISSING_KEY.into()),
                "{auth:?}"
            );
        }
        let unknown = check("/test.Svc/Search", Some("Bearer other-key-0123456789"));
        assert_eq!(refused(unknown), (Code::Unauthenticated, UNKNOWN_KEY.into()));
    }

    #[test]
    fn scopes_are_enforced() {
        assert!(check("/test.Svc/Search", Some(&format!("Bearer {READ}"))).is_ok());
        assert!(check("/test.Svc/Search", Some(&format!("bearer {WRITE}"))).is_ok(), "write implies read");
        assert!(check("/test.Svc/Upsert", Some(&format!("Bearer {WRITE}"))).is_ok());
        assert_eq!(
            refused(check("/test.Svc/Upsert", Some(&format!("Bearer {READ}")))),
            (Code::PermissionDenied, "this key has scope read; Upsert needs write".into())
        );
    }

    #[tokio::test]
    async fn the_layer_answers_refusals_itself() {
        use tower::ServiceExt;
        let inner = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let svc = AuthLayer::new(Some(keys()), policy).layer(inner);
        let request = http::Request::builder().uri("/test.Svc/Upsert").body(()).unwrap();
        let response = svc.clone().oneshot(request).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "16");
        let request = http::Request::builder()
            .uri("/test.Svc/Upsert")
            .header("authorization", format!("Bearer {WRITE}"))
            .body(())
            .unwrap();
        assert!(svc.oneshot(request).await.unwrap().headers().get("grpc-status").is_none(), "passed through");
        let open = AuthLayer::new(None, policy).layer(inner);
        let request = http::Request::builder().uri("/test.Svc/Upsert").body(()).unwrap();
        assert!(open.oneshot(request).await.unwrap().headers().get("grpc-status").is_none(), "no keys: auth off");
    }
}
