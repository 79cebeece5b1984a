//! `Histogram`: fixed buckets of atomic counters, cheap enough for hot paths (two
//! relaxed adds per observation, no lock, no allocation). The store writer and the
//! server observe into it; `server/http/exposition.rs` exports it to Prometheus. Nothing here
//! knows about Prometheus or about what is measured.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A duration in whole microseconds, the unit every latency histogram and time
/// counter here takes (saturating; no duration in a broker's life reaches it).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Bucket upper bounds for latencies, in microseconds (50 µs .. 10 s).
pub const LATENCY_MICROS: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// Bucket upper bounds for batch sizes (1 .. 16384, powers of two).
pub const BATCH_SIZES: &[u64] = &[
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384,
];

/// A histogram over `u64` observations with fixed, inclusive upper bounds and an
/// implicit `+Inf` bucket.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One counter per bound, plus `+Inf`; not cumulative.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`], with cumulative bucket counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations <= bound)` for each finite bound.
    pub buckets: Vec<(u64, u64)>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the observed values.
    pub sum: u64,
}

impl Histogram {
    /// An empty histogram with these ascending upper bounds.
    pub fn new(bounds: &'static [u64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "ascending bounds");
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    /// Reads every counter. The count is the sum of the buckets, so the snapshot is
    /// self-consistent even while other threads observe.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, counter) in self.bounds.iter().zip(self.buckets.iter()) {
            cumulative += counter.load(Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.buckets[self.bounds.len()].load(Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum: self.sum.load(Relaxed),
        }
    }
}

impl HistogramSnapshot {
    /// The upper bound of the bucket that holds the `q` quantile (0 < q <= 1): an
    /// upper estimate. `None` without observations or when it lies past the last
    /// bound.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        self.buckets
            .iter()
            .find(|&&(_, below)| below >= rank)
            .map(|&(bound, _)| bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        static BOUNDS: &[u64] = &[1, 10, 100];
        let h = Histogram::new(BOUNDS);
        assert_eq!(h.snapshot().quantile(0.5), None, "no observations");
        for v in [1, 5, 5, 50, 50, 50, 50, 50, 50, 5_000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.quantile(0.1), Some(1));
        assert_eq!(s.quantile(0.3), Some(10));
        assert_eq!(s.quantile(0.5), Some(100));
        assert_eq!(s.quantile(0.99), None, "past the last bound");
    }

    #[test]
    fn buckets_are_inclusive_and_cumulative() {
        static BOUNDS: &[u64] = &[1, 10, 100];
        let h = Histogram::new(BOUNDS);
        for v in [0, 1, 2, 10, 11, 1_000] {
            h.observe(v);
        }
        assert_eq!(
            h.snapshot(),
            HistogramSnapshot {
                buckets: vec![(1, 2), (10, 4), (100, 5)],
                count: 6,
                sum: 1_024,
            }
        );
    }
}
