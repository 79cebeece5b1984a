//! The hub: one task that owns the broker engine. Connections and the store writer send
//! it commands; it applies them in batches per wakeup, expires leases on time, and turns
//! the engine's effects into deliveries (to connection outboxes) and store jobs.
//! It never reads a socket or the store itself and holds no lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use squall_proto::v1::{self, response};
use squall_proto::ErrorCode;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info};

use super::admin::{AdminOp, AdminOutcome, AdminQueue};
use super::admission::{Bounded, Reservation, Reservations};
use super::connection::{error_response, OutTx, Outbound};
use super::rates::Rates;
use super::scrape::QueueScrape;
use super::status::LeaseHolder;
use super::waiters::{Final, Waiters};
use super::{now_ms, Done, Writer};
use crate::broker::{Committed, ConnId, Effect, Engine, EngineError, NackMode, SubId};
use crate::model::TaskId;
use crate::store::Muts;

/// Sender side of the hub's command channel.
pub(crate) type HubTx = mpsc::UnboundedSender<HubCmd>;

/// Most commands handled per wakeup before dispatching.
const BATCH: usize = 1024;

/// While the store cannot record attempts, how often the hub looks whether it can
/// deliver again.
const STORE_RETRY: Duration = Duration::from_millis(250);

/// What connections and the writer ask of the hub.
#[derive(Debug)]
pub(crate) enum HubCmd {
    /// A connection finished its handshake; deliveries and replies go to `out`.
    Register {
        conn: ConnId,
        out: OutTx,
        /// Client name from Hello, else the peer address (shown as a lease holder).
        name: Arc<str>,
        /// The peer address (shown by peek, for operators).
        peer: std::net::SocketAddr,
    },
    /// A connection closed.
    Disconnect {
        conn: ConnId,
    },
    Subscribe {
        conn: ConnId,
        req: u64,
        queue: String,
        prefetch: u32,
    },
    Unsubscribe {
        conn: ConnId,
        req: u64,
        sub: SubId,
    },
    Ack {
        conn: ConnId,
        req: u64,
        task: TaskId,
        token: u64,
        result: Bytes,
    },
    Nack {
        conn: ConnId,
        req: u64,
        task: TaskId,
        token: u64,
        mode: NackMode,
        reason: String,
    },
    Extend {
        conn: ConnId,
        req: u64,
        task: TaskId,
        token: u64,
        extend_ms: u64,
    },
    /// A delivery its consumer never started on comes back without an attempt.
    ReleaseUnseen {
        conn: ConnId,
        req: u64,
        task: TaskId,
        token: u64,
    },
    /// Published tasks are durable (and the room reserved for them in bounded queues,
    /// if any, is theirs now).
    Committed(Vec<Committed>, Option<Reservation>),
    /// A publish to a bounded queue, to admit (`admission.rs`). `done` is a
    /// `Done::Publish`.
    Publish {
        muts: Muts,
        done: Box<Done>,
    },
    /// An admitted publish failed: its reserved room is free again.
    Release(Reservation),
    /// A connection's writer wrote (or dropped) `n` more deliveries.
    Written {
        conn: ConnId,
        n: u32,
    },
    /// A delivery could not be sent.
    Undeliverable {
        conn: ConnId,
        task: TaskId,
        token: u64,
        requeue: bool,
    },
    /// A queue administration request (`admin.rs`).
    Admin {
        conn: ConnId,
        req: u64,
        op: AdminOp,
    },
    /// The store jobs of an admin change completed (`admin.rs`).
    AdminDurable(Box<AdminOutcome>),
    /// The deepest queues' status and the sum of the others, for a metrics scrape:
    /// at most `limit` queues one by one.
    Scrape {
        limit: usize,
        reply: oneshot::Sender<QueueScrape>,
    },
    /// Status of a task: the hub adds its lease and the connection reads the rest.
    GetTask {
        conn: ConnId,
        req: u64,
        task: TaskId,
    },
    /// The retention sweep removed dead tasks (queue, task).
    DeadSwept(Vec<(Arc<str>, TaskId)>),
    /// An ack was not stored: the task, pending in the store, is deliverable again.
    Restore {
        task: TaskId,
        state: crate::model::TaskState,
    },
    /// Stop dispatching, hand pending persistence to the writer, and exit.
    Shutdown,
}

