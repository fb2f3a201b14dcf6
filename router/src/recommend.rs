//! The user vector behind `Recommend`: attention over the items the user
//! touched, i.e. a weighted centroid of their vectors with
//!
//! weight(event) = type_weight(event) × recency_decay^(position from newest)
//!                 × exp(target_attention × (cos(item, newest item) − 1))
//!
//! so a purchase counts more than a view, the last few items dominate
//! (shopping intent drifts within a session), and older items count more
//! when they resemble what the user is looking at now (target attention, as
//! in DIN, with the newest item standing in for the target). Liked items (`positive`) are
//! added with the purchase weight; disliked items (`negative`) push the vector
//! away as in Qdrant's average-vector strategy: u' = 2·u − mean(negative).

use vitrine_proto::pb::EventType;

/// Weights of the user-vector centroid.
#[derive(Debug, Clone)]
pub struct UserVectorParams {
    /// Multiplier per step back in time; 0.85 halves an item's weight after
    /// about four newer items.
    pub recency_decay: f32,
    pub view: f32,
    pub click: f32,
    pub add_to_cart: f32,
    pub purchase: f32,
    /// Sharpness of the similarity-to-newest term; 0 turns it off.
    pub target_attention: f32,
}

impl Default for UserVectorParams {
    fn default() -> Self {
        Self { recency_decay: 0.85, view: 1.0, click: 1.5, add_to_cart: 2.5, purchase: 3.0, target_attention: 1.0 }
    }
}

impl UserVectorParams {
    pub fn type_weight(&self, t: EventType) -> f32 {
        match t {
            EventType::Unspecified | EventType::View => self.view,
            EventType::Click => self.click,
            EventType::AddToCart => self.add_to_cart,
            EventType::Purchase => self.purchase,
        }
    }
}

/// One touched item, oldest first in the slice given to [`user_vector`].
pub struct Touch<'a> {
    pub vector: &'a [f32],
    pub event: EventType,
}

/// The user vector, or `None` when there is nothing to go on.
pub fn user_vector(
    history: &[Touch<'_>],
    positive: &[&[f32]],
    negative: &[&[f32]],
    p: &UserVectorParams,
) -> Option<Vec<f32>> {
    let dim = history.first().map(|t| t.vector.len()).or_else(|| positive.first().map(|v| v.len()))?;
    let mut u = vec![0f32; dim];
    let mut total = 0f32;
    let newest = history.last().map(|t| t.vector);
    for (age, touch) in history.iter().rev().enumerate() {
        let similarity = newest.map_or(1.0, |n| dot_product(n, touch.vector));
        let attention = (p.target_attention * (similarity - 1.0)).exp();
        let w = p.type_weight(touch.event) * p.recency_decay.powi(age as i32) * attention;
        add(&mut u, touch.vector, w);
        total += w;
    }
    for v in positive {
        add(&mut u, v, p.purchase);
        total += p.purchase;
    }
    if total <= 0.0 {
        return None;
    }
    u.iter_mut().for_each(|x| *x /= total);
    if !negative.is_empty() {
        let mut neg = vec![0f32; dim];
        for v in negative {
            add(&mut neg, v, 1.0 / negative.len() as f32);
        }
        for (x, n) in u.iter_mut().zip(&neg) {
            *x = 2.0 * *x - n;
        }
    }
    let norm = u.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return None;
    }
    u.iter_mut().for_each(|x| *x /= norm);
    Some(u)
}

fn dot_product(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn add(acc: &mut [f32], v: &[f32], w: f32) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a += w * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn recent_and_strong_events_dominate() {
        let (a, b) = ([1.0, 0.0], [0.0, 1.0]);
        // Without target attention, which would favour b's look-alikes.
        let p = UserVectorParams { target_attention: 0.0, ..Default::default() };
        // Viewed a, then b: b is newer and wins.
        let u = user_vector(
            &[Touch { vector: &a, event: EventType::View }, Touch { vector: &b, event: EventType::View }],
            &[],
            &[],
            &p,
        )
        .unwrap();
        assert!(dot(&u, &b) > dot(&u, &a));
        // Purchased a, then only viewed b: the purchase wins.
        let u = user_vector(
            &[Touch { vector: &a, event: EventType::Purchase }, Touch { vector: &b, event: EventType::View }],
            &[],
            &[],
            &p,
        )
        .unwrap();
        assert!(dot(&u, &a) > dot(&u, &b));
        assert!((dot(&u, &u) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn target_attention_favours_history_like_the_newest_item() {
        // Oldest a, then b, then newest c, which resembles a but not b.
        let (a, b, c) = ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.8, 0.0, 0.6]);
        let h = [
            Touch { vector: &a, event: EventType::View },
            Touch { vector: &b, event: EventType::View },
            Touch { vector: &c, event: EventType::View },
        ];
        let off = UserVectorParams { target_attention: 0.0, ..Default::default() };
        let on = UserVectorParams { target_attention: 3.0, ..Default::default() };
        let u_off = user_vector(&h, &[], &[], &off).unwrap();
        let u_on = user_vector(&h, &[], &[], &on).unwrap();
        assert!(dot(&u_on, &a) > dot(&u_off, &a), "a is like the newest item and gains weight");
        assert!(dot(&u_on, &b) < dot(&u_off, &b), "b is unlike it and loses weight");
    }

    #[test]
    fn negatives_push_away_and_empty_input_gives_none() {
        let (a, b) = ([1.0, 0.2], [0.2, 1.0]);
        let p = UserVectorParams::default();
        let plain = user_vector(&[], &[&a], &[], &p).unwrap();
        let pushed = user_vector(&[], &[&a], &[&b], &p).unwrap();
        assert!(dot(&pushed, &b) < dot(&plain, &b));
        assert!(user_vector(&[], &[], &[&b], &p).is_none());
    }
}
