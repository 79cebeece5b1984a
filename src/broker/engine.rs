//! The delivery engine: per-queue ready heaps and delay index, the lease table, credit
//! based dispatch with least-in-flight balancing, settlement, expiry and retry policy.
//!
//! Pure and synchronous: time comes in as a `now` argument and every change that must
//! be persisted goes out as a [`Mutation`]. No sockets, no store, no async.
//! Fields are `pub(super)` so that sibling modules of `broker/` can extend `Engine`
//! with `impl` blocks of their own (one file per concern).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::expiry::Waiting;
pub(super) use super::queue::{Lease, Queue, QueueIdx, SubSlot};
use super::schedule::Schedules;
use crate::model::{
    IdMap, IdSet, Millis, Mutation, QueueConfig, StatePatch, TaskId, TaskState, TaskStatus,
};

/// Identifies a client connection inside the broker.
pub type ConnId = u64;
/// Identifies a subscription within its connection (the Subscribe request id).
pub type SubId = u64;

/// Reason recorded when a lease runs out.
pub const REASON_LEASE_EXPIRED: &str = "lease expired";
/// Reason recorded when the consumer's connection closes while holding the lease.
pub const REASON_DISCONNECTED: &str = "consumer disconnected";
/// Reason recorded when a restart finds a task whose last allowed delivery was in flight.
pub const REASON_RESTARTED: &str = "broker restarted while the task was leased";
/// Reason recorded for a nack that gives none.
pub const REASON_NACKED: &str = "nacked";
/// Most expiry-index entries one `tick` handles; the rest wait for the next turn.
pub const EXPIRY_BATCH: usize = 4_096;

/// How long a lease runs before its delivery's attempt count is written on its own.
/// A lease settled sooner writes nothing for the attempt (an ack that removes the task)
/// or writes it with its settlement (every nack, expiry, disconnect and kept result
/// carries the count), so a short task costs two store jobs (publish, ack), not three.
/// The price: a broker that dies within this time of a delivery has not counted it
/// (docs/design/delivery.md, "Attempts").
pub const ATTEMPT_WRITE_AFTER_MS: Millis = 1_000;

/// Most attempt counts `tick` writes per call (the rest at the next one, at once).
pub const ATTEMPT_BATCH: usize = 4_096;

/// Reason recorded when a task was not started before its expiry.
pub const REASON_EXPIRED: &str = "expired";

/// Engine-wide limits and defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Configuration of queues created on first use.
    pub queue_defaults: QueueConfig,
    /// Upper bound of any lease or extension.
    pub max_lease_ms: u64,
    /// Seed of the jitter source (fixed in tests).
    pub rng_seed: u64,
    /// How long a delivery's attempt count may stay unwritten
    /// ([`ATTEMPT_WRITE_AFTER_MS`] by default; 0 = at the next tick).
    pub attempt_write_after_ms: Millis,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue_defaults: QueueConfig::default(),
            max_lease_ms: 12 * 3600 * 1000,
            rng_seed: 0x5eed,
            attempt_write_after_ms: ATTEMPT_WRITE_AFTER_MS,
        }
    }
}

/// Why a settlement or subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The token is not the live lease of the task on this connection.
    #[error("task {task} has no live lease with that token on this connection (expired, released or already settled)")]
    LeaseExpired {
        /// The task named in the request.
        task: TaskId,
    },
    /// The connection already has a subscription with that id.
    #[error("subscription id {0} is already in use on this connection")]
    DuplicateSubscription(SubId),
    /// No such subscription on this connection.
    #[error("no subscription {0} on this connection")]
    NoSuchSubscription(SubId),
}

/// A task waiting in a ready heap, delayed, or leased: 24 bytes, all that the engine keeps
/// in memory per task. Payloads stay on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Task id (older tasks have lower ids).
    pub id: TaskId,
    /// Higher first.
    pub priority: i32,
    /// Deliveries so far.
    pub attempts: u32,
    /// Per-task limit, 0 = queue default.
    pub max_attempts: u32,
    /// Per-task lease in ms, 0 = queue default.
    pub lease_ms: u32,
}

impl Entry {
    /// The index entry of a task as the store holds it.
    pub(super) fn stored(id: TaskId, state: &TaskState) -> Entry {
        Entry {
            id,
            priority: state.priority,
            attempts: state.attempts,
            max_attempts: state.max_attempts,
            lease_ms: clamp_lease(state.lease_ms),
        }
    }
}

