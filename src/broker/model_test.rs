//! Model test of the delivery engine with restarts, in the style of sled's own tests:
//! proptest drives `Engine` with random operation sequences (publish, subscribe,
//! dispatch, ack, nack, extend, undeliverable, time, disconnect, restart) while a
//! deliberately simple reference model predicts every outcome. Every `Mutation` the
//! engine emits is applied to `MemStore`, an in-memory stand-in of `store/` with the
//! writer's Insert/Patch/Remove semantics; a restart keeps the confirmed prefix of that
//! log plus a random part of the unconfirmed tail (what a crash may leave) and rebuilds
//! a fresh engine from it with `recover_task`, as `server::start` does.
//!
//! Each minimised failure is kept at the bottom as a named regression test with a short
//! postmortem. `SQUALL_MODEL_CASES=5000 cargo test --lib model_test` runs a longer search.

use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::model::{
    Millis, Mutation, NewTask, QueueConfig, StatePatch, TaskBody, TaskId, TaskState, TaskStatus,
};

const T0: Millis = 1_000_000;
const MAX_LEASE_MS: u64 = 5_000;
const QUEUES: [&str; 2] = ["a", "b"];
/// Connection slots the operations pick from.
const SLOTS: usize = 3;
/// A connection id the engine never hands out: settling from it must be refused.
const STRANGER: ConnId = 1 << 40;
/// Deliveries remembered for settling (older ones are dropped).
const HANDED: usize = 16;

/// Queue "a" runs on the engine defaults, "b" on its own persisted configuration:
/// immediate retries, a short lease and no attempt limit unless the task sets one.
/// Queues keep no results (`result_ttl` 0), so an ack removes the task: the model's
/// "acked = gone from the store" invariant. Retention is the store's model test's.
fn queue_config(q: usize) -> QueueConfig {
    match q {
        0 => QueueConfig {
            lease_ms: 1_000,
            max_attempts: 3,
            backoff_min_ms: 100,
            backoff_max_ms: 800,
            result_ttl_ms: 0,
            ..QueueConfig::default()
        },
        _ => QueueConfig {
            lease_ms: 400,
            max_attempts: 0,
            backoff_min_ms: 0,
            backoff_max_ms: 0,
            result_ttl_ms: 0,
            ..QueueConfig::default()
        },
    }
}

/// An engine as `server::start` builds one: defaults, then persisted queue configs.
fn new_engine(now: Millis) -> Engine {
    let mut engine = Engine::new(
        EngineConfig {
            queue_defaults: queue_config(0),
            max_lease_ms: MAX_LEASE_MS,
            rng_seed: now,
        },
        now,
    );
    engine.set_queue_config(QUEUES[1], queue_config(1));
    engine
}

/// How a nack asks for the retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NackOp {
    Backoff,
    After(u64),
    Dead,
}

/// One step of a test sequence. Indexes (`queue`, `conn`, `pick`) are reduced modulo
/// what exists, so every sequence is valid and shrinks well.
#[derive(Debug, Clone)]
enum Op {
    Publish {
        queue: u8,
        priority: i8,
        delay_ms: u64,
        max_attempts: u8,
        lease_ms: u32,
    },
    Subscribe {
        conn: u8,
        sub: u8,
        queue: u8,
        prefetch: u8,
    },
    Unsubscribe {
        conn: u8,
        sub: u8,
    },
    /// tick + dispatch at the current time, as the hub does after every batch.
    Dispatch,
    /// Expiry and delayed release only.
    Tick,
    Ack {
        pick: u16,
        stranger: bool,
    },
    Nack {
        pick: u16,
        mode: NackOp,
        reason: bool,
    },
    Extend {
        pick: u16,
        ms: u64,
    },
    /// The hub could not send the delivery (body unreadable): back to ready.
    Undeliverable {
        pick: u16,
    },
    /// Moves the clock without ticking: settlements may arrive before the hub ticks.
    Advance {
        ms: u64,
    },
    Disconnect {
        conn: u8,
    },
    /// Crash and restart. `keep` is how much of the unconfirmed log tail survived, in
    /// 255ths (255 = all of it, as after a clean flush).
    Restart {
        keep: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let publish = (
        0..2u8,
        -2..=2i8,
        prop_oneof![Just(0u64), Just(0), Just(50), Just(700), Just(3_000)],
        prop_oneof![Just(0u8), Just(0), Just(1), Just(2), Just(4)],
        prop_oneof![Just(0u32), Just(0), Just(300), Just(8_000)],
    )
        .prop_map(
            |(queue, priority, delay_ms, max_attempts, lease_ms)| Op::Publish {
                queue,
                priority,
                delay_ms,
                max_attempts,
                lease_ms,
            },
        );
    let nack_mode = prop_oneof![
        Just(NackOp::Backoff),
        Just(NackOp::After(0)),
        Just(NackOp::After(300)),
        Just(NackOp::Dead),
    ];
    prop_oneof![
        6 => publish,
        3 => (0..3u8, 1..=2u8, 0..2u8, 1..=3u8).prop_map(|(conn, sub, queue, prefetch)| {
            Op::Subscribe { conn, sub, queue, prefetch }
        }),
        2 => (0..3u8, 1..=2u8).prop_map(|(conn, sub)| Op::Unsubscribe { conn, sub }),
        6 => Just(Op::Dispatch),
        1 => Just(Op::Tick),
        5 => (any::<u16>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, stranger)| Op::Ack { pick, stranger }),
        3 => (any::<u16>(), nack_mode, any::<bool>())
            .prop_map(|(pick, mode, reason)| Op::Nack { pick, mode, reason }),
        2 => (any::<u16>(), prop_oneof![Just(0u64), Just(200), Just(2_000), Just(60_000)])
            .prop_map(|(pick, ms)| Op::Extend { pick, ms }),
        1 => any::<u16>().prop_map(|pick| Op::Undeliverable { pick }),
        4 => prop_oneof![Just(1u64), Just(99), Just(250), Just(1_000), Just(4_000), Just(60_000)]
            .prop_map(|ms| Op::Advance { ms }),
        1 => (0..3u8).prop_map(|conn| Op::Disconnect { conn }),
        1 => prop_oneof![Just(255u8), any::<u8>()].prop_map(|keep| Op::Restart { keep }),
    ]
}

