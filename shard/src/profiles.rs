//! User profiles: a bounded recent history of events per user, kept on the
//! shard that owns the user id.

use std::collections::{HashMap, VecDeque};

use parking_lot::RwLock;
use vitrine_proto::pb;

/// Recent events of every user this shard owns.
pub struct Profiles {
    users: RwLock<HashMap<String, VecDeque<pb::Event>>>,
    max_events: usize,
}

impl Profiles {
    /// `max_events` bounds each history: recommendations weigh recent intent,
    /// and an unbounded history would let one bot grow a shard without limit.
    pub fn new(max_events: usize) -> Self {
        Self { users: RwLock::new(HashMap::new()), max_events: max_events.max(1) }
    }

    /// Appends events, keeping each history in time order and bounded.
    pub fn append(&self, events: &[pb::Event]) {
        let mut users = self.users.write();
        for e in events {
            let h = users.entry(e.user_id.clone()).or_default();
            // Events usually arrive in order; insert late ones in place.
            let at = h.iter().rposition(|x| x.timestamp_ms <= e.timestamp_ms).map_or(0, |i| i + 1);
            h.insert(at, e.clone());
            while h.len() > self.max_events {
                h.pop_front();
            }
        }
    }

    /// A user's events, oldest first.
    pub fn get(&self, user_id: &str) -> Vec<pb::Event> {
        self.users.read().get(user_id).map(|h| h.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every stored event, each user's oldest first: appending them to an
    /// empty store rebuilds this one (snapshots).
    pub fn export(&self) -> Vec<pb::Event> {
        self.users.read().values().flat_map(|h| h.iter().cloned()).collect()
    }

    /// Users with at least one event.
    pub fn len(&self) -> usize {
        self.users.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
        p.append(&[ev("u", "a", 10), ev("u", "b", 30), ev("u", "c", 20), ev("v", "x", 1)]);
        let items: Vec<String> = p.get("u").into_iter().map(|e| e.item_id).collect();
        assert_eq!(items, ["a", "c", "b"]);
        p.append(&[ev("u", "d", 40)]);
        let items: Vec<String> = p.get("u").into_iter().map(|e| e.item_id).collect();
        assert_eq!(items, ["c", "b", "d"]);
        assert_eq!(p.len(), 2);
        assert!(p.get("nobody").is_empty());
    }
}
