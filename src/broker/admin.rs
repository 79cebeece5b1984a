//! Queue administration on the engine: look at a queue (one snapshot, the oldest ready
//! task, a non-destructive peek in each state) and change it (configuration, pause,
//! purge, redrive dead tasks, delete). Like the rest of `broker/`, pure: no store, no
//! clock; every change that must be durable is returned as `Mutation`s or task ids the
//! caller removes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
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

/// One subscription of a connection, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionView {
    /// The subscription id (per connection).
    pub sub: SubId,
    /// Its queue.
    pub queue: Arc<str>,
    /// Its credit.
    pub prefetch: u32,
    /// Deliveries it holds now (leased, not yet settled).
    pub in_flight: u32,
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
    /// Keep a succeeded record of acks without a result too.
    pub keep_acked: Option<bool>,
    /// Idempotency-key window.
    pub dedup_window_ms: Option<u64>,
    /// Most tasks leased at once across all consumers (0 = no cap).
    pub max_in_flight: Option<u32>,
    /// Most deliveries per second (0 = no limit).
    pub rate_limit: Option<u32>,
    /// The rate limit's bucket size (0 = one second's worth).
    pub rate_burst: Option<u32>,
    /// Drop tasks not started by their expiry instead of dead-lettering them.
    pub drop_expired: Option<bool>,
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

/// What an administrative change does, decided by a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminChange {
    /// Install this configuration (configure, pause, resume).
    Config(QueueConfig),
    /// Remove the plan's tasks.
    Purge,
    /// Move the plan's dead tasks back to ready, attempts reset, at `now`.
    Redrive {
        /// When the redrive was planned (the stored update time).
        now: Millis,
    },
    /// Remove the plan's tasks, then the queue and its subscriptions.
    Delete,
}

/// An administrative change decided by the engine (`Engine::plan_*`, which change
/// nothing) and applied by [`Engine::apply_admin`] once its mutations are durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPlan {
    /// The queue it changes.
    pub queue: Arc<str>,
    /// What it does.
    pub change: AdminChange,
    /// The tasks it touches, ascending (empty for a configuration).
    pub tasks: Vec<TaskId>,
}

impl AdminPlan {
    fn config(name: &str, config: QueueConfig) -> AdminPlan {
        AdminPlan {
            queue: Arc::from(name),
            change: AdminChange::Config(config),
            tasks: Vec::new(),
        }
    }

    /// Whether it removes or moves tasks (then their queue is held while it is in
    /// flight).
    pub fn is_destructive(&self) -> bool {
        !matches!(self.change, AdminChange::Config(_))
    }

    /// The mutations that persist it, in the order of `tasks` (a delete ends with
    /// its `RemoveQueue`).
    pub fn mutations(&self) -> impl Iterator<Item = Mutation> + '_ {
        let per_task = self.tasks.iter().map(move |&id| match &self.change {
            AdminChange::Redrive { now } => Mutation::Patch {
                id,
                patch: StatePatch {
                    status: Some(TaskStatus::Pending),
                    attempts: Some(0),
                    not_before_ms: Some(0),
                    updated_ms: *now,
                    ..StatePatch::default()
                },
            },
            _ => Mutation::Remove { id },
        });
        let last = match &self.change {
            AdminChange::Config(config) => Some(Mutation::PutQueue {
                name: self.queue.clone(),
                config: config.clone(),
            }),
            AdminChange::Delete => Some(Mutation::RemoveQueue {
                name: self.queue.clone(),
            }),
            _ => None,
        };
        per_task.chain(last)
    }
}