impl Ord for Entry {
    /// Max-heap order: higher priority, then lower id (FIFO within a priority).
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.id.cmp(&self.id))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A task that has just been made durable by a publish.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Queue name.
    pub queue: Arc<str>,
    /// Task id.
    pub id: TaskId,
    /// Priority.
    pub priority: i32,
    /// Not delivered before this time.
    pub not_before_ms: Millis,
    /// Per-task limit, 0 = queue default.
    pub max_attempts: u32,
    /// Per-task lease, 0 = queue default.
    pub lease_ms: u64,
    /// Not delivered for the first time after this (0 = never expires).
    pub expires_ms: Millis,
}

/// A delivery decided by the engine, to be sent on `conn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// Connection of the subscription.
    pub conn: ConnId,
    /// Subscription id.
    pub sub: SubId,
    /// The task.
    pub task: TaskId,
    /// The new lease's token.
    pub token: u64,
    /// 1-based attempt number of this delivery.
    pub attempt: u32,
    /// Effective limit.
    pub max_attempts: u32,
    /// Lease deadline.
    pub deadline_ms: Millis,
    /// Priority.
    pub priority: i32,
    /// Queue name.
    pub queue: Arc<str>,
}

/// What an ack makes durable, in this order, before it is confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// The delivery's attempt count, when the store does not hold it yet and the task's
    /// record stays (`Succeed`): a removed task needs none.
    pub attempt: Option<Mutation>,
    /// `Succeed` or `Remove` ([`Engine::ack`]).
    pub change: Mutation,
    /// The settled delivery's attempt count, for giving the task back if the ack is
    /// not stored (the store may not hold this count).
    pub attempts: u32,
}

/// Something the engine decided that the runtime must carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send a delivery.
    Deliver(Dispatch),
    /// Persist a change; nobody waits for it.
    Persist(Mutation),
}

/// How a nack wants the task retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NackMode {
    /// After the queue's backoff.
    Backoff,
    /// After exactly this delay.
    After(u64),
    /// To the dead set now.
    Dead,
}

/// Lifetime counters of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Tasks published.
    pub published: u64,
    /// Deliveries made.
    pub delivered: u64,
    /// Acks.
    pub acked: u64,
    /// Nacks.
    pub nacked: u64,
    /// Leases that ran out.
    pub expired: u64,
    /// Tasks moved to the dead set.
    pub dead_lettered: u64,
    /// Deliveries of a task that had been delivered before.
    pub redelivered: u64,
    /// Tasks that expired before their first delivery (dead or dropped).
    pub expired_tasks: u64,
}

/// A point-in-time view of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// Name.
    pub name: Arc<str>,
    /// Ready to deliver.
    pub ready: u64,
    /// Waiting for their not-before time.
    pub delayed: u64,
    /// Leased to consumers.
    pub leased: u64,
    /// In the dead set.
    pub dead: u64,
    /// Subscriptions.
    pub consumers: u64,
    /// Configuration.
    pub config: QueueConfig,
    /// Counters.
    pub counters: QueueCounters,
}

