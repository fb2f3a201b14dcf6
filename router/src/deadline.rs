//! Request deadlines: read from the client's `grpc-timeout`, shrunk at each
//! stage, and passed on to shards so nobody works on an answer nobody waits for.

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use vitrine_proto::timeout::parse_grpc_timeout;

/// When the answer is due.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
}

/// Time kept back from each shard call for the router's own merge and reply,
/// so that the client gets partial results rather than DEADLINE_EXCEEDED.
const MERGE_RESERVE: Duration = Duration::from_millis(3);

impl Deadline {
    /// The client's deadline, or `default` when it sent none. A client
    /// deadline longer than `max` is capped: a forgotten timeout should not
    /// tie up shard work for minutes.
    pub fn from_metadata(md: &MetadataMap, default: Duration, max: Duration) -> Self {
        let budget = md
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(default)
            .min(max);
        Self { at: Instant::now() + budget }
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Budget for one downstream stage: what is left minus the reserve for
    /// the stages after it. Never zero, so a call still fails fast with a
    /// timeout instead of being skipped silently.
    pub fn stage_budget(&self) -> Duration {
        self.remaining().saturating_sub(MERGE_RESERVE).max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_deadline_is_capped_and_defaulted() {
        let mut md = MetadataMap::new();
        let d = Deadline::from_metadata(&md, Duration::from_millis(500), Duration::from_secs(5));
        assert!(d.remaining() <= Duration::from_millis(500) && d.remaining() > Duration::from_millis(400));
        md.insert("grpc-timeout", "100S".parse().unwrap());
        let d = Deadline::from_metadata(&md, Duration::from_millis(500), Duration::from_secs(5));
        assert!(d.remaining() <= Duration::from_secs(5));
        assert!(d.stage_budget() < d.remaining());
    }
}
