//! The model test's stand-in of `store/`: what a crash keeps (the confirmed prefix of
//! the submitted jobs plus a random part of the unconfirmed tail, whole jobs only, as
//! the group-commit writer makes them durable in submission order) and the writer's
//! Insert/Patch/Remove semantics for tasks, idempotency keys and schedule records.
//! Not here: the model's predictions (`harness/`).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{Mutation, Schedule, TaskId, TaskState, TaskStatus};

/// What the store holds.
#[derive(Default, Clone)]
pub(super) struct Stored {
    pub(super) tasks: BTreeMap<TaskId, TaskState>,
    /// Every idempotency key ever inserted. Kept for the whole run: the engine must
    /// never propose a durable tick again, so a second insert of a key is a failure
    /// even where the real store would drop it as a duplicate.
    pub(super) keys: BTreeMap<String, TaskId>,
    pub(super) schedules: BTreeMap<Arc<str>, Schedule>,
}

/// The state as of the last restart, the jobs submitted since (in order), and how
/// many of them are known durable.
#[derive(Default)]
pub(super) struct MemStore {
    pub(super) durable: Stored,
    log: Vec<Vec<Mutation>>,
    /// `log[..confirmed]` must survive a crash: a client was told, or a completion
    /// ran, for it or for a later job.
    confirmed: usize,
    /// `durable` with the whole log applied: the store once everything is flushed.
    pub(super) current: Stored,
}

impl MemStore {
    pub(super) fn persist(&mut self, m: Mutation, confirmed: bool) {
        self.submit(vec![m], confirmed);
    }

    /// Submits one job (one journal record: all of it or nothing survives a crash);
    /// returns its place for [`MemStore::confirm_through`].
    pub(super) fn submit(&mut self, job: Vec<Mutation>, confirmed: bool) -> usize {
        for m in &job {
            apply(&mut self.current, m);
        }
        self.log.push(job);
        if confirmed {
            self.confirmed = self.log.len();
        }
        self.log.len() - 1
    }

    /// The job at `place` completed durably, so did every job before it.
    pub(super) fn confirm_through(&mut self, place: usize) {
        self.confirmed = self.confirmed.max(place + 1);
    }

    /// A crash: the confirmed prefix and `keep`/255 of the tail reach the disk.
    pub(super) fn crash(&mut self, keep: u8) {
        let tail = self.log.len() - self.confirmed;
        let cut = self.confirmed + tail * usize::from(keep) / 255;
        for m in self.log[..cut].iter().flatten() {
            apply(&mut self.durable, m);
        }
        self.log.clear();
        self.confirmed = 0;
        self.current = self.durable.clone();
    }
}

/// The writer's semantics (`store/writer/`): a patch of a task no longer stored is
/// skipped; `None` fields of a patch are left as stored.
fn apply(store: &mut Stored, m: &Mutation) {
    let map = &mut store.tasks;
    match m {
        Mutation::Insert(t) => {
            if let Some(key) = &t.body.idempotency_key {
                let before = store.keys.insert(key.clone(), t.id);
                assert!(
                    before.is_none(),
                    "key {key:?} inserted by task {} and again by task {}",
                    before.unwrap_or_default(),
                    t.id
                );
            }
            map.insert(t.id, t.state.clone());
        }
        Mutation::Patch { id, patch } => {
            if let Some(s) = map.get_mut(id) {
                if let Some(status) = patch.status {
                    s.status = status;
                }
                if let Some(attempts) = patch.attempts {
                    s.attempts = attempts;
                }
                if let Some(nb) = patch.not_before_ms {
                    s.not_before_ms = nb;
                }
                if let Some(e) = &patch.last_error {
                    s.last_error = e.clone();
                }
                s.updated_ms = patch.updated_ms;
            }
        }
        Mutation::Remove { id } => {
            map.remove(id);
        }
        Mutation::Succeed { id, updated_ms, .. } => {
            if let Some(s) = map.get_mut(id) {
                s.status = TaskStatus::Succeeded;
                s.updated_ms = *updated_ms;
            }
        }
        Mutation::PutSchedule(s) => {
            store.schedules.insert(s.name.clone(), (**s).clone());
        }
        Mutation::RemoveSchedule { name } => {
            store.schedules.remove(name);
        }
        Mutation::PutQueue { .. }
        | Mutation::RemoveQueue { .. }
        | Mutation::Sweep { .. }
        | Mutation::Applied { .. }
        | Mutation::ClusterId(_)
        | Mutation::Numbered { .. } => {
            panic!("the engine never persists queue records, sweeps, raft positions, cluster ids or publish numbers: {m:?}")
        }
    }
}
