//! The hub driven as the server drives it — with plain messages (`msg.rs`) and one
//! turn at a time — but without sockets, and with the clock in the test's hands: each
//! turn is given its time. The store underneath is real (a temporary directory), so
//! an answer that waits for durability arrives only after the store writer completed
//! it. Covers publish admission, settlement, lease expiry, admin and the hub's side of
//! result waits.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tempfile::TempDir;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use super::Hub;
use crate::broker::{
    AdminError, Committed, ConnId, Dispatch, Engine, EngineConfig, EngineError, NackMode, TaskView,
};
use crate::model::{Millis, Mutation, NewTask, QueueConfig, TaskBody, TaskState, TaskStatus};
use crate::server::bounded::Bounded;
use crate::server::done::Done;
use crate::server::metrics::{Metrics, PublishTimer};
use crate::server::msg::{
    AdminOp, AdminReply, Failure, Final, HubCmd, HubTx, Outbound, PublishJob, Published, QueueFull,
    Reply, ReqId,
};
use crate::server::waiters::Waiters;
use crate::store::{FsyncMode, Muts, Store, StoreConfig, Writer};

/// Longest the test waits for the store writer (a guard against hanging, not a timing
/// assertion).
const WAIT: Duration = Duration::from_secs(10);
/// The test's clock at the start.
const T0: Millis = 1_000_000;
const LEASE_MS: u64 = 1_000;

/// A hub over a real store, with the channels its completions report on.
struct Rig {
    hub: Hub,
    /// What the store writer's completions send the hub (fed back by `pump`).
    hub_rx: UnboundedReceiver<HubCmd>,
    hub_tx: HubTx,
    writer: Option<Writer<Done>>,
    store: Store,
    waiters: Arc<Waiters>,
    metrics: Arc<Metrics>,
    now: Millis,
    next_id: u64,
    _dir: TempDir,
}

impl Rig {
    /// A hub whose queues are bounded to `max_length` tasks by default (0: unbounded).
    fn new(max_length: u64) -> Rig {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&StoreConfig {
            path: dir.path().join("data"),
            fsync: FsyncMode::Never,
            cache_bytes: 8 << 20,
            journal_segment_bytes: crate::store::DEFAULT_JOURNAL_SEGMENT_BYTES,
        })
        .expect("open store");
        let defaults = QueueConfig {
            lease_ms: LEASE_MS,
            max_attempts: 3,
            backoff_min_ms: 100,
            backoff_max_ms: 1_000,
            max_length,
            ..QueueConfig::default()
        };
        store.set_queue_defaults(defaults.clone());
        let engine = Engine::new(
            EngineConfig {
                queue_defaults: defaults,
                ..EngineConfig::default()
            },
            T0,
        );
        let writer = store.start_writer::<Done>();
        let (hub_tx, hub_rx) = mpsc::unbounded_channel();
        let waiters = Arc::new(Waiters::default());
        let bounded = Arc::new(Bounded::default());
        bounded.refresh(&engine, max_length);
        let hub = Hub::new(
            engine,
            writer.handle(),
            waiters.clone(),
            bounded,
            max_length,
            store.clone(),
            hub_tx.downgrade(),
        );
        Rig {
            hub,
            hub_rx,
            hub_tx,
            writer: Some(writer),
            store,
            waiters,
            metrics: Arc::new(Metrics::default()),
            now: T0,
            next_id: 1,
            _dir: dir,
        }
    }

    /// One hub turn at the rig's time.
    fn turn(&mut self, cmds: Vec<HubCmd>) {
        let stopped = self.hub.turn(cmds, self.now, true);
        assert!(!stopped);
    }

    /// A connection the hub answers to.
    fn connect(&mut self, conn: ConnId) -> UnboundedReceiver<Outbound> {
        let (out, rx) = mpsc::unbounded_channel();
        self.turn(vec![HubCmd::Register {
            conn,
            out,
            name: Arc::from(format!("worker-{conn}")),
            peer: "127.0.0.1:9".parse().expect("address"),
        }]);
        rx
    }

    /// Waits for the next command a completion sends the hub, and hands it over.
    async fn pump(&mut self) {
        let cmd = tokio::time::timeout(WAIT, self.hub_rx.recv())
            .await
            .expect("a completion reports to the hub")
            .expect("hub channel open");
        self.turn(vec![cmd]);
    }

    /// A publish of `n` tasks to `queue`, as a connection reader builds it.
    fn publish(
        &mut self,
        out: &mpsc::UnboundedSender<Outbound>,
        req: ReqId,
        queue: &str,
        n: usize,
    ) -> (Muts, PublishJob) {
        let queue: Arc<str> = Arc::from(queue);
        let mut muts = Vec::new();
        let mut committed = Vec::new();
        for _ in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            committed.push(Committed {
                queue: queue.clone(),
                id,
                priority: 0,
                not_before_ms: 0,
                max_attempts: 0,
                lease_ms: 0,
                expires_ms: 0,
            });
            muts.push(Mutation::Insert(Box::new(NewTask {
                id,
                state: TaskState {
                    queue: queue.clone(),
                    status: TaskStatus::Pending,
                    priority: 0,
                    attempts: 0,
                    max_attempts: 0,
                    lease_ms: 0,
                    not_before_ms: 0,
                    created_ms: self.now,
                    updated_ms: self.now,
                    last_error: None,
                    expires_ms: 0,
                },
                body: TaskBody {
                    created_ms: self.now,
                    payload: Bytes::from_static(b"job"),
                    headers: Vec::new(),
                    idempotency_key: None,
                },
            })));
        }
        let job = PublishJob {
            out: out.clone(),
            req,
            hub: self.hub_tx.clone(),
            committed,
            timer: PublishTimer::start_at(std::time::Instant::now(), &self.metrics),
            reservation: None,
        };
        (Muts::Many(muts), job)
    }

    /// Publishes `n` tasks straight to the store writer (an unbounded queue's path)
    /// and lets the hub learn them once durable.
    async fn publish_durable(&mut self, queue: &str, n: usize) -> Vec<u64> {
        let (out, mut rx) = mpsc::unbounded_channel();
        let (muts, job) = self.publish(&out, 1, queue, n);
        let ids = job.committed.iter().map(|c| c.id).collect();
        self.hub.writer.submit(muts, Some(Done::Publish(job)));
        assert!(matches!(
            next(&mut rx).await,
            Outbound::Reply {
                reply: Reply::Published(_),
                ..
            }
        ));
        self.pump().await;
        ids
    }

    fn finish(mut self) {
        if let Some(writer) = self.writer.take() {
            writer.shutdown().expect("writer shutdown");
        }
    }
}

