//! Request deadlines: read from the client's `grpc-timeout`, shrunk at each
//! stage, and passed on to shards so nobody works on an answer nobody waits for.

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

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

    pub fn after(d: Duration) -> Self {
        Self { at: Instant::now() + d }
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

/// Parses the gRPC wire format `<digits><unit>` with unit H, M, S, m, u, n.
pub fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wire_format() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None, "at most 8 digits");
    }

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
