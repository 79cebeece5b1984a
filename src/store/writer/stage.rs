//! The writer's staging of a group: each job's mutations become writes of one
//! `sled::Batch` and entries of one journal record (bodies go to the journal record
//! only; sled gets their references after the append, in `writer.rs`). A job that
//! fails leaves nothing in either. Publishes are refused here while the free space is
//! below the reserve.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use sled::InlineArray;

use super::producers::Numbering;
use super::{too_large, Completion, Job, JobOutcome, Key, Staged, StagedBody, WriterLoop};
use crate::model::{Mutation, TaskId, TaskStatus};
use crate::store::keys;
use crate::store::record::{self, StateView};
use crate::store::tasks::Slot;
use crate::store::{corrupt, io_error, Duplicate, Muts, StoreError};

impl<C: Completion> WriterLoop<C> {
    /// Stages every job of the group into one batch; a job that fails is recorded in
    /// `failed` and contributes nothing.
    pub(super) fn stage_group(&mut self) -> Staged {
        let mut staged = Staged {
            batch: sled::Batch::default(),
            writes: 0,
            mutations: 0,
            max_inserted: None,
            bodies: Vec::new(),
        };
        let group = std::mem::take(&mut self.group);
        self.journal.begin();
        self.group_tasks.clear();
        self.removed_bodies.clear();
        self.failed.clear();
        self.reports.clear();
        self.duplicates.clear();
        self.find_netted(&group);
        for job in &group {
            self.job_duplicates.clear();
            self.job_sweep = None;
            self.job_refused = None;
            let staged_job = match self.refuse_publish(&job.muts) {
                Some(refused) => {
                    let none = self.duplicates.len()..self.duplicates.len();
                    self.reports.push(JobOutcome::of(none));
                    self.failed.push(Some(refused));
                    continue;
                }
                None => {
                    let mark = self.journal.mark();
                    let result = self.stage_job(&job.muts, &staged.batch);
                    if result.is_err() {
                        self.journal.rewind(mark);
                        self.job_bodies.clear();
                        self.drop_job_producers();
                    } else {
                        self.commit_job_producers();
                    }
                    result
                }
            };
            let start = self.duplicates.len();
            if staged_job.is_ok() {
                self.duplicates.append(&mut self.job_duplicates);
            }
            self.reports.push(JobOutcome {
                duplicates: start..self.duplicates.len(),
                sweep: self.job_sweep.take(),
                refused: self.job_refused.take(),
            });
            match staged_job {
                Ok(max_inserted) => {
                    staged.max_inserted = staged.max_inserted.max(max_inserted);
                    staged.mutations += job.muts.as_slice().len() as u64;
                    staged.writes += self.stage.len() + self.job_bodies.len();
                    staged.bodies.append(&mut self.job_bodies);
                    for (key, value) in self.stage.drain(..) {
                        // Task records go to the task table once journaled, the rest
                        // to sled.
                        let key = match key {
                            Key::Task(slot, id) => {
                                let bytes = slot.key(id);
                                debug_assert_eq!(Slot::of_key(&bytes), Some((slot, id)));
                                self.journal.put(&bytes, value.as_deref());
                                if slot == Slot::Body && value.is_none() {
                                    self.removed_bodies.push(id);
                                }
                                self.group_tasks.entry(id).or_default().set(slot, value);
                                continue;
                            }
                            Key::Other(key) => key,
                        };
                        debug_assert!(Slot::of_key(&key).is_none());
                        self.journal.put(&key, value.as_deref());
                        match value {
                            Some(value) => staged.batch.insert(key, value),
                            None => staged.batch.remove(key),
                        }
                    }
                    self.failed.push(None);
                }
                Err(error) => {
                    tracing::error!(%error, "store mutation refused; its job fails, the rest of the batch goes on");
                    self.stage.clear();
                    self.failed.push(Some(error));
                }
            }
        }
        self.group = group;
        self.stage_producers(&mut staged);
        self.stage_watermark(&mut staged);
        staged
    }

