//! One queue's in-memory state (`Queue`): its ready heap, counts, dead set,
//! subscriptions and the token bucket of its rate limit; and a lease (`Lease`). Plain
//! data with small helpers; the decisions that use them are in `engine.rs`,
//! `dispatch.rs`, `settle.rs` and `expiry.rs`.

use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use super::engine::{ConnId, Entry, QueueCounters, SubId};
use crate::model::{IdSet, Millis, QueueConfig, TaskId};

pub(super) type QueueIdx = u32;

/// Thousandths of a delivery per token: the bucket counts in these so that a rate of
/// N per second refills exactly N per millisecond.
const MILLI: u64 = 1_000;

#[derive(Debug)]
pub(super) struct SubSlot {
    /// Unique per subscription instance: a client may reuse a subscription id after
    /// unsubscribing, and the old instance's leases must not free the new one's credit.
    pub(super) uid: u64,
    pub(super) conn: ConnId,
    pub(super) sub: SubId,
    pub(super) prefetch: u32,
    pub(super) in_flight: u32,
    /// Its connection reads too slowly: no deliveries until it catches up.
    pub(super) paused: bool,
}

/// The rate limit's token bucket, in thousandths of a delivery. It starts full (one
/// burst) when the queue gets its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Bucket {
    milli: u64,
    at: Millis,
    primed: bool,
}

impl Bucket {
    /// Adds what `rate` per second earned since the last refill, up to `burst`.
    pub(super) fn refill(&mut self, rate: u32, burst: u32, now: Millis) {
        let cap = u64::from(burst) * MILLI;
        if !self.primed {
            *self = Bucket {
                milli: cap,
                at: now,
                primed: true,
            };
            return;
        }
        let earned = now.saturating_sub(self.at).saturating_mul(u64::from(rate));
        self.milli = self.milli.saturating_add(earned).min(cap);
        self.at = self.at.max(now);
    }

    /// True when a delivery may go now.
    pub(super) fn has_token(&self) -> bool {
        self.milli >= MILLI
    }

    /// Takes one delivery's token if there is one.
    pub(super) fn take(&mut self) -> bool {
        if self.milli >= MILLI {
            self.milli -= MILLI;
            true
        } else {
            false
        }
    }

    /// When the next whole token will be there, at `rate` per second.
    pub(super) fn next_token_at(&self, rate: u32) -> Millis {
        let missing = MILLI.saturating_sub(self.milli);
        self.at + missing.div_ceil(u64::from(rate.max(1)))
    }
}

#[derive(Debug)]
pub(super) struct Queue {
    pub(super) name: Arc<str>,
    pub(super) config: QueueConfig,
    /// Ready tasks, plus entries of tasks that expired while ready (`expired_ready`),
    /// which are skipped when popped: removing from the middle of a heap is O(n).
    pub(super) ready: BinaryHeap<Entry>,
    /// Ids whose entry in `ready` is dead already (expired before their first delivery).
    pub(super) expired_ready: IdSet<TaskId>,
    pub(super) delayed: u64,
    pub(super) leased: u64,
    /// The dead set, oldest first: kept in memory (id and entry, about 40 bytes per
    /// dead task) so that peek, redrive and purge never scan the store.
    pub(super) dead: BTreeMap<TaskId, Entry>,
    pub(super) subs: Vec<SubSlot>,
    /// Index in `subs` where the next tie-breaking scan starts (round-robin).
    pub(super) rr: usize,
    pub(super) dirty: bool,
    pub(super) counters: QueueCounters,
    /// A destructive admin change of this queue is in flight: nothing is dispatched.
    pub(super) held: bool,
    /// The rate limit's tokens (unused without a limit).
    pub(super) bucket: Bucket,
}

impl Queue {
    pub(super) fn new(name: Arc<str>, config: QueueConfig) -> Queue {
        Queue {
            name,
            config,
            ready: BinaryHeap::new(),
            expired_ready: IdSet::default(),
            delayed: 0,
            leased: 0,
            dead: BTreeMap::new(),
            subs: Vec::new(),
            rr: 0,
            dirty: false,
            counters: QueueCounters::default(),
            held: false,
            bucket: Bucket::default(),
        }
    }

