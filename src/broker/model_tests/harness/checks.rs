//! The model test's agreement checks: after every operation the engine's counts,
//! wake-up and the store stand-in agree with the model; after a dispatch nothing
//! deliverable is left waiting; a retry follows the queue's backoff; and the final
//! drain (liveness).

use super::*;

impl Harness {
    /// Liveness: with every old connection gone, one consumer that acks everything and
    /// enough time, every task that is neither acked nor dead is delivered and acked.
    pub(in crate::broker::model_tests) fn drain(&mut self) {
        for slot in 0..SLOTS as u8 {
            self.disconnect(slot);
        }
        let conn = self.connect(0);
        for q in 0..QUEUES.len() {
            self.subscribe(conn, q as SubId + 1, q, 10_000);
        }
        let waiting: BTreeSet<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.is_pending())
            .map(|(&id, _)| id)
            .collect();
        let mut delivered = BTreeSet::new();
        // The capped queue gives at most its cap per round.
        for _ in 0..8 + waiting.len() {
            if !self.tasks.values().any(MTask::is_pending) {
                break;
            }
            // Past any delay, backoff or lease used here.
            self.now += 600_000;
            self.dispatch();
            for h in std::mem::take(&mut self.dispatched) {
                delivered.insert(h.task);
                assert_eq!(
                    self.engine
                        .ack(h.conn, h.task, h.token, Bytes::new(), self.now),
                    Ok(Mutation::Remove { id: h.task })
                );
                self.store.persist(Mutation::Remove { id: h.task }, true);
                if let Some(t) = self.tasks.get_mut(&h.task) {
                    t.state = MState::Acked;
                }
            }
            self.check_agreement();
        }
        let stuck: Vec<_> = waiting.difference(&delivered).collect();
        assert!(stuck.is_empty(), "never delivered again: {stuck:?}");
        assert!(
            self.store
                .current
                .values()
                .all(|s| s.status == TaskStatus::Dead),
            "only dead tasks are left in the store"
        );
    }

    /// After a dispatch, no queue has a ready task while one of its subscriptions has
    /// free credit, unless the queue's max_in_flight is reached.
    pub(super) fn check_work_conserving(&self) {
        for (q, name) in QUEUES.iter().enumerate() {
            let ready = self
                .tasks
                .values()
                .filter(|t| t.queue == q && t.is_ready())
                .count();
            let cap = u64::from(queue_config(q).max_in_flight);
            if ready == 0 || (cap > 0 && self.leased_in(q) >= cap) {
                continue; // nothing to give, or the queue's cap holds it back
            }
            for s in self.subs.iter().filter(|s| s.queue == q) {
                assert!(
                    self.in_flight(s.uid) >= s.prefetch,
                    "queue {name}: {ready} ready tasks left while ({}, {}) has credit",
                    s.conn,
                    s.sub
                );
            }
        }
    }

    /// The engine's counters, its wake-up and the store all agree with the model.
    pub(super) fn check_agreement(&self) {
        let snapshot = self.engine.snapshot();
        let mut leased_total = 0;
        for (q, name) in QUEUES.iter().enumerate() {
            let got = snapshot
                .iter()
                .find(|s| &*s.name == *name)
                .map(|s| (s.ready, s.delayed, s.leased, s.dead, s.consumers))
                .unwrap_or_default();
            let mut want = (0, 0, 0, 0, 0);
            for t in self.tasks.values().filter(|t| t.queue == q) {
                match t.state {
                    MState::Ready { delayed: false, .. } => want.0 += 1,
                    MState::Ready { delayed: true, .. } => want.1 += 1,
                    MState::Leased { .. } => want.2 += 1,
                    MState::Dead => want.3 += 1,
                    MState::Acked => {}
                }
            }
            want.4 = self.subs.iter().filter(|s| s.queue == q).count() as u64;
            leased_total += want.2;
            assert_eq!(
                got, want,
                "queue {name}: (ready, delayed, leased, dead, consumers)"
            );
        }
        assert_eq!(self.engine.lease_count() as u64, leased_total);
        self.check_store();
        self.check_wakeup();
    }

    pub(super) fn check_store(&self) {
        let stored = &self.store.current;
        for (id, t) in &self.tasks {
            let rec = stored.get(id);
            let Some(rec) = rec else {
                assert_eq!(t.state, MState::Acked, "task {id} is not stored");
                continue;
            };
            let (status, not_before) = match t.state {
                MState::Acked => panic!("acked task {id} is still stored"),
                MState::Dead => (TaskStatus::Dead, rec.not_before_ms),
                MState::Ready { not_before, .. } | MState::Leased { not_before, .. } => {
                    (TaskStatus::Pending, not_before)
                }
            };
            let attempts = t.attempts + u32::from(t.phantom);
            assert_eq!(
                (rec.status, rec.attempts, rec.not_before_ms, &rec.last_error),
                (status, attempts, not_before, &t.last_error),
                "stored state of task {id} (status, attempts, not_before, last_error)"
            );
        }
        let pending = self
            .tasks
            .values()
            .filter(|t| t.state != MState::Acked)
            .count();
        assert_eq!(stored.len(), pending, "no records beyond the model's");
    }

    /// The hub sleeps until `next_wakeup`: it must not be later than the first due
    /// lease deadline or delayed task.
    pub(super) fn check_wakeup(&self) {
        let due = self
            .tasks
            .values()
            .filter_map(|t| match t.state {
                MState::Leased { deadline, .. } => Some(deadline),
                MState::Ready {
                    not_before,
                    delayed: true,
                } => Some(not_before),
                _ => None,
            })
            .min();
        if let Some(due) = due {
            let wake = self.engine.next_wakeup();
            assert!(
                wake.is_some_and(|w| w <= due),
                "wake-up {wake:?} misses the event due at {due}"
            );
        }
    }
}

/// The queue's retry policy: exponential from `backoff_min_ms`, capped at
/// `backoff_max_ms`, drawn from the upper half ("equal jitter"); a zero delay means
/// "ready now" (not-before 0).
pub(super) fn check_backoff(not_before: Millis, now: Millis, attempts: u32, cfg: &QueueConfig) {
    let exp = attempts.saturating_sub(1).min(40);
    let base = cfg
        .backoff_min_ms
        .saturating_mul(1 << exp)
        .min(cfg.backoff_max_ms.max(cfg.backoff_min_ms));
    let delay = if not_before == 0 { 0 } else { not_before - now };
    assert!(
        (base / 2..=base).contains(&delay),
        "retry {attempts} after {delay} ms, outside {}..={base}",
        base / 2
    );
}