    /// Finds the tasks `group` inserts and later removes (`Mutation::Remove`) with no
    /// other mutation of theirs in it, nor an idempotency key: a group is one journal
    /// record, applied whole or not at all, so no reader and no replay can see such a
    /// task, and neither mutation is staged (their ids still raise the watermark).
    /// Only on a cluster member that follows (its body cache off: it delivers
    /// nothing), whose groups of held-back entries are long enough to hold both
    /// (`cluster/state.rs`, `Deferred`): a single node's or a leader's group never holds
    /// the ack of a publish it confirms, and the scan would be wasted there.
    fn find_netted(&mut self, group: &[Job<C>]) {
        self.netted.clear();
        if group.len() < 2
            || !self.store.replicated.load(Relaxed)
            || self.store.recent_bodies.enabled()
        {
            return;
        }
        self.inserted.clear();
        for job in group {
            for mutation in job.muts.as_slice() {
                match mutation {
                    Mutation::Insert(task) if task.body.idempotency_key.is_none() => {
                        self.inserted.insert(task.id, true);
                    }
                    &Mutation::Remove { id } => {
                        if let Some(nettable) = self.inserted.get_mut(&id) {
                            if std::mem::take(nettable) {
                                self.netted.insert(id);
                            }
                        }
                    }
                    &Mutation::Patch { id, .. } | &Mutation::Succeed { id, .. } => {
                        if let Some(nettable) = self.inserted.get_mut(&id) {
                            *nettable = false;
                            self.netted.remove(&id);
                        }
                    }
                    _ => {}
                }
            }
        }
        debug_assert!(self.netted.len() <= self.inserted.len());
        debug_assert!(self
            .netted
            .iter()
            .all(|id| self.inserted.get(id) == Some(&false)));
    }

    /// A job that inserts tasks is refused while the free space is below the publish
    /// reserve: the reserve is for settlements, purges and checkpoints, which give
    /// space back.
    fn refuse_publish(&mut self, muts: &Muts) -> Option<StoreError> {
        if !muts.inserts() {
            return None;
        }
        let free = self.check_space()?;
        if self.store.replicated.load(Relaxed) {
            // A committed entry: every member applies it (the leader checked the
            // reserve before proposing it); only a write that fails refuses it.
            return None;
        }
        let reason = self.store.low_space.lock().clone();
        Some(StoreError::Unavailable(reason.unwrap_or_else(|| {
            Arc::from(format!(
                "free disk space ({free} bytes) is below the reserve"
            ))
        })))
    }

    /// Reads the free space (at most every 10 ms) and records in the store why
    /// publishes are refused, if they are. Returns the free bytes when short.
    pub(super) fn check_space(&mut self) -> Option<u64> {
        let short = self.space.short();
        let mut low = self.store.low_space.lock();
        *low = short.map(|free| crate::store::low_space_reason(free, self.space.reserve()));
        short
    }

    /// Persists a new id watermark when this batch inserts an id at or past the last
    /// persisted one, so ids are never reused after a restart.
    fn stage_watermark(&mut self, staged: &mut Staged) {
        let Some(max) = staged.max_inserted else {
            return;
        };
        let next = max.saturating_add(1);
        if next > self.store.watermark.load(Relaxed) {
            self.journal.put(keys::WATERMARK, Some(&next.to_be_bytes()));
            staged.batch.insert(keys::WATERMARK, next.to_be_bytes());
            staged.writes += 1;
        }
    }

