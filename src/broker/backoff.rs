//! Retry backoff: exponential growth from the queue's minimum to its cap, with "equal
//! jitter" (half fixed, half random) so that retries of a failed batch spread out.
//! No state beyond the random source the caller passes.

use rand::Rng;

/// Delay before retry number `attempts` (1 = after the first failed delivery).
///
/// The un-jittered delay is `min_ms * 2^(attempts-1)`, capped at `max_ms`; the result
/// is uniformly drawn from `[d/2, d]`, so it is never longer than the cap and never
/// shorter than half the un-jittered delay.
pub fn retry_delay_ms(attempts: u32, min_ms: u64, max_ms: u64, rng: &mut impl Rng) -> u64 {
    let exp = attempts.saturating_sub(1).min(40);
    let base = min_ms.saturating_mul(1u64 << exp).min(max_ms.max(min_ms));
    if base == 0 {
        return 0;
    }
    let half = base / 2;
    half + rng.random_range(0..=base - half)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn grows_exponentially_within_jitter_bounds_and_caps() {
        let mut rng = SmallRng::seed_from_u64(7);
        for attempts in 1..=20u32 {
            let base = (100u64 << (attempts - 1)).min(10_000);
            for _ in 0..200 {
                let d = retry_delay_ms(attempts, 100, 10_000, &mut rng);
                assert!(
                    d >= base / 2 && d <= base,
                    "attempt {attempts}: {d} vs {base}"
                );
            }
        }
    }

    #[test]
    fn jitter_actually_varies() {
        let mut rng = SmallRng::seed_from_u64(1);
        let draws: std::collections::HashSet<u64> = (0..50)
            .map(|_| retry_delay_ms(3, 1000, 60_000, &mut rng))
            .collect();
        assert!(draws.len() > 10);
    }

    #[test]
    fn zero_minimum_means_immediate_retry() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(retry_delay_ms(5, 0, 0, &mut rng), 0);
    }
}
