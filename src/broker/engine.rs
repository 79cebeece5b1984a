//! The delivery engine: per-queue ready heaps and delay index, the lease table, credit
//! based dispatch with least-in-flight balancing, settlement, expiry and retry policy.
//!
//! Pure and synchronous: time comes in as a `now` argument and every change that must
//! be persisted goes out as a [`Mutation`]. No sockets, no store, no async.
//! Fields are `pub(super)` so that sibling modules of `broker/` can extend `Engine`
//! with `impl` blocks of their own (one file per concern).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::backoff::retry_delay_ms;
use crate::model::{Millis, Mutation, QueueConfig, StatePatch, TaskId, TaskState, TaskStatus};

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

/// Engine-wide limits and defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Configuration of queues created on first use.
    pub queue_defaults: QueueConfig,
    /// Upper bound of any lease or extension.
    pub max_lease_ms: u64,
    /// Seed of the jitter source (fixed in tests).
    pub rng_seed: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue_defaults: QueueConfig::default(),
            max_lease_ms: 12 * 3600 * 1000,
            rng_seed: 0x5eed,
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
    fn stored(id: TaskId, state: &TaskState) -> Entry {
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

pub(super) type QueueIdx = u32;

#[derive(Debug)]
pub(super) struct SubSlot {
    /// Unique per subscription instance: a client may reuse a subscription id after
    /// unsubscribing, and the old instance's leases must not free the new one's credit.
    pub(super) uid: u64,
    pub(super) conn: ConnId,
    pub(super) sub: SubId,
    pub(super) prefetch: u32,
    pub(super) in_flight: u32,
    /// Its connection reads too slowly: no deliveries until it catches up.
    pub(super) paused: bool,
}

#[derive(Debug)]
pub(super) struct Queue {
    pub(super) name: Arc<str>,
    pub(super) config: QueueConfig,
    pub(super) ready: BinaryHeap<Entry>,
    pub(super) delayed: u64,
    pub(super) leased: u64,
    /// The dead set, oldest first: kept in memory (id and entry, about 40 bytes per
    /// dead task) so that peek, redrive and purge never scan the store.
    pub(super) dead: BTreeMap<TaskId, Entry>,
    pub(super) subs: Vec<SubSlot>,
    /// Index in `subs` where the next tie-breaking scan starts (round-robin).
    pub(super) rr: usize,
    pub(super) dirty: bool,
    pub(super) counters: QueueCounters,
    /// A destructive admin change of this queue is in flight: nothing is dispatched.
    pub(super) held: bool,
}

impl Queue {
    pub(super) fn new(name: Arc<str>, config: QueueConfig) -> Queue {
        Queue {
            name,
            config,
            ready: BinaryHeap::new(),
            delayed: 0,
            leased: 0,
            dead: BTreeMap::new(),
            subs: Vec::new(),
            rr: 0,
            dirty: false,
            counters: QueueCounters::default(),
            held: false,
        }
    }

    pub(super) fn effective_max_attempts(&self, entry: &Entry) -> u32 {
        if entry.max_attempts > 0 {
            entry.max_attempts
        } else {
            self.config.max_attempts
        }
    }

    /// Least in-flight subscription with free credit; ties go round-robin from `rr`.
    fn pick_subscriber(&mut self) -> Option<usize> {
        let n = self.subs.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.rr + k) % n;
            let s = &self.subs[i];
            if s.in_flight >= s.prefetch || s.paused {
                continue;
            }
            match best {
                Some(b) if self.subs[b].in_flight <= s.in_flight => {}
                _ => best = Some(i),
            }
        }
        if let Some(i) = best {
            self.rr = (i + 1) % n;
        }
        best
    }

    pub(super) fn release_credit(&mut self, slot: u64) {
        if let Some(s) = self.subs.iter_mut().find(|s| s.uid == slot) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) token: u64,
    pub(super) deadline_ms: Millis,
    pub(super) conn: ConnId,
    /// The subscription id it was delivered to (for display: peek shows the holder).
    pub(super) sub: SubId,
    /// `SubSlot::uid` of the subscription instance it was delivered to (credit is
    /// returned by this, since a client may reuse a subscription id).
    pub(super) slot: u64,
    pub(super) queue: QueueIdx,
    pub(super) entry: Entry,
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
    pub(super) leases: HashMap<TaskId, Lease>,
    /// Lease deadlines; stale entries (settled or extended leases) are skipped on pop.
    pub(super) deadlines: BinaryHeap<Reverse<(Millis, TaskId, u64)>>,
    pub(super) conn_subs: HashMap<ConnId, Vec<(QueueIdx, SubId)>>,
    pub(super) dirty: Vec<QueueIdx>,
    pub(super) next_token: u64,
    /// The next `SubSlot::uid`.
    pub(super) next_slot: u64,
    pub(super) rng: SmallRng,
    /// Slots of deleted queues, reused by the next new queue (`broker/admin.rs`).
    pub(super) free_slots: Vec<QueueIdx>,
    /// Connections whose deliveries are paused (their delivery window is full).
    pub(super) paused_conns: HashSet<ConnId>,
    /// Most deliveries per connection not yet reported written
    /// ([`Engine::written`]); `None` = no window (the default, for tests of the pure
    /// engine).
    pub(super) delivery_window: Option<u32>,
    /// Deliveries per connection not yet reported written (only with a window).
    pub(super) unwritten: HashMap<ConnId, u32>,
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
            leases: HashMap::new(),
            deadlines: BinaryHeap::new(),
            conn_subs: HashMap::new(),
            dirty: Vec::new(),
            next_token: now.wrapping_shl(20).max(1),
            next_slot: 1,
            rng,
            free_slots: Vec::new(),
            paused_conns: HashSet::new(),
            delivery_window: None,
            unwritten: HashMap::new(),
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
        let q = &mut self.queues[idx as usize];
        q.config = config;
        self.mark_dirty(idx);
    }

    /// The configuration of a queue, if it exists.
    /// Tasks of queue `name` that count against its `max_length`: ready, delayed and
    /// leased (0 for a queue that does not exist yet).
    pub fn pending_count(&self, name: &str) -> u64 {
        self.by_name.get(name).map_or(0, |&i| {
            let q = &self.queues[i as usize];
            q.ready.len() as u64 + q.delayed + q.leased
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
    fn set_conn_paused(&mut self, conn: ConnId, paused: bool) {
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
        if not_before > now {
            self.queues[idx as usize].delayed += 1;
            self.delayed.insert((not_before, entry.id), (idx, entry));
        } else {
            self.queues[idx as usize].ready.push(entry);
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
                    return Some(dead_patch(id, REASON_RESTARTED, now));
                }
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
    /// `Remove` when the queue keeps no results.
    pub fn ack(
        &mut self,
        conn: ConnId,
        task: TaskId,
        token: u64,
        result: Bytes,
        now: Millis,
    ) -> Result<Mutation, EngineError> {
        let lease = self.take_lease(conn, task, token)?;
        let q = &mut self.queues[lease.queue as usize];
        q.counters.acked += 1;
        if q.config.result_ttl_ms == 0 {
            return Ok(Mutation::Remove { id: task });
        }
        Ok(Mutation::Succeed {
            id: task,
            result,
            updated_ms: now,
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
    /// once and the attempt counted at delivery is undone. The returned mutation (the
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
        self.enqueue(lease.queue, lease.entry, 0, now);
        Ok(Mutation::Patch {
            id: task,
            patch: StatePatch {
                attempts: Some(attempts),
                updated_ms: now,
                ..StatePatch::default()
            },
        })
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

    /// Either schedules the next attempt or moves the task to the dead set.
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
            return dead_patch(entry.id, reason, now);
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
                not_before_ms: Some(not_before),
                last_error: Some(Some(reason.to_owned())),
                updated_ms: now,
                ..StatePatch::default()
            },
        }
    }

    /// Expires leases and releases delayed tasks whose time has come.
    pub fn tick(&mut self, now: Millis, out: &mut Vec<Effect>) {
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
            self.queues[idx as usize].ready.push(entry);
            self.mark_dirty(idx);
        }
    }

    /// Hands ready tasks to subscriptions with free credit.
    pub fn dispatch(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut full = Vec::new();
        for idx in dirty.iter().copied() {
            self.dispatch_queue(idx, now, out, &mut full);
            // Connections whose window just filled: pause their other subscriptions.
            for conn in full.drain(..) {
                self.set_conn_paused(conn, true);
            }
        }
        // Reuse the allocation.
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn dispatch_queue(
        &mut self,
        idx: QueueIdx,
        now: Millis,
        out: &mut Vec<Effect>,
        full: &mut Vec<ConnId>,
    ) {
        let max_lease = self.config.max_lease_ms;
        let window = self.delivery_window;
        let q = &mut self.queues[idx as usize];
        q.dirty = false;
        if q.config.paused || q.held {
            return;
        }
        while !q.ready.is_empty() {
            let Some(slot) = q.pick_subscriber() else {
                break;
            };
            let Some(mut entry) = q.ready.pop() else {
                break;
            };
            entry.attempts += 1;
            let lease_ms = if entry.lease_ms > 0 {
                u64::from(entry.lease_ms)
            } else {
                q.config.lease_ms
            }
            .min(max_lease);
            let deadline_ms = now.saturating_add(lease_ms);
            let token = self.next_token;
            self.next_token = self.next_token.wrapping_add(1);
            let s = &mut q.subs[slot];
            s.in_flight += 1;
            let (conn, sub, sub_slot) = (s.conn, s.sub, s.uid);
            if let Some(window) = window {
                let count = self.unwritten.entry(conn).or_default();
                *count += 1;
                if *count >= window {
                    for s in q.subs.iter_mut().filter(|s| s.conn == conn) {
                        s.paused = true;
                    }
                    full.push(conn);
                }
            }
            q.leased += 1;
            q.counters.delivered += 1;
            if entry.attempts > 1 {
                q.counters.redelivered += 1;
            }
            let max_attempts = q.effective_max_attempts(&entry);
            self.leases.insert(
                entry.id,
                Lease {
                    token,
                    deadline_ms,
                    conn,
                    sub,
                    slot: sub_slot,
                    queue: idx,
                    entry,
                },
            );
            self.deadlines.push(Reverse((deadline_ms, entry.id, token)));
            out.push(Effect::Persist(Mutation::Patch {
                id: entry.id,
                patch: StatePatch {
                    attempts: Some(entry.attempts),
                    updated_ms: now,
                    ..StatePatch::default()
                },
            }));
            out.push(Effect::Deliver(Dispatch {
                conn,
                sub,
                task: entry.id,
                token,
                attempt: entry.attempts,
                max_attempts,
                deadline_ms,
                priority: entry.priority,
                queue: q.name.clone(),
            }));
        }
    }

    /// The earliest time at which `tick` has work: a lease deadline or a delayed task.
    pub fn next_wakeup(&self) -> Option<Millis> {
        let lease = self.deadlines.peek().map(|Reverse((d, _, _))| *d);
        let delayed = self.delayed.first_key_value().map(|(&(t, _), _)| t);
        match (lease, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A view of every queue, sorted by name.
    pub fn snapshot(&self) -> Vec<QueueSnapshot> {
        let mut v: Vec<QueueSnapshot> = self
            .by_name
            .values()
            .map(|&i| &self.queues[i as usize])
            .map(|q| QueueSnapshot {
                name: q.name.clone(),
                ready: q.ready.len() as u64,
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

pub(super) fn dead_patch(id: TaskId, reason: &str, now: Millis) -> Mutation {
    Mutation::Patch {
        id,
        patch: StatePatch {
            status: Some(TaskStatus::Dead),
            last_error: Some(Some(reason.to_owned())),
            updated_ms: now,
            ..StatePatch::default()
        },
    }
}