/// The broker's in-memory state machine.
pub struct Engine {
    pub(super) config: EngineConfig,
    pub(super) queues: Vec<Queue>,
    pub(super) by_name: HashMap<Arc<str>, QueueIdx>,
    /// The names of `by_name` in order, for paged listings.
    pub(super) sorted: BTreeSet<Arc<str>>,
    /// Delayed tasks across all queues, by (not-before, id).
    pub(super) delayed: BTreeMap<(Millis, TaskId), (QueueIdx, Entry)>,
    pub(super) leases: IdMap<TaskId, Lease>,
    /// Lease deadlines; stale entries (settled or extended leases) are skipped on pop.
    pub(super) deadlines: BinaryHeap<Reverse<(Millis, TaskId, u64)>>,
    /// (when, task, token) of leases whose attempt count is not written yet, in
    /// delivery order; entries of leases since ended are skipped.
    pub(super) attempts_due: VecDeque<(Millis, TaskId, u64)>,
    pub(super) conn_subs: IdMap<ConnId, Vec<(QueueIdx, SubId)>>,
    pub(super) dirty: Vec<QueueIdx>,
    pub(super) next_token: u64,
    /// The next `SubSlot::uid`.
    pub(super) next_slot: u64,
    pub(super) rng: SmallRng,
    /// Slots of deleted queues, reused by the next new queue (`broker/admin.rs`).
    pub(super) free_slots: Vec<QueueIdx>,
    /// Connections whose deliveries are paused (their delivery window is full).
    pub(super) paused_conns: IdSet<ConnId>,
    /// Most deliveries per connection not yet reported written
    /// ([`Engine::written`]); `None` = no window (the default, for tests of the pure
    /// engine).
    pub(super) delivery_window: Option<u32>,
    /// Deliveries per connection not yet reported written (only with a window).
    pub(super) unwritten: IdMap<ConnId, u32>,
    /// Tasks with an expiry not yet delivered, and where they wait (`expiry.rs`).
    pub(super) expiring: IdMap<TaskId, Waiting>,
    /// (expiry, task) of `expiring`; entries of tasks since delivered or removed are
    /// stale and skipped.
    pub(super) expiry_index: BTreeSet<(Millis, TaskId)>,
    /// Rate-limited queues out of tokens, by when the next one is there.
    pub(super) throttled: BTreeSet<(Millis, QueueIdx)>,
    /// Periodic schedules (`schedule.rs`).
    pub(super) schedules: Schedules,
}

impl Engine {
    /// An empty engine. `now` seeds lease tokens so that tokens never repeat across
    /// restarts.
    pub fn new(config: EngineConfig, now: Millis) -> Engine {
        let rng = SmallRng::seed_from_u64(config.rng_seed);
        Engine {
            config,
            queues: Vec::new(),
            by_name: HashMap::new(),
            sorted: BTreeSet::new(),
            delayed: BTreeMap::new(),
            leases: IdMap::default(),
            deadlines: BinaryHeap::new(),
            attempts_due: VecDeque::new(),
            conn_subs: IdMap::default(),
            dirty: Vec::new(),
            next_token: now.wrapping_shl(20).max(1),
            next_slot: 1,
            rng,
            free_slots: Vec::new(),
            paused_conns: IdSet::default(),
            delivery_window: None,
            unwritten: IdMap::default(),
            expiring: IdMap::default(),
            expiry_index: BTreeSet::new(),
            throttled: BTreeSet::new(),
            schedules: Schedules::default(),
        }
    }

    pub(super) fn queue_idx(&mut self, name: &str) -> QueueIdx {
        if let Some(&idx) = self.by_name.get(name) {
            return idx;
        }
        let name: Arc<str> = Arc::from(name);
        let queue = Queue::new(name.clone(), self.config.queue_defaults.clone());
        let idx = match self.free_slots.pop() {
            Some(idx) => {
                self.queues[idx as usize] = queue;
                idx
            }
            None => {
                self.queues.push(queue);
                (self.queues.len() - 1) as QueueIdx
            }
        };
        self.sorted.insert(name.clone());
        self.by_name.insert(name, idx);
        debug_assert_eq!(self.sorted.len(), self.by_name.len());
        idx
    }

    /// The interned name of a queue, creating the queue with defaults on first use.
    pub fn intern_queue(&mut self, name: &str) -> Arc<str> {
        let idx = self.queue_idx(name);
        self.queues[idx as usize].name.clone()
    }

    /// Installs a persisted configuration (at start-up or after a change).
    pub fn set_queue_config(&mut self, name: &str, config: QueueConfig) {
        let idx = self.queue_idx(name);
        self.queues[idx as usize].set_config(config);
        self.mark_dirty(idx);
    }

    /// The configuration of a queue, if it exists.
    /// Tasks of queue `name` that count against its `max_length`: ready, delayed and
    /// leased (0 for a queue that does not exist yet).
    pub fn pending_count(&self, name: &str) -> u64 {
        self.by_name.get(name).map_or(0, |&i| {
            let q = &self.queues[i as usize];
            q.ready_len() + q.delayed + q.leased
        })
    }

    /// The `max_length` of queue `name` (the default's for a queue not created yet);
    /// 0 = unbounded.
    pub fn max_length(&self, name: &str) -> u64 {
        self.queue_config(name)
            .unwrap_or(&self.config.queue_defaults)
            .max_length
    }