// ---------------------------------------------------------------------------------
// The store stand-in.

/// What `store/` would hold: the state as of the last restart, the mutations
/// submitted since (in order), and how many of them a client was told are durable.
#[derive(Default)]
struct MemStore {
    durable: BTreeMap<TaskId, TaskState>,
    log: Vec<Mutation>,
    /// `log[..confirmed]` must survive a crash: a publish, ack or nack confirmed it,
    /// and the group-commit writer makes batches durable in submission order.
    confirmed: usize,
    /// `durable` with the whole log applied: the store once everything is flushed.
    current: BTreeMap<TaskId, TaskState>,
}

impl MemStore {
    fn persist(&mut self, m: Mutation, confirmed: bool) {
        apply(&mut self.current, &m);
        self.log.push(m);
        if confirmed {
            self.confirmed = self.log.len();
        }
    }

    /// A crash: the confirmed prefix and `keep`/255 of the tail reach the disk.
    fn crash(&mut self, keep: u8) {
        let tail = self.log.len() - self.confirmed;
        let cut = self.confirmed + tail * usize::from(keep) / 255;
        for m in &self.log[..cut] {
            apply(&mut self.durable, m);
        }
        self.log.clear();
        self.confirmed = 0;
        self.current = self.durable.clone();
    }
}