/// The next message of an outbox.
async fn next(rx: &mut UnboundedReceiver<Outbound>) -> Outbound {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an outbox message")
        .expect("outbox open")
}

/// The reply to `req` that comes next.
async fn reply_to(rx: &mut UnboundedReceiver<Outbound>, req: ReqId) -> Reply {
    match next(rx).await {
        Outbound::Reply { req: r, reply } if r == req => reply,
        other => panic!("expected the reply to {req}, got {other:?}"),
    }
}

/// The delivery that comes next.
async fn delivery(rx: &mut UnboundedReceiver<Outbound>) -> Dispatch {
    match next(rx).await {
        Outbound::Deliver(d) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// An ack with a result, so that the store keeps the succeeded record to look at.
fn ack(conn: ConnId, req: ReqId, d: &Dispatch, token: u64) -> HubCmd {
    HubCmd::Ack {
        conn,
        req,
        task: d.task,
        token,
        result: Bytes::from_static(b"done"),
    }
}

/// Admission counts the room that admitted, not yet durable publishes take: a second
/// publish that would fit the queue alone is refused while the first is in flight, and
/// the room is counted by the engine once the first is durable.
#[tokio::test]
async fn publish_admission_reserves_room_until_durable() {
    let mut rig = Rig::new(3);
    let (out, mut rx) = mpsc::unbounded_channel();
    let (muts_a, job_a) = rig.publish(&out, 10, "q", 2);
    let (muts_b, job_b) = rig.publish(&out, 11, "q", 2);
    rig.turn(vec![
        HubCmd::Publish {
            muts: muts_a,
            job: Box::new(job_a),
        },
        HubCmd::Publish {
            muts: muts_b,
            job: Box::new(job_b),
        },
    ]);
    // The refusal is immediate, the first publish is confirmed once durable: the two
    // answers may arrive in either order (the store writer is another thread).
    let mut answers = vec![next(&mut rx).await, next(&mut rx).await];
    answers.sort_by_key(|o| match o {
        Outbound::Reply { req, .. } => *req,
        _ => 0,
    });
    match answers.pop() {
        Some(Outbound::Reply {
            req: 11,
            reply: Reply::Refused(Failure::QueueFull(full)),
        }) => assert_eq!(
            full,
            QueueFull {
                queue: Arc::from("q"),
                pending: 2,
                adding: 2,
                max_length: 3,
            }
        ),
        other => panic!("expected QUEUE_FULL for 11, got {other:?}"),
    }
    match answers.pop() {
        Some(Outbound::Reply {
            req: 10,
            reply: Reply::Published(tasks),
        }) => assert_eq!(
            tasks,
            [
                Published {
                    task_id: 1,
                    duplicate: false
                },
                Published {
                    task_id: 2,
                    duplicate: false
                },
            ]
        ),
        other => panic!("expected publish 10 confirmed, got {other:?}"),
    }
    // Durable: the engine counts the two tasks, the reservation is gone.
    rig.pump().await;
    assert_eq!(rig.hub.engine.pending_count("q"), 2);
    assert!(rig.hub.reservations.held.is_empty());
    // One more fits, a second does not; nothing of a refused publish is stored.
    let (muts, job) = rig.publish(&out, 12, "q", 1);
    rig.turn(vec![HubCmd::Publish {
        muts,
        job: Box::new(job),
    }]);
    assert!(matches!(reply_to(&mut rx, 12).await, Reply::Published(_)));
    rig.pump().await;
    let (muts, job) = rig.publish(&out, 13, "q", 1);
    rig.turn(vec![HubCmd::Publish {
        muts,
        job: Box::new(job),
    }]);
    assert!(matches!(
        reply_to(&mut rx, 13).await,
        Reply::Refused(Failure::QueueFull(QueueFull { pending: 3, .. }))
    ));
    assert_eq!(rig.store.get_state(6).expect("read"), None);
    rig.finish();
}

/// A delivery is settled only with its live lease token, and an ack is confirmed only
/// once durable; extend answers the new deadline; a nack to the dead set ends it.
#[tokio::test]
async fn settlement_needs_the_live_lease_and_is_confirmed_once_durable() {
    let mut rig = Rig::new(0);
    let mut rx = rig.connect(1);
    let ids = rig.publish_durable("q", 2).await;
    rig.turn(vec![HubCmd::Subscribe {
        conn: 1,
        req: 5,
        queue: "q".into(),
        prefetch: 2,
    }]);
    assert!(matches!(reply_to(&mut rx, 5).await, Reply::Subscribed(5)));
    let first = delivery(&mut rx).await;
    let second = delivery(&mut rx).await;
    assert_eq!((first.task, second.task), (ids[0], ids[1]));
    assert_eq!((first.attempt, first.deadline_ms), (1, T0 + LEASE_MS));

    rig.turn(vec![ack(1, 6, &first, first.token + 1_000)]);
    assert!(matches!(
        reply_to(&mut rx, 6).await,
        Reply::Refused(Failure::Engine(EngineError::LeaseExpired { .. }))
    ));
    rig.turn(vec![HubCmd::Extend {
        conn: 1,
        req: 7,
        task: first.task,
        token: first.token,
        extend_ms: 500,
    }]);
    assert!(
        matches!(reply_to(&mut rx, 7).await, Reply::Extended { deadline_ms } if deadline_ms == T0 + 500)
    );
    rig.turn(vec![ack(1, 8, &first, first.token)]);
    assert!(matches!(reply_to(&mut rx, 8).await, Reply::Ok));
    assert_eq!(
        rig.store
            .get_state(first.task)
            .expect("read")
            .map(|s| s.status),
        Some(TaskStatus::Succeeded),
        "confirmed only once the store has it"
    );
    // A second ack of the same delivery: its lease is gone.
    rig.turn(vec![ack(1, 9, &first, first.token)]);
    assert!(matches!(
        reply_to(&mut rx, 9).await,
        Reply::Refused(Failure::Engine(EngineError::LeaseExpired { .. }))
    ));
    rig.turn(vec![HubCmd::Nack {
        conn: 1,
        req: 10,
        task: second.task,
        token: second.token,
        mode: NackMode::Dead,
        reason: "poison".into(),
    }]);
    assert!(matches!(reply_to(&mut rx, 10).await, Reply::Ok));
    let dead = rig
        .store
        .get_state(second.task)
        .expect("read")
        .expect("kept");
    assert_eq!(
        (dead.status, dead.last_error.as_deref()),
        (TaskStatus::Dead, Some("poison"))
    );
    rig.finish();
}

/// The acks one connection sends in one turn are stored as one job, each confirmed
/// once it is durable; a record kept for the result carries the delivery's attempt
/// count, which nothing had written before the ack.
#[tokio::test]
async fn a_turns_acks_of_one_connection_are_stored_as_one_job() {
    let mut rig = Rig::new(0);
    let mut rx = rig.connect(1);
    let ids = rig.publish_durable("q", 3).await;
    rig.turn(vec![HubCmd::Subscribe {
        conn: 1,
        req: 5,
        queue: "q".into(),
        prefetch: 3,
    }]);
    assert!(matches!(reply_to(&mut rx, 5).await, Reply::Subscribed(5)));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(delivery(&mut rx).await);
    }
    assert_eq!(got.iter().map(|d| d.task).collect::<Vec<_>>(), ids);
    for d in &got {
        let stored = rig.store.get_state(d.task).expect("read").expect("stored");
        assert_eq!(
            stored.attempts, 0,
            "a delivery's count is not written at once"
        );
    }
    let stats = rig.writer.as_ref().expect("running").stats();
    let jobs = stats.jobs.load(std::sync::atomic::Ordering::Relaxed);
    rig.turn(
        got.iter()
            .zip(6..)
            .map(|(d, req)| ack(1, req, d, d.token))
            .collect(),
    );
    match next(&mut rx).await {
        Outbound::Replies(replies) => {
            let reqs: Vec<ReqId> = replies.iter().map(|(req, _)| *req).collect();
            assert_eq!(reqs, vec![6, 7, 8], "confirmed together, in order");
            assert!(replies.iter().all(|(_, r)| matches!(r, Reply::Ok)));
        }
        other => panic!("expected the three confirmations, got {other:?}"),
    }
    let stored_jobs = stats.jobs.load(std::sync::atomic::Ordering::Relaxed) - jobs;
    assert_eq!(stored_jobs, 1, "one job for the turn's three acks");
    for d in &got {
        let stored = rig.store.get_state(d.task).expect("read").expect("kept");
        assert_eq!((stored.status, stored.attempts), (TaskStatus::Succeeded, 1));
    }

    // Results that together pass the job's bound make a job each (still in order).
    let big = rig.publish_durable("q", 3).await;
    rig.turn(Vec::new());
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(delivery(&mut rx).await);
    }
    assert_eq!(got.iter().map(|d| d.task).collect::<Vec<_>>(), big);
    let jobs = stats.jobs.load(std::sync::atomic::Ordering::Relaxed);
    let result = Bytes::from(vec![7u8; super::state::ACK_JOB_RESULT_BYTES * 3 / 5]);
    rig.turn(
        got.iter()
            .zip(20..)
            .map(|(d, req)| HubCmd::Ack {
                conn: 1,
                req,
                task: d.task,
                token: d.token,
                result: result.clone(),
            })
            .collect(),
    );
    let mut confirmed = Vec::new();
    while confirmed.len() < 3 {
        match next(&mut rx).await {
            Outbound::Replies(replies) => confirmed.extend(replies.into_iter().map(|(r, _)| r)),
            Outbound::Reply { req, .. } => confirmed.push(req),
            other => panic!("expected confirmations, got {other:?}"),
        }
    }
    assert_eq!(confirmed, vec![20, 21, 22]);
    let stored_jobs = stats.jobs.load(std::sync::atomic::Ordering::Relaxed) - jobs;
    assert_eq!(stored_jobs, 3, "a job each: two results pass the bound");
    rig.finish();
}

