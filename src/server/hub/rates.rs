//! Per-queue rates over the last minute: the hub samples every queue's lifetime
//! counters every few seconds into a short ring, and a rate is the difference between
//! now and the oldest sample inside the window. Pure bookkeeping with time as an
//! argument; the hub decides when to call it.
//!
//! A sampling pass walks the engine's queue table a slice ([`SAMPLE_SLICE`] slots) per
//! hub turn, so that no turn does more than a bounded amount of work whatever the
//! number of queues, and each ring records the pass that last saw it: at the end of a
//! pass, rings of queues that are gone are dropped by that mark, in one linear sweep.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::broker::QueueCounters;
use crate::model::Millis;
use crate::server::msg::RateView;

/// How often counters are sampled.
pub(crate) const SAMPLE_EVERY_MS: Millis = 5_000;
/// The window rates are averaged over.
pub(crate) const WINDOW_MS: Millis = 60_000;
/// Below this much history a rate is reported as 0 rather than extrapolated.
const MIN_SPAN_MS: Millis = 1_000;
/// Queue slots sampled per hub turn at most.
pub(crate) const SAMPLE_SLICE: usize = 4_096;

/// One queue's samples and the pass that last saw the queue.
#[derive(Debug)]
struct Ring {
    pass: u64,
    samples: VecDeque<(Millis, QueueCounters)>,
}

/// Samples of every queue's counters (13 per queue at most).
#[derive(Debug, Default)]
pub(crate) struct Rates {
    rings: HashMap<Arc<str>, Ring>,
    next_due: Millis,
    /// The pass under way (counted from 1), if any.
    pass: u64,
    /// Next queue slot the pass under way samples; `None` between passes.
    cursor: Option<usize>,
    /// When the last finished pass started: a queue it did not see had zero counts then.
    last_pass: Option<Millis>,
    /// When the pass under way started.
    pass_started: Millis,
}

impl Rates {
    /// When the next sampling work is due (now, while a pass is under way).
    pub(crate) fn next_due(&self) -> Millis {
        match self.cursor {
            Some(_) => 0,
            None => self.next_due,
        }
    }

    /// Samples up to [`SAMPLE_SLICE`] queue slots if sampling is due. `slots` is the
    /// size of the engine's queue table and `read(slot)` the name and counters of the
    /// queue living in a slot, if any. Returns how many slots were read.
    pub(crate) fn maybe_sample<'a>(
        &mut self,
        now: Millis,
        slots: usize,
        read: impl Fn(usize) -> Option<(&'a Arc<str>, QueueCounters)>,
    ) -> usize {
        let from = match self.cursor {
            Some(at) => at,
            None if now < self.next_due => return 0,
            None => {
                self.next_due = now + SAMPLE_EVERY_MS;
                self.pass += 1;
                self.pass_started = now;
                0
            }
        };
        let to = slots.min(from.saturating_add(SAMPLE_SLICE));
        let (pass, previous) = (self.pass, self.last_pass);
        for slot in from..to {
            let Some((name, counters)) = read(slot) else {
                continue;
            };
            let ring = match self.rings.get_mut(&**name) {
                Some(ring) => ring,
                None => self.rings.entry(name.clone()).or_insert_with(|| Ring {
                    pass,
                    // New since the previous pass: it counted nothing then.
                    samples: previous
                        .map(|at| (at, QueueCounters::default()))
                        .into_iter()
                        .collect(),
                }),
            };
            ring.pass = pass;
            ring.samples.push_back((now, counters));
            // Keep the newest sample at or before the window start as the baseline.
            while ring.samples.len() > 1 && ring.samples[1].0 + WINDOW_MS <= now {
                ring.samples.pop_front();
            }
            debug_assert!(ring.samples.len() <= (WINDOW_MS / SAMPLE_EVERY_MS) as usize + 2);
        }
        if to >= slots {
            // The pass is over: forget the queues it did not see (one linear sweep).
            self.rings.retain(|_, ring| ring.pass == pass);
            self.last_pass = Some(self.pass_started);
            self.cursor = None;
        } else {
            self.cursor = Some(to);
        }
        to.saturating_sub(from)
    }

    /// Drops a deleted queue's history, so that a queue of the same name starts afresh.
    pub(crate) fn forget(&mut self, name: &str) {
        self.rings.remove(name);
    }

