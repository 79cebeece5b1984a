//! Per-queue rates over the last minute: the hub samples every queue's lifetime
//! counters every few seconds into a short ring, and a rate is the difference between
//! now and the oldest sample inside the window. Pure bookkeeping with time as an
//! argument; the hub decides when to call it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::broker::{QueueCounters, QueueSnapshot};
use crate::model::Millis;

/// How often counters are sampled.
pub(crate) const SAMPLE_EVERY_MS: Millis = 5_000;
/// The window rates are averaged over.
pub(crate) const WINDOW_MS: Millis = 60_000;
/// Below this much history a rate is reported as 0 rather than extrapolated.
const MIN_SPAN_MS: Millis = 1_000;

/// Events per second over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RateView {
    pub(crate) published: f64,
    pub(crate) delivered: f64,
    pub(crate) acked: f64,
    pub(crate) nacked: f64,
    pub(crate) expired: f64,
    pub(crate) dead_lettered: f64,
}

/// Samples of every queue's counters (13 per queue at most).
#[derive(Debug, Default)]
pub(crate) struct Rates {
    samples: HashMap<Arc<str>, VecDeque<(Millis, QueueCounters)>>,
    next_due: Millis,
    /// When the last sample was taken: a queue missing from it had zero counts then.
    last_sample: Option<Millis>,
}

impl Rates {
    /// When the next sample is due.
    pub(crate) fn next_due(&self) -> Millis {
        self.next_due
    }

    /// Records every queue's counters if a sample is due; forgets queues that are gone.
    pub(crate) fn maybe_sample(
        &mut self,
        queues: impl FnOnce() -> Vec<QueueSnapshot>,
        now: Millis,
    ) {
        if now < self.next_due {
            return;
        }
        self.next_due = now + SAMPLE_EVERY_MS;
        let queues = queues();
        self.samples
            .retain(|name, _| queues.iter().any(|q| &q.name == name));
        let previous = self.last_sample.replace(now);
        for q in queues {
            let ring = self.samples.entry(q.name.clone()).or_insert_with(|| {
                // New since the previous sample: it counted nothing then.
                previous
                    .map(|at| (at, QueueCounters::default()))
                    .into_iter()
                    .collect()
            });
            ring.push_back((now, q.counters));
            // Keep the newest sample at or before the window start as the baseline.
            while ring.len() > 1 && ring[1].0 + WINDOW_MS <= now {
                ring.pop_front();
            }
        }
    }

    /// Drops a deleted queue's history, so that a queue of the same name starts afresh.
    pub(crate) fn forget(&mut self, name: &str) {
        self.samples.remove(name);
    }

    /// Rates of `name` given its `current` counters.
    pub(crate) fn rates(&self, name: &str, current: &QueueCounters, now: Millis) -> RateView {
        let baseline = match self.samples.get(name) {
            Some(ring) => ring
                .iter()
                .find(|(t, _)| t + WINDOW_MS >= now)
                .or_else(|| ring.back())
                .copied(),
            // Appeared since the last sample, when it had counted nothing.
            None => self.last_sample.map(|at| (at, QueueCounters::default())),
        };
        let Some((at, base)) = baseline else {
            return RateView::default();
        };
        let span = now.saturating_sub(at);
        if span < MIN_SPAN_MS {
            return RateView::default();
        }
        let per_sec = |now: u64, then: u64| now.saturating_sub(then) as f64 * 1000.0 / span as f64;
        RateView {
            published: per_sec(current.published, base.published),
            delivered: per_sec(current.delivered, base.delivered),
            acked: per_sec(current.acked, base.acked),
            nacked: per_sec(current.nacked, base.nacked),
            expired: per_sec(current.expired, base.expired),
            dead_lettered: per_sec(current.dead_lettered, base.dead_lettered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::QueueConfig;

    fn snap(published: u64) -> Vec<QueueSnapshot> {
        vec![QueueSnapshot {
            name: Arc::from("q"),
            ready: 0,
            delayed: 0,
            leased: 0,
            dead: 0,
            consumers: 0,
            config: QueueConfig::default(),
            counters: QueueCounters {
                published,
                ..QueueCounters::default()
            },
        }]
    }

    fn published(r: &Rates, count: u64, now: Millis) -> f64 {
        let c = QueueCounters {
            published: count,
            ..QueueCounters::default()
        };
        r.rates("q", &c, now).published
    }

    #[test]
    fn rate_is_the_difference_over_the_last_minute() {
        let mut r = Rates::default();
        let t0 = 1_000_000;
        // 10 per second for two minutes, sampled every 5 s.
        let mut t = t0;
        while t <= t0 + 120_000 {
            r.maybe_sample(|| snap((t - t0) / 100), t);
            t += 1_000;
        }
        let now = t0 + 120_000;
        assert_eq!(published(&r, 1_200, now), 10.0);
        assert!(r.samples["q"].len() <= 14, "the ring stays short");
        // Then nothing for two minutes: the rate falls to 0.
        let later = now + 120_000;
        r.maybe_sample(|| snap(1_200), later - 61_000);
        r.maybe_sample(|| snap(1_200), later);
        assert_eq!(published(&r, 1_200, later), 0.0);
    }

    #[test]
    fn short_history_means_zero_and_new_queues_count_from_the_last_sample() {
        let mut r = Rates::default();
        assert_eq!(published(&r, 50, 10_000), 0.0, "nothing sampled yet");
        r.maybe_sample(|| snap(50), 10_000);
        assert_eq!(published(&r, 60, 10_500), 0.0, "half a second is too short");
        assert_eq!(published(&r, 60, 12_000), 5.0);
        // Deleted and recreated after that sample: it had nothing at 10 s.
        r.forget("q");
        assert_eq!(published(&r, 6, 12_000), 3.0);
        // A queue first seen by the second sample started from zero at the first.
        let mut r = Rates::default();
        r.maybe_sample(Vec::new, 10_000);
        r.maybe_sample(|| snap(50), 15_000);
        assert_eq!(published(&r, 50, 20_000), 5.0);
    }
}