/// The writer's semantics (`store/writer.rs`): a patch of a task no longer stored is
/// skipped; `None` fields of a patch are left as stored.
fn apply(map: &mut BTreeMap<TaskId, TaskState>, m: &Mutation) {
    match m {
        Mutation::Insert(t) => {
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
        Mutation::PutQueue { .. } | Mutation::RemoveQueue { .. } | Mutation::Sweep { .. } => {
            panic!("the engine never persists queue records or sweeps: {m:?}")
        }
    }
}

// ---------------------------------------------------------------------------------
// The reference model.

#[derive(Debug, Clone, PartialEq, Eq)]
enum MState {
    /// Waiting; `delayed` until a tick at or after `not_before` releases it.
    Ready {
        not_before: Millis,
        delayed: bool,
    },
    Leased {
        token: u64,
        conn: ConnId,
        /// The subscription instance (not its id: ids can be reused).
        sub: u64,
        deadline: Millis,
        /// The stored not-before while leased (the delivery does not change it).
        not_before: Millis,
    },
    Acked,
    Dead,
}

#[derive(Debug, Clone)]
struct MTask {
    queue: usize,
    priority: i32,
    max_attempts: u32,
    lease_ms: u64,
    /// Deliveries that count.
    attempts: u32,
    /// The store's count is one higher: a delivery that could not be sent was counted
    /// on disk before the engine gave it back (the next delivery rewrites it).
    phantom: bool,
    state: MState,
    last_error: Option<String>,
}

impl MTask {
    fn max_attempts(&self) -> u32 {
        if self.max_attempts > 0 {
            self.max_attempts
        } else {
            queue_config(self.queue).max_attempts
        }
    }

    fn lease_ms(&self) -> u64 {
        let ms = if self.lease_ms > 0 {
            self.lease_ms
        } else {
            queue_config(self.queue).lease_ms
        };
        ms.min(MAX_LEASE_MS)
    }

    fn exhausted(&self) -> bool {
        let max = self.max_attempts();
        max > 0 && self.attempts >= max
    }

    fn is_ready(&self) -> bool {
        matches!(self.state, MState::Ready { delayed: false, .. })
    }

    fn is_pending(&self) -> bool {
        matches!(self.state, MState::Ready { .. } | MState::Leased { .. })
    }
}

#[derive(Debug, Clone)]
struct MSub {
    uid: u64,
    conn: ConnId,
    sub: SubId,
    queue: usize,
    prefetch: u32,
}

/// A delivery a client received and may try to settle (possibly long after).
#[derive(Debug, Clone, Copy)]
struct Handed {
    task: TaskId,
    conn: ConnId,
    token: u64,
}

/// How a lease ended.
enum Ending<'a> {
    Nack(NackOp, &'a str),
    Expired,
    Disconnected,
}

struct Harness {
    engine: Engine,
    now: Millis,
    store: MemStore,
    tasks: BTreeMap<TaskId, MTask>,
    subs: Vec<MSub>,
    slots: [Option<ConnId>; SLOTS],
    next_conn: ConnId,
    next_task: TaskId,
    next_uid: u64,
    handed: VecDeque<Handed>,
    /// Deliveries of the last dispatch.
    dispatched: Vec<Handed>,
    /// Every lease token ever handed out, across restarts.
    tokens: HashSet<u64>,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            engine: new_engine(T0),
            now: T0,
            store: MemStore::default(),
            tasks: BTreeMap::new(),
            subs: Vec::new(),
            slots: [None; SLOTS],
            next_conn: 1,
            next_task: 1,
            next_uid: 1,
            handed: VecDeque::new(),
            dispatched: Vec::new(),
            tokens: HashSet::new(),
        }
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::Publish {
                queue,
                priority,
                delay_ms,
                max_attempts,
                lease_ms,
            } => self.publish(
                usize::from(queue) % QUEUES.len(),
                i32::from(priority),
                delay_ms,
                u32::from(max_attempts),
                u64::from(lease_ms),
            ),
            Op::Subscribe {
                conn,
                sub,
                queue,
                prefetch,
            } => {
                let conn = self.connect(conn);
                self.subscribe(
                    conn,
                    SubId::from(sub),
                    usize::from(queue) % QUEUES.len(),
                    u32::from(prefetch),
                );
            }
            Op::Unsubscribe { conn, sub } => self.unsubscribe(conn, SubId::from(sub)),
            Op::Dispatch => self.dispatch(),
            Op::Tick => self.tick(),
            Op::Ack { pick, stranger } => self.ack(pick, stranger),
            Op::Nack { pick, mode, reason } => {
                self.nack(pick, mode, if reason { "boom" } else { "" })
            }
            Op::Extend { pick, ms } => self.extend(pick, ms),
            Op::Undeliverable { pick } => self.undeliverable(pick),
            Op::Advance { ms } => self.now += ms,
            Op::Disconnect { conn } => self.disconnect(conn),
            Op::Restart { keep } => self.restart(keep),
        }
        self.check_agreement();
    }

    fn connect(&mut self, slot: u8) -> ConnId {
        let slot = usize::from(slot) % SLOTS;
        if let Some(conn) = self.slots[slot] {
            return conn;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        self.slots[slot] = Some(conn);
        conn
    }

    fn publish(&mut self, q: usize, priority: i32, delay_ms: u64, max_attempts: u32, lease: u64) {
        let (id, now) = (self.next_task, self.now);
        self.next_task += 1;
        let not_before = if delay_ms > 0 { now + delay_ms } else { 0 };
        let queue: Arc<str> = Arc::from(QUEUES[q]);
        let state = TaskState {
            queue: queue.clone(),
            status: TaskStatus::Pending,
            priority,
            attempts: 0,
            max_attempts,
            lease_ms: lease,
            not_before_ms: not_before,
            created_ms: now,
            updated_ms: now,
            last_error: None,
        };
        // As the server does: durable first, then handed to the engine.
        let body = TaskBody::default();
        let insert = Mutation::Insert(Box::new(NewTask { id, state, body }));
        self.store.persist(insert, true);
        self.engine.publish_committed(
            &[Committed {
                queue,
                id,
                priority,
                not_before_ms: not_before,
                max_attempts,
                lease_ms: lease,
            }],
            now,
        );
        let task = MTask {
            queue: q,
            priority,
            max_attempts,
            lease_ms: lease,
            attempts: 0,
            phantom: false,
            state: MState::Ready {
                not_before,
                delayed: not_before > now,
            },
            last_error: None,
        };
        self.tasks.insert(id, task);
    }

    fn subscribe(&mut self, conn: ConnId, sub: SubId, queue: usize, prefetch: u32) {
        let duplicate = self.subs.iter().any(|s| s.conn == conn && s.sub == sub);
        let got = self.engine.subscribe(conn, sub, QUEUES[queue], prefetch);
        if duplicate {
            assert_eq!(got, Err(EngineError::DuplicateSubscription(sub)));
            return;
        }
        assert_eq!(got, Ok(()));
        self.subs.push(MSub {
            uid: self.next_uid,
            conn,
            sub,
            queue,
            prefetch,
        });
        self.next_uid += 1;
    }

    fn unsubscribe(&mut self, slot: u8, sub: SubId) {
        let conn = self.slots[usize::from(slot) % SLOTS].unwrap_or(STRANGER);
        let pos = self
            .subs
            .iter()
            .position(|s| s.conn == conn && s.sub == sub);
        let got = self.engine.unsubscribe(conn, sub);
        match pos {
            Some(i) => {
                assert_eq!(got, Ok(()));
                self.subs.remove(i);
            }
            None => assert_eq!(got, Err(EngineError::NoSuchSubscription(sub))),
        }
    }

    /// Expires due leases and releases due delayed tasks.
    fn tick(&mut self) {
        let now = self.now;
        let mut due: BTreeSet<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, MState::Leased { deadline, .. } if deadline <= now))
            .map(|(&id, _)| id)
            .collect();
        let mut out = Vec::new();
        self.engine.tick(now, &mut out);
        for effect in out {
            let Effect::Persist(m @ Mutation::Patch { .. }) = effect else {
                panic!("tick only persists lease endings, got {effect:?}");
            };
            let Mutation::Patch { id, patch } = &m else {
                unreachable!()
            };
            assert!(
                due.remove(id),
                "task {id} expired although it had no due lease"
            );
            self.end_lease(*id, patch, Ending::Expired);
            self.store.persist(m, false);
        }
        assert!(
            due.is_empty(),
            "leases past their deadline survived: {due:?}"
        );
        for t in self.tasks.values_mut() {
            if let MState::Ready {
                not_before,
                delayed,
            } = &mut t.state
            {
                if *not_before <= now {
                    *delayed = false;
                }
            }
        }
    }

    /// A lease ended by nack, expiry or disconnect: checks the engine's patch against
    /// the model's rule, and moves the model task on.
    fn end_lease(&mut self, id: TaskId, patch: &StatePatch, ending: Ending<'_>) {
        let now = self.now;
        let t = self.tasks.get_mut(&id).expect("known task");
        let MState::Leased { .. } = t.state else {
            panic!("task {id} ended a lease it did not have: {:?}", t.state);
        };
        let (mode, reason) = match ending {
            Ending::Nack(mode, "") => (mode, REASON_NACKED),
            Ending::Nack(mode, reason) => (mode, reason),
            Ending::Expired => (NackOp::Backoff, REASON_LEASE_EXPIRED),
            Ending::Disconnected => (NackOp::After(0), REASON_DISCONNECTED),
        };
        assert_eq!(patch.last_error, Some(Some(reason.to_owned())), "task {id}");
        assert_eq!(patch.updated_ms, now);
        assert_eq!(patch.attempts, None, "attempts are persisted at delivery");
        t.last_error = Some(reason.to_owned());
        // Dead iff nacked dead or out of attempts.
        if mode == NackOp::Dead || t.exhausted() {
            assert_eq!(patch.status, Some(TaskStatus::Dead), "task {id} buried");
            assert_eq!(patch.not_before_ms, None);
            t.state = MState::Dead;
            return;
        }
        assert_eq!(patch.status, None, "task {id} retried, not buried");
        let not_before = patch
            .not_before_ms
            .expect("a retry persists its not-before");
        match mode {
            NackOp::After(0) => assert_eq!(not_before, 0, "task {id}: retry now"),
            NackOp::After(ms) => assert_eq!(not_before, now + ms, "task {id}: exact delay"),
            NackOp::Backoff => check_backoff(not_before, now, t.attempts, &queue_config(t.queue)),
            NackOp::Dead => unreachable!(),
        }
        t.state = MState::Ready {
            not_before,
            delayed: not_before > now,
        };
    }

    fn dispatch(&mut self) {
        self.tick();
        let mut out = Vec::new();
        self.engine.dispatch(self.now, &mut out);
        self.dispatched.clear();
        let mut counted: Option<(TaskId, u32)> = None;
        for effect in out {
            match effect {
                Effect::Persist(m) => {
                    let Mutation::Patch { id, patch } = &m else {
                        panic!("dispatch persists attempt counts only, got {m:?}");
                    };
                    assert_eq!((patch.status, patch.not_before_ms), (None, None));
                    assert!(counted.is_none(), "one count per delivery");
                    counted = Some((*id, patch.attempts.expect("attempts counted")));
                    self.store.persist(m, false);
                }
                Effect::Deliver(d) => {
                    assert_eq!(
                        counted.take(),
                        Some((d.task, d.attempt)),
                        "each delivery persists its attempt first"
                    );
                    self.delivered(&d);
                }
            }
        }
        assert!(
            counted.is_none(),
            "an attempt was counted without a delivery"
        );
        self.check_work_conserving();
    }

    fn in_flight(&self, uid: u64) -> u32 {
        let n = self
            .tasks
            .values()
            .filter(|t| matches!(t.state, MState::Leased { sub, .. } if sub == uid))
            .count();
        n as u32
    }

    fn delivered(&mut self, d: &Dispatch) {
        let now = self.now;
        let t = self
            .tasks
            .get(&d.task)
            .unwrap_or_else(|| panic!("unknown task {} delivered", d.task));
        let MState::Ready {
            not_before,
            delayed: false,
        } = t.state
        else {
            panic!("task {} delivered while {:?}", d.task, t.state);
        };
        assert!(
            not_before <= now,
            "task {} delivered before its time",
            d.task
        );
        assert_eq!(&*d.queue, QUEUES[t.queue]);
        // Priority order: the best ready task of the queue, FIFO within a priority.
        let best = self
            .tasks
            .iter()
            .filter(|(_, x)| x.queue == t.queue && x.is_ready())
            .max_by_key(|(&id, x)| (x.priority, Reverse(id)))
            .map(|(&id, _)| id);
        assert_eq!(best, Some(d.task), "dispatch order");
        // Credit and balancing.
        let sub = self
            .subs
            .iter()
            .find(|s| s.conn == d.conn && s.sub == d.sub)
            .unwrap_or_else(|| panic!("delivery to no subscription: {d:?}"));
        assert_eq!(
            sub.queue, t.queue,
            "delivery to another queue's subscription"
        );
        let in_flight = self.in_flight(sub.uid);
        assert!(
            in_flight < sub.prefetch,
            "prefetch {} exceeded on ({}, {})",
            sub.prefetch,
            sub.conn,
            sub.sub
        );
        let least = self
            .subs
            .iter()
            .filter(|s| s.queue == t.queue)
            .map(|s| (self.in_flight(s.uid), s.prefetch))
            .filter(|(n, prefetch)| n < prefetch)
            .map(|(n, _)| n)
            .min();
        assert_eq!(Some(in_flight), least, "least in flight first");
        // Attempts, lease and fencing token.
        let max = t.max_attempts();
        assert_eq!(d.attempt, t.attempts + 1, "task {}", d.task);
        assert_eq!(d.max_attempts, max);
        assert!(
            max == 0 || d.attempt <= max,
            "attempt {} of {max}",
            d.attempt
        );
        assert_eq!(d.deadline_ms, now + t.lease_ms());
        assert_eq!(d.priority, t.priority);
        assert!(self.tokens.insert(d.token), "token {} reused", d.token);

        let (uid, deadline) = (sub.uid, d.deadline_ms);
        let t = self.tasks.get_mut(&d.task).expect("known task");
        t.attempts += 1;
        t.phantom = false;
        t.state = MState::Leased {
            token: d.token,
            conn: d.conn,
            sub: uid,
            deadline,
            not_before,
        };
        let h = Handed {
            task: d.task,
            conn: d.conn,
            token: d.token,
        };
        self.dispatched.push(h);
        self.handed.push_back(h);
        if self.handed.len() > HANDED {
            self.handed.pop_front();
        }
    }

    /// After a dispatch, no queue has a ready task while one of its subscriptions has
    /// free credit.
    fn check_work_conserving(&self) {
        for (q, name) in QUEUES.iter().enumerate() {
            let ready = self
                .tasks
                .values()
                .filter(|t| t.queue == q && t.is_ready())
                .count();
            if ready == 0 {
                continue;
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

    fn pick(&self, pick: u16) -> Option<Handed> {
        if self.handed.is_empty() {
            return None;
        }
        Some(self.handed[usize::from(pick) % self.handed.len()])
    }

    /// Whether `token` on `conn` is the task's live lease in the model. A lease past
    /// its deadline stays live until a tick expires it (the hub settles commands
    /// before it ticks); nobody else can hold the task meanwhile.
    fn live(&self, task: TaskId, on: ConnId, with: u64) -> bool {
        matches!(self.tasks.get(&task).map(|t| &t.state),
            Some(MState::Leased { token, conn, .. }) if *token == with && *conn == on)
    }

    fn ack(&mut self, pick: u16, stranger: bool) {
        let Some(h) = self.pick(pick) else { return };
        let conn = if stranger { STRANGER } else { h.conn };
        let live = self.live(h.task, conn, h.token);
        let got = self
            .engine
            .ack(conn, h.task, h.token, Bytes::new(), self.now);
        if !live {
            assert_eq!(got, Err(EngineError::LeaseExpired { task: h.task }));
            return;
        }
        assert_eq!(got, Ok(Mutation::Remove { id: h.task }));
        self.store.persist(Mutation::Remove { id: h.task }, true);
        if let Some(t) = self.tasks.get_mut(&h.task) {
            t.state = MState::Acked;
        }
    }

    fn nack(&mut self, pick: u16, mode: NackOp, reason: &str) {
        let Some(h) = self.pick(pick) else { return };
        let live = self.live(h.task, h.conn, h.token);
        let engine_mode = match mode {
            NackOp::Backoff => NackMode::Backoff,
            NackOp::After(ms) => NackMode::After(ms),
            NackOp::Dead => NackMode::Dead,
        };
        let got = self
            .engine
            .nack(h.conn, h.task, h.token, engine_mode, reason, self.now);
        if !live {
            assert_eq!(got, Err(EngineError::LeaseExpired { task: h.task }));
            return;
        }
        let m = got.expect("live lease nacked");
        let Mutation::Patch { id, patch } = &m else {
            panic!("a nack persists a patch, got {m:?}");
        };
        assert_eq!(*id, h.task);
        self.end_lease(h.task, patch, Ending::Nack(mode, reason));
        self.store.persist(m, true);
    }

    fn extend(&mut self, pick: u16, ms: u64) {
        let Some(h) = self.pick(pick) else { return };
        let now = self.now;
        let live = self.live(h.task, h.conn, h.token);
        let got = self.engine.extend(h.conn, h.task, h.token, ms, now);
        let t = self.tasks.get_mut(&h.task).expect("known task");
        match &mut t.state {
            MState::Leased { deadline, .. } if live && *deadline > now => {
                *deadline = now + ms.min(MAX_LEASE_MS);
                assert_eq!(got, Ok(*deadline));
            }
            _ => assert_eq!(got, Err(EngineError::LeaseExpired { task: h.task })),
        }
    }

    /// The hub could not read the body: the task is ready again at once, and the
    /// delivery that never left does not count as an attempt.
    fn undeliverable(&mut self, pick: u16) {
        let Some(h) = self.pick(pick) else { return };
        let live = self.live(h.task, h.conn, h.token);
        self.engine
            .undeliverable(h.conn, h.task, h.token, true, self.now);
        if !live {
            return;
        }
        let t = self.tasks.get_mut(&h.task).expect("known task");
        let MState::Leased { not_before, .. } = t.state else {
            unreachable!("live lease")
        };
        t.attempts -= 1;
        t.phantom = true;
        t.state = MState::Ready {
            not_before,
            delayed: false,
        };
    }

    fn disconnect(&mut self, slot: u8) {
        let now = self.now;
        let Some(conn) = self.slots[usize::from(slot) % SLOTS].take() else {
            let mut out = Vec::new();
            self.engine.disconnect(STRANGER, now, &mut out);
            assert!(out.is_empty(), "an unknown connection holds nothing");
            return;
        };
        self.subs.retain(|s| s.conn != conn);
        let mut held: BTreeSet<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, MState::Leased { conn: c, .. } if c == conn))
            .map(|(&id, _)| id)
            .collect();
        let mut out = Vec::new();
        self.engine.disconnect(conn, now, &mut out);
        for effect in out {
            let Effect::Persist(m @ Mutation::Patch { .. }) = effect else {
                panic!("disconnect only persists releases, got {effect:?}");
            };
            let Mutation::Patch { id, patch } = &m else {
                unreachable!()
            };
            assert!(held.remove(id), "task {id} released but not held by {conn}");
            self.end_lease(*id, patch, Ending::Disconnected);
            self.store.persist(m, false);
        }
        assert!(held.is_empty(), "leases of {conn} not released: {held:?}");
    }

    /// kill -9 and start again: connections are gone, the store keeps what a crash
    /// keeps, and a fresh engine is rebuilt from it in id order.
    fn restart(&mut self, keep: u8) {
        self.now += 1;
        let now = self.now;
        self.store.crash(keep);
        self.engine = new_engine(now);
        self.slots = [None; SLOTS];
        self.subs.clear();
        // Connection ids start again at 1 in a new process: stale deliveries held by
        // clients now carry ids of other connections, and only tokens fence them.
        self.next_conn = 1;
        let mut buried = BTreeSet::new();
        for (id, t) in self.tasks.iter_mut() {
            let Some(rec) = self.store.durable.get(id) else {
                assert_eq!(t.state, MState::Acked, "task {id} lost without an ack");
                continue;
            };
            assert_ne!(t.state, MState::Acked, "acked task {id} came back");
            t.attempts = rec.attempts;
            t.phantom = false;
            t.last_error = rec.last_error.clone();
            t.state = match rec.status {
                TaskStatus::Dead => MState::Dead,
                TaskStatus::Succeeded => panic!("the engine never keeps results"),
                // Leases are not persisted: a leased task is pending again with its
                // attempts counted, or dead if that was its last one.
                TaskStatus::Pending if t.exhausted() => {
                    buried.insert(*id);
                    t.last_error = Some(REASON_RESTARTED.to_owned());
                    MState::Dead
                }
                TaskStatus::Pending => MState::Ready {
                    not_before: rec.not_before_ms,
                    delayed: rec.not_before_ms > now,
                },
            };
        }
        let durable = self.store.durable.clone();
        for (id, state) in &durable {
            match self.engine.recover_task(*id, state, now) {
                Some(m) => {
                    assert!(buried.remove(id), "task {id} buried at recovery");
                    let Mutation::Patch { patch, .. } = &m else {
                        panic!("recovery fixes are patches, got {m:?}");
                    };
                    assert_eq!(patch.status, Some(TaskStatus::Dead));
                    assert_eq!(patch.last_error, Some(Some(REASON_RESTARTED.into())));
                    self.store.persist(m, false);
                }
                None => assert!(!buried.contains(id), "task {id} not buried at recovery"),
            }
        }
    }

    /// The engine's counters, its wake-up and the store all agree with the model.
    fn check_agreement(&self) {
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
                    MState::Acked => {}
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
    }

    fn check_store(&self) {
        let stored = &self.store.current;
        for (id, t) in &self.tasks {
            let rec = stored.get(id);
            let Some(rec) = rec else {
                assert_eq!(t.state, MState::Acked, "task {id} is not stored");
                continue;
            };
            let (status, not_before) = match t.state {
                MState::Acked => panic!("acked task {id} is still stored"),
                MState::Dead => (TaskStatus::Dead, rec.not_before_ms),
                MState::Ready { not_before, .. } | MState::Leased { not_before, .. } => {
                    (TaskStatus::Pending, not_before)
                }
            };
            let attempts = t.attempts + u32::from(t.phantom);
            assert_eq!(
                (rec.status, rec.attempts, rec.not_before_ms, &rec.last_error),
                (status, attempts, not_before, &t.last_error),
                "stored state of task {id} (status, attempts, not_before, last_error)"
            );
        }
        let pending = self
            .tasks
            .values()
            .filter(|t| t.state != MState::Acked)
            .count();
        assert_eq!(stored.len(), pending, "no records beyond the model's");
    }

    /// The hub sleeps until `next_wakeup`: it must not be later than the first due
    /// lease deadline or delayed task.
    fn check_wakeup(&self) {
        let due = self
            .tasks
            .values()
            .filter_map(|t| match t.state {
                MState::Leased { deadline, .. } => Some(deadline),
                MState::Ready {
                    not_before,
                    delayed: true,
                } => Some(not_before),
                _ => None,
            })
            .min();
        if let Some(due) = due {
            let wake = self.engine.next_wakeup();
            assert!(
                wake.is_some_and(|w| w <= due),
                "wake-up {wake:?} misses the event due at {due}"
            );
        }
    }

    /// Liveness: with every old connection gone, one consumer that acks everything and
    /// enough time, every task that is neither acked nor dead is delivered and acked.
    fn drain(&mut self) {
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
        for _ in 0..8 {
            if !self.tasks.values().any(MTask::is_pending) {
                break;
            }
            // Past any delay, backoff or lease used here.
            self.now += 600_000;
            self.dispatch();
            for h in std::mem::take(&mut self.dispatched) {
                delivered.insert(h.task);
                assert_eq!(
                    self.engine
                        .ack(h.conn, h.task, h.token, Bytes::new(), self.now),
                    Ok(Mutation::Remove { id: h.task })
                );
                self.store.persist(Mutation::Remove { id: h.task }, true);
                if let Some(t) = self.tasks.get_mut(&h.task) {
                    t.state = MState::Acked;
                }
            }
            self.check_agreement();
        }
        let stuck: Vec<_> = waiting.difference(&delivered).collect();
        assert!(stuck.is_empty(), "never delivered again: {stuck:?}");
        assert!(
            self.store
                .current
                .values()
                .all(|s| s.status == TaskStatus::Dead),
            "only dead tasks are left in the store"
        );
    }
}