    /// Rates of `name` given its `current` counters.
    pub(crate) fn rates(&self, name: &str, current: &QueueCounters, now: Millis) -> RateView {
        let baseline = match self.rings.get(name) {
            Some(ring) => ring
                .samples
                .iter()
                .find(|(t, _)| t + WINDOW_MS >= now)
                .or_else(|| ring.samples.back())
                .copied(),
            // Appeared since the last pass, when it had counted nothing.
            None => self.last_pass.map(|at| (at, QueueCounters::default())),
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
    use std::cell::Cell;

    /// A queue table as the engine lays it out: slots, some of them free.
    type Table = Vec<Option<(Arc<str>, QueueCounters)>>;

    fn table(published: u64) -> Table {
        vec![Some((Arc::from("q"), counted(published)))]
    }

    fn counted(published: u64) -> QueueCounters {
        QueueCounters {
            published,
            ..QueueCounters::default()
        }
    }

    /// Samples `t` until the pass started at `now` is over.
    fn sample(r: &mut Rates, t: &Table, now: Millis) {
        r.maybe_sample(now, t.len(), |i| t[i].as_ref().map(|(n, c)| (n, *c)));
        while r.cursor.is_some() {
            r.maybe_sample(now, t.len(), |i| t[i].as_ref().map(|(n, c)| (n, *c)));
        }
    }

    fn published(r: &Rates, count: u64, now: Millis) -> f64 {
        r.rates("q", &counted(count), now).published
    }

    #[test]
    fn rate_is_the_difference_over_the_last_minute() {
        let mut r = Rates::default();
        let t0 = 1_000_000;
        // 10 per second for two minutes, sampled every 5 s.
        let mut t = t0;
        while t <= t0 + 120_000 {
            sample(&mut r, &table((t - t0) / 100), t);
            t += 1_000;
        }
        let now = t0 + 120_000;
        assert_eq!(published(&r, 1_200, now), 10.0);
        assert!(r.rings["q"].samples.len() <= 14, "the ring stays short");
        // Then nothing for two minutes: the rate falls to 0.
        let later = now + 120_000;
        sample(&mut r, &table(1_200), later - 61_000);
        sample(&mut r, &table(1_200), later);
        assert_eq!(published(&r, 1_200, later), 0.0);
    }

    #[test]
    fn short_history_means_zero_and_new_queues_count_from_the_last_sample() {
        let mut r = Rates::default();
        assert_eq!(published(&r, 50, 10_000), 0.0, "nothing sampled yet");
        sample(&mut r, &table(50), 10_000);
        assert_eq!(published(&r, 60, 10_500), 0.0, "half a second is too short");
        assert_eq!(published(&r, 60, 12_000), 5.0);
        // Deleted and recreated after that sample: it had nothing at 10 s.
        r.forget("q");
        assert_eq!(published(&r, 6, 12_000), 3.0);
        // A queue first seen by the second pass started from zero at the first.
        let mut r = Rates::default();
        sample(&mut r, &Vec::new(), 10_000);
        sample(&mut r, &table(50), 15_000);
        assert_eq!(published(&r, 50, 20_000), 5.0);
    }

    /// Every turn reads a bounded slice of the table, a pass reads each slot exactly
    /// once, and queues that are gone lose their history when the pass ends, by the
    /// pass mark (no search of the table per ring).
    #[test]
    fn a_pass_reads_each_slot_once_a_slice_per_turn_and_drops_gone_queues() {
        let n = 3 * SAMPLE_SLICE + 100;
        let mut t: Table = (0..n)
            .map(|i| Some((Arc::from(format!("q{i}")), counted(i as u64))))
            .collect();
        let mut r = Rates::default();
        let reads = Cell::new(0usize);
        let mut turns = 0;
        let now = 50_000;
        loop {
            let before = reads.get();
            let read = r.maybe_sample(now, t.len(), |i| {
                reads.set(reads.get() + 1);
                t[i].as_ref().map(|(n, c)| (n, *c))
            });
            assert_eq!(read, reads.get() - before);
            assert!(read <= SAMPLE_SLICE, "one turn read {read} slots");
            turns += 1;
            if r.next_due() != 0 {
                break;
            }
        }
        assert_eq!(reads.get(), n, "each slot read once per pass");
        assert_eq!(turns, n.div_ceil(SAMPLE_SLICE));
        assert_eq!(r.rings.len(), n);
        // Nothing more until the next pass is due.
        assert_eq!(r.maybe_sample(now + 1, t.len(), |_| unreachable!()), 0);
        // Half the queues go (their slots freed); the next pass forgets them.
        for slot in t.iter_mut().step_by(2) {
            *slot = None;
        }
        sample(&mut r, &t, now + SAMPLE_EVERY_MS);
        assert_eq!(r.rings.len(), n / 2);
        assert!(r.rings.values().all(|ring| ring.samples.len() == 2));
        assert!(!r.rings.contains_key("q0") && r.rings.contains_key("q1"));
    }
}
