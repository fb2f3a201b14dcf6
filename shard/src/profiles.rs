//! User profiles: a bounded recent history of events per user, kept on the
//! shard that owns the user id.
//!
//! Each event carries the version the router gave it, which is also its
//! identity: a history is a set of events ordered by (time, version), so an
//! event delivered twice (a retried write, a replica catching up) is stored
//! once, and replicas holding the same events keep the same newest ones.
//!
//! The trending counts ([`crate::trending`]) are kept under the same lock,
//! updated as histories take and drop events, so they always describe
//! exactly the stored events.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::RwLock;
use vitrine_proto::pb;
use xxhash_rust::xxh3::Xxh3;

use crate::trending::Trending;

/// An event as stored, with its version (0: logged before replication).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub version: u64,
    pub event: pb::Event,
}

impl StoredEvent {
    fn key(&self) -> (i64, u64) {
        (self.event.timestamp_ms, self.version)
    }
}

/// Recent events of every user this shard owns.
pub struct Profiles {
    state: RwLock<State>,
    max_events: usize,
}

struct State {
    users: HashMap<String, VecDeque<StoredEvent>>,
    trending: Trending,
}

impl Profiles {
    /// `max_events` bounds each history: recommendations weigh recent intent,
    /// and an unbounded history would let one bot grow a shard without limit
    /// (or one user dominate the trending counts). `trending_half_life`: how
    /// long until an event counts half in them.
    pub fn new(max_events: usize, trending_half_life: Duration) -> Self {
        let state = State { users: HashMap::new(), trending: Trending::new(trending_half_life) };
        Self { state: RwLock::new(state), max_events: max_events.max(1) }
    }

    /// Appends events (with `versions` parallel to them; missing ones 0),
    /// keeping each history in (time, version) order, free of repeats and
    /// bounded.
    pub fn append(&self, events: &[pb::Event], versions: &[u64]) {
        let mut state = self.state.write();
        let State { users, trending } = &mut *state;
        for (i, e) in events.iter().enumerate() {
            let stored = StoredEvent { version: versions.get(i).copied().unwrap_or(0), event: e.clone() };
            let h = users.entry(e.user_id.clone()).or_default();
            // Events usually arrive in order; insert late ones in place.
            let key = stored.key();
            let at = h.iter().rposition(|x| x.key() <= key).map_or(0, |i| i + 1);
            // A repeat sorts right after its twin (equal key); versioned
            // events are identified by their version alone.
            if at > 0 && h[at - 1].key() == key && (stored.version != 0 || h[at - 1] == stored) {
                continue;
            }
            if h.len() >= self.max_events && at == 0 {
                // Older than everything kept in a full history: it would be
                // dropped at once (and must be, for replicas to agree).
                continue;
            }
            trending.add(&stored.event);
            h.insert(at, stored);
            while h.len() > self.max_events {
                if let Some(dropped) = h.pop_front() {
                    trending.remove(&dropped.event);
                }
            }
        }
    }

    /// A user's events, oldest first.
    pub fn get(&self, user_id: &str) -> Vec<pb::Event> {
        self.state.read().users.get(user_id).map(|h| h.iter().map(|s| s.event.clone()).collect()).unwrap_or_default()
    }

