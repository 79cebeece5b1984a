//! The model test's harness: the reference model of every task (`MTask`), the
//! subscriptions it knows, and `Harness`, which runs each operation on the engine and
//! on the model and checks that they agree (deliveries, expiry, counts, stored state,
//! wake-ups), including across restarts. Settlements are in `settle.rs`, schedules in
//! `schedules.rs`, the agreement checks in `checks.rs`; the operations, the store
//! stand-in and the regression tests are in the parent module.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::*;

mod checks;
mod restart;
mod schedules;
mod settle;
use checks::check_backoff;
use schedules::{MSched, PendingFire};

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
    /// Removed unstarted at its expiry (its queue drops expired tasks).
    Dropped,
    /// Inserted by a schedule's fire whose job has not completed: stored (unless a
    /// crash loses the job) but not yet in the engine.
    Submitted,
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
    /// on disk before the engine gave it back (the next written count rewrites it).
    phantom: bool,
    /// When the current lease's delivery was made, while its attempt count is not
    /// written (the store's count is one lower until then).
    unwritten_since: Option<Millis>,
    state: MState,
    last_error: Option<String>,
    /// The expiry it was published with (0 = none), as stored.
    expires_ms: Millis,
    /// The expiry that still applies: `expires_ms` while not started (never delivered,
    /// or every delivery given back unseen), 0 after.
    expiry: Millis,
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

    /// Waiting (ready or delayed) with an expiry that has come.
    fn expiry_due(&self, now: Millis) -> bool {
        matches!(self.state, MState::Ready { .. }) && self.expiry > 0 && self.expiry <= now
    }

    /// Gone from the store for good (unless a crash loses the unconfirmed removal).
    fn is_gone(&self) -> bool {
        matches!(self.state, MState::Acked | MState::Dropped)
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
    /// Per queue, the time of each delivery since the engine started (rate limits).
    delivered_at: [Vec<Millis>; QUEUES.len()],
    /// The schedules, by name.
    scheds: BTreeMap<Arc<str>, MSched>,
    /// Fires whose jobs were submitted and have not completed, oldest first.
    fires: VecDeque<PendingFire>,
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
            delivered_at: Default::default(),
            scheds: BTreeMap::new(),
            fires: VecDeque::new(),
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
                expires_in,
            } => self.publish(
                usize::from(queue) % QUEUES.len(),
                i32::from(priority),
                (delay_ms, expires_in),
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
            Op::Dispatch => self.dispatch(true),
            Op::DispatchUnticked => self.dispatch(false),
            Op::Tick => self.tick(),
            Op::Ack { pick, stranger } => self.ack(pick, stranger),
            Op::Nack { pick, mode, reason } => {
                self.nack(pick, mode, if reason { "boom" } else { "" })
            }
            Op::Extend { pick, ms } => self.extend(pick, ms),
            Op::Release { pick } => self.release(pick),
            Op::Undeliverable { pick } => self.undeliverable(pick),
            Op::Advance { ms } => self.now += ms,
            Op::Disconnect { conn } => self.disconnect(conn),
            Op::AddSchedule {
                name,
                queue,
                cron,
                catch_up,
                priority,
            } => self.add_schedule(name, queue, cron, catch_up, priority),
            Op::RemoveSchedule { name } => self.remove_schedule(name),
            Op::PauseSchedule { name, paused } => self.pause_schedule(name, paused),
            Op::Fire { how } => self.fire(how),
            Op::FireDone => self.fire_done(),
            Op::Restart { keep, down_ms } => self.restart(keep, down_ms),
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

    /// `times` is (delay, expires in), each 0 for none.
    fn publish(
        &mut self,
        q: usize,
        priority: i32,
        times: (u64, u64),
        max_attempts: u32,
        lease: u64,
    ) {
        let (id, now) = (self.next_task, self.now);
        self.next_task += 1;
        let (delay_ms, expires_in) = times;
        let not_before = if delay_ms > 0 { now + delay_ms } else { 0 };
        let expires_ms = if expires_in > 0 { now + expires_in } else { 0 };
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
            expires_ms,
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
                expires_ms,
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
            unwritten_since: None,
            state: MState::Ready {
                not_before,
                delayed: not_before > now,
            },
            last_error: None,
            expires_ms,
            expiry: expires_ms,
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

    /// Expires due leases, releases due delayed tasks and expires the tasks not
    /// started by their expiry.
    fn tick(&mut self) {
        let now = self.now;
        let mut due: BTreeSet<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, MState::Leased { deadline, .. } if deadline <= now))
            .map(|(&id, _)| id)
            .collect();
        let mut counting: BTreeSet<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, MState::Leased { .. }))
            .filter(|(_, t)| t.unwritten_since.is_some_and(|d| d + COUNT_AFTER_MS <= now))
            .map(|(&id, _)| id)
            .collect();
        let mut out = Vec::new();
        self.engine.tick(now, &mut out);
        for effect in out {
            let Effect::Persist(m) = effect else {
                panic!("tick delivers nothing, got {effect:?}");
            };
            match &m {
                // A lease open long enough: its count alone (before any expiry).
                Mutation::Patch { id, patch }
                    if patch.last_error.is_none() && counting.remove(id) =>
                {
                    let t = self.tasks.get_mut(id).expect("known task");
                    let want = StatePatch {
                        attempts: Some(t.attempts),
                        updated_ms: now,
                        ..StatePatch::default()
                    };
                    assert_eq!(patch, &want, "task {id}'s attempt count");
                    t.phantom = false;
                    t.unwritten_since = None;
                }
                Mutation::Patch { id, patch } if due.remove(id) => {
                    self.end_lease(*id, patch, Ending::Expired);
                }
                _ => self.expired(&m),
            }
            self.store.persist(m, false);
        }
        assert!(
            due.is_empty(),
            "leases past their deadline survived: {due:?}"
        );
        assert!(
            counting.is_empty(),
            "leases open for {COUNT_AFTER_MS} ms without their count written: {counting:?}"
        );
        for (id, t) in self.tasks.iter_mut() {
            assert!(!t.expiry_due(now), "task {id} not expired at {now}: {t:?}");
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

    /// A task left unstarted at its expiry: dead with reason `expired`, or removed
    /// when its queue drops expired tasks.
    fn expired(&mut self, m: &Mutation) {
        let now = self.now;
        let (id, dropped) = match m {
            Mutation::Patch { id, patch } => {
                let want = StatePatch {
                    status: Some(TaskStatus::Dead),
                    last_error: Some(Some(REASON_EXPIRED.to_owned())),
                    updated_ms: now,
                    ..StatePatch::default()
                };
                assert_eq!(patch, &want, "task {id} expired");
                (*id, false)
            }
            Mutation::Remove { id } => (*id, true),
            _ => panic!("expiry buries or removes a task, got {m:?}"),
        };
        let t = self.tasks.get_mut(&id).expect("known task");
        assert!(t.expiry_due(now), "task {id} expired while {t:?} at {now}");
        assert_eq!(
            dropped,
            queue_config(t.queue).drop_expired,
            "task {id}: dropped iff its queue drops expired tasks"
        );
        t.expiry = 0;
        if dropped {
            t.state = MState::Dropped;
        } else {
            t.state = MState::Dead;
            t.last_error = Some(REASON_EXPIRED.to_owned());
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
        assert_eq!(
            patch.attempts,
            Some(t.attempts),
            "a settlement writes the count"
        );
        t.phantom = false;
        t.unwritten_since = None;
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

    /// A dispatch, after a tick when `ticked` (as the hub does).
    fn dispatch(&mut self, ticked: bool) {
        if ticked {
            self.tick();
        }
        let mut out = Vec::new();
        self.engine.dispatch(self.now, &mut out);
        self.dispatched.clear();
        for effect in out {
            match effect {
                // A delivery's attempt is written later (`tick`) or with its settlement.
                Effect::Persist(m) => {
                    self.expired_at_dispatch(&m);
                    self.store.persist(m, false);
                }
                Effect::Deliver(d) => self.delivered(&d),
            }
        }
        self.check_work_conserving(ticked);
    }

    /// A dispatch found the task it was about to deliver past its expiry: it must be
    /// the queue's best ready task, and is expired instead.
    fn expired_at_dispatch(&mut self, m: &Mutation) {
        let id = match m {
            Mutation::Patch { id, .. } | Mutation::Remove { id } => *id,
            _ => panic!("dispatch persists attempt counts and expiries only, got {m:?}"),
        };
        let q = self.tasks.get(&id).map(|t| t.queue).expect("known task");
        assert_eq!(self.best_ready(q), Some(id), "expired out of order");
        self.expired(m);
    }

    /// The ready task of queue `q` a dispatch takes next: highest priority, FIFO
    /// within a priority.
    fn best_ready(&self, q: usize) -> Option<TaskId> {
        self.tasks
            .iter()
            .filter(|(_, x)| x.queue == q && x.is_ready())
            .max_by_key(|(&id, x)| (x.priority, Reverse(id)))
            .map(|(&id, _)| id)
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
        assert!(
            t.expiry == 0 || t.expiry > now,
            "task {} delivered at {now}, past its expiry {}",
            d.task,
            t.expiry
        );
        // Priority order: the best ready task of the queue, FIFO within a priority.
        assert_eq!(self.best_ready(t.queue), Some(d.task), "dispatch order");
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

        let (uid, deadline, q) = (sub.uid, d.deadline_ms, t.queue);
        self.check_rate_windows(q);
        let t = self.tasks.get_mut(&d.task).expect("known task");
        t.attempts += 1;
        t.unwritten_since = Some(now);
        t.expiry = 0;
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
}
