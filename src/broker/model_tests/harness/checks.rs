//! The model test's agreement checks: after every operation the engine's counts,
//! wake-up, schedules and the store stand-in agree with the model; after a dispatch
//! nothing deliverable is left waiting (within the in-flight cap and the rate limit);
//! no window of time sees more deliveries than the rate limit allows; a retry follows
//! the queue's backoff; and the final drain (liveness).

use super::*;

impl Harness {
    /// Liveness: with every old connection gone, one consumer that acks everything and
    /// enough time, every task that is neither acked nor dead is delivered and acked.
    pub(in crate::broker::model_tests) fn drain(&mut self) {
        self.complete_fires();
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
        // The capped queue gives at most its cap per round, the rate-limited one its
        // burst; a task with an expiry expires in the first round.
        for _ in 0..8 + waiting.len() {
            if !self.tasks.values().any(MTask::is_pending) {
                break;
            }
            // Past any delay, backoff or lease used here.
            self.now += 600_000;
            self.dispatch(true);
            for h in std::mem::take(&mut self.dispatched) {
                delivered.insert(h.task);
                assert_eq!(
                    self.engine
                        .ack(h.conn, h.task, h.token, Bytes::new(), self.now)
                        .map(|a| a.change),
                    Ok(Mutation::Remove { id: h.task })
                );
                self.store.persist(Mutation::Remove { id: h.task }, true);
                if let Some(t) = self.tasks.get_mut(&h.task) {
                    t.state = MState::Acked;
                }
            }
            self.check_agreement();
        }
        let stuck: Vec<_> = waiting
            .difference(&delivered)
            .filter(|id| self.tasks[id].last_error.as_deref() != Some(REASON_EXPIRED))
            .filter(|id| self.tasks[id].state != MState::Dropped)
            .collect();
        assert!(stuck.is_empty(), "never delivered again: {stuck:?}");
        assert!(
            self.store
                .current
                .tasks
                .values()
                .all(|s| s.status == TaskStatus::Dead),
            "only dead tasks are left in the store"
        );
    }

    /// After a dispatch, no queue has a ready task while one of its subscriptions has
    /// free credit, unless the queue's max_in_flight is reached or its rate limit has
    /// no delivery to give now. The rate-limited queue is woken by a tick, so it is
    /// checked only after a `ticked` dispatch.
    pub(super) fn check_work_conserving(&self, ticked: bool) {
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
            if queue_config(q).rate_limit > 0 && (!ticked || self.bucket_milli(q) < 1_000) {
                continue; // no token
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

    /// The rate limit, after a delivery of queue `q` now: in every window of time
    /// that starts at a delivery, the queue delivered at most `burst + rate x
    /// elapsed`.
    pub(super) fn check_rate_windows(&mut self, q: usize) {
        let cfg = queue_config(q);
        if cfg.rate_limit == 0 {
            return;
        }
        let now = self.now;
        let times = &mut self.delivered_at[q];
        times.push(now);
        let (burst, rate) = (u64::from(cfg.effective_burst()), u64::from(cfg.rate_limit));
        for (k, &start) in times.iter().enumerate() {
            let count = (times.len() - k) as u64;
            let allowed = burst + rate * (now - start) / 1_000;
            assert!(
                count <= allowed,
                "queue {}: {count} deliveries in [{start}, {now}], allowed {allowed}",
                QUEUES[q]
            );
        }
    }

    /// What the rate limit lets queue `q` deliver now, in thousandths of a delivery:
    /// a full bucket holds `burst`, it earns `rate` per second, and each delivery
    /// takes one; the bucket after the deliveries so far is the least of what each
    /// window starting at a delivery leaves.
    fn bucket_milli(&self, q: usize) -> i64 {
        let cfg = queue_config(q);
        let burst = i64::from(cfg.effective_burst()) * 1_000;
        let rate = i64::from(cfg.rate_limit);
        let times = &self.delivered_at[q];
        let now = self.now as i64;
        times
            .iter()
            .enumerate()
            .map(|(k, &start)| {
                let count = (times.len() - k) as i64;
                burst + rate * (now - start as i64) - 1_000 * count
            })
            .fold(burst, i64::min)
    }

    /// When the rate limit gives queue `q` its next delivery (see `bucket_milli`).
    fn next_token_at(&self, q: usize) -> Millis {
        let cfg = queue_config(q);
        let burst = u64::from(cfg.effective_burst()) * 1_000;
        let rate = u64::from(cfg.rate_limit);
        let times = &self.delivered_at[q];
        let mut at = self.now;
        for (k, &start) in times.iter().enumerate() {
            let need = 1_000 * ((times.len() - k) as u64 + 1);
            at = at.max(start + need.saturating_sub(burst).div_ceil(rate));
        }
        at
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
                    MState::Acked | MState::Dropped | MState::Submitted => {}
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
        self.check_schedules();
    }

    pub(super) fn check_store(&self) {
        let stored = &self.store.current.tasks;
        for (id, t) in &self.tasks {
            let rec = stored.get(id);
            let Some(rec) = rec else {
                assert!(t.is_gone(), "task {id} is not stored: {t:?}");
                continue;
            };
            let (status, not_before) = match t.state {
                MState::Acked | MState::Dropped => panic!("task {id} is still stored: {t:?}"),
                MState::Submitted => (TaskStatus::Pending, 0),
                MState::Dead => (TaskStatus::Dead, rec.not_before_ms),
                MState::Ready { not_before, .. } | MState::Leased { not_before, .. } => {
                    (TaskStatus::Pending, not_before)
                }
            };
            let attempts =
                t.attempts + u32::from(t.phantom) - u32::from(t.unwritten_since.is_some());
            assert_eq!(
                (rec.status, rec.attempts, rec.not_before_ms, &rec.last_error),
                (status, attempts, not_before, &t.last_error),
                "stored state of task {id} (status, attempts, not_before, last_error)"
            );
            assert_eq!(rec.expires_ms, t.expires_ms, "task {id}'s stored expiry");
        }
        let pending = self.tasks.values().filter(|t| !t.is_gone()).count();
        assert_eq!(stored.len(), pending, "no records beyond the model's");
    }

    /// The hub sleeps until `next_wakeup` when no queue needs a dispatch: it must not
    /// be later than the first due lease deadline, delayed task, expiry, or (for a
    /// rate-limited queue with work and credit) next token.
    pub(super) fn check_wakeup(&self) {
        let tasks = self.tasks.values().filter_map(|t| match t.state {
            MState::Leased { deadline, .. } => Some(
                t.unwritten_since
                    .map_or(deadline, |d| deadline.min(d + COUNT_AFTER_MS)),
            ),
            MState::Ready {
                not_before,
                delayed: true,
            } if t.expiry > 0 => Some(not_before.min(t.expiry)),
            MState::Ready {
                not_before,
                delayed: true,
            } => Some(not_before),
            MState::Ready { .. } if t.expiry > 0 => Some(t.expiry),
            _ => None,
        });
        let throttled = (0..QUEUES.len()).filter_map(|q| {
            let waiting = queue_config(q).rate_limit > 0
                && !self.engine.needs_dispatch()
                && self.tasks.values().any(|t| t.queue == q && t.is_ready())
                && self
                    .subs
                    .iter()
                    .any(|s| s.queue == q && self.in_flight(s.uid) < s.prefetch);
            waiting.then(|| self.next_token_at(q))
        });
        let due = tasks.chain(throttled).min();
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