/// Leases end on the hub's clock: a turn past the deadline redelivers with a new
/// token (the old one is refused), and a disconnect returns the lease at once.
#[tokio::test]
async fn leases_expire_on_the_given_clock_and_return_on_disconnect() {
    let mut rig = Rig::new(0);
    let mut rx = rig.connect(1);
    rig.publish_durable("q", 1).await;
    rig.turn(vec![HubCmd::Subscribe {
        conn: 1,
        req: 5,
        queue: "q".into(),
        prefetch: 1,
    }]);
    reply_to(&mut rx, 5).await;
    let first = delivery(&mut rx).await;
    // Just before the deadline nothing happens; after it, the task comes again.
    rig.now = first.deadline_ms - 1;
    rig.turn(Vec::new());
    assert!(rx.try_recv().is_err(), "nothing before the deadline");
    rig.now = first.deadline_ms + 1;
    rig.turn(Vec::new());
    // Retried after the queue's backoff (at most 1 s): move the clock past it.
    rig.now += 1_001;
    rig.turn(Vec::new());
    let again = delivery(&mut rx).await;
    assert_eq!((again.task, again.attempt), (first.task, 2));
    assert_ne!(again.token, first.token);
    rig.turn(vec![ack(1, 6, &first, first.token)]);
    assert!(matches!(
        reply_to(&mut rx, 6).await,
        Reply::Refused(Failure::Engine(EngineError::LeaseExpired { .. }))
    ));
    // Another consumer gets it as soon as the first disconnects.
    let mut rx2 = rig.connect(2);
    rig.turn(vec![HubCmd::Subscribe {
        conn: 2,
        req: 5,
        queue: "q".into(),
        prefetch: 1,
    }]);
    reply_to(&mut rx2, 5).await;
    rig.turn(vec![HubCmd::Disconnect { conn: 1 }]);
    rig.turn(Vec::new());
    let third = delivery(&mut rx2).await;
    assert_eq!((third.task, third.attempt), (first.task, 3));
    rig.finish();
}

