//! Queue administration on the engine: look at a queue (one snapshot, the oldest ready
//! task, a non-destructive peek in each state) and change it (configuration, pause,
//! purge, redrive dead tasks, delete). Like the rest of `broker/`, pure: no store, no
//! clock; every change that must be durable is returned as `Mutation`s or task ids the
//! caller removes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::engine::{Engine, Entry, Queue, QueueIdx, QueueSnapshot};
use super::{ConnId, SubId};
use crate::model::{Millis, Mutation, QueueConfig, StatePatch, TaskId, TaskStatus};

/// Most tasks one peek returns.
pub const MAX_PEEK: usize = 1000;

/// The states an operator can look at or act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskView {
    /// Waiting for a consumer.
    Ready,
    /// Waiting for its not-before time.
    Delayed,
    /// Held by a consumer under a lease.
    Leased,
    /// In the dead set.
    Dead,
}

/// Who holds a leased task, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseView {
    /// The consumer's connection.
    pub conn: ConnId,
    /// Its subscription.
    pub sub: SubId,
    /// The lease deadline.
    pub deadline_ms: Millis,
    /// 1-based attempt number of the delivery holding it (the store may not have
    /// persisted the count yet).
    pub attempt: u32,
}

/// One task as the engine sees it. Payload, headers, timestamps and the last error are
/// on disk: the caller reads them from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    /// Task id.
    pub id: TaskId,
    /// Its state.
    pub state: TaskView,
    /// Priority.
    pub priority: i32,
    /// Deliveries so far.
    pub attempts: u32,
    /// Effective limit (0 = unlimited).
    pub max_attempts: u32,
    /// Delayed tasks: when they become ready.
    pub not_before_ms: Millis,
    /// Leased tasks: the lease.
    pub lease: Option<LeaseView>,
}

/// A partial configuration change: `None` fields keep their value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueConfigUpdate {
    /// Default lease of a delivery.
    pub lease_ms: Option<u64>,
    /// Delivery limit (0 = unlimited).
    pub max_attempts: Option<u32>,
    /// Retry backoff: first delay.
    pub backoff_min_ms: Option<u64>,
    /// Retry backoff: cap.
    pub backoff_max_ms: Option<u64>,
    /// Most pending tasks (0 = unbounded).
    pub max_length: Option<u64>,
    /// Retention of succeeded and dead records.
    pub result_ttl_ms: Option<u64>,
    /// Idempotency-key window.
    pub dedup_window_ms: Option<u64>,
}

/// Why an administrative change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The queue does not exist (it was never used, or it was deleted).
    #[error("queue {0:?} does not exist")]
    NoSuchQueue(String),
    /// A configuration value is out of range.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// What deleting a queue removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedQueue {
    /// The queue's name.
    pub name: Arc<str>,
    /// Every task it held (ready, delayed, leased, dead): remove them from the store.
    pub tasks: Vec<TaskId>,
    /// Subscriptions that ended with it: tell their connections.
    pub ended: Vec<(ConnId, SubId)>,
}

