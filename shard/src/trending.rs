//! Trending items: what this shard's users touched lately, weighted by event
//! type and decayed exponentially with age.
//!
//! ```text
//! trending(item, now) = Σ over stored events e on item:  w(type e) · 2^(−(now − t_e) / half_life)
//! ```
//!
//! The sum runs over exactly the events the user histories hold
//! ([`crate::profiles`]): an event is added when a history takes it and
//! subtracted when the history's bound evicts it. Trending is therefore a
//! function of the stored histories alone, so replicas that hold the same
//! events agree, and a restart (snapshot + WAL replay rebuilds the histories)
//! rebuilds it exactly. Each shard sees the events of the users it owns; the
//! router sums the shards' lists into the cluster's.
//!
//! Per item the sum is kept as `(value, at)`: the sum as of time `at`, the
//! newest event seen. Adding or removing an event rescales to the later of
//! the two times, so nothing grows without bound however far apart the
//! timestamps are, and very old events underflow harmlessly to 0.

use std::collections::HashMap;

use vitrine_proto::pb;

/// Weight of an event in the trending sum: stronger intent counts more.
pub fn event_weight(kind: i32) -> f64 {
    match pb::EventType::try_from(kind) {
        Ok(pb::EventType::Purchase) => 4.0,
        Ok(pb::EventType::AddToCart) => 3.0,
        Ok(pb::EventType::Click) => 2.0,
        _ => 1.0,
    }
}

/// `2^((from − to) / half_life)`: how much a value at `from` is worth at
/// `to`. In floating point, so any two timestamps are fine.
fn decay(from_ms: i64, to_ms: i64, half_life_ms: f64) -> f64 {
    ((from_ms as f64 - to_ms as f64) / half_life_ms).exp2()
}

#[derive(Debug, Clone, Copy)]
struct Decayed {
    /// The decayed sum as of `at_ms`.
    value: f64,
    at_ms: i64,
    /// Stored events on the item; the entry goes when it reaches 0, so an
    /// item nobody touches any more costs nothing.
    events: u32,
}

/// Decayed activity per item (see the module documentation).
#[derive(Debug)]
pub struct Trending {
    half_life_ms: f64,
    items: HashMap<String, Decayed>,
}

impl Trending {
    /// `half_life`: how long until an event counts half (must be positive).
    pub fn new(half_life: std::time::Duration) -> Self {
        Self { half_life_ms: (half_life.as_millis() as f64).max(1.0), items: HashMap::new() }
    }

    fn factor(&self, from_ms: i64, to_ms: i64) -> f64 {
        decay(from_ms, to_ms, self.half_life_ms)
    }

