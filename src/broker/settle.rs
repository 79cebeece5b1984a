//! Settlement: ack, nack, release of an unseen delivery, extend, undeliverable
//! deliveries, disconnects, and the retry-or-dead decision they share. Lease expiry
//! (`Engine::tick`) uses the same decision.

use std::cmp::Reverse;

use bytes::Bytes;

use super::backoff::retry_delay_ms;
use super::engine::{
    attempts_patch, dead_patch, Acked, ConnId, Effect, Engine, EngineError, Entry, NackMode,
    REASON_DISCONNECTED, REASON_NACKED,
};
use super::queue::{Lease, QueueIdx};
use crate::model::{Millis, Mutation, StatePatch, TaskId};

impl Engine {
    pub(super) fn take_lease(
        &mut self,
        conn: ConnId,
        task: TaskId,
        token: u64,
    ) -> Result<Lease, EngineError> {
        match self.leases.get(&task) {
            Some(l) if l.token == token && l.conn == conn => {}
            _ => return Err(EngineError::LeaseExpired { task }),
        }
        let lease = self
            .leases
            .remove(&task)
            .ok_or(EngineError::LeaseExpired { task })?;
        let q = &mut self.queues[lease.queue as usize];
        q.leased = q.leased.saturating_sub(1);
        q.release_credit(lease.slot);
        self.mark_dirty(lease.queue);
        Ok(lease)
    }

    /// Settles a lease as done, with the ack's `result` payload (possibly empty). The
    /// returned mutation must be durable before the ack is confirmed to the client:
    /// `Succeed` (the store keeps a succeeded record for the queue's result TTL), or
    /// `Remove` when the queue keeps no record of this ack: it keeps no results
    /// (`result_ttl_ms` 0), or the ack carries no result and the queue does not
    /// `keep_acked`. A kept record keeps the attempt count: when the store does not
    /// hold the delivery's yet, it goes first (`Acked::attempt`).
    pub fn ack(
        &mut self,
        conn: ConnId,
        task: TaskId,
        token: u64,
        result: Bytes,
        now: Millis,
    ) -> Result<Acked, EngineError> {
        let lease = self.take_lease(conn, task, token)?;
        let q = &mut self.queues[lease.queue as usize];
        q.counters.acked += 1;
        if q.config.result_ttl_ms == 0 || (result.is_empty() && !q.config.keep_acked) {
            return Ok(Acked {
                attempt: None,
                change: Mutation::Remove { id: task },
                attempts: lease.entry.attempts,
            });
        }
        let attempt =
            (!lease.attempt_written).then(|| attempts_patch(task, lease.entry.attempts, now));
        Ok(Acked {
            attempt,
            change: Mutation::Succeed {
                id: task,
                result,
                updated_ms: now,
            },
            attempts: lease.entry.attempts,
        })
    }

    /// Settles a lease as failed: retry (after backoff or a given delay) or dead.
    pub fn nack(
        &mut self,
        conn: ConnId,
        task: TaskId,
        token: u64,
        mode: NackMode,
        reason: &str,
        now: Millis,
    ) -> Result<Mutation, EngineError> {
        let lease = self.take_lease(conn, task, token)?;
        self.queues[lease.queue as usize].counters.nacked += 1;
        let reason = if reason.is_empty() {
            REASON_NACKED
        } else {
            reason
        };
        Ok(self.retry_or_bury(lease.queue, lease.entry, mode, reason, now))
    }

    /// Gives back a delivery its consumer never started on: the task is ready again at
    /// once, the attempt counted at delivery is undone, and a first delivery's expiry
    /// applies again (the task is still not started). The returned mutation (the
    /// attempt count as it was before this delivery) must be durable before the
    /// release is confirmed; until then the store holds the higher count, which only
    /// errs on the safe side.
    pub fn release_unseen(
        &mut self,
        conn: ConnId,
        task: TaskId,
        token: u64,
        now: Millis,
    ) -> Result<Mutation, EngineError> {
        let mut lease = self.take_lease(conn, task, token)?;
        debug_assert!(
            lease.entry.attempts > 0,
            "a leased task was delivered at least once"
        );
        lease.entry.attempts = lease.entry.attempts.saturating_sub(1);
        let attempts = lease.entry.attempts;
        self.watch_expiry(lease.queue, lease.entry, lease.expires_ms);
        self.enqueue(lease.queue, lease.entry, 0, now);
        Ok(attempts_patch(task, attempts, now))
    }

