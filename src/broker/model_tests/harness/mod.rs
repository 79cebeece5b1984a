//! The model test's harness: the reference model of every task (`MTask`), the
//! subscriptions it knows, and `Harness`, which runs each operation on the engine and
//! on the model and checks that they agree (deliveries, counts, stored state,
//! wake-ups), including across restarts. The operations, the store stand-in and the
//! regression tests are in the parent module.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::*;

mod checks;
use checks::check_backoff;
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

pub(super) struct Harness {
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
    pub(super) fn new() -> Harness {
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

    pub(super) fn run(&mut self, op: &Op) {
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
            expires_ms: 0,
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
                expires_ms: 0,
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

    /// Tasks of queue `q` leased in the model.
    pub(super) fn leased_in(&self, q: usize) -> u64 {
        self.tasks
            .values()
            .filter(|t| t.queue == q && matches!(t.state, MState::Leased { .. }))
            .count() as u64
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
        let cap = u64::from(queue_config(t.queue).max_in_flight);
        assert!(
            cap == 0 || self.leased_in(t.queue) < cap,
            "queue {} delivered past its max_in_flight {cap}",
            QUEUES[t.queue]
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
}
