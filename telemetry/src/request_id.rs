//! Request ids: one id per client call, in the router's and the shards'
//! `rpc` spans and log lines, sent to the shards and echoed to the client.
//!
//! A client may choose the id (`x-request-id`, as proxies and HTTP services
//! commonly set it) so that its own logs and ours can be joined. The id
//! lands in logs and trace attributes, so a client's value is taken only
//! when it is 1 to 128 visible ASCII characters; anything else (too long,
//! spaces, control or non-ASCII characters) is replaced by a fresh UUID v4
//! rather than refused: a bad id must never fail a call.
//!
//! While a call is handled its id is held in a task-local ([`scope`]), so
//! that the client layer ([`crate::client`]) can forward it without every
//! shard call passing it along by hand. A task spawned during a call does
//! not inherit task-locals: wrap its future in [`carry`].

use std::future::Future;

use http::HeaderValue;
use tokio::task::futures::TaskLocalFuture;

/// The metadata key the id travels in, both ways.
pub const HEADER: &str = "x-request-id";

/// Longest id taken from a client.
pub const MAX_LEN: usize = 128;

/// A request id: 1 to [`MAX_LEN`] visible ASCII characters (`!` to `~`).
///
/// Kept as a header value, since that is how it is read and written most;
/// the invariant makes it valid UTF-8 too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id if `text` is acceptable (see the module documentation).
    pub fn parse(text: &str) -> Option<Self> {
        if text.is_empty() || text.len() > MAX_LEN || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        HeaderValue::from_str(text).ok().map(Self)
    }

    /// A fresh random id (UUID v4, hyphenated).
    pub fn generate() -> Self {
        let text = uuid::Uuid::new_v4().hyphenated().to_string();
        Self(HeaderValue::from_str(&text).expect("a hyphenated UUID is a valid header value"))
    }

    /// The id a call is known by: the caller's `x-request-id` when it is
    /// acceptable, a fresh one otherwise.
    pub fn from_header(value: Option<&HeaderValue>) -> Self {
        value.and_then(|v| v.to_str().ok()).and_then(Self::parse).unwrap_or_else(Self::generate)
    }

    pub fn as_str(&self) -> &str {
        // Visible ASCII by construction, so this never falls back.
        self.0.to_str().unwrap_or_default()
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

tokio::task_local! {
    /// The id of the call the current task works for, if any.
    static CURRENT: Option<RequestId>;
}

/// The id of the call being handled by this task, if any.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

/// Runs `fut` as part of the call `id`: [`current`] returns it inside.
pub fn scope<F: Future>(id: RequestId, fut: F) -> TaskLocalFuture<Option<RequestId>, F> {
    CURRENT.scope(Some(id), fut)
}

/// Makes the current call's id visible inside `fut`, for futures that are
/// spawned as tasks of their own (task-locals do not follow `tokio::spawn`).
pub fn carry<F: Future>(fut: F) -> TaskLocalFuture<Option<RequestId>, F> {
    CURRENT.scope(current(), fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptable_ids_are_kept() {
        for id in ["test-req-42", "a", "0123456789abcdef", "!~#$%&'()*+,-./:;<=>?@[]^_`{|}", &"x".repeat(MAX_LEN)] {
            let got = RequestId::from_header(Some(&HeaderValue::from_str(id).unwrap()));
            assert_eq!(got.as_str(), id);
        }
    }

    #[test]
    fn unacceptable_ids_are_replaced() {
        let too_long = "x".repeat(MAX_LEN + 1);
        for id in ["", "with space", "tab\there", &too_long] {
            assert!(RequestId::parse(id).is_none(), "{id:?} accepted");
            let got = RequestId::from_header(HeaderValue::from_str(id).ok().as_ref());
            assert_ne!(got.as_str(), id);
            assert!(uuid::Uuid::parse_str(got.as_str()).is_ok(), "{got} is not a UUID");
        }
        // Non-ASCII bytes are a valid header value but not a valid id.
        let latin1 = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert!(uuid::Uuid::parse_str(RequestId::from_header(Some(&latin1)).as_str()).is_ok());
        assert!(RequestId::parse("café").is_none());
        assert!(RequestId::parse("nul\0").is_none());
    }

    #[test]
    fn missing_ids_are_generated_fresh() {
        let a = RequestId::from_header(None);
        let b = RequestId::from_header(None);
        assert_ne!(a, b);
        assert_eq!(uuid::Uuid::parse_str(a.as_str()).map(|u| u.get_version_num()).ok(), Some(4));
    }

    #[tokio::test]
    async fn the_current_id_follows_the_call_and_carried_tasks() {
        assert_eq!(current(), None);
        let id = RequestId::parse("req-1").unwrap();
        let seen = scope(id.clone(), async {
            let inner = current();
            // A spawned task sees the id only when carried.
            let bare = tokio::spawn(async { current() }).await.unwrap();
            let carried = tokio::spawn(carry(async { current() })).await.unwrap();
            (inner, bare, carried)
        })
        .await;
        assert_eq!(seen, (Some(id.clone()), None, Some(id)));
        assert_eq!(current(), None);
    }
}