    /// Names of the queues whose `max_length` is bounded differently from the default
    /// (bounded when the default is not, or unbounded when it is).
    pub fn max_length_exceptions(&self) -> Vec<Arc<str>> {
        let default_bounded = self.config.queue_defaults.max_length > 0;
        self.by_name
            .values()
            .map(|&i| &self.queues[i as usize])
            .filter(|q| (q.config.max_length > 0) != default_bounded)
            .map(|q| q.name.clone())
            .collect()
    }

    /// Bounds the deliveries handed to one connection and not yet written to its
    /// socket: past `window`, its subscriptions get nothing until the connection
    /// reports progress with [`Engine::written`]. A connection that reads slowly (its
    /// writer stops taking deliveries at its byte limit) stops receiving tasks this way,
    /// whatever its credit, and they go to other consumers.
    pub fn set_delivery_window(&mut self, window: Option<u32>) {
        self.delivery_window = window.filter(|&w| w > 0);
    }

    /// Cluster mode: this engine serves as the leader of Raft term `term`, and its
    /// lease tokens carry the term in their high 24 bits. A token given by a leader
    /// of another term (another engine) is then never one this engine gave, so an
    /// ack or extend with it is `LeaseExpired`, whatever the two nodes' clocks say.
    pub fn set_token_epoch(&mut self, term: u64) {
        self.next_token = (term << 40).max(1);
    }

    /// `n` deliveries to `conn` were written (or dropped) by its connection.
    pub fn written(&mut self, conn: ConnId, n: u32) {
        let Some(window) = self.delivery_window else {
            return;
        };
        let Some(count) = self.unwritten.get_mut(&conn) else {
            return;
        };
        *count = count.saturating_sub(n);
        if *count < window && self.paused_conns.contains(&conn) {
            self.set_conn_paused(conn, false);
        }
    }

    /// Pauses (or resumes) deliveries to every subscription of `conn`. Leases it holds
    /// are not affected.
    pub(super) fn set_conn_paused(&mut self, conn: ConnId, paused: bool) {
        if paused {
            self.paused_conns.insert(conn);
        } else {
            self.paused_conns.remove(&conn);
        }
        let subs = self.conn_subs.get(&conn).cloned().unwrap_or_default();
        for (idx, sub) in subs {
            let q = &mut self.queues[idx as usize];
            if let Some(s) = q.subs.iter_mut().find(|s| s.conn == conn && s.sub == sub) {
                s.paused = paused;
            }
            if !paused {
                self.mark_dirty(idx);
            }
        }
    }

    pub fn queue_config(&self, name: &str) -> Option<&QueueConfig> {
        self.by_name
            .get(name)
            .map(|&i| &self.queues[i as usize].config)
    }

    pub(super) fn mark_dirty(&mut self, idx: QueueIdx) {
        let q = &mut self.queues[idx as usize];
        if !q.dirty {
            q.dirty = true;
            self.dirty.push(idx);
        }
    }

    pub(super) fn enqueue(&mut self, idx: QueueIdx, entry: Entry, not_before: Millis, now: Millis) {
        let delayed = not_before > now;
        if !self.expiring.is_empty() {
            if let Some(w) = self.expiring.get_mut(&entry.id) {
                w.not_before = if delayed { not_before } else { 0 };
            }
        }
        if delayed {
            self.queues[idx as usize].delayed += 1;
            self.delayed.insert((not_before, entry.id), (idx, entry));
        } else {
            self.queues[idx as usize].push_ready(entry);
            self.mark_dirty(idx);
        }
    }

    /// Rebuilds the index entry of one stored task at start-up.
    ///
    /// A pending task whose attempts already reached the limit was leased on its last
    /// allowed delivery when the broker stopped: it becomes dead, and the returned
    /// mutation records that.
    pub fn recover_task(&mut self, id: TaskId, state: &TaskState, now: Millis) -> Option<Mutation> {
        let idx = self.queue_idx(&state.queue);
        let entry = Entry::stored(id, state);
        match state.status {
            TaskStatus::Pending => {
                let max = self.queues[idx as usize].effective_max_attempts(&entry);
                if max > 0 && entry.attempts >= max {
                    self.queues[idx as usize].dead.insert(id, entry);
                    return Some(dead_patch(id, REASON_RESTARTED, None, now));
                }
                self.watch_expiry(idx, entry, state.expires_ms);
                self.enqueue(idx, entry, state.not_before_ms, now);
            }
            TaskStatus::Dead => {
                self.queues[idx as usize].dead.insert(id, entry);
            }
            TaskStatus::Succeeded => {}
        }
        None
    }

