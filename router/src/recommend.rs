//! The user vector behind `Recommend`: a weighted centroid of the vectors of
//! items the user touched.
//!
//! weight(event) = type_weight(event) × recency_decay^(position from newest)
//!
//! so a purchase counts more than a view, and the last few items dominate
//! (shopping intent drifts within a session). Liked items (`positive`) are
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
}

impl Default for UserVectorParams {
    fn default() -> Self {
        Self { recency_decay: 0.85, view: 1.0, click: 1.5, add_to_cart: 2.5, purchase: 3.0 }
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
    for (age, touch) in history.iter().rev().enumerate() {
        let w = p.type_weight(touch.event) * p.recency_decay.powi(age as i32);
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
        let p = UserVectorParams::default();
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
    fn negatives_push_away_and_empty_input_gives_none() {
        let (a, b) = ([1.0, 0.2], [0.2, 1.0]);
        let p = UserVectorParams::default();
        let plain = user_vector(&[], &[&a], &[], &p).unwrap();
        let pushed = user_vector(&[], &[&a], &[&b], &p).unwrap();
        assert!(dot(&pushed, &b) < dot(&plain, &b));
        assert!(user_vector(&[], &[], &[&b], &p).is_none());
    }
}
