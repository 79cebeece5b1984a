//! What a metrics scrape takes from the hub: the `metrics_queue_limit` deepest queues
//! one by one and the sum of all the others, chosen in one pass over the queues with a
//! heap of `limit` entries (O(queues · log limit)), so that `/metrics` stays bounded
//! and cheap with any number of queues. Encoding is `http/exposition.rs`.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::state::Hub;
use crate::broker::{QueueCounters, QueueSnapshot};
use crate::model::{Millis, QueueConfig};
use crate::server::msg::{QueueScrape, QueueStatus};

/// The label value of the series summing the queues not exported one by one. Not a
/// valid queue name (parentheses), so it cannot clash with one.
pub(crate) const OTHER_QUEUES: &str = "(other)";

/// A queue ranked by depth, deeper first, then by name.
struct Ranked(u64, QueueSnapshot);

impl Ranked {
    fn of(s: QueueSnapshot) -> Ranked {
        Ranked(s.ready + s.delayed + s.leased + s.dead, s)
    }
}

impl Ord for Ranked {
    /// Greater = ranks higher: deeper, then the smaller name.
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .cmp(&other.0)
            .then_with(|| other.1.name.cmp(&self.1.name))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

/// Picks the `limit` highest ranked of `queues` (sorted by name) and sums the rest.
pub(crate) fn select(
    queues: impl Iterator<Item = QueueSnapshot>,
    limit: usize,
) -> (Vec<QueueSnapshot>, Option<QueueSnapshot>, u64) {
    // A min-heap of the best `limit` so far: its top is the first to give way.
    let mut best: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(limit + 1);
    let mut others: Option<QueueSnapshot> = None;
    let mut count = 0u64;
    for q in queues {
        count += 1;
        best.push(Reverse(Ranked::of(q)));
        if best.len() > limit {
            if let Some(Reverse(Ranked(_, out))) = best.pop() {
                add(others.get_or_insert_with(empty_sum), &out);
            }
        }
    }
    let mut top: Vec<QueueSnapshot> = best.into_iter().map(|Reverse(r)| r.1).collect();
    top.sort_by(|a, b| a.name.cmp(&b.name));
    debug_assert!(top.len() <= limit);
    (top, others, count)
}

fn empty_sum() -> QueueSnapshot {
    QueueSnapshot {
        name: Arc::from(OTHER_QUEUES),
        ready: 0,
        delayed: 0,
        leased: 0,
        dead: 0,
        consumers: 0,
        config: QueueConfig {
            paused: false,
            ..QueueConfig::default()
        },
        counters: QueueCounters::default(),
    }
}

/// Adds `q`'s tasks, consumers and counters to `sum`.
fn add(sum: &mut QueueSnapshot, q: &QueueSnapshot) {
    sum.ready += q.ready;
    sum.delayed += q.delayed;
    sum.leased += q.leased;
    sum.dead += q.dead;
    sum.consumers += q.consumers;
    let (s, c) = (&mut sum.counters, &q.counters);
    s.published += c.published;
    s.delivered += c.delivered;
    s.acked += c.acked;
    s.nacked += c.nacked;
    s.expired += c.expired;
    s.dead_lettered += c.dead_lettered;
    s.redelivered += c.redelivered;
    s.expired_tasks += c.expired_tasks;
}

impl Hub {
    /// The queues a scrape exports: the `limit` deepest with their rates and oldest
    /// ready task, and the others summed.
    pub(super) fn scrape(&self, limit: usize, now: Millis) -> QueueScrape {
        let (top, others, queues) = select(self.engine.queue_views(), limit);
        let top = top
            .into_iter()
            .map(|snapshot| QueueStatus {
                rates: self.rates.rates(&snapshot.name, &snapshot.counters, now),
                oldest_ready: self.engine.oldest_ready(&snapshot.name),
                snapshot,
            })
            .collect();
        QueueScrape {
            top,
            others,
            queues,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str, ready: u64, published: u64) -> QueueSnapshot {
        QueueSnapshot {
            name: Arc::from(name),
            ready,
            counters: QueueCounters {
                published,
                ..QueueCounters::default()
            },
            ..empty_sum()
        }
    }

    #[test]
    fn the_deepest_queues_are_kept_and_the_rest_summed() {
        let queues: Vec<QueueSnapshot> = (0..1_000u64)
            .map(|i| queue(&format!("q{i:04}"), i % 100, 1))
            .collect();
        let (top, others, count) = select(queues.into_iter(), 3);
        assert_eq!(count, 1_000);
        // Depth 99 is held by q0099, q0199, ...: the three smallest names win ties.
        let names: Vec<&str> = top.iter().map(|q| &*q.name).collect();
        assert_eq!(names, ["q0099", "q0199", "q0299"]);
        let others = others.expect("997 queues summed");
        assert_eq!(&*others.name, OTHER_QUEUES);
        assert_eq!(others.counters.published, 997);
        let all: u64 = (0..1_000u64).map(|i| i % 100).sum();
        assert_eq!(others.ready, all - 3 * 99);
    }

    #[test]
    fn no_sum_when_every_queue_fits_and_a_zero_limit_sums_all() {
        let few = || (0..3).map(|i| queue(&format!("q{i}"), i, 0));
        let (top, others, count) = select(few(), 10);
        assert_eq!((top.len(), others.is_none(), count), (3, true, 3));
        let (top, others, _) = select(few(), 0);
        assert!(top.is_empty());
        assert_eq!(others.map(|o| o.ready), Some(3));
    }
}