impl Engine {
    fn existing(&self, name: &str) -> Result<QueueIdx, AdminError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| AdminError::NoSuchQueue(name.to_owned()))
    }

    /// True when the queue exists.
    pub fn has_queue(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// A view of one queue.
    pub fn queue_snapshot(&self, name: &str) -> Result<QueueSnapshot, AdminError> {
        let idx = self.existing(name)?;
        Ok(snapshot_of(&self.queues[idx as usize]))
    }

    /// The oldest ready task of a queue (lowest id, whatever its priority). A scan of
    /// the ready heap: O(ready), asked for only by operators.
    pub fn oldest_ready(&self, name: &str) -> Option<TaskId> {
        let idx = *self.by_name.get(name)?;
        self.queues[idx as usize].ready.iter().map(|e| e.id).min()
    }

    /// Up to `limit` tasks of a queue in `state`, without changing anything: ready in
    /// delivery order, delayed by due time, leased by deadline, dead oldest first.
    pub fn peek(
        &self,
        name: &str,
        state: TaskView,
        limit: usize,
    ) -> Result<Vec<Peeked>, AdminError> {
        let idx = self.existing(name)?;
        let q = &self.queues[idx as usize];
        let limit = limit.min(MAX_PEEK);
        let view = |e: &Entry, state| Peeked {
            id: e.id,
            state,
            priority: e.priority,
            attempts: e.attempts,
            max_attempts: q.effective_max_attempts(e),
            not_before_ms: 0,
            lease: None,
        };
        let out = match state {
            TaskView::Ready => top_in_delivery_order(&q.ready, limit)
                .iter()
                .map(|e| view(e, TaskView::Ready))
                .collect(),
            TaskView::Delayed => self
                .delayed
                .iter()
                .filter(|(_, (i, _))| *i == idx)
                .take(limit)
                .map(|(&(not_before_ms, _), (_, e))| Peeked {
                    not_before_ms,
                    ..view(e, TaskView::Delayed)
                })
                .collect(),
            TaskView::Leased => {
                let mut leased: Vec<Peeked> = self
                    .leases
                    .values()
                    .filter(|l| l.queue == idx)
                    .map(|l| Peeked {
                        lease: Some(LeaseView {
                            conn: l.conn,
                            sub: l.sub,
                            deadline_ms: l.deadline_ms,
                            attempt: l.entry.attempts,
                        }),
                        ..view(&l.entry, TaskView::Leased)
                    })
                    .collect();
                leased.sort_by_key(|p| (p.lease.map(|l| l.deadline_ms), p.id));
                leased.truncate(limit);
                leased
            }
            TaskView::Dead => q
                .dead
                .values()
                .take(limit)
                .map(|e| view(e, TaskView::Dead))
                .collect(),
        };
        Ok(out)
    }

    /// Applies a configuration change (creating the queue if needed) after checking the
    /// result as a whole. Returns the mutation that persists it.
    pub fn configure_queue(
        &mut self,
        name: &str,
        update: &QueueConfigUpdate,
    ) -> Result<Mutation, AdminError> {
        let current = self
            .queue_config(name)
            .cloned()
            .unwrap_or_else(|| self.config.queue_defaults.clone());
        let next = merged(current, update);
        let max_lease = self.config.max_lease_ms;
        if next.lease_ms == 0 || next.lease_ms > max_lease {
            return Err(AdminError::Invalid {
                field: "lease",
                reason: format!(
                    "{} ms is outside 1..={max_lease} ms (the broker's max_lease)",
                    next.lease_ms
                ),
            });
        }
        if next.backoff_min_ms > next.backoff_max_ms {
            return Err(AdminError::Invalid {
                field: "backoff",
                reason: format!(
                    "minimum {} ms is above maximum {} ms",
                    next.backoff_min_ms, next.backoff_max_ms
                ),
            });
        }
        Ok(self.install_config(name, next))
    }

    /// Pauses (nothing is delivered; publishes are still accepted) or resumes a queue,
    /// creating it if needed. Returns the mutation that persists it.
    pub fn set_paused(&mut self, name: &str, paused: bool) -> Mutation {
        let mut config = self
            .queue_config(name)
            .cloned()
            .unwrap_or_else(|| self.config.queue_defaults.clone());
        config.paused = paused;
        self.install_config(name, config)
    }

    fn install_config(&mut self, name: &str, config: QueueConfig) -> Mutation {
        self.set_queue_config(name, config.clone());
        let name = self.intern_queue(name);
        Mutation::PutQueue { name, config }
    }

    /// Removes the queue's tasks in `state`, or, with `None`, every task that is not
    /// leased. Purging leased tasks ends their leases (a later settlement is
    /// `LEASE_EXPIRED`) and frees the holders' credit. Returns the removed ids.
    pub fn purge(
        &mut self,
        name: &str,
        state: Option<TaskView>,
    ) -> Result<Vec<TaskId>, AdminError> {
        let idx = self.existing(name)?;
        let mut ids = Vec::new();
        let states: &[TaskView] = match &state {
            Some(s) => std::slice::from_ref(s),
            None => &[TaskView::Ready, TaskView::Delayed, TaskView::Dead],
        };
        for s in states {
            match s {
                TaskView::Ready => {
                    let ready = std::mem::take(&mut self.queues[idx as usize].ready);
                    ids.extend(ready.into_iter().map(|e| e.id));
                }
                TaskView::Delayed => {
                    self.take_delayed(idx, &mut ids);
                }
                TaskView::Leased => {
                    for lease in self.take_leases(idx) {
                        let q = &mut self.queues[idx as usize];
                        q.leased = q.leased.saturating_sub(1);
                        q.release_credit(lease.1);
                        ids.push(lease.2);
                    }
                    self.mark_dirty(idx);
                }
                TaskView::Dead => {
                    let dead = std::mem::take(&mut self.queues[idx as usize].dead);
                    ids.extend(dead.into_keys());
                }
            }
        }
        Ok(ids)
    }

    /// Moves up to `limit` dead tasks (oldest first; `None` = all) back to ready with
    /// their attempts reset. The last error is kept for the record.
    pub fn redrive(
        &mut self,
        name: &str,
        limit: Option<usize>,
        now: Millis,
    ) -> Result<Vec<Mutation>, AdminError> {
        let idx = self.existing(name)?;
        let limit = limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((id, mut entry)) = self.queues[idx as usize].dead.pop_first() else {
                break;
            };
            entry.attempts = 0;
            self.enqueue(idx, entry, 0, now);
            out.push(Mutation::Patch {
                id,
                patch: StatePatch {
                    status: Some(TaskStatus::Pending),
                    attempts: Some(0),
                    not_before_ms: Some(0),
                    updated_ms: now,
                    ..StatePatch::default()
                },
            });
        }
        Ok(out)
    }

    /// Deletes a queue: its tasks in every state, its subscriptions and its
    /// configuration. Using the name again creates a fresh queue.
    pub fn delete_queue(&mut self, name: &str) -> Result<DeletedQueue, AdminError> {
        let idx = self.existing(name)?;
        let mut tasks = Vec::new();
        self.take_delayed(idx, &mut tasks);
        tasks.extend(self.take_leases(idx).into_iter().map(|(_, _, id)| id));
        let defaults = self.config.queue_defaults.clone();
        let q = std::mem::replace(
            &mut self.queues[idx as usize],
            Queue::new(Arc::from(""), defaults),
        );
        tasks.extend(q.ready.into_iter().map(|e| e.id));
        tasks.extend(q.dead.into_keys());
        let mut ended = Vec::with_capacity(q.subs.len());
        for slot in &q.subs {
            if let Some(subs) = self.conn_subs.get_mut(&slot.conn) {
                subs.retain(|&(i, s)| !(i == idx && s == slot.sub));
            }
            ended.push((slot.conn, slot.sub));
        }
        self.by_name.remove(name);
        self.free_slots.push(idx);
        tasks.sort_unstable();
        Ok(DeletedQueue {
            name: q.name,
            tasks,
            ended,
        })
    }

    /// Takes the queue's delayed tasks out of the global delay index.
    fn take_delayed(&mut self, idx: QueueIdx, ids: &mut Vec<TaskId>) {
        self.delayed.retain(|_, (i, e)| {
            if *i == idx {
                ids.push(e.id);
                false
            } else {
                true
            }
        });
        self.queues[idx as usize].delayed = 0;
    }

    /// Takes the queue's leases out of the lease table: (conn, subscription slot, task)
    /// each. Their deadline entries go stale and are skipped by `tick`.
    fn take_leases(&mut self, idx: QueueIdx) -> Vec<(ConnId, u64, TaskId)> {
        let mut taken = Vec::new();
        self.leases.retain(|&id, l| {
            if l.queue == idx {
                taken.push((l.conn, l.slot, id));
                false
            } else {
                true
            }
        });
        taken.sort_unstable_by_key(|t| t.2);
        taken
    }
}