/// Admin reads are answered at once from the engine; a change is answered (and
/// applied) only once durable; the engine's refusals keep their kind.
#[tokio::test]
async fn admin_reads_at_once_changes_once_durable() {
    let mut rig = Rig::new(0);
    let mut rx = rig.connect(1);
    rig.turn(vec![HubCmd::Admin {
        conn: 1,
        req: 3,
        op: AdminOp::Get("nope".into()),
    }]);
    assert!(matches!(
        reply_to(&mut rx, 3).await,
        Reply::Refused(Failure::Admin(AdminError::NoSuchQueue(_)))
    ));
    rig.publish_durable("q", 3).await;
    rig.turn(vec![HubCmd::Admin {
        conn: 1,
        req: 4,
        op: AdminOp::SetPaused("q".into(), true),
    }]);
    assert!(rx.try_recv().is_err(), "not answered before durable");
    assert!(
        !rig.hub
            .engine
            .queue_snapshot("q")
            .expect("queue")
            .config
            .paused
    );
    rig.pump().await;
    match next(&mut rx).await {
        Outbound::Admin(AdminReply::Queues {
            req: 4,
            single: true,
            queues,
            ..
        }) => {
            assert!(queues[0].snapshot.config.paused);
            assert_eq!(queues[0].snapshot.ready, 3);
            assert_eq!(queues[0].oldest_ready, Some(1));
        }
        other => panic!("expected the queue, got {other:?}"),
    }
    // Paused: a subscription gets nothing.
    rig.turn(vec![HubCmd::Subscribe {
        conn: 1,
        req: 5,
        queue: "q".into(),
        prefetch: 1,
    }]);
    reply_to(&mut rx, 5).await;
    assert!(
        rx.try_recv().is_err(),
        "nothing delivered from a paused queue"
    );
    rig.turn(vec![HubCmd::Admin {
        conn: 1,
        req: 6,
        op: AdminOp::Purge {
            queue: "q".into(),
            state: Some(TaskView::Ready),
        },
    }]);
    rig.pump().await;
    assert!(matches!(reply_to(&mut rx, 6).await, Reply::Count(3)));
    assert_eq!(rig.hub.engine.pending_count("q"), 0);
    assert_eq!(rig.store.get_state(1).expect("read"), None);
    rig.finish();
}