    /// Puts back a task whose ack could not be stored: the engine dropped it when the
    /// ack came in, but the store still has it pending, as `state` says. It becomes
    /// ready (or delayed) again as stored, even on its last attempt: its handler ran,
    /// so what is owed is one more delivery, not a death.
    pub fn restore_task(&mut self, id: TaskId, state: &TaskState, now: Millis) {
        if state.status != TaskStatus::Pending {
            return;
        }
        let idx = self.queue_idx(&state.queue);
        let entry = Entry::stored(id, state);
        self.enqueue(idx, entry, state.not_before_ms, now);
    }

    /// Makes newly durable tasks deliverable (or delayed).
    pub fn publish_committed(&mut self, tasks: &[Committed], now: Millis) {
        for t in tasks {
            let idx = self.queue_idx(&t.queue);
            self.queues[idx as usize].counters.published += 1;
            let entry = Entry {
                id: t.id,
                priority: t.priority,
                attempts: 0,
                max_attempts: t.max_attempts,
                lease_ms: clamp_lease(t.lease_ms),
            };
            self.watch_expiry(idx, entry, t.expires_ms);
            self.enqueue(idx, entry, t.not_before_ms, now);
        }
    }

    /// Adds a subscription with `prefetch` credit.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        sub: SubId,
        queue: &str,
        prefetch: u32,
    ) -> Result<(), EngineError> {
        let subs = self.conn_subs.entry(conn).or_default();
        if subs.iter().any(|&(_, s)| s == sub) {
            return Err(EngineError::DuplicateSubscription(sub));
        }
        let idx = self.queue_idx(queue);
        self.conn_subs.entry(conn).or_default().push((idx, sub));
        let uid = self.next_slot;
        self.next_slot += 1;
        self.queues[idx as usize].subs.push(SubSlot {
            uid,
            conn,
            sub,
            prefetch,
            in_flight: 0,
            paused: self.paused_conns.contains(&conn),
        });
        self.mark_dirty(idx);
        Ok(())
    }

    /// Stops deliveries to a subscription. Its leases stay live.
    pub fn unsubscribe(&mut self, conn: ConnId, sub: SubId) -> Result<(), EngineError> {
        let subs = self
            .conn_subs
            .get_mut(&conn)
            .ok_or(EngineError::NoSuchSubscription(sub))?;
        let pos = subs
            .iter()
            .position(|&(_, s)| s == sub)
            .ok_or(EngineError::NoSuchSubscription(sub))?;
        let (idx, _) = subs.swap_remove(pos);
        self.remove_slot(idx, conn, sub);
        Ok(())
    }

    pub(super) fn remove_slot(&mut self, idx: QueueIdx, conn: ConnId, sub: SubId) {
        let q = &mut self.queues[idx as usize];
        q.subs.retain(|s| !(s.conn == conn && s.sub == sub));
        if q.rr >= q.subs.len() {
            q.rr = 0;
        }
    }

    /// Writes the attempt counts of leases open for `attempt_write_after_ms` (at most
    /// [`ATTEMPT_BATCH`] per call), expires leases, releases delayed tasks whose time
    /// has come, expires tasks not started by their expiry (at most [`EXPIRY_BATCH`]
    /// per call) and wakes rate-limited queues whose next token is there.
    pub fn tick(&mut self, now: Millis, out: &mut Vec<Effect>) {
        self.write_due_attempts(now, ATTEMPT_BATCH, out);
        while let Some(&Reverse((deadline, task, token))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            let live = matches!(self.leases.get(&task), Some(l) if l.token == token && l.deadline_ms <= now);
            if !live {
                continue;
            }
            let Some(lease) = self.leases.remove(&task) else {
                continue;
            };
            let q = &mut self.queues[lease.queue as usize];
            q.leased = q.leased.saturating_sub(1);
            q.counters.expired += 1;
            q.release_credit(lease.slot);
            self.mark_dirty(lease.queue);
            let m = self.retry_or_bury(
                lease.queue,
                lease.entry,
                NackMode::Backoff,
                REASON_LEASE_EXPIRED,
                now,
            );
            out.push(Effect::Persist(m));
        }
        while let Some((&(not_before, id), _)) = self.delayed.first_key_value() {
            if not_before > now {
                break;
            }
            let Some((idx, entry)) = self.delayed.remove(&(not_before, id)) else {
                break;
            };
            self.queues[idx as usize].delayed -= 1;
            self.enqueue(idx, entry, 0, now);
        }
        self.expire_due(now, EXPIRY_BATCH, out);
        while let Some(&(at, idx)) = self.throttled.first() {
            if at > now {
                break;
            }
            self.throttled.pop_first();
            if (idx as usize) < self.queues.len() {
                self.mark_dirty(idx);
            }
        }
    }

    /// The earliest time at which `tick` has work: an attempt count to write, a lease
    /// deadline, a delayed task, an expiry, a rate-limited queue's next token. (Schedules have their own:
    /// [`Engine::next_schedule_run`].)
    pub fn next_wakeup(&self) -> Option<Millis> {
        [
            self.attempts_due.front().map(|&(at, _, _)| at),
            self.deadlines.peek().map(|Reverse((d, _, _))| *d),
            self.delayed.first_key_value().map(|(&(t, _), _)| t),
            self.expiry_index.first().map(|&(t, _)| t),
            self.throttled.first().map(|&(t, _)| t),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A view of every queue, sorted by name.
    pub fn snapshot(&self) -> Vec<QueueSnapshot> {
        let mut v: Vec<QueueSnapshot> = self
            .by_name
            .values()
            .map(|&i| &self.queues[i as usize])
            .map(|q| QueueSnapshot {
                name: q.name.clone(),
                ready: q.ready_len(),
                delayed: q.delayed,
                leased: q.leased,
                dead: q.dead.len() as u64,
                consumers: q.subs.len() as u64,
                config: q.config.clone(),
                counters: q.counters,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Slots of the queue table (live queues and freed ones): walks that visit the
    /// queues a slice at a time read slots `0..queue_slots()` with [`Engine::counters_at`].
    pub fn queue_slots(&self) -> usize {
        self.queues.len()
    }

    /// The name and counters of the queue living in `slot`, if any.
    pub fn counters_at(&self, slot: usize) -> Option<(&Arc<str>, QueueCounters)> {
        let q = self.queues.get(slot)?;
        // A freed slot holds a queue without a name (`delete_queue`).
        (!q.name.is_empty()).then_some((&q.name, q.counters))
    }

    /// Every queue's tasks and counters, in no order: one pass over the queue table.
    pub fn queue_views(&self) -> impl Iterator<Item = QueueSnapshot> + '_ {
        self.by_name
            .values()
            .map(|&i| super::admin::snapshot_of(&self.queues[i as usize]))
    }

    /// Up to `limit` queues whose names sort after `after`, in name order, and whether
    /// more follow: O(log queues + limit).
    pub fn queue_page(&self, after: &str, limit: usize) -> (Vec<QueueSnapshot>, bool) {
        use std::ops::Bound;
        let mut names = self
            .sorted
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded));
        let page = names
            .by_ref()
            .take(limit)
            .filter_map(|name| self.by_name.get(name))
            .map(|&i| super::admin::snapshot_of(&self.queues[i as usize]))
            .collect();
        (page, names.next().is_some())
    }

    /// True when some queue changed since the last dispatch.
    pub fn needs_dispatch(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Number of live leases.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }
}

fn clamp_lease(ms: u64) -> u32 {
    u32::try_from(ms).unwrap_or(u32::MAX)
}

/// The task goes to the dead set with `reason`, and its attempt count when the
/// store may not hold it yet (a settled delivery's).
pub(super) fn dead_patch(id: TaskId, reason: &str, attempts: Option<u32>, now: Millis) -> Mutation {
    Mutation::Patch {
        id,
        patch: StatePatch {
            status: Some(TaskStatus::Dead),
            attempts,
            last_error: Some(Some(reason.to_owned())),
            updated_ms: now,
            ..StatePatch::default()
        },
    }
}

/// The task's attempt count, on its own.
pub(super) fn attempts_patch(id: TaskId, attempts: u32, now: Millis) -> Mutation {
    Mutation::Patch {
        id,
        patch: StatePatch {
            attempts: Some(attempts),
            updated_ms: now,
            ..StatePatch::default()
        },
    }
}