/// What applying a plan did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Tasks removed or redriven.
    pub tasks: u64,
    /// Subscriptions that ended with a deleted queue: tell their connections.
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

    /// The subscriptions of connection `conn`, in the order it made them: O(its
    /// subscriptions × their queues' subscriptions), asked for only by operators.
    pub fn subscriptions_of(&self, conn: ConnId) -> Vec<SubscriptionView> {
        let Some(subs) = self.conn_subs.get(&conn) else {
            return Vec::new();
        };
        subs.iter()
            .filter_map(|&(idx, sub)| {
                let q = self.queues.get(idx as usize)?;
                let slot = q.subs.iter().find(|s| s.conn == conn && s.sub == sub)?;
                Some(SubscriptionView {
                    sub,
                    queue: q.name.clone(),
                    prefetch: slot.prefetch,
                    in_flight: slot.in_flight,
                })
            })
            .collect()
    }

    /// The oldest ready task of a queue (lowest id, whatever its priority). A scan of
    /// the ready heap: O(ready), asked for only by operators.
    pub fn oldest_ready(&self, name: &str) -> Option<TaskId> {
        let idx = *self.by_name.get(name)?;
        self.queues[idx as usize].ready_iter().map(|e| e.id).min()
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
            TaskView::Ready => top_in_delivery_order(q.ready_iter(), limit)
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

    /// Plans a configuration change (creating the queue if needed) after checking the
    /// result as a whole. Nothing changes until [`Engine::apply_admin`].
    pub fn plan_configure(
        &self,
        name: &str,
        update: &QueueConfigUpdate,
    ) -> Result<AdminPlan, AdminError> {
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
        Ok(AdminPlan::config(name, next))
    }

    /// Plans pausing (nothing is delivered; publishes are still accepted) or resuming
    /// a queue, creating it if needed.
    pub fn plan_pause(&self, name: &str, paused: bool) -> AdminPlan {
        let mut config = self
            .queue_config(name)
            .cloned()
            .unwrap_or_else(|| self.config.queue_defaults.clone());
        config.paused = paused;
        AdminPlan::config(name, config)
    }

    /// Plans removing the queue's tasks in `state`, or, with `None`, every task that
    /// is not leased. Purging leased tasks ends their leases (a later settlement is
    /// `LEASE_EXPIRED`) and frees the holders' credit.
    pub fn plan_purge(&self, name: &str, state: Option<TaskView>) -> Result<AdminPlan, AdminError> {
        let idx = self.existing(name)?;
        let q = &self.queues[idx as usize];
        let mut ids = Vec::new();
        let states: &[TaskView] = match &state {
            Some(s) => std::slice::from_ref(s),
            None => &[TaskView::Ready, TaskView::Delayed, TaskView::Dead],
        };
        for s in states {
            match s {
                TaskView::Ready => ids.extend(q.ready_iter().map(|e| e.id)),
                TaskView::Delayed => ids.extend(self.delayed_ids(idx)),
                TaskView::Leased => ids.extend(self.leased_ids(idx)),
                TaskView::Dead => ids.extend(q.dead.keys().copied()),
            }
        }
        ids.sort_unstable();
        Ok(AdminPlan {
            queue: q.name.clone(),
            change: AdminChange::Purge,
            tasks: ids,
        })
    }

    /// Plans moving up to `limit` dead tasks (oldest first; `None` = all) back to
    /// ready with their attempts reset. The last error is kept for the record.
    pub fn plan_redrive(
        &self,
        name: &str,
        limit: Option<usize>,
        now: Millis,
    ) -> Result<AdminPlan, AdminError> {
        let idx = self.existing(name)?;
        let q = &self.queues[idx as usize];
        let limit = limit.unwrap_or(usize::MAX);
        Ok(AdminPlan {
            queue: q.name.clone(),
            change: AdminChange::Redrive { now },
            tasks: q.dead.keys().copied().take(limit).collect(),
        })
    }

    /// Plans deleting a queue: its tasks in every state, its subscriptions and its
    /// configuration. Using the name again creates a fresh queue.
    pub fn plan_delete(&self, name: &str) -> Result<AdminPlan, AdminError> {
        let idx = self.existing(name)?;
        let q = &self.queues[idx as usize];
        let mut tasks: Vec<TaskId> = q.ready_iter().map(|e| e.id).collect();
        tasks.extend(self.delayed_ids(idx));
        tasks.extend(self.leased_ids(idx));
        tasks.extend(q.dead.keys().copied());
        tasks.sort_unstable();
        Ok(AdminPlan {
            queue: q.name.clone(),
            change: AdminChange::Delete,
            tasks,
        })
    }

    /// Stops (or resumes) dispatching a queue while a destructive change of it is in
    /// flight, so that none of the tasks it removes is handed out meanwhile.
    pub fn hold_queue(&mut self, name: &str, held: bool) {
        if let Some(&idx) = self.by_name.get(name) {
            self.queues[idx as usize].held = held;
            if !held {
                self.mark_dirty(idx);
            }
        }
    }

    /// Applies a planned change once (part of) it is durable: `durable` says which
    /// of the plan's tasks are stored as changed (a prefix of `plan.tasks` when a
    /// chunk failed), `complete` whether the whole plan is. A configuration is applied
    /// only when complete; a removal or redrive applies to the durable tasks wherever
    /// they are now (a lease may have expired meanwhile); a delete ends the queue only
    /// when complete (else it was a partial purge). Tasks that went away meanwhile
    /// (settled, swept) are skipped.
    pub fn apply_admin(&mut self, plan: &AdminPlan, durable: &[TaskId], complete: bool) -> Applied {
        let mut applied = Applied::default();
        match &plan.change {
            AdminChange::Config(config) => {
                if complete {
                    self.set_queue_config(&plan.queue, config.clone());
                    applied.tasks = 0;
                }
            }
            AdminChange::Purge => {
                if let Some(&idx) = self.by_name.get(&*plan.queue) {
                    applied.tasks = self.remove_tasks(idx, durable);
                }
            }
            AdminChange::Redrive { now } => {
                if let Some(&idx) = self.by_name.get(&*plan.queue) {
                    for &id in durable {
                        let Some(mut entry) = self.queues[idx as usize].dead.remove(&id) else {
                            continue;
                        };
                        entry.attempts = 0;
                        self.enqueue(idx, entry, 0, *now);
                        applied.tasks += 1;
                    }
                }
            }
            AdminChange::Delete => {
                if let Some(&idx) = self.by_name.get(&*plan.queue) {
                    applied.tasks = self.remove_tasks(idx, durable);
                    if complete {
                        applied.ended = self.end_queue(idx);
                    }
                }
            }
        }
        applied
    }

    /// Applies a configuration change at once (for callers that persist nothing).
    pub fn configure_queue(
        &mut self,
        name: &str,
        update: &QueueConfigUpdate,
    ) -> Result<Mutation, AdminError> {
        let plan = self.plan_configure(name, update)?;
        Ok(self.apply_now(plan).0.remove(0))
    }

    /// Pauses or resumes a queue at once (for callers that persist nothing).
    pub fn set_paused(&mut self, name: &str, paused: bool) -> Mutation {
        let plan = self.plan_pause(name, paused);
        self.apply_now(plan).0.remove(0)
    }

    /// Purges at once (for callers that persist nothing); returns the removed ids.
    pub fn purge(
        &mut self,
        name: &str,
        state: Option<TaskView>,
    ) -> Result<Vec<TaskId>, AdminError> {
        let plan = self.plan_purge(name, state)?;
        let ids = plan.tasks.clone();
        self.apply_now(plan);
        Ok(ids)
    }

    /// Redrives at once (for callers that persist nothing); returns the mutations.
    pub fn redrive(
        &mut self,
        name: &str,
        limit: Option<usize>,
        now: Millis,
    ) -> Result<Vec<Mutation>, AdminError> {
        let plan = self.plan_redrive(name, limit, now)?;
        Ok(self.apply_now(plan).0)
    }

    /// Deletes a queue at once (for callers that persist nothing).
    pub fn delete_queue(&mut self, name: &str) -> Result<DeletedQueue, AdminError> {
        let plan = self.plan_delete(name)?;
        let (_, applied, plan) = self.apply_now(plan);
        Ok(DeletedQueue {
            name: plan.queue,
            tasks: plan.tasks,
            ended: applied.ended,
        })
    }

    fn apply_now(&mut self, plan: AdminPlan) -> (Vec<Mutation>, Applied, AdminPlan) {
        let muts = plan.mutations().collect();
        let applied = self.apply_admin(&plan, &plan.tasks, true);
        (muts, applied, plan)
    }

    fn delayed_ids(&self, idx: QueueIdx) -> impl Iterator<Item = TaskId> + '_ {
        self.delayed
            .values()
            .filter(move |(i, _)| *i == idx)
            .map(|(_, e)| e.id)
    }

    fn leased_ids(&self, idx: QueueIdx) -> impl Iterator<Item = TaskId> + '_ {
        self.leases
            .iter()
            .filter(move |(_, l)| l.queue == idx)
            .map(|(&id, _)| id)
    }

    /// Removes the given tasks of a queue from wherever they are (ready, delayed,
    /// leased: the lease ends and its credit returns, dead). Returns how many it found.
    fn remove_tasks(&mut self, idx: QueueIdx, ids: &[TaskId]) -> u64 {
        if ids.is_empty() {
            return 0;
        }
        let set: HashSet<TaskId> = ids.iter().copied().collect();
        let mut removed = 0u64;
        self.forget_expiry(ids);
        let q = &mut self.queues[idx as usize];
        let before = q.ready_len();
        q.ready.retain(|e| !set.contains(&e.id));
        // An expired task's old ready entry goes with it (it counts as dead below).
        q.expired_ready.retain(|id| !set.contains(id));
        removed += before - q.ready_len();
        for id in ids {
            if q.dead.remove(id).is_some() {
                removed += 1;
            }
        }
        let mut delayed = 0u64;
        self.delayed.retain(|_, (i, e)| {
            let gone = *i == idx && set.contains(&e.id);
            delayed += u64::from(gone);
            !gone
        });
        let q = &mut self.queues[idx as usize];
        q.delayed = q.delayed.saturating_sub(delayed);
        removed += delayed;
        for id in ids {
            if self.leases.get(id).is_some_and(|l| l.queue == idx) {
                if let Some(lease) = self.leases.remove(id) {
                    let q = &mut self.queues[idx as usize];
                    q.leased = q.leased.saturating_sub(1);
                    q.release_credit(lease.slot);
                    removed += 1;
                }
            }
        }
        self.mark_dirty(idx);
        removed
    }

    /// Ends a queue whose tasks were removed: its subscriptions end, its configuration
    /// returns to the defaults, and its slot is freed unless tasks published while the
    /// delete was in flight are left (they stay, in a fresh queue of the same name).
    fn end_queue(&mut self, idx: QueueIdx) -> Vec<(ConnId, SubId)> {
        let defaults = self.config.queue_defaults.clone();
        let q = &mut self.queues[idx as usize];
        let subs = std::mem::take(&mut q.subs);
        q.rr = 0;
        q.config = defaults.clone();
        q.held = false;
        q.counters = super::engine::QueueCounters::default();
        let mut ended = Vec::with_capacity(subs.len());
        for slot in &subs {
            if let Some(list) = self.conn_subs.get_mut(&slot.conn) {
                list.retain(|&(i, s)| !(i == idx && s == slot.sub));
            }
            ended.push((slot.conn, slot.sub));
        }
        let q = &self.queues[idx as usize];
        let empty = q.ready.is_empty() && q.delayed == 0 && q.leased == 0 && q.dead.is_empty();
        if empty {
            let name = q.name.clone();
            self.queues[idx as usize] = Queue::new(Arc::from(""), defaults);
            self.by_name.remove(&name);
            self.sorted.remove(&name);
            self.free_slots.push(idx);
        }
        ended
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
        keep_acked,
        dedup_window_ms,
        max_in_flight,
        rate_limit,
        rate_burst,
        drop_expired,
    } = u;
    c.lease_ms = lease_ms.unwrap_or(c.lease_ms);
    c.max_attempts = max_attempts.unwrap_or(c.max_attempts);
    c.backoff_min_ms = backoff_min_ms.unwrap_or(c.backoff_min_ms);
    c.backoff_max_ms = backoff_max_ms.unwrap_or(c.backoff_max_ms);
    c.max_length = max_length.unwrap_or(c.max_length);
    c.result_ttl_ms = result_ttl_ms.unwrap_or(c.result_ttl_ms);
    c.keep_acked = keep_acked.unwrap_or(c.keep_acked);
    c.dedup_window_ms = dedup_window_ms.unwrap_or(c.dedup_window_ms);
    c.max_in_flight = max_in_flight.unwrap_or(c.max_in_flight);
    c.rate_limit = rate_limit.unwrap_or(c.rate_limit);
    c.rate_burst = rate_burst.unwrap_or(c.rate_burst);
    c.drop_expired = drop_expired.unwrap_or(c.drop_expired);
    c
}

/// The first `limit` entries of a ready heap in the order `dispatch` would pop them,
/// without touching the heap: a bounded selection, O(n log limit).
fn top_in_delivery_order<'a>(heap: impl Iterator<Item = &'a Entry>, limit: usize) -> Vec<Entry> {
    if limit == 0 {
        return Vec::new();
    }
    let mut best: BinaryHeap<Reverse<Entry>> = BinaryHeap::with_capacity(limit + 1);
    for e in heap {
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

pub(super) fn snapshot_of(q: &Queue) -> QueueSnapshot {
    QueueSnapshot {
        name: q.name.clone(),
        ready: q.ready_len(),
        delayed: q.delayed,
        leased: q.leased,
        dead: q.dead.len() as u64,
        consumers: q.subs.len() as u64,
        config: q.config.clone(),
        counters: q.counters,
    }
}