    /// Installs a configuration; a changed rate limit starts with a full bucket.
    pub(super) fn set_config(&mut self, config: QueueConfig) {
        let rate_changed = (config.rate_limit, config.effective_burst())
            != (self.config.rate_limit, self.config.effective_burst());
        if rate_changed {
            self.bucket = Bucket::default();
        }
        self.config = config;
    }

    /// Ready tasks (not counting entries of expired ones).
    pub(super) fn ready_len(&self) -> u64 {
        debug_assert!(self.ready.len() >= self.expired_ready.len());
        (self.ready.len() - self.expired_ready.len()) as u64
    }

    /// The ready tasks, in no order.
    pub(super) fn ready_iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        let skip = &self.expired_ready;
        self.ready
            .iter()
            .filter(move |e| skip.is_empty() || !skip.contains(&e.id))
    }

    /// The next ready task in delivery order, skipping expired entries.
    pub(super) fn pop_ready(&mut self) -> Option<Entry> {
        loop {
            let entry = self.ready.pop()?;
            if self.expired_ready.is_empty() || !self.expired_ready.remove(&entry.id) {
                return Some(entry);
            }
        }
    }

    /// Makes `entry` ready. A task redriven after it expired while ready still has
    /// its old entry in the heap: that entry is live again instead of a second one.
    pub(super) fn push_ready(&mut self, entry: Entry) {
        if !self.expired_ready.is_empty() && self.expired_ready.remove(&entry.id) {
            return;
        }
        self.ready.push(entry);
    }

    pub(super) fn effective_max_attempts(&self, entry: &Entry) -> u32 {
        if entry.max_attempts > 0 {
            entry.max_attempts
        } else {
            self.config.max_attempts
        }
    }

    /// Least in-flight subscription with free credit; ties go round-robin from `rr`.
    pub(super) fn pick_subscriber(&mut self) -> Option<usize> {
        let n = self.subs.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.rr + k) % n;
            let s = &self.subs[i];
            if s.in_flight >= s.prefetch || s.paused {
                continue;
            }
            match best {
                Some(b) if self.subs[b].in_flight <= s.in_flight => {}
                _ => best = Some(i),
            }
        }
        if let Some(i) = best {
            self.rr = (i + 1) % n;
        }
        best
    }

    pub(super) fn release_credit(&mut self, slot: u64) {
        if let Some(s) = self.subs.iter_mut().find(|s| s.uid == slot) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) token: u64,
    pub(super) deadline_ms: Millis,
    pub(super) conn: ConnId,
    /// The subscription id it was delivered to (for display: peek shows the holder).
    pub(super) sub: SubId,
    /// `SubSlot::uid` of the subscription instance it was delivered to (credit is
    /// returned by this, since a client may reuse a subscription id).
    pub(super) slot: u64,
    pub(super) queue: QueueIdx,
    pub(super) entry: Entry,
    /// The expiry this first delivery lifted (0 = none): a delivery given back unseen
    /// (released, or never sent) brings it back.
    pub(super) expires_ms: Millis,
    /// The store holds this delivery's attempt count (`entry.attempts`): written
    /// once the lease was open for `attempt_write_after_ms` (`Engine::tick`).
    pub(super) attempt_written: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_starts_full_refills_at_its_rate_and_caps_at_its_burst() {
        let mut b = Bucket::default();
        b.refill(10, 3, 1_000);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take(), "burst of 3");
        // 10 per second: one token per 100 ms.
        assert_eq!(b.next_token_at(10), 1_100);
        b.refill(10, 3, 1_099);
        assert!(!b.take());
        b.refill(10, 3, 1_100);
        assert!(b.take());
        b.refill(10, 3, 60_000);
        assert!(b.take() && b.take() && b.take() && !b.take(), "capped at 3");
        // Time going backwards earns nothing.
        b.refill(10, 3, 10);
        assert!(!b.take());
    }
}
