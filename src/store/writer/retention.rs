//! The writer's handling of finished tasks and idempotency keys: the succeeded record
//! an ack leaves, the retention record a dead task gets, the claim of an idempotency
//! key on insert, and the retention sweep. Like the rest of the writer, every read goes
//! through `read_staged`, so these see the earlier jobs of the same batch.
//!
//! Every record that expires gets an entry in the `X` index, keyed by its due time;
//! the sweep scans that index from its start up to `now`, at most `limit` entries per
//! job, and re-checks each target before removing it (an entry can be stale: a task
//! redriven out of the dead set, a key claimed again after it expired).

use bytes::Bytes;
use sled::InlineArray;

use super::{too_large, Completion, Key, WriterLoop};
use crate::model::{Millis, NewTask, TaskId, TaskStatus};
use crate::store::keys::{self, Expiring};
use crate::store::record::{self, DedupRecord};
use crate::store::tasks::Slot;
use crate::store::{corrupt, io_error, StoreError, SweepStats};

impl<C: Completion> WriterLoop<C> {
    fn result_ttl_ms(&self, queue: &str) -> u64 {
        self.store.policies.read().get(queue).result_ttl_ms
    }

    fn push_delete(&mut self, key: &[u8]) {
        self.stage.push((Key::of(key), None));
    }

    fn push_value(&mut self, key: &[u8], value: &[u8]) {
        self.stage
            .push((Key::of(key), Some(InlineArray::from(value))));
    }

    /// Stages the retention record and its expiry-index entry of a finished task.
    fn stage_retained(
        &mut self,
        id: TaskId,
        expires_ms: Millis,
        result: &[u8],
    ) -> Result<(), StoreError> {
        self.scratch.clear();
        record::encode_retained(expires_ms, result, &mut self.scratch).map_err(too_large)?;
        let value = InlineArray::from(self.scratch.as_slice());
        self.stage.push((Key::Task(Slot::Result, id), Some(value)));
        self.push_value(&keys::expiry_task(expires_ms, id), &[]);
        Ok(())
    }

    /// An ack: keeps a succeeded record (state and result, without the body) for the
    /// queue's result TTL, or removes the task when the queue keeps no results.
    pub(super) fn stage_succeed(
        &mut self,
        id: TaskId,
        result: &Bytes,
        updated_ms: Millis,
        batch: &sled::Batch,
    ) -> Result<(), StoreError> {
        let key = keys::state(id);
        let Some(current) = self.read_staged(&key, batch)? else {
            tracing::debug!(task = id, "ack of a task no longer stored: skipped");
            return Ok(());
        };
        let mut view = record::decode_state(&current).map_err(|e| corrupt(&key, e))?;
        let ttl = self.result_ttl_ms(view.queue);
        if ttl == 0 {
            self.push_delete(&key);
            self.stage_body_removal(id);
            self.push_delete(&keys::result(id));
            return Ok(());
        }
        view.status = TaskStatus::Succeeded;
        view.updated_ms = updated_ms;
        self.scratch.clear();
        record::encode_state(&view, &mut self.scratch).map_err(too_large)?;
        let value = InlineArray::from(self.scratch.as_slice());
        self.stage.push((Key::of(&key), Some(value)));
        // The payload is not needed any more: only the state and the result are kept.
        self.stage_body_removal(id);
        self.stage_retained(id, updated_ms.saturating_add(ttl), result)
    }

    /// A patch that changed a task's status: a dead task gets a retention record when
    /// its queue keeps results; a task made pending again (redriven) loses its own.
    pub(super) fn stage_retention_of_patch(
        &mut self,
        id: TaskId,
        status: TaskStatus,
        queue: &str,
        updated_ms: Millis,
    ) -> Result<(), StoreError> {
        match status {
            TaskStatus::Dead => {
                let ttl = self.result_ttl_ms(queue);
                if ttl > 0 {
                    self.stage_retained(id, updated_ms.saturating_add(ttl), &[])?;
                }
            }
            TaskStatus::Pending => self.push_delete(&keys::result(id)),
            TaskStatus::Succeeded => {}
        }
        Ok(())
    }