pub(crate) struct Hub {
    pub(super) engine: Engine,
    pub(super) writer: Writer,
    pub(super) outboxes: HashMap<ConnId, OutTx>,
    /// Client name (or peer address) and peer address of each connection, for lease
    /// holders in task status and peek.
    pub(super) names: HashMap<ConnId, (Arc<str>, std::net::SocketAddr)>,
    pub(super) waiters: Arc<Waiters>,
    effects: Vec<crate::broker::Effect>,
    /// Per-queue rates over the last minute (`rates.rs`).
    pub(super) rates: Rates,
    /// Which queues are bounded, for the connections; refreshed after admin changes.
    pub(super) bounded: Arc<Bounded>,
    pub(super) default_max_length: u64,
    /// Room reserved in bounded queues by publishes not yet durable.
    reservations: Reservations,
    /// Only asked whether it failed (then nothing is dispatched: a delivery's body
    /// could not be read, and its requeue would spin). Never read here.
    store: crate::store::Store,
    /// Shared by every ack's completion (one reference count each, no allocation):
    /// how to give a task back if its ack is not stored.
    restore: Arc<super::Restore>,
    /// Admin changes: the one in flight and those waiting for it (`admin.rs`).
    pub(super) admin_queue: AdminQueue,
    /// The hub's own command channel, for completions that report back.
    pub(super) me: mpsc::WeakUnboundedSender<HubCmd>,
}

impl Hub {
    pub(crate) fn new(
        engine: Engine,
        writer: Writer,
        waiters: Arc<Waiters>,
        bounded: Arc<Bounded>,
        default_max_length: u64,
        store: crate::store::Store,
        me: mpsc::WeakUnboundedSender<HubCmd>,
    ) -> Hub {
        Hub {
            restore: Arc::new(super::Restore {
                store: store.clone(),
                hub: me.clone(),
            }),
            admin_queue: AdminQueue::default(),
            me,
            store,
            bounded,
            default_max_length,
            reservations: Reservations::default(),
            engine,
            writer,
            outboxes: HashMap::new(),
            names: HashMap::new(),
            waiters,
            effects: Vec::new(),
            rates: Rates::default(),
        }
    }

