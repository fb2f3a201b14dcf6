//! User profiles: a bounded recent history of events per user, kept on the
//! shard that owns the user id.
//!
//! Each event carries the version the router gave it, which is also its
//! identity: a history is a set of events ordered by (time, version), so an
//! event delivered twice (a retried write, a replica catching up) is stored
//! once, and replicas holding the same events keep the same newest ones.

use std::collections::{HashMap, VecDeque};

use parking_lot::RwLock;
use vitrine_proto::pb;
use xxhash_rust::xxh3::Xxh3;

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
    users: RwLock<HashMap<String, VecDeque<StoredEvent>>>,
    max_events: usize,
}

impl Profiles {
    /// `max_events` bounds each history: recommendations weigh recent intent,
    /// and an unbounded history would let one bot grow a shard without limit.
    pub fn new(max_events: usize) -> Self {
        Self { users: RwLock::new(HashMap::new()), max_events: max_events.max(1) }
    }

    /// Appends events (with `versions` parallel to them; missing ones 0),
    /// keeping each history in (time, version) order, free of repeats and
    /// bounded.
    pub fn append(&self, events: &[pb::Event], versions: &[u64]) {
        let mut users = self.users.write();
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
            h.insert(at, stored);
            while h.len() > self.max_events {
                h.pop_front();
            }
        }
    }

    /// A user's events, oldest first.
    pub fn get(&self, user_id: &str) -> Vec<pb::Event> {
        self.users.read().get(user_id).map(|h| h.iter().map(|s| s.event.clone()).collect()).unwrap_or_default()
    }

    /// A user's events with their versions, oldest first.
    pub fn get_stored(&self, user_id: &str) -> Vec<StoredEvent> {
        self.users.read().get(user_id).map(|h| h.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every stored event, each user's oldest first: appending them to an
    /// empty store rebuilds this one (snapshots).
    pub fn export(&self) -> Vec<StoredEvent> {
        self.users.read().values().flat_map(|h| h.iter().cloned()).collect()
    }

    /// Every user with a hash of their history: equal hashes mean equal
    /// histories, so a replica catching up fetches only the users that differ.
    pub fn digest(&self) -> Vec<(String, u64)> {
        self.users.read().iter().map(|(user, h)| (user.clone(), history_hash(h))).collect()
    }

    /// Users with at least one event.
    pub fn len(&self) -> usize {
        self.users.read().len()
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

    #[test]
    fn histories_are_ordered_and_bounded() {
        let p = Profiles::new(3);
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
        let one = Profiles::new(5);
        let two = Profiles::new(5);
        one.append(&events, &versions);
        // Reversed, each delivered twice.
        for i in (0..8).rev() {
            two.append(&events[i..=i], &versions[i..=i]);
            two.append(&events[i..=i], &versions[i..=i]);
        }
        assert_eq!(one.get_stored("u"), two.get_stored("u"));
        assert_eq!(one.get("u").len(), 5);
        assert_eq!(one.digest(), two.digest());
        two.append(&[ev("u", "late", 500)], &[99]);
        assert_ne!(one.digest(), two.digest());
    }
}