fn merged(mut c: QueueConfig, u: &QueueConfigUpdate) -> QueueConfig {
    let QueueConfigUpdate {
        lease_ms,
        max_attempts,
        backoff_min_ms,
        backoff_max_ms,
        max_length,
        result_ttl_ms,
        dedup_window_ms,
    } = u;
    c.lease_ms = lease_ms.unwrap_or(c.lease_ms);
    c.max_attempts = max_attempts.unwrap_or(c.max_attempts);
    c.backoff_min_ms = backoff_min_ms.unwrap_or(c.backoff_min_ms);
    c.backoff_max_ms = backoff_max_ms.unwrap_or(c.backoff_max_ms);
    c.max_length = max_length.unwrap_or(c.max_length);
    c.result_ttl_ms = result_ttl_ms.unwrap_or(c.result_ttl_ms);
    c.dedup_window_ms = dedup_window_ms.unwrap_or(c.dedup_window_ms);
    c
}

/// The first `limit` entries of a ready heap in the order `dispatch` would pop them,
/// without touching the heap: a bounded selection, O(n log limit).
fn top_in_delivery_order(heap: &BinaryHeap<Entry>, limit: usize) -> Vec<Entry> {
    if limit == 0 {
        return Vec::new();
    }
    let mut best: BinaryHeap<Reverse<Entry>> = BinaryHeap::with_capacity(limit + 1);
    for e in heap.iter() {
        if best.len() < limit {
            best.push(Reverse(*e));
        } else if best.peek().is_some_and(|Reverse(worst)| e > worst) {
            best.pop();
            best.push(Reverse(*e));
        }
    }
    // Ascending `Reverse` order is descending `Entry` order: the delivery order.
    best.into_sorted_vec()
        .into_iter()
        .map(|Reverse(e)| e)
        .collect()
}

fn snapshot_of(q: &Queue) -> QueueSnapshot {
    QueueSnapshot {
        name: q.name.clone(),
        ready: q.ready.len() as u64,
        delayed: q.delayed,
        leased: q.leased,
        dead: q.dead.len() as u64,
        consumers: q.subs.len() as u64,
        config: q.config.clone(),
        counters: q.counters,
    }
}