    /// Claims `key` for `task` on its queue. Returns the task that already holds the
    /// key when it is still inside its window (then nothing is staged); otherwise
    /// stages the key record and its expiry-index entry and returns `None`.
    pub(super) fn stage_idempotency_key(
        &mut self,
        task: &NewTask,
        key: &str,
        batch: &sled::Batch,
    ) -> Result<Option<TaskId>, StoreError> {
        let queue = &*task.state.queue;
        let window = self.store.policies.read().get(queue).dedup_window_ms;
        if window == 0 {
            return Ok(None);
        }
        let now = task.state.created_ms;
        let dedup_key = keys::dedup(queue, key);
        if let Some(value) = self.read_staged(&dedup_key, batch)? {
            match record::decode_dedup(&value) {
                Ok(held) if held.expires_ms > now => return Ok(Some(held.task)),
                // Expired but not swept yet: the key is free again.
                Ok(_) => {}
                Err(e) => {
                    let error = corrupt(&dedup_key, e);
                    tracing::warn!(%error, "idempotency key record unreadable; replacing it");
                }
            }
        }
        let expires_ms = now.saturating_add(window);
        let value = record::encode_dedup(DedupRecord {
            task: task.id,
            expires_ms,
        });
        self.push_value(&dedup_key, &value);
        self.push_value(&keys::expiry_dedup(expires_ms, &dedup_key), &[]);
        Ok(None)
    }

    /// Removes what is due at `now`, examining at most `limit` expiry-index entries.
    pub(super) fn stage_sweep(
        &mut self,
        now: Millis,
        limit: u32,
        batch: &sled::Batch,
    ) -> Result<SweepStats, StoreError> {
        let mut stats = SweepStats::default();
        let start: &[u8] = &[keys::EXPIRY];
        let end = keys::expiry_due_end(now);
        for item in crate::store::pool::scan(&self.db, start, end) {
            if stats.examined >= limit {
                stats.more = true;
                break;
            }
            let (key, _) = item.map_err(io_error)?;
            stats.examined += 1;
            self.push_delete(&key);
            match keys::parse_expiry(&key) {
                Some((_, Expiring::Task(id))) => self.sweep_task(id, now, batch, &mut stats)?,
                Some((_, Expiring::Dedup(dedup_key))) => {
                    self.sweep_key(dedup_key, now, batch, &mut stats)?
                }
                Some((_, Expiring::Producer(producer))) => {
                    self.sweep_producer(producer, now, &mut stats)?
                }
                None => {
                    tracing::warn!(key = %keys::hex(&key), "malformed expiry-index key dropped")
                }
            }
        }
        Ok(stats)
    }

    fn sweep_task(
        &mut self,
        id: TaskId,
        now: Millis,
        batch: &sled::Batch,
        stats: &mut SweepStats,
    ) -> Result<(), StoreError> {
        let result_key = keys::result(id);
        let Some(retained) = self.read_staged(&result_key, batch)? else {
            return Ok(()); // already removed (purged, or redriven)
        };
        match record::retained_expiry(&retained) {
            // Finished again since: its newer index entry comes later.
            Ok(expires) if expires > now => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                let error = corrupt(&result_key, e);
                tracing::warn!(%error, "retention record unreadable; task left in place");
                return Ok(());
            }
        }
        let state_key = keys::state(id);
        let Some(state) = self.read_staged(&state_key, batch)? else {
            self.push_delete(&result_key);
            return Ok(());
        };
        let view = match record::decode_state(&state) {
            Ok(view) => view,
            Err(e) => {
                let error = corrupt(&state_key, e);
                tracing::warn!(%error, "task state unreadable; task left in place");
                return Ok(());
            }
        };
        match view.status {
            TaskStatus::Succeeded | TaskStatus::Dead => {
                if view.status == TaskStatus::Dead {
                    stats.note_dead(view.queue, id);
                }
                stats.removed_tasks += 1;
                self.push_delete(&state_key);
                self.stage_body_removal(id);
                self.push_delete(&result_key);
            }
            // Redriven after it finished: only the stale retention record goes.
            TaskStatus::Pending => self.push_delete(&result_key),
        }
        Ok(())
    }

    fn sweep_key(
        &mut self,
        dedup_key: &[u8],
        now: Millis,
        batch: &sled::Batch,
        stats: &mut SweepStats,
    ) -> Result<(), StoreError> {
        let Some(value) = self.read_staged(dedup_key, batch)? else {
            return Ok(());
        };
        match record::decode_dedup(&value) {
            Ok(held) if held.expires_ms <= now => {
                stats.removed_keys += 1;
                self.push_delete(dedup_key);
            }
            // Claimed again after it expired: its newer index entry comes later.
            Ok(_) => {}
            Err(e) => {
                let error = corrupt(dedup_key, e);
                tracing::warn!(%error, "idempotency key record unreadable; removed");
                self.push_delete(dedup_key);
            }
        }
        Ok(())
    }
}