/// The hub's side of result waits: a status request gets the live lease; a waiter is
/// woken once the ack (or an operator's removal) is durable, with how the task ended.
#[tokio::test]
async fn waiters_are_woken_once_the_final_state_is_durable() {
    let mut rig = Rig::new(0);
    let mut rx = rig.connect(1);
    let ids = rig.publish_durable("q", 2).await;
    rig.turn(vec![HubCmd::Subscribe {
        conn: 1,
        req: 5,
        queue: "q".into(),
        prefetch: 1,
    }]);
    reply_to(&mut rx, 5).await;
    let d = delivery(&mut rx).await;
    rig.turn(vec![HubCmd::GetTask {
        conn: 1,
        req: 6,
        task: d.task,
    }]);
    match next(&mut rx).await {
        Outbound::Status {
            req: 6,
            task,
            lease: Some(lease),
        } => {
            assert_eq!(task, d.task);
            assert_eq!(
                (&*lease.consumer, lease.deadline_ms, lease.attempt),
                ("worker-1", d.deadline_ms, 1)
            );
        }
        other => panic!("expected a status with its lease, got {other:?}"),
    }
    let (wait_tx, mut wait_rx) = mpsc::unbounded_channel();
    rig.waiters.register(ids[0], 9, 70, wait_tx.downgrade());
    rig.waiters.register(ids[1], 9, 71, wait_tx.downgrade());
    rig.turn(vec![ack(1, 7, &d, d.token)]);
    // The freed slot takes the next task at once; the ack is confirmed once durable
    // (by the store writer's thread: the two may arrive in either order).
    let (mut delivered, mut confirmed) = (None, false);
    for _ in 0..2 {
        match next(&mut rx).await {
            Outbound::Deliver(d) => delivered = Some(d.task),
            Outbound::Reply {
                req: 7,
                reply: Reply::Ok,
            } => confirmed = true,
            other => panic!("expected a delivery and the ack's confirmation, got {other:?}"),
        }
    }
    assert_eq!((delivered, confirmed), (Some(ids[1]), true));
    match next(&mut wait_rx).await {
        Outbound::WaitDone {
            req: 70,
            task,
            state: Final::Succeeded,
        } => assert_eq!(task, ids[0]),
        other => panic!("expected the wait woken, got {other:?}"),
    }
    rig.turn(vec![HubCmd::Admin {
        conn: 1,
        req: 8,
        op: AdminOp::Delete("q".into()),
    }]);
    rig.pump().await;
    // Its subscription ends first, then the delete is answered.
    assert!(matches!(
        next(&mut rx).await,
        Outbound::SubscriptionEnded { sub: 5, .. }
    ));
    assert!(matches!(reply_to(&mut rx, 8).await, Reply::Count(_)));
    match next(&mut wait_rx).await {
        Outbound::WaitDone {
            req: 71,
            task,
            state: Final::Removed,
        } => assert_eq!(task, ids[1]),
        other => panic!("expected the wait woken by the removal, got {other:?}"),
    }
    assert_eq!(rig.waiters.len(), 0);
    rig.finish();
}