    /// Runs until `Shutdown` arrives or every sender is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<HubCmd>) {
        let mut cmds = Vec::with_capacity(BATCH);
        loop {
            // Nothing is delivered while attempts cannot be recorded.
            let dispatching = self.store.unavailable().is_none();
            let wake = if dispatching && self.engine.needs_dispatch() {
                Some(Instant::now())
            } else if self.engine.needs_dispatch() {
                // Look again soon: the store resumes by itself once space returns.
                Some(Instant::now() + STORE_RETRY)
            } else {
                let next = self.engine.next_wakeup().unwrap_or(u64::MAX);
                Some(deadline_instant(next.min(self.rates.next_due())))
            };
            let received = tokio::select! {
                n = rx.recv_many(&mut cmds, BATCH) => n,
                _ = sleep_until_opt(wake) => 0,
            };
            if received == 0 && rx.is_closed() && rx.is_empty() {
                break;
            }
            let now = now_ms();
            let mut stop = false;
            for cmd in cmds.drain(..) {
                if matches!(cmd, HubCmd::Shutdown) {
                    stop = true;
                    continue;
                }
                self.handle(cmd, now);
            }
            self.engine.tick(now, &mut self.effects);
            if !stop && dispatching {
                self.engine.dispatch(now, &mut self.effects);
            }
            self.apply_effects(now);
            let engine = &self.engine;
            self.rates
                .maybe_sample(now, engine.queue_slots(), |slot| engine.counters_at(slot));
            if stop {
                info!(
                    leases = self.engine.lease_count(),
                    "hub stopped dispatching"
                );
                break;
            }
        }
    }

    fn reply(&self, conn: ConnId, req: u64, result: response::Result) {
        if let Some(out) = self.outboxes.get(&conn) {
            let _ = out.send(Outbound::Response(v1::Response {
                id: req,
                result: Some(result),
            }));
        }
    }

    fn reply_err(&self, conn: ConnId, req: u64, err: EngineError) {
        let code = match err {
            EngineError::LeaseExpired { .. } => ErrorCode::LeaseExpired,
            EngineError::DuplicateSubscription(_) => ErrorCode::BadRequest,
            EngineError::NoSuchSubscription(_) => ErrorCode::NotFound,
        };
        if let Some(out) = self.outboxes.get(&conn) {
            let _ = out.send(Outbound::Response(error_response(
                req,
                code,
                err.to_string(),
            )));
        }
    }

    /// Persists `m`, then confirms request `req` on `conn` once it is durable (and
    /// wakes the task's result waiters if `m` finishes the task: `finished`, else as
    /// [`Final::of`] reads `m`).
    fn persist_then_reply(
        &self,
        conn: ConnId,
        req: u64,
        m: crate::model::Mutation,
        ok: response::Result,
        finished: Option<(TaskId, Final)>,
    ) {
        let out = self.outboxes.get(&conn);
        // Only an ack passes `finished`; it is the settle that drops the task from
        // the engine, so only it needs giving back if it is not stored.
        let restore = finished.map(|_| self.restore.clone());
        let done = match finished.or_else(|| Final::of(&m)) {
            Some((task, state)) => Some(Done::Finished {
                reply: out.map(|out| (out.clone(), req)),
                task,
                state,
                waiters: self.waiters.clone(),
                restore,
            }),
            None => out.map(|out| Done::Reply {
                out: out.clone(),
                req,
                ok,
            }),
        };
        self.writer.submit(Muts::One(m), done);
    }

    /// Persists a change nobody waits for, except result waiters when it finishes a task.
    fn persist(&self, m: crate::model::Mutation) {
        let done = Final::of(&m).map(|(task, state)| Done::Finished {
            reply: None,
            task,
            state,
            waiters: self.waiters.clone(),
            restore: None,
        });
        self.writer.submit(Muts::One(m), done);
    }

    fn handle(&mut self, cmd: HubCmd, now: u64) {
        match cmd {
            HubCmd::Register {
                conn,
                out,
                name,
                peer,
            } => {
                self.outboxes.insert(conn, out);
                self.names.insert(conn, (name, peer));
            }
            HubCmd::Disconnect { conn } => {
                self.outboxes.remove(&conn);
                self.names.remove(&conn);
                self.engine.disconnect(conn, now, &mut self.effects);
                debug!(conn, "connection released");
            }
            HubCmd::Subscribe {
                conn,
                req,
                queue,
                prefetch,
            } => match self.engine.subscribe(conn, req, &queue, prefetch) {
                Ok(()) => {
                    debug!(conn, sub = req, queue = %queue, prefetch, "subscribed");
                    self.reply(
                        conn,
                        req,
                        response::Result::Subscribe(v1::SubscribeOk {
                            subscription_id: req,
                        }),
                    )
                }
                Err(e) => self.reply_err(conn, req, e),
            },
            HubCmd::Unsubscribe { conn, req, sub } => match self.engine.unsubscribe(conn, sub) {
                Ok(()) => self.reply(conn, req, response::Result::Ok(v1::Empty {})),
                Err(e) => self.reply_err(conn, req, e),
            },
            HubCmd::Ack {
                conn,
                req,
                task,
                token,
                result,
            } => match self.engine.ack(conn, task, token, result, now) {
                // Succeeded even when the queue keeps nothing (then `m` is a Remove).
                Ok(m) => self.persist_then_reply(
                    conn,
                    req,
                    m,
                    response::Result::Ok(v1::Empty {}),
                    Some((task, Final::Succeeded)),
                ),
                Err(e) => self.reply_err(conn, req, e),
            },
            HubCmd::Nack {
                conn,
                req,
                task,
                token,
                mode,
                reason,
            } => match self.engine.nack(conn, task, token, mode, &reason, now) {
                Ok(m) => {
                    self.persist_then_reply(conn, req, m, response::Result::Ok(v1::Empty {}), None)
                }
                Err(e) => self.reply_err(conn, req, e),
            },
            HubCmd::ReleaseUnseen {
                conn,
                req,
                task,
                token,
            } => match self.engine.release_unseen(conn, task, token, now) {
                Ok(m) => {
                    self.persist_then_reply(conn, req, m, response::Result::Ok(v1::Empty {}), None)
                }
                Err(e) => self.reply_err(conn, req, e),
            },
            HubCmd::Extend {
                conn,
                req,
                task,
                token,
                extend_ms,
            } => match self.engine.extend(conn, task, token, extend_ms, now) {
                Ok(deadline_ms) => self.reply(
                    conn,
                    req,
                    response::Result::Extend(v1::ExtendOk { deadline_ms }),
                ),
                Err(e) => self.reply_err(conn, req, e),
            },
            HubCmd::Committed(tasks, reservation) => {
                self.engine.publish_committed(&tasks, now);
                if let Some(r) = reservation {
                    self.reservations.release(r);
                }
            }
            HubCmd::Publish { muts, done } => self.admit(muts, *done),
            HubCmd::Release(r) => self.reservations.release(r),
            HubCmd::Written { conn, n } => self.engine.written(conn, n),
            HubCmd::Undeliverable {
                conn,
                task,
                token,
                requeue,
            } => self.engine.undeliverable(conn, task, token, requeue, now),
            HubCmd::Admin { conn, req, op } => self.admin(conn, req, op, now),
            HubCmd::AdminDurable(outcome) => self.admin_durable(*outcome, now),
            HubCmd::Scrape { limit, reply } => {
                let _ = reply.send(self.scrape(limit, now));
            }
            HubCmd::GetTask { conn, req, task } => self.task_status(conn, req, task),
            HubCmd::DeadSwept(removed) => {
                for (queue, id) in removed {
                    self.engine.forget_dead(&queue, id);
                }
            }
            HubCmd::Restore { task, state } => {
                info!(task, queue = %state.queue, "an ack was not stored: the task is deliverable again");
                self.engine.restore_task(task, &state, now);
            }
            HubCmd::Shutdown => {}
        }
    }

    /// Submits a publish to bounded queues if they have room, else answers QUEUE_FULL.
    fn admit(&mut self, muts: Muts, mut done: Done) {
        let Done::Publish {
            committed,
            reservation,
            out,
            req,
            ..
        } = &mut done
        else {
            return self.writer.submit(muts, Some(done));
        };
        match self.reservations.admit(&self.engine, committed) {
            Ok(r) => {
                *reservation = Some(r);
                self.writer.submit(muts, Some(done));
            }
            Err(full) => {
                debug!(queue = %full.queue, pending = full.pending, max_length = full.max_length, "publish refused: queue full");
                let _ = out.send(Outbound::Response(error_response(
                    *req,
                    ErrorCode::QueueFull,
                    full.to_string(),
                )));
            }
        }
    }

    /// Hands a status request to the asking connection with the task's lease, if any.
    fn task_status(&self, conn: ConnId, req: u64, task: TaskId) {
        let Some(out) = self.outboxes.get(&conn) else {
            return;
        };
        let lease = self.engine.lease_of(task).map(|l| LeaseHolder {
            conn: l.conn,
            consumer: self
                .names
                .get(&l.conn)
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| Arc::from("")),
            deadline_ms: l.deadline_ms,
            attempt: l.attempt,
        });
        let _ = out.send(Outbound::Status { req, task, lease });
    }

    fn apply_effects(&mut self, now: u64) {
        let mut effects = std::mem::take(&mut self.effects);
        for effect in effects.drain(..) {
            match effect {
                Effect::Persist(m) => self.persist(m),
                Effect::Deliver(d) => match self.outboxes.get(&d.conn) {
                    Some(out) => {
                        // A closed outbox means the connection is going away; its
                        // Disconnect will release the lease.
                        let _ = out.send(Outbound::Deliver(d));
                    }
                    None => self
                        .engine
                        .undeliverable(d.conn, d.task, d.token, true, now),
                },
            }
        }
        // Keep the allocation.
        self.effects = effects;
    }
}

fn deadline_instant(at_ms: u64) -> Instant {
    let now = now_ms();
    Instant::now() + Duration::from_millis(at_ms.saturating_sub(now))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
