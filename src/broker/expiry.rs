//! Task expiry: a task published with an expiry that is not started (delivered for
//! the first time) by then is never delivered; it goes to the dead set with reason
//! `expired`, or is removed when its queue says `drop_expired`.
//!
//! No scan of all tasks: only tasks with an expiry are tracked (`Engine::expiring`,
//! with where each waits), in an index by expiry time. Dispatch checks the task it is
//! about to deliver; `tick` takes the due index entries, at most a bounded number per
//! call, and moves those tasks out of the delayed index (O(log n)) or marks their ready
//! entry as expired (the heap skips it when popped). A task counts as started at its
//! first delivery; a delivery given back unseen (released, or never sent) brings its
//! expiry back, kept meanwhile in the lease.

use super::engine::{dead_patch, Effect, Engine, Entry, REASON_EXPIRED};
use super::queue::{Queue, QueueIdx};
use crate::model::{Millis, Mutation, TaskId};

/// A task with an expiry, not yet delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Waiting {
    pub(super) expires_ms: Millis,
    pub(super) queue: QueueIdx,
    pub(super) entry: Entry,
    /// Its key in the delayed index, or 0 while it is ready.
    pub(super) not_before: Millis,
}

impl Engine {
    /// Tracks the expiry of a task about to be enqueued (before `enqueue`, which
    /// records where it waits). Only never-delivered tasks expire.
    pub(super) fn watch_expiry(&mut self, idx: QueueIdx, entry: Entry, expires_ms: Millis) {
        if expires_ms == 0 || entry.attempts > 0 {
            return;
        }
        self.expiring.insert(
            entry.id,
            Waiting {
                expires_ms,
                queue: idx,
                entry,
                not_before: 0,
            },
        );
        self.expiry_index.insert((expires_ms, entry.id));
    }

    /// Expires the tasks whose index entries are due, at most `limit` entries.
    pub(super) fn expire_due(&mut self, now: Millis, limit: usize, out: &mut Vec<Effect>) {
        for _ in 0..limit {
            let Some(&(at, id)) = self.expiry_index.first() else {
                return;
            };
            if at > now {
                return;
            }
            self.expiry_index.pop_first();
            if self.expiring.get(&id).is_none_or(|w| w.expires_ms != at) {
                continue; // delivered, removed, or tracked again since
            }
            let Some(w) = self.expiring.remove(&id) else {
                continue;
            };
            let q = &mut self.queues[w.queue as usize];
            if w.not_before > 0 {
                let found = self.delayed.remove(&(w.not_before, id)).is_some();
                debug_assert!(found, "task {id} was tracked as delayed");
                if !found {
                    continue;
                }
                q.delayed -= 1;
            } else {
                q.expired_ready.insert(id);
                debug_assert!(q.ready.len() >= q.expired_ready.len());
            }
            out.push(Effect::Persist(expire_entry(q, w.entry, now)));
        }
    }

    /// Stops tracking the expiry of tasks an operator removed.
    pub(super) fn forget_expiry(&mut self, ids: &[TaskId]) {
        if self.expiring.is_empty() {
            return;
        }
        for id in ids {
            if let Some(w) = self.expiring.remove(id) {
                self.expiry_index.remove(&(w.expires_ms, *id));
            }
        }
    }

    /// Tasks waiting with an expiry (for tests and metrics).
    pub fn expiring_count(&self) -> usize {
        self.expiring.len()
    }
}

/// Moves a task that expired unstarted out of the way: dead with reason `expired`, or
/// removed when the queue drops expired tasks. The caller has taken it out of the
/// ready heap or the delayed index.
pub(super) fn expire_entry(q: &mut Queue, entry: Entry, now: Millis) -> Mutation {
    q.counters.expired_tasks += 1;
    if q.config.drop_expired {
        return Mutation::Remove { id: entry.id };
    }
    q.dead.insert(entry.id, entry);
    q.counters.dead_lettered += 1;
    dead_patch(entry.id, REASON_EXPIRED, None, now)
}