/// The schedule ticker: a tick fires once, as one store job; the schedule does not
/// fire again while that job is in flight, and once it is durable the next due tick
/// fires (catch-up `one`: the latest, once). The change itself is answered only once
/// durable.
#[tokio::test]
async fn a_schedule_fires_each_tick_once_and_never_while_its_fire_is_in_flight() {
    let mut rig = Rig::new(0);
    let mut rx = rig.connect(1);
    let spec = crate::broker::ScheduleSpec {
        name: "tick".into(),
        queue: "q".into(),
        cron: "* * * * * *".into(),
        tz: String::new(),
        payload: Bytes::from_static(b"t"),
        headers: Vec::new(),
        priority: 0,
        max_attempts: 0,
        catch_up: crate::model::CatchUp::One,
    };
    rig.turn(vec![HubCmd::Admin {
        conn: 1,
        req: 7,
        op: AdminOp::AddSchedule(spec),
    }]);
    assert_eq!(rig.hub.engine.schedule_count(), 0, "applied once durable");
    rig.pump().await;
    let Reply::Schedule(view) = reply_to(&mut rx, 7).await else {
        panic!("expected the schedule");
    };
    assert_eq!(view.next_run_ms, Some(T0 + 1_000));
    rig.now = T0 + 1_000;
    rig.turn(vec![]);
    rig.now = T0 + 3_000;
    rig.turn(vec![]);
    assert_eq!(
        rig.hub.engine.pending_count("q"),
        0,
        "not deliverable before durable"
    );
    rig.pump().await; // the first fire is durable
    assert_eq!(rig.hub.engine.pending_count("q"), 1);
    rig.turn(vec![]); // ticks 2 s and 3 s are due: one run, for 3 s
    rig.pump().await;
    assert_eq!(rig.hub.engine.pending_count("q"), 2);
    rig.turn(vec![]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rig.hub_rx.recv())
            .await
            .is_err(),
        "nothing more is due at 3 s"
    );
    let view = &rig.hub.engine.schedule_views()[0];
    assert_eq!(view.schedule.last_run_ms, T0 + 3_000);
    let stored = rig.store.schedules().unwrap();
    assert_eq!(
        (stored[0].last_run_ms, stored[0].last_task),
        (T0 + 3_000, view.schedule.last_task)
    );
}
