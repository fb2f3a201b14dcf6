//! Versions of writes: a hybrid logical clock per router.
//!
//! Every write gets versions from here before it is sent to the replicas of
//! its shard; replicas keep the highest version per id (and a user's events
//! as a set keyed by version), so the order in which writes reach a replica
//! does not matter (shard::replica). A version is
//!
//! `milliseconds since the epoch (42 bits) | counter (10 bits) | router (12 bits)`
//!
//! The millisecond part follows the wall clock but never goes back, and the
//! counter orders writes within a millisecond (it borrows from the next
//! millisecond after 1,024), so one router's versions strictly increase.
//! The router part keeps versions of different routers apart. Across
//! routers the order is that of their clocks: two writes of one id through
//! two routers within their clock skew may be ordered either way (last
//! writer wins, as in Cassandra), which docs/RELIABILITY.md states.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const ROUTER_BITS: u32 = 12;
const COUNTER_BITS: u32 = 10;

/// Hands out versions; cheap to share (one atomic).
#[derive(Debug)]
pub struct VersionClock {
    /// The last logical time handed out: `ms << COUNTER_BITS | counter`.
    last: AtomicU64,
    router: u64,
}

impl VersionClock {
    /// A clock for router number `router` (only the low 12 bits are used).
    pub fn new(router: u16) -> Self {
        Self { last: AtomicU64::new(0), router: u64::from(router) & ((1 << ROUTER_BITS) - 1) }
    }

    /// Reserves `n` consecutive versions; returns them in increasing order.
    pub fn reserve(&self, n: usize) -> Vec<u64> {
        let n = n.max(1) as u64;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let floor = now << COUNTER_BITS;
        let mut cur = self.last.load(Ordering::Relaxed);
        let start = loop {
            let start = floor.max(cur + 1);
            match self.last.compare_exchange_weak(cur, start + n - 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break start,
                Err(seen) => cur = seen,
            }
        };
        (start..start + n).map(|logical| (logical << ROUTER_BITS) | self.router).collect()
    }

    /// The router number in this clock's versions.
    pub fn router(&self) -> u16 {
        self.router as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_strictly_increase_and_carry_the_router() {
        let clock = VersionClock::new(0x0abc);
        let mut last = 0;
        for n in [1, 5, 2000, 1] {
            let v = clock.reserve(n);
            assert_eq!(v.len(), n);
            for x in v {
                assert!(x > last, "{x} after {last}");
                assert_eq!(x & 0xfff, 0xabc);
                last = x;
            }
        }
        // Milliseconds since the epoch sit in the top 42 bits.
        let ms = last >> (ROUTER_BITS + COUNTER_BITS);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(ms <= now + 10 && ms + 60_000 > now, "{ms} vs {now}");
    }

    #[test]
    fn concurrent_reservations_never_overlap() {
        let clock = std::sync::Arc::new(VersionClock::new(1));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = std::sync::Arc::clone(&clock);
                std::thread::spawn(move || (0..500).flat_map(|_| c.reserve(3)).collect::<Vec<u64>>())
            })
            .collect();
        let mut all: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