    /// Stages one job's mutations into `self.stage`; returns the highest id it inserts.
    fn stage_job(
        &mut self,
        muts: &Muts,
        batch: &sled::Batch,
    ) -> Result<Option<TaskId>, StoreError> {
        if let Muts::Netted(netted) = muts {
            debug_assert!(netted.first <= netted.max_id && netted.tasks > 0);
            if let Some((producer, sequence)) = &netted.numbered {
                // Repeat or new, nothing is staged: its tasks are netted.
                let _ = self.number(
                    producer,
                    *sequence,
                    netted.first,
                    netted.created_ms,
                    netted.tasks,
                )?;
            }
            self.stats
                .netted
                .fetch_add(u64::from(netted.tasks), Relaxed);
            return Ok(Some(netted.max_id));
        }
        let mut max_inserted = None;
        let muts = muts.as_slice();
        if let Numbering::Done = self.check_numbering(muts)? {
            // A repeat or a refusal: nothing staged, but its ids were handed out and
            // are never reused.
            let ids = muts.iter().filter_map(|m| match m {
                Mutation::Insert(task) => Some(task.id),
                _ => None,
            });
            return Ok(ids.max());
        }
        for (index, mutation) in muts.iter().enumerate() {
            match mutation {
                Mutation::Insert(task) => {
                    // Counted even when a duplicate: an id handed out is never reused.
                    max_inserted = max_inserted.max(Some(task.id));
                    if self.netted.contains(&task.id) {
                        continue;
                    }
                    if let Some(key) = &task.body.idempotency_key {
                        if let Some(original) = self.stage_idempotency_key(task, key, batch)? {
                            self.job_duplicates.push(Duplicate { index, original });
                            continue;
                        }
                    }
                    self.encode_into_stage(keys::state(task.id), |out| {
                        record::encode_state(&StateView::of(&task.state), out)
                    })?;
                    self.stage_body(task)?;
                }
                Mutation::Patch { id, patch } => {
                    let key = keys::state(*id);
                    let Some(current) = self.read_staged(&key, batch)? else {
                        tracing::debug!(task = *id, "patch of a task no longer stored: skipped");
                        continue;
                    };
                    let retention =
                        matches!(patch.status, Some(TaskStatus::Dead | TaskStatus::Pending));
                    // The usual patch (a delivery's attempt) in place, without decoding.
                    if !retention
                        && record::patch_state(&current, patch, &mut self.scratch).is_some()
                    {
                        let value = InlineArray::from(self.scratch.as_slice());
                        self.stage.push((Key::Task(Slot::State, *id), Some(value)));
                        continue;
                    }
                    let mut view = record::decode_state(&current).map_err(|e| corrupt(&key, e))?;
                    view.apply(patch);
                    self.scratch.clear();
                    record::encode_state(&view, &mut self.scratch).map_err(too_large)?;
                    let value = InlineArray::from(self.scratch.as_slice());
                    self.stage.push((Key::Task(Slot::State, *id), Some(value)));
                    if let Some(status @ (TaskStatus::Dead | TaskStatus::Pending)) = patch.status {
                        self.stage_retention_of_patch(*id, status, view.queue, patch.updated_ms)?;
                    }
                }
                Mutation::Remove { id } if self.netted.contains(id) => {}
                Mutation::Remove { id } => {
                    self.stage.push((Key::Task(Slot::State, *id), None));
                    self.stage_body_removal(*id);
                    self.stage.push((Key::Task(Slot::Result, *id), None));
                }
                Mutation::Succeed {
                    id,
                    result,
                    updated_ms,
                } => self.stage_succeed(*id, result, *updated_ms, batch)?,
                Mutation::Sweep { now, limit } => {
                    let stats = self.stage_sweep(*now, *limit, batch)?;
                    self.job_sweep = Some(stats);
                }
                Mutation::PutQueue { name, config } => {
                    self.encode_into_stage(keys::queue(name), |out| {
                        record::encode_queue(config, out);
                        Ok(())
                    })?;
                    // Visible to the rest of the batch at once. (Were a later mutation of
                    // this same job to fail, the setting would stay in memory; queue
                    // changes are submitted as jobs of their own.)
                    self.store.policies.write().put(name, config);
                }
                Mutation::RemoveQueue { name } => {
                    self.stage.push((Key::of(&keys::queue(name)), None));
                    self.store.policies.write().remove(name);
                }
                Mutation::PutSchedule(schedule) => {
                    self.encode_into_stage(keys::schedule(&schedule.name), |out| {
                        record::encode_schedule(schedule, out)
                    })?;
                }
                Mutation::RemoveSchedule { name } => {
                    self.stage.push((Key::of(&keys::schedule(name)), None));
                }
                Mutation::Applied { term, node, index } => {
                    let mut value = [0u8; 24];
                    value[..8].copy_from_slice(&term.to_be_bytes());
                    value[8..16].copy_from_slice(&node.to_be_bytes());
                    value[16..].copy_from_slice(&index.to_be_bytes());
                    self.stage.push((
                        Key::of(keys::RAFT_APPLIED),
                        Some(InlineArray::from(&value[..])),
                    ));
                }
                Mutation::ClusterId(id) => {
                    // The first id applied stays: the cluster's id never changes.
                    if self.read_staged(keys::CLUSTER_ID, batch)?.is_none() {
                        self.stage.push((
                            Key::of(keys::CLUSTER_ID),
                            Some(InlineArray::from(id.as_bytes())),
                        ));
                    }
                }
                // Checked before the inserts (`check_numbering`), remembered once the
                // job staged.
                Mutation::Numbered { .. } => debug_assert_eq!(index, muts.len() - 1),
            }
        }
        Ok(max_inserted)
    }

