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

/// Time kept back from each shard call for the router's own merge, its reply
/// and the trip back to the client, so that the client gets partial results
/// rather than DEADLINE_EXCEEDED. A tenth of what is left, between these
/// bounds: a fixed few milliseconds was too little on a loaded 2-core host,
/// where waking the timer, merging and writing the reply can take longer and
/// the client's own timer (started before the router's) fires first.
const MIN_RESERVE: Duration = Duration::from_millis(3);
const MAX_RESERVE: Duration = Duration::from_millis(50);

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
        let left = self.remaining();
        let reserve = (left / 10).clamp(MIN_RESERVE, MAX_RESERVE);
        left.saturating_sub(reserve).max(Duration::from_millis(1))
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

    #[test]
    fn reserve_grows_with_the_budget_within_bounds() {
        let at = |ms| Deadline { at: Instant::now() + Duration::from_millis(ms) };
        let reserve = |ms| Duration::from_millis(ms) - at(ms).stage_budget();
        assert!(reserve(400) >= Duration::from_millis(39), "{:?}", reserve(400));
        assert!(reserve(20) >= MIN_RESERVE);
        assert!(reserve(5_000) <= MAX_RESERVE + Duration::from_millis(1));
        assert_eq!(at(0).stage_budget(), Duration::from_millis(1));
    }
}