    /// Counts a stored event.
    pub fn add(&mut self, e: &pb::Event) {
        let w = event_weight(e.r#type);
        let t = e.timestamp_ms;
        let half_life_ms = self.half_life_ms;
        let d = self.items.entry(e.item_id.clone()).or_insert(Decayed { value: 0.0, at_ms: t, events: 0 });
        if t > d.at_ms {
            d.value = d.value * decay(d.at_ms, t, half_life_ms) + w;
            d.at_ms = t;
        } else {
            d.value += w * decay(t, d.at_ms, half_life_ms);
        }
        d.events += 1;
    }

    /// Uncounts an event that a history dropped.
    pub fn remove(&mut self, e: &pb::Event) {
        let Some(d) = self.items.get(&e.item_id).copied() else { return };
        if d.events <= 1 {
            self.items.remove(&e.item_id);
            return;
        }
        let w = event_weight(e.r#type) * self.factor(e.timestamp_ms, d.at_ms).min(1.0);
        let d = Decayed { value: (d.value - w).max(0.0), events: d.events - 1, ..d };
        self.items.insert(e.item_id.clone(), d);
    }

    /// The `k` items with the highest trending score at `now_ms`, best first
    /// (ties by id). Events stamped in the future count as happening now.
    pub fn top(&self, k: usize, now_ms: i64) -> Vec<(String, f64)> {
        let mut all: Vec<(&str, f64)> = self
            .items
            .iter()
            .map(|(id, d)| (id.as_str(), d.value * self.factor(d.at_ms.min(now_ms), now_ms)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        let by_score = |a: &(&str, f64), b: &(&str, f64)| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0));
        if all.len() > k {
            all.select_nth_unstable_by(k, by_score);
            all.truncate(k);
        }
        all.sort_by(by_score);
        all.into_iter().map(|(id, v)| (id.to_string(), v)).collect()
    }

    /// Items with at least one stored event.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn ev(item: &str, kind: pb::EventType, t: i64) -> pb::Event {
        pb::Event { user_id: "u".into(), item_id: item.into(), r#type: kind as i32, timestamp_ms: t }
    }

    fn trending() -> Trending {
        Trending::new(std::time::Duration::from_millis(HOUR as u64))
    }

    fn score(t: &Trending, item: &str, now: i64) -> f64 {
        t.top(usize::MAX, now).into_iter().find(|(id, _)| id == item).map_or(0.0, |(_, v)| v)
    }

    #[test]
    fn events_decay_by_half_life_and_weigh_by_type() {
        let mut t = trending();
        t.add(&ev("a", pb::EventType::View, 0));
        t.add(&ev("b", pb::EventType::Purchase, 0));
        assert!((score(&t, "a", HOUR) - 0.5).abs() < 1e-12);
        assert!((score(&t, "a", 2 * HOUR) - 0.25).abs() < 1e-12);
        assert!((score(&t, "b", HOUR) - 2.0).abs() < 1e-12);
        // Out of order: an older event added after a newer one.
        t.add(&ev("a", pb::EventType::View, 2 * HOUR));
        t.add(&ev("a", pb::EventType::View, HOUR));
        let expected = 0.25 + 0.5 + 1.0;
        assert!((score(&t, "a", 2 * HOUR) - expected).abs() < 1e-12);
    }

    #[test]
    fn recent_activity_overtakes_old_volume() {
        let mut t = trending();
        for i in 0..10 {
            t.add(&ev("old", pb::EventType::View, i));
        }
        for i in 0..3 {
            t.add(&ev("new", pb::EventType::View, 5 * HOUR + i));
        }
        let top = t.top(2, 5 * HOUR + 10);
        assert_eq!(top[0].0, "new");
        assert_eq!(top[1].0, "old");
        // Before the new burst, the old volume led.
        assert_eq!(t.top(1, 10)[0].0, "old");
    }

    #[test]
    fn removing_every_event_forgets_the_item() {
        let mut t = trending();
        let events =
            [ev("a", pb::EventType::Click, 5), ev("a", pb::EventType::View, 9), ev("b", pb::EventType::View, 1)];
        for e in &events {
            t.add(e);
        }
        t.remove(&events[0]);
        assert!((score(&t, "a", 9) - 1.0).abs() < 1e-9, "the click is gone, the view stays");
        t.remove(&events[1]);
        assert_eq!(t.len(), 1, "a has no events left");
        assert!(t.top(10, 9).iter().all(|(id, _)| id == "b"));
    }

    #[test]
    fn order_of_additions_does_not_matter() {
        let events: Vec<pb::Event> = (0..50)
            .map(|i| {
                ev(&format!("i{}", i % 7), pb::EventType::try_from(1 + i % 4).unwrap(), (i as i64 * 7_919) % (5 * HOUR))
            })
            .collect();
        let mut one = trending();
        let mut two = trending();
        events.iter().for_each(|e| one.add(e));
        events.iter().rev().for_each(|e| two.add(e));
        let (a, b) = (one.top(7, 5 * HOUR), two.top(7, 5 * HOUR));
        assert_eq!(a.iter().map(|x| &x.0).collect::<Vec<_>>(), b.iter().map(|x| &x.0).collect::<Vec<_>>());
        for (x, y) in a.iter().zip(&b) {
            assert!((x.1 - y.1).abs() < 1e-9 * x.1.max(1.0), "{x:?} {y:?}");
        }
    }

    #[test]
    fn top_k_is_the_best_k_in_order() {
        let mut t = trending();
        for (i, item) in ["c", "a", "d", "b"].iter().enumerate() {
            for _ in 0..=i {
                t.add(&ev(item, pb::EventType::View, 0));
            }
        }
        let top: Vec<String> = t.top(2, 0).into_iter().map(|(id, _)| id).collect();
        assert_eq!(top, ["b", "d"]);
        assert!(t.top(0, 0).is_empty());
        assert_eq!(t.top(10, 0).len(), 4);
    }

    #[test]
    fn far_apart_timestamps_stay_finite() {
        let mut t = trending();
        t.add(&ev("a", pb::EventType::View, i64::MIN));
        t.add(&ev("a", pb::EventType::View, i64::MAX));
        let s = score(&t, "a", i64::MAX);
        assert!(s.is_finite() && (s - 1.0).abs() < 1e-9, "{s}");
    }
}
