//! How many hits to ask each shard for.
//!
//! Items are placed by a hash of their id, so the number of the global top-k
//! that live on one of `n` shards follows Binomial(k, 1/n) whatever the query
//! or filter (the hash is independent of both). Asking each shard for the
//! smallest q with P(X ≤ q) ≥ p returns the exact global top-k with
//! probability at least p per shard, which is Vespa's `topKProbability`.

/// Per-shard k for a global `k` over `shards` shards at confidence `p`.
/// Returns `k` itself when the bound saves nothing or inputs are degenerate.
pub fn per_shard_k(k: usize, shards: usize, p: f64) -> usize {
    if shards <= 1 || k <= 1 || !(0.0..1.0).contains(&p) {
        return k;
    }
    let q = 1.0 / shards as f64;
    // Walk the binomial pmf in log space to avoid underflow for large k.
    let ln_q = q.ln();
    let ln_1q = (1.0 - q).ln();
    let mut ln_binom = 0.0f64; // ln C(k, 0)
    let mut cdf = 0.0f64;
    for x in 0..=k {
        if x > 0 {
            ln_binom += ((k - x + 1) as f64).ln() - (x as f64).ln();
        }
        cdf += (ln_binom + x as f64 * ln_q + (k - x) as f64 * ln_1q).exp();
        if cdf >= p {
            return x.max(1);
        }
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_or_tiny_k_asks_for_k() {
        assert_eq!(per_shard_k(10, 1, 0.9999), 10);
        assert_eq!(per_shard_k(1, 4, 0.9999), 1);
    }

    #[test]
    fn bound_saves_for_large_k_and_is_monotone() {
        let q = per_shard_k(100, 2, 0.9999);
        assert!(q > 50 && q < 100, "{q}");
        assert!(per_shard_k(100, 4, 0.9999) < q);
        assert!(per_shard_k(100, 2, 0.999999) >= q);
        assert!(per_shard_k(1000, 8, 0.9999) < 200);
    }

    #[test]
    fn bound_holds_empirically() {
        // Place k "top" items on 3 shards by hash and count how often one
        // shard holds more than q of them.
        use xxhash_rust::xxh3::xxh3_64;
        let (k, n) = (60usize, 3usize);
        let q = per_shard_k(k, n, 0.999);
        let mut exceeded = 0;
        let trials = 5000;
        for t in 0..trials {
            let mut counts = vec![0usize; n];
            for i in 0..k {
                counts[(xxh3_64(format!("{t}-{i}").as_bytes()) % n as u64) as usize] += 1;
            }
            if counts.iter().any(|&c| c > q) {
                exceeded += 1;
            }
        }
        // Per-shard failure ≤ 0.001, so any-of-3 ≤ 0.003; allow sampling noise.
        assert!((exceeded as f64 / trials as f64) < 0.006, "exceeded {exceeded}/{trials} with q={q}");
    }
}