    /// A user's events with their versions, oldest first.
    pub fn get_stored(&self, user_id: &str) -> Vec<StoredEvent> {
        self.state.read().users.get(user_id).map(|h| h.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every stored event, each user's oldest first: appending them to an
    /// empty store rebuilds this one (snapshots).
    pub fn export(&self) -> Vec<StoredEvent> {
        self.state.read().users.values().flat_map(|h| h.iter().cloned()).collect()
    }

    /// Every user with a hash of their history: equal hashes mean equal
    /// histories, so a replica catching up fetches only the users that differ.
    pub fn digest(&self) -> Vec<(String, u64)> {
        self.state.read().users.iter().map(|(user, h)| (user.clone(), history_hash(h))).collect()
    }

    /// Users with at least one event.
    pub fn len(&self) -> usize {
        self.state.read().users.len()
    }

    /// The `k` most trending items among the stored events at `now_ms`.
    pub fn trending(&self, k: usize, now_ms: i64) -> Vec<(String, f64)> {
        self.state.read().trending.top(k, now_ms)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn history_hash(h: &VecDeque<StoredEvent>) -> u64 {
    let mut hasher = Xxh3::new();
    for s in h {
        hasher.update(&s.version.to_le_bytes());
        hasher.update(&s.event.timestamp_ms.to_le_bytes());
        hasher.update(&s.event.r#type.to_le_bytes());
        hasher.update(&(s.event.item_id.len() as u64).to_le_bytes());
        hasher.update(s.event.item_id.as_bytes());
    }
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(user: &str, item: &str, t: i64) -> pb::Event {
        pb::Event { user_id: user.into(), item_id: item.into(), r#type: pb::EventType::View as i32, timestamp_ms: t }
    }

    fn profiles(max_events: usize) -> Profiles {
        Profiles::new(max_events, Duration::from_secs(3600))
    }

    #[test]
    fn histories_are_ordered_and_bounded() {
        let p = profiles(3);
        p.append(&[ev("u", "a", 10), ev("u", "b", 30), ev("u", "c", 20), ev("v", "x", 1)], &[]);
        let items: Vec<String> = p.get("u").into_iter().map(|e| e.item_id).collect();
        assert_eq!(items, ["a", "c", "b"]);
        p.append(&[ev("u", "d", 40)], &[]);
        let items: Vec<String> = p.get("u").into_iter().map(|e| e.item_id).collect();
        assert_eq!(items, ["c", "b", "d"]);
        assert_eq!(p.len(), 2);
        assert!(p.get("nobody").is_empty());
    }

    #[test]
    fn replicas_with_the_same_events_in_any_order_agree() {
        let events: Vec<pb::Event> = (0..8).map(|i| ev("u", &format!("i{i}"), 100 + (i % 3))).collect();
        let versions: Vec<u64> = (1..=8).collect();
        let one = profiles(5);
        let two = profiles(5);
        one.append(&events, &versions);
        // Reversed, each delivered twice.
        for i in (0..8).rev() {
            two.append(&events[i..=i], &versions[i..=i]);
            two.append(&events[i..=i], &versions[i..=i]);
        }
        assert_eq!(one.get_stored("u"), two.get_stored("u"));
        assert_eq!(one.get("u").len(), 5);
        assert_eq!(one.digest(), two.digest());
        assert_eq!(one.trending(10, 1_000), two.trending(10, 1_000), "trending follows the stored events");
        two.append(&[ev("u", "late", 500)], &[99]);
        assert_ne!(one.digest(), two.digest());
    }

    #[test]
    fn trending_counts_exactly_the_stored_events() {
        let p = profiles(2);
        p.append(&[ev("u", "a", 10), ev("u", "b", 20), ev("v", "b", 20)], &[1, 2, 3]);
        let top = p.trending(10, 20);
        assert_eq!(top[0].0, "b", "{top:?}");
        // The history bound evicts u's view of a: a leaves the counts.
        p.append(&[ev("u", "c", 30)], &[4]);
        let ids: Vec<String> = p.trending(10, 30).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["b", "c"]);
        // A repeated delivery counts once.
        let before = p.trending(10, 30);
        p.append(&[ev("u", "c", 30)], &[4]);
        let again = p.trending(10, 30);
        assert_eq!(again, before);
        // Rebuilding from the stored events (a restart) gives the same counts.
        let stored = p.export();
        let fresh = profiles(2);
        let events: Vec<pb::Event> = stored.iter().map(|s| s.event.clone()).collect();
        fresh.append(&events, &stored.iter().map(|s| s.version).collect::<Vec<_>>());
        let rebuilt = fresh.trending(10, 30);
        assert_eq!(again.len(), rebuilt.len());
        for (a, b) in again.iter().zip(&rebuilt) {
            assert!(a.0 == b.0 && (a.1 - b.1).abs() < 1e-9, "{a:?} {b:?}");
        }
    }
}