    /// Pushes a lease's deadline to `now + extend_ms` (capped). Returns the new deadline.
    pub fn extend(
        &mut self,
        conn: ConnId,
        task: TaskId,
        token: u64,
        extend_ms: u64,
        now: Millis,
    ) -> Result<Millis, EngineError> {
        let max = self.config.max_lease_ms;
        match self.leases.get_mut(&task) {
            Some(l) if l.token == token && l.conn == conn && l.deadline_ms > now => {
                l.deadline_ms = now.saturating_add(extend_ms.min(max));
                let deadline = l.deadline_ms;
                self.deadlines.push(Reverse((deadline, task, token)));
                Ok(deadline)
            }
            _ => Err(EngineError::LeaseExpired { task }),
        }
    }

    /// Drops a lease whose delivery could not be sent (its task vanished or its body
    /// could not be read). With `requeue`, the task goes back to ready, and the
    /// delivery that never left does not count as an attempt (counting it would let
    /// the next delivery exceed `max_attempts`). The store may keep the higher count
    /// until the next delivery persists the right one; that only errs on the safe side.
    pub fn undeliverable(
        &mut self,
        conn: ConnId,
        task: TaskId,
        token: u64,
        requeue: bool,
        now: Millis,
    ) {
        if let Ok(mut lease) = self.take_lease(conn, task, token) {
            if requeue {
                lease.entry.attempts = lease.entry.attempts.saturating_sub(1);
                self.watch_expiry(lease.queue, lease.entry, lease.expires_ms);
                self.enqueue(lease.queue, lease.entry, 0, now);
            }
        }
    }

    /// A connection closed: its subscriptions end and its leases return to ready now
    /// (or to the dead set if that was their last attempt).
    pub fn disconnect(&mut self, conn: ConnId, now: Millis, out: &mut Vec<Effect>) {
        self.paused_conns.remove(&conn);
        self.unwritten.remove(&conn);
        if let Some(subs) = self.conn_subs.remove(&conn) {
            for (idx, sub) in subs {
                self.remove_slot(idx, conn, sub);
            }
        }
        let mut released: Vec<Lease> = Vec::new();
        self.leases.retain(|_, l| {
            if l.conn == conn {
                released.push(l.clone());
                false
            } else {
                true
            }
        });
        // Oldest first, so the requeued tasks keep their relative order.
        released.sort_by_key(|l| l.entry.id);
        for lease in released {
            let q = &mut self.queues[lease.queue as usize];
            q.leased = q.leased.saturating_sub(1);
            self.mark_dirty(lease.queue);
            let m = self.retry_or_bury(
                lease.queue,
                lease.entry,
                NackMode::After(0),
                REASON_DISCONNECTED,
                now,
            );
            out.push(Effect::Persist(m));
        }
    }

    /// Either schedules the next attempt or moves the task to the dead set. The patch
    /// carries the task's attempt count: the ended delivery's count may not be written
    /// yet (`Engine::write_due_attempts`).
    pub(super) fn retry_or_bury(
        &mut self,
        idx: QueueIdx,
        entry: Entry,
        mode: NackMode,
        reason: &str,
        now: Millis,
    ) -> Mutation {
        let q = &self.queues[idx as usize];
        let max = q.effective_max_attempts(&entry);
        let exhausted = max > 0 && entry.attempts >= max;
        if mode == NackMode::Dead || exhausted {
            let q = &mut self.queues[idx as usize];
            q.dead.insert(entry.id, entry);
            q.counters.dead_lettered += 1;
            return dead_patch(entry.id, reason, Some(entry.attempts), now);
        }
        let delay = match mode {
            NackMode::After(d) => d,
            _ => retry_delay_ms(
                entry.attempts,
                q.config.backoff_min_ms,
                q.config.backoff_max_ms,
                &mut self.rng,
            ),
        };
        let not_before = if delay == 0 { 0 } else { now + delay };
        self.enqueue(idx, entry, not_before, now);
        Mutation::Patch {
            id: entry.id,
            patch: StatePatch {
                attempts: Some(entry.attempts),
                not_before_ms: Some(not_before),
                last_error: Some(Some(reason.to_owned())),
                updated_ms: now,
                ..StatePatch::default()
            },
        }
    }
}