    /// Writes a task's body into the journal record only: sled gets a reference to
    /// it there (after the append), and a checkpoint moves it to a payload file if
    /// the task outlives the segment.
    fn stage_body(&mut self, task: &crate::model::NewTask) -> Result<(), StoreError> {
        self.scratch.clear();
        record::encode_body(&task.body, &mut self.scratch).map_err(too_large)?;
        let len = u32::try_from(self.scratch.len()).map_err(|_| {
            too_large(record::TooLarge {
                field: "body",
                len: self.scratch.len(),
            })
        })?;
        let crc = crc32fast::hash(&self.scratch);
        let at = self.journal.put(&keys::body(task.id), Some(&self.scratch));
        self.job_bodies.push(StagedBody {
            id: task.id,
            // Only for the body cache (`applied`): not copied while it is off.
            bytes: if self.store.recent_bodies.enabled() {
                bytes::Bytes::copy_from_slice(&self.scratch)
            } else {
                bytes::Bytes::new()
            },
            at,
            len,
            crc,
        });
        Ok(())
    }

    /// Removes a task's body reference. Nothing is read: what it pointed at matters
    /// only for a reference into a payload file, whose live bytes drop when the
    /// removal reaches sled (`tasks.rs`).
    pub(super) fn stage_body_removal(&mut self, id: TaskId) {
        self.stage.push((Key::Task(Slot::Body, id), None));
    }

    fn encode_into_stage(
        &mut self,
        key: impl AsRef<[u8]>,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), record::TooLarge>,
    ) -> Result<(), StoreError> {
        self.scratch.clear();
        encode(&mut self.scratch).map_err(too_large)?;
        let value = InlineArray::from(self.scratch.as_slice());
        self.stage.push((Key::of(key.as_ref()), Some(value)));
        Ok(())
    }

    /// The value of `key` as this batch will leave it: the job's own staged writes
    /// first, then earlier jobs of the batch, then the task table (for a task
    /// record), then the tree.
    pub(super) fn read_staged(
        &self,
        key: &[u8],
        batch: &sled::Batch,
    ) -> Result<Option<InlineArray>, StoreError> {
        let task = Slot::of_key(key);
        if let Some((_, value)) = self.stage.iter().rev().find(|(k, _)| k.is(key, task)) {
            return Ok(value.clone());
        }
        if let Some((slot, id)) = task {
            let known = self.group_tasks.get(&id).and_then(|c| c.get(slot));
            if let Some(value) = known.or_else(|| self.store.tasks.get(slot, id)) {
                return Ok(value);
            }
        } else if let Some(value) = batch.get(key) {
            return Ok(value.cloned());
        }
        self.db.get(key).map_err(io_error)
    }
}