/// The queue's retry policy: exponential from `backoff_min_ms`, capped at
/// `backoff_max_ms`, drawn from the upper half ("equal jitter"); a zero delay means
/// "ready now" (not-before 0).
fn check_backoff(not_before: Millis, now: Millis, attempts: u32, cfg: &QueueConfig) {
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

/// Runs `ops`, checking the model after each, then drains.
fn check(ops: &[Op]) {
    let mut h = Harness::new();
    for op in ops {
        h.run(op);
    }
    h.drain();
}

fn cases() -> u32 {
    std::env::var("SQUALL_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Minimised failures become named tests below instead of a regressions file.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_agrees_with_the_model_across_restarts(ops in prop::collection::vec(op(), 1..160)) {
        check(&ops);
    }
}

// ---------------------------------------------------------------------------------
// Regressions: minimised failures, each with its postmortem.

/// A fixed walk through every operation, so a broken harness fails here first.
#[test]
fn lifecycle_smoke() {
    use Op::*;
    check(&[
        Publish {
            queue: 0,
            priority: 0,
            delay_ms: 0,
            max_attempts: 0,
            lease_ms: 0,
        },
        Publish {
            queue: 0,
            priority: 2,
            delay_ms: 700,
            max_attempts: 2,
            lease_ms: 300,
        },
        Publish {
            queue: 1,
            priority: -1,
            delay_ms: 0,
            max_attempts: 0,
            lease_ms: 8_000,
        },
        Subscribe {
            conn: 0,
            sub: 1,
            queue: 0,
            prefetch: 2,
        },
        Subscribe {
            conn: 1,
            sub: 1,
            queue: 1,
            prefetch: 1,
        },
        Dispatch,
        Nack {
            pick: 0,
            mode: NackOp::Backoff,
            reason: true,
        },
        Extend { pick: 1, ms: 2_000 },
        Advance { ms: 1_000 },
        Dispatch,
        Ack {
            pick: 2,
            stranger: false,
        },
        Undeliverable { pick: 3 },
        Restart { keep: 128 },
        Subscribe {
            conn: 2,
            sub: 3,
            queue: 0,
            prefetch: 3,
        },
        Advance { ms: 60_000 },
        Dispatch,
        Nack {
            pick: 4,
            mode: NackOp::Dead,
            reason: false,
        },
        Disconnect { conn: 2 },
    ]);
}

/// Postmortem: a delivery the hub could not send (`undeliverable` with requeue) went
/// back to ready with its attempt still counted, so the next delivery said attempt 2
/// for a task delivered once, and a task requeued on its last attempt was delivered
/// past `max_attempts`. Fixed in `Engine::undeliverable`: the unsent delivery is not
/// counted.
#[test]
fn regression_unsent_delivery_is_not_an_attempt() {
    use Op::*;
    check(&[
        Subscribe {
            conn: 0,
            sub: 1,
            queue: 0,
            prefetch: 1,
        },
        Publish {
            queue: 0,
            priority: 0,
            delay_ms: 0,
            max_attempts: 1,
            lease_ms: 0,
        },
        Dispatch,
        Undeliverable { pick: 0 },
        Dispatch,
    ]);
}

/// Postmortem: credit was returned by (connection, subscription id). After
/// unsubscribing and subscribing again with the same id (ids are request ids, chosen
/// by the client), settling a lease of the old subscription freed a slot of the new
/// one, and the new one got more unsettled deliveries than its prefetch. Fixed with a
/// unique `SubSlot::uid` that each lease remembers.
#[test]
fn regression_reused_subscription_id_keeps_its_prefetch() {
    use Op::*;
    let publish = Publish {
        queue: 0,
        priority: 0,
        delay_ms: 0,
        max_attempts: 0,
        lease_ms: 0,
    };
    let subscribe = Subscribe {
        conn: 0,
        sub: 1,
        queue: 0,
        prefetch: 1,
    };
    check(&[
        subscribe.clone(),
        publish.clone(),
        publish.clone(),
        publish,
        Dispatch,
        Unsubscribe { conn: 0, sub: 1 },
        subscribe,
        Dispatch,
        Ack {
            pick: 0,
            stranger: false,
        },
        Dispatch,
    ]);
}
